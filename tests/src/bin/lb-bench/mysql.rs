//! sysbench `oltp_point_select` side by side on one test bed: (a) straight to the backend,
//! (b) through the lbadm VIP, (c) through HAProxy in TCP mode on the director — throughput and
//! p95 latency as ratios. Then a failover run (two reals, one killed and restarted) whose
//! throughput and per-real connections over time are drawn as an SVG chart.

use anyhow::{Context as _, Result, ensure};
use lb_tests::{
    mysqlbed::{self, MysqlBed, MysqlBedOpts, Summary, Sysbench, SysbenchOpts, parse_interval},
    netns::ChildGuard,
};
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

const THREADS: u32 = 8;
const SECONDS: u32 = 8;
const ROUNDS: usize = 5;
const TABLE_SIZE: u32 = 10_000;
const HAPROXY_PORT: u16 = 7033;

fn point_select(my: &MysqlBed, target: SocketAddr) -> Result<Summary> {
    Sysbench::start(
        my.bed.client(),
        &SysbenchOpts {
            test: "oltp_point_select",
            target,
            threads: THREADS,
            seconds: SECONDS,
            table_size: TABLE_SIZE,
            reconnect: false,
        },
    )?
    .finish()
}

pub fn side_by_side() -> Result<()> {
    // One real: the three paths end at the same MariaDB.
    let my = MysqlBed::new(MysqlBedOpts {
        prefix: "sbs".into(),
        weights: vec![1],
        table_size: TABLE_SIZE,
        ..Default::default()
    })?;
    let haproxy_cfg = my.files.0.join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1m\n  timeout server 1m\n\
             listen mysql\n  bind {}:{HAPROXY_PORT}\n  server real1 {}:{}\n",
            my.bed.director_addr(),
            my.bed.real_addr(1),
            mysqlbed::PORT
        ),
    )?;
    let _haproxy = ChildGuard::spawn(
        my.bed
            .director()
            .command("/usr/sbin/haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .context("starting haproxy (cargo xtask setup installs it)")?;
    let haproxy = SocketAddr::from((my.bed.director_addr(), HAPROXY_PORT));
    mysqlbed::wait_greeting(my.bed.client(), haproxy, Duration::from_secs(10))?;
    let direct = mysqlbed::endpoint(my.bed.real_addr(1));
    let paths = [
        ("direct", direct),
        ("lbadm VIP", my.vip()),
        ("HAProxy", haproxy),
    ];
    let mut results: Vec<Vec<Summary>> = vec![Vec::new(); paths.len()];
    for round in 0..ROUNDS {
        // Every other round in reverse order, so drift does not favour one path.
        let mut order: Vec<usize> = (0..paths.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            results[i].push(point_select(&my, paths[i].1)?);
        }
    }
    let med = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    // Ratios within each round (the paths ran back to back), then their median: the machine's
    // drift between rounds cancels out.
    let per_round = |a: usize, b: usize, f: fn(&Summary) -> f64| -> Vec<f64> {
        (0..ROUNDS)
            .map(|r| f(&results[a][r]) / f(&results[b][r]))
            .collect()
    };
    let ratio = |a: usize, b: usize, f: fn(&Summary) -> f64| med(per_round(a, b, f));
    println!(
        "sysbench oltp_point_select, {THREADS} threads, {SECONDS} s x {ROUNDS} rounds (order alternating), \
         medians; ratios are medians of per-round ratios (one MariaDB backend; the client, the \
         director and the backend share this machine's CPUs):"
    );
    for (i, (name, _)) in paths.iter().enumerate() {
        let r = per_round(i, 0, |s| s.tps);
        println!(
            "  {name:<10} {:>9.0} tps  p95 {:>6.2} ms   tps {:.3} x direct (rounds: {})",
            med(results[i].iter().map(|s| s.tps).collect()),
            med(results[i].iter().map(|s| s.p95_ms).collect()),
            ratio(i, 0, |s| s.tps),
            r.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let (vd, vh) = (ratio(1, 0, |s| s.tps), ratio(1, 2, |s| s.tps));
    println!(
        "  targets: VIP >= 0.97 x direct: {vd:.3} ({}); VIP >= 1.2 x HAProxy: {vh:.3} ({})",
        if vd >= 0.97 { "met" } else { "MISSED" },
        if vh >= 1.2 { "met" } else { "MISSED" }
    );
    println!(
        "  p95 latency: VIP {:.3} x direct, HAProxy {:.3} x direct",
        ratio(1, 0, |s| s.p95_ms),
        ratio(2, 0, |s| s.p95_ms)
    );
    Ok(())
}

/// One second of the failover run.
struct Sample {
    tps: f64,
    /// sysbench connections each MariaDB has.
    active: [u32; 2],
    weight: [u32; 2],
}

pub fn failover_chart(svg: &Path) -> Result<()> {
    let mut my = MysqlBed::new(MysqlBedOpts {
        prefix: "fo".into(),
        weights: vec![1, 1],
        table_size: TABLE_SIZE,
        ..Default::default()
    })?;
    let maps = my.maps()?;
    let seconds = 30u64;
    let sb = Sysbench::start(
        my.bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: my.vip(),
            threads: THREADS,
            seconds: seconds as u32,
            table_size: TABLE_SIZE,
            reconnect: true,
        },
    )?;
    let (kill_at, restart_at) = (8u64, 18u64);
    let mut samples = Vec::new();
    let mut tps = 0.0;
    let t0 = Instant::now();
    for t in 1..=seconds {
        while t0.elapsed() < Duration::from_secs(t) {
            std::thread::sleep(Duration::from_millis(50));
        }
        for line in sb.lines.try_iter() {
            if let Some(i) = parse_interval(&line) {
                tps = i.tps;
            }
        }
        let v = my.per_real(&maps)?;
        let conns = |i: usize| my.servers[i].client_connections().unwrap_or(0);
        samples.push(Sample {
            tps,
            active: [conns(0), conns(1)],
            weight: [v[0].weight.unwrap_or(0), v[1].weight.unwrap_or(0)],
        });
        if t == kill_at {
            my.servers[1].kill()?;
        }
        if t == restart_at {
            my.servers[1].restart(my.bed.real(2))?;
        }
    }
    let s = sb.finish()?;
    ensure!(s.lost <= u64::from(THREADS), "{s:?}");
    // The last second is sysbench closing its connections.
    samples.pop();
    std::fs::create_dir_all(svg.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(svg, chart(&samples, kill_at, restart_at))?;
    println!(
        "failover run (oltp_read_only, {THREADS} threads, MariaDB on real2 killed at {kill_at} s, restarted at {restart_at} s): \
         {} transactions, {} lost with their connection, {} reconnected; chart: {}",
        s.transactions,
        s.lost,
        s.reconnected,
        svg.display()
    );
    Ok(())
}

/// Throughput (left axis) and per-real active connections (right axis) over time.
fn chart(samples: &[Sample], kill_at: u64, restart_at: u64) -> String {
    let (w, h, l, r, top, bottom) = (760.0, 380.0, 60.0, 60.0, 40.0, 75.0);
    let pw = w - l - r;
    let ph = h - top - bottom;
    let n = samples.len().max(2) as f64;
    let x = |i: f64| l + pw * i / (n - 1.0);
    let tps_max = samples.iter().map(|s| s.tps).fold(1.0, f64::max) * 1.15;
    let conn_max = samples
        .iter()
        .flat_map(|s| s.active)
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.25;
    let y_tps = |v: f64| top + ph * (1.0 - v / tps_max);
    let y_conn = |v: f64| top + ph * (1.0 - v / conn_max);
    let line = |pts: Vec<(f64, f64)>, color: &str, dash: &str| {
        let p: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" {dash} points=\"{}\"/>\n",
            p.join(" ")
        )
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"{l}\" y=\"22\" font-size=\"14\">sysbench oltp_read_only through the lbadm VIP: MariaDB on real2 killed, then restarted</text>"
    );
    for (at, label) in [(kill_at, "real2 killed"), (restart_at, "real2 restarted")] {
        let xx = x(at as f64 - 1.0);
        let _ = writeln!(
            o,
            "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#555\">{label}</text>",
            top + ph,
            xx + 4.0,
            top + 14.0
        );
    }
    // Shade the seconds real2 was out of rotation (weight 0).
    for (i, s) in samples.iter().enumerate() {
        if s.weight[1] == 0 {
            let _ = writeln!(
                o,
                "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{ph}\" fill=\"#f4cccc\" opacity=\"0.5\"/>",
                x(i as f64) - pw / (n - 1.0) / 2.0,
                pw / (n - 1.0)
            );
        }
    }
    let _ = writeln!(
        o,
        "<rect x=\"{l}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>"
    );
    for k in 0..=4 {
        let v = tps_max * k as f64 / 4.0;
        let c = conn_max * k as f64 / 4.0;
        let yy = y_tps(v);
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\">{c:.1}</text>",
            l - 6.0,
            yy + 4.0,
            l + pw + 6.0,
            yy + 4.0
        );
    }
    for i in (0..samples.len()).step_by(5) {
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}s</text>",
            x(i as f64),
            top + ph + 16.0,
            i + 1
        );
    }
    // From sysbench's first report on.
    let first = samples.iter().position(|s| s.tps > 0.0).unwrap_or(0);
    o += &line(
        samples
            .iter()
            .enumerate()
            .skip(first)
            .map(|(i, s)| (x(i as f64), y_tps(s.tps)))
            .collect(),
        "#1f77b4",
        "",
    );
    for (k, color) in [(0usize, "#2ca02c"), (1, "#d62728")] {
        o += &line(
            samples
                .iter()
                .enumerate()
                .map(|(i, s)| (x(i as f64), y_conn(f64::from(s.active[k]))))
                .collect(),
            color,
            "stroke-dasharray=\"6 3\"",
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{l}\" y=\"{:.1}\" fill=\"#1f77b4\">— transactions/s (left axis)</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#b45f5f\">shaded: real2 at weight 0 (health check DOWN)</text>\
         <text x=\"{l}\" y=\"{:.1}\" fill=\"#2ca02c\">- - real1: sysbench connections on its MariaDB</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" fill=\"#d62728\">- - real2: the same (both on the right axis)</text>",
        h - 32.0,
        l + 360.0,
        h - 32.0,
        h - 12.0,
        l + 360.0,
        h - 12.0
    );
    o += "</svg>\n";
    o
}
