//! Real-server decapsulation without `tunl0`: strips the outer IPv4 header of IPIP packets that
//! come from a configured director and carry a packet for a configured VIP, and hands the inner
//! packet to the stack as if it had arrived unencapsulated. Other IPIP packets are dropped (a
//! plain `tunl0` would accept tunnelled packets from anyone).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DECAP_COUNTERS, DECAP_DECAPSULATED, DECAP_DROP_MALFORMED, DECAP_DROP_UNKNOWN_DIRECTOR,
    DECAP_DROP_UNKNOWN_VIP, DECAP_PASS_OTHER, IPPROTO_IPIP, MAX_DECAP_ENTRIES,
};
use lb_ebpf::{
    hdr::{ETH_HLEN, IPV4_HLEN, Ipv4Hdr, VLAN_HLEN, ptr_at},
    l2,
};

/// Directors allowed to send us tunnelled packets (outer source, network byte order).
#[map(name = "DECAP_DIRS")]
static DIRECTORS: HashMap<u32, u8> = HashMap::pinned(MAX_DECAP_ENTRIES, 0);

/// VIPs this real server serves (inner destination, network byte order).
#[map(name = "DECAP_VIPS")]
static VIPS: HashMap<u32, u8> = HashMap::pinned(MAX_DECAP_ENTRIES, 0);

#[map(name = "DECAP_STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::pinned(DECAP_COUNTERS, 0);

#[xdp]
pub fn decap_xdp(ctx: XdpContext) -> u32 {
    let (action, counter) = match try_decap(&ctx) {
        Ok(()) => (xdp_action::XDP_PASS, DECAP_DECAPSULATED),
        Err((action, counter)) => (action, counter),
    };
    if let Some(c) = STATS.get_ptr_mut(counter) {
        unsafe { *c += 1 };
    }
    action
}

const PASS_OTHER: (u32, u32) = (xdp_action::XDP_PASS, DECAP_PASS_OTHER);
const MALFORMED: (u32, u32) = (xdp_action::XDP_DROP, DECAP_DROP_MALFORMED);

#[inline(always)]
fn try_decap(ctx: &XdpContext) -> Result<(), (u32, u32)> {
    let l2::L2 { l3, vlan } = l2::parse(ctx).map_err(|_| PASS_OTHER)?;
    let outer: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(PASS_OTHER)?;
    let outer = unsafe { *outer };
    if outer.proto != IPPROTO_IPIP || outer.ver_ihl >> 4 != 4 {
        return Err(PASS_OTHER);
    }
    let olen = outer.ihl_bytes();
    if olen < IPV4_HLEN {
        return Err(MALFORMED);
    }
    if DIRECTORS.get_ptr(outer.saddr).is_none() {
        return Err((xdp_action::XDP_DROP, DECAP_DROP_UNKNOWN_DIRECTOR));
    }
    let inner: *const Ipv4Hdr = ptr_at(ctx, l3 + olen).ok_or(MALFORMED)?;
    let inner = unsafe { *inner };
    if inner.ver_ihl >> 4 != 4 || inner.ihl_bytes() < IPV4_HLEN {
        return Err(MALFORMED);
    }
    if VIPS.get_ptr(inner.daddr).is_none() {
        return Err((xdp_action::XDP_DROP, DECAP_DROP_UNKNOWN_VIP));
    }

    // Keep the L2 header, drop the outer IP header: save L2, move the start, write L2 back.
    let l2 = unsafe { *(ptr_at::<[u8; ETH_HLEN + VLAN_HLEN]>(ctx, 0).ok_or(MALFORMED)?) };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, olen as i32) } != 0 {
        return Err(MALFORMED);
    }
    if vlan {
        let dst: *mut [u8; ETH_HLEN + VLAN_HLEN] = ptr_at(ctx, 0).ok_or(MALFORMED)?;
        unsafe { *dst = l2 };
    } else {
        let dst: *mut [u8; ETH_HLEN] = ptr_at(ctx, 0).ok_or(MALFORMED)?;
        let mut eth = [0u8; ETH_HLEN];
        eth.copy_from_slice(&l2[..ETH_HLEN]);
        unsafe { *dst = eth };
    }
    Ok(())
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
