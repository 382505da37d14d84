//! What the maps should hold for a service, given its configuration and the health of its
//! reals: keepalived's quorum with hysteresis, quiesce or remove, the sorry server, and the
//! health a restarted daemon inherits from the maps. Pure functions, tested without root.

use super::{
    config::{OnFailure, RealConfig, ServiceConfig},
    healthcheck::Health,
};
use crate::director::{RealServer, VirtualService};
use std::net::Ipv4Addr;

/// The health a real starts with when the daemon (re)starts: what the maps say a previous
/// daemon decided. A real the maps hold at weight 0 while the file gives it more (`quiesce`),
/// or one missing from a service the maps hold (`remove`), is DOWN until `rise` checks pass;
/// every other real starts UP (keepalived without `alpha`).
pub fn inherited_health(
    installed: Option<&VirtualService>,
    s: &ServiceConfig,
    r: &RealConfig,
) -> Health {
    let Some(c) = installed else {
        return Health::Up;
    };
    let down = match (c.reals.iter().find(|x| x.addr == r.addr), s.on_failure) {
        (Some(x), OnFailure::Quiesce) => x.weight == 0 && r.weight > 0,
        (None, OnFailure::Remove) => true,
        _ => false,
    };
    if down { Health::Down } else { Health::Up }
}

/// keepalived's quorum: the sum of the configured weights of UP reals.
pub fn alive_weight(s: &ServiceConfig, health: impl Fn(Ipv4Addr) -> Health) -> u64 {
    s.reals
        .iter()
        .filter(|r| health(r.addr) == Health::Up)
        .map(|r| u64::from(r.weight))
        .sum()
}

/// A quorum larger than the total weight could never be held: reduced to it (as keepalived).
pub fn effective_quorum(s: &ServiceConfig) -> u64 {
    s.quorum
        .min(s.reals.iter().map(|r| u64::from(r.weight)).sum())
}

/// Lost below quorum − hysteresis, regained at quorum + hysteresis.
pub fn next_quorum(held: bool, alive: u64, s: &ServiceConfig) -> bool {
    let q = effective_quorum(s);
    if held {
        alive >= q.saturating_sub(s.hysteresis)
    } else {
        alive >= q + s.hysteresis
    }
}

/// The reals a service should have in the maps, in file order: configured weight while UP,
/// weight 0 (`quiesce`) or absent (`remove`) while DOWN; with the quorum lost and a sorry
/// server, every real is out and the sorry server takes the new connections.
pub fn desired_reals(
    s: &ServiceConfig,
    health: impl Fn(Ipv4Addr) -> Health,
    quorum_held: bool,
) -> Vec<(Ipv4Addr, u32)> {
    let sorry = s.sorry_server.filter(|_| !quorum_held);
    let mut out: Vec<(Ipv4Addr, u32)> = s
        .reals
        .iter()
        .filter_map(|r| {
            let h = if sorry.is_some() {
                Health::Down
            } else {
                health(r.addr)
            };
            match (h, s.on_failure) {
                (Health::Up, _) => Some((r.addr, r.weight)),
                (Health::Down, OnFailure::Quiesce) => Some((r.addr, 0)),
                (Health::Down, OnFailure::Remove) => None,
            }
        })
        .collect();
    if let Some(a) = sorry {
        out.push((a, 1));
    }
    out
}

/// While a real of a service ramps up (slow start), every weight of the service in the maps is
/// its configured weight times this, so that a ramp has steps even from weight 1 (the ratios
/// between the others, all the schedulers look at, stay as they were).
pub const RAMP_SCALE: u32 = 100;

/// The weights while some reals slow-start: `elapsed(addr)` is how long ago a real came UP or
/// was added, if it is ramping. A ramping real's weight grows in proportion to the time, from a
/// hundredth of its weight (at least 1) to all of it at `slow_start` (HAProxy's `slowstart`,
/// NGINX's `slow_start`).
pub fn ramped(
    s: &ServiceConfig,
    want: Vec<(Ipv4Addr, u32)>,
    elapsed: impl Fn(Ipv4Addr) -> Option<std::time::Duration>,
) -> Vec<(Ipv4Addr, u32)> {
    let total = s.slow_start;
    let ramping = |a| elapsed(a).filter(|&e| e < total);
    if total.is_zero() || !want.iter().any(|&(a, w)| w > 0 && ramping(a).is_some()) {
        return want;
    }
    want.into_iter()
        .map(|(a, w)| {
            let full = (w as u64 * RAMP_SCALE as u64).min(i32::MAX as u64);
            let now = match ramping(a) {
                Some(e) if w > 0 => {
                    let part = full as u128 * e.as_millis() / total.as_millis().max(1);
                    (part as u64).clamp(1, full)
                }
                _ => full,
            };
            (a, now as u32)
        })
        .collect()
}

/// The reals of a service with the thresholds its configuration gives them.
pub fn with_limits(s: &ServiceConfig, mut reals: Vec<RealServer>) -> Vec<RealServer> {
    for r in &mut reals {
        if let Some(c) = s.reals.iter().find(|c| c.addr == r.addr) {
            r.u_threshold = c.max_conns;
            r.l_threshold = c.min_conns;
        }
    }
    reals
}

/// Keeps the order the maps have (so a change does not reshuffle `mh` tables or `-L`), new
/// reals appended in file order.
pub fn in_map_order(
    current: Option<&VirtualService>,
    want: Vec<(Ipv4Addr, u32)>,
) -> Vec<RealServer> {
    let mut reals: Vec<RealServer> = current
        .map(|c| {
            c.reals
                .iter()
                .filter_map(|r| {
                    let &(addr, weight) = want.iter().find(|w| w.0 == r.addr)?;
                    Some(RealServer::new(addr, weight))
                })
                .collect()
        })
        .unwrap_or_default();
    for (addr, weight) in want {
        if !reals.iter().any(|x| x.addr == addr) {
            reals.push(RealServer::new(addr, weight));
        }
    }
    reals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config;
    use std::path::Path;

    fn service(extra: &str) -> ServiceConfig {
        let text = format!(
            "iface = \"lo\"\n[[service]]\nvip = \"10.0.0.1\"\nport = 6033\n{extra}\n\
             [[service.real]]\naddress = \"10.0.1.1\"\nweight = 2\n\
             [[service.real]]\naddress = \"10.0.1.2\"\nweight = 1\n"
        );
        config::parse(Path::new("t.toml"), &text)
            .unwrap()
            .services
            .remove(0)
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
    const SORRY: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 9);

    fn up_except(down: &'static [Ipv4Addr]) -> impl Fn(Ipv4Addr) -> Health {
        move |a| {
            if down.contains(&a) {
                Health::Down
            } else {
                Health::Up
            }
        }
    }

    #[test]
    fn quorum_is_the_weight_of_up_reals_with_hysteresis() {
        let s = service("quorum = 2\nhysteresis = 1");
        assert_eq!(alive_weight(&s, up_except(&[])), 3);
        assert_eq!(alive_weight(&s, up_except(&[A])), 1);
        assert_eq!(effective_quorum(&s), 2);
        // Held: lost only below 2 - 1.
        assert!(next_quorum(true, 1, &s));
        assert!(!next_quorum(true, 0, &s));
        // Lost: regained only at 2 + 1.
        assert!(!next_quorum(false, 2, &s));
        assert!(next_quorum(false, 3, &s));
        // A quorum above the total weight is reduced to it.
        assert_eq!(effective_quorum(&service("quorum = 10")), 3);
    }

    #[test]
    fn down_reals_are_quiesced_or_removed() {
        let s = service("");
        assert_eq!(
            desired_reals(&s, up_except(&[B]), true),
            vec![(A, 2), (B, 0)]
        );
        let s = service("on_failure = \"remove\"");
        assert_eq!(desired_reals(&s, up_except(&[B]), true), vec![(A, 2)]);
    }

    #[test]
    fn a_lost_quorum_hands_new_connections_to_the_sorry_server() {
        let s = service("sorry_server = \"10.0.9.9\"");
        assert_eq!(
            desired_reals(&s, up_except(&[A, B]), false),
            vec![(A, 0), (B, 0), (SORRY, 1)]
        );
        // Without a sorry server the reals stay as their health says.
        let s = service("");
        assert_eq!(
            desired_reals(&s, up_except(&[A]), false),
            vec![(A, 0), (B, 1)]
        );
    }

    #[test]
    fn map_order_is_kept_and_new_reals_are_appended() {
        let cur = VirtualService {
            id: service("").id,
            sched: crate::director::Scheduler::Mh,
            persistence: 0,
            reals: vec![RealServer::new(B, 1), RealServer::new(A, 2)],
        };
        let got = in_map_order(Some(&cur), vec![(A, 5), (SORRY, 1), (B, 0)]);
        let addrs: Vec<_> = got.iter().map(|r| (r.addr, r.weight)).collect();
        assert_eq!(addrs, vec![(B, 0), (A, 5), (SORRY, 1)]);
    }

    #[test]
    fn slow_start_ramps_a_real_and_scales_the_others() {
        use std::time::Duration;
        let s = service("slow_start = \"10s\"");
        let want = vec![(A, 2), (B, 1)];
        // Nobody ramping: the weights as configured.
        assert_eq!(ramped(&s, want.clone(), |_| None), want);
        let at = |secs: u64| {
            ramped(&s, want.clone(), move |a| {
                (a == B).then_some(Duration::from_secs(secs))
            })
        };
        assert_eq!(at(0), vec![(A, 200), (B, 1)]);
        assert_eq!(at(3), vec![(A, 200), (B, 30)]);
        assert_eq!(at(9), vec![(A, 200), (B, 90)]);
        // Done: back to the configured weights.
        assert_eq!(at(10), want);
        // A quiesced real does not ramp; without slow_start nothing does.
        assert_eq!(
            ramped(&s, vec![(A, 2), (B, 0)], |a| (a == B)
                .then_some(Duration::ZERO)),
            vec![(A, 2), (B, 0)]
        );
        let s = service("");
        assert_eq!(ramped(&s, want.clone(), |_| Some(Duration::ZERO)), want);
    }

    #[test]
    fn thresholds_come_from_the_configuration() {
        let text = "iface = \"lo\"\n[[service]]\nvip = \"10.0.0.1\"\nport = 6033\n\
                    [[service.real]]\naddress = \"10.0.1.1\"\nmax_conns = 300\nmin_conns = 200\n";
        let s = config::parse(Path::new("t.toml"), text)
            .unwrap()
            .services
            .remove(0);
        let got = with_limits(&s, vec![RealServer::new(A, 1), RealServer::new(SORRY, 1)]);
        assert_eq!((got[0].u_threshold, got[0].l_threshold), (300, 200));
        assert_eq!((got[1].u_threshold, got[1].l_threshold), (0, 0));
    }

    #[test]
    fn a_restart_inherits_what_the_maps_say() {
        let s = service("");
        let mut cur = VirtualService {
            id: s.id,
            sched: s.sched,
            persistence: 0,
            reals: vec![RealServer::new(A, 2), RealServer::new(B, 0)],
        };
        assert_eq!(inherited_health(Some(&cur), &s, &s.reals[0]), Health::Up);
        assert_eq!(inherited_health(Some(&cur), &s, &s.reals[1]), Health::Down);
        assert_eq!(inherited_health(None, &s, &s.reals[1]), Health::Up);
        let s = service("on_failure = \"remove\"");
        cur.reals.pop();
        assert_eq!(inherited_health(Some(&cur), &s, &s.reals[1]), Health::Down);
    }
}
