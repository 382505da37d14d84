//! The frames the model sends: IPIP-encapsulated to a real (RFC 2003, IPVS's copies of TOS, TTL,
//! ID and DF), and the ICMP destination-unreachable answers (RFC 792: the IP header and 8 bytes
//! of the offending packet, from the address the client talked to).
use super::{Early, Out, Pkt, XDP_DROP, XDP_TX, be16};
use crate::packet::csum;
use lb_common::Reason;

/// The frame with an outer IPv4 header (`src` to `dst`) between its link layer and its packet;
/// the MACs are still the received ones.
pub(crate) fn encapsulated(f: &[u8], pkt: &Pkt, src: u32, dst: u32) -> Vec<u8> {
    let inner = &f[pkt.l3..];
    let mut out = f[..pkt.l3].to_vec();
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = inner[1];
    h[2..4].copy_from_slice(&(pkt.tot_len + 20).to_be_bytes());
    h[4..6].copy_from_slice(&inner[4..6]);
    h[6..8].copy_from_slice(&(be16(inner, 6) & 0x4000).to_be_bytes());
    h[8] = inner[8];
    h[9] = lb_common::IPPROTO_IPIP;
    h[12..16].copy_from_slice(&src.to_ne_bytes());
    h[16..20].copy_from_slice(&dst.to_ne_bytes());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(inner);
    out
}

/// The ICMP destination-unreachable (`code`) back to the packet's sender, out of the port it
/// came in on; a frame too short to quote is dropped.
pub(crate) fn icmp_reply(
    f: &[u8],
    pkt: &Pkt,
    code: u8,
    mtu: u16,
    reason: Reason,
) -> Result<Out, Early> {
    let quote = pkt.ihl + 8;
    if f.len() < pkt.l3 + quote {
        return Err(Early(XDP_DROP, Reason::DropAdjust));
    }
    let mut out = Vec::with_capacity(pkt.l3 + 28 + quote);
    out.extend_from_slice(&f[6..12]);
    out.extend_from_slice(&f[0..6]);
    out.extend_from_slice(&f[12..pkt.l3]);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[1] = 0xc0;
    h[2..4].copy_from_slice(&((28 + quote) as u16).to_be_bytes());
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&pkt.daddr.to_ne_bytes());
    h[16..20].copy_from_slice(&pkt.saddr.to_ne_bytes());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&h);
    let mut icmp = vec![3, code, 0, 0, 0, 0];
    icmp.extend_from_slice(&mtu.to_be_bytes());
    icmp.extend_from_slice(&f[pkt.l3..pkt.l3 + quote]);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    out.extend_from_slice(&icmp);
    Ok(Out {
        action: XDP_TX,
        data: out,
        reason,
    })
}
