//! `cargo xtask bench`: nanoseconds per packet through `BPF_PROG_TEST_RUN`, interleaved rounds,
//! reported as ratios against baselines measured in the same run.
//!
//! With `repeat` > 1 the kernel runs the program again on the buffer the previous repetition
//! left behind, so encapsulating programs are measured behind a wrapper that restores the frame
//! from a template and tail-calls them; the wrapper's own cost (wrapper → empty program) is
//! subtracted.

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{Array, MapData, ProgramArray},
    programs::Xdp,
};
use lb_common::{Config, ip_be};
use lb_tests::{
    fixture::{
        self, CLIENT, DIRECTOR, REAL1, REAL1_MAC, REAL2, VIP, XDP_PASS, XDP_TX, test_run_fd,
    },
    packet::{self, TCP_ACK, TCP_PSH, TCP_SYN},
};
use lb_userspace::director::{
    Maps, Protocol, RealServer, Scheduler, ServiceId, VirtualService, datapath,
};
use std::{net::Ipv4Addr, os::fd::AsFd};

mod conntrack;
mod fleet;
mod flood;
mod health;
mod mysql;
mod pps;
mod sink;
mod sync;
mod upgrade;

pub(crate) const TEMPLATE_MAX: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct Template {
    len: u32,
    vary_port_at: u32,
    vary_addr_at: u32,
    _pad: u32,
    bytes: [u8; TEMPLATE_MAX],
}
unsafe impl aya::Pod for Template {}

#[repr(C)]
#[derive(Clone, Copy)]
struct NextHop {
    dst: u32,
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}
unsafe impl aya::Pod for NextHop {}

struct Args {
    repeat: u32,
    rounds: usize,
    only: Option<String>,
    svg: std::path::PathBuf,
    /// Another build of the director object, measured in the same rounds (before/after).
    baseline: Option<std::path::PathBuf>,
}

const SECTIONS: [&str; 11] = [
    "datapath",
    "conntrack",
    "flood",
    "cli",
    "health",
    "pps",
    "mysql",
    "failover",
    "sync",
    "upgrade",
    "fleet",
];

fn parse_args() -> Result<Args> {
    let mut a = Args {
        repeat: 200_000,
        rounds: 9,
        only: None,
        svg: "target/bench/failover.svg".into(),
        baseline: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--repeat" => a.repeat = it.next().context("--repeat N")?.parse()?,
            "--rounds" => a.rounds = it.next().context("--rounds N")?.parse()?,
            "--only" => {
                let s = it.next().context("--only SECTION")?;
                if !SECTIONS.contains(&s.as_str()) {
                    bail!("unknown section {s}: one of {}", SECTIONS.join(", "));
                }
                a.only = Some(s);
            }
            "--svg" => a.svg = it.next().context("--svg PATH")?.into(),
            "--baseline" => a.baseline = Some(it.next().context("--baseline OBJECT")?.into()),
            "-h" | "--help" => {
                println!(
                    "lb-bench [--repeat N (200000)] [--rounds N (9)] [--only {}] [--svg PATH (target/bench/failover.svg)] [--baseline LB_OBJECT (datapath: another build of the director, measured in the same rounds)]",
                    SECTIONS.join("|")
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    lb_userspace::sys::host::ensure_root()?;
    let run = |s: &str| args.only.as_deref().is_none_or(|o| o == s);
    if run("datapath") {
        let (ns, ifindex, mac) = fixture::fixture_netns()?;
        ns.run(|| bench(&args, ifindex, mac))?;
        println!();
    }
    if run("conntrack") {
        let (ns, ifindex, _) = fixture::fixture_netns()?;
        ns.run(|| conntrack::bench(&args, ifindex))?;
        println!();
    }
    if run("flood") {
        flood::bench()?;
        println!();
    }
    if run("cli") {
        bench_cli()?;
        println!();
    }
    if run("health") {
        health::bench()?;
        println!();
    }
    if run("pps") {
        pps::bench()?;
        println!();
    }
    if run("mysql") {
        mysql::side_by_side()?;
        println!();
    }
    if run("failover") {
        mysql::failover_chart(&args.svg)?;
        println!();
    }
    if run("sync") {
        sync::bench()?;
        println!();
    }
    if run("upgrade") {
        upgrade::bench()?;
        println!();
    }
    if run("fleet") {
        fleet::bench()?;
        println!();
    }
    Ok(())
}

pub(crate) fn xdp<'a>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    Ok(bpf
        .program_mut(name)
        .with_context(|| format!("{name} missing"))?
        .try_into()?)
}

/// The connection table of the per-packet bench: the size lbadm had fixed before layout 3.
const BENCH_CONNS: u32 = 262_144;

/// A director object loaded with its own pinned maps, configured for the bench: VIP:6033 to
/// REAL1 and REAL2, weights 3:1.
fn director(object: &[u8], pins: &std::path::Path) -> Result<Ebpf> {
    lb_userspace::sys::bpffs::create_pin_dir(pins)?;
    // Both builds at the table size the older ones had fixed, so that a before/after compares
    // the design, not the size (a larger table costs more cache misses per lookup).
    let sizes = datapath::TableSizes::for_conns(BENCH_CONNS)?;
    let mut lb = aya::EbpfLoader::new()
        .default_map_pin_directory(pins)
        .override_global("AYA_LOG_LEVEL", &0u8, true)
        .map_max_entries(lb_common::MAP_CONNS, sizes.conns)
        .map_max_entries(lb_common::MAP_CONNS_NEW, sizes.unconfirmed)
        .load(object)?;
    xdp(&mut lb, lb_common::PROG_LB)?.load()?;
    if !pins.join(lb_common::MAP_REAL_CONNS).exists() {
        // A baseline from before layout 4: this build's maps beside its own, unused by it, so
        // that `Maps` opens the pin directory.
        datapath::load(
            pins,
            datapath::LogLevel::Off,
            datapath::TableSizes::pinned(pins)?,
        )?;
    }
    configure(pins, 1)?;
    Ok(lb)
}

/// The port of the bench's wlc service (the same reals as VIP:6033's wrr).
const WLC_PORT: u16 = 6034;

/// The bench's director configuration on the maps under `pins`: the tunnel source, and VIP:6033
/// over REAL1 and REAL2 at weights 3:1 (wrr); VIP:6034 the same under wlc.
pub(crate) fn configure(pins: &std::path::Path, nr_cpus: u32) -> Result<()> {
    let mut maps = Maps::open(pins)?;
    maps.config.set(
        0,
        Config {
            tunnel_src: ip_be(DIRECTOR.octets()),
            nr_cpus,
            ..Default::default()
        },
        0,
    )?;
    let service = |port, sched| VirtualService {
        id: ServiceId {
            proto: Protocol::Tcp,
            addr: VIP,
            port,
        },
        sched,
        persistence: 0,
        reals: vec![RealServer::new(REAL1, 3), RealServer::new(REAL2, 1)],
    };
    maps.apply(&[
        service(6033, Scheduler::Wrr),
        // The same reals under wlc, for the new-flow cost of the least-connection walk.
        service(WLC_PORT, Scheduler::Wlc),
    ])?;
    Ok(())
}

fn bench(args: &Args, ifindex: u32, mac: [u8; 6]) -> Result<()> {
    fixture::pin_cpu0()?;
    let pins = fixture::PinDir::new("bench");
    let lb = director(lb_userspace::objects::LB, &pins.0)?;
    let base_pins = fixture::PinDir::new("bench-base");
    let base = match &args.baseline {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("{}", path.display()))?;
            // aya wants the object 8-byte aligned.
            let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut aligned)[..bytes.len()]
                .copy_from_slice(&bytes);
            let obj = &bytemuck::cast_slice::<u64, u8>(&aligned)[..bytes.len()];
            Some(director(obj, &base_pins.0)?)
        }
        None => None,
    };

    let mut bench = Ebpf::load(lb_userspace::objects::BENCH)?;
    for name in [
        "bench_empty",
        "bench_floor",
        "bench_wrapper",
        "bench_fib",
        "bench_nhmap",
    ] {
        xdp(&mut bench, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    {
        let mut nh: Array<&mut MapData, NextHop> =
            Array::try_from(bench.map_mut("BENCH_NH").context("BENCH_NH")?)?;
        nh.set(
            0,
            NextHop {
                dst: ip_be(REAL1.octets()),
                ifindex,
                smac: mac,
                dmac: REAL1_MAC,
            },
            0,
        )?;
    }

    let est = packet::client_tcp(CLIENT, 40000, VIP, 6033, TCP_ACK | TCP_PSH, &[0x42; 10]);
    let syn = packet::client_tcp(CLIENT, 40001, VIP, 6033, TCP_SYN, b"");
    let syn_wlc = packet::client_tcp(CLIENT, 40001, VIP, WLC_PORT, TCP_SYN, b"");
    let other = packet::client_tcp(
        CLIENT,
        40002,
        Ipv4Addr::new(198, 18, 0, 200),
        6033,
        TCP_SYN,
        b"",
    );
    let fd_of = |b: &Ebpf, name: &str| -> Result<aya::programs::ProgramFd> {
        let p: &Xdp = b.program(name).context(name.to_string())?.try_into()?;
        Ok(p.fd()?.try_clone()?)
    };
    let lb_fd = fd_of(&lb, lb_common::PROG_LB)?;
    let base_fd = match &base {
        Some(b) => Some(fd_of(b, lb_common::PROG_LB)?),
        None => None,
    };
    let empty_fd = fd_of(&bench, "bench_empty")?;
    let floor_fd = fd_of(&bench, "bench_floor")?;
    let wrapper_fd = fd_of(&bench, "bench_wrapper")?;
    let fib_fd = fd_of(&bench, "bench_fib")?;
    let nh_fd = fd_of(&bench, "bench_nhmap")?;

    // The established flow exists before measuring.
    run(&lb_fd.as_fd(), &syn_for(&est), ifindex, 1, XDP_TX)?;
    if let Some(fd) = &base_fd {
        run(&fd.as_fd(), &syn_for(&est), ifindex, 1, XDP_TX)?;
    }

    #[derive(Clone, Copy)]
    enum Case {
        Direct(&'static str, u32),
        Wrapped(&'static str, u32, bool),
    }
    let mut cases: Vec<(&str, Case, Vec<u8>)> = vec![
        ("empty", Case::Direct("bench_empty", XDP_PASS), est.clone()),
        (
            "wrapper->empty",
            Case::Wrapped("bench_empty", XDP_PASS, false),
            est.clone(),
        ),
        (
            "wrapper->floor",
            Case::Wrapped("bench_floor", XDP_TX, false),
            est.clone(),
        ),
        (
            "wrapper->lb established",
            Case::Wrapped("lb", XDP_TX, false),
            est.clone(),
        ),
        (
            "wrapper->lb new flow",
            Case::Wrapped("lb", XDP_TX, true),
            syn.clone(),
        ),
        ("lb non-VIP", Case::Direct("lb", XDP_PASS), other.clone()),
        (
            "fib lookup",
            Case::Direct("bench_fib", XDP_PASS),
            est.clone(),
        ),
        (
            "next-hop map",
            Case::Direct("bench_nhmap", XDP_PASS),
            est.clone(),
        ),
        (
            "wrapper->lb new flow, wlc",
            Case::Wrapped("lb", XDP_TX, true),
            syn_wlc,
        ),
    ];
    if base_fd.is_some() {
        cases.extend([
            (
                "wrapper->baseline established",
                Case::Wrapped("base", XDP_TX, false),
                est.clone(),
            ),
            (
                "wrapper->baseline new flow",
                Case::Wrapped("base", XDP_TX, true),
                syn.clone(),
            ),
            (
                "baseline non-VIP",
                Case::Direct("base", XDP_PASS),
                other.clone(),
            ),
        ]);
    }
    let fd = |name: &str| match name {
        "lb" => &lb_fd,
        "base" => base_fd.as_ref().expect("baseline loaded"),
        "bench_empty" => &empty_fd,
        "bench_floor" => &floor_fd,
        "bench_fib" => &fib_fd,
        _ => &nh_fd,
    };
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for round in 0..args.rounds {
        // Every other round runs the cases in reverse, so no case always follows another.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (label, case, frame) = &cases[i];
            let ns = match *case {
                Case::Direct(prog, want) => {
                    run(&fd(prog).as_fd(), frame, ifindex, args.repeat, want)
                        .with_context(|| label.to_string())?
                }
                Case::Wrapped(prog, want, vary) => {
                    let mut progs: ProgramArray<&mut MapData> = ProgramArray::try_from(
                        bench.map_mut("BENCH_PROGS").context("BENCH_PROGS")?,
                    )?;
                    progs.set(0, fd(prog), 0)?;
                    let mut t = Template {
                        len: frame.len() as u32,
                        vary_port_at: 0,
                        vary_addr_at: 0,
                        _pad: 0,
                        bytes: [0; TEMPLATE_MAX],
                    };
                    t.bytes[..frame.len()].copy_from_slice(frame);
                    if vary {
                        // The source address, from a counter that never repeats within a
                        // run: every repetition is a flow no table has seen (a varied port
                        // would repeat after 60,000 and measure retransmitted SYNs).
                        t.vary_addr_at = 26;
                    }
                    let mut tmpl: Array<&mut MapData, Template> =
                        Array::try_from(bench.map_mut("BENCH_TMPL").context("BENCH_TMPL")?)?;
                    tmpl.set(0, t, 0)?;
                    run(&wrapper_fd.as_fd(), frame, ifindex, args.repeat, want)
                        .with_context(|| label.to_string())?
                }
            };
            samples[i].push(ns);
        }
    }
    let med: Vec<f64> = samples.iter_mut().map(|v| median(v)).collect();
    let (empty, w0, wfloor, west, wnew, nonvip, fib, nh) = (
        med[0], med[1], med[2], med[3], med[4], med[5], med[6], med[7],
    );
    // A wrapped program's cost as if run alone on a fresh frame: remove the wrapper's own cost
    // (wrapper -> empty) and add back the run overhead every direct measurement carries (empty).
    let unwrap = |w: f64| w - w0 + empty;
    let floor = unwrap(wfloor);
    let est_c = unwrap(west);
    let new_c = unwrap(wnew);
    let new_wlc = unwrap(med[8]);
    println!(
        "lb-bench: BPF_PROG_TEST_RUN, repeat {} x {} interleaved rounds, CPU 0, medians",
        args.repeat, args.rounds
    );
    println!("{:<34} {:>9}", "measured", "ns/pkt");
    for ((label, _, _), m) in cases.iter().zip(&med) {
        println!("  {label:<32} {m:>9.1}");
    }
    println!();
    println!(
        "{:<34} {:>9} {:>12}",
        "derived (wrapper removed)", "ns/pkt", "ratio"
    );
    println!(
        "  {:<32} {:>9.1} {:>12}",
        "(e) empty XDP_PASS", empty, "1.00 x (e)"
    );
    println!(
        "  {:<32} {:>9.1} {:>9.2} x (e)",
        "(d) floor: prepend 20 B + XDP_TX",
        floor,
        floor / empty
    );
    println!(
        "  {:<32} {:>9.1} {:>9.2} x (d)",
        "(a) established flow",
        est_c,
        est_c / floor
    );
    println!(
        "  {:<32} {:>9.1} {:>9.2} x (d)",
        "(b) new flow every packet",
        new_c,
        new_c / floor
    );
    println!(
        "  {:<32} {:>9.1} {:>9.2} x (b)",
        "(b') new flow, wlc (2 reals)",
        new_wlc,
        new_wlc / new_c
    );
    println!(
        "  {:<32} {:>9.1} {:>9.2} x (e)",
        "(c) non-VIP packet",
        nonvip,
        nonvip / empty
    );
    println!();
    println!(
        "next hop: bpf_fib_lookup {fib:.1} ns vs userspace-kept map {nh:.1} ns ({:+.1} ns per packet)",
        fib - nh
    );
    if base_fd.is_some() {
        // The kernel reports whole nanoseconds, too coarse for a 13 ns program; the mean over
        // rounds of the paired per-round differences recovers the fraction (rounds jitter by
        // about a nanosecond, which dithers the rounding).
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        println!();
        println!(
            "this build vs the baseline {} (same rounds; means of {} rounds, wrapper removed):",
            args.baseline
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            args.rounds
        );
        for (label, now, before, wrapped) in [
            ("established flow", 3, 9, true),
            ("new flow every packet", 4, 10, true),
            ("non-VIP packet", 5, 11, false),
        ] {
            let w = if wrapped {
                mean(&samples[1]) - mean(&samples[0])
            } else {
                0.0
            };
            let (a, b) = (mean(&samples[now]) - w, mean(&samples[before]) - w);
            println!("  {label:<30} {a:>7.2} ns vs {b:>7.2} ns  = {:.3} x", a / b);
        }
    }
    println!(
        "targets: (a) <= 3 x (d): {}   (c) <= 1.5 x (e): {}",
        verdict(est_c / floor <= 3.0),
        verdict(nonvip / empty <= 1.5)
    );
    Ok(())
}

/// `lbadm -R` of 1,000 services x 10 reals and `lbadm -L -n` of that table, in process, on
/// freshly loaded maps.
fn bench_cli() -> Result<()> {
    use lb_userspace::ipvsadm::run;
    let pins = fixture::PinDir::new("benchcli");
    let _obj = datapath::load(
        &pins.0,
        datapath::LogLevel::Off,
        datapath::TableSizes::for_conns(lb_common::DEFAULT_CONNS)?,
    )?;
    let rules = lb_tests::assertions::restore_rules(1000, 10);
    let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (mut restore, mut list) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let o = run("lbadm", &argv(&["-C"]), &pins.0, &mut std::io::empty());
        anyhow::ensure!(o.code == 0, "-C: {}", o.stderr);
        let t = std::time::Instant::now();
        let o = run("lbadm", &argv(&["-R"]), &pins.0, &mut rules.as_bytes());
        restore.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(o.code == 0, "-R: {}", o.stderr);
        let t = std::time::Instant::now();
        let o = run(
            "lbadm",
            &argv(&["-L", "-n"]),
            &pins.0,
            &mut std::io::empty(),
        );
        list.push(t.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            o.code == 0 && o.stdout.lines().count() == 11_003,
            "-L -n: {}",
            o.stderr
        );
    }
    println!(
        "lbadm, 1,000 services x 10 reals, medians of 5 (aims: -R <= 1000 ms, -L -n <= 100 ms):"
    );
    println!(
        "  -R (restore, from empty)     {:>8.1} ms",
        median(&mut restore)
    );
    println!(
        "  -L -n                        {:>8.1} ms",
        median(&mut list)
    );
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// The SYN that opens the flow of `est` (same tuple).
fn syn_for(est: &[u8]) -> Vec<u8> {
    let mut f = est.to_vec();
    f[47] = TCP_SYN;
    f
}

pub(crate) fn run(
    fd: &impl std::os::fd::AsRawFd,
    frame: &[u8],
    ifindex: u32,
    repeat: u32,
    want: u32,
) -> Result<f64> {
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let mut out = vec![0u8; frame.len() + 256];
    let mut ctx_out = [0u8; 24];
    let r = test_run_fd(
        fd,
        frame,
        &mut out,
        bytemuck::cast_slice(&md),
        &mut ctx_out,
        repeat,
    )?;
    if r.action != want {
        bail!("returned action {} instead of {want}", r.action);
    }
    Ok(r.duration_ns as f64)
}

pub(crate) fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}
