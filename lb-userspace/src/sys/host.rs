//! Interfaces by name and index, the kernel release, and the root check.

use super::SysError;
use std::ffi::CString;

pub fn ensure_root() -> Result<(), SysError> {
    if unsafe { libc::geteuid() } != 0 {
        return Err(SysError::NotRoot);
    }
    Ok(())
}

pub fn ifindex(iface: &str) -> Result<u32, SysError> {
    let c = CString::new(iface).map_err(|_| SysError::NoSuchInterface(iface.into()))?;
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(SysError::NoSuchInterface(iface.into())),
        i => Ok(i),
    }
}

pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    Some(s.to_string_lossy().into_owned())
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
