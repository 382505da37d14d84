//! The health-check daemon's configuration file (TOML), parsed and validated.
//!
//! Every key (see `lb-userspace/dist/lbadm.toml` for a complete example):
//!
//! ```toml
//! iface = "eth0"            # required: director interface; the daemon attaches the data path
//!                           # there if it is not attached yet
//! pin_dir = "/sys/fs/bpf/lbadm"            # optional, default: --pin-dir / LBADM_PIN_DIR
//! status_file = "/run/lbadm/status.json"   # optional, default shown; health per real as JSON
//! metrics = "127.0.0.1:9477"               # optional Prometheus endpoint (GET /metrics); off if absent
//! notify_timeout = "10s"                   # optional: notify commands are killed after this
//! conn_table = 1048576      # optional: established connections tracked, when the daemon
//!                           # attaches (`lbadm attach --conn-table`); an attached one keeps its size
//! flood_rate = 50000        # optional: new flows per second per CPU that start flood mode
//!                           # (0: never); set at start and on every reload
//! allow_no_services = false # a file without [[service]] is refused (it would remove every
//!                           # service from the maps) unless this says it is meant
//!
//! [allow]                   # optional: source allow-lists per VIP; a VIP listed takes new
//!                           # connections only from these (CIDRs or addresses). When present the
//!                           # daemon makes the lists exactly this (empty: none); when absent it
//!                           # leaves them to `lbadm allow`
//! "198.18.0.100" = ["10.0.0.0/8", "192.0.2.7"]
//!
//! [[service]]               # one per virtual service
//! vip = "198.18.0.100"      # required, IPv4
//! port = 6033               # required (0 only with persistence)
//! protocol = "tcp"          # "tcp" (default) or "udp"
//! scheduler = "wlc"         # "wlc" (default), "lc", "sed", "nq", "rr", "wrr" or "mh"
//! slow_start = "30s"        # a real that comes back UP, or is added, ramps its weight from
//!                           # 1/n to its own over this long (default 0: at once)
//! persistence = 0           # seconds, 0 = none (default)
//! on_failure = "quiesce"    # "quiesce" (default): weight 0 while DOWN, existing connections
//!                           # continue (keepalived's inhibit_on_failure); "remove": the real is
//!                           # removed while DOWN (keepalived's default)
//! quorum = 1                # sum of UP weights below which the quorum is lost (default 1)
//! hysteresis = 0            # lost below quorum - hysteresis, regained at quorum + hysteresis
//! sorry_server = "10.0.0.9" # optional: takes new connections while the quorum is lost
//! notify_up = ["/bin/prog", "arg"]   # optional argv (no shell), also notify_down, quorum_up,
//!                                    # quorum_down; notify_up/down may be set per real too
//!
//! [service.check]           # defaults for this service's reals
//! type = "tcp"              # "tcp" (connect), "mysql" (HandshakeV10 greeting) or "none"
//! interval = "2s"           # between check starts (default 2s); units ms, s, m
//! timeout = "1s"            # whole check, connect included (default 1s); must be < interval
//! fall = 3                  # consecutive failures that mark a real DOWN (default 3, >= 1)
//! rise = 2                  # consecutive successes that mark it UP again (default 2, >= 1)
//! jitter = "200ms"          # random delay added at start and to each interval
//!                           # (default interval/10)
//! port = 6033               # port to check (default: the service's port)
//! via = "tunnel"            # "tunnel" (default): VIP:port encapsulated to the real; "direct"
//! user = "monitor"          # mysql only: log in and run SELECT 1 (password = "..." too);
//!                           # caching_sha2_password (MySQL 8), mysql_native_password, …
//! tls = "preferred"         # mysql login only: "preferred" (default: when the server offers
//!                           # it), "required" (a server without TLS fails the check) or "off";
//!                           # as MySQL's ssl-mode=REQUIRED, the certificate is not verified
//!
//! [[service.real]]
//! address = "198.18.0.11"   # required, IPv4
//! weight = 1                # 0..=2147483647 (default 1)
//! max_conns = 0             # ipvsadm -x: no new connection at this many (active + inactive);
//!                           # 0 = no limit (default)
//! min_conns = 0             # ipvsadm -y: new ones again below this many; 0 = 3/4 of max_conns
//! [service.real.check]      # optional: overrides single keys of [service.check]
//!
//! [sync]                    # optional: connection sync with other directors, see
//!                           # `super::sync::config`
//! [announce]                # optional: announce the VIPs through a routing daemon, see
//!                           # `super::announce`
//! ```
//!
//! A broken file is rejected with the line and column of the offending key (toml's span) and
//! the field and reason; the caller keeps whatever it was running.

use crate::director::{
    Protocol, Scheduler, ServiceId,
    allow::{AllowLists, Cidr},
};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{Ipv4Addr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};
use toml::Spanned;

pub const DEFAULT_STATUS_FILE: &str = "/run/lbadm/status.json";
pub const MAX_WEIGHT: i64 = 2_147_483_647;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    Quiesce,
    Remove,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Mysql,
    None,
}

impl CheckKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Mysql => "mysql",
            CheckKind::None => "none",
        }
    }
}

/// Where a check connects: the real's own address, or VIP:port through the tunnel to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckVia {
    Tunnel,
    Direct,
}

/// A password: printed as `***` by `Debug`, never serialised.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    pub via: CheckVia,
    /// `mysql` only: log in as this user and run `SELECT 1`.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// `mysql` with a user only: TLS for the login.
    pub tls: super::mysql::Tls,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    pub jitter: Duration,
    /// Port to connect to (the service's port unless overridden).
    pub port: u16,
}

/// A command run on an event: argv, executed directly (never through a shell).
pub type Argv = Vec<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealConfig {
    pub addr: Ipv4Addr,
    pub weight: u32,
    /// Connection thresholds (ipvsadm's `-x` / `-y`).
    pub max_conns: u32,
    pub min_conns: u32,
    pub check: CheckConfig,
    pub notify_up: Option<Argv>,
    pub notify_down: Option<Argv>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    pub id: ServiceId,
    pub sched: Scheduler,
    /// A real that comes back UP, or is added, reaches its weight over this long.
    pub slow_start: Duration,
    pub persistence: u32,
    pub on_failure: OnFailure,
    pub reals: Vec<RealConfig>,
    /// Takes all new connections while the quorum is lost (keepalived's sorry_server).
    pub sorry_server: Option<Ipv4Addr>,
    /// Sum of the weights of UP reals below which the quorum is lost (keepalived's quorum).
    pub quorum: u64,
    pub hysteresis: u64,
    pub quorum_up: Option<Argv>,
    pub quorum_down: Option<Argv>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub iface: String,
    pub pin_dir: Option<PathBuf>,
    pub status_file: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// Notify commands are killed after this long.
    pub notify_timeout: Duration,
    pub services: Vec<ServiceConfig>,
    /// Connection sync with other directors (`[sync]`).
    pub sync: Option<super::sync::config::SyncConfig>,
    /// Announcing the VIPs through a routing daemon (`[announce]`).
    pub announce: Option<super::announce::AnnounceConfig>,
    pub conn_table: Option<u32>,
    pub flood_rate: Option<u32>,
    /// Source allow-lists per VIP (`[allow]`); None leaves the data path's as they are.
    pub allow: Option<AllowLists>,
}

/// A rejected file: where, which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based line and column, when known.
    pub position: Option<(usize, usize)>,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((l, c)) = self.position {
            write!(f, ":{l}:{c}")?;
        }
        if self.field.is_empty() {
            write!(f, ": {}", self.reason)
        } else {
            write!(f, ": {}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A duration written as `"500ms"`, `"2s"`, `"1m"` (or `"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Dur)
            .map_err(serde::de::Error::custom)
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        return Err(format!(
            "invalid duration {s:?}: use a unit, e.g. \"500ms\", \"2s\", \"1m\""
        ));
    };
    let v: f64 = num.trim().parse().map_err(|_| {
        format!("invalid duration {s:?}: use a unit, e.g. \"500ms\", \"2s\", \"1m\"")
    })?;
    if !v.is_finite() || v < 0.0 || v * mult > 86_400.0 {
        return Err(format!("invalid duration {s:?}: must be between 0 and 24h"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    iface: String,
    pin_dir: Option<PathBuf>,
    status_file: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    notify_timeout: Option<Dur>,
    #[serde(default)]
    service: Vec<RawService>,
    sync: Option<super::sync::config::RawSync>,
    announce: Option<super::announce::RawAnnounce>,
    conn_table: Option<Spanned<u32>>,
    flood_rate: Option<u32>,
    #[serde(default)]
    allow_no_services: bool,
    allow: Option<BTreeMap<Ipv4Addr, Vec<Spanned<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Spanned<Ipv4Addr>,
    port: u16,
    #[serde(default = "default_protocol")]
    protocol: RawProtocol,
    #[serde(default)]
    scheduler: Option<Scheduler>,
    slow_start: Option<Dur>,
    #[serde(default)]
    persistence: u32,
    #[serde(default)]
    on_failure: Option<OnFailure>,
    #[serde(default)]
    check: RawCheck,
    sorry_server: Option<Spanned<Ipv4Addr>>,
    quorum: Option<u64>,
    hysteresis: Option<u64>,
    quorum_up: Option<Spanned<Argv>>,
    quorum_down: Option<Spanned<Argv>>,
    notify_up: Option<Spanned<Argv>>,
    notify_down: Option<Spanned<Argv>>,
    #[serde(default)]
    real: Vec<RawReal>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Tcp,
    Udp,
}

fn default_protocol() -> RawProtocol {
    RawProtocol::Tcp
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Option<CheckKind>,
    interval: Option<Spanned<Dur>>,
    timeout: Option<Spanned<Dur>>,
    fall: Option<Spanned<u32>>,
    rise: Option<Spanned<u32>>,
    jitter: Option<Dur>,
    port: Option<u16>,
    via: Option<CheckVia>,
    user: Option<Spanned<String>>,
    password: Option<Spanned<Secret>>,
    tls: Option<Spanned<super::mysql::Tls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReal {
    address: Spanned<Ipv4Addr>,
    weight: Option<Spanned<i64>>,
    max_conns: Option<Spanned<i64>>,
    min_conns: Option<Spanned<i64>>,
    check: Option<RawCheck>,
    notify_up: Option<Spanned<Argv>>,
    notify_down: Option<Spanned<Argv>>,
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<DaemonConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.into(),
        position: None,
        field: String::new(),
        reason: format!("cannot read: {e}"),
    })?;
    parse(path, &text)
}

/// What is allowed but unwise in a valid file, for the daemon's log (as ssh warns about a key
/// others can read): metrics listening on every interface, and a password in a file that group
/// or others can read (`mode`: the file's permission bits).
pub fn warnings(path: &Path, cfg: &DaemonConfig, mode: Option<u32>) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(addr) = cfg.metrics
        && addr.ip().is_unspecified()
    {
        w.push(format!(
            "metrics = \"{addr}\" listens on every interface: whoever reaches port {} reads the director's counters and health; bind it to 127.0.0.1 or a management address",
            addr.port()
        ));
    }
    let password = cfg
        .services
        .iter()
        .flat_map(|s| &s.reals)
        .any(|r| r.check.password.is_some());
    if let Some(mode) = mode.filter(|m| password && m & 0o077 != 0) {
        w.push(format!(
            "{} holds a check password and is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        ));
    }
    w
}

/// Parses and validates `text` (read from `path`, which only names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<DaemonConfig, ConfigError> {
    let err = |span: Option<Range<usize>>, field: &str, reason: String| ConfigError {
        path: path.into(),
        position: span.map(|s| line_col(text, s.start)),
        field: field.into(),
        reason,
    };
    let raw: RawFile =
        toml::from_str(text).map_err(|e| err(e.span(), "", e.message().trim().to_string()))?;
    if raw.iface.is_empty() {
        return Err(err(
            None,
            "iface",
            "must name the director's interface".into(),
        ));
    }
    if let Some(n) = &raw.conn_table
        && *n.get_ref() < lb_common::MIN_CONNS
    {
        return Err(err(
            Some(n.span()),
            "conn_table",
            format!("at least {} entries", lb_common::MIN_CONNS),
        ));
    }
    let allow = match &raw.allow {
        None => None,
        Some(m) => {
            let mut lists = AllowLists::new();
            for (vip, cidrs) in m {
                let mut list = Vec::new();
                for c in cidrs {
                    list.push(c.get_ref().parse::<Cidr>().map_err(|e| {
                        err(Some(c.span()), &format!("allow.\"{vip}\""), e.to_string())
                    })?);
                }
                lists.insert(*vip, list);
            }
            Some(lists)
        }
    };
    // The file is authoritative: without services it would remove every one from the maps,
    // which a truncated or half-written file must not do by accident.
    if raw.service.is_empty() && !raw.allow_no_services {
        return Err(err(
            None,
            "service",
            "no [[service]]: the daemon would remove every service from the maps; if that is what you mean, say so with allow_no_services = true".into(),
        ));
    }
    let mut services = Vec::new();
    let mut seen = HashSet::new();
    for (i, s) in raw.service.iter().enumerate() {
        let proto = match s.protocol {
            RawProtocol::Tcp => Protocol::Tcp,
            RawProtocol::Udp => Protocol::Udp,
        };
        let id = ServiceId {
            proto,
            addr: *s.vip.get_ref(),
            port: s.port,
        };
        let field = format!("service[{i}]");
        if let Some(why) = crate::director::table::not_unicast(id.addr) {
            return Err(err(
                Some(s.vip.span()),
                &format!("{field}.vip"),
                format!("{} cannot be a VIP: {why}", id.addr),
            ));
        }
        if !seen.insert(id) {
            return Err(err(
                Some(s.vip.span()),
                &format!("{field}.vip"),
                format!("duplicate service {id}"),
            ));
        }
        if s.port == 0 && s.persistence == 0 {
            return Err(err(
                Some(s.vip.span()),
                &format!("{field}.port"),
                "port 0 needs persistence".into(),
            ));
        }
        let mut addrs = HashSet::new();
        let mut reals = Vec::new();
        for (j, r) in s.real.iter().enumerate() {
            let rfield = format!("{field}.real[{j}]");
            let addr = *r.address.get_ref();
            if let Some(why) = crate::director::table::unusable_real(addr, id.addr) {
                return Err(err(
                    Some(r.address.span()),
                    &format!("{rfield}.address"),
                    format!("{addr} cannot be a real server: {why}"),
                ));
            }
            if !addrs.insert(addr) {
                return Err(err(
                    Some(r.address.span()),
                    &format!("{rfield}.address"),
                    format!("duplicate real {addr} in service {id}"),
                ));
            }
            let bounded = |v: &Option<Spanned<i64>>, key: &str, default: u32| match v {
                None => Ok(default),
                Some(w) => {
                    let v = *w.get_ref();
                    if (0..=MAX_WEIGHT).contains(&v) {
                        Ok(v as u32)
                    } else {
                        Err(err(
                            Some(w.span()),
                            &format!("{rfield}.{key}"),
                            format!("{v} is out of range 0..={MAX_WEIGHT}"),
                        ))
                    }
                }
            };
            let weight = bounded(&r.weight, "weight", 1)?;
            let max_conns = bounded(&r.max_conns, "max_conns", 0)?;
            let min_conns = bounded(&r.min_conns, "min_conns", 0)?;
            if min_conns > max_conns {
                return Err(err(
                    r.min_conns.as_ref().map(|m| m.span()),
                    &format!("{rfield}.min_conns"),
                    format!(
                        "{min_conns} is above max_conns ({max_conns}): new connections resume below min_conns, so it needs a max_conns at least as high"
                    ),
                ));
            }
            let check = merge_check(&s.check, r.check.as_ref(), s.port, &rfield, &err)?;
            let notify_up = argv(
                r.notify_up.as_ref().or(s.notify_up.as_ref()),
                &rfield,
                "notify_up",
                &err,
            )?;
            let notify_down = argv(
                r.notify_down.as_ref().or(s.notify_down.as_ref()),
                &rfield,
                "notify_down",
                &err,
            )?;
            reals.push(RealConfig {
                addr,
                weight,
                max_conns,
                min_conns,
                check,
                notify_up,
                notify_down,
            });
        }
        if let Some(sorry) = &s.sorry_server
            && addrs.contains(sorry.get_ref())
        {
            return Err(err(
                Some(sorry.span()),
                &format!("{field}.sorry_server"),
                format!("{} is also a real of this service", sorry.get_ref()),
            ));
        }
        // Validate the service defaults too, even without reals.
        merge_check(&s.check, None, s.port, &field, &err)?;
        services.push(ServiceConfig {
            id,
            sched: s.scheduler.unwrap_or(Scheduler::DEFAULT),
            slow_start: s.slow_start.map(|d| d.0).unwrap_or_default(),
            persistence: s.persistence,
            on_failure: s.on_failure.unwrap_or(OnFailure::Quiesce),
            reals,
            sorry_server: s.sorry_server.as_ref().map(|a| *a.get_ref()),
            quorum: s.quorum.unwrap_or(1),
            hysteresis: s.hysteresis.unwrap_or(0),
            quorum_up: argv(s.quorum_up.as_ref(), &field, "quorum_up", &err)?,
            quorum_down: argv(s.quorum_down.as_ref(), &field, "quorum_down", &err)?,
        });
    }
    Ok(DaemonConfig {
        iface: raw.iface,
        pin_dir: raw.pin_dir,
        status_file: raw
            .status_file
            .unwrap_or_else(|| DEFAULT_STATUS_FILE.into()),
        metrics: raw.metrics,
        conn_table: raw.conn_table.map(|n| n.into_inner()),
        flood_rate: raw.flood_rate,
        allow,
        notify_timeout: raw
            .notify_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(10)),
        services,
        sync: raw
            .sync
            .as_ref()
            .map(|s| super::sync::config::validate(s, path, &err))
            .transpose()?,
        announce: raw
            .announce
            .as_ref()
            .map(|a| super::announce::validate(a, &err))
            .transpose()?,
    })
}

/// A notify command: a non-empty argv whose program is named.
fn argv(
    v: Option<&Spanned<Argv>>,
    field: &str,
    key: &str,
    err: &ErrAt,
) -> Result<Option<Argv>, ConfigError> {
    let Some(v) = v else { return Ok(None) };
    if v.get_ref().first().is_none_or(|p| p.is_empty()) {
        return Err(err(
            Some(v.span()),
            &format!("{field}.{key}"),
            "must be a non-empty argv list, e.g. [\"/usr/local/bin/page\", \"--team\", \"db\"] (run without a shell)".into(),
        ));
    }
    Ok(Some(v.get_ref().clone()))
}

/// Builds an error at a span, for a field.
pub(crate) type ErrAt<'a> = dyn Fn(Option<Range<usize>>, &str, String) -> ConfigError + 'a;

/// The real's check: its own keys over the service's, over the defaults.
fn merge_check(
    svc: &RawCheck,
    real: Option<&RawCheck>,
    port: u16,
    field: &str,
    err: &ErrAt,
) -> Result<CheckConfig, ConfigError> {
    let prefix = format!("{field}.check");
    let r = real.cloned().unwrap_or_default();
    let pick = |a: &Option<Spanned<Dur>>, b: &Option<Spanned<Dur>>| a.clone().or_else(|| b.clone());
    let interval = pick(&r.interval, &svc.interval);
    let timeout = pick(&r.timeout, &svc.timeout);
    let fall = r.fall.clone().or_else(|| svc.fall.clone());
    let rise = r.rise.clone().or_else(|| svc.rise.clone());
    let iv = interval
        .as_ref()
        .map(|d| d.get_ref().0)
        .unwrap_or(Duration::from_secs(2));
    let to = timeout
        .as_ref()
        .map(|d| d.get_ref().0)
        .unwrap_or(Duration::from_secs(1));
    if iv.is_zero() {
        return Err(err(
            interval.map(|i| i.span()),
            &format!("{prefix}.interval"),
            "must be > 0".into(),
        ));
    }
    if to.is_zero() || to >= iv {
        let span = timeout.map(|t| t.span()).or(interval.map(|i| i.span()));
        return Err(err(
            span,
            &format!("{prefix}.timeout"),
            format!("timeout {to:?} must be > 0 and shorter than the interval {iv:?}"),
        ));
    }
    for (name, v) in [("fall", &fall), ("rise", &rise)] {
        if let Some(v) = v
            && *v.get_ref() == 0
        {
            return Err(err(
                Some(v.span()),
                &format!("{prefix}.{name}"),
                "must be at least 1".into(),
            ));
        }
    }
    let kind = r.kind.or(svc.kind).unwrap_or(CheckKind::Tcp);
    // A user set where the check is not mysql is a mistake; one inherited by a real whose own
    // check is tcp is simply not used.
    for (user, at_kind) in [
        (&r.user, kind),
        (&svc.user, svc.kind.unwrap_or(CheckKind::Tcp)),
    ] {
        if let Some(u) = user
            && at_kind != CheckKind::Mysql
        {
            return Err(err(
                Some(u.span()),
                &format!("{prefix}.user"),
                format!(
                    "only a mysql check logs in (this check is {})",
                    at_kind.name()
                ),
            ));
        }
    }
    let mysql = kind == CheckKind::Mysql;
    let user = r
        .user
        .clone()
        .or_else(|| svc.user.clone())
        .filter(|_| mysql);
    let password = r.password.clone().or_else(|| svc.password.clone());
    if let (Some(p), None) = (&password, &user)
        && (mysql || r.password.is_some())
    {
        return Err(err(
            Some(p.span()),
            &format!("{prefix}.password"),
            "a password needs a user".into(),
        ));
    }
    let password = password.filter(|_| user.is_some());
    let tls = r.tls.clone().or_else(|| svc.tls.clone());
    if let (Some(t), None) = (&tls, &user)
        && (mysql || r.tls.is_some())
    {
        return Err(err(
            Some(t.span()),
            &format!("{prefix}.tls"),
            "TLS is for a mysql check's login: set user (and password) too".into(),
        ));
    }
    Ok(CheckConfig {
        tls: tls
            .filter(|_| user.is_some())
            .map(|t| *t.get_ref())
            .unwrap_or_default(),
        kind,
        via: r.via.or(svc.via).unwrap_or(CheckVia::Tunnel),
        user: user.map(|u| u.into_inner()),
        password: password.map(|p| p.into_inner()),
        interval: iv,
        timeout: to,
        fall: fall.map(|f| *f.get_ref()).unwrap_or(3),
        rise: rise.map(|f| *f.get_ref()).unwrap_or(2),
        jitter: r.jitter.or(svc.jitter).map(|d| d.0).unwrap_or(iv / 10),
        port: r.port.or(svc.port).unwrap_or(port),
    })
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Result<DaemonConfig, ConfigError> {
        parse(Path::new("t.toml"), t)
    }

    const GOOD: &str = r#"
iface = "eth0"
[[service]]
vip = "198.18.0.100"
port = 6033
on_failure = "remove"
[service.check]
type = "mysql"
interval = "200ms"
timeout = "150ms"
fall = 2
rise = 2
[[service.real]]
address = "198.18.0.11"
weight = 3
[[service.real]]
address = "198.18.0.12"
[service.real.check]
type = "tcp"
"#;

    #[test]
    fn tls_is_for_a_login() {
        let base = "iface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n\
                    [service.check]\ntype = \"mysql\"\n";
        let real = "[[service.real]]\naddress = \"198.18.0.11\"\n";
        let c = p(&format!("{base}user = \"m\"\ntls = \"required\"\n{real}")).unwrap();
        assert_eq!(
            c.services[0].reals[0].check.tls,
            super::super::mysql::Tls::Required
        );
        let c = p(&format!("{base}user = \"m\"\n{real}")).unwrap();
        assert_eq!(
            c.services[0].reals[0].check.tls,
            super::super::mysql::Tls::Preferred
        );
        let e = p(&format!("{base}tls = \"required\"\n{real}")).unwrap_err();
        assert!(
            e.to_string().contains("TLS is for a mysql check's login"),
            "{e}"
        );
        assert!(e.to_string().contains("t.toml:7:"), "{e}");
        let e = p(&format!("{base}user = \"m\"\ntls = \"sometimes\"\n{real}")).unwrap_err();
        assert!(e.to_string().contains("unknown variant `sometimes`"), "{e}");
    }

    #[test]
    fn good_file_merges_defaults() {
        let c = p(GOOD).unwrap();
        let s = &c.services[0];
        assert_eq!(s.on_failure, OnFailure::Remove);
        assert_eq!(s.sched, Scheduler::Wlc);
        assert_eq!(s.slow_start, Duration::ZERO);
        assert_eq!((s.reals[0].max_conns, s.reals[0].min_conns), (0, 0));
        assert_eq!(s.reals[0].check.kind, CheckKind::Mysql);
        assert_eq!(s.reals[1].check.kind, CheckKind::Tcp);
        assert_eq!(s.reals[1].check.interval, Duration::from_millis(200));
        assert_eq!(s.reals[1].weight, 1);
        assert_eq!(s.reals[0].check.port, 6033);
    }

    #[test]
    fn unwise_choices_are_warned_about() {
        let path = Path::new("/etc/lbadm/lbadm.toml");
        let c = p(GOOD).unwrap();
        assert!(warnings(path, &c, Some(0o644)).is_empty());
        let open = p(&GOOD.replacen(
            "iface = \"eth0\"\n",
            "iface = \"eth0\"\nmetrics = \"0.0.0.0:9477\"\n",
            1,
        ))
        .unwrap();
        let w = warnings(path, &open, Some(0o600));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("every interface"), "{w:?}");
        let pw = p(&GOOD.replace(
            "fall = 2",
            "fall = 2\nuser = \"monitor\"\npassword = \"s3cret\"",
        ))
        .unwrap();
        assert!(warnings(path, &pw, Some(0o600)).is_empty());
        let w = warnings(path, &pw, Some(0o644));
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("chmod 600") && w[0].contains("mode 644"),
            "{w:?}"
        );
        assert!(!w[0].contains("s3cret"));
    }

    #[test]
    fn a_file_without_services_is_refused_unless_it_says_so() {
        let e = p("iface = \"eth0\"\n").unwrap_err();
        assert_eq!(e.field, "service", "{e}");
        assert!(e.to_string().contains("allow_no_services = true"), "{e}");
        let c = p("iface = \"eth0\"\nallow_no_services = true\n").unwrap();
        assert!(c.services.is_empty());
    }

    #[test]
    fn addresses_that_cannot_be_hosts_are_refused_where_they_are() {
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.5", "198.18.0.100"] {
            let e = p(&GOOD.replace("198.18.0.12", bad)).unwrap_err();
            assert!(e.field.ends_with(".address"), "{bad}: {e}");
            assert!(
                e.to_string().contains("cannot be a real server"),
                "{bad}: {e}"
            );
            assert!(e.position.is_some(), "{e}");
        }
        let e = p(&GOOD.replace("vip = \"198.18.0.100\"", "vip = \"0.0.0.0\"")).unwrap_err();
        assert_eq!(e.field, "service[0].vip", "{e}");
    }

    #[test]
    fn limits_and_allow_lists_are_read_and_checked() {
        // Root keys and [allow] go before GOOD's [[service]].
        let with = |extra: &str| {
            GOOD.replacen(
                "iface = \"eth0\"\n",
                &format!("iface = \"eth0\"\n{extra}"),
                1,
            )
        };
        let c = p(&with(
            "flood_rate = 0\nconn_table = 65536\n[allow]\n\"198.18.0.100\" = [\"10.0.0.0/8\", \"192.0.2.7\"]\n",
        ))
        .unwrap();
        assert_eq!((c.flood_rate, c.conn_table), (Some(0), Some(65536)));
        let lists = c.allow.unwrap();
        assert_eq!(lists[&Ipv4Addr::new(198, 18, 0, 100)].len(), 2);
        assert_eq!(p(GOOD).unwrap().allow, None);
        let e = p(&with("[allow]\n\"198.18.0.100\" = [\"10.1.0.0/8\"]\n")).unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(4), "{e}");
        assert!(e.to_string().contains("did you mean 10.0.0.0/8?"), "{e}");
        let e = p(&with("conn_table = 10\n")).unwrap_err();
        assert_eq!(e.field, "conn_table", "{e}");
    }

    #[test]
    fn errors_have_positions_and_fields() {
        let e = p("iface = \"eth0\"\n[[service]]\nvip = 1.2.3\n").unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(3), "{e}");
        let dup = GOOD.replace("198.18.0.12", "198.18.0.11");
        let e = p(&dup).unwrap_err();
        assert_eq!(e.field, "service[0].real[1].address", "{e}");
        assert!(e.to_string().contains("duplicate real 198.18.0.11"), "{e}");
        let e = p(&GOOD.replace("weight = 3", "weight = 2147483648")).unwrap_err();
        assert_eq!(e.field, "service[0].real[0].weight");
        let e = p(&GOOD.replace("fall = 2", "fall = 0")).unwrap_err();
        assert!(e.field.ends_with("check.fall"), "{e}");
        let e = p(&GOOD.replace("timeout = \"150ms\"", "timeout = \"200ms\"")).unwrap_err();
        assert!(e.field.ends_with("check.timeout"), "{e}");
        let e = p(&GOOD.replace("port = 6033", "port = 6033\nscheduler = \"lblc\"")).unwrap_err();
        assert!(e.reason.contains("lblc"), "{e}");
        let limits = "weight = 3\nmax_conns = 100\nmin_conns = 80";
        let c = p(&GOOD.replace("weight = 3", limits)).unwrap();
        assert_eq!(
            (
                c.services[0].reals[0].max_conns,
                c.services[0].reals[0].min_conns
            ),
            (100, 80)
        );
        let e = p(&GOOD.replace("weight = 3", "weight = 3\nmin_conns = 5")).unwrap_err();
        assert_eq!(e.field, "service[0].real[0].min_conns", "{e}");
        assert!(e.reason.contains("max_conns (0)"), "{e}");
        let e = p(&GOOD.replace("weight = 3", "weight = 3\nmax_conns = -1")).unwrap_err();
        assert_eq!(e.field, "service[0].real[0].max_conns", "{e}");
        let c = p(&GOOD.replace("port = 6033", "port = 6033\nslow_start = \"30s\"")).unwrap();
        assert_eq!(c.services[0].slow_start, Duration::from_secs(30));
        let two = format!("{GOOD}\n[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n");
        assert!(p(&two).unwrap_err().reason.contains("duplicate service"));
        let e =
            p(&GOOD.replace("type = \"tcp\"", "type = \"tcp\"\nuser = \"monitor\"")).unwrap_err();
        assert_eq!(e.field, "service[0].real[1].check.user", "{e}");
        let e = p(&GOOD.replace("fall = 2", "fall = 2\npassword = \"s3cret\"")).unwrap_err();
        assert!(e.field.ends_with("check.password"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        let e = p(&GOOD.replace("on_failure", "sorry_server = \"198.18.0.12\"\non_failure"))
            .unwrap_err();
        assert_eq!(e.field, "service[0].sorry_server", "{e}");
        let e = p(&GOOD.replace("on_failure", "quorum_down = []\non_failure")).unwrap_err();
        assert_eq!(e.field, "service[0].quorum_down", "{e}");
        assert_eq!(e.position.map(|p| p.0), Some(6), "{e}");
    }

    /// The example shipped with lbadm is valid, and so is its `[sync]` section once enabled.
    #[test]
    fn the_shipped_example_parses() {
        let text = include_str!("../../dist/lbadm.toml");
        p(text).unwrap();
        let (head, sync) = text.split_once("# [sync]").unwrap();
        let sync: String = sync
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| {
                if l.starts_with("key_file") {
                    "key = \"0123456789abcdef0123\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let c = p(&format!("{head}[sync]{sync}")).unwrap();
        assert_eq!(c.sync.unwrap().peers.len(), 1);
    }

    #[test]
    fn checks_go_through_the_tunnel_unless_told() {
        let c = p(&GOOD.replace("type = \"tcp\"", "type = \"tcp\"\nvia = \"direct\"")).unwrap();
        assert_eq!(c.services[0].reals[0].check.via, CheckVia::Tunnel);
        assert_eq!(c.services[0].reals[1].check.via, CheckVia::Direct);
        let c = p(&GOOD.replace(
            "fall = 2",
            "fall = 2\nuser = \"monitor\"\npassword = \"s3cret\"",
        ))
        .unwrap();
        let check = &c.services[0].reals[0].check;
        assert_eq!(check.user.as_deref(), Some("monitor"));
        assert_eq!(check.password.as_ref().map(|s| s.expose()), Some("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
