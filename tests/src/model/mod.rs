//! A reference model of the director's decision on one frame, in plain Rust: parsing, the
//! service lookup, the two connection tables, persistence, the schedulers, admission (allow-lists,
//! flood mode), encapsulation, the ICMP answers and the peer decapsulation, with every map the
//! data path writes (connection tables, templates, per-real counts, cursors, flood state,
//! counters). Written from the data path's rules, not from its code: the differential fuzzer
//! (`crate::fuzz`) runs the same frames through the compiled object and compares the two.
//!
//! The model reads its configuration as the data path does, from what userspace wrote into the
//! maps ([`Config`]); its own state ([`State`]) is what the data path writes. Time is an input:
//! `now` is the packet's coarse monotonic clock.

mod conntrack;
mod schedule;
pub mod wire;

use lb_common::{
    AllowKey, Conn, ConnKey, Counters, FloodState, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, Limits,
    MAX_REALS, MAX_SERVICES, Persist, PersistKey, REAL_F_LOCAL, REASON_SLOTS, Real, RealConns,
    Reason, SchedTable, Service, ServiceKey, vip_filter_bit,
};
use std::collections::{HashMap, HashSet};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

const NS: u64 = 1_000_000_000;

/// What userspace configured: the data path only reads these maps.
#[derive(Clone, Debug, Default)]
pub struct Config {
    pub services: HashMap<ServiceKey, Service>,
    /// Real slots that are not all zero.
    pub reals: HashMap<u32, Real>,
    /// Scheduling tables by index (`service id * 2 + live half`).
    pub tables: HashMap<u32, SchedTable>,
    pub vip_filter: Vec<u64>,
    pub limits: Limits,
    /// The allow trie: (prefix length over the 64-bit key, key, value).
    pub allow: Vec<(u32, AllowKey, u32)>,
    pub tunnel_src: u32,
    pub nr_cpus: u32,
    pub peers: HashSet<u32>,
}

/// How the host routes to an address (what `bpf_fib_lookup` answers in the namespace).
#[derive(Clone, Debug, Default)]
pub struct Routes {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Reachable addresses (wire order): the next hop, and its MAC when the neighbour is known.
    pub hops: HashMap<u32, (u32, Option<[u8; 6]>)>,
}

/// What the data path writes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub conns: HashMap<ConnKey, Conn>,
    pub conns_new: HashMap<ConnKey, Conn>,
    pub persist: HashMap<PersistKey, Persist>,
    /// Per-real counts and thresholds; a missing slot is all zero.
    pub real_conns: HashMap<u32, RealConns>,
    /// This CPU's round-robin cursor per service id.
    pub cursors: HashMap<u32, u32>,
    pub flood: FloodState,
    pub reasons: Vec<u64>,
    pub svc_stats: HashMap<u32, Counters>,
    pub real_stats: HashMap<u32, Counters>,
}

/// The entries one step looked at or wrote: the fuzzer compares exactly these after a packet
/// (and everything, every few hundred packets).
#[derive(Clone, Debug, Default)]
pub struct Touched {
    pub conns: HashSet<ConnKey>,
    pub persist: HashSet<PersistKey>,
    pub reals: HashSet<u32>,
    pub services: HashSet<u32>,
}

/// The program's answer: its action, the frame as it leaves (the test run's output, XDP
/// metadata first), and the reason counted for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    pub action: u32,
    pub data: Vec<u8>,
    pub reason: Reason,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub cfg: Config,
    pub st: State,
    pub routes: Routes,
    pub touched: Touched,
}

/// The parsed frame.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pkt {
    pub l3: usize,
    pub ihl: usize,
    pub saddr: u32,
    pub daddr: u32,
    pub proto: u8,
    pub tot_len: u16,
}

impl Pkt {
    pub fn l4(&self) -> usize {
        self.l3 + self.ihl
    }
}

/// An early answer: the frame as it came, with this action and reason.
pub(crate) struct Early(pub u32, pub Reason);

pub(crate) fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

/// A field as the program reads it from memory (wire order kept).
pub(crate) fn ne32(f: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(f[at..at + 4].try_into().unwrap())
}

pub(crate) fn ne16(f: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([f[at], f[at + 1]])
}

impl Model {
    pub fn new(cfg: Config, st: State, routes: Routes) -> Model {
        Model {
            cfg,
            st,
            routes,
            touched: Touched::default(),
        }
    }

    /// Runs one frame at time `now`; `touched` then names what it looked at.
    pub fn step(&mut self, frame: &[u8], now: u64) -> Out {
        self.touched = Touched::default();
        if self.st.reasons.len() < REASON_SLOTS as usize {
            self.st.reasons.resize(REASON_SLOTS as usize, 0);
        }
        let out = match self.decide(frame, now) {
            Ok(o) => o,
            Err(Early(action, reason)) => Out {
                action,
                data: frame.to_vec(),
                reason,
            },
        };
        self.bump(out.reason);
        out
    }

    pub(crate) fn bump(&mut self, r: Reason) {
        self.st.reasons[r as usize] += 1;
    }

    fn decide(&mut self, f: &[u8], now: u64) -> Result<Out, Early> {
        let pkt = parse(f)?;
        let frag_off = be16(f, pkt.l3 + 6);
        if frag_off & 0x3fff != 0 {
            return Err(Early(XDP_PASS, Reason::PassFragment));
        }
        if pkt.proto == IPPROTO_IPIP {
            return self.decapsulate(f, &pkt);
        }
        if !self.maybe_vip(pkt.daddr) {
            return Err(Early(XDP_PASS, Reason::PassNotService));
        }
        match pkt.proto {
            IPPROTO_TCP | IPPROTO_UDP => self.forward(f, &pkt, now),
            1 => self.forward_icmp_error(f, &pkt, now),
            _ => Err(Early(XDP_PASS, Reason::PassNotService)),
        }
    }

    pub(crate) fn maybe_vip(&self, addr: u32) -> bool {
        let bit = vip_filter_bit(addr);
        self.cfg
            .vip_filter
            .get((bit >> 6) as usize)
            .is_some_and(|w| w & (1 << (bit & 63)) != 0)
    }

    /// The real in a slot as the array holds it (all zero if never written); None past the end.
    pub(crate) fn real(&self, id: u32) -> Option<Real> {
        (id < MAX_REALS).then(|| self.cfg.reals.get(&id).copied().unwrap_or_default())
    }

    pub(crate) fn table(&self, idx: u32) -> Option<SchedTable> {
        (idx < MAX_SERVICES * 2).then(|| {
            self.cfg
                .tables
                .get(&idx)
                .copied()
                .unwrap_or_else(bytemuck::Zeroable::zeroed)
        })
    }

    /// TCP or UDP to a VIP: its connection's real, or a new one, then out through the tunnel.
    fn forward(&mut self, f: &[u8], pkt: &Pkt, now: u64) -> Result<Out, Early> {
        let tcp = pkt.proto == IPPROTO_TCP;
        let min_l4 = if tcp { 20 } else { 8 };
        if (pkt.tot_len as usize) < pkt.ihl + min_l4 {
            return Err(Early(XDP_PASS, Reason::PassMalformed));
        }
        let l4 = pkt.l4();
        let flags = if tcp { f[l4 + 13] } else { 0 };
        let key = ConnKey {
            saddr: pkt.saddr,
            daddr: pkt.daddr,
            sport: ne16(f, l4),
            dport: ne16(f, l4 + 2),
            proto: pkt.proto,
            _pad: [0; 3],
        };
        let (real_id, real, svc_id, event) = match self.established(&key, flags, now) {
            Ok((id, real)) => (id, real, real.service_id, Reason::TxForwarded),
            Err(hint) => {
                let svc = self
                    .lookup_service(pkt.daddr, key.dport, pkt.proto)
                    .ok_or(Early(XDP_PASS, Reason::PassNotService))?;
                let flooding = self
                    .admit(pkt.daddr, pkt.saddr, now)
                    .map_err(|()| Early(XDP_DROP, Reason::DropNotAllowed))?;
                match self.pick(&key, &svc, now, hint, flooding) {
                    Ok((id, real, event)) => {
                        self.record(
                            &key,
                            flags,
                            id,
                            &real,
                            svc.id,
                            svc.persist_timeout > 0,
                            flooding,
                            now,
                        );
                        (id, real, svc.id, event)
                    }
                    Err(reason) => return wire::icmp_reply(f, pkt, 3, 0, reason),
                }
            }
        };
        let out = if real.flags & REAL_F_LOCAL != 0 {
            Out {
                action: XDP_PASS,
                data: f.to_vec(),
                reason: Reason::PassLocalReal,
            }
        } else {
            self.encapsulate(f, pkt, &real)?
        };
        if matches!(
            out.reason,
            Reason::TxForwarded
                | Reason::RedirectForwarded
                | Reason::PassNoNeigh
                | Reason::PassLocalReal
        ) {
            let new_conn = event != Reason::TxForwarded;
            count(&mut self.st.svc_stats, svc_id, pkt.tot_len, new_conn);
            count(&mut self.st.real_stats, real_id, pkt.tot_len, new_conn);
            self.touched.services.insert(svc_id);
            self.touched.reals.insert(real_id);
        }
        if event != Reason::TxForwarded {
            self.bump(event);
        }
        Ok(out)
    }

    /// Out to the real through the tunnel, or the ICMP answer when it does not fit.
    fn encapsulate(&mut self, f: &[u8], pkt: &Pkt, real: &Real) -> Result<Out, Early> {
        let src = self.cfg.tunnel_src;
        if src == 0 {
            return Err(Early(XDP_PASS, Reason::PassNoTunnelSrc));
        }
        let outer_len = pkt.tot_len as u32 + 20;
        if outer_len > 0xffff {
            return Err(Early(XDP_DROP, Reason::DropTooBig));
        }
        let Some(&(nexthop, mac)) = self.routes.hops.get(&real.addr) else {
            return Err(Early(XDP_DROP, Reason::DropNoRoute));
        };
        if outer_len > self.routes.mtu {
            let df = be16(f, pkt.l3 + 6) & 0x4000 != 0;
            if !df {
                return Err(Early(XDP_DROP, Reason::DropTooBig));
            }
            let inner_mtu = self.routes.mtu.saturating_sub(20) as u16;
            return wire::icmp_reply(f, pkt, 4, inner_mtu, Reason::IcmpFragNeeded);
        }
        let mut data = wire::encapsulated(f, pkt, src, real.addr);
        Ok(match mac {
            Some(dmac) => {
                data[0..6].copy_from_slice(&dmac);
                data[6..12].copy_from_slice(&self.routes.mac);
                Out {
                    action: XDP_TX,
                    data,
                    reason: Reason::TxForwarded,
                }
            }
            None => {
                // The next hop for TC rides in front as XDP metadata.
                let mut meta = Vec::with_capacity(12 + data.len());
                meta.extend_from_slice(&lb_common::NEIGH_META_MAGIC.to_ne_bytes());
                meta.extend_from_slice(&self.routes.ifindex.to_ne_bytes());
                meta.extend_from_slice(&nexthop.to_ne_bytes());
                meta.extend_from_slice(&data);
                Out {
                    action: XDP_PASS,
                    data: meta,
                    reason: Reason::PassNoNeigh,
                }
            }
        })
    }

    /// An ICMP destination-unreachable about a connection to a VIP goes to that connection's
    /// real, found from the packet it quotes.
    fn forward_icmp_error(&mut self, f: &[u8], pkt: &Pkt, _now: u64) -> Result<Out, Early> {
        let not = Early(XDP_PASS, Reason::PassNotService);
        let off = pkt.l4();
        if off + 8 > f.len() || f[off] != 3 {
            return Err(not);
        }
        let q = off + 8;
        if q + 20 > f.len() {
            return Err(not);
        }
        let qihl = (f[q] & 0x0f) as usize * 4;
        let (qsaddr, qdaddr, qproto) = (ne32(f, q + 12), ne32(f, q + 16), f[q + 9]);
        if f[q] >> 4 != 4 || qihl < 20 || qsaddr != pkt.daddr {
            return Err(not);
        }
        if qproto != IPPROTO_TCP && qproto != IPPROTO_UDP {
            return Err(not);
        }
        let p = (q + qihl) & 0xff;
        if p + 8 > f.len() {
            return Err(not);
        }
        let key = ConnKey {
            saddr: qdaddr,
            daddr: qsaddr,
            sport: ne16(f, p + 2),
            dport: ne16(f, p),
            proto: qproto,
            _pad: [0; 3],
        };
        self.touched.conns.insert(key);
        let conn = self
            .st
            .conns
            .get(&key)
            .or_else(|| self.st.conns_new.get(&key))
            .copied()
            .ok_or(Early(XDP_PASS, Reason::PassNotService))?;
        let real = self
            .real_valid(conn.real_id, conn.real_gen, conn.service_id)
            .ok_or(Early(XDP_PASS, Reason::PassNotService))?;
        let out = self.encapsulate(f, pkt, &real)?;
        self.bump(Reason::IcmpForwarded);
        Ok(out)
    }

    /// IPIP from a peer director to this host, for one of its VIPs: unwrapped and passed up.
    fn decapsulate(&mut self, f: &[u8], pkt: &Pkt) -> Result<Out, Early> {
        if !self.cfg.peers.contains(&pkt.saddr) || pkt.daddr != self.cfg.tunnel_src {
            return Err(Early(XDP_PASS, Reason::PassNotService));
        }
        let i = pkt.l4();
        let unknown = Early(XDP_DROP, Reason::DropDecapUnknownVip);
        if i + 20 > f.len() {
            return Err(unknown);
        }
        let iihl = (f[i] & 0x0f) as usize * 4;
        if f[i] >> 4 != 4 || iihl < 20 || !self.maybe_vip(ne32(f, i + 16)) {
            return Err(unknown);
        }
        let mut data = f[..pkt.l3].to_vec();
        data.extend_from_slice(&f[pkt.l4()..]);
        Ok(Out {
            action: XDP_PASS,
            data,
            reason: Reason::PassDecapsulated,
        })
    }
}

/// Ethernet (one 802.1Q tag at most), then an IPv4 header whose lengths the frame holds.
fn parse(f: &[u8]) -> Result<Pkt, Early> {
    let malformed = Early(XDP_PASS, Reason::PassMalformed);
    if f.len() < 14 {
        return Err(malformed);
    }
    let (mut ethertype, mut l3) = (be16(f, 12), 14);
    let vlan = ethertype == 0x8100;
    if vlan {
        if f.len() < 18 {
            return Err(malformed);
        }
        ethertype = be16(f, 16);
        l3 = 18;
    }
    if ethertype != 0x0800 {
        return Err(Early(XDP_PASS, Reason::PassNotIpv4));
    }
    if f.len() < l3 + 20 {
        return Err(malformed);
    }
    let ihl = (f[l3] & 0x0f) as usize * 4;
    let tot_len = be16(f, l3 + 2);
    if f[l3] >> 4 != 4 || ihl < 20 || (tot_len as usize) < ihl || l3 + tot_len as usize > f.len() {
        return Err(malformed);
    }
    Ok(Pkt {
        l3,
        ihl,
        saddr: ne32(f, l3 + 12),
        daddr: ne32(f, l3 + 16),
        proto: f[l3 + 9],
        tot_len,
    })
}

fn count(map: &mut HashMap<u32, Counters>, idx: u32, bytes: u16, new_conn: bool) {
    let c = map.entry(idx).or_default();
    c.packets += 1;
    c.bytes += bytes as u64;
    if new_conn {
        c.conns += 1;
    }
}

/// Seconds an entry in `state` lives without packets (IPVS's defaults).
pub(crate) fn timeout_ns(state: u8) -> u64 {
    NS * match state {
        lb_common::CONN_SYN_RECV => 60,
        lb_common::CONN_ESTABLISHED => 900,
        lb_common::CONN_FIN_WAIT => 120,
        lb_common::CONN_CLOSE => 10,
        _ => 300,
    }
}
