//! Scheduling tables: userspace precomputes, for each service, the sequence of real ids that new
//! connections walk through (`rr`, `wrr`) or index by source hash (`mh`). The data path only
//! reads a slot, so every policy decision lives here, where it can be tested.

use lb_common::{MH_TABLE_LEN, SCHED_MH, SCHED_RR, SCHED_SLOTS, SCHED_WRR};
use std::{fmt, str::FromStr};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Mh,
}

impl Scheduler {
    /// The scheduler a service gets when none is named (`-A` without `-s`, a daemon service
    /// without `scheduler`). ipvsadm's default, `wlc`, needs live connection counts in the
    /// data path; `wrr` honours the weights the same way for equal-cost connections.
    pub const DEFAULT: Scheduler = Scheduler::Wrr;

    pub const fn to_raw(self) -> u8 {
        match self {
            Scheduler::Rr => SCHED_RR,
            Scheduler::Wrr => SCHED_WRR,
            Scheduler::Mh => SCHED_MH,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            SCHED_RR => Some(Scheduler::Rr),
            SCHED_WRR => Some(Scheduler::Wrr),
            SCHED_MH => Some(Scheduler::Mh),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Mh => "mh",
        }
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
        match s {
            "rr" => Ok(Scheduler::Rr),
            "wrr" => Ok(Scheduler::Wrr),
            "mh" => Ok(Scheduler::Mh),
            other => Err(format!(
                "unknown scheduler `{other}` (this director has rr, wrr, mh)"
            )),
        }
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
        Scheduler::Wrr => smooth_wrr(&live),
        Scheduler::Mh => maglev(&live, MH_TABLE_LEN as usize),
    }
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
