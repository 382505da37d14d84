//! Connections per real, as IPVS counts them: an ESTABLISHED entry is active, any other
//! inactive. Counted where the data path makes, changes and finds dead its own entries; the
//! entries it never sees again (evicted, or expired unseen) the daemon recounts from the tables.
//! Atomic adds on a shared array: no lock, and only new flows and state changes pay for them.
use crate::{conntrack::real_valid, maps::REAL_CONNS};
use core::intrinsics::{AtomicOrdering::Relaxed, atomic_xadd};
use lb_common::{CONN_ESTABLISHED, Conn, RealConns};

/// Adds `delta` (wrapping: `u64::MAX` is -1) to the active or inactive count of a real. The
/// BPF target has no `AtomicU64::fetch_add`; the intrinsic compiles to the atomic add
/// instruction (`lock xadd`), which every CPU may run on the same counter at once.
#[inline(always)]
fn add(real_id: u32, state: u8, delta: u64) {
    let Some(rc) = REAL_CONNS.get_ptr_mut(real_id) else {
        return;
    };
    unsafe {
        let field = if state == CONN_ESTABLISHED {
            &raw mut (*rc).active
        } else {
            &raw mut (*rc).inactive
        };
        atomic_xadd::<u64, u64, { Relaxed }>(field, delta);
    }
}

/// A new entry in `state` names real `id`.
#[inline(always)]
pub fn opened(id: u32, state: u8) {
    add(id, state, 1);
}

/// An entry of real `id` moved from state `from` to `to`.
#[inline(always)]
pub fn moved(id: u32, from: u8, to: u8) {
    if (from == CONN_ESTABLISHED) != (to == CONN_ESTABLISHED) {
        add(id, from, u64::MAX);
        add(id, to, 1);
    }
}

/// A dead entry is about to go: it leaves its real's count, if the real is still the one it
/// was counted for (a removed real's slot may already count a new occupant's connections).
#[inline(always)]
pub fn closed(conn: &Conn) {
    if real_valid(conn.real_id, conn.real_gen, conn.service_id).is_some() {
        add(conn.real_id, conn.state, u64::MAX);
    }
}

/// The real's counts, and whether it is over its threshold now (IPVS's hysteresis, evaluated
/// when a new connection is scheduled, which is the only time it matters).
#[inline(always)]
pub fn load(real_id: u32) -> Option<(u32, u32, bool)> {
    let rc = REAL_CONNS.get_ptr_mut(real_id)?;
    let rc: &mut RealConns = unsafe { &mut *rc };
    let (active, inactive) = rc.counts();
    let over = rc.overloaded_now();
    if over != (rc.overloaded != 0) {
        rc.overloaded = over as u32;
    }
    Some((active, inactive, over))
}
