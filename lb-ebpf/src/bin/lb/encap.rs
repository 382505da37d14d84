//! Sending a packet to its real: the next hop (a per-CPU cache over `bpf_fib_lookup`), the
//! outer IPv4 header, and the way out (`XDP_TX`, `bpf_redirect`, or TC when the neighbour is
//! not resolved yet).
use crate::{
    Packet, Verdict, discard, icmp,
    maps::{NEXTHOPS, tunnel_src},
    pass,
};
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        bpf_fib_lookup as FibParams, xdp_action,
    },
    helpers::{bpf_fib_lookup, bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_meta},
    programs::XdpContext,
};
use aya_log_ebpf::debug;
use lb_common::{IPPROTO_IPIP, NEIGH_META_MAGIC, NEXTHOP_TTL_NS, NeighMeta, NextHop, Real, Reason};
use lb_ebpf::{
    hdr::{ETH_HLEN, ICMP_FRAG_NEEDED, IP_DF, IPV4_HLEN, Ipv4Hdr, VLAN_HLEN, ptr_at, store_ipv4},
    ipip, l2,
};

pub const AF_INET: u8 = 2;

/// Where an encapsulated packet goes next.
enum Hop {
    Ready {
        ifindex: u32,
        smac: [u8; 6],
        dmac: [u8; 6],
    },
    /// Route known, neighbour not resolved yet.
    Unresolved {
        ifindex: u32,
        nexthop: u32,
    },
    FragNeeded {
        mtu: u32,
    },
}

/// The next hop towards a real: this CPU's cached answer when it is fresh, else
/// `bpf_fib_lookup` (about 150 ns, so cached for [`NEXTHOP_TTL_NS`]).
#[inline(always)]
fn next_hop(
    ctx: &XdpContext,
    real_id: u32,
    real: &Real,
    src: u32,
    tos: u8,
    outer_len: u32,
    now: u64,
) -> Result<Hop, Verdict> {
    let cache = NEXTHOPS.get_ptr_mut(real_id);
    if let Some(c) = cache {
        let c = unsafe { &*c };
        if c.stamp_ns != 0
            && c.real_gen == real.generation
            && now.wrapping_sub(c.stamp_ns) < NEXTHOP_TTL_NS
        {
            if outer_len > c.mtu {
                return Ok(Hop::FragNeeded { mtu: c.mtu });
            }
            return Ok(Hop::Ready {
                ifindex: c.ifindex,
                smac: c.smac,
                dmac: c.dmac,
            });
        }
    }
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = IPPROTO_IPIP;
    fib.__bindgen_anon_1.tot_len = outer_len as u16;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    fib.__bindgen_anon_2.tos = tos;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = real.addr;
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut fib,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    } as u32;
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            // On success the kernel reports the route's MTU in the same field.
            let mtu = unsafe { fib.__bindgen_anon_1.mtu_result } as u32;
            if let Some(c) = cache {
                unsafe {
                    *c = NextHop {
                        stamp_ns: now,
                        real_gen: real.generation,
                        ifindex: fib.ifindex,
                        mtu,
                        smac: fib.smac,
                        dmac: fib.dmac,
                    };
                }
            }
            Ok(Hop::Ready {
                ifindex: fib.ifindex,
                smac: fib.smac,
                dmac: fib.dmac,
            })
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Hop::Unresolved {
            ifindex: fib.ifindex,
            nexthop: unsafe { fib.__bindgen_anon_4.ipv4_dst },
        }),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Hop::FragNeeded {
            mtu: unsafe { fib.__bindgen_anon_1.mtu_result } as u32,
        }),
        _ => Err(discard(Reason::DropNoRoute)),
    }
}

/// Wraps the IPv4 packet in an outer IPv4 header to the real and sends it to the next hop.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    pkt: &Packet,
    real_id: u32,
    real: &Real,
    now: u64,
) -> Result<Verdict, Verdict> {
    let src = tunnel_src();
    if src == 0 {
        return Err(pass(Reason::PassNoTunnelSrc));
    }
    let real_addr = real.addr;
    let inner: *const Ipv4Hdr = ptr_at(ctx, pkt.l3_off()).ok_or(pass(Reason::PassMalformed))?;
    let inner = unsafe { *inner };
    let outer_len = pkt.tot_len as u32 + IPV4_HLEN as u32;
    if outer_len > 0xffff {
        return Err(discard(Reason::DropTooBig));
    }
    let hop = next_hop(ctx, real_id, real, src, inner.tos, outer_len, now)?;
    if let Hop::FragNeeded { mtu } = hop {
        let df = u16::from_be(inner.frag_off) & IP_DF != 0;
        debug!(
            ctx,
            "{} bytes from {:i} exceed mtu {} to real {:i} once encapsulated: {}",
            pkt.tot_len,
            u32::from_be(pkt.saddr),
            mtu,
            u32::from_be(real_addr),
            if df {
                "fragmentation-needed sent"
            } else {
                "dropped (no DF)"
            }
        );
        if !df {
            return Err(discard(Reason::DropTooBig));
        }
        let inner_mtu = mtu.saturating_sub(IPV4_HLEN as u32) as u16;
        return icmp::reply(
            ctx,
            pkt,
            ICMP_FRAG_NEEDED,
            inner_mtu,
            Reason::IcmpFragNeeded,
        );
    }

    // Make room in front, then slide the L2 header (with its VLAN tag) back to the start.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(IPV4_HLEN as i32)) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    let eth = l2::slide_to_front(ctx, IPV4_HLEN, pkt.vlan).ok_or(discard(Reason::DropAdjust))?;
    let l3 = if pkt.vlan {
        ETH_HLEN + VLAN_HLEN
    } else {
        ETH_HLEN
    };
    let outer = ipip::outer(&inner, pkt.tot_len as u32, src, real_addr);
    store_ipv4(ctx, l3, &outer).ok_or(discard(Reason::DropAdjust))?;

    let (ifindex, smac, dmac) = match hop {
        Hop::Ready {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        Hop::Unresolved { ifindex, nexthop } => return hand_to_tc(ctx, ifindex, nexthop),
        Hop::FragNeeded { .. } => return Err(discard(Reason::DropTooBig)),
    };
    unsafe {
        (*eth).dst = dmac;
        (*eth).src = smac;
    }
    // A tagged frame goes back out of the port it came in on: the VLAN sub-interface the route
    // names cannot transmit XDP frames.
    if ifindex == ctx.ingress_ifindex() as u32 || pkt.vlan {
        Ok(Verdict {
            action: xdp_action::XDP_TX,
            reason: Reason::TxForwarded,
        })
    } else {
        let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
        Ok(Verdict {
            action,
            reason: Reason::RedirectForwarded,
        })
    }
}

/// XDP cannot wait for ARP. Leave the next hop in the packet's metadata and pass it up; the TC
/// ingress program `lb_tc_ingress` sends it with `bpf_redirect_neigh`, which resolves the
/// neighbour and queues the packet meanwhile.
#[inline(always)]
fn hand_to_tc(ctx: &XdpContext, ifindex: u32, nexthop: u32) -> Result<Verdict, Verdict> {
    debug!(
        ctx,
        "neighbour {:i} not resolved: handed to TC",
        u32::from_be(nexthop)
    );
    let sz = core::mem::size_of::<NeighMeta>() as i32;
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -sz) } != 0 {
        return Err(discard(Reason::DropAdjust));
    }
    let meta = ctx.metadata();
    if meta + sz as usize > ctx.data() {
        return Err(discard(Reason::DropAdjust));
    }
    unsafe {
        *(meta as *mut NeighMeta) = NeighMeta {
            magic: NEIGH_META_MAGIC,
            ifindex,
            nexthop,
        };
    }
    Ok(pass(Reason::PassNoNeigh))
}
