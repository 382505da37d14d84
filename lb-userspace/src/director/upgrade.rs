//! Hitless upgrade: `lbadm attach` on an attached data path loads this lbadm's programs against
//! the pinned maps and swaps them in, so services, connections, persistence templates and
//! counters carry on.
//!
//! Order, so a failure leaves the running data path as it was:
//! 1. check the layout ([`super::layout`]): nothing is touched when it does not fit;
//! 2. unpin arrays that grow, keeping them open (the old programs keep their maps through their
//!    own references), load the object (new maps are created and pinned, grown ones copied);
//! 3. put every program through the verifier;
//! 4. swap, TC programs first and XDP last: a TCX or XDP link is pointed at the new program in
//!    one `BPF_LINK_UPDATE` (packets see the old program or the new one, never neither); a
//!    netlink TC filter (kernels before 6.6) is replaced in place by its priority and handle.
//!    A failed link swap points the links already swapped back at their old programs;
//! 5. record the new layout, then drop the set-aside pins.
//!
//! Until step 4 a failure removes the maps step 2 created and pins the grown arrays' old maps
//! again.

use super::{
    datapath::{
        AttachOptions, AttachReport, Ctx as _, DatapathError, Result, TC_PROGRAMS, TableSizes,
        load, prog_mut, read_config, write_config, write_limits, write_meta,
    },
    layout::{self, UpgradePlan},
};
use crate::{
    objects,
    sys::{
        SysError,
        bpffs::{LINK_XDP, bpf, raw},
        host,
    },
};
use aya::programs::{SchedClassifier, Xdp, tc::SchedClassifierLink};
use lb_common::{ATTACH_TC_NETLINK, ATTACH_XDP_GENERIC, LAYOUT_VERSION, Meta, PROG_LB, ip_be};
use std::{
    net::Ipv4Addr,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

/// Upgrades the data path attached under `opts.pin_dir` to `ifindex` in place.
pub fn upgrade(opts: &AttachOptions, ifindex: u32) -> Result<AttachReport> {
    let pin = &opts.pin_dir;
    let mut cfg = read_config(pin)?;
    if cfg.ifindex != ifindex {
        return Err(DatapathError::AttachedElsewhere {
            iface: host::ifname(cfg.ifindex).unwrap_or_else(|| format!("ifindex {}", cfg.ifindex)),
            pin_dir: pin.clone(),
        });
    }
    let generic = cfg.attach & ATTACH_XDP_GENERIC != 0;
    if opts.generic && !generic {
        return Err(DatapathError::CannotUpgrade(
            "the data path runs in native XDP mode; an in-place upgrade keeps the mode (`lbadm detach` and `attach --generic` to change it, which loses connections)".into(),
        ));
    }
    let netlink_tc = cfg.attach & ATTACH_TC_NETLINK != 0;
    let meta = layout::read_meta(pin);
    if netlink_tc && meta.is_none() {
        return Err(DatapathError::CannotUpgrade(
            "it was attached by an lbadm that did not record its TC filters, on a kernel without TCX links (before 6.6): `lbadm detach` and attach once with this lbadm (which loses connections); later upgrades keep them".into(),
        ));
    }
    let sizes = TableSizes::pinned(pin)?;
    if let Some(n) = opts.conn_table.filter(|&n| n != sizes.conns) {
        return Err(DatapathError::CannotUpgrade(format!(
            "the connection table has {} entries and an in-place upgrade keeps them; --conn-table {n} needs `lbadm detach` and attach (which loses connections)",
            sizes.conns
        )));
    }
    let mut ours = layout::object_shapes(objects::LB).map_err(layout_err)?;
    layout::set_table_sizes(&mut ours, sizes);
    let pinned = layout::pinned_shapes(pin, ours.keys()).map_err(layout_err)?;
    let plan = layout::plan(meta.map_or(1, |m| m.layout), &pinned, &ours).map_err(layout_err)?;

    let mut undo = Undo {
        pin_dir: pin.clone(),
        created: plan.new_maps.clone(),
        unpinned: Vec::new(),
        armed: true,
    };
    for name in &plan.grown {
        let path = pin.join(name);
        let old = raw::open_pinned(&path).map_err(bpf(format!("opening {}", path.display())))?;
        std::fs::remove_file(&path).map_err(bpf(format!("unpinning {}", path.display())))?;
        undo.unpinned.push((name.clone(), old));
    }
    let mut ebpf = load(pin, opts.log, sizes)?;
    for (name, old) in &undo.unpinned {
        copy_grown(&ebpf, name, old.as_fd(), &pinned[name])?;
    }
    let xdp: &mut Xdp = prog_mut(&mut ebpf, PROG_LB)?;
    xdp.load().ctx("loading the XDP program (verifier)")?;
    for (name, _, _) in TC_PROGRAMS {
        let cls: &mut SchedClassifier = prog_mut(&mut ebpf, name)?;
        cls.load()
            .ctx(&format!("loading the TC program {name} (verifier)"))?;
    }

    let iface = host::ifname(ifindex).unwrap_or_default();
    let mut swapped: Vec<(OwnedFd, OwnedFd)> = Vec::new();
    let swap = (|| -> Result<()> {
        for (i, (name, at, link_pin)) in TC_PROGRAMS.into_iter().enumerate() {
            let cls: &mut SchedClassifier = prog_mut(&mut ebpf, name)?;
            match &meta {
                Some(m) if netlink_tc => {
                    let old = SchedClassifierLink::attached(
                        &iface,
                        at,
                        m.tc_priority[i],
                        m.tc_handle[i].into(),
                        None,
                    )
                    .map_err(bpf(format!("the TC filter of {name}")))?;
                    let id = cls
                        .attach_to_link(old)
                        .ctx(&format!("replacing the TC filter of {name}"))?;
                    // As at attach: the filter stays when this process's handle on it goes.
                    std::mem::forget(cls.take_link(id).ctx("taking the TC link")?);
                }
                _ => {
                    let fd = cls.fd().ctx("the TC program's fd")?.as_fd();
                    swapped.push(swap_link(&pin.join(link_pin), fd)?);
                }
            }
        }
        let xdp: &mut Xdp = prog_mut(&mut ebpf, PROG_LB)?;
        let fd = xdp.fd().ctx("the XDP program's fd")?.as_fd();
        swapped.push(swap_link(&pin.join(LINK_XDP), fd)?);
        Ok(())
    })();
    if let Err(e) = swap {
        for (link, old) in swapped.iter().rev() {
            let _ = raw::update(link.as_fd(), old.as_fd());
        }
        return Err(e);
    }
    undo.armed = false;

    write_meta(
        &mut ebpf,
        &Meta {
            layout: LAYOUT_VERSION,
            ..meta.unwrap_or_default()
        },
    )?;
    let new_limits = plan.new_maps.iter().any(|m| m == lb_common::MAP_LIMITS);
    if let Some(rate) = opts
        .flood_rate
        .or(new_limits.then_some(lb_common::DEFAULT_FLOOD_RATE))
    {
        write_limits(&mut ebpf, rate)?;
    }
    if let Some(src) = opts.tunnel_source {
        cfg.tunnel_src = ip_be(src.octets());
        write_config(&mut ebpf, &cfg)?;
    }
    // The connections carried over are counted per real now, not when the daemon next
    // recounts: a data path without a daemon would otherwise count their ends below zero.
    if plan.new_maps.iter().any(|m| m == lb_common::MAP_REAL_CONNS) {
        let recounted = super::maps::Maps::open(pin)
            .and_then(|mut m| super::conntrack::recount(&mut m, &Default::default()));
        if let Err(e) = recounted {
            return Err(SysError::Bpf {
                what: "counting the carried-over connections per real".into(),
                source: e.to_string().into(),
            }
            .into());
        }
    }
    Ok(AttachReport {
        ifindex,
        generic,
        tc_netlink: netlink_tc,
        tunnel_source: Ipv4Addr::from(cfg.tunnel_src.to_ne_bytes()),
        forwarding_enabled: false,
        warnings: Vec::new(),
        upgrade: Some(plan),
    })
}

fn layout_err(e: layout::LayoutError) -> DatapathError {
    DatapathError::CannotUpgrade(e.to_string())
}

/// Points the pinned link at `prog`; returns the link and its previous program, to roll back.
fn swap_link(path: &Path, prog: std::os::fd::BorrowedFd<'_>) -> Result<(OwnedFd, OwnedFd)> {
    let what = |w: &str| format!("{w} {}", path.display());
    let link = raw::open_pinned(path).map_err(bpf(what("opening")))?;
    let old_id = raw::program_id(link.as_fd()).map_err(bpf(what("reading")))?;
    let old = raw::program_by_id(old_id).map_err(bpf(what("the program of")))?;
    raw::update(link.as_fd(), prog).map_err(bpf(what("swapping the program of")))?;
    Ok((link, old))
}

/// Copies the entries of a grown array from its old map into the new one.
fn copy_grown(
    ebpf: &aya::Ebpf,
    name: &str,
    old_fd: std::os::fd::BorrowedFd<'_>,
    old: &layout::Shape,
) -> Result<()> {
    let new = ebpf.map(name).ok_or_else(|| SysError::Bpf {
        what: format!("map {name} missing from the object"),
        source: "not found".into(),
    })?;
    let new_fd = match new {
        aya::maps::Map::PerCpuArray(d) | aya::maps::Map::Array(d) => d.fd().as_fd(),
        _ => {
            return Err(DatapathError::CannotUpgrade(format!(
                "{name} is not an array and cannot grow"
            )));
        }
    };
    let per_cpu = matches!(new, aya::maps::Map::PerCpuArray(_));
    raw::copy_array(old_fd, new_fd, old.max_entries, old.value, per_cpu)
        .map_err(bpf(format!("copying {name} into its larger successor")))?;
    Ok(())
}

/// Until the swap, a failed upgrade removes the maps it created and pins the old arrays again.
struct Undo {
    pin_dir: PathBuf,
    created: Vec<String>,
    /// Grown arrays' old maps, unpinned and kept open.
    unpinned: Vec<(String, OwnedFd)>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for name in &self.created {
            let _ = std::fs::remove_file(self.pin_dir.join(name));
        }
        for (name, fd) in &self.unpinned {
            let path = self.pin_dir.join(name);
            let _ = std::fs::remove_file(&path);
            let _ = raw::pin(fd.as_fd(), &path);
        }
    }
}

/// What an upgrade did, in one line for `lbadm attach`.
pub fn describe(plan: &UpgradePlan) -> String {
    let mut s = format!(
        "upgraded in place: programs swapped, {} maps kept",
        plan.kept.len()
    );
    if !plan.grown.is_empty() {
        s += &format!(", grown and copied: {}", plan.grown.join(", "));
    }
    if !plan.new_maps.is_empty() {
        s += &format!(", new: {}", plan.new_maps.join(", "));
    }
    if plan.from != LAYOUT_VERSION {
        s += &format!(" (layout {} -> {LAYOUT_VERSION})", plan.from);
    }
    s
}
