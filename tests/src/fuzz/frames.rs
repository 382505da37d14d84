//! Frames for the fuzzer: mostly plausible traffic over a small space of flows (so that flows
//! meet their own earlier packets), every TCP flag combination, VLAN tags, IP options,
//! fragments, ICMP errors quoting live connections, IPIP from peers and strangers, then cut,
//! padded and lied about.
use super::Rng;
use crate::{
    fixture::{CLIENT, DIRECTOR, VIP},
    packet::{self, Ipv4},
};
use std::net::Ipv4Addr;

pub const VIP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 101);
pub const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
pub const CLIENTS: [Ipv4Addr; 4] = [
    CLIENT,
    Ipv4Addr::new(198, 18, 0, 20),
    Ipv4Addr::new(10, 9, 0, 1),
    Ipv4Addr::new(10, 9, 1, 7),
];
pub const PORTS: [u16; 4] = [80, 6033, 7000, 53];
const DESTS: [Ipv4Addr; 4] = [VIP, VIP2, DIRECTOR, Ipv4Addr::new(198, 18, 0, 77)];

fn dest(rng: &mut Rng) -> Ipv4Addr {
    if rng.chance(85) {
        *rng.pick(&DESTS[..2])
    } else {
        *rng.pick(&DESTS)
    }
}

fn tcp_flags(rng: &mut Rng) -> u8 {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    match rng.below(100) {
        0..30 => SYN,
        30..60 => ACK | 0x08,
        60..70 => 0x01 | ACK,
        70..78 => 0x04,
        78..83 => 0x04 | ACK,
        83..85 => SYN | ACK,
        _ => rng.below(256) as u8,
    }
}

fn payload(rng: &mut Rng) -> Vec<u8> {
    let n = match rng.below(10) {
        0..7 => rng.below(200),
        7..9 => 200 + rng.below(1200),
        _ => 1440 + rng.below(80),
    };
    (0..n).map(|_| rng.below(256) as u8).collect()
}

/// A transport packet (TCP, UDP, or another protocol) from `src` to `dst`, to the protocol
/// and port of `svc` when given (0: any port).
fn transport(rng: &mut Rng, src: Ipv4Addr, dst: Ipv4Addr, svc: Option<(u8, u16)>) -> Ipv4 {
    let sport = 40000 + rng.below(6) as u16;
    let dport = match svc {
        Some((_, port)) if port != 0 => port,
        _ => *rng.pick(&PORTS),
    };
    let body = payload(rng);
    let kind = match svc {
        Some((6, _)) => 0,
        Some(_) => 80,
        None => rng.below(100),
    };
    let (proto, l4) = match kind {
        0..70 => (
            6,
            packet::tcp(
                src,
                sport,
                dst,
                dport,
                tcp_flags(rng),
                rng.below(1 << 31) as u32,
                &body,
            ),
        ),
        70..95 => (17, packet::udp(src, sport, dst, dport, &body)),
        _ => (*rng.pick(&[47u8, 132, 2, 50]), body),
    };
    let mut ip = Ipv4::new(src, dst, proto, l4);
    ip.df = rng.chance(85);
    ip.tos = *rng.pick(&[0u8, 0, 0xb8, 0x10]);
    ip.ttl = 1 + rng.below(255) as u8;
    ip.id = rng.below(1 << 16) as u16;
    if rng.chance(8) {
        let words = 1 + rng.below(10);
        ip.options = (0..words * 4)
            .map(|_| {
                if rng.chance(70) {
                    1
                } else {
                    rng.below(256) as u8
                }
            })
            .collect();
    }
    if rng.chance(3) {
        ip.mf = rng.chance(50);
        ip.frag_offset = if ip.mf { 0 } else { 1 + rng.below(100) as u16 };
    }
    ip
}

/// An ICMP error (mostly destination unreachable) about a packet the VIP sent to a client:
/// for a live connection's tuple when `live` gives one.
fn icmp_error(rng: &mut Rng, live: Option<lb_common::ConnKey>) -> Ipv4 {
    let (client, vip, cport, vport, proto) = match live {
        Some(k) if rng.chance(80) => (
            Ipv4Addr::from(k.saddr.to_ne_bytes()),
            Ipv4Addr::from(k.daddr.to_ne_bytes()),
            u16::from_be(k.sport),
            u16::from_be(k.dport),
            k.proto,
        ),
        _ => (
            *rng.pick(&CLIENTS),
            dest(rng),
            40000 + rng.below(6) as u16,
            *rng.pick(&PORTS),
            *rng.pick(&[6u8, 17, 1]),
        ),
    };
    let quoted_l4 = if proto == 6 {
        packet::tcp(vip, vport, client, cport, 0x12, 1, b"")
    } else {
        packet::udp(vip, vport, client, cport, b"")
    };
    let mut quoted = Ipv4::new(vip, client, proto, quoted_l4).bytes();
    quoted.truncate(28 + rng.below(2) as usize * 12);
    let kind = if rng.chance(85) {
        3
    } else {
        *rng.pick(&[0u8, 5, 8, 11])
    };
    let mut icmp = vec![kind, rng.below(16) as u8, 0, 0, 0, 0, 0x05, 0xa0];
    icmp.extend_from_slice(&quoted);
    // The error comes from a router on the client's path, to the VIP.
    let router = Ipv4Addr::new(10, 9, 255, 1 + rng.below(3) as u8);
    Ipv4::new(router, vip, 1, icmp)
}

/// IPIP: from a peer director or a stranger, to this director or elsewhere.
fn ipip(rng: &mut Rng) -> Ipv4 {
    let src = if rng.chance(70) {
        PEER
    } else {
        *rng.pick(&CLIENTS)
    };
    let dst = if rng.chance(80) { DIRECTOR } else { VIP };
    let client = *rng.pick(&CLIENTS);
    let to = dest(rng);
    let inner = transport(rng, client, to, None).bytes();
    let mut ip = Ipv4::new(src, dst, 4, inner);
    ip.df = rng.chance(50);
    ip
}

/// One frame, plausible or not. `live` offers a connection the tables hold, `services` the
/// configured services, which most frames are sent to.
pub fn frame(
    rng: &mut Rng,
    live: Option<lb_common::ConnKey>,
    services: &[lb_common::ServiceKey],
) -> Vec<u8> {
    let ip = match rng.below(100) {
        0..84 => {
            let src = *rng.pick(&CLIENTS);
            if !services.is_empty() && rng.chance(75) {
                let s = *rng.pick(services);
                let to = Ipv4Addr::from(s.addr.to_ne_bytes());
                transport(rng, src, to, Some((s.proto, u16::from_be(s.port))))
            } else {
                let to = dest(rng);
                transport(rng, src, to, None)
            }
        }
        84..93 => icmp_error(rng, live),
        _ => ipip(rng),
    };
    let l3 = ip.bytes();
    let dmac = [0x02, 0, 0, 0, 0, 0x02];
    let smac = [0x02, 0, 0, 0, 0, 0x10];
    let mut f = match rng.below(100) {
        0..90 => packet::eth(dmac, smac, packet::ETH_P_IP, &l3),
        90..97 => packet::eth_vlan(dmac, smac, rng.below(4095) as u16, packet::ETH_P_IP, &l3),
        97 => {
            let inner = packet::eth_vlan(dmac, smac, 7, packet::ETH_P_IP, &l3);
            packet::eth_vlan(dmac, smac, 5, packet::ETH_P_8021Q, &inner[14..])
        }
        98 => packet::eth(dmac, smac, 0x88a8, &l3),
        _ => packet::eth(
            dmac,
            smac,
            *rng.pick(&[packet::ETH_P_ARP, packet::ETH_P_IPV6]),
            &l3,
        ),
    };
    if rng.chance(15) {
        mutate(rng, &mut f);
    }
    f
}

/// Breaks a frame: cut, padded, a lying length or header length, a wrong version, a flipped
/// byte. Never shorter than an Ethernet header (the test run refuses those).
fn mutate(rng: &mut Rng, f: &mut Vec<u8>) {
    let l3 = if f[12..14] == [0x81, 0x00] { 18 } else { 14 };
    match rng.below(6) {
        0 => f.truncate(14 + rng.below(f.len() as u64 - 13) as usize),
        1 => f.extend((0..1 + rng.below(40)).map(|_| rng.below(256) as u8)),
        2 if f.len() >= l3 + 4 => {
            let len = rng.below(1 << 16) as u16;
            f[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
        }
        3 if f.len() > l3 => f[l3] = (f[l3] & 0xf0) | rng.below(16) as u8,
        4 if f.len() > l3 => f[l3] = (rng.below(16) as u8) << 4 | (f[l3] & 0x0f),
        _ => {
            let i = rng.below(f.len() as u64) as usize;
            f[i] ^= 1 << rng.below(8);
        }
    }
}
