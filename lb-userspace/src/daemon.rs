//! `lbadm daemon`: health-checks the real servers of a configuration file and keeps the maps in
//! line with it.
//!
//! * Start: attach the data path if it is not attached, read the maps, make them match the file
//!   (services, reals, weights). Health is inherited from the maps, so a restart does not undo
//!   what the previous daemon did: a real the maps hold with weight 0 while the file gives it
//!   more (`quiesce`), or a real missing from a service the maps already hold (`remove`),
//!   starts DOWN and needs `rise` successes. Every other real starts UP (keepalived without
//!   `alpha`).
//! * Each real is checked by its own task (through the tunnel unless `via = "direct"`, see
//!   [`crate::probe`]), with a random start offset and random jitter per interval. fall/rise
//!   decide its health; a change is one transaction on that service (lock, read, edit,
//!   [`Maps::apply_locked`]): weight 0 (`quiesce`) or removal (`remove`) on DOWN, the
//!   configured weight on UP; while the service's quorum (sum of UP weights, with hysteresis)
//!   is lost, its sorry server, if any, replaces the reals. Notify commands (argv, no shell,
//!   killed after `notify_timeout`) run on every change.
//! * SIGHUP: re-read the file; a broken file is logged and ignored. Otherwise the difference is
//!   applied; unchanged reals keep their health, their checker and their connections.
//! * SIGTERM/SIGINT: exit, leaving the maps as they are; the data path does not need the daemon.
//! * Status file (JSON, written atomically after each change and every second) and an optional
//!   Prometheus endpoint.

use crate::{
    config::{self, Argv, CheckConfig, DaemonConfig, OnFailure, ServiceConfig},
    datapath,
    healthcheck::{self, CheckResult, CheckTarget, Health, Tracker},
    probe::Probes,
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
    /// The tunnel-probe map, or why tunnel checks cannot run.
    probes: Result<Arc<Probes>, String>,
    /// Per service: is the quorum held (sum of UP weights)?
    quorum: HashMap<ServiceId, bool>,
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
    let probes = datapath::read_config(&pin_dir)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let source = Ipv4Addr::from(c.tunnel_src.to_ne_bytes());
            Probes::open(&pin_dir, source).map_err(|e| e.to_string())
        });
    match &probes {
        Ok(p) => p.clear(),
        Err(e) => warn!("tunnel checks cannot run: {e}"),
    }
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
        probes,
        quorum: HashMap::new(),
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
        let mut quorum = HashMap::new();
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
                let alive = alive_weight(s, |a| health[&(s.id, a)].0.health);
                let held = match self.quorum.get(&s.id) {
                    Some(&held) => next_quorum(held, alive, s),
                    None => alive >= effective_quorum(s),
                };
                if !held {
                    warn!(service = %s.id, "quorum not held: {alive} < {}", effective_quorum(s));
                }
                quorum.insert(s.id, held);
            }
            let want: Vec<VirtualService> = cfg
                .services
                .iter()
                .map(|s| VirtualService {
                    id: s.id,
                    sched: s.sched,
                    persistence: s.persistence,
                    reals: in_map_order(
                        current.get(&s.id),
                        desired_reals(s, |a| health[&(s.id, a)].0.health, quorum[&s.id]),
                    ),
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
        self.quorum = quorum;
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
                        let target = CheckTarget::new(
                            s.id.addr,
                            r.addr,
                            &r.check,
                            self.probes.as_ref().map_err(|e| e.as_str()),
                        );
                        let task = spawn_checker(
                            key,
                            r.check.clone(),
                            target,
                            generation,
                            self.tx.clone(),
                        );
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
        let (svc, addr) = ev.key;
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
                warn!(service = %svc, real = %addr, "DOWN after {n} failed checks ({text}): {action}")
            }
            Health::Up => {
                info!(service = %svc, real = %addr, "UP after {n} successful checks: {action}")
            }
        }
        let Some(scfg) = self.cfg.services.iter().find(|s| s.id == svc).cloned() else {
            return;
        };
        if let Some(rc) = scfg.reals.iter().find(|r| r.addr == addr) {
            let (cmd, event) = match h {
                Health::Up => (&rc.notify_up, "up"),
                Health::Down => (&rc.notify_down, "down"),
            };
            self.notify(cmd, event, &scfg, Some(addr), &text);
        }
        let alive = alive_weight(&scfg, |a| self.health(svc, a));
        let held = self.quorum.get(&svc).copied().unwrap_or(true);
        let now = next_quorum(held, alive, &scfg);
        if now != held {
            let q = effective_quorum(&scfg);
            let sorry = match (now, scfg.sorry_server) {
                (false, Some(a)) => format!(": new connections go to the sorry server {a}"),
                (true, Some(a)) => format!(": sorry server {a} out"),
                _ => String::new(),
            };
            if now {
                info!(service = %svc, "gained quorum: {alive} >= {q} + {}{sorry}", scfg.hysteresis);
            } else {
                warn!(service = %svc, "lost quorum: {alive} < {q} - {}{sorry}", scfg.hysteresis);
            }
            self.quorum.insert(svc, now);
            let (cmd, event) = if now {
                (&scfg.quorum_up, "quorum_up")
            } else {
                (&scfg.quorum_down, "quorum_down")
            };
            self.notify(cmd, event, &scfg, None, &text);
        }
        if let Err(err) = self.sync_service(&scfg) {
            error!(service = %svc, real = %addr, "changing the maps failed: {err:#}");
        }
        self.write_status();
    }

    fn health(&self, svc: ServiceId, addr: Ipv4Addr) -> Health {
        self.reals
            .get(&(svc, addr))
            .map(|e| e.tracker.health)
            .unwrap_or(Health::Down)
    }

    /// Runs a notify command (argv, no shell) in the background, killed after `notify_timeout`.
    /// It learns what happened from its environment: LBADM_EVENT (up, down, quorum_up,
    /// quorum_down), LBADM_SERVICE (keepalived's `[vip]:tcp:port`), LBADM_VIP, LBADM_PORT,
    /// LBADM_PROTOCOL, LBADM_REAL (for up/down) and LBADM_REASON (the last check result).
    fn notify(
        &self,
        argv: &Option<Argv>,
        event: &'static str,
        s: &ServiceConfig,
        real: Option<Ipv4Addr>,
        reason: &str,
    ) {
        let Some(argv) = argv.clone() else { return };
        let limit = self.cfg.notify_timeout;
        let proto = s.id.proto.name().to_lowercase();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .env("LBADM_EVENT", event)
            .env(
                "LBADM_SERVICE",
                format!("[{}]:{proto}:{}", s.id.addr, s.id.port),
            )
            .env("LBADM_VIP", s.id.addr.to_string())
            .env("LBADM_PORT", s.id.port.to_string())
            .env("LBADM_PROTOCOL", &proto)
            .env("LBADM_REASON", reason);
        if let Some(r) = real {
            cmd.env("LBADM_REAL", r.to_string());
        }
        let svc = s.id;
        tokio::spawn(async move {
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    error!(service = %svc, event, program = %argv[0], "notify command did not start: {e}");
                    return;
                }
            };
            match tokio::time::timeout(limit, child.wait()).await {
                Ok(Ok(st)) if st.success() => {
                    info!(service = %svc, event, program = %argv[0], "notify command done")
                }
                Ok(Ok(st)) => {
                    warn!(service = %svc, event, program = %argv[0], "notify command failed: {st}")
                }
                Ok(Err(e)) => {
                    warn!(service = %svc, event, program = %argv[0], "notify command: {e}")
                }
                Err(_) => {
                    let _ = child.kill().await;
                    warn!(service = %svc, event, program = %argv[0], "notify command killed after {}s", limit.as_secs_f64());
                }
            }
        });
    }

    /// One transaction touching only this service's reals: what its configuration, the reals'
    /// health and its quorum ask for.
    fn sync_service(&mut self, s: &ServiceConfig) -> anyhow::Result<()> {
        let held = self.quorum.get(&s.id).copied().unwrap_or(true);
        let want = desired_reals(s, |a| self.health(s.id, a), held);
        tokio::task::block_in_place(|| {
            let _lock = self.maps.lock()?;
            let mut table: Vec<VirtualService> =
                self.maps.read()?.into_iter().map(|s| s.spec).collect();
            let Some(cur) = table.iter_mut().find(|x| x.id == s.id) else {
                warn!(service = %s.id, "the service is not in the maps (changed outside the daemon?): nothing to do");
                return Ok(());
            };
            let reals = in_map_order(Some(cur), want);
            if cur.reals == reals {
                return Ok(());
            }
            cur.reals = reals;
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
                            "via": r.check.via,
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
                    "quorum": self.quorum.get(&s.id).copied().unwrap_or(true),
                    "sorry_server": s.sorry_server.map(|a| a.to_string()),
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

/// keepalived's quorum: the sum of the configured weights of UP reals.
fn alive_weight(s: &ServiceConfig, health: impl Fn(Ipv4Addr) -> Health) -> u64 {
    s.reals
        .iter()
        .filter(|r| health(r.addr) == Health::Up)
        .map(|r| u64::from(r.weight))
        .sum()
}

/// A quorum larger than the total weight could never be held: reduced to it (as keepalived).
fn effective_quorum(s: &ServiceConfig) -> u64 {
    s.quorum
        .min(s.reals.iter().map(|r| u64::from(r.weight)).sum())
}

/// Lost below quorum − hysteresis, regained at quorum + hysteresis.
fn next_quorum(held: bool, alive: u64, s: &ServiceConfig) -> bool {
    let q = effective_quorum(s);
    if held {
        alive >= q.saturating_sub(s.hysteresis)
    } else {
        alive >= q + s.hysteresis
    }
}

/// The reals a service should have in the maps, in file order: configured weight while UP,
/// weight 0 (`quiesce`) or absent (`remove`) while DOWN; with the quorum lost and a sorry
/// server, every real is out and the sorry server takes the new connections.
fn desired_reals(
    s: &ServiceConfig,
    health: impl Fn(Ipv4Addr) -> Health,
    quorum_held: bool,
) -> Vec<(Ipv4Addr, u32)> {
    let sorry = s.sorry_server.filter(|_| !quorum_held);
    let mut out: Vec<(Ipv4Addr, u32)> = s
        .reals
        .iter()
        .filter_map(|r| {
            let h = if sorry.is_some() {
                Health::Down
            } else {
                health(r.addr)
            };
            match (h, s.on_failure) {
                (Health::Up, _) => Some((r.addr, r.weight)),
                (Health::Down, OnFailure::Quiesce) => Some((r.addr, 0)),
                (Health::Down, OnFailure::Remove) => None,
            }
        })
        .collect();
    if let Some(a) = sorry {
        out.push((a, 1));
    }
    out
}

/// Keeps the order the maps have (so a change does not reshuffle `mh` tables or `-L`), new
/// reals appended in file order.
fn in_map_order(current: Option<&VirtualService>, want: Vec<(Ipv4Addr, u32)>) -> Vec<RealServer> {
    let mut reals: Vec<RealServer> = current
        .map(|c| {
            c.reals
                .iter()
                .filter_map(|r| {
                    let &(addr, weight) = want.iter().find(|w| w.0 == r.addr)?;
                    Some(RealServer { addr, weight })
                })
                .collect()
        })
        .unwrap_or_default();
    for (addr, weight) in want {
        if !reals.iter().any(|x| x.addr == addr) {
            reals.push(RealServer { addr, weight });
        }
    }
    reals
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
    target: Result<CheckTarget, String>,
    generation: u64,
    tx: mpsc::UnboundedSender<Event>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rng = Rng::new(generation ^ u64::from(u32::from(key.1)) << 16);
        // Spread the first checks over one interval, so hundreds of reals do not fire in step.
        tokio::time::sleep(rng.upto(check.interval)).await;
        loop {
            let start = tokio::time::Instant::now();
            let result = match &target {
                Ok(t) => healthcheck::run_check(t, &check).await,
                Err(why) => Err(why.clone()),
            };
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
