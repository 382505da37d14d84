//! The director: forwards packets for virtual services to real servers over IPIP (LVS-TUN).
//!
//! parse → service lookup → connection lookup / schedule → next hop → encapsulate → count.
//! Every step returns a `Result`; the entry point turns the outcome into one XDP action and one
//! reason counter.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_PSEUDO_HDR,
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        TC_ACT_OK, TC_ACT_SHOT, bpf_adj_room_mode, bpf_fib_lookup as FibParams, bpf_redir_neigh,
        xdp_action,
    },
    helpers::{
        bpf_fib_lookup, bpf_get_smp_processor_id, bpf_ktime_get_coarse_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_xdp_adjust_head, bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
    },
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::{debug, warn};
use lb_common::{
    CONN_CLOSE, CONN_ESTABLISHED, CONN_F_PERSIST, CONN_FIN_WAIT, CONN_SYN_RECV, CONN_UDP, Config,
    Conn, ConnKey, Counters, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, MAX_CONNS, MAX_PERSIST,
    MAX_PROBES, MAX_REALS, MAX_SERVICES, NEIGH_META_MAGIC, NEXTHOP_TTL_NS, NeighMeta, NextHop,
    PROBE_MARK, Persist, PersistKey, Probe, ProbeKey, REAL_F_IN_USE, REASON_COUNT, Real, Reason,
    SCHED_MH, SCHED_SLOTS, SchedTable, Service, ServiceKey, VIP_FILTER_WORDS, conn_timeout_secs,
    vip_filter_bit,
};
use lb_ebpf::{
    csum,
    hdr::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, EthHdr, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HLEN,
        ICMP_PORT_UNREACH, IP_DF, IP_MF, IP_OFFMASK, IPPROTO_ICMP, IPV4_HLEN, IcmpHdr, Ipv4Hdr,
        TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, UdpHdr, VLAN_HLEN, ptr_at,
    },
};

#[map(name = "LB_SERVICES")]
static SERVICES: HashMap<ServiceKey, Service> = HashMap::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REALS")]
static REALS: Array<Real> = Array::pinned(MAX_REALS, 0);

#[map(name = "LB_TABLES")]
static TABLES: Array<SchedTable> = Array::pinned(MAX_SERVICES * 2, 0);

#[map(name = "LB_CURSORS")]
static CURSORS: PerCpuArray<u32> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB_CONNS")]
static CONNS: LruHashMap<ConnKey, Conn> = LruHashMap::pinned(MAX_CONNS, 0);

#[map(name = "LB_SVC_STATS")]
static SVC_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_SERVICES, 0);

#[map(name = "LB_REAL_STATS")]
static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_REALS, 0);

#[map(name = "LB_REASONS")]
static REASONS: PerCpuArray<u64> = PerCpuArray::pinned(REASON_COUNT, 0);

#[map(name = "LB_CONFIG")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "LB_VIP_FILTER")]
static VIP_FILTER: Array<u64> = Array::pinned(VIP_FILTER_WORDS, 0);

#[map(name = "LB_PERSIST")]
static PERSIST: LruHashMap<PersistKey, Persist> = LruHashMap::pinned(MAX_PERSIST, 0);

#[map(name = "LB_NEXTHOPS")]
static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::pinned(MAX_REALS, 0);

#[map(name = "LB_PROBES")]
static PROBES: HashMap<ProbeKey, Probe> = HashMap::pinned(MAX_PROBES, 0);

const NS_PER_SEC: u64 = 1_000_000_000;
/// `last_seen` is rewritten only when it is this stale: a write per packet would bounce the
/// entry's cache line between CPUs for nothing (timeouts are whole seconds).
const LAST_SEEN_SLACK_NS: u64 = NS_PER_SEC / 4;
const AF_INET: u8 = 2;

/// What to do with a packet, and why (the reason is counted once per packet).
struct Verdict {
    action: u32,
    reason: Reason,
}

#[inline(always)]
fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

#[inline(always)]
fn discard(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_DROP,
        reason,
    }
}

#[xdp]
pub fn lb_xdp(ctx: XdpContext) -> u32 {
    let v = match try_lb(&ctx) {
        Ok(v) | Err(v) => v,
    };
    if let Some(c) = REASONS.get_ptr_mut(v.reason as u32) {
        unsafe { *c += 1 };
    }
    v.action
}

/// The parsed headers of an IPv4 packet.
struct Packet {
    /// Offset of the IPv4 header (after Ethernet and an optional 802.1Q tag).
    l3: usize,
    /// IPv4 header length in bytes (options included).
    ihl: usize,
    vlan: bool,
    saddr: u32,
    daddr: u32,
    proto: u8,
    tot_len: u16,
    frag_off: u16,
}

impl Packet {
    // Offsets are re-bounded where they are used: the compiler may keep them in forms (partial
    // stack spills) from which the verifier cannot recover their range.
    #[inline(always)]
    fn l3_off(&self) -> usize {
        (lb_ebpf::opaque(self.l3 as u32) & 0x1f) as usize
    }

    /// Offset of the L4 header: at most 18 + 60.
    #[inline(always)]
    fn l4_off(&self) -> usize {
        (lb_ebpf::opaque((self.l3 + self.ihl) as u32) & 0x7f) as usize
    }
}

#[inline(always)]
fn try_lb(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let pkt = parse_ipv4(ctx)?;
    // Only the first fragment has ports; without reassembly no fragment can be matched to a
    // connection, so all of them go to the stack (TCP sets DF and never fragments).
    if pkt.frag_off & (IP_MF | IP_OFFMASK) != 0 {
        return Err(pass(Reason::PassFragment));
    }
    let bit = vip_filter_bit(pkt.daddr);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) if *w & (1u64 << (bit & 63)) != 0 => {}
        _ => return Err(pass(Reason::PassNotService)),
    }
    match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP => forward(ctx, &pkt),
        IPPROTO_ICMP => forward_icmp_error(ctx, &pkt),
        _ => Err(pass(Reason::PassNotService)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(pass(Reason::PassMalformed))?;
    let mut proto = unsafe { (*eth).proto };
    let mut l3 = ETH_HLEN;
    let mut vlan = false;
    if proto == ETH_P_8021Q {
        let tag: *const lb_ebpf::hdr::VlanHdr =
            ptr_at(ctx, ETH_HLEN).ok_or(pass(Reason::PassMalformed))?;
        proto = unsafe { (*tag).proto };
        l3 += VLAN_HLEN;
        vlan = true;
    }
    if proto != ETH_P_IP {
        return Err(pass(Reason::PassNotIpv4));
    }
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(pass(Reason::PassMalformed))?;
    let ip = unsafe { *ip };
    let ihl = ip.ihl_bytes();
    // Linux 6.1's verifier loses a 16-bit value's bound across the byte swap; a mask the
    // compiler cannot drop gives it back.
    let tot_len = (lb_ebpf::opaque(u16::from_be(ip.tot_len) as u32) & 0xffff) as u16;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN || (tot_len as usize) < ihl {
        return Err(pass(Reason::PassMalformed));
    }
    if ctx.data() + l3 + tot_len as usize > ctx.data_end() {
        return Err(pass(Reason::PassMalformed));
    }
    Ok(Packet {
        l3,
        ihl,
        vlan,
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        tot_len,
        frag_off: u16::from_be(ip.frag_off),
    })
}

#[inline(always)]
fn forward(ctx: &XdpContext, pkt: &Packet) -> Result<Verdict, Verdict> {
    let l4 = pkt.l4_off();
    let min_l4 = if pkt.proto == IPPROTO_TCP { 20 } else { 8 };
    // Frames shorter than 60 bytes are padded: trust the IP length, not the frame length.
    if (pkt.tot_len as usize) < pkt.ihl + min_l4 {
        return Err(pass(Reason::PassMalformed));
    }
    // Both TCP and UDP start with the two ports; the TCP flags are read below.
    let ports: *const UdpHdr = ptr_at(ctx, l4).ok_or(pass(Reason::PassMalformed))?;
    let (sport, dport) = unsafe { ((*ports).sport, (*ports).dport) };
    let flags = if pkt.proto == IPPROTO_TCP {
        let tcp: *const TcpHdr = ptr_at(ctx, l4).ok_or(pass(Reason::PassMalformed))?;
        unsafe { (*tcp).flags }
    } else {
        0
    };

    let key = ConnKey {
        saddr: pkt.saddr,
        daddr: pkt.daddr,
        sport,
        dport,
        proto: pkt.proto,
        _pad: [0; 3],
    };
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // The connection table is consulted first: a live entry already names the service (its
    // real carries the service id), so established traffic skips the service lookup.
    let (real_id, real, svc_id, event) = match established(&key, flags, now) {
        Ok((id, real)) => (id, real, real.service_id, Reason::TxForwarded),
        Err(hint) => {
            let svc =
                lookup_service(pkt.daddr, dport, pkt.proto).ok_or(pass(Reason::PassNotService))?;
            match schedule_new(ctx, &key, &svc, flags, now, hint) {
                Ok((id, real, event)) => {
                    debug!(
                        ctx,
                        "{} {:i}:{} -> {:i}:{} on real {:i} (slot {})",
                        event.name(),
                        u32::from_be(key.saddr),
                        u16::from_be(sport),
                        u32::from_be(key.daddr),
                        u16::from_be(dport),
                        u32::from_be(real.addr),
                        id
                    );
                    (id, real, svc.id, event)
                }
                // IPVS answers a connection it cannot schedule with port unreachable, so
                // clients fail at once instead of retrying SYNs into a void.
                Err(reason) => {
                    debug!(
                        ctx,
                        "no real with weight > 0 for {:i}:{}: port unreachable to {:i}",
                        u32::from_be(key.daddr),
                        u16::from_be(dport),
                        u32::from_be(key.saddr)
                    );
                    return icmp_reply(ctx, pkt, ICMP_PORT_UNREACH, 0, reason);
                }
            }
        }
    };

    let fwd = encapsulate(ctx, pkt, real_id, &real, now)?;
    let forwarded = matches!(
        fwd.reason,
        Reason::TxForwarded | Reason::RedirectForwarded | Reason::PassNoNeigh
    );
    if forwarded {
        // Every event but an existing connection's packet opened a connection on this real.
        let new_conn = event != Reason::TxForwarded;
        count(&SVC_STATS, svc_id, pkt.tot_len, new_conn);
        count(&REAL_STATS, real_id, pkt.tot_len, new_conn);
    }
    // New and re-scheduled connections are counted apart from how the packet left.
    if event != Reason::TxForwarded {
        bump(event);
    }
    Ok(fwd)
}

#[inline(always)]
fn bump(reason: Reason) {
    if let Some(c) = REASONS.get_ptr_mut(reason as u32) {
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn count(map: &PerCpuArray<Counters>, idx: u32, bytes: u16, new_conn: bool) {
    if let Some(c) = map.get_ptr_mut(idx) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
            if new_conn {
                (*c).conns += 1;
            }
        }
    }
}

/// The state a TCP packet from the client moves its connection to (IPVS's input-only view).
#[inline(always)]
fn next_state(proto: u8, flags: u8, cur: u8) -> u8 {
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

#[inline(always)]
fn real_valid(id: u32, gen_: u32, svc_id: u32) -> Option<Real> {
    let r = REALS.get(id)?;
    if r.flags & REAL_F_IN_USE != 0 && r.generation == gen_ && r.service_id == svc_id {
        Some(*r)
    } else {
        None
    }
}

/// The service for a destination: the exact port, else a persistent port-0 service of the VIP.
#[inline(always)]
fn lookup_service(addr: u32, port: u16, proto: u8) -> Option<Service> {
    let mut key = ServiceKey {
        addr,
        port,
        proto,
        _pad: 0,
    };
    if let Some(s) = SERVICES.get_ptr(&key) {
        return Some(unsafe { *s });
    }
    key.port = 0;
    let s = unsafe { *SERVICES.get_ptr(&key)? };
    if s.persist_timeout > 0 { Some(s) } else { None }
}

/// The real of a live connection entry. Otherwise says why there is none: `NewConn`,
/// `NonSynMiss` (no entry for a mid-stream packet) or `Rescheduled` (its real was removed).
#[inline(always)]
fn established(key: &ConnKey, flags: u8, now: u64) -> Result<(u32, Real), Reason> {
    let tcp = key.proto == IPPROTO_TCP;
    let syn = tcp && flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    let miss = if tcp && !syn {
        Reason::NonSynMiss
    } else {
        Reason::NewConn
    };
    let Some(c) = CONNS.get_ptr_mut(key) else {
        return Err(miss);
    };
    let conn = unsafe { &mut *c };
    let age = now.wrapping_sub(conn.last_seen_ns);
    if age > conn_timeout_secs(conn.state) * NS_PER_SEC {
        return Err(miss);
    }
    // A SYN on a connection past its handshake opens a new connection on a reused tuple
    // (IPVS's conn_reuse_mode): schedule it afresh. A retransmitted SYN keeps its real.
    if syn && conn.state != CONN_SYN_RECV {
        return Err(Reason::NewConn);
    }
    let real =
        real_valid(conn.real_id, conn.real_gen, conn.service_id).ok_or(Reason::Rescheduled)?;
    let state = next_state(key.proto, flags, conn.state);
    if state != conn.state || age > LAST_SEEN_SLACK_NS {
        conn.state = state;
        conn.last_seen_ns = now;
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
    Ok((conn.real_id, real))
}

/// Schedules a new connection (or one whose real went away) and records it.
#[inline(always)]
fn schedule_new(
    ctx: &XdpContext,
    key: &ConnKey,
    svc: &Service,
    flags: u8,
    now: u64,
    event: Reason,
) -> Result<(u32, Real, Reason), Reason> {
    let persistent = svc.persist_timeout > 0;
    let pk = PersistKey {
        service_id: svc.id,
        saddr: key.saddr,
    };
    let mut event = event;
    let (real_id, real) = match persistent.then(|| persisted(&pk, svc, now)).flatten() {
        Some(found) => {
            event = Reason::Persisted;
            found
        }
        None => {
            let (id, real) = schedule(key, svc)?;
            if persistent {
                let t = Persist {
                    real_id: id,
                    real_gen: real.generation,
                    last_seen_ns: now,
                };
                let _ = PERSIST.insert(&pk, &t, 0);
            }
            (id, real)
        }
    };
    // Katran's lesson: an RST needs no state, and inserting on it lets a scan fill the table.
    if flags & TCP_RST == 0 {
        let conn = Conn {
            real_id,
            real_gen: real.generation,
            service_id: svc.id,
            state: next_state(key.proto, flags, 0),
            flags: if persistent { CONN_F_PERSIST } else { 0 },
            _pad: [0; 2],
            last_seen_ns: now,
        };
        if CONNS.insert(key, &conn, 0).is_err() {
            bump(Reason::ConnInsertFail);
            warn!(
                ctx,
                "connection table insert failed for {:i}:{}",
                u32::from_be(key.saddr),
                u16::from_be(key.sport)
            );
        }
    }
    Ok((real_id, real, event))
}

/// The real a client's live persistence template names, refreshed. A template whose real was
/// removed or quiesced (weight 0) is ignored: a health check that quiesces a dead real must move
/// its persistent clients too (IPVS needs `expire_quiescent_template=1` for that).
#[inline(always)]
fn persisted(pk: &PersistKey, svc: &Service, now: u64) -> Option<(u32, Real)> {
    let t = PERSIST.get_ptr_mut(pk)?;
    let t = unsafe { &mut *t };
    if now.wrapping_sub(t.last_seen_ns) > svc.persist_timeout as u64 * NS_PER_SEC {
        return None;
    }
    let real = real_valid(t.real_id, t.real_gen, svc.id)?;
    if real.weight == 0 {
        return None;
    }
    t.last_seen_ns = now;
    Some((t.real_id, real))
}

/// Picks a real for a new connection from the service's live scheduling table.
#[inline(always)]
fn schedule(key: &ConnKey, svc: &Service) -> Result<(u32, Real), Reason> {
    let table = TABLES
        .get(svc.id * 2 + (svc.table & 1))
        .ok_or(Reason::NoRealUnreach)?;
    let len = table.len;
    if len == 0 || len as usize > SCHED_SLOTS {
        return Err(Reason::NoRealUnreach);
    }
    let slot = if svc.sched == SCHED_MH {
        mh_hash(key.saddr) % len
    } else {
        // Per-CPU cursors need no lock; each CPU walks the table in order from its own
        // starting point, so every CPU's own sequence is exactly the table's.
        let cursor = CURSORS.get_ptr_mut(svc.id).ok_or(Reason::NoRealUnreach)?;
        let c = unsafe { *cursor } % len;
        unsafe { *cursor = if c + 1 >= len { 0 } else { c + 1 } };
        let cpu = unsafe { bpf_get_smp_processor_id() };
        let cpus = match CONFIG.get(0) {
            Some(cfg) if cfg.nr_cpus > 0 => cfg.nr_cpus,
            _ => 1,
        };
        (c + (cpu % cpus) * len / cpus) % len
    };
    let real_id = table.slots[lb_ebpf::opaque(slot) as usize & (SCHED_SLOTS - 1)];
    let real = REALS.get(real_id).ok_or(Reason::NoRealUnreach)?;
    if real.flags & REAL_F_IN_USE == 0 || real.service_id != svc.id {
        return Err(Reason::NoRealUnreach);
    }
    Ok((real_id, *real))
}

/// The source-address hash IPVS's `mh` scheduler uses (hash_32 of the address, golden ratio).
#[inline(always)]
fn mh_hash(addr: u32) -> u32 {
    u32::from_be(addr).wrapping_mul(0x61C8_8647)
}

/// Where an encapsulated packet goes next.
enum Hop {
    Ready {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route known, neighbour not resolved yet.
    Unresolved {
        ifindex: u32,
        nexthop: u32,
    },
    FragNeeded {
        mtu: u32,
    },
}

/// The next hop towards a real: this CPU's cached answer when it is fresh, else
/// `bpf_fib_lookup` (about 150 ns, so cached for [`NEXTHOP_TTL_NS`]).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    real_id: u32,
    real: &Real,
    src: u32,
    tos: u8,
    outer_len: u32,
    now: u64,
) -> Result<Hop, Verdict> {
    let cache = NEXTHOPS.get_ptr_mut(real_id);
    if let Some(c) = cache {
        let c = unsafe { &*c };
        if c.stamp_ns != 0
            && c.real_gen == real.generation
            && now.wrapping_sub(c.stamp_ns) < NEXTHOP_TTL_NS
        {
            if outer_len > c.mtu {
                return Ok(Hop::FragNeeded { mtu: c.mtu });
            }
            return Ok(Hop::Ready {
                ifindex: c.ifindex,
                smac: c.smac,
                dmac: c.dmac,
            });
        }
    }
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_IPIP;
    fib.__bindgen_anon_1.tot_len = outer_len as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = real.addr;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // On success the kernel reports the route's MTU in the same field.
            let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
            if let Some(c) = cache {
                unsafe {
                    *c = NextHop {
                        stamp_ns: now,
                        real_gen: real.generation,
                        ifindex: fib.ifindex,
                        mtu,
                        smac: fib.smac,
                        dmac: fib.dmac,
                    };
                }
            }
            Ok(Hop::Ready {
                ifindex: fib.ifindex,
                smac: fib.smac,
                dmac: fib.dmac,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop::Unresolved {
            ifindex: fib.ifindex,
            nexthop: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Hop::FragNeeded {
            mtu: unsafe { fib.__bindgen_anon_1.mtu_result } as u32,
        }),
        _ => Err(discard(Reason::DropNoRoute)),
    }
}

/// Wraps the IPv4 packet in an outer IPv4 header to the real and sends it to the next hop.
#[inline(always)]
fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    real_id: u32,
    real: &Real,
    now: u64,
) -> Result<Verdict, Verdict> {
    let cfg = CONFIG.get(0).ok_or(pass(Reason::PassNoTunnelSrc))?;
    let src = cfg.tunnel_src;
    if src == 0 {
        return Err(pass(Reason::PassNoTunnelSrc));
    }
    let real_addr = real.addr;
    let inner: *const Ipv4Hdr = ptr_at(ctx, pkt.l3_off()).ok_or(pass(Reason::PassMalformed))?;
    let inner = unsafe { *inner };
    let outer_len = pkt.tot_len as u32 + IPV4_HLEN as u32;
    if outer_len > 0xffff {
        return Err(discard(Reason::DropTooBig));
    }
    let hop = next_hop(ctx, real_id, real, src, inner.tos, outer_len, now)?;
    if let Hop::FragNeeded { mtu } = hop {
        let df = u16::from_be(inner.frag_off) & IP_DF != 0;
        debug!(
            ctx,
            "{} bytes from {:i} exceed mtu {} to real {:i} once encapsulated: {}",
            pkt.tot_len,
            u32::from_be(pkt.saddr),
            mtu,
            u32::from_be(real_addr),
            if df {
                "fragmentation-needed sent"
            } else {
                "dropped (no DF)"
            }
        );
        if !df {
            return Err(discard(Reason::DropTooBig));
        }
        let inner_mtu = mtu.saturating_sub(IPV4_HLEN as u32) as u16;
        return icmp_reply(
            ctx,
            pkt,
            ICMP_FRAG_NEEDED,
            inner_mtu,
            Reason::IcmpFragNeeded,
        );
    }

    // Make room in front, then slide the L2 header (with its VLAN tag) back to the start.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(discard(Reason::DropAdjust))?;
    let old_eth: *const EthHdr = ptr_at(ctx, IPV4_HLEN).ok_or(discard(Reason::DropAdjust))?;
    unsafe { *eth = *old_eth };
    let l3 = if pkt.vlan {
        let tag: *mut [u8; VLAN_HLEN] = ptr_at(ctx, ETH_HLEN).ok_or(discard(Reason::DropAdjust))?;
        let old: *const [u8; VLAN_HLEN] =
            ptr_at(ctx, ETH_HLEN + IPV4_HLEN).ok_or(discard(Reason::DropAdjust))?;
        unsafe { *tag = *old };
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };

    let outer: *mut [u16; 10] = ptr_at(ctx, l3).ok_or(discard(Reason::DropAdjust))?;
    let mut h = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: inner.tos,
        tot_len: (outer_len as u16).to_be(),
        id: inner.id,
        // IPVS copies DF from the inner header; oversized DF packets were answered above.
        frag_off: inner.frag_off & IP_DF.to_be(),
        ttl: inner.ttl,
        proto: IPPROTO_IPIP,
        check: 0,
        saddr: src,
        daddr: real_addr,
    };
    let words: [u16; 10] = unsafe { core::mem::transmute(h) };
    h.check = csum::ipv4_header(&words);
    unsafe { *outer = core::mem::transmute::<Ipv4Hdr, [u16; 10]>(h) };

    let (ifindex, smac, dmac) = match hop {
        Hop::Ready {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        Hop::Unresolved { ifindex, nexthop } => return hand_to_tc(ctx, ifindex, nexthop),
        Hop::FragNeeded { .. } => return Err(discard(Reason::DropTooBig)),
    };
    unsafe {
        (*eth).dst = dmac;
        (*eth).src = smac;
    }
    // A tagged frame goes back out of the port it came in on: the VLAN sub-interface the route
    // names cannot transmit XDP frames.
    if ifindex == ctx.ingress_ifindex() as u32 || pkt.vlan {
        Ok(Verdict {
            action: xdp_action::XDP_TX,
            reason: Reason::TxForwarded,
        })
    } else {
        let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
        Ok(Verdict {
            action,
            reason: Reason::RedirectForwarded,
        })
    }
}

/// XDP cannot wait for ARP. Leave the next hop in the packet's metadata and pass it up; the TC
/// ingress program `lb_tc_ingress` sends it with `bpf_redirect_neigh`, which resolves the
/// neighbour and queues the packet meanwhile.
#[inline(always)]
fn hand_to_tc(ctx: &XdpContext, ifindex: u32, nexthop: u32) -> Result<Verdict, Verdict> {
    debug!(
        ctx,
        "neighbour {:i} not resolved: handed to TC",
        u32::from_be(nexthop)
    );
    let sz = core::mem::size_of::<NeighMeta>() as i32;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -sz) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    let meta = ctx.metadata();
    if meta + sz as usize > ctx.data() {
        return Err(discard(Reason::DropAdjust));
    }
    unsafe {
        *(meta as *mut NeighMeta) = NeighMeta {
            magic: NEIGH_META_MAGIC,
            ifindex,
            nexthop,
        };
    }
    Ok(pass(Reason::PassNoNeigh))
}

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    if let Some(action) = redirect_neigh(&ctx) {
        return action;
    }
    let _ = unwrap_probe_reply(&ctx);
    TC_ACT_OK
}

/// A packet the XDP program handed over (see [`hand_to_tc`]) leaves with `bpf_redirect_neigh`.
#[inline(always)]
fn redirect_neigh(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<NeighMeta>() > data {
        return None;
    }
    let m = unsafe { *(meta as *const NeighMeta) };
    if m.magic != NEIGH_META_MAGIC {
        return None;
    }
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = AF_INET as u32;
    nh.__bindgen_anon_1.ipv4_nh = m.nexthop;
    Some(unsafe {
        bpf_redirect_neigh(
            m.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    })
}

const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;
const TCP_OFF: usize = ETH_HLEN + IPV4_HLEN;
const TCP_CHECK_OFF: usize = TCP_OFF + 16;

/// The tunnel probe's socket is connected to the real's own address, so its replies, which
/// the real sends from the VIP, get their source rewritten back. (The director owns the VIP:
/// its stack would drop a packet from its own address as a martian.)
#[inline(always)]
fn unwrap_probe_reply(ctx: &TcContext) -> Result<(), i64> {
    let proto: u16 = ctx.load(12)?;
    if proto != ETH_P_IP {
        return Ok(());
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if ip.ver_ihl != 0x45 || ip.proto != IPPROTO_TCP {
        return Ok(());
    }
    let bit = vip_filter_bit(ip.saddr);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) if *w & (1u64 << (bit & 63)) != 0 => {}
        _ => return Ok(()),
    }
    let ports: [u16; 2] = ctx.load(TCP_OFF)?;
    let Some(probe) = PROBES.get_ptr_mut(&ProbeKey {
        port: ports[1],
        _pad: 0,
    }) else {
        return Ok(());
    };
    let p = unsafe { &mut *probe };
    if p.vip != ip.saddr || p.port != ports[0] {
        return Ok(());
    }
    let tunnel_src = CONFIG.get(0).map(|c| c.tunnel_src).unwrap_or(0);
    if ip.daddr != tunnel_src {
        return Ok(());
    }
    replace_addr(ctx, IP_SADDR_OFF, p.vip, p.real)?;
    p.ingress = p.ingress.wrapping_add(1);
    Ok(())
}

/// Rewrites one IPv4 address of a TCP packet, with both checksums.
#[inline(always)]
fn replace_addr(ctx: &TcContext, off: usize, from: u32, to: u32) -> Result<(), i64> {
    ctx.l4_csum_replace(
        TCP_CHECK_OFF,
        from as u64,
        to as u64,
        (BPF_F_PSEUDO_HDR | 4) as u64,
    )?;
    ctx.l3_csum_replace(IP_CHECK_OFF, from as u64, to as u64, 4)?;
    ctx.store(off, &to, 0)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    if unsafe { (*ctx.skb.skb).mark } != PROBE_MARK {
        return TC_ACT_OK;
    }
    // A marked packet leaves encapsulated or not at all.
    match encapsulate_probe(&ctx) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

/// Sends a probe the way the director sends client packets: to VIP:port, inside IPIP to the
/// real, from the tunnel source.
#[inline(always)]
fn encapsulate_probe(ctx: &TcContext) -> Result<(), i64> {
    let proto: u16 = ctx.load(12)?;
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if proto != ETH_P_IP || ip.ver_ihl != 0x45 || ip.proto != IPPROTO_TCP {
        return Err(-1);
    }
    let sport: u16 = ctx.load(TCP_OFF)?;
    let probe = PROBES
        .get_ptr_mut(&ProbeKey {
            port: sport,
            _pad: 0,
        })
        .ok_or(-1i64)?;
    let p = unsafe { &mut *probe };
    let tunnel_src = CONFIG.get(0).map(|c| c.tunnel_src).unwrap_or(0);
    let inner_len = u16::from_be(ip.tot_len) as u32;
    if ip.daddr != p.real || tunnel_src == 0 || inner_len + IPV4_HLEN as u32 > 0xffff {
        return Err(-1);
    }
    replace_addr(ctx, IP_DADDR_OFF, p.real, p.vip)?;
    ctx.adjust_room(
        IPV4_HLEN as i32,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC as u32,
        (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO) as u64,
    )?;
    let mut h = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: ip.tos,
        tot_len: ((inner_len + IPV4_HLEN as u32) as u16).to_be(),
        id: ip.id,
        frag_off: ip.frag_off & IP_DF.to_be(),
        ttl: ip.ttl,
        proto: IPPROTO_IPIP,
        check: 0,
        saddr: tunnel_src,
        daddr: p.real,
    };
    let words: [u16; 10] = unsafe { core::mem::transmute(h) };
    h.check = csum::ipv4_header(&words);
    ctx.store(ETH_HLEN, &h, 0)?;
    p.egress = p.egress.wrapping_add(1);
    Ok(())
}

/// Turns the packet into an ICMP error back to its sender, quoting its IP header and the first
/// 8 bytes of payload (RFC 792), and sends it out of the port it came in on.
#[inline(always)]
fn icmp_reply(
    ctx: &XdpContext,
    pkt: &Packet,
    code: u8,
    mtu: u16,
    reason: Reason,
) -> Result<Verdict, Verdict> {
    let l3 = pkt.l3_off();
    let quote = pkt.l4_off() - l3 + 8;
    let keep = (l3 + quote) as i32;
    let len = (ctx.data_end() - ctx.data()) as i32;
    if len < keep {
        return Err(discard(Reason::DropAdjust));
    }
    if len > keep && unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    let grow = (IPV4_HLEN + ICMP_HLEN) as i32;
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -grow) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    // The old L2 header now sits at `grow`; the new one goes at 0 with the MACs swapped.
    let old: *const EthHdr = ptr_at(ctx, grow as usize).ok_or(discard(Reason::DropAdjust))?;
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(discard(Reason::DropAdjust))?;
    unsafe {
        let o = *old;
        *eth = EthHdr {
            dst: o.src,
            src: o.dst,
            proto: o.proto,
        };
    }
    if pkt.vlan {
        let tag: *mut [u8; VLAN_HLEN] = ptr_at(ctx, ETH_HLEN).ok_or(discard(Reason::DropAdjust))?;
        let old: *const [u8; VLAN_HLEN] =
            ptr_at(ctx, ETH_HLEN + grow as usize).ok_or(discard(Reason::DropAdjust))?;
        unsafe { *tag = *old };
    }
    let icmp_len = ICMP_HLEN + quote;
    let mut h = Ipv4Hdr {
        ver_ihl: 0x45,
        tos: 0xc0,
        tot_len: ((IPV4_HLEN + icmp_len) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        proto: IPPROTO_ICMP,
        check: 0,
        // The error comes from the address the client was talking to.
        saddr: pkt.daddr,
        daddr: pkt.saddr,
    };
    let words: [u16; 10] = unsafe { core::mem::transmute(h) };
    h.check = csum::ipv4_header(&words);
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(discard(Reason::DropAdjust))?;
    unsafe { *ip = h };

    let icmp_off = l3 + IPV4_HLEN;
    let icmp: *mut IcmpHdr = ptr_at(ctx, icmp_off).ok_or(discard(Reason::DropAdjust))?;
    unsafe {
        *icmp = IcmpHdr {
            kind: ICMP_DEST_UNREACH,
            code,
            check: 0,
            unused: 0,
            mtu: mtu.to_be(),
        };
    }
    // ICMP header + quote: at most 8 + 60 + 8 bytes.
    let mut sum: u64 = 0;
    let mut i = 0usize;
    while i < (ICMP_HLEN + 68) / 2 {
        if i * 2 >= icmp_len {
            break;
        }
        match ptr_at::<u16>(ctx, icmp_off + i * 2) {
            Some(w) => sum += unsafe { *w } as u64,
            None => break,
        }
        i += 1;
    }
    unsafe { (*icmp).check = csum::fold(sum) };
    Ok(Verdict {
        action: xdp_action::XDP_TX,
        reason,
    })
}

/// An ICMP error about a VIP connection (fragmentation needed on the client's path, for one)
/// belongs to the real that serves the connection: find it from the quoted header and forward.
#[inline(always)]
fn forward_icmp_error(ctx: &XdpContext, pkt: &Packet) -> Result<Verdict, Verdict> {
    let off = pkt.l4_off();
    let icmp: *const IcmpHdr = ptr_at(ctx, off).ok_or(pass(Reason::PassNotService))?;
    if unsafe { (*icmp).kind } != ICMP_DEST_UNREACH {
        return Err(pass(Reason::PassNotService));
    }
    let q = off + ICMP_HLEN;
    let quoted: *const Ipv4Hdr = ptr_at(ctx, q).ok_or(pass(Reason::PassNotService))?;
    let quoted = unsafe { *quoted };
    let qihl = quoted.ihl_bytes();
    if quoted.ver_ihl >> 4 != 4 || qihl < IPV4_HLEN || quoted.saddr != pkt.daddr {
        return Err(pass(Reason::PassNotService));
    }
    if quoted.proto != IPPROTO_TCP && quoted.proto != IPPROTO_UDP {
        return Err(pass(Reason::PassNotService));
    }
    let ports: *const UdpHdr = ptr_at(ctx, (lb_ebpf::opaque((q + qihl) as u32) & 0xff) as usize)
        .ok_or(pass(Reason::PassNotService))?;
    let (qsport, qdport) = unsafe { ((*ports).sport, (*ports).dport) };
    // The quoted packet went from the VIP to the client: reverse it to get the connection.
    let key = ConnKey {
        saddr: quoted.daddr,
        daddr: quoted.saddr,
        sport: qdport,
        dport: qsport,
        proto: quoted.proto,
        _pad: [0; 3],
    };
    // The connection entry names the service through its real; no service lookup needed.
    let conn = match CONNS.get_ptr(&key) {
        Some(c) => unsafe { *c },
        None => return Err(pass(Reason::PassNotService)),
    };
    let real = real_valid(conn.real_id, conn.real_gen, conn.service_id)
        .ok_or(pass(Reason::PassNotService))?;
    let v = encapsulate(ctx, pkt, conn.real_id, &real, unsafe {
        bpf_ktime_get_coarse_ns()
    })?;
    bump(Reason::IcmpForwarded);
    Ok(v)
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
