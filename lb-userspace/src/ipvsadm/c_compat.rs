//! The C library as ipvsadm calls it: `inet_aton`/`inet_pton`, `strtol`/`strtoul`/`atoi`
//! exactly as glibc parses, and host and service name lookups (reentrant forms).

use std::{
    ffi::{CString, c_char, c_int, c_void},
    net::Ipv4Addr,
};

unsafe extern "C" {
    fn inet_aton(cp: *const c_char, inp: *mut libc::in_addr) -> c_int;
    fn inet_pton(af: c_int, src: *const c_char, dst: *mut c_void) -> c_int;
    fn gethostbyname_r(
        name: *const c_char,
        ret: *mut libc::hostent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut c_int,
    ) -> c_int;
    fn getservbyname_r(
        name: *const c_char,
        proto: *const c_char,
        result_buf: *mut libc::servent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
}

/// Arguments reach here already cut at any NUL (as C sees them), so this cannot fail.
pub(super) fn cstring(s: &str) -> CString {
    CString::new(s.split('\0').next().unwrap_or("")).expect("no NUL left")
}

/// glibc `inet_aton`: `a.b.c.d`, `a.b.c`, `a.b`, `a`, each part decimal, octal or hex, and
/// anything after whitespace ignored.
pub(super) fn c_inet_aton(s: &str) -> Option<Ipv4Addr> {
    let c = cstring(s);
    let mut a = libc::in_addr { s_addr: 0 };
    // SAFETY: `c` is a valid C string and `a` a valid in_addr for the call's duration.
    let ok = unsafe { inet_aton(c.as_ptr(), &mut a) };
    (ok != 0).then(|| Ipv4Addr::from(u32::from_be(a.s_addr)))
}

pub(super) fn c_inet_pton4(s: &str) -> Option<Ipv4Addr> {
    let c = cstring(s);
    let mut a = [0u8; 4];
    // SAFETY: `a` has room for an in_addr.
    let ok = unsafe { inet_pton(libc::AF_INET, c.as_ptr(), a.as_mut_ptr().cast()) };
    (ok > 0).then(|| Ipv4Addr::from(a))
}

pub(super) fn c_inet_pton6(s: &str) -> Option<[u8; 16]> {
    let c = cstring(s);
    let mut a = [0u8; 16];
    // SAFETY: `a` has room for an in6_addr.
    let ok = unsafe { inet_pton(libc::AF_INET6, c.as_ptr(), a.as_mut_ptr().cast()) };
    (ok > 0).then_some(a)
}

pub(super) fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A base-10 `strtol`/`strtoul` scan: sign, magnitude (saturated just above u64::MAX), and the
/// end offset, 0 when no digit was found (C's `end == nptr`).
pub(super) struct CNumber {
    negative: bool,
    magnitude: u128,
    end: usize,
}

pub(super) fn scan_c_number(s: &str) -> CNumber {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        negative = b[i] == b'-';
        i += 1;
    }
    let start = i;
    let cap = u64::MAX as u128 + 1;
    let mut magnitude: u128 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        magnitude = (magnitude * 10 + u128::from(b[i] - b'0')).min(cap);
        i += 1;
    }
    if i == start {
        return CNumber {
            negative: false,
            magnitude: 0,
            end: 0,
        };
    }
    CNumber {
        negative,
        magnitude,
        end: i,
    }
}

/// `strtol(s, &end, 10)`: (value, ERANGE, end offset).
pub(super) fn c_strtol(s: &str) -> (i64, bool, usize) {
    let n = scan_c_number(s);
    if n.negative {
        if n.magnitude > 1u128 << 63 {
            (i64::MIN, true, n.end)
        } else {
            ((-(n.magnitude as i128)) as i64, false, n.end)
        }
    } else if n.magnitude > i64::MAX as u128 {
        (i64::MAX, true, n.end)
    } else {
        (n.magnitude as i64, false, n.end)
    }
}

/// `strtoul(s, &end, 10)`, negation modulo 2^64 included.
pub(super) fn c_strtoul(s: &str) -> (u64, bool, usize) {
    let n = scan_c_number(s);
    if n.magnitude > u64::MAX as u128 {
        return (u64::MAX, true, n.end);
    }
    let v = n.magnitude as u64;
    (if n.negative { v.wrapping_neg() } else { v }, false, n.end)
}

/// ipvsadm's `string_to_number`: the whole string a base-10 number within [min, max].
pub(super) fn string_to_number(s: &str, min: i64, max: i64) -> Option<i64> {
    let (v, erange, end) = c_strtol(s);
    (end != 0 && end == s.len() && !erange && min <= v && v <= max).then_some(v)
}

/// glibc `atoi`: `(int) strtol(s, NULL, 10)`.
pub(super) fn c_atoi(s: &str) -> i32 {
    c_strtol(s).0 as i32
}

/// ipvsadm's `str_is_digit` (true for the empty string).
pub(super) fn str_is_digit(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Name lookups, behind a trait so tests need no resolver.
pub(super) trait Lookup {
    /// `gethostbyname`, answering only with an IPv4 address (ipvsadm's `host_to_addr`).
    fn host(&self, name: &str) -> Option<Ipv4Addr>;
    /// `getservbyname(name, proto)`, the port in host order.
    fn service(&self, name: &str, proto: &str) -> Option<u16>;
}

pub(super) struct SystemLookup;

impl Lookup for SystemLookup {
    fn host(&self, name: &str) -> Option<Ipv4Addr> {
        let c = cstring(name);
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: all-zero is a valid hostent (null pointers, zero ints).
            let mut he: libc::hostent = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::hostent = std::ptr::null_mut();
            let mut herr: c_int = 0;
            // SAFETY: every pointer is valid for the call; `buf` outlives the use of `he`.
            let rc = unsafe {
                gethostbyname_r(
                    c.as_ptr(),
                    &mut he,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                    &mut herr,
                )
            };
            if rc == libc::ERANGE && buf.len() < (1 << 20) {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() || he.h_addrtype != libc::AF_INET || he.h_length != 4 {
                return None;
            }
            // SAFETY: glibc filled h_addr_list (inside `buf`) with h_length-byte addresses.
            unsafe {
                let list = he.h_addr_list;
                if list.is_null() || (*list).is_null() {
                    return None;
                }
                let p = (*list).cast::<u8>();
                return Some(Ipv4Addr::new(*p, *p.add(1), *p.add(2), *p.add(3)));
            }
        }
    }

    fn service(&self, name: &str, proto: &str) -> Option<u16> {
        let n = cstring(name);
        let p = cstring(proto);
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: all-zero is a valid servent.
            let mut se: libc::servent = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::servent = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call.
            let rc = unsafe {
                getservbyname_r(
                    n.as_ptr(),
                    p.as_ptr(),
                    &mut se,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < (1 << 20) {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() {
                return None;
            }
            return Some(u16::from_be(se.s_port as u16));
        }
    }
}
