//! ipvsadm 1.31's tables: its commands, option columns and legality matrix
//! (`commands_v_options`), the tunnel-type matrix, and popt's option table.

// ---------------------------------------------------------------------------------------------
// ipvsadm's tables
// ---------------------------------------------------------------------------------------------

/// ipvsadm's commands, in `cmdnames[]` order (CMD_ADD … CMD_ZERO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cmd {
    Add,
    Edit,
    Del,
    Flush,
    List,
    AddDest,
    DelDest,
    EditDest,
    Timeout,
    StartDaemon,
    StopDaemon,
    Restore,
    Save,
    Zero,
}

pub(super) const CMD_NAMES: [&str; 14] = [
    "add-service",
    "edit-service",
    "delete-service",
    "flush",
    "list",
    "add-server",
    "delete-server",
    "edit-server",
    "set",
    "start-daemon",
    "stop-daemon",
    "restore",
    "save",
    "zero",
];

// Option columns, in `optnames[]` order (OPTC_*), plus our `json`.
pub(super) const O_NUMERIC: usize = 0;
pub(super) const O_CONNECTION: usize = 1;
pub(super) const O_SERVICE: usize = 2;
pub(super) const O_SCHEDULER: usize = 3;
pub(super) const O_PERSISTENT: usize = 4;
pub(super) const O_NETMASK: usize = 5;
pub(super) const O_SERVER: usize = 6;
pub(super) const O_FORWARD: usize = 7;
pub(super) const O_WEIGHT: usize = 8;
pub(super) const O_UTHRESHOLD: usize = 9;
pub(super) const O_LTHRESHOLD: usize = 10;
pub(super) const O_MCAST: usize = 11;
pub(super) const O_TIMEOUT: usize = 12;
pub(super) const O_DAEMON: usize = 13;
pub(super) const O_STATS: usize = 14;
pub(super) const O_RATE: usize = 15;
pub(super) const O_THRESHOLDS: usize = 16;
pub(super) const O_PERSISTENTCONN: usize = 17;
pub(super) const O_NOSORT: usize = 18;
pub(super) const O_SYNCID: usize = 19;
pub(super) const O_EXACT: usize = 20;
pub(super) const O_ONEPACKET: usize = 21;
pub(super) const O_PE: usize = 22;
pub(super) const O_SCHED_FLAGS: usize = 23;
pub(super) const O_MCAST_GROUP: usize = 24;
pub(super) const O_MCAST_PORT: usize = 25;
pub(super) const O_MCAST_TTL: usize = 26;
pub(super) const O_SYNC_MAXLEN: usize = 27;
pub(super) const O_TUN_INFO: usize = 28;
pub(super) const O_TUN_TYPE: usize = 29;
pub(super) const O_TUN_PORT: usize = 30;
pub(super) const O_TUN_NOCSUM: usize = 31;
pub(super) const O_TUN_CSUM: usize = 32;
pub(super) const O_TUN_REMCSUM: usize = 33;
pub(super) const O_JSON: usize = 34;
pub(super) const NOPT: usize = 35;

pub(super) const OPT_NAMES: [&str; NOPT] = [
    "numeric",
    "connection",
    "service-address",
    "scheduler",
    "persistent",
    "netmask",
    "real-server",
    "forwarding-method",
    "weight",
    "u-threshold",
    "l-threshold",
    "mcast-interface",
    "timeout",
    "daemon",
    "stats",
    "rate",
    "thresholds",
    "persistent-conn",
    "nosort",
    "syncid",
    "exact",
    "ops",
    "pe",
    "sched-flags",
    "mcast-group",
    "mcast-port",
    "mcast-ttl",
    "sync-maxlen",
    "tun-info",
    "tun-type",
    "tun-port",
    "tun-nocsum",
    "tun-csum",
    "tun-remcsum",
    "json",
];

/// ipvsadm 1.31's `commands_v_options`: `+` compulsory, `x` illegal, `1` exclusive, ` `
/// optional; the last column is our `--json`.
#[rustfmt::skip]
pub(super) const LEGALITY: [&[u8; NOPT]; 14] = [
    //  -n -c svc -s -p -M -r fwd -w -x -y mc tot dmn st rt thr pc srt sid ex ops pe b grp port ttl size tinf type tprt nocs csum remc json
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxx", // add-service
    b"xx+   xxxxxxxxxxxxxxx   xxxxxxxxxxx", // edit-service
    b"xx+xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-service
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // flush
    b" 11xxxxxxxxx11       xxxxxxx xxxxx ", // list
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     x", // add-server
    b"xx+xxx+xxxxxxxxxxxxxxxxxxxxxxxxxxxx", // delete-server
    b"xx+xxx+    xxxxxxxxxxxxxxxxxx     x", // edit-server
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // set
    b"xxxxxxxxxxx xxxxxxx xxxx    xxxxxxx", // start-daemon
    b"xxxxxxxxxxxxxxxxxxx xxxxxxxxxxxxxxx", // stop-daemon
    b"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // restore
    b" xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // save
    b"xx xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", // zero
];

/// 31 days, ipvsadm's `MAX_TIMEOUT`.
pub(super) const MAX_TIMEOUT: i64 = 86400 * 31;
/// `IPVS_SVC_PERSISTENT_TIMEOUT` (libipvs.h; the man page's 300 is wrong).
pub(super) const DEFAULT_PERSISTENT_TIMEOUT: u32 = 360;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Af {
    Unset,
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fwd {
    Droute,
    Tunnel,
    Masq,
}

pub(super) const TUN_NAMES: [&str; 3] = ["ipip", "gue", "gre"];
/// `tunnel_types_v_options`, columns tun-port, tun-nocsum, tun-csum, tun-remcsum.
pub(super) const TUN_LEGALITY: [&[u8; 4]; 3] = [b"xxxx", b"+111", b"x11x"];
pub(super) const TUN_OPTS: [usize; 4] = [O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM];

// ---------------------------------------------------------------------------------------------
// popt, as ipvsadm 1.31 configures it
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Opt {
    AddService,
    EditService,
    DeleteService,
    Clear,
    ListL,
    Listl,
    Zero,
    AddServer,
    EditServer,
    DeleteServer,
    Set,
    Help,
    Version,
    Restore,
    Save,
    StartDaemon,
    StopDaemon,
    TcpService,
    UdpService,
    SctpService,
    FwmarkService,
    Scheduler,
    Persistent,
    Netmask,
    RealServer,
    Masquerading,
    Ipip,
    Gatewaying,
    Weight,
    UThreshold,
    LThreshold,
    Numeric,
    Connection,
    McastInterface,
    Syncid,
    Timeout,
    Daemon,
    Stats,
    Rate,
    Thresholds,
    PersistentConn,
    NoSort,
    Sort,
    Exact,
    Ipv6,
    Ops,
    Pe,
    SchedFlags,
    McastGroup,
    McastPort,
    McastTtl,
    SyncMaxlen,
    TunInfo,
    TunType,
    TunPort,
    TunNocsum,
    TunCsum,
    TunRemcsum,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ArgKind {
    None,
    Required,
    Optional,
}

pub(super) struct PoptOption {
    pub(super) long: &'static str,
    pub(super) short: u8,
    pub(super) arg: ArgKind,
    pub(super) opt: Opt,
}

pub(super) const fn po(long: &'static str, short: u8, arg: ArgKind, opt: Opt) -> PoptOption {
    PoptOption {
        long,
        short,
        arg,
        opt,
    }
}

/// ipvsadm 1.31's `options_table`, in its order (`--list` finds `-L` first), plus `--json`.
#[rustfmt::skip]
pub(super) const POPT_TABLE: &[PoptOption] = &[
    po("add-service", b'A', ArgKind::None, Opt::AddService),
    po("edit-service", b'E', ArgKind::None, Opt::EditService),
    po("delete-service", b'D', ArgKind::None, Opt::DeleteService),
    po("clear", b'C', ArgKind::None, Opt::Clear),
    po("list", b'L', ArgKind::None, Opt::ListL),
    po("list", b'l', ArgKind::None, Opt::Listl),
    po("zero", b'Z', ArgKind::None, Opt::Zero),
    po("add-server", b'a', ArgKind::None, Opt::AddServer),
    po("edit-server", b'e', ArgKind::None, Opt::EditServer),
    po("delete-server", b'd', ArgKind::None, Opt::DeleteServer),
    po("set", 0, ArgKind::None, Opt::Set),
    po("help", b'h', ArgKind::None, Opt::Help),
    po("version", b'v', ArgKind::None, Opt::Version),
    po("restore", b'R', ArgKind::None, Opt::Restore),
    po("save", b'S', ArgKind::None, Opt::Save),
    po("start-daemon", 0, ArgKind::Required, Opt::StartDaemon),
    po("stop-daemon", 0, ArgKind::Required, Opt::StopDaemon),
    po("tcp-service", b't', ArgKind::Required, Opt::TcpService),
    po("udp-service", b'u', ArgKind::Required, Opt::UdpService),
    po("sctp-service", 0, ArgKind::Required, Opt::SctpService),
    po("fwmark-service", b'f', ArgKind::Required, Opt::FwmarkService),
    po("scheduler", b's', ArgKind::Required, Opt::Scheduler),
    po("persistent", b'p', ArgKind::Optional, Opt::Persistent),
    po("netmask", b'M', ArgKind::Required, Opt::Netmask),
    po("real-server", b'r', ArgKind::Required, Opt::RealServer),
    po("masquerading", b'm', ArgKind::None, Opt::Masquerading),
    po("ipip", b'i', ArgKind::None, Opt::Ipip),
    po("gatewaying", b'g', ArgKind::None, Opt::Gatewaying),
    po("weight", b'w', ArgKind::Required, Opt::Weight),
    po("u-threshold", b'x', ArgKind::Required, Opt::UThreshold),
    po("l-threshold", b'y', ArgKind::Required, Opt::LThreshold),
    po("numeric", b'n', ArgKind::None, Opt::Numeric),
    po("connection", b'c', ArgKind::None, Opt::Connection),
    po("mcast-interface", 0, ArgKind::Required, Opt::McastInterface),
    po("syncid", 0, ArgKind::Required, Opt::Syncid),
    po("timeout", 0, ArgKind::None, Opt::Timeout),
    po("daemon", 0, ArgKind::None, Opt::Daemon),
    po("stats", 0, ArgKind::None, Opt::Stats),
    po("rate", 0, ArgKind::None, Opt::Rate),
    po("thresholds", 0, ArgKind::None, Opt::Thresholds),
    po("persistent-conn", 0, ArgKind::None, Opt::PersistentConn),
    po("nosort", 0, ArgKind::None, Opt::NoSort),
    po("sort", 0, ArgKind::None, Opt::Sort),
    po("exact", b'X', ArgKind::None, Opt::Exact),
    po("ipv6", b'6', ArgKind::None, Opt::Ipv6),
    po("ops", b'o', ArgKind::None, Opt::Ops),
    po("pe", 0, ArgKind::Required, Opt::Pe),
    po("sched-flags", b'b', ArgKind::Required, Opt::SchedFlags),
    po("mcast-group", 0, ArgKind::Required, Opt::McastGroup),
    po("mcast-port", 0, ArgKind::Required, Opt::McastPort),
    po("mcast-ttl", 0, ArgKind::Required, Opt::McastTtl),
    po("sync-maxlen", 0, ArgKind::Required, Opt::SyncMaxlen),
    po("tun-info", 0, ArgKind::None, Opt::TunInfo),
    po("tun-type", 0, ArgKind::Required, Opt::TunType),
    po("tun-port", 0, ArgKind::Required, Opt::TunPort),
    po("tun-nocsum", 0, ArgKind::None, Opt::TunNocsum),
    po("tun-csum", 0, ArgKind::None, Opt::TunCsum),
    po("tun-remcsum", 0, ArgKind::None, Opt::TunRemcsum),
    // lbadm's extension.
    po("json", 0, ArgKind::None, Opt::Json),
];
