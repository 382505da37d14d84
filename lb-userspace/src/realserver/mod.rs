//! The real-server side of LVS-TUN: `lbadm realserver setup | teardown | check`.
//!
//! A real server must (1) decapsulate the director's IPIP packets — with the kernel's `tunl0`
//! (the LVS-TUN standard) or with lbadm's XDP program (`lb_userspace::decap`, for kernels
//! without `ipip`, and stricter: it only accepts listed directors), (2) own each VIP as a /32
//! on a device that never answers ARP for it (`tunl0`, or `lo` in XDP mode), (3) not drop the
//! decapsulated packets by reverse-path filtering, and (4) never answer or announce the VIP in
//! ARP on the LAN. Everything is done through rtnetlink and procfs, in the caller's network
//! namespace; nothing shells out.
//!
//! `setup` records every previous value and everything it added in a JSON state file, so
//! `teardown` restores exactly that and removes only what setup added. `check` inspects the
//! host (no state file needed) and explains every problem with its fix.

pub mod check;
pub mod decap;
pub mod firewall;

use crate::sys::{
    SysError, host,
    netlink::{Link, NetlinkError, Rtnl, name_of},
    sysctl::{self, SysctlError, ipv4_conf_key, ipv4_conf_path, ipv4_conf_read, ipv4_conf_write},
};
use lb_common::{MAP_DECAP_DIRS, MAP_DECAP_VIPS, ip_be};
use netlink_packet_route::link::LinkMessage;
use rtnetlink::LinkIpIp;
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

pub use check::{CheckOptions, CheckReport, Finding, NotChecked, Severity, check};

pub const DEFAULT_SYSCTL_FILE: &str = "/etc/sysctl.d/90-lbadm-realserver.conf";
pub const DEFAULT_STATE_FILE: &str = "/var/lib/lbadm/realserver.json";

/// The sysctl file and the state file setup writes when none is named. In the `ip netns` NAME
/// both go to /run/lbadm/netns-NAME: the namespace ends at reboot, so must they, and a file in
/// /etc/sysctl.d would be applied to the host's own interfaces at the next boot.
pub fn default_files(netns: Option<&str>) -> (PathBuf, PathBuf) {
    match netns {
        None => (DEFAULT_SYSCTL_FILE.into(), DEFAULT_STATE_FILE.into()),
        Some(name) => {
            let dir = Path::new("/run/lbadm").join(format!("netns-{name}"));
            (dir.join("sysctl.conf"), dir.join("realserver.json"))
        }
    }
}

pub const TUNL0: &str = "tunl0";
/// The throwaway ipip link created to make the kernel autoload `ipip` (which creates `tunl0`).
pub const PROBE_LINK: &str = "lbadm-ipprobe";
/// Its remote end (TEST-NET-1): a fallback-like tunnel (any/any) would clash with `tunl0`.
pub const PROBE_REMOTE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A full-size (1500-byte) client packet plus the 20-byte outer header.
pub const MIN_MTU: u32 = 1520;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecapMode {
    /// The kernel's ipip fallback device (the LVS-TUN standard; needs CONFIG_NET_IPIP).
    Tunl0,
    /// lbadm's XDP decapsulation program (only accepts IPIP from the listed directors).
    Xdp,
    /// This host's own lbadm director decapsulates (the two-node layout: every node a director
    /// and a real server; one XDP program per interface plays both roles). Accepts IPIP only
    /// from the listed peer directors.
    Director,
}

impl DecapMode {
    pub fn name(self) -> &'static str {
        match self {
            DecapMode::Tunl0 => "tunl0",
            DecapMode::Xdp => "xdp",
            DecapMode::Director => "director",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RealServerError {
    #[error("{0}")]
    Msg(String),
    #[error(
        "this kernel has no ipip driver (CONFIG_NET_IPIP), so tunl0 cannot exist: use `--decap xdp --director ADDR` instead"
    )]
    NoIpip,
    #[error(
        "the XDP decapsulation is not attached (nothing pinned under {0}): run `lbadm realserver setup --decap xdp`"
    )]
    DecapNotAttached(PathBuf),
    #[error(
        "the XDP decapsulation is already attached (pinned under {0}): run `lbadm realserver teardown` first"
    )]
    DecapAlreadyAttached(PathBuf),
    #[error(transparent)]
    Sys(#[from] SysError),
}

impl From<NetlinkError> for RealServerError {
    fn from(e: NetlinkError) -> Self {
        RealServerError::Sys(e.into())
    }
}

impl From<SysctlError> for RealServerError {
    fn from(e: SysctlError) -> Self {
        RealServerError::Sys(e.into())
    }
}

type Result<T> = std::result::Result<T, RealServerError>;

fn msg(s: impl Into<String>) -> RealServerError {
    RealServerError::Msg(s.into())
}

/// RTM_NEWLINK for the throwaway ipip link: creating any ipip link makes the kernel autoload
/// `rtnl-link-ipip`, whose init creates `tunl0` in every namespace.
pub fn ipip_probe_message() -> LinkMessage {
    LinkIpIp::new(PROBE_LINK).remote(PROBE_REMOTE).build()
}

/// Makes the kernel load `ipip` (so `tunl0` appears) by creating and deleting a throwaway ipip
/// link. `NoIpip` when the kernel has no ipip driver.
fn load_ipip(nl: &Rtnl) -> Result<()> {
    match nl.add_link(
        ipip_probe_message(),
        "creating a throwaway ipip link to load the ipip driver",
    ) {
        Ok(()) => {}
        // A tunnel with these parameters exists: ipip is loaded already.
        Err(e) if e.errno() == Some(libc::EEXIST) => return Ok(()),
        Err(e)
            if e.errno() == Some(libc::EOPNOTSUPP)
                || e.to_string().contains("Unknown device type") =>
        {
            return Err(RealServerError::NoIpip);
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(l) = nl.link(PROBE_LINK)? {
        nl.del_link(l.index, "deleting the throwaway ipip link")?;
    }
    Ok(())
}

/// Whether this kernel can create ipip links (and so has `tunl0`), probed in the current
/// namespace with a throwaway link that is removed again.
pub fn kernel_has_ipip() -> Result<bool> {
    let nl = Rtnl::new()?;
    if nl.link(TUNL0)?.is_some() {
        return Ok(true);
    }
    match load_ipip(&nl) {
        Ok(()) => Ok(true),
        Err(RealServerError::NoIpip) => Ok(false),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// State.

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SysctlChange {
    pub dev: String,
    pub name: String,
    pub previous: u32,
    pub value: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddedAddr {
    pub dev: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct XdpAttachment {
    pub iface: String,
    pub pin_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub decap: DecapMode,
    pub iface: String,
    pub vips: Vec<Ipv4Addr>,
    pub directors: Vec<Ipv4Addr>,
    /// Every sysctl setup changed, with the value it had before setup first changed it.
    pub sysctls: Vec<SysctlChange>,
    /// Addresses setup added.
    pub addrs: Vec<AddedAddr>,
    /// Setup brought tunl0 up (it was down).
    pub tunl0_brought_up: bool,
    /// Setup attached the XDP decapsulation (it was not attached).
    pub xdp_attached: Option<XdpAttachment>,
    /// Setup gave this host's director its peers (`--decap director`): its pin directory.
    #[serde(default)]
    pub director_peers: Option<PathBuf>,
    pub sysctl_file: PathBuf,
    /// The sysctl file's content before setup wrote it (None: it did not exist).
    pub sysctl_file_previous: Option<String>,
    /// Setup wrote the sysctl file (so `sysctl_file_previous` is meaningful).
    #[serde(default)]
    pub sysctl_file_written: bool,
}

pub(crate) fn load_state(path: &Path) -> Result<Option<State>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s).map(Some).map_err(|e| {
            msg(format!(
                "cannot parse the state file {}: {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(msg(format!(
            "cannot read the state file {}: {e}",
            path.display()
        ))),
    }
}

fn save_state(path: &Path, st: &State) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| msg(format!("cannot create {}: {e}", dir.display())))?;
    }
    let s = serde_json::to_string_pretty(st).expect("state serializes");
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, s + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            msg(format!(
                "cannot write the state file {}: {e}",
                path.display()
            ))
        })
}

// ---------------------------------------------------------------------------------------------
// setup

#[derive(Debug, Clone)]
pub struct SetupOptions {
    pub vips: Vec<Ipv4Addr>,
    pub decap: DecapMode,
    pub iface: Option<String>,
    pub directors: Vec<Ipv4Addr>,
    pub sysctl_file: PathBuf,
    pub state_file: PathBuf,
    pub decap_pin_dir: PathBuf,
    /// This host's director data path (`--decap director`, and to refuse `--decap xdp` beside
    /// it).
    pub director_pin_dir: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct SetupReport {
    /// One line per change made, in order.
    pub changes: Vec<String>,
    /// Warnings about things setup does not change (the operator's own configuration).
    pub warnings: Vec<String>,
    /// `(description, value)` of the effective settings after setup.
    pub effective: Vec<(String, u32)>,
}

pub(crate) fn receiving_iface(nl: &Rtnl, iface: Option<&str>) -> Result<Link> {
    match iface {
        Some(i) => nl.link(i)?.ok_or_else(|| {
            msg(format!(
                "no interface named `{i}`: pick one from `ip -br link`"
            ))
        }),
        None => {
            let idx = nl.default_route_ifindex()?.ok_or_else(|| {
                msg("no IPv4 default route to find the interface that receives tunnelled packets: pass --iface IF")
            })?;
            nl.links()?
                .into_iter()
                .find(|l| l.index == idx)
                .ok_or_else(|| {
                    msg(format!(
                        "the default route's interface (ifindex {idx}) has vanished"
                    ))
                })
        }
    }
}

pub(crate) fn dedup(v: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
    let mut seen = BTreeSet::new();
    v.iter().copied().filter(|a| seen.insert(*a)).collect()
}

/// Directors and VIPs the XDP decapsulation pinned under `pin_dir` accepts.
pub(crate) fn decap_members(pin_dir: &Path) -> Result<(BTreeSet<Ipv4Addr>, BTreeSet<Ipv4Addr>)> {
    let read = |name: &str| -> Result<BTreeSet<Ipv4Addr>> {
        let m = open_decap_map(pin_dir, name)?;
        let h: aya::maps::HashMap<_, u32, u8> =
            aya::maps::HashMap::try_from(&m).map_err(|e| msg(format!("decap map {name}: {e}")))?;
        Ok(h.keys()
            .filter_map(|k| k.ok())
            .map(|k| Ipv4Addr::from(k.to_ne_bytes()))
            .collect())
    };
    Ok((read(MAP_DECAP_DIRS)?, read(MAP_DECAP_VIPS)?))
}

fn open_decap_map(pin_dir: &Path, name: &str) -> Result<aya::maps::Map> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(name)).map_err(|e| {
        msg(format!(
            "opening the pinned decap map {name} under {}: {e}",
            pin_dir.display()
        ))
    })?;
    aya::maps::Map::from_map_data(data).map_err(|e| msg(format!("decap map {name}: {e}")))
}

fn set_decap_members(pin_dir: &Path, name: &str, addrs: &[Ipv4Addr]) -> Result<()> {
    let mut m = open_decap_map(pin_dir, name)?;
    let mut h: aya::maps::HashMap<_, u32, u8> =
        aya::maps::HashMap::try_from(&mut m).map_err(|e| msg(format!("decap map {name}: {e}")))?;
    let want: BTreeSet<u32> = addrs.iter().map(|a| ip_be(a.octets())).collect();
    let have: Vec<u32> = h.keys().filter_map(|k| k.ok()).collect();
    // Add first, then remove: the set never misses an address that stays.
    for k in &want {
        h.insert(*k, 1, 0)
            .map_err(|e| msg(format!("decap map {name}: {e}")))?;
    }
    for k in have.into_iter().filter(|k| !want.contains(k)) {
        h.remove(&k)
            .map_err(|e| msg(format!("decap map {name}: {e}")))?;
    }
    Ok(())
}

pub(crate) fn join(v: &[Ipv4Addr]) -> String {
    v.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn decap_attached(pin_dir: &Path) -> bool {
    pin_dir.join(crate::sys::bpffs::LINK_XDP).exists()
}

pub fn setup(opts: &SetupOptions) -> Result<SetupReport> {
    host::ensure_root()?;
    let vips = dedup(&opts.vips);
    let directors = dedup(&opts.directors);
    if vips.is_empty() {
        return Err(msg("no VIP given: pass --vip VIP[,VIP...]"));
    }
    if let Some((vip, why)) = vips
        .iter()
        .find_map(|&v| crate::director::table::not_unicast(v).map(|why| (v, why)))
    {
        return Err(msg(format!(
            "{vip} cannot be a VIP: {why}; nothing was changed"
        )));
    }
    if opts.decap != DecapMode::Tunl0 && directors.is_empty() {
        return Err(msg(format!(
            "--decap {} needs --director ADDR (at least one): the decapsulation only accepts tunnelled packets from listed directors",
            opts.decap.name()
        )));
    }
    if opts.decap == DecapMode::Director
        && !crate::director::datapath::is_attached(&opts.director_pin_dir)
    {
        return Err(msg(format!(
            "--decap director needs this host's director data path, and none is attached under {}: `lbadm attach --iface IF` first (or --decap tunl0 / xdp on a host that is only a real server)",
            opts.director_pin_dir.display()
        )));
    }
    if opts.decap == DecapMode::Xdp
        && crate::director::datapath::is_attached(&opts.director_pin_dir)
    {
        return Err(msg(format!(
            "this host runs an lbadm director (pinned under {}), whose XDP program the decapsulation program cannot sit beside: use --decap director (the director decapsulates for this host's real)",
            opts.director_pin_dir.display()
        )));
    }
    let nl = Rtnl::new()?;
    let iface = receiving_iface(&nl, opts.iface.as_deref())?;
    let previous = load_state(&opts.state_file)?;
    if let Some(p) = &previous
        && (p.decap != opts.decap || p.iface != iface.name)
    {
        return Err(msg(format!(
            "this host is already set up with --decap {} on {} (state in {}): run `lbadm realserver teardown` first",
            p.decap.name(),
            p.iface,
            opts.state_file.display()
        )));
    }
    let existed = previous.is_some();
    let mut st = previous.unwrap_or_else(|| State {
        decap: opts.decap,
        iface: iface.name.clone(),
        vips: vec![],
        directors: vec![],
        sysctls: vec![],
        addrs: vec![],
        tunl0_brought_up: false,
        xdp_attached: None,
        director_peers: None,
        sysctl_file: opts.sysctl_file.clone(),
        sysctl_file_previous: None,
        sysctl_file_written: false,
    });
    st.vips = dedup(&[st.vips.clone(), vips.clone()].concat());
    st.directors = directors.clone();
    let mut rep = SetupReport::default();
    let result = setup_steps(opts, &nl, &iface, &vips, &directors, &mut st, &mut rep);
    // Whatever was done is recorded, also on failure, so teardown can undo it.
    if existed || !rep.changes.is_empty() || result.is_ok() {
        let saved = save_state(&opts.state_file, &st);
        result?;
        saved?;
    } else {
        result?;
    }
    Ok(rep)
}

fn setup_steps(
    opts: &SetupOptions,
    nl: &Rtnl,
    iface: &Link,
    vips: &[Ipv4Addr],
    directors: &[Ipv4Addr],
    st: &mut State,
    rep: &mut SetupReport,
) -> Result<()> {
    // 1. Decapsulation.
    let vip_dev = match opts.decap {
        DecapMode::Tunl0 => {
            let tunl0 = match nl.link(TUNL0)? {
                Some(l) => l,
                None => {
                    load_ipip(nl)?;
                    nl.link(TUNL0)?.ok_or_else(|| {
                        msg("the ipip driver is loaded but this namespace has no tunl0 (net.core.fb_tunnels_only_for_init_net is set): use `--decap xdp --director ADDR`")
                    })?
                }
            };
            if !tunl0.up {
                nl.set_up(tunl0.index, true)?;
                st.tunl0_brought_up = true;
                rep.changes.push("brought tunl0 up".into());
            }
            tunl0
        }
        DecapMode::Director => {
            let pin = &opts.director_pin_dir;
            let have = crate::director::peers::read(pin).map_err(|e| msg(e.to_string()))?;
            if have != directors.iter().copied().collect() {
                crate::director::peers::write(pin, directors).map_err(|e| msg(e.to_string()))?;
                rep.changes.push(format!(
                    "this host's director (pinned under {}) now decapsulates IPIP from {}",
                    pin.display(),
                    join(directors)
                ));
            }
            st.director_peers = Some(pin.clone());
            nl.link("lo")?
                .ok_or_else(|| msg("this namespace has no `lo`"))?
        }
        DecapMode::Xdp => {
            let pin = &opts.decap_pin_dir;
            if decap_attached(pin) {
                let (have_dirs, have_vips) = decap_members(pin)?;
                let want_dirs: BTreeSet<_> = directors.iter().copied().collect();
                let want_vips: BTreeSet<_> = st.vips.iter().copied().collect();
                if have_dirs != want_dirs {
                    set_decap_members(pin, MAP_DECAP_DIRS, directors)?;
                    rep.changes.push(format!(
                        "XDP decapsulation now accepts IPIP from {}",
                        join(directors)
                    ));
                }
                if have_vips != want_vips {
                    set_decap_members(pin, MAP_DECAP_VIPS, &st.vips)?;
                    rep.changes.push(format!(
                        "XDP decapsulation now accepts VIPs {}",
                        join(&st.vips)
                    ));
                }
            } else {
                let generic = decap::attach(&iface.name, pin, directors, &st.vips)?;
                st.xdp_attached = Some(XdpAttachment {
                    iface: iface.name.clone(),
                    pin_dir: pin.clone(),
                });
                rep.changes.push(format!(
                    "attached XDP decapsulation to {} ({} XDP, pinned under {}), accepting IPIP from {} for {}",
                    iface.name,
                    if generic { "generic" } else { "native" },
                    pin.display(),
                    join(directors),
                    join(&st.vips)
                ));
            }
            nl.link("lo")?
                .ok_or_else(|| msg("this namespace has no `lo`"))?
        }
    };

    // 2. VIPs as /32 on the decapsulating device (tunl0 is NOARP; lo never answers ARP for
    //    itself). Another /32 of the same address elsewhere is the operator's: warn only.
    let addrs = nl.addrs()?;
    let links = nl.links()?;
    let name_of = |i: u32| name_of(&links, i);
    for &vip in vips {
        if !addrs
            .iter()
            .any(|a| a.addr == vip && a.ifindex == vip_dev.index && a.prefix == 32)
        {
            nl.add_host_address(vip_dev.index, vip)?;
            st.addrs.push(AddedAddr {
                dev: vip_dev.name.clone(),
                addr: vip,
                prefix: 32,
            });
            rep.changes
                .push(format!("added {vip}/32 to {}", vip_dev.name));
        }
        for a in addrs
            .iter()
            .filter(|a| a.addr == vip && !(a.ifindex == vip_dev.index && a.prefix == 32))
        {
            let dev = name_of(a.ifindex);
            if (dev != "lo" && dev != TUNL0) || a.prefix != 32 {
                rep.warnings.push(format!(
                    "{vip}/{} is also on {dev}, which may answer ARP for it or add a connected route: remove it (`ip addr del {vip}/{} dev {dev}`)",
                    a.prefix, a.prefix
                ));
            }
        }
    }

    // 3. sysctls, in this namespace.
    let set =
        |dev: &str, name: &str, value: u32, st: &mut State, rep: &mut SetupReport| -> Result<()> {
            let previous = ipv4_conf_read(dev, name)?;
            if previous == value {
                return Ok(());
            }
            ipv4_conf_write(dev, name, value)?;
            if !st.sysctls.iter().any(|c| c.dev == dev && c.name == name) {
                st.sysctls.push(SysctlChange {
                    dev: dev.into(),
                    name: name.into(),
                    previous,
                    value,
                });
            } else if let Some(c) = st
                .sysctls
                .iter_mut()
                .find(|c| c.dev == dev && c.name == name)
            {
                c.value = value;
            }
            rep.changes.push(format!(
                "set {} = {value} (was {previous})",
                ipv4_conf_key(dev, name)
            ));
            Ok(())
        };
    // rp_filter is MAXCONF: the kernel validates with max(conf/all, conf/<dev>). The inner
    // packet (client → VIP) arrives on the decapsulating path while the route back to the
    // client may leave elsewhere, so strict (1) may drop it; loose (2) and off (0) pass. The
    // least intrusive fix that is correct whatever `all` holds: a per-device 1 becomes 2 (loose
    // keeps the anti-spoofing check for unroutable sources), and only if `all` itself is 1 does
    // it become 2 (then max(all, dev) can no longer be 1; 0 cannot be reached on a device
    // while all=1, which is why we do not set per-device 0). Other devices keep their own
    // values (all=2 only relaxes a strict device to loose).
    let mut rp_devs = vec![iface.name.clone()];
    if opts.decap == DecapMode::Tunl0 {
        rp_devs.push(TUNL0.into());
    }
    for dev in &rp_devs {
        if ipv4_conf_read(dev, "rp_filter")? == 1 {
            set(dev, "rp_filter", 2, st, rep)?;
        }
    }
    if ipv4_conf_read("all", "rp_filter")? == 1 {
        set("all", "rp_filter", 2, st, rep)?;
    }
    // ARP: reply only for addresses of the receiving interface, and never use the VIP as the
    // source of our own ARP requests. Both are MAXCONF too, so `all` covers every device.
    if ipv4_conf_read("all", "arp_ignore")? < 1 {
        set("all", "arp_ignore", 1, st, rep)?;
    }
    if ipv4_conf_read("all", "arp_announce")? < 2 {
        set("all", "arp_announce", 2, st, rep)?;
    }

    // Read back what the kernel now uses.
    for dev in &rp_devs {
        let v = sysctl::ipv4_conf_effective(dev, "rp_filter")?;
        if v == 1 {
            return Err(msg(format!(
                "net.ipv4.conf.{dev}.rp_filter is still effectively 1 after setting it (something re-applied it: a sysctl.d glob re-run by udev?)"
            )));
        }
        rep.effective
            .push((format!("rp_filter on {dev} (max of all, {dev})"), v));
    }
    rep.effective.push((
        format!("arp_ignore on {} (max of all, {})", iface.name, iface.name),
        sysctl::ipv4_conf_effective(&iface.name, "arp_ignore")?,
    ));
    rep.effective.push((
        format!(
            "arp_announce on {} (max of all, {})",
            iface.name, iface.name
        ),
        sysctl::ipv4_conf_effective(&iface.name, "arp_announce")?,
    ));

    // 4. Persist in sysctl.d (applied at boot by systemd-sysctl). The tunl0 key only applies
    //    once ipip is loaded (systemd #26241); `all` covers it meanwhile.
    let mut content = String::from(
        "# Written by `lbadm realserver setup`; `lbadm realserver teardown` removes it.\n\
         # rp_filter, arp_ignore and arp_announce are max(all, <dev>) in the kernel.\n",
    );
    let mut keys: Vec<(String, String)> = vec![("all".into(), "rp_filter".into())];
    keys.extend(rp_devs.iter().map(|d| (d.clone(), "rp_filter".to_string())));
    keys.push(("all".into(), "arp_ignore".into()));
    keys.push(("all".into(), "arp_announce".into()));
    for (dev, name) in &keys {
        // sysctl.conf separates with dots; a device name containing dots needs slashes.
        let key = if dev.contains('.') {
            format!("net/ipv4/conf/{dev}/{name}")
        } else {
            ipv4_conf_key(dev, name)
        };
        content.push_str(&format!("{key} = {}\n", ipv4_conf_read(dev, name)?));
    }
    let current = std::fs::read_to_string(&opts.sysctl_file).ok();
    if current.as_deref() != Some(content.as_str()) {
        if let Some(dir) = opts.sysctl_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| msg(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&opts.sysctl_file, &content)
            .map_err(|e| msg(format!("cannot write {}: {e}", opts.sysctl_file.display())))?;
        // Remember what was there before the first write only.
        if !st.sysctl_file_written {
            st.sysctl_file_previous = current;
            st.sysctl_file_written = true;
            st.sysctl_file = opts.sysctl_file.clone();
        }
        rep.changes.push(format!(
            "wrote {} (applied at boot)",
            opts.sysctl_file.display()
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// teardown

#[derive(Debug, Clone, Default)]
pub struct TeardownReport {
    pub changes: Vec<String>,
}

pub fn teardown(state_file: &Path, sysctl_file: Option<&Path>) -> Result<TeardownReport> {
    host::ensure_root()?;
    let st = load_state(state_file)?.ok_or_else(|| {
        msg(format!(
            "nothing to tear down: no state file at {} (`lbadm realserver setup` was not run here, or was already torn down)",
            state_file.display()
        ))
    })?;
    let nl = Rtnl::new()?;
    let mut rep = TeardownReport::default();
    for c in st.sysctls.iter().rev() {
        // A device that is gone took its settings with it.
        if !ipv4_conf_path(&c.dev, &c.name).exists() {
            continue;
        }
        ipv4_conf_write(&c.dev, &c.name, c.previous)?;
        rep.changes.push(format!(
            "restored {} = {}",
            ipv4_conf_key(&c.dev, &c.name),
            c.previous
        ));
    }
    for a in st.addrs.iter().rev() {
        if let Some(l) = nl.link(&a.dev)? {
            nl.del_host_address(l.index, a.addr)?;
            rep.changes
                .push(format!("removed {}/{} from {}", a.addr, a.prefix, a.dev));
        }
    }
    if let Some(x) = &st.xdp_attached {
        match decap::detach(&x.pin_dir) {
            Ok(()) => rep
                .changes
                .push(format!("detached XDP decapsulation from {}", x.iface)),
            Err(RealServerError::DecapNotAttached(_)) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(pin) = &st.director_peers
        && crate::director::datapath::is_attached(pin)
    {
        crate::director::peers::write(pin, &[]).map_err(|e| msg(e.to_string()))?;
        rep.changes
            .push("this host's director no longer decapsulates for peers".into());
    }
    if st.tunl0_brought_up
        && let Some(l) = nl.link(TUNL0)?
    {
        nl.set_up(l.index, false)?;
        rep.changes.push("brought tunl0 down".into());
    }
    let file = sysctl_file.unwrap_or(&st.sysctl_file);
    match &st.sysctl_file_previous {
        _ if !st.sysctl_file_written => {}
        Some(prev) => {
            std::fs::write(file, prev)
                .map_err(|e| msg(format!("cannot restore {}: {e}", file.display())))?;
            rep.changes
                .push(format!("restored the previous {}", file.display()));
        }
        None => match std::fs::remove_file(file) {
            Ok(()) => rep.changes.push(format!("removed {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(msg(format!("cannot remove {}: {e}", file.display()))),
        },
    }
    std::fs::remove_file(state_file)
        .map_err(|e| msg(format!("cannot remove {}: {e}", state_file.display())))?;
    rep.changes
        .push(format!("removed {}", state_file.display()));
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::{InfoData, InfoIpTunnel, InfoKind, LinkAttribute, LinkInfo};
    use rtnetlink::packet_core::{Emitable, Parseable};
    use std::net::IpAddr;

    fn bytes<E: Emitable>(m: &E) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    #[test]
    fn ipip_probe_message_is_an_ipip_link_with_a_test_net_remote() {
        let m = ipip_probe_message();
        let b = bytes(&m);
        let parsed = LinkMessage::parse(b.as_slice()).unwrap();
        assert_eq!(parsed.header.index, 0);
        assert!(parsed.header.flags.is_empty(), "created down");
        assert!(
            parsed
                .attributes
                .contains(&LinkAttribute::IfName(PROBE_LINK.into()))
        );
        assert!(PROBE_LINK.len() <= 15, "IFNAMSIZ");
        let info = parsed
            .attributes
            .iter()
            .find_map(|a| {
                if let LinkAttribute::LinkInfo(i) = a {
                    Some(i.clone())
                } else {
                    None
                }
            })
            .unwrap();
        assert!(info.contains(&LinkInfo::Kind(InfoKind::IpIp)));
        assert!(info.contains(&LinkInfo::Data(InfoData::IpTunnel(vec![
            InfoIpTunnel::Remote(IpAddr::V4(PROBE_REMOTE))
        ]))));
    }

    #[test]
    fn state_round_trips_through_json() {
        let st = State {
            decap: DecapMode::Xdp,
            iface: "eth0".into(),
            vips: vec![Ipv4Addr::new(198, 18, 0, 100)],
            directors: vec![Ipv4Addr::new(198, 18, 0, 2)],
            sysctls: vec![SysctlChange {
                dev: "all".into(),
                name: "arp_ignore".into(),
                previous: 0,
                value: 1,
            }],
            addrs: vec![AddedAddr {
                dev: "lo".into(),
                addr: Ipv4Addr::new(198, 18, 0, 100),
                prefix: 32,
            }],
            tunl0_brought_up: false,
            xdp_attached: Some(XdpAttachment {
                iface: "eth0".into(),
                pin_dir: "/sys/fs/bpf/x".into(),
            }),
            director_peers: None,
            sysctl_file: "/etc/sysctl.d/90-lbadm-realserver.conf".into(),
            sysctl_file_previous: None,
            sysctl_file_written: true,
        };
        let s = serde_json::to_string(&st).unwrap();
        assert!(s.contains("\"decap\":\"xdp\""));
        assert_eq!(serde_json::from_str::<State>(&s).unwrap(), st);
    }
}
