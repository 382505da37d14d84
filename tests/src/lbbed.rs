//! The lbadm data path on a [`TestBed`]: the director attached in its namespace, and XDP
//! decapsulation on the real servers. Everything is detached and unpinned on drop.

use crate::{fixture::PinDir, testbed::TestBed};
use anyhow::{Context as _, Result};
use lb_userspace::{
    director::{Maps, Protocol, RealServer, Scheduler, ServiceId, VirtualService, datapath},
    realserver::decap,
};

/// A service on the bed's VIP at `port` over its reals, real `i + 1` at `weights[i]`.
pub fn service(
    bed: &TestBed,
    proto: Protocol,
    port: u16,
    sched: Scheduler,
    weights: &[u32],
) -> VirtualService {
    VirtualService {
        id: ServiceId {
            proto,
            addr: bed.vip(),
            port,
        },
        sched,
        persistence: 0,
        reals: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| RealServer::new(bed.real_addr(i + 1), weight))
            .collect(),
    }
}

/// The director's data path, attached to the director's eth0 with its own pin directory.
pub struct Director {
    pub maps: Maps,
    pub report: datapath::AttachReport,
    /// An XDP_PASS program on the director's bridge-side veth peer: veth only kicks the
    /// peer's NAPI after an XDP_TX when the peer has an XDP program (GRO alone is not enough).
    _peer_xdp: aya::Ebpf,
    // Last: pins are removed after the maps are closed.
    pub pins: PinDir,
}

impl Director {
    pub fn attach(bed: &TestBed) -> Result<Director> {
        Director::attach_n(bed, 1)
    }

    /// Director `i` (1-based) of a bed with several.
    pub fn attach_n(bed: &TestBed, i: usize) -> Result<Director> {
        // Small enough for many directors at once, large enough for every test's flows.
        Director::attach_sized(bed, i, 1 << 16)
    }

    /// Director `i` with a connection table of `conn_table` entries.
    pub fn attach_sized(bed: &TestBed, i: usize, conn_table: u32) -> Result<Director> {
        let host = bed.director_n(i);
        let pins = PinDir::new(&format!("dir{i}"));
        let opts = datapath::AttachOptions {
            iface: host.eth0().name.clone(),
            pin_dir: pins.0.clone(),
            tunnel_source: None,
            generic: false,
            log: datapath::LogLevel::Off,
            conn_table: Some(conn_table),
            flood_rate: None,
        };
        let report = host
            .ns()
            .run(|| datapath::attach(&opts))
            .with_context(|| format!("attaching director {i}"))?;
        let maps = Maps::open(&pins.0)?;
        let peer = host.bridge_port().index;
        let _peer_xdp = bed
            .bridge()
            .run(|| attach_pass(peer))
            .context("XDP on the director's peer")?;
        Ok(Director {
            maps,
            report,
            _peer_xdp,
            pins,
        })
    }
}

impl Drop for Director {
    fn drop(&mut self) {
        // The namespace may already be gone, which detaches the links by itself; the pins on
        // the (global) bpffs are removed by `PinDir`.
        let _ = datapath::detach(&self.pins.0);
    }
}

/// XDP decapsulation on every real of the bed, accepting every director and the VIP.
pub struct Decap {
    pins: Vec<PinDir>,
}

impl Decap {
    pub fn attach_all(bed: &TestBed) -> Result<Decap> {
        let mut pins = Vec::new();
        for i in 1..=bed.real_count() {
            let p = PinDir::new(&format!("decap{i}"));
            let iface = bed.real_eth0(i).name.clone();
            let (dirs, vip) = (bed.director_addrs(), bed.vip());
            let path = p.0.clone();
            bed.real(i)
                .run(move || decap::attach(&iface, &path, &dirs, &[vip]))
                .with_context(|| format!("attaching decapsulation on real{i}"))?;
            pins.push(p);
        }
        Ok(Decap { pins })
    }
}

impl Drop for Decap {
    fn drop(&mut self) {
        for p in &self.pins {
            let _ = decap::detach(&p.0);
        }
    }
}

/// Attaches an XDP program that passes everything, so the interface receives XDP_TX frames
/// from its veth peer. Detached when the returned object is dropped.
pub fn attach_pass(ifindex: u32) -> Result<aya::Ebpf> {
    let mut bpf = aya::Ebpf::load(lb_userspace::objects::BENCH)?;
    let prog: &mut aya::programs::Xdp = bpf
        .program_mut("bench_empty")
        .context("bench_empty")?
        .try_into()?;
    prog.load()?;
    prog.attach_to_if_index(ifindex, aya::programs::XdpMode::Driver)?;
    Ok(bpf)
}
