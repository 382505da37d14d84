//! Pins on bpffs (where the data path's state outlives every process), and eBPF errors turned
//! into one line.

use super::{SysError, host::kernel_release};
use std::{
    ffi::CString,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

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

/// The `ip netns` name of this process's network namespace (its entry in /run/netns), if any.
pub fn netns_name() -> Option<String> {
    let own = std::fs::metadata("/proc/self/ns/net").ok()?.ino();
    std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == own))
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

/// The default pin directory `/sys/fs/bpf/BASE`, or `/sys/fs/bpf/BASE-NAME` in the `ip netns`
/// NAME: each network namespace has its own data path, as each has its own IPVS table.
pub fn default_pin_dir(base: &str) -> PathBuf {
    match netns_name() {
        None => Path::new(BPFFS_ROOT).join(base),
        Some(name) => Path::new(BPFFS_ROOT).join(format!("{base}-{name}")),
    }
}

/// The `ip netns` name when this process runs under `ip netns exec NAME`.
fn under_ip_netns_exec() -> Option<String> {
    let name = netns_name()?;
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|m| is_ip_netns_exec_sys(&m, &name))
        .then_some(name)
}

/// Under `ip netns exec`, mounts the system's bpffs at /sys/fs/bpf. `ip netns exec` runs its
/// command in a private mount namespace with a fresh /sys (the network namespace's own), where
/// /sys/fs/bpf is empty and a bpffs mounted there would vanish with the command, pins and
/// pinned links with it. This takes a copy of the bpffs mount from the mount namespace `ip netns
/// exec` was called from (the same bpffs, not a new one) and mounts it here, so state made here
/// outlives the command and `nsenter --net` and the root namespace find it, while /sys and
/// /etc stay as `ip netns exec` made them. Must run while the process has one thread.
pub fn graft_system_bpffs() -> std::io::Result<()> {
    if under_ip_netns_exec().is_none() || is_bpffs(Path::new(BPFFS_ROOT)) {
        return Ok(());
    }
    graft::from_outer_namespace(BPFFS_ROOT)
}

/// `open_tree` + `move_mount` (Linux 5.2): a copy of a mount taken in one mount namespace and
/// mounted in another.
mod graft {
    use std::{
        ffi::CString,
        fs::File,
        io,
        os::{fd::AsRawFd, unix::fs::MetadataExt as _},
        path::Path,
    };

    fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn setns(ns: &File) -> io::Result<()> {
        check(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) }.into()).map(|_| ())
    }

    /// The mount namespace of the nearest ancestor outside this process's own (where `ip
    /// netns exec` was called), else PID 1's.
    fn outer_namespace() -> io::Result<File> {
        let own = std::fs::metadata("/proc/self/ns/mnt")?.ino();
        let parent = |pid: u32| -> Option<u32> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid …: comm may hold spaces and parentheses.
            stat.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        };
        let mut pid = std::process::id();
        while let Some(p) = parent(pid).filter(|&p| p > 0) {
            let ns = format!("/proc/{p}/ns/mnt");
            if std::fs::metadata(&ns).is_ok_and(|m| m.ino() != own) {
                return File::open(ns);
            }
            pid = p;
        }
        File::open("/proc/1/ns/mnt")
    }

    pub fn from_outer_namespace(path: &str) -> io::Result<()> {
        let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let own = File::open("/proc/self/ns/mnt")?;
        // setns resets the working directory to the namespace's root.
        let cwd = File::open(".")?;
        let outer = outer_namespace()?;
        setns(&outer)?;
        let tree = if super::is_bpffs(Path::new(path)) {
            const OPEN_TREE_CLONE: libc::c_long = 1;
            let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long;
            check(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) })
        } else {
            Err(io::Error::other(format!("no bpffs at {path} there either")))
        };
        // Back home whatever happened: this process must not run on in the other mounts.
        setns(&own)?;
        check(unsafe { libc::fchdir(cwd.as_raw_fd()) }.into())?;
        let tree = tree?;
        const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
        let rc = check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        });
        unsafe { libc::close(tree as i32) };
        rc.map(|_| ())
    }
}

/// Whether `mountinfo` shows the /sys that `ip netns exec NAME` mounts in the private mount
/// namespace it runs its command in (a sysfs whose source is the namespace's name).
fn is_ip_netns_exec_sys(mountinfo: &str, name: &str) -> bool {
    mountinfo.lines().any(|l| {
        let Some((left, right)) = l.split_once(" - ") else {
            return false;
        };
        let mut r = right.split(' ');
        left.split(' ').nth(4) == Some("/sys")
            && r.next() == Some("sysfs")
            && r.next() == Some(name)
    })
}

/// The pin directory must live on a bpffs; its parent is checked when it does not exist yet.
/// Like bpftool, mount the standard bpffs at /sys/fs/bpf when nothing is mounted there (some
/// minimal systems and containers boot without it).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), SysError> {
    // Under `ip netns exec`, when the system's bpffs could not be mounted here: never pin where
    // the state would vanish with the command and report success for nothing.
    if pin_dir.starts_with(BPFFS_ROOT)
        && !is_bpffs(Path::new(BPFFS_ROOT))
        && let Some(name) = under_ip_netns_exec()
    {
        return Err(SysError::PrivateBpffs(format!("`ip netns exec {name}`")));
    }
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

/// The `bpf(2)` calls aya keeps to itself: opening a pinned link, asking which program it runs,
/// pointing it at another one, copying an array map whatever its value type (an in-place
/// upgrade), and counting a hash map's entries in batches (the connection tables' fill).
pub mod raw {
    use std::{
        ffi::CString,
        io,
        os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        path::Path,
    };

    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_UPDATE: libc::c_long = 29;

    fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                cmd,
                attr as *mut T,
                std::mem::size_of::<T>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// `BPF_OBJ_GET` / `BPF_OBJ_PIN` on `path`, with `fd` to pin.
    fn obj(cmd: libc::c_long, path: &Path, fd: u32) -> io::Result<libc::c_long> {
        #[repr(C)]
        struct Attr {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut attr = Attr {
            pathname: c.as_ptr() as u64,
            bpf_fd: fd,
            file_flags: 0,
        };
        bpf(cmd, &mut attr)
    }

    /// Opens a pinned object (here: a link).
    pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
        let fd = obj(BPF_OBJ_GET, path, 0)?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Pins an object (a map kept by its fd) at `path`.
    pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        obj(BPF_OBJ_PIN, path, fd.as_raw_fd() as u32).map(|_| ())
    }

    /// The id of the program a link runs.
    pub fn program_id(link: BorrowedFd<'_>) -> io::Result<u32> {
        // struct bpf_link_info: type, id, prog_id, then per-type data.
        let mut info = [0u32; 16];
        #[repr(C)]
        struct Attr {
            bpf_fd: u32,
            info_len: u32,
            info: u64,
        }
        let mut attr = Attr {
            bpf_fd: link.as_raw_fd() as u32,
            info_len: std::mem::size_of_val(&info) as u32,
            info: info.as_mut_ptr() as u64,
        };
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
        Ok(info[2])
    }

    pub fn program_by_id(id: u32) -> io::Result<OwnedFd> {
        #[repr(C)]
        struct Attr {
            prog_id: u32,
            next_id: u32,
            open_flags: u32,
        }
        let mut attr = Attr {
            prog_id: id,
            next_id: 0,
            open_flags: 0,
        };
        let fd = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr)?;
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// Points `link` at `prog`, atomically: every packet runs either the old program or the
    /// new one, never neither.
    pub fn update(link: BorrowedFd<'_>, prog: BorrowedFd<'_>) -> io::Result<()> {
        #[repr(C)]
        struct Attr {
            link_fd: u32,
            new_prog_fd: u32,
            flags: u32,
            old_prog_fd: u32,
        }
        let mut attr = Attr {
            link_fd: link.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        bpf(BPF_LINK_UPDATE, &mut attr).map(|_| ())
    }

    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// Copies entries `0..entries` of one array map into another of the same value type.
    /// Per-CPU values are `value_size` rounded up to 8 bytes per possible CPU.
    pub fn copy_array(
        from: BorrowedFd<'_>,
        to: BorrowedFd<'_>,
        entries: u32,
        value_size: u32,
        per_cpu: bool,
    ) -> io::Result<()> {
        let cpus = if per_cpu {
            aya::util::nr_cpus().map_err(|(_, e)| e)?
        } else {
            1
        };
        let mut value = vec![0u8; (value_size as usize).next_multiple_of(8) * cpus];
        for i in 0..entries {
            let mut key = i;
            let mut get = ElemAttr {
                map_fd: from.as_raw_fd() as u32,
                _pad: 0,
                key: &mut key as *mut u32 as u64,
                value: value.as_mut_ptr() as u64,
                flags: 0,
            };
            bpf(BPF_MAP_LOOKUP_ELEM, &mut get)?;
            let mut set = ElemAttr {
                map_fd: to.as_raw_fd() as u32,
                ..get
            };
            bpf(BPF_MAP_UPDATE_ELEM, &mut set)?;
        }
        Ok(())
    }

    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

    /// One `BPF_MAP_LOOKUP_BATCH`: up to `count` entries into `keys` and `values` (room for
    /// `count` of each), from the position `token` holds (None: the start), which it advances.
    /// Returns how many entries were read and whether the map has no more.
    ///
    /// # Safety
    /// `keys` and `values` must point to room for `count` keys and values of the map.
    pub unsafe fn lookup_batch(
        map: BorrowedFd<'_>,
        token: &mut Option<u64>,
        keys: *mut u8,
        values: *mut u8,
        count: u32,
    ) -> io::Result<(u32, bool)> {
        #[repr(C)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        // The kernel's tokens (a bucket or an index) are 32-bit; u64 leaves room.
        let mut next = 0u64;
        let mut attr = BatchAttr {
            in_batch: token.as_mut().map_or(0, |t| t as *mut u64 as u64),
            out_batch: &mut next as *mut u64 as u64,
            keys: keys as u64,
            values: values as u64,
            count,
            map_fd: map.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => {
                *token = Some(next);
                Ok((attr.count, false))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok((attr.count, true)),
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on each batch of a hash map's entries: a million entries in a few hundred
    /// calls, where walking the keys takes two calls per entry. `K` and `V` are the map's key
    /// and value as stored (not per-CPU).
    pub fn each_batch<K: bytemuck::Pod, V: bytemuck::Pod>(
        map: BorrowedFd<'_>,
        mut f: impl FnMut(&[K], &[V]),
    ) -> io::Result<()> {
        const BATCH: usize = 4096;
        let mut keys = vec![K::zeroed(); BATCH];
        let mut values = vec![V::zeroed(); BATCH];
        let mut token = None;
        loop {
            // SAFETY: both buffers hold BATCH entries of the map's key and value types.
            let (n, done) = unsafe {
                lookup_batch(
                    map,
                    &mut token,
                    keys.as_mut_ptr().cast(),
                    values.as_mut_ptr().cast(),
                    BATCH as u32,
                )
            }?;
            f(&keys[..n as usize], &values[..n as usize]);
            if done {
                return Ok(());
            }
        }
    }

    /// The number of entries in a hash map (see [`each_batch`]).
    pub fn count_entries<K: bytemuck::Pod, V: bytemuck::Pod>(
        map: BorrowedFd<'_>,
    ) -> io::Result<u64> {
        let mut total = 0;
        each_batch::<K, V>(map, |k, _| total += k.len() as u64)?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ip_netns_exec_is_recognised_by_its_sys() {
        let host = "23 27 0:22 / /sys rw,relatime - sysfs sysfs rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        let exec =
            "49 48 254:0 / / rw - ext4 /dev/vda rw\n52 49 0:41 / /sys rw,relatime - sysfs ns1 rw\n";
        assert!(!super::is_ip_netns_exec_sys(host, "ns1"));
        assert!(super::is_ip_netns_exec_sys(exec, "ns1"));
        assert!(!super::is_ip_netns_exec_sys(exec, "ns2"));
    }
}
