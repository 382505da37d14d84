//! The two-node layout: every node is a director and a real server, and the director program
//! also decapsulates what a peer director tunnels to this node's real (there is one XDP program
//! per interface, so the decapsulation cannot be a second program). A decapsulated packet goes
//! up the stack and is never scheduled again, so nothing can loop between the nodes.
use crate::{
    Packet, Verdict, discard,
    maps::{PEERS, maybe_vip, tunnel_src},
    pass,
};
use aya_ebpf::programs::XdpContext;
use lb_common::Reason;
use lb_ebpf::{
    hdr::{IPV4_HLEN, Ipv4Hdr, ptr_at},
    ipip,
    l2::L2,
};

/// An IPIP packet: decapsulated if a peer director sent it to us for one of our VIPs; any other
/// IPIP is the stack's business (`tunl0`, or an ICMP error).
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, pkt: &Packet) -> Result<Verdict, Verdict> {
    if PEERS.get_ptr(&pkt.saddr).is_none() || pkt.daddr != tunnel_src() {
        return Err(pass(Reason::PassNotService));
    }
    let inner: *const Ipv4Hdr =
        ptr_at(ctx, pkt.l4_off()).ok_or(discard(Reason::DropDecapUnknownVip))?;
    let inner = unsafe { *inner };
    if inner.ver_ihl >> 4 != 4 || inner.ihl_bytes() < IPV4_HLEN || !maybe_vip(inner.daddr) {
        return Err(discard(Reason::DropDecapUnknownVip));
    }
    let l2 = L2 {
        l3: pkt.l3_off(),
        vlan: pkt.vlan,
    };
    ipip::decapsulate(ctx, l2, pkt.ihl()).ok_or(discard(Reason::DropAdjust))?;
    Ok(pass(Reason::PassDecapsulated))
}
