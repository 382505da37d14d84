//! The standard namespace topology shared by the integration tests, the demo
//! and the benchmarks:
//!
//! ```text
//!   client (eth0 198.18.0.10)  ──c0─┐
//!   director (eth0 198.18.0.2, ──d0─┤ br0   (in namespace "bridge")
//!             VIP 198.18.0.100/32)  │
//!   [director2 (198.18.0.3), …] ─d2─┤
//!   realN (eth0 198.18.0.(10+N), ─rN┘
//!          VIP on lo, arp_ignore=1, arp_announce=2)
//! ```
//!
//! With more than one director none of them owns the VIP: the client routes it via one of
//! them ([`TestBed::route_vip_via`]), as a router in front of a director tier would.
//!
//! 198.18.0.0/15 is the RFC 2544 benchmarking range; nothing here is routed
//! anywhere, and all traffic stays inside the namespaces the bed creates.

use std::any::Any;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

pub const SUBNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const SUBNET_PREFIX: u8 = 24;
pub const DIRECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
pub const ROUTER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// Directors are 198.18.0.(1+i), below the client.
pub const MAX_DIRECTORS: usize = 7;
/// Real addresses are 198.18.0.(10+i); they must stay below the VIP.
pub const MAX_REALS: usize = 89;
/// The port the tests' echo servers conventionally listen on.
pub const ECHO_PORT: u16 = 7000;
/// Every host's single interface.
pub const HOST_IF: &str = "eth0";
/// The bridge in the bridge namespace.
pub const BRIDGE_IF: &str = "br0";

/// Address of real server `i` (1-based). Panics if `i` is out of range.
pub fn real_addr(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_REALS).contains(&i),
        "real index {i} out of 1..={MAX_REALS}"
    );
    Ipv4Addr::new(198, 18, 0, 10 + i as u8)
}

/// Address of director `i` (1-based).
pub fn director_addr(i: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_DIRECTORS).contains(&i),
        "director index {i} out of 1..={MAX_DIRECTORS}"
    );
    Ipv4Addr::new(198, 18, 0, 1 + i as u8)
}

#[derive(Debug, Clone)]
pub struct TestBedOpts {
    pub reals: usize,
    /// Directors (1: the VIP is on its eth0; more: the client routes the VIP via the first).
    pub directors: usize,
    /// A router host (198.18.0.1, forwarding, no redirects) the client routes the VIP through;
    /// who runs its routing is the test's business (see `crate::fleet`).
    pub router: bool,
    /// The VIP is claimed on the segment by whichever director VRRP elects (keepalived adds it
    /// to that director's eth0): the client reaches it on-link, by ARP.
    pub vrrp: bool,
    pub mtu: u32,
    /// Prefixes the namespace names used in messages, e.g. `lb-client`.
    pub prefix: String,
    /// Disable IPv6 in every namespace so that router solicitations, MLD and
    /// DAD do not add packets to what XDP programs and counters see.
    pub disable_ipv6: bool,
    /// Configure the reals as real servers (VIP on lo, arp_ignore=1, arp_announce=2). Off
    /// for tests that leave that to `lbadm realserver setup`.
    pub configure_reals: bool,
}

impl Default for TestBedOpts {
    fn default() -> Self {
        TestBedOpts {
            reals: 2,
            directors: 1,
            router: false,
            vrrp: false,
            mtu: 1500,
            prefix: "lb".to_owned(),
            disable_ipv6: true,
            configure_reals: true,
        }
    }
}

/// A network interface as it was when the bed was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub mac: [u8; 6],
}

/// One host of the bed: its namespace, its `eth0` and that veth's peer in the
/// bridge namespace.
#[derive(Debug)]
pub struct Host {
    name: String,
    ns: Netns,
    addr: Ipv4Addr,
    eth0: Iface,
    port: Iface,
}

impl Host {
    /// `client`, `director` or `realN`.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }
    pub fn eth0(&self) -> &Iface {
        &self.eth0
    }
    /// The veth peer enslaved to `br0` in the bridge namespace.
    pub fn bridge_port(&self) -> &Iface {
        &self.port
    }
}

/// The built topology. Dropping it removes everything: the guards it owns
/// first, then the namespaces with all their links.
pub struct TestBed {
    // Dropped before the namespaces (see Drop) so that processes and servers
    // inside them stop first.
    owned: Vec<Box<dyn Any + Send>>,
    opts: TestBedOpts,
    bridge: Netns,
    br0: Iface,
    client: Host,
    router: Option<Host>,
    directors: Vec<Host>,
    reals: Vec<Host>,
}

impl TestBed {
    pub fn new(opts: TestBedOpts) -> Result<TestBed> {
        if opts.reals > MAX_REALS {
            bail!(
                "test bed: {} reals requested, at most {MAX_REALS} fit",
                opts.reals
            );
        }
        // Every step below returns on error or unwinds on panic; the
        // namespaces built so far are locals and their drop removes them.
        let p = &opts.prefix;
        let bridge = Netns::new(&format!("{p}-bridge"))?;
        prepare_ns(&bridge, &opts)?;
        bridge.add_bridge(BRIDGE_IF)?;
        bridge.set_mtu(BRIDGE_IF, opts.mtu)?;
        bridge.set_up(BRIDGE_IF)?;
        let br0 = iface(&bridge, BRIDGE_IF)?;

        let client = attach_host(&bridge, &opts, "client", "c0", CLIENT_ADDR)?;
        // The client's TCP segments must be MTU-sized on the wire, or the
        // director's XDP program would see super-frames it cannot forward.
        client.ns.set_offloads(HOST_IF, None, None, Some(false))?;

        if !(1..=MAX_DIRECTORS).contains(&opts.directors) {
            bail!(
                "test bed: 1..={MAX_DIRECTORS} directors, not {}",
                opts.directors
            );
        }
        let mut directors = Vec::new();
        for i in 1..=opts.directors {
            let (name, port) = match i {
                1 => ("director".to_string(), "d0".to_string()),
                _ => (format!("director{i}"), format!("d{i}")),
            };
            directors.push(attach_host(&bridge, &opts, &name, &port, director_addr(i))?);
        }
        let router = if opts.router {
            let r = attach_host(&bridge, &opts, "router", "rt0", ROUTER_ADDR)?;
            r.ns.sysctl_write("net.ipv4.ip_forward", "1")?;
            r.ns.sysctl_write("net.ipv4.fib_multipath_hash_policy", "1")?;
            // Client and directors share the router's segment: no redirect may bypass it.
            r.ns.sysctl_write("net.ipv4.conf.all.send_redirects", "0")?;
            r.ns.sysctl_write("net.ipv4.conf.eth0.send_redirects", "0")?;
            client
                .ns
                .sysctl_write("net.ipv4.conf.all.accept_redirects", "0")?;
            client
                .ns
                .sysctl_write("net.ipv4.conf.eth0.accept_redirects", "0")?;
            client
                .ns
                .add_route(VIP, 32, Some(ROUTER_ADDR), Some(HOST_IF))?;
            Some(r)
        } else {
            None
        };
        if opts.router || opts.vrrp {
            // The router, or VRRP, decides which director gets the VIP's traffic.
        } else if opts.directors == 1 {
            directors[0].ns.add_addr(HOST_IF, VIP, 32)?;
        } else {
            client
                .ns
                .add_route(VIP, 32, Some(director_addr(1)), Some(HOST_IF))?;
        }

        let mut reals = Vec::with_capacity(opts.reals);
        for i in 1..=opts.reals {
            let real = attach_host(
                &bridge,
                &opts,
                &format!("real{i}"),
                &format!("r{i}"),
                real_addr(i),
            )?;
            // Reals accept VIP traffic but must never claim the VIP on the
            // wire: only reply to ARP for addresses of the receiving interface,
            // and never use the VIP as the source of ARP requests.
            if opts.configure_reals {
                real.ns.add_addr("lo", VIP, 32)?;
                real.ns.sysctl_write("net.ipv4.conf.all.arp_ignore", "1")?;
                real.ns
                    .sysctl_write("net.ipv4.conf.all.arp_announce", "2")?;
            }
            reals.push(real);
        }

        Ok(TestBed {
            owned: Vec::new(),
            opts,
            bridge,
            br0,
            client,
            router,
            directors,
            reals,
        })
    }

    pub fn opts(&self) -> &TestBedOpts {
        &self.opts
    }
    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }
    pub fn br0(&self) -> &Iface {
        &self.br0
    }
    pub fn client(&self) -> &Netns {
        &self.client.ns
    }
    pub fn director(&self) -> &Netns {
        &self.directors[0].ns
    }
    /// The router host (a bed built with `router`).
    pub fn router(&self) -> &Host {
        self.router.as_ref().expect("a bed with a router")
    }
    /// Director `i` (1-based).
    pub fn director_n(&self, i: usize) -> &Host {
        &self.directors[i - 1]
    }
    pub fn director_count(&self) -> usize {
        self.directors.len()
    }
    pub fn director_addrs(&self) -> Vec<Ipv4Addr> {
        self.directors.iter().map(|d| d.addr).collect()
    }
    /// Sends the client's traffic for the VIP through director `i` (a bed with several).
    pub fn route_vip_via(&self, i: usize) -> Result<()> {
        self.client
            .ns
            .replace_route(VIP, 32, Some(director_addr(i)), Some(HOST_IF))
    }
    /// Namespace of real server `i` (1-based). Panics if out of range.
    pub fn real(&self, i: usize) -> &Netns {
        &self.real_host(i).ns
    }
    pub fn client_host(&self) -> &Host {
        &self.client
    }
    pub fn director_host(&self) -> &Host {
        &self.directors[0]
    }
    /// Real server `i` (1-based). Panics if out of range.
    pub fn real_host(&self, i: usize) -> &Host {
        assert!(
            (1..=self.reals.len()).contains(&i),
            "real index {i} out of 1..={}",
            self.reals.len()
        );
        &self.reals[i - 1]
    }
    pub fn reals(&self) -> &[Host] {
        &self.reals
    }
    pub fn real_count(&self) -> usize {
        self.reals.len()
    }
    /// Address of real server `i` (1-based). Panics if out of range.
    pub fn real_addr(&self, i: usize) -> Ipv4Addr {
        self.real_host(i).addr
    }
    pub fn vip(&self) -> Ipv4Addr {
        VIP
    }
    pub fn client_addr(&self) -> Ipv4Addr {
        CLIENT_ADDR
    }
    pub fn director_addr(&self) -> Ipv4Addr {
        DIRECTOR_ADDR
    }
    pub fn client_eth0(&self) -> &Iface {
        &self.client.eth0
    }
    pub fn director_eth0(&self) -> &Iface {
        &self.directors[0].eth0
    }
    /// `eth0` of real server `i` (1-based). Panics if out of range.
    pub fn real_eth0(&self, i: usize) -> &Iface {
        &self.real_host(i).eth0
    }

    /// Keeps `guard` (a [`ChildGuard`](crate::netns::ChildGuard), a
    /// [`ServerGuard`], ...) until the bed is dropped, and drops it before the
    /// namespaces go.
    pub fn own(&mut self, guard: impl Any + Send) {
        self.owned.push(Box::new(guard));
    }

    /// Starts a [`line_echo_server`] on `0.0.0.0:port` in every real, named `real1`, ...
    pub fn start_line_echo_servers(&self, port: u16) -> Result<Vec<ServerGuard>> {
        self.reals
            .iter()
            .map(|r| {
                line_echo_server(
                    &r.ns,
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                    &r.name,
                )
            })
            .collect()
    }

    /// Starts an echo server on `0.0.0.0:port` in every real (so it answers on
    /// both the real's own address and the VIP), named `real1`, `real2`, ...
    pub fn start_echo_servers(&self, port: u16) -> Result<Vec<ServerGuard>> {
        self.reals
            .iter()
            .map(|r| {
                tcp_echo_server(
                    &r.ns,
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                    &r.name,
                )
            })
            .collect()
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        // Stop processes and servers before their namespaces lose their fds;
        // the namespaces then go with the fields.
        self.owned.clear();
    }
}

fn prepare_ns(ns: &Netns, opts: &TestBedOpts) -> Result<()> {
    if opts.disable_ipv6 {
        // `all` also updates `default`, so links created later start without
        // IPv6 as well. A kernel without IPv6 has no such file, which is fine.
        match ns.sysctl_write("net.ipv6.conf.all.disable_ipv6", "1") {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::NotFound)
}

fn attach_host(
    bridge: &Netns,
    opts: &TestBedOpts,
    name: &str,
    port: &str,
    addr: Ipv4Addr,
) -> Result<Host> {
    let ns = Netns::new(&format!("{}-{name}", opts.prefix))?;
    prepare_ns(&ns, opts)?;
    bridge.add_veth(port, HOST_IF, &ns)?;

    bridge.set_mtu(port, opts.mtu)?;
    bridge.set_master(port, BRIDGE_IF)?;
    // XDP_TX/redirect out of a host's eth0 lands on this peer, which only
    // receives XDP frames while its NAPI is enabled, and GRO enables it. The
    // bridge must not hand partial checksums on either.
    bridge.set_offloads(port, Some(false), Some(true), None)?;
    bridge.set_up(port)?;

    ns.set_mtu(HOST_IF, opts.mtu)?;
    // XDP forwarding on veth cannot fix up CHECKSUM_PARTIAL packets, so every
    // host sends fully checksummed frames.
    ns.set_offloads(HOST_IF, Some(false), None, None)?;
    ns.add_addr(HOST_IF, addr, SUBNET_PREFIX)?;
    ns.set_up(HOST_IF)?;

    Ok(Host {
        name: name.to_owned(),
        eth0: iface(&ns, HOST_IF)?,
        port: iface(bridge, port)?,
        ns,
        addr,
    })
}

fn iface(ns: &Netns, name: &str) -> Result<Iface> {
    Ok(Iface {
        name: name.to_owned(),
        index: ns.link_index(name)?,
        mac: ns.link_mac(name)?,
    })
}

/// How long echo servers and clients wait on a silent peer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop looks at its stop flag.
const POLL_INTERVAL_MS: i32 = 20;

#[derive(Default)]
struct ServerStats {
    accepted: AtomicU64,
    answered: AtomicU64,
}

/// A running echo server; dropping it stops the server and closes its
/// connections.
pub struct ServerGuard {
    name: String,
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    stats: Arc<ServerStats>,
    thread: Option<JoinHandle<()>>,
}

impl ServerGuard {
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The bound address (with the real port if 0 was requested).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.addr
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.stats.accepted.load(Ordering::Relaxed)
    }
    /// Connections that got their reply line written. Updated just after the
    /// write, so it can lag behind what a client has already read.
    pub fn answered(&self) -> u64 {
        self.stats.answered.load(Ordering::Relaxed)
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts a TCP server listening on `addr` inside `ns`. For each connection it
/// reads until EOF or the first `\n`, then writes back
/// `"<server_name> <bytes received>\n"`, counting the newline if there was
/// one, and closes. Connections are served concurrently.
///
/// Bytes sent after the newline are not read, so closing may reset the
/// connection: clients either send one line or upload and shut down writing.
pub fn tcp_echo_server(ns: &Netns, addr: SocketAddrV4, server_name: &str) -> Result<ServerGuard> {
    echo_server(ns, addr, server_name, serve)
}

/// An echo server for held connections: each line `L` a client sends is answered with
/// `"<server_name> L"`, on the same connection, until the client closes. Reads do not time out
/// (a pooled connection may be idle for long).
pub fn line_echo_server(ns: &Netns, addr: SocketAddrV4, server_name: &str) -> Result<ServerGuard> {
    echo_server(ns, addr, server_name, serve_lines)
}

type Serve = fn(TcpStream, &str) -> io::Result<()>;

fn echo_server(
    ns: &Netns,
    addr: SocketAddrV4,
    server_name: &str,
    serve: Serve,
) -> Result<ServerGuard> {
    let listener = ns
        .try_run(|| bind_listener(addr))
        .and_then(|r| r)
        .with_context(|| {
            format!(
                "netns {}: echo server {server_name} listening on {addr}",
                ns.name()
            )
        })?;
    let bound = match listener.local_addr() {
        Ok(SocketAddr::V4(a)) => a,
        _ => addr,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(ServerStats::default());
    let thread = {
        let (stop, stats, name) = (stop.clone(), stats.clone(), server_name.to_owned());
        ns.spawn(move || accept_loop(listener, &name, &stop, stats, serve))
    };
    Ok(ServerGuard {
        name: server_name.to_owned(),
        addr: bound,
        stop,
        stats,
        thread: Some(thread),
    })
}

fn bind_listener(addr: SocketAddrV4) -> Result<TcpListener> {
    // SAFETY: plain syscall; the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("socket");
    }
    // SAFETY: fd is a fresh socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: valid socket and a c_int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("setsockopt SO_REUSEADDR");
    }
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sin is a valid sockaddr_in and its size is passed along.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sin).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("bind");
    }
    // SAFETY: valid, bound socket.
    if unsafe { libc::listen(fd.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error()).context("listen");
    }
    Ok(TcpListener::from(fd))
}

fn accept_loop(
    listener: TcpListener,
    name: &str,
    stop: &AtomicBool,
    stats: Arc<ServerStats>,
    serve: Serve,
) {
    let mut conns: Vec<(JoinHandle<()>, TcpStream)> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd. Errors (EINTR) just mean another round.
        if unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL_MS) } <= 0 {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                continue;
            }
            Err(e) => {
                eprintln!("echo server {name}: accept: {e}");
                thread::sleep(Duration::from_millis(POLL_INTERVAL_MS as u64));
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        conns.retain(|(h, _)| !h.is_finished());
        let handle = match stream.try_clone() {
            Ok(h) => h,
            Err(e) => {
                eprintln!("echo server {name}: dup of a connection: {e}");
                continue;
            }
        };
        let reply_name = name.to_owned();
        let stats = Arc::clone(&stats);
        match thread::Builder::new().spawn(move || match serve(stream, &reply_name) {
            Ok(()) => {
                stats.answered.fetch_add(1, Ordering::Relaxed);
            }
            // Health checks through the tunnel end with a reset.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => eprintln!("echo server {reply_name}: {e}"),
        }) {
            Ok(h) => conns.push((h, handle)),
            Err(e) => eprintln!("echo server {name}: spawning a connection thread: {e}"),
        }
    }
    // Unblock handlers still waiting for a slow or silent client.
    for (_, s) in &conns {
        let _ = s.shutdown(Shutdown::Both);
    }
    for (h, _) in conns {
        let _ = h.join();
    }
}

fn serve(mut s: TcpStream, name: &str) -> io::Result<()> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received: u64 = 0;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(pos) = buf[..n].iter().position(|&b| b == b'\n') {
            received += pos as u64 + 1;
            break;
        }
        received += n as u64;
    }
    s.write_all(format!("{name} {received}\n").as_bytes())?;
    let _ = s.shutdown(Shutdown::Write);
    Ok(())
}

fn serve_lines(s: TcpStream, name: &str) -> io::Result<()> {
    s.set_nonblocking(false)?;
    let mut out = s.try_clone()?;
    out.set_write_timeout(Some(IO_TIMEOUT))?;
    for line in io::BufRead::lines(io::BufReader::new(s)) {
        out.write_all(format!("{name} {}\n", line?).as_bytes())?;
    }
    Ok(())
}

/// Connects from inside `ns` to `dst`, sends `payload`, shuts down writing and
/// returns the reply line of a [`tcp_echo_server`] without its newline.
pub fn tcp_echo_request(ns: &Netns, dst: SocketAddrV4, payload: &[u8]) -> Result<String> {
    ns.try_run(|| -> Result<String> {
        let mut s =
            TcpStream::connect_timeout(&dst.into(), Duration::from_secs(5)).context("connect")?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.write_all(payload).context("send")?;
        s.shutdown(Shutdown::Write).context("shutdown")?;
        // The server closes without reading what follows a newline, which
        // can turn its FIN into a RST right behind the reply line.
        let mut reply = Vec::new();
        if let Err(e) = s.read_to_end(&mut reply)
            && !(e.kind() == io::ErrorKind::ConnectionReset && reply.contains(&b'\n'))
        {
            return Err(e).context("receive");
        }
        let reply = String::from_utf8_lossy(&reply);
        match reply.strip_suffix('\n') {
            Some(line) if !line.contains('\n') => Ok(line.to_owned()),
            _ => bail!("unexpected reply {reply:?}"),
        }
    })
    .and_then(|r| r)
    .with_context(|| {
        format!(
            "netns {}: echo request to {dst} ({} bytes)",
            ns.name(),
            payload.len()
        )
    })
}
