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

/// False when the VIP has an allow-list and the source is not on it.
#[inline(always)]
pub fn allowed(vip: u32, saddr: u32) -> bool {
    match LIMITS.get(0) {
        Some(l) if l.flags & LIMITS_F_ALLOW != 0 => {}
        _ => return true,
    }
    let key = Key::new(64, AllowKey { vip, saddr });
    !matches!(ALLOW.get(&key), Some(&ALLOW_DENY))
}

/// Counts a new flow on this CPU; true while the CPU is in flood mode. A CPU enters it as soon
/// as its count in the current one-second window passes the limit, and leaves it after a
/// window that stayed under it.
#[inline(always)]
pub fn flooding(ctx: &XdpContext, now: u64) -> bool {
    let rate = match LIMITS.get(0) {
        Some(l) if l.flood_rate > 0 => l.flood_rate,
        _ => return false,
    };
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
