//! `cargo xtask demo`: the main job, end to end, with real MySQL software.
//!
//! A client, a director and two real servers in network namespaces on a bridge. The reals are
//! set up by `lbadm realserver setup` and run MariaDB (the protocol ProxySQL speaks) on port
//! 6033; the director runs `lbadm daemon` from a configuration file this writes, checking each
//! real through the tunnel with a MySQL login and `SELECT 1`. sysbench `oltp_read_only` runs
//! through VIP:6033 while, every second, the demo prints what an operator watches. Midway MariaDB
//! on real2 is killed, later restarted; at the end a summary, then everything is removed (also
//! on Ctrl-C and on error).

use anyhow::{Context as _, Result};
use lb_tests::{
    lbadm_bin,
    mysqlbed::{Interval, MysqlBed, MysqlBedOpts, Summary, Sysbench, SysbenchOpts, parse_interval},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

mod ha;

pub struct Args {
    pub seconds: u64,
    pub threads: u32,
    /// The director tier instead: three directors behind a BIRD router, one killed midway.
    pub ha: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        seconds: 40,
        threads: 8,
        ha: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seconds" => a.seconds = it.next().context("--seconds N")?.parse()?,
            "--threads" => a.threads = it.next().context("--threads N")?.parse()?,
            "--ha" => a.ha = true,
            "-h" | "--help" => {
                println!(
                    "lb-demo [--seconds N (40, at least 20)] [--threads N (8)] [--ha (a director tier: three directors behind a BIRD router, one killed midway and brought back)]"
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other} (try --help)"),
        }
    }
    a.seconds = a.seconds.max(20);
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    lb_userspace::sys::host::ensure_root()?;
    let stop = Arc::new(AtomicBool::new(false));
    ctrlc_flag(stop.clone())?;
    if a.ha {
        return ha::run(&a, &stop);
    }
    let started = Instant::now();

    println!("== lbadm demo: sysbench through an lbadm director to two MariaDB real servers ==\n");
    println!(
        "building: client, director, real1, real2 in network namespaces on a bridge (198.18.0.0/24),"
    );
    println!(
        "          `lbadm realserver setup` on each real, MariaDB on port 6033, `lbadm daemon` on the director"
    );
    let opts = MysqlBedOpts {
        prefix: "demo".into(),
        weights: vec![1, 1],
        table_size: 10_000,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        fall: 2,
        rise: 2,
    };
    let mut my = MysqlBed::new(opts).context("building the demo bed")?;
    for (i, out) in my.setup_output.iter().enumerate() {
        println!(
            "\nreal{} $ lbadm realserver setup --decap xdp --vip {} --director {}",
            i + 1,
            my.bed.vip(),
            my.bed.director_addr()
        );
        for l in out.lines().take(8) {
            println!("  {l}");
        }
    }
    println!(
        "\ndirector $ lbadm daemon --config {}",
        my.config_path().display()
    );
    let cfg = std::fs::read_to_string(my.config_path())?;
    for l in cfg
        .lines()
        .filter(|l| !l.starts_with("pin_dir") && !l.starts_with("status_file"))
    {
        println!("  {l}");
    }
    println!(
        "\nready in {:.1} s: both reals pass the mysql check through the tunnel (login as monitor, SELECT 1)\n",
        started.elapsed().as_secs_f64()
    );

    let maps = my.maps()?;
    let sb = Sysbench::start(
        my.bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: my.vip(),
            threads: a.threads,
            seconds: a.seconds as u32,
            table_size: 10_000,
            reconnect: true,
        },
    )?;
    let kill_at = a.seconds / 4;
    let restart_at = a.seconds / 2;
    let more_at = restart_at + 6;
    let mut second: Option<Sysbench> = None;
    let mut last = Interval::default();
    let mut last_extra = Interval::default();
    let (mut lost, mut reconnected) = (0u64, 0u64);
    let mut killed: Option<Instant> = None;
    let mut restarted: Option<Instant> = None;
    let (mut down_after, mut up_after) = (None, None);
    let mut log_seen = my.daemon_log().len();
    let mut prev_pkts = [0u64; 2];
    let header = format!(
        "{:>4} | {:>6} {:>7} {:>7} {:>5} {:>6} | {:<34} | {:<34}",
        "t",
        "tps",
        "qps",
        "p95 ms",
        "lost",
        "reconn",
        "real1: health w act conns pkt/s",
        "real2: health w act conns pkt/s"
    );
    println!(
        "tps, p95: the oltp_read_only run; qps*: every client; lost/reconn: transactions lost with"
    );
    println!(
        "their connection, new connections opened; per real: health, weight, active connections"
    );
    println!(
        "(ipvsadm's ActiveConn), connections scheduled so far, inbound packets in the last second\n"
    );
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
    let t0 = Instant::now();
    for t in 1..=a.seconds {
        // Wake every 100 ms to catch the health transitions; print once a second.
        while t0.elapsed() < Duration::from_secs(t) {
            std::thread::sleep(Duration::from_millis(100));
            let main = sb.lines.try_iter().map(|l| (false, l));
            let more = second
                .iter()
                .flat_map(|s| s.lines.try_iter().map(|l| (true, l)));
            for (extra, line) in main.chain(more).collect::<Vec<_>>() {
                if let Some(i) = parse_interval(&line) {
                    if extra {
                        last_extra = i;
                    } else {
                        last = i;
                    }
                } else if line.starts_with("lbadm: lost ") {
                    lost += 1;
                } else if line.starts_with("lbadm: reconnected ") {
                    reconnected += 1;
                }
            }
            let view = my.per_real(&maps)?;
            if let (Some(k), None) = (killed, down_after)
                && view[1].weight == Some(0)
            {
                down_after = Some(k.elapsed());
            }
            if let (Some(r), None) = (restarted, up_after)
                && view[1].weight == Some(1)
            {
                up_after = Some(r.elapsed());
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        if stop.load(Ordering::Relaxed) {
            println!("\ninterrupted: cleaning up");
            break;
        }
        let log = my.daemon_log();
        for l in log[log_seen.min(log.len())..]
            .lines()
            .filter(|l| l.contains("DOWN after") || l.contains("UP after"))
        {
            let msg = l
                .split_once("lbadm_userspace::daemon: ")
                .map(|x| x.1)
                .unwrap_or(l);
            println!("     | daemon: {msg}");
        }
        log_seen = log.len();
        let view = my.per_real(&maps)?;
        let cell = |i: usize| {
            let st = my.real_status(i);
            let v = &view[i];
            let pkts = v.counters.packets.saturating_sub(prev_pkts[i]);
            format!(
                "{:<6} {:>1} {:>3} {:>5} {:>7}",
                st["health"].as_str().unwrap_or("?").to_uppercase(),
                v.weight.map(|w| w.to_string()).unwrap_or("-".into()),
                v.active,
                v.counters.conns,
                pkts
            )
        };
        println!(
            "{t:>3}s | {:>6.0} {:>7.0} {:>7.2} {lost:>5} {reconnected:>6} | {:<34} | {:<34}",
            last.tps,
            last.qps + last_extra.qps,
            last.p95_ms.max(last_extra.p95_ms),
            cell(0),
            cell(1)
        );
        prev_pkts = [view[0].counters.packets, view[1].counters.packets];
        if t == kill_at {
            my.servers[1].kill()?;
            killed = Some(Instant::now());
            println!(
                "     | >>> MariaDB on real2 killed (SIGKILL): its connections break; sysbench reconnects through the VIP"
            );
        }
        if t == restart_at {
            println!("     | >>> restarting MariaDB on real2");
            my.servers[1].restart(my.bed.real(2))?;
            restarted = Some(Instant::now());
        }
        if t == more_at && t + 3 < a.seconds {
            println!(
                "     | >>> 4 more sysbench clients connect: wlc gives them to real2, which has fewer connections"
            );
            second = Some(Sysbench::start(
                my.bed.client(),
                &SysbenchOpts {
                    test: "oltp_point_select",
                    target: my.vip(),
                    threads: 4,
                    seconds: (a.seconds - t) as u32,
                    table_size: 10_000,
                    reconnect: true,
                },
            )?);
        }
    }
    let interrupted = stop.load(Ordering::Relaxed);
    let summary = if interrupted {
        None
    } else {
        Some(sb.finish()?)
    };
    let extra: Option<Summary> = match second {
        Some(s) if !interrupted => Some(s.finish()?),
        _ => None,
    };

    println!("\ndirector $ lbadm -L -n --stats");
    let out = my
        .bed
        .director()
        .command(lbadm_bin())
        .env("LBADM_PIN_DIR", &my.pins.0)
        .args(["-L", "-n", "--stats"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    println!("\ndirector $ lbadm status   (health part)");
    let out = my
        .bed
        .director()
        .command(lbadm_bin())
        .env("LBADM_PIN_DIR", &my.pins.0)
        .arg("status")
        .arg("--status-file")
        .arg(my.files.0.join("status.json"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if let Some(h) = text.find("health:") {
        print!("{}", &text[h..]);
    }

    println!("\n== summary ==");
    if let Some(s) = &summary {
        println!(
            "sysbench oltp_read_only, {} threads, {} s: {} transactions ({:.0}/s), {} queries, p95 {:.2} ms",
            a.threads, a.seconds, s.transactions, s.tps, s.queries, s.p95_ms
        );
        println!(
            "  lost transactions {} (one per connection MariaDB on real2 had when it was killed), reconnected {}",
            s.lost, s.reconnected
        );
    }
    if let Some(s) = &extra {
        println!(
            "second client (oltp_point_select, 4 threads): {} transactions, lost {}",
            s.transactions, s.lost
        );
    }
    let f = |d: Option<Duration>| {
        d.map(|d| format!("{:.2} s", d.as_secs_f64()))
            .unwrap_or("-".into())
    };
    println!(
        "real2 quiesced {} after the kill (bound: fall 2 x (interval 1 s + jitter) + timeout 0.5 s), back {} after the restart",
        f(down_after),
        f(up_after)
    );
    let view = my.per_real(&maps)?;
    println!(
        "connections scheduled by the director: real1 {}, real2 {}",
        view[0].counters.conns, view[1].counters.conns
    );
    println!(
        "(real2's ActiveConn stays above 0 after the kill: the director sees only the inbound half, so\n connections the dead server could not close expire after their timeout, as in IPVS; wlc counts\n those idle since real2 went DOWN as inactive, so the new clients still went to real2)"
    );
    drop(maps);
    drop(my);
    println!(
        "cleaned up (namespaces, XDP/TC programs, pins, MariaDB, files) — {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
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
