//! Whether a new flow is let in, and how it is kept: the VIP's source allow-list, and this
//! CPU's flood detector (Katran's flood mode: above a rate of new flows, SYNs are forwarded
//! without being recorded, and scheduled by the flow hash so their real needs no record).
use crate::{
    conntrack::NS_PER_SEC,
    maps::{ALLOW, FLOOD, LIMITS},
};
use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use aya_log_ebpf::warn;
use lb_common::{ALLOW_DENY, AllowKey, LIMITS_F_ALLOW};

/// Admits a new flow to `vip` from `saddr`: `Err(())` when the VIP has an allow-list and the
/// source is not on it, else whether this CPU is in flood mode.
#[inline(always)]
pub fn admit(ctx: &XdpContext, vip: u32, saddr: u32, now: u64) -> Result<bool, ()> {
    let Some(l) = LIMITS.get(0) else {
        return Ok(false);
    };
    if l.flags & LIMITS_F_ALLOW != 0 {
        let key = Key::new(64, AllowKey { vip, saddr });
        if let Some(&ALLOW_DENY) = ALLOW.get(&key) {
            return Err(());
        }
    }
    Ok(l.flood_rate > 0 && flooding(ctx, l.flood_rate, now))
}

/// Counts a new flow on this CPU; true while the CPU is in flood mode. A CPU enters it as soon
/// as its count in the current one-second window passes the limit, and leaves it after a
/// window that stayed under it.
#[inline(always)]
fn flooding(ctx: &XdpContext, rate: u32, now: u64) -> bool {
    let Some(st) = FLOOD.get_ptr_mut(0) else {
        return false;
    };
    let st = unsafe { &mut *st };
    if now.wrapping_sub(st.window_ns) >= NS_PER_SEC {
        if st.flooding != 0 && st.new_flows <= rate {
            st.flooding = 0;
            warn!(
                ctx,
                "flood mode ends: {} new flows in the last second", st.new_flows
            );
        }
        st.window_ns = now;
        st.new_flows = 0;
    }
    st.new_flows += 1;
    if st.flooding == 0 && st.new_flows > rate {
        st.flooding = 1;
        st.since_ns = now;
        st.trips += 1;
        warn!(
            ctx,
            "flood mode: over {} new flows per second on this CPU", rate
        );
    }
    st.flooding != 0
}
