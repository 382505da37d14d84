//! Connection sync between two directors (`--only sync`): how late the second director learns
//! of a connection made through the first (from the client's connect to the entry in the second
//! director's table), and what sync costs at 1,000 new connections per second (both daemons'
//! CPU, bytes on the wire).

use anyhow::{Context as _, Result};
use lb_tests::{
    directors::{DirectorDaemon, ServiceSpec},
    lbbed::Decap,
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use lb_userspace::director::Maps;
use std::{
    net::{SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

const PORT: u16 = 7000;
const LAG_SAMPLES: usize = 500;
const RATE: u32 = 1000;
const RATE_SECONDS: u64 = 10;

pub fn bench() -> Result<()> {
    let mut bed = TestBed::new(TestBedOpts {
        prefix: "syb".into(),
        directors: 2,
        ..Default::default()
    })?;
    for g in bed.start_echo_servers(PORT)? {
        bed.own(g);
    }
    let _decap = Decap::attach_all(&bed)?;
    let svc = [ServiceSpec::tcp(PORT, "rr", vec![1, 1])];
    let d1 = DirectorDaemon::start(&bed, 1, &svc, true)?;
    let d2 = DirectorDaemon::start(&bed, 2, &svc, true)?;
    let start = Instant::now();
    while !(d1.sync_ready() && d2.sync_ready()) {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(15), "sync not ready");
        thread::sleep(Duration::from_millis(50));
    }
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let maps2 = Maps::open(&d2.pin_dir())?;

    // Lag: connect through director 1, then watch director 2's table for the tuple.
    let mut lags = Vec::with_capacity(LAG_SAMPLES);
    for _ in 0..LAG_SAMPLES {
        let t0 = Instant::now();
        let s = bed
            .client()
            .run(|| TcpStream::connect_timeout(&vip.into(), Duration::from_secs(2)))
            .context("connect")?;
        let local = match s.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let key = lb_common::ConnKey {
            saddr: lb_common::ip_be(local.ip().octets()),
            daddr: lb_common::ip_be(bed.vip().octets()),
            sport: local.port().to_be(),
            dport: PORT.to_be(),
            proto: lb_common::IPPROTO_TCP,
            _pad: [0; 3],
        };
        loop {
            if maps2.conns.get(&key, 0).is_ok() {
                lags.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(5),
                "director 2 never learned of {local}"
            );
            thread::sleep(Duration::from_micros(100));
        }
        drop(s);
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];

    // Cost: RATE new connections per second through director 1 for RATE_SECONDS.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let pids = (d1.pid().context("pid")?, d2.pid().context("pid")?);
    let cpu = |pid: u32| -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let f: Vec<&str> = stat
            .rsplit_once(')')
            .context("stat")?
            .1
            .split_whitespace()
            .collect();
        Ok((f[11].parse::<u64>()? + f[12].parse::<u64>()?) as f64 / hz)
    };
    let sent = |d: &DirectorDaemon, k: &str| d.sync()[k].as_u64().unwrap_or(0);
    // The status file is written once a second: let it catch up before and after.
    thread::sleep(Duration::from_millis(1100));
    let (c1, c2) = (cpu(pids.0)?, cpu(pids.1)?);
    let (b1, e1, i2) = (
        sent(&d1, "sent_bytes"),
        sent(&d1, "sent_entries"),
        sent(&d2, "installed"),
    );
    let t = Instant::now();
    let mut made = 0u64;
    while t.elapsed() < Duration::from_secs(RATE_SECONDS) {
        let due = (t.elapsed().as_secs_f64() * f64::from(RATE)) as u64;
        while made < due {
            tcp_echo_request(bed.client(), vip, b"x\n")?;
            made += 1;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let secs = t.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(1500));
    let (c1, c2) = (cpu(pids.0)? - c1, cpu(pids.1)? - c2);
    let (b1, e1, i2) = (
        sent(&d1, "sent_bytes") - b1,
        sent(&d1, "sent_entries") - e1,
        sent(&d2, "installed") - i2,
    );
    let rate = made as f64 / secs;
    let per_k = |x: f64| x / secs / (rate / 1000.0);
    println!("connection sync, two directors (namespaces on this machine):");
    println!(
        "  lag, connect through director 1 -> entry in director 2's table, {LAG_SAMPLES} connections: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        lags[lags.len() - 1]
    );
    println!(
        "  {made} connections in {secs:.1} s ({rate:.0}/s): {e1} entries sent ({:.1} per connection) in {b1} bytes",
        e1 as f64 / made as f64
    );
    println!(
        "  per 1,000 new connections/s: sender {:.1} % of a CPU, receiver {:.1} % of a CPU, {:.0} kB/s on the wire; {i2} entries installed",
        100.0 * per_k(c1),
        100.0 * per_k(c2),
        per_k(b1 as f64) / 1000.0
    );
    let st = d2.sync();
    println!(
        "  the receiver's own lag figure (sender's age + flight): p50 {} ms, p99 {} ms",
        st["lag_p50_ms"], st["lag_p99_ms"]
    );
    Ok(())
}
