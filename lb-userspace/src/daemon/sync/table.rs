//! Between this director's maps and the wire: slot numbers are each director's own, so an entry
//! leaves as addresses (client, VIP, port, protocol, real) and is installed under the slots the
//! receiving director gave the same service and real. A peer's entry whose service or real this
//! director does not have is refused, as the data path would re-schedule such a connection of
//! its own; one whose real is here at weight 0 is installed (quiesced reals keep their
//! connections here too).

use super::wire::{Entry, F_PERSIST, F_TEMPLATE};
use crate::director::{Maps, MapsError, conntrack::now_ns};
use lb_common::{
    CONN_CLOSE, CONN_F_PERSIST, CONN_SYN_RECV, CONN_UDP, Conn, ConnKey, IPPROTO_TCP, IPPROTO_UDP,
    Persist, PersistKey, SYNC_F_TEMPLATE, ServiceKey, SyncEvent, conn_timeout_secs, ip_be,
};
use std::{collections::HashMap, net::Ipv4Addr};

const NS_PER_MS: u64 = 1_000_000;

struct ServiceView {
    slot: u32,
    persist_timeout: u32,
    /// Real address → (slot, generation).
    reals: HashMap<Ipv4Addr, (u32, u32)>,
}

/// This director's services and reals, both ways, as of when it was built.
#[derive(Default)]
pub struct Directory {
    keys: HashMap<u32, ServiceKey>,
    reals: HashMap<u32, (Ipv4Addr, u32)>,
    services: HashMap<ServiceKey, ServiceView>,
}

/// Why a peer's entry was not installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a TCP/UDP connection in a known state.
    Invalid,
    UnknownService,
    UnknownReal,
    /// This director's own entry is more recent.
    Older,
}

impl Refused {
    pub fn name(self) -> &'static str {
        match self {
            Refused::Invalid => "invalid_entry",
            Refused::UnknownService => "unknown_service",
            Refused::UnknownReal => "unknown_real",
            Refused::Older => "older",
        }
    }
}

fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

impl Directory {
    pub fn build(maps: &Maps) -> Result<Directory, MapsError> {
        let all = maps.all_reals()?;
        let mut d = Directory::default();
        for s in maps.read()? {
            let key = s.spec.id.key();
            d.keys.insert(s.slot, key);
            let mut reals = HashMap::new();
            for (r, &slot) in s.spec.reals.iter().zip(&s.real_slots) {
                let generation = all[slot as usize].generation;
                reals.insert(r.addr, (slot, generation));
                d.reals.insert(slot, (r.addr, generation));
            }
            d.services.insert(
                key,
                ServiceView {
                    slot: s.slot,
                    persist_timeout: s.spec.persistence,
                    reals,
                },
            );
        }
        Ok(d)
    }

    /// The real in `slot` if it is still the occupant of that generation.
    fn real(&self, slot: u32, generation: u32) -> Option<Ipv4Addr> {
        self.reals
            .get(&slot)
            .filter(|(_, g)| *g == generation)
            .map(|(a, _)| *a)
    }

    /// A data-path event as it leaves; None when it names a real or service that has gone.
    pub fn from_event(&self, ev: &SyncEvent, now: u64) -> Option<Entry> {
        let c = &ev.conn;
        let real = self.real(c.real_id, c.real_gen)?;
        let age_ms = (now.saturating_sub(c.last_seen_ns) / NS_PER_MS) as u32;
        if c.flags & SYNC_F_TEMPLATE != 0 {
            return self.template(c.service_id, ev.key.saddr, real, age_ms);
        }
        Some(connection(&ev.key, real, c.state, c.flags, age_ms))
    }

    fn template(&self, service: u32, client: u32, real: Ipv4Addr, age_ms: u32) -> Option<Entry> {
        let k = self.keys.get(&service)?;
        Some(Entry {
            client: addr(client),
            vip: addr(k.addr),
            real,
            client_port: 0,
            vport: u16::from_be(k.port),
            proto: k.proto,
            state: 0,
            flags: F_TEMPLATE,
            age_ms,
        })
    }

    /// Every live connection and template of the maps last seen after `since` (monotonic ns;
    /// 0 for all of them).
    pub fn scan(&self, maps: &Maps, since: u64) -> Vec<Entry> {
        let now = now_ns();
        let mut out = Vec::new();
        for (k, c) in maps.conns.iter().flatten() {
            let age = now.saturating_sub(c.last_seen_ns);
            if c.last_seen_ns <= since || age > conn_timeout_secs(c.state) * 1_000_000_000 {
                continue;
            }
            if let Some(real) = self.real(c.real_id, c.real_gen) {
                out.push(connection(
                    &k,
                    real,
                    c.state,
                    c.flags,
                    (age / NS_PER_MS) as u32,
                ));
            }
        }
        for (k, t) in maps.persist.iter().flatten() {
            let Some(svc) = self
                .keys
                .get(&k.service_id)
                .and_then(|k| self.services.get(k))
            else {
                continue;
            };
            let age = now.saturating_sub(t.last_seen_ns);
            if t.last_seen_ns <= since || age > u64::from(svc.persist_timeout) * 1_000_000_000 {
                continue;
            }
            if let Some(real) = self.real(t.real_id, t.real_gen)
                && let Some(e) =
                    self.template(k.service_id, k.saddr, real, (age / NS_PER_MS) as u32)
            {
                out.push(e);
            }
        }
        out
    }

    /// Installs a peer's entry into the maps, under this director's slots.
    pub fn install(&self, maps: &mut Maps, e: &Entry) -> Result<(), Refused> {
        if !matches!(e.proto, IPPROTO_TCP | IPPROTO_UDP) {
            return Err(Refused::Invalid);
        }
        let mut key = ServiceKey {
            addr: ip_be(e.vip.octets()),
            port: e.vport.to_be(),
            proto: e.proto,
            _pad: 0,
        };
        let svc = match self.services.get(&key) {
            Some(s) => s,
            None => {
                // A connection to any port of a port-0 persistent service.
                key.port = 0;
                self.services
                    .get(&key)
                    .filter(|s| s.persist_timeout > 0 && e.flags & F_TEMPLATE == 0)
                    .ok_or(Refused::UnknownService)?
            }
        };
        let &(real_id, real_gen) = svc.reals.get(&e.real).ok_or(Refused::UnknownReal)?;
        let last_seen_ns = now_ns().saturating_sub(u64::from(e.age_ms) * NS_PER_MS);
        if e.flags & F_TEMPLATE != 0 {
            let k = PersistKey {
                service_id: svc.slot,
                saddr: ip_be(e.client.octets()),
            };
            if maps
                .persist
                .get(&k, 0)
                .is_ok_and(|t| t.last_seen_ns > last_seen_ns)
            {
                return Err(Refused::Older);
            }
            let t = Persist {
                real_id,
                real_gen,
                last_seen_ns,
            };
            return maps.persist.insert(k, t, 0).map_err(|_| Refused::Invalid);
        }
        let valid = match e.proto {
            IPPROTO_TCP => (CONN_SYN_RECV..=CONN_CLOSE).contains(&e.state),
            _ => e.state == CONN_UDP,
        };
        if !valid {
            return Err(Refused::Invalid);
        }
        let k = ConnKey {
            saddr: ip_be(e.client.octets()),
            daddr: ip_be(e.vip.octets()),
            sport: e.client_port.to_be(),
            dport: e.vport.to_be(),
            proto: e.proto,
            _pad: [0; 3],
        };
        if maps
            .conns
            .get(&k, 0)
            .is_ok_and(|c| c.last_seen_ns > last_seen_ns)
        {
            return Err(Refused::Older);
        }
        let c = Conn {
            real_id,
            real_gen,
            service_id: svc.slot,
            state: e.state,
            flags: if e.flags & F_PERSIST != 0 {
                CONN_F_PERSIST
            } else {
                0
            },
            _pad: [0; 2],
            last_seen_ns,
        };
        maps.conns.insert(k, c, 0).map_err(|_| Refused::Invalid)
    }
}

fn connection(k: &ConnKey, real: Ipv4Addr, state: u8, flags: u8, age_ms: u32) -> Entry {
    Entry {
        client: addr(k.saddr),
        vip: addr(k.daddr),
        real,
        client_port: u16::from_be(k.sport),
        vport: u16::from_be(k.dport),
        proto: k.proto,
        state,
        flags: if flags & CONN_F_PERSIST != 0 {
            F_PERSIST
        } else {
            0
        },
        age_ms,
    }
}
