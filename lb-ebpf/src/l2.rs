//! The link layer: Ethernet with at most one 802.1Q tag. Written once for the director and the
//! decapsulation program.
use crate::hdr::{ETH_HLEN, ETH_P_8021Q, ETH_P_IP, EthHdr, VLAN_HLEN, VlanHdr, ptr_at};
use aya_ebpf::programs::XdpContext;

/// Where an IPv4 packet starts in the frame.
#[derive(Clone, Copy)]
pub struct L2 {
    /// Offset of the IPv4 header: 14, or 18 behind a tag.
    pub l3: usize,
    pub vlan: bool,
}

pub enum L2Error {
    /// The frame ends inside the Ethernet header or the tag.
    Truncated,
    /// Another ethertype (ARP, IPv6, …) or more than one tag.
    NotIpv4,
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<L2, L2Error> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(L2Error::Truncated)?;
    let mut proto = unsafe { (*eth).proto };
    let mut l3 = ETH_HLEN;
    let vlan = proto == ETH_P_8021Q;
    if vlan {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HLEN).ok_or(L2Error::Truncated)?;
        proto = unsafe { (*tag).proto };
        l3 += VLAN_HLEN;
    }
    if proto != ETH_P_IP {
        return Err(L2Error::NotIpv4);
    }
    Ok(L2 { l3, vlan })
}

/// After `bpf_xdp_adjust_head(-by)`: copies the Ethernet header (and its tag) that now sits
/// `by` bytes in back to the front of the frame, and returns it there.
#[inline(always)]
pub fn slide_to_front(ctx: &XdpContext, by: usize, vlan: bool) -> Option<*mut EthHdr> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    let old: *const EthHdr = ptr_at(ctx, by)?;
    unsafe { *eth = *old };
    if vlan {
        let tag: *mut [u8; VLAN_HLEN] = ptr_at(ctx, ETH_HLEN)?;
        let old: *const [u8; VLAN_HLEN] = ptr_at(ctx, ETH_HLEN + by)?;
        unsafe { *tag = *old };
    }
    Some(eth)
}
