//! Tests of the namespace test bed itself. They need root (CAP_SYS_ADMIN and
//! CAP_NET_ADMIN).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_tests::netns::{Netns, Offloads, visible_netns_inodes};
use lb_tests::testbed::{
    CLIENT_ADDR, DIRECTOR_ADDR, ECHO_PORT, HOST_IF, TestBed, TestBedOpts, VIP, real_addr,
    tcp_echo_request, tcp_echo_server,
};

/// The leak checks count namespaces process-wide, so the tests of this file
/// must not create namespaces concurrently.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits for the set of visible namespaces to equal `expected`: a thread that
/// has been joined may still be releasing its namespace in the kernel.
fn assert_netns_back_to(expected: &BTreeSet<u64>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = visible_netns_inodes();
        if &now == expected {
            return;
        }
        if Instant::now() > deadline {
            panic!("namespaces leaked: before {expected:?}, now {now:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn build_bed(reals: usize) -> TestBed {
    TestBed::new(TestBedOpts {
        reals,
        prefix: "tb".into(),
        ..Default::default()
    })
    .expect("building the test bed")
}

#[test]
fn client_reaches_reals_through_the_bridge() -> Result<()> {
    let _serial = serial();
    let bed = build_bed(2);
    let s1 = tcp_echo_server(
        bed.real(1),
        SocketAddrV4::new(real_addr(1), ECHO_PORT),
        "real1",
    )?;
    let s2 = tcp_echo_server(
        bed.real(2),
        SocketAddrV4::new(real_addr(2), ECHO_PORT),
        "real2",
    )?;
    let to = |i| SocketAddrV4::new(real_addr(i), ECHO_PORT);

    assert_eq!(
        tcp_echo_request(bed.client(), to(1), b"hello\n")?,
        "real1 6"
    );
    assert_eq!(tcp_echo_request(bed.client(), to(2), b"hi\n")?, "real2 3");
    // EOF also ends the request; nothing after the newline is counted.
    assert_eq!(tcp_echo_request(bed.client(), to(1), b"abc")?, "real1 3");
    assert_eq!(tcp_echo_request(bed.client(), to(1), b"ab\ncd")?, "real1 3");

    // A large upload through the bridge at the bed's MTU.
    let big = vec![0x5a_u8; 8 << 20];
    assert_eq!(
        tcp_echo_request(bed.client(), to(2), &big)?,
        format!("real2 {}", big.len())
    );

    // Many sequential connections.
    for n in 0..200 {
        let payload = format!("{}\n", "x".repeat(n));
        assert_eq!(
            tcp_echo_request(bed.client(), to(1), payload.as_bytes())?,
            format!("real1 {}", n + 1)
        );
    }

    // A few concurrent ones, each with an upload big enough to overlap.
    let client = bed.client();
    thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..8)
            .map(|k| {
                s.spawn(move || {
                    let payload = vec![0_u8; 256 * 1024 + k];
                    tcp_echo_request(client, to(1 + k % 2), &payload)
                })
            })
            .collect();
        for (k, w) in workers.into_iter().enumerate() {
            let reply = w.join().expect("client thread panicked")?;
            assert_eq!(reply, format!("real{} {}", 1 + k % 2, 256 * 1024 + k));
        }
        Ok(())
    })?;

    // Replies are written before the counters move on.
    let deadline = Instant::now() + Duration::from_secs(2);
    while s1.answered() + s2.answered() < 213 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s1.accepted(), 3 + 200 + 4);
    assert_eq!(s2.accepted(), 1 + 1 + 4);
    assert_eq!(s1.answered() + s2.answered(), 213);

    // The director owns the VIP on the segment: the client reaches it there.
    let d = tcp_echo_server(
        bed.director(),
        SocketAddrV4::new(VIP, ECHO_PORT),
        "director",
    )?;
    assert_eq!(
        tcp_echo_request(bed.client(), SocketAddrV4::new(VIP, ECHO_PORT), b"vip\n")?,
        "director 4"
    );
    drop(d);
    Ok(())
}

#[test]
fn echo_server_stops_on_drop_and_port_is_reusable() -> Result<()> {
    let _serial = serial();
    let ns = Netns::new("echo")?;
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, ECHO_PORT);
    let server = tcp_echo_server(&ns, addr, "first")?;
    assert_eq!(tcp_echo_request(&ns, addr, b"1\n")?, "first 2");
    // A connection that never sends anything must not block the drop.
    let idle = ns.run(|| std::net::TcpStream::connect(addr))?;
    drop(server);
    assert!(
        tcp_echo_request(&ns, addr, b"1\n").is_err(),
        "server still answering"
    );
    // The listener's port is free again, despite the idle connection's
    // TIME_WAIT/FIN_WAIT state (SO_REUSEADDR).
    let again = tcp_echo_server(&ns, addr, "second")?;
    assert_eq!(tcp_echo_request(&ns, addr, b"22\n")?, "second 3");
    drop(idle);
    drop(again);
    // The namespace's loopback is its own: nothing listens on the host side.
    Ok(())
}

#[test]
fn sysctls_are_per_namespace() -> Result<()> {
    let _serial = serial();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?;
    let a = Netns::new("sysctl-a")?;
    let b = Netns::new("sysctl-b")?;
    assert_eq!(a.sysctl_read("net.ipv4.ip_forward")?, "0");
    assert_eq!(b.sysctl_read("net.ipv4.ip_forward")?, "0");

    a.sysctl_write("net.ipv4.ip_forward", "1")?;
    assert_eq!(a.sysctl_read("net.ipv4.ip_forward")?, "1");
    assert_eq!(b.sysctl_read("net.ipv4.ip_forward")?, "0");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?,
        host_before,
        "the host's value changed"
    );

    // Slash-separated keys name the same file.
    b.sysctl_write("net/ipv4/conf/lo/rp_filter", "2")?;
    assert_eq!(b.sysctl_read("net.ipv4.conf.lo.rp_filter")?, "2");
    assert_eq!(a.sysctl_read("net.ipv4.conf.lo.rp_filter")?, "0");

    let err = a.sysctl_write("net.ipv4.no_such_knob", "1").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("sysctl-a") && msg.contains("net.ipv4.no_such_knob"),
        "{msg}"
    );
    assert!(a.sysctl_read("net..ipv4").is_err());
    Ok(())
}

#[test]
fn bed_layout_addresses_and_offloads() -> Result<()> {
    let _serial = serial();
    let bed = build_bed(3);
    assert_eq!(bed.real_count(), 3);
    assert_eq!(bed.client_addr(), CLIENT_ADDR);
    assert_eq!(bed.director_addr(), DIRECTOR_ADDR);
    assert_eq!(bed.vip(), VIP);
    assert_eq!(bed.real_addr(3), Ipv4Addr::new(198, 18, 0, 13));

    // The VIP sits on each real's lo, and only on its lo.
    for i in 1..=3 {
        let real = bed.real(i);
        assert_eq!(
            real.ipv4_addrs("lo")?,
            vec![(Ipv4Addr::LOCALHOST, 8), (VIP, 32)]
        );
        assert_eq!(real.ipv4_addrs(HOST_IF)?, vec![(real_addr(i), 24)]);
        assert_eq!(real.sysctl_read("net.ipv4.conf.all.arp_ignore")?, "1");
        assert_eq!(real.sysctl_read("net.ipv4.conf.all.arp_announce")?, "2");
    }
    assert_eq!(
        bed.director().ipv4_addrs(HOST_IF)?,
        vec![(DIRECTOR_ADDR, 24), (VIP, 32)]
    );
    assert_eq!(
        bed.director().sysctl_read("net.ipv4.conf.all.arp_ignore")?,
        "0"
    );
    assert_eq!(bed.client().ipv4_addrs(HOST_IF)?, vec![(CLIENT_ADDR, 24)]);

    // Recorded indexes and MACs match the kernel's view.
    let eth0 = bed.real_eth0(2);
    assert_eq!(bed.real(2).link_index(HOST_IF)?, eth0.index);
    assert_eq!(bed.real(2).link_mac(HOST_IF)?, eth0.mac);
    assert_ne!(bed.client_eth0().mac, bed.director_eth0().mac);

    // Offloads as the XDP tests need them.
    let off = |ns: &Netns, link: &str| ns.offloads(link).expect("reading offloads");
    assert_eq!(
        off(bed.client(), HOST_IF),
        Offloads {
            tx_csum: false,
            gro: false,
            tso: false
        }
    );
    assert!(!off(bed.director(), HOST_IF).tx_csum);
    for host in [bed.client_host(), bed.director_host()]
        .into_iter()
        .chain(bed.reals())
    {
        assert!(!off(host.ns(), HOST_IF).tx_csum, "{}", host.name());
        let port = off(bed.bridge(), &host.bridge_port().name);
        assert!(
            !port.tx_csum && port.gro,
            "{}: {port:?}",
            host.bridge_port().name
        );
    }

    // MTU and failures naming namespace, link and operation.
    let err = bed.real(1).set_mtu("nope0", 1400).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("tb-real1") && msg.contains("nope0") && msg.contains("mtu"),
        "{msg}"
    );
    let err = bed
        .client()
        .set_offloads("nope0", Some(false), None, None)
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("tb-client") && msg.contains("nope0"), "{msg}");
    Ok(())
}

#[test]
fn netns_helpers_route_neigh_addr_and_command() -> Result<()> {
    let _serial = serial();
    let a = Netns::new("helpers-a")?;
    let b = Netns::new("helpers-b")?;
    a.add_veth("va", "vb", &b)?;
    assert!(
        a.link_index("vb").is_err(),
        "peer must not stay in the creator"
    );
    b.link_index("vb")?;
    // Both ends in one namespace works too.
    a.add_veth("x0", "x1", &a)?;
    assert_ne!(a.link_index("x0")?, a.link_index("x1")?);
    a.set_mtu("va", 9000)?;
    for (ns, link, ip) in [(&a, "va", [10, 0, 0, 1]), (&b, "vb", [10, 0, 0, 2])] {
        ns.add_addr(link, Ipv4Addr::from(ip), 30)?;
        ns.set_up(link)?;
    }
    // Routes and a permanent neighbour: reach b's lo address via b.
    b.add_addr("lo", Ipv4Addr::new(192, 0, 2, 1), 32)?;
    a.add_route(
        Ipv4Addr::new(192, 0, 2, 0),
        24,
        Some(Ipv4Addr::new(10, 0, 0, 2)),
        None,
    )?;
    a.add_neigh_permanent("va", Ipv4Addr::new(10, 0, 0, 2), b.link_mac("vb")?)?;
    let srv = tcp_echo_server(&b, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), "b")?;
    let port = srv.local_addr().port();
    assert_eq!(
        tcp_echo_request(
            &a,
            SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port),
            b"z\n"
        )?,
        "b 2"
    );
    b.del_addr("lo", Ipv4Addr::new(192, 0, 2, 1), 32)?;
    assert!(
        b.ipv4_addrs("lo")?
            .iter()
            .all(|(ip, _)| *ip != Ipv4Addr::new(192, 0, 2, 1))
    );
    a.add_route(Ipv4Addr::UNSPECIFIED, 0, None, Some("va"))?;
    assert!(a.add_route(Ipv4Addr::UNSPECIFIED, 0, None, None).is_err());

    // A child process runs inside the namespace: its view of links is b's.
    let out = b.command("cat").arg("/proc/self/net/dev").output()?;
    let dev = String::from_utf8_lossy(&out.stdout);
    assert!(dev.contains("vb:") && !dev.contains("va:"), "{dev}");

    // A spawned thread sees b too.
    let idx = b
        .spawn(|| std::fs::read_to_string("/proc/thread-self/net/dev"))
        .join();
    assert!(idx.expect("thread").expect("read").contains("vb:"));
    Ok(())
}

#[test]
fn run_propagates_panics() {
    let _serial = serial();
    let ns = Netns::new("panicky").expect("netns");
    let r = panic::catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("boom inside"))));
    let payload = r.expect_err("panic must propagate");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside"));
}

#[test]
fn everything_is_removed_on_drop_panic_and_failed_build() {
    let _serial = serial();
    let before = visible_netns_inodes();

    // Plain drop, with a server and a child process owned by the bed.
    let mut bed = build_bed(2);
    let ours: Vec<u64> = [
        bed.bridge(),
        bed.client(),
        bed.director(),
        bed.real(1),
        bed.real(2),
    ]
    .iter()
    .map(|ns| ns.inode())
    .collect();
    let now = visible_netns_inodes();
    assert!(
        ours.iter().all(|i| now.contains(i)),
        "bed namespaces not visible"
    );
    for s in bed.start_echo_servers(ECHO_PORT).expect("echo servers") {
        bed.own(s);
    }
    let child = lb_tests::netns::ChildGuard::spawn(bed.real(1).command("sleep").arg("600"))
        .expect("spawning sleep");
    let pid = child.id();
    bed.own(child);
    drop(bed);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "child process survived the bed"
    );
    assert_netns_back_to(&before);

    // A panic while the bed is alive.
    let r = panic::catch_unwind(|| {
        let _bed = build_bed(1);
        panic!("test failure while the bed is up");
    });
    assert!(r.is_err());
    assert_netns_back_to(&before);

    // A build that fails half-way: the kernel rejects the MTU only after
    // namespaces, the bridge and the first veth exist.
    let err = TestBed::new(TestBedOpts {
        mtu: 70_000,
        prefix: "broken".into(),
        ..Default::default()
    })
    .err()
    .expect("an MTU above veth's maximum must fail");
    let msg = format!("{err:#}");
    assert!(msg.contains("broken-") && msg.contains("mtu"), "{msg}");
    assert_netns_back_to(&before);
}
