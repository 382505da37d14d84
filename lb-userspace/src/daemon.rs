//! `lbadm daemon`: health-checks the real servers of a configuration file and keeps the maps in
//! line with it.
//!
//! * Start: attach the data path if it is not attached, read the maps, make them match the file
//!   (services, reals, weights). Health is inherited from the maps, so a restart does not undo
//!   what the previous daemon did: a real the maps hold with weight 0 while the file gives it
//!   more (`quiesce`), or a real missing from a service the maps already hold (`remove`),
//!   starts DOWN and needs `rise` successes. Every other real starts UP (keepalived without
//!   `alpha`).
//! * Each real is checked by its own task, with a random start offset and random jitter per
//!   interval. fall/rise decide its health; a change is one transaction (lock, read, edit that
//!   real, [`Maps::apply_locked`]): weight 0 (`quiesce`) or removal (`remove`) on DOWN, the
//!   configured weight on UP.
//! * SIGHUP: re-read the file; a broken file is logged and ignored. Otherwise the difference is
//!   applied; unchanged reals keep their health, their checker and their connections.
//! * SIGTERM/SIGINT: exit, leaving the maps as they are; the data path does not need the daemon.
//! * Status file (JSON, written atomically after each change and every second) and an optional
//!   Prometheus endpoint.

use crate::{
    config::{self, CheckConfig, DaemonConfig, OnFailure},
    datapath,
    healthcheck::{self, CheckResult, CheckTarget, Health, Tracker},
    services::{Maps, RealServer, ServiceId, VirtualService},
};
use anyhow::Context as _;
use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::mpsc,
    task::JoinHandle,
};
use tracing::{error, info, warn};

pub struct Options {
    pub config: PathBuf,
    /// Used when the file has no `pin_dir`.
    pub pin_dir: PathBuf,
}

type Key = (ServiceId, Ipv4Addr);

struct RealEntry {
    weight: u32,
    on_failure: OnFailure,
    check: CheckConfig,
    tracker: Tracker,
    since: SystemTime,
    last: Option<(bool, String, Option<f64>)>,
    generation: u64,
    task: JoinHandle<()>,
}

struct Event {
    key: Key,
    generation: u64,
    result: CheckResult,
}

/// What the metrics endpoint needs to know about health.
type HealthSnapshot = Arc<Mutex<Vec<(ServiceId, Ipv4Addr, Health)>>>;

struct Daemon {
    path: PathBuf,
    pin_dir: PathBuf,
    cfg: DaemonConfig,
    maps: Maps,
    reals: BTreeMap<Key, RealEntry>,
    tx: mpsc::UnboundedSender<Event>,
    next_gen: u64,
    snapshot: HealthSnapshot,
}

fn init_logging() {
    let level = match std::env::var("LBADM_LOG").as_deref() {
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        Ok("warn") => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(opts: Options) -> anyhow::Result<()> {
    init_logging();
    let cfg = config::load(&opts.config)?;
    // Before the runtime: attaching runs its own netlink runtime.
    let pin_dir = cfg.pin_dir.clone().unwrap_or(opts.pin_dir.clone());
    if !datapath::is_attached(&pin_dir) {
        let r = datapath::attach(&datapath::AttachOptions {
            iface: cfg.iface.clone(),
            pin_dir: pin_dir.clone(),
            tunnel_source: None,
            generic: false,
            log: datapath::LogLevel::Off,
        })
        .with_context(|| format!("attaching the data path to {}", cfg.iface))?;
        for w in &r.warnings {
            warn!("{w}");
        }
        info!(iface = %cfg.iface, pin_dir = %pin_dir.display(), generic = r.generic, "attached the data path");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(main_loop(opts, cfg))
}

async fn main_loop(opts: Options, cfg: DaemonConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let pin_dir = cfg.pin_dir.clone().unwrap_or(opts.pin_dir.clone());
    let maps = Maps::open(&pin_dir)?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let snapshot: HealthSnapshot = Arc::default();
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    if let Some(addr) = cfg.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics: listening on {addr}"))?;
        info!(%addr, "metrics on http://{addr}/metrics");
        tokio::spawn(serve_metrics(listener, pin_dir.clone(), snapshot.clone()));
    }
    let mut d = Daemon {
        path: opts.config,
        pin_dir,
        cfg: DaemonConfig {
            services: Vec::new(),
            ..cfg.clone()
        },
        maps,
        reals: BTreeMap::new(),
        tx,
        next_gen: 1,
        snapshot,
    };
    d.apply_config(cfg, true)
        .context("applying the configuration")?;
    info!(config = %d.path.display(), services = d.cfg.services.len(), reals = d.reals.len(), "running");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            Some(ev) = rx.recv() => d.on_event(ev),
            _ = hup.recv() => d.reload(),
            _ = tick.tick() => d.write_status(),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping; the maps stay as they are and the data path keeps forwarding");
    d.write_status();
    Ok(())
}

impl Daemon {
    fn reload(&mut self) {
        info!(config = %self.path.display(), "SIGHUP: reloading");
        let cfg = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload ignored, keeping the running configuration: {e}");
                return;
            }
        };
        if cfg.iface != self.cfg.iface
            || cfg.pin_dir != self.cfg.pin_dir
            || cfg.metrics != self.cfg.metrics
        {
            warn!("iface, pin_dir and metrics changes take effect only on restart");
        }
        if let Err(e) = self.apply_config(cfg, false) {
            error!("reload failed, the maps are unchanged: {e:#}");
        }
    }

    /// Makes the maps match `cfg` in one transaction and (re)starts the checkers that changed.
    fn apply_config(&mut self, cfg: DaemonConfig, first: bool) -> anyhow::Result<()> {
        // Health of each configured real: kept if known, else inherited from the maps.
        let mut health: HashMap<Key, (Tracker, SystemTime)> = HashMap::new();
        let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let _lock = self.maps.lock()?;
            let current: HashMap<ServiceId, VirtualService> = self
                .maps
                .read()?
                .into_iter()
                .map(|s| (s.spec.id, s.spec))
                .collect();
            for s in &cfg.services {
                for r in &s.reals {
                    let key = (s.id, r.addr);
                    if let Some(e) = self.reals.get(&key) {
                        health.insert(key, (e.tracker.clone(), e.since));
                        continue;
                    }
                    let down = first
                        .then(|| current.get(&s.id))
                        .flatten()
                        .is_some_and(|c| {
                            match (c.reals.iter().find(|x| x.addr == r.addr), s.on_failure) {
                                (Some(x), OnFailure::Quiesce) => x.weight == 0 && r.weight > 0,
                                (None, OnFailure::Remove) => true,
                                _ => false,
                            }
                        });
                    let h = if down { Health::Down } else { Health::Up };
                    if down {
                        info!(service = %s.id, real = %r.addr, "starts DOWN (inherited from the maps)");
                    }
                    health.insert(key, (Tracker::new(h), SystemTime::now()));
                }
            }
            let want: Vec<VirtualService> = cfg
                .services
                .iter()
                .map(|s| {
                    let mut reals: Vec<RealServer> = Vec::new();
                    let desired = |addr: Ipv4Addr| -> Option<u32> {
                        let rc = s.reals.iter().find(|r| r.addr == addr)?;
                        desired_weight(rc.weight, s.on_failure, health[&(s.id, addr)].0.health)
                    };
                    // Keep the order the maps have, then append new reals in file order.
                    if let Some(c) = current.get(&s.id) {
                        for r in &c.reals {
                            if let Some(w) = desired(r.addr) {
                                reals.push(RealServer {
                                    addr: r.addr,
                                    weight: w,
                                });
                            }
                        }
                    }
                    for r in &s.reals {
                        if !reals.iter().any(|x| x.addr == r.addr)
                            && let Some(w) = desired(r.addr)
                        {
                            reals.push(RealServer {
                                addr: r.addr,
                                weight: w,
                            });
                        }
                    }
                    VirtualService {
                        id: s.id,
                        sched: s.sched,
                        persistence: s.persistence,
                        reals,
                    }
                })
                .collect();
            let mut have: Vec<VirtualService> = current.into_values().collect();
            have.sort_by_key(|s| s.id);
            let mut want_sorted = want.clone();
            want_sorted.sort_by_key(|s| s.id);
            if have != want_sorted {
                self.maps.apply_locked(&want)?;
                info!("maps updated to match {}", self.path.display());
            }
            Ok(())
        });
        result?;
        // Checkers: stop those gone or changed, start new or changed ones.
        let mut old = std::mem::take(&mut self.reals);
        for s in &cfg.services {
            for r in &s.reals {
                let key = (s.id, r.addr);
                let (tracker, since) = health
                    .remove(&key)
                    .expect("health of every configured real");
                match old.remove(&key) {
                    Some(mut e) if e.check == r.check => {
                        e.weight = r.weight;
                        e.on_failure = s.on_failure;
                        self.reals.insert(key, e);
                    }
                    prev => {
                        let last = prev.and_then(|p| {
                            p.task.abort();
                            p.last
                        });
                        let generation = self.next_gen;
                        self.next_gen += 1;
                        let task = spawn_checker(key, r.check.clone(), generation, self.tx.clone());
                        self.reals.insert(
                            key,
                            RealEntry {
                                weight: r.weight,
                                on_failure: s.on_failure,
                                check: r.check.clone(),
                                tracker,
                                since,
                                last,
                                generation,
                                task,
                            },
                        );
                    }
                }
            }
        }
        for ((svc, addr), e) in old {
            e.task.abort();
            info!(service = %svc, real = %addr, "no longer configured: check stopped");
        }
        self.cfg = cfg;
        self.write_status();
        Ok(())
    }

    fn on_event(&mut self, ev: Event) {
        let Some(e) = self.reals.get_mut(&ev.key) else {
            return;
        };
        if e.generation != ev.generation {
            return;
        }
        let (ok, text, latency) = match &ev.result {
            Ok(d) => (true, "ok".to_string(), Some(d.as_secs_f64() * 1000.0)),
            Err(reason) => (false, reason.clone(), None),
        };
        if !ok && e.tracker.health == Health::Up {
            tracing::debug!(service = %ev.key.0, real = %ev.key.1, "check failed: {text}");
        }
        e.last = Some((ok, text.clone(), latency));
        let Some(h) = e.tracker.record(ok, e.check.fall, e.check.rise) else {
            return;
        };
        e.since = SystemTime::now();
        let (weight, on_failure) = (e.weight, e.on_failure);
        let action = match (h, on_failure) {
            (Health::Down, OnFailure::Quiesce) => "quiesced (weight 0)".to_string(),
            (Health::Down, OnFailure::Remove) => "removed from the service".to_string(),
            (Health::Up, _) => format!("weight {weight} restored"),
        };
        let n = match h {
            Health::Down => e.check.fall,
            Health::Up => e.check.rise,
        };
        match h {
            Health::Down => {
                warn!(service = %ev.key.0, real = %ev.key.1, "DOWN after {n} failed checks ({text}): {action}")
            }
            Health::Up => {
                info!(service = %ev.key.0, real = %ev.key.1, "UP after {n} successful checks: {action}")
            }
        }
        if let Err(err) = self.set_real(ev.key, desired_weight(weight, on_failure, h)) {
            error!(service = %ev.key.0, real = %ev.key.1, "changing the maps failed: {err:#}");
        }
        self.write_status();
    }

    /// One transaction touching only this real: `Some(w)` = present with weight w, `None` =
    /// absent.
    fn set_real(&mut self, (svc, addr): Key, want: Option<u32>) -> anyhow::Result<()> {
        tokio::task::block_in_place(|| {
            let _lock = self.maps.lock()?;
            let mut table: Vec<VirtualService> =
                self.maps.read()?.into_iter().map(|s| s.spec).collect();
            let Some(s) = table.iter_mut().find(|s| s.id == svc) else {
                warn!(service = %svc, "the service is not in the maps (changed outside the daemon?): nothing to do");
                return Ok(());
            };
            let pos = s.reals.iter().position(|r| r.addr == addr);
            match (pos, want) {
                (Some(i), Some(w)) if s.reals[i].weight == w => return Ok(()),
                (Some(i), Some(w)) => s.reals[i].weight = w,
                (None, Some(w)) => s.reals.push(RealServer { addr, weight: w }),
                (Some(i), None) => {
                    s.reals.remove(i);
                }
                (None, None) => return Ok(()),
            }
            self.maps.apply_locked(&table)?;
            Ok(())
        })
    }

    fn status_json(&self) -> serde_json::Value {
        let unix = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0)
        };
        let services: Vec<_> = self
            .cfg
            .services
            .iter()
            .map(|s| {
                let reals: Vec<_> = s
                    .reals
                    .iter()
                    .filter_map(|r| {
                        let e = self.reals.get(&(s.id, r.addr))?;
                        Some(serde_json::json!({
                            "address": r.addr.to_string(),
                            "weight": r.weight,
                            "check": r.check.kind.name(),
                            "health": e.tracker.health,
                            "since": unix(e.since),
                            "last_ok": e.last.as_ref().map(|l| l.0),
                            "last_result": e.last.as_ref().map(|l| l.1.clone()),
                            "latency_ms": e.last.as_ref().and_then(|l| l.2),
                        }))
                    })
                    .collect();
                serde_json::json!({
                    "service": s.id.to_string(),
                    "protocol": s.id.proto.name().to_lowercase(),
                    "vip": s.id.addr.to_string(),
                    "port": s.id.port,
                    "scheduler": s.sched.name(),
                    "on_failure": s.on_failure,
                    "reals": reals,
                })
            })
            .collect();
        serde_json::json!({
            "pid": std::process::id(),
            "config": self.path,
            "pin_dir": self.pin_dir,
            "updated": unix(SystemTime::now()),
            "services": services,
        })
    }

    fn write_status(&mut self) {
        if let Ok(mut snap) = self.snapshot.lock() {
            *snap = self
                .reals
                .iter()
                .map(|(k, e)| (k.0, k.1, e.tracker.health))
                .collect();
        }
        let path = self.cfg.status_file.clone();
        let body = match serde_json::to_vec_pretty(&self.status_json()) {
            Ok(b) => b,
            Err(_) => return,
        };
        if let Err(e) = write_atomically(&path, &body) {
            // Once per second at most; keep it at debug after the first time.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(path = %path.display(), "cannot write the status file: {e}");
            }
        }
    }
}

fn desired_weight(weight: u32, on_failure: OnFailure, h: Health) -> Option<u32> {
    match (h, on_failure) {
        (Health::Up, _) => Some(weight),
        (Health::Down, OnFailure::Quiesce) => Some(0),
        (Health::Down, OnFailure::Remove) => None,
    }
}

fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A small xorshift generator: jitter only, no cryptography.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng((t ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn upto(&mut self, d: Duration) -> Duration {
        let n = d.as_nanos() as u64;
        if n == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.next() % (n + 1))
        }
    }
}

fn spawn_checker(
    key: Key,
    check: CheckConfig,
    generation: u64,
    tx: mpsc::UnboundedSender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng::new(generation ^ u64::from(u32::from(key.1)) << 16);
        let target = CheckTarget::direct(key.1, &check);
        // Spread the first checks over one interval, so hundreds of reals do not fire in step.
        tokio::time::sleep(rng.upto(check.interval)).await;
        loop {
            let start = tokio::time::Instant::now();
            let result = healthcheck::run_check(target, &check).await;
            if tx
                .send(Event {
                    key,
                    generation,
                    result,
                })
                .is_err()
            {
                return;
            }
            tokio::time::sleep_until(start + check.interval + rng.upto(check.jitter)).await;
        }
    })
}

async fn serve_metrics(
    listener: tokio::net::TcpListener,
    pin_dir: PathBuf,
    snapshot: HealthSnapshot,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (pin_dir, snapshot) = (pin_dir.clone(), snapshot.clone());
        tokio::spawn(async move {
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            let deadline = Instant::now() + Duration::from_secs(2);
            while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n")
            {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, s.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => break,
                }
                if req.len() > 8192 {
                    break;
                }
            }
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body) = if method == "GET"
                && (path == "/metrics" || path.starts_with("/metrics?"))
            {
                match tokio::task::spawn_blocking(move || metrics_text(&pin_dir, &snapshot)).await {
                    Ok(Ok(b)) => ("200 OK", b),
                    Ok(Err(e)) => ("500 Internal Server Error", format!("{e:#}\n")),
                    Err(e) => ("500 Internal Server Error", format!("{e}\n")),
                }
            } else {
                ("404 Not Found", "not found: try /metrics\n".to_string())
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Prometheus text format: counters from the maps, health gauges from the daemon.
pub fn metrics_text(pin_dir: &Path, snapshot: &HealthSnapshot) -> anyhow::Result<String> {
    let maps = Maps::open(pin_dir)?;
    let services = maps.read()?;
    let mut out = String::new();
    let svc_label = |id: &ServiceId| {
        format!(
            "protocol=\"{}\",vip=\"{}\",port=\"{}\"",
            id.proto.name().to_lowercase(),
            id.addr,
            id.port
        )
    };
    let mut svc_rows = Vec::new();
    let mut real_rows = Vec::new();
    for s in &services {
        svc_rows.push((svc_label(&s.spec.id), maps.service_stats(s.slot)?));
        for (r, &slot) in s.spec.reals.iter().zip(&s.real_slots) {
            real_rows.push((
                format!("{},real=\"{}\"", svc_label(&s.spec.id), r.addr),
                maps.real_stats(slot)?,
                r.weight,
            ));
        }
    }
    for (name, help, f) in [
        ("connections", "new connections scheduled", 0usize),
        ("packets", "inbound packets forwarded", 1),
        ("bytes", "inbound bytes forwarded", 2),
    ] {
        let pick = |c: &lb_common::Counters| [c.conns, c.packets, c.bytes][f];
        let _ = writeln!(
            out,
            "# HELP lbadm_service_{name}_total Virtual service: {help}."
        );
        let _ = writeln!(out, "# TYPE lbadm_service_{name}_total counter");
        for (l, c) in &svc_rows {
            let _ = writeln!(out, "lbadm_service_{name}_total{{{l}}} {}", pick(c));
        }
        let _ = writeln!(out, "# HELP lbadm_real_{name}_total Real server: {help}.");
        let _ = writeln!(out, "# TYPE lbadm_real_{name}_total counter");
        for (l, c, _) in &real_rows {
            let _ = writeln!(out, "lbadm_real_{name}_total{{{l}}} {}", pick(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP lbadm_real_weight Real server weight in the maps (0 = quiesced)."
    );
    let _ = writeln!(out, "# TYPE lbadm_real_weight gauge");
    for (l, _, w) in &real_rows {
        let _ = writeln!(out, "lbadm_real_weight{{{l}}} {w}");
    }
    let _ = writeln!(
        out,
        "# HELP lbadm_real_up Health of a configured real server (1 = UP, 0 = DOWN)."
    );
    let _ = writeln!(out, "# TYPE lbadm_real_up gauge");
    let snap = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    for (id, addr, h) in snap {
        let _ = writeln!(
            out,
            "lbadm_real_up{{{},real=\"{addr}\"}} {}",
            svc_label(&id),
            u8::from(h == Health::Up)
        );
    }
    Ok(out)
}
