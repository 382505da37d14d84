//! The model's choice of a real for a new connection: the service (exact port, else a
//! persistent port-0 service), admission (the VIP's allow-list, this CPU's flood detector), the
//! client's persistence template, then the service's table: rr/wrr by this CPU's cursor, mh by
//! the source hash, every table by the flow hash in flood mode, and lc/wlc/sed/nq by the live
//! counts over the reals the table lists. A real at its upper threshold takes nothing new.
use super::{Model, NS};
use lb_common::{
    ALLOW_DENY, ConnKey, LIMITS_F_ALLOW, MAX_SERVICES, Persist, PersistKey, REAL_F_IN_USE, Real,
    Reason, SCHED_LC, SCHED_MH, SCHED_NQ, SCHED_SED, SCHED_SLOTS, SVC_F_THRESHOLDS, Service,
    ServiceKey, flow_hash, mh_hash,
};

type Pick = Result<(u32, Real), Reason>;

impl Model {
    pub(crate) fn lookup_service(&self, addr: u32, port: u16, proto: u8) -> Option<Service> {
        let mut key = ServiceKey {
            addr,
            port,
            proto,
            _pad: 0,
        };
        if let Some(s) = self.cfg.services.get(&key) {
            return Some(*s);
        }
        key.port = 0;
        self.cfg
            .services
            .get(&key)
            .filter(|s| s.persist_timeout > 0)
            .copied()
    }

    /// `Err(())` when the VIP's allow-list refuses the source; else whether this CPU floods.
    pub(crate) fn admit(&mut self, vip: u32, saddr: u32, now: u64) -> Result<bool, ()> {
        let l = self.cfg.limits;
        if l.flags & LIMITS_F_ALLOW != 0 && self.allow_lookup(vip, saddr) == Some(ALLOW_DENY) {
            return Err(());
        }
        Ok(l.flood_rate > 0 && self.flooding(l.flood_rate, now))
    }

    /// Longest-prefix match over the 64 bits of VIP then source (both in wire order).
    fn allow_lookup(&self, vip: u32, saddr: u32) -> Option<u32> {
        let bits = |k: &lb_common::AllowKey| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&k.vip.to_ne_bytes());
            b[4..].copy_from_slice(&k.saddr.to_ne_bytes());
            u64::from_be_bytes(b)
        };
        let want = bits(&lb_common::AllowKey { vip, saddr });
        self.cfg
            .allow
            .iter()
            .filter(|(len, k, _)| *len == 0 || (want ^ bits(k)) >> (64 - (*len).min(64)) == 0)
            .max_by_key(|(len, _, _)| *len)
            .map(|&(_, _, v)| v)
    }

    fn flooding(&mut self, rate: u32, now: u64) -> bool {
        let st = &mut self.st.flood;
        if now.wrapping_sub(st.window_ns) >= NS {
            if st.flooding != 0 && st.new_flows <= rate {
                st.flooding = 0;
            }
            st.window_ns = now;
            st.new_flows = 0;
        }
        st.new_flows += 1;
        if st.flooding == 0 && st.new_flows > rate {
            st.flooding = 1;
            st.since_ns = now;
            st.trips += 1;
        }
        st.flooding != 0
    }

    /// The real for a new connection, and the event to count for it.
    pub(crate) fn pick(
        &mut self,
        key: &ConnKey,
        svc: &Service,
        now: u64,
        event: Reason,
        flooding: bool,
    ) -> Result<(u32, Real, Reason), Reason> {
        if svc.persist_timeout == 0 {
            let (id, real) = self.schedule(key, svc, flooding)?;
            return Ok((id, real, event));
        }
        let pk = PersistKey {
            service_id: svc.id,
            saddr: key.saddr,
        };
        self.touched.persist.insert(pk);
        if let Some((id, real)) = self.persisted(&pk, svc, now) {
            return Ok((id, real, Reason::Persisted));
        }
        let (id, real) = self.schedule(key, svc, flooding)?;
        self.st.persist.insert(
            pk,
            Persist {
                real_id: id,
                real_gen: real.generation,
                last_seen_ns: now,
            },
        );
        Ok((id, real, event))
    }

    /// The real of the client's live template; one whose real went or was quiesced is ignored.
    fn persisted(&mut self, pk: &PersistKey, svc: &Service, now: u64) -> Option<(u32, Real)> {
        let t = *self.st.persist.get(pk)?;
        if now.wrapping_sub(t.last_seen_ns) > svc.persist_timeout as u64 * NS {
            return None;
        }
        let real = self.real_valid(t.real_id, t.real_gen, svc.id)?;
        if real.weight == 0 {
            return None;
        }
        self.st.persist.get_mut(pk)?.last_seen_ns = now;
        Some((t.real_id, real))
    }

    fn schedule(&mut self, key: &ConnKey, svc: &Service, flooding: bool) -> Pick {
        let idx = svc.id * 2 + (svc.table & 1);
        let table = self.table(idx).ok_or(Reason::NoRealUnreach)?;
        let len = table.len;
        if len == 0 || len as usize > SCHED_SLOTS {
            return Err(Reason::NoRealUnreach);
        }
        if svc.sched >= SCHED_LC && !flooding {
            return self.least(svc, idx, len);
        }
        let slot = if svc.sched == SCHED_MH {
            mh_hash(key.saddr) % len
        } else if flooding {
            flow_hash(key) % len
        } else {
            if svc.id >= MAX_SERVICES {
                return Err(Reason::NoRealUnreach);
            }
            self.touched.services.insert(svc.id);
            let cursor = self.st.cursors.entry(svc.id).or_default();
            let c = *cursor % len;
            *cursor = if c + 1 >= len { 0 } else { c + 1 };
            // This CPU (0) starts its walk at the table's start.
            c
        };
        let real_id = table.slots[slot as usize & (SCHED_SLOTS - 1)];
        let real = self.real(real_id).ok_or(Reason::NoRealUnreach)?;
        if real.flags & REAL_F_IN_USE == 0 || real.service_id != svc.id {
            return Err(Reason::NoRealUnreach);
        }
        if svc.flags & SVC_F_THRESHOLDS != 0 && matches!(self.load(real_id), Some((_, _, true))) {
            // The next slot whose real takes connections.
            for i in 0..len - 1 {
                let s = (slot + 1 + i) % len;
                if let Some((id, real)) = self.candidate(svc, idx, s)
                    && matches!(self.load(id), Some((_, _, false)))
                {
                    return Ok((id, real));
                }
            }
            return Err(Reason::NoRealUnreach);
        }
        Ok((real_id, real))
    }

    /// The real in slot `i` of a table, if it can take a connection at all.
    fn candidate(&self, svc: &Service, idx: u32, i: u32) -> Option<(u32, Real)> {
        let id = self.table(idx)?.slots[i as usize & (SCHED_SLOTS - 1)];
        let real = self.real(id)?;
        (real.flags & REAL_F_IN_USE != 0 && real.service_id == svc.id && real.weight != 0)
            .then_some((id, real))
    }

    /// IPVS's lc, wlc, sed and nq over the listed reals: the first of equals wins.
    fn least(&mut self, svc: &Service, idx: u32, len: u32) -> Pick {
        let mut best: Option<(u32, u64, u64)> = None;
        for i in 0..len {
            let Some((id, real)) = self.candidate(svc, idx, i) else {
                continue;
            };
            let Some((active, inactive, over)) = self.load(id) else {
                continue;
            };
            if over {
                continue;
            }
            let weight = real.weight as u64;
            if svc.sched == SCHED_NQ && active == 0 {
                best = Some((id, weight, 0));
                break;
            }
            let overhead = if svc.sched == SCHED_SED || svc.sched == SCHED_NQ {
                active + 1
            } else {
                (active << 8) + inactive
            };
            let better = match best {
                None => true,
                Some((_, bw, bo)) if svc.sched == SCHED_LC => {
                    let _ = bw;
                    overhead < bo
                }
                Some((_, bw, bo)) => overhead.wrapping_mul(bw) < bo.wrapping_mul(weight),
            };
            if better {
                best = Some((id, weight, overhead));
            }
        }
        let (id, _, _) = best.ok_or(Reason::NoRealUnreach)?;
        Ok((id, self.real(id).ok_or(Reason::NoRealUnreach)?))
    }
}
