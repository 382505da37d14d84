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

use super::{c_compat::*, options::*, popt::*, usage::*};
use crate::director::Protocol;
use lb_common::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use std::{fmt, net::Ipv4Addr};

pub use super::usage::{EXIT_INVALID, EXIT_USAGE, PROGRAM, VERSION_LINE, try_help, usage};

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

/// `-t`/`-u host[:port]`. Port 0 when none was given (legal for `-A`/`-E` only with `-p`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceAddr {
    pub proto: Protocol,
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
    /// `-x` / `-y`, for -a/-e: 0..=2147483647; absent means 0 (ipvsadm sends the whole
    /// destination, for `-e` too).
    pub u_threshold: u32,
    pub l_threshold: u32,
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
            u_threshold: 0,
            l_threshold: 0,
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
    u_threshold: u32,
    l_threshold: u32,
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
            u_threshold: 0,
            l_threshold: 0,
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
                self.u_threshold = string_to_number(a, 0, i32::MAX.into())
                    .ok_or_else(|| fail("illegal u_threshold specified"))?
                    as u32;
            }
            Opt::LThreshold => {
                self.set_option(O_LTHRESHOLD)?;
                self.l_threshold = string_to_number(a, 0, i32::MAX.into())
                    .ok_or_else(|| fail("illegal l_threshold specified"))?
                    as u32;
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
                self.sched_flags = super::format::cut(a, 127).to_string();
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
                IPPROTO_TCP if self.fwmark == 0 => Some(Protocol::Tcp),
                IPPROTO_UDP => Some(Protocol::Udp),
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
        inv.u_threshold = self.u_threshold;
        inv.l_threshold = self.l_threshold;
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

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
