//! What lbadm says where ipvsadm has its own words: the version line, the exit codes, `-h`,
//! try-help, and this director's refusals of ipvsadm features it cannot provide.

use crate::director::Scheduler;

/// The program name used in messages by [`super::grammar::parse`].
pub const PROGRAM: &str = "lbadm";

/// What `-v`/`--version` prints (plus a newline). ipvsadm prints
/// `ipvsadm v1.31 2019/12/24 (compiled with popt and IPVS v1.2.1)`.
pub const VERSION_LINE: &str = concat!(
    "lbadm v",
    env!("CARGO_PKG_VERSION"),
    " (ipvsadm v1.31 compatible, IPIP tunnel mode)"
);

/// Exit code of usage errors (ipvsadm's `exit(-1)` / `return -1`: try-help, popt errors).
pub const EXIT_USAGE: i32 = 255;
/// Exit code of validation errors (ipvsadm's `fail(2, …)`) and of this director's refusals.
pub const EXIT_INVALID: i32 = 2;

/// `-g`: ipvsadm's default forwarding method, which this director does not have.
pub const DIRECT_ROUTING_UNSUPPORTED: &str =
    "Direct routing (-g) is not supported: this director only forwards through IPIP tunnels (-i)";
/// `-m`.
pub const MASQUERADING_UNSUPPORTED: &str =
    "Masquerading (-m) is not supported: this director only forwards through IPIP tunnels (-i)";
/// `--tun-type gue`.
pub const TUN_TYPE_GUE_UNSUPPORTED: &str =
    "Tunnel type 'gue' is not supported: this director only tunnels over IPIP";
/// `--tun-type gre`.
pub const TUN_TYPE_GRE_UNSUPPORTED: &str =
    "Tunnel type 'gre' is not supported: this director only tunnels over IPIP";
/// `--tun-port` (ipvsadm allows it only with `--tun-type gue`).
pub const TUN_PORT_UNSUPPORTED: &str = "Option '--tun-port' is not supported: this director only tunnels over IPIP, which has no tunnel port";
/// `--tun-nocsum` (ipvsadm allows it only with gue or gre).
pub const TUN_NOCSUM_UNSUPPORTED: &str = "Option '--tun-nocsum' is not supported: this director only tunnels over IPIP, which has no tunnel checksum";
/// `--tun-csum` (gue or gre).
pub const TUN_CSUM_UNSUPPORTED: &str = "Option '--tun-csum' is not supported: this director only tunnels over IPIP, which has no tunnel checksum";
/// `--tun-remcsum` (gue only).
pub const TUN_REMCSUM_UNSUPPORTED: &str = "Option '--tun-remcsum' is not supported: this director only tunnels over IPIP, which has no tunnel checksum";
/// `-f`.
pub const FWMARK_UNSUPPORTED: &str = "Firewall-mark services (-f) are not supported: this director matches services by protocol, address and port (-t, -u)";
/// `-6` (which ipvsadm only takes after `-f`, so `-f`'s refusal always comes first).
pub const IPV6_FWMARK_UNSUPPORTED: &str =
    "IPv6 firewall-mark services (-6) are not supported: this director is IPv4-only";
/// `--sctp-service`.
pub const SCTP_UNSUPPORTED: &str = "SCTP services (--sctp-service) are not supported: this director balances TCP (-t) and UDP (-u) only";
/// `-M` with a mask other than 255.255.255.255 (the default, which is accepted).
pub const NETMASK_UNSUPPORTED: &str = "Persistence netmasks (-M) other than 255.255.255.255 are not supported: persistence is per client address";
/// `--pe`.
pub const PE_UNSUPPORTED: &str =
    "Persistence engines (--pe) are not supported: persistence is per client address (-p)";
/// `-b`.
pub const SCHED_FLAGS_UNSUPPORTED: &str =
    "Scheduler flags (-b) are not supported by this director's schedulers";
/// `-o` (which ipvsadm itself allows only for UDP services).
pub const OPS_UNSUPPORTED: &str =
    "One-packet scheduling (-o) is not supported: UDP flows are scheduled once per connection";
/// An IPv6 service or real-server address (`[addr]:port`, or a bare IPv6 literal). This is
/// ipvsadm's text for a kernel that refuses the address family (`ipvs_strerror(EAFNOSUPPORT)`,
/// what ipvsadm prints for IPv6 when its libipvs talks to the kernel over sockopts), with its
/// exit code 255; it is raised only after every ipvsadm check has passed, where ipvsadm would
/// have gone to the kernel. Preferred over `illegal virtual server address[:port] specified`
/// because the address is legal, only not served here.
pub const IPV6_UNSUPPORTED: &str = "Operation not supported with specified address family";
/// `--set`: [`super::grammar::parse`] returns [`super::grammar::Command::Set`]; the executor refuses it with this text (exit 2).
pub const SET_UNSUPPORTED: &str =
    "--set is not supported: the data path uses IPVS's default timeouts (900 120 300)";
/// `--start-daemon`, `--stop-daemon`: parsed, then refused by the executor with this (exit 2).
pub const DAEMON_UNSUPPORTED: &str = "ipvsadm's connection synchronisation daemon is not supported: lbadm directors sync their connections through `lbadm daemon` ([sync] in its configuration file)";

/// Every ipvsadm option this director refuses, with the text it is refused with: the support
/// table of the README. All are exit 2 except IPv6 addresses (255). The last three are parsed
/// into `Command::Set`, `Command::StartDaemon`, `Command::StopDaemon` and refused by the
/// executor.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("-g, --gatewaying", DIRECT_ROUTING_UNSUPPORTED),
    ("-m, --masquerading", MASQUERADING_UNSUPPORTED),
    ("--tun-type gue", TUN_TYPE_GUE_UNSUPPORTED),
    ("--tun-type gre", TUN_TYPE_GRE_UNSUPPORTED),
    ("--tun-port", TUN_PORT_UNSUPPORTED),
    ("--tun-nocsum", TUN_NOCSUM_UNSUPPORTED),
    ("--tun-csum", TUN_CSUM_UNSUPPORTED),
    ("--tun-remcsum", TUN_REMCSUM_UNSUPPORTED),
    ("-f, --fwmark-service", FWMARK_UNSUPPORTED),
    ("-6, --ipv6", IPV6_FWMARK_UNSUPPORTED),
    ("--sctp-service", SCTP_UNSUPPORTED),
    (
        "-M, --netmask (other than 255.255.255.255)",
        NETMASK_UNSUPPORTED,
    ),
    ("--pe", PE_UNSUPPORTED),
    ("-b, --sched-flags", SCHED_FLAGS_UNSUPPORTED),
    ("-o, --ops", OPS_UNSUPPORTED),
    ("IPv6 addresses ([addr]:port)", IPV6_UNSUPPORTED),
    ("--set", SET_UNSUPPORTED),
    ("--start-daemon", DAEMON_UNSUPPORTED),
    ("--stop-daemon", DAEMON_UNSUPPORTED),
];

/// ``Try `lbadm -h' or 'lbadm --help' for more information.`` (ipvsadm's `tryhelp_exit`).
pub fn try_help(program: &str) -> String {
    format!("Try `{program} -h' or '{program} --help' for more information.")
}

/// What `-h` prints on stdout (exit 0): ipvsadm's help, keeping its layout, listing what this
/// director supports, then what it refuses.
pub fn usage(program: &str) -> String {
    let p = program;
    let scheds: Vec<&str> = Scheduler::ALL.iter().map(|s| s.name()).collect();
    let scheds = scheds.join("|");
    let default = Scheduler::DEFAULT.name();
    format!(
        "{VERSION_LINE}
Usage:
  {p} -A|E virtual-service [-s scheduler] [-p [timeout]]
  {p} -D virtual-service
  {p} -C
  {p} -R
  {p} -S [-n]
  {p} -a|e virtual-service -r server-address [options]
  {p} -d virtual-service -r server-address
  {p} -L|l [virtual-service] [options]
  {p} -Z [virtual-service]
  {p} -h

Commands:
Either long or short options are allowed.
  --add-service     -A        add virtual service with options
  --edit-service    -E        edit virtual service with options
  --delete-service  -D        delete virtual service
  --clear           -C        clear the whole table
  --restore         -R        restore rules from stdin
  --save            -S        save rules to stdout
  --add-server      -a        add real server with options
  --edit-server     -e        edit real server with options
  --delete-server   -d        delete real server
  --list            -L|-l     list the table
  --zero            -Z        zero counters in a service or all services
  --help            -h        display this help message
  --version         -v        display the version

virtual-service:
  --tcp-service|-t  service-address   service-address is host[:port]
  --udp-service|-u  service-address   service-address is host[:port]

Options:
  --scheduler    -s scheduler         one of {scheds},
                                      the default scheduler is {default}.
  --persistent   -p [timeout]         persistent service (default timeout 360 s)
  --netmask      -M netmask           persistent granularity mask (255.255.255.255 only)
  --real-server  -r server-address    server-address is host (and port)
  --ipip         -i                   ipip encapsulation (tunneling) (default)
  --tun-type      type                ipip, the only tunnel type
  --weight       -w weight            capacity of real server
  --u-threshold  -x uthreshold        upper threshold of connections
  --l-threshold  -y lthreshold        lower threshold of connections
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --thresholds                        output of thresholds information
  --exact                             expand numbers (display exact values)
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --numeric      -n                   numeric output of addresses and ports
  --json                              list in JSON (with -L; lbadm extension)

Not supported by this IPv4, IPIP-tunnel-only director (refused with exit 2):
  -f, --sctp-service, -6, -g, -m, --tun-type gue|gre, --tun-port, --tun-nocsum,
  --tun-csum, --tun-remcsum, -M other than 255.255.255.255, --pe, -b, -o,
  --set, --start-daemon, --stop-daemon, -L --persistent-conn|--tun-info;
  and IPv6 addresses (exit 255).
"
    )
}
