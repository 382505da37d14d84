//! End to end in network namespaces: a client, the director and two real servers on a bridge,
//! real TCP connections through VIP:6033, replies straight from the reals to the client.

use lb_tests::{
    assertions::Sniffer,
    lbbed::{Decap, Director},
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use lb_userspace::director::{Protocol, Scheduler, VirtualService};
use std::net::SocketAddrV4;

const PORT: u16 = 6033;

fn service(bed: &TestBed, weights: &[u32]) -> VirtualService {
    lb_tests::lbbed::service(bed, Protocol::Tcp, PORT, Scheduler::Wrr, weights)
}

#[test]
fn connections_through_the_vip_are_answered_directly_by_the_reals() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "e2e".into(),
        ..Default::default()
    })
    .unwrap();
    let _servers = bed.start_echo_servers(PORT).unwrap();
    let mut director = Director::attach(&bed).unwrap();
    assert!(!director.report.generic, "veth should take native XDP");
    let _decap = Decap::attach_all(&bed).unwrap();
    director.maps.apply(&[service(&bed, &[3, 1])]).unwrap();
    let sniff = Sniffer::open(bed.director(), bed.director_eth0().index);

    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let mut per_real = [0usize; 2];
    for i in 0..100 {
        let reply = tcp_echo_request(bed.client(), vip, format!("request {i}\n").as_bytes())
            .unwrap_or_else(|e| panic!("connection {i}: {e:#}"));
        let (name, bytes) = reply.split_once(' ').unwrap();
        assert_eq!(bytes, format!("request {i}\n").len().to_string());
        match name {
            "real1" => per_real[0] += 1,
            "real2" => per_real[1] += 1,
            other => panic!("answer from {other}"),
        }
    }
    // wrr 3:1 with per-CPU cursors: each CPU's own sequence is exact, so the total is off by at
    // most a cycle's worth per CPU.
    let cpus = aya::util::nr_cpus().unwrap();
    let slack = 3 * cpus;
    assert!(
        per_real[0].abs_diff(75) <= slack && per_real[1].abs_diff(25) <= slack,
        "split {per_real:?}"
    );

    // The data path's own counters agree with what the servers saw.
    let installed = director.maps.read().unwrap();
    let slots = &installed[0].real_slots;
    let conns: Vec<u64> = slots
        .iter()
        .map(|&s| director.maps.real_stats(s).unwrap().conns)
        .collect();
    assert_eq!(conns, vec![per_real[0] as u64, per_real[1] as u64]);
    let svc = director.maps.service_stats(installed[0].slot).unwrap();
    assert_eq!(svc.conns, 100);
    let real_packets: u64 = slots
        .iter()
        .map(|&s| director.maps.real_stats(s).unwrap().packets)
        .sum();
    assert_eq!(svc.packets, real_packets);
    // SYN, ACK, data, FIN and the last ACK at least, per connection; outbound stays 0.
    assert!(svc.packets >= 400, "only {} packets counted", svc.packets);

    // Replies bypass the director entirely.
    assert_eq!(
        sniff.count_from(bed.vip()),
        0,
        "the director saw replies from the VIP"
    );
}

#[test]
fn a_one_mebibyte_upload_completes_through_path_mtu_discovery() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "mtu".into(),
        ..Default::default()
    })
    .unwrap();
    let _servers = bed.start_echo_servers(PORT).unwrap();
    let mut director = Director::attach(&bed).unwrap();
    let _decap = Decap::attach_all(&bed).unwrap();
    director.maps.apply(&[service(&bed, &[1, 1])]).unwrap();
    let payload: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let reply =
        tcp_echo_request(bed.client(), SocketAddrV4::new(bed.vip(), PORT), &payload).unwrap();
    assert!(reply.ends_with(&format!(" {}", 1 << 20)), "reply {reply:?}");
    let frag_needed = director
        .maps
        .reasons()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == lb_common::Reason::IcmpFragNeeded)
        .unwrap()
        .1;
    assert!(
        frag_needed >= 1,
        "full-size packets never needed PMTU discovery"
    );
}
