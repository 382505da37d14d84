//! Wire headers, byte-exact. Multi-byte fields are kept in network byte order.
use aya_ebpf::programs::XdpContext;
use core::mem::size_of;

pub const ETH_HLEN: usize = 14;
pub const VLAN_HLEN: usize = 4;
pub const IPV4_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;

pub const ETH_P_IP: u16 = 0x0800u16.to_be();
pub const ETH_P_8021Q: u16 = 0x8100u16.to_be();
pub const ETH_P_8021AD: u16 = 0x88a8u16.to_be();

pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFMASK: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const IPPROTO_ICMP: u8 = 1;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_PORT_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct VlanHdr {
    pub tci: u16,
    pub proto: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Ipv4Hdr {
    pub ver_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn ihl_bytes(&self) -> usize {
        ((self.ver_ihl & 0x0f) as usize) * 4
    }
}

/// The first 14 bytes of a TCP header: ports, sequence numbers and flags.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TcpHdr {
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub doff: u8,
    pub flags: u8,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UdpHdr {
    pub sport: u16,
    pub dport: u16,
    pub len: u16,
    pub check: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub unused: u16,
    pub mtu: u16,
}

/// A pointer to a `T` at `offset` in the packet, if the packet is long enough. The bounds check
/// is written so the verifier can follow it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Writes a 20-byte IPv4 header at `offset` as 16-bit words: the header sits 2 bytes off a
/// 4-byte boundary behind Ethernet.
#[inline(always)]
pub fn store_ipv4(ctx: &XdpContext, offset: usize, h: &Ipv4Hdr) -> Option<()> {
    let dst: *mut [u16; 10] = ptr_at(ctx, offset)?;
    unsafe { *dst = core::mem::transmute::<Ipv4Hdr, [u16; 10]>(*h) };
    Some(())
}
