//! The director's XDP program on crafted frames through `BPF_PROG_TEST_RUN`: exact output
//! bytes and actions.

use lb_common::{PROBE_MARK, Probe, ProbeKey, Reason, ip_be, port_be};
use lb_tests::{fixture::*, packet::*};
use lb_userspace::director::{Protocol, RealServer, Scheduler, VirtualService};
use std::net::Ipv4Addr;

const PORT: u16 = 6033;

fn svc(sched: Scheduler, reals: &[(Ipv4Addr, u32)]) -> VirtualService {
    let reals = reals.iter().map(|&(a, w)| RealServer::new(a, w)).collect();
    tcp_service(PORT, sched, reals)
}

fn syn(sport: u16) -> Vec<u8> {
    client_tcp(CLIENT, sport, VIP, PORT, TCP_SYN, b"")
}

fn ack(sport: u16, payload: &[u8]) -> Vec<u8> {
    client_tcp(CLIENT, sport, VIP, PORT, TCP_ACK | TCP_PSH, payload)
}

/// Which real an encapsulated frame goes to, checking it is a well-formed LVS-TUN frame.
fn real_of(f: &Fixture, input: &[u8]) -> Ipv4Addr {
    let o = f.run(input).unwrap();
    assert_eq!(o.action, XDP_TX, "not forwarded: {:?}", o.data);
    assert_eq!(o.data.len(), input.len() + 20);
    outer_dst(&o.data)
}

#[test]
fn syn_is_encapsulated_exactly() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let mut ip = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 40000, VIP, PORT, TCP_SYN, 7, b""),
    );
    ip.tos = 0xb8; // DSCP EF
    ip.ttl = 57;
    let inner = ip.bytes();
    let frame = eth(f.mac, CLIENT_MAC, ETH_P_IP, &inner);
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_TX);
    let mut want = eth(
        REAL1_MAC,
        f.mac,
        ETH_P_IP,
        &expected_outer(&inner, DIRECTOR, REAL1),
    );
    want.extend_from_slice(&inner);
    assert_eq!(o.data, want);
    // The outer header checks out on its own too.
    assert_eq!(csum(&o.data[14..34]), 0);
    assert_eq!(reason(&f.maps, Reason::NewConn), 1);
    assert_eq!(reason(&f.maps, Reason::TxForwarded), 1);
}

#[test]
fn later_packets_follow_their_connection() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1), (REAL3, 1)])])
        .unwrap();
    for sport in 41000..41030u16 {
        let first = real_of(&f, &syn(sport));
        for i in 0..4 {
            assert_eq!(
                real_of(&f, &ack(sport, &[i; 100])),
                first,
                "flow {sport} moved"
            );
        }
    }
    assert_eq!(reason(&f.maps, Reason::NewConn), 30);
    assert_eq!(reason(&f.maps, Reason::NonSynMiss), 0);
}

#[test]
fn wrr_three_to_one_is_exact_on_one_cpu() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 3), (REAL2, 1)])])
        .unwrap();
    let mut n1 = 0;
    let mut seq = Vec::new();
    for i in 0..1000u16 {
        let r = real_of(&f, &syn(20000 + i));
        if r == REAL1 {
            n1 += 1;
        }
        seq.push(r);
    }
    assert_eq!((n1, 1000 - n1), (750, 250));
    // Interleaved, not in bursts: never three REAL1 in a row... except across the cycle edge,
    // and REAL2 never twice in a row.
    assert!(seq.windows(2).all(|w| !(w[0] == REAL2 && w[1] == REAL2)));
    assert!(
        seq.windows(4)
            .all(|w| w.iter().filter(|&&r| r == REAL1).count() == 3)
    );
}

#[test]
fn weight_zero_quiesces_without_breaking_existing_flows() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1)])])
        .unwrap();
    let mut on_real2 = None;
    for sport in 30000..30010u16 {
        if real_of(&f, &syn(sport)) == REAL2 {
            on_real2 = Some(sport);
        }
    }
    let old = on_real2.expect("rr gave REAL2 nothing");
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 0)])])
        .unwrap();
    for sport in 31000..31050u16 {
        assert_eq!(
            real_of(&f, &syn(sport)),
            REAL1,
            "a new flow went to a quiesced real"
        );
    }
    assert_eq!(
        real_of(&f, &ack(old, b"still here")),
        REAL2,
        "existing flow was moved"
    );
}

#[test]
fn removed_real_flows_are_rescheduled() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1)])])
        .unwrap();
    let mut on_real2 = Vec::new();
    for sport in 32000..32010u16 {
        if real_of(&f, &syn(sport)) == REAL2 {
            on_real2.push(sport);
        }
    }
    assert!(!on_real2.is_empty());
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    for &sport in &on_real2 {
        assert_eq!(real_of(&f, &ack(sport, b"x")), REAL1);
        // and it stays there
        assert_eq!(real_of(&f, &ack(sport, b"y")), REAL1);
    }
    assert_eq!(reason(&f.maps, Reason::Rescheduled), on_real2.len() as u64);
}

#[test]
fn other_traffic_passes_untouched() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let other_ip = Ipv4Addr::new(198, 18, 0, 200);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-VIP address",
            client_tcp(CLIENT, 1, other_ip, PORT, TCP_SYN, b""),
        ),
        ("other port", client_tcp(CLIENT, 1, VIP, 3306, TCP_SYN, b"")),
        (
            "other protocol (UDP to a TCP service)",
            eth(
                f.mac,
                CLIENT_MAC,
                ETH_P_IP,
                &Ipv4::new(CLIENT, VIP, 17, udp(CLIENT, 1, VIP, PORT, b"q")).bytes(),
            ),
        ),
        (
            "GRE",
            eth(
                f.mac,
                CLIENT_MAC,
                ETH_P_IP,
                &Ipv4::new(CLIENT, VIP, 47, vec![0; 24]).bytes(),
            ),
        ),
        ("ARP", eth([0xff; 6], CLIENT_MAC, ETH_P_ARP, &[0u8; 28])),
        (
            "IPv6",
            eth(
                f.mac,
                CLIENT_MAC,
                ETH_P_IPV6,
                &[
                    0x60, 0, 0, 0, 0, 8, 6, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0,
                ],
            ),
        ),
        (
            "ICMP echo to the VIP",
            eth(
                f.mac,
                CLIENT_MAC,
                ETH_P_IP,
                &Ipv4::new(CLIENT, VIP, 1, vec![8, 0, 0xf7, 0xff, 0, 0, 0, 0]).bytes(),
            ),
        ),
    ];
    for (what, frame) in cases {
        let o = f.run(&frame).unwrap();
        assert_eq!(o.action, XDP_PASS, "{what}");
        assert_eq!(o.data, frame, "{what} was modified");
    }
    assert_eq!(reason(&f.maps, Reason::NewConn), 0);
}

#[test]
fn ipv4_options_are_skipped_and_kept() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL2, 1)])]).unwrap();
    let mut ip = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 40001, VIP, PORT, TCP_SYN, 1, b""),
    );
    ip.options = vec![0x94, 0x04, 0x00, 0x00, 0x01, 0x01, 0x01, 0x00]; // router alert + NOPs + EOL
    let inner = ip.bytes();
    let o = f.run(&eth(f.mac, CLIENT_MAC, ETH_P_IP, &inner)).unwrap();
    assert_eq!(o.action, XDP_TX);
    let mut want = eth(
        REAL2_MAC,
        f.mac,
        ETH_P_IP,
        &expected_outer(&inner, DIRECTOR, REAL2),
    );
    want.extend_from_slice(&inner);
    assert_eq!(o.data, want);
}

#[test]
fn truncated_frames_are_never_forwarded() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let full = syn(45000);
    // Every cut from nothing up to the end of the TCP header.
    for len in 0..full.len() {
        let cut = &full[..len];
        let o = f.run(cut);
        let o = match o {
            Ok(o) => o,
            // The kernel refuses frames shorter than an Ethernet header before running us.
            Err(_) if len < 14 => continue,
            Err(e) => panic!("len {len}: {e:#}"),
        };
        assert_eq!(o.action, XDP_PASS, "len {len}");
        assert_eq!(o.data, cut, "len {len} modified");
    }
    // A frame whose IP length claims more than is there.
    let mut lying = full.clone();
    lying[16..18].copy_from_slice(&1000u16.to_be_bytes());
    let o = f.run(&lying).unwrap();
    assert_eq!((o.action, o.data), (XDP_PASS, lying));
    assert_eq!(reason(&f.maps, Reason::NewConn), 0);
}

#[test]
fn fragments_go_to_the_stack() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    // A non-first fragment has no TCP header: bytes where the ports would be are payload.
    let mut ip = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 40002, VIP, PORT, TCP_ACK, 1, &[7; 64]),
    );
    ip.df = false;
    ip.frag_offset = 185;
    let frame = eth(f.mac, CLIENT_MAC, ETH_P_IP, &ip.bytes());
    let o = f.run(&frame).unwrap();
    assert_eq!((o.action, &o.data), (XDP_PASS, &frame));
    // The first fragment (MF set) is passed too: the rest could not follow it.
    ip.frag_offset = 0;
    ip.mf = true;
    let frame = eth(f.mac, CLIENT_MAC, ETH_P_IP, &ip.bytes());
    let o = f.run(&frame).unwrap();
    assert_eq!((o.action, &o.data), (XDP_PASS, &frame));
    assert_eq!(reason(&f.maps, Reason::PassFragment), 2);
}

#[test]
fn oversized_df_packet_gets_frag_needed() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    real_of(&f, &syn(46000));
    // 1500 bytes of IP: 1520 with the outer header, over the 1500-byte MTU.
    let payload = vec![0x5a; 1500 - 40];
    let inner = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 46000, VIP, PORT, TCP_ACK, 99, &payload),
    )
    .bytes();
    let frame = eth(f.mac, CLIENT_MAC, ETH_P_IP, &inner);
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_TX);
    // Ethernet back to the client, IP from the VIP, ICMP 3/4 with MTU 1480, quoting the
    // original IP header and 8 bytes of TCP.
    let quote = &inner[..28];
    let mut icmp = vec![3, 4, 0, 0, 0, 0];
    icmp.extend_from_slice(&1480u16.to_be_bytes());
    icmp.extend_from_slice(quote);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = Ipv4::new(VIP, CLIENT, 1, icmp);
    ip.tos = 0xc0;
    ip.id = 0;
    ip.df = false;
    let want = eth(CLIENT_MAC, f.mac, ETH_P_IP, &ip.bytes());
    assert_eq!(o.data, want);
    assert_eq!(reason(&f.maps, Reason::IcmpFragNeeded), 1);

    // Just fits: 1480 bytes of IP.
    let fits = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 46000, VIP, PORT, TCP_ACK, 99, &payload[..1440]),
    )
    .bytes();
    let o = f.run(&eth(f.mac, CLIENT_MAC, ETH_P_IP, &fits)).unwrap();
    assert_eq!((o.action, o.data.len()), (XDP_TX, 14 + 1500));

    // Without DF there is nothing to tell the client: dropped and counted.
    let mut nodf = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 46000, VIP, PORT, TCP_ACK, 99, &payload),
    );
    nodf.df = false;
    let o = f
        .run(&eth(f.mac, CLIENT_MAC, ETH_P_IP, &nodf.bytes()))
        .unwrap();
    assert_eq!(o.action, XDP_DROP);
    assert_eq!(reason(&f.maps, Reason::DropTooBig), 1);
}

#[test]
fn no_real_answers_port_unreachable() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 0)])]).unwrap();
    let frame = syn(47000);
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_TX);
    assert_eq!(&o.data[0..6], &CLIENT_MAC);
    assert_eq!(o.data[23], 1, "not ICMP");
    assert_eq!((o.data[34], o.data[35]), (3, 3), "not port unreachable");
    assert_eq!(&o.data[42..], &frame[14..14 + 28], "wrong quote");
    assert_eq!(csum(&o.data[34..]), 0, "bad ICMP checksum");
    assert_eq!(csum(&o.data[14..34]), 0, "bad IP checksum");
    assert_eq!(reason(&f.maps, Reason::NoRealUnreach), 1);
}

#[test]
fn vlan_tag_is_kept() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let inner = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 48000, VIP, PORT, TCP_SYN, 1, b""),
    )
    .bytes();
    let frame = eth_vlan(f.mac, CLIENT_MAC, 42, ETH_P_IP, &inner);
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_TX);
    let mut want = eth_vlan(
        REAL1_MAC,
        f.mac,
        42,
        ETH_P_IP,
        &expected_outer(&inner, DIRECTOR, REAL1),
    );
    want.extend_from_slice(&inner);
    assert_eq!(o.data, want);
}

#[test]
fn next_hop_behind_a_gateway_uses_its_mac() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL_REMOTE, 1)])]).unwrap();
    let o = f.run(&syn(49000)).unwrap();
    assert_eq!(o.action, XDP_TX);
    assert_eq!(&o.data[0..6], &GATEWAY_MAC);
    assert_eq!(outer_dst(&o.data), REAL_REMOTE);
}

#[test]
fn unresolved_neighbour_is_handed_to_tc_not_dropped() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL_UNRESOLVED, 1)])])
        .unwrap();
    let frame = syn(49500);
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_PASS);
    // Output starts with the metadata: magic, ifindex, next hop; then the encapsulated frame.
    let meta: [u32; 3] = bytemuck::pod_read_unaligned(&o.data[..12]);
    assert_eq!(meta[0], lb_common::NEIGH_META_MAGIC);
    assert_eq!(meta[1], f.ifindex);
    assert_eq!(meta[2], u32::from_ne_bytes(REAL_UNRESOLVED.octets()));
    let encap = &o.data[12..];
    assert_eq!(encap.len(), frame.len() + 20);
    assert_eq!(outer_dst(encap), REAL_UNRESOLVED);
    assert_eq!(&encap[34..], &frame[14..]);
    assert_eq!(reason(&f.maps, Reason::PassNoNeigh), 1);
}

#[test]
fn udp_flows_are_pinned_too() {
    let mut f = Fixture::new().unwrap();
    let mut s = svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1)]);
    s.id.proto = Protocol::Udp;
    f.apply(&[s]).unwrap();
    let dgram = |sport: u16| {
        eth(
            f.mac,
            CLIENT_MAC,
            ETH_P_IP,
            &Ipv4::new(CLIENT, VIP, 17, udp(CLIENT, sport, VIP, PORT, b"query")).bytes(),
        )
    };
    for sport in 5000..5010u16 {
        let first = real_of(&f, &dgram(sport));
        assert_eq!(real_of(&f, &dgram(sport)), first);
    }
}

#[test]
fn icmp_errors_for_a_connection_reach_its_real() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1)])])
        .unwrap();
    let r1 = real_of(&f, &syn(51000));
    let r2 = real_of(&f, &syn(51001));
    assert_ne!(r1, r2);
    // A router on the client's path says the real's reply (VIP:6033 -> client) was too big.
    for (sport, want) in [(51000u16, r1), (51001, r2)] {
        let reply = Ipv4::new(
            VIP,
            CLIENT,
            6,
            tcp(VIP, PORT, CLIENT, sport, TCP_ACK, 5, &[0; 8]),
        )
        .bytes();
        let mut icmp = vec![3, 4, 0, 0, 0, 0, 0x05, 0x78];
        icmp.extend_from_slice(&reply[..28]);
        let c = csum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let router = Ipv4Addr::new(198, 18, 0, 1);
        let frame = eth(
            f.mac,
            CLIENT_MAC,
            ETH_P_IP,
            &Ipv4::new(router, VIP, 1, icmp).bytes(),
        );
        assert_eq!(real_of(&f, &frame), want);
    }
    assert_eq!(reason(&f.maps, Reason::IcmpForwarded), 2);
}

#[test]
fn decap_strips_only_from_directors_to_vips() {
    let f = DecapFixture::new(&[DIRECTOR], &[VIP]).unwrap();
    let inner = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 40000, VIP, PORT, TCP_SYN, 7, b""),
    )
    .bytes();
    let wrap = |src: Ipv4Addr, inner: &[u8]| {
        let mut outer = expected_outer(inner, src, REAL1);
        outer.extend_from_slice(inner);
        eth(REAL1_MAC, DIRECTOR_MAC, ETH_P_IP, &outer)
    };
    let o = f.run(&wrap(DIRECTOR, &inner)).unwrap();
    assert_eq!(o.action, XDP_PASS);
    assert_eq!(o.data, eth(REAL1_MAC, DIRECTOR_MAC, ETH_P_IP, &inner));

    let o = f.run(&wrap(Ipv4Addr::new(198, 18, 0, 66), &inner)).unwrap();
    assert_eq!(o.action, XDP_DROP, "IPIP from a stranger must be dropped");
    let other_vip = Ipv4::new(CLIENT, Ipv4Addr::new(198, 18, 0, 101), 6, vec![0; 20]).bytes();
    let o = f.run(&wrap(DIRECTOR, &other_vip)).unwrap();
    assert_eq!(o.action, XDP_DROP, "IPIP to an unknown VIP must be dropped");
    let plain = client_tcp(CLIENT, 1, REAL1, 22, TCP_SYN, b"");
    let o = f.run(&plain).unwrap();
    assert_eq!((o.action, o.data), (XDP_PASS, plain));
    let c = f.counters().unwrap();
    assert_eq!(c[lb_common::DECAP_DECAPSULATED as usize], 1);
    assert_eq!(c[lb_common::DECAP_DROP_UNKNOWN_DIRECTOR as usize], 1);
    assert_eq!(c[lb_common::DECAP_DROP_UNKNOWN_VIP as usize], 1);
    assert_eq!(c[lb_common::DECAP_PASS_OTHER as usize], 1);
}

/// Captures what aya-log delivers.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{} {}", r.level(), r.args()));
    }
    fn flush(&self) {}
}

#[test]
fn debug_events_are_logged_per_connection_not_per_packet() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut logger =
        aya_log::EbpfLogger::init_with_logger(&mut f.bpf, Capture(lines.clone())).unwrap();
    real_of(&f, &syn(52000));
    for _ in 0..5 {
        real_of(&f, &ack(52000, b"data"));
    }
    logger.flush();
    let got = lines.lock().unwrap().clone();
    assert_eq!(
        got,
        vec![
            "DEBUG new_conn 198.18.0.10:52000 -> 198.18.0.100:6033 on real 198.18.0.11 (slot 0)"
                .to_string()
        ]
    );
}

fn cpus() -> usize {
    aya::util::nr_cpus().unwrap()
}

#[test]
fn a_flow_keeps_its_real_across_cpus() {
    if cpus() < 2 {
        eprintln!("skipped: one CPU");
        return;
    }
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1), (REAL3, 1)])])
        .unwrap();
    for sport in 53000..53020u16 {
        let first = f.run_on(0, &syn(sport)).unwrap();
        let first = outer_dst(&first.data);
        for i in 0..3 {
            let o = f.run_on(1, &ack(sport, &[i; 10])).unwrap();
            assert_eq!(o.action, XDP_TX);
            assert_eq!(
                outer_dst(&o.data),
                first,
                "flow {sport} moved when its packets changed CPU"
            );
        }
    }
}

#[test]
fn per_cpu_cursors_are_exact_on_every_cpu() {
    if cpus() < 2 {
        eprintln!("skipped: one CPU");
        return;
    }
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 3), (REAL2, 1)])])
        .unwrap();
    // New flows alternate between CPU 0 and CPU 1: each CPU walks the 4-slot table on its own,
    // so 500 flows per CPU split exactly 375/125 there, and 750/250 in all.
    let mut per_cpu = [[0u32; 2]; 2];
    for i in 0..1000u16 {
        let cpu = (i % 2) as usize;
        let o = f.run_on(cpu, &syn(54000 + i)).unwrap();
        let r = outer_dst(&o.data);
        per_cpu[cpu][if r == REAL1 { 0 } else { 1 }] += 1;
    }
    assert_eq!(per_cpu, [[375, 125], [375, 125]]);
}

#[test]
fn table_updates_publish_the_inactive_copy() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 3), (REAL2, 1)])])
        .unwrap();
    let before = f.maps.read().unwrap()[0].clone();
    let live = |f: &Fixture, s: &lb_userspace::director::InstalledService, copy: u32| {
        f.maps.tables.get(&(s.slot * 2 + copy), 0).unwrap()
    };
    let old_table = live(&f, &before, before.table_copy);
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 1), (REAL2, 1)])])
        .unwrap();
    let after = f.maps.read().unwrap()[0].clone();
    assert_ne!(
        after.table_copy, before.table_copy,
        "the live copy was rewritten in place"
    );
    // The copy packets were reading is untouched; the new one is complete.
    assert_eq!(live(&f, &before, before.table_copy), old_table);
    let new_table = live(&f, &after, after.table_copy);
    assert_eq!(new_table.len, 2);
    // An apply that changes nothing writes nothing.
    f.apply(&[svc(Scheduler::Wrr, &[(REAL1, 1), (REAL2, 1)])])
        .unwrap();
    assert_eq!(f.maps.read().unwrap()[0].table_copy, after.table_copy);
}

fn syn_from(client: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    client_tcp(client, sport, VIP, dport, TCP_SYN, b"")
}

#[test]
fn persistence_pins_a_client_across_connections() {
    let mut f = Fixture::new().unwrap();
    let mut s = svc(Scheduler::Rr, &[(REAL1, 1), (REAL2, 1)]);
    s.persistence = 1;
    f.apply(&[s.clone()]).unwrap();
    let a = Ipv4Addr::new(198, 18, 1, 1);
    let b = Ipv4Addr::new(198, 18, 1, 2);
    let ra = real_of(&f, &syn_from(a, 1000, PORT));
    for sport in 1001..1011 {
        assert_eq!(real_of(&f, &syn_from(a, sport, PORT)), ra, "client a moved");
    }
    let rb = real_of(&f, &syn_from(b, 2000, PORT));
    assert_ne!(
        ra, rb,
        "rr should have given the second client the other real"
    );
    assert_eq!(reason(&f.maps, Reason::Persisted), 10);
    // Persisted connections are connections: 11 + 1 opened in all.
    let svc_slot = f.maps.read().unwrap()[0].slot;
    assert_eq!(f.maps.service_stats(svc_slot).unwrap().conns, 12);

    // Quiescing the template's real moves its client (our deliberate choice, see README).
    let (qa, other) = if ra == REAL1 { (0, REAL2) } else { (1, REAL1) };
    let mut weights = [(REAL1, 1), (REAL2, 1)];
    weights[qa].1 = 0;
    let mut q = svc(Scheduler::Rr, &weights);
    q.persistence = 1;
    f.apply(&[q]).unwrap();
    assert_eq!(real_of(&f, &syn_from(a, 1020, PORT)), other);

    // Templates expire after the timeout without traffic.
    f.apply(&[s]).unwrap();
    let before = real_of(&f, &syn_from(b, 2001, PORT));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut seen = std::collections::HashSet::new();
    for sport in 2002..2006 {
        seen.insert(real_of(&f, &syn_from(b, sport, PORT)));
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert!(
        seen.len() == 2 || !seen.contains(&before),
        "template never expired: {seen:?}"
    );
}

#[test]
fn persistent_port_zero_service_takes_every_port() {
    let mut f = Fixture::new().unwrap();
    let mut s = svc(Scheduler::Rr, &[(REAL1, 1)]);
    s.id.port = 0;
    s.persistence = 360;
    f.apply(&[s]).unwrap();
    for port in [21u16, 3306, 6033, 65535] {
        assert_eq!(
            real_of(&f, &syn_from(CLIENT, 3000, port)),
            REAL1,
            "port {port}"
        );
    }
    // A non-persistent port-0 service would not (ipvsadm refuses to create one anyway).
    let mut f = Fixture::new().unwrap();
    let mut s = svc(Scheduler::Rr, &[(REAL1, 1)]);
    s.id.port = 0;
    f.apply(&[s]).unwrap();
    assert_eq!(
        f.run(&syn_from(CLIENT, 3000, 3306)).unwrap().action,
        XDP_PASS
    );
}

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const PROBE_PORT: u16 = 40123;

fn register_probe(f: &Fixture) -> aya::maps::HashMap<aya::maps::MapData, ProbeKey, Probe> {
    let data = aya::maps::MapData::from_pin(f.pin_dir().join(lb_common::MAP_PROBES)).unwrap();
    let mut probes: aya::maps::HashMap<_, ProbeKey, Probe> = aya::maps::Map::from_map_data(data)
        .unwrap()
        .try_into()
        .unwrap();
    probes
        .insert(
            ProbeKey {
                port: port_be(PROBE_PORT),
                _pad: 0,
            },
            Probe {
                vip: ip_be(VIP.octets()),
                real: ip_be(REAL1.octets()),
                port: port_be(PORT),
                ..Default::default()
            },
            0,
        )
        .unwrap();
    probes
}

fn probe_counters(probes: &aya::maps::HashMap<aya::maps::MapData, ProbeKey, Probe>) -> (u32, u32) {
    let p = probes
        .get(
            &ProbeKey {
                port: port_be(PROBE_PORT),
                _pad: 0,
            },
            0,
        )
        .unwrap();
    (p.egress, p.ingress)
}

/// The daemon's probe to real1:6033 leaves as the director sends client packets: to VIP:6033
/// inside IPIP to real1, every checksum right (compared with a packet built to the VIP).
#[test]
fn tunnel_probe_is_encapsulated_to_its_real() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let probes = register_probe(&f);
    let payload = b"probe";
    let out_ip = |dst: Ipv4Addr| {
        Ipv4::new(
            DIRECTOR,
            dst,
            6,
            tcp(DIRECTOR, PROBE_PORT, dst, PORT, TCP_SYN, 99, payload),
        )
        .bytes()
    };
    let frame = eth(REAL1_MAC, f.mac, ETH_P_IP, &out_ip(REAL1));

    // Not a probe (no mark): untouched.
    let o = f.run_tc(lb_common::PROG_TC_EGRESS, &frame, 0).unwrap();
    assert_eq!((o.action, &o.data), (TC_ACT_OK, &frame));

    let o = f
        .run_tc(lb_common::PROG_TC_EGRESS, &frame, PROBE_MARK)
        .unwrap();
    assert_eq!(o.action, TC_ACT_OK);
    let inner = out_ip(VIP);
    let mut want = eth(
        REAL1_MAC,
        f.mac,
        ETH_P_IP,
        &expected_outer(&inner, DIRECTOR, REAL1),
    );
    want.extend_from_slice(&inner);
    assert_eq!(o.data, want);
    assert_eq!(probe_counters(&probes), (1, 0));

    // A marked packet that is not a registered probe, or goes elsewhere, never leaves bare.
    let stray = eth(
        REAL2_MAC,
        f.mac,
        ETH_P_IP,
        &Ipv4::new(
            DIRECTOR,
            REAL2,
            6,
            tcp(DIRECTOR, PROBE_PORT, REAL2, PORT, TCP_SYN, 99, b""),
        )
        .bytes(),
    );
    let o = f
        .run_tc(lb_common::PROG_TC_EGRESS, &stray, PROBE_MARK)
        .unwrap();
    assert_eq!(o.action, TC_ACT_SHOT);
    let unregistered = client_tcp(DIRECTOR, PROBE_PORT + 1, REAL1, PORT, TCP_SYN, b"");
    let o = f
        .run_tc(lb_common::PROG_TC_EGRESS, &unregistered, PROBE_MARK)
        .unwrap();
    assert_eq!(o.action, TC_ACT_SHOT);
}

/// The real's answer from VIP:6033 gets real1's address back, so the probe socket (connected
/// to real1:6033) accepts it; other packets from the VIP are left alone.
#[test]
fn tunnel_probe_reply_gets_its_real_address_back() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(REAL1, 1)])]).unwrap();
    let probes = register_probe(&f);
    let mac = f.mac;
    let reply = |src: Ipv4Addr, dport: u16| {
        eth(
            mac,
            REAL1_MAC,
            ETH_P_IP,
            &Ipv4::new(
                src,
                DIRECTOR,
                6,
                tcp(src, PORT, DIRECTOR, dport, TCP_SYN | TCP_ACK, 5, b"hello"),
            )
            .bytes(),
        )
    };
    let o = f
        .run_tc(lb_common::PROG_TC_INGRESS, &reply(VIP, PROBE_PORT), 0)
        .unwrap();
    assert_eq!(o.action, TC_ACT_OK);
    assert_eq!(o.data, reply(REAL1, PROBE_PORT));
    assert_eq!(probe_counters(&probes), (0, 1));
    let other = reply(VIP, PROBE_PORT + 1);
    let o = f.run_tc(lb_common::PROG_TC_INGRESS, &other, 0).unwrap();
    assert_eq!((o.action, &o.data), (TC_ACT_OK, &other));
    assert_eq!(probe_counters(&probes), (0, 1));
}

// --- the two-node layout: a local real, and decapsulation for a peer director -------------

/// A real at the director's own address (its tunnel source) gets the packet as it came, up
/// this host's stack, without a tunnel to itself; the other real still gets it encapsulated.
#[test]
fn a_local_real_gets_the_packet_up_the_stack_unchanged() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(DIRECTOR, 1), (REAL1, 1)])])
        .unwrap();
    let (mut local, mut remote) = (0, 0);
    for sport in 43000..43010u16 {
        let frame = syn(sport);
        let o = f.run(&frame).unwrap();
        match o.action {
            XDP_PASS => {
                assert_eq!(o.data, frame, "a local real's packet is not touched");
                local += 1;
            }
            XDP_TX => {
                assert_eq!(outer_dst(&o.data), REAL1);
                remote += 1;
            }
            a => panic!("action {a}"),
        }
        // Its later packets stay where the connection went.
        let again = f.run(&ack(sport, b"x")).unwrap();
        assert_eq!(again.action, o.action);
    }
    assert_eq!((local, remote), (5, 5));
    assert_eq!(reason(&f.maps, Reason::PassLocalReal), 10);
    let installed = f.maps.read().unwrap();
    let local_slot = installed[0].real_slots[0];
    assert_eq!(f.maps.real_stats(local_slot).unwrap().conns, 5);
}

fn ipip_from(src: Ipv4Addr, dst: Ipv4Addr, inner: &[u8]) -> Vec<u8> {
    let mut ip = expected_outer(inner, src, dst);
    ip.extend_from_slice(inner);
    ip
}

#[test]
fn ipip_from_a_peer_director_is_decapsulated_for_our_vip_only() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Rr, &[(DIRECTOR, 1), (REAL1, 1)])])
        .unwrap();
    let peer = REAL1;
    lb_userspace::director::peers::write(f.pin_dir(), &[peer]).unwrap();
    let inner = Ipv4::new(
        CLIENT,
        VIP,
        6,
        tcp(CLIENT, 44000, VIP, PORT, TCP_SYN, 1, b""),
    )
    .bytes();
    let frame = eth(
        f.mac,
        REAL1_MAC,
        ETH_P_IP,
        &ipip_from(peer, DIRECTOR, &inner),
    );
    let o = f.run(&frame).unwrap();
    assert_eq!(o.action, XDP_PASS);
    assert_eq!(
        o.data,
        eth(f.mac, REAL1_MAC, ETH_P_IP, &inner),
        "exactly the inner packet"
    );
    assert_eq!(reason(&f.maps, Reason::PassDecapsulated), 1);
    // Decapsulated packets are never scheduled: no connection was made.
    assert_eq!(reason(&f.maps, Reason::NewConn), 0);

    // From a director that is not a peer: the stack's business, untouched.
    let stranger = eth(
        f.mac,
        REAL2_MAC,
        ETH_P_IP,
        &ipip_from(REAL2, DIRECTOR, &inner),
    );
    let o = f.run(&stranger).unwrap();
    assert_eq!((o.action, o.data), (XDP_PASS, stranger));
    // From the peer but not to us: untouched too.
    let elsewhere = eth(f.mac, REAL1_MAC, ETH_P_IP, &ipip_from(peer, REAL3, &inner));
    let o = f.run(&elsewhere).unwrap();
    assert_eq!((o.action, o.data), (XDP_PASS, elsewhere));
    // From the peer, to us, but not for a VIP: dropped.
    let other = Ipv4::new(
        CLIENT,
        REAL3,
        6,
        tcp(CLIENT, 44001, REAL3, PORT, TCP_SYN, 1, b""),
    )
    .bytes();
    let o = f
        .run(&eth(
            f.mac,
            REAL1_MAC,
            ETH_P_IP,
            &ipip_from(peer, DIRECTOR, &other),
        ))
        .unwrap();
    assert_eq!(o.action, XDP_DROP);
    assert_eq!(reason(&f.maps, Reason::DropDecapUnknownVip), 1);
}
