//! ipvsadm v1.31's command-line grammar, reproduced exactly, for lbadm's ipvsadm-compatible CLI.
//!
//! [`parse`] turns one command line (without the program name) into an [`Invocation`] or a
//! [`CliError`] carrying ipvsadm's own message and exit code. The spec is
//! `docs/reference/ipvsadm.md` §1.1–1.3, 1.7, 1.8; where it is silent, ipvsadm 1.31's source
//! (`ipvsadm.c`, `config_stream.c`) and popt 1.19 (Debian bookworm's, which ipvsadm 1.31 links)
//! decide, and every behaviour below was checked against the real Debian `ipvsadm` 1.31 binary
//! (see `differential_against_real_ipvsadm` at the bottom).
//!
//! # How a command line is judged, in order
//!
//! 1. **popt**, as ipvsadm drives it: options are read one at a time; the first must be a
//!    command (`-A -E -D -C -R -S -a -e -d -L/-l -Z --set --start-daemon --stop-daemon -h -v`),
//!    else ``Try `lbadm -h' or 'lbadm --help' for more information.`` (exit 255). `-h`/`-v` as
//!    the first option win whatever follows. A later command is `` invalid option `-D' `` (exit 2,
//!    naming the whole argv element popt last consumed, e.g. `` `-nA' ``). A popt error after
//!    the command is `--foo: unknown option`, `-t: missing argument` or
//!    `--numeric=1: option does not take an argument` (exit 255). Short options bundle (`-Lnc`,
//!    `-At 1.2.3.4:80`, `-tVIP`, `-t=VIP`); a short option taking an argument eats the rest of
//!    its bundle or the next argv element, even one starting with `-`; long options take
//!    `--opt=value` or `--opt value`; names must match exactly (popt has no abbreviations).
//!    `-p`'s argument is optional (`POPT_ARGFLAG_OPTIONAL`): it takes the rest of its bundle
//!    (`-p600`, and `-pn` means timeout "n"), `--persistent=V`, or the next argv element unless
//!    that starts with `-` (an empty element is taken). Non-options may appear anywhere and are
//!    collected (`--` makes everything after it a non-option); `--set` takes three of them,
//!    any other left over is `unexpected argument %s`. popt's `!#:+` in an option argument
//!    (replaced by the next non-option argv element, which is then skipped) is reproduced.
//! 2. **Values**, checked as each option is read (so the first bad value wins over any later
//!    problem): `illegal weight specified`, `` invalid timeout value `%s' specified ``,
//!    `illegal virtual server address[:port] specified`, … (ipvsadm's `fail(2, …)`), and each
//!    option at most once: `multiple '%s' options specified`.
//! 3. **Cross-option checks** after the whole line, as ipvsadm: `--set` arguments, leftovers,
//!    `-b` flags, the `commands_v_options` legality matrix (`You need to supply the
//!    'real-server' option for the 'add-server' command`, `Illegal 'weight' option with the
//!    'add-service' command`, `The option 'service-address' conflicts with the 'connection'
//!    option in the 'list' command`), zero port, one-packet, address family, tunnel options,
//!    and `options conflicts in the list command`.
//! 4. **This director's refusals** (exit 2, texts in the `*_UNSUPPORTED` consts and in
//!    [`UNSUPPORTED`]): features ipvsadm accepts but the IPIP-only, IPv4-only data path cannot
//!    provide. The first refused option in argv order is reported.
//! 5. **IPv6 addresses**: [`IPV6_UNSUPPORTED`], exit 255, as ipvsadm reports a kernel that
//!    refuses the address family (`ipvs_strerror(EAFNOSUPPORT)`); see that const.
//!
//! So lbadm accepts a command line only if ipvsadm 1.31 accepts it (the one exception is our
//! `--json`), and anything ipvsadm rejects is rejected with ipvsadm's exact text and exit code,
//! even where lbadm would also refuse the feature; e.g. `-A -t VIP:80 -g` is ipvsadm's
//! `Illegal 'forwarding-method' option with the 'add-service' command`, while
//! `-a -t VIP:80 -r RIP -g` is our [`DIRECT_ROUTING_UNSUPPORTED`].
//!
//! # Deliberate differences from ipvsadm
//!
//! * **Forwarding**: ipvsadm's default is `-g` (direct routing). This director only tunnels, so
//!   an `-a`/`-e` without `-g/-i/-m` means IPIP tunnel, exactly as `-i`; `-g` and `-m` are
//!   refused. Acceptance still follows ipvsadm (whose checks assume the `-g` default), so
//!   `--tun-type ipip` still needs `-i` (`Tunnel options conflict with forward method`): a line
//!   lbadm takes is a line ipvsadm takes, with the same meaning on an LVS-TUN director.
//! * `--json` (lbadm extension): only with `-L`/`-l` (`Illegal 'json' option with the '%s'
//!   command` otherwise, as for any ipvsadm option outside its column) and not with `-c`,
//!   `--timeout` or `--daemon` (`options conflicts in the list command`): it prints the
//!   service table (with `--stats`/`--rate` values) as JSON.
//! * The messages name the program lbadm runs as (`PROGRAM`, or [`parse_as`]'s argument), as
//!   ipvsadm names its `argv[0]`.
//! * `-6 used before -f` is printed by ipvsadm with an extra blank line (its format string ends
//!   in `\n` and `fail` adds one); [`CliError::message`] never ends in a newline.
//! * The `POSIXLY_CORRECT` environment variable, which makes popt stop at the first non-option,
//!   is ignored. A `!#:+` with nothing left to substitute but further options makes ipvsadm spin
//!   forever; here it stays literal.
//! * `-b ,` (only commas) crashes ipvsadm (`strtok` returns NULL); here it is
//!   `` invalid scheduler flag `,' ``.
//! * Host names are resolved with `gethostbyname_r` (IPv4 only, first address) and service
//!   names with `getservbyname_r`, the reentrant forms of what ipvsadm calls; addresses are
//!   parsed by libc's own `inet_aton`/`inet_pton`, so `10.1:80` is 10.0.0.1 and
//!   `1.2.3.4 junk:80` is 1.2.3.4, as in ipvsadm.
//! * [`restore_lines`] honours `#` comments, which ipvsadm's `config_stream.c` means to do but
//!   does not (see there).

use std::{
    ffi::{CString, c_char, c_int, c_void},
    fmt,
    net::Ipv4Addr,
};

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// The program name used in messages by [`parse`].
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
/// `-x`.
pub const UTHRESHOLD_UNSUPPORTED: &str = "Connection thresholds (-x) are not supported: the data path does not limit connections per real server";
/// `-y`.
pub const LTHRESHOLD_UNSUPPORTED: &str = "Connection thresholds (-y) are not supported: the data path does not limit connections per real server";
/// An IPv6 service or real-server address (`[addr]:port`, or a bare IPv6 literal). This is
/// ipvsadm's text for a kernel that refuses the address family (`ipvs_strerror(EAFNOSUPPORT)`,
/// what ipvsadm prints for IPv6 when its libipvs talks to the kernel over sockopts), with its
/// exit code 255; it is raised only after every ipvsadm check has passed, where ipvsadm would
/// have gone to the kernel. Preferred over `illegal virtual server address[:port] specified`
/// because the address is legal, only not served here.
pub const IPV6_UNSUPPORTED: &str = "Operation not supported with specified address family";
/// `--set`: [`parse`] returns [`Command::Set`]; the executor refuses it with this text (exit 2).
pub const SET_UNSUPPORTED: &str =
    "--set is not supported: the data path uses IPVS's default timeouts (900 120 300)";
/// `--start-daemon`, `--stop-daemon`: parsed, then refused by the executor with this (exit 2).
pub const DAEMON_UNSUPPORTED: &str = "the connection synchronisation daemon is not supported: each director keeps its own connection table";

/// Every ipvsadm option this director refuses, with the text it is refused with: the support
/// table of the README. All are exit 2 except IPv6 addresses (255). The last three are parsed
/// into [`Command::Set`], [`Command::StartDaemon`], [`Command::StopDaemon`] and refused by the
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
    ("-x, --u-threshold", UTHRESHOLD_UNSUPPORTED),
    ("-y, --l-threshold", LTHRESHOLD_UNSUPPORTED),
    ("IPv6 addresses ([addr]:port)", IPV6_UNSUPPORTED),
    ("--set", SET_UNSUPPORTED),
    ("--start-daemon", DAEMON_UNSUPPORTED),
    ("--stop-daemon", DAEMON_UNSUPPORTED),
];

/// The command, always the first option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    AddService,
    EditService,
    DeleteService,
    Clear,
    Restore,
    Save,
    AddServer,
    EditServer,
    DeleteServer,
    /// `-L`, `-l`, `--list`, and a command line with no arguments at all.
    List,
    Zero,
    /// `--set tcp tcpfin udp` ([`Invocation::set_timeouts`]); refused by the executor.
    Set,
    /// `--start-daemon master|backup`; refused by the executor.
    StartDaemon,
    /// `--stop-daemon master|backup`; refused by the executor.
    StopDaemon,
    /// `-h` first: print [`usage`] on stdout, exit 0 (the rest of the line is not read).
    Help,
    /// `-v` first: print [`VERSION_LINE`], exit 0 (the rest of the line is not read).
    Version,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// `-t`/`-u host[:port]`. Port 0 when none was given (legal for `-A`/`-E` only with `-p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAddr {
    pub proto: Proto,
    pub addr: Ipv4Addr,
    pub port: u16,
}

/// A parsed, legal command line. Which fields can be set for which command follows ipvsadm's
/// legality matrix (the property test checks it); everything else is `None`/`false`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    /// Required for -A -E -D -a -e -d; optional for -L (one service) and -Z.
    pub service: Option<ServiceAddr>,
    /// `-s`, for -A/-E; `None` when absent or empty (ipvsadm then uses its default, `wlc`; the
    /// caller picks ours). Not validated here: ipvsadm leaves that to the kernel, whose
    /// ENOENT is `Scheduler or persistence engine not found` (exit 255).
    pub scheduler: Option<String>,
    /// `-p [timeout]`, for -A/-E: 1..=2678400, 360 when `-p` has no value.
    pub persistent: Option<u32>,
    /// `-r`, required for -a -e -d. For -a/-e the port is always the service's (tunnelled
    /// reals serve the virtual port; ipvsadm forces it silently for `-i` and `-g`). For -d it
    /// is the port given, else the service port as known when `-r` was read (0 if `-r` came
    /// before `-t`), as ipvsadm looks the destination up.
    pub real: Option<(Ipv4Addr, u16)>,
    /// `-w`, for -a/-e: 0..=2147483647. `None` when absent: ipvsadm then sends weight 1, for
    /// `-e` too.
    pub weight: Option<u32>,
    /// `-n` (-L, -S).
    pub numeric: bool,
    /// `-c` (-L): list connections.
    pub connection: bool,
    /// `--timeout` (-L).
    pub timeout: bool,
    /// `--daemon` (-L).
    pub daemon: bool,
    /// `--stats` (-L); wins over `--rate` when both are given, as in ipvsadm.
    pub stats: bool,
    /// `--rate` (-L).
    pub rate: bool,
    /// `--exact` / `-X` (-L).
    pub exact: bool,
    /// `--nosort` (-L).
    pub nosort: bool,
    /// `--json` (-L), our extension.
    pub json: bool,
    /// `--set tcp tcpfin udp`: each 0..=2678400, 0 = keep the current value.
    pub set_timeouts: Option<(u32, u32, u32)>,
    /// `--thresholds` (-L): the Uthreshold/Lthreshold column set.
    pub thresholds: bool,
    /// `--persistent-conn` (-L): the PersistConn column set (with -c: PE data rows).
    pub persistent_conn: bool,
    /// `--tun-info` (-L): the TunnelInfo column.
    pub tun_info: bool,
}

impl Invocation {
    fn bare(command: Command) -> Self {
        Invocation {
            command,
            service: None,
            scheduler: None,
            persistent: None,
            real: None,
            weight: None,
            numeric: false,
            connection: false,
            timeout: false,
            daemon: false,
            stats: false,
            rate: false,
            exact: false,
            nosort: false,
            json: false,
            set_timeouts: None,
            thresholds: false,
            persistent_conn: false,
            tun_info: false,
        }
    }
}

/// A rejected command line: print `message` and a newline on stderr, exit with `exit_code`
/// ([`EXIT_USAGE`] for try-help and popt errors and IPv6, [`EXIT_INVALID`] otherwise).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CliError {
    /// ipvsadm's text, without the trailing newline.
    pub message: String,
    pub exit_code: i32,
}

impl CliError {
    fn new(message: impl Into<String>, exit_code: i32) -> Self {
        CliError {
            message: message.into(),
            exit_code,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// Parses one ipvsadm command line, `args` without the program name; messages name
/// [`PROGRAM`].
pub fn parse(args: &[String]) -> Result<Invocation, CliError> {
    parse_as(PROGRAM, args)
}

/// [`parse`], with `program` (ipvsadm's `argv[0]`) in the try-help message.
pub fn parse_as(program: &str, args: &[String]) -> Result<Invocation, CliError> {
    parse_with(program, args, &SystemLookup)
}

/// ``Try `lbadm -h' or 'lbadm --help' for more information.`` (ipvsadm's `tryhelp_exit`).
pub fn try_help(program: &str) -> String {
    format!("Try `{program} -h' or '{program} --help' for more information.")
}

/// The scheduler `usage` names as the default: the executor's choice for `-A` without `-s`
/// (`ipvsadm_command::DEFAULT_SCHEDULER`; ipvsadm's is `wlc`). Keep the two in step.
const USAGE_DEFAULT_SCHEDULER: &str = "wrr";

/// What `-h` prints on stdout (exit 0): ipvsadm's help, keeping its layout, listing what this
/// director supports, then what it refuses.
pub fn usage(program: &str) -> String {
    let p = program;
    let scheds: Vec<&str> = (0..=u8::MAX)
        .filter_map(crate::scheduler::Scheduler::from_raw)
        .map(|s| s.name())
        .collect();
    let scheds = scheds.join("|");
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
                                      the default scheduler is {USAGE_DEFAULT_SCHEDULER}.
  --persistent   -p [timeout]         persistent service (default timeout 360 s)
  --netmask      -M netmask           persistent granularity mask (255.255.255.255 only)
  --real-server  -r server-address    server-address is host (and port)
  --ipip         -i                   ipip encapsulation (tunneling) (default)
  --tun-type      type                ipip, the only tunnel type
  --weight       -w weight            capacity of real server
  --connection   -c                   output of current IPVS connections
  --timeout                           output of timeout (tcp tcpfin udp)
  --daemon                            output of daemon information
  --stats                             output of statistics information
  --rate                              output of rate information
  --exact                             expand numbers (display exact values)
  --nosort                            disable sorting output of service/server entries
  --sort                              does nothing, for backwards compatibility
  --numeric      -n                   numeric output of addresses and ports
  --json                              list in JSON (with -L; lbadm extension)

Not supported by this IPv4, IPIP-tunnel-only director (refused with exit 2):
  -f, --sctp-service, -6, -g, -m, --tun-type gue|gre, --tun-port, --tun-nocsum,
  --tun-csum, --tun-remcsum, -M other than 255.255.255.255, --pe, -b, -o, -x, -y,
  --set, --start-daemon, --stop-daemon, -L --thresholds|--persistent-conn|--tun-info;
  and IPv6 addresses (exit 255).

The data path itself:
  {program} attach --iface IF [--tunnel-source ADDR] [--generic] [--log-level LEVEL]
  {program} detach | status [--json] | log
  The pinned state lives in /sys/fs/bpf/lbadm (LBADM_PIN_DIR or --pin-dir to change).
"
    )
}

/// Splits `ipvsadm -R` input into command lines, as ipvsadm's `config_stream_read`: lines end
/// at `\n`; tokens are separated by spaces, tabs and CRs (so CRLF files work); tokens equal to
/// `ipvsadm` are dropped (lines may start with `ipvsadm`); a token containing `#` and
/// everything after it on the line are a comment; lines left empty are skipped.
///
/// Differences from ipvsadm 1.31, all deliberate:
/// * its comment test looks for `#` in the one whitespace character that follows each token,
///   never in the token, so ipvsadm honours no comments at all (a `# …` line makes it print
///   try-help and exit 255 mid-restore; `ipvsadm-restore` strips `^#` lines with grep first).
///   Comments are honoured here, as the function's own header comment and the reference intend;
/// * it drops the last line when the input ends without a newline after two or more
///   whitespace characters; such a line is kept here;
/// * it splits tokens longer than 4096 bytes into several; they are kept whole here.
pub fn restore_lines(input: &str) -> Vec<Vec<String>> {
    input
        .split('\n')
        .filter_map(|line| {
            let mut tokens = Vec::new();
            for t in line.split([' ', '\t', '\r']).filter(|t| !t.is_empty()) {
                if t.contains('#') {
                    break;
                }
                if t != "ipvsadm" {
                    tokens.push(t.to_string());
                }
            }
            (!tokens.is_empty()).then_some(tokens)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ipvsadm's tables
// ---------------------------------------------------------------------------------------------

/// ipvsadm's commands, in `cmdnames[]` order (CMD_ADD … CMD_ZERO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmd {
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

const CMD_NAMES: [&str; 14] = [
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
const O_NUMERIC: usize = 0;
const O_CONNECTION: usize = 1;
const O_SERVICE: usize = 2;
const O_SCHEDULER: usize = 3;
const O_PERSISTENT: usize = 4;
const O_NETMASK: usize = 5;
const O_SERVER: usize = 6;
const O_FORWARD: usize = 7;
const O_WEIGHT: usize = 8;
const O_UTHRESHOLD: usize = 9;
const O_LTHRESHOLD: usize = 10;
const O_MCAST: usize = 11;
const O_TIMEOUT: usize = 12;
const O_DAEMON: usize = 13;
const O_STATS: usize = 14;
const O_RATE: usize = 15;
const O_THRESHOLDS: usize = 16;
const O_PERSISTENTCONN: usize = 17;
const O_NOSORT: usize = 18;
const O_SYNCID: usize = 19;
const O_EXACT: usize = 20;
const O_ONEPACKET: usize = 21;
const O_PE: usize = 22;
const O_SCHED_FLAGS: usize = 23;
const O_MCAST_GROUP: usize = 24;
const O_MCAST_PORT: usize = 25;
const O_MCAST_TTL: usize = 26;
const O_SYNC_MAXLEN: usize = 27;
const O_TUN_INFO: usize = 28;
const O_TUN_TYPE: usize = 29;
const O_TUN_PORT: usize = 30;
const O_TUN_NOCSUM: usize = 31;
const O_TUN_CSUM: usize = 32;
const O_TUN_REMCSUM: usize = 33;
const O_JSON: usize = 34;
const NOPT: usize = 35;

const OPT_NAMES: [&str; NOPT] = [
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
const LEGALITY: [&[u8; NOPT]; 14] = [
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
const MAX_TIMEOUT: i64 = 86400 * 31;
/// `IPVS_SVC_PERSISTENT_TIMEOUT` (libipvs.h; the man page's 300 is wrong).
const DEFAULT_PERSISTENT_TIMEOUT: u32 = 360;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Af {
    Unset,
    V4,
    V6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fwd {
    Droute,
    Tunnel,
    Masq,
}

const TUN_NAMES: [&str; 3] = ["ipip", "gue", "gre"];
/// `tunnel_types_v_options`, columns tun-port, tun-nocsum, tun-csum, tun-remcsum.
const TUN_LEGALITY: [&[u8; 4]; 3] = [b"xxxx", b"+111", b"x11x"];
const TUN_OPTS: [usize; 4] = [O_TUN_PORT, O_TUN_NOCSUM, O_TUN_CSUM, O_TUN_REMCSUM];

// ---------------------------------------------------------------------------------------------
// popt, as ipvsadm 1.31 configures it
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
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
enum ArgKind {
    None,
    Required,
    Optional,
}

struct PoptOption {
    long: &'static str,
    short: u8,
    arg: ArgKind,
    opt: Opt,
}

const fn po(long: &'static str, short: u8, arg: ArgKind, opt: Opt) -> PoptOption {
    PoptOption {
        long,
        short,
        arg,
        opt,
    }
}

/// ipvsadm 1.31's `options_table`, in its order (`--list` finds `-L` first), plus `--json`.
#[rustfmt::skip]
const POPT_TABLE: &[PoptOption] = &[
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

/// popt's errors that ipvsadm can meet, with `poptStrerror`'s texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PoptError {
    /// POPT_ERROR_BADOPT
    BadOpt,
    /// POPT_ERROR_NOARG
    NoArg,
    /// POPT_ERROR_UNWANTEDARG
    UnwantedArg,
}

impl PoptError {
    fn text(self) -> &'static str {
        match self {
            PoptError::BadOpt => "unknown option",
            PoptError::NoArg => "missing argument",
            PoptError::UnwantedArg => "option does not take an argument",
        }
    }
}

/// `poptGetNextOpt` over one argv (without `argv[0]`), for a table without aliases or execs.
struct Popt<'a> {
    argv: &'a [&'a str],
    /// Index of the next argv element to read.
    next: usize,
    /// Unread short options of a bundle: (argv index, byte offset).
    next_char: Option<(usize, usize)>,
    /// After `--`: everything is a non-option.
    rest_leftover: bool,
    leftovers: Vec<&'a str>,
    next_leftover: usize,
    /// Elements taken by a `!#:+` expansion (popt's `argb`): skipped when reached.
    taken: Vec<bool>,
}

impl<'a> Popt<'a> {
    fn new(argv: &'a [&'a str]) -> Self {
        Popt {
            argv,
            next: 0,
            next_char: None,
            rest_leftover: false,
            leftovers: Vec::new(),
            next_leftover: 0,
            taken: vec![false; argv.len()],
        }
    }

    /// `poptBadOption(con, POPT_BADOPTION_NOALIAS)`: the argv element read last.
    fn bad_option(&self) -> &'a str {
        self.argv[self
            .next
            .saturating_sub(1)
            .min(self.argv.len().saturating_sub(1))]
    }

    /// `poptGetArg`.
    fn get_arg(&mut self) -> Option<&'a str> {
        let a = self.leftovers.get(self.next_leftover).copied();
        if a.is_some() {
            self.next_leftover += 1;
        }
        a
    }

    /// `poptGetNextOpt`: `Ok(None)` at the end (-1), the option and its argument, or an error.
    fn next_opt(&mut self) -> Result<Option<(Opt, Option<String>)>, PoptError> {
        loop {
            if self.next_char.is_none() && self.next == self.argv.len() {
                return Ok(None);
            }
            let mut found: Option<&PoptOption> = None;
            let mut long_arg: Option<&'a str> = None;
            if self.next_char.is_none() {
                if self.taken[self.next] {
                    self.next += 1;
                    continue;
                }
                let i = self.next;
                let s = self.argv[i];
                self.next += 1;
                if self.rest_leftover || !s.starts_with('-') || s == "-" {
                    self.leftovers.push(s);
                    continue;
                }
                if s == "--" {
                    self.rest_leftover = true;
                    continue;
                }
                if let Some(body) = s.strip_prefix("--") {
                    let (name, arg) = match body.find('=') {
                        Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
                        None => (body, None),
                    };
                    // No ipvsadm option has POPT_ARGFLAG_ONEDASH, so `-name` is never long.
                    match POPT_TABLE
                        .iter()
                        .find(|o| !o.long.is_empty() && o.long == name)
                    {
                        Some(o) => {
                            found = Some(o);
                            long_arg = arg;
                        }
                        None => return Err(PoptError::BadOpt),
                    }
                } else {
                    self.next_char = Some((i, 1));
                }
            }
            if let Some((i, off)) = self.next_char.take() {
                let s = self.argv[i];
                let c = s.as_bytes()[off];
                let o = POPT_TABLE
                    .iter()
                    .find(|o| o.short != 0 && o.short == c)
                    .ok_or(PoptError::BadOpt)?;
                found = Some(o);
                // Short option names are ASCII, so `off + 1` is a char boundary.
                if off + 1 < s.len() {
                    self.next_char = Some((i, off + 1));
                }
            }
            let o = found.expect("an option was found or an error returned");
            match o.arg {
                ArgKind::None => {
                    let pending_eq = self
                        .next_char
                        .is_some_and(|(i, off)| self.argv[i].as_bytes()[off] == b'=');
                    if long_arg.is_some() || pending_eq {
                        return Err(PoptError::UnwantedArg);
                    }
                    return Ok(Some((o.opt, None)));
                }
                ArgKind::Required | ArgKind::Optional => {
                    let raw: Option<&'a str> = if let Some(a) = long_arg {
                        Some(a)
                    } else if let Some((i, off)) = self.next_char.take() {
                        let rest = &self.argv[i][off..];
                        Some(rest.strip_prefix('=').unwrap_or(rest))
                    } else if self.next == self.argv.len() {
                        if o.arg == ArgKind::Required {
                            return Err(PoptError::NoArg);
                        }
                        None
                    } else if o.arg == ArgKind::Optional && self.argv[self.next].starts_with('-') {
                        None
                    } else {
                        // popt does not skip `!#:+`-taken elements here.
                        self.next += 1;
                        Some(self.argv[self.next - 1])
                    };
                    let arg = raw.map(|a| self.expand_next_arg(a));
                    return Ok(Some((o.opt, arg)));
                }
            }
        }
    }

    /// popt's `expandNextArg`: each `!#:+` becomes the next non-option argv element, which is
    /// then skipped (the same one for every `!#:+` of this argument).
    fn expand_next_arg(&mut self, s: &str) -> String {
        let b = s.as_bytes();
        let mut out: Vec<u8> = Vec::with_capacity(b.len());
        let mut subst: Option<&'a str> = None;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            i += 1;
            if c == b'!' && b[i..].starts_with(b"#:+") {
                if subst.is_none() {
                    subst = self.find_next_arg();
                }
                if let Some(a) = subst {
                    out.extend_from_slice(a.as_bytes());
                    i += 3;
                    continue;
                }
            }
            out.push(c);
        }
        String::from_utf8(out).expect("whole UTF-8 pieces were joined")
    }

    /// popt's `findNextArg(con, 1, 1)`. Where popt would loop forever (elements remain but all
    /// start with `-`), nothing is found.
    fn find_next_arg(&mut self) -> Option<&'a str> {
        let i = (self.next..self.argv.len())
            .find(|&i| !self.taken[i] && !self.argv[i].starts_with('-'))?;
        self.taken[i] = true;
        Some(self.argv[i])
    }
}

// ---------------------------------------------------------------------------------------------
// C library behaviour
// ---------------------------------------------------------------------------------------------

unsafe extern "C" {
    fn inet_aton(cp: *const c_char, inp: *mut libc::in_addr) -> c_int;
    fn inet_pton(af: c_int, src: *const c_char, dst: *mut c_void) -> c_int;
    fn gethostbyname_r(
        name: *const c_char,
        ret: *mut libc::hostent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::hostent,
        h_errnop: *mut c_int,
    ) -> c_int;
    fn getservbyname_r(
        name: *const c_char,
        proto: *const c_char,
        result_buf: *mut libc::servent,
        buf: *mut c_char,
        buflen: libc::size_t,
        result: *mut *mut libc::servent,
    ) -> c_int;
}

/// Arguments reach here already cut at any NUL (as C sees them), so this cannot fail.
fn cstring(s: &str) -> CString {
    CString::new(s.split('\0').next().unwrap_or("")).expect("no NUL left")
}

/// glibc `inet_aton`: `a.b.c.d`, `a.b.c`, `a.b`, `a`, each part decimal, octal or hex, and
/// anything after whitespace ignored.
fn c_inet_aton(s: &str) -> Option<Ipv4Addr> {
    let c = cstring(s);
    let mut a = libc::in_addr { s_addr: 0 };
    // SAFETY: `c` is a valid C string and `a` a valid in_addr for the call's duration.
    let ok = unsafe { inet_aton(c.as_ptr(), &mut a) };
    (ok != 0).then(|| Ipv4Addr::from(u32::from_be(a.s_addr)))
}

fn c_inet_pton4(s: &str) -> Option<Ipv4Addr> {
    let c = cstring(s);
    let mut a = [0u8; 4];
    // SAFETY: `a` has room for an in_addr.
    let ok = unsafe { inet_pton(libc::AF_INET, c.as_ptr(), a.as_mut_ptr().cast()) };
    (ok > 0).then(|| Ipv4Addr::from(a))
}

fn c_inet_pton6(s: &str) -> Option<[u8; 16]> {
    let c = cstring(s);
    let mut a = [0u8; 16];
    // SAFETY: `a` has room for an in6_addr.
    let ok = unsafe { inet_pton(libc::AF_INET6, c.as_ptr(), a.as_mut_ptr().cast()) };
    (ok > 0).then_some(a)
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// A base-10 `strtol`/`strtoul` scan: sign, magnitude (saturated just above u64::MAX), and the
/// end offset, 0 when no digit was found (C's `end == nptr`).
struct CNumber {
    negative: bool,
    magnitude: u128,
    end: usize,
}

fn scan_c_number(s: &str) -> CNumber {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_c_space(b[i]) {
        i += 1;
    }
    let mut negative = false;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        negative = b[i] == b'-';
        i += 1;
    }
    let start = i;
    let cap = u64::MAX as u128 + 1;
    let mut magnitude: u128 = 0;
    while i < b.len() && b[i].is_ascii_digit() {
        magnitude = (magnitude * 10 + u128::from(b[i] - b'0')).min(cap);
        i += 1;
    }
    if i == start {
        return CNumber {
            negative: false,
            magnitude: 0,
            end: 0,
        };
    }
    CNumber {
        negative,
        magnitude,
        end: i,
    }
}

/// `strtol(s, &end, 10)`: (value, ERANGE, end offset).
fn c_strtol(s: &str) -> (i64, bool, usize) {
    let n = scan_c_number(s);
    if n.negative {
        if n.magnitude > 1u128 << 63 {
            (i64::MIN, true, n.end)
        } else {
            ((-(n.magnitude as i128)) as i64, false, n.end)
        }
    } else if n.magnitude > i64::MAX as u128 {
        (i64::MAX, true, n.end)
    } else {
        (n.magnitude as i64, false, n.end)
    }
}

/// `strtoul(s, &end, 10)`, negation modulo 2^64 included.
fn c_strtoul(s: &str) -> (u64, bool, usize) {
    let n = scan_c_number(s);
    if n.magnitude > u64::MAX as u128 {
        return (u64::MAX, true, n.end);
    }
    let v = n.magnitude as u64;
    (if n.negative { v.wrapping_neg() } else { v }, false, n.end)
}

/// ipvsadm's `string_to_number`: the whole string a base-10 number within [min, max].
fn string_to_number(s: &str, min: i64, max: i64) -> Option<i64> {
    let (v, erange, end) = c_strtol(s);
    (end != 0 && end == s.len() && !erange && min <= v && v <= max).then_some(v)
}

/// glibc `atoi`: `(int) strtol(s, NULL, 10)`.
fn c_atoi(s: &str) -> i32 {
    c_strtol(s).0 as i32
}

/// ipvsadm's `str_is_digit` (true for the empty string).
fn str_is_digit(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit())
}

/// Name lookups, behind a trait so tests need no resolver.
trait Lookup {
    /// `gethostbyname`, answering only with an IPv4 address (ipvsadm's `host_to_addr`).
    fn host(&self, name: &str) -> Option<Ipv4Addr>;
    /// `getservbyname(name, proto)`, the port in host order.
    fn service(&self, name: &str, proto: &str) -> Option<u16>;
}

struct SystemLookup;

impl Lookup for SystemLookup {
    fn host(&self, name: &str) -> Option<Ipv4Addr> {
        let c = cstring(name);
        let mut buf = vec![0u8; 2048];
        loop {
            // SAFETY: all-zero is a valid hostent (null pointers, zero ints).
            let mut he: libc::hostent = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::hostent = std::ptr::null_mut();
            let mut herr: c_int = 0;
            // SAFETY: every pointer is valid for the call; `buf` outlives the use of `he`.
            let rc = unsafe {
                gethostbyname_r(
                    c.as_ptr(),
                    &mut he,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                    &mut herr,
                )
            };
            if rc == libc::ERANGE && buf.len() < (1 << 20) {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() || he.h_addrtype != libc::AF_INET || he.h_length != 4 {
                return None;
            }
            // SAFETY: glibc filled h_addr_list (inside `buf`) with h_length-byte addresses.
            unsafe {
                let list = he.h_addr_list;
                if list.is_null() || (*list).is_null() {
                    return None;
                }
                let p = (*list).cast::<u8>();
                return Some(Ipv4Addr::new(*p, *p.add(1), *p.add(2), *p.add(3)));
            }
        }
    }

    fn service(&self, name: &str, proto: &str) -> Option<u16> {
        let n = cstring(name);
        let p = cstring(proto);
        let mut buf = vec![0u8; 1024];
        loop {
            // SAFETY: all-zero is a valid servent.
            let mut se: libc::servent = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::servent = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call.
            let rc = unsafe {
                getservbyname_r(
                    n.as_ptr(),
                    p.as_ptr(),
                    &mut se,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < (1 << 20) {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 || result.is_null() {
                return None;
            }
            return Some(u16::from_be(se.s_port as u16));
        }
    }
}

/// ipvsadm's `service_to_port`.
fn service_to_port(lookup: &dyn Lookup, name: &str, proto: u8) -> Option<u16> {
    let p = match proto {
        IPPROTO_TCP => "tcp",
        IPPROTO_UDP => "udp",
        IPPROTO_SCTP => "sctp",
        _ => return None,
    };
    lookup.service(name, p)
}

/// What ipvsadm's `parse_service` found: `None` is SERVICE_NONE; `port: None` means
/// SERVICE_ADDR alone (no port given).
struct Parsed {
    af: Af,
    /// `None` for IPv6.
    addr: Option<Ipv4Addr>,
    port: Option<u16>,
}

/// ipvsadm 1.31's `parse_service`, quirks included: an all-digit string is rejected (use
/// `-f`); `[v6]:port`; a bare IPv6 literal has no port; `[1.2.3.4]:80` loses its port (the
/// bracket branch's port is overwritten by a search for `:` inside the brackets); the last `:`
/// separates the port; the port is a number 0..65535 or a service name of the service's
/// protocol (none yet if `-r` comes before `-t`).
fn parse_service(buf: &str, proto: u8, lookup: &dyn Lookup) -> Option<Parsed> {
    if str_is_digit(buf) {
        return None;
    }
    let mut host = buf;
    let mut port: Option<&str> = None;
    if let Some(rest) = buf.strip_prefix('[') {
        let close = rest.find(']')?;
        host = &rest[..close];
        port = Some(rest[close + 1..].strip_prefix(':')?);
    }
    if c_inet_pton6(host).is_some() {
        let port = match port {
            Some(p) => Some(parse_port(p, proto, lookup)?),
            None => None,
        };
        return Some(Parsed {
            af: Af::V6,
            addr: None,
            port,
        });
    }
    port = None;
    if let Some(colon) = host.rfind(':') {
        port = Some(&host[colon + 1..]);
        host = &host[..colon];
    }
    let addr = c_inet_aton(host).or_else(|| lookup.host(host))?;
    let port = match port {
        Some(p) => Some(parse_port(p, proto, lookup)?),
        None => None,
    };
    Some(Parsed {
        af: Af::V4,
        addr: Some(addr),
        port,
    })
}

fn parse_port(s: &str, proto: u8, lookup: &dyn Lookup) -> Option<u16> {
    string_to_number(s, 0, 65535)
        .map(|p| p as u16)
        .or_else(|| service_to_port(lookup, s, proto))
}

// ---------------------------------------------------------------------------------------------
// The parse
// ---------------------------------------------------------------------------------------------

/// `fail(2, …)`.
fn fail(message: impl Into<String>) -> CliError {
    CliError::new(message, EXIT_INVALID)
}

/// Everything ipvsadm's `process_options` keeps, plus what this director must refuse.
struct State {
    cmd: Cmd,
    options: u64,
    svc_proto: u8,
    svc_af: Af,
    svc_addr: Option<Ipv4Addr>,
    svc_port: u16,
    fwmark: u32,
    sched: String,
    persistent: Option<u32>,
    ops: bool,
    dest_af: Af,
    dest_addr: Option<Ipv4Addr>,
    dest_port: u16,
    fwd: Fwd,
    weight: u32,
    tun_type: usize,
    sched_flags: String,
    set_timeouts: Option<(u32, u32, u32)>,
    /// An IPv6 service or real address was given.
    ipv6: bool,
    /// This director's refusals, in argv order.
    refusals: Vec<&'static str>,
}

impl State {
    fn new(cmd: Cmd) -> Self {
        State {
            cmd,
            options: 0,
            svc_proto: 0,
            svc_af: Af::Unset,
            svc_addr: None,
            svc_port: 0,
            fwmark: 0,
            sched: String::new(),
            persistent: None,
            ops: false,
            dest_af: Af::Unset,
            dest_addr: None,
            dest_port: 0,
            fwd: Fwd::Droute,
            weight: 1,
            tun_type: 0,
            sched_flags: String::new(),
            set_timeouts: None,
            ipv6: false,
            refusals: Vec::new(),
        }
    }

    fn has(&self, o: usize) -> bool {
        self.options & (1 << o) != 0
    }

    /// ipvsadm's `set_option`.
    fn set_option(&mut self, o: usize) -> Result<(), CliError> {
        if self.has(o) {
            return Err(fail(format!(
                "multiple '{}' options specified",
                OPT_NAMES[o]
            )));
        }
        self.options |= 1 << o;
        Ok(())
    }

    fn refuse(&mut self, message: &'static str) {
        self.refusals.push(message);
    }

    /// One option after the command, as ipvsadm's `switch (c)` in `parse_options`.
    fn apply(
        &mut self,
        opt: Opt,
        arg: Option<String>,
        popt: &Popt,
        lookup: &dyn Lookup,
    ) -> Result<(), CliError> {
        let a = arg.as_deref().unwrap_or("");
        match opt {
            Opt::TcpService | Opt::UdpService | Opt::SctpService => {
                self.set_option(O_SERVICE)?;
                self.svc_proto = match opt {
                    Opt::TcpService => IPPROTO_TCP,
                    Opt::UdpService => IPPROTO_UDP,
                    _ => IPPROTO_SCTP,
                };
                let p = parse_service(a, self.svc_proto, lookup)
                    .ok_or_else(|| fail("illegal virtual server address[:port] specified"))?;
                self.svc_af = p.af;
                self.svc_addr = p.addr;
                if let Some(port) = p.port {
                    self.svc_port = port;
                }
                self.ipv6 |= p.af == Af::V6;
                if opt == Opt::SctpService {
                    self.refuse(SCTP_UNSUPPORTED);
                }
            }
            Opt::FwmarkService => {
                self.set_option(O_SERVICE)?;
                self.svc_af = Af::V4;
                self.svc_proto = IPPROTO_TCP;
                let (v, erange, end) = c_strtoul(a);
                if end != a.len() || end == 0 || erange || v == 0 || v > u64::from(u32::MAX) {
                    return Err(fail(format!("invalid fwmark value `{a}' specified")));
                }
                self.fwmark = v as u32;
                self.refuse(FWMARK_UNSUPPORTED);
            }
            Opt::Scheduler => {
                self.set_option(O_SCHEDULER)?;
                self.sched = a.to_string();
            }
            Opt::Persistent => {
                self.set_option(O_PERSISTENT)?;
                self.persistent = Some(parse_timeout(arg.as_deref(), 1, MAX_TIMEOUT)?);
            }
            Opt::Netmask => {
                self.set_option(O_NETMASK)?;
                if self.svc_af != Af::V6 {
                    let mask = c_inet_aton(a)
                        .or_else(|| lookup.host(a))
                        .ok_or_else(|| fail("illegal virtual server persistent mask specified"))?;
                    if mask != Ipv4Addr::BROADCAST {
                        self.refuse(NETMASK_UNSUPPORTED);
                    }
                } else {
                    // `netmask` is a u_int32_t holding atoi()'s int.
                    let m = c_atoi(a) as u32;
                    if !(1..=128).contains(&m) {
                        return Err(fail("illegal ipv6 netmask specified"));
                    }
                }
            }
            Opt::RealServer => {
                self.set_option(O_SERVER)?;
                // Parsed into a copy of the service: its protocol names the port, its port is
                // kept when none is given.
                let p = parse_service(a, self.svc_proto, lookup)
                    .ok_or_else(|| fail("illegal real server address[:port] specified"))?;
                self.dest_af = p.af;
                self.dest_addr = p.addr;
                self.dest_port = p.port.unwrap_or(self.svc_port);
                self.ipv6 |= p.af == Af::V6;
            }
            Opt::Ipip | Opt::Gatewaying | Opt::Masquerading => {
                self.set_option(O_FORWARD)?;
                self.fwd = match opt {
                    Opt::Ipip => Fwd::Tunnel,
                    Opt::Gatewaying => {
                        self.refuse(DIRECT_ROUTING_UNSUPPORTED);
                        Fwd::Droute
                    }
                    _ => {
                        self.refuse(MASQUERADING_UNSUPPORTED);
                        Fwd::Masq
                    }
                };
            }
            Opt::Weight => {
                self.set_option(O_WEIGHT)?;
                self.weight = string_to_number(a, 0, i32::MAX.into())
                    .ok_or_else(|| fail("illegal weight specified"))?
                    as u32;
            }
            Opt::UThreshold => {
                self.set_option(O_UTHRESHOLD)?;
                string_to_number(a, 0, i32::MAX.into())
                    .ok_or_else(|| fail("illegal u_threshold specified"))?;
                self.refuse(UTHRESHOLD_UNSUPPORTED);
            }
            Opt::LThreshold => {
                self.set_option(O_LTHRESHOLD)?;
                string_to_number(a, 0, i32::MAX.into())
                    .ok_or_else(|| fail("illegal l_threshold specified"))?;
                self.refuse(LTHRESHOLD_UNSUPPORTED);
            }
            Opt::Numeric => self.set_option(O_NUMERIC)?,
            Opt::Connection => self.set_option(O_CONNECTION)?,
            Opt::McastInterface => self.set_option(O_MCAST)?,
            Opt::Syncid => {
                self.set_option(O_SYNCID)?;
                string_to_number(a, 0, 255).ok_or_else(|| fail("illegal syncid specified"))?;
            }
            Opt::Timeout => self.set_option(O_TIMEOUT)?,
            Opt::Daemon => self.set_option(O_DAEMON)?,
            Opt::Stats => self.set_option(O_STATS)?,
            Opt::Rate => self.set_option(O_RATE)?,
            Opt::Thresholds => self.set_option(O_THRESHOLDS)?,
            Opt::PersistentConn => self.set_option(O_PERSISTENTCONN)?,
            Opt::NoSort => self.set_option(O_NOSORT)?,
            // "Sort is the default, this is a no-op for compatibility": not even counted.
            Opt::Sort => {}
            Opt::Exact => self.set_option(O_EXACT)?,
            Opt::Ipv6 => {
                // Not an option of the legality matrix, and may be repeated.
                if self.fwmark == 0 {
                    return Err(fail("-6 used before -f"));
                }
                self.svc_af = Af::V6;
                self.refuse(IPV6_FWMARK_UNSUPPORTED);
            }
            Opt::Ops => {
                self.set_option(O_ONEPACKET)?;
                self.ops = true;
                self.refuse(OPS_UNSUPPORTED);
            }
            Opt::Pe => {
                self.set_option(O_PE)?;
                self.refuse(PE_UNSUPPORTED);
            }
            Opt::SchedFlags => {
                self.set_option(O_SCHED_FLAGS)?;
                // snprintf into char[128].
                self.sched_flags = crate::ipvsadm_format::cut(a, 127).to_string();
                self.refuse(SCHED_FLAGS_UNSUPPORTED);
            }
            Opt::McastGroup => {
                self.set_option(O_MCAST_GROUP)?;
                // IN6_IS_ADDR_MULTICAST / IN_MULTICAST.
                if a.contains(':') {
                    if c_inet_pton6(a).is_none_or(|g| g[0] != 0xff) {
                        return Err(fail(format!("invalid IPv6 mcast-group `{a}'")));
                    }
                } else if c_inet_pton4(a).is_none_or(|g| !g.is_multicast()) {
                    return Err(fail(format!("invalid IPv4 mcast-group `{a}'")));
                }
            }
            Opt::McastPort => {
                self.set_option(O_MCAST_PORT)?;
                string_to_number(a, 1, 65535)
                    .ok_or_else(|| fail("illegal mcast-port specified"))?;
            }
            Opt::McastTtl => {
                self.set_option(O_MCAST_TTL)?;
                string_to_number(a, 1, 255).ok_or_else(|| fail("illegal mcast-ttl specified"))?;
            }
            Opt::SyncMaxlen => {
                self.set_option(O_SYNC_MAXLEN)?;
                string_to_number(a, 1, 65535 - 20 - 8)
                    .ok_or_else(|| fail("illegal sync-maxlen specified"))?;
            }
            Opt::TunInfo => self.set_option(O_TUN_INFO)?,
            Opt::TunType => {
                self.set_option(O_TUN_TYPE)?;
                self.tun_type = TUN_NAMES
                    .iter()
                    .position(|&n| n == a)
                    .ok_or_else(|| fail("illegal tunnel type specified"))?;
                match self.tun_type {
                    1 => self.refuse(TUN_TYPE_GUE_UNSUPPORTED),
                    2 => self.refuse(TUN_TYPE_GRE_UNSUPPORTED),
                    _ => {}
                }
            }
            Opt::TunPort => {
                self.set_option(O_TUN_PORT)?;
                string_to_number(a, 1, 65535)
                    .ok_or_else(|| fail("illegal tunnel port specified"))?;
                self.refuse(TUN_PORT_UNSUPPORTED);
            }
            Opt::TunNocsum => {
                self.set_option(O_TUN_NOCSUM)?;
                self.refuse(TUN_NOCSUM_UNSUPPORTED);
            }
            Opt::TunCsum => {
                self.set_option(O_TUN_CSUM)?;
                self.refuse(TUN_CSUM_UNSUPPORTED);
            }
            Opt::TunRemcsum => {
                self.set_option(O_TUN_REMCSUM)?;
                self.refuse(TUN_REMCSUM_UNSUPPORTED);
            }
            Opt::Json => self.set_option(O_JSON)?,
            // A second command (and -h, -v): ipvsadm's `default:` branch.
            Opt::AddService
            | Opt::EditService
            | Opt::DeleteService
            | Opt::Clear
            | Opt::ListL
            | Opt::Listl
            | Opt::Zero
            | Opt::AddServer
            | Opt::EditServer
            | Opt::DeleteServer
            | Opt::Set
            | Opt::Help
            | Opt::Version
            | Opt::Restore
            | Opt::Save
            | Opt::StartDaemon
            | Opt::StopDaemon => {
                return Err(fail(format!("invalid option `{}'", popt.bad_option())));
            }
        }
        Ok(())
    }

    /// ipvsadm's `generic_opt_check`.
    fn generic_opt_check(&self) -> Result<(), CliError> {
        let row = LEGALITY[self.cmd as usize];
        let cmd = CMD_NAMES[self.cmd as usize];
        let mut last: Option<usize> = None;
        for j in 0..NOPT {
            if !self.has(j) {
                if row[j] == b'+' {
                    return Err(fail(format!(
                        "You need to supply the '{}' option for the '{cmd}' command",
                        OPT_NAMES[j]
                    )));
                }
            } else {
                if row[j] == b'x' {
                    return Err(fail(format!(
                        "Illegal '{}' option with the '{cmd}' command",
                        OPT_NAMES[j]
                    )));
                }
                if row[j] == b'1' {
                    if let Some(l) = last {
                        return Err(fail(format!(
                            "The option '{}' conflicts with the '{}' option in the '{cmd}' command",
                            OPT_NAMES[j], OPT_NAMES[l]
                        )));
                    }
                    last = Some(j);
                }
            }
        }
        Ok(())
    }

    /// ipvsadm's `tunnel_opt_check`.
    fn tunnel_opt_check(&self) -> Result<(), CliError> {
        let row = TUN_LEGALITY[self.tun_type];
        let tun = TUN_NAMES[self.tun_type];
        let mut last: Option<usize> = None;
        for (j, &k) in TUN_OPTS.iter().enumerate() {
            if !self.has(k) {
                if row[j] == b'+' {
                    return Err(fail(format!(
                        "You need to supply the '{}' option for the '{tun}' tunnel type",
                        OPT_NAMES[k]
                    )));
                }
            } else {
                if row[j] == b'x' {
                    return Err(fail(format!(
                        "Illegal '{}' option with the '{tun}' tunnel type",
                        OPT_NAMES[k]
                    )));
                }
                if row[j] == b'1' {
                    if let Some(l) = last {
                        return Err(fail(format!(
                            "The option '{}' conflicts with the '{}' option in the '{tun}' tunnel type",
                            OPT_NAMES[k], OPT_NAMES[l]
                        )));
                    }
                    last = Some(k);
                }
            }
        }
        Ok(())
    }

    fn into_invocation(self) -> Invocation {
        let command = match self.cmd {
            Cmd::Add => Command::AddService,
            Cmd::Edit => Command::EditService,
            Cmd::Del => Command::DeleteService,
            Cmd::Flush => Command::Clear,
            Cmd::List => Command::List,
            Cmd::AddDest => Command::AddServer,
            Cmd::DelDest => Command::DeleteServer,
            Cmd::EditDest => Command::EditServer,
            Cmd::Timeout => Command::Set,
            Cmd::StartDaemon => Command::StartDaemon,
            Cmd::StopDaemon => Command::StopDaemon,
            Cmd::Restore => Command::Restore,
            Cmd::Save => Command::Save,
            Cmd::Zero => Command::Zero,
        };
        let mut inv = Invocation::bare(command);
        if self.has(O_SERVICE) {
            let proto = match self.svc_proto {
                IPPROTO_TCP if self.fwmark == 0 => Some(Proto::Tcp),
                IPPROTO_UDP => Some(Proto::Udp),
                _ => None,
            };
            inv.service = proto.zip(self.svc_addr).map(|(proto, addr)| ServiceAddr {
                proto,
                addr,
                port: self.svc_port,
            });
        }
        if self.has(O_SCHEDULER) && !self.sched.is_empty() {
            inv.scheduler = Some(self.sched.clone());
        }
        inv.persistent = self.persistent;
        if self.has(O_SERVER) {
            inv.real = self.dest_addr.map(|a| (a, self.dest_port));
        }
        if self.has(O_WEIGHT) {
            inv.weight = Some(self.weight);
        }
        inv.numeric = self.has(O_NUMERIC);
        inv.connection = self.has(O_CONNECTION);
        inv.timeout = self.has(O_TIMEOUT);
        inv.daemon = self.has(O_DAEMON);
        inv.stats = self.has(O_STATS);
        inv.rate = self.has(O_RATE);
        inv.exact = self.has(O_EXACT);
        inv.nosort = self.has(O_NOSORT);
        inv.json = self.has(O_JSON);
        inv.thresholds = self.has(O_THRESHOLDS);
        inv.persistent_conn = self.has(O_PERSISTENTCONN);
        inv.tun_info = self.has(O_TUN_INFO);
        inv.set_timeouts = self.set_timeouts;
        inv
    }
}

/// ipvsadm's `parse_timeout`: no value (only `-p` can have none) is 360.
fn parse_timeout(buf: Option<&str>, min: i64, max: i64) -> Result<u32, CliError> {
    match buf {
        None => Ok(DEFAULT_PERSISTENT_TIMEOUT),
        Some(b) => string_to_number(b, min, max)
            .map(|v| v as u32)
            .ok_or_else(|| fail(format!("invalid timeout value `{b}' specified"))),
    }
}

/// ipvsadm's `parse_sched_flags`, on the scheduler named so far (empty if `-s` is absent:
/// ipvsadm fills in its default later).
fn parse_sched_flags(sched: &str, arg: &str) -> Result<(), CliError> {
    let mut any = false;
    for flag in arg.split(',').filter(|f| !f.is_empty()) {
        any = true;
        let needs = match flag {
            "flag-1" | "flag-2" | "flag-3" => None,
            "sh-fallback" | "sh-port" => Some("sh"),
            "mh-fallback" | "mh-port" => Some("mh"),
            _ => return Err(fail(format!("invalid scheduler flag `{flag}'"))),
        };
        if needs.is_some_and(|s| s != sched) {
            return Err(fail(format!("incompatible scheduler flag `{flag}'")));
        }
    }
    if !any {
        // ipvsadm dereferences strtok's NULL here and crashes.
        return Err(fail(format!("invalid scheduler flag `{arg}'")));
    }
    Ok(())
}

enum Raw {
    /// `-h`, `-v`, or no arguments: decided before the rest is read.
    Early(Command),
    Full(Box<State>),
}

/// Exactly ipvsadm 1.31's `process_options` up to the kernel call: `Ok` when ipvsadm would go
/// on to the kernel (this director's refusals and IPv6 are in the state, not applied).
fn parse_raw(program: &str, args: &[String], lookup: &dyn Lookup) -> Result<Raw, CliError> {
    if args.is_empty() {
        return Ok(Raw::Early(Command::List));
    }
    // C sees each argument up to its first NUL.
    let argv: Vec<&str> = args
        .iter()
        .map(|a| a.split('\0').next().unwrap_or(""))
        .collect();
    let mut popt = Popt::new(&argv);
    let try_help_error = || CliError::new(try_help(program), EXIT_USAGE);
    let (first, arg) = match popt.next_opt() {
        Ok(Some(o)) => o,
        Ok(None) | Err(_) => return Err(try_help_error()),
    };
    let cmd = match first {
        Opt::AddService => Cmd::Add,
        Opt::EditService => Cmd::Edit,
        Opt::DeleteService => Cmd::Del,
        Opt::AddServer => Cmd::AddDest,
        Opt::EditServer => Cmd::EditDest,
        Opt::DeleteServer => Cmd::DelDest,
        Opt::Clear => Cmd::Flush,
        Opt::ListL | Opt::Listl => Cmd::List,
        Opt::Zero => Cmd::Zero,
        Opt::Set => Cmd::Timeout,
        Opt::Restore => Cmd::Restore,
        Opt::Save => Cmd::Save,
        Opt::StartDaemon | Opt::StopDaemon => {
            let a = arg.as_deref().unwrap_or("");
            if a != "master" && a != "backup" {
                return Err(fail(if first == Opt::StartDaemon {
                    "illegal start-daemon parameter specified"
                } else {
                    // sic
                    "illegal start_daemon specified"
                }));
            }
            if first == Opt::StartDaemon {
                Cmd::StartDaemon
            } else {
                Cmd::StopDaemon
            }
        }
        Opt::Help => return Ok(Raw::Early(Command::Help)),
        Opt::Version => return Ok(Raw::Early(Command::Version)),
        _ => return Err(try_help_error()),
    };
    let mut st = State::new(cmd);
    loop {
        match popt.next_opt() {
            Ok(None) => break,
            Ok(Some((opt, arg))) => st.apply(opt, arg, &popt, lookup)?,
            Err(e) => {
                return Err(CliError::new(
                    format!("{}: {}", popt.bad_option(), e.text()),
                    EXIT_USAGE,
                ));
            }
        }
    }
    if cmd == Cmd::Timeout {
        let (Some(tcp), Some(fin), Some(udp)) = (popt.get_arg(), popt.get_arg(), popt.get_arg())
        else {
            return Err(fail("--set option requires 3 timeout values"));
        };
        st.set_timeouts = Some((
            parse_timeout(Some(tcp), 0, MAX_TIMEOUT)?,
            parse_timeout(Some(fin), 0, MAX_TIMEOUT)?,
            parse_timeout(Some(udp), 0, MAX_TIMEOUT)?,
        ));
    }
    if let Some(extra) = popt.get_arg() {
        return Err(fail(format!("unexpected argument {extra}")));
    }
    if !st.sched_flags.is_empty() {
        parse_sched_flags(&st.sched, &st.sched_flags)?;
    }

    st.generic_opt_check()?;
    if matches!(cmd, Cmd::Add | Cmd::Edit) {
        if st.fwmark == 0 && st.svc_port == 0 && st.persistent.is_none() {
            return Err(fail("Zero port specified for non-persistent service"));
        }
        if st.ops && st.fwmark == 0 && st.svc_proto != IPPROTO_UDP {
            return Err(fail(
                "One-Packet Scheduling is only for UDP virtual services",
            ));
        }
    }
    if matches!(cmd, Cmd::AddDest | Cmd::EditDest) {
        // The real port is the virtual port for -i and -g (for us: always, -m being refused).
        if st.fwmark == 0 && matches!(st.fwd, Fwd::Tunnel | Fwd::Droute) {
            st.dest_port = st.svc_port;
        }
        if st.dest_af != st.svc_af && st.fwd != Fwd::Tunnel {
            return Err(fail(
                "Different address family is allowed only for tunneling servers",
            ));
        }
        let tun_opts = [
            O_TUN_TYPE,
            O_TUN_PORT,
            O_TUN_NOCSUM,
            O_TUN_CSUM,
            O_TUN_REMCSUM,
        ];
        if tun_opts.iter().any(|&o| st.has(o)) && st.fwd != Fwd::Tunnel {
            return Err(fail("Tunnel options conflict with forward method"));
        }
        st.tunnel_opt_check()?;
    }
    if cmd == Cmd::List {
        let modes = st.has(O_CONNECTION) || st.has(O_TIMEOUT) || st.has(O_DAEMON);
        let columns = st.has(O_STATS) || st.has(O_RATE) || st.has(O_THRESHOLDS);
        if (modes && columns)
            || ((st.has(O_TIMEOUT) || st.has(O_DAEMON)) && st.has(O_PERSISTENTCONN))
            // Ours: --json renders the service table only.
            || (modes && st.has(O_JSON))
        {
            return Err(fail("options conflicts in the list command"));
        }
    }
    Ok(Raw::Full(Box::new(st)))
}

fn parse_with(program: &str, args: &[String], lookup: &dyn Lookup) -> Result<Invocation, CliError> {
    let st = match parse_raw(program, args, lookup)? {
        Raw::Early(command) => return Ok(Invocation::bare(command)),
        Raw::Full(st) => st,
    };
    if let Some(&message) = st.refusals.first() {
        return Err(fail(message));
    }
    if st.ipv6 {
        return Err(CliError::new(IPV6_UNSUPPORTED, EXIT_USAGE));
    }
    Ok(st.into_invocation())
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// No resolver needed: `localhost` and `director` are hosts, `http` is 80/tcp only (as in
    /// Debian's /etc/services), `mysql` 3306/tcp.
    struct FakeLookup;

    impl Lookup for FakeLookup {
        fn host(&self, name: &str) -> Option<Ipv4Addr> {
            match name {
                "localhost" => Some(Ipv4Addr::LOCALHOST),
                "director" => Some(Ipv4Addr::new(198, 18, 0, 100)),
                _ => None,
            }
        }
        fn service(&self, name: &str, proto: &str) -> Option<u16> {
            match (name, proto) {
                ("http", "tcp") => Some(80),
                ("mysql", "tcp") => Some(3306),
                _ => None,
            }
        }
    }

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    fn p(s: &str) -> Result<Invocation, CliError> {
        parse_with(PROGRAM, &argv(s), &FakeLookup)
    }

    fn pv(v: &[&str]) -> Result<Invocation, CliError> {
        let v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        parse_with(PROGRAM, &v, &FakeLookup)
    }

    fn ok(s: &str) -> Invocation {
        p(s).unwrap_or_else(|e| panic!("{s:?} was rejected: {e:?}"))
    }

    #[track_caller]
    fn err(s: &str, message: &str, code: i32) {
        assert_eq!(p(s), Err(CliError::new(message, code)), "{s:?}");
    }

    #[track_caller]
    fn err2(s: &str, message: &str) {
        err(s, message, 2)
    }

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
    const RIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);

    fn svc(proto: Proto, port: u16) -> Option<ServiceAddr> {
        Some(ServiceAddr {
            proto,
            addr: VIP,
            port,
        })
    }

    // --- commands, bundling -------------------------------------------------------------

    #[test]
    fn no_arguments_is_list_without_numeric() {
        assert_eq!(p(""), Ok(Invocation::bare(Command::List)));
        assert!(!ok("").numeric);
    }

    #[test]
    fn every_command_short_and_long() {
        let cases = [
            ("-A -t 198.18.0.100:80", Command::AddService),
            ("--add-service -t 198.18.0.100:80", Command::AddService),
            ("-E -t 198.18.0.100:80", Command::EditService),
            ("--edit-service -t 198.18.0.100:80", Command::EditService),
            ("-D -t 198.18.0.100:80", Command::DeleteService),
            (
                "--delete-service -t 198.18.0.100:80",
                Command::DeleteService,
            ),
            ("-C", Command::Clear),
            ("--clear", Command::Clear),
            ("-R", Command::Restore),
            ("--restore", Command::Restore),
            ("-S", Command::Save),
            ("--save", Command::Save),
            ("-a -t 198.18.0.100:80 -r 198.18.0.11", Command::AddServer),
            (
                "--add-server -t 198.18.0.100:80 -r 198.18.0.11",
                Command::AddServer,
            ),
            ("-e -t 198.18.0.100:80 -r 198.18.0.11", Command::EditServer),
            (
                "--edit-server -t 198.18.0.100:80 -r 198.18.0.11",
                Command::EditServer,
            ),
            (
                "-d -t 198.18.0.100:80 -r 198.18.0.11",
                Command::DeleteServer,
            ),
            (
                "--delete-server -t 198.18.0.100:80 -r 198.18.0.11",
                Command::DeleteServer,
            ),
            ("-L", Command::List),
            ("-l", Command::List),
            ("--list", Command::List),
            ("-Z", Command::Zero),
            ("--zero", Command::Zero),
            ("--set 900 120 300", Command::Set),
            ("--start-daemon master", Command::StartDaemon),
            ("--start-daemon backup", Command::StartDaemon),
            ("--stop-daemon master", Command::StopDaemon),
            ("-h", Command::Help),
            ("--help", Command::Help),
            ("-v", Command::Version),
            ("--version", Command::Version),
        ];
        for (line, command) in cases {
            assert_eq!(ok(line).command, command, "{line}");
        }
    }

    #[test]
    fn bundled_short_options() {
        let i = ok("-Ln");
        assert_eq!(
            (i.command, i.numeric, i.connection),
            (Command::List, true, false)
        );
        let i = ok("-Lnc");
        assert_eq!(
            (i.command, i.numeric, i.connection),
            (Command::List, true, true)
        );
        let i = ok("-Sn");
        assert_eq!((i.command, i.numeric), (Command::Save, true));
        let i = ok("-At 198.18.0.100:6033");
        assert_eq!(
            (i.command, i.service),
            (Command::AddService, svc(Proto::Tcp, 6033))
        );
        assert_eq!(i.scheduler, None);
        let i = ok("-at 198.18.0.100:6033 -r 198.18.0.11 -w 3");
        assert_eq!(i.command, Command::AddServer);
        assert_eq!(i.service, svc(Proto::Tcp, 6033));
        assert_eq!(i.real, Some((RIP, 6033)));
        assert_eq!(i.weight, Some(3));
        // The argument in the same element, with or without '='.
        assert_eq!(ok("-At198.18.0.100:6033").service, svc(Proto::Tcp, 6033));
        assert_eq!(ok("-At=198.18.0.100:6033").service, svc(Proto::Tcp, 6033));
        assert_eq!(ok("-A -t=198.18.0.100:6033").service, svc(Proto::Tcp, 6033));
        // Options after a bundle's command, and bundles of options.
        let i = ok("-L -nc");
        assert!(i.numeric && i.connection);
        let i = ok("-aw3 -t 198.18.0.100:6033 -ir198.18.0.11");
        assert_eq!((i.weight, i.real), (Some(3), Some((RIP, 6033))));
        let i = ok("-LnX --stats");
        assert!(i.numeric && i.exact && i.stats);
    }

    #[test]
    fn long_options_take_equals_or_next_element() {
        let i = ok("--add-service --tcp-service=198.18.0.100:6033 --scheduler=rr --persistent=600");
        assert_eq!(i.service, svc(Proto::Tcp, 6033));
        assert_eq!(i.scheduler.as_deref(), Some("rr"));
        assert_eq!(i.persistent, Some(600));
        let i = ok("--add-service --udp-service 198.18.0.100:53 --scheduler mh");
        assert_eq!(i.service, svc(Proto::Udp, 53));
        assert_eq!(i.scheduler.as_deref(), Some("mh"));
        let i = ok(
            "--add-server --tcp-service 198.18.0.100:80 --real-server=198.18.0.11 --weight 0 --ipip",
        );
        assert_eq!((i.real, i.weight), (Some((RIP, 80)), Some(0)));
        let i = ok("--list --numeric --stats --rate --exact --nosort --sort --sort");
        assert!(i.numeric && i.stats && i.rate && i.exact && i.nosort);
        // No abbreviations in popt.
        err("-L --numer", "--numer: unknown option", 255);
    }

    #[test]
    fn first_option_must_be_the_command() {
        let th = "Try `lbadm -h' or 'lbadm --help' for more information.";
        err("-t 198.18.0.100:80 -A", th, 255);
        err("-n -L", th, 255);
        err("--tcp-service 198.18.0.100:80", th, 255);
        err("-p -A", th, 255);
        // A popt error on the first option, or no option at all, is try-help too.
        err("--foo -L", th, 255);
        err("-q", th, 255);
        err("-L=", th, 255);
        err("--start-daemon", th, 255);
        err("-- -L", th, 255);
        err("foo", th, 255);
        // The program name is ipvsadm's argv[0].
        assert_eq!(
            parse_with("/usr/sbin/ipvsadm", &argv("-t x"), &FakeLookup)
                .unwrap_err()
                .message,
            "Try `/usr/sbin/ipvsadm -h' or '/usr/sbin/ipvsadm --help' for more information."
        );
        assert_eq!(try_help("lbadm"), th);
    }

    #[test]
    fn help_and_version_first_ignore_the_rest() {
        assert_eq!(ok("-h --bogus -t").command, Command::Help);
        assert_eq!(ok("-hv").command, Command::Help);
        assert_eq!(ok("-v -x 7 junk").command, Command::Version);
        // After the command, they are a second command.
        err2("-Lh", "invalid option `-Lh'");
        err2("-L -h", "invalid option `-h'");
        err2("-L --version", "invalid option `--version'");
    }

    #[test]
    fn a_second_command_is_an_invalid_option() {
        err2("-A -t 198.18.0.100:80 -D", "invalid option `-D'");
        err2("-L -nA", "invalid option `-nA'");
        err2("-L -l", "invalid option `-l'");
        err2("-L -list", "invalid option `-list'");
        err2(
            "-A -t 198.18.0.100:80 --add-service",
            "invalid option `--add-service'",
        );
        err2("-C --set 1 2 3", "invalid option `--set'");
        // popt names the element it read last: here the daemon state.
        err2("-A --start-daemon master", "invalid option `master'");
        err2(
            "-A --start-daemon=master",
            "invalid option `--start-daemon=master'",
        );
    }

    #[test]
    fn popt_errors_after_the_command() {
        err("-A -t 198.18.0.100:80 --foo", "--foo: unknown option", 255);
        err("-L -q", "-q: unknown option", 255);
        err("-Lq", "-Lq: unknown option", 255);
        err("-Aq", "-Aq: unknown option", 255);
        err("-L ---foo", "---foo: unknown option", 255);
        err("-L --=x", "--=x: unknown option", 255);
        err("-A -t", "-t: missing argument", 255);
        err("-At", "-At: missing argument", 255);
        err("-A -t 198.18.0.100:80 -t", "-t: missing argument", 255);
        err(
            "-A --numeric=1",
            "--numeric=1: option does not take an argument",
            255,
        );
        err("-A -n=1", "-n=1: option does not take an argument", 255);
        err("-L -n=", "-n=: option does not take an argument", 255);
        err("-Ln=", "-Ln=: option does not take an argument", 255);
        // --json is ours: not an unknown option.
        assert!(ok("-L --json").json);
    }

    #[test]
    fn leftover_arguments() {
        err2("-C x", "unexpected argument x");
        err2("foo -L", "unexpected argument foo");
        err2("-L -- -n", "unexpected argument -n");
        err2("-L -", "unexpected argument -");
        err2("-A -t 198.18.0.100:80 -s rr wrr", "unexpected argument wrr");
        assert_eq!(pv(&["-L", ""]), Err(fail("unexpected argument ")));
    }

    #[test]
    fn each_option_at_most_once() {
        err2(
            "-A -t 198.18.0.100:80 -t 198.18.0.100:81",
            "multiple 'service-address' options specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -u 198.18.0.100:81",
            "multiple 'service-address' options specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -s rr -s wrr",
            "multiple 'scheduler' options specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p 5 -p 6",
            "multiple 'persistent' options specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p -p",
            "multiple 'persistent' options specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -r 198.18.0.12",
            "multiple 'real-server' options specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -w 1 -w 2",
            "multiple 'weight' options specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i -i",
            "multiple 'forwarding-method' options specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -g -i",
            "multiple 'forwarding-method' options specified",
        );
        err2("-L -c -c", "multiple 'connection' options specified");
        err2("-Lnn", "multiple 'numeric' options specified");
        err2(
            "-L --nosort --nosort",
            "multiple 'nosort' options specified",
        );
        err2("-L --exact -X", "multiple 'exact' options specified");
        err2("-L --json --json", "multiple 'json' options specified");
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i --tun-type ipip --tun-type ipip",
            "multiple 'tun-type' options specified",
        );
        // --sort is not counted.
        assert!(p("-L --sort --sort").is_ok());
    }

    // --- -p ---------------------------------------------------------------------------------

    #[test]
    fn persistent_optional_timeout() {
        assert_eq!(ok("-A -t 198.18.0.100:80 -p").persistent, Some(360));
        assert_eq!(
            ok("-A -t 198.18.0.100:80 --persistent").persistent,
            Some(360)
        );
        assert_eq!(ok("-A -t 198.18.0.100:80 -p 600").persistent, Some(600));
        assert_eq!(ok("-A -t 198.18.0.100:80 -p600").persistent, Some(600));
        assert_eq!(ok("-Ap 600 -t 198.18.0.100:80").persistent, Some(600));
        // The next element is not taken when it starts with '-'.
        let i = ok("-A -p -t 198.18.0.100:0 -s wrr");
        assert_eq!((i.persistent, i.service), (Some(360), svc(Proto::Tcp, 0)));
        assert_eq!(
            ok("-A -t 198.18.0.100:80 -p -s rr").scheduler.as_deref(),
            Some("rr")
        );
        // Range 1..=2678400 (31 days).
        assert_eq!(ok("-A -t 198.18.0.100:80 -p 1").persistent, Some(1));
        assert_eq!(
            ok("-A -t 198.18.0.100:80 -p 2678400").persistent,
            Some(2678400)
        );
        err2(
            "-A -t 198.18.0.100:80 -p 0",
            "invalid timeout value `0' specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p 2678401",
            "invalid timeout value `2678401' specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p abc",
            "invalid timeout value `abc' specified",
        );
        // The rest of a bundle is the value, whatever it is.
        err2(
            "-A -t 198.18.0.100:80 -pn",
            "invalid timeout value `n' specified",
        );
        err2(
            "-A -t 198.18.0.100:80 --persistent=",
            "invalid timeout value `' specified",
        );
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-p", ""]),
            Err(fail("invalid timeout value `' specified"))
        );
        // strtol: leading blanks and a sign are fine, trailing ones are not.
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-p", " +600"])
                .unwrap()
                .persistent,
            Some(600)
        );
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-p", "600 "]),
            Err(fail("invalid timeout value `600 ' specified"))
        );
    }

    // --- -w ---------------------------------------------------------------------------------

    #[test]
    fn weight_range() {
        let w = |v: &str| pv(&["-a", "-t", "198.18.0.100:80", "-r", "198.18.0.11", "-w", v]);
        assert_eq!(w("0").unwrap().weight, Some(0));
        assert_eq!(w("1").unwrap().weight, Some(1));
        assert_eq!(w("2147483647").unwrap().weight, Some(2147483647));
        assert_eq!(w("-0").unwrap().weight, Some(0));
        assert_eq!(w("+7").unwrap().weight, Some(7));
        for bad in [
            "2147483648",
            "-1",
            "abc",
            "",
            "3x",
            "0x10",
            "99999999999999999999999",
        ] {
            assert_eq!(w(bad), Err(fail("illegal weight specified")), "{bad:?}");
        }
        assert_eq!(ok("-a -t 198.18.0.100:80 -r 198.18.0.11").weight, None);
        assert_eq!(ok("-e -t 198.18.0.100:80 -r 198.18.0.11").weight, None);
    }

    // --- addresses --------------------------------------------------------------------------

    #[test]
    fn service_addresses() {
        let s = |a: &str| pv(&["-L", "-t", a]).map(|i| i.service.unwrap());
        let at = |a: [u8; 4], port| ServiceAddr {
            proto: Proto::Tcp,
            addr: Ipv4Addr::from(a),
            port,
        };
        assert_eq!(s("198.18.0.100:6033"), Ok(at([198, 18, 0, 100], 6033)));
        assert_eq!(s("198.18.0.100"), Ok(at([198, 18, 0, 100], 0)));
        assert_eq!(s("198.18.0.100:65535"), Ok(at([198, 18, 0, 100], 65535)));
        assert_eq!(s("198.18.0.100:http"), Ok(at([198, 18, 0, 100], 80)));
        assert_eq!(s("director:mysql"), Ok(at([198, 18, 0, 100], 3306)));
        assert_eq!(s("localhost:80"), Ok(at([127, 0, 0, 1], 80)));
        // inet_aton's shorthand forms, and what follows a blank.
        assert_eq!(s("10.1:80"), Ok(at([10, 0, 0, 1], 80)));
        assert_eq!(s("0x7f.1:80"), Ok(at([127, 0, 0, 1], 80)));
        assert_eq!(s("1:80"), Ok(at([0, 0, 0, 1], 80)));
        assert_eq!(s("1.2.3.4 junk:80"), Ok(at([1, 2, 3, 4], 80)));
        assert_eq!(s("1.2.3.4:+80"), Ok(at([1, 2, 3, 4], 80)));
        // [v4]:port loses its port, as in ipvsadm.
        assert_eq!(s("[1.2.3.4]:80"), Ok(at([1, 2, 3, 4], 0)));
        let bad = "illegal virtual server address[:port] specified";
        for a in [
            "",
            "80",
            "6033",
            ":80",
            "1.2.3.4:",
            "1.2.3.4:65536",
            "1.2.3.4:-1",
            "nosuchhost:80",
            "1.2.3.4:nosuchservice",
            "[::1]",
            "[::1]80",
            "[::1",
            "1.2.3.4:80:81",
            "-L",
        ] {
            assert_eq!(s(a), Err(fail(bad)), "{a:?}");
        }
        // Service names are looked up for the service's protocol.
        err2("-A -u 198.18.0.100:http", bad);
        assert_eq!(ok("-A -t 198.18.0.100:http").service, svc(Proto::Tcp, 80));
    }

    #[test]
    fn service_names_through_the_system() {
        // /etc/services has http 80/tcp here; no resolver is needed for a dotted quad.
        let i = parse(&argv("-A -t 198.18.0.100:http")).unwrap();
        assert_eq!(i.service, svc(Proto::Tcp, 80));
        assert_eq!(
            parse(&argv("-A -t 198.18.0.100:6033")).unwrap().service,
            svc(Proto::Tcp, 6033)
        );
        assert_eq!(
            parse(&argv("-A -t 198.18.0.100:nosuchservice")),
            Err(fail("illegal virtual server address[:port] specified"))
        );
        assert_eq!(SystemLookup.service("http", "tcp"), Some(80));
    }

    #[test]
    fn zero_port_needs_persistence() {
        err2(
            "-A -t 198.18.0.100",
            "Zero port specified for non-persistent service",
        );
        err2(
            "-A -t 198.18.0.100:0",
            "Zero port specified for non-persistent service",
        );
        err2(
            "-E -u 198.18.0.100:0 -s rr",
            "Zero port specified for non-persistent service",
        );
        let i = ok("-A -t 198.18.0.100:0 -p");
        assert_eq!((i.service, i.persistent), (svc(Proto::Tcp, 0), Some(360)));
        assert_eq!(ok("-E -t 198.18.0.100 -p 60").service, svc(Proto::Tcp, 0));
        // Other commands do not care.
        assert_eq!(ok("-D -t 198.18.0.100").service, svc(Proto::Tcp, 0));
        assert_eq!(ok("-a -t 198.18.0.100 -r 198.18.0.11").real, Some((RIP, 0)));
    }

    #[test]
    fn real_server_port() {
        // Without a port: the virtual port.
        assert_eq!(
            ok("-a -t 198.18.0.100:6033 -r 198.18.0.11").real,
            Some((RIP, 6033))
        );
        assert_eq!(
            ok("-a -t 198.18.0.100:6033 -r 198.18.0.11 -i").real,
            Some((RIP, 6033))
        );
        // With another port: forced to the virtual port for tunnelled reals, silently.
        assert_eq!(
            ok("-a -t 198.18.0.100:6033 -r 198.18.0.11:3306 -i").real,
            Some((RIP, 6033))
        );
        assert_eq!(
            ok("-e -t 198.18.0.100:6033 -r 198.18.0.11:3306").real,
            Some((RIP, 6033))
        );
        // Even when -r comes first.
        assert_eq!(
            ok("-a -r 198.18.0.11 -t 198.18.0.100:6033").real,
            Some((RIP, 6033))
        );
        // -d keeps what was given, as ipvsadm looks the destination up with it.
        assert_eq!(
            ok("-d -t 198.18.0.100:6033 -r 198.18.0.11:3306").real,
            Some((RIP, 3306))
        );
        assert_eq!(
            ok("-d -t 198.18.0.100:6033 -r 198.18.0.11").real,
            Some((RIP, 6033))
        );
        assert_eq!(
            ok("-d -r 198.18.0.11 -t 198.18.0.100:6033").real,
            Some((RIP, 0))
        );
        // Real-server service names need the service's protocol, known only after -t.
        assert_eq!(
            ok("-a -t 198.18.0.100:80 -r 198.18.0.11:http").real,
            Some((RIP, 80))
        );
        err2(
            "-a -r 198.18.0.11:http -t 198.18.0.100:80",
            "illegal real server address[:port] specified",
        );
        for bad in ["", "80", "198.18.0.11:", "198.18.0.11:70000", "nosuchhost"] {
            assert_eq!(
                pv(&["-a", "-t", "198.18.0.100:80", "-r", bad]),
                Err(fail("illegal real server address[:port] specified")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ipv6_addresses_are_refused_after_every_ipvsadm_check() {
        err("-A -t [::1]:80", IPV6_UNSUPPORTED, 255);
        err("-L -t [2001:db8::1]:6033", IPV6_UNSUPPORTED, 255);
        err("-D -u [::1]:53", IPV6_UNSUPPORTED, 255);
        err(
            "-a -t 198.18.0.100:80 -r [::1]:80 -i",
            IPV6_UNSUPPORTED,
            255,
        );
        err("-a -t [::1]:80 -r [::2]:80", IPV6_UNSUPPORTED, 255);
        // A bracketed address needs its port.
        err2(
            "-a -t [::1]:80 -r [::2]",
            "illegal real server address[:port] specified",
        );
        // ipvsadm's own checks come first: a bare IPv6 literal has no port…
        err2(
            "-A -t ::1",
            "Zero port specified for non-persistent service",
        );
        err("-A -t ::1 -p", IPV6_UNSUPPORTED, 255);
        // …a v6 real under a v4 service needs tunnelling (ipvsadm's default is -g)…
        err2(
            "-a -t 198.18.0.100:80 -r [::1]:80",
            "Different address family is allowed only for tunneling servers",
        );
        // …and -M takes a prefix length once the service is IPv6.
        err2("-A -t [::1]:80 -M 129", "illegal ipv6 netmask specified");
        err2("-A -t [::1]:80 -M abc", "illegal ipv6 netmask specified");
        err("-A -t [::1]:80 -M 64", IPV6_UNSUPPORTED, 255);
    }

    // --- legality matrix --------------------------------------------------------------------

    #[test]
    fn legality_matrix_messages() {
        err2(
            "-a -t 198.18.0.100:80 -w 3",
            "You need to supply the 'real-server' option for the 'add-server' command",
        );
        err2(
            "-e -t 198.18.0.100:80",
            "You need to supply the 'real-server' option for the 'edit-server' command",
        );
        err2(
            "-d -t 198.18.0.100:80",
            "You need to supply the 'real-server' option for the 'delete-server' command",
        );
        err2(
            "-A -s wrr",
            "You need to supply the 'service-address' option for the 'add-service' command",
        );
        err2(
            "-E",
            "You need to supply the 'service-address' option for the 'edit-service' command",
        );
        err2(
            "-D",
            "You need to supply the 'service-address' option for the 'delete-service' command",
        );
        err2(
            "-a -r 198.18.0.11",
            "You need to supply the 'service-address' option for the 'add-server' command",
        );
        err2(
            "-A -t 198.18.0.100:80 -w 3",
            "Illegal 'weight' option with the 'add-service' command",
        );
        // Column order decides which is reported.
        err2(
            "-A -t 198.18.0.100:80 -w 3 -n",
            "Illegal 'numeric' option with the 'add-service' command",
        );
        err2(
            "-A -t 198.18.0.100:80 -p -n",
            "Illegal 'numeric' option with the 'add-service' command",
        );
        err2(
            "-D -t 198.18.0.100:80 -s wrr",
            "Illegal 'scheduler' option with the 'delete-service' command",
        );
        err2(
            "-L -t 198.18.0.100:80 -s wrr",
            "Illegal 'scheduler' option with the 'list' command",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -p",
            "Illegal 'persistent' option with the 'add-server' command",
        );
        err2(
            "-d -t 198.18.0.100:80 -r 198.18.0.11 -w 5",
            "Illegal 'weight' option with the 'delete-server' command",
        );
        err2(
            "-d -t 198.18.0.100:80 -r 198.18.0.11 -i",
            "Illegal 'forwarding-method' option with the 'delete-server' command",
        );
        err2("-C -n", "Illegal 'numeric' option with the 'flush' command");
        err2(
            "-R -n",
            "Illegal 'numeric' option with the 'restore' command",
        );
        err2(
            "-S -c",
            "Illegal 'connection' option with the 'save' command",
        );
        err2("-Z -n", "Illegal 'numeric' option with the 'zero' command");
        err2(
            "--set 1 -n 2 3",
            "Illegal 'numeric' option with the 'set' command",
        );
        err2(
            "-L -r 198.18.0.11",
            "Illegal 'real-server' option with the 'list' command",
        );
        err2(
            "-A -t 198.18.0.100:80 -g",
            "Illegal 'forwarding-method' option with the 'add-service' command",
        );
        err2(
            "--stop-daemon master --mcast-interface eth0",
            "Illegal 'mcast-interface' option with the 'stop-daemon' command",
        );
        err2(
            "-A -t 198.18.0.100:80 --json",
            "Illegal 'json' option with the 'add-service' command",
        );
        err2("-S --json", "Illegal 'json' option with the 'save' command");
        // Exclusive list modes.
        err2(
            "-L -c -t 198.18.0.100:80",
            "The option 'service-address' conflicts with the 'connection' option in the 'list' command",
        );
        err2(
            "-L -t 198.18.0.100:80 -c",
            "The option 'service-address' conflicts with the 'connection' option in the 'list' command",
        );
        err2(
            "-L -c --timeout",
            "The option 'timeout' conflicts with the 'connection' option in the 'list' command",
        );
        err2(
            "-L --daemon --timeout",
            "The option 'daemon' conflicts with the 'timeout' option in the 'list' command",
        );
        // Allowed combinations.
        let i = ok("-L -t 198.18.0.100:80 -n --stats --rate --exact --nosort");
        assert!(i.stats && i.rate && i.exact && i.nosort && i.service.is_some());
        assert!(ok("-L --syncid 5").command == Command::List);
        assert_eq!(ok("-Z -t 198.18.0.100:80").service, svc(Proto::Tcp, 80));
        assert!(ok("--stop-daemon backup --syncid 5").command == Command::StopDaemon);
        assert_eq!(
            ok("-A -t 198.18.0.100:80 --sort").command,
            Command::AddService
        );
    }

    #[test]
    fn list_option_conflicts() {
        let c = "options conflicts in the list command";
        err2("-L -c --stats", c);
        err2("-L -c --rate", c);
        err2("-L -c --thresholds", c);
        err2("-L --timeout --stats", c);
        err2("-L --daemon --rate", c);
        err2("-L --timeout --persistent-conn", c);
        err2("-L --daemon --persistent-conn", c);
        err2("-L -c --json", c);
        err2("-L --timeout --json", c);
        err2("-L --daemon --json", c);
        let i = ok("-L --stats --rate");
        assert!(i.stats && i.rate);
        let i = ok("-L -c --persistent-conn");
        assert!(i.connection && i.persistent_conn);
        let i = ok("-L --tun-info --thresholds --persistent-conn");
        assert!(i.tun_info && i.thresholds && i.persistent_conn);
        let i = ok("-Ln --json --stats -t 198.18.0.100:80");
        assert!(i.json && i.stats && i.numeric);
        let i = ok("-L --timeout");
        assert!(i.timeout && !i.daemon);
        assert!(ok("-L --daemon").daemon);
    }

    // --- tunnels ----------------------------------------------------------------------------

    #[test]
    fn tunnel_options_as_ipvsadm_checks_them() {
        let a = "-a -t 198.18.0.100:80 -r 198.18.0.11";
        let i = ok(&format!("{a} -i --tun-type ipip"));
        assert_eq!(i.real, Some((RIP, 80)));
        err2(
            &format!("{a} --tun-type ipip"),
            "Tunnel options conflict with forward method",
        );
        err2(
            &format!("{a} -m --tun-nocsum"),
            "Tunnel options conflict with forward method",
        );
        err2(
            &format!("{a} -g --tun-port 5"),
            "Tunnel options conflict with forward method",
        );
        err2(
            &format!("{a} -i --tun-type foo"),
            "illegal tunnel type specified",
        );
        err2(
            &format!("{a} -i --tun-type gue --tun-port 0"),
            "illegal tunnel port specified",
        );
        err2(
            &format!("{a} -i --tun-type gue --tun-port 65536"),
            "illegal tunnel port specified",
        );
        err2(
            &format!("{a} -i --tun-type gue"),
            "You need to supply the 'tun-port' option for the 'gue' tunnel type",
        );
        err2(
            &format!("{a} -i --tun-port 6080"),
            "Illegal 'tun-port' option with the 'ipip' tunnel type",
        );
        err2(
            &format!("{a} -i --tun-type ipip --tun-nocsum"),
            "Illegal 'tun-nocsum' option with the 'ipip' tunnel type",
        );
        err2(
            &format!("{a} -i --tun-type gre --tun-port 6080"),
            "Illegal 'tun-port' option with the 'gre' tunnel type",
        );
        err2(
            &format!("{a} -i --tun-type gre --tun-remcsum"),
            "Illegal 'tun-remcsum' option with the 'gre' tunnel type",
        );
        err2(
            &format!("{a} -i --tun-type gue --tun-port 6080 --tun-csum --tun-remcsum"),
            "The option 'tun-remcsum' conflicts with the 'tun-csum' option in the 'gue' tunnel type",
        );
        err2(
            "-L --tun-type ipip",
            "Illegal 'tun-type' option with the 'list' command",
        );
    }

    // --- this director's refusals -----------------------------------------------------------

    #[test]
    fn refusals() {
        let a = "-a -t 198.18.0.100:80 -r 198.18.0.11";
        err2(&format!("{a} -g"), DIRECT_ROUTING_UNSUPPORTED);
        err2(&format!("{a} --gatewaying"), DIRECT_ROUTING_UNSUPPORTED);
        err2(&format!("{a} -m"), MASQUERADING_UNSUPPORTED);
        err2(
            &format!("{a}:8080 --masquerading"),
            MASQUERADING_UNSUPPORTED,
        );
        err2(
            &format!("{a} -i --tun-type gue --tun-port 6080"),
            TUN_TYPE_GUE_UNSUPPORTED,
        );
        err2(&format!("{a} -i --tun-type gre"), TUN_TYPE_GRE_UNSUPPORTED);
        // ipvsadm allows --tun-port and the checksum options only with gue/gre: the first
        // refused option in argv order is reported.
        err2(
            &format!("{a} -i --tun-port 6080 --tun-type gue"),
            TUN_PORT_UNSUPPORTED,
        );
        err2(
            &format!("{a} -i --tun-nocsum --tun-type gre"),
            TUN_NOCSUM_UNSUPPORTED,
        );
        err2(
            &format!("{a} -i --tun-csum --tun-type gre"),
            TUN_CSUM_UNSUPPORTED,
        );
        err2(
            &format!("{a} -i --tun-remcsum --tun-port 1 --tun-type gue"),
            TUN_REMCSUM_UNSUPPORTED,
        );
        err2("-A -f 1", FWMARK_UNSUPPORTED);
        err2("-A -f 1 -6", FWMARK_UNSUPPORTED);
        err2("-a -f 4294967295 -r 198.18.0.11", FWMARK_UNSUPPORTED);
        err2("-A --sctp-service 198.18.0.100:80", SCTP_UNSUPPORTED);
        err2(
            "-A -t 198.18.0.100:80 -M 255.255.255.0",
            NETMASK_UNSUPPORTED,
        );
        err2("-A -t 198.18.0.100:80 -p -M 0", NETMASK_UNSUPPORTED);
        err2("-A -t 198.18.0.100:80 --pe sip", PE_UNSUPPORTED);
        err2("-A -t 198.18.0.100:80 -b flag-1", SCHED_FLAGS_UNSUPPORTED);
        err2(
            "-A -t 198.18.0.100:80 -s sh -b sh-port",
            SCHED_FLAGS_UNSUPPORTED,
        );
        err2("-A -u 198.18.0.100:53 -o", OPS_UNSUPPORTED);
        err2(&format!("{a} -x 5"), UTHRESHOLD_UNSUPPORTED);
        err2(&format!("{a} -x 0"), UTHRESHOLD_UNSUPPORTED);
        err2(&format!("{a} -y 5"), LTHRESHOLD_UNSUPPORTED);
        err2(&format!("{a} -y 1 -x 2"), LTHRESHOLD_UNSUPPORTED);
        // The default mask is fine, in any spelling inet_aton takes.
        assert!(p("-A -t 198.18.0.100:80 -p -M 255.255.255.255").is_ok());
        assert!(p("-A -t 198.18.0.100:80 -M 0xffffffff").is_ok());
        // Tunnel mode is the default, and -i / --tun-type ipip are accepted.
        assert!(p(a).is_ok());
        assert!(p(&format!("{a} -i --tun-type ipip")).is_ok());
        // A refused option whose value ipvsadm rejects gets ipvsadm's message.
        err2("-A -f 0", "invalid fwmark value `0' specified");
        err2(
            "-A -t 198.18.0.100:80 -M foo",
            "illegal virtual server persistent mask specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -b foo",
            "invalid scheduler flag `foo'",
        );
        err2(
            "-A -t 198.18.0.100:80 -o",
            "One-Packet Scheduling is only for UDP virtual services",
        );
        err2(&format!("{a} -x -1"), "illegal u_threshold specified");
        // Every refusal message is in the support table.
        for m in [
            DIRECT_ROUTING_UNSUPPORTED,
            MASQUERADING_UNSUPPORTED,
            TUN_TYPE_GUE_UNSUPPORTED,
            TUN_TYPE_GRE_UNSUPPORTED,
            TUN_PORT_UNSUPPORTED,
            TUN_NOCSUM_UNSUPPORTED,
            TUN_CSUM_UNSUPPORTED,
            TUN_REMCSUM_UNSUPPORTED,
            FWMARK_UNSUPPORTED,
            IPV6_FWMARK_UNSUPPORTED,
            SCTP_UNSUPPORTED,
            NETMASK_UNSUPPORTED,
            PE_UNSUPPORTED,
            SCHED_FLAGS_UNSUPPORTED,
            OPS_UNSUPPORTED,
            UTHRESHOLD_UNSUPPORTED,
            LTHRESHOLD_UNSUPPORTED,
            IPV6_UNSUPPORTED,
            SET_UNSUPPORTED,
            DAEMON_UNSUPPORTED,
        ] {
            assert!(UNSUPPORTED.iter().any(|&(_, r)| r == m), "{m}");
        }
    }

    // --- section 1.8's fail(2) messages, one by one -----------------------------------------

    #[test]
    fn reference_fail_messages() {
        err2(
            "-A -t nosuchhost:80",
            "illegal virtual server address[:port] specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r nosuchhost",
            "illegal real server address[:port] specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p -M bad.mask",
            "illegal virtual server persistent mask specified",
        );
        err2("-A -f 1 -6 -M 129", "illegal ipv6 netmask specified");
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -w x",
            "illegal weight specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -x 2147483648",
            "illegal u_threshold specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -y x",
            "illegal l_threshold specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i --tun-type vxlan",
            "illegal tunnel type specified",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i --tun-port x",
            "illegal tunnel port specified",
        );
        err2(
            "-A -t 198.18.0.100:80 -p 99999999",
            "invalid timeout value `99999999' specified",
        );
        err2(
            "--set 1 2 2678401",
            "invalid timeout value `2678401' specified",
        );
        err2(
            "-A -f 4294967296",
            "invalid fwmark value `4294967296' specified",
        );
        err2("-A -f -1", "invalid fwmark value `-1' specified");
        err2("-A -f 12abc", "invalid fwmark value `12abc' specified");
        err2("--set 1 2", "--set option requires 3 timeout values");
        err2("--set", "--set option requires 3 timeout values");
        err2("--set 1 2 3 4", "unexpected argument 4");
        // "multiple commands specified" cannot happen: ipvsadm sets the command only from the
        // first option, a later one is "invalid option" (tested above).
        err2(
            "-A -t 198.18.0.100:80 -s rr -s rr",
            "multiple 'scheduler' options specified",
        );
        err2(
            "-A -t 198.18.0.100",
            "Zero port specified for non-persistent service",
        );
        err2(
            "-A -t 198.18.0.100:80 -o",
            "One-Packet Scheduling is only for UDP virtual services",
        );
        err2(
            "-a -t 198.18.0.100:80 -r [::1]:80",
            "Different address family is allowed only for tunneling servers",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 --tun-type ipip",
            "Tunnel options conflict with forward method",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i --tun-type gue",
            "You need to supply the 'tun-port' option for the 'gue' tunnel type",
        );
        err2(
            "-a -t 198.18.0.100:80 -r 198.18.0.11 -i --tun-type gre --tun-remcsum",
            "Illegal 'tun-remcsum' option with the 'gre' tunnel type",
        );
        err2("-L -c --stats", "options conflicts in the list command");
        err2(
            "-A -t 198.18.0.100:80 -b nope",
            "invalid scheduler flag `nope'",
        );
        err2(
            "-A -t 198.18.0.100:80 -b sh-port",
            "incompatible scheduler flag `sh-port'",
        );
        err2(
            "-A -t 198.18.0.100:80 -s sh -b sh-port,mh-port",
            "incompatible scheduler flag `mh-port'",
        );
        err2("-A -t 198.18.0.100:80 -b ,", "invalid scheduler flag `,'");
        err2("-A -t 198.18.0.100:80 -6", "-6 used before -f");
        err2("-L -6", "-6 used before -f");
        err2(
            "--start-daemon foo",
            "illegal start-daemon parameter specified",
        );
        err2("--stop-daemon foo", "illegal start_daemon specified");
        err2(
            "--start-daemon master --syncid 256",
            "illegal syncid specified",
        );
        err2(
            "--start-daemon master --mcast-group 1.2.3.4",
            "invalid IPv4 mcast-group `1.2.3.4'",
        );
        err2(
            "--start-daemon master --mcast-group ::1",
            "invalid IPv6 mcast-group `::1'",
        );
        err2(
            "--start-daemon master --mcast-port 0",
            "illegal mcast-port specified",
        );
        err2(
            "--start-daemon master --mcast-ttl 256",
            "illegal mcast-ttl specified",
        );
        err2(
            "--start-daemon master --sync-maxlen 65508",
            "illegal sync-maxlen specified",
        );
        assert!(
            p("--start-daemon master --mcast-group ff02::1 --sync-maxlen 65507 --mcast-ttl 255")
                .is_ok()
        );
    }

    #[test]
    fn set_timeouts() {
        assert_eq!(ok("--set 900 120 300").set_timeouts, Some((900, 120, 300)));
        assert_eq!(ok("--set 0 0 2678400").set_timeouts, Some((0, 0, 2678400)));
        err2("--set 1 2 x", "invalid timeout value `x' specified");
        err2("--set x 2 y", "invalid timeout value `x' specified");
        // popt collects the three from anywhere on the line.
        assert_eq!(ok("--set 1 -- 2 3").set_timeouts, Some((1, 2, 3)));
    }

    #[test]
    fn scheduler_is_passed_through() {
        assert_eq!(
            ok("-A -t 198.18.0.100:80 -s wlc").scheduler.as_deref(),
            Some("wlc")
        );
        assert_eq!(
            ok("-A -t 198.18.0.100:80 -s nosuch").scheduler.as_deref(),
            Some("nosuch")
        );
        // An empty name is ipvsadm's default: the caller's.
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-s", ""])
                .unwrap()
                .scheduler,
            None
        );
        assert_eq!(ok("-E -t 198.18.0.100:80").scheduler, None);
    }

    #[test]
    fn popt_next_arg_substitution() {
        // popt's `!#:+` takes the next non-option element (which is then not a leftover).
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-s", "w!#:+", "rr"])
                .unwrap()
                .scheduler
                .as_deref(),
            Some("wrr")
        );
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:!#:+", "6033"])
                .unwrap()
                .service,
            svc(Proto::Tcp, 6033)
        );
        // Nothing to take: it stays literal.
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-s", "x!#:+"])
                .unwrap()
                .scheduler
                .as_deref(),
            Some("x!#:+")
        );
        assert_eq!(
            pv(&["-A", "-s", "x!#:+", "-n"]),
            Err(fail(
                "Illegal 'numeric' option with the 'add-service' command"
            ))
        );
        // Twice in one argument: the same element both times; a second one stays.
        assert_eq!(
            pv(&["-A", "-t", "198.18.0.100:80", "-s", "x!#:+!#:+", "y", "z"]),
            Err(fail("unexpected argument z"))
        );
    }

    #[test]
    fn arguments_end_at_nul_as_in_c() {
        assert_eq!(
            pv(&["-L", "-t", "198.18.0.100:80\0junk"]).unwrap().service,
            svc(Proto::Tcp, 80)
        );
        assert_eq!(pv(&["-L\0x"]).unwrap().command, Command::List);
    }

    #[test]
    fn invocation_fields_default_to_absent() {
        let i = ok("-L");
        assert_eq!(i, Invocation::bare(Command::List));
        let i = ok("-A -t 198.18.0.100:6033 -s wrr -p 600");
        assert_eq!(
            i,
            Invocation {
                service: svc(Proto::Tcp, 6033),
                scheduler: Some("wrr".into()),
                persistent: Some(600),
                ..Invocation::bare(Command::AddService)
            }
        );
    }

    // --- text -------------------------------------------------------------------------------

    #[test]
    fn usage_and_version_text() {
        let u = usage("lbadm");
        assert!(u.starts_with(&format!(
            "{VERSION_LINE}\nUsage:\n  lbadm -A|E virtual-service"
        )));
        assert!(u.ends_with('\n'));
        for needle in [
            "--json",
            "--tcp-service|-t",
            "--udp-service|-u",
            "--ipip         -i",
            "one of rr|wrr|mh,",
            "-p [timeout]",
            "--restore         -R",
            "--persistent-conn",
        ] {
            assert!(u.contains(needle), "usage lacks {needle:?}");
        }
        // Refused options are only named in the closing list.
        let body = &u[..u.find("Not supported").unwrap()];
        for absent in [
            "--gatewaying",
            "--masquerading",
            "--fwmark-service",
            "--sctp-service",
            "--sched-flags",
            "--set ",
        ] {
            assert!(!body.contains(absent), "usage offers {absent:?}");
        }
        assert!(usage("/sbin/lbadm").contains("  /sbin/lbadm -Z [virtual-service]\n"));
        assert!(VERSION_LINE.starts_with("lbadm v") && VERSION_LINE.contains("ipvsadm v1.31"));
    }

    // --- restore ----------------------------------------------------------------------------

    fn lines(v: &[&[&str]]) -> Vec<Vec<String>> {
        v.iter()
            .map(|l| l.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    #[test]
    fn restore_lines_as_in_the_reference() {
        // §1.7 derived `-S -n` output.
        let saved = "-A -t 10.0.0.100:6033 -s wlc\n\
                     -a -t 10.0.0.100:6033 -r 10.0.1.11:6033 -i -w 1 --tun-type ipip\n\
                     -a -t 10.0.0.100:6033 -r 10.0.1.12:6033 -i -w 2 --tun-type ipip\n";
        let got = restore_lines(saved);
        assert_eq!(
            got,
            lines(&[
                &["-A", "-t", "10.0.0.100:6033", "-s", "wlc"],
                &[
                    "-a",
                    "-t",
                    "10.0.0.100:6033",
                    "-r",
                    "10.0.1.11:6033",
                    "-i",
                    "-w",
                    "1",
                    "--tun-type",
                    "ipip"
                ],
                &[
                    "-a",
                    "-t",
                    "10.0.0.100:6033",
                    "-r",
                    "10.0.1.12:6033",
                    "-i",
                    "-w",
                    "2",
                    "--tun-type",
                    "ipip"
                ],
            ])
        );
        for l in &got {
            assert!(parse_with(PROGRAM, l, &FakeLookup).is_ok(), "{l:?}");
        }
        // /etc/sysconfig/ipvsadm style, with a leading `ipvsadm`, comments, blank lines, CRLF,
        // tabs, and the pre-1.30 form without --tun-type.
        let file = "# LVS-TUN DNS example\r\n\
                    \r\n\
                    ipvsadm -A -t 192.168.50.100:53 -s rr   # the service\r\n\
                    \t-a -t 192.168.50.100:53 -r 192.168.52.100:53 -i -w 1 --tun-type ipip\r\n\
                    ipvsadm\n\
                    \x20  \t \n\
                    -a -t 192.168.50.100:53 -r 192.168.52.101:53 -i -w 1#old form\n\
                    -C";
        let got = restore_lines(file);
        assert_eq!(
            got,
            lines(&[
                &["-A", "-t", "192.168.50.100:53", "-s", "rr"],
                &[
                    "-a",
                    "-t",
                    "192.168.50.100:53",
                    "-r",
                    "192.168.52.100:53",
                    "-i",
                    "-w",
                    "1",
                    "--tun-type",
                    "ipip"
                ],
                &[
                    "-a",
                    "-t",
                    "192.168.50.100:53",
                    "-r",
                    "192.168.52.101:53",
                    "-i",
                    "-w"
                ],
                &["-C"],
            ])
        );
        // `ipvsadm` is dropped anywhere on the line, only as a whole token.
        assert_eq!(
            restore_lines("-A ipvsadm -t ipvsadm:80"),
            lines(&[&["-A", "-t", "ipvsadm:80"]])
        );
        // A last line without newline is kept, even after trailing blanks.
        assert_eq!(restore_lines("-C  \t"), lines(&[&["-C"]]));
        assert!(restore_lines("").is_empty());
        assert!(restore_lines("\n\n  # only comments\n#\n").is_empty());
        // Form feeds are not separators in ipvsadm.
        assert_eq!(restore_lines("-L\x0c-n"), lines(&[&["-L\x0c-n"]]));
    }

    // --- C helpers --------------------------------------------------------------------------

    #[test]
    fn c_number_parsing() {
        assert_eq!(string_to_number("42", 0, 100), Some(42));
        assert_eq!(string_to_number("  \t42", 0, 100), Some(42));
        assert_eq!(string_to_number("+42", 0, 100), Some(42));
        assert_eq!(string_to_number("-0", 0, 100), Some(0));
        assert_eq!(string_to_number("42 ", 0, 100), None);
        assert_eq!(string_to_number("", 0, 100), None);
        assert_eq!(string_to_number(" ", 0, 100), None);
        assert_eq!(string_to_number("+", 0, 100), None);
        assert_eq!(string_to_number("101", 0, 100), None);
        assert_eq!(string_to_number("9223372036854775808", 0, i64::MAX), None);
        assert_eq!(
            string_to_number("9223372036854775807", 0, i64::MAX),
            Some(i64::MAX)
        );
        assert_eq!(c_strtoul("-1"), (u64::MAX, false, 2));
        assert_eq!(c_strtoul("-18446744073709551615"), (1, false, 21));
        assert_eq!(c_strtoul("18446744073709551616"), (u64::MAX, true, 20));
        assert_eq!(c_atoi("4294967360"), 64);
        assert_eq!(c_atoi("99999999999999999999"), -1);
        assert_eq!(c_atoi("64abc"), 64);
        assert_eq!(c_inet_aton("1.2.3.4"), Some(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(c_inet_aton("1.2.3.4x"), None);
        assert_eq!(c_inet_aton("256.1.1.1"), None);
        assert_eq!(c_inet_pton4("10.1"), None);
        assert!(c_inet_pton6("2001:db8::1").is_some());
        assert!(c_inet_pton6("1.2.3.4").is_none());
    }

    // --- property test ----------------------------------------------------------------------

    /// splitmix64: a fixed-seed generator, so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
            v[self.below(v.len())]
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    const GEN_COMMANDS: &[&str] = &[
        "-A",
        "-E",
        "-D",
        "-C",
        "-R",
        "-S",
        "-a",
        "-e",
        "-d",
        "-L",
        "-l",
        "-Z",
        "--set",
        "--start-daemon",
        "--stop-daemon",
        "-h",
        "-v",
        "--add-service",
        "--add-server",
        "--list",
        "--edit-server",
        "--zero",
        "-Ln",
        "-Lnc",
        "-Sn",
        "-At",
        "-at",
        "-et",
        "-dt",
        "-Lt",
        "-Au",
        "-Zt",
        "-Dt",
        "-LX",
    ];
    const GEN_WITH_ARG: &[&str] = &[
        "-t",
        "-u",
        "--sctp-service",
        "-f",
        "-s",
        "-p",
        "-M",
        "-r",
        "-w",
        "-x",
        "-y",
        "--pe",
        "-b",
        "--tun-type",
        "--tun-port",
        "--mcast-interface",
        "--syncid",
        "--mcast-group",
        "--mcast-port",
        "--mcast-ttl",
        "--sync-maxlen",
        "--tcp-service",
        "--udp-service",
        "--real-server",
        "--weight",
        "--scheduler",
        "--persistent",
        "--netmask",
        "-r",
        "-t",
        "-w",
        "-s",
        "-p",
    ];
    const GEN_FLAGS: &[&str] = &[
        "-n",
        "-c",
        "-g",
        "-i",
        "-m",
        "-o",
        "-6",
        "-X",
        "--timeout",
        "--daemon",
        "--stats",
        "--rate",
        "--thresholds",
        "--persistent-conn",
        "--tun-info",
        "--exact",
        "--sort",
        "--nosort",
        "--tun-nocsum",
        "--tun-csum",
        "--tun-remcsum",
        "--json",
        "--numeric",
        "--connection",
        "--ipip",
        "-i",
        "-i",
        "-n",
        "-ni",
        "-in",
        "-ic",
    ];
    const GEN_VALUES: &[&str] = &[
        "198.18.0.100:6033",
        "198.18.0.100:6033",
        "198.18.0.11",
        "198.18.0.12:6033",
        "198.18.0.100:0",
        "198.18.0.100",
        "10.1:80",
        "[::1]:80",
        "::1",
        "[1.2.3.4]:80",
        "198.18.0.100:http",
        "198.18.0.100:mysql",
        "localhost:53",
        "1.2.3.4:65536",
        "80",
        "",
        "abc",
        "0",
        "1",
        "3",
        "360",
        "600",
        "2678400",
        "2678401",
        "-1",
        "-0",
        "2147483647",
        "2147483648",
        "+5",
        " 7",
        "ipip",
        "ipip",
        "gue",
        "gre",
        "master",
        "backup",
        "wrr",
        "rr",
        "mh",
        "wlc",
        "sh",
        "255.255.255.255",
        "255.255.255.0",
        "sh-port",
        "flag-1",
        "224.0.0.81",
        "ff02::1",
        "eth0",
        "5",
        "6080",
    ];
    const GEN_JUNK: &[&str] = &[
        "--foo",
        "-q",
        "-",
        "--",
        "x",
        "=",
        "-n=1",
        "--numeric=1",
        "-t=198.18.0.100:80",
        "--weight=3",
        "--tcp-service=198.18.0.100:80",
        "x!#:+",
        "-pn",
        "-Lh",
        "---x",
        "--=x",
        "-Aq",
        "#",
        "-p600",
        "-w5",
        "--persistent=",
        "-r198.18.0.11",
        "--scheduler=",
        "-L=",
        "-ipip",
    ];

    /// Half the lines are random token soup, half are plausible command lines (options a
    /// command takes, in random order), a third of those then mutated by one token.
    fn generate(rng: &mut Rng) -> Vec<String> {
        if rng.chance(50) {
            generate_soup(rng)
        } else {
            generate_plausible(rng)
        }
    }

    fn generate_plausible(rng: &mut Rng) -> Vec<String> {
        let vips = [
            "198.18.0.100:6033",
            "198.18.0.100:80",
            "198.18.0.100",
            "198.18.0.100:http",
            "10.1:53",
        ];
        let reals = [
            "198.18.0.11",
            "198.18.0.12:6033",
            "198.18.0.13:3306",
            "[::1]:80",
        ];
        let cmd = rng.pick(&[
            "-A",
            "-E",
            "-D",
            "-a",
            "-e",
            "-d",
            "-L",
            "-Z",
            "-S",
            "-C",
            "-R",
            "--set",
            "--add-service",
            "-l",
            "--start-daemon",
            "--stop-daemon",
        ]);
        let mut groups: Vec<Vec<String>> = Vec::new();
        let mut g = |v: &[&str]| groups.push(v.iter().map(|s| s.to_string()).collect());
        let service = |rng: &mut Rng| {
            [
                rng.pick(&["-t", "-u", "--tcp-service", "--udp-service"]),
                rng.pick(&vips),
            ]
        };
        match cmd {
            "-A" | "-E" | "--add-service" => {
                g(&service(rng));
                if rng.chance(60) {
                    g(&["-s", rng.pick(&["rr", "wrr", "mh", "wlc", ""])]);
                }
                if rng.chance(50) {
                    if rng.chance(50) {
                        g(&["-p"])
                    } else {
                        g(&["-p", rng.pick(&["1", "600", "2678400"])])
                    }
                }
                if rng.chance(10) {
                    g(&["-M", "255.255.255.255"]);
                }
            }
            "-D" => g(&service(rng)),
            "-a" | "-e" | "-d" => {
                g(&service(rng));
                g(&["-r", rng.pick(&reals)]);
                if cmd != "-d" {
                    if rng.chance(60) {
                        g(&["-w", rng.pick(&["0", "1", "3", "2147483647"])]);
                    }
                    if rng.chance(50) {
                        g(&["-i"]);
                        if rng.chance(30) {
                            g(&["--tun-type", "ipip"]);
                        }
                    }
                }
            }
            "-L" | "-l" => {
                if rng.chance(50) {
                    g(&["-n"]);
                }
                match rng.below(5) {
                    0 => g(&["-c"]),
                    1 => g(&service(rng)),
                    2 => g(&["--timeout"]),
                    3 => g(&["--daemon"]),
                    _ => {}
                }
                for f in [
                    "--stats",
                    "--rate",
                    "--exact",
                    "--nosort",
                    "--thresholds",
                    "--persistent-conn",
                    "--tun-info",
                    "--sort",
                    "--json",
                ] {
                    if rng.chance(15) {
                        g(&[f]);
                    }
                }
            }
            "-Z" if rng.chance(50) => g(&service(rng)),
            "-S" if rng.chance(50) => g(&["-n"]),
            "--set" => g(&[
                rng.pick(&["900", "0"]),
                rng.pick(&["120", "0"]),
                rng.pick(&["300", "5"]),
            ]),
            "--start-daemon" | "--stop-daemon" => {
                g(&[rng.pick(&["master", "backup"])]);
                if rng.chance(50) {
                    g(&["--syncid", rng.pick(&["0", "255"])]);
                }
            }
            _ => {}
        }
        for i in (1..groups.len()).rev() {
            groups.swap(i, rng.below(i + 1));
        }
        let mut v: Vec<String> = std::iter::once(cmd.to_string())
            .chain(groups.into_iter().flatten())
            .collect();
        if rng.chance(33) {
            let at = 1 + rng.below(v.len());
            match rng.below(4) {
                0 => v.insert(at.min(v.len()), rng.pick(GEN_FLAGS).to_string()),
                1 => v.insert(at.min(v.len()), rng.pick(GEN_JUNK).to_string()),
                2 if v.len() > 1 => {
                    v.remove(at.min(v.len() - 1).max(1));
                }
                _ => v.insert(at.min(v.len()), rng.pick(GEN_VALUES).to_string()),
            }
        }
        v
    }

    fn generate_soup(rng: &mut Rng) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if rng.chance(90) {
            v.push(rng.pick(GEN_COMMANDS).to_string());
        }
        let n = rng.below(8);
        for _ in 0..n {
            match rng.below(100) {
                0..=44 => {
                    let o = rng.pick(GEN_WITH_ARG);
                    let val = rng.pick(GEN_VALUES);
                    match rng.below(10) {
                        0 if o.starts_with("--") => v.push(format!("{o}={val}")),
                        1 if !o.starts_with("--") => v.push(format!("{o}{val}")),
                        2 => v.push(o.to_string()),
                        _ => {
                            v.push(o.to_string());
                            v.push(val.to_string());
                        }
                    }
                }
                45..=74 => v.push(rng.pick(GEN_FLAGS).to_string()),
                75..=84 => v.push(rng.pick(GEN_VALUES).to_string()),
                85..=94 => v.push(rng.pick(GEN_JUNK).to_string()),
                _ => v.push(rng.pick(GEN_COMMANDS).to_string()),
            }
        }
        v
    }

    /// What ipvsadm's legality matrix, plus the checks after it, promise of an accepted line.
    fn check_legal(args: &[String], i: &Invocation) {
        let ctx = || format!("{args:?} -> {i:?}");
        let no_list_flags = !(i.numeric
            || i.connection
            || i.timeout
            || i.daemon
            || i.stats
            || i.rate
            || i.exact
            || i.nosort
            || i.json
            || i.thresholds
            || i.persistent_conn
            || i.tun_info);
        if let Some(w) = i.weight {
            assert!(w <= i32::MAX as u32, "{}", ctx());
        }
        if let Some(t) = i.persistent {
            assert!((1..=2_678_400).contains(&t), "{}", ctx());
        }
        if i.command != Command::Set {
            assert_eq!(i.set_timeouts, None, "{}", ctx());
        }
        match i.command {
            Command::Help | Command::Version => {
                assert_eq!(i, &Invocation::bare(i.command), "{}", ctx());
            }
            Command::AddService | Command::EditService => {
                let s = i.service.expect("service");
                assert!(
                    i.real.is_none() && i.weight.is_none() && no_list_flags,
                    "{}",
                    ctx()
                );
                assert!(
                    s.port != 0 || i.persistent.is_some(),
                    "zero port without -p: {}",
                    ctx()
                );
            }
            Command::DeleteService => {
                assert!(i.service.is_some(), "{}", ctx());
                assert!(
                    i.scheduler.is_none() && i.persistent.is_none() && i.real.is_none(),
                    "{}",
                    ctx()
                );
                assert!(i.weight.is_none() && no_list_flags, "{}", ctx());
            }
            Command::AddServer | Command::EditServer => {
                let s = i.service.expect("service");
                let (_, port) = i.real.expect("real server");
                assert_eq!(
                    port,
                    s.port,
                    "tunnelled reals serve the virtual port: {}",
                    ctx()
                );
                assert!(
                    i.scheduler.is_none() && i.persistent.is_none() && no_list_flags,
                    "{}",
                    ctx()
                );
            }
            Command::DeleteServer => {
                assert!(i.service.is_some() && i.real.is_some(), "{}", ctx());
                assert!(
                    i.weight.is_none() && i.scheduler.is_none() && i.persistent.is_none(),
                    "{}",
                    ctx()
                );
                assert!(no_list_flags, "{}", ctx());
            }
            Command::List => {
                let modes = [i.connection, i.service.is_some(), i.timeout, i.daemon];
                assert!(modes.iter().filter(|&&m| m).count() <= 1, "{}", ctx());
                assert!(
                    !((i.connection || i.timeout || i.daemon)
                        && (i.stats || i.rate || i.thresholds)),
                    "{}",
                    ctx()
                );
                assert!(!((i.timeout || i.daemon) && i.persistent_conn), "{}", ctx());
                assert!(
                    !(i.json && (i.connection || i.timeout || i.daemon)),
                    "{}",
                    ctx()
                );
                assert!(
                    i.scheduler.is_none() && i.persistent.is_none() && i.real.is_none(),
                    "{}",
                    ctx()
                );
                assert!(i.weight.is_none(), "{}", ctx());
            }
            Command::Save => {
                assert!(
                    i.service.is_none() && i.real.is_none() && i.scheduler.is_none(),
                    "{}",
                    ctx()
                );
                assert!(
                    !(i.connection || i.stats || i.json || i.timeout || i.daemon),
                    "{}",
                    ctx()
                );
            }
            Command::Zero => {
                assert!(
                    i.real.is_none()
                        && i.scheduler.is_none()
                        && i.weight.is_none()
                        && no_list_flags,
                    "{}",
                    ctx()
                );
            }
            Command::Clear | Command::Restore | Command::StartDaemon | Command::StopDaemon => {
                assert!(
                    i.service.is_none() && i.real.is_none() && i.scheduler.is_none(),
                    "{}",
                    ctx()
                );
                assert!(
                    i.weight.is_none() && i.persistent.is_none() && no_list_flags,
                    "{}",
                    ctx()
                );
            }
            Command::Set => {
                let (a, b, c) = i.set_timeouts.expect("three timeouts");
                assert!(
                    a <= 2_678_400 && b <= 2_678_400 && c <= 2_678_400,
                    "{}",
                    ctx()
                );
                assert!(i.service.is_none() && no_list_flags, "{}", ctx());
            }
        }
    }

    #[test]
    fn property_random_command_lines() {
        let mut rng = Rng(0x1bad_b002_5eed_0001);
        let (mut accepted, mut by_code) = (0usize, [0usize; 2]);
        for _ in 0..20_000 {
            let args = generate(&mut rng);
            let r = std::panic::catch_unwind(|| parse_with(PROGRAM, &args, &FakeLookup))
                .unwrap_or_else(|_| panic!("panicked on {args:?}"));
            assert_eq!(
                r,
                parse_with(PROGRAM, &args, &FakeLookup),
                "not deterministic: {args:?}"
            );
            match r {
                Ok(i) => {
                    accepted += 1;
                    check_legal(&args, &i);
                }
                Err(e) => {
                    assert!(e.exit_code == 2 || e.exit_code == 255, "{args:?}: {e:?}");
                    assert!(
                        !e.message.is_empty() && !e.message.ends_with('\n'),
                        "{args:?}: {e:?}"
                    );
                    by_code[usize::from(e.exit_code == 255)] += 1;
                }
            }
        }
        eprintln!(
            "20000 lines: {accepted} accepted, {} exit 2, {} exit 255",
            by_code[0], by_code[1]
        );
        // The generator must reach all three outcomes often enough to mean something.
        assert!(
            accepted > 5_000 && by_code[0] > 2_000 && by_code[1] > 1_000,
            "{accepted} {by_code:?}"
        );
    }

    /// Compares the ipvsadm checks (everything but this director's refusals) with the real
    /// ipvsadm 1.31, on random lines. Needs Debian's `ipvsadm` and a preload library that makes
    /// its IPVS sockopts succeed (a kernel without IPVS otherwise stops it before parsing):
    /// `IPVSADM_ORACLE_PRELOAD=/path/shim.so cargo test -p lb-userspace differential -- --ignored`.
    /// The shim overrides getsockopt/setsockopt for level 0, optnames 1152..1300, returning 0
    /// (and version 1.2.1, size 4096 for IP_VS_SO_GET_INFO).
    #[test]
    #[ignore = "needs the real ipvsadm and IPVSADM_ORACLE_PRELOAD"]
    fn differential_against_real_ipvsadm() {
        let Ok(preload) = std::env::var("IPVSADM_ORACLE_PRELOAD") else {
            eprintln!("IPVSADM_ORACLE_PRELOAD not set: skipped");
            return;
        };
        let bin = std::env::var("IPVSADM_BIN").unwrap_or_else(|_| "/usr/sbin/ipvsadm".into());
        let cases: usize = std::env::var("IPVSADM_ORACLE_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(3000);
        // Extra lines from a file, one per line, arguments separated by tabs.
        let mut extra: Vec<Vec<String>> = std::env::var("IPVSADM_ORACLE_LINES")
            .ok()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| {
                t.lines()
                    .map(|l| l.split('\t').map(str::to_string).collect())
                    .collect()
            })
            .unwrap_or_default();
        extra.reverse();
        let total = cases + extra.len();
        let mut rng = Rng(0xd1ff_0000_0000_0001);
        let (mut compared, mut mismatches) = (0, Vec::new());
        let mut outcomes = std::collections::BTreeMap::<i32, usize>::new();
        while compared < total {
            let args = extra.pop().unwrap_or_else(|| generate(&mut rng));
            if args.iter().any(|a| a.contains("json")) {
                continue; // ours
            }
            let out = std::process::Command::new("timeout")
                .arg("2")
                .arg(&bin)
                .args(&args)
                .env("LD_PRELOAD", &preload)
                .stdin(std::process::Stdio::null())
                .output()
                .expect("run ipvsadm");
            let code = out.status.code().unwrap_or(-1);
            if code == 124 || code == 139 || code < 0 {
                continue; // popt's endless `!#:+` search, or a crash
            }
            compared += 1;
            *outcomes.entry(code).or_default() += 1;
            let stderr = String::from_utf8_lossy(&out.stderr)
                .trim_end_matches('\n')
                .to_string();
            let ours = parse_raw(&bin, &args, &SystemLookup);
            let parse_error = code == 2
                || (code == 255
                    && (stderr.starts_with("Try `")
                        || stderr.ends_with(": unknown option")
                        || stderr.ends_with(": missing argument")
                        || stderr.ends_with(": option does not take an argument")));
            let agree = match &ours {
                Err(e) => parse_error && e.exit_code == code && e.message == stderr,
                Ok(Raw::Early(_)) => code == 0,
                Ok(Raw::Full(_)) => !parse_error,
            };
            if !agree {
                let ours = ours.map(|r| match r {
                    Raw::Early(c) => format!("early {c:?}"),
                    Raw::Full(_) => "accepted".to_string(),
                });
                mismatches.push(format!(
                    "{args:?}: ipvsadm {code} {stderr:?}, ours {ours:?}"
                ));
            }
        }
        eprintln!("compared {compared} lines; ipvsadm exit codes: {outcomes:?}");
        assert!(
            mismatches.is_empty(),
            "{} of {compared} differ:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
}
