//! ipvsadm v1.31's output formats, byte for byte: `-L` (default, `--stats`, `--rate`,
//! `--exact`, `--nosort`, `-n`), `-L -c`, `-L --timeout` and `-S`, plus our `-L --json`.
//!
//! Everything here is a pure function of its arguments except name resolution, which goes
//! through a [`Resolver`] ([`SystemResolver`] does what ipvsadm does without `-n`;
//! [`NumericResolver`] never resolves). The spec is `docs/reference/ipvsadm.md` §1.4–1.7; the
//! printf formats quoted in comments below are ipvsadm's (`ipvsadm.c`, `libipvs/libipvs.c`).
//!
//! Where ipvsadm has a quirk, it is copied, because scripts parse this output:
//! * names are built in a 60-byte buffer (`snprintf(buf, 60, "%s:%s", host, service)` in
//!   `addrport_to_anyname`), so every `host:port` string is cut at 59 bytes, then the service
//!   column of `-L` is cut at 33 bytes (`svc_name[33] = '\0'`, after `"%-4s %s"` put the
//!   protocol in front) and the real column at 28 bytes (`dname[28] = '\0'`); `-S` and `-c` only
//!   have the 59-byte cut. `%-Ns` pads but never truncates, so a long name pushes the row right.
//! * sorting uses ipvsadm's comparators, including `r = ntohl(a) - ntohl(b)` stored in an `int`,
//!   so two addresses 2^31 or more apart compare the wrong way round (200.0.0.1 sorts before
//!   10.0.0.1), and glibc's `qsort`, which is a top-down merge sort: with that non-transitive
//!   comparator the result depends on the input order, so [`sort_services`] reproduces the merge
//!   step by step rather than using `slice::sort_by` (which may also panic on such an order).
//! * weights are printed with `%d` (`-w %d`, `%-6d`): a weight above `i32::MAX` prints negative
//!   as it would from ipvsadm (the CLI only accepts 0..=2147483647, so this never shows).

use crate::director::{Protocol, conntrack::Entry};
use std::{
    cell::RefCell,
    collections::HashMap,
    ffi::{CStr, c_char, c_int},
    fmt::Write as _,
    net::Ipv4Addr,
    sync::Mutex,
};

/// Counters of a service or real. The same type carries the rates, with the fields meaning
/// cps, inpps, outpps, inbps and outbps in that order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub conns: u64,
    pub inpkts: u64,
    pub outpkts: u64,
    pub inbytes: u64,
    pub outbytes: u64,
}

/// The `-S` service option: `-t` / `-u`.
fn save_flag(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
    }
}

/// One real server of a listed service. Its forwarding method is always `Tunnel` (IPIP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListReal {
    pub addr: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub u_threshold: u32,
    pub l_threshold: u32,
    pub active: u32,
    pub inactive: u32,
    pub stats: Stats,
    pub rate: Stats,
}

/// One virtual service with its reals, as `-L`, `-S` and `--json` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListService {
    pub proto: Protocol,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub sched: String,
    /// Persistence timeout in seconds (`-p`), `None` for a non-persistent service.
    pub persistent: Option<u32>,
    pub stats: Stats,
    pub rate: Stats,
    pub reals: Vec<ListReal>,
}

/// The column set of `-L`. When both `--stats` and `--rate` are given ipvsadm shows the stats
/// (first branch of `print_title`); the caller picks [`Columns::Stats`] then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Columns {
    #[default]
    Default,
    Stats,
    Rate,
    /// `--thresholds`.
    Thresholds,
}

/// Options of `-L`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListOptions {
    /// `-n`: no reverse DNS, no service names.
    pub numeric: bool,
    /// `--exact`: no K/M/G/T rounding in the `--stats`/`--rate` columns.
    pub exact: bool,
    pub columns: Columns,
    /// `-t`/`-u` was given: ipvsadm's `list_service` prints no version line.
    pub single_service: bool,
    /// `false` for `--nosort`: services and reals in the order given.
    pub sort: bool,
}

impl Default for ListOptions {
    /// What plain `ipvsadm -L` does: names resolved, rounded numbers, sorted.
    fn default() -> Self {
        ListOptions {
            numeric: false,
            exact: false,
            columns: Columns::Default,
            single_service: false,
            sort: true,
        }
    }
}

/// Name lookups used without `-n`. Each returns `None` when there is no name, and the caller
/// then prints the number, as ipvsadm's `addr_to_anyname`/`port_to_anyname` do.
pub trait Resolver {
    /// Reverse lookup of an address (ipvsadm: `gethostbyaddr`, the `h_name`).
    fn host(&self, a: Ipv4Addr) -> Option<String>;
    /// The service name of a port (ipvsadm: `getservbyport(htons(port), "tcp"|"udp")`).
    fn service(&self, port: u16, proto: Protocol) -> Option<String>;
}

/// The system's resolvers: reverse DNS (and `/etc/hosts`, through NSS) with
/// `getnameinfo(NI_NAMEREQD)`, which returns the same canonical name as ipvsadm's
/// `gethostbyaddr`, and `/etc/services` with `getservbyport`. Lookups block for as long as the
/// system resolver's own timeouts (`resolv.conf` `timeout`/`attempts`) allow; ipvsadm behaves
/// the same. Wrap it in a [`CachingResolver`] to look each address up once per listing.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

/// `getservbyport` returns a pointer into libc's static storage: one caller at a time.
static GETSERV_LOCK: Mutex<()> = Mutex::new(());

impl Resolver for SystemResolver {
    fn host(&self, a: Ipv4Addr) -> Option<String> {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = 0;
        sin.sin_addr = libc::in_addr {
            s_addr: u32::from(a).to_be(),
        };
        let mut host = [0 as c_char; libc::NI_MAXHOST as usize];
        // SAFETY: the address points at a live sockaddr_in of the given length, the host buffer
        // is writable for its length, no service buffer is asked for.
        let rc = unsafe {
            libc::getnameinfo(
                (&raw const sin).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                host.as_mut_ptr(),
                host.len() as libc::socklen_t,
                std::ptr::null_mut(),
                0,
                libc::NI_NAMEREQD,
            )
        };
        if rc != 0 {
            return None;
        }
        // SAFETY: on success getnameinfo wrote a NUL-terminated string into `host`.
        let name = unsafe { CStr::from_ptr(host.as_ptr()) };
        Some(name.to_string_lossy().into_owned()).filter(|s| !s.is_empty())
    }

    fn service(&self, port: u16, proto: Protocol) -> Option<String> {
        let _guard = GETSERV_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the protocol is a NUL-terminated string; the result is read (and copied)
        // while the lock is held, before any other getservbyport call can overwrite it.
        unsafe {
            let ent =
                libc::getservbyport(c_int::from(port.to_be()), proto.services_name().as_ptr());
            if ent.is_null() || (*ent).s_name.is_null() {
                return None;
            }
            Some(CStr::from_ptr((*ent).s_name).to_string_lossy().into_owned())
        }
    }
}

/// Never resolves: every name is the number (what `-n` prints).
#[derive(Clone, Copy, Debug, Default)]
pub struct NumericResolver;

impl Resolver for NumericResolver {
    fn host(&self, _: Ipv4Addr) -> Option<String> {
        None
    }
    fn service(&self, _: u16, _: Protocol) -> Option<String> {
        None
    }
}

/// Remembers the answers of another resolver (also the failures), so a listing asks once per
/// address and port. The output is the same as without it.
pub struct CachingResolver<R> {
    inner: R,
    hosts: RefCell<HashMap<Ipv4Addr, Option<String>>>,
    services: RefCell<HashMap<(u16, Protocol), Option<String>>>,
}

impl<R: Resolver> CachingResolver<R> {
    pub fn new(inner: R) -> Self {
        CachingResolver {
            inner,
            hosts: RefCell::default(),
            services: RefCell::default(),
        }
    }
}

impl<R: Resolver> Resolver for CachingResolver<R> {
    fn host(&self, a: Ipv4Addr) -> Option<String> {
        if let Some(v) = self.hosts.borrow().get(&a) {
            return v.clone();
        }
        let v = self.inner.host(a);
        self.hosts.borrow_mut().insert(a, v.clone());
        v
    }
    fn service(&self, port: u16, proto: Protocol) -> Option<String> {
        if let Some(v) = self.services.borrow().get(&(port, proto)) {
            return v.clone();
        }
        let v = self.inner.service(port, proto);
        self.services.borrow_mut().insert((port, proto), v.clone());
        v
    }
}

// ---------------------------------------------------------------------------------------------
// printf helpers: C pads and cuts by bytes; these do the same (cuts back off to a character
// boundary, which only matters for a non-ASCII name, where C would split the character).

/// The first `max` bytes of `s` (as `buf[max] = '\0'` does).
pub(crate) fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `%-Ns`: left-justified, padded with spaces to `width` bytes, never cut.
fn ljust(out: &mut String, s: &str, width: usize) {
    out.push_str(s);
    for _ in s.len()..width {
        out.push(' ');
    }
}

/// `%Ns`: right-justified to `width` bytes, never cut.
fn rjust(out: &mut String, s: &str, width: usize) {
    for _ in s.len()..width {
        out.push(' ');
    }
    out.push_str(s);
}

/// ipvsadm's `addrport_to_anyname`: `ADDR:PORT` with `-n`, otherwise `HOST:SERVICE` where each
/// half falls back to its number on its own (`172.16.0.1:http`), built with
/// `snprintf(buf, 60, ...)`, hence at most 59 bytes.
fn addrport_name(
    addr: Ipv4Addr,
    port: u16,
    proto: Protocol,
    numeric: bool,
    r: &dyn Resolver,
) -> String {
    let s = if numeric {
        format!("{addr}:{port}")
    } else {
        let host = r.host(addr).unwrap_or_else(|| addr.to_string());
        let service = r.service(port, proto).unwrap_or_else(|| port.to_string());
        format!("{host}:{service}")
    };
    cut(&s, 59).to_string()
}

/// The service column of `-L`: `sprintf(svc_name, "%-4s %s", proto, vname)` cut at 33 bytes.
fn list_service_name(s: &ListService, numeric: bool, r: &dyn Resolver) -> String {
    let vname = addrport_name(s.addr, s.port, s.proto, numeric, r);
    let mut name = String::new();
    ljust(&mut name, s.proto.name(), 4);
    name.push(' ');
    name.push_str(&vname);
    cut(&name, 33).to_string()
}

/// The real column of `-L`: `addrport_to_anyname` cut at 28 bytes.
fn list_real_name(s: &ListService, d: &ListReal, numeric: bool, r: &dyn Resolver) -> String {
    cut(&addrport_name(d.addr, d.port, s.proto, numeric, r), 28).to_string()
}

/// ipvsadm's `print_largenum`, the 9-character columns of `--stats` and `--rate`:
/// below 10^8 `%9llu`; below 10^9 `%8lluK` (thousands); below 10^11 `%8lluM` (millions);
/// below 10^14 `%8lluG` (billions); else `%8lluT` (trillions), always rounded down. With
/// `--exact`, `%*llu` with width 9, or digits + 1 for more than 8 digits, so there is always
/// one space in front.
pub fn print_largenum(n: u64, exact: bool) -> String {
    if exact {
        let digits = n.to_string();
        let width = if digits.len() <= 8 {
            9
        } else {
            digits.len() + 1
        };
        return format!("{n:>width$}");
    }
    if n < 100_000_000 {
        format!("{n:>9}")
    } else if n < 1_000_000_000 {
        format!("{:>8}K", n / 1_000)
    } else if n < 100_000_000_000 {
        format!("{:>8}M", n / 1_000_000)
    } else if n < 100_000_000_000_000 {
        format!("{:>8}G", n / 1_000_000_000)
    } else {
        format!("{:>8}T", n / 1_000_000_000_000)
    }
}

// ---------------------------------------------------------------------------------------------
// Sorting, as ipvsadm does it.

/// `ipvs_cmp_services` (`libipvs.c`) for IPv4 services without fwmark: protocol, then
/// `r = ntohl(s1->addr.ip) - ntohl(s2->addr.ip)` (an unsigned difference stored in an `int`:
/// the >= 2^31-apart quirk, copied on purpose), then `ntohs(p1) - ntohs(p2)` (promoted to int,
/// no quirk).
fn cmp_services(a: &ListService, b: &ListService) -> i32 {
    let r = i32::from(a.proto.raw()) - i32::from(b.proto.raw());
    if r != 0 {
        return r;
    }
    let r = u32::from(a.addr).wrapping_sub(u32::from(b.addr)) as i32;
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// `ipvs_cmp_dests`: address (same quirk), then port.
fn cmp_reals(a: &ListReal, b: &ListReal) -> i32 {
    let r = u32::from(a.addr).wrapping_sub(u32::from(b.addr)) as i32;
    if r != 0 {
        return r;
    }
    i32::from(a.port) - i32::from(b.port)
}

/// glibc's `qsort` (`msort_with_tmp` in `stdlib/msort.c`, which every released glibc uses
/// unless the array does not fit in memory): top-down merge sort, left half `n / 2`, taking from
/// the left run while `cmp(left, right) <= 0`. Reproduced exactly so that a non-transitive
/// comparator gives the order ipvsadm prints. Returns the permutation (indices into `v`).
fn glibc_qsort_order<T>(v: &[T], cmp: impl Fn(&T, &T) -> i32) -> Vec<usize> {
    fn msort<T>(v: &[T], idx: &mut [usize], tmp: &mut Vec<usize>, cmp: &impl Fn(&T, &T) -> i32) {
        let n = idx.len();
        if n <= 1 {
            return;
        }
        let n1 = n / 2;
        msort(v, &mut idx[..n1], tmp, cmp);
        msort(v, &mut idx[n1..], tmp, cmp);
        tmp.clear();
        let (mut i, mut j) = (0, n1);
        while i < n1 && j < n {
            if cmp(&v[idx[i]], &v[idx[j]]) <= 0 {
                tmp.push(idx[i]);
                i += 1;
            } else {
                tmp.push(idx[j]);
                j += 1;
            }
        }
        // What is left of the left run follows; what is left of the right run is already in
        // place at the end.
        tmp.extend_from_slice(&idx[i..n1]);
        idx[..tmp.len()].copy_from_slice(tmp);
    }
    let mut idx: Vec<usize> = (0..v.len()).collect();
    let mut tmp = Vec::with_capacity(v.len());
    msort(v, &mut idx, &mut tmp, &cmp);
    idx
}

fn qsort_like<T: Clone>(v: &[T], cmp: impl Fn(&T, &T) -> i32) -> Vec<T> {
    glibc_qsort_order(v, cmp)
        .into_iter()
        .map(|i| v[i].clone())
        .collect()
}

/// The services, and each service's reals, in the order `ipvsadm -L` (without `--nosort`) and
/// `ipvsadm -S` print them, given the order the kernel (here: the maps) returned them in.
pub fn sort_services(services: &[ListService]) -> Vec<ListService> {
    let mut out = qsort_like(services, cmp_services);
    for s in &mut out {
        s.reals = qsort_like(&s.reals, cmp_reals);
    }
    out
}

fn ordered(services: &[ListService], sort: bool) -> Vec<ListService> {
    if sort {
        sort_services(services)
    } else {
        services.to_vec()
    }
}

// ---------------------------------------------------------------------------------------------
// The listings.

/// `ipvsadm -L [-n] [--stats|--rate] [--exact] [--nosort] [-t|-u SERVICE]`.
///
/// `conn_table_size` is the number after `size=` in the version line (IPVS prints its
/// connection-hash size, 4096 by default); the version itself is always `1.2.1`, the IPVS
/// version every kernel has reported for twenty years. With `opts.single_service` (ipvsadm's
/// `list_service`) there is no version line and `services` should hold the one service.
pub fn list(
    services: &[ListService],
    opts: &ListOptions,
    conn_table_size: u32,
    r: &dyn Resolver,
) -> String {
    let mut out = String::new();
    if !opts.single_service {
        // printf("IP Virtual Server version %d.%d.%d (size=%d)\n", ...)
        let _ = writeln!(
            out,
            "IP Virtual Server version 1.2.1 (size={})",
            conn_table_size as i32
        );
    }
    match opts.columns {
        Columns::Stats => {
            title_numbers(&mut out, ["Conns", "InPkts", "OutPkts", "InBytes", "OutBytes"])
        }
        Columns::Rate => title_numbers(&mut out, ["CPS", "InPPS", "OutPPS", "InBPS", "OutBPS"]),
        Columns::Thresholds => {
            // "%-33s %-10s %-10s %-10s %-10s\n  -> RemoteAddress:Port\n"
            ljust(&mut out, "Prot LocalAddress:Port", 33);
            for n in ["Uthreshold", "Lthreshold", "ActiveConn", "InActConn"] {
                out.push(' ');
                ljust(&mut out, n, 10);
            }
            out.push_str("\n  -> RemoteAddress:Port\n");
        }
        Columns::Default => out.push_str(
            "Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n",
        ),
    }
    let numeric = opts.numeric;
    for s in &ordered(services, opts.sort) {
        let svc_name = list_service_name(s, numeric, r);
        match opts.columns {
            Columns::Default | Columns::Thresholds => {
                // printf("%s %s", svc_name, sched_name) [" persistent %u"] "\n"
                out.push_str(&svc_name);
                out.push(' ');
                out.push_str(&s.sched);
                if let Some(t) = s.persistent {
                    let _ = write!(out, " persistent {t}");
                }
                out.push('\n');
            }
            Columns::Stats => {
                ljust(&mut out, &svc_name, 33);
                largenums(&mut out, &s.stats, opts.exact);
                out.push('\n');
            }
            Columns::Rate => {
                ljust(&mut out, &svc_name, 33);
                largenums(&mut out, &s.rate, opts.exact);
                out.push('\n');
            }
        }
        for d in &s.reals {
            let dname = list_real_name(s, d, numeric, r);
            out.push_str("  -> ");
            ljust(&mut out, &dname, 28);
            match opts.columns {
                Columns::Default => {
                    // "  -> %-28s %-7s %-6d %-10u %-10u\n"
                    out.push(' ');
                    ljust(&mut out, "Tunnel", 7);
                    out.push(' ');
                    ljust(&mut out, &(d.weight as i32).to_string(), 6);
                    out.push(' ');
                    ljust(&mut out, &d.active.to_string(), 10);
                    out.push(' ');
                    ljust(&mut out, &d.inactive.to_string(), 10);
                }
                Columns::Thresholds => {
                    // "  -> %-28s %-10u %-10u %-10u %-10u\n"
                    for v in [d.u_threshold, d.l_threshold, d.active, d.inactive] {
                        out.push(' ');
                        ljust(&mut out, &v.to_string(), 10);
                    }
                }
                Columns::Stats => largenums(&mut out, &d.stats, opts.exact),
                Columns::Rate => {
                    // "  -> %-28s %8llu %8llu %8llu" then print_largenum(inbps), (outbps):
                    // the three first rates are never rounded, --exact or not.
                    for v in [d.rate.conns, d.rate.inpkts, d.rate.outpkts] {
                        out.push(' ');
                        rjust(&mut out, &v.to_string(), 8);
                    }
                    out.push_str(&print_largenum(d.rate.inbytes, opts.exact));
                    out.push_str(&print_largenum(d.rate.outbytes, opts.exact));
                }
            }
            out.push('\n');
        }
    }
    out
}

/// `printf("%-33s %8s %8s %8s %8s %8s\n  -> RemoteAddress:Port\n", "Prot LocalAddress:Port", ...)`
fn title_numbers(out: &mut String, names: [&str; 5]) {
    ljust(out, "Prot LocalAddress:Port", 33);
    for n in names {
        out.push(' ');
        rjust(out, n, 8);
    }
    out.push_str("\n  -> RemoteAddress:Port\n");
}

fn largenums(out: &mut String, s: &Stats, exact: bool) {
    for v in [s.conns, s.inpkts, s.outpkts, s.inbytes, s.outbytes] {
        out.push_str(&print_largenum(v, exact));
    }
}

/// `ipvsadm -S [-n]`: one `-A` line per service and one `-a` line per real, no header, sorted
/// as `-L` sorts (`-S` has no `--nosort`). Names are not cut at 33/28 here, only at 59 bytes.
/// Every real is a tunnel real, so the modern form with `--tun-type ipip` is written.
pub fn save(services: &[ListService], numeric: bool, r: &dyn Resolver) -> String {
    let mut out = String::new();
    for s in &sort_services(services) {
        // sprintf(svc_name, "%s %s", "-t"|"-u", vname)
        let svc_name = format!(
            "{} {}",
            save_flag(s.proto),
            addrport_name(s.addr, s.port, s.proto, numeric, r)
        );
        // printf("-A %s -s %s", ...) [" -p %u"] "\n"
        let _ = write!(out, "-A {svc_name} -s {}", s.sched);
        if let Some(t) = s.persistent {
            let _ = write!(out, " -p {t}");
        }
        out.push('\n');
        for d in &s.reals {
            let dname = addrport_name(d.addr, d.port, s.proto, numeric, r);
            // printf("-a %s -r %s %s -w %d --tun-type %s\n", ...)
            let _ = writeln!(
                out,
                "-a {svc_name} -r {dname} -i -w {} --tun-type ipip",
                d.weight as i32
            );
        }
    }
    out
}

/// `ipvsadm -L -c [-n]`: the connection entries in the order given (ipvsadm prints
/// `/proc/net/ip_vs_conn` unsorted).
pub fn connections(conns: &[Entry], numeric: bool, r: &dyn Resolver) -> String {
    let mut out = String::from("IPVS connection entries\n");
    // printf("pro expire %-11s %-18s %-18s %s\n", "state", "source", "virtual", "destination")
    out.push_str("pro expire ");
    ljust(&mut out, "state", 11);
    out.push(' ');
    ljust(&mut out, "source", 18);
    out.push(' ');
    ljust(&mut out, "virtual", 18);
    out.push_str(" destination\n");
    for c in conns {
        let cname = addrport_name(c.client.0, c.client.1, c.proto, numeric, r);
        let vname = addrport_name(c.vip.0, c.vip.1, c.proto, numeric, r);
        let dname = addrport_name(c.real.0, c.real.1, c.proto, numeric, r);
        // sprintf(expire_str, "%02d:%02d", expires / 60, expires % 60)
        let expire = format!("{:02}:{:02}", c.expire_secs / 60, c.expire_secs % 60);
        // printf("%-3s %-6s %-11s %-18s %-18s %s\n", protocol, expire_str, state, c, v, d)
        ljust(&mut out, c.proto.name(), 3);
        out.push(' ');
        ljust(&mut out, &expire, 6);
        out.push(' ');
        ljust(&mut out, c.state, 11);
        out.push(' ');
        ljust(&mut out, &cname, 18);
        out.push(' ');
        ljust(&mut out, &vname, 18);
        out.push(' ');
        out.push_str(&dname);
        out.push('\n');
    }
    out
}

/// `ipvsadm -L --timeout`: `printf("Timeout (tcp tcpfin udp): %d %d %d\n", ...)`.
pub fn timeouts(tcp: u32, tcpfin: u32, udp: u32) -> String {
    format!(
        "Timeout (tcp tcpfin udp): {} {} {}\n",
        tcp as i32, tcpfin as i32, udp as i32
    )
}

/// `lbadm -L --json` (our extension; ipvsadm has none): an array with one object per service,
/// in `-L`'s order (sorted as ipvsadm sorts), numbers exact:
///
/// ```json
/// [{"protocol": "TCP", "address": "10.0.0.100", "port": 6033, "scheduler": "wlc",
///   "persistent": null,
///   "stats": {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0},
///   "rate": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0},
///   "reals": [{"address": "10.0.1.11", "port": 6033, "forward": "Tunnel", "weight": 1,
///              "active_conns": 0, "inactive_conns": 0, "stats": {...}, "rate": {...}}]}]
/// ```
/// `persistent` is `null` or the timeout in seconds. Addresses are never resolved.
pub fn json(services: &[ListService]) -> serde_json::Value {
    json_opts(services, true)
}

/// [`json`] with the order chosen: `sort == false` (`--nosort`) keeps the order given.
pub fn json_opts(services: &[ListService], sort: bool) -> serde_json::Value {
    use serde_json::json;
    let stats = |s: &Stats| {
        json!({"conns": s.conns, "inpkts": s.inpkts, "outpkts": s.outpkts,
               "inbytes": s.inbytes, "outbytes": s.outbytes})
    };
    let rate = |s: &Stats| {
        json!({"cps": s.conns, "inpps": s.inpkts, "outpps": s.outpkts,
               "inbps": s.inbytes, "outbps": s.outbytes})
    };
    let list: Vec<serde_json::Value> = ordered(services, sort)
        .iter()
        .map(|s| {
            let reals: Vec<serde_json::Value> = s
                .reals
                .iter()
                .map(|d| {
                    json!({
                        "address": d.addr.to_string(),
                        "port": d.port,
                        "forward": "Tunnel",
                        "weight": d.weight,
                        "u_threshold": d.u_threshold,
                        "l_threshold": d.l_threshold,
                        "active_conns": d.active,
                        "inactive_conns": d.inactive,
                        "stats": stats(&d.stats),
                        "rate": rate(&d.rate),
                    })
                })
                .collect();
            json!({
                "protocol": s.proto.name(),
                "address": s.addr.to_string(),
                "port": s.port,
                "scheduler": s.sched,
                "persistent": s.persistent,
                "stats": stats(&s.stats),
                "rate": rate(&s.rate),
                "reals": reals,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

#[cfg(test)]
mod tests;
