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
//!   [`probe`]), with a random start offset and random jitter per interval. fall/rise
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

pub mod announce;
pub mod config;
pub mod healthcheck;
pub mod metrics;
pub mod mysql;
pub mod probe;
pub mod reconcile;
pub mod status;
pub mod sync;

use crate::director::{Maps, ServiceId, VirtualService, allow, conntrack, datapath};
use anyhow::Context as _;
use config::{Argv, CheckConfig, DaemonConfig, OnFailure, ServiceConfig};
use healthcheck::{CheckResult, CheckTarget, Health, Tracker};
use metrics::HealthSnapshot;
use probe::Probes;
use reconcile::{
    alive_weight, desired_reals, effective_quorum, in_map_order, inherited_health, next_quorum,
    ramped, with_limits,
};
use status::{RealStatus, ServiceStatus, Status, unix};
use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};
use tokio::{sync::mpsc, task::JoinHandle};
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
    /// Connection sync with the other directors, when configured.
    sync: Option<Arc<sync::ConnSync>>,
    /// Announcing the VIPs through a routing daemon, when configured.
    announcer: Option<announce::Announcer>,
    /// SIGTERM/SIGINT came: withdraw everything.
    stopping: bool,
    /// CPUs in flood mode at the last look (its start and end are logged).
    flooding: u32,
    /// The id of the `LB_SERVICES` map the daemon configures: another id under the pin
    /// directory means the data path was detached and attached anew.
    services_map: Option<u32>,
    /// The data path was seen detached (logged once).
    detached: bool,
    /// Reals slow-starting (came UP, or were added), since when.
    ramps: HashMap<Key, std::time::Instant>,
    /// When each real last went DOWN (data path clock), for the recount.
    down_since: DownSince,
}

/// When each real last went DOWN, on the data path's clock ([`conntrack::now_ns`]).
type DownSince = Arc<std::sync::Mutex<HashMap<Key, u64>>>;

/// The id of the services map pinned under `pin_dir`, if one is.
fn services_map_id(pin_dir: &std::path::Path) -> Option<u32> {
    aya::maps::MapInfo::from_pin(pin_dir.join(lb_common::MAP_SERVICES))
        .ok()
        .map(|i| i.id())
}

/// Logs what the file allows but should not do (see [`config::warnings`]).
fn warn_unwise(path: &std::path::Path, cfg: &DaemonConfig) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode());
    for w in config::warnings(path, cfg, mode) {
        warn!("{w}");
    }
}

/// Runs the daemon until SIGTERM/SIGINT.
pub fn run(opts: Options) -> anyhow::Result<()> {
    crate::init_tracing("info");
    let cfg = config::load(&opts.config)?;
    warn_unwise(&opts.config, &cfg);
    // Before the runtime: attaching runs its own netlink runtime.
    let pin_dir = cfg.pin_dir.clone().unwrap_or(opts.pin_dir.clone());
    if !datapath::is_attached(&pin_dir) {
        let r = datapath::attach(&datapath::AttachOptions {
            iface: cfg.iface.clone(),
            pin_dir: pin_dir.clone(),
            tunnel_source: None,
            generic: false,
            log: datapath::LogLevel::Off,
            conn_table: cfg.conn_table,
            flood_rate: cfg.flood_rate,
        })
        .with_context(|| format!("attaching the data path to {}", cfg.iface))?;
        for w in &r.warnings {
            warn!("{w}");
        }
        info!(iface = %cfg.iface, pin_dir = %pin_dir.display(), generic = r.generic, "attached the data path");
    } else if let Some(n) = cfg.conn_table
        && let Ok(sizes) = datapath::TableSizes::pinned(&pin_dir)
        && sizes.conns != n
    {
        warn!(
            "conn_table = {n} not applied: the attached data path's table has {} entries and keeps them until `lbadm detach` and attach (which loses connections)",
            sizes.conns
        );
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

    let services_map = services_map_id(&pin_dir);
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
        sync: None,
        announcer: None,
        stopping: false,
        flooding: 0,
        services_map,
        detached: false,
        ramps: HashMap::new(),
        down_since: DownSince::default(),
    };
    d.apply_config(cfg.clone(), true)
        .context("applying the configuration")?;
    d.reloaded(true);
    // After the maps hold this file's services: peers' entries are installed by service.
    if let Some(s) = &cfg.sync {
        d.sync = Some(Arc::new(
            sync::ConnSync::start(s.clone(), &d.pin_dir).await?,
        ));
    }
    if let Some(addr) = cfg.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics: listening on {addr}"))?;
        info!(%addr, "metrics on http://{addr}/metrics");
        tokio::spawn(metrics::serve(
            listener,
            d.pin_dir.clone(),
            d.snapshot.clone(),
            d.sync.clone(),
        ));
    }
    spawn_recount(d.pin_dir.clone(), d.down_since.clone());
    info!(config = %d.path.display(), services = d.cfg.services.len(), reals = d.reals.len(), "running");
    if let Some(a) = &cfg.announce {
        d.announcer = Some(announce::Announcer::new(a.clone())?);
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let verify = tokio::select! {
            Some(ev) = rx.recv() => { d.on_event(ev); false }
            _ = hup.recv() => { d.reload(); false }
            _ = tick.tick() => {
                d.watch_datapath();
                d.watch_flood();
                d.step_ramps();
                d.write_status();
                true
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        };
        d.announce(verify).await;
    }
    d.stopping = true;
    d.announce(true).await;
    if let Some(drain) = d.announcer.as_ref().map(|a| a.drain()) {
        // Withdrawn: the routers move the flows away while the data path still serves them.
        info!("VIPs withdrawn; draining for {drain:?}");
        d.write_status();
        tokio::time::sleep(drain).await;
    }
    info!("stopping; the maps stay as they are and the data path keeps forwarding");
    d.write_status();
    Ok(())
}

impl Daemon {
    /// The flood threshold and the allow-lists, where the file sets them.
    fn apply_limits(&mut self, cfg: &DaemonConfig) -> anyhow::Result<()> {
        if let Some(rate) = cfg.flood_rate {
            let l = self.maps.limits()?;
            if l.flood_rate != rate {
                self.maps.set_limits(&lb_common::Limits {
                    flood_rate: rate,
                    ..l
                })?;
                info!("flood mode now enters above {rate} new flows/s on a CPU (0: never)");
            }
        }
        if let Some(lists) = &cfg.allow
            && allow::read(&self.maps)? != *lists
        {
            allow::replace(&mut self.maps, lists)?;
            info!("allow-lists set: {} VIP(s) with a list", lists.len());
        }
        Ok(())
    }

    /// Notices a data path detached, or detached and attached anew (its maps are new and empty,
    /// while this daemon still holds the old ones): the first is logged and waited out, the
    /// second restarts the daemon in place (same pid, same arguments), which applies the
    /// configuration to the new maps as any start does.
    fn watch_datapath(&mut self) {
        match services_map_id(&self.pin_dir) {
            None if !self.detached => {
                self.detached = true;
                warn!(
                    pin_dir = %self.pin_dir.display(),
                    "the data path was detached: the configuration goes to the next one attached there"
                );
            }
            Some(id) if Some(id) != self.services_map => {
                warn!(
                    pin_dir = %self.pin_dir.display(),
                    "the data path was replaced (attached anew, its maps empty): restarting to apply the configuration to it"
                );
                use std::os::unix::process::CommandExt as _;
                let err = std::process::Command::new("/proc/self/exe")
                    .args(std::env::args_os().skip(1))
                    .exec();
                error!(
                    "restarting failed ({err}); restart the daemon to configure the new data path"
                );
                self.services_map = Some(id);
            }
            _ => {}
        }
    }

    /// How long ago a slow-starting real began its ramp.
    fn ramp_elapsed(&self, svc: ServiceId, addr: Ipv4Addr) -> Option<Duration> {
        self.ramps.get(&(svc, addr)).map(|t| t.elapsed())
    }

    /// Moves the weights of slow-starting reals on (once a second), and ends the ramps that
    /// are done, with a last write of the configured weights.
    fn step_ramps(&mut self) {
        if self.ramps.is_empty() {
            return;
        }
        let services: Vec<ServiceConfig> = self
            .cfg
            .services
            .iter()
            .filter(|s| self.ramps.keys().any(|(id, _)| *id == s.id))
            .cloned()
            .collect();
        let done: Vec<Key> = self
            .ramps
            .iter()
            .filter(|((id, _), t)| {
                services
                    .iter()
                    .find(|s| s.id == *id)
                    .is_none_or(|s| t.elapsed() >= s.slow_start)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &done {
            self.ramps.remove(k);
            info!(service = %k.0, real = %k.1, "slow start done: full weight");
        }
        for s in &services {
            if let Err(e) = self.sync_service(s) {
                warn!(service = %s.id, "slow start: updating the weights: {e:#}");
            }
        }
    }

    /// Logs when flood mode starts and ends (the data path counts, it does not tell).
    fn watch_flood(&mut self) {
        let Ok(states) = self.maps.flood_states() else {
            return;
        };
        let (cpus, _) = conntrack::flooding(&states, conntrack::now_ns());
        if cpus > 0 && self.flooding == 0 {
            warn!(
                cpus,
                "flood mode: new flows above the threshold; SYNs are forwarded by flow hash and not recorded, established connections are kept"
            );
        } else if cpus == 0 && self.flooding > 0 {
            let trips: u64 = states.iter().map(|s| s.trips).sum();
            info!(trips, "flood mode ended");
        }
        self.flooding = cpus;
    }

    /// Announces the VIPs this director can serve and withdraws the others.
    async fn announce(&mut self, verify: bool) {
        let Some(a) = self.announcer.as_mut() else {
            return;
        };
        let c = announce::Conditions {
            attached: datapath::is_attached(&self.pin_dir),
            sync_ready: self.sync.as_ref().is_none_or(|s| s.ready()),
            stopping: self.stopping,
        };
        let vips = a.vips(self.cfg.services.iter().map(|s| s.id.addr));
        let services = &self.cfg.services;
        let quorum = &self.quorum;
        a.reconcile(
            &vips,
            c,
            |vip| {
                services
                    .iter()
                    .filter(|s| s.id.addr == vip)
                    .all(|s| quorum.get(&s.id).copied().unwrap_or(true))
            },
            verify,
        )
        .await;
    }

    fn reload(&mut self) {
        info!(config = %self.path.display(), "SIGHUP: reloading");
        let cfg = match config::load(&self.path) {
            Ok(c) => c,
            Err(e) => {
                error!("reload ignored, keeping the running configuration: {e}");
                self.reloaded(false);
                return;
            }
        };
        warn_unwise(&self.path, &cfg);
        if cfg.iface != self.cfg.iface
            || cfg.pin_dir != self.cfg.pin_dir
            || cfg.metrics != self.cfg.metrics
            || cfg.sync != self.cfg.sync
            || cfg.announce != self.cfg.announce
        {
            warn!("iface, pin_dir, metrics, sync and announce changes take effect only on restart");
        }
        let applied = self.apply_config(cfg, false);
        if let Err(e) = &applied {
            error!(
                "reload failed, the maps are unchanged: {}",
                crate::one_line(e)
            );
        }
        self.reloaded(applied.is_ok());
    }

    /// Counts a load of the configuration file for /metrics.
    fn reloaded(&mut self, ok: bool) {
        if let Ok(mut v) = self.snapshot.lock() {
            v.last_reload = Some((unix(SystemTime::now()), ok));
            if ok {
                v.reloads_ok += 1;
            } else {
                v.reloads_failed += 1;
            }
        }
    }

    /// Makes the maps match `cfg` in one transaction and (re)starts the checkers that changed.
    fn apply_config(&mut self, cfg: DaemonConfig, first: bool) -> anyhow::Result<()> {
        // Health of each configured real: kept if known, else inherited from the maps.
        let mut health: HashMap<Key, (Tracker, SystemTime)> = HashMap::new();
        let mut quorum = HashMap::new();
        let result = tokio::task::block_in_place(|| -> anyhow::Result<()> {
            let _lock = self.maps.lock()?;
            self.apply_limits(&cfg)?;
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
                    let h = if first {
                        inherited_health(current.get(&s.id), s, r)
                    } else {
                        Health::Up
                    };
                    if h == Health::Down {
                        info!(service = %s.id, real = %r.addr, "starts DOWN (inherited from the maps)");
                    }
                    // Added to a service that already carries connections: it slow-starts.
                    let added = current
                        .get(&s.id)
                        .is_some_and(|c| !c.reals.iter().any(|x| x.addr == r.addr));
                    if h == Health::Up && added && !s.slow_start.is_zero() {
                        self.ramps.insert(key, std::time::Instant::now());
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
                    reals: with_limits(
                        s,
                        in_map_order(
                            current.get(&s.id),
                            ramped(
                                s,
                                desired_reals(s, |a| health[&(s.id, a)].0.health, quorum[&s.id]),
                                |a| self.ramp_elapsed(s.id, a),
                            ),
                        ),
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
        let slow = self
            .cfg
            .services
            .iter()
            .find(|s| s.id == svc)
            .map_or(Duration::ZERO, |s| s.slow_start);
        if h == Health::Up && !slow.is_zero() {
            self.ramps.insert(ev.key, std::time::Instant::now());
        } else {
            self.ramps.remove(&ev.key);
        }
        if h == Health::Down
            && let Ok(mut m) = self.down_since.lock()
        {
            m.insert(ev.key, conntrack::now_ns());
        }
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
            error!(service = %svc, real = %addr, "changing the maps failed: {}", crate::one_line(&err));
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
        let want = ramped(s, desired_reals(s, |a| self.health(s.id, a), held), |a| {
            self.ramp_elapsed(s.id, a)
        });
        tokio::task::block_in_place(|| {
            let _lock = self.maps.lock()?;
            let mut table: Vec<VirtualService> =
                self.maps.read()?.into_iter().map(|s| s.spec).collect();
            let Some(cur) = table.iter_mut().find(|x| x.id == s.id) else {
                warn!(service = %s.id, "the service is not in the maps (changed outside the daemon?): nothing to do");
                return Ok(());
            };
            let reals = with_limits(s, in_map_order(Some(cur), want));
            if cur.reals == reals {
                return Ok(());
            }
            cur.reals = reals;
            self.maps.apply_locked(&table)?;
            Ok(())
        })
    }

    fn status(&self) -> Status {
        let services = self
            .cfg
            .services
            .iter()
            .map(|s| ServiceStatus {
                service: s.id.to_string(),
                protocol: s.id.proto.name().to_lowercase(),
                vip: s.id.addr,
                port: s.id.port,
                scheduler: s.sched.name().to_string(),
                on_failure: s.on_failure,
                quorum: self.quorum.get(&s.id).copied().unwrap_or(true),
                sorry_server: s.sorry_server,
                reals: s
                    .reals
                    .iter()
                    .filter_map(|r| {
                        let e = self.reals.get(&(s.id, r.addr))?;
                        Some(RealStatus {
                            address: r.addr,
                            weight: r.weight,
                            check: r.check.kind,
                            via: r.check.via,
                            health: e.tracker.health,
                            since: unix(e.since),
                            last_ok: e.last.as_ref().map(|l| l.0),
                            last_result: e.last.as_ref().map(|l| l.1.clone()),
                            latency_ms: e.last.as_ref().and_then(|l| l.2),
                            slow_start: self
                                .ramp_elapsed(s.id, r.addr)
                                .map(|t| (t.as_secs_f64(), s.slow_start.as_secs_f64())),
                        })
                    })
                    .collect(),
            })
            .collect();
        Status {
            pid: std::process::id(),
            config: self.path.clone(),
            pin_dir: self.pin_dir.clone(),
            updated: unix(SystemTime::now()),
            services,
            sync: self.sync.as_ref().map(|s| s.status()),
            announce: self.announcer.as_ref().map(|a| a.status()),
        }
    }

    fn write_status(&mut self) {
        if let Ok(mut snap) = self.snapshot.lock() {
            snap.reals = self
                .reals
                .iter()
                .map(|(k, e)| {
                    let latency = e.last.as_ref().and_then(|l| l.2).map(|ms| ms / 1000.0);
                    (k.0, k.1, e.tracker.health, latency)
                })
                .collect();
        }
        let path = self.cfg.status_file.clone();
        if let Err(e) = self.status().write(&path) {
            // Once per second at most; keep it at debug after the first time.
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(path = %path.display(), "cannot write the status file: {e}");
            }
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
        // Spread the first checks over one interval, so hundreds of reals do not fire in step.
        tokio::time::sleep(upto(check.interval)).await;
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
            tokio::time::sleep_until(start + check.interval + upto(check.jitter)).await;
        }
    })
}

/// Seconds between two recounts at least; a recount of a large table waits twenty times as
/// long as it took, so the daemon spends at most 5 % of a CPU on it.
const RECOUNT_EVERY: Duration = Duration::from_secs(2);

/// Keeps the data path's connection counts per real true to its tables (see
/// [`conntrack::recount`]; connections idle since their real last went DOWN count as
/// inactive), on a thread of its own: reading a table of a million connections
/// takes a while, and health checks must not wait for it. The maps are opened anew each time,
/// so a data path attached anew is followed.
fn spawn_recount(pin_dir: PathBuf, down_since: DownSince) {
    // By real slot: the recount reads slots, the daemon knows reals.
    let by_slot = move |maps: &Maps| -> anyhow::Result<HashMap<u32, u64>> {
        let down = down_since.lock().map(|m| m.clone()).unwrap_or_default();
        let mut out = HashMap::new();
        if down.is_empty() {
            return Ok(out);
        }
        for s in maps.read()? {
            for (r, &slot) in s.spec.reals.iter().zip(&s.real_slots) {
                if let Some(&t) = down.get(&(s.spec.id, r.addr)) {
                    out.insert(slot, t);
                }
            }
        }
        Ok(out)
    };
    let run = move || {
        let mut pause = RECOUNT_EVERY;
        let mut failing = false;
        loop {
            std::thread::sleep(pause);
            let started = std::time::Instant::now();
            let result = Maps::open(&pin_dir)
                .map_err(anyhow::Error::from)
                .and_then(|mut m| {
                    let down = by_slot(&m)?;
                    Ok(conntrack::recount(&mut m, &down)?)
                });
            match result {
                Ok(r) => {
                    failing = false;
                    if r.drift > 0 {
                        tracing::debug!(
                            reals = r.corrected,
                            drift = r.drift,
                            connections = r.connections,
                            "connection counts corrected from the tables"
                        );
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!("recounting connections per real: {e:#}");
                }
                Err(_) => {}
            }
            pause = RECOUNT_EVERY.max(started.elapsed() * 20);
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("recount".into())
        .spawn(run)
    {
        warn!("connection counts will not be recounted: {e}");
    }
}

/// A random duration in `0..=d`: jitter only.
fn upto(d: Duration) -> Duration {
    Duration::from_nanos(rand::random_range(0..=d.as_nanos() as u64))
}
