//! `cargo xtask demo -- --ha`: the director tier. Three directors (each `lbadm daemon` with
//! `[sync]` and `[announce]`, and BIRD with the shipped configuration) behind a router running
//! BIRD (BGP, ECMP by 5-tuple, BFD), two MariaDB reals. sysbench runs through the VIP; a third
//! of the way in director 2 dies (link cut, processes killed); two thirds in it comes back and
//! learns every connection before it is announced again. Every second: throughput, lost
//! transactions, the router's next hops, and per director the packets it forwarded and the
//! connections in its table.

use super::Args;
use anyhow::Result;
use lb_common::Reason;
use lb_tests::{
    directors::ServiceSpec,
    fleet::{Bird, FleetDirector, bird_config, start_director, start_router, wait_nexthops},
    lbbed::Decap,
    mysqlbed::{Interval, MariaDb, Sysbench, SysbenchOpts, Template, parse_interval},
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::Maps;
use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

const MYSQL: u16 = 6033;

/// Packets a director forwarded so far, and the connections in its table.
fn director_view(d: &FleetDirector) -> (u64, usize) {
    let Ok(maps) = Maps::open(&d.daemon.pin_dir()) else {
        return (0, 0);
    };
    let fwd = maps
        .reasons()
        .map(|r| {
            r.iter()
                .filter(|(r, _)| matches!(r, Reason::TxForwarded | Reason::RedirectForwarded))
                .map(|(_, n)| n)
                .sum()
        })
        .unwrap_or(0);
    (fwd, maps.conns.keys().count())
}

pub fn run(a: &Args, stop: &AtomicBool) -> Result<()> {
    let started = Instant::now();
    let seconds = a.seconds.max(30);
    println!("== lbadm demo --ha: a director tier behind a router, a director killed midway ==\n");
    let bed = TestBed::new(TestBedOpts {
        prefix: "ha".into(),
        directors: 3,
        router: true,
        ..Default::default()
    })?;
    let _decap = Decap::attach_all(&bed)?;
    println!("building: a router (BIRD), three directors (lbadm daemon + BIRD), two MariaDB reals");
    let template = Template::create(10_000)?;
    let mut dbs: Vec<MariaDb> = (1..=2)
        .map(|i| MariaDb::start(bed.real(i), &format!("ha-real{i}"), &template))
        .collect::<Result<_>>()?;
    let router = start_router(&bed)?;
    let svc = [ServiceSpec::tcp(MYSQL, "wrr", vec![1, 1])];
    let mut directors: Vec<FleetDirector> = (1..=3)
        .map(|i| start_director(&bed, i, &svc))
        .collect::<Result<_>>()?;
    let addrs: Vec<Ipv4Addr> = bed.director_addrs();
    let t = wait_nexthops(&bed, &addrs, Duration::from_secs(30))?;
    println!("\ndirector1's lbadm.toml (the same on every director, but [sync] listen/peers):");
    let cfg = std::fs::read_to_string(directors[0].daemon.files.0.join("lbadm.toml"))?;
    for l in cfg.lines().filter(|l| {
        !l.starts_with("pin_dir") && !l.starts_with("status_file") && !l.starts_with("key_file")
    }) {
        println!("  {l}");
    }
    println!(
        "\nBIRD: lb-userspace/dist/bird/director.conf on each director, router.conf on the router"
    );
    println!(
        "all three directors announced, the router's route to {} has 3 next hops ({:.1} s)\n",
        bed.vip(),
        t.as_secs_f64()
    );

    let sb = Sysbench::start(
        bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: SocketAddr::from((bed.vip(), MYSQL)),
            threads: a.threads,
            seconds: seconds as u32,
            table_size: 10_000,
            reconnect: true,
        },
    )?;
    let (kill_at, back_at) = (seconds / 3, 2 * seconds / 3);
    let header = format!(
        "{:>4} | {:>6} {:>7} {:>5} | {:<9} | {:<17} | {:<17} | {:<17}",
        "t",
        "tps",
        "p95 ms",
        "lost",
        "next hops",
        "director1 pkt/s c",
        "director2 pkt/s c",
        "director3 pkt/s c"
    );
    println!(
        "per director: packets it forwarded in the last second, connections in its table (synced)\n"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let mut last = Interval::default();
    let mut lost = 0u64;
    let mut prev = [0u64; 3];
    let mut killed: Option<Instant> = None;
    let t0 = Instant::now();
    for t in 1..=seconds {
        while t0.elapsed() < Duration::from_secs(t) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            for line in sb.lines.try_iter() {
                if let Some(i) = parse_interval(&line) {
                    last = i;
                } else if line.starts_with("lbadm: lost ") {
                    lost += 1;
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            println!("\ninterrupted: cleaning up");
            break;
        }
        let hops = bed
            .router()
            .ns()
            .route_nexthops(bed.vip())
            .unwrap_or_default();
        let hops: String = addrs
            .iter()
            .map(|a| if hops.contains(a) { '#' } else { '.' })
            .collect();
        let cells: Vec<String> = directors
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let (fwd, conns) = director_view(d);
                let cell = format!("{:>8} {:>6}", fwd.saturating_sub(prev[i]), conns);
                prev[i] = fwd;
                cell
            })
            .collect();
        println!(
            "{t:>3}s | {:>6.0} {:>7.2} {lost:>5} | {hops:<9} | {:<17} | {:<17} | {:<17}",
            last.tps, last.p95_ms, cells[0], cells[1], cells[2]
        );
        if t == kill_at {
            let d2 = &mut directors[1];
            bed.bridge()
                .set_down(&bed.director_n(2).bridge_port().name)?;
            d2.daemon.signal(libc::SIGKILL);
            d2.bird.kill();
            killed = Some(Instant::now());
            let bfd = wait_nexthops(&bed, &[addrs[0], addrs[2]], Duration::from_secs(10))?;
            println!(
                "     | >>> director2 died (link cut, lbadm daemon and BIRD killed): BFD took it out of the ECMP route in {:.0} ms;\n     |     its flows rehash to director1 and director3, which have them (sync): sysbench carries on",
                bfd.as_secs_f64() * 1000.0
            );
        }
        if t == back_at {
            let d2 = &mut directors[1];
            bed.bridge().set_up(&bed.director_n(2).bridge_port().name)?;
            d2.daemon.restart(&bed, "daemon2.log")?;
            let conf = bird_config("director.conf", &[("DIRECTOR_ID", addrs[1].to_string())])?;
            d2.bird = Bird::start(bed.director_n(2).ns(), "director2-again", &conf)?;
            println!(
                "     | >>> director2 is back: its daemon asks a peer for a full sync and announces the VIP only once it has it"
            );
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let summary = if interrupted {
        None
    } else {
        Some(sb.finish()?)
    };
    println!("\n== summary ==");
    if let Some(s) = summary {
        println!(
            "sysbench oltp_read_only, {} threads, {} s: {} transactions ({:.0}/s), p95 {:.2} ms, lost {}, reconnected {}",
            a.threads, seconds, s.transactions, s.tps, s.p95_ms, s.lost, s.reconnected
        );
    }
    if let Some(k) = killed {
        let why = directors[1].daemon.sync()["ready_reason"]
            .as_str()
            .unwrap_or("not ready yet")
            .to_string();
        println!(
            "director2 died {:.0} s into the run and came back: {why}",
            k.duration_since(t0).as_secs_f64()
        );
    }
    let _ = router;
    for db in &mut dbs {
        let _ = db.kill();
    }
    drop(directors);
    drop(bed);
    println!(
        "cleaned up (namespaces, programs, pins, BIRD, MariaDB, files) — {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
