//! Crafting and reading test frames byte by byte, independent of the code under test.

use std::net::Ipv4Addr;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
pub const DIRECTOR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

pub fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for ch in data.chunks(2) {
        let w = if ch.len() == 2 {
            u16::from_be_bytes([ch[0], ch[1]])
        } else {
            u16::from_be_bytes([ch[0], 0])
        };
        sum += w as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet (without L2) under construction.
#[derive(Clone, Debug)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub tos: u8,
    pub ttl: u8,
    pub id: u16,
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    pub options: Vec<u8>,
    pub payload: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: Vec<u8>) -> Self {
        Ipv4 {
            src,
            dst,
            proto,
            tos: 0,
            ttl: 64,
            id: 0x1234,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
            payload,
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        assert!(self.options.len().is_multiple_of(4) && self.options.len() <= 40);
        let ihl = 5 + self.options.len() / 4;
        let total = ihl * 4 + self.payload.len();
        let mut h = Vec::with_capacity(total);
        h.push(0x40 | ihl as u8);
        h.push(self.tos);
        h.extend_from_slice(&(total as u16).to_be_bytes());
        h.extend_from_slice(&self.id.to_be_bytes());
        let mut frag = self.frag_offset & 0x1fff;
        if self.df {
            frag |= 0x4000;
        }
        if self.mf {
            frag |= 0x2000;
        }
        h.extend_from_slice(&frag.to_be_bytes());
        h.push(self.ttl);
        h.push(self.proto);
        h.extend_from_slice(&[0, 0]);
        h.extend_from_slice(&self.src.octets());
        h.extend_from_slice(&self.dst.octets());
        h.extend_from_slice(&self.options);
        let c = csum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        h.extend_from_slice(&self.payload);
        h
    }
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> u16 {
    let mut p = Vec::with_capacity(12 + l4.len());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.push(0);
    p.push(proto);
    p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    p.extend_from_slice(l4);
    csum(&p)
}

/// A TCP segment with a correct checksum.
pub fn tcp(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    flags: u8,
    seq: u32,
    payload: &[u8],
) -> Vec<u8> {
    let mut t = Vec::with_capacity(20 + payload.len());
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    t.push(5 << 4);
    t.push(flags);
    t.extend_from_slice(&65535u16.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0]);
    t.extend_from_slice(payload);
    let c = pseudo(src, dst, 6, &t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
    t
}

pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    let c = pseudo(src, dst, 17, &u);
    u[6..8].copy_from_slice(&c.to_be_bytes());
    u
}

pub fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

pub fn eth_vlan(dst: [u8; 6], src: [u8; 6], vid: u16, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(18 + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    f.extend_from_slice(&vid.to_be_bytes());
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A TCP frame from `src_mac` to `dst_mac`, client to VIP.
#[allow(clippy::too_many_arguments)]
pub fn client_tcp_to(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    client: Ipv4Addr,
    sport: u16,
    vip: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let seg = tcp(client, sport, vip, dport, flags, 1000, payload);
    eth(
        dst_mac,
        src_mac,
        ETH_P_IP,
        &Ipv4::new(client, vip, 6, seg).bytes(),
    )
}

/// A client's TCP frame to the director.
pub fn client_tcp(
    client: Ipv4Addr,
    sport: u16,
    vip: Ipv4Addr,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    client_tcp_to(
        DIRECTOR_MAC,
        CLIENT_MAC,
        client,
        sport,
        vip,
        dport,
        flags,
        payload,
    )
}

/// The outer IPv4 header the director must prepend (ver/IHL, TOS and TTL and ID and DF copied
/// from the inner header, protocol 4, checksum), computed independently of the data path.
pub fn expected_outer(inner_ip: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let inner_len = u16::from_be_bytes([inner_ip[2], inner_ip[3]]);
    let mut h = vec![0x45, inner_ip[1]];
    h.extend_from_slice(&(inner_len + 20).to_be_bytes());
    h.extend_from_slice(&inner_ip[4..6]);
    h.extend_from_slice(&[inner_ip[6] & 0x40, 0]);
    h.push(inner_ip[8]);
    h.push(4);
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&dst.octets());
    let c = csum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// Reads the outer destination of an encapsulated frame (no VLAN tag).
pub fn outer_dst(frame: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
}
