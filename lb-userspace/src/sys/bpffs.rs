//! Pins on bpffs (where the data path's state outlives every process), and eBPF errors turned
//! into one line.

use super::{SysError, host::kernel_release};
use std::{ffi::CString, path::Path};

/// Name of the pinned XDP link in a pin directory (director and decapsulation alike).
pub const LINK_XDP: &str = "link_xdp";

const BPFFS_ROOT: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

/// The pin directory must live on a bpffs; its parent is checked when it does not exist yet.
/// Like bpftool, mount the standard bpffs at /sys/fs/bpf when nothing is mounted there (some
/// minimal systems and containers boot without it).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), SysError> {
    let probe = if pin_dir.exists() {
        pin_dir
    } else {
        pin_dir.parent().unwrap_or(Path::new("/"))
    };
    if is_bpffs(probe) {
        return Ok(());
    }
    let root = Path::new(BPFFS_ROOT);
    if pin_dir.starts_with(root) && !is_bpffs(root) && root.is_dir() {
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if rc == 0 && is_bpffs(probe) {
            return Ok(());
        }
    }
    Err(SysError::NoBpffs(pin_dir.into()))
}

/// Removes every pin under `pin_dir` and the directory itself.
pub fn remove_pins(pin_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let _ = std::fs::remove_dir(pin_dir);
}

/// Creates the pin directory (on a bpffs).
pub fn create_pin_dir(pin_dir: &Path) -> Result<(), SysError> {
    ensure_bpffs(pin_dir)?;
    std::fs::create_dir_all(pin_dir).map_err(bpf(format!("creating {}", pin_dir.display())))
}

/// Wraps an eBPF error as [`SysError::Bpf`], saying what was being done, in one line.
pub fn bpf<E: std::error::Error>(what: impl Into<String>) -> impl FnOnce(E) -> SysError {
    let what = what.into();
    move |e| SysError::Bpf {
        what,
        source: one_line(&e).into(),
    }
}

/// An error as one line: a verifier rejection carries its whole log, of which the reason is
/// the line before the statistics at the end.
pub fn one_line(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    let Some((head, log)) = text.split_once("Verifier output:") else {
        return text.replace('\n', " ");
    };
    let reason = log
        .lines()
        .map(str::trim)
        .rfind(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("processed ")
                && !l.starts_with("stack depth")
                && !l.starts_with(':')
        })
        .unwrap_or("(empty log)");
    format!(
        "{} verifier says: {reason} (kernel {})",
        head.trim(),
        kernel_release()
    )
}
