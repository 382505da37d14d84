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

fn svc(proto: Protocol, port: u16) -> Option<ServiceAddr> {
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
        (Command::AddService, svc(Protocol::Tcp, 6033))
    );
    assert_eq!(i.scheduler, None);
    let i = ok("-at 198.18.0.100:6033 -r 198.18.0.11 -w 3");
    assert_eq!(i.command, Command::AddServer);
    assert_eq!(i.service, svc(Protocol::Tcp, 6033));
    assert_eq!(i.real, Some((RIP, 6033)));
    assert_eq!(i.weight, Some(3));
    // The argument in the same element, with or without '='.
    assert_eq!(ok("-At198.18.0.100:6033").service, svc(Protocol::Tcp, 6033));
    assert_eq!(
        ok("-At=198.18.0.100:6033").service,
        svc(Protocol::Tcp, 6033)
    );
    assert_eq!(
        ok("-A -t=198.18.0.100:6033").service,
        svc(Protocol::Tcp, 6033)
    );
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
    assert_eq!(i.service, svc(Protocol::Tcp, 6033));
    assert_eq!(i.scheduler.as_deref(), Some("rr"));
    assert_eq!(i.persistent, Some(600));
    let i = ok("--add-service --udp-service 198.18.0.100:53 --scheduler mh");
    assert_eq!(i.service, svc(Protocol::Udp, 53));
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
    assert_eq!(
        (i.persistent, i.service),
        (Some(360), svc(Protocol::Tcp, 0))
    );
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
        proto: Protocol::Tcp,
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
    assert_eq!(
        ok("-A -t 198.18.0.100:http").service,
        svc(Protocol::Tcp, 80)
    );
}

#[test]
fn service_names_through_the_system() {
    // /etc/services has http 80/tcp here; no resolver is needed for a dotted quad.
    let i = parse(&argv("-A -t 198.18.0.100:http")).unwrap();
    assert_eq!(i.service, svc(Protocol::Tcp, 80));
    assert_eq!(
        parse(&argv("-A -t 198.18.0.100:6033")).unwrap().service,
        svc(Protocol::Tcp, 6033)
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
    assert_eq!(
        (i.service, i.persistent),
        (svc(Protocol::Tcp, 0), Some(360))
    );
    assert_eq!(
        ok("-E -t 198.18.0.100 -p 60").service,
        svc(Protocol::Tcp, 0)
    );
    // Other commands do not care.
    assert_eq!(ok("-D -t 198.18.0.100").service, svc(Protocol::Tcp, 0));
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
    assert_eq!(ok("-Z -t 198.18.0.100:80").service, svc(Protocol::Tcp, 80));
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
    let t = ok(&format!("{a} -y 1 -x 2"));
    assert_eq!((t.u_threshold, t.l_threshold), (2, 1));
    let t = ok(&format!("{a} -x 0"));
    assert_eq!((t.u_threshold, t.l_threshold), (0, 0));
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
        svc(Protocol::Tcp, 6033)
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
        svc(Protocol::Tcp, 80)
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
            service: svc(Protocol::Tcp, 6033),
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
        "one of rr|wrr|lc|wlc|sed|nq|mh,",
        "the default scheduler is wlc.",
        "--u-threshold  -x uthreshold",
        "--thresholds",
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
                !((i.connection || i.timeout || i.daemon) && (i.stats || i.rate || i.thresholds)),
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
                i.real.is_none() && i.scheduler.is_none() && i.weight.is_none() && no_list_flags,
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
