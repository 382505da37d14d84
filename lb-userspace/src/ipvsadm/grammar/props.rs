//! Property tests: whatever argv or restore input comes, the grammar answers (an invocation or
//! ipvsadm's error with its exit code), never panics, and a refused line says why in one line.
use super::{Lookup, parse_with, restore_lines};
use proptest::prelude::*;
use std::net::Ipv4Addr;

/// Names resolve to nothing: no DNS from a property test.
struct NoLookup;

impl Lookup for NoLookup {
    fn host(&self, _: &str) -> Option<Ipv4Addr> {
        None
    }
    fn service(&self, _: &str, _: &str) -> Option<u16> {
        None
    }
}

/// Tokens an operator (or a script gone wrong) might type, and pieces to glue into new ones.
const WORDS: &[&str] = &[
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
    "-h",
    "-V",
    "-n",
    "-t",
    "-u",
    "-f",
    "-s",
    "-p",
    "-M",
    "-r",
    "-g",
    "-i",
    "-m",
    "-w",
    "-x",
    "-y",
    "-c",
    "-6",
    "-Ln",
    "-At",
    "-Sn",
    "-lcn",
    "--add-service",
    "--tcp-service",
    "--udp-service",
    "--scheduler",
    "--persistent",
    "--netmask",
    "--real-server",
    "--weight",
    "--u-threshold",
    "--l-threshold",
    "--stats",
    "--rate",
    "--thresholds",
    "--persistent-conn",
    "--sort",
    "--exact",
    "--numeric",
    "--connection",
    "--timeout",
    "--daemon",
    "--json",
    "--help",
    "--pe",
    "--sched-flags",
    "-b",
    "--set",
    "--start-daemon",
    "--stop-daemon",
    "--mcast-interface",
    "198.18.0.100:6033",
    "198.18.0.11",
    "198.18.0.11:6033",
    "10.0.0.0",
    "255.255.255.255",
    "0.0.0.0:0",
    "[::1]:80",
    "1.2.3.4:65536",
    "1.2.3.4:-1",
    "1.2.3.4:",
    ":80",
    "rr",
    "wrr",
    "wlc",
    "lc",
    "sed",
    "nq",
    "mh",
    "sh",
    "dh",
    "0",
    "1",
    "-1",
    "4294967296",
    "300",
    "9999999999",
    "255.255.255.0",
    "/24",
    "ipvsadm",
    "#",
    "",
    "=",
    "--weight=3",
    "-w3",
    "-s=rr",
];

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(WORDS).prop_map(str::to_string),
        1 => "[-:.=/0-9a-z#\\[\\] ]{0,12}",
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn any_argv_gets_an_answer(args in proptest::collection::vec(token(), 0..10)) {
        if let Err(e) = parse_with("lbadm", &args, &NoLookup) {
            prop_assert!(e.exit_code == 2 || e.exit_code == 255, "{e:?}");
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn any_restore_input_splits_into_lines_that_parse_or_not(
        lines in proptest::collection::vec(proptest::collection::vec(token(), 0..8), 0..6),
        noise in any::<String>(),
    ) {
        let mut input: String = lines.iter().map(|l| l.join(" ") + "\n").collect();
        input.push_str(&noise);
        for line in restore_lines(&input) {
            prop_assert!(!line.is_empty());
            prop_assert!(line.iter().all(|t| !t.is_empty() && !t.contains('#') && t != "ipvsadm"));
            let _ = parse_with("lbadm", &line, &NoLookup);
        }
    }
}
