//! Types shared by the XDP programs and userspace: every map key and value, defined once.
//!
//! Addresses and ports are stored exactly as they appear on the wire (network byte order), so
//! the data path compares them without byte swaps; userspace converts with [`ip_be`] / [`port_be`].
#![no_std]

use bytemuck::{Pod, Zeroable};

// Map names are at most 15 bytes: the kernel truncates object names to 15 characters and a
// truncated name would not match when the maps are reopened from their pins.
pub const MAP_SERVICES: &str = "LB_SERVICES";
pub const MAP_REALS: &str = "LB_REALS";
pub const MAP_TABLES: &str = "LB_TABLES";
pub const MAP_CURSORS: &str = "LB_CURSORS";
pub const MAP_CONNS: &str = "LB_CONNS";
pub const MAP_CONNS_NEW: &str = "LB_CONNS_NEW";
pub const MAP_LIMITS: &str = "LB_LIMITS";
pub const MAP_FLOOD: &str = "LB_FLOOD";
pub const MAP_ALLOW: &str = "LB_ALLOW";
pub const MAP_SVC_STATS: &str = "LB_SVC_STATS";
pub const MAP_REAL_STATS: &str = "LB_REAL_STATS";
pub const MAP_REAL_CONNS: &str = "LB_REAL_CONNS";
pub const MAP_REASONS: &str = "LB_REASONS";
pub const MAP_CONFIG: &str = "LB_CONFIG";
pub const MAP_VIP_FILTER: &str = "LB_VIP_FILTER";
pub const MAP_NEXTHOPS: &str = "LB_NEXTHOPS";
pub const MAP_PERSIST: &str = "LB_PERSIST";
pub const MAP_PROBES: &str = "LB_PROBES";
pub const MAP_META: &str = "LB_META";
pub const MAP_SYNC: &str = "LB_SYNC";
pub const MAP_PEERS: &str = "LB_PEERS";
pub const MAP_DECAP_DIRS: &str = "DECAP_DIRS";
pub const MAP_DECAP_VIPS: &str = "DECAP_VIPS";
pub const MAP_DECAP_STATS: &str = "DECAP_STATS";

/// The layout of the pinned state: which maps exist, their key and value types, their sizes and
/// what their fields mean. An upgrade (`lbadm attach` on an attached data path) reuses the
/// pinned maps only under a layout it knows; see `lb-userspace/src/director/layout.rs`.
/// 1: the maps before this record existed (no `LB_META`). 2: `LB_META`, `LB_SYNC`, `LB_PEERS`,
/// `Config::flags`, [`REAL_F_LOCAL`], [`REASON_SLOTS`] counters. 3: `LB_CONNS_NEW` (unconfirmed
/// connections), `LB_LIMITS`, `LB_FLOOD`, `LB_ALLOW`; the connection tables sized at attach.
/// 4: `LB_REAL_CONNS` (connections per real, thresholds), the least-connection schedulers.
pub const LAYOUT_VERSION: u32 = 4;

/// Program names as they appear in the eBPF objects.
pub const PROG_LB: &str = "lb_xdp";
/// TC ingress: sends packets XDP could not (unresolved neighbour) and gives tunnel-probe
/// replies back their real's address.
pub const PROG_TC_INGRESS: &str = "lb_tc_ingress";
/// TC egress: encapsulates the daemon's tunnel probes (sockets marked [`PROBE_MARK`]).
pub const PROG_TC_EGRESS: &str = "lb_tc_egress";
pub const PROG_DECAP: &str = "decap_xdp";

pub const MAX_SERVICES: u32 = 2048;
pub const MAX_REALS: u32 = 16384;
/// Slots of one scheduling table. `wrr` tables are the exact smooth-WRR cycle when it fits and a
/// proportional approximation when it does not; `mh` uses the prime [`MH_TABLE_LEN`].
pub const SCHED_SLOTS: usize = 1024;
pub const MH_TABLE_LEN: u32 = 1021;
/// Default entries of the table of established connections (`lbadm attach --conn-table`; LRU:
/// the least recently used entry is evicted when full). The object's own size; attach and
/// upgrade set the real one.
pub const DEFAULT_CONNS: u32 = 1 << 20;
/// Smallest connection table `lbadm attach --conn-table` accepts.
pub const MIN_CONNS: u32 = 1024;
/// Entries of the allow-lists' trie (all VIPs together).
pub const MAX_ALLOW: u32 = 16_384;
/// The default flood threshold: new flows per second on one CPU (see [`Limits`]).
pub const DEFAULT_FLOOD_RATE: u32 = 50_000;
/// Persistence templates (one per service and client address; LRU).
pub const MAX_PERSIST: u32 = 65_536;
pub const MAX_DECAP_ENTRIES: u32 = 256;
/// Tunnel probes in flight at once (one per check running, keyed by local port).
pub const MAX_PROBES: u32 = 8192;

/// Socket mark (`SO_MARK`) of the daemon's tunnel probes. The TC egress program encapsulates a
/// packet carrying it to the real named by its [`Probe`] entry, or drops it: a probe never
/// leaves unencapsulated, so it cannot pass by reaching the real's own address. ("lbpr")
pub const PROBE_MARK: u32 = 0x6c62_7072;

/// Bits of the VIP pre-filter: a set bit means "some service may have this destination", so
/// the common non-VIP packet leaves after one inlined array read instead of a hash lookup.
pub const VIP_FILTER_BITS: u32 = 1 << 16;
pub const VIP_FILTER_WORDS: u32 = VIP_FILTER_BITS / 64;

/// The filter bit of a destination address (wire order).
pub const fn vip_filter_bit(addr_be: u32) -> u32 {
    u32::from_be(addr_be).wrapping_mul(0x9E37_79B1) >> 16
}

/// How long a CPU reuses a next hop it got from `bpf_fib_lookup` before asking again: routing
/// or neighbour changes reach the data path within this time, and a lookup (about 150 ns) is
/// paid at most once per real, CPU and period instead of per packet.
pub const NEXTHOP_TTL_NS: u64 = 100_000_000;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_SCTP: u8 = 132;

/// IPVS default timeouts, in seconds (`ipvsadm -L --timeout`: 900 120 300).
pub const TIMEOUT_SYN_RECV: u64 = 60;
pub const TIMEOUT_ESTABLISHED: u64 = 900;
pub const TIMEOUT_FIN_WAIT: u64 = 120;
pub const TIMEOUT_CLOSE: u64 = 10;
pub const TIMEOUT_UDP: u64 = 300;

/// Key of the services map: a virtual service as (VIP, port, protocol).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

pub const SCHED_RR: u8 = 0;
pub const SCHED_WRR: u8 = 1;
pub const SCHED_MH: u8 = 2;
/// The least-connection family (IPVS's definitions): the table lists the candidate reals and
/// the data path picks by their live counts ([`RealConns`]).
pub const SCHED_LC: u8 = 3;
pub const SCHED_WLC: u8 = 4;
pub const SCHED_SED: u8 = 5;
pub const SCHED_NQ: u8 = 6;

/// Some real of the service has an upper connection threshold: rr, wrr and mh step past
/// overloaded reals (the least-connection schedulers always look).
pub const SVC_F_THRESHOLDS: u8 = 1;

/// Value of the services map.
///
/// Userspace replaces the whole value with one map update (atomic for a hash map), which is how a
/// new scheduling table is published: it writes the inactive copy of the table first, then flips
/// `table` here.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Index into the per-service maps (tables, cursors, stats).
    pub id: u32,
    /// Which copy of the scheduling table (0 or 1) is live.
    pub table: u32,
    /// Persistence timeout in seconds; 0 = not persistent. A persistent service may have port
    /// 0: it then takes every port of its VIP and protocol (ipvsadm's `-t VIP:0 -p`).
    pub persist_timeout: u32,
    pub sched: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
}

/// The real's slot is in use by a service.
pub const REAL_F_IN_USE: u32 = 1;
/// The real is this host (the two-node layout: every node a director and a real server): its
/// packets go up this host's stack as they came, without a tunnel to itself.
pub const REAL_F_LOCAL: u32 = 2;
/// Peer directors whose IPIP packets the director program decapsulates for this host's own
/// real server (the two-node layout; `lbadm realserver setup --decap director`).
pub const MAX_PEERS: u32 = 64;

/// Value of the reals array, indexed by real id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Real {
    /// Real server address, network byte order.
    pub addr: u32,
    pub weight: u32,
    pub service_id: u32,
    /// Bumped every time the slot is given to a (new) real, so connection entries that still name
    /// an old occupant of the slot are recognised and re-scheduled.
    pub generation: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// A scheduling table: the sequence of real ids new connections walk through (rr/wrr) or index
/// by hash (mh). Entry `service_id * 2 + copy` of the tables array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct SchedTable {
    pub len: u32,
    pub _pad: u32,
    pub slots: [u32; SCHED_SLOTS],
}

impl Default for SchedTable {
    fn default() -> Self {
        Zeroable::zeroed()
    }
}

/// Key of the connection table: the client's 5-tuple as it arrives at the director.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConnKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Connection states as IPVS names them, seen from the client side only (tunnel mode).
pub const CONN_SYN_RECV: u8 = 1;
pub const CONN_ESTABLISHED: u8 = 2;
pub const CONN_FIN_WAIT: u8 = 3;
pub const CONN_CLOSE: u8 = 4;
pub const CONN_UDP: u8 = 5;

/// Value of the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Conn {
    pub real_id: u32,
    pub real_gen: u32,
    pub service_id: u32,
    pub state: u8,
    /// `CONN_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, tick resolution) of the last packet.
    pub last_seen_ns: u64,
}

/// Connections of one real slot as the data path counts them (`LB_REAL_CONNS`), with the real's
/// connection thresholds. IPVS's accounting: an ESTABLISHED connection is active, one in any
/// other state (SYN_RECV, FIN_WAIT, CLOSE, UDP) inactive. The data path adds and moves counts
/// atomically as entries are made, change state and are found dead; what it cannot see
/// (entries evicted or expired unseen) the daemon corrects from the tables themselves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RealConns {
    /// Counts are adjusted by atomic adds from every CPU (64-bit: the BPF target has no 32-bit
    /// atomics): read them as `i64` and clamp at 0 (a decrement may land before the increment it
    /// undoes is corrected).
    pub active: u64,
    pub inactive: u64,
    /// `-x`: at this many connections (active + inactive) the real is overloaded; 0 = none.
    pub u_threshold: u32,
    /// `-y`: below this many it takes new connections again; 0 = three quarters of the upper.
    pub l_threshold: u32,
    /// Overloaded now (written by the data path when it schedules).
    pub overloaded: u32,
    pub _pad: u32,
}

impl RealConns {
    /// Active and inactive connections, clamped at 0.
    pub const fn counts(&self) -> (u32, u32) {
        (clamp_count(self.active), clamp_count(self.inactive))
    }

    /// Whether the real is over its threshold for the next new connection: [`overloaded`] from
    /// the state the last one left.
    pub const fn overloaded_now(&self) -> bool {
        let (active, inactive) = self.counts();
        overloaded(
            self.overloaded != 0,
            active.saturating_add(inactive),
            self.u_threshold,
            self.l_threshold,
        )
    }
}

const fn clamp_count(v: u64) -> u32 {
    let v = v as i64;
    if v <= 0 {
        0
    } else if v > u32::MAX as i64 {
        u32::MAX
    } else {
        v as u32
    }
}

/// Whether a real is overloaded after looking at it with `total` connections: IPVS's hysteresis
/// (`ip_vs_bind_dest`/`ip_vs_unbind_dest`): over from the upper threshold on, and back only
/// below the lower one, or below three quarters of the upper when the lower is 0.
pub const fn overloaded(was: bool, total: u32, upper: u32, lower: u32) -> bool {
    if upper == 0 {
        return false;
    }
    if total >= upper {
        return true;
    }
    if !was {
        return false;
    }
    if lower != 0 {
        total >= lower
    } else {
        (total as u64) * 4 >= (upper as u64) * 3
    }
}

/// Size of the table of unconfirmed connections for an established table of `conns` entries:
/// a quarter (handshakes last a round trip; confirmed connections last hours).
pub const fn unconfirmed_size(conns: u32) -> u32 {
    let n = conns / 4;
    if n < MIN_CONNS { MIN_CONNS } else { n }
}

/// A flow first seen without a SYN (picked up mid-stream, or UDP) is confirmed by a packet at
/// least this long after its first: a spoofed packet, or one sent twice, is not.
pub const CONFIRM_AFTER_NS: u64 = 1_000_000_000;

/// The source-address hash IPVS's `mh` scheduler uses (hash_32 of the address, golden ratio);
/// `addr` in wire order.
pub const fn mh_hash(addr: u32) -> u32 {
    u32::from_be(addr).wrapping_mul(0x61C8_8647)
}

/// The flow hash new flows are scheduled by while a CPU is in flood mode (rr and wrr then pick
/// `slots[flow_hash % len]`), so a flow whose handshake was not recorded keeps its real.
/// Userspace's `lbadm trace` computes the same.
pub const fn flow_hash(k: &ConnKey) -> u32 {
    let mut h = k.saddr.wrapping_mul(0x9E37_79B1);
    h ^= k.daddr.rotate_left(7).wrapping_mul(0x85EB_CA77);
    h ^= ((k.sport as u32) << 16 | k.dport as u32).wrapping_mul(0xC2B2_AE3D);
    h ^= k.proto as u32;
    h ^= h >> 15;
    h = h.wrapping_mul(0x2C1B_3C6D);
    h ^ (h >> 13)
}

/// The connection belongs to a persistent service: its packets keep the client's template alive
/// (IPVS keeps a template while connections it controls exist).
pub const CONN_F_PERSIST: u8 = 1;

/// Key of the persistence templates: a client address within a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct PersistKey {
    pub service_id: u32,
    pub saddr: u32,
}

/// A persistence template: the real a client's connections go to until `timeout` seconds pass
/// without a new connection or a packet of one it controls.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Persist {
    pub real_id: u32,
    pub real_gen: u32,
    pub last_seen_ns: u64,
}

/// Seconds an entry in `state` stays valid without packets.
pub const fn conn_timeout_secs(state: u8) -> u64 {
    match state {
        CONN_SYN_RECV => TIMEOUT_SYN_RECV,
        CONN_ESTABLISHED => TIMEOUT_ESTABLISHED,
        CONN_FIN_WAIT => TIMEOUT_FIN_WAIT,
        CONN_CLOSE => TIMEOUT_CLOSE,
        _ => TIMEOUT_UDP,
    }
}

/// Per-CPU counters of a service or a real (inbound only: replies bypass the director).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Counters {
    pub conns: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Global settings of the director program, entry 0 of the config array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Outer source address of encapsulated packets, network byte order. 0 = not configured:
    /// packets for services are then passed to the stack and counted.
    pub tunnel_src: u32,
    /// Number of possible CPUs, to spread the per-CPU scheduling cursors.
    pub nr_cpus: u32,
    /// Where the data path is attached (userspace bookkeeping; the programs do not read these).
    pub ifindex: u32,
    /// `ATTACH_*` flags.
    pub attach: u32,
    /// Value of `net.ipv4.conf.<iface>.forwarding` before attach, restored on detach
    /// (`bpf_fib_lookup` answers only for interfaces that forward).
    pub saved_forwarding: u32,
    /// `CONFIG_F_*`, read by the data path.
    pub flags: u32,
}

/// Entry 0 of `LB_LIMITS`: what protects the connection table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Limits {
    /// New flows per second on one CPU above which that CPU is in flood mode (0: never). In
    /// flood mode new TCP flows are forwarded, scheduled by [`flow_hash`], but their SYNs are not
    /// recorded.
    pub flood_rate: u32,
    /// `LIMITS_F_*`.
    pub flags: u32,
}

/// Some VIP has an allow-list: new flows look their source up in `LB_ALLOW`.
pub const LIMITS_F_ALLOW: u32 = 1;

/// One CPU's flood detector (per-CPU entry 0 of `LB_FLOOD`): new flows counted per second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FloodState {
    /// Start of the current one-second window.
    pub window_ns: u64,
    /// New flows in the current window.
    pub new_flows: u32,
    /// 1 while this CPU is in flood mode.
    pub flooding: u32,
    /// When the current (or last) flood mode began.
    pub since_ns: u64,
    /// Times this CPU entered flood mode.
    pub trips: u64,
}

/// Key of `LB_ALLOW` (an LPM trie; both addresses in wire order, so the prefix runs over the
/// VIP's 32 bits and then the source's). A VIP with a list has an entry of prefix 32 (the VIP
/// alone) whose value is [`ALLOW_DENY`]; each allowed CIDR is a longer prefix with
/// [`ALLOW_PERMIT`]. A VIP without a list matches nothing and allows every source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct AllowKey {
    pub vip: u32,
    pub saddr: u32,
}

pub const ALLOW_DENY: u32 = 0;
pub const ALLOW_PERMIT: u32 = 1;

/// The data path reports new connections, state changes and persistence templates on
/// [`MAP_SYNC`] (a daemon with `[sync]` sets it while it reads them).
pub const CONFIG_F_SYNC: u32 = 1;

/// Entry 0 of `LB_META`: how the pinned state was laid out and attached, for upgrades.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Meta {
    /// [`LAYOUT_VERSION`] of the lbadm that last attached or upgraded.
    pub layout: u32,
    /// TC filters attached through netlink (kernels before 6.6), ingress then egress: their
    /// priority and handle, so an upgrade replaces exactly these filters. 0 with TCX links.
    pub tc_priority: [u16; 2],
    pub tc_handle: [u32; 2],
}

/// One event on [`MAP_SYNC`]: a connection (or persistence template) the data path created or
/// whose state changed. Slot numbers are this director's; the sync daemon translates them into
/// addresses before they leave the host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SyncEvent {
    /// The connection's 5-tuple; for a template, `saddr` is the client and the rest is 0.
    pub key: ConnKey,
    /// The entry as it is now. For a template: state 0, flags `SYNC_F_TEMPLATE`. Its
    /// `last_seen_ns` is when it happened, to measure how late peers learn of it.
    pub conn: Conn,
}

/// The event is a persistence template, not a connection.
pub const SYNC_F_TEMPLATE: u8 = 2;
/// Bytes of the sync ring: about 21,000 events (48 bytes each with the ring's header) queue up
/// before the data path starts counting `sync_lost`.
pub const SYNC_RING_BYTES: u32 = 1 << 20;

/// XDP is attached in generic (skb) mode because the driver has no native XDP.
pub const ATTACH_XDP_GENERIC: u32 = 1;
/// The TC program is attached through netlink (kernels before 6.6 have no TCX links).
pub const ATTACH_TC_NETLINK: u32 = 2;
/// Userspace enabled forwarding on the interface at attach.
pub const ATTACH_SET_FORWARDING: u32 = 4;

/// A CPU's cached answer of `bpf_fib_lookup` for one real (per-CPU array indexed by real id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// When the lookup was made (`bpf_ktime_get_ns`); 0 = empty.
    pub stamp_ns: u64,
    /// The real's generation the answer is for.
    pub real_gen: u32,
    pub ifindex: u32,
    pub mtu: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
}

/// Declares [`Reason`], its counter names and [`REASON_COUNT`] from one list, so the enum, the
/// names userspace prints and the size of the counters map cannot drift apart.
macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// Why a packet left the director program the way it did: index into the reasons array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// Every reason, in counter-index order.
            pub const ALL: &[Reason] = &[$(Reason::$variant,)*];

            /// The counter's name (`lbadm status`, metrics).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)*
                }
            }
        }

        pub const REASON_COUNT: u32 = Reason::ALL.len() as u32;
    };
}

reasons! {
    /// Not IPv4 (ARP, IPv6, other ethertypes, more than one VLAN tag).
    PassNotIpv4 = "pass_not_ipv4",
    /// IPv4 but not TCP/UDP to a configured service.
    PassNotService = "pass_not_service",
    /// Headers shorter than they claim, or a bad IHL/length.
    PassMalformed = "pass_malformed",
    /// An IP fragment: only the first one has ports, so none can be matched to a connection.
    PassFragment = "pass_fragment",
    /// No tunnel source address configured.
    PassNoTunnelSrc = "pass_no_tunnel_src",
    /// Encapsulated, neighbour not resolved: handed to the TC program that resolves it.
    PassNoNeigh = "pass_no_neigh",
    /// Encapsulated and sent with `XDP_TX`.
    TxForwarded = "tx_forwarded",
    /// Encapsulated and sent with `bpf_redirect` to another interface.
    RedirectForwarded = "redirect_forwarded",
    /// A new connection was scheduled.
    NewConn = "new_conn",
    /// A non-SYN TCP packet had no connection entry (table pressure or a director restart).
    NonSynMiss = "nonsyn_miss",
    /// A connection entry named a real that was removed; the flow was scheduled again.
    Rescheduled = "rescheduled",
    /// DF packet too big for the tunnel: ICMP fragmentation-needed sent to the client.
    IcmpFragNeeded = "icmp_frag_needed",
    /// Non-DF packet too big for the tunnel: dropped (XDP cannot fragment).
    DropTooBig = "drop_too_big",
    /// The service has no real with weight > 0: ICMP port unreachable sent, as IPVS does.
    NoRealUnreach = "no_real_unreach",
    /// The route to the real failed (unreachable, blackhole, prohibited): dropped.
    DropNoRoute = "drop_no_route",
    /// A helper that changes the packet size failed: dropped.
    DropAdjust = "drop_adjust",
    /// An ICMP error about a connection (e.g. fragmentation needed on the client's path) was
    /// forwarded to that connection's real.
    IcmpForwarded = "icmp_forwarded",
    /// The connection table was full and the insert failed (LRU could not evict).
    ConnInsertFail = "conn_insert_fail",
    /// A new connection went to the real its client's persistence template names.
    Persisted = "persisted",
    /// A connection event could not be queued for the sync daemon (its ring was full).
    SyncLost = "sync_lost",
    /// Scheduled to this host's own real (two-node layout): passed up the stack as it came.
    PassLocalReal = "pass_local_real",
    /// IPIP from a peer director for one of our VIPs: decapsulated and passed up the stack.
    PassDecapsulated = "pass_decapsulated",
    /// IPIP from a peer director whose inner packet is not for one of our VIPs: dropped.
    DropDecapUnknownVip = "drop_decap_unknown_vip",
    /// A new flow's source is not on its VIP's allow-list: dropped.
    DropNotAllowed = "drop_not_allowed",
    /// An unconfirmed connection completed its handshake (or proved itself) and moved to the
    /// table of established connections.
    Confirmed = "conn_confirmed",
    /// Flood mode: a new flow's SYN was forwarded without being recorded.
    FloodNotRecorded = "flood_not_recorded",
}

/// Size of the reasons counter array: room for reasons to come without changing the pinned
/// map's layout.
pub const REASON_SLOTS: u32 = 64;
const _: () = assert!(REASON_COUNT <= REASON_SLOTS);

/// Metadata the director's XDP program leaves in front of a packet it hands to the TC program
/// because the next hop's neighbour entry is not resolved (XDP cannot queue for ARP; TC's
/// `bpf_redirect_neigh` can).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NeighMeta {
    pub magic: u32,
    pub ifindex: u32,
    /// Next hop (gateway or the real itself), network byte order.
    pub nexthop: u32,
}

pub const NEIGH_META_MAGIC: u32 = 0x4c42_4e48; // "LBNH"

/// Key of the tunnel-probe map: the probe socket's local port, network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ProbeKey {
    pub port: u16,
    pub _pad: u16,
}

/// One tunnel probe: a socket of the daemon connected to `real:port` with [`PROBE_MARK`].
/// Egress rewrites its packets' destination to `vip` and encapsulates them to `real`, as the
/// director does with client packets; ingress rewrites the source of replies from `vip:port`
/// back to `real`, so the socket accepts them. The counters tell userspace that both happened
/// (a probe answered without them did not go through the tunnel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Probe {
    /// Network byte order.
    pub vip: u32,
    /// Network byte order.
    pub real: u32,
    /// Port checked (on the VIP), network byte order.
    pub port: u16,
    pub _pad: u16,
    /// Packets encapsulated by the egress program.
    pub egress: u32,
    /// Replies rewritten by the ingress program.
    pub ingress: u32,
}

/// Counters of the real-server decapsulation program, indices into its per-CPU array.
pub const DECAP_PASS_OTHER: u32 = 0;
pub const DECAP_DECAPSULATED: u32 = 1;
pub const DECAP_DROP_UNKNOWN_DIRECTOR: u32 = 2;
pub const DECAP_DROP_UNKNOWN_VIP: u32 = 3;
pub const DECAP_DROP_MALFORMED: u32 = 4;
pub const DECAP_COUNTERS: u32 = 5;

/// Converts an address to the wire-order `u32` stored in the maps.
pub const fn ip_be(octets: [u8; 4]) -> u32 {
    u32::from_ne_bytes(octets)
}

/// Converts a port to the wire-order `u16` stored in the maps.
pub const fn port_be(port: u16) -> u16 {
    port.to_be()
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, and have no padding the compiler could leave
    // uninitialised (every gap is an explicit `_pad` field), as bytemuck's Pod derive checks.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for Real {}
    unsafe impl aya::Pod for RealConns {}
    unsafe impl aya::Pod for SchedTable {}
    unsafe impl aya::Pod for ConnKey {}
    unsafe impl aya::Pod for Conn {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for PersistKey {}
    unsafe impl aya::Pod for Persist {}
    unsafe impl aya::Pod for ProbeKey {}
    unsafe impl aya::Pod for Probe {}
    unsafe impl aya::Pod for Meta {}
    unsafe impl aya::Pod for SyncEvent {}
    unsafe impl aya::Pod for Limits {}
    unsafe impl aya::Pod for FloodState {}
    unsafe impl aya::Pod for AllowKey {}
}
