//! Runs the compiled director and decapsulation programs through `BPF_PROG_TEST_RUN` on
//! crafted frames, inside a namespace whose routes and neighbours make `bpf_fib_lookup`
//! deterministic.

use crate::netns::Netns;
use anyhow::{Context as _, Result};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData},
    programs::{SchedClassifier, Xdp},
};
use lb_common::{Config, ip_be};
use lb_userspace::director::{Maps, VirtualService, datapath};
use std::os::fd::AsFd;
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

pub const DIRECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
pub const REAL1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
pub const REAL2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
pub const REAL3: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 13);
/// On the link but with no neighbour entry: `bpf_fib_lookup` answers NO_NEIGH.
pub const REAL_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 14);
/// Behind the gateway: the next-hop MAC is the gateway's.
pub const REAL_REMOTE: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 11);
pub const REAL1_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x11];
pub const REAL2_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x12];
pub const REAL3_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x13];
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
pub const IFACE: &str = "fx0";
pub const MTU: u32 = 1500;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique bpffs directory for one test, removed on drop.
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PinDir(PathBuf::from(format!(
            "/sys/fs/bpf/lbadm-test-{tag}-{}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        lb_userspace::sys::bpffs::remove_pins(&self.0);
    }
}

pub struct Outcome {
    pub action: u32,
    pub data: Vec<u8>,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// A TCP service on `VIP:port`, not persistent.
pub fn tcp_service(
    port: u16,
    sched: lb_userspace::director::Scheduler,
    reals: Vec<lb_userspace::director::RealServer>,
) -> VirtualService {
    VirtualService {
        id: lb_userspace::director::ServiceId {
            proto: lb_userspace::director::Protocol::Tcp,
            addr: VIP,
            port,
        },
        sched,
        persistence: 0,
        reals,
    }
}

/// The connection-table key of a TCP flow from `CLIENT:sport` to `VIP:port`.
pub fn client_key(sport: u16, port: u16) -> lb_common::ConnKey {
    lb_common::ConnKey {
        saddr: u32::from_ne_bytes(CLIENT.octets()),
        daddr: u32::from_ne_bytes(VIP.octets()),
        sport: sport.to_be(),
        dport: port.to_be(),
        proto: 6,
        _pad: [0; 3],
    }
}

/// One director program loaded with fresh pinned maps, plus the namespace it runs in.
pub struct Fixture {
    pub ns: Netns,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub maps: Maps,
    pub bpf: Ebpf,
    // Last: the pins go after the maps are closed.
    pub pins: PinDir,
}

/// Creates the namespace: `fx0` (198.18.0.2/24, forwarding on) with permanent neighbours for
/// the reals and the gateway, and a route to 198.18.5.0/24 via the gateway.
pub fn fixture_netns() -> Result<(Netns, u32, [u8; 6])> {
    let ns = Netns::new("fixture")?;
    ns.add_veth(IFACE, "fx1", &ns)?;
    ns.set_up(IFACE)?;
    ns.set_up("fx1")?;
    ns.set_mtu(IFACE, MTU)?;
    ns.add_addr(IFACE, DIRECTOR, 24)?;
    ns.sysctl_write(&format!("net.ipv4.conf.{IFACE}.forwarding"), "1")?;
    for (ip, mac) in [
        (REAL1, REAL1_MAC),
        (REAL2, REAL2_MAC),
        (REAL3, REAL3_MAC),
        (GATEWAY, GATEWAY_MAC),
    ] {
        ns.add_neigh_permanent(IFACE, ip, mac)?;
    }
    ns.add_route(Ipv4Addr::new(198, 18, 5, 0), 24, Some(GATEWAY), Some(IFACE))?;
    let ifindex = ns.link_index(IFACE)?;
    let mac = ns.link_mac(IFACE)?;
    Ok((ns, ifindex, mac))
}

impl Fixture {
    pub fn new() -> Result<Fixture> {
        Fixture::with_conns(1 << 16)
    }

    /// A fixture whose table of established connections has `conns` entries.
    pub fn with_conns(conns: u32) -> Result<Fixture> {
        let (ns, ifindex, mac) = fixture_netns()?;
        let pins = PinDir::new("fx");
        let sizes = datapath::TableSizes::for_conns(conns)?;
        let mut bpf = datapath::load(&pins.0, datapath::LogLevel::Debug, sizes)
            .context("loading the director object")?;
        let prog: &mut Xdp = bpf
            .program_mut(lb_common::PROG_LB)
            .context("lb_xdp missing")?
            .try_into()?;
        prog.load().context("verifier rejected lb_xdp")?;
        let mut maps = Maps::open(&pins.0)?;
        maps.config
            .set(
                0,
                Config {
                    tunnel_src: ip_be(DIRECTOR.octets()),
                    nr_cpus: aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1),
                    ..Default::default()
                },
                0,
            )
            .context("writing config")?;
        Ok(Fixture {
            ns,
            ifindex,
            mac,
            maps,
            bpf,
            pins,
        })
    }

    pub fn apply(&mut self, services: &[VirtualService]) -> Result<()> {
        Ok(self.maps.apply(services)?)
    }

    /// Runs the director once on `frame`, as if it arrived on `fx0`, on CPU 0.
    pub fn run(&self, frame: &[u8]) -> Result<Outcome> {
        self.run_on(0, frame)
    }

    /// Runs the director on `frame` from a thread pinned to `cpu`.
    pub fn run_on(&self, cpu: usize, frame: &[u8]) -> Result<Outcome> {
        let prog: &Xdp = self
            .bpf
            .program(lb_common::PROG_LB)
            .context("lb_xdp missing")?
            .try_into()?;
        run_xdp_on(&self.ns, prog, self.ifindex, cpu, frame)
    }

    /// Runs the director on each frame in turn, on CPU 0, from one thread (a thread per frame
    /// would be most of the time of a long run).
    pub fn run_all(&self, frames: &[Vec<u8>]) -> Result<Vec<Outcome>> {
        let prog: &Xdp = self
            .bpf
            .program(lb_common::PROG_LB)
            .context("lb_xdp missing")?
            .try_into()?;
        let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
        let frames = frames.to_vec();
        let ifindex = self.ifindex;
        self.ns.run(move || -> Result<Vec<Outcome>> {
            pin_cpu(0)?;
            frames
                .iter()
                .map(|frame| xdp_once(&fd, ifindex, frame))
                .collect()
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pins.0
    }

    /// Runs the TC program `name` (loaded on first use) on `frame` with `skb->mark` = `mark`.
    /// The action is the TC verdict (0 = TC_ACT_OK, 2 = TC_ACT_SHOT).
    pub fn run_tc(&mut self, name: &str, frame: &[u8], mark: u32) -> Result<Outcome> {
        let prog: &mut SchedClassifier = self
            .bpf
            .program_mut(name)
            .with_context(|| format!("{name} missing"))?
            .try_into()?;
        if prog.fd().is_err() {
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
        let frame = frame.to_vec();
        self.ns.run(move || -> Result<Outcome> {
            pin_cpu(0)?;
            let mut out = vec![0u8; frame.len() + 512];
            // struct __sk_buff up to `mark`: len, pkt_type (must be 0), mark.
            let skb: [u32; 3] = [0, 0, mark];
            let r = test_run_fd(
                &fd,
                &frame,
                &mut out,
                bytemuck::cast_slice(&skb),
                &mut [],
                1,
            )?;
            out.truncate(r.size_out as usize);
            Ok(Outcome {
                action: r.action,
                data: out,
            })
        })
    }
}

/// `BPF_PROG_TEST_RUN` on `frame` received on `ifindex`, from a thread inside `ns` pinned to
/// CPU 0 (so per-CPU state is one CPU's).
pub fn run_xdp(ns: &Netns, prog: &Xdp, ifindex: u32, frame: &[u8]) -> Result<Outcome> {
    run_xdp_on(ns, prog, ifindex, 0, frame)
}

pub fn run_xdp_on(
    ns: &Netns,
    prog: &Xdp,
    ifindex: u32,
    cpu: usize,
    frame: &[u8],
) -> Result<Outcome> {
    let frame = frame.to_vec();
    let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
    ns.run(move || -> Result<Outcome> {
        pin_cpu(cpu)?;
        xdp_once(&fd, ifindex, &frame)
    })
}

/// One `BPF_PROG_TEST_RUN` of an XDP program on `frame` received on `ifindex`, on this thread's
/// CPU: the action and the frame as it leaves (XDP metadata first, when the program left some).
pub fn xdp_once(fd: &impl std::os::fd::AsRawFd, ifindex: u32, frame: &[u8]) -> Result<Outcome> {
    let mut out = vec![0u8; frame.len() + 512];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut ctx_out = [0u8; 24];
    let r = test_run_fd(
        fd,
        frame,
        &mut out,
        bytemuck::cast_slice(&md),
        &mut ctx_out,
        1,
    )?;
    out.truncate(r.size_out as usize);
    Ok(Outcome {
        action: r.action,
        data: out,
    })
}

pub struct RawRun {
    pub action: u32,
    pub size_out: u32,
    /// Mean nanoseconds per repetition, as the kernel measured it.
    pub duration_ns: u32,
}

/// `BPF_PROG_TEST_RUN` through the raw syscall, so a program fd can be used from a thread in
/// another namespace and `repeat` set freely.
pub fn test_run_fd(
    fd: &impl std::os::fd::AsRawFd,
    data_in: &[u8],
    data_out: &mut [u8],
    ctx_in: &[u8],
    ctx_out: &mut [u8],
    repeat: u32,
) -> Result<RawRun> {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: data_in.len() as u32,
        data_size_out: data_out.len() as u32,
        data_in: data_in.as_ptr() as u64,
        data_out: data_out.as_mut_ptr() as u64,
        repeat,
        ctx_size_in: ctx_in.len() as u32,
        ctx_size_out: ctx_out.len() as u32,
        // Empty means absent (NULL), not a dangling pointer the kernel would try to use.
        ctx_in: if ctx_in.is_empty() {
            0
        } else {
            ctx_in.as_ptr() as u64
        },
        ctx_out: if ctx_out.is_empty() {
            0
        } else {
            ctx_out.as_mut_ptr() as u64
        },
        ..Default::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            std::mem::size_of::<TestAttr>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("BPF_PROG_TEST_RUN");
    }
    Ok(RawRun {
        action: attr.retval,
        size_out: attr.data_size_out,
        duration_ns: attr.duration,
    })
}

pub fn pin_cpu0() -> Result<()> {
    pin_cpu(0)
}

pub fn pin_cpu(cpu: usize) -> Result<()> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// The real-server decapsulation program with its own pinned maps.
pub struct DecapFixture {
    pub ns: Netns,
    pub ifindex: u32,
    bpf: Ebpf,
    pub pins: PinDir,
}

impl DecapFixture {
    pub fn new(directors: &[Ipv4Addr], vips: &[Ipv4Addr]) -> Result<DecapFixture> {
        let (ns, ifindex, _) = fixture_netns()?;
        let pins = PinDir::new("decap");
        std::fs::create_dir_all(&pins.0)?;
        let mut bpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            .load(lb_userspace::objects::DECAP)?;
        let prog: &mut Xdp = bpf
            .program_mut(lb_common::PROG_DECAP)
            .context("decap_xdp")?
            .try_into()?;
        prog.load().context("verifier rejected decap_xdp")?;
        {
            let mut dirs: HashMap<&mut MapData, u32, u8> =
                HashMap::try_from(bpf.map_mut(lb_common::MAP_DECAP_DIRS).context("dirs")?)?;
            for d in directors {
                dirs.insert(ip_be(d.octets()), 1, 0)?;
            }
        }
        {
            let mut v: HashMap<&mut MapData, u32, u8> =
                HashMap::try_from(bpf.map_mut(lb_common::MAP_DECAP_VIPS).context("vips")?)?;
            for a in vips {
                v.insert(ip_be(a.octets()), 1, 0)?;
            }
        }
        Ok(DecapFixture {
            ns,
            ifindex,
            bpf,
            pins,
        })
    }

    pub fn run(&self, frame: &[u8]) -> Result<Outcome> {
        let prog: &Xdp = self
            .bpf
            .program(lb_common::PROG_DECAP)
            .context("decap_xdp")?
            .try_into()?;
        run_xdp(&self.ns, prog, self.ifindex, frame)
    }

    pub fn counters(&self) -> Result<Vec<u64>> {
        let arr: aya::maps::PerCpuArray<&MapData, u64> = aya::maps::PerCpuArray::try_from(
            self.bpf.map(lb_common::MAP_DECAP_STATS).context("stats")?,
        )?;
        (0..lb_common::DECAP_COUNTERS)
            .map(|i| Ok(arr.get(&i, 0)?.iter().sum()))
            .collect()
    }
}

/// Reads the global reason counters of a fixture.
pub fn reason(maps: &Maps, r: lb_common::Reason) -> u64 {
    maps.reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map(|(_, n)| n)
        .unwrap_or(0)
}
