//! `lbadm realserver setup | teardown | check` in network namespaces: the doctor finds each
//! problem, setup fixes them (idempotently), traffic flows through reals configured only by
//! setup, and teardown restores everything.

use lb_tests::{
    assertions::{Sniffer, assert_one_line_error, text},
    fixture::PinDir,
    lbadm_bin,
    lbbed::{Director, service},
    netns::Netns,
    packet,
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use lb_userspace::director::{Protocol, Scheduler};
use serde_json::Value;
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Output,
    sync::atomic::{AtomicU32, Ordering},
};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const REAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const PORT: u16 = 6033;

/// A temporary directory for the sysctl.d file and the state file, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new(tag: &str) -> Files {
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "lbadm-rs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&d).unwrap();
        Files(d)
    }
    fn sysctl(&self) -> PathBuf {
        self.0.join("sysctl.d/90-lbadm-realserver.conf")
    }
    fn state(&self) -> PathBuf {
        self.0.join("state/realserver.json")
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One real server's namespace, its files and its decap pin directory.
struct Rs {
    ns: Netns,
    files: Files,
    pins: PinDir,
}

impl Rs {
    /// A namespace with `eth0` (198.18.0.11/24, up; its veth peer `peer0` in the same namespace)
    /// and the worst starting point: strict rp_filter, ARP answering for every local address.
    fn new(tag: &str) -> Rs {
        let ns = Netns::new(&format!("rs-{tag}")).unwrap();
        ns.add_veth("eth0", "peer0", &ns).unwrap();
        ns.add_addr("eth0", REAL, 24).unwrap();
        ns.set_up("eth0").unwrap();
        ns.set_up("peer0").unwrap();
        for (k, v) in [
            ("net.ipv4.conf.all.rp_filter", "1"),
            ("net.ipv4.conf.eth0.rp_filter", "1"),
            ("net.ipv4.conf.all.arp_ignore", "0"),
            ("net.ipv4.conf.all.arp_announce", "0"),
            ("net.ipv4.conf.eth0.arp_ignore", "0"),
            ("net.ipv4.conf.eth0.arp_announce", "0"),
        ] {
            ns.sysctl_write(k, v).unwrap();
        }
        Rs {
            ns,
            files: Files::new(tag),
            pins: PinDir::new(&format!("rs{tag}")),
        }
    }

    fn lbadm(&self, args: &[&str]) -> Output {
        lbadm_in(&self.ns, &self.files, &self.pins.0, args)
    }

    fn setup_xdp(&self) -> Output {
        let o = self.lbadm(&[
            "setup",
            "--decap",
            "xdp",
            "--director",
            "198.18.0.2",
            "--vip",
            "198.18.0.100",
            "--iface",
            "eth0",
        ]);
        assert!(o.status.success(), "setup failed: {:?}", text(&o));
        o
    }

    /// `check --json` for the XDP mode: (exit code, findings).
    fn check(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec![
            "check",
            "--decap",
            "xdp",
            "--vip",
            "198.18.0.100",
            "--iface",
            "eth0",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = self.lbadm(&args);
        let v: Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {:?}", text(&o)));
        (o.status.code().unwrap(), v)
    }

    fn sysctl(&self, key: &str) -> String {
        self.ns.sysctl_read(key).unwrap()
    }
}

impl Drop for Rs {
    fn drop(&mut self) {
        // Detach whatever a failed test left attached (the pins are on the global bpffs).
        let _ = lb_userspace::realserver::decap::detach(&self.pins.0);
    }
}

/// Runs `lbadm realserver ARGS` in `ns` with the test's own files and pin directory.
fn lbadm_in(ns: &Netns, files: &Files, pins: &Path, args: &[&str]) -> Output {
    let mut cmd = ns.command(lbadm_bin());
    cmd.arg("realserver").args(args);
    match args[0] {
        "setup" => {
            cmd.arg("--sysctl-file").arg(files.sysctl());
            cmd.arg("--state-file").arg(files.state());
            cmd.arg("--decap-pin-dir").arg(pins);
        }
        "check" => {
            cmd.arg("--state-file").arg(files.state());
            cmd.arg("--decap-pin-dir").arg(pins);
        }
        "teardown" => {
            cmd.arg("--state-file").arg(files.state());
        }
        _ => {}
    }
    cmd.output().expect("running lbadm")
}

fn codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

fn finding<'a>(v: &'a Value, code: &str) -> &'a Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
        .unwrap_or_else(|| panic!("no {code} in {v:#}"))
}

/// Error findings only (mtu-too-small is a warning on 1500-byte veths).
fn error_codes(v: &Value) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

fn has_addr(ns: &Netns, dev: &str, addr: Ipv4Addr, prefix: u8) -> bool {
    ns.ipv4_addrs(dev).unwrap().contains(&(addr, prefix))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn xdp_check_setup_check_idempotent_teardown() {
    let rs = Rs::new("cycle");

    // A fresh host: everything is wrong.
    let (code, v) = rs.check(&[]);
    assert_eq!(code, 1, "{v:#}");
    for c in [
        "decap-missing",
        "vip-missing",
        "rp-filter-strict",
        "arp-answers-vip",
    ] {
        assert!(codes(&v).contains(&c.to_string()), "{c} missing from {v:#}");
    }
    assert_eq!(v["healthy"], false);
    // Human output: what, why and the fix for each.
    let o = rs.lbadm(&[
        "check",
        "--decap",
        "xdp",
        "--vip",
        "198.18.0.100",
        "--iface",
        "eth0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let out = text(&o).0;
    assert!(
        out.contains("error [vip-missing]: VIP 198.18.0.100 is not on any interface"),
        "{out}"
    );
    assert!(
        out.contains("  why: ") && out.contains("  fix: lbadm realserver setup --decap xdp"),
        "{out}"
    );
    assert!(out.contains("NOT healthy"), "{out}");

    // setup fixes all of it, one line per change, then the effective values.
    let out = text(&rs.setup_xdp()).0;
    for line in [
        "attached XDP decapsulation to eth0 (native XDP",
        "added 198.18.0.100/32 to lo",
        "set net.ipv4.conf.eth0.rp_filter = 2 (was 1)",
        "set net.ipv4.conf.all.rp_filter = 2 (was 1)",
        "set net.ipv4.conf.all.arp_ignore = 1 (was 0)",
        "set net.ipv4.conf.all.arp_announce = 2 (was 0)",
        "effective rp_filter on eth0 (max of all, eth0): 2",
        "effective arp_ignore on eth0 (max of all, eth0): 1",
        "effective arp_announce on eth0 (max of all, eth0): 2",
    ] {
        assert!(out.contains(line), "{line:?} not in {out}");
    }
    assert!(has_addr(&rs.ns, "lo", VIP, 32));
    assert!(rs.pins.0.join("link_xdp").exists());
    let conf = std::fs::read_to_string(rs.files.sysctl()).unwrap();
    for l in [
        "net.ipv4.conf.all.rp_filter = 2",
        "net.ipv4.conf.eth0.rp_filter = 2",
        "net.ipv4.conf.all.arp_ignore = 1",
        "net.ipv4.conf.all.arp_announce = 2",
    ] {
        assert!(conf.contains(l), "{l:?} not in {conf}");
    }
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(rs.files.state()).unwrap()).unwrap();
    assert_eq!(state["decap"], "xdp");
    assert_eq!(state["sysctls"].as_array().unwrap().len(), 4);

    // Healthy now (the 1500-byte MTU is a warning, not a failure).
    let (code, v) = rs.check(&[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(error_codes(&v), Vec::<String>::new());
    assert_eq!(v["healthy"], true);
    // Without any option but the state file, check finds the same configuration.
    let o = rs.lbadm(&["check"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    assert!(
        text(&o)
            .0
            .contains("healthy: --decap xdp on eth0 for VIP 198.18.0.100"),
        "{:?}",
        text(&o)
    );

    // A second setup changes nothing.
    let out = text(&rs.setup_xdp()).0;
    assert!(out.starts_with("nothing changed"), "{out}");
    assert!(
        !out.contains("set net.") && !out.contains("added") && !out.contains("attached"),
        "{out}"
    );

    // Another VIP and another director: the attached program's maps are updated in place.
    let o = rs.lbadm(&[
        "setup",
        "--decap",
        "xdp",
        "--director",
        "198.18.0.2,198.18.0.3",
        "--vip",
        "198.18.0.100,198.18.0.101",
        "--iface",
        "eth0",
    ]);
    let out = text(&o).0;
    assert!(o.status.success(), "{:?}", text(&o));
    for line in [
        "XDP decapsulation now accepts IPIP from 198.18.0.2,198.18.0.3",
        "XDP decapsulation now accepts VIPs 198.18.0.100,198.18.0.101",
        "added 198.18.0.101/32 to lo",
    ] {
        assert!(out.contains(line), "{line:?} not in {out}");
    }
    assert!(!out.contains("attached XDP"), "re-attached: {out}");
    let (code, v) = rs.check(&["--vip", "198.18.0.101"]);
    assert_eq!(code, 0, "{v:#}");

    // teardown restores every value and removes what setup added.
    let o = rs.lbadm(&["teardown"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert_eq!(rs.sysctl("net.ipv4.conf.all.rp_filter"), "1");
    assert_eq!(rs.sysctl("net.ipv4.conf.eth0.rp_filter"), "1");
    assert_eq!(rs.sysctl("net.ipv4.conf.all.arp_ignore"), "0");
    assert_eq!(rs.sysctl("net.ipv4.conf.all.arp_announce"), "0");
    assert!(!has_addr(&rs.ns, "lo", VIP, 32));
    assert!(!has_addr(&rs.ns, "lo", Ipv4Addr::new(198, 18, 0, 101), 32));
    assert!(!rs.pins.0.exists(), "decap pins left behind");
    assert!(!rs.files.sysctl().exists() && !rs.files.state().exists());
    // The XDP program is really gone: the interface takes another one.
    let idx = rs.ns.link_index("eth0").unwrap();
    let _pass = rs.ns.run(|| lb_tests::lbbed::attach_pass(idx)).unwrap();

    assert_one_line_error(
        &rs.lbadm(&["teardown"]),
        &["nothing to tear down", "no state file"],
    );
}

#[test]
fn xdp_setup_needs_a_director_and_an_interface() {
    let rs = Rs::new("nodir");
    assert_one_line_error(
        &rs.lbadm(&[
            "setup",
            "--decap",
            "xdp",
            "--vip",
            "198.18.0.100",
            "--iface",
            "eth0",
        ]),
        &[
            "--director",
            "only accepts tunnelled packets from listed directors",
        ],
    );
    // No default route in the namespace and no --iface.
    assert_one_line_error(
        &rs.lbadm(&[
            "setup",
            "--decap",
            "xdp",
            "--director",
            "198.18.0.2",
            "--vip",
            "198.18.0.100",
        ]),
        &["default route", "--iface"],
    );
    assert_one_line_error(
        &rs.lbadm(&[
            "setup",
            "--decap",
            "xdp",
            "--director",
            "198.18.0.2",
            "--vip",
            "198.18.0.100",
            "--iface",
            "nosuch0",
        ]),
        &["no interface named `nosuch0`"],
    );
    assert!(!rs.files.state().exists() && !rs.files.sysctl().exists() && !rs.pins.0.exists());
    assert_eq!(
        rs.sysctl("net.ipv4.conf.all.arp_ignore"),
        "0",
        "a failed setup changed a sysctl"
    );
    // With a default route, the interface is found without --iface.
    rs.ns
        .rtnl("default route", |h| async move {
            h.route()
                .add(
                    rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(Ipv4Addr::new(198, 18, 0, 1))
                        .build(),
                )
                .execute()
                .await?;
            Ok(())
        })
        .unwrap();
    let o = rs.lbadm(&[
        "setup",
        "--decap",
        "xdp",
        "--director",
        "198.18.0.2",
        "--vip",
        "198.18.0.100",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("attached XDP decapsulation to eth0"));
    assert!(rs.lbadm(&["teardown"]).status.success());
}

/// Sends one raw IPv4 packet (header included) from `ns` to `dst`.
fn send_raw(ns: &Netns, dst: Ipv4Addr, ip_packet: &[u8]) {
    ns.run(|| unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW);
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sin: libc::sockaddr_in = std::mem::zeroed();
        sin.sin_family = libc::AF_INET as u16;
        sin.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        let r = libc::sendto(
            fd.as_raw_fd(),
            ip_packet.as_ptr().cast(),
            ip_packet.len(),
            0,
            &sin as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        assert_eq!(
            r,
            ip_packet.len() as isize,
            "sendto: {}",
            std::io::Error::last_os_error()
        );
    })
}

fn decap_counter(ns: &Netns, pins: &Path, idx: u32) -> u64 {
    let path = pins.join(lb_common::MAP_DECAP_STATS);
    ns.run(|| {
        let data = aya::maps::MapData::from_pin(&path).unwrap();
        let map = aya::maps::Map::from_map_data(data).unwrap();
        let arr: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map).unwrap();
        arr.get(&idx, 0).unwrap().iter().sum()
    })
}

#[test]
fn traffic_through_reals_configured_only_by_setup() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "rsbed".into(),
        configure_reals: false,
        ..Default::default()
    })
    .unwrap();
    let reals: Vec<(Files, PinDir)> = (1..=bed.real_count())
        .map(|i| {
            (
                Files::new(&format!("bed{i}")),
                PinDir::new(&format!("rsbed{i}")),
            )
        })
        .collect();
    let before: Vec<[String; 2]> = (1..=bed.real_count())
        .map(|i| {
            [
                "net.ipv4.conf.all.arp_ignore",
                "net.ipv4.conf.all.arp_announce",
            ]
            .map(|k| bed.real(i).sysctl_read(k).unwrap())
        })
        .collect();
    for (i, (files, pins)) in reals.iter().enumerate() {
        let ns = bed.real(i + 1);
        let o = lbadm_in(
            ns,
            files,
            &pins.0,
            &[
                "setup",
                "--decap",
                "xdp",
                "--director",
                "198.18.0.2",
                "--vip",
                "198.18.0.100",
                "--iface",
                "eth0",
            ],
        );
        assert!(o.status.success(), "real{}: {:?}", i + 1, text(&o));
        let o = lbadm_in(
            ns,
            files,
            &pins.0,
            &[
                "check",
                "--vip",
                "198.18.0.100",
                "--decap",
                "xdp",
                "--iface",
                "eth0",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "real{}: {:?}", i + 1, text(&o));
    }
    let _servers = bed.start_echo_servers(PORT).unwrap();
    let mut director = Director::attach(&bed).unwrap();
    director
        .maps
        .apply(&[service(
            &bed,
            Protocol::Tcp,
            PORT,
            Scheduler::Wrr,
            &vec![1; bed.real_count()],
        )])
        .unwrap();
    let sniff = Sniffer::open(bed.director(), bed.director_eth0().index);
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        let reply = tcp_echo_request(
            bed.client(),
            SocketAddrV4::new(bed.vip(), PORT),
            format!("hello {i}\n").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let (name, n) = reply.split_once(' ').unwrap();
        assert_eq!(n, format!("hello {i}\n").len().to_string());
        seen.insert(name.to_string());
    }
    assert_eq!(seen.len(), 2, "both reals answer: {seen:?}");
    assert_eq!(
        sniff.count_from(bed.vip()),
        0,
        "replies crossed the director"
    );

    // An IPIP packet from a host that is not a director is dropped by the decapsulation.
    let (_, pins1) = &reals[0];
    let dropped_before = decap_counter(
        bed.real(1),
        &pins1.0,
        lb_common::DECAP_DROP_UNKNOWN_DIRECTOR,
    );
    let decapsulated_before = decap_counter(bed.real(1), &pins1.0, lb_common::DECAP_DECAPSULATED);
    let client = bed.client_addr();
    let inner = packet::Ipv4::new(
        client,
        bed.vip(),
        6,
        packet::tcp(client, 40000, bed.vip(), PORT, packet::TCP_SYN, 1, &[]),
    )
    .bytes();
    let outer = packet::Ipv4::new(client, bed.real_addr(1), 4, inner).bytes();
    send_raw(bed.client(), bed.real_addr(1), &outer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while decap_counter(
        bed.real(1),
        &pins1.0,
        lb_common::DECAP_DROP_UNKNOWN_DIRECTOR,
    ) == dropped_before
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the forged IPIP packet was not dropped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        decap_counter(bed.real(1), &pins1.0, lb_common::DECAP_DECAPSULATED),
        decapsulated_before
    );

    // teardown restores every real.
    drop(director);
    for (i, (files, pins)) in reals.iter().enumerate() {
        let ns = bed.real(i + 1);
        let o = lbadm_in(ns, files, &pins.0, &["teardown"]);
        assert!(o.status.success(), "real{}: {:?}", i + 1, text(&o));
        assert!(!has_addr(ns, "lo", VIP, 32));
        assert!(!pins.0.exists());
        let after = [
            "net.ipv4.conf.all.arp_ignore",
            "net.ipv4.conf.all.arp_announce",
        ]
        .map(|k| ns.sysctl_read(k).unwrap());
        assert_eq!(after, before[i]);
    }
}

// --- one test per doctor finding ------------------------------------------------------------

/// A correctly set-up XDP real server, then `break_it`, then the single finding `code`.
fn only_finding(tag: &str, code: &str, break_it: impl FnOnce(&Rs)) -> (Rs, Value) {
    let rs = Rs::new(tag);
    rs.setup_xdp();
    assert_eq!(rs.check(&[]).0, 0);
    break_it(&rs);
    let (exit, v) = rs.check(&[]);
    assert_eq!(exit, 1, "{v:#}");
    assert_eq!(error_codes(&v), vec![code.to_string()], "{v:#}");
    (rs, v)
}

fn teardown(rs: &Rs) {
    let o = rs.lbadm(&["teardown"]);
    assert!(o.status.success(), "{:?}", text(&o));
}

#[test]
fn finding_decap_missing_xdp() {
    let rs = Rs::new("fdm");
    rs.ns.add_addr("lo", VIP, 32).unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.rp_filter", "0")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.eth0.rp_filter", "0")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.arp_ignore", "1")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.arp_announce", "2")
        .unwrap();
    let (exit, v) = rs.check(&[]);
    assert_eq!(exit, 1);
    assert_eq!(error_codes(&v), vec!["decap-missing"], "{v:#}");
    let f = finding(&v, "decap-missing");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("XDP decapsulation is not attached"),
        "{f}"
    );
    assert!(
        f["fix"].as_str().unwrap().starts_with(
            "lbadm realserver setup --decap xdp --director DIRECTOR --vip 198.18.0.100 --iface eth0"
        ),
        "{f}"
    );
}

#[test]
fn finding_decap_missing_or_down_tunl0() {
    let rs = Rs::new("fdt");
    rs.ns.add_addr("lo", VIP, 32).unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.rp_filter", "0")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.eth0.rp_filter", "0")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.arp_ignore", "1")
        .unwrap();
    rs.ns
        .sysctl_write("net.ipv4.conf.all.arp_announce", "2")
        .unwrap();
    let has_ipip = rs
        .ns
        .run(lb_userspace::realserver::kernel_has_ipip)
        .unwrap();
    let o = rs.lbadm(&[
        "check",
        "--decap",
        "tunl0",
        "--vip",
        "198.18.0.100",
        "--iface",
        "eth0",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    if has_ipip {
        // Loading ipip created a (down) tunl0 in this namespace.
        assert_eq!(error_codes(&v), vec!["decap-down"], "{v:#}");
        assert!(
            finding(&v, "decap-down")["message"]
                .as_str()
                .unwrap()
                .contains("tunl0 is down")
        );
    } else {
        assert_eq!(error_codes(&v), vec!["decap-missing"], "{v:#}");
        assert!(
            finding(&v, "decap-missing")["message"]
                .as_str()
                .unwrap()
                .contains("there is no tunl0")
        );
        println!("decap-down: skipped: this kernel has no ipip (CONFIG_NET_IPIP)");
    }
    // The (empty) nftables ruleset was read: no IPIP finding and nothing left unchecked.
    assert!(v["not_checked"].as_array().unwrap().is_empty(), "{v:#}");
}

#[test]
fn finding_ipip_blocked() {
    let rs = Rs::new("fib");
    let nft = |rule: &str| {
        let o = rs
            .ns
            .command("nft")
            .arg(rule)
            .output()
            .expect("nft (cargo xtask setup installs nftables)");
        assert!(
            o.status.success(),
            "nft {rule}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    nft("add table ip filter");
    nft("add chain ip filter input { type filter hook input priority 0; }");
    nft("add chain ip filter output { type filter hook output priority 0; }");
    // Outbound IPIP is none of a real server's business: not reported.
    nft("add rule ip filter output ip protocol 4 drop");
    let check = [
        "check",
        "--decap",
        "tunl0",
        "--vip",
        "198.18.0.100",
        "--iface",
        "eth0",
        "--json",
    ];
    let v: Value = serde_json::from_slice(&rs.lbadm(&check).stdout).unwrap();
    assert!(!codes(&v).contains(&"ipip-blocked".to_string()), "{v:#}");
    nft("add rule ip filter input ip protocol 4 counter drop");
    nft("add table inet fw");
    nft("add chain inet fw pre { type filter hook prerouting priority -10; }");
    nft("add rule inet fw pre meta l4proto 4 reject");
    let o = rs.lbadm(&check);
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut found: Vec<&str> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["code"] == "ipip-blocked")
        .map(|f| f["message"].as_str().unwrap())
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![
            "nftables rule in inet fw chain pre rejects IP protocol 4 (IPIP)",
            "nftables rule in ip filter chain input drops IP protocol 4 (IPIP)",
        ],
        "{v:#}"
    );
    let f = finding(&v, "ipip-blocked");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("ip protocol 4 ip saddr DIRECTOR accept"),
        "{f}"
    );
    // The human-readable form says the same.
    let o = rs.lbadm(&check[..check.len() - 1]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("error [ipip-blocked]"));
}

#[test]
fn finding_vip_missing() {
    let (rs, v) = only_finding("fvm", "vip-missing", |rs| {
        rs.ns.del_addr("lo", VIP, 32).unwrap()
    });
    let f = finding(&v, "vip-missing");
    assert_eq!(f["message"], "VIP 198.18.0.100 is not on any interface");
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("ip addr add 198.18.0.100/32 dev lo"),
        "{f}"
    );
    teardown(&rs);
}

#[test]
fn finding_vip_wrong_device() {
    let (rs, v) = only_finding("fvw", "vip-wrong-device", |rs| {
        rs.ns.add_addr("eth0", VIP, 24).unwrap()
    });
    let f = finding(&v, "vip-wrong-device");
    assert_eq!(
        f["message"],
        "VIP 198.18.0.100 is configured as 198.18.0.100/24 on eth0"
    );
    assert!(
        f["why"]
            .as_str()
            .unwrap()
            .contains("answers ARP for the VIP"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .starts_with("ip addr del 198.18.0.100/24 dev eth0; then lbadm realserver setup"),
        "{f}"
    );
    rs.ns.del_addr("eth0", VIP, 24).unwrap();
    // A non-/32 prefix on the right device is wrong too (connected route).
    rs.ns.del_addr("lo", VIP, 32).unwrap();
    rs.ns.add_addr("lo", VIP, 24).unwrap();
    let (exit, v) = rs.check(&[]);
    assert_eq!(exit, 1);
    assert_eq!(error_codes(&v), vec!["vip-wrong-device"], "{v:#}");
    assert!(
        finding(&v, "vip-wrong-device")["why"]
            .as_str()
            .unwrap()
            .contains("connected route")
    );
    rs.ns.del_addr("lo", VIP, 24).unwrap();
    teardown(&rs);
}

#[test]
fn finding_rp_filter_strict() {
    // Setup left all=2 and eth0=2; the kernel uses the larger, so both must go back to 1.
    let (rs, v) = only_finding("frp", "rp-filter-strict", |rs| {
        rs.ns
            .sysctl_write("net.ipv4.conf.all.rp_filter", "1")
            .unwrap();
        rs.ns
            .sysctl_write("net.ipv4.conf.eth0.rp_filter", "1")
            .unwrap();
    });
    let f = finding(&v, "rp-filter-strict");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("effective rp_filter 1"),
        "{f}"
    );
    assert!(
        f["fix"]
            .as_str()
            .unwrap()
            .contains("net.ipv4.conf.eth0.rp_filter=2 net.ipv4.conf.all.rp_filter=2"),
        "{f}"
    );
    // rp_filter 0 on eth0 does not help while all=1: still strict.
    rs.ns
        .sysctl_write("net.ipv4.conf.eth0.rp_filter", "0")
        .unwrap();
    assert!(error_codes(&rs.check(&[]).1).contains(&"rp-filter-strict".to_string()));
    // Setup repairs it (a second setup after a drift is not a no-op).
    let out = text(&rs.setup_xdp()).0;
    assert!(
        out.contains("set net.ipv4.conf.all.rp_filter = 2 (was 1)"),
        "{out}"
    );
    assert_eq!(rs.check(&[]).0, 0);
    teardown(&rs);
    assert_eq!(rs.sysctl("net.ipv4.conf.all.rp_filter"), "1");
}

#[test]
fn finding_arp_answers_vip() {
    let (rs, v) = only_finding("farp", "arp-answers-vip", |rs| {
        rs.ns
            .sysctl_write("net.ipv4.conf.all.arp_ignore", "0")
            .unwrap()
    });
    let f = finding(&v, "arp-answers-vip");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("effective arp_ignore 0 (needs >= 1), arp_announce 2"),
        "{f}"
    );
    assert!(f["fix"].as_str().unwrap().contains("arp_ignore=1"), "{f}");
    teardown(&rs);
}

#[test]
fn finding_mtu_too_small_is_a_warning() {
    let rs = Rs::new("fmtu");
    rs.setup_xdp();
    // 1500 (veth default): a warning, healthy unless --strict.
    let (exit, v) = rs.check(&[]);
    assert_eq!(exit, 0, "{v:#}");
    let f = finding(&v, "mtu-too-small");
    assert_eq!(f["severity"], "warning");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("eth0 has MTU 1500 (< 1520)"),
        "{f}"
    );
    assert!(
        f["why"].as_str().unwrap().contains("path-MTU discovery"),
        "{f}"
    );
    let (exit, _) = rs.check(&["--strict"]);
    assert_eq!(exit, 1);
    rs.ns.set_mtu("eth0", 1520).unwrap();
    let (exit, v) = rs.check(&["--strict"]);
    assert_eq!(exit, 0, "{v:#}");
    assert!(codes(&v).is_empty(), "{v:#}");
    // ipip-blocked cannot happen in XDP mode (XDP runs before netfilter).
    let ipip = v["not_checked"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["code"] == "ipip-blocked")
        .unwrap();
    assert!(
        ipip["reason"]
            .as_str()
            .unwrap()
            .starts_with("not applicable"),
        "{ipip}"
    );
    teardown(&rs);
}

// --- tunl0 ------------------------------------------------------------------------------------

#[test]
fn tunl0_setup_check_teardown_or_a_clear_error_without_ipip() {
    let rs = Rs::new("tunl0");
    let has_ipip = rs
        .ns
        .run(lb_userspace::realserver::kernel_has_ipip)
        .unwrap();
    let setup = [
        "setup",
        "--decap",
        "tunl0",
        "--vip",
        "198.18.0.100",
        "--iface",
        "eth0",
    ];
    if !has_ipip {
        // The operator gets one line naming the cause and the way out, and nothing changes.
        assert_one_line_error(
            &rs.lbadm(&setup),
            &["no ipip driver (CONFIG_NET_IPIP)", "--decap xdp"],
        );
        assert!(!rs.files.state().exists() && !rs.files.sysctl().exists());
        assert_eq!(rs.sysctl("net.ipv4.conf.all.arp_ignore"), "0");
        assert!(
            rs.ns
                .ipv4_addrs("lo")
                .unwrap()
                .iter()
                .all(|(a, _)| *a != VIP)
        );
        println!("skipped: this kernel has no ipip (CONFIG_NET_IPIP)");
        return;
    }
    let check = [
        "check",
        "--decap",
        "tunl0",
        "--vip",
        "198.18.0.100",
        "--iface",
        "eth0",
        "--json",
    ];
    let o = rs.lbadm(&check);
    assert_eq!(o.status.code(), Some(1));
    let o = rs.lbadm(&setup);
    assert!(o.status.success(), "{:?}", text(&o));
    let out = text(&o).0;
    assert!(
        out.contains("brought tunl0 up") && out.contains("added 198.18.0.100/32 to tunl0"),
        "{out}"
    );
    assert!(has_addr(&rs.ns, "tunl0", VIP, 32));
    let o = rs.lbadm(&check);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{v:#}");
    assert!(text(&rs.lbadm(&setup)).0.starts_with("nothing changed"));
    teardown(&rs);
    assert!(!has_addr(&rs.ns, "tunl0", VIP, 32));
    assert_eq!(rs.sysctl("net.ipv4.conf.all.rp_filter"), "1");
}
