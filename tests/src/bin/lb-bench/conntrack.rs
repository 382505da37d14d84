//! The connection tables at production scale: kernel memory per connection, and how fast new
//! flows go in — SYNs into the unconfirmed table, handshake ACKs moving them into a 4M-entry
//! established table — on one CPU and on two CPUs at once (is one shared LRU enough?).
//!
//! Through `BPF_PROG_TEST_RUN` and the bench wrapper, which restores the frame and sets its
//! source address to a per-CPU counter on every repetition, so each one is a new flow; the
//! ACKs replay the same counters, so each one completes a handshake. The wrapper's own cost
//! (wrapper -> empty, measured on the same CPU in the same round) is subtracted.

use crate::{Args, TEMPLATE_MAX, Template, median, run, xdp};
use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, MapData, PerCpuArray, PerCpuValues, ProgramArray},
};
use lb_common::{MAP_CONNS, MAP_CONNS_NEW};
use lb_tests::{
    fixture::{self, CLIENT, VIP, XDP_PASS, XDP_TX},
    packet::{self, TCP_ACK, TCP_SYN},
};
use lb_userspace::{
    director::{
        Maps,
        datapath::{self, TableSizes},
    },
    sys::bpffs::raw,
};
use std::{os::fd::AsFd, thread};

const TABLE: u32 = 1 << 22;
/// New flows per CPU per phase: two CPUs' worth stays under the unconfirmed table's million.
const FLOWS: u32 = 1 << 18;
const ROUNDS: usize = 4;
/// Offset of the IPv4 source address in an untagged frame.
const SADDR_AT: u32 = 26;

/// Kernel memory of a pinned map, as the kernel accounts it (`memlock` in its fdinfo).
fn memlock(path: &std::path::Path) -> Result<u64> {
    let fd = raw::open_pinned(path).with_context(|| format!("{}", path.display()))?;
    use std::os::fd::AsRawFd as _;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in fdinfo")
}

fn load(pins: &std::path::Path, conns: u32) -> Result<Ebpf> {
    let mut lb = datapath::load(pins, datapath::LogLevel::Off, TableSizes::for_conns(conns)?)?;
    xdp(&mut lb, lb_common::PROG_LB)?.load()?;
    crate::configure(pins, 2)?;
    Ok(lb)
}

pub fn bench(args: &Args, ifindex: u32) -> Result<()> {
    println!("lb-bench conntrack: kernel memory per connection (fdinfo memlock)");
    for n in [1u32 << 16, 1 << 18, 1 << 20, TABLE] {
        let pins = fixture::PinDir::new("ctmem");
        let _lb = load(&pins.0, n)?;
        let sizes = TableSizes::pinned(&pins.0)?;
        let (a, b) = (
            memlock(&pins.0.join(MAP_CONNS))?,
            memlock(&pins.0.join(MAP_CONNS_NEW))?,
        );
        println!(
            "  --conn-table {n:>8}: established {:>6.1} MiB ({:.1} B/entry) + unconfirmed {} entries {:>6.1} MiB = {:.1} B per connection",
            a as f64 / 1048576.0,
            a as f64 / n as f64,
            sizes.unconfirmed,
            b as f64 / 1048576.0,
            (a + b) as f64 / n as f64
        );
    }

    let pins = fixture::PinDir::new("ctrate");
    let lb = load(&pins.0, TABLE)?;
    let maps = Maps::open(&pins.0)?;
    let mut bench = Ebpf::load(lb_userspace::objects::BENCH)?;
    for name in ["bench_empty", "bench_wrapper"] {
        xdp(&mut bench, name)?.load()?;
    }
    let fd_of = |b: &Ebpf, name: &str| -> Result<aya::programs::ProgramFd> {
        let p: &aya::programs::Xdp = b.program(name).context(name.to_string())?.try_into()?;
        Ok(p.fd()?.try_clone()?)
    };
    let lb_fd = fd_of(&lb, lb_common::PROG_LB)?;
    let empty_fd = fd_of(&bench, "bench_empty")?;
    let wrapper_fd = fd_of(&bench, "bench_wrapper")?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let two = cpus >= 2;

    let syn = packet::client_tcp(CLIENT, 40000, VIP, 6033, TCP_SYN, b"");
    let ack = packet::client_tcp(CLIENT, 40000, VIP, 6033, TCP_ACK, b"");
    // One phase: set the wrapper's template and each CPU's counter, run `on` CPUs at once.
    let mut phase = |frame: &[u8],
                     target: &aya::programs::ProgramFd,
                     vary: bool,
                     bases: &[u32],
                     want: u32,
                     on: usize|
     -> Result<Vec<f64>> {
        let mut progs: ProgramArray<&mut MapData> =
            ProgramArray::try_from(bench.map_mut("BENCH_PROGS").context("BENCH_PROGS")?)?;
        progs.set(0, target, 0)?;
        let mut t = Template {
            len: frame.len() as u32,
            vary_port_at: 0,
            vary_addr_at: if vary { SADDR_AT } else { 0 },
            _pad: 0,
            bytes: [0; TEMPLATE_MAX],
        };
        t.bytes[..frame.len()].copy_from_slice(frame);
        let mut tmpl: Array<&mut MapData, Template> =
            Array::try_from(bench.map_mut("BENCH_TMPL").context("BENCH_TMPL")?)?;
        tmpl.set(0, t, 0)?;
        let mut ctr: PerCpuArray<&mut MapData, u32> =
            PerCpuArray::try_from(bench.map_mut("BENCH_CTR").context("BENCH_CTR")?)?;
        let mut v = vec![0u32; cpus];
        v[..bases.len()].copy_from_slice(bases);
        ctr.set(0, PerCpuValues::try_from(v)?, 0)?;
        let wfd = wrapper_fd.as_fd().try_clone_to_owned()?;
        thread::scope(|s| {
            let hs: Vec<_> = (0..on)
                .map(|cpu| {
                    let wfd = &wfd;
                    s.spawn(move || -> Result<f64> {
                        fixture::pin_cpu(cpu)?;
                        run(wfd, frame, ifindex, FLOWS, want)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("bench thread"))
                .collect()
        })
    };
    // [1 CPU syn, 1 CPU ack, 2 CPUs syn (per CPU), 2 CPUs ack (per CPU)], wrapper cost per CPU.
    let (mut syn1, mut ack1, mut syn2, mut ack2, mut wrap) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut next = 0u32;
    let mut bases = |n: usize| -> Vec<u32> {
        (0..n)
            .map(|_| {
                next += 1;
                next << 20
            })
            .collect()
    };
    for _ in 0..ROUNDS.min(args.rounds.max(1)) {
        let w = phase(
            &syn,
            &empty_fd,
            false,
            &[0, 0],
            XDP_PASS,
            if two { 2 } else { 1 },
        )?;
        wrap.extend(w);
        let b = bases(1);
        syn1.extend(phase(&syn, &lb_fd, true, &b, XDP_TX, 1)?);
        ack1.extend(phase(&ack, &lb_fd, true, &b, XDP_TX, 1)?);
        if two {
            let b = bases(2);
            syn2.extend(phase(&syn, &lb_fd, true, &b, XDP_TX, 2)?);
            ack2.extend(phase(&ack, &lb_fd, true, &b, XDP_TX, 2)?);
        }
    }
    let w = median(&mut wrap);
    let (s1, a1) = (median(&mut syn1) - w, median(&mut ack1) - w);
    let (confirmed, unconfirmed) = (
        maps.conns.keys().filter(|k| k.is_ok()).count(),
        maps.conns_new.keys().filter(|k| k.is_ok()).count(),
    );
    println!();
    println!(
        "lb-bench conntrack: {TABLE}-entry established table (+{} unconfirmed), {FLOWS} new flows per CPU per phase, {} rounds, medians, wrapper ({w:.0} ns) removed",
        lb_common::unconfirmed_size(TABLE),
        ROUNDS.min(args.rounds.max(1))
    );
    println!(
        "  1 CPU : SYN into the unconfirmed table {s1:>6.1} ns = {:>5.2} M flows/s; handshake ACK into the established table {a1:>6.1} ns = {:>5.2} M/s; both: {:.2} M connections/s",
        1e3 / s1,
        1e3 / a1,
        1e3 / (s1 + a1)
    );
    if two {
        let (s2, a2) = (median(&mut syn2) - w, median(&mut ack2) - w);
        let agg = 2.0 * 1e3 / (s2 + a2);
        println!(
            "  2 CPUs: SYN {s2:>6.1} ns, ACK {a2:>6.1} ns per CPU = {agg:.2} M connections/s together: {:.2} x one CPU",
            agg / (1e3 / (s1 + a1))
        );
    }
    println!("  afterwards: {confirmed} established, {unconfirmed} unconfirmed entries");
    Ok(())
}
