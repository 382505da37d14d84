//! Programs for `cargo xtask bench`, run through `BPF_PROG_TEST_RUN`.
//!
//! With `repeat` > 1 the kernel runs the program again on the buffer the previous repetition
//! left behind, so a program that encapsulates would be measured on its own output. The wrapper
//! restores the packet from a template before every repetition and tail-calls the program under
//! test; its own cost is measured by tail-calling the empty program and subtracted.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_xdp_adjust_head,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use lb_ebpf::hdr::{ETH_HLEN, EthHdr, IPV4_HLEN, ptr_at};

pub const TEMPLATE_MAX: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Template {
    pub len: u32,
    /// Offset of a 16-bit port to vary on every run (a new flow per packet); 0 = keep.
    pub vary_port_at: u32,
    pub bytes: [u8; TEMPLATE_MAX],
}

#[map(name = "BENCH_TMPL")]
static TEMPLATE: Array<Template> = Array::with_max_entries(1, 0);

#[map(name = "BENCH_PROGS")]
static PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map(name = "BENCH_CTR")]
static COUNTER: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

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
    if want > TEMPLATE_MAX || want < ETH_HLEN {
        return None;
    }
    let cur = ctx.data_end() - ctx.data();
    let delta = cur as i32 - want as i32;
    if delta != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
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
    Some(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
