//! The model's connection tables and per-real counts.
//!
//! Rules (IPVS's input-only TCP view, two tables): a flow's entry is made unconfirmed; a
//! SYN_RECV entry is confirmed by the client's ACK, any other by a packet a second or more after
//! its first; confirmed entries refresh `last_seen` when their state changes or it is more than
//! a quarter second old; an entry past its state's timeout, whose real is no longer the one it
//! recorded, or (past the handshake) hit by a new SYN, is dead: it leaves its real's count and
//! its table. An ESTABLISHED entry counts as active, any other as inactive.
use super::{Model, NS, timeout_ns};
use lb_common::{
    CONN_CLOSE, CONN_ESTABLISHED, CONN_F_PERSIST, CONN_FIN_WAIT, CONN_SYN_RECV, CONN_UDP, Conn,
    ConnKey, IPPROTO_TCP, MAX_REALS, PersistKey, REAL_F_IN_USE, Real, RealConns, Reason,
};

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const SLACK_NS: u64 = NS / 4;
const CONFIRM_AFTER_NS: u64 = NS;

/// The state a client's packet moves its connection to.
pub fn next_state(proto: u8, flags: u8, cur: u8) -> u8 {
    if proto != IPPROTO_TCP {
        CONN_UDP
    } else if flags & RST != 0 {
        CONN_CLOSE
    } else if flags & FIN != 0 {
        CONN_FIN_WAIT
    } else if flags & SYN != 0 && flags & ACK == 0 {
        CONN_SYN_RECV
    } else if matches!(cur, 0 | CONN_SYN_RECV | CONN_ESTABLISHED) {
        CONN_ESTABLISHED
    } else {
        cur
    }
}

/// IPVS's threshold hysteresis.
pub fn overloaded(was: bool, total: u64, upper: u32, lower: u32) -> bool {
    if upper == 0 {
        false
    } else if total >= upper as u64 {
        true
    } else if !was {
        false
    } else if lower != 0 {
        total >= lower as u64
    } else {
        total * 4 >= upper as u64 * 3
    }
}

/// A count as the schedulers read it: signed, clamped to 0..=u32::MAX.
fn clamp(v: u64) -> u64 {
    (v as i64).clamp(0, u32::MAX as i64) as u64
}

impl Model {
    pub(crate) fn real_valid(&self, id: u32, generation: u32, svc: u32) -> Option<Real> {
        let r = self.real(id)?;
        (r.flags & REAL_F_IN_USE != 0 && r.generation == generation && r.service_id == svc)
            .then_some(r)
    }

    fn add(&mut self, id: u32, state: u8, delta: u64) {
        if id >= MAX_REALS {
            return;
        }
        self.touched.reals.insert(id);
        let rc = self.st.real_conns.entry(id).or_default();
        let field = if state == CONN_ESTABLISHED {
            &mut rc.active
        } else {
            &mut rc.inactive
        };
        *field = field.wrapping_add(delta);
    }

    fn moved(&mut self, id: u32, from: u8, to: u8) {
        if (from == CONN_ESTABLISHED) != (to == CONN_ESTABLISHED) {
            self.add(id, from, u64::MAX);
            self.add(id, to, 1);
        }
    }

    fn closed(&mut self, c: &Conn) {
        if self
            .real_valid(c.real_id, c.real_gen, c.service_id)
            .is_some()
        {
            self.add(c.real_id, c.state, u64::MAX);
        }
    }

    /// A real's counts and whether it is overloaded for the next connection (remembered).
    pub(crate) fn load(&mut self, id: u32) -> Option<(u64, u64, bool)> {
        if id >= MAX_REALS {
            return None;
        }
        self.touched.reals.insert(id);
        let rc: &mut RealConns = self.st.real_conns.entry(id).or_default();
        let (active, inactive) = (clamp(rc.active), clamp(rc.inactive));
        let over = overloaded(
            rc.overloaded != 0,
            (active + inactive).min(u32::MAX as u64),
            rc.u_threshold,
            rc.l_threshold,
        );
        if over != (rc.overloaded != 0) {
            rc.overloaded = over as u32;
        }
        Some((active, inactive, over))
    }

    /// The real of a live entry for `key`, or why there is none (the hint for scheduling).
    pub(crate) fn established(
        &mut self,
        key: &ConnKey,
        flags: u8,
        now: u64,
    ) -> Result<(u32, Real), Reason> {
        self.touched.conns.insert(*key);
        let tcp = key.proto == IPPROTO_TCP;
        let syn = tcp && flags & SYN != 0 && flags & ACK == 0;
        let mut miss = if tcp && !syn {
            Reason::NonSynMiss
        } else {
            Reason::NewConn
        };
        if let Some(c) = self.st.conns.get(key).copied() {
            match self.confirmed(key, c, flags, syn, now) {
                Ok(found) => return Ok(found),
                Err(reason) => {
                    self.closed(&c);
                    self.st.conns.remove(key);
                    miss = reason;
                }
            }
        }
        let Some(c) = self.st.conns_new.get(key).copied() else {
            return Err(miss);
        };
        let found = self.unconfirmed(key, c, flags, syn, now, miss);
        if found.is_err() {
            self.closed(&c);
            self.st.conns_new.remove(key);
        }
        found
    }

    fn confirmed(
        &mut self,
        key: &ConnKey,
        c: Conn,
        flags: u8,
        syn: bool,
        now: u64,
    ) -> Result<(u32, Real), Reason> {
        let age = now.wrapping_sub(c.last_seen_ns);
        if age > timeout_ns(c.state) {
            return Err(if syn {
                Reason::NewConn
            } else {
                Reason::NonSynMiss
            });
        }
        if syn && c.state != CONN_SYN_RECV {
            return Err(Reason::NewConn);
        }
        let real = self
            .real_valid(c.real_id, c.real_gen, c.service_id)
            .ok_or(Reason::Rescheduled)?;
        let state = next_state(key.proto, flags, c.state);
        if state != c.state || age > SLACK_NS {
            self.moved(c.real_id, c.state, state);
            let e = self.st.conns.get_mut(key).expect("entry just read");
            e.state = state;
            e.last_seen_ns = now;
            let e = *e;
            self.refresh_template(key, &e, now);
        }
        Ok((c.real_id, real))
    }

    fn unconfirmed(
        &mut self,
        key: &ConnKey,
        c: Conn,
        flags: u8,
        syn: bool,
        now: u64,
        miss: Reason,
    ) -> Result<(u32, Real), Reason> {
        let age = now.wrapping_sub(c.last_seen_ns);
        if age > timeout_ns(c.state) {
            return Err(miss);
        }
        if syn && c.state != CONN_SYN_RECV {
            return Err(Reason::NewConn);
        }
        let real = self
            .real_valid(c.real_id, c.real_gen, c.service_id)
            .ok_or(Reason::Rescheduled)?;
        let proves = if c.state == CONN_SYN_RECV {
            !syn && flags & ACK != 0 && flags & RST == 0
        } else {
            age >= CONFIRM_AFTER_NS
        };
        if proves {
            let moved = Conn {
                state: next_state(key.proto, flags, c.state),
                last_seen_ns: now,
                ..c
            };
            self.st.conns.insert(*key, moved);
            self.st.conns_new.remove(key);
            self.moved(c.real_id, c.state, moved.state);
            self.bump(Reason::Confirmed);
            self.refresh_template(key, &moved, now);
        } else if flags & RST != 0 {
            self.moved(c.real_id, c.state, CONN_CLOSE);
            self.st
                .conns_new
                .get_mut(key)
                .expect("entry just read")
                .state = CONN_CLOSE;
        }
        Ok((c.real_id, real))
    }

    fn refresh_template(&mut self, key: &ConnKey, c: &Conn, now: u64) {
        if c.flags & CONN_F_PERSIST != 0 {
            let pk = PersistKey {
                service_id: c.service_id,
                saddr: key.saddr,
            };
            self.touched.persist.insert(pk);
            if let Some(t) = self.st.persist.get_mut(&pk) {
                t.last_seen_ns = now;
            }
        }
    }

    /// A new connection's unconfirmed entry (none for an RST, nor for a SYN in flood mode).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &mut self,
        key: &ConnKey,
        flags: u8,
        real_id: u32,
        real: &Real,
        svc_id: u32,
        persistent: bool,
        flooding: bool,
        now: u64,
    ) {
        if flags & RST != 0 {
            return;
        }
        let state = next_state(key.proto, flags, 0);
        if flooding && state == CONN_SYN_RECV {
            self.bump(Reason::FloodNotRecorded);
            return;
        }
        self.st.conns_new.insert(
            *key,
            Conn {
                real_id,
                real_gen: real.generation,
                service_id: svc_id,
                state,
                flags: if persistent { CONN_F_PERSIST } else { 0 },
                _pad: [0; 2],
                last_seen_ns: now,
            },
        );
        self.add(real_id, state, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_flags_move_tcp_states_as_ipvs_input_only() {
        assert_eq!(next_state(6, SYN, 0), CONN_SYN_RECV);
        assert_eq!(next_state(6, ACK, CONN_SYN_RECV), CONN_ESTABLISHED);
        assert_eq!(next_state(6, FIN | ACK, CONN_ESTABLISHED), CONN_FIN_WAIT);
        assert_eq!(next_state(6, ACK, CONN_FIN_WAIT), CONN_FIN_WAIT);
        assert_eq!(next_state(6, SYN | RST, CONN_ESTABLISHED), CONN_CLOSE);
        assert_eq!(next_state(17, SYN, 0), CONN_UDP);
        assert_eq!(FIN | SYN, 3);
    }

    #[test]
    fn thresholds_have_hysteresis() {
        assert!(!overloaded(false, 5, 0, 0));
        assert!(overloaded(false, 10, 10, 0));
        assert!(overloaded(true, 8, 10, 0));
        assert!(!overloaded(true, 7, 10, 0));
        assert!(overloaded(true, 5, 10, 5));
        assert!(!overloaded(true, 4, 10, 5));
        assert!(!overloaded(false, 9, 10, 5));
    }
}
