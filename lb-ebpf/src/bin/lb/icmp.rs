//! ICMP: the errors the director answers with (fragmentation needed, port unreachable), and
//! inbound errors about a VIP connection, which belong to that connection's real.
use crate::{
    Packet, Verdict,
    conntrack::real_valid,
    discard, encap,
    maps::{CONNS, CONNS_NEW, bump},
    pass,
};
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{ConnKey, IPPROTO_TCP, IPPROTO_UDP, Reason};
use lb_ebpf::{
    csum,
    hdr::{
        ICMP_DEST_UNREACH, ICMP_HLEN, IPPROTO_ICMP, IPV4_HLEN, IcmpHdr, Ipv4Hdr, UdpHdr, ptr_at,
        store_ipv4,
    },
    l2,
};

/// Turns the packet into an ICMP error back to its sender, quoting its IP header and the first
/// 8 bytes of payload (RFC 792), and sends it out of the port it came in on.
#[inline(always)]
pub fn reply(
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
    // The old L2 header now sits at `grow`: back to the front, MACs swapped.
    let eth =
        l2::slide_to_front(ctx, grow as usize, pkt.vlan).ok_or(discard(Reason::DropAdjust))?;
    unsafe {
        let o = *eth;
        (*eth).dst = o.src;
        (*eth).src = o.dst;
    }
    let icmp_len = ICMP_HLEN + quote;
    // The error comes from the address the client was talking to.
    let h = Ipv4Hdr::new(
        0xc0,
        (IPV4_HLEN + icmp_len) as u16,
        0,
        0,
        64,
        IPPROTO_ICMP,
        pkt.daddr,
        pkt.saddr,
    );
    store_ipv4(ctx, l3, &h).ok_or(discard(Reason::DropAdjust))?;

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
pub fn forward_error(ctx: &XdpContext, pkt: &Packet) -> Result<Verdict, Verdict> {
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
    let conn = match CONNS.get_ptr(&key).or_else(|| CONNS_NEW.get_ptr(&key)) {
        Some(c) => unsafe { *c },
        None => return Err(pass(Reason::PassNotService)),
    };
    let real = real_valid(conn.real_id, conn.real_gen, conn.service_id)
        .ok_or(pass(Reason::PassNotService))?;
    let v = encap::encapsulate(ctx, pkt, conn.real_id, &real, unsafe {
        bpf_ktime_get_coarse_ns()
    })?;
    bump(Reason::IcmpForwarded);
    Ok(v)
}
