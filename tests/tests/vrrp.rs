//! A VRRP director pair (keepalived with the shipped configuration, `lbadm status --ready` as
//! its track script) for sites without BGP: the VIP moves to the backup when the master dies,
//! and the connections it carried continue there because the directors sync them.

use lb_tests::{
    assertions::wait_until,
    directors::{DirectorDaemon, ServiceSpec},
    fleet::Keepalived,
    held::Held,
    lbbed::Decap,
    testbed::{TestBed, TestBedOpts},
};
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

const PORT: u16 = 7000;

fn holds_vip(bed: &TestBed, i: usize) -> bool {
    bed.director_n(i)
        .ns()
        .ipv4_addrs("eth0")
        .is_ok_and(|a| a.iter().any(|(ip, _)| *ip == bed.vip()))
}

#[test]
fn the_vip_moves_to_the_backup_and_connections_continue() {
    let mut bed = TestBed::new(TestBedOpts {
        prefix: "vrrp".into(),
        directors: 2,
        vrrp: true,
        ..Default::default()
    })
    .unwrap();
    for g in bed.start_line_echo_servers(PORT).unwrap() {
        bed.own(g);
    }
    let _decap = Decap::attach_all(&bed).unwrap();
    let svc = [ServiceSpec::tcp(PORT, "rr", vec![1, 1])];
    let mut daemons = Vec::new();
    let mut vrrp = Vec::new();
    for (i, priority) in [(1, 150), (2, 100)] {
        let d = DirectorDaemon::start(&bed, i, &svc, true).unwrap();
        let ready = d.ready_command();
        vrrp.push(
            Keepalived::start(
                bed.director_n(i).ns(),
                &format!("director{i}"),
                priority,
                &ready,
            )
            .unwrap(),
        );
        daemons.push(d);
    }
    wait_until("director 1 is master", Duration::from_secs(15), || {
        holds_vip(&bed, 1)
    });
    // Director 2 may have been master for a moment if its readiness script passed first;
    // director 1's higher priority preempts it.
    wait_until("director 2 is backup", Duration::from_secs(5), || {
        !holds_vip(&bed, 2)
    });
    for k in &vrrp {
        let log = k.log();
        assert!(log.contains("VRRP_Script(lbadm_ready) succeeded"), "{log}");
        assert!(!log.contains("Disabling track script"), "{log}");
    }
    wait_until("both synced", Duration::from_secs(10), || {
        daemons.iter().all(|d| d.sync_ready())
    });
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let mut held = Held::open(bed.client(), vip, 500).unwrap();
    wait_until(
        "director 2 has the connections",
        Duration::from_secs(10),
        || daemons[1].connections().unwrap() >= 500,
    );

    // Director 1 dies: its link is cut and its processes are killed.
    let cut = Instant::now();
    bed.bridge()
        .set_down(&bed.director_n(1).bridge_port().name)
        .unwrap();
    vrrp[0].kill();
    daemons[0].signal(libc::SIGKILL);
    let took = wait_until("director 2 takes the VIP", Duration::from_secs(10), || {
        holds_vip(&bed, 2)
    });
    // New connections work again as soon as the client's ARP entry follows the gratuitous ARP.
    let mut fresh_at = None;
    while fresh_at.is_none() && cut.elapsed() < Duration::from_secs(10) {
        if Held::open(bed.client(), vip, 1).is_ok() {
            fresh_at = Some(cut.elapsed());
        }
    }
    let tally = held.probe();
    eprintln!(
        "VRRP: director 2 holds the VIP {took:?} after director 1 died (advert 1 s: 3 adverts + skew); new connections from {fresh_at:?}; held: {tally:?} of 500\n{}",
        vrrp[1]
            .log()
            .lines()
            .filter(|l| l.contains("MASTER"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(tally.same * 1000 >= 500 * 999, "{tally:?}");
    let fresh_at = fresh_at.expect("new connections through director 2");
    assert!(
        fresh_at < Duration::from_millis(3 * 1000 + 1000),
        "{fresh_at:?}"
    );
}
