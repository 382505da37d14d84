//! The daemon's status file: health per real, written atomically after each change and every
//! second, read back by `lbadm status`. One type for both sides.

use super::{
    config::{CheckKind, CheckVia, OnFailure},
    healthcheck::Health,
};
use serde::{Deserialize, Serialize};
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    /// Unix time of the last write.
    pub updated: f64,
    pub services: Vec<ServiceStatus>,
    /// Connection sync, when configured.
    #[serde(default)]
    pub sync: Option<super::sync::SyncStatus>,
    /// VIP announcements, when configured.
    #[serde(default)]
    pub announce: Option<super::announce::AnnounceStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// `TCP 198.18.0.100:6033`.
    pub service: String,
    pub protocol: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub scheduler: String,
    pub on_failure: OnFailure,
    /// Whether the quorum is held.
    pub quorum: bool,
    pub sorry_server: Option<Ipv4Addr>,
    pub reals: Vec<RealStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RealStatus {
    pub address: Ipv4Addr,
    /// The configured weight.
    pub weight: u32,
    pub check: CheckKind,
    pub via: CheckVia,
    pub health: Health,
    /// Unix time of the last health change (or of the daemon's start).
    pub since: f64,
    pub last_ok: Option<bool>,
    pub last_result: Option<String>,
    pub latency_ms: Option<f64>,
    /// Slow start under way: seconds into the ramp, and its length.
    #[serde(default)]
    pub slow_start: Option<(f64, f64)>,
}

pub fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Status {
    /// The file, if a daemon has written one that this version can read.
    pub fn read(path: &Path) -> Option<Status> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Writes the file so a reader never sees half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomically(path, &body)
    }

    /// The `health:` part of `lbadm status`, `now` being Unix time.
    pub fn render(&self, file: &Path, now: f64) -> String {
        let alive = self.alive();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "health:    from {} (daemon pid {}{}, updated {:.0}s ago)",
            file.display(),
            self.pid,
            if alive { "" } else { ", NOT running" },
            now - self.updated
        );
        for s in &self.services {
            let quorum = match (s.quorum, s.sorry_server) {
                (false, Some(sorry)) => format!(" QUORUM LOST: sorry server {sorry}"),
                (false, None) => " QUORUM LOST".to_string(),
                _ => String::new(),
            };
            let on_failure = match s.on_failure {
                OnFailure::Quiesce => "quiesce",
                OnFailure::Remove => "remove",
            };
            let _ = writeln!(
                out,
                "  {} {} on_failure={on_failure}{quorum}",
                s.service, s.scheduler
            );
            for r in &s.reals {
                let latency = r
                    .latency_ms
                    .map(|l| format!(", {l:.1} ms"))
                    .unwrap_or_default();
                let health = match r.health {
                    Health::Up => "UP",
                    Health::Down => "DOWN",
                };
                let via = match r.via {
                    CheckVia::Tunnel => "tunnel",
                    CheckVia::Direct => "direct",
                };
                let ramp = r
                    .slow_start
                    .map(|(at, of)| format!(", slow start {at:.0}s of {of:.0}s"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    -> {:<15} {health:<4} weight {:<5} {} via {via} for {:.0}s, last check: {}{latency}{ramp}",
                    r.address.to_string(),
                    r.weight,
                    r.check.name(),
                    now - r.since,
                    r.last_result.as_deref().unwrap_or("none yet"),
                );
            }
        }
        if let Some(a) = &self.announce {
            let vips: Vec<String> = a
                .vips
                .iter()
                .map(|v| match &v.reason {
                    None => format!("{} announced", v.vip),
                    Some(why) => format!("{} NOT announced ({why})", v.vip),
                })
                .collect();
            let _ = writeln!(out, "announce:  table {}: {}", a.table, vips.join("; "));
        }
        if let Some(s) = &self.sync {
            let peers: Vec<String> = s
                .peers
                .iter()
                .map(|p| {
                    let seen = p
                        .last_contact
                        .map(|t| format!("{:.0}s ago", now - t))
                        .unwrap_or_else(|| "never".into());
                    format!(
                        "{} (last heard {seen}, {} received, {} rejected)",
                        p.address, p.received, p.rejected
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "sync:      {} on {}; {}",
                if s.ready { "READY" } else { "LEARNING" },
                s.listen,
                s.ready_reason
                    .as_deref()
                    .unwrap_or("waiting for a full sync from a peer")
            );
            let _ = writeln!(out, "  peers: {}", peers.join("; "));
            let lag = match (s.lag_p50_ms, s.lag_p99_ms) {
                (Some(a), Some(b)) => format!(", lag p50 {a:.0} ms p99 {b:.0} ms"),
                _ => String::new(),
            };
            let rejected: Vec<String> =
                s.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                out,
                "  sent {} entries in {} datagrams, received {}, installed {}{lag}; rejected: {}",
                s.sent_entries,
                s.sent_messages,
                s.received_entries,
                s.installed,
                if rejected.is_empty() {
                    "none".to_string()
                } else {
                    rejected.join(", ")
                }
            );
        }
        out
    }
}

/// Whether this director may take traffic (`lbadm status --ready`, for keepalived's
/// `track_script`): its data path is attached and, when a running daemon syncs connections with
/// peers, it has learned them. Ok or Err with the reason, in words.
pub fn readiness(attached: bool, daemon: Option<&Status>, alive: bool) -> Result<String, String> {
    if !attached {
        return Err("the data path is not attached".into());
    }
    match daemon.filter(|_| alive).and_then(|s| s.sync.as_ref()) {
        Some(s) if !s.ready => Err("learning connections from the peers (sync)".into()),
        Some(_) => Ok("attached, connections learned from the peers".into()),
        None => Ok("attached".into()),
    }
}

impl Status {
    /// Whether the daemon that wrote the file still runs.
    pub fn alive(&self) -> bool {
        self.pid > 0 && unsafe { libc::kill(self.pid as libc::pid_t, 0) } == 0
    }
}

pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_attached_and_synced() {
        let mut st = Status {
            pid: 1,
            config: "c".into(),
            pin_dir: "p".into(),
            updated: 0.0,
            services: vec![],
            sync: None,
            announce: None,
        };
        assert!(readiness(false, Some(&st), true).is_err());
        assert_eq!(readiness(true, None, false), Ok("attached".into()));
        assert_eq!(readiness(true, Some(&st), true), Ok("attached".into()));
        let learning: crate::daemon::sync::SyncStatus = serde_json::from_value(serde_json::json!({
            "listen": "198.18.0.2:8849", "ready": false, "ready_reason": null, "peers": [],
            "sent_messages": 0, "sent_entries": 0, "sent_bytes": 0, "received_messages": 0,
            "received_entries": 0, "received_bytes": 0, "installed": 0, "unsendable": 0,
            "rejected": {}, "lag_p50_ms": null, "lag_p99_ms": null
        }))
        .unwrap();
        st.sync = Some(learning);
        assert!(
            readiness(true, Some(&st), true)
                .unwrap_err()
                .contains("learning")
        );
        // A daemon that died no longer speaks for the data path, which still forwards.
        assert!(readiness(true, Some(&st), false).is_ok());
    }

    #[test]
    fn round_trips_and_renders() {
        let st = Status {
            pid: 0,
            config: "/etc/lbadm/lbadm.toml".into(),
            pin_dir: "/sys/fs/bpf/lbadm".into(),
            updated: 100.0,
            sync: None,
            announce: None,
            services: vec![ServiceStatus {
                service: "TCP 198.18.0.100:6033".into(),
                protocol: "tcp".into(),
                vip: Ipv4Addr::new(198, 18, 0, 100),
                port: 6033,
                scheduler: "wrr".into(),
                on_failure: OnFailure::Quiesce,
                quorum: false,
                sorry_server: Some(Ipv4Addr::new(10, 0, 9, 9)),
                reals: vec![RealStatus {
                    address: Ipv4Addr::new(198, 18, 0, 11),
                    weight: 3,
                    check: CheckKind::Mysql,
                    via: CheckVia::Tunnel,
                    health: Health::Down,
                    since: 90.0,
                    last_ok: Some(false),
                    last_result: Some("tcp: connection refused".into()),
                    latency_ms: None,
                    slow_start: Some((12.0, 30.0)),
                }],
            }],
        };
        let json = serde_json::to_string(&st).unwrap();
        assert!(json.contains("\"health\":\"down\""), "{json}");
        assert!(json.contains("\"vip\":\"198.18.0.100\""), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        let text = st.render(Path::new("/run/lbadm/status.json"), 110.0);
        assert_eq!(
            text,
            "health:    from /run/lbadm/status.json (daemon pid 0, NOT running, updated 10s ago)\n\
             \x20 TCP 198.18.0.100:6033 wrr on_failure=quiesce QUORUM LOST: sorry server 10.0.9.9\n\
             \x20   -> 198.18.0.11     DOWN weight 3     mysql via tunnel for 20s, last check: tcp: connection refused, slow start 12s of 30s\n"
        );
    }
}
