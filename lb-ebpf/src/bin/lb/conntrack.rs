//! The connection tables: a flow's real, looked up before anything else, and its TCP state as
//! IPVS tracks it from the client side (tunnel mode sees only the inbound half).
//!
//! Two LRU tables, so that no flood of half-open flows can evict an established connection:
//! a new flow goes into `CONNS_NEW`, and moves to `CONNS` when it is confirmed — by the
//! client's ACK of the handshake, or, for a flow first seen without a SYN (and UDP), by a packet
//! [`CONFIRM_AFTER_NS`] after its first. A spoofed SYN, sent once or twice, never gets there.
//! Only confirmed connections are reported to the sync daemon.
use crate::{
    accounting,
    maps::{CONNS, CONNS_NEW, PERSIST, REALS, bump, report},
};
use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::warn;
use lb_common::{
    CONFIRM_AFTER_NS, CONN_CLOSE, CONN_ESTABLISHED, CONN_F_PERSIST, CONN_FIN_WAIT, CONN_SYN_RECV,
    CONN_UDP, Conn, ConnKey, IPPROTO_TCP, PersistKey, REAL_F_IN_USE, Real, Reason, SyncEvent,
    conn_timeout_secs,
};
use lb_ebpf::hdr::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

pub const NS_PER_SEC: u64 = 1_000_000_000;
/// `last_seen` is rewritten only when it is this stale: a write per packet would bounce the
/// entry's cache line between CPUs for nothing (timeouts are whole seconds).
const LAST_SEEN_SLACK_NS: u64 = NS_PER_SEC / 4;

/// The state a TCP packet from the client moves its connection to (IPVS's input-only view).
#[inline(always)]
pub fn next_state(proto: u8, flags: u8, cur: u8) -> u8 {
    if proto != IPPROTO_TCP {
        return CONN_UDP;
    }
    if flags & TCP_RST != 0 {
        CONN_CLOSE
    } else if flags & TCP_FIN != 0 {
        CONN_FIN_WAIT
    } else if flags & TCP_SYN != 0 && flags & TCP_ACK == 0 {
        CONN_SYN_RECV
    } else if cur == CONN_SYN_RECV || cur == CONN_ESTABLISHED || cur == 0 {
        CONN_ESTABLISHED
    } else {
        // After FIN or RST, trailing ACKs do not re-open the connection.
        cur
    }
}

/// The real in slot `id` if it is still the occupant an entry recorded (same generation) and
/// still belongs to the service.
#[inline(always)]
pub fn real_valid(id: u32, gen_: u32, svc_id: u32) -> Option<Real> {
    let r = REALS.get(id)?;
    if r.flags & REAL_F_IN_USE != 0 && r.generation == gen_ && r.service_id == svc_id {
        Some(*r)
    } else {
        None
    }
}

/// The real of a live connection entry. Otherwise says why there is none: `NewConn`,
/// `NonSynMiss` (no entry for a mid-stream packet) or `Rescheduled` (its real was removed).
#[inline(always)]
pub fn established(key: &ConnKey, flags: u8, now: u64) -> Result<(u32, Real), Reason> {
    let tcp = key.proto == IPPROTO_TCP;
    let syn = tcp && flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    let mut miss = if tcp && !syn {
        Reason::NonSynMiss
    } else {
        Reason::NewConn
    };
    if let Some(c) = CONNS.get_ptr_mut(key) {
        match confirmed(key, unsafe { &mut *c }, flags, syn, now) {
            Ok(found) => return Ok(found),
            // A dead entry (expired, its real gone, its tuple reused by a new connection) goes:
            // the flow's next entry is made in CONNS_NEW, and this one would shadow it.
            Err(reason) => {
                accounting::closed(unsafe { &*c });
                let _ = CONNS.remove(key);
                miss = reason;
            }
        }
    }
    let Some(c) = CONNS_NEW.get_ptr_mut(key) else {
        return Err(miss);
    };
    let found = unconfirmed(key, unsafe { &mut *c }, flags, syn, now, miss);
    if found.is_err() {
        // Removed rather than left for `record` to overwrite: a flow that is not recorded
        // again (an RST, a SYN in flood mode) would find it, and count it out, a second time.
        accounting::closed(unsafe { &*c });
        let _ = CONNS_NEW.remove(key);
    }
    found
}

/// A packet of an established connection: its state and `last_seen` move on.
#[inline(always)]
fn confirmed(
    key: &ConnKey,
    conn: &mut Conn,
    flags: u8,
    syn: bool,
    now: u64,
) -> Result<(u32, Real), Reason> {
    let age = now.wrapping_sub(conn.last_seen_ns);
    if age > conn_timeout_secs(conn.state) * NS_PER_SEC {
        return Err(if syn {
            Reason::NewConn
        } else {
            Reason::NonSynMiss
        });
    }
    // A SYN on a connection past its handshake opens a new connection on a reused tuple
    // (IPVS's conn_reuse_mode): schedule it afresh. (A peer's sync may bring a SYN_RECV entry:
    // a retransmitted SYN keeps its real.)
    if syn && conn.state != CONN_SYN_RECV {
        return Err(Reason::NewConn);
    }
    let real =
        real_valid(conn.real_id, conn.real_gen, conn.service_id).ok_or(Reason::Rescheduled)?;
    let state = next_state(key.proto, flags, conn.state);
    if state != conn.state || age > LAST_SEEN_SLACK_NS {
        let changed = state != conn.state;
        accounting::moved(conn.real_id, conn.state, state);
        conn.state = state;
        conn.last_seen_ns = now;
        if changed {
            report(event(key, conn, now));
        }
        refresh_template(key, conn, now);
    }
    Ok((conn.real_id, real))
}

/// A packet of a connection not confirmed yet. Its `last_seen_ns` stays the time of its first
/// packet (a half-open flow expires by then, however often it is repeated); the packet that
/// confirms it moves it to `CONNS`.
#[inline(always)]
fn unconfirmed(
    key: &ConnKey,
    conn: &mut Conn,
    flags: u8,
    syn: bool,
    now: u64,
    miss: Reason,
) -> Result<(u32, Real), Reason> {
    let age = now.wrapping_sub(conn.last_seen_ns);
    if age > conn_timeout_secs(conn.state) * NS_PER_SEC {
        return Err(miss);
    }
    // A retransmitted SYN keeps its real; a SYN on a flow that began without one is a new
    // connection on the tuple.
    if syn && conn.state != CONN_SYN_RECV {
        return Err(Reason::NewConn);
    }
    let id = conn.real_id;
    let real = real_valid(id, conn.real_gen, conn.service_id).ok_or(Reason::Rescheduled)?;
    let proves = if conn.state == CONN_SYN_RECV {
        !syn && flags & TCP_ACK != 0 && flags & TCP_RST == 0
    } else {
        age >= CONFIRM_AFTER_NS
    };
    if proves {
        let c = Conn {
            state: next_state(key.proto, flags, conn.state),
            last_seen_ns: now,
            ..*conn
        };
        // `conn` is not read after the remove: its element may be reused at once.
        let from = conn.state;
        if CONNS.insert(key, &c, 0).is_ok() {
            let _ = CONNS_NEW.remove(key);
            accounting::moved(id, from, c.state);
            bump(Reason::Confirmed);
            report(event(key, &c, now));
        } else {
            bump(Reason::ConnInsertFail);
        }
        refresh_template(key, &c, now);
    } else if flags & TCP_RST != 0 {
        // The client gave up: its entry expires in CLOSE's 10 s, counted from its first packet.
        accounting::moved(id, conn.state, CONN_CLOSE);
        conn.state = CONN_CLOSE;
    }
    Ok((id, real))
}

/// A connection's packets keep its client's persistence template alive.
#[inline(always)]
fn refresh_template(key: &ConnKey, conn: &Conn, now: u64) {
    if conn.flags & CONN_F_PERSIST != 0 {
        let pk = PersistKey {
            service_id: conn.service_id,
            saddr: key.saddr,
        };
        if let Some(t) = PERSIST.get_ptr_mut(&pk) {
            unsafe { (*t).last_seen_ns = now };
        }
    }
}

/// Records a newly scheduled connection as unconfirmed. Katran's lesson: an RST needs no
/// state, and inserting on it lets a scan fill the table. In flood mode a SYN is not recorded
/// either: its real follows from the flow hash, and its handshake's ACK is recorded instead,
/// as a flow picked up mid-stream.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn record(
    ctx: &XdpContext,
    key: &ConnKey,
    flags: u8,
    real_id: u32,
    real: &Real,
    svc_id: u32,
    persistent: bool,
    flooding: bool,
    now: u64,
) {
    if flags & TCP_RST != 0 {
        return;
    }
    let state = next_state(key.proto, flags, 0);
    if flooding && state == CONN_SYN_RECV {
        bump(Reason::FloodNotRecorded);
        return;
    }
    let conn = Conn {
        real_id,
        real_gen: real.generation,
        service_id: svc_id,
        state,
        flags: if persistent { CONN_F_PERSIST } else { 0 },
        _pad: [0; 2],
        last_seen_ns: now,
    };
    if CONNS_NEW.insert(key, &conn, 0).is_ok() {
        accounting::opened(real_id, state);
    } else {
        bump(Reason::ConnInsertFail);
        warn!(
            ctx,
            "connection table insert failed for {:i}:{}",
            u32::from_be(key.saddr),
            u16::from_be(key.sport)
        );
    }
}

/// The sync event of a connection entry (its state as it is now).
#[inline(always)]
fn event(key: &ConnKey, c: &Conn, now: u64) -> SyncEvent {
    SyncEvent {
        key: *key,
        conn: Conn {
            last_seen_ns: now,
            ..*c
        },
    }
}
