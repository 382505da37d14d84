//! The connection tables on crafted frames through `BPF_PROG_TEST_RUN`: a new flow is
//! unconfirmed until its handshake completes (or, begun mid-stream, until it proves itself a
//! second later); flood mode forwards SYNs by the flow hash without recording them; an allow-list
//! drops new flows from other sources and leaves established ones alone.

use lb_common::{
    CONN_ESTABLISHED, CONN_FIN_WAIT, CONN_SYN_RECV, ConnKey, Limits, Reason, flow_hash,
};
use lb_tests::{fixture::*, packet::*};
use lb_userspace::director::{
    RealServer, Scheduler, VirtualService,
    allow::{self, AllowLists},
};
use std::{net::Ipv4Addr, thread::sleep, time::Duration};

const PORT: u16 = 6033;

fn svc(reals: &[Ipv4Addr]) -> VirtualService {
    let reals = reals.iter().map(|&a| RealServer::new(a, 1)).collect();
    tcp_service(PORT, Scheduler::Rr, reals)
}

fn key(sport: u16) -> ConnKey {
    client_key(sport, PORT)
}

fn send(f: &Fixture, sport: u16, flags: u8) -> Ipv4Addr {
    let input = client_tcp(CLIENT, sport, VIP, PORT, flags, b"");
    let o = f.run(&input).unwrap();
    assert_eq!(o.action, XDP_TX, "not forwarded: {:?}", o.data);
    outer_dst(&o.data)
}

/// (state in the established table, state in the unconfirmed table)
fn where_is(f: &Fixture, sport: u16) -> (Option<u8>, Option<u8>) {
    let k = key(sport);
    (
        f.maps.conns.get(&k, 0).ok().map(|c| c.state),
        f.maps.conns_new.get(&k, 0).ok().map(|c| c.state),
    )
}

#[test]
fn a_connection_is_confirmed_by_its_handshake_and_tracked_after() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(&[REAL1])]).unwrap();
    send(&f, 50000, TCP_SYN);
    assert_eq!(where_is(&f, 50000), (None, Some(CONN_SYN_RECV)));
    // A retransmitted SYN confirms nothing.
    send(&f, 50000, TCP_SYN);
    assert_eq!(where_is(&f, 50000), (None, Some(CONN_SYN_RECV)));
    assert_eq!(reason(&f.maps, Reason::Confirmed), 0);
    // The client's ACK completes the handshake.
    send(&f, 50000, TCP_ACK);
    assert_eq!(where_is(&f, 50000), (Some(CONN_ESTABLISHED), None));
    assert_eq!(reason(&f.maps, Reason::Confirmed), 1);
    send(&f, 50000, TCP_FIN | TCP_ACK);
    assert_eq!(where_is(&f, 50000), (Some(CONN_FIN_WAIT), None));
    send(&f, 50000, TCP_ACK);
    assert_eq!(
        where_is(&f, 50000),
        (Some(CONN_FIN_WAIT), None),
        "an ACK after FIN re-opened it"
    );
    // An RST without an entry is forwarded but leaves no state anywhere.
    send(&f, 50002, TCP_RST);
    assert_eq!(where_is(&f, 50002), (None, None));
    // A client that gives up on its handshake: its entry goes to CLOSE, unconfirmed.
    send(&f, 50003, TCP_SYN);
    send(&f, 50003, TCP_RST | TCP_ACK);
    assert_eq!(where_is(&f, 50003), (None, Some(lb_common::CONN_CLOSE)));
}

#[test]
fn a_flow_picked_up_mid_stream_proves_itself_a_second_later() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(&[REAL1, REAL2])]).unwrap();
    let first = send(&f, 50001, TCP_ACK | TCP_PSH);
    assert_eq!(reason(&f.maps, Reason::NonSynMiss), 1);
    assert_eq!(where_is(&f, 50001), (None, Some(CONN_ESTABLISHED)));
    // Sent twice (a spoofer's retransmission): still unconfirmed, still on its real.
    assert_eq!(send(&f, 50001, TCP_ACK | TCP_PSH), first);
    assert_eq!(where_is(&f, 50001), (None, Some(CONN_ESTABLISHED)));
    sleep(Duration::from_millis(1100));
    assert_eq!(send(&f, 50001, TCP_ACK | TCP_PSH), first);
    assert_eq!(where_is(&f, 50001), (Some(CONN_ESTABLISHED), None));
    assert_eq!(reason(&f.maps, Reason::Confirmed), 1);
}

#[test]
fn flood_mode_forwards_syns_by_flow_hash_without_recording_them() {
    let mut f = Fixture::new().unwrap();
    let reals = [REAL1, REAL2, REAL3];
    f.apply(&[svc(&reals)]).unwrap();
    f.maps
        .set_limits(&Limits {
            flood_rate: 3,
            flags: 0,
        })
        .unwrap();
    for sport in 51000..51003 {
        send(&f, sport, TCP_SYN);
        assert_eq!(where_is(&f, sport), (None, Some(CONN_SYN_RECV)));
    }
    let installed = f.maps.read().unwrap();
    let table = f
        .maps
        .tables
        .get(&(installed[0].slot * 2 + installed[0].table_copy), 0)
        .unwrap();
    for sport in 51003..51020 {
        let want_slot = table.slots[(flow_hash(&key(sport)) % table.len) as usize];
        let want = f.maps.reals.get(&want_slot, 0).unwrap().addr;
        let got = send(&f, sport, TCP_SYN);
        assert_eq!(u32::from_ne_bytes(got.octets()), want, "sport {sport}");
        assert_eq!(where_is(&f, sport), (None, None));
        // Its handshake's ACK finds no entry and lands on the same real by the same hash.
        assert_eq!(send(&f, sport, TCP_ACK), got);
    }
    assert_eq!(reason(&f.maps, Reason::FloodNotRecorded), 17);
    let states = f.maps.flood_states().unwrap();
    assert_eq!(states.iter().map(|s| s.trips).sum::<u64>(), 1);
    assert_eq!(states.iter().filter(|s| s.flooding == 1).count(), 1);
}

#[test]
fn an_allow_list_drops_new_flows_from_other_sources_only() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(&[REAL1])]).unwrap();
    // An established connection from the client, before any list.
    send(&f, 52000, TCP_SYN);
    send(&f, 52000, TCP_ACK);
    let others: AllowLists = [(VIP, vec!["10.0.0.0/8".parse().unwrap()])].into();
    allow::replace(&mut f.maps, &others).unwrap();
    assert_eq!(allow::read(&f.maps).unwrap(), others);
    let syn = client_tcp(CLIENT, 52001, VIP, PORT, TCP_SYN, b"");
    let o = f.run(&syn).unwrap();
    assert_eq!((o.action, o.data), (XDP_DROP, syn.clone()));
    assert_eq!(reason(&f.maps, Reason::DropNotAllowed), 1);
    assert_eq!(where_is(&f, 52001), (None, None));
    // The established connection goes on.
    assert_eq!(send(&f, 52000, TCP_ACK | TCP_PSH), REAL1);
    // The client's own /32 lets it in; removing every list lets everyone in.
    let with_client: AllowLists = [(
        VIP,
        vec![
            "10.0.0.0/8".parse().unwrap(),
            format!("{CLIENT}").parse().unwrap(),
        ],
    )]
    .into();
    allow::replace(&mut f.maps, &with_client).unwrap();
    assert_eq!(send(&f, 52001, TCP_SYN), REAL1);
    allow::replace(&mut f.maps, &AllowLists::new()).unwrap();
    assert!(allow::read(&f.maps).unwrap().is_empty());
    assert_eq!(f.maps.limits().unwrap().flags, 0);
    assert_eq!(send(&f, 52002, TCP_SYN), REAL1);
}

#[test]
fn a_dead_established_entry_never_shadows_the_flows_next_one() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(&[REAL1, REAL2, REAL3])]).unwrap();
    let first = send(&f, 53000, TCP_SYN);
    send(&f, 53000, TCP_ACK);
    assert_eq!(where_is(&f, 53000), (Some(CONN_ESTABLISHED), None));
    // The client reuses the tuple for a new connection: scheduled afresh (rr: the next real),
    // and its handshake's ACK must follow the new SYN, not the old connection's entry.
    let again = send(&f, 53000, TCP_SYN);
    assert_ne!(again, first);
    assert_eq!(where_is(&f, 53000), (None, Some(CONN_SYN_RECV)));
    assert_eq!(send(&f, 53000, TCP_ACK), again);
    assert_eq!(send(&f, 53000, TCP_ACK | TCP_PSH), again);
    // Its real removed: the connection is rescheduled once, and stays where it went.
    let others: Vec<Ipv4Addr> = [REAL1, REAL2, REAL3]
        .into_iter()
        .filter(|&r| r != again)
        .collect();
    f.apply(&[svc(&others)]).unwrap();
    let moved = send(&f, 53000, TCP_ACK | TCP_PSH);
    assert!(others.contains(&moved));
    for _ in 0..4 {
        assert_eq!(send(&f, 53000, TCP_ACK | TCP_PSH), moved);
    }
    assert_eq!(reason(&f.maps, Reason::Rescheduled), 1);
}
