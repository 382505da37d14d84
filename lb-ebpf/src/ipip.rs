//! IPv4 headers the programs write: the outer header of IPIP (director, tunnel probes, bench)
//! and the header of the ICMP errors the director answers with. The checksum is computed here
//! and nowhere else.
use crate::{
    csum,
    hdr::{ETH_HLEN, IP_DF, IPV4_HLEN, Ipv4Hdr, VLAN_HLEN, ptr_at},
    l2::L2,
};
use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::IPPROTO_IPIP;

impl Ipv4Hdr {
    /// A 20-byte header (no options) with its checksum filled in.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn new(
        tos: u8,
        tot_len: u16,
        id: u16,
        frag_off: u16,
        ttl: u8,
        proto: u8,
        saddr: u32,
        daddr: u32,
    ) -> Ipv4Hdr {
        let mut h = Ipv4Hdr {
            ver_ihl: 0x45,
            tos,
            tot_len: tot_len.to_be(),
            id,
            frag_off,
            ttl,
            proto,
            check: 0,
            saddr,
            daddr,
        };
        let words: [u16; 10] = unsafe { core::mem::transmute(h) };
        h.check = csum::ipv4_header(&words);
        h
    }
}

/// The outer header that carries `inner` (its header as received, `inner_len` bytes in all)
/// from `src` to `dst`. TOS, TTL, ID and DF are copied from the inner header, as IPVS does:
/// the tunnel keeps the client's QoS marking and path-MTU behaviour.
#[inline(always)]
pub fn outer(inner: &Ipv4Hdr, inner_len: u32, src: u32, dst: u32) -> Ipv4Hdr {
    Ipv4Hdr::new(
        inner.tos,
        (inner_len + IPV4_HLEN as u32) as u16,
        inner.id,
        inner.frag_off & IP_DF.to_be(),
        inner.ttl,
        IPPROTO_IPIP,
        src,
        dst,
    )
}

/// Strips an outer IPv4 header of `olen` bytes behind the link layer `l2`, keeping the Ethernet
/// header (and its tag): the inner packet then looks as if it had arrived unencapsulated.
#[inline(always)]
pub fn decapsulate(ctx: &XdpContext, l2: L2, olen: usize) -> Option<()> {
    // Save L2, move the start past the outer header, write L2 back.
    let saved = unsafe { *(ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0)?) };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, olen as i32) } != 0 {
        return None;
    }
    if l2.vlan {
        let dst: *mut [u8; ETH_HLEN + VLAN_HLEN] = ptr_at(ctx, 0)?;
        unsafe { *dst = saved };
    } else {
        let dst: *mut [u8; ETH_HLEN] = ptr_at(ctx, 0)?;
        let mut eth = [0u8; ETH_HLEN];
        eth.copy_from_slice(&saved[..ETH_HLEN]);
        unsafe { *dst = eth };
    }
    Some(())
}
