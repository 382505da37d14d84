//! Which real a new connection goes to: the service, the client's persistence template if the
//! service has one, else one slot of the table userspace precomputed (rr, wrr, mh), or the
//! least loaded of the reals it lists (lc, wlc, sed, nq). In flood mode every scheduler but mh
//! indexes its table by the flow hash instead, so that a flow whose SYN was not recorded finds
//! the same real at its ACK. A real over its upper threshold gets no new connection.
use crate::{
    accounting,
    conntrack::{NS_PER_SEC, real_valid},
    maps::{CONFIG, CURSORS, PERSIST, REALS, SERVICES, TABLES, report},
};
use aya_ebpf::{
    helpers::{bpf_get_smp_processor_id, generated::bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use core::ffi::c_void;
use lb_common::{
    Conn, ConnKey, Persist, PersistKey, REAL_F_IN_USE, Real, Reason, SCHED_LC, SCHED_MH, SCHED_NQ,
    SCHED_SED, SCHED_SLOTS, SVC_F_THRESHOLDS, SYNC_F_TEMPLATE, Service, ServiceKey, SyncEvent,
    flow_hash, mh_hash,
};

/// The service for a destination: the exact port, else a persistent port-0 service of the VIP.
#[inline(always)]
pub fn lookup_service(addr: u32, port: u16, proto: u8) -> Option<Service> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    if let Some(s) = SERVICES.get_ptr(&key) {
        return Some(unsafe { *s });
    }
    key.port = 0;
    let s = unsafe { *SERVICES.get_ptr(&key)? };
    if s.persist_timeout > 0 { Some(s) } else { None }
}

/// The real for a new connection (or one whose real went away), and the event to count:
/// `Persisted` when a template decided, else `event` as the connection table reported it.
#[inline(always)]
pub fn pick(
    key: &ConnKey,
    svc: &Service,
    now: u64,
    event: Reason,
    flooding: bool,
) -> Result<(u32, Real, Reason), Reason> {
    if svc.persist_timeout == 0 {
        let (id, real) = schedule(key, svc, flooding)?;
        return Ok((id, real, event));
    }
    let pk = PersistKey {
        service_id: svc.id,
        saddr: key.saddr,
    };
    if let Some((id, real)) = persisted(&pk, svc, now) {
        return Ok((id, real, Reason::Persisted));
    }
    let (id, real) = schedule(key, svc, flooding)?;
    let t = Persist {
        real_id: id,
        real_gen: real.generation,
        last_seen_ns: now,
    };
    if PERSIST.insert(&pk, &t, 0).is_ok() {
        report(SyncEvent {
            key: ConnKey {
                saddr: key.saddr,
                ..ConnKey::default()
            },
            conn: Conn {
                real_id: id,
                real_gen: real.generation,
                service_id: svc.id,
                state: 0,
                flags: SYNC_F_TEMPLATE,
                _pad: [0; 2],
                last_seen_ns: now,
            },
        });
    }
    Ok((id, real, event))
}

/// The real a client's live persistence template names, refreshed. A template whose real was
/// removed or quiesced (weight 0) is ignored: a health check that quiesces a dead real must move
/// its persistent clients too (IPVS needs `expire_quiescent_template=1` for that).
#[inline(always)]
fn persisted(pk: &PersistKey, svc: &Service, now: u64) -> Option<(u32, Real)> {
    let t = PERSIST.get_ptr_mut(pk)?;
    let t = unsafe { &mut *t };
    if now.wrapping_sub(t.last_seen_ns) > svc.persist_timeout as u64 * NS_PER_SEC {
        return None;
    }
    let real = real_valid(t.real_id, t.real_gen, svc.id)?;
    if real.weight == 0 {
        return None;
    }
    t.last_seen_ns = now;
    Some((t.real_id, real))
}

/// Picks a real for a new connection from the service's live scheduling table.
#[inline(always)]
fn schedule(key: &ConnKey, svc: &Service, flooding: bool) -> Result<(u32, Real), Reason> {
    let table = TABLES
        .get(svc.id * 2 + (svc.table & 1))
        .ok_or(Reason::NoRealUnreach)?;
    let len = table.len;
    if len == 0 || len as usize > SCHED_SLOTS {
        return Err(Reason::NoRealUnreach);
    }
    if svc.sched >= SCHED_LC && !flooding {
        return least(svc, len);
    }
    let slot = if svc.sched == SCHED_MH {
        mh_hash(key.saddr) % len
    } else if flooding {
        flow_hash(key) % len
    } else {
        // Per-CPU cursors need no lock; each CPU walks the table in order from its own
        // starting point, so every CPU's own sequence is exactly the table's.
        let cursor = CURSORS.get_ptr_mut(svc.id).ok_or(Reason::NoRealUnreach)?;
        let c = unsafe { *cursor } % len;
        unsafe { *cursor = if c + 1 >= len { 0 } else { c + 1 } };
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let cpus = match CONFIG.get(0) {
            Some(cfg) if cfg.nr_cpus > 0 => cfg.nr_cpus,
            _ => 1,
        };
        (c + (cpu % cpus) * len / cpus) % len
    };
    let real_id = table.slots[lb_ebpf::opaque(slot) as usize & (SCHED_SLOTS - 1)];
    let real = REALS.get(real_id).ok_or(Reason::NoRealUnreach)?;
    if real.flags & REAL_F_IN_USE == 0 || real.service_id != svc.id {
        return Err(Reason::NoRealUnreach);
    }
    if svc.flags & SVC_F_THRESHOLDS != 0 && matches!(accounting::load(real_id), Some((_, _, true)))
    {
        return next_available(svc, slot, len);
    }
    Ok((real_id, *real))
}

/// The real of the first slot after `slot` that is not overloaded (IPVS's rr and mh step past
/// an overloaded real the same way).
#[inline(always)]
fn next_available(svc: &Service, slot: u32, len: u32) -> Result<(u32, Real), Reason> {
    walk(svc, slot + 1, len, len - 1, next_step as *mut c_void)
}

/// IPVS's least-connection schedulers over the reals the table lists (newest first, as IPVS
/// walks them; the first of equals wins, as in IPVS):
/// - `lc`: fewest `active * 256 + inactive` (`ip_vs_dest_conn_overhead`);
/// - `wlc`: the same divided by the weight;
/// - `sed`: fewest `(active + 1) / weight` (shortest expected delay);
/// - `nq`: a real with no active connection at once, else as `sed`.
///
/// Ratios are compared by cross-multiplying, as IPVS does, so no division is needed. The walk
/// is a `bpf_loop` (Linux 5.17+), whose body the verifier checks once: an unrolled loop over up
/// to [`SCHED_SLOTS`] reals would exceed its budget.
#[inline(always)]
fn least(svc: &Service, len: u32) -> Result<(u32, Real), Reason> {
    walk(svc, 0, len, len, least_step as *mut c_void)
}

/// The state of a walk over a scheduling table. It lives in a per-CPU map, not on the stack:
/// verifiers before Linux 6.7 check a `bpf_loop` callback as if it ran once, from the state the
/// caller left, and would take a field the caller set to a constant (`found = 0`) for that
/// constant in every iteration, removing the branches that depend on earlier ones. A value read
/// from a map is unknown to the verifier, as it must be.
#[repr(C)]
pub struct Walk {
    table_idx: u32,
    svc_id: u32,
    sched: u8,
    found: u8,
    start: u32,
    len: u32,
    best_id: u32,
    best_weight: u64,
    best_overhead: u64,
}

#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// Runs `step` over `n` slots of the service's live table, from slot `start`.
#[inline(always)]
fn walk(
    svc: &Service,
    start: u32,
    len: u32,
    n: u32,
    step: *mut c_void,
) -> Result<(u32, Real), Reason> {
    let w = WALK.get_ptr_mut(0).ok_or(Reason::NoRealUnreach)?;
    unsafe {
        *w = Walk {
            table_idx: svc.id * 2 + (svc.table & 1),
            svc_id: svc.id,
            sched: svc.sched,
            found: 0,
            start,
            len,
            best_id: 0,
            best_weight: 0,
            best_overhead: 0,
        };
        bpf_loop(n, step, core::ptr::null_mut(), 0);
    }
    let w = unsafe { &*w };
    if w.found == 0 {
        return Err(Reason::NoRealUnreach);
    }
    let real = REALS.get(w.best_id).ok_or(Reason::NoRealUnreach)?;
    Ok((w.best_id, *real))
}

/// The real in slot `i` of the walked table, if it can take a connection at all.
#[inline(always)]
fn candidate(walk: &Walk, i: u32) -> Option<(u32, Real)> {
    let table = TABLES.get(walk.table_idx)?;
    let id = table.slots[lb_ebpf::opaque(i) as usize & (SCHED_SLOTS - 1)];
    let real = REALS.get(id)?;
    if real.flags & REAL_F_IN_USE == 0 || real.service_id != walk.svc_id || real.weight == 0 {
        return None;
    }
    Some((id, *real))
}

/// One step of [`next_available`]: stops at the first real not overloaded.
extern "C" fn next_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let walk = unsafe { &mut *walk };
    if walk.len == 0 {
        return 1;
    }
    let slot = (walk.start + i as u32) % walk.len;
    let Some((id, _)) = candidate(walk, slot) else {
        return 0;
    };
    if let Some((_, _, false)) = accounting::load(id) {
        walk.found = 1;
        walk.best_id = id;
        return 1;
    }
    0
}

/// One step of [`least`].
extern "C" fn least_step(i: u64, _ctx: *mut c_void) -> i64 {
    let Some(walk) = WALK.get_ptr_mut(0) else {
        return 1;
    };
    let walk = unsafe { &mut *walk };
    let Some((id, real)) = candidate(walk, i as u32) else {
        return 0;
    };
    let Some((active, inactive, over)) = accounting::load(id) else {
        return 0;
    };
    if over {
        return 0;
    }
    let (active, inactive, weight) = (active as u64, inactive as u64, real.weight as u64);
    if walk.sched == SCHED_NQ && active == 0 {
        walk.found = 1;
        walk.best_id = id;
        return 1;
    }
    let overhead = if walk.sched == SCHED_SED || walk.sched == SCHED_NQ {
        active + 1
    } else {
        (active << 8) + inactive
    };
    let better = walk.found == 0
        || if walk.sched == SCHED_LC {
            overhead < walk.best_overhead
        } else {
            overhead * walk.best_weight < walk.best_overhead * weight
        };
    if better {
        walk.found = 1;
        walk.best_id = id;
        walk.best_weight = weight;
        walk.best_overhead = overhead;
    }
    0
}
