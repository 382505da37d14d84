//! Golden files (`lb-userspace/tests/golden/`, see the README there): six are copied verbatim
//! from docs/reference/ipvsadm.md §1.4–1.7 (trailing spaces included); the others were
//! produced outside this code, by ipvsadm's own printf formats and `print_largenum` compiled
//! as C or run through the shell's printf, so they do not share this module's mistakes.
use super::*;

const GOLDEN_LIST_DERIVED: &str = include_str!("../../../tests/golden/list_derived.txt");
const GOLDEN_LIST_LVS_TUN: &str = include_str!("../../../tests/golden/list_lvs_tun_capture.txt");
const GOLDEN_STATS_DERIVED: &str = include_str!("../../../tests/golden/stats_derived.txt");
const GOLDEN_RATE_DERIVED: &str = include_str!("../../../tests/golden/rate_derived.txt");
const GOLDEN_CONN_CAPTURE: &str = include_str!("../../../tests/golden/conn_capture.txt");
const GOLDEN_SAVE_DERIVED: &str = include_str!("../../../tests/golden/save_derived.txt");
const GOLDEN_LIST_MIXED: &str = include_str!("../../../tests/golden/list_mixed.txt");
const GOLDEN_SAVE_MIXED: &str = include_str!("../../../tests/golden/save_mixed.txt");
const GOLDEN_STATS_BOUNDARIES: &str = include_str!("../../../tests/golden/stats_boundaries.txt");
const GOLDEN_STATS_BOUNDARIES_EXACT: &str =
    include_str!("../../../tests/golden/stats_boundaries_exact.txt");
const GOLDEN_CONN_MIXED: &str = include_str!("../../../tests/golden/conn_mixed.txt");
const GOLDEN_LIST_LONG_NAMES: &str = include_str!("../../../tests/golden/list_long_names.txt");

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn st(conns: u64, inpkts: u64, outpkts: u64, inbytes: u64, outbytes: u64) -> Stats {
    Stats {
        conns,
        inpkts,
        outpkts,
        inbytes,
        outbytes,
    }
}

fn real(addr: &str, port: u16, weight: u32, active: u32, inactive: u32) -> ListReal {
    ListReal {
        addr: ip(addr),
        port,
        weight,
        u_threshold: 0,
        l_threshold: 0,
        active,
        inactive,
        stats: Stats::default(),
        rate: Stats::default(),
    }
}

fn svc(proto: Protocol, addr: &str, port: u16, sched: &str, reals: Vec<ListReal>) -> ListService {
    ListService {
        proto,
        addr: ip(addr),
        port,
        sched: sched.into(),
        persistent: None,
        stats: Stats::default(),
        rate: Stats::default(),
        reals,
    }
}

fn numeric() -> ListOptions {
    ListOptions {
        numeric: true,
        ..ListOptions::default()
    }
}

fn with(columns: Columns) -> ListOptions {
    ListOptions {
        columns,
        ..numeric()
    }
}

/// Our scenario: VIP 10.0.0.100:6033, two reals, counters of §1.4/§1.5.
fn derived() -> ListService {
    let mut r1 = real("10.0.1.11", 6033, 1, 12, 3);
    r1.stats = st(4213, 98765, 0, 8123456, 0);
    r1.rate = st(2, 40, 0, 5000, 0);
    let mut r2 = real("10.0.1.12", 6033, 2, 25, 7);
    r2.stats = st(8123, 190221, 0, 15890321, 0);
    let mut s = svc(Protocol::Tcp, "10.0.0.100", 6033, "wlc", vec![r2, r1]);
    s.stats = st(12336, 288986, 0, 24013777, 0);
    s.rate = st(5, 120, 0, 14800, 0);
    s
}

/// A resolver from fixed tables, counting nothing, failing for everything else.
struct Fake {
    hosts: Vec<(Ipv4Addr, String)>,
    services: Vec<(u16, Protocol, String)>,
}

impl Resolver for Fake {
    fn host(&self, a: Ipv4Addr) -> Option<String> {
        self.hosts
            .iter()
            .find(|(h, _)| *h == a)
            .map(|(_, n)| n.clone())
    }
    fn service(&self, port: u16, proto: Protocol) -> Option<String> {
        self.services
            .iter()
            .find(|(p, pr, _)| *p == port && *pr == proto)
            .map(|(_, _, n)| n.clone())
    }
}

/// Resolves everything, to make sure `-n` never asks.
struct Loud;
impl Resolver for Loud {
    fn host(&self, _: Ipv4Addr) -> Option<String> {
        Some("resolved.example".into())
    }
    fn service(&self, _: u16, _: Protocol) -> Option<String> {
        Some("svc".into())
    }
}

/// Line-by-line comparison so a failure shows where (with the line endings visible).
#[track_caller]
fn assert_same(got: &str, want: &str) {
    if got != want {
        let g: Vec<&str> = got.split_inclusive('\n').collect();
        let w: Vec<&str> = want.split_inclusive('\n').collect();
        for i in 0..g.len().max(w.len()) {
            let (a, b) = (g.get(i), w.get(i));
            if a != b {
                panic!(
                    "first difference at line {}:\n got: {:?}\nwant: {:?}\n\nwhole output:\n{}",
                    i + 1,
                    a,
                    b,
                    got
                );
            }
        }
    }
}

// ---- §1.4 ---------------------------------------------------------------------------

#[test]
fn list_derived_example() {
    assert_same(
        &list(&[derived()], &numeric(), 4096, &NumericResolver),
        GOLDEN_LIST_DERIVED,
    );
}

#[test]
fn list_lvs_tun_capture() {
    let s = svc(
        Protocol::Tcp,
        "172.16.1.111",
        80,
        "rr",
        vec![
            real("172.16.1.135", 80, 1, 0, 0),
            real("172.16.1.134", 80, 1, 0, 0),
        ],
    );
    assert_same(
        &list(&[s], &numeric(), 4096, &NumericResolver),
        GOLDEN_LIST_LVS_TUN,
    );
}

#[test]
fn dest_lines_end_with_trailing_spaces_headers_do_not() {
    let out = list(&[derived()], &numeric(), 4096, &NumericResolver);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[4].ends_with("3         "), "{:?}", lines[4]);
    for l in &lines[..4] {
        assert!(!l.ends_with(' '), "{l:?}");
    }
}

#[test]
fn conn_table_size_is_printed() {
    let out = list(&[], &numeric(), 65536, &NumericResolver);
    assert_eq!(
        out,
        "IP Virtual Server version 1.2.1 (size=65536)\nProt LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n"
    );
}

#[test]
fn single_service_has_no_version_line() {
    let opts = ListOptions {
        single_service: true,
        ..numeric()
    };
    let out = list(&[derived()], &opts, 4096, &NumericResolver);
    let want = GOLDEN_LIST_DERIVED.split_once('\n').unwrap().1;
    assert_same(&out, want);
    let opts = ListOptions {
        single_service: true,
        ..with(Columns::Stats)
    };
    let out = list(&[derived()], &opts, 4096, &NumericResolver);
    assert_same(&out, GOLDEN_STATS_DERIVED.split_once('\n').unwrap().1);
}

#[test]
fn persistence_in_list() {
    let mut s = svc(Protocol::Tcp, "172.168.2.36", 80, "rr", vec![]);
    s.persistent = Some(600);
    let out = list(&[s], &numeric(), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(3),
        Some("TCP  172.168.2.36:80 rr persistent 600")
    );
}

#[test]
fn names_fall_back_per_half() {
    // Without -n, only the port resolves: `TCP  172.16.0.1:http wlc`, and the real row
    // `  -> 172.16.0.30:http             Tunnel  1 …` (§1.4).
    let r = Fake {
        hosts: vec![],
        services: vec![(80, Protocol::Tcp, "http".into())],
    };
    let s = svc(
        Protocol::Tcp,
        "172.16.0.1",
        80,
        "wlc",
        vec![real("172.16.0.30", 80, 1, 0, 0)],
    );
    let out = list(&[s], &ListOptions::default(), 4096, &r);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[3], "TCP  172.16.0.1:http wlc");
    assert!(
        lines[4].starts_with("  -> 172.16.0.30:http             Tunnel  1 "),
        "{:?}",
        lines[4]
    );
    assert_eq!(
        lines[4],
        "  -> 172.16.0.30:http             Tunnel  1      0          0         "
    );
    // Only the host resolves: the port stays a number. Services are per protocol.
    let r = Fake {
        hosts: vec![(ip("10.0.0.100"), "lb.example".into())],
        services: vec![(3306, Protocol::Tcp, "mysql".into())],
    };
    let s = svc(Protocol::Udp, "10.0.0.100", 3306, "rr", vec![]);
    assert_eq!(
        list(&[s], &ListOptions::default(), 4096, &r).lines().nth(3),
        Some("UDP  lb.example:3306 rr")
    );
    let s = svc(Protocol::Tcp, "10.0.0.100", 3306, "rr", vec![]);
    assert_eq!(
        list(&[s], &ListOptions::default(), 4096, &r).lines().nth(3),
        Some("TCP  lb.example:mysql rr")
    );
}

#[test]
fn numeric_never_asks_the_resolver() {
    let out = list(&[derived()], &numeric(), 4096, &Loud);
    assert_same(&out, GOLDEN_LIST_DERIVED);
    assert_same(&save(&[derived()], true, &Loud), GOLDEN_SAVE_DERIVED);
    assert!(!connections(&[conn_capture()], true, &Loud).contains("resolved"));
    // and without -n it does
    assert!(
        list(&[derived()], &ListOptions::default(), 4096, &Loud)
            .contains("TCP  resolved.example:svc wlc\n")
    );
}

#[test]
fn wide_weight_overflows_the_column() {
    let s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "wrr",
        vec![real("10.0.1.11", 6033, 2147483647, 0, 0)],
    );
    let out = list(std::slice::from_ref(&s), &numeric(), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(4),
        Some("  -> 10.0.1.11:6033               Tunnel  2147483647 0          0         ")
    );
    assert!(
        out.contains("Tunnel  2147483647 0          0"),
        "the §1.3 observation"
    );
    assert!(save(&[s], true, &NumericResolver).contains(" -i -w 2147483647 --tun-type ipip\n"));
    // `%d` of a value above INT_MAX, as the C code would print it.
    let s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "wrr",
        vec![real("10.0.1.11", 6033, 2147483648, 0, 0)],
    );
    assert!(list(&[s], &numeric(), 4096, &NumericResolver).contains("Tunnel  -2147483648 0"));
    // big connection counts overflow their %-10u columns the same way
    let s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "wrr",
        vec![real(
            "10.0.1.11",
            6033,
            1,
            4294967295,
            12345678901u64 as u32,
        )],
    );
    let out = list(&[s], &numeric(), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(4),
        Some("  -> 10.0.1.11:6033               Tunnel  1      4294967295 3755744309")
    );
}

/// Services out of order, UDP and TCP, persistence, several reals: checked against a golden
/// file written with the shell's printf from ipvsadm's format strings.
fn mixed() -> Vec<ListService> {
    let mut p = svc(
        Protocol::Tcp,
        "10.0.0.100",
        3306,
        "mh",
        vec![
            real("10.0.1.12", 3306, 3, 1, 0),
            real("10.0.1.11", 3306, 0, 0, 9),
        ],
    );
    p.persistent = Some(600);
    vec![
        svc(
            Protocol::Udp,
            "10.0.0.100",
            53,
            "rr",
            vec![real("10.0.2.2", 53, 1, 0, 4), real("10.0.2.1", 53, 1, 0, 2)],
        ),
        svc(
            Protocol::Tcp,
            "10.0.0.100",
            6033,
            "wlc",
            vec![
                real("10.0.1.12", 6033, 2, 25, 7),
                real("10.0.1.11", 6034, 1, 1, 1),
                real("10.0.1.11", 6033, 1, 12, 3),
            ],
        ),
        p,
        svc(Protocol::Tcp, "9.255.255.255", 65535, "rr", vec![]),
    ]
}

#[test]
fn list_mixed_sorted() {
    assert_same(
        &list(&mixed(), &numeric(), 4096, &NumericResolver),
        GOLDEN_LIST_MIXED,
    );
}

#[test]
fn save_mixed_sorted_with_persistence() {
    let out = save(&mixed(), true, &NumericResolver);
    assert_same(&out, GOLDEN_SAVE_MIXED);
    assert!(out.contains("-A -t 10.0.0.100:3306 -s mh -p 600\n"));
}

#[test]
fn nosort_keeps_the_given_order() {
    let opts = ListOptions {
        sort: false,
        ..numeric()
    };
    let out = list(&mixed(), &opts, 4096, &NumericResolver);
    let rows: Vec<&str> = out
        .lines()
        .skip(3)
        .map(|l| l.split(' ').filter(|w| !w.is_empty()).nth(1).unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            "10.0.0.100:53",
            "10.0.2.2:53",
            "10.0.2.1:53",
            "10.0.0.100:6033",
            "10.0.1.12:6033",
            "10.0.1.11:6034",
            "10.0.1.11:6033",
            "10.0.0.100:3306",
            "10.0.1.12:3306",
            "10.0.1.11:3306",
            "9.255.255.255:65535",
        ]
    );
    // and sorting is the default
    assert_same(
        &list(&mixed(), &numeric(), 4096, &NumericResolver),
        GOLDEN_LIST_MIXED,
    );
}

// ---- sort order ----------------------------------------------------------------------

fn order(services: &[ListService]) -> Vec<String> {
    sort_services(services)
        .iter()
        .map(|s| format!("{}:{}:{}", s.proto.name(), s.addr, s.port))
        .collect()
}

#[test]
fn sort_tcp_before_udp_then_address_then_port() {
    let v = vec![
        svc(Protocol::Udp, "1.1.1.1", 1, "rr", vec![]),
        svc(Protocol::Tcp, "9.9.9.9", 9, "rr", vec![]),
        svc(Protocol::Tcp, "9.9.9.9", 8, "rr", vec![]),
        svc(Protocol::Tcp, "9.9.9.8", 65535, "rr", vec![]),
        svc(Protocol::Udp, "1.1.1.0", 2, "rr", vec![]),
    ];
    assert_eq!(
        order(&v),
        [
            "TCP:9.9.9.8:65535",
            "TCP:9.9.9.9:8",
            "TCP:9.9.9.9:9",
            "UDP:1.1.1.0:2",
            "UDP:1.1.1.1:1"
        ]
    );
}

#[test]
fn reals_sort_by_address_then_port() {
    let s = svc(
        Protocol::Tcp,
        "10.0.0.1",
        80,
        "rr",
        vec![
            real("10.0.0.3", 80, 1, 0, 0),
            real("10.0.0.2", 8080, 1, 0, 0),
            real("10.0.0.2", 80, 1, 0, 0),
            real("10.0.0.10", 1, 1, 0, 0),
        ],
    );
    let sorted = sort_services(&[s]);
    let got: Vec<String> = sorted[0]
        .reals
        .iter()
        .map(|d| format!("{}:{}", d.addr, d.port))
        .collect();
    assert_eq!(
        got,
        ["10.0.0.2:80", "10.0.0.2:8080", "10.0.0.3:80", "10.0.0.10:1"]
    );
}

#[test]
fn sort_quirk_addresses_2_pow_31_apart_compare_inverted() {
    // (int)(ntohl(200.0.0.1) - ntohl(10.0.0.1)) < 0: 200.0.0.1 sorts first (§1.7).
    for input in [["10.0.0.1", "200.0.0.1"], ["200.0.0.1", "10.0.0.1"]] {
        let v: Vec<ListService> = input
            .iter()
            .map(|a| svc(Protocol::Tcp, a, 80, "rr", vec![]))
            .collect();
        assert_eq!(order(&v), ["TCP:200.0.0.1:80", "TCP:10.0.0.1:80"]);
    }
    // Less than 2^31 apart: normal order.
    let v: Vec<ListService> = ["128.0.0.1", "10.0.0.1"]
        .iter()
        .map(|a| svc(Protocol::Tcp, a, 80, "rr", vec![]))
        .collect();
    assert_eq!(order(&v), ["TCP:10.0.0.1:80", "TCP:128.0.0.1:80"]);
    // Reals too.
    let s = svc(
        Protocol::Tcp,
        "1.2.3.4",
        80,
        "rr",
        vec![
            real("10.0.0.1", 80, 1, 0, 0),
            real("200.0.0.1", 80, 1, 0, 0),
        ],
    );
    let out = list(&[s], &numeric(), 4096, &NumericResolver);
    let reals: Vec<&str> = out.lines().skip(4).map(|l| &l[5..14]).collect();
    assert_eq!(reals, ["200.0.0.1", "10.0.0.1:"]);
    // With three addresses the comparator is not transitive (10 < 100 < 200 < 10), so the
    // result depends on the input order exactly as glibc's merge sort makes it.
    let cases = [
        (
            ["10.0.0.1", "100.0.0.1", "200.0.0.1"],
            ["10.0.0.1", "100.0.0.1", "200.0.0.1"],
        ),
        (
            ["200.0.0.1", "10.0.0.1", "100.0.0.1"],
            ["200.0.0.1", "10.0.0.1", "100.0.0.1"],
        ),
        (
            ["100.0.0.1", "200.0.0.1", "10.0.0.1"],
            ["100.0.0.1", "200.0.0.1", "10.0.0.1"],
        ),
        (
            ["10.0.0.1", "200.0.0.1", "100.0.0.1"],
            ["10.0.0.1", "100.0.0.1", "200.0.0.1"],
        ),
        (
            ["100.0.0.1", "10.0.0.1", "200.0.0.1"],
            ["100.0.0.1", "200.0.0.1", "10.0.0.1"],
        ),
    ];
    for (input, want) in cases {
        let v: Vec<ListService> = input
            .iter()
            .map(|a| svc(Protocol::Tcp, a, 80, "rr", vec![]))
            .collect();
        let want: Vec<String> = want.iter().map(|a| format!("TCP:{a}:80")).collect();
        assert_eq!(order(&v), want, "input {input:?}");
    }
}

unsafe extern "C" {
    fn qsort(
        base: *mut libc::c_void,
        n: libc::size_t,
        size: libc::size_t,
        cmp: unsafe extern "C" fn(*const libc::c_void, *const libc::c_void) -> c_int,
    );
}

/// The C comparator, on (protocol, address, port) as ipvsadm reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct CKey {
    proto: u16,
    port: u16,
    addr: u32,
    tag: u32,
}

unsafe extern "C" fn c_cmp(a: *const libc::c_void, b: *const libc::c_void) -> c_int {
    let (a, b) = unsafe { (&*(a as *const CKey), &*(b as *const CKey)) };
    let r = a.proto as c_int - b.proto as c_int;
    if r != 0 {
        return r;
    }
    let r = a.addr.wrapping_sub(b.addr) as c_int;
    if r != 0 {
        return r;
    }
    a.port as c_int - b.port as c_int
}

/// The merge sort against the C library's own qsort with ipvsadm's comparator, on many
/// inputs full of non-transitive triples (glibc only: other libcs sort differently).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn sort_matches_glibc_qsort() {
    let addrs = [
        "10.0.0.1",
        "100.0.0.1",
        "200.0.0.1",
        "255.255.255.255",
        "0.0.0.0",
        "128.0.0.0",
        "127.255.255.255",
        "10.0.0.2",
    ];
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..2000 {
        let n = (next() % 12) as usize + if round < 50 { 0 } else { 2 };
        let v: Vec<ListService> = (0..n)
            .map(|i| {
                let proto = if next() % 5 == 0 {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                let addr = addrs[(next() % addrs.len() as u64) as usize];
                let port = [80u16, 443, 0, 65535][(next() % 4) as usize];
                let mut s = svc(proto, addr, port, "rr", vec![]);
                s.sched = i.to_string();
                s
            })
            .collect();
        let mut keys: Vec<CKey> = v
            .iter()
            .enumerate()
            .map(|(i, s)| CKey {
                proto: s.proto.raw().into(),
                port: s.port,
                addr: u32::from(s.addr),
                tag: i as u32,
            })
            .collect();
        unsafe {
            qsort(
                keys.as_mut_ptr().cast(),
                keys.len(),
                std::mem::size_of::<CKey>(),
                c_cmp,
            )
        };
        let want: Vec<String> = keys.iter().map(|k| k.tag.to_string()).collect();
        let got: Vec<String> = sort_services(&v).iter().map(|s| s.sched.clone()).collect();
        assert_eq!(
            got,
            want,
            "round {round}: {:?}",
            v.iter()
                .map(|s| (s.proto, s.addr, s.port))
                .collect::<Vec<_>>()
        );
    }
}

// ---- §1.5 ---------------------------------------------------------------------------

#[test]
fn stats_derived_example() {
    assert_same(
        &list(&[derived()], &with(Columns::Stats), 4096, &NumericResolver),
        GOLDEN_STATS_DERIVED,
    );
    // --stats wins over --rate: the caller maps both to Columns::Stats; --exact changes
    // nothing below 10^8.
    let opts = ListOptions {
        exact: true,
        ..with(Columns::Stats)
    };
    assert_same(
        &list(&[derived()], &opts, 4096, &NumericResolver),
        GOLDEN_STATS_DERIVED,
    );
}

#[test]
fn rate_derived_example() {
    let mut s = derived();
    s.reals.retain(|d| d.addr == ip("10.0.1.11"));
    assert_same(
        &list(&[s], &with(Columns::Rate), 4096, &NumericResolver),
        GOLDEN_RATE_DERIVED,
    );
}

#[test]
fn stats_real_world_lines() {
    let mut a = svc(Protocol::Tcp, "172.168.2.33", 80, "rr", vec![]);
    a.stats = st(353, 2387, 0, 425447, 0);
    let mut b = svc(Protocol::Tcp, "20.20.20.1", 2020, "rr", vec![]);
    b.stats = st(401, 8939187, 8953980, 830_843_999, 1_135_999_999);
    let out = list(&[a, b], &with(Columns::Stats), 4096, &NumericResolver);
    let lines: Vec<&str> = out.lines().collect();
    // 172.168.2.33 - 20.20.20.1 = 0x9893EE20 >= 2^31: the sort quirk puts 172.… first.
    assert_eq!(
        lines[3],
        "TCP  172.168.2.33:80                   353     2387        0   425447        0"
    );
    assert_eq!(
        lines[4],
        "TCP  20.20.20.1:2020                   401  8939187  8953980  830843K    1135M"
    );
    let opts = ListOptions {
        exact: true,
        ..with(Columns::Stats)
    };
    let out = list(&[b_only()], &opts, 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(3),
        Some("TCP  20.20.20.1:2020                   401  8939187  8953980 830843999 1135999999")
    );
    fn b_only() -> ListService {
        let mut b = svc(Protocol::Tcp, "20.20.20.1", 2020, "rr", vec![]);
        b.stats = st(401, 8939187, 8953980, 830_843_999, 1_135_999_999);
        b
    }
}

#[test]
fn rate_real_world_line() {
    let mut s = svc(Protocol::Tcp, "10.96.6.131", 80, "rr", vec![]);
    s.rate = st(1, 4, 2, 234, 268);
    let out = list(&[s], &with(Columns::Rate), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(3),
        Some("TCP  10.96.6.131:80                      1        4        2      234      268")
    );
}

#[test]
fn print_largenum_boundaries() {
    // Expected strings produced by ipvsadm's print_largenum compiled from C.
    let cases: [(u64, &str, &str); 16] = [
        (0, "        0", "        0"),
        (99_999_999, " 99999999", " 99999999"),
        (100_000_000, "  100000K", " 100000000"),
        (100_000_999, "  100000K", " 100000999"),
        (999_999_999, "  999999K", " 999999999"),
        (1_000_000_000, "    1000M", " 1000000000"),
        (99_999_999_999, "   99999M", " 99999999999"),
        (100_000_000_000, "     100G", " 100000000000"),
        (99_999_999_999_999, "   99999G", " 99999999999999"),
        (100_000_000_000_000, "     100T", " 100000000000000"),
        (
            1_000_000_000_000_000_000,
            " 1000000T",
            " 1000000000000000000",
        ),
        (u64::MAX, "18446744T", " 18446744073709551615"),
        (12_345_678, " 12345678", " 12345678"),
        (123_456_789, "  123456K", " 123456789"),
        (830_843_123, "  830843K", " 830843123"),
        (1_135_123_456, "    1135M", " 1135123456"),
    ];
    for (n, rounded, exact) in cases {
        assert_eq!(print_largenum(n, false), rounded, "{n}");
        assert_eq!(print_largenum(n, true), exact, "{n} --exact");
    }
    // rounding is down, never up
    assert_eq!(print_largenum(100_999_999_999, false), "     100G");
    // the rounded form is always 9 characters until 10^20 (which u64 cannot reach)
    for n in [
        0,
        1,
        99_999_999,
        100_000_000,
        1_000_000_000,
        1_000_000_000_000,
        u64::MAX,
    ] {
        assert_eq!(print_largenum(n, false).len(), 9, "{n}");
    }
}

/// Counters around each suffix boundary, as service and real rows, with and without
/// --exact (goldens written with the shell's printf).
fn boundaries() -> Vec<ListService> {
    let mut s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "wlc",
        vec![
            real("10.0.1.11", 6033, 1, 0, 0),
            real("10.0.1.12", 6033, 1, 0, 0),
        ],
    );
    s.stats = st(
        99_999_999,
        100_000_000,
        999_999_999,
        1_000_000_000,
        100_000_000_000,
    );
    s.reals[0].stats = st(
        100_000_000_000_000,
        99_999_999_999_999,
        99_999_999_999,
        12_345_678_901_234_567_890,
        7,
    );
    s.reals[1].stats = st(0, 1, 123_456_789, 1_234_567_890_123, 999_999_999_999_999);
    vec![s]
}

#[test]
fn stats_boundaries() {
    assert_same(
        &list(&boundaries(), &with(Columns::Stats), 4096, &NumericResolver),
        GOLDEN_STATS_BOUNDARIES,
    );
    let opts = ListOptions {
        exact: true,
        ..with(Columns::Stats)
    };
    assert_same(
        &list(&boundaries(), &opts, 4096, &NumericResolver),
        GOLDEN_STATS_BOUNDARIES_EXACT,
    );
}

#[test]
fn rate_columns_of_reals() {
    // The first three rates of a real are `%8llu`, never rounded; the two byte rates go
    // through print_largenum; the service row rounds all five.
    let mut s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "wlc",
        vec![real("10.0.1.11", 6033, 1, 0, 0)],
    );
    s.rate = st(123_456_789, 1, 2, 3_000_000_000, 4);
    s.reals[0].rate = st(
        123_456_789,
        999_999_999,
        1_000_000_000,
        3_000_000_000,
        99_999_999,
    );
    let out = list(
        std::slice::from_ref(&s),
        &with(Columns::Rate),
        4096,
        &NumericResolver,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[3],
        "TCP  10.0.0.100:6033               123456K        1        2    3000M        4"
    );
    assert_eq!(
        lines[4],
        "  -> 10.0.1.11:6033               123456789 999999999 1000000000    3000M 99999999"
    );
    let opts = ListOptions {
        exact: true,
        ..with(Columns::Rate)
    };
    let out = list(&[s], &opts, 4096, &NumericResolver);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[3],
        "TCP  10.0.0.100:6033              123456789        1        2 3000000000        4"
    );
    assert_eq!(
        lines[4],
        "  -> 10.0.1.11:6033               123456789 999999999 1000000000 3000000000 99999999"
    );
}

#[test]
fn stats_titles() {
    let out = list(&[], &with(Columns::Stats), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(1),
        Some("Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes")
    );
    assert_eq!(out.lines().nth(2), Some("  -> RemoteAddress:Port"));
    let out = list(&[], &with(Columns::Rate), 4096, &NumericResolver);
    assert_eq!(
        out.lines().nth(1),
        Some("Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS")
    );
}

// ---- truncation ----------------------------------------------------------------------

fn long_names() -> Fake {
    Fake {
        hosts: vec![
            (
                ip("10.0.0.100"),
                "director-virtual-ip.mysql.example.com".into(),
            ),
            (ip("10.0.1.11"), "realserver-01.mysql.example.com".into()),
            (ip("10.0.1.12"), "rs2.example.com".into()),
            (
                ip("192.168.10.200"),
                "a-client-with-a-very-long-reverse-name.customers.example.net".into(),
            ),
        ],
        services: vec![(6033, Protocol::Tcp, "proxysql-mysql".into())],
    }
}

#[test]
fn long_names_are_cut_at_33_and_28() {
    let s = derived();
    let r = long_names();
    let out = list(std::slice::from_ref(&s), &ListOptions::default(), 4096, &r);
    assert_same(&out, GOLDEN_LIST_LONG_NAMES);
    let lines: Vec<&str> = out.lines().collect();
    // "TCP  director-virtual-ip.mysql.example.com:proxysql-mysql" cut to 33 bytes
    assert_eq!(lines[3], "TCP  director-virtual-ip.mysql.ex wlc");
    // "realserver-01.mysql.example.com:proxysql-mysql" cut to 28 bytes, no space left
    assert_eq!(&lines[4][..41], "  -> realserver-01.mysql.example. Tunnel ");
    // "rs2.example.com:proxysql-mysql" is 30 bytes, cut to 28
    assert_eq!(&lines[5][..41], "  -> rs2.example.com:proxysql-mys Tunnel ");
    // stats: the same cut, then the numbers line up
    let opts = ListOptions {
        columns: Columns::Stats,
        ..ListOptions::default()
    };
    let out = list(std::slice::from_ref(&s), &opts, 4096, &r);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[3],
        "TCP  director-virtual-ip.mysql.ex    12336   288986        0 24013777        0"
    );
    assert_eq!(
        lines[4],
        "  -> realserver-01.mysql.example.     4213    98765        0  8123456        0"
    );
}

#[test]
fn names_are_cut_at_59_bytes_in_save_and_connections() {
    let r = Fake {
        hosts: vec![
            (ip("10.0.0.100"), "h".repeat(70)),
            (ip("10.0.1.11"), "r".repeat(50)),
        ],
        services: vec![(6033, Protocol::Tcp, "proxysql-mysql".into())],
    };
    let mut s = derived();
    s.reals.retain(|d| d.addr == ip("10.0.1.11"));
    let out = save(&[s], false, &r);
    let want_v = "h".repeat(59);
    let want_r = format!("{}:proxysql", "r".repeat(50)); // 50 + 1 + 8 = 59
    assert_eq!(
        out,
        format!("-A -t {want_v} -s wlc\n-a -t {want_v} -r {want_r} -i -w 1 --tun-type ipip\n")
    );
    let c = Entry {
        proto: Protocol::Tcp,
        expire_secs: 61,
        state: "ESTABLISHED",
        client: (ip("10.0.1.11"), 6033),
        vip: (ip("10.0.0.100"), 6033),
        real: (ip("10.0.1.11"), 6033),
    };
    let out = connections(&[c], false, &r);
    assert_eq!(
        out.lines().nth(2),
        Some(format!("TCP 01:01  ESTABLISHED {want_r} {want_v} {want_r}").as_str())
    );
}

#[test]
fn cut_never_splits_a_character() {
    assert_eq!(cut("abc", 5), "abc");
    assert_eq!(cut("abcdef", 3), "abc");
    assert_eq!(cut("ab\u{e9}d", 3), "ab"); // é is two bytes at 2..4
    let mut s = String::new();
    ljust(&mut s, "\u{e9}", 4);
    assert_eq!(s.len(), 4, "padding counts bytes, as printf does");
}

// ---- §1.6 ---------------------------------------------------------------------------

fn conn_capture() -> Entry {
    Entry {
        proto: Protocol::Tcp,
        expire_secs: 15 * 60 + 1,
        state: "ESTABLISHED",
        client: (ip("10.68.128.202"), 1390),
        vip: (ip("10.68.128.202"), 3306),
        real: (ip("172.20.185.132"), 3306),
    }
}

#[test]
fn connections_capture() {
    assert_same(
        &connections(&[conn_capture()], true, &NumericResolver),
        GOLDEN_CONN_CAPTURE,
    );
}

#[test]
fn connections_mixed() {
    let conns = [
        conn_capture(),
        // a long source pushes the row right by one space (§1.6)
        Entry {
            proto: Protocol::Tcp,
            expire_secs: 27,
            state: "TIME_WAIT",
            client: (ip("192.168.10.200"), 47554),
            vip: (ip("192.168.10.100"), 80),
            real: (ip("192.168.188.82"), 80),
        },
        // a persistence template (the tail after `169.46.57.9:0      1` is ours)
        Entry {
            proto: Protocol::Tcp,
            expire_secs: 58,
            state: "NONE",
            client: (ip("169.46.57.9"), 0),
            vip: (ip("10.0.0.100"), 0),
            real: (ip("10.0.1.11"), 0),
        },
        Entry {
            proto: Protocol::Udp,
            expire_secs: 299,
            state: "UDP",
            client: (ip("198.51.100.7"), 5353),
            vip: (ip("10.0.0.100"), 53),
            real: (ip("10.0.2.1"), 53),
        },
        // minutes beyond 99 widen the expire column
        Entry {
            proto: Protocol::Tcp,
            expire_secs: 100 * 60 + 9,
            state: "SYN_RECV",
            client: (ip("1.2.3.4"), 5),
            vip: (ip("10.0.0.100"), 6033),
            real: (ip("10.0.1.12"), 6033),
        },
        Entry {
            proto: Protocol::Tcp,
            expire_secs: 1000 * 60,
            state: "CLOSE_WAIT",
            client: (ip("255.255.255.255"), 65535),
            vip: (ip("10.0.0.100"), 6033),
            real: (ip("10.0.1.12"), 6033),
        },
    ];
    let out = connections(&conns, true, &NumericResolver);
    assert_same(&out, GOLDEN_CONN_MIXED);
    assert_eq!(
        out.lines().nth(3),
        Some("TCP 00:27  TIME_WAIT   192.168.10.200:47554 192.168.10.100:80  192.168.188.82:80")
    );
    assert!(
        out.lines()
            .nth(4)
            .unwrap()
            .starts_with("TCP 00:58  NONE        169.46.57.9:0      1")
    );
    // without -n the names come from the resolver, per protocol
    let r = Fake {
        hosts: vec![(ip("10.0.0.100"), "vip".into())],
        services: vec![
            (53, Protocol::Udp, "domain".into()),
            (53, Protocol::Tcp, "tcp-domain".into()),
        ],
    };
    let out = connections(&conns[3..4], false, &r);
    assert_eq!(
        out.lines().nth(2),
        Some("UDP 04:59  UDP         198.51.100.7:5353  vip:domain         10.0.2.1:domain")
    );
}

#[test]
fn connections_empty() {
    assert_eq!(
        connections(&[], true, &NumericResolver),
        "IPVS connection entries\npro expire state       source             virtual            destination\n"
    );
}

// ---- §1.7 and --timeout ---------------------------------------------------------------

#[test]
fn save_derived_example() {
    assert_same(
        &save(&[derived()], true, &NumericResolver),
        GOLDEN_SAVE_DERIVED,
    );
}

#[test]
fn save_real_world_lines() {
    let s = svc(
        Protocol::Tcp,
        "192.168.50.100",
        53,
        "rr",
        vec![real("192.168.52.100", 53, 1, 0, 0)],
    );
    assert_eq!(
        save(&[s], true, &NumericResolver),
        "-A -t 192.168.50.100:53 -s rr\n-a -t 192.168.50.100:53 -r 192.168.52.100:53 -i -w 1 --tun-type ipip\n"
    );
    let s = svc(Protocol::Udp, "192.168.50.100", 53, "rr", vec![]);
    assert_eq!(
        save(&[s], true, &NumericResolver),
        "-A -u 192.168.50.100:53 -s rr\n"
    );
    assert_eq!(save(&[], true, &NumericResolver), "");
}

#[test]
fn save_resolves_names_without_n() {
    let r = Fake {
        hosts: vec![(ip("10.0.0.100"), "lb.example".into())],
        services: vec![(3306, Protocol::Tcp, "mysql".into())],
    };
    let mut s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        3306,
        "wrr",
        vec![real("10.0.1.11", 3306, 5, 0, 0)],
    );
    s.persistent = Some(360);
    assert_eq!(
        save(&[s], false, &r),
        "-A -t lb.example:mysql -s wrr -p 360\n-a -t lb.example:mysql -r 10.0.1.11:mysql -i -w 5 --tun-type ipip\n"
    );
}

#[test]
fn timeouts_line() {
    assert_eq!(
        timeouts(900, 120, 300),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );
    assert_eq!(
        timeouts(0, 1, 2147483647),
        "Timeout (tcp tcpfin udp): 0 1 2147483647\n"
    );
}

// ---- JSON -------------------------------------------------------------------------------

#[test]
fn json_shape() {
    let mut s = derived();
    s.persistent = Some(600);
    let u = svc(Protocol::Udp, "10.0.0.100", 53, "rr", vec![]);
    let v = json(&[u.clone(), s]);
    let want = serde_json::json!([
        {
            "protocol": "TCP", "address": "10.0.0.100", "port": 6033, "scheduler": "wlc",
            "persistent": 600,
            "stats": {"conns": 12336, "inpkts": 288986, "outpkts": 0, "inbytes": 24013777, "outbytes": 0},
            "rate": {"cps": 5, "inpps": 120, "outpps": 0, "inbps": 14800, "outbps": 0},
            "reals": [
                {"address": "10.0.1.11", "port": 6033, "forward": "Tunnel", "weight": 1,
                 "u_threshold": 0, "l_threshold": 0, "active_conns": 12, "inactive_conns": 3,
                 "stats": {"conns": 4213, "inpkts": 98765, "outpkts": 0, "inbytes": 8123456, "outbytes": 0},
                 "rate": {"cps": 2, "inpps": 40, "outpps": 0, "inbps": 5000, "outbps": 0}},
                {"address": "10.0.1.12", "port": 6033, "forward": "Tunnel", "weight": 2,
                 "u_threshold": 0, "l_threshold": 0, "active_conns": 25, "inactive_conns": 7,
                 "stats": {"conns": 8123, "inpkts": 190221, "outpkts": 0, "inbytes": 15890321, "outbytes": 0},
                 "rate": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0}}
            ]
        },
        {
            "protocol": "UDP", "address": "10.0.0.100", "port": 53, "scheduler": "rr",
            "persistent": null,
            "stats": {"conns": 0, "inpkts": 0, "outpkts": 0, "inbytes": 0, "outbytes": 0},
            "rate": {"cps": 0, "inpps": 0, "outpps": 0, "inbps": 0, "outbps": 0},
            "reals": []
        }
    ]);
    assert_eq!(v, want);
    // --nosort keeps the order; big counters stay exact numbers
    let mut big = u;
    big.stats.inbytes = u64::MAX;
    let v = json_opts(&[big, derived()], false);
    assert_eq!(v[0]["protocol"], "UDP");
    assert_eq!(v[0]["stats"]["inbytes"], u64::MAX);
    assert_eq!(
        v[1]["reals"][0]["address"], "10.0.1.12",
        "reals unsorted too"
    );
}

// ---- resolvers --------------------------------------------------------------------------

#[test]
fn caching_resolver_asks_once() {
    struct Counting(std::cell::Cell<u32>);
    impl Resolver for Counting {
        fn host(&self, a: Ipv4Addr) -> Option<String> {
            self.0.set(self.0.get() + 1);
            (a == Ipv4Addr::new(10, 0, 1, 11)).then(|| "r1".to_string())
        }
        fn service(&self, _: u16, _: Protocol) -> Option<String> {
            self.0.set(self.0.get() + 1);
            None
        }
    }
    let r = CachingResolver::new(Counting(std::cell::Cell::new(0)));
    let s = svc(
        Protocol::Tcp,
        "10.0.0.100",
        6033,
        "rr",
        vec![real("10.0.1.11", 6033, 1, 0, 0)],
    );
    let out = list(
        &[s.clone(), s],
        &ListOptions {
            sort: false,
            ..ListOptions::default()
        },
        4096,
        &r,
    );
    assert!(out.contains("  -> r1:6033 "));
    assert!(out.contains("TCP  10.0.0.100:6033 rr\n"));
    assert_eq!(
        r.inner.0.get(),
        3,
        "two hosts and one port, each asked once"
    );
}

#[test]
fn system_resolver_reads_the_services_file() {
    // /etc/services is present on any Debian system (netbase); skip quietly otherwise.
    if !std::path::Path::new("/etc/services").exists() {
        return;
    }
    let text = std::fs::read_to_string("/etc/services").unwrap_or_default();
    if text
        .lines()
        .any(|l| l.starts_with("http\t") || l.starts_with("http "))
    {
        assert_eq!(
            SystemResolver.service(80, Protocol::Tcp).as_deref(),
            Some("http")
        );
    }
    if text.lines().any(|l| l.starts_with("mysql")) {
        assert_eq!(
            SystemResolver.service(3306, Protocol::Tcp).as_deref(),
            Some("mysql")
        );
    }
    // any answer is a non-empty name
    for (port, proto) in [
        (6033, Protocol::Udp),
        (53, Protocol::Udp),
        (0, Protocol::Tcp),
    ] {
        if let Some(n) = SystemResolver.service(port, proto) {
            assert!(!n.is_empty());
        }
    }
}

#[test]
fn system_resolver_host_of_loopback() {
    // 127.0.0.1 is named in /etc/hosts on practically every system; just make sure the call
    // works and that an answer, if any, is a non-empty name.
    if let Some(name) = SystemResolver.host(Ipv4Addr::LOCALHOST) {
        assert!(!name.is_empty());
    }
}

#[test]
fn thresholds_columns_as_ipvsadm_prints_them() {
    let mut r = real("192.168.1.181", 80, 1, 3, 7);
    r.u_threshold = 10000;
    let s = svc(Protocol::Tcp, "192.168.1.100", 80, "wlc", vec![r]);
    let opts = ListOptions {
        numeric: true,
        columns: Columns::Thresholds,
        ..ListOptions::default()
    };
    let out = list(&[s], &opts, 4096, &NumericResolver);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[1],
        "Prot LocalAddress:Port            Uthreshold Lthreshold ActiveConn InActConn "
    );
    assert_eq!(lines[2], "  -> RemoteAddress:Port");
    assert_eq!(lines[3], "TCP  192.168.1.100:80 wlc");
    assert_eq!(
        lines[4],
        "  -> 192.168.1.181:80             10000      0          3          7         "
    );
}
