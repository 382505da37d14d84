//! The original design's two-node layout: two servers, each a director and a real server, the
//! VIP floating between them (keepalived VRRP). The node holding the VIP serves its own real up
//! its own stack and tunnels to the other, whose director program decapsulates for it (one XDP
//! program per interface plays both roles). When the VIP moves, every connection continues on
//! its real, and no packet loops between the nodes.

use lb_common::Reason;
use lb_tests::{
    assertions::{lbadm_in, text, wait_until},
    directors::{DirectorDaemon, ServiceSpec},
    fleet::Keepalived,
    held::Held,
    mysqlbed::TempDir,
    testbed::{TestBed, TestBedOpts, line_echo_server},
};
use lb_userspace::director::Maps;
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

const PORT: u16 = 7000;

fn holds_vip(bed: &TestBed, i: usize) -> bool {
    bed.director_n(i)
        .ns()
        .ipv4_addrs("eth0")
        .is_ok_and(|a| a.iter().any(|(ip, _)| *ip == bed.vip()))
}

fn reason(pins: &std::path::Path, r: Reason) -> u64 {
    let maps = Maps::open(pins).unwrap();
    maps.reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map(|(_, n)| n)
        .unwrap_or(0)
}

#[test]
fn each_node_directs_and_serves_and_the_vip_moves_without_loss_or_loops() {
    let mut bed = TestBed::new(TestBedOpts {
        prefix: "two".into(),
        directors: 2,
        reals: 0,
        vrrp: true,
        ..Default::default()
    })
    .unwrap();
    let nodes: Vec<Ipv4Addr> = bed.director_addrs();
    let svc = [ServiceSpec {
        addrs: nodes.clone(),
        ..ServiceSpec::tcp(PORT, "rr", vec![1, 1])
    }];
    // Each node: its director (the daemon attaches the data path), then the real-server side
    // with `--decap director` accepting the other node, then its service.
    let files = TempDir::new("two-node").unwrap();
    let mut daemons = Vec::new();
    for i in 1..=2 {
        let d = DirectorDaemon::start_with(&bed, i, &svc, true, "").unwrap();
        wait_until("the data path attached", Duration::from_secs(10), || {
            lb_userspace::director::datapath::is_attached(&d.pin_dir())
        });
        let peer = nodes[2 - i].to_string();
        let vip = bed.vip().to_string();
        let sysctl = files.0.join(format!("node{i}-sysctl.conf"));
        let state = files.0.join(format!("node{i}-state.json"));
        let o = lbadm_in(
            bed.director_n(i).ns(),
            &d.pin_dir(),
            &[
                "realserver",
                "setup",
                "--decap",
                "director",
                "--director",
                &peer,
                "--vip",
                &vip,
                "--iface",
                "eth0",
                "--sysctl-file",
                sysctl.to_str().unwrap(),
                "--state-file",
                state.to_str().unwrap(),
            ],
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "node {i}: {out}{err}");
        assert!(
            out.contains(&format!("now decapsulates IPIP from {peer}")),
            "{out}"
        );
        let server = line_echo_server(
            bed.director_n(i).ns(),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, PORT),
            &format!("node{i}"),
        )
        .unwrap();
        bed.own(server);
        daemons.push((d, state));
    }
    for (d, _) in &daemons {
        d.wait_checks().unwrap();
        let log = d.log("daemon.log");
        assert!(!log.contains("DOWN"), "{log}");
    }
    // The doctor is happy with both nodes' roles.
    for (i, (d, state)) in daemons.iter().enumerate() {
        let o = lbadm_in(
            bed.director_n(i + 1).ns(),
            &d.pin_dir(),
            &[
                "realserver",
                "check",
                "--state-file",
                state.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "node {}: {:?}", i + 1, text(&o));
    }
    let mut vrrp = Vec::new();
    for (i, priority) in [(1, 150), (2, 100)] {
        let d = &daemons[i - 1].0;
        let ready = d.ready_command();
        vrrp.push(
            Keepalived::start(
                bed.director_n(i).ns(),
                &format!("node{i}"),
                priority,
                &ready,
            )
            .unwrap(),
        );
    }
    // Node 2 may be master for a moment if its readiness script passes first; node 1's
    // priority preempts it.
    wait_until(
        "node 1 alone holds the VIP",
        Duration::from_secs(15),
        || holds_vip(&bed, 1) && !holds_vip(&bed, 2),
    );
    wait_until("synced", Duration::from_secs(10), || {
        daemons.iter().all(|(d, _)| d.sync_ready())
    });

    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let mut held = Held::open(bed.client(), vip, 400).unwrap();
    let split = held.per_real();
    eprintln!("held connections per node: {split:?}");
    assert_eq!(
        split.get("node1"),
        Some(&200),
        "node 1 serves its own real locally"
    );
    assert_eq!(split.get("node2"), Some(&200), "and tunnels to node 2");
    let (p1, p2) = (daemons[0].0.pin_dir(), daemons[1].0.pin_dir());
    assert!(reason(&p1, Reason::PassLocalReal) > 0);
    assert!(reason(&p2, Reason::PassDecapsulated) > 0);
    wait_until(
        "node 2 has the connections",
        Duration::from_secs(10),
        || daemons[1].0.connections().unwrap() >= 400,
    );

    // The VIP moves to node 2 (keepalived on node 1 stops: it hands over at once).
    unsafe { libc::kill(-(vrrp[0].pid() as libc::pid_t), libc::SIGTERM) };
    wait_until("node 2 holds the VIP", Duration::from_secs(10), || {
        holds_vip(&bed, 2) && !holds_vip(&bed, 1)
    });
    let forwarded_by_1 = reason(&p1, Reason::TxForwarded);
    let decapsulated_by_1 = reason(&p1, Reason::PassDecapsulated);
    held.check("after the VIP moved to node 2");
    held.check("and again");
    // Node 1 now only decapsulates what node 2 tunnels to its real, and forwards nothing:
    // a decapsulated packet is never scheduled again, so nothing loops.
    let on_node1 = split["node1"] as u64;
    assert!(reason(&p1, Reason::PassDecapsulated) >= decapsulated_by_1 + on_node1 * 2);
    assert_eq!(reason(&p1, Reason::TxForwarded), forwarded_by_1);
    assert!(reason(&p2, Reason::PassLocalReal) > 0);

    // A node whose director does not accept its peer is explained by the doctor.
    lb_userspace::director::peers::write(&p2, &[]).unwrap();
    let o = lbadm_in(
        bed.director_n(2).ns(),
        &p2,
        &[
            "realserver",
            "check",
            "--state-file",
            daemons[1].1.to_str().unwrap(),
        ],
    );
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("[decap-missing]: this host's director decapsulates for no peer director"),
        "{out}"
    );
}
