//! `cargo xtask demo`: a director in front of two real servers, in network namespaces.
//!
//! Builds the test bed, attaches the director's XDP data path and the reals' XDP
//! decapsulation, configures VIP:6033 with wrr 3:1, and runs client connections through the
//! VIP while printing, every second, what an operator would watch. Midway the weight of real2
//! drops to 0 (quiesced) and comes back. Everything is removed at the end, on error and on
//! Ctrl-C.

use anyhow::{Context as _, Result};
use lb_tests::{
    lbbed::{Decap, Director},
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use lb_userspace::{
    scheduler::Scheduler,
    services::{Protocol, RealServer, ServiceId, VirtualService},
};
use std::{
    net::SocketAddrV4,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

const PORT: u16 = 6033;

fn main() -> Result<()> {
    let mut seconds = 12u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => seconds = args.next().context("--seconds N")?.parse()?,
            "-h" | "--help" => {
                println!("lb-demo [--seconds N (12)]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other} (try --help)"),
        }
    }
    lb_userspace::datapath::ensure_root()?;
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // Ctrl-C ends the run early; the drops below still clean up.
        ctrlc_flag(stop)?;
    }

    println!("building the test bed: client, director, real1, real2 on a bridge (198.18.0.0/24)");
    let bed = TestBed::new(TestBedOpts {
        prefix: "demo".into(),
        ..Default::default()
    })?;
    let _servers = bed.start_echo_servers(PORT)?;
    let mut director = Director::attach(&bed)?;
    println!(
        "director: XDP attached to eth0 ({}), tunnel source {}",
        if director.report.generic {
            "generic"
        } else {
            "native"
        },
        director.report.tunnel_source
    );
    let _decap = Decap::attach_all(&bed)?;
    println!("reals: XDP decapsulation on eth0, VIP {} on lo", bed.vip());
    let service = |w2: u32| VirtualService {
        id: ServiceId {
            proto: Protocol::Tcp,
            addr: bed.vip(),
            port: PORT,
        },
        sched: Scheduler::Wrr,
        persistence: 0,
        reals: vec![
            RealServer {
                addr: bed.real_addr(1),
                weight: 3,
            },
            RealServer {
                addr: bed.real_addr(2),
                weight: w2,
            },
        ],
    };
    director.maps.apply(&[service(1)])?;
    println!(
        "service: TCP {}:{PORT} wrr, real1 weight 3, real2 weight 1\n",
        bed.vip()
    );

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let client = {
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        let vip = SocketAddrV4::new(bed.vip(), PORT);
        let ns = bed.client();
        std::thread::scope(|s| -> Result<()> {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match tcp_echo_request(ns, vip, format!("query {i}\n").as_bytes()) {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
            let start = Instant::now();
            println!(
                "{:>4}  {:>10} {:>10}  {:>8} {:>8}  {:>8} {:>8}",
                "t", "conns ok", "failed", "real1", "pkts", "real2", "pkts"
            );
            for t in 1..=seconds {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(
                    Duration::from_secs(1)
                        .saturating_sub(start.elapsed().saturating_sub(Duration::from_secs(t - 1))),
                );
                if t == seconds / 3 {
                    director.maps.apply(&[service(0)])?;
                    println!("      -- real2 weight 0: quiesced, no new connections --");
                }
                if t == 2 * seconds / 3 {
                    director.maps.apply(&[service(1)])?;
                    println!("      -- real2 weight 1: back in rotation --");
                }
                let installed = director.maps.read()?;
                let s = &installed[0];
                let r: Vec<_> = s
                    .real_slots
                    .iter()
                    .map(|&id| director.maps.real_stats(id))
                    .collect::<Result<_, _>>()?;
                println!(
                    "{t:>3}s  {:>10} {:>10}  {:>8} {:>8}  {:>8} {:>8}",
                    ok.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    r[0].conns,
                    r[0].packets,
                    r[1].conns,
                    r[1].packets
                );
            }
            stop.store(true, Ordering::Relaxed);
            Ok(())
        })
    };
    client?;
    let reasons = director.maps.reasons()?;
    println!("\ndata path counters:");
    for (r, n) in reasons.iter().filter(|(_, n)| *n > 0) {
        println!("  {:<20} {n}", r.name());
    }
    println!(
        "\n{} connections answered, {} failed; cleaning up (namespaces, XDP programs, pins)",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    if failed.load(Ordering::Relaxed) > 0 {
        anyhow::bail!("some connections failed");
    }
    Ok(())
}

/// SIGINT/SIGTERM set `stop` instead of killing the process, so cleanup runs.
fn ctrlc_flag(stop: Arc<AtomicBool>) -> Result<()> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let _ = FLAG.set(stop);
    extern "C" fn on_signal(_: libc::c_int) {
        if let Some(f) = FLAG.get() {
            f.store(true, Ordering::Relaxed);
        }
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        if unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) }
            == libc::SIG_ERR
        {
            return Err(std::io::Error::last_os_error()).context("installing a signal handler");
        }
    }
    Ok(())
}
