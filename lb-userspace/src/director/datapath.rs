//! Loading, attaching and detaching the director's data path.
//!
//! Everything the data path needs outlives this process: the maps are pinned by name under the
//! pin directory, and so are the XDP and TC links. Later `lbadm` invocations reopen them from
//! there; `detach` removes them.

use super::layout::UpgradePlan;
use crate::{
    objects,
    sys::{
        SysError,
        bpffs::{self, LINK_XDP, bpf},
        host, netlink, sysctl,
    },
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
    },
};
use lb_common::{
    ATTACH_SET_FORWARDING, ATTACH_TC_NETLINK, ATTACH_XDP_GENERIC, Config, DEFAULT_FLOOD_RATE,
    LAYOUT_VERSION, Limits, MAP_CONFIG, MAP_CONNS, MAP_CONNS_NEW, MAP_LIMITS, MAP_META, MIN_CONNS,
    Meta, PROG_LB, PROG_TC_EGRESS, PROG_TC_INGRESS, unconfirmed_size,
};
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lbadm";
const TC_LINK_PIN: &str = "link_tc";
const TC_EGRESS_LINK_PIN: &str = "link_tc_egress";
/// The TC programs, where they attach and where their links are pinned (TCX).
pub(super) const TC_PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (PROG_TC_INGRESS, TcAttachType::Ingress, TC_LINK_PIN),
    (PROG_TC_EGRESS, TcAttachType::Egress, TC_EGRESS_LINK_PIN),
];

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "the data path is not attached (nothing pinned under {0}): run `lbadm attach --iface IF`"
    )]
    NotAttached(PathBuf),
    #[error(
        "the data path pinned under {pin_dir} is attached to {iface}: detach it first, or use another --pin-dir"
    )]
    AttachedElsewhere { iface: String, pin_dir: PathBuf },
    #[error("cannot upgrade the attached data path in place: {0}")]
    CannotUpgrade(String),
    #[error(
        "a connection table of {entries} entries needs about {need_mib} MiB of kernel memory and {avail_mib} MiB are available: choose a smaller --conn-table ({bytes} bytes per connection, established and unconfirmed tables together)",
        bytes = TableSizes::BYTES_PER_CONN
    )]
    TableTooBig {
        entries: u32,
        need_mib: u64,
        avail_mib: u64,
    },
    #[error(
        "{iface} already has an XDP program attached: {name} (id {id}); detach it first (e.g. `ip link set dev {iface} xdp off`), or attach lbadm to another interface"
    )]
    XdpInUse {
        iface: String,
        id: u32,
        name: String,
    },
    #[error("--conn-table {0} is too small: at least {MIN_CONNS} entries")]
    TableTooSmall(u32),
    #[error(
        "interface `{0}` has no IPv4 address to use as the tunnel source: add one or pass --tunnel-source ADDR"
    )]
    NoTunnelSource(String),
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl From<sysctl::SysctlError> for DatapathError {
    fn from(e: sysctl::SysctlError) -> Self {
        DatapathError::Sys(e.into())
    }
}

impl From<netlink::NetlinkError> for DatapathError {
    fn from(e: netlink::NetlinkError) -> Self {
        DatapathError::Sys(e.into())
    }
}

pub type Result<T, E = DatapathError> = std::result::Result<T, E>;

pub(super) trait Ctx<T> {
    fn ctx(self, what: &str) -> Result<T>;
}

impl<T, E: std::error::Error> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, what: &str) -> Result<T> {
        self.map_err(|e| bpf(what)(e).into())
    }
}

/// Which of the data path's events it logs (aya-log). The level is a load-time constant,
/// so the verifier removes the disabled log statements: `Off` costs nothing per packet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum LogLevel {
    #[default]
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

/// Entries of the two connection tables: established connections, and the smaller table of
/// connections not confirmed yet. Fixed when the maps are created; an upgrade keeps them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSizes {
    pub conns: u32,
    pub unconfirmed: u32,
}

impl TableSizes {
    /// Kernel memory per established connection, its share of the unconfirmed table included
    /// (LRU hash elements; fdinfo memlock on Linux 6.18, `cargo xtask bench -- --only conntrack`).
    pub const BYTES_PER_CONN: u64 = 130;

    /// The tables for `conns` established connections, or why not.
    pub fn for_conns(conns: u32) -> Result<TableSizes> {
        if conns < MIN_CONNS {
            return Err(DatapathError::TableTooSmall(conns));
        }
        Ok(TableSizes {
            conns,
            unconfirmed: unconfirmed_size(conns),
        })
    }

    /// Refuses tables that would take more than half the memory available now: the kernel
    /// allocates them whole at attach, and a director that swaps is no director.
    pub fn check_memory(&self, mem_available: u64) -> Result<()> {
        let need = self.conns as u64 * Self::BYTES_PER_CONN;
        if need > mem_available / 2 {
            return Err(DatapathError::TableTooBig {
                entries: self.conns,
                need_mib: need >> 20,
                avail_mib: mem_available >> 20,
            });
        }
        Ok(())
    }

    /// The sizes of the tables pinned under `pin_dir` (a layout-2 data path has no unconfirmed
    /// table yet: it gets the size that goes with its established one).
    pub fn pinned(pin_dir: &Path) -> Result<TableSizes> {
        let size =
            |name: &str| aya::maps::MapInfo::from_pin(pin_dir.join(name)).map(|i| i.max_entries());
        let conns = size(MAP_CONNS).ctx("reading the pinned connection table")?;
        Ok(TableSizes {
            conns,
            unconfirmed: size(MAP_CONNS_NEW).unwrap_or(unconfirmed_size(conns)),
        })
    }
}

/// Loads the director object with its maps pinned (or reopened) under `pin_dir`, the
/// connection tables at `sizes`.
pub fn load(pin_dir: &Path, log: LogLevel, sizes: TableSizes) -> Result<Ebpf> {
    bpffs::create_pin_dir(pin_dir)?;
    let level = log as u8;
    EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .override_global("AYA_LOG_LEVEL", &level, true)
        .map_max_entries(MAP_CONNS, sizes.conns)
        .map_max_entries(MAP_CONNS_NEW, sizes.unconfirmed)
        .load(objects::LB)
        .ctx("loading the director's eBPF object")
}

/// The id of the attached XDP program (to read its log events from another process).
pub fn program_id(pin_dir: &Path) -> Result<u32> {
    let path = pin_dir.join(LINK_XDP);
    if !path.exists() {
        return Err(DatapathError::NotAttached(pin_dir.into()));
    }
    let link = PinnedLink::from_pin(&path).ctx("opening the pinned XDP link")?;
    let fd: FdLink = link.into();
    let info = fd.info().ctx("reading the XDP link")?;
    Ok(info.program_id())
}

#[derive(Debug, Clone)]
pub struct AttachOptions {
    pub iface: String,
    pub pin_dir: PathBuf,
    /// Outer source address; default: the first IPv4 address of the interface.
    pub tunnel_source: Option<Ipv4Addr>,
    /// Force generic (skb) mode instead of trying native first.
    pub generic: bool,
    pub log: LogLevel,
    /// Entries of the established-connection table (default [`lb_common::DEFAULT_CONNS`]); an
    /// upgrade keeps the pinned size and refuses another.
    pub conn_table: Option<u32>,
    /// New flows per second per CPU that start flood mode (0: never; default
    /// [`DEFAULT_FLOOD_RATE`]); an upgrade keeps the running value unless this is given.
    pub flood_rate: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReport {
    pub ifindex: u32,
    pub generic: bool,
    pub tc_netlink: bool,
    pub tunnel_source: Ipv4Addr,
    pub forwarding_enabled: bool,
    pub warnings: Vec<String>,
    /// Set when the data path was attached already and this call upgraded it in place.
    pub upgrade: Option<UpgradePlan>,
}

/// Attaches the data path to `opts.iface`; on failure nothing is left behind. On a data path
/// that is attached already (to the same interface) it upgrades in place instead: the
/// programs are swapped atomically and every map is kept (see [`super::upgrade`]).
pub fn attach(opts: &AttachOptions) -> Result<AttachReport> {
    host::ensure_root()?;
    let ifindex = host::ifindex(&opts.iface)?;
    bpffs::ensure_bpffs(&opts.pin_dir)?;
    if opts.pin_dir.join(LINK_XDP).exists() {
        return super::upgrade::upgrade(opts, ifindex);
    }
    let tunnel_source = match opts.tunnel_source {
        Some(a) => a,
        None => netlink::ipv4_addrs(ifindex)?
            .into_iter()
            .next()
            .ok_or_else(|| DatapathError::NoTunnelSource(opts.iface.clone()))?,
    };
    if let Some(id) = netlink::Rtnl::new()?
        .link(&opts.iface)?
        .and_then(|l| l.xdp_prog)
    {
        let name = aya::programs::loaded_programs()
            .flatten()
            .find(|p| p.id() == id)
            .and_then(|p| p.name_as_str().map(str::to_string))
            .unwrap_or_else(|| "a program without a name".into());
        return Err(DatapathError::XdpInUse {
            iface: opts.iface.clone(),
            id,
            name,
        });
    }
    let sizes = TableSizes::for_conns(opts.conn_table.unwrap_or(lb_common::DEFAULT_CONNS))?;
    sizes.check_memory(host::mem_available()?)?;
    let existed = opts.pin_dir.exists();
    let mut undo = Undo {
        pin_dir: opts.pin_dir.clone(),
        remove_pins: !existed,
        iface: None,
    };
    let mut bpf = load(&opts.pin_dir, opts.log, sizes)?;
    let mut report = AttachReport {
        ifindex,
        generic: false,
        tc_netlink: false,
        tunnel_source,
        forwarding_enabled: false,
        warnings: Vec::new(),
        upgrade: None,
    };
    let mut meta = Meta {
        layout: LAYOUT_VERSION,
        ..Meta::default()
    };

    let xdp: &mut Xdp = prog_mut(&mut bpf, PROG_LB)?;
    xdp.load().ctx("loading the XDP program (verifier)")?;
    let link_id = if opts.generic {
        report.generic = true;
        xdp.attach_to_if_index(ifindex, XdpMode::Skb)
            .map_err(|source| SysError::NoXdp {
                iface: opts.iface.clone(),
                source,
            })?
    } else {
        match xdp.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => id,
            Err(native) => {
                report.generic = true;
                report.warnings.push(format!(
                    "{} has no native XDP ({native}); using generic mode, which is much slower",
                    opts.iface
                ));
                xdp.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(|source| SysError::NoXdp {
                        iface: opts.iface.clone(),
                        source,
                    })?
            }
        }
    };
    let link = xdp.take_link(link_id).ctx("taking the XDP link")?;
    let link: FdLink = link
        .try_into()
        .ctx("this kernel attached XDP without a bpf_link (needs Linux >= 5.9)")?;
    link.pin(opts.pin_dir.join(LINK_XDP))
        .ctx("pinning the XDP link")?;

    undo.iface = Some(opts.iface.clone());
    // Before Linux 6.6 (no TCX links) the TC program hangs off a clsact qdisc.
    let tcx = aya::util::KernelVersion::current()
        .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
    if !tcx && let Err(e) = tc::qdisc_add_clsact(&opts.iface) {
        let exists = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.to_string().contains("os error 17"));
        if !exists {
            return Err(e).ctx("adding the clsact qdisc");
        }
    }
    // Ingress finishes what XDP cannot (unresolved neighbours) and unwraps tunnel-probe replies;
    // egress encapsulates the daemon's tunnel probes.
    for (i, (name, at, pin)) in TC_PROGRAMS.into_iter().enumerate() {
        let cls: &mut SchedClassifier = prog_mut(&mut bpf, name)?;
        cls.load()
            .ctx(&format!("loading the TC program {name} (verifier)"))?;
        let tc_id = cls
            .attach(&opts.iface, at)
            .ctx(&format!("attaching the TC program {name}"))?;
        let tc_link = cls.take_link(tc_id).ctx("taking the TC link")?;
        if tcx {
            let fd = FdLink::try_from(tc_link).ctx("the TC program attached without a link")?;
            fd.pin(opts.pin_dir.join(pin)).ctx("pinning the TC link")?;
        } else {
            // Before Linux 6.6 the filter lives in the qdisc. Dropping the link object would
            // remove it, so it is forgotten instead; detach removes the filter by program name,
            // an upgrade replaces it by the priority and handle recorded here.
            meta.tc_priority[i] = tc_link.priority().ctx("the TC filter's priority")?;
            meta.tc_handle[i] = tc_link.handle().ctx("the TC filter's handle")?.into();
            std::mem::forget(tc_link);
            report.tc_netlink = true;
        }
    }

    let was = sysctl::ipv4_conf_read(&opts.iface, "forwarding")?;
    report.forwarding_enabled = was == 0;
    let mut attach = 0;
    if report.generic {
        attach |= ATTACH_XDP_GENERIC;
    }
    if report.tc_netlink {
        attach |= ATTACH_TC_NETLINK;
    }
    if report.forwarding_enabled {
        attach |= ATTACH_SET_FORWARDING;
    }
    let cfg = Config {
        tunnel_src: lb_common::ip_be(tunnel_source.octets()),
        nr_cpus: aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1),
        ifindex,
        attach,
        saved_forwarding: was,
        flags: 0,
    };
    write_config(&mut bpf, &cfg)?;
    write_limits(&mut bpf, opts.flood_rate.unwrap_or(DEFAULT_FLOOD_RATE))?;
    write_meta(&mut bpf, &meta)?;
    if report.forwarding_enabled {
        sysctl::ipv4_conf_write(&opts.iface, "forwarding", 1)?;
    }
    undo.disarm();
    Ok(report)
}

pub(super) fn prog_mut<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = bpf.program_mut(name).ok_or_else(|| SysError::Bpf {
        what: format!("program {name} missing from the object"),
        source: "not found".into(),
    })?;
    p.try_into()
        .ctx(&format!("program {name} has an unexpected type"))
}

pub(super) fn write_meta(bpf: &mut Ebpf, meta: &Meta) -> Result<()> {
    let map = bpf.map_mut(MAP_META).ok_or_else(|| SysError::Bpf {
        what: "map LB_META missing".into(),
        source: "not found".into(),
    })?;
    let mut arr: Array<&mut MapData, Meta> = Array::try_from(map).ctx("opening LB_META")?;
    arr.set(0, meta, 0).ctx("writing LB_META")
}

/// Sets the flood threshold, keeping the other limits.
pub(super) fn write_limits(bpf: &mut Ebpf, flood_rate: u32) -> Result<()> {
    let map = bpf.map_mut(MAP_LIMITS).ok_or_else(|| SysError::Bpf {
        what: "map LB_LIMITS missing".into(),
        source: "not found".into(),
    })?;
    let mut arr: Array<&mut MapData, Limits> = Array::try_from(map).ctx("opening LB_LIMITS")?;
    let l = arr.get(&0, 0).ctx("reading LB_LIMITS")?;
    arr.set(0, Limits { flood_rate, ..l }, 0)
        .ctx("writing LB_LIMITS")
}

pub(super) fn write_config(bpf: &mut Ebpf, cfg: &Config) -> Result<()> {
    let map = bpf.map_mut(MAP_CONFIG).ok_or_else(|| SysError::Bpf {
        what: "map LB_CONFIG missing".into(),
        source: "not found".into(),
    })?;
    let mut arr: Array<&mut MapData, Config> = Array::try_from(map).ctx("opening LB_CONFIG")?;
    arr.set(0, cfg, 0).ctx("writing LB_CONFIG")
}

/// Cleans up a half-done attach.
struct Undo {
    pin_dir: PathBuf,
    remove_pins: bool,
    iface: Option<String>,
}

impl Undo {
    fn disarm(&mut self) {
        self.remove_pins = false;
        self.iface = None;
        self.pin_dir = PathBuf::new();
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.pin_dir.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_file(self.pin_dir.join(LINK_XDP));
        if let Some(iface) = &self.iface {
            for (name, at, pin) in TC_PROGRAMS {
                let _ = std::fs::remove_file(self.pin_dir.join(pin));
                let _ = tc::qdisc_detach_program(iface, at, name);
            }
        }
        if self.remove_pins {
            bpffs::remove_pins(&self.pin_dir);
        }
    }
}

pub fn read_config(pin_dir: &Path) -> Result<Config> {
    let path = pin_dir.join(MAP_CONFIG);
    if !path.exists() {
        return Err(DatapathError::NotAttached(pin_dir.into()));
    }
    let data = MapData::from_pin(&path).ctx("opening the pinned LB_CONFIG")?;
    let map = aya::maps::Map::from_map_data(data).ctx("LB_CONFIG")?;
    let arr: Array<MapData, Config> = Array::try_from(map).ctx("LB_CONFIG")?;
    arr.get(&0, 0).ctx("reading LB_CONFIG")
}

pub fn is_attached(pin_dir: &Path) -> bool {
    pin_dir.join(LINK_XDP).exists()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachReport {
    pub iface: Option<String>,
    pub forwarding_restored: bool,
}

/// Detaches the data path and removes its pinned state.
pub fn detach(pin_dir: &Path) -> Result<DetachReport> {
    host::ensure_root()?;
    bpffs::ensure_bpffs(pin_dir)?;
    if !pin_dir.exists() {
        return Err(DatapathError::NotAttached(pin_dir.into()));
    }
    let cfg = read_config(pin_dir).ok();
    let iface = cfg.and_then(|c| host::ifname(c.ifindex));
    for pin in [LINK_XDP, TC_LINK_PIN, TC_EGRESS_LINK_PIN] {
        let path = pin_dir.join(pin);
        if path.exists() {
            // Unpinning drops the last reference to the link, which detaches it.
            let link = PinnedLink::from_pin(&path).ctx(&format!("opening {}", path.display()))?;
            let fd = link.unpin().ctx(&format!("unpinning {}", path.display()))?;
            drop(fd);
        }
    }
    let mut forwarding_restored = false;
    if let (Some(cfg), Some(iface)) = (cfg, &iface) {
        if cfg.attach & ATTACH_TC_NETLINK != 0 {
            for (name, at, _) in TC_PROGRAMS {
                let _ = tc::qdisc_detach_program(iface, at, name);
            }
        }
        if cfg.attach & ATTACH_SET_FORWARDING != 0 {
            sysctl::ipv4_conf_write(iface, "forwarding", cfg.saved_forwarding)?;
            forwarding_restored = true;
        }
    }
    bpffs::remove_pins(pin_dir);
    Ok(DetachReport {
        iface,
        forwarding_restored,
    })
}
