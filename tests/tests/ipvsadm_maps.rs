//! The ipvsadm layer against real pinned maps (no interface needed): save/clear/restore round
//! trips, all-or-nothing restore, and random command lines that must never panic nor leave a
//! partial change behind.

use lb_tests::fixture::PinDir;
use lb_userspace::{
    director::{Maps, datapath},
    ipvsadm::{Outcome, run},
};
use std::path::Path;

struct Director {
    _bpf: aya::Ebpf,
    pins: PinDir,
}

fn director() -> Director {
    let pins = PinDir::new("ipvsmaps");
    let sizes = datapath::TableSizes::for_conns(1 << 16).unwrap();
    let bpf = datapath::load(&pins.0, datapath::LogLevel::Off, sizes).unwrap();
    Director { _bpf: bpf, pins }
}

fn lbadm(pins: &Path, args: &[&str], stdin: &str) -> Outcome {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    run("lbadm", &args, pins, &mut stdin.as_bytes())
}

fn ok(pins: &Path, args: &[&str], stdin: &str) -> String {
    let o = lbadm(pins, args, stdin);
    assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
    o.stdout
}

/// Everything a configuration command may change.
fn snapshot(pins: &Path) -> String {
    let maps = Maps::open(pins).unwrap();
    let filter: Vec<u64> = (0..lb_common::VIP_FILTER_WORDS)
        .map(|i| maps.vip_filter.get(&i, 0).unwrap())
        .collect();
    format!(
        "{:?}\n{:?}",
        maps.read().unwrap(),
        filter.iter().filter(|w| **w != 0).collect::<Vec<_>>()
    )
}

const RULES: &str = "\
-A -t 198.18.0.100:6033 -s wrr
-a -t 198.18.0.100:6033 -r 198.18.0.11:6033 -i -w 3 --tun-type ipip
-a -t 198.18.0.100:6033 -r 198.18.0.12:6033 -i -w 1 --tun-type ipip
-A -t 198.18.0.100:3306 -s rr -p 600
-a -t 198.18.0.100:3306 -r 198.18.0.13:3306 -i -w 0 --tun-type ipip
-A -u 198.18.0.101:53 -s mh
-a -u 198.18.0.101:53 -r 198.18.0.21:53 -i -w 2147483647 --tun-type ipip
";

#[test]
fn save_clear_restore_round_trips() {
    let d = director();
    let p = &d.pins.0;
    ok(p, &["-R"], RULES);
    let saved = ok(p, &["-S", "-n"], "");
    // Sorted as ipvsadm sorts: TCP before UDP, then address, then port.
    assert_eq!(
        saved,
        "-A -t 198.18.0.100:3306 -s rr -p 600\n\
         -a -t 198.18.0.100:3306 -r 198.18.0.13:3306 -i -w 0 --tun-type ipip\n\
         -A -t 198.18.0.100:6033 -s wrr\n\
         -a -t 198.18.0.100:6033 -r 198.18.0.11:6033 -i -w 3 --tun-type ipip\n\
         -a -t 198.18.0.100:6033 -r 198.18.0.12:6033 -i -w 1 --tun-type ipip\n\
         -A -u 198.18.0.101:53 -s mh\n\
         -a -u 198.18.0.101:53 -r 198.18.0.21:53 -i -w 2147483647 --tun-type ipip\n"
    );
    ok(p, &["-C"], "");
    assert_eq!(ok(p, &["-S", "-n"], ""), "");
    ok(p, &["-R"], &saved);
    assert_eq!(ok(p, &["-S", "-n"], ""), saved);
    // ipvsadm-save output with comments, a leading `ipvsadm` and old-style tunnel lines.
    ok(p, &["-C"], "");
    let old = "# saved by hand\n\nipvsadm -A -t 198.18.0.100:6033 -s wrr   # main\n-a -t 198.18.0.100:6033 -r 198.18.0.11:6033 -i -w 3\r\n";
    ok(p, &["-R"], old);
    assert_eq!(
        ok(p, &["-S", "-n"], ""),
        "-A -t 198.18.0.100:6033 -s wrr\n-a -t 198.18.0.100:6033 -r 198.18.0.11:6033 -i -w 3 --tun-type ipip\n"
    );
}

#[test]
fn restore_is_all_or_nothing() {
    let d = director();
    let p = &d.pins.0;
    ok(p, &["-R"], RULES);
    let before = snapshot(p);
    // ipvsadm's message for the failing line, prefixed with the line's number (lbadm's).
    for (bad, code, msg) in [
        // a parse error on the last line
        (
            "-A -t 198.18.0.102:80\n-a -t 198.18.0.102:80 -r 198.18.0.30 -w abc\n",
            2,
            "line 2: illegal weight specified\n",
        ),
        // an operation error in the middle, after comments and blank lines
        (
            "# saved\n\n-A -t 198.18.0.102:80\n-A -t 198.18.0.100:6033\n-A -t 198.18.0.103:80\n",
            255,
            "line 4: Service already exists\n",
        ),
        (
            "-d -t 198.18.0.100:6033 -r 198.18.0.99\n",
            255,
            "line 1: No such destination\n",
        ),
        (
            "-A -t 198.18.0.104:80 -s lblc\n",
            255,
            "line 1: Scheduler or persistence engine not found\n",
        ),
    ] {
        let o = lbadm(p, &["-R"], bad);
        assert_eq!((o.code, o.stderr.as_str()), (code, msg), "{bad}");
        assert_eq!(
            snapshot(p),
            before,
            "a failed restore changed the maps: {bad}"
        );
    }
}

#[test]
fn restore_of_a_thousand_services_with_ten_reals_each() {
    let d = director();
    let p = &d.pins.0;
    let rules = lb_tests::assertions::restore_rules(1000, 10);
    let t = std::time::Instant::now();
    ok(p, &["-R"], &rules);
    let restore = t.elapsed();
    let t = std::time::Instant::now();
    let listing = ok(p, &["-L", "-n"], "");
    let list = t.elapsed();
    eprintln!("restore 1000x10: {restore:?}; -L -n: {list:?}");
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("TCP  ")).count(),
        1000
    );
    assert_eq!(
        listing.lines().filter(|l| l.starts_with("  -> ")).count() - 1,
        10_000
    );
    let saved = ok(p, &["-S", "-n"], "");
    assert_eq!(saved.lines().count(), 11_000);
}

#[test]
fn not_attached_gives_a_hint() {
    let o = lbadm(
        Path::new("/sys/fs/bpf/lbadm-test-never-there"),
        &["-L", "-n"],
        "",
    );
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("lbadm attach --iface IF"), "{}", o.stderr);
    assert_eq!(o.stderr.lines().count(), 1);
}

/// A small deterministic generator (xorshift), so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[(self.next() % v.len() as u64) as usize]
    }
}

#[test]
fn random_command_lines_never_panic_and_failures_change_nothing() {
    let d = director();
    let p = &d.pins.0;
    const WORDS: &[&str] = &[
        "-A",
        "-E",
        "-D",
        "-C",
        "-a",
        "-e",
        "-d",
        "-L",
        "-l",
        "-Z",
        "-S",
        "-t",
        "-u",
        "-f",
        "1",
        "198.18.0.100:6033",
        "198.18.0.100:0",
        "198.18.0.100",
        "198.18.0.11",
        "198.18.0.12:6033",
        "[::1]:80",
        "host.invalid:80",
        "-r",
        "-w",
        "3",
        "0",
        "-1",
        "abc",
        "2147483647",
        "2147483648",
        "-p",
        "600",
        "0",
        "2678401",
        "-s",
        "rr",
        "wrr",
        "wlc",
        "mh",
        "sh",
        "-i",
        "-g",
        "-m",
        "-n",
        "--stats",
        "-c",
        "--exact",
        "--timeout",
        "-Ln",
        "-At",
        "-x",
        "10",
        "--tun-type",
        "gue",
        "ipip",
        "--json",
        "-o",
        "-M",
        "255.255.255.0",
        "--nosort",
        "junk",
        "--bogus",
        "-h",
        "-v",
        "-Sn",
    ];
    let mut rng = Rng(0x5eed_1bad_c0ff_ee11);
    let mut failures = 0;
    for case in 0..800 {
        if case % 100 == 0 {
            // Start from a non-empty table now and then, so edits and deletes can succeed.
            ok(p, &["-C"], "");
            ok(p, &["-R"], RULES);
        }
        let n = 1 + (rng.next() % 8) as usize;
        let args: Vec<&str> = (0..n).map(|_| rng.pick(WORDS)).collect();
        let before = snapshot(p);
        let o = lbadm(p, &args, "");
        assert!(
            [0, 1, 2, 255].contains(&o.code),
            "{args:?} exited {}",
            o.code
        );
        if o.code != 0 {
            failures += 1;
            assert!(!o.stderr.is_empty(), "{args:?} failed silently");
            assert_eq!(
                snapshot(p),
                before,
                "{args:?} failed ({}) but changed the maps",
                o.stderr.trim()
            );
        }
    }
    assert!(
        failures > 300,
        "the generator hardly exercised failures ({failures})"
    );
}

#[test]
fn concurrent_lbadm_processes_never_corrupt_the_tables() {
    let d = director();
    let p = d.pins.0.clone();
    ok(&p, &["-A", "-t", "198.18.0.100:6033"], "");
    ok(&p, &["-A", "-t", "198.18.0.101:6033"], "");
    // Two writers interleave adds and deletes on two services; each read-modify-write holds
    // the lock, so neither loses the other's changes.
    let workers: Vec<_> = ["198.18.0.100:6033", "198.18.0.101:6033"]
        .into_iter()
        .map(|vip| {
            let p = p.clone();
            std::thread::spawn(move || {
                for round in 0..30u8 {
                    for r in 1..=5u8 {
                        let real = format!("198.18.1.{r}");
                        ok(
                            &p,
                            &[
                                "-a",
                                "-t",
                                vip,
                                "-r",
                                &real,
                                "-i",
                                "-w",
                                &(round as u32 + 1).to_string(),
                            ],
                            "",
                        );
                    }
                    for r in 1..=5u8 {
                        ok(&p, &["-d", "-t", vip, "-r", &format!("198.18.1.{r}")], "");
                    }
                }
                ok(&p, &["-a", "-t", vip, "-r", "198.18.1.5", "-i"], "");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        ok(&p, &["-S", "-n"], ""),
        "-A -t 198.18.0.100:6033 -s wlc\n-a -t 198.18.0.100:6033 -r 198.18.1.5:6033 -i -w 1 --tun-type ipip\n\
         -A -t 198.18.0.101:6033 -s wlc\n-a -t 198.18.0.101:6033 -r 198.18.1.5:6033 -i -w 1 --tun-type ipip\n"
    );
}

#[test]
fn stats_rate_and_json_listings() {
    let d = director();
    let p = &d.pins.0;
    ok(p, &["-R"], RULES);
    let stats = ok(p, &["-L", "-n", "--stats", "-t", "198.18.0.100:6033"], "");
    assert_eq!(
        stats,
        "Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes\n  -> RemoteAddress:Port\n\
         TCP  198.18.0.100:6033                   0        0        0        0        0\n\
         \x20 -> 198.18.0.11:6033                    0        0        0        0        0\n\
         \x20 -> 198.18.0.12:6033                    0        0        0        0        0\n"
    );
    let rate = ok(p, &["-L", "-n", "--rate", "-t", "198.18.0.100:6033"], "");
    assert!(
        rate.starts_with(
            "Prot LocalAddress:Port                 CPS    InPPS   OutPPS    InBPS   OutBPS\n"
        ),
        "{rate}"
    );
    assert_eq!(
        ok(p, &["-L", "--timeout"], ""),
        "Timeout (tcp tcpfin udp): 900 120 300\n"
    );
    let v: serde_json::Value = serde_json::from_str(&ok(p, &["-L", "-n", "--json"], "")).unwrap();
    let svcs = v.as_array().expect("an array of services");
    assert_eq!(svcs.len(), 3);
    let s3306 = svcs.iter().find(|s| s["port"] == 3306).unwrap();
    assert_eq!(s3306["persistent"], 600);
    assert_eq!(s3306["reals"][0]["weight"], 0);
    ok(p, &["-Z"], "");
    let o = lbadm(p, &["-Z", "-t", "198.18.0.100:1"], "");
    assert_eq!((o.code, o.stderr.as_str()), (255, "No such service\n"));
}

/// Kernel IPVS refuses a real server that is not a unicast address (EINVAL, which ipvsadm
/// words as below); so does lbadm, in `-a`, `-e` and `-R`, and changes nothing.
#[test]
fn reals_that_cannot_be_hosts_are_refused_as_ipvsadm_does() {
    let d = director();
    let p = &d.pins.0;
    ok(p, &["-A", "-t", "198.18.0.100:7000", "-s", "rr"], "");
    ok(
        p,
        &["-a", "-t", "198.18.0.100:7000", "-r", "198.18.0.11", "-i"],
        "",
    );
    let before = snapshot(p);
    for bad in ["255.255.255.255", "0.0.0.0", "224.0.0.1", "198.18.0.100"] {
        for args in [
            vec!["-a", "-t", "198.18.0.100:7000", "-r", bad, "-i"],
            vec!["-e", "-t", "198.18.0.100:7000", "-r", bad, "-i"],
        ] {
            let o = lbadm(p, &args, "");
            assert_eq!(
                (o.code, o.stderr.as_str()),
                (
                    255,
                    "Invalid operation.  Possibly wrong module version, address not unicast, ...\n"
                ),
                "{args:?}"
            );
        }
        let o = lbadm(
            p,
            &["-R"],
            &format!("-a -t 198.18.0.100:7000 -r {bad} -i -w 1\n"),
        );
        assert_eq!(o.code, 255, "{bad}: {}", o.stderr);
        assert_eq!(snapshot(p), before, "{bad}");
    }
}

/// `--pin-dir DIR` and `--pin-dir=DIR`, which `lbadm --help` advertises, work before ipvsadm's
/// options as before lbadm's own verbs.
#[test]
fn pin_dir_comes_first_in_either_form() {
    let d = director();
    let p = d.pins.0.to_str().unwrap();
    ok(
        &d.pins.0,
        &["-A", "-t", "198.18.0.100:7000", "-s", "rr"],
        "",
    );
    let lbadm = |args: &[&str]| {
        std::process::Command::new(lb_tests::lbadm_bin())
            .env_remove("LBADM_PIN_DIR")
            .args(args)
            .output()
            .unwrap()
    };
    let eq = format!("--pin-dir={p}");
    for args in [
        vec!["--pin-dir", p, "-L", "-n"],
        vec![eq.as_str(), "-L", "-n"],
        vec![eq.as_str(), "-S", "-n"],
    ] {
        let o = lbadm(&args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(out.contains("198.18.0.100:7000"), "{args:?}: {out}");
    }
    // Before a verb, in both forms.
    for args in [
        vec!["--pin-dir", p, "allow", "list"],
        vec![eq.as_str(), "allow", "list"],
    ] {
        let o = lbadm(&args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = lbadm(&["--pin-dir"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--pin-dir"),
        "{o:?}"
    );
}

/// `lbadm --help` is ipvsadm's usage, and lists lbadm's own commands after it.
#[test]
fn help_lists_ipvsadm_options_and_lbadm_commands() {
    for flag in ["--help", "-h"] {
        let o = std::process::Command::new(lb_tests::lbadm_bin())
            .arg(flag)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{flag}");
        assert!(out.contains("--add-service"), "{out}");
        for verb in [
            "attach",
            "detach",
            "status",
            "daemon",
            "realserver",
            "trace",
            "allow",
        ] {
            assert!(
                out.lines().any(|l| l.trim_start().starts_with(verb)),
                "{verb} missing from {flag}:\n{out}"
            );
        }
    }
}

/// A megabyte token is not echoed back whole; a restore over the data path's limits names
/// the limit after ipvsadm's words.
#[test]
fn restore_errors_stay_short_and_name_the_limit() {
    let d = director();
    let p = &d.pins.0;
    let huge = "x".repeat(1 << 20);
    let o = lbadm(
        p,
        &["-R"],
        &format!("-A -t 198.18.0.100:80\n-A -t 198.18.0.101:80 {huge}\n"),
    );
    assert_eq!(o.code, 2);
    assert!(o.stderr.len() < 200, "{} bytes of stderr", o.stderr.len());
    assert!(o.stderr.starts_with("line 2: "), "{}", o.stderr);
    assert!(o.stderr.contains("(1048576 bytes)"), "{}", o.stderr);
    let o = lbadm(p, &["-A", "-t", "198.18.0.100:80", &huge], "");
    assert!(o.stderr.len() < 200 && o.code != 0, "{}", o.stderr.len());
    let rules: String = (0..lb_common::MAX_SERVICES + 1)
        .map(|i| format!("-A -t 10.{}.{}.1:80\n", i / 256, i % 256))
        .collect();
    let o = lbadm(p, &["-R"], &rules);
    assert_eq!(
        (o.code, o.stderr.as_str()),
        (
            255,
            "Memory allocation problem\nlbadm: too many virtual services (the maximum is 2048)\n"
        )
    );
    assert!(
        ok(p, &["-L", "-n"], "").lines().count() <= 3,
        "nothing was added"
    );
}
