//! The Prometheus endpoint (`metrics = "ADDR:PORT"`): counters from the maps, health from the
//! daemon, on `GET /metrics`.

use super::{
    healthcheck::Health,
    sync::{ConnSync, SyncStatus},
};
use crate::director::{Maps, ServiceId};
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// What the metrics endpoint knows about health, kept current by the daemon.
pub type HealthSnapshot = Arc<Mutex<Vec<(ServiceId, Ipv4Addr, Health)>>>;

pub async fn serve(
    listener: tokio::net::TcpListener,
    pin_dir: PathBuf,
    snapshot: HealthSnapshot,
    sync: Option<Arc<ConnSync>>,
) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (pin_dir, snapshot) = (pin_dir.clone(), snapshot.clone());
        let sync = sync.as_ref().map(|s| s.status());
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
                match tokio::task::spawn_blocking(move || text(&pin_dir, &snapshot, sync.as_ref()))
                    .await
                {
                    Ok(Ok(b)) => ("200 OK", b),
                    Ok(Err(e)) => (
                        "500 Internal Server Error",
                        format!("{}\n", crate::one_line(&e)),
                    ),
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
pub fn text(
    pin_dir: &Path,
    snapshot: &HealthSnapshot,
    sync: Option<&SyncStatus>,
) -> anyhow::Result<String> {
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
                maps.real_conns(slot)?,
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
        for (l, c, _, _) in &real_rows {
            let _ = writeln!(out, "lbadm_real_{name}_total{{{l}}} {}", pick(c));
        }
    }
    let _ = writeln!(
        out,
        "# HELP lbadm_real_weight Real server weight in the maps (0 = quiesced)."
    );
    let _ = writeln!(out, "# TYPE lbadm_real_weight gauge");
    for (l, _, w, _) in &real_rows {
        let _ = writeln!(out, "lbadm_real_weight{{{l}}} {w}");
    }
    for (name, help, f) in [
        (
            "active_connections",
            "established connections, as the least-connection schedulers count them",
            0usize,
        ),
        (
            "inactive_connections",
            "connections in any other state, as the schedulers count them",
            1,
        ),
        (
            "overloaded",
            "1 while at or over its upper threshold (-x, max_conns): no new connection",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP lbadm_real_{name} Real server: {help}.");
        let _ = writeln!(out, "# TYPE lbadm_real_{name} gauge");
        for (l, _, _, rc) in &real_rows {
            let (active, inactive) = rc.counts();
            // What the next new connection would find (the flag is written when one comes).
            let v = [active, inactive, u32::from(rc.overloaded_now())][f];
            let _ = writeln!(out, "lbadm_real_{name}{{{l}}} {v}");
        }
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
    table_text(&mut out, &crate::director::conntrack::table_status(&maps)?);
    if let Some(s) = sync {
        sync_text(&mut out, s);
    }
    Ok(out)
}

/// One metric family `lbadm_NAME`: its HELP and TYPE lines, then one sample per row
/// (labels, already in braces, or empty).
fn family(out: &mut String, name: &str, kind: &str, help: &str, rows: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP lbadm_{name} {help}");
    let _ = writeln!(out, "# TYPE lbadm_{name} {kind}");
    for (labels, v) in rows {
        let _ = writeln!(out, "lbadm_{name}{labels} {v}");
    }
}

fn table_text(out: &mut String, t: &crate::director::conntrack::TableStatus) {
    let per_table = |established: u64, unconfirmed: u64| {
        vec![
            ("{table=\"established\"}".to_string(), established as f64),
            ("{table=\"unconfirmed\"}".to_string(), unconfirmed as f64),
        ]
    };
    family(
        out,
        "conntrack_entries",
        "gauge",
        "Entries in a connection table (established: confirmed connections; unconfirmed: handshakes in progress).",
        &per_table(t.established, t.unconfirmed),
    );
    family(
        out,
        "conntrack_size",
        "gauge",
        "Entries a connection table holds before it evicts the least recently used.",
        &per_table(t.established_size.into(), t.unconfirmed_size.into()),
    );
    family(
        out,
        "flood_mode_cpus",
        "gauge",
        "CPUs in flood mode now (SYNs forwarded without being recorded).",
        &[(String::new(), t.flooding_cpus.into())],
    );
    family(
        out,
        "flood_mode_entered_total",
        "counter",
        "Times a CPU entered flood mode.",
        &[(String::new(), t.flood_trips as f64)],
    );
}

fn sync_text(out: &mut String, s: &SyncStatus) {
    let mut metric = |name: &str, kind: &str, help: &str, rows: &[(String, f64)]| {
        family(out, &format!("sync_{name}"), kind, help, rows)
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    metric(
        "ready",
        "gauge",
        "1 once this director learned the connections of a peer (or had none to learn from).",
        &one(u64::from(s.ready)),
    );
    metric(
        "sent_entries_total",
        "counter",
        "Connection entries sent to peers.",
        &one(s.sent_entries),
    );
    metric(
        "sent_bytes_total",
        "counter",
        "Bytes of sync datagrams sent.",
        &one(s.sent_bytes),
    );
    metric(
        "received_entries_total",
        "counter",
        "Connection entries received from peers.",
        &one(s.received_entries),
    );
    metric(
        "installed_total",
        "counter",
        "Peer entries installed in the connection table.",
        &one(s.installed),
    );
    let rejected: Vec<(String, f64)> = s
        .rejected
        .iter()
        .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), *v as f64))
        .collect();
    metric(
        "rejected_total",
        "counter",
        "Dropped datagrams and refused entries, by reason.",
        &rejected,
    );
    let seen: Vec<(String, f64)> = s
        .peers
        .iter()
        .filter_map(|p| Some((format!("{{peer=\"{}\"}}", p.address), p.last_contact?)))
        .collect();
    metric(
        "peer_last_contact_seconds",
        "gauge",
        "Unix time of a peer's last authenticated message.",
        &seen,
    );
    let lags: Vec<(String, f64)> = [("0.5", s.lag_p50_ms), ("0.99", s.lag_p99_ms)]
        .into_iter()
        .filter_map(|(q, v)| Some((format!("{{quantile=\"{q}\"}}"), v? / 1000.0)))
        .collect();
    metric(
        "lag_seconds",
        "gauge",
        "Time from an event at a peer to its entry here, over recent entries.",
        &lags,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_metrics_are_well_formed() {
        let s: SyncStatus = serde_json::from_value(serde_json::json!({
            "listen": "198.18.0.2:8849", "ready": true, "ready_reason": "full sync",
            "peers": [{"address": "198.18.0.3:8849", "last_contact": 1800000000.5,
                       "received": 3, "rejected": 1}],
            "sent_messages": 2, "sent_entries": 7, "sent_bytes": 400, "received_messages": 3,
            "received_entries": 9, "received_bytes": 500, "installed": 8, "unsendable": 0,
            "rejected": {"bad_tag": 1}, "lag_p50_ms": 0.5, "lag_p99_ms": 4.0
        }))
        .unwrap();
        let mut out = String::new();
        sync_text(&mut out, &s);
        for want in [
            "lbadm_sync_ready 1",
            "lbadm_sync_sent_entries_total 7",
            "lbadm_sync_rejected_total{reason=\"bad_tag\"} 1",
            "lbadm_sync_peer_last_contact_seconds{peer=\"198.18.0.3:8849\"} 1800000000.5",
            "lbadm_sync_lag_seconds{quantile=\"0.99\"} 0.004",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
        well_formed(&out);
    }

    /// Every sample line: a name, optional labels, one number.
    fn well_formed(out: &str) {
        for l in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap_or_else(|_| panic!("{l}"));
        }
    }

    #[test]
    fn table_metrics_are_well_formed() {
        let t = crate::director::conntrack::TableStatus {
            established: 50,
            established_size: 65536,
            unconfirmed: 16384,
            unconfirmed_size: 16384,
            flood_rate: 50000,
            flooding_cpus: 2,
            flood_for_secs: Some(3),
            flood_trips: 4,
            allow_lists: 0,
        };
        let mut out = String::new();
        table_text(&mut out, &t);
        for want in [
            "lbadm_conntrack_entries{table=\"established\"} 50",
            "lbadm_conntrack_size{table=\"unconfirmed\"} 16384",
            "lbadm_flood_mode_cpus 2",
            "lbadm_flood_mode_entered_total 4",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
        well_formed(&out);
    }
}
