//! Reading the data path's connection tables and persistence templates the way IPVS reports
//! them: ActiveConn/InActConn per real (only ESTABLISHED is active) and one [`Entry`] per
//! connection or template (what `ipvsadm -L -c` lists); and how full the tables are and whether
//! a flood is on ([`TableStatus`]).

use super::{
    maps::{Maps, MapsError},
    table::{InstalledService, Protocol},
};
use crate::sys::bpffs::raw;
use lb_common::{
    CONN_CLOSE, CONN_ESTABLISHED, CONN_FIN_WAIT, CONN_SYN_RECV, Conn, ConnKey, IPPROTO_UDP,
    REAL_F_IN_USE, Real, conn_timeout_secs,
};
use lb_common::{FloodState, MAP_CONNS, MAP_CONNS_NEW};
use serde::Serialize;
use std::{collections::HashMap, net::Ipv4Addr, os::fd::AsFd as _};

pub(super) const NS: u64 = 1_000_000_000;

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
pub(super) fn remaining(maps: &Maps, c: &Conn, now: u64) -> Option<u64> {
    left(&maps.reals.get(&c.real_id, 0).ok()?, c, now)
}

/// [`remaining`], given the real in the entry's slot.
fn left(real: &Real, c: &Conn, now: u64) -> Option<u64> {
    if real.flags & REAL_F_IN_USE == 0 || real.generation != c.real_gen {
        return None;
    }
    let age = now.saturating_sub(c.last_seen_ns) / NS;
    conn_timeout_secs(c.state)
        .checked_sub(age)
        .filter(|&r| r > 0)
}

/// The open map's file descriptor, for the batch reads aya does not offer.
fn fd<K: aya::Pod, V: aya::Pod>(
    map: &aya::maps::HashMap<aya::maps::MapData, K, V>,
) -> std::os::fd::BorrowedFd<'_> {
    aya::maps::IterableMap::map(map).fd().as_fd()
}

/// Live entries of both tables (an unconfirmed entry's `last_seen_ns` is its first packet, which
/// is what its timeout counts from), read in batches against one read of the reals: the
/// daemon's recount reads them every few seconds.
fn live_entries(maps: &Maps) -> Result<Vec<(ConnKey, Conn, u64)>, MapsError> {
    let now = now_ns();
    let reals = maps.all_reals()?;
    let mut out = Vec::new();
    for (name, table) in [(MAP_CONNS, &maps.conns), (MAP_CONNS_NEW, &maps.conns_new)] {
        raw::each_batch::<ConnKey, Conn>(fd(table), |keys, conns| {
            for (k, c) in keys.iter().zip(conns) {
                let real = reals.get(c.real_id as usize);
                if let Some(l) = real.and_then(|r| left(r, c, now)) {
                    out.push((*k, *c, l));
                }
            }
        })
        .map_err(|source| MapsError::Io {
            what: format!("reading {name}"),
            source,
        })?;
    }
    Ok(out)
}

/// (active, inactive) connections per real slot.
pub fn counts_by_real(maps: &Maps) -> Result<HashMap<u32, (u32, u32)>, MapsError> {
    counts_for_scheduling(maps, &HashMap::new())
}

/// [`counts_by_real`], except that an ESTABLISHED connection with no packet since its real's
/// `down_since` (data path clock, per real slot) counts as inactive. A real that went DOWN
/// because its server died leaves its established connections in the table until they time
/// out (900 s): their clients got the server's RST directly, so the director never sees them
/// end. Counted active, they would keep the least-connection schedulers from the real when it
/// is back. A connection that was only idle goes back to active with its next packet.
pub fn counts_for_scheduling(
    maps: &Maps,
    down_since: &HashMap<u32, u64>,
) -> Result<HashMap<u32, (u32, u32)>, MapsError> {
    let mut m: HashMap<u32, (u32, u32)> = HashMap::new();
    for (_, c, _) in live_entries(maps)? {
        let e = m.entry(c.real_id).or_default();
        let stale = down_since
            .get(&c.real_id)
            .is_some_and(|&t| c.last_seen_ns < t);
        if c.state == CONN_ESTABLISHED && !stale {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    Ok(m)
}

/// What a recount changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recount {
    /// Reals whose counts the data path had wrong.
    pub corrected: u32,
    /// Connections the data path counted that the tables no longer hold (evicted, or expired
    /// without a packet since), plus those it missed.
    pub drift: u64,
    /// Live connections found.
    pub connections: u64,
}

/// Sets every real's active/inactive counts to what the tables hold (as
/// [`counts_for_scheduling`] counts them): the data path counts what it sees, and cannot see an
/// LRU eviction or an entry expiring with no packet to find it dead. Connections made while the
/// tables are read may be counted once too few until the next recount.
pub fn recount(maps: &mut Maps, down_since: &HashMap<u32, u64>) -> Result<Recount, MapsError> {
    let truth = counts_for_scheduling(maps, down_since)?;
    // Under the configuration lock: a threshold written between the read and the write of a
    // real's entry would be undone.
    let _lock = maps.lock()?;
    let reals = maps.all_reals()?;
    let counted = maps.all_real_conns()?;
    let mut r = Recount::default();
    for (slot, (real, c)) in reals.iter().zip(&counted).enumerate() {
        let slot = slot as u32;
        let (active, inactive) = if real.flags & REAL_F_IN_USE != 0 {
            truth.get(&slot).copied().unwrap_or((0, 0))
        } else {
            (0, 0)
        };
        r.connections += (active + inactive) as u64;
        if (c.active, c.inactive) == (active as u64, inactive as u64) {
            continue;
        }
        let (a, i) = c.counts();
        r.corrected += 1;
        r.drift += a.abs_diff(active) as u64 + i.abs_diff(inactive) as u64;
        maps.set_real_counts(slot, active as u64, inactive as u64)?;
    }
    Ok(r)
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

/// How full the connection tables are, and the flood detectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableStatus {
    /// Entries in the table of established connections, and its size.
    pub established: u64,
    pub established_size: u32,
    /// Entries in the table of connections not confirmed yet, and its size.
    pub unconfirmed: u64,
    pub unconfirmed_size: u32,
    /// New flows per second per CPU that start flood mode (0: never).
    pub flood_rate: u32,
    /// CPUs in flood mode now.
    pub flooding_cpus: u32,
    /// Seconds since the earliest of the current floods began (None: no flood now).
    pub flood_for_secs: Option<u64>,
    /// Times a CPU entered flood mode since attach.
    pub flood_trips: u64,
    /// VIPs with a source allow-list.
    pub allow_lists: usize,
}

/// CPUs in flood mode now, and since when. A CPU leaves flood mode only when a new flow comes
/// in a calmer second, so one whose window has been over for a while, with no new flow since,
/// is not counted.
pub fn flooding(states: &[FloodState], now: u64) -> (u32, Option<u64>) {
    let on: Vec<&FloodState> = states
        .iter()
        .filter(|s| s.flooding != 0 && now.saturating_sub(s.window_ns) < 2 * NS)
        .collect();
    let since = on.iter().map(|s| s.since_ns).min();
    (on.len() as u32, since.map(|t| now.saturating_sub(t) / NS))
}

pub fn table_status(maps: &Maps) -> Result<TableStatus, MapsError> {
    let (established_size, unconfirmed_size) = maps.table_sizes()?;
    let count = |name: &'static str, table| {
        raw::count_entries::<ConnKey, Conn>(fd(table)).map_err(|source| MapsError::Io {
            what: format!("counting the entries of {name}"),
            source,
        })
    };
    let states = maps.flood_states()?;
    let (flooding_cpus, flood_for_secs) = flooding(&states, now_ns());
    Ok(TableStatus {
        established: count(MAP_CONNS, &maps.conns)?,
        established_size,
        unconfirmed: count(MAP_CONNS_NEW, &maps.conns_new)?,
        unconfirmed_size,
        flood_rate: maps.limits()?.flood_rate,
        flooding_cpus,
        flood_for_secs,
        flood_trips: states.iter().map(|s| s.trips).sum(),
        allow_lists: super::allow::read(maps)?.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpu_floods_until_a_calm_second_or_two_quiet_ones() {
        let s = |flooding, window_ns, since_ns| FloodState {
            window_ns,
            new_flows: 0,
            flooding,
            since_ns,
            trips: 1,
        };
        let now = 100 * NS;
        assert_eq!(flooding(&[], now), (0, None));
        assert_eq!(
            flooding(&[s(1, 99 * NS, 90 * NS), s(1, 99 * NS, 95 * NS)], now),
            (2, Some(10))
        );
        // Flooding, but no new flow for over two seconds: the flood is over.
        assert_eq!(flooding(&[s(1, 97 * NS, 90 * NS)], now), (0, None));
        assert_eq!(flooding(&[s(0, 99 * NS, 90 * NS)], now), (0, None));
    }
}
