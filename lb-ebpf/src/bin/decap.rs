//! Real-server decapsulation without `tunl0`: strips the outer IPv4 header of IPIP packets that
//! come from a configured director and carry a packet for a configured VIP, and hands the inner
//! packet to the stack as if it had arrived unencapsulated. Other IPIP packets are dropped (a
//! plain `tunl0` would accept tunnelled packets from anyone).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    DECAP_COUNTERS, DECAP_DECAPSULATED, DECAP_DROP_MALFORMED, DECAP_DROP_UNKNOWN_DIRECTOR,
    DECAP_DROP_UNKNOWN_VIP, DECAP_PASS_OTHER, IPPROTO_IPIP, MAX_DECAP_ENTRIES,
};
use lb_ebpf::{
    hdr::{IPV4_HLEN, Ipv4Hdr, ptr_at},
    ipip, l2,
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

    ipip::decapsulate(ctx, l2::L2 { l3, vlan }, olen).ok_or(MALFORMED)?;
    Ok(())
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
