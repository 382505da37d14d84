//! Packets per second forwarded by the director on the veth path, against an XDP program that
//! only reflects packets (`bench_reflect`: rewrite the MACs, XDP_TX) on the same path.
//!
//! The client blasts frames of 256 established TCP flows to VIP:6033 from AF_PACKET sockets
//! (one per CPU); the director forwards them (lbadm: parse, conntrack, encapsulate, XDP_TX; the
//! reflector: MAC rewrite, XDP_TX); real1's eth0 counts and drops them in XDP (`bench_sink`).
//! Rounds alternate between the two so both see the same machine state. Where the kernel has
//! IPVS (the VM suite's stock 6.1 guest; not this host), kernel IPVS-TUN is the third director
//! on the same bed, same sender, same sink: `ipvsadm -A -t VIP:6033 -s rr`, `-a … -i`, the VIP
//! on the director's eth0 as the bed has it.

use anyhow::{Context as _, Result, ensure};
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{Xdp, XdpMode},
};
use lb_tests::{
    fixture::PinDir,
    flood::{raw_socket, send_all},
    lbadm_bin,
    lbbed::attach_pass,
    netns::Netns,
    packet::{self, TCP_ACK, TCP_SYN},
    testbed::{TestBed, TestBedOpts},
};
use std::{
    os::fd::OwnedFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const FLOWS: u16 = 256;
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;

#[repr(C)]
#[derive(Clone, Copy)]
struct NextHop {
    dst: u32,
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}
unsafe impl aya::Pod for NextHop {}

pub fn bench() -> Result<()> {
    let bed = TestBed::new(TestBedOpts {
        reals: 1,
        prefix: "pps".into(),
        ..Default::default()
    })?;
    let peer = bed.director_host().bridge_port().index;
    let _pass = bed.bridge().run(move || attach_pass(peer))?;
    // The sink on real1.
    let real_if = bed.real_eth0(1).index;
    let mut sink = bed.real(1).run(move || -> Result<Ebpf> {
        let mut bpf = Ebpf::load(lb_userspace::objects::BENCH)?;
        let p: &mut Xdp = bpf
            .program_mut("bench_sink")
            .context("bench_sink")?
            .try_into()?;
        p.load()?;
        p.attach_to_if_index(real_if, XdpMode::Driver)?;
        Ok(bpf)
    })?;
    let counter: PerCpuArray<_, u32> =
        PerCpuArray::try_from(sink.map_mut("BENCH_CTR").context("BENCH_CTR")?)?;
    let count = || -> Result<u64> { Ok(counter.get(&0, 0)?.iter().map(|&c| u64::from(c)).sum()) };

    let frames: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            packet::client_tcp_to(
                bed.director_eth0().mac,
                bed.client_eth0().mac,
                bed.client_addr(),
                20000 + i,
                bed.vip(),
                6033,
                TCP_ACK,
                &[0u8; 18],
            )
        })
        .collect();
    let syns: Vec<Vec<u8>> = (0..FLOWS)
        .map(|i| {
            packet::client_tcp_to(
                bed.director_eth0().mac,
                bed.client_eth0().mac,
                bed.client_addr(),
                20000 + i,
                bed.vip(),
                6033,
                TCP_SYN,
                &[],
            )
        })
        .collect();
    let client_if = bed.client_eth0().index;
    let cpus = thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let socks: Vec<OwnedFd> = (0..cpus)
        .map(|_| bed.client().run(|| raw_socket(client_if)))
        .collect::<Result<_>>()?;

    let mut lb_rates = Vec::new();
    let mut reflect_rates = Vec::new();
    let mut encap_rates = Vec::new();
    let mut ipvs_rates = Vec::new();
    let (mut lb_softirq, mut ipvs_softirq) = (Vec::new(), Vec::new());
    let ipvs = ipvsadm(bed.director(), &["-C"]).is_ok();
    for _ in 0..ROUNDS {
        // lbadm's director.
        let pins = PinDir::new("pps");
        lbadm(bed.director(), &pins, &["attach", "--iface", "eth0"])?;
        lbadm(
            bed.director(),
            &pins,
            &["-A", "-t", &format!("{}:6033", bed.vip()), "-s", "rr"],
        )?;
        lbadm(
            bed.director(),
            &pins,
            &[
                "-a",
                "-t",
                &format!("{}:6033", bed.vip()),
                "-r",
                &bed.real_addr(1).to_string(),
                "-i",
            ],
        )?;
        send_all(&socks[0], &syns)?;
        thread::sleep(Duration::from_millis(200));
        let (rate, soft) = blast_softirq(&socks, &frames, &count)?;
        lb_rates.push(rate);
        lb_softirq.push(soft);
        lbadm(bed.director(), &pins, &["detach"])?;

        // The reflectors on the same port.
        let dir_if = bed.director_eth0().index;
        let nh = NextHop {
            dst: 0,
            ifindex: dir_if,
            smac: bed.director_eth0().mac,
            dmac: bed.real_eth0(1).mac,
        };
        for (prog, rates) in [
            ("bench_reflect", &mut reflect_rates),
            ("bench_reflect_encap", &mut encap_rates),
        ] {
            let reflector = bed.director().run(move || -> Result<Ebpf> {
                let mut bpf = Ebpf::load(lb_userspace::objects::BENCH)?;
                let mut m: Array<_, NextHop> =
                    Array::try_from(bpf.map_mut("BENCH_NH").context("BENCH_NH")?)?;
                m.set(0, nh, 0)?;
                let p: &mut Xdp = bpf.program_mut(prog).context(prog)?.try_into()?;
                p.load()?;
                p.attach_to_if_index(dir_if, XdpMode::Driver)?;
                Ok(bpf)
            })?;
            rates.push(blast(&socks, &frames, &count)?);
            drop(reflector);
        }

        if ipvs {
            let svc = format!("{}:6033", bed.vip());
            ipvsadm(bed.director(), &["-A", "-t", &svc, "-s", "rr"])?;
            let real = bed.real_addr(1).to_string();
            ipvsadm(bed.director(), &["-a", "-t", &svc, "-r", &real, "-i"])?;
            send_all(&socks[0], &syns)?;
            thread::sleep(Duration::from_millis(200));
            let (rate, soft) = blast_softirq(&socks, &frames, &count)?;
            ipvs_rates.push(rate);
            ipvs_softirq.push(soft);
            ipvsadm(bed.director(), &["-C"])?;
        }
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Ratios within each round (back to back), then their median: drift between rounds cancels.
    let ratios: Vec<f64> = lb_rates
        .iter()
        .zip(&reflect_rates)
        .map(|(a, b)| a / b)
        .collect();
    let ratio = med(ratios.clone());
    let pair = |a: &[f64], b: &[f64]| med(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let vs_encap = pair(&lb_rates, &encap_rates);
    let encap_vs = pair(&encap_rates, &reflect_rates);
    let lb_rates_all = lb_rates.clone();
    let (lb, re, en) = (med(lb_rates), med(reflect_rates), med(encap_rates));
    println!(
        "forwarded packet rate on the veth path ({cpus} sender threads, 64-byte frames of {FLOWS} established flows, \
         {ROUNDS} alternating rounds of {}s, medians):",
        ROUND.as_secs()
    );
    println!(
        "  reflector (MAC rewrite + XDP_TX)   {:>10.0} packets/s",
        re
    );
    println!(
        "  reflector + 20-byte encap          {:>10.0} packets/s = {encap_vs:.2} x the reflector \
         (what a 20-byte-longer frame costs on this path)",
        en
    );
    println!(
        "  lbadm director (encap + XDP_TX)    {:>10.0} packets/s = {ratio:.2} x the reflector \
         (per round {}; target >= 0.9: {})",
        lb,
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        if ratio >= 0.9 { "met" } else { "MISSED" }
    );
    println!("  lbadm vs the encapsulating reflector: {vs_encap:.2} (lbadm's own work)");
    if ipvs {
        let per_round: Vec<String> = lb_rates_all
            .iter()
            .zip(&ipvs_rates)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        let vs_ipvs = pair(&lb_rates_all, &ipvs_rates);
        println!(
            "  kernel IPVS-TUN director           {:>10.0} packets/s; lbadm = {vs_ipvs:.2} x IPVS (per round {})",
            med(ipvs_rates.clone()),
            per_round.join(", ")
        );
        // Where the path caps both at one rate, the forwarding work shows in softirq time (XDP
        // and IPVS both run there; the senders' own work is system time).
        let soft: Vec<String> = lb_softirq
            .iter()
            .zip(&ipvs_softirq)
            .map(|(a, b)| format!("{:.2}", a / b))
            .collect();
        println!(
            "  softirq CPU per forwarded packet: lbadm {:.1} us, IPVS {:.1} us; lbadm = {:.2} x IPVS (per round {})",
            med(lb_softirq.clone()),
            med(ipvs_softirq.clone()),
            pair(&lb_softirq, &ipvs_softirq),
            soft.join(", ")
        );
    } else {
        println!("  kernel IPVS-TUN: not on this kernel (the VM suite's guest measures it)");
    }
    Ok(())
}

/// `ipvsadm` in `ns` (kernel IPVS, the comparison's other director).
fn ipvsadm(ns: &Netns, args: &[&str]) -> Result<()> {
    let o = ns.command("ipvsadm").args(args).output()?;
    ensure!(
        o.status.success(),
        "ipvsadm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

fn lbadm(ns: &Netns, pins: &PinDir, args: &[&str]) -> Result<()> {
    let o = ns
        .command(lbadm_bin())
        .env("LBADM_PIN_DIR", &pins.0)
        .args(args)
        .output()?;
    ensure!(
        o.status.success(),
        "lbadm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Softirq time of all CPUs so far, in microseconds (`/proc/stat`, USER_HZ ticks).
fn softirq_us() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("/proc/stat is empty")?;
    let softirq: f64 = cpu
        .split_whitespace()
        .nth(7)
        .context("no softirq field in /proc/stat")?
        .parse()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(softirq * 1e6 / hz)
}

/// [`blast`], and the softirq time it took per packet that reached the sink (microseconds).
fn blast_softirq(
    socks: &[OwnedFd],
    frames: &[Vec<u8>],
    count: &dyn Fn() -> Result<u64>,
) -> Result<(f64, f64)> {
    let (s0, n0) = (softirq_us()?, count()?);
    let rate = blast(socks, frames, count)?;
    let (s1, n1) = (softirq_us()?, count()?);
    Ok((rate, (s1 - s0) / (n1 - n0).max(1) as f64))
}

/// Sends `frames` round-robin from every socket for one round; the sink's packets per second.
fn blast(socks: &[OwnedFd], frames: &[Vec<u8>], count: &dyn Fn() -> Result<u64>) -> Result<f64> {
    let stop = Arc::new(AtomicBool::new(false));
    let before = count()?;
    let t0 = Instant::now();
    thread::scope(|s| {
        for (i, fd) in socks.iter().enumerate() {
            let stop = stop.clone();
            s.spawn(move || {
                let _ = lb_tests::fixture::pin_cpu(i);
                while !stop.load(Ordering::Relaxed) {
                    let _ = send_all(fd, frames);
                }
            });
        }
        thread::sleep(ROUND);
        stop.store(true, Ordering::Relaxed);
    });
    let took = t0.elapsed();
    // Let the last packets drain.
    thread::sleep(Duration::from_millis(100));
    let n = count()? - before;
    Ok(n as f64 / took.as_secs_f64())
}
