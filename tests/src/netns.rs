//! Unnamed network namespaces for tests.
//!
//! A [`Netns`] is held only by a file descriptor: nothing is bind-mounted under
//! `/run/netns`, so the kernel drops the namespace (and every veth, bridge,
//! address and route in it) as soon as the last fd, thread, process or socket
//! inside it goes away. That makes cleanup automatic, also when a test panics
//! or the whole test process is killed.
//!
//! All configuration happens from a short-lived thread that has `setns`'d into
//! the namespace, so nothing here ever touches the host's namespace.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::panic;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow, bail};
use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use netlink_packet_route::route::RouteScope;
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

/// An unnamed network namespace, alive as long as this value (or anything
/// running inside the namespace) is.
pub struct Netns {
    name: String,
    // Shared so that `spawn`ed threads and `command` children can hold the
    // namespace open independently of this value's lifetime.
    fd: Arc<OwnedFd>,
    inode: u64,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("name", &self.name)
            .field("inode", &self.inode)
            .finish()
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// TX checksum, GRO and TSO state of a link, as reported by ethtool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    pub tx_csum: bool,
    pub gro: bool,
    pub tso: bool,
}

impl Netns {
    /// Creates a fresh network namespace whose `lo` is up. `name` is only used
    /// in messages.
    pub fn new(name: &str) -> Result<Netns> {
        // unshare() switches the calling thread only, so do it on a throwaway
        // thread and keep the namespace alive through the fd.
        let (fd, inode) = thread::Builder::new()
            .spawn(|| -> io::Result<(OwnedFd, u64)> {
                // SAFETY: a plain syscall affecting only this thread.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                let file = File::open("/proc/thread-self/ns/net")?;
                let inode = file.metadata()?.ino();
                Ok((file.into(), inode))
            })
            .with_context(|| format!("netns {name}: spawning the creator thread"))?
            .join()
            .map_err(|_| anyhow!("netns {name}: the creator thread panicked"))?
            .with_context(|| format!("netns {name}: unshare(CLONE_NEWNET)"))?;
        let ns = Netns {
            name: name.to_owned(),
            fd: Arc::new(fd),
            inode,
        };
        ns.set_up("lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The namespace's inode number, as in the `net:[INODE]` links under
    /// `/proc/PID/ns/net`.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` on a thread inside the namespace and returns its result; a
    /// panic in `f` is propagated. Sockets `f` creates belong to the namespace
    /// and stay there when handed back to other threads.
    ///
    /// Panics if the thread cannot be started or cannot enter the namespace;
    /// use [`Netns::try_run`] to get that as an error.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.try_run(f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Netns::run`], but failing to start the thread or to enter the
    /// namespace is an error instead of a panic.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let fd = self.fd();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .spawn_scoped(s, move || -> io::Result<T> {
                    enter(fd)?;
                    Ok(f())
                })
                .with_context(|| format!("netns {}: spawning a thread", self.name))?;
            match handle.join() {
                Ok(r) => r.with_context(|| format!("netns {}: setns", self.name)),
                Err(payload) => panic::resume_unwind(payload),
            }
        })
    }

    /// Starts a long-running thread inside the namespace (e.g. a test server).
    /// The thread keeps the namespace alive until it returns.
    ///
    /// Panics if the thread cannot be started; the thread itself panics if it
    /// cannot enter the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let fd = Arc::clone(&self.fd);
        let name = self.name.clone();
        thread::spawn(move || {
            if let Err(e) = enter(fd.as_fd()) {
                panic!("netns {name}: setns: {e}");
            }
            drop(fd);
            f()
        })
    }

    /// A [`Command`] whose child runs inside the namespace.
    ///
    /// The child also gets `PR_SET_PDEATHSIG(SIGKILL)` so that it cannot outlive
    /// the test process and keep the namespace alive. The kernel ties that signal
    /// to the *thread* that spawns the child: spawn long-lived children from a
    /// thread that lives at least as long as they should (a test's own thread is
    /// fine; a [`Netns::run`] closure is not). Wrap the child in a [`ChildGuard`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        // The closure owns a reference to the fd, so the number stays valid in
        // the forked child even if this Netns is dropped before spawn().
        let fd = Arc::clone(&self.fd);
        let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
        // SAFETY: only async-signal-safe syscalls run between fork and exec, and
        // the errors are built without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died before prctl() took effect.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` with an rtnetlink handle whose socket lives in the namespace, on
    /// a current-thread tokio runtime inside a [`Netns::try_run`] thread.
    /// `what` names the operation in the error.
    pub fn rtnl<T, F, Fut>(&self, what: impl fmt::Display, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<T>>,
    {
        self.try_run(move || -> Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("building a tokio runtime")?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().context("opening an rtnetlink socket")?;
                let conn = tokio::spawn(conn);
                let result = f(handle).await;
                conn.abort();
                result
            })
        })
        .and_then(|r| r)
        .with_context(|| format!("netns {}: {what}", self.name))
    }

    /// Creates a veth pair: `name` in this namespace, `peer_name` in `peer_ns`.
    /// Both ends start down.
    pub fn add_veth(&self, name: &str, peer_name: &str, peer_ns: &Netns) -> Result<()> {
        let peer_fd = peer_ns.fd.as_raw_fd();
        self.rtnl(
            format_args!(
                "add veth {name} (peer {peer_name} in netns {})",
                peer_ns.name
            ),
            |h| async move {
                // The kernel creates the peer directly in the namespace named by
                // IFLA_NET_NS_FD inside VETH_INFO_PEER; rtnetlink's veth builder
                // has no setter for it, so the peer message is built by hand.
                let peer = LinkUnspec::new_with_name(peer_name)
                    .setns_by_fd(peer_fd)
                    .build();
                let msg = LinkVeth::new(name, peer_name)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                    .build();
                h.link().add(msg).execute().await?;
                Ok(())
            },
        )
    }

    /// Creates a Linux bridge (down, STP off).
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.rtnl(format_args!("add bridge {name}"), |h| async move {
            // Not LinkBridge::new(): that one also sets the link up.
            let msg = LinkMessageBuilder::<LinkBridge>::new(name).build();
            h.link().add(msg).execute().await?;
            Ok(())
        })
    }

    /// Enslaves `link` to `bridge`.
    pub fn set_master(&self, link: &str, bridge: &str) -> Result<()> {
        self.rtnl(
            format_args!("set master of {link} to {bridge}"),
            |h| async move {
                let br = index_of(&h, bridge).await?;
                let msg = LinkUnspec::new_with_name(link).controller(br).build();
                h.link().change(msg).execute().await?;
                Ok(())
            },
        )
    }

    pub fn set_up(&self, link: &str) -> Result<()> {
        self.rtnl(format_args!("set link {link} up"), |h| async move {
            let msg = LinkUnspec::new_with_name(link).up().build();
            h.link().change(msg).execute().await?;
            Ok(())
        })
    }

    pub fn set_down(&self, link: &str) -> Result<()> {
        self.rtnl(format_args!("set link {link} down"), |h| async move {
            let msg = LinkUnspec::new_with_name(link).down().build();
            h.link().change(msg).execute().await?;
            Ok(())
        })
    }

    pub fn set_mtu(&self, link: &str, mtu: u32) -> Result<()> {
        self.rtnl(
            format_args!("set mtu {mtu} on link {link}"),
            |h| async move {
                let msg = LinkUnspec::new_with_name(link).mtu(mtu).build();
                h.link().change(msg).execute().await?;
                Ok(())
            },
        )
    }

    pub fn add_addr(&self, link: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rtnl(
            format_args!("add address {ip}/{prefix} on link {link}"),
            |h| async move {
                let index = index_of(&h, link).await?;
                h.address()
                    .add(index, IpAddr::V4(ip), prefix)
                    .execute()
                    .await?;
                Ok(())
            },
        )
    }

    pub fn del_addr(&self, link: &str, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rtnl(
            format_args!("delete address {ip}/{prefix} from link {link}"),
            |h| async move {
                let index = index_of(&h, link).await?;
                let msg = AddressMessageBuilder::<Ipv4Addr>::new()
                    .index(index)
                    .address(ip, prefix)
                    .build();
                h.address().del(msg).execute().await?;
                Ok(())
            },
        )
    }

    /// The IPv4 addresses (with prefix length) configured on `link`.
    pub fn ipv4_addrs(&self, link: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        self.rtnl(
            format_args!("list addresses of link {link}"),
            |h| async move {
                let index = index_of(&h, link).await?;
                let mut stream = h.address().get().set_link_index_filter(index).execute();
                let mut out = Vec::new();
                while let Some(msg) = stream.try_next().await? {
                    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
                    // peer's on point-to-point links.
                    let local = msg.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                        _ => None,
                    });
                    let addr = local.or_else(|| {
                        msg.attributes.iter().find_map(|a| match a {
                            AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                            _ => None,
                        })
                    });
                    if let Some(ip) = addr {
                        out.push((ip, msg.header.prefix_len));
                    }
                }
                Ok(out)
            },
        )
    }

    /// Adds a route to `dst/prefix` (prefix 0: the default route) via `gw`
    /// and/or out of `dev`. Without a gateway the route is on-link.
    pub fn add_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<()> {
        self.route(dst, prefix, gw, dev, false)
    }

    /// [`Netns::add_route`], replacing a route to the same destination if there is one.
    pub fn replace_route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
        dev: Option<&str>,
    ) -> Result<()> {
        self.route(dst, prefix, gw, dev, true)
    }

    fn route(
        &self,
        dst: Ipv4Addr,
        prefix: u8,
        gw: Option<Ipv4Addr>,
        dev: Option<&str>,
        replace: bool,
    ) -> Result<()> {
        let via = match (gw, dev) {
            (Some(gw), Some(dev)) => format!(" via {gw} dev {dev}"),
            (Some(gw), None) => format!(" via {gw}"),
            (None, Some(dev)) => format!(" dev {dev}"),
            (None, None) => bail!(
                "netns {}: add route {dst}/{prefix}: needs a gateway or a device",
                self.name
            ),
        };
        self.rtnl(
            format_args!("add route {dst}/{prefix}{via}"),
            |h| async move {
                let mut route = RouteMessageBuilder::<Ipv4Addr>::new();
                if prefix > 0 {
                    route = route.destination_prefix(dst, prefix);
                }
                if let Some(gw) = gw {
                    route = route.gateway(gw);
                } else {
                    route = route.scope(RouteScope::Link);
                }
                if let Some(dev) = dev {
                    route = route.output_interface(index_of(&h, dev).await?);
                }
                let req = h.route().add(route.build());
                if replace {
                    req.replace().execute().await?;
                } else {
                    req.execute().await?;
                }
                Ok(())
            },
        )
    }

    /// The next hops of the main table's route to `dst/32` (several for a multipath route).
    pub fn route_nexthops(&self, dst: Ipv4Addr) -> Result<Vec<Ipv4Addr>> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
        self.rtnl(format_args!("routes to {dst}"), |h| async move {
            let mut s = h
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            let mut out = Vec::new();
            while let Some(m) = futures::TryStreamExt::try_next(&mut s).await? {
                let main = m.header.table == RouteHeader::RT_TABLE_MAIN;
                let to_dst = m
                    .attributes
                    .contains(&RouteAttribute::Destination(RouteAddress::Inet(dst)));
                if !main || m.header.destination_prefix_length != 32 || !to_dst {
                    continue;
                }
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Gateway(RouteAddress::Inet(g)) => out.push(*g),
                        RouteAttribute::MultiPath(hops) => {
                            for hop in hops {
                                for ha in &hop.attributes {
                                    if let RouteAttribute::Gateway(RouteAddress::Inet(g)) = ha {
                                        out.push(*g);
                                    }
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            out.sort();
            Ok(out)
        })
    }

    /// Adds (or replaces) a permanent ARP entry `ip -> mac` on `link`.
    pub fn add_neigh_permanent(&self, link: &str, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.rtnl(
            format_args!(
                "add permanent neighbour {ip} lladdr {} on link {link}",
                fmt_mac(mac)
            ),
            |h| async move {
                let index = index_of(&h, link).await?;
                h.neighbours()
                    .add(index, IpAddr::V4(ip))
                    .link_layer_address(&mac)
                    .replace()
                    .execute()
                    .await?;
                Ok(())
            },
        )
    }

    pub fn link_index(&self, link: &str) -> Result<u32> {
        self.rtnl(
            format_args!("look up index of link {link}"),
            |h| async move { index_of(&h, link).await },
        )
    }

    pub fn link_mac(&self, link: &str) -> Result<[u8; 6]> {
        self.rtnl(format_args!("look up MAC of link {link}"), |h| async move {
            let msg = h
                .link()
                .get()
                .match_name(link)
                .execute()
                .try_next()
                .await?
                .ok_or_else(|| anyhow!("link {link} not found"))?;
            msg.attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(mac) => <[u8; 6]>::try_from(mac.as_slice()).ok(),
                    _ => None,
                })
                .ok_or_else(|| anyhow!("link {link} has no 6-byte hardware address"))
        })
    }

    /// Switches TX checksum offload, GRO and TSO on or off (`None` leaves it
    /// alone) with the legacy ethtool ioctls. Turning TX checksumming off also
    /// makes the kernel drop TSO, which depends on it.
    pub fn set_offloads(
        &self,
        link: &str,
        tx_csum: Option<bool>,
        gro: Option<bool>,
        tso: Option<bool>,
    ) -> Result<()> {
        let what = format!(
            "set offloads on link {link} (tx-checksum {}, gro {}, tso {})",
            onoff(tx_csum),
            onoff(gro),
            onoff(tso)
        );
        self.try_run(|| -> Result<()> {
            let sock = ioctl_socket()?;
            for (cmd, value, feature) in [
                (ETHTOOL_STXCSUM, tx_csum, "tx-checksum"),
                (ETHTOOL_SGRO, gro, "gro"),
                (ETHTOOL_STSO, tso, "tso"),
            ] {
                if let Some(on) = value {
                    ethtool_value(sock.as_fd(), link, cmd, u32::from(on))
                        .with_context(|| format!("SIOCETHTOOL {feature}"))?;
                }
            }
            Ok(())
        })
        .and_then(|r| r)
        .with_context(|| format!("netns {}: {what}", self.name))
    }

    pub fn offloads(&self, link: &str) -> Result<Offloads> {
        self.try_run(|| -> Result<Offloads> {
            let sock = ioctl_socket()?;
            let get = |cmd, feature| {
                ethtool_value(sock.as_fd(), link, cmd, 0)
                    .map(|v| v != 0)
                    .with_context(|| format!("SIOCETHTOOL get {feature}"))
            };
            Ok(Offloads {
                tx_csum: get(ETHTOOL_GTXCSUM, "tx-checksum")?,
                gro: get(ETHTOOL_GGRO, "gro")?,
                tso: get(ETHTOOL_GTSO, "tso")?,
            })
        })
        .and_then(|r| r)
        .with_context(|| format!("netns {}: read offloads of link {link}", self.name))
    }

    /// Writes a sysctl of this namespace. `key` is dotted
    /// (`net.ipv4.conf.all.rp_filter`) or, for names that contain dots such as
    /// VLAN devices, slash-separated (`net/ipv4/conf/eth0.100/rp_filter`).
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<()> {
        let path = sysctl_path(key)?;
        // /proc/sys/net resolves against the namespace of the thread that
        // opens the file, so opening it from inside the namespace is enough.
        self.try_run(|| -> io::Result<()> {
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .write_all(value.as_bytes())
        })
        .and_then(|r| r.with_context(|| format!("writing {}", path.display())))
        .with_context(|| format!("netns {}: sysctl {key}={value}", self.name))
    }

    /// Reads a sysctl of this namespace, without the trailing newline.
    pub fn sysctl_read(&self, key: &str) -> Result<String> {
        let path = sysctl_path(key)?;
        self.try_run(|| fs::read_to_string(&path))
            .and_then(|r| r.with_context(|| format!("reading {}", path.display())))
            .map(|s| s.trim_end_matches('\n').to_owned())
            .with_context(|| format!("netns {}: read sysctl {key}", self.name))
    }
}

/// Kills and reaps the child on drop, so that no test process survives its
/// test (and keeps a namespace alive).
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard { child: Some(child) }
    }

    /// Spawns `cmd` and guards the child.
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(ChildGuard::new(child))
    }

    /// Waits for the child to exit by itself.
    pub fn wait(mut self) -> io::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => child.wait(),
            None => Err(io::Error::other("child already reaped")),
        }
    }

    /// Kills and reaps the child now.
    pub fn kill(mut self) -> io::Result<ExitStatus> {
        match self.child.take() {
            Some(mut child) => {
                child.kill()?;
                child.wait()
            }
            None => Err(io::Error::other("child already reaped")),
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        // Only `wait`/`kill` take the child, and they consume the guard.
        self.child
            .as_ref()
            .expect("ChildGuard always holds a child until consumed")
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("ChildGuard always holds a child until consumed")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it is already gone; wait() still reaps it.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Inode numbers of the network namespaces this process can see as alive:
/// those of every thread of every process, plus those this process holds by
/// fd. Namespaces pinned only by a socket or a bind mount are not included.
pub fn visible_netns_inodes() -> BTreeSet<u64> {
    let mut links = Vec::new();
    if let Ok(procs) = fs::read_dir("/proc") {
        for p in procs.flatten() {
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            if let Ok(tasks) = fs::read_dir(p.path().join("task")) {
                links.extend(tasks.flatten().map(|t| t.path().join("ns/net")));
            }
        }
    }
    if let Ok(fds) = fs::read_dir("/proc/self/fd") {
        links.extend(fds.flatten().map(|f| f.path()));
    }
    links
        .iter()
        .filter_map(|l| fs::read_link(l).ok())
        .filter_map(|target| {
            let t = target.to_str()?;
            t.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

fn enter(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a plain syscall on a valid fd; it only affects the calling thread.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

async fn index_of(h: &Handle, link: &str) -> Result<u32> {
    let msg = h
        .link()
        .get()
        .match_name(link)
        .execute()
        .try_next()
        .await
        .with_context(|| format!("looking up link {link}"))?
        .ok_or_else(|| anyhow!("link {link} not found"))?;
    Ok(msg.header.index)
}

fn sysctl_path(key: &str) -> Result<PathBuf> {
    let rel = if key.contains('/') {
        key.to_owned()
    } else {
        key.replace('.', "/")
    };
    let valid = !rel.is_empty()
        && rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if !valid {
        bail!("invalid sysctl key {key:?}");
    }
    Ok(PathBuf::from("/proc/sys").join(rel))
}

const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_GTSO: u32 = 0x1e;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

/// `struct ethtool_value` from <linux/ethtool.h>.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ioctl_socket() -> Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("creating a socket for ioctls");
    }
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

fn ethtool_value(sock: BorrowedFd<'_>, link: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if link.len() >= ifr.ifr_name.len() || link.as_bytes().contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid interface name",
        ));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(link.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
    // SAFETY: ifr is a valid ifreq whose data pointer refers to `value`, which
    // outlives the call; SIOCETHTOOL reads and writes only that struct.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

fn onoff(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "unchanged",
    }
}

pub fn fmt_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
