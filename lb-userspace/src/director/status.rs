//! `lbadm status`: where the data path is attached and how many packets left it for each
//! reason; `lbadm log`: its debug events.

use super::{
    conntrack::{self, TableStatus},
    datapath::{self, DatapathError},
    maps::{Maps, MapsError},
};
use crate::sys::{bpffs::bpf, host};
use lb_common::ATTACH_XDP_GENERIC;
use serde::Serialize;
use std::{collections::BTreeMap, fmt::Write as _, net::Ipv4Addr, path::Path};

#[derive(Debug, Clone, Serialize)]
pub struct DatapathStatus {
    pub attached: bool,
    pub iface: String,
    pub xdp_mode: &'static str,
    pub tunnel_source: Ipv4Addr,
    pub pin_dir: std::path::PathBuf,
    pub services: usize,
    /// The connection tables' fill, flood mode, allow-lists.
    pub table: TableStatus,
    /// Packets per reason, in the data path's counter order.
    pub counters: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    order: Vec<(&'static str, u64)>,
}

pub fn read(pin_dir: &Path) -> Result<DatapathStatus, MapsError> {
    let maps = Maps::open(pin_dir)?;
    let cfg = maps.config()?;
    let order: Vec<(&'static str, u64)> = maps
        .reasons()?
        .into_iter()
        .map(|(r, n)| (r.name(), n))
        .collect();
    Ok(DatapathStatus {
        attached: datapath::is_attached(pin_dir),
        iface: host::ifname(cfg.ifindex).unwrap_or_else(|| format!("ifindex {}", cfg.ifindex)),
        xdp_mode: if cfg.attach & ATTACH_XDP_GENERIC != 0 {
            "generic"
        } else {
            "native"
        },
        tunnel_source: Ipv4Addr::from(cfg.tunnel_src.to_ne_bytes()),
        pin_dir: pin_dir.into(),
        services: maps.read()?.len(),
        table: conntrack::table_status(&maps)?,
        counters: order.iter().copied().collect(),
        order,
    })
}

impl DatapathStatus {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "data path: {} on {} ({} XDP), tunnel source {}",
            if self.attached {
                "attached"
            } else {
                "NOT attached (maps only)"
            },
            self.iface,
            self.xdp_mode,
            self.tunnel_source
        );
        let _ = writeln!(out, "pin dir:   {}", self.pin_dir.display());
        let _ = writeln!(out, "services:  {}", self.services);
        let t = &self.table;
        let _ = writeln!(
            out,
            "connections: {} established (table of {}), {} unconfirmed (table of {})",
            t.established, t.established_size, t.unconfirmed, t.unconfirmed_size
        );
        let threshold = match t.flood_rate {
            0 => "never (flood_rate 0)".to_string(),
            n => format!("above {n} new flows/s on a CPU"),
        };
        let _ = match t.flood_for_secs {
            Some(secs) => writeln!(
                out,
                "flood mode: ON on {} CPU(s) for {secs} s: SYNs forwarded, not recorded; enters {threshold}; entered {} times",
                t.flooding_cpus, t.flood_trips
            ),
            None => writeln!(
                out,
                "flood mode: off; enters {threshold}; entered {} times",
                t.flood_trips
            ),
        };
        if t.allow_lists > 0 {
            let _ = writeln!(
                out,
                "allow-lists: {} VIP(s) take new connections only from listed sources (`lbadm allow list`)",
                t.allow_lists
            );
        }
        let _ = writeln!(out, "counters:");
        for (name, n) in &self.order {
            let _ = writeln!(out, "  {name:<20} {n}");
        }
        out
    }
}

/// Streams the data path's log events (aya-log) to stderr until interrupted. The level was
/// fixed at attach (`--log-level`); with `off` nothing ever arrives.
pub fn stream_log(pin_dir: &Path) -> Result<(), DatapathError> {
    let id = datapath::program_id(pin_dir)?;
    crate::init_tracing("trace");
    let mut logger = aya_log::EbpfLogger::init_from_id(id)
        .map_err(bpf("the data path was built without its log buffer"))?;
    use std::os::fd::AsRawFd as _;
    loop {
        let mut pfd = libc::pollfd {
            fd: logger.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        if unsafe { libc::poll(&mut pfd, 1, 1000) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(bpf("waiting for log events")(e).into());
            }
        }
        logger.flush();
    }
}
