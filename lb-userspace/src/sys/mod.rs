//! What lbadm asks of the operating system, for the director and the real server alike:
//! rtnetlink (`netlink`), kernel parameters through procfs (`sysctl`), interfaces and privileges
//! (`host`), and bpffs pins and eBPF loading errors (`bpffs`). Nothing here shells out.

pub mod bpffs;
pub mod host;
pub mod netlink;
pub mod sysctl;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error(
        "this needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach eBPF programs: run it as root"
    )]
    NotRoot,
    #[error("no interface named `{0}`: pick one from `ip -br link`")]
    NoSuchInterface(String),
    #[error(
        "{0} is not on a mounted bpffs: mount one with `mount -t bpf bpf /sys/fs/bpf`, or pass --pin-dir under a bpffs mount"
    )]
    NoBpffs(PathBuf),
    #[error(
        "under {0}: this private mount namespace's /sys/fs/bpf is not the system's bpffs, and pins there would vanish with the command. Run `nsenter --net=/run/netns/NAME lbadm …` instead, or pass --pin-dir on a bpffs mounted outside /sys"
    )]
    PrivateBpffs(String),
    #[error(
        "this kernel cannot attach XDP to `{iface}` (neither native nor generic mode): {source}"
    )]
    NoXdp {
        iface: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// An eBPF operation failed: `what` we were doing, and the error in one line.
    #[error("{what}: {source}")]
    Bpf {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Sysctl(#[from] sysctl::SysctlError),
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
}
