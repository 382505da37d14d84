//! The director's maps. Types and names come from `lb-common`, where userspace finds them too;
//! every map is pinned, so the state outlives the program and the process that loaded it.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Config, Conn, ConnKey, Counters, MAX_CONNS, MAX_PERSIST, MAX_PROBES, MAX_REALS, MAX_SERVICES,
    NextHop, Persist, PersistKey, Probe, ProbeKey, REASON_COUNT, Real, Reason, SchedTable, Service,
    ServiceKey, VIP_FILTER_WORDS, vip_filter_bit,
};

#[map(name = "LB_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REALS")]
pub static REALS: Array<Real> = Array::pinned(MAX_REALS, 0);

#[map(name = "LB_TABLES")]
pub static TABLES: Array<SchedTable> = Array::pinned(MAX_SERVICES * 2, 0);

#[map(name = "LB_CURSORS")]
pub static CURSORS: PerCpuArray<u32> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB_CONNS")]
pub static CONNS: LruHashMap<ConnKey, Conn> = LruHashMap::pinned(MAX_CONNS, 0);

#[map(name = "LB_SVC_STATS")]
pub static SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REAL_STATS")]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_REALS, 0);

#[map(name = "LB_REASONS")]
pub static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);

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
