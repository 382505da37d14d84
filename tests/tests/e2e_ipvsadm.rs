//! The ipvsadm command line end to end: configure with `lbadm -A/-a`, run connections, watch
//! them in `-L -n` and `-c`, change a weight with `-e`, remove a real with `-d`, and see the
//! data path follow.

use lb_tests::{
    assertions::{lbadm_in as lbadm, ok},
    fixture::PinDir,
    lbadm_bin,
    lbbed::{Decap, attach_pass},
    testbed::{TestBed, TestBedOpts, tcp_echo_request},
};
use std::net::SocketAddrV4;

fn who(bed: &TestBed, n: usize) -> Vec<String> {
    lb_tests::assertions::who_answers(bed, 6033, n)
}

#[test]
fn configure_list_edit_delete_through_lbadm() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "ipvs".into(),
        ..Default::default()
    })
    .unwrap();
    let _servers = bed.start_echo_servers(6033).unwrap();
    let pins = PinDir::new("ipvs");
    let d = bed.director();
    let attach = d
        .command(lbadm_bin())
        .args(["--pin-dir"])
        .arg(&pins.0)
        .args(["attach", "--iface", "eth0", "--conn-table", "65536"])
        .output()
        .unwrap();
    ok(attach);
    let peer = bed.director_host().bridge_port().index;
    let _peer = bed.bridge().run(move || attach_pass(peer)).unwrap();
    let _decap = Decap::attach_all(&bed).unwrap();

    ok(lbadm(
        d,
        &pins.0,
        &["-A", "-t", "198.18.0.100:6033", "-s", "wrr"],
    ));
    ok(lbadm(
        d,
        &pins.0,
        &[
            "-a",
            "-t",
            "198.18.0.100:6033",
            "-r",
            "198.18.0.11",
            "-i",
            "-w",
            "3",
        ],
    ));
    ok(lbadm(
        d,
        &pins.0,
        &[
            "-a",
            "-t",
            "198.18.0.100:6033",
            "-r",
            "198.18.0.12:6033",
            "-i",
            "-w",
            "1",
        ],
    ));
    // Connections that stay open show up as active.
    let vip = SocketAddrV4::new(bed.vip(), 6033);
    let held: Vec<_> = (0..4)
        .map(|_| {
            bed.client()
                .run(|| std::net::TcpStream::connect(vip).unwrap())
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let listing = ok(lbadm(d, &pins.0, &["-L", "-n"]));
    // Which real each held connection got depends on the CPUs that scheduled them; the layout
    // does not.
    let active: Vec<u32> = listing
        .lines()
        .filter(|l| l.starts_with("  -> 198"))
        .map(|l| l.split_whitespace().nth(4).unwrap().parse().unwrap())
        .collect();
    assert_eq!(active.iter().sum::<u32>(), 4, "{listing}");
    assert_eq!(
        listing,
        format!(
            "IP Virtual Server version 1.2.1 (size=65536)\n\
             Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn\n\
             TCP  198.18.0.100:6033 wrr\n  -> 198.18.0.11:6033             Tunnel  3      {:<10} 0         \n\
             \x20 -> 198.18.0.12:6033             Tunnel  1      {:<10} 0         \n",
            active[0], active[1]
        )
    );
    let conns = ok(lbadm(d, &pins.0, &["-L", "-n", "-c"]));
    assert!(conns.starts_with("IPVS connection entries\npro expire state       source             virtual            destination\n"), "{conns}");
    assert_eq!(conns.matches("ESTABLISHED").count(), 4, "{conns}");
    assert!(
        conns.contains("15:0"),
        "established entries expire in 15 minutes: {conns}"
    );
    drop(held);

    // Weight 0 on real2: new connections all go to real1.
    ok(lbadm(
        d,
        &pins.0,
        &[
            "-e",
            "-t",
            "198.18.0.100:6033",
            "-r",
            "198.18.0.12",
            "-i",
            "-w",
            "0",
        ],
    ));
    assert!(who(&bed, 20).iter().all(|r| r == "real1"));
    // Back to 1:1, then delete real1: everything goes to real2.
    ok(lbadm(
        d,
        &pins.0,
        &[
            "-e",
            "-t",
            "198.18.0.100:6033",
            "-r",
            "198.18.0.12",
            "-i",
            "-w",
            "3",
        ],
    ));
    let split = who(&bed, 40);
    assert!(
        split.iter().any(|r| r == "real2") && split.iter().any(|r| r == "real1"),
        "{split:?}"
    );
    ok(lbadm(
        d,
        &pins.0,
        &["-d", "-t", "198.18.0.100:6033", "-r", "198.18.0.11"],
    ));
    assert!(who(&bed, 20).iter().all(|r| r == "real2"));
    let stats = ok(lbadm(d, &pins.0, &["-L", "-n", "--stats"]));
    assert!(stats.contains("  -> 198.18.0.12:6033"), "{stats}");
    assert!(!stats.contains("198.18.0.11"), "{stats}");

    // Errors: exit codes and texts as ipvsadm's.
    let o = lbadm(
        d,
        &pins.0,
        &["-a", "-t", "198.18.0.100:6033", "-r", "198.18.0.12", "-i"],
    );
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stderr).as_ref()),
        (Some(255), "Destination already exists\n")
    );
    let o = lbadm(d, &pins.0, &["-L", "-n", "-t", "198.18.0.100:80"]);
    assert_eq!(
        (o.status.code(), String::from_utf8_lossy(&o.stderr).as_ref()),
        (Some(1), "No such service\n")
    );

    ok(lbadm(d, &pins.0, &["-D", "-t", "198.18.0.100:6033"]));
    let o = tcp_echo_request(bed.client(), vip, b"x\n");
    assert!(o.is_err(), "the deleted service still answered: {o:?}");
    ok(d.command(lbadm_bin())
        .args(["--pin-dir"])
        .arg(&pins.0)
        .arg("detach")
        .output()
        .unwrap());
}
