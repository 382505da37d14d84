//! Reading the data path's connection table and persistence templates the way IPVS reports
//! them: ActiveConn/InActConn per real (only ESTABLISHED is active) and one [`Entry`] per
//! connection or template (what `ipvsadm -L -c` lists).

use super::{
    maps::{Maps, MapsError},
    table::{InstalledService, Protocol},
};
use lb_common::{
    CONN_CLOSE, CONN_ESTABLISHED, CONN_FIN_WAIT, CONN_SYN_RECV, Conn, ConnKey, IPPROTO_UDP,
    REAL_F_IN_USE, conn_timeout_secs,
};
use std::{collections::HashMap, net::Ipv4Addr};

const NS: u64 = 1_000_000_000;

/// Now on the data path's clock (`bpf_ktime_get_coarse_ns` is CLOCK_MONOTONIC_COARSE).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * NS + ts.tv_nsec as u64
}

pub fn state_name(state: u8) -> &'static str {
    match state {
        CONN_SYN_RECV => "SYN_RECV",
        CONN_ESTABLISHED => "ESTABLISHED",
        CONN_FIN_WAIT => "FIN_WAIT",
        CONN_CLOSE => "CLOSE",
        _ => "UDP",
    }
}

/// Seconds left before the entry expires, or None if it already has (or names a real that is
/// gone: the data path would re-schedule it).
fn remaining(maps: &Maps, c: &Conn, now: u64) -> Option<u64> {
    let real = maps.reals.get(&c.real_id, 0).ok()?;
    if real.flags & REAL_F_IN_USE == 0 || real.generation != c.real_gen {
        return None;
    }
    let age = now.saturating_sub(c.last_seen_ns) / NS;
    conn_timeout_secs(c.state)
        .checked_sub(age)
        .filter(|&r| r > 0)
}

fn live_entries(maps: &Maps) -> Result<Vec<(ConnKey, Conn, u64)>, MapsError> {
    let now = now_ns();
    let mut out = Vec::new();
    for item in maps.conns.iter() {
        let (k, c) = match item {
            Ok(kv) => kv,
            // An LRU entry evicted while we walk the table: skip it.
            Err(_) => continue,
        };
        if let Some(left) = remaining(maps, &c, now) {
            out.push((k, c, left));
        }
    }
    Ok(out)
}

/// (active, inactive) connections per real slot.
pub fn counts_by_real(maps: &Maps) -> Result<HashMap<u32, (u32, u32)>, MapsError> {
    let mut m: HashMap<u32, (u32, u32)> = HashMap::new();
    for (_, c, _) in live_entries(maps)? {
        let e = m.entry(c.real_id).or_default();
        if c.state == CONN_ESTABLISHED {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    Ok(m)
}

fn ip(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// A connection entry or a persistence template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub proto: Protocol,
    /// Seconds until the entry expires.
    pub expire_secs: u64,
    /// IPVS's state name: `NONE` (persistence template), `SYN_RECV`, `ESTABLISHED`, `FIN_WAIT`,
    /// `CLOSE`; every UDP entry is `UDP`.
    pub state: &'static str,
    pub client: (Ipv4Addr, u16),
    pub vip: (Ipv4Addr, u16),
    pub real: (Ipv4Addr, u16),
}

/// Live connections, then persistence templates (state NONE, client port 0), sorted by VIP,
/// client and state.
pub fn entries(maps: &Maps, installed: &[InstalledService]) -> Result<Vec<Entry>, MapsError> {
    let mut rows = Vec::new();
    for (k, c, left) in live_entries(maps)? {
        let Ok(real) = maps.reals.get(&c.real_id, 0) else {
            continue;
        };
        let dport = u16::from_be(k.dport);
        rows.push(Entry {
            proto: if k.proto == IPPROTO_UDP {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            expire_secs: left,
            state: state_name(c.state),
            client: (ip(k.saddr), u16::from_be(k.sport)),
            vip: (ip(k.daddr), dport),
            real: (ip(real.addr), dport),
        });
    }
    let by_slot: HashMap<u32, &InstalledService> = installed.iter().map(|s| (s.slot, s)).collect();
    let now = now_ns();
    for item in maps.persist.iter() {
        let Ok((k, t)) = item else { continue };
        let Some(svc) = by_slot.get(&k.service_id) else {
            continue;
        };
        let age = now.saturating_sub(t.last_seen_ns) / NS;
        let Some(left) = (svc.spec.persistence as u64)
            .checked_sub(age)
            .filter(|&l| l > 0)
        else {
            continue;
        };
        let Ok(real) = maps.reals.get(&t.real_id, 0) else {
            continue;
        };
        if real.flags & REAL_F_IN_USE == 0 || real.generation != t.real_gen {
            continue;
        }
        let id = svc.spec.id;
        rows.push(Entry {
            proto: id.proto,
            expire_secs: left,
            state: "NONE",
            client: (ip(k.saddr), 0),
            vip: (id.addr, id.port),
            real: (ip(real.addr), id.port),
        });
    }
    rows.sort_by_key(|r| (r.vip, r.client, r.state));
    Ok(rows)
}
