use super::*;
use crate::director::{
    scheduler::Scheduler,
    table::{Protocol, RealServer},
};
use lb_common::MH_TABLE_LEN;

fn svc(port: u16, sched: Scheduler, reals: &[(u8, u32)]) -> VirtualService {
    VirtualService {
        id: ServiceId {
            proto: Protocol::Tcp,
            addr: Ipv4Addr::new(198, 18, 0, 100),
            port,
        },
        sched,
        persistence: 0,
        reals: reals
            .iter()
            .map(|&(last, weight)| RealServer::new(Ipv4Addr::new(10, 0, 1, last), weight))
            .collect(),
    }
}

/// What the maps would hold after publishing `plan` on top of `snap` (the same bookkeeping
/// `Maps::read` and `Maps::snapshot` do on the real maps).
fn apply(snap: &Snapshot, plan: &Plan) -> Snapshot {
    let mut reals = snap.reals.clone();
    for &(slot, r, _) in &plan.reals {
        reals.insert(slot, r);
    }
    for &(slot, r) in &plan.retired {
        reals.insert(slot, r);
    }
    let mut tables: HashMap<u32, SchedTable> = HashMap::new();
    for (&slot, t) in &snap.live_tables {
        let copy = snap
            .services
            .iter()
            .find(|s| s.slot == slot)
            .unwrap()
            .table_copy;
        tables.insert(slot * 2 + copy, *t);
    }
    for (idx, t) in &plan.tables {
        tables.insert(*idx, *t);
    }
    let mut entries: HashMap<ServiceKey, Service> = snap
        .services
        .iter()
        .map(|s| {
            (
                s.spec.id.key(),
                Service {
                    id: s.slot,
                    table: s.table_copy,
                    persist_timeout: s.spec.persistence,
                    sched: s.spec.sched.to_raw(),
                    flags: 0,
                    _pad: [0; 2],
                },
            )
        })
        .collect();
    for (k, v) in &plan.services {
        entries.insert(*k, *v);
    }
    for k in &plan.removed_services {
        entries.remove(k);
    }
    let mut services: Vec<InstalledService> = entries
        .iter()
        .map(|(k, v)| {
            let mut real_slots: Vec<u32> = reals
                .iter()
                .filter(|(_, r)| r.flags & REAL_F_IN_USE != 0 && r.service_id == v.id)
                .map(|(&s, _)| s)
                .collect();
            real_slots.sort();
            InstalledService {
                spec: VirtualService {
                    id: ServiceId::from_key(k).unwrap(),
                    sched: Scheduler::from_raw(v.sched).unwrap(),
                    persistence: v.persist_timeout,
                    reals: real_slots
                        .iter()
                        .map(|s| {
                            RealServer::new(
                                crate::director::table::addr(reals[s].addr),
                                reals[s].weight,
                            )
                        })
                        .collect(),
                },
                slot: v.id,
                table_copy: v.table,
                real_slots,
            }
        })
        .collect();
    services.sort_by_key(|s| s.spec.id);
    let live_tables = services
        .iter()
        .map(|s| (s.slot, tables[&(s.slot * 2 + s.table_copy)]))
        .collect();
    let mut filter = snap.filter.clone();
    for &(i, w) in plan.filter_open.iter().chain(&plan.filter_close) {
        filter[i as usize] = w;
    }
    Snapshot {
        services,
        reals,
        live_tables,
        filter,
        local: snap.local,
    }
}

fn empty() -> Snapshot {
    Snapshot {
        filter: vec![0; VIP_FILTER_WORDS as usize],
        ..Default::default()
    }
}

fn step(snap: &Snapshot, want: &[VirtualService]) -> (Plan, Snapshot) {
    let p = plan(snap, want).unwrap();
    let next = apply(snap, &p);
    (p, next)
}

#[test]
fn a_new_service_writes_reals_then_the_inactive_copy_then_the_entry() {
    let s = svc(6033, Scheduler::Wrr, &[(11, 3), (12, 1)]);
    let (p, after) = step(&empty(), std::slice::from_ref(&s));
    assert_eq!(p.reals.len(), 2);
    assert!(
        p.reals
            .iter()
            .all(|&(_, r, fresh)| fresh && r.generation == 1)
    );
    // A new service starts on copy 0: "inactive" relative to a default live copy of 1.
    assert_eq!(p.tables.len(), 1);
    assert_eq!(p.tables[0].0, 0);
    assert_eq!(p.services.len(), 1);
    assert_eq!(p.services[0].1.table, 0);
    assert_eq!(p.new_services, vec![0]);
    assert!(!p.filter_open.is_empty(), "the filter opens for the VIP");
    assert!(p.filter_close.is_empty(), "and stays open");
    assert_eq!(after.services[0].spec, s);
    // Applying the same table again changes nothing at all.
    assert!(plan(&after, &[s]).unwrap().is_empty());
}

#[test]
fn a_weight_change_flips_to_the_other_copy() {
    let (_, s1) = step(&empty(), &[svc(6033, Scheduler::Wrr, &[(11, 1), (12, 1)])]);
    let (p, s2) = step(&s1, &[svc(6033, Scheduler::Wrr, &[(11, 3), (12, 1)])]);
    assert_eq!(p.reals.len(), 1, "only the changed real is written");
    assert!(!p.reals[0].2, "an existing real keeps its counters");
    assert_eq!(
        p.tables,
        vec![(1, p.tables[0].1)],
        "copy 1 of service slot 0"
    );
    assert_eq!(p.services[0].1.table, 1);
    assert!(p.new_services.is_empty());
    let (p, _) = step(&s2, &[svc(6033, Scheduler::Wrr, &[(11, 1), (12, 1)])]);
    assert_eq!(p.tables[0].0, 0, "and back");
}

#[test]
fn a_scheduler_change_with_the_same_table_keeps_the_copy() {
    let (_, s1) = step(&empty(), &[svc(6033, Scheduler::Wrr, &[(11, 1), (12, 1)])]);
    // rr and wrr with equal weights build the same table: only the entry changes.
    let (p, _) = step(&s1, &[svc(6033, Scheduler::Rr, &[(11, 1), (12, 1)])]);
    assert!(p.tables.is_empty());
    assert_eq!(p.services.len(), 1);
    assert_eq!(p.services[0].1.table, s1.services[0].table_copy);
    assert_eq!(p.services[0].1.sched, Scheduler::Rr.to_raw());
}

#[test]
fn freed_slots_are_not_reused_in_the_same_change_and_get_a_new_generation_after() {
    let (_, s1) = step(&empty(), &[svc(1, Scheduler::Rr, &[(11, 1)])]);
    assert_eq!(s1.services[0].real_slots, vec![0]);
    // Replace the service: the new one may not take slot 0 while slot 0 is being retired.
    let (p, s2) = step(&s1, &[svc(2, Scheduler::Rr, &[(12, 1)])]);
    assert_eq!(p.removed_services.len(), 1);
    assert_eq!(p.retired.len(), 1);
    assert_eq!(p.retired[0].0, 0);
    assert_eq!(p.retired[0].1.flags & REAL_F_IN_USE, 0);
    assert_eq!(s2.services[0].slot, 1);
    assert_eq!(s2.services[0].real_slots, vec![1]);
    // Next change: slot 0 is free again, and its new occupant has generation 2.
    let (p, s3) = step(
        &s2,
        &[
            svc(2, Scheduler::Rr, &[(12, 1)]),
            svc(3, Scheduler::Rr, &[(13, 1)]),
        ],
    );
    let fresh: Vec<_> = p.reals.iter().filter(|r| r.2).collect();
    assert_eq!(fresh.len(), 1);
    assert_eq!((fresh[0].0, fresh[0].1.generation), (0, 2));
    assert_eq!(s3.services.len(), 2);
}

#[test]
fn removed_services_close_the_filter_last() {
    let (_, s1) = step(&empty(), &[svc(1, Scheduler::Rr, &[(11, 1)])]);
    let (p, s2) = step(&s1, &[]);
    assert!(p.filter_open.is_empty());
    assert_eq!(p.filter_close.len(), 1);
    assert!(s2.filter.iter().all(|&w| w == 0));
    assert!(s2.services.is_empty());
}

#[test]
fn limits_and_duplicates_fail_before_any_write() {
    let dup = svc(1, Scheduler::Rr, &[(11, 1), (11, 2)]);
    assert!(matches!(
        plan(&empty(), &[dup]),
        Err(PlanError::DuplicateReal(..))
    ));
    let a = svc(1, Scheduler::Rr, &[(11, 1)]);
    assert!(matches!(
        plan(&empty(), &[a.clone(), a]),
        Err(PlanError::DuplicateService(_))
    ));
    let many: Vec<VirtualService> = (0..=MAX_SERVICES)
        .map(|i| svc(i as u16 + 1, Scheduler::Rr, &[]))
        .collect();
    assert_eq!(plan(&empty(), &many), Err(PlanError::TooManyServices));
}

#[test]
fn wrr_tables_interleave() {
    let (_, s1) = step(&empty(), &[svc(1, Scheduler::Wrr, &[(11, 3), (12, 1)])]);
    let t = s1.live_tables[&s1.services[0].slot];
    let slots = &s1.services[0].real_slots;
    let (a, b) = (slots[0], slots[1]);
    assert_eq!(&t.slots[..t.len as usize], &[a, a, b, a]);
}

/// Maglev's promise: removing one real of N moves about 1/N of the table (its own slots) and
/// little else, so most clients of the surviving reals keep their real.
#[test]
fn maglev_moves_little_more_than_the_removed_reals_share() {
    let n = 10u8;
    let all: Vec<(u8, u32)> = (1..=n).map(|i| (10 + i, 1)).collect();
    let (_, s1) = step(&empty(), &[svc(1, Scheduler::Mh, &all)]);
    let before = s1.live_tables[&0];
    let addr_of = |snap: &Snapshot, slot: u32| snap.reals[&slot].addr;
    let (_, s2) = step(&s1, &[svc(1, Scheduler::Mh, &all[1..])]);
    let after = s2.live_tables[&0];
    let len = MH_TABLE_LEN as usize;
    let moved = (0..len)
        .filter(|&i| addr_of(&s1, before.slots[i]) != addr_of(&s2, after.slots[i]))
        .count();
    let share = len as f64 / n as f64;
    println!(
        "maglev: removing 1 of {n} reals moved {moved} of {len} slots ({:.1} %; its own share {:.1} %)",
        100.0 * moved as f64 / len as f64,
        100.0 * share / len as f64
    );
    // The removed real's own slots, plus at most 3 % of the table (Maglev's small disruption
    // of the survivors; 2.4 % with these addresses).
    assert!(
        (moved as f64) <= share + len as f64 * 0.03,
        "{moved} slots moved, more than 1/{n} of {len} plus 3 %"
    );
}

#[test]
fn a_real_at_the_directors_own_address_is_local() {
    let me = Ipv4Addr::new(10, 0, 1, 11);
    let snap = Snapshot {
        local: Some(me),
        ..empty()
    };
    let (p, after) = step(&snap, &[svc(1, Scheduler::Rr, &[(11, 1), (12, 1)])]);
    let flags: Vec<(Ipv4Addr, u32)> = p
        .reals
        .iter()
        .map(|(_, r, _)| (crate::director::table::addr(r.addr), r.flags))
        .collect();
    assert_eq!(
        flags,
        vec![
            (me, REAL_F_IN_USE | REAL_F_LOCAL),
            (Ipv4Addr::new(10, 0, 1, 12), REAL_F_IN_USE)
        ]
    );
    // The tunnel source moves: the flag follows, nothing else changes.
    let moved = Snapshot {
        local: Some(Ipv4Addr::new(10, 0, 1, 12)),
        ..after
    };
    let p = plan(&moved, &[svc(1, Scheduler::Rr, &[(11, 1), (12, 1)])]).unwrap();
    assert_eq!(p.reals.len(), 2);
    assert!(p.tables.is_empty() && p.services.is_empty());
}

#[test]
fn thresholds_are_written_with_their_real_and_flag_the_service() {
    let limited = |mut s: VirtualService, u, l| {
        s.reals[0].u_threshold = u;
        s.reals[0].l_threshold = l;
        s
    };
    let base = svc(6033, Scheduler::Wlc, &[(11, 1), (12, 1)]);
    // New reals: their counts start from zero, whatever their thresholds.
    let (p, s1) = step(&empty(), std::slice::from_ref(&base));
    assert_eq!(p.thresholds, vec![(0, 0, 0, true), (1, 0, 0, true)]);
    assert_eq!(p.services[0].1.flags, 0);
    // An upper threshold on an existing real: written alone, counts kept, and the service
    // flagged so that every scheduler looks at the counts.
    let (p, _) = step(&s1, &[limited(base.clone(), 100, 80)]);
    assert_eq!(p.thresholds, vec![(0, 100, 80, false)]);
    assert!(p.reals.is_empty() && p.tables.is_empty());
    assert_eq!(p.services[0].1.flags, SVC_F_THRESHOLDS);
    // Nothing changed: nothing written.
    assert!(plan(&s1, std::slice::from_ref(&base)).unwrap().is_empty());
    // A lower threshold above the upper one is refused, naming both.
    let e = plan(&s1, &[limited(base, 5, 6)]).unwrap_err();
    assert_eq!(
        e,
        PlanError::Thresholds(s1.services[0].spec.id, Ipv4Addr::new(10, 0, 1, 11), 6, 5)
    );
}
