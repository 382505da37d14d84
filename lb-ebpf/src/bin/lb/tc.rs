//! The two TC programs beside the XDP one: ingress finishes what XDP cannot (packets whose
//! neighbour is unresolved) and gives tunnel-probe replies their real's address back; egress
//! encapsulates the daemon's tunnel probes.
use crate::{
    encap::AF_INET,
    maps::{PROBES, maybe_vip, tunnel_src},
};
use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, BPF_F_PSEUDO_HDR, TC_ACT_OK,
        TC_ACT_SHOT, bpf_adj_room_mode, bpf_redir_neigh,
    },
    helpers::bpf_redirect_neigh,
    macros::classifier,
    programs::TcContext,
};
use lb_common::{IPPROTO_TCP, NEIGH_META_MAGIC, NeighMeta, PROBE_MARK, ProbeKey};
use lb_ebpf::{
    hdr::{ETH_HLEN, ETH_P_IP, IPV4_HLEN, Ipv4Hdr},
    ipip,
};

#[classifier]
pub fn lb_tc_ingress(ctx: TcContext) -> i32 {
    if let Some(action) = redirect_neigh(&ctx) {
        return action;
    }
    let _ = unwrap_probe_reply(&ctx);
    TC_ACT_OK
}

/// A packet the XDP program handed over (see `encap::hand_to_tc`) leaves with
/// `bpf_redirect_neigh`.
#[inline(always)]
fn redirect_neigh(ctx: &TcContext) -> Option<i32> {
    let skb = ctx.skb.skb;
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + core::mem::size_of::<NeighMeta>() > data {
        return None;
    }
    let m = unsafe { *(meta as *const NeighMeta) };
    if m.magic != NEIGH_META_MAGIC {
        return None;
    }
    let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
    nh.nh_family = AF_INET as u32;
    nh.__bindgen_anon_1.ipv4_nh = m.nexthop;
    Some(unsafe {
        bpf_redirect_neigh(
            m.ifindex,
            &mut nh,
            core::mem::size_of::<bpf_redir_neigh>() as i32,
            0,
        ) as i32
    })
}

const IP_CHECK_OFF: usize = ETH_HLEN + 10;
const IP_SADDR_OFF: usize = ETH_HLEN + 12;
const IP_DADDR_OFF: usize = ETH_HLEN + 16;
const TCP_OFF: usize = ETH_HLEN + IPV4_HLEN;
const TCP_CHECK_OFF: usize = TCP_OFF + 16;

/// The tunnel probe's socket is connected to the real's own address, so its replies, which
/// the real sends from the VIP, get their source rewritten back. (The director owns the VIP:
/// its stack would drop a packet from its own address as a martian.)
#[inline(always)]
fn unwrap_probe_reply(ctx: &TcContext) -> Result<(), i64> {
    let proto: u16 = ctx.load(12)?;
    if proto != ETH_P_IP {
        return Ok(());
    }
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if ip.ver_ihl != 0x45 || ip.proto != IPPROTO_TCP || !maybe_vip(ip.saddr) {
        return Ok(());
    }
    let ports: [u16; 2] = ctx.load(TCP_OFF)?;
    let Some(probe) = PROBES.get_ptr_mut(&ProbeKey {
        port: ports[1],
        _pad: 0,
    }) else {
        return Ok(());
    };
    let p = unsafe { &mut *probe };
    if p.vip != ip.saddr || p.port != ports[0] || ip.daddr != tunnel_src() {
        return Ok(());
    }
    replace_addr(ctx, IP_SADDR_OFF, p.vip, p.real)?;
    p.ingress = p.ingress.wrapping_add(1);
    Ok(())
}

/// Rewrites one IPv4 address of a TCP packet, with both checksums.
#[inline(always)]
fn replace_addr(ctx: &TcContext, off: usize, from: u32, to: u32) -> Result<(), i64> {
    ctx.l4_csum_replace(
        TCP_CHECK_OFF,
        from as u64,
        to as u64,
        (BPF_F_PSEUDO_HDR | 4) as u64,
    )?;
    ctx.l3_csum_replace(IP_CHECK_OFF, from as u64, to as u64, 4)?;
    ctx.store(off, &to, 0)
}

#[classifier]
pub fn lb_tc_egress(ctx: TcContext) -> i32 {
    if unsafe { (*ctx.skb.skb).mark } != PROBE_MARK {
        return TC_ACT_OK;
    }
    // A marked packet leaves encapsulated or not at all.
    match encapsulate_probe(&ctx) {
        Ok(()) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

/// Sends a probe the way the director sends client packets: to VIP:port, inside IPIP to the
/// real, from the tunnel source.
#[inline(always)]
fn encapsulate_probe(ctx: &TcContext) -> Result<(), i64> {
    let proto: u16 = ctx.load(12)?;
    let ip: Ipv4Hdr = ctx.load(ETH_HLEN)?;
    if proto != ETH_P_IP || ip.ver_ihl != 0x45 || ip.proto != IPPROTO_TCP {
        return Err(-1);
    }
    let sport: u16 = ctx.load(TCP_OFF)?;
    let probe = PROBES
        .get_ptr_mut(&ProbeKey {
            port: sport,
            _pad: 0,
        })
        .ok_or(-1i64)?;
    let p = unsafe { &mut *probe };
    let src = tunnel_src();
    let inner_len = u16::from_be(ip.tot_len) as u32;
    if ip.daddr != p.real || src == 0 || inner_len + IPV4_HLEN as u32 > 0xffff {
        return Err(-1);
    }
    replace_addr(ctx, IP_DADDR_OFF, p.real, p.vip)?;
    ctx.adjust_room(
        IPV4_HLEN as i32,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC as u32,
        (BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_FIXED_GSO) as u64,
    )?;
    ctx.store(ETH_HLEN, &ipip::outer(&ip, inner_len, src, p.real), 0)?;
    p.egress = p.egress.wrapping_add(1);
    Ok(())
}
