//! End to end in network namespaces: a client, the director and two real servers on a bridge,
//! real TCP connections through VIP:6033, replies straight from the reals to the client.

use lb_tests::{
    lbbed::{Decap, Director},
    netns::Netns,
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use lb_userspace::{
    scheduler::Scheduler,
    services::{Protocol, RealServer, ServiceId, VirtualService},
};
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const PORT: u16 = 6033;

fn service(bed: &TestBed, weights: &[u32]) -> VirtualService {
    VirtualService {
        id: ServiceId { proto: Protocol::Tcp, addr: bed.vip(), port: PORT },
        sched: Scheduler::Wrr,
        persistence: 0,
        reals: weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| RealServer { addr: bed.real_addr(i + 1), weight })
            .collect(),
    }
}

/// Counts IPv4 frames from `src` that reach the stack of `ns` on `ifindex` (an AF_PACKET
/// socket sees what XDP passes, not what it transmits).
struct Sniffer(OwnedFd);

impl Sniffer {
    fn open(ns: &Netns, ifindex: u32) -> Sniffer {
        ns.run(|| unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, (libc::ETH_P_ALL as u16).to_be() as i32);
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            let buf: libc::c_int = 8 << 20;
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &buf as *const _ as *const libc::c_void, 4);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(fd, &sll as *const _ as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            Sniffer(OwnedFd::from_raw_fd(fd))
        })
    }

    fn count_from(&self, src: Ipv4Addr) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        loop {
            let r = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                return n;
            }
            let f = &buf[..r as usize];
            if f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == src.octets() {
                n += 1;
            }
        }
    }
}

#[test]
fn connections_through_the_vip_are_answered_directly_by_the_reals() {
    let bed = TestBed::new(TestBedOpts { prefix: "e2e".into(), ..Default::default() }).unwrap();
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
    assert!(per_real[0].abs_diff(75) <= slack && per_real[1].abs_diff(25) <= slack, "split {per_real:?}");

    // The data path's own counters agree with what the servers saw.
    let installed = director.maps.read().unwrap();
    let slots = &installed[0].real_slots;
    let conns: Vec<u64> = slots.iter().map(|&s| director.maps.real_stats(s).unwrap().conns).collect();
    assert_eq!(conns, vec![per_real[0] as u64, per_real[1] as u64]);
    let svc = director.maps.service_stats(installed[0].slot).unwrap();
    assert_eq!(svc.conns, 100);
    let real_packets: u64 = slots.iter().map(|&s| director.maps.real_stats(s).unwrap().packets).sum();
    assert_eq!(svc.packets, real_packets);
    // SYN, ACK, data, FIN and the last ACK at least, per connection; outbound stays 0.
    assert!(svc.packets >= 400, "only {} packets counted", svc.packets);

    // Replies bypass the director entirely.
    assert_eq!(sniff.count_from(bed.vip()), 0, "the director saw replies from the VIP");
}

#[test]
fn a_one_mebibyte_upload_completes_through_path_mtu_discovery() {
    let bed = TestBed::new(TestBedOpts { prefix: "mtu".into(), ..Default::default() }).unwrap();
    let _servers = bed.start_echo_servers(PORT).unwrap();
    let mut director = Director::attach(&bed).unwrap();
    let _decap = Decap::attach_all(&bed).unwrap();
    director.maps.apply(&[service(&bed, &[1, 1])]).unwrap();
    let payload: Vec<u8> = (0..1 << 20).map(|i| b'a' + (i % 26) as u8).collect();
    let reply = tcp_echo_request(bed.client(), SocketAddrV4::new(bed.vip(), PORT), &payload).unwrap();
    assert!(reply.ends_with(&format!(" {}", 1 << 20)), "reply {reply:?}");
    let frag_needed = director
        .maps
        .reasons()
        .unwrap()
        .into_iter()
        .find(|(r, _)| *r == lb_common::Reason::IcmpFragNeeded)
        .unwrap()
        .1;
    assert!(frag_needed >= 1, "full-size packets never needed PMTU discovery");
}
