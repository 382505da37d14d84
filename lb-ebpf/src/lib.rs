//! Packet helpers shared by the director, decapsulation and benchmark programs.
#![no_std]

pub mod csum;

// One panic handler for every program object (the verifier proves no panic path is reachable;
// the handler only satisfies the compiler). Host builds of this library use std's.
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
pub mod hdr;

/// Hides a value's range from the compiler, so a mask that the verifier needs for a bounds
/// proof is not optimised away (the compiler may know `x < len <= N`; the verifier does not).
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&x) }
}
