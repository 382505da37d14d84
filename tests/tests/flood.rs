//! The connection table under attack: floods of spoofed SYNs (and of ACKs), four times the
//! table's size, each packet sent twice, one sender per CPU, evict none of the established
//! connections held through the director — with flood mode off and on. They go on carrying
//! data on the same real, and new connections work.

use lb_common::{DEFAULT_FLOOD_RATE, Limits, Reason};
use lb_tests::{
    assertions::{lbadm_in, ok},
    flood::{self, Target},
    held::Held,
    lbbed::{Decap, Director, service},
    packet::{TCP_ACK, TCP_SYN},
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::{Protocol, Scheduler};
use std::net::SocketAddrV4;

const PORT: u16 = 6033;

fn reason(d: &Director, r: Reason) -> u64 {
    d.maps
        .reasons()
        .unwrap()
        .into_iter()
        .find(|(x, _)| *x == r)
        .map_or(0, |(_, n)| n)
}

#[test]
fn spoofed_floods_lose_no_established_connection() {
    let bed = TestBed::new(TestBedOpts {
        prefix: "fld".into(),
        ..Default::default()
    })
    .unwrap();
    let _servers = bed.start_line_echo_servers(PORT).unwrap();
    let _decap = Decap::attach_all(&bed).unwrap();
    let mut dir = Director::attach(&bed).unwrap();
    // rr: a connection scheduled afresh lands on the other real half of the time, so a lost
    // entry shows as a lost connection.
    dir.maps
        .apply(&[service(&bed, Protocol::Tcp, PORT, Scheduler::Rr, &[1, 1])])
        .unwrap();
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let mut held = Held::open(bed.client(), vip, 50).unwrap();
    held.check("before the floods");
    let (size, _) = dir.maps.table_sizes().unwrap();

    // Each flood from its own sources: an ACK on the tuple of a recorded SYN would complete
    // its handshake (LVS-TUN never sees the real's SYN-ACK, so no director can tell).
    for (seed, (what, flags, flood_rate)) in [
        ("SYN flood, flood mode off", TCP_SYN, 0),
        ("ACK flood, flood mode off", TCP_ACK, 0),
        ("SYN flood, flood mode on", TCP_SYN, DEFAULT_FLOOD_RATE),
    ]
    .into_iter()
    .enumerate()
    {
        dir.maps
            .set_limits(&Limits {
                flood_rate,
                ..dir.maps.limits().unwrap()
            })
            .unwrap();
        let before = reason(&dir, Reason::NewConn) + reason(&dir, Reason::NonSynMiss);
        let handled = || dir.maps.reasons().unwrap().iter().map(|(_, n)| n).sum();
        let target = Target::bed(&bed, PORT, &handled);
        // A little over four times the table, so that what a veth drops still leaves four times.
        let flows = 4 * size as usize + size as usize / 8;
        let sent = flood::tcp_flood(&target, flows, flags, 0x5eed + seed as u64).unwrap();
        let seen = reason(&dir, Reason::NewConn) + reason(&dir, Reason::NonSynMiss) - before;
        eprintln!(
            "{what}: {sent:?} ({:.0} frames/s) into a {size}-entry table; {seen} flows missed the table",
            sent.frames as f64 / sent.seconds
        );
        // The director must have seen the flood, or the test proves nothing.
        assert!(
            seen >= 4 * size as u64,
            "{what}: only {seen} flood flows reached the director"
        );
        let t = held.probe();
        assert_eq!(
            (t.same, t.lost, t.dead),
            (50, 0, 0),
            "held connections after the {what} of {} flows: {t:?}",
            sent.flows
        );
    }
    // Flood mode tripped on the last flood, and the counters say so.
    let trips: u64 = dir
        .maps
        .flood_states()
        .unwrap()
        .iter()
        .map(|f| f.trips)
        .sum();
    assert!(trips >= 1, "flood mode never tripped");
    assert!(reason(&dir, Reason::FloodNotRecorded) > 0);
    // Only the held connections were ever confirmed: no flood packet got into the table.
    let confirmed = || dir.maps.conns.keys().filter(|k| k.is_ok()).count();
    assert_eq!(confirmed(), 50);
    // New connections work, and are confirmed: at once, or, when flood mode was still on for
    // their SYN, by a packet a second later.
    let mut fresh = Held::open(bed.client(), vip, 10).unwrap();
    fresh.check("new connections after the floods");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fresh.check("new connections a second later");
    held.check("held connections at the end");
    assert_eq!(confirmed(), 60);

    // `lbadm status` shows the table and the flood; `lbadm trace` finds every connection of the
    // client on the real that answers it.
    let d = bed.director();
    let pins = &dir.pins.0;
    let status = ok(lbadm_in(d, pins, &["status"]));
    assert!(
        status.contains(&format!("connections: 60 established (table of {size}), ")),
        "{status}"
    );
    assert!(status.contains("flood mode: "), "{status}");
    let svc = format!("{}:{PORT}", bed.vip());
    let client = bed.client_addr().to_string();
    let traced = ok(lbadm_in(d, pins, &["trace", &client, &svc, "--json"]));
    let t: serde_json::Value = serde_json::from_str(&traced).unwrap();
    let conns = t["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 60, "{traced}");
    let mut per_real = std::collections::BTreeMap::new();
    for c in conns {
        assert_eq!(c["table"], "established");
        *per_real
            .entry(c["real"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let mut want = std::collections::BTreeMap::new();
    for (name, n) in held.per_real().into_iter().chain(fresh.per_real()) {
        // The echo servers name themselves real1, real2: their addresses are the bed's.
        let i: usize = name.trim_start_matches("real").parse().unwrap();
        *want.entry(bed.real_addr(i).to_string()).or_insert(0) += n;
    }
    assert_eq!(per_real, want);
    let one = ok(lbadm_in(d, pins, &["trace", &format!("{client}:1"), &svc]));
    assert!(one.contains("connection: none in the tables"), "{one}");
    assert!(one.contains("new connection (CPU 0): real "), "{one}");

    // An allow-list without the client: its new connections are dropped, its established ones
    // go on; clearing the list lets it in again.
    ok(lbadm_in(
        d,
        pins,
        &["allow", "add", &bed.vip().to_string(), "10.99.0.0/16"],
    ));
    let listed = ok(lbadm_in(d, pins, &["allow", "list"]));
    assert_eq!(listed, format!("{}: 10.99.0.0/16\n", bed.vip()));
    assert!(Held::open(bed.client(), vip, 1).is_err());
    assert!(reason(&dir, Reason::DropNotAllowed) > 0);
    held.check("held connections under an allow-list");
    let bad = lbadm_in(
        d,
        pins,
        &["allow", "add", &bed.vip().to_string(), "10.99.1.0/8"],
    );
    let (_, err) = lb_tests::assertions::text(&bad);
    assert!(
        !bad.status.success() && err.contains("did you mean 10.0.0.0/8?"),
        "{err}"
    );
    assert_eq!(ok(lbadm_in(d, pins, &["allow", "list"])), listed);
    ok(lbadm_in(
        d,
        pins,
        &["allow", "clear", &bed.vip().to_string()],
    ));
    Held::open(bed.client(), vip, 1)
        .unwrap()
        .check("after the list is cleared");
}
