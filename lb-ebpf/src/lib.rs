//! Packet helpers shared by the director, decapsulation and benchmark programs: wire headers
//! (`hdr`), checksums (`csum`), the Ethernet/VLAN layer (`l2`) and IPv4 headers built with their
//! checksum (`ipip`).
#![no_std]

pub mod csum;
pub mod hdr;
pub mod ipip;
pub mod l2;

// One panic handler for every program object (the verifier proves no panic path is reachable;
// the handler only satisfies the compiler). Host builds of this library use std's.
#[cfg(all(target_arch = "bpf", not(test)))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Hides a value's range from the compiler, so a mask that the verifier needs for a bounds
/// proof is not optimised away (the compiler may know `x < len <= N`; the verifier does not).
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&x) }
}
