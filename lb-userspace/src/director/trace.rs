//! `lbadm trace`: which real a client's flow goes to, and why — its connection entry, its
//! persistence template, or, for a new flow, the scheduler's pick from the live tables (read,
//! never changed). Operators ask "which ProxySQL holds my application's connection?", and
//! tcpdump cannot see what XDP does.

use super::{
    conntrack::{NS, now_ns, remaining, state_name},
    maps::{Maps, MapsError},
    scheduler::{Load, Scheduler, least},
    table::{Protocol, addr},
};
use lb_common::{
    ALLOW_DENY, AllowKey, Conn, ConnKey, PersistKey, REAL_F_IN_USE, flow_hash, ip_be, mh_hash,
    port_be,
};
use serde::Serialize;
use std::{fmt::Write as _, net::Ipv4Addr};

/// The flow asked about; without a client port, every connection of the client to the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub client: Ipv4Addr,
    pub client_port: Option<u16>,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub proto: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace {
    /// The virtual service the flow belongs to (`TCP 198.18.0.100:6033 wrr`), if any.
    pub service: Option<String>,
    /// Live connection entries of the flow (or of the client, without a port).
    pub connections: Vec<TracedConn>,
    /// The client's persistence template, when the service is persistent and it has one.
    pub template: Option<TracedTemplate>,
    /// False when the VIP's allow-list refuses the client: its new connections are dropped.
    pub allowed: bool,
    /// Where a new connection of this flow would go now.
    pub new_connection: Vec<Pick>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracedConn {
    pub client_port: u16,
    /// `established` (confirmed) or `unconfirmed` (handshake in progress).
    pub table: &'static str,
    pub state: &'static str,
    pub expires_secs: u64,
    pub real: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TracedTemplate {
    pub real: Ipv4Addr,
    pub expires_secs: u64,
}

/// One possible pick for a new connection: `when` says on which condition (`any CPU`,
/// `CPU 1`, `flood mode`, `template`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pick {
    pub when: String,
    pub real: Ipv4Addr,
}

/// The pick of a new connection from a scheduling table, as the data path makes it: mh by the
/// source hash; rr and wrr by each CPU's cursor (`cursors[cpu]`, the CPU's own starting
/// offset added), or by the flow hash in flood mode when the flow's port is known.
pub fn picks(
    sched: Scheduler,
    slots: &[u32],
    cursors: &[u32],
    key: &ConnKey,
    port_known: bool,
) -> Vec<(String, u32)> {
    picks_by_load(sched, slots, cursors, &[], key, port_known)
}

/// [`picks`], with the live counts of the reals for the least-connection schedulers (`loads`,
/// in table order).
pub fn picks_by_load(
    sched: Scheduler,
    slots: &[u32],
    cursors: &[u32],
    loads: &[Load],
    key: &ConnKey,
    port_known: bool,
) -> Vec<(String, u32)> {
    let len = slots.len() as u32;
    if len == 0 {
        return Vec::new();
    }
    if sched == Scheduler::Mh {
        return vec![("any CPU".into(), slots[(mh_hash(key.saddr) % len) as usize])];
    }
    if sched.counts_connections() {
        let mut out: Vec<(String, u32)> = least(sched, loads)
            .map(|id| ("any CPU, by the counts now".to_string(), id))
            .into_iter()
            .collect();
        if port_known {
            out.push(("flood mode".into(), slots[(flow_hash(key) % len) as usize]));
        }
        return out;
    }
    let cpus = cursors.len().max(1) as u32;
    let mut out: Vec<(String, u32)> = cursors
        .iter()
        .enumerate()
        .map(|(cpu, &c)| {
            let c = c % len;
            let slot = (c + (cpu as u32 % cpus) * len / cpus) % len;
            (format!("CPU {cpu}"), slots[slot as usize])
        })
        .collect();
    if port_known {
        out.push(("flood mode".into(), slots[(flow_hash(key) % len) as usize]));
    }
    out
}

pub fn trace(maps: &Maps, q: &Query) -> Result<Trace, MapsError> {
    let proto = q.proto.raw();
    let installed = maps.read()?;
    let svc = installed
        .iter()
        .find(|s| s.spec.id.addr == q.vip && s.spec.id.port == q.port && s.spec.id.proto == q.proto)
        .or_else(|| {
            installed.iter().find(|s| {
                s.spec.id.addr == q.vip
                    && s.spec.id.port == 0
                    && s.spec.id.proto == q.proto
                    && s.spec.persistence > 0
            })
        });
    let key = ConnKey {
        saddr: ip_be(q.client.octets()),
        daddr: ip_be(q.vip.octets()),
        sport: port_be(q.client_port.unwrap_or(0)),
        dport: port_be(q.port),
        proto,
        _pad: [0; 3],
    };
    let now = now_ns();
    let mut connections = Vec::new();
    let mut add = |k: &ConnKey, c: &Conn, table: &'static str| {
        // Live, on a real still in place: what the data path would forward it by.
        let Some(left) = remaining(maps, c, now) else {
            return;
        };
        if let Ok(r) = maps.reals.get(&c.real_id, 0) {
            connections.push(TracedConn {
                client_port: u16::from_be(k.sport),
                table,
                state: state_name(c.state),
                expires_secs: left,
                real: addr(r.addr),
            });
        }
    };
    for (map, table) in [
        (&maps.conns, "established"),
        (&maps.conns_new, "unconfirmed"),
    ] {
        if q.client_port.is_some() {
            if let Ok(c) = map.get(&key, 0) {
                add(&key, &c, table);
            }
        } else {
            for (k, c) in map.iter().flatten() {
                if (ConnKey { sport: 0, ..k }) == key {
                    add(&k, &c, table);
                }
            }
        }
    }
    connections.sort_by_key(|c| c.client_port);

    let allowed = {
        let k = aya::maps::lpm_trie::Key::new(
            64,
            AllowKey {
                vip: key.daddr,
                saddr: key.saddr,
            },
        );
        !matches!(maps.allow.get(&k, 0), Ok(ALLOW_DENY))
    };
    let Some(svc) = svc else {
        return Ok(Trace {
            service: None,
            connections,
            template: None,
            allowed,
            new_connection: Vec::new(),
        });
    };
    let mut template = None;
    if svc.spec.persistence > 0
        && let Ok(t) = maps.persist.get(
            &PersistKey {
                service_id: svc.slot,
                saddr: key.saddr,
            },
            0,
        )
    {
        let age = now.saturating_sub(t.last_seen_ns) / NS;
        let real = maps.reals.get(&t.real_id, 0).ok();
        if let (Some(left), Some(r)) = (
            (svc.spec.persistence as u64)
                .checked_sub(age)
                .filter(|&l| l > 0),
            real.filter(|r| {
                r.flags & REAL_F_IN_USE != 0 && r.generation == t.real_gen && r.weight > 0
            }),
        ) {
            template = Some(TracedTemplate {
                real: addr(r.addr),
                expires_secs: left,
            });
        }
    }
    let new_connection = match &template {
        Some(t) => vec![Pick {
            when: "template".into(),
            real: t.real,
        }],
        None => {
            let table = maps
                .tables
                .get(&(svc.slot * 2 + svc.table_copy), 0)
                .map_err(|source| MapsError::Map {
                    what: "reading LB_TABLES".into(),
                    source,
                })?;
            let slots = &table.slots[..(table.len as usize).min(table.slots.len())];
            let cursors: Vec<u32> = maps
                .cursors
                .get(&svc.slot, 0)
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default();
            let loads: Vec<Load> = slots
                .iter()
                .filter_map(|&id| {
                    let r = maps.reals.get(&id, 0).ok()?;
                    let c = maps.real_conns(id).ok()?;
                    let (active, inactive) = c.counts();
                    Some(Load {
                        id,
                        weight: r.weight,
                        active,
                        inactive,
                        overloaded: c.overloaded_now(),
                    })
                })
                .collect();
            picks_by_load(
                svc.spec.sched,
                slots,
                &cursors,
                &loads,
                &key,
                q.client_port.is_some(),
            )
            .into_iter()
            .filter_map(|(when, id)| {
                let r = maps.reals.get(&id, 0).ok()?;
                Some(Pick {
                    when,
                    real: addr(r.addr),
                })
            })
            .collect()
        }
    };
    Ok(Trace {
        service: Some(format!("{} {}", svc.spec.id, svc.spec.sched)),
        connections,
        template,
        allowed,
        new_connection,
    })
}

impl Trace {
    pub fn render(&self, q: &Query) -> String {
        let mut out = String::new();
        let port = q.client_port.map_or("*".into(), |p| p.to_string());
        let _ = writeln!(
            out,
            "flow {}:{port} -> {}:{} ({})",
            q.client,
            q.vip,
            q.port,
            q.proto.name().to_lowercase()
        );
        let Some(svc) = &self.service else {
            let _ = writeln!(
                out,
                "no virtual service: the director passes it to its own stack"
            );
            return out;
        };
        let _ = writeln!(out, "service: {svc}");
        if self.connections.is_empty() {
            let _ = writeln!(out, "connection: none in the tables");
        }
        for c in &self.connections {
            let _ = writeln!(
                out,
                "connection :{} -> real {} ({} {}, expires in {} s)",
                c.client_port, c.real, c.table, c.state, c.expires_secs
            );
        }
        if !self.allowed {
            let _ = writeln!(
                out,
                "new connection: DROPPED: the client is not on the VIP's allow-list"
            );
            return out;
        }
        if let Some(t) = &self.template {
            let _ = writeln!(
                out,
                "persistence template: real {} (expires in {} s)",
                t.real, t.expires_secs
            );
        }
        if self.new_connection.is_empty() {
            let _ = writeln!(
                out,
                "new connection: no real with weight > 0 (answered with port unreachable)"
            );
        }
        for p in &self.new_connection {
            let _ = writeln!(out, "new connection ({}): real {}", p.when, p.real);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(saddr: [u8; 4], sport: u16) -> ConnKey {
        ConnKey {
            saddr: ip_be(saddr),
            daddr: ip_be([198, 18, 0, 100]),
            sport: port_be(sport),
            dport: port_be(6033),
            proto: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn rr_picks_per_cpu_from_each_cpus_offset_and_by_flow_hash_in_flood_mode() {
        let slots = [10, 11, 12, 13];
        // Two CPUs: CPU 1 starts half a table further on.
        let p = picks(
            Scheduler::Rr,
            &slots,
            &[0, 0],
            &key([10, 0, 0, 1], 40000),
            true,
        );
        assert_eq!(p[0], ("CPU 0".into(), 10));
        assert_eq!(p[1], ("CPU 1".into(), 12));
        let k = key([10, 0, 0, 1], 40000);
        assert_eq!(
            p[2],
            ("flood mode".into(), slots[(flow_hash(&k) % 4) as usize])
        );
        let p = picks(Scheduler::Wrr, &slots, &[3, 1], &k, false);
        assert_eq!(p, vec![("CPU 0".into(), 13), ("CPU 1".into(), 13)]);
    }

    #[test]
    fn mh_picks_by_source_alone() {
        let slots: Vec<u32> = (0..1021).collect();
        let a = picks(Scheduler::Mh, &slots, &[5, 9], &key([10, 0, 0, 1], 1), true);
        let b = picks(
            Scheduler::Mh,
            &slots,
            &[0, 0],
            &key([10, 0, 0, 1], 2),
            false,
        );
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].1, mh_hash(ip_be([10, 0, 0, 1])) % 1021);
        assert!(picks(Scheduler::Rr, &[], &[0], &key([10, 0, 0, 1], 1), true).is_empty());
    }
}
