//! Planning a change of the service table, without touching the kernel: from what the maps
//! hold ([`Snapshot`]) and what is wanted, the writes that get there ([`Plan`]), in the order
//! [`super::maps::Maps::publish`] must make them so the data path never sees a half-written
//! table:
//!
//! 1. the VIP pre-filter opens for new services' addresses;
//! 2. reals: a new one gets a slot and a fresh generation, an existing one its new weight;
//!    thresholds with them (a new real's connection counts start from zero);
//! 3. tables: a changed table goes into the *inactive* copy of its service;
//! 4. service entries, each pointing at its live copy (one atomic hash-map update per service:
//!    this is the A/B flip);
//! 5. removed services, then removed reals (retired: their connections re-schedule);
//! 6. the filter closes for addresses no service has any more.
//!
//! Slots freed by this change are not reused within it, so a connection entry of an old
//! occupant can never meet a new occupant under the same generation.

use super::{
    scheduler::{self, Candidate},
    table::{InstalledService, ServiceId, VirtualService},
};
use lb_common::{
    MAX_REALS, MAX_SERVICES, REAL_F_IN_USE, REAL_F_LOCAL, Real, SCHED_SLOTS, SVC_F_THRESHOLDS,
    SchedTable, Service, ServiceKey, VIP_FILTER_WORDS, ip_be, vip_filter_bit,
};
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("too many virtual services (the maximum is {MAX_SERVICES})")]
    TooManyServices,
    #[error("too many real servers (the maximum is {MAX_REALS} over all services)")]
    TooManyReals,
    #[error("service {0} has the real {1} twice")]
    DuplicateReal(ServiceId, Ipv4Addr),
    #[error("service {0} is listed twice")]
    DuplicateService(ServiceId),
    #[error("{1} cannot be a real server of {0}: {2}")]
    UnusableReal(ServiceId, Ipv4Addr, &'static str),
    #[error(
        "real {1} of {0}: the lower connection threshold ({2}) is above the upper one ({3}); a lower threshold needs an upper one at least as high"
    )]
    Thresholds(ServiceId, Ipv4Addr, u32, u32),
}

/// What the maps hold, as far as planning needs it.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub services: Vec<InstalledService>,
    /// The reals array by slot (slots not listed are zeroed: generation 0, not in use).
    pub reals: HashMap<u32, Real>,
    /// The live copy of each installed service's table, by service slot.
    pub live_tables: HashMap<u32, SchedTable>,
    /// The VIP pre-filter, [`VIP_FILTER_WORDS`] words.
    pub filter: Vec<u64>,
    /// This director's own address (its tunnel source): a real there is local.
    pub local: Option<Ipv4Addr>,
}

/// The writes that turn a [`Snapshot`] into the wanted table, in publication order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Filter words set before anything else: old | new.
    pub filter_open: Vec<(u32, u64)>,
    /// Reals written, and whether their counters start from zero (a new occupant).
    pub reals: Vec<(u32, Real, bool)>,
    /// Thresholds written (slot, upper, lower), and whether the real's connection counts start
    /// from zero (a new occupant).
    pub thresholds: Vec<(u32, u32, u32, bool)>,
    /// Tables written, by index (`service slot * 2 + copy`): always the inactive copy.
    pub tables: Vec<(u32, SchedTable)>,
    /// New services' slots: their counters and scheduling cursors start from zero.
    pub new_services: Vec<u32>,
    /// Service entries written, pointing at their live copy.
    pub services: Vec<(ServiceKey, Service)>,
    pub removed_services: Vec<ServiceKey>,
    /// Reals retired (no longer in use), with their new value.
    pub retired: Vec<(u32, Real)>,
    /// Filter words set last: the new filter.
    pub filter_close: Vec<(u32, u64)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// The VIP pre-filter of a table.
pub fn filter_of(services: &[VirtualService]) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for s in services {
        let bit = vip_filter_bit(ip_be(s.id.addr.octets()));
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

/// The scheduling table of a service whose reals sit in `real_slots`.
pub fn table_of(spec: &VirtualService, real_slots: &[u32]) -> SchedTable {
    let candidates: Vec<Candidate> = spec
        .reals
        .iter()
        .zip(real_slots)
        .map(|(r, &id)| Candidate {
            id,
            addr: ip_be(r.addr.octets()),
            weight: r.weight,
        })
        .collect();
    let slots = scheduler::build(spec.sched, &candidates);
    let n = slots.len().min(SCHED_SLOTS);
    let mut table = SchedTable {
        len: n as u32,
        ..Default::default()
    };
    table.slots[..n].copy_from_slice(&slots[..n]);
    table
}

fn validate(want: &[VirtualService]) -> Result<(), PlanError> {
    let mut seen = HashSet::new();
    for s in want {
        if !seen.insert(s.id) {
            return Err(PlanError::DuplicateService(s.id));
        }
        let mut addrs = HashSet::new();
        for r in &s.reals {
            if !addrs.insert(r.addr) {
                return Err(PlanError::DuplicateReal(s.id, r.addr));
            }
            if let Some(why) = super::table::unusable_real(r.addr, s.id.addr) {
                return Err(PlanError::UnusableReal(s.id, r.addr, why));
            }
            if r.l_threshold > r.u_threshold {
                return Err(PlanError::Thresholds(
                    s.id,
                    r.addr,
                    r.l_threshold,
                    r.u_threshold,
                ));
            }
        }
    }
    Ok(())
}

/// Lowest free slot at or above `*next`, below `max`.
fn take_slot(used: &mut HashSet<u32>, next: &mut u32, max: u32) -> Option<u32> {
    while used.contains(next) {
        *next += 1;
    }
    if *next >= max {
        return None;
    }
    used.insert(*next);
    Some(*next)
}

/// Plans the writes that make the maps hold exactly `want`, touching only what differs.
pub fn plan(snap: &Snapshot, want: &[VirtualService]) -> Result<Plan, PlanError> {
    validate(want)?;
    let current: HashMap<ServiceId, &InstalledService> =
        snap.services.iter().map(|s| (s.spec.id, s)).collect();
    let mut used_svc: HashSet<u32> = snap.services.iter().map(|s| s.slot).collect();
    let mut used_real: HashSet<u32> = snap
        .services
        .iter()
        .flat_map(|s| s.real_slots.iter().copied())
        .collect();
    let (mut next_svc, mut next_real) = (0u32, 0u32);
    let mut plan = Plan::default();

    // Slots first, so running out fails before anything is planned.
    struct Placed<'a> {
        spec: &'a VirtualService,
        cur: Option<&'a InstalledService>,
        slot: u32,
        /// Each real's slot, and whether it is new.
        reals: Vec<(u32, bool)>,
    }
    let mut placed = Vec::with_capacity(want.len());
    for s in want {
        let cur = current.get(&s.id).copied();
        let slot = match cur {
            Some(c) => c.slot,
            None => take_slot(&mut used_svc, &mut next_svc, MAX_SERVICES)
                .ok_or(PlanError::TooManyServices)?,
        };
        let mut reals = Vec::with_capacity(s.reals.len());
        for r in &s.reals {
            let existing = cur.and_then(|c| {
                let i = c.spec.reals.iter().position(|cr| cr.addr == r.addr)?;
                Some(c.real_slots[i])
            });
            reals.push(match existing {
                Some(rs) => (rs, false),
                None => (
                    take_slot(&mut used_real, &mut next_real, MAX_REALS)
                        .ok_or(PlanError::TooManyReals)?,
                    true,
                ),
            });
        }
        placed.push(Placed {
            spec: s,
            cur,
            slot,
            reals,
        });
    }

    // The filter lets new services' packets in before they exist...
    let new_filter = filter_of(want);
    let open: Vec<u64> = snap
        .filter
        .iter()
        .zip(&new_filter)
        .map(|(a, b)| a | b)
        .collect();
    plan.filter_open = changed_words(&snap.filter, &open);

    for p in &placed {
        for (r, &(rslot, is_new)) in p.spec.reals.iter().zip(&p.reals) {
            let old = snap.reals.get(&rslot).copied().unwrap_or_default();
            // A real on this host is served up its own stack (the two-node layout).
            let flags = if snap.local == Some(r.addr) {
                REAL_F_IN_USE | REAL_F_LOCAL
            } else {
                REAL_F_IN_USE
            };
            let next = if is_new {
                Real {
                    addr: ip_be(r.addr.octets()),
                    weight: r.weight,
                    service_id: p.slot,
                    generation: old.generation.wrapping_add(1),
                    flags,
                    _pad: 0,
                }
            } else {
                Real {
                    weight: r.weight,
                    flags,
                    ..old
                }
            };
            if next != old || is_new {
                plan.reals.push((rslot, next, is_new));
            }
            let was = p.cur.and_then(|c| {
                let i = c.spec.reals.iter().position(|cr| cr.addr == r.addr)?;
                Some((c.spec.reals[i].u_threshold, c.spec.reals[i].l_threshold))
            });
            if is_new || was != Some((r.u_threshold, r.l_threshold)) {
                plan.thresholds
                    .push((rslot, r.u_threshold, r.l_threshold, is_new));
            }
        }
    }

    for p in &placed {
        let slots: Vec<u32> = p.reals.iter().map(|&(s, _)| s).collect();
        let table = table_of(p.spec, &slots);
        let active = p.cur.map(|c| c.table_copy).unwrap_or(1);
        let same_table = p.cur.is_some() && snap.live_tables.get(&p.slot) == Some(&table);
        let same_svc = p.cur.is_some_and(|c| {
            c.spec.sched == p.spec.sched
                && c.spec.persistence == p.spec.persistence
                && service_flags(&c.spec) == service_flags(p.spec)
        });
        if same_table && same_svc {
            continue;
        }
        let copy = if same_table { active } else { 1 - active };
        if !same_table {
            plan.tables.push((p.slot * 2 + copy, table));
        }
        if p.cur.is_none() {
            plan.new_services.push(p.slot);
        }
        plan.services.push((
            p.spec.id.key(),
            Service {
                id: p.slot,
                table: copy,
                persist_timeout: p.spec.persistence,
                sched: p.spec.sched.to_raw(),
                flags: service_flags(p.spec),
                _pad: [0; 2],
            },
        ));
    }

    // Retire what is gone: services first, so no new packet reaches a retired real.
    let want_ids: HashSet<ServiceId> = want.iter().map(|s| s.id).collect();
    for c in &snap.services {
        if !want_ids.contains(&c.spec.id) {
            plan.removed_services.push(c.spec.id.key());
        }
    }
    let keep: HashSet<u32> = placed
        .iter()
        .flat_map(|p| p.reals.iter().map(|&(s, _)| s))
        .collect();
    for c in &snap.services {
        for &rslot in c.real_slots.iter().filter(|s| !keep.contains(s)) {
            let mut r = snap.reals.get(&rslot).copied().unwrap_or_default();
            r.flags &= !REAL_F_IN_USE;
            plan.retired.push((rslot, r));
        }
    }
    // ...and stops letting removed services' packets in only after they are gone.
    plan.filter_close = changed_words(&open, &new_filter);
    Ok(plan)
}

/// The data path's per-service flags: whether any real has an upper threshold (then rr, wrr
/// and mh look at counts too).
pub fn service_flags(spec: &VirtualService) -> u8 {
    if spec.reals.iter().any(|r| r.u_threshold > 0) {
        SVC_F_THRESHOLDS
    } else {
        0
    }
}

fn changed_words(old: &[u64], new: &[u64]) -> Vec<(u32, u64)> {
    old.iter()
        .zip(new)
        .enumerate()
        .filter(|(_, (o, n))| o != n)
        .map(|(i, (_, n))| (i as u32, *n))
        .collect()
}

#[cfg(test)]
mod tests;
