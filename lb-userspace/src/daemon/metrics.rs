//! The Prometheus endpoint (`metrics = "ADDR:PORT"`): counters from the maps, health from the
//! daemon, on `GET /metrics`. Served by axum; the exposition (OpenMetrics text) is written by
//! prometheus-client from what one scrape reads, so every value is as fresh as the scrape.

use super::{
    healthcheck::Health,
    sync::{ConnSync, SyncStatus},
};
use crate::director::{Maps, ServiceId, conntrack::TableStatus};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, MetricEncoder},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

/// What the metrics endpoint knows of the daemon, kept current by it.
pub type HealthSnapshot = Arc<Mutex<DaemonView>>;

#[derive(Debug, Clone, Default)]
pub struct DaemonView {
    /// Each configured real's health, and how long its last successful check took (seconds).
    pub reals: Vec<(ServiceId, Ipv4Addr, Health, Option<f64>)>,
    /// Unix time of the last (re)load of the configuration file, and whether it was applied.
    pub last_reload: Option<(f64, bool)>,
    /// (Re)loads applied and refused since start (the start's load counts).
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// OpenMetrics' content type, which Prometheus negotiates for.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Endpoint {
    pin_dir: PathBuf,
    snapshot: HealthSnapshot,
    sync: Option<Arc<ConnSync>>,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    pin_dir: PathBuf,
    snapshot: HealthSnapshot,
    sync: Option<Arc<ConnSync>>,
) {
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: try /metrics\n") })
        .with_state(Arc::new(Endpoint {
            pin_dir,
            snapshot,
            sync,
        }));
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!("metrics endpoint stopped: {e}");
    }
}

async fn scrape(State(e): State<Arc<Endpoint>>) -> Response {
    let sync = e.sync.as_ref().map(|s| s.status());
    let (pin_dir, snapshot) = (e.pin_dir.clone(), e.snapshot.clone());
    // Reading the maps blocks: off the runtime's workers.
    match tokio::task::spawn_blocking(move || text(&pin_dir, &snapshot, sync.as_ref())).await {
        Ok(Ok(body)) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Ok(Err(err)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{}\n", crate::one_line(&err)),
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err}\n")).into_response(),
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Clone, Copy)]
enum Value {
    Counter(u64),
    Gauge(i64),
    /// A gauge that is not a whole number (seconds).
    Real(f64),
}

/// One metric family (its name without `lbadm_`, and without `_total` for a counter: the
/// encoder adds both) and its samples.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Labels, Value)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn one(name: &'static str, help: &'static str, v: Value) -> Family {
        Family {
            name,
            help,
            samples: vec![(Vec::new(), v)],
        }
    }

    fn sample(mut self, labels: Labels, v: Value) -> Family {
        self.samples.push((labels, v));
        self
    }

    fn kind(&self) -> MetricType {
        match self.samples.first().map(|s| s.1) {
            Some(Value::Counter(_)) => MetricType::Counter,
            _ => MetricType::Gauge,
        }
    }
}

/// What one scrape read, handed to prometheus-client to encode.
#[derive(Debug)]
struct Scrape(Vec<Family>);

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        fn put(v: Value, sample: MetricEncoder) -> Result<(), std::fmt::Error> {
            match v {
                Value::Counter(n) => ConstCounter::new(n).encode(sample),
                Value::Gauge(n) => ConstGauge::new(n).encode(sample),
                Value::Real(x) => ConstGauge::new(x).encode(sample),
            }
        }
        for f in &self.0 {
            let mut family = encoder.encode_descriptor(f.name, f.help, None, f.kind())?;
            match f.samples.as_slice() {
                // A single value without labels is written bare (`name 1`, not `name{} 1`).
                [(labels, v)] if labels.is_empty() => put(*v, family)?,
                samples => {
                    for (labels, v) in samples {
                        put(*v, family.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn exposition(families: Vec<Family>) -> anyhow::Result<String> {
    let mut registry = Registry::with_prefix("lbadm");
    registry.register_collector(Box::new(Scrape(families)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

fn service_labels(id: &ServiceId) -> Labels {
    vec![
        ("protocol", id.proto.name().to_lowercase()),
        ("vip", id.addr.to_string()),
        ("port", id.port.to_string()),
    ]
}

/// The exposition: counters and connection counts from the maps, health from the daemon, the
/// connection tables, and sync when it runs.
pub fn text(
    pin_dir: &Path,
    snapshot: &HealthSnapshot,
    sync: Option<&SyncStatus>,
) -> anyhow::Result<String> {
    let maps = Maps::open(pin_dir)?;
    let mut fams = service_families(&maps)?;
    let view = snapshot.lock().map(|s| s.clone()).unwrap_or_default();
    fams.extend(daemon_families(&view));
    let mut packets = Family::new(
        "packets",
        "Packets that left the director program, by why (pass_*: to the stack; drop_*: dropped; tx_/redirect_forwarded: encapsulated and sent; others count events).",
    );
    for (r, n) in maps.reasons()? {
        packets = packets.sample(vec![("reason", r.name().to_string())], Value::Counter(n));
    }
    fams.push(packets);
    fams.extend(table_families(&crate::director::conntrack::table_status(
        &maps,
    )?));
    if let Some(s) = sync {
        fams.extend(sync_families(s));
    }
    exposition(fams)
}

/// Per service and per real: traffic counters, weights, connection counts, overload.
fn service_families(maps: &Maps) -> anyhow::Result<Vec<Family>> {
    let mut svc: Vec<Family> = vec![
        Family::new(
            "service_connections",
            "Virtual service: new connections scheduled.",
        ),
        Family::new(
            "service_packets",
            "Virtual service: inbound packets forwarded.",
        ),
        Family::new("service_bytes", "Virtual service: inbound bytes forwarded."),
    ];
    let mut real: Vec<Family> = vec![
        Family::new(
            "real_connections",
            "Real server: new connections scheduled.",
        ),
        Family::new("real_packets", "Real server: inbound packets forwarded."),
        Family::new("real_bytes", "Real server: inbound bytes forwarded."),
        Family::new(
            "real_weight",
            "Real server weight in the maps (0 = quiesced).",
        ),
        Family::new(
            "real_active_connections",
            "Real server: established connections, as the least-connection schedulers count them.",
        ),
        Family::new(
            "real_inactive_connections",
            "Real server: connections in any other state, as the schedulers count them.",
        ),
        Family::new(
            "real_overloaded",
            "Real server: 1 while at or over its upper threshold (-x, max_conns): no new connection.",
        ),
    ];
    for s in maps.read()? {
        let labels = service_labels(&s.spec.id);
        let c = maps.service_stats(s.slot)?;
        for (f, v) in svc.iter_mut().zip([c.conns, c.packets, c.bytes]) {
            f.samples.push((labels.clone(), Value::Counter(v)));
        }
        for (r, &slot) in s.spec.reals.iter().zip(&s.real_slots) {
            let mut l = labels.clone();
            l.push(("real", r.addr.to_string()));
            let c = maps.real_stats(slot)?;
            let rc = maps.real_conns(slot)?;
            let (active, inactive) = rc.counts();
            // What the next new connection would find (the flag is written when one comes).
            let values = [
                Value::Counter(c.conns),
                Value::Counter(c.packets),
                Value::Counter(c.bytes),
                Value::Gauge(r.weight.into()),
                Value::Gauge(active.into()),
                Value::Gauge(inactive.into()),
                Value::Gauge(rc.overloaded_now().into()),
            ];
            for (f, v) in real.iter_mut().zip(values) {
                f.samples.push((l.clone(), v));
            }
        }
    }
    svc.extend(real);
    Ok(svc)
}

/// Health, check latency and configuration reloads, as the daemon last saw them.
fn daemon_families(view: &DaemonView) -> Vec<Family> {
    let mut up = Family::new(
        "real_up",
        "Health of a configured real server (1 = UP, 0 = DOWN).",
    );
    let mut latency = Family::new(
        "check_duration_seconds",
        "How long a real's last successful health check took.",
    );
    for (id, addr, h, secs) in &view.reals {
        let mut l = service_labels(id);
        l.push(("real", addr.to_string()));
        if let Some(secs) = secs {
            latency = latency.sample(l.clone(), Value::Real(*secs));
        }
        up = up.sample(l, Value::Gauge(i64::from(*h == Health::Up)));
    }
    let mut fams = vec![up, latency];
    if let Some((at, ok)) = view.last_reload {
        fams.push(Family::one(
            "config_last_reload_timestamp_seconds",
            "Unix time the configuration file was last loaded (at start or on SIGHUP).",
            Value::Real(at),
        ));
        fams.push(Family::one(
            "config_last_reload_success",
            "1 if the last load of the configuration file was applied, 0 if it was refused (the running configuration kept).",
            Value::Gauge(ok.into()),
        ));
    }
    fams.push(
        Family::new(
            "config_reloads",
            "Loads of the configuration file (at start and on SIGHUP), by result.",
        )
        .sample(
            vec![("result", "applied".into())],
            Value::Counter(view.reloads_ok),
        )
        .sample(
            vec![("result", "refused".into())],
            Value::Counter(view.reloads_failed),
        ),
    );
    fams
}

fn table_families(t: &TableStatus) -> Vec<Family> {
    let per_table = |f: Family, established: u64, unconfirmed: u64| {
        f.sample(
            vec![("table", "established".into())],
            Value::Gauge(established as i64),
        )
        .sample(
            vec![("table", "unconfirmed".into())],
            Value::Gauge(unconfirmed as i64),
        )
    };
    vec![
        per_table(
            Family::new(
                "conntrack_entries",
                "Entries in a connection table (established: confirmed connections; unconfirmed: handshakes in progress).",
            ),
            t.established,
            t.unconfirmed,
        ),
        per_table(
            Family::new(
                "conntrack_size",
                "Entries a connection table holds before it evicts the least recently used.",
            ),
            t.established_size.into(),
            t.unconfirmed_size.into(),
        ),
        Family::one(
            "flood_mode_cpus",
            "CPUs in flood mode now (SYNs forwarded without being recorded).",
            Value::Gauge(t.flooding_cpus.into()),
        ),
        Family::one(
            "flood_mode_entered",
            "Times a CPU entered flood mode.",
            Value::Counter(t.flood_trips),
        ),
    ]
}

fn sync_families(s: &SyncStatus) -> Vec<Family> {
    let counter = |name, help, v| Family::one(name, help, Value::Counter(v));
    let mut rejected = Family::new(
        "sync_rejected",
        "Dropped datagrams and refused entries, by reason.",
    );
    for (k, v) in &s.rejected {
        rejected = rejected.sample(vec![("reason", k.clone())], Value::Counter(*v));
    }
    let mut seen = Family::new(
        "sync_peer_last_contact_seconds",
        "Unix time of a peer's last authenticated message.",
    );
    for p in &s.peers {
        if let Some(t) = p.last_contact {
            seen = seen.sample(vec![("peer", p.address.to_string())], Value::Real(t));
        }
    }
    let mut lag = Family::new(
        "sync_lag_seconds",
        "Time from an event at a peer to its entry here, over recent entries.",
    );
    for (q, v) in [("0.5", s.lag_p50_ms), ("0.99", s.lag_p99_ms)] {
        if let Some(ms) = v {
            lag = lag.sample(vec![("quantile", q.to_string())], Value::Real(ms / 1000.0));
        }
    }
    vec![
        Family::one(
            "sync_ready",
            "1 once this director learned the connections of a peer (or had none to learn from).",
            Value::Gauge(s.ready.into()),
        ),
        counter(
            "sync_sent_entries",
            "Connection entries sent to peers.",
            s.sent_entries,
        ),
        counter(
            "sync_sent_bytes",
            "Bytes of sync datagrams sent.",
            s.sent_bytes,
        ),
        counter(
            "sync_received_entries",
            "Connection entries received from peers.",
            s.received_entries,
        ),
        counter(
            "sync_installed",
            "Peer entries installed in the connection table.",
            s.installed,
        ),
        rejected,
        seen,
        lag,
    ]
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
        let out = exposition(sync_families(&s)).unwrap();
        for want in [
            "lbadm_sync_ready 1",
            "lbadm_sync_sent_entries_total 7",
            "lbadm_sync_rejected_total{reason=\"bad_tag\"} 1",
            "lbadm_sync_peer_last_contact_seconds{peer=\"198.18.0.3:8849\"} 1800000000.5",
            "lbadm_sync_lag_seconds{quantile=\"0.99\"} 0.004",
            "# TYPE lbadm_sync_installed counter",
            "# EOF",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
    }

    #[test]
    fn table_metrics_are_well_formed() {
        let t = TableStatus {
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
        let out = exposition(table_families(&t)).unwrap();
        for want in [
            "lbadm_conntrack_entries{table=\"established\"} 50",
            "lbadm_conntrack_size{table=\"unconfirmed\"} 16384",
            "lbadm_flood_mode_cpus 2",
            "lbadm_flood_mode_entered_total 4",
        ] {
            assert!(out.lines().any(|l| l == want), "{want} missing:\n{out}");
        }
    }
}
