//! Interfaces by name and index, the kernel release, available memory, and the root check.

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

/// `MemAvailable` of /proc/meminfo, in bytes.
pub fn mem_available() -> Result<u64, SysError> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| SysError::Bpf {
        what: "reading /proc/meminfo".into(),
        source: e.into(),
    })?;
    parse_mem_available(&text).ok_or_else(|| SysError::Bpf {
        what: "reading /proc/meminfo".into(),
        source: "no MemAvailable line".into(),
    })
}

fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mem_available_is_read_in_bytes() {
        let m = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   23000000 kB\n";
        assert_eq!(super::parse_mem_available(m), Some(23_000_000 * 1024));
        assert_eq!(super::parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
