//! Programs for `cargo xtask bench`, run through `BPF_PROG_TEST_RUN`.
//!
//! With `repeat` > 1 the kernel runs the program again on the buffer the previous repetition
//! left behind, so a program that encapsulates would be measured on its own output. The wrapper
//! restores the packet from a template before every repetition and tail-calls the program under
//! test; its own cost is measured by tail-calling the empty program and subtracted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_xdp_adjust_head},
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_common::{IPPROTO_IPIP, ip_be};
use lb_ebpf::hdr::{ETH_HLEN, ETH_P_IP, EthHdr, IP_DF, IPV4_HLEN, Ipv4Hdr, ptr_at, store_ipv4};

pub const TEMPLATE_MAX: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub len: u32,
    /// Offset of a 16-bit port to vary on every run (a new flow per packet); 0 = keep.
    pub vary_port_at: u32,
    /// Offset of a 32-bit address set to this CPU's counter on every run (a new flow per
    /// packet, four billion of them; userspace sets each CPU's starting value); 0 = keep.
    pub vary_addr_at: u32,
    pub _pad: u32,
    pub bytes: [u8; TEMPLATE_MAX],
}

#[map(name = "BENCH_TMPL")]
static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_PROGS")]
static PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "BENCH_CTR")]
static COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// The reasons counter array as layout 1 had it (19 counters): the upgrade tests pin it in
/// place of `LB_REASONS` to check that a grown array keeps its values.
#[map(name = "BENCH_REASONS1")]
static REASONS_V1: PerCpuArray<u64> = PerCpuArray::with_max_entries(19, 0);

/// A next hop as userspace would keep it per real (the alternative to `bpf_fib_lookup`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NextHop {
    pub dst: u32,
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

#[map(name = "BENCH_NH")]
static NEXT_HOP: Array<NextHop> = Array::with_max_entries(1, 0);

/// Next hop from the kernel's FIB and neighbour table, written into the frame.
#[xdp]
pub fn bench_fib(ctx: XdpContext) -> u32 {
    let Some(nh) = NEXT_HOP.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = 2;
    fib.l4_protocol = 4;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_4.ipv4_dst = nh.dst;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    if rc as u32 != BPF_FIB_LKUP_RET_SUCCESS {
        return xdp_action::XDP_ABORTED;
    }
    set_macs(&ctx, fib.dmac, fib.smac)
}

/// Next hop from a map that userspace keeps current, written into the frame.
#[xdp]
pub fn bench_nhmap(ctx: XdpContext) -> u32 {
    let Some(nh) = NEXT_HOP.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    set_macs(&ctx, nh.dmac, nh.smac)
}

#[inline(always)]
fn set_macs(ctx: &XdpContext, dst: [u8; 6], src: [u8; 6]) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe {
        (*eth).dst = dst;
        (*eth).src = src;
    }
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_empty(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The least an encapsulating forwarder must do: make room, move L2, write 20 bytes, transmit.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let (Some(eth), Some(old), Some(ip)) = (
        ptr_at::<EthHdr>(&ctx, 0),
        ptr_at::<EthHdr>(&ctx, IPV4_HLEN),
        ptr_at::<[u8; IPV4_HLEN]>(&ctx, ETH_HLEN),
    ) else {
        return xdp_action::XDP_ABORTED;
    };
    unsafe {
        *eth = *old;
        *ip = [
            0x45, 0, 0, 74, 0, 0, 0x40, 0, 64, 4, 0, 0, 198, 18, 0, 2, 198, 18, 0, 11,
        ];
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_wrapper(ctx: XdpContext) -> u32 {
    match restore(&ctx) {
        Some(()) => {
            unsafe {
                let _ = PROGS.tail_call(&ctx, 0);
            }
            xdp_action::XDP_ABORTED
        }
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let t = TEMPLATE.get(0)?;
    let want = t.len as usize;
    if !(ETH_HLEN..=TEMPLATE_MAX).contains(&want) {
        return None;
    }
    // The programs under test leave the frame as it was or 20 bytes longer at the front.
    // (Pointer comparisons only: the verifier refuses arithmetic on a packet length.)
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + want + IPV4_HLEN == end {
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, IPV4_HLEN as i32) } != 0 {
            return None;
        }
    } else if start + want != end {
        return None;
    }
    let mut i = 0;
    while i < TEMPLATE_MAX / 8 {
        if i * 8 + 8 > want {
            break;
        }
        let dst: *mut [u8; 8] = ptr_at(ctx, i * 8)?;
        let mut w = [0u8; 8];
        w.copy_from_slice(&t.bytes[i * 8..i * 8 + 8]);
        unsafe { *dst = w };
        i += 1;
    }
    let mut j = i * 8;
    while j < TEMPLATE_MAX {
        if j >= want {
            break;
        }
        let dst: *mut u8 = ptr_at(ctx, j)?;
        unsafe { *dst = t.bytes[j & (TEMPLATE_MAX - 1)] };
        j += 1;
    }
    let at = t.vary_port_at as usize;
    if at != 0 && at + 2 <= want {
        let ctr = COUNTER.get_ptr_mut(0)?;
        let n = unsafe {
            *ctr = (*ctr).wrapping_add(1);
            *ctr
        };
        let port: *mut u16 = ptr_at(ctx, at & (TEMPLATE_MAX - 1))?;
        unsafe { *port = ((n % 60000) as u16 + 1024).to_be() };
    }
    let at = t.vary_addr_at as usize;
    if at != 0 && at + 4 <= want {
        let ctr = COUNTER.get_ptr_mut(0)?;
        let n = unsafe {
            *ctr = (*ctr).wrapping_add(1);
            *ctr
        };
        let addr: *mut [u8; 4] = ptr_at(ctx, at & (TEMPLATE_MAX - 1))?;
        unsafe { *addr = n.to_be_bytes() };
    }
    Some(())
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// The reflector the director's forwarding rate is compared with on the veth path: the least an
/// XDP forwarder does (rewrite the MACs, transmit on the same port), without parsing or
/// encapsulating.
#[xdp]
pub fn bench_reflect(ctx: XdpContext) -> u32 {
    let Some(nh) = NEXT_HOP.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    match set_macs(&ctx, nh.dmac, nh.smac) {
        xdp_action::XDP_PASS => xdp_action::XDP_TX,
        other => other,
    }
}

/// The receiving end of the packet-rate bench: counts and drops IPv4 (passes ARP, so the
/// sender can resolve this host).
#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    match ptr_at::<EthHdr>(&ctx, 0) {
        Some(eth) if unsafe { (*eth).proto } == ETH_P_IP => {}
        _ => return xdp_action::XDP_PASS,
    }
    if let Some(c) = COUNTER.get_ptr_mut(0) {
        unsafe { *c = (*c).wrapping_add(1) };
    }
    xdp_action::XDP_DROP
}

/// The reflector plus the 20 bytes every encapsulating forwarder adds (a valid outer header with
/// the next hop's MACs, no parsing, no state): separates what lbadm's own work costs on the veth
/// path from what a longer frame costs there.
#[xdp]
pub fn bench_reflect_encap(ctx: XdpContext) -> u32 {
    let Some(nh) = NEXT_HOP.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    let Some(eth) = ptr_at::<EthHdr>(&ctx, 0) else {
        return xdp_action::XDP_ABORTED;
    };
    // 198.18.0.2 → 198.18.0.11, protocol 4, DF, TTL 64.
    let len = (ctx.data_end() - ctx.data() - ETH_HLEN) as u16;
    let h = Ipv4Hdr::new(
        0,
        len,
        0,
        IP_DF.to_be(),
        64,
        IPPROTO_IPIP,
        ip_be([198, 18, 0, 2]),
        ip_be([198, 18, 0, 11]),
    );
    unsafe {
        (*eth).dst = nh.dmac;
        (*eth).src = nh.smac;
        (*eth).proto = ETH_P_IP;
    }
    match store_ipv4(&ctx, ETH_HLEN, &h) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}
