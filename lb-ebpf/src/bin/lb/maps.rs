//! The director's maps. Types and names come from `lb-common`, where userspace finds them too;
//! every map is pinned, so the state outlives the program and the process that loaded it.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use lb_common::{
    AllowKey, CONFIG_F_SYNC, Config, Conn, ConnKey, Counters, DEFAULT_CONNS, FloodState, Limits,
    MAX_ALLOW, MAX_PEERS, MAX_PERSIST, MAX_PROBES, MAX_REALS, MAX_SERVICES, Meta, NextHop, Persist,
    PersistKey, Probe, ProbeKey, REASON_SLOTS, Real, RealConns, Reason, SYNC_RING_BYTES,
    SchedTable, Service, ServiceKey, SyncEvent, VIP_FILTER_WORDS, vip_filter_bit,
};

#[map(name = "LB_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REALS")]
pub static REALS: Array<Real> = Array::pinned(MAX_REALS, 0);

#[map(name = "LB_TABLES")]
pub static TABLES: Array<SchedTable> = Array::pinned(MAX_SERVICES * 2, 0);

#[map(name = "LB_CURSORS")]
pub static CURSORS: PerCpuArray<u32> = PerCpuArray::pinned(MAX_SERVICES, 0);

/// Established (confirmed) connections: only a completed handshake, or a flow that proved
/// itself, gets in, so no flood of half-open flows can evict them.
#[map(name = "LB_CONNS")]
pub static CONNS: LruHashMap<ConnKey, Conn> = LruHashMap::pinned(DEFAULT_CONNS, 0);

/// Connections not confirmed yet (a SYN seen, or a flow picked up mid-stream).
#[map(name = "LB_CONNS_NEW")]
pub static CONNS_NEW: LruHashMap<ConnKey, Conn> =
    LruHashMap::pinned(lb_common::unconfirmed_size(DEFAULT_CONNS), 0);

#[map(name = "LB_LIMITS")]
pub static LIMITS: Array<Limits> = Array::pinned(1, 0);

#[map(name = "LB_FLOOD")]
pub static FLOOD: PerCpuArray<FloodState> = PerCpuArray::pinned(1, 0);

/// Per-VIP source allow-lists (see `AllowKey`).
#[map(name = "LB_ALLOW")]
pub static ALLOW: LpmTrie<AllowKey, u32> = LpmTrie::pinned(MAX_ALLOW, 0);

#[map(name = "LB_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REAL_STATS")]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_REALS, 0);

/// Connections per real and its thresholds: the least-connection schedulers read it.
#[map(name = "LB_REAL_CONNS")]
pub static REAL_CONNS: Array<RealConns> = Array::pinned(MAX_REALS, 0);

#[map(name = "LB_REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_SLOTS, 0);

#[map(name = "LB_CONFIG")]
pub static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "LB_VIP_FILTER")]
pub static VIP_FILTER: Array<u64> = Array::pinned(VIP_FILTER_WORDS, 0);

#[map(name = "LB_PERSIST")]
pub static PERSIST: LruHashMap<PersistKey, Persist> = LruHashMap::pinned(MAX_PERSIST, 0);

#[map(name = "LB_NEXTHOPS")]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::pinned(MAX_REALS, 0);

#[map(name = "LB_PROBES")]
pub static PROBES: HashMap<ProbeKey, Probe> = HashMap::pinned(MAX_PROBES, 0);

/// Peer directors (outer source address, wire order) whose IPIP this host decapsulates.
#[map(name = "LB_PEERS")]
pub static PEERS: HashMap<u32, u8> = HashMap::pinned(MAX_PEERS, 0);

/// The layout record (userspace only: upgrades read it; the programs never do).
#[map(name = "LB_META")]
pub static META: Array<Meta> = Array::pinned(1, 0);

/// Connection events for the sync daemon.
#[map(name = "LB_SYNC")]
pub static SYNC: RingBuf = RingBuf::pinned(SYNC_RING_BYTES, 0);

/// Queues a sync event when a daemon reads them; counts the ones the ring had no room for.
#[inline(always)]
pub fn report(ev: SyncEvent) {
    match CONFIG.get(0) {
        Some(c) if c.flags & CONFIG_F_SYNC != 0 => {}
        _ => return,
    }
    if SYNC.output::<SyncEvent>(&ev, 0).is_err() {
        bump(Reason::SyncLost);
    }
}

/// The VIP pre-filter: false means no service has this destination (a set bit may be a
/// collision, so a hit still needs the service lookup).
#[inline(always)]
pub fn maybe_vip(addr: u32) -> bool {
    let bit = vip_filter_bit(addr);
    matches!(VIP_FILTER.get(bit >> 6), Some(w) if *w & (1u64 << (bit & 63)) != 0)
}

/// The tunnel source (0 = not configured).
#[inline(always)]
pub fn tunnel_src() -> u32 {
    CONFIG.get(0).map(|c| c.tunnel_src).unwrap_or(0)
}

/// Counts one more packet that left for `reason`.
#[inline(always)]
pub fn bump(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

/// Per-service or per-real counters of a forwarded packet.
#[inline(always)]
pub fn count(map: &PerCpuArray<Counters>, idx: u32, bytes: u16, new_conn: bool) {
    if let Some(c) = map.get_ptr_mut(idx) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
            if new_conn {
                (*c).conns += 1;
            }
        }
    }
}
