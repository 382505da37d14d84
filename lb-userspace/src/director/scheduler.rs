//! Scheduling tables: userspace precomputes, for each service, the sequence of real ids that new
//! connections walk through (`rr`, `wrr`), index by source hash (`mh`), or compare by their live
//! connection counts (`lc`, `wlc`, `sed`, `nq`: the table lists the candidates in service
//! order). The data path only reads slots and counts, so every other policy decision lives
//! here, where it can be tested.

use lb_common::{
    MH_TABLE_LEN, SCHED_LC, SCHED_MH, SCHED_NQ, SCHED_RR, SCHED_SED, SCHED_SLOTS, SCHED_WLC,
    SCHED_WRR,
};
use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Mh,
    Lc,
    Wlc,
    Sed,
    Nq,
}

impl Scheduler {
    /// The scheduler a service gets when none is named (`-A` without `-s`, a daemon service
    /// without `scheduler`): ipvsadm's default.
    pub const DEFAULT: Scheduler = Scheduler::Wlc;

    pub const ALL: [Scheduler; 7] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Mh,
    ];

    pub const fn to_raw(self) -> u8 {
        match self {
            Scheduler::Rr => SCHED_RR,
            Scheduler::Wrr => SCHED_WRR,
            Scheduler::Mh => SCHED_MH,
            Scheduler::Lc => SCHED_LC,
            Scheduler::Wlc => SCHED_WLC,
            Scheduler::Sed => SCHED_SED,
            Scheduler::Nq => SCHED_NQ,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            SCHED_RR => Some(Scheduler::Rr),
            SCHED_WRR => Some(Scheduler::Wrr),
            SCHED_MH => Some(Scheduler::Mh),
            SCHED_LC => Some(Scheduler::Lc),
            SCHED_WLC => Some(Scheduler::Wlc),
            SCHED_SED => Some(Scheduler::Sed),
            SCHED_NQ => Some(Scheduler::Nq),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Mh => "mh",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
        }
    }

    /// Picks by live connection counts (the least-connection family).
    pub const fn counts_connections(self) -> bool {
        matches!(
            self,
            Scheduler::Lc | Scheduler::Wlc | Scheduler::Sed | Scheduler::Nq
        )
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scheduler::ALL
            .into_iter()
            .find(|sch| sch.name() == s)
            .ok_or_else(|| {
                format!("unknown scheduler `{s}` (this director has rr, wrr, lc, wlc, sed, nq, mh)")
            })
    }
}

/// One candidate of a table: the real's id and what the policy needs to know of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: u32,
    pub addr: u32,
    pub weight: u32,
}

/// Builds the table for `sched` over `reals` (in service order). Reals with weight 0 are
/// quiescent: they never appear, so they get no new connections while their existing ones,
/// pinned by the connection table, carry on.
pub fn build(sched: Scheduler, reals: &[Candidate]) -> Vec<u32> {
    let live: Vec<Candidate> = reals.iter().copied().filter(|r| r.weight > 0).collect();
    if live.is_empty() {
        return Vec::new();
    }
    match sched {
        Scheduler::Rr => live.iter().map(|r| r.id).take(SCHED_SLOTS).collect(),
        // IPVS walks a service's destinations newest first (`list_add_rcu` puts a new one at
        // the head), so among equals the real added last wins: the table lists them so.
        Scheduler::Lc | Scheduler::Wlc | Scheduler::Sed | Scheduler::Nq => {
            live.iter().rev().map(|r| r.id).take(SCHED_SLOTS).collect()
        }
        Scheduler::Wrr => smooth_wrr(&live),
        Scheduler::Mh => maglev(&live, MH_TABLE_LEN as usize),
    }
}

/// What a least-connection scheduler knows of a candidate when a new connection comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub id: u32,
    pub weight: u32,
    pub active: u32,
    pub inactive: u32,
    /// Over its upper threshold (see [`lb_common::overloaded`]).
    pub overloaded: bool,
}

/// The pick of `lc`, `wlc`, `sed` or `nq` among `reals` (in table order), as IPVS defines them
/// and the data path computes them: `lc` the fewest `active * 256 + inactive`, `wlc` that per
/// unit of weight, `sed` the fewest `(active + 1) / weight`, `nq` an idle real at once, else as
/// `sed`. Quiescent (weight 0) and overloaded reals are passed over; the first of equals wins
/// (tables list the reals newest first, as IPVS walks them).
pub fn least(sched: Scheduler, reals: &[Load]) -> Option<u32> {
    let mut best: Option<(&Load, u64)> = None;
    for r in reals.iter().filter(|r| r.weight > 0 && !r.overloaded) {
        let (active, inactive) = (r.active as u64, r.inactive as u64);
        if sched == Scheduler::Nq && active == 0 {
            return Some(r.id);
        }
        let overhead = match sched {
            Scheduler::Sed | Scheduler::Nq => active + 1,
            _ => (active << 8) + inactive,
        };
        let better = match best {
            None => true,
            Some((_, b)) if sched == Scheduler::Lc => overhead < b,
            Some((l, b)) => overhead * (l.weight as u64) < b * (r.weight as u64),
        };
        if better {
            best = Some((r, overhead));
        }
    }
    best.map(|(r, _)| r.id)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Weights reduced by their gcd and, if their sum still exceeds the table, scaled down
/// proportionally (largest remainder, every live real keeps at least one slot).
fn table_weights(reals: &[Candidate]) -> Vec<u64> {
    let g = reals.iter().fold(0u64, |g, r| gcd(g, r.weight as u64));
    let w: Vec<u64> = reals.iter().map(|r| r.weight as u64 / g).collect();
    let sum: u64 = w.iter().sum();
    let cap = SCHED_SLOTS as u64;
    if sum <= cap {
        return w;
    }
    let n = w.len() as u64;
    // Each real gets one guaranteed slot; the rest are shared by weight.
    let spare = cap.saturating_sub(n);
    let exact: Vec<(u64, u64)> = w
        .iter()
        .map(|&wi| {
            let num = wi as u128 * spare as u128;
            ((num / sum as u128) as u64, (num % sum as u128) as u64)
        })
        .collect();
    let mut out: Vec<u64> = exact.iter().map(|&(q, _)| q + 1).collect();
    let mut left = cap - out.iter().sum::<u64>();
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| exact[b].1.cmp(&exact[a].1).then(a.cmp(&b)));
    for i in order {
        if left == 0 {
            break;
        }
        out[i] += 1;
        left -= 1;
    }
    out
}

/// Smooth weighted round-robin (the nginx/LVS-style interleaving): weights 3 and 1 give
/// A A B A, never A A A B, so each real's share holds over any short window.
fn smooth_wrr(reals: &[Candidate]) -> Vec<u32> {
    let w = table_weights(reals);
    let total: i64 = w.iter().map(|&x| x as i64).sum();
    let mut current = vec![0i64; reals.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..reals.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(reals[best].id);
    }
    out
}

fn hash_addr(addr: u32, seed: u32) -> u64 {
    // FNV-1a over the address bytes and a seed: stable across runs and platforms, which a
    // consistent-hash table needs (a real keeps its slots when others come and go).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in addr.to_ne_bytes().into_iter().chain(seed.to_le_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Maglev population (Eisenbud et al., NSDI '16) with weights: in each round a real takes as
/// many turns as its reduced weight.
fn maglev(reals: &[Candidate], m: usize) -> Vec<u32> {
    let w = table_weights(reals);
    let perms: Vec<(usize, usize)> = reals
        .iter()
        .map(|r| {
            let offset = (hash_addr(r.addr, 0) % m as u64) as usize;
            let skip = (hash_addr(r.addr, 1) % (m as u64 - 1) + 1) as usize;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0usize; reals.len()];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    while filled < m {
        for (i, &(offset, skip)) in perms.iter().enumerate() {
            for _ in 0..w[i] {
                let mut c = (offset + next[i] * skip) % m;
                while table[c] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c] = reals[i].id;
                next[i] += 1;
                filled += 1;
                if filled == m {
                    return table;
                }
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: u32, weight: u32) -> Candidate {
        Candidate {
            id,
            addr: 0x0a00_0000 + id,
            weight,
        }
    }

    fn load(id: u32, weight: u32, active: u32, inactive: u32) -> Load {
        Load {
            id,
            weight,
            active,
            inactive,
            overloaded: false,
        }
    }

    #[test]
    fn least_connection_family_follows_ipvs() {
        // wlc: 10 active on each of two reals, a new one with none takes the next connections.
        let three = [load(1, 1, 10, 0), load(2, 1, 10, 0), load(3, 1, 0, 0)];
        assert_eq!(least(Scheduler::Wlc, &three), Some(3));
        // An active connection weighs 256 inactive ones (ip_vs_dest_conn_overhead).
        let two = [load(1, 1, 1, 0), load(2, 1, 0, 255)];
        assert_eq!(least(Scheduler::Lc, &two), Some(2));
        let two = [load(1, 1, 1, 0), load(2, 1, 0, 256)];
        assert_eq!(least(Scheduler::Lc, &two), Some(1), "first of equals");
        // wlc divides by the weight; lc does not.
        let w = [load(1, 1, 2, 0), load(2, 3, 4, 0)];
        assert_eq!(least(Scheduler::Wlc, &w), Some(2));
        assert_eq!(least(Scheduler::Lc, &w), Some(1));
        // sed counts only active ones, plus the one to come: (1+1)/1 vs (2+1)/2.
        let sed = [load(1, 1, 1, 0), load(2, 2, 2, 500)];
        assert_eq!(least(Scheduler::Sed, &sed), Some(2));
        assert_eq!(least(Scheduler::Wlc, &sed), Some(1));
        // nq: an idle real first, even a light one.
        let nq = [load(1, 100, 1, 0), load(2, 1, 0, 9)];
        assert_eq!(least(Scheduler::Nq, &nq), Some(2));
        assert_eq!(least(Scheduler::Sed, &nq), Some(1));
        // Quiescent and overloaded reals get nothing; nobody left is no pick.
        let mut o = load(1, 1, 0, 0);
        o.overloaded = true;
        assert_eq!(least(Scheduler::Wlc, &[o, load(2, 0, 0, 0)]), None);
        assert_eq!(least(Scheduler::Wlc, &[o, load(2, 1, 99, 0)]), Some(2));
    }

    #[test]
    fn overload_has_ipvs_hysteresis() {
        use lb_common::overloaded;
        // Upper 10, lower 0: over from 10 on, back below 7.5.
        assert!(!overloaded(false, 9, 10, 0));
        assert!(overloaded(false, 10, 10, 0));
        assert!(overloaded(true, 8, 10, 0));
        assert!(!overloaded(true, 7, 10, 0));
        // Upper 10, lower 4: back below 4 only.
        assert!(overloaded(true, 4, 10, 4));
        assert!(!overloaded(true, 3, 10, 4));
        // No upper threshold: never.
        assert!(!overloaded(true, 1_000, 0, 0));
    }

    #[test]
    fn least_connection_tables_list_the_live_reals() {
        for s in [Scheduler::Lc, Scheduler::Wlc, Scheduler::Sed, Scheduler::Nq] {
            assert_eq!(
                build(s, &[c(4, 5), c(2, 0), c(9, 1)]),
                vec![9, 4],
                "newest first"
            );
        }
        assert_eq!(Scheduler::DEFAULT, Scheduler::Wlc);
        for s in Scheduler::ALL {
            assert_eq!(s.name().parse::<Scheduler>(), Ok(s));
            assert_eq!(Scheduler::from_raw(s.to_raw()), Some(s));
        }
        assert!("lblc".parse::<Scheduler>().unwrap_err().contains("wlc"));
    }

    #[test]
    fn wrr_three_to_one_interleaves() {
        let t = build(Scheduler::Wrr, &[c(7, 3), c(9, 1)]);
        assert_eq!(t, vec![7, 7, 9, 7]);
    }

    #[test]
    fn wrr_reduces_by_gcd_and_skips_quiescent() {
        let t = build(Scheduler::Wrr, &[c(1, 300), c(2, 0), c(3, 200)]);
        assert_eq!(t.len(), 5);
        assert_eq!(t.iter().filter(|&&x| x == 1).count(), 3);
        assert!(!t.contains(&2));
        // never two of the lighter real in a row within one cycle
        assert_eq!(t, vec![1, 3, 1, 3, 1]);
    }

    #[test]
    fn rr_ignores_weights_but_not_quiescence() {
        assert_eq!(
            build(Scheduler::Rr, &[c(1, 5), c(2, 0), c(3, 1)]),
            vec![1, 3]
        );
    }

    #[test]
    fn all_quiescent_is_empty() {
        assert!(build(Scheduler::Wrr, &[c(1, 0), c(2, 0)]).is_empty());
        assert!(build(Scheduler::Mh, &[]).is_empty());
    }

    #[test]
    fn huge_weights_scale_proportionally() {
        let t = build(
            Scheduler::Wrr,
            &[c(1, 2_147_483_647), c(2, 1_000_000_000), c(3, 1)],
        );
        assert_eq!(t.len(), SCHED_SLOTS);
        let n1 = t.iter().filter(|&&x| x == 1).count() as f64;
        let n2 = t.iter().filter(|&&x| x == 2).count() as f64;
        assert!((n1 / n2 - 2.147).abs() < 0.01, "{n1} {n2}");
        assert_eq!(t.iter().filter(|&&x| x == 3).count(), 1);
    }

    #[test]
    fn maglev_is_full_balanced_and_stable() {
        let reals: Vec<_> = (1..=4).map(|i| c(i, 1)).collect();
        let t = build(Scheduler::Mh, &reals);
        assert_eq!(t.len(), MH_TABLE_LEN as usize);
        for i in 1..=4 {
            let n = t.iter().filter(|&&x| x == i).count();
            assert!((250..=261).contains(&n), "real {i}: {n} slots");
        }
        // Removing one real moves mostly its own slots.
        let t2 = build(Scheduler::Mh, &reals[..3]);
        let moved = t
            .iter()
            .zip(&t2)
            .filter(|(a, b)| a != b && **a != 4)
            .count();
        assert!(
            moved < MH_TABLE_LEN as usize / 10,
            "{moved} slots of surviving reals moved"
        );
    }
}
