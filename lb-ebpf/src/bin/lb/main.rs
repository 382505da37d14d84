//! The director: forwards packets for virtual services to real servers over IPIP (LVS-TUN).
//!
//! One packet: `parse` (here) → `conntrack::established` → for a new flow
//! `schedule::lookup_service` + `admit` (allow-list, flood mode) + `schedule::pick` +
//! `conntrack::record` → `encap::encapsulate`
//! (next hop, outer header, way out) → counted here. Every step returns a `Result`; the entry
//! point turns the outcome into one XDP action and one reason counter. `icmp` answers and
//! forwards ICMP errors; `peer` decapsulates for this host's own real (two-node layout); `tc`
//! holds the two TC programs; `maps` every map.
#![no_std]
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod accounting;
mod admit;
mod conntrack;
mod encap;
mod icmp;
mod maps;
mod peer;
mod schedule;
mod tc;

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_coarse_ns, macros::xdp, programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{ConnKey, IPPROTO_IPIP, IPPROTO_TCP, IPPROTO_UDP, REAL_F_LOCAL, Reason};
use lb_ebpf::{
    hdr::{
        ICMP_PORT_UNREACH, IP_MF, IP_OFFMASK, IPPROTO_ICMP, IPV4_HLEN, Ipv4Hdr, TcpHdr, UdpHdr,
        ptr_at,
    },
    l2::{self, L2Error},
};
use maps::{REAL_STATS, REASONS, SVC_STATS, bump, count, maybe_vip};

/// What to do with a packet, and why (the reason is counted once per packet).
pub struct Verdict {
    pub action: u32,
    pub reason: Reason,
}

#[inline(always)]
pub fn pass(reason: Reason) -> Verdict {
    Verdict {
        action: xdp_action::XDP_PASS,
        reason,
    }
}

#[inline(always)]
pub fn discard(reason: Reason) -> Verdict {
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
pub struct Packet {
    /// Offset of the IPv4 header (after Ethernet and an optional 802.1Q tag).
    l3: usize,
    /// IPv4 header length in bytes (options included).
    ihl: usize,
    pub vlan: bool,
    pub saddr: u32,
    pub daddr: u32,
    proto: u8,
    pub tot_len: u16,
    frag_off: u16,
}

impl Packet {
    // Offsets are re-bounded where they are used: the compiler may keep them in forms (partial
    // stack spills) from which the verifier cannot recover their range.
    #[inline(always)]
    pub fn l3_off(&self) -> usize {
        (lb_ebpf::opaque(self.l3 as u32) & 0x1f) as usize
    }

    /// Offset of the L4 header: at most 18 + 60.
    #[inline(always)]
    pub fn l4_off(&self) -> usize {
        (lb_ebpf::opaque((self.l3 + self.ihl) as u32) & 0x7f) as usize
    }

    /// IPv4 header length: 20..=60.
    #[inline(always)]
    pub fn ihl(&self) -> usize {
        (lb_ebpf::opaque(self.ihl as u32) & 0x3f) as usize
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
    if pkt.proto == IPPROTO_IPIP {
        return peer::decapsulate(ctx, &pkt);
    }
    if !maybe_vip(pkt.daddr) {
        return Err(pass(Reason::PassNotService));
    }
    match pkt.proto {
        IPPROTO_TCP | IPPROTO_UDP => forward(ctx, &pkt),
        IPPROTO_ICMP => icmp::forward_error(ctx, &pkt),
        _ => Err(pass(Reason::PassNotService)),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let l2 = l2::parse(ctx).map_err(|e| match e {
        L2Error::Truncated => pass(Reason::PassMalformed),
        L2Error::NotIpv4 => pass(Reason::PassNotIpv4),
    })?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, l2.l3).ok_or(pass(Reason::PassMalformed))?;
    let ip = unsafe { *ip };
    let ihl = ip.ihl_bytes();
    // Linux 6.1's verifier loses a 16-bit value's bound across the byte swap; a mask the
    // compiler cannot drop gives it back.
    let tot_len = (lb_ebpf::opaque(u16::from_be(ip.tot_len) as u32) & 0xffff) as u16;
    if ip.ver_ihl >> 4 != 4 || ihl < IPV4_HLEN || (tot_len as usize) < ihl {
        return Err(pass(Reason::PassMalformed));
    }
    if ctx.data() + l2.l3 + tot_len as usize > ctx.data_end() {
        return Err(pass(Reason::PassMalformed));
    }
    Ok(Packet {
        l3: l2.l3,
        ihl,
        vlan: l2.vlan,
        saddr: ip.saddr,
        daddr: ip.daddr,
        proto: ip.proto,
        tot_len,
        frag_off: u16::from_be(ip.frag_off),
    })
}

/// A TCP or UDP packet to a VIP: its connection's real, or a new one, then out to it.
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
    let (real_id, real, svc_id, event) = match conntrack::established(&key, flags, now) {
        Ok((id, real)) => (id, real, real.service_id, Reason::TxForwarded),
        Err(hint) => {
            let svc = schedule::lookup_service(pkt.daddr, dport, pkt.proto)
                .ok_or(pass(Reason::PassNotService))?;
            let flooding = admit::admit(ctx, pkt.daddr, pkt.saddr, now)
                .map_err(|()| discard(Reason::DropNotAllowed))?;
            match schedule::pick(&key, &svc, now, hint, flooding) {
                Ok((id, real, event)) => {
                    conntrack::record(
                        ctx,
                        &key,
                        flags,
                        id,
                        &real,
                        svc.id,
                        svc.persist_timeout > 0,
                        flooding,
                        now,
                    );
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
                    return icmp::reply(ctx, pkt, ICMP_PORT_UNREACH, 0, reason);
                }
            }
        }
    };

    // This host's own real (two-node layout): up the stack as it came, no tunnel to itself.
    let fwd = if real.flags & REAL_F_LOCAL != 0 {
        pass(Reason::PassLocalReal)
    } else {
        encap::encapsulate(ctx, pkt, real_id, &real, now)?
    };
    let forwarded = matches!(
        fwd.reason,
        Reason::TxForwarded
            | Reason::RedirectForwarded
            | Reason::PassNoNeigh
            | Reason::PassLocalReal
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

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
