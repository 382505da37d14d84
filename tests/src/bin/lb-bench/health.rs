//! 1,000 reals health-checked every second by `lbadm daemon`: the daemon's CPU use, and the time
//! from a backend going silent to its weight being 0 in the maps.
//!
//! One real namespace holds the 1,000 real addresses (on lo, with the XDP decapsulation on its
//! eth0) and one listener on 0.0.0.0:6033, so every check, direct or through the tunnel, is
//! answered. A backend "dies" by an nftables rule in the director's namespace that drops what
//! the daemon sends to it: the checks time out, as with a hung or unplugged server.

use anyhow::{Context as _, Result, ensure};
use lb_tests::{
    fixture::PinDir,
    lbadm_bin,
    lbbed::{Decap, attach_pass},
    netns::{ChildGuard, Netns},
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::Maps;
use std::{
    net::{Ipv4Addr, TcpListener},
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const REALS: u32 = 1000;
const PORT: u16 = 6033;
const CPU_SECONDS: u64 = 20;
const DEATHS: usize = 5;
const CHECK: &str =
    "interval = \"1s\"\ntimeout = \"500ms\"\nfall = 3\nrise = 2\njitter = \"100ms\"\n";

pub fn bench() -> Result<()> {
    println!(
        "lbadm daemon, {REALS} reals, tcp check every 1 s (timeout 500 ms, fall 3, rise 2, jitter 100 ms):"
    );
    for via in ["tunnel", "direct"] {
        one(via).with_context(|| format!("health-check bench, via {via}"))?;
    }
    println!(
        "  (bound for a silent backend: up to one interval until the next check, then \
         fall - 1 intervals and one timeout: <= 3.5 s plus jitter)"
    );
    Ok(())
}

fn real(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 16, 1)) + i)
}

fn one(via: &str) -> Result<()> {
    let bed = TestBed::new(TestBedOpts {
        reals: 1,
        prefix: "hcb".into(),
        ..Default::default()
    })?;
    let pins = PinDir::new("hcb");
    let o = bed
        .director()
        .command(lbadm_bin())
        .arg("--pin-dir")
        .arg(&pins.0)
        .args(["attach", "--iface", "eth0"])
        .output()?;
    ensure!(
        o.status.success(),
        "attach: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let peer = bed.director_host().bridge_port().index;
    let _pass = bed.bridge().run(move || attach_pass(peer))?;
    let _decap = Decap::attach_all(&bed)?;
    for i in 0..REALS {
        bed.real(1).add_addr("lo", real(i), 32)?;
    }
    bed.director().add_route(
        Ipv4Addr::new(198, 18, 16, 0),
        22,
        Some(bed.real_addr(1)),
        None,
    )?;
    let _server = AcceptAll::start(bed.real(1))?;

    let dir = std::env::temp_dir().join(format!("lbadm-hcbench-{}-{via}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let status = dir.join("status.json");
    let mut cfg = format!(
        "iface = \"eth0\"\npin_dir = \"{}\"\nstatus_file = \"{}\"\n[[service]]\nvip = \"{}\"\nport = {PORT}\n\
         [service.check]\ntype = \"tcp\"\nvia = \"{via}\"\n{CHECK}",
        pins.0.display(),
        status.display(),
        bed.vip()
    );
    for i in 0..REALS {
        cfg.push_str(&format!("[[service.real]]\naddress = \"{}\"\n", real(i)));
    }
    std::fs::write(dir.join("lbadm.toml"), cfg)?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let daemon = ChildGuard::spawn(
        bed.director()
            .command(lbadm_bin())
            .args(["daemon", "--config"])
            .arg(dir.join("lbadm.toml"))
            .env("LBADM_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )?;
    let start = Instant::now();
    while passed(&status) < REALS as usize {
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "only {} of {REALS} reals passed a check after 30 s; daemon log:\n{}",
            passed(&status),
            std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }

    let pid = daemon.id();
    let (c0, t0) = (cpu_ticks(pid)?, Instant::now());
    thread::sleep(Duration::from_secs(CPU_SECONDS));
    let (c1, t1) = (cpu_ticks(pid)?, Instant::now());
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (c1 - c0) as f64 / hz / (t1 - t0).as_secs_f64() * 100.0;
    let rss = rss_kib(pid)?;

    let maps = Maps::open(&pins.0)?;
    let mut took = Vec::new();
    for k in 0..DEATHS {
        let victim = real(100 + 200 * k as u32);
        nft(bed.director(), &format!("add table ip hcb{k}"))?;
        nft(
            bed.director(),
            &format!("add chain ip hcb{k} out {{ type filter hook output priority 0 ; }}"),
        )?;
        nft(
            bed.director(),
            &format!("add rule ip hcb{k} out ip daddr {victim} tcp dport {PORT} drop"),
        )?;
        let dead = Instant::now();
        loop {
            let w = maps.read()?.into_iter().find_map(|s| {
                s.spec
                    .reals
                    .into_iter()
                    .find(|r| r.addr == victim)
                    .map(|r| r.weight)
            });
            if w == Some(0) {
                took.push(dead.elapsed().as_secs_f64());
                break;
            }
            ensure!(
                dead.elapsed() < Duration::from_secs(15),
                "{victim} never quiesced"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
    took.sort_by(f64::total_cmp);
    println!(
        "  via {via:<6}: daemon CPU {cpu:5.1} % of one core over {CPU_SECONDS} s ({:.0} checks/s scheduled), RSS {:.1} MiB; \
         silent backend -> weight 0: median {:.2} s, min {:.2} s, max {:.2} s ({DEATHS} backends)",
        f64::from(REALS),
        rss as f64 / 1024.0,
        took[took.len() / 2],
        took[0],
        took[took.len() - 1]
    );
    drop(daemon);
    let _ = bed
        .director()
        .command(lbadm_bin())
        .arg("--pin-dir")
        .arg(&pins.0)
        .arg("detach")
        .output();
    Ok(())
}

/// How many reals of the status file passed their last check.
fn passed(status: &Path) -> usize {
    let Some(v) = std::fs::read(status)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
    else {
        return 0;
    };
    v["services"][0]["reals"]
        .as_array()
        .map(|a| a.iter().filter(|r| r["last_result"] == "ok").count())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS")
}

fn nft(ns: &Netns, rule: &str) -> Result<()> {
    let o = ns
        .command("nft")
        .arg(rule)
        .output()
        .context("nft (cargo xtask setup installs nftables)")?;
    ensure!(
        o.status.success(),
        "nft {rule}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Ok(())
}

/// Accepts every connection on 0.0.0.0:PORT in `ns` and closes it.
struct AcceptAll {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl AcceptAll {
    fn start(ns: &Netns) -> Result<AcceptAll> {
        let l = ns.try_run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
        l.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok(_) => {}
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Ok(AcceptAll {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AcceptAll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
