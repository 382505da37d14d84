//! Which real a new connection goes to: the service, the client's persistence template if the
//! service has one, else one slot of the table userspace precomputed (rr, wrr, mh). In flood
//! mode rr and wrr index their table by the flow hash instead of walking it.
use crate::{
    conntrack::{NS_PER_SEC, real_valid},
    maps::{CONFIG, CURSORS, PERSIST, REALS, SERVICES, TABLES, report},
};
use aya_ebpf::helpers::bpf_get_smp_processor_id;
use lb_common::{
    Conn, ConnKey, Persist, PersistKey, REAL_F_IN_USE, Real, Reason, SCHED_MH, SCHED_SLOTS,
    SYNC_F_TEMPLATE, Service, ServiceKey, SyncEvent, flow_hash, mh_hash,
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
    Ok((real_id, *real))
}
