//! Packet helpers shared by the director, decapsulation and benchmark programs.
#![no_std]

pub mod csum;
pub mod hdr;

/// Hides a value's range from the compiler, so a mask that the verifier needs for a bounds
/// proof is not optimised away (the compiler may know `x < len <= N`; the verifier does not).
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    unsafe { core::ptr::read_volatile(&x) }
}
