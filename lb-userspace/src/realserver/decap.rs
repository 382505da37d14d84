//! The real server's XDP decapsulation program (the `--decap xdp` alternative to `tunl0`):
//! attach it with the directors and VIPs it accepts, pinned like the director's data path.

use super::RealServerError;
use crate::sys::{
    SysError,
    bpffs::{self, LINK_XDP, bpf},
    host,
};
use aya::{
    EbpfLoader,
    maps::{HashMap, MapData},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::{MAP_DECAP_DIRS, MAP_DECAP_VIPS, PROG_DECAP, ip_be};
use std::{net::Ipv4Addr, path::Path};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lbadm-decap";

type Result<T> = std::result::Result<T, RealServerError>;

/// Attaches decapsulation to `iface`, accepting IPIP only from `directors` and only for `vips`.
/// Returns whether it runs in generic (skb) mode. On failure nothing is left behind.
pub fn attach(
    iface: &str,
    pin_dir: &Path,
    directors: &[Ipv4Addr],
    vips: &[Ipv4Addr],
) -> Result<bool> {
    host::ensure_root()?;
    let ifindex = host::ifindex(iface)?;
    bpffs::ensure_bpffs(pin_dir)?;
    if pin_dir.join(LINK_XDP).exists() {
        return Err(RealServerError::DecapAlreadyAttached(pin_dir.into()));
    }
    bpffs::create_pin_dir(pin_dir)?;
    let result = (|| -> std::result::Result<bool, SysError> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .load(crate::objects::DECAP)
            .map_err(bpf("loading the decapsulation object"))?;
        set_members(&mut ebpf, MAP_DECAP_DIRS, directors)?;
        set_members(&mut ebpf, MAP_DECAP_VIPS, vips)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_DECAP)
            .ok_or_else(|| SysError::Bpf {
                what: PROG_DECAP.into(),
                source: "missing".into(),
            })?
            .try_into()
            .map_err(bpf("decap program type"))?;
        prog.load()
            .map_err(bpf("loading the decapsulation program (verifier)"))?;
        let (id, generic) = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(id) => (id, false),
            Err(_) => (
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(|source| SysError::NoXdp {
                        iface: iface.into(),
                        source,
                    })?,
                true,
            ),
        };
        let link: FdLink = prog
            .take_link(id)
            .map_err(bpf("taking the XDP link"))?
            .try_into()
            .map_err(bpf("XDP without a bpf_link (needs Linux >= 5.9)"))?;
        link.pin(pin_dir.join(LINK_XDP))
            .map_err(bpf("pinning the XDP link"))?;
        Ok(generic)
    })();
    if result.is_err() {
        bpffs::remove_pins(pin_dir);
    }
    Ok(result?)
}

fn set_members(
    ebpf: &mut aya::Ebpf,
    map: &str,
    addrs: &[Ipv4Addr],
) -> std::result::Result<(), SysError> {
    let m = ebpf.map_mut(map).ok_or_else(|| SysError::Bpf {
        what: map.into(),
        source: "missing".into(),
    })?;
    let mut h: HashMap<&mut MapData, u32, u8> = HashMap::try_from(m).map_err(bpf(map))?;
    let stale: Vec<u32> = h.keys().filter_map(|k| k.ok()).collect();
    for k in stale {
        h.remove(&k).map_err(bpf(map))?;
    }
    for a in addrs {
        h.insert(ip_be(a.octets()), 1, 0).map_err(bpf(map))?;
    }
    Ok(())
}

/// Detaches decapsulation and removes its pins.
pub fn detach(pin_dir: &Path) -> Result<()> {
    host::ensure_root()?;
    let path = pin_dir.join(LINK_XDP);
    if !path.exists() {
        return Err(RealServerError::DecapNotAttached(pin_dir.into()));
    }
    let link = PinnedLink::from_pin(&path).map_err(bpf("opening the pinned link"))?;
    drop(link.unpin().map_err(bpf("unpinning the link"))?);
    bpffs::remove_pins(pin_dir);
    Ok(())
}
