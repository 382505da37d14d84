//! `lbadm attach / status / detach` as an operator runs them, including every way attach can
//! fail: a one-line error naming the cause and the fix, a non-zero exit, nothing left behind.

use lb_tests::{
    assertions::{assert_one_line_error, text},
    fixture::PinDir,
    lbadm_bin,
    netns::Netns,
    testbed::{TestBed, TestBedOpts},
};
use std::{os::unix::process::CommandExt, path::Path, process::Output};

fn lbadm(ns: &Netns, pins: &Path, args: &[&str]) -> Output {
    let mut cmd = ns.command(lbadm_bin());
    cmd.arg("--pin-dir").arg(pins).args(args);
    cmd.output().expect("running lbadm")
}

#[test]
fn attach_status_detach_round_trip() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "cli".into(),
        ..Default::default()
    })
    .unwrap();
    let d = bed.director();
    let pins = PinDir::new("cli");
    let fwd_key = "net.ipv4.conf.eth0.forwarding";
    assert_eq!(d.sysctl_read(fwd_key).unwrap(), "0");

    let o = lbadm(d, &pins.0, &["attach", "--iface", "eth0"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.contains("attached to eth0 (native XDP), tunnel source 198.18.0.2"),
        "{out}"
    );
    assert_eq!(
        d.sysctl_read(fwd_key).unwrap(),
        "1",
        "bpf_fib_lookup needs forwarding"
    );

    let o = lbadm(d, &pins.0, &["status"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.starts_with("data path: attached on eth0 (native XDP), tunnel source 198.18.0.2"),
        "{out}"
    );
    let o = lbadm(d, &pins.0, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["attached"], true);
    assert_eq!(v["iface"], "eth0");
    assert!(v["counters"]["pass_not_service"].as_u64().is_some());

    // Attaching again upgrades in place; attaching elsewhere is refused.
    let o = lbadm(d, &pins.0, &["attach", "--iface", "eth0"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o).0.contains("eth0: upgraded in place"),
        "{:?}",
        text(&o)
    );
    assert_one_line_error(
        &lbadm(d, &pins.0, &["attach", "--iface", "lo"]),
        &["is attached to eth0", "detach it first"],
    );

    let o = lbadm(d, &pins.0, &["detach"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!pins.0.exists(), "pins left behind");
    assert_eq!(
        d.sysctl_read(fwd_key).unwrap(),
        "0",
        "forwarding not restored"
    );
    assert_one_line_error(
        &lbadm(d, &pins.0, &["status"]),
        &["not attached", "lbadm attach --iface IF"],
    );

    // Detached means really detached: attaching again works, here in generic mode.
    let o = lbadm(d, &pins.0, &["attach", "--iface", "eth0", "--generic"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("(generic XDP)"));
    assert!(
        text(&lbadm(d, &pins.0, &["status"]))
            .0
            .contains("(generic XDP)")
    );
    assert!(lbadm(d, &pins.0, &["detach"]).status.success());
}

#[test]
fn attach_failures_are_one_line_and_leave_nothing() {
    let ns = Netns::new("cli-bad").unwrap();
    ns.add_veth("noaddr0", "noaddr1", &ns).unwrap();
    ns.set_up("noaddr0").unwrap();
    ns.set_up("noaddr1").unwrap();
    let pins = PinDir::new("clibad");

    assert_one_line_error(
        &lbadm(&ns, &pins.0, &["attach", "--iface", "nosuch0"]),
        &["no interface named `nosuch0`"],
    );
    assert!(!pins.0.exists());

    assert_one_line_error(
        &lbadm(&ns, &pins.0, &["attach", "--iface", "noaddr0"]),
        &["no IPv4 address", "--tunnel-source"],
    );
    assert!(!pins.0.exists());

    let not_bpffs = std::env::temp_dir().join(format!("lbadm-not-bpffs-{}", std::process::id()));
    assert_one_line_error(
        &lbadm(&ns, &not_bpffs, &["attach", "--iface", "noaddr0"]),
        &["bpffs", "mount -t bpf"],
    );
    assert!(!not_bpffs.exists());

    // (In the host namespace: an unprivileged child could not enter the test's namespace.)
    let mut cmd = std::process::Command::new(lbadm_bin());
    cmd.arg("--pin-dir").arg(&pins.0).args([
        "attach",
        "--iface",
        "lo",
        "--tunnel-source",
        "198.18.9.9",
    ]);
    cmd.uid(65534).gid(65534);
    assert_one_line_error(&cmd.output().unwrap(), &["root"]);
    assert!(!pins.0.exists());

    // None of the failures left XDP behind: a clean attach succeeds, with an explicit source.
    let o = lbadm(
        &ns,
        &pins.0,
        &[
            "attach",
            "--iface",
            "noaddr0",
            "--tunnel-source",
            "198.18.9.9",
        ],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o).0.contains("tunnel source 198.18.9.9"));
    assert!(lbadm(&ns, &pins.0, &["detach"]).status.success());
    assert!(!pins.0.exists());

    // Another XDP program on the interface: named, and nothing is changed.
    let index = ns.link_index("noaddr0").unwrap();
    let other = ns.run(|| lb_tests::lbbed::attach_pass(index)).unwrap();
    assert_one_line_error(
        &lbadm(
            &ns,
            &pins.0,
            &[
                "attach",
                "--iface",
                "noaddr0",
                "--tunnel-source",
                "198.18.9.9",
            ],
        ),
        &[
            "noaddr0 already has an XDP program attached: bench_empty (id ",
            "xdp off",
        ],
    );
    assert!(!pins.0.exists());
    drop(other);
}

/// A named network namespace (`ip netns add`), deleted on drop, even when the test fails.
struct NamedNetns(String);

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
        // What a failed test left behind in the namespace's name.
        for base in ["lbadm", "lbadm-decap"] {
            lb_userspace::sys::bpffs::remove_pins(
                &Path::new("/sys/fs/bpf").join(format!("{base}-{}", self.0)),
            );
        }
        let _ = std::fs::remove_dir_all(Path::new("/run/lbadm").join(format!("netns-{}", self.0)));
    }
}

/// Each named network namespace has its own data path, as each has its own IPVS table, and it
/// outlives the command that made it whether that ran under `ip netns exec` (a private mount
/// namespace whose /sys/fs/bpf vanishes with the command), `nsenter --net` or in the root
/// namespace: each finds what another left.
#[test]
fn each_named_netns_has_its_own_pins_under_ip_netns_exec_and_nsenter_alike() {
    let name = format!("lbadm-t{}", std::process::id());
    let run = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .env_remove("LBADM_PIN_DIR")
            .output()
            .expect("running a command")
    };
    assert!(run(&["ip", "netns", "add", &name]).status.success());
    let _ns = NamedNetns(name.clone());
    for args in [
        vec![
            "ip", "-n", &name, "link", "add", "a0", "type", "veth", "peer", "name", "a1",
        ],
        vec![
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            "198.18.9.9/24",
            "dev",
            "a0",
        ],
        vec!["ip", "-n", &name, "link", "set", "a0", "up"],
        vec!["ip", "-n", &name, "link", "set", "a1", "up"],
    ] {
        assert!(run(&args).status.success(), "{args:?}");
    }
    let lbadm = lbadm_bin();
    let lbadm = lbadm.to_str().unwrap();
    let pins = Path::new("/sys/fs/bpf").join(format!("lbadm-{name}"));
    let decap_pins = Path::new("/sys/fs/bpf").join(format!("lbadm-decap-{name}"));
    let exec = |args: &[&str]| {
        let mut all = vec!["ip", "netns", "exec", &name, lbadm];
        all.extend_from_slice(args);
        run(&all)
    };
    let net = format!("--net=/run/netns/{name}");
    let nsenter = |args: &[&str]| {
        let mut all = vec!["nsenter", &net, lbadm];
        all.extend_from_slice(args);
        run(&all)
    };
    let forwarding = || {
        let o = run(&[
            "ip",
            "netns",
            "exec",
            &name,
            "cat",
            "/proc/sys/net/ipv4/conf/a0/forwarding",
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };

    let o = exec(&["attach", "--iface", "a0"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(
        text(&o).0.contains(&format!("lbadm-{name}")),
        "{:?}",
        text(&o)
    );
    // Seen from the root namespace, after the command ended: the link is pinned and holds the
    // program on a0, and forwarding stays on.
    assert!(pins.join("link_xdp").exists());
    assert_eq!(forwarding(), "1");
    let o = exec(&["status"]);
    assert!(
        text(&o).0.starts_with("data path: attached on a0"),
        "{:?}",
        text(&o)
    );
    let o = exec(&["-A", "-t", "198.18.9.100:80", "-s", "rr"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = nsenter(&["-L", "-n"]);
    assert!(text(&o).0.contains("198.18.9.100:80 rr"), "{:?}", text(&o));
    let o = nsenter(&["-a", "-t", "198.18.9.100:80", "-r", "198.18.9.20", "-i"]);
    assert!(o.status.success(), "{:?}", text(&o));
    let o = exec(&["-L", "-n"]);
    assert!(text(&o).0.contains("-> 198.18.9.20:80"), "{:?}", text(&o));
    // The host's namespace has its own data path (or none): the service is not in it.
    let o = run(&[lbadm, "-L", "-n"]);
    let (out, err) = text(&o);
    assert!(
        !out.contains("198.18.9.100") && !err.contains("198.18.9.100"),
        "{out}{err}"
    );

    let o = exec(&["detach"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!pins.exists());
    assert_eq!(forwarding(), "0", "detach restores forwarding");

    // A real server's XDP decapsulation, set up under `ip netns exec`: pinned
    // where it outlives the command, its files in the namespace's own /run directory.
    let o = exec(&[
        "realserver",
        "setup",
        "--decap",
        "xdp",
        "--director",
        "198.18.9.9",
        "--vip",
        "198.18.9.101",
        "--iface",
        "a1",
    ]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(decap_pins.join("link_xdp").exists());
    let run_dir = Path::new("/run/lbadm").join(format!("netns-{name}"));
    assert!(run_dir.join("realserver.json").exists());
    let o = nsenter(&["realserver", "check", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{:?}", text(&o));
    let o = exec(&["realserver", "teardown"]);
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(!decap_pins.exists() && !run_dir.join("realserver.json").exists());
}
