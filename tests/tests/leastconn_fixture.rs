//! The least-connection schedulers, connection thresholds and the per-real connection counts
//! they read, on crafted frames through `BPF_PROG_TEST_RUN`.

use lb_common::Reason;
use lb_tests::{fixture::*, packet::*};
use lb_userspace::director::{RealServer, Scheduler, VirtualService, conntrack};
use std::{collections::HashMap, net::Ipv4Addr};

const PORT: u16 = 6033;

fn svc(sched: Scheduler, reals: &[RealServer]) -> VirtualService {
    tcp_service(PORT, sched, reals.to_vec())
}

fn limited(addr: Ipv4Addr, upper: u32, lower: u32) -> RealServer {
    RealServer {
        u_threshold: upper,
        l_threshold: lower,
        ..RealServer::new(addr, 1)
    }
}

/// Opens a connection from `CLIENT:sport` (SYN, then the handshake's ACK) and says where it
/// went; None if no real took it.
fn open(f: &Fixture, sport: u16) -> Option<Ipv4Addr> {
    let syn = f
        .run(&client_tcp(CLIENT, sport, VIP, PORT, TCP_SYN, b""))
        .unwrap();
    if syn.action != XDP_TX || outer_proto(&syn.data) != Some(4) {
        return None;
    }
    let real = outer_dst(&syn.data);
    let ack = f
        .run(&client_tcp(CLIENT, sport, VIP, PORT, TCP_ACK, b""))
        .unwrap();
    assert_eq!(
        outer_dst(&ack.data),
        real,
        "the ACK of {sport} went elsewhere"
    );
    Some(real)
}

/// The IP protocol of the outer header of a frame the director sent (4 = IPIP).
fn outer_proto(frame: &[u8]) -> Option<u8> {
    frame.get(14 + 9).copied()
}

/// (active, inactive) as the data path counts them, per real address.
fn counted(f: &Fixture) -> HashMap<Ipv4Addr, (u32, u32)> {
    let installed = f.maps.read().unwrap();
    let mut out = HashMap::new();
    for s in &installed {
        for (r, &slot) in s.spec.reals.iter().zip(&s.real_slots) {
            out.insert(r.addr, f.maps.real_conns(slot).unwrap().counts());
        }
    }
    out
}

/// (active, inactive) per real address as the tables hold them (the ground truth).
fn in_tables(f: &Fixture) -> HashMap<Ipv4Addr, (u32, u32)> {
    let installed = f.maps.read().unwrap();
    let truth = conntrack::counts_by_real(&f.maps).unwrap();
    let mut out = HashMap::new();
    for s in &installed {
        for (r, slot) in s.spec.reals.iter().zip(&s.real_slots) {
            out.insert(r.addr, truth.get(slot).copied().unwrap_or((0, 0)));
        }
    }
    out
}

/// (active, inactive) per real address of every entry in the tables whose real is still in
/// place, expired or not.
fn held_in_tables(f: &Fixture) -> HashMap<Ipv4Addr, (u32, u32)> {
    let mut by_slot: HashMap<u32, (u32, u32)> = HashMap::new();
    for item in f.maps.conns.iter().chain(f.maps.conns_new.iter()) {
        let (_, c) = item.unwrap();
        let real = f.maps.reals.get(&c.real_id, 0).unwrap();
        if real.flags & lb_common::REAL_F_IN_USE == 0 || real.generation != c.real_gen {
            continue;
        }
        let e = by_slot.entry(c.real_id).or_default();
        if c.state == lb_common::CONN_ESTABLISHED {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    let mut out = HashMap::new();
    for s in f.maps.read().unwrap() {
        for (r, slot) in s.spec.reals.iter().zip(&s.real_slots) {
            out.insert(r.addr, by_slot.get(slot).copied().unwrap_or((0, 0)));
        }
    }
    out
}

#[test]
fn wlc_fills_a_new_real_until_the_counts_meet() {
    let mut f = Fixture::new().unwrap();
    let one = RealServer::new;
    f.apply(&[svc(Scheduler::Wlc, &[one(REAL1, 1), one(REAL2, 1)])])
        .unwrap();
    let mut got: HashMap<Ipv4Addr, u32> = HashMap::new();
    for sport in 40000..40020 {
        *got.entry(open(&f, sport).unwrap()).or_default() += 1;
    }
    assert_eq!((got[&REAL1], got[&REAL2]), (10, 10), "{got:?}");
    assert_eq!(counted(&f)[&REAL1], (10, 0));
    // A third real (a ProxySQL back from a restart): the next ten all go to it.
    f.apply(&[svc(
        Scheduler::Wlc,
        &[one(REAL1, 1), one(REAL2, 1), one(REAL3, 1)],
    )])
    .unwrap();
    for sport in 40020..40030 {
        assert_eq!(open(&f, sport), Some(REAL3), "connection {sport}");
    }
    // The counts have met: the newest of equals first, as IPVS (which walks its list of
    // destinations newest first), then the next.
    assert_eq!(open(&f, 40030), Some(REAL3));
    assert_eq!(open(&f, 40031), Some(REAL2));
    assert_eq!(open(&f, 40032), Some(REAL1));
    assert_eq!(counted(&f), in_tables(&f));
    // A connection that ends leaves the active count for the inactive one (FIN_WAIT), as in
    // IPVS, and its real is the least loaded again.
    let fin = client_tcp(CLIENT, 40021, VIP, PORT, TCP_FIN | TCP_ACK, b"");
    assert_eq!(outer_dst(&f.run(&fin).unwrap().data), REAL3);
    assert_eq!(counted(&f)[&REAL3], (10, 1));
    assert_eq!(open(&f, 40033), Some(REAL3));
}

#[test]
fn weights_divide_the_counts_for_wlc_and_sed() {
    let mut f = Fixture::new().unwrap();
    let reals = [RealServer::new(REAL1, 1), RealServer::new(REAL2, 3)];
    f.apply(&[svc(Scheduler::Wlc, &reals)]).unwrap();
    let mut got: HashMap<Ipv4Addr, u32> = HashMap::new();
    for sport in 41000..41040 {
        *got.entry(open(&f, sport).unwrap()).or_default() += 1;
    }
    assert_eq!((got[&REAL1], got[&REAL2]), (10, 30), "{got:?}");
    // nq: an idle real first, whatever its weight.
    f.apply(&[svc(
        Scheduler::Nq,
        &[
            reals[0].clone(),
            reals[1].clone(),
            RealServer::new(REAL3, 1),
        ],
    )])
    .unwrap();
    assert_eq!(open(&f, 41040), Some(REAL3));
    assert_eq!(reason(&f.maps, Reason::NoRealUnreach), 0);
}

#[test]
fn thresholds_stop_new_connections_at_the_upper_and_resume_below_the_lower() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(Scheduler::Wlc, &[limited(REAL1, 3, 1)])])
        .unwrap();
    for sport in 42000..42003 {
        assert_eq!(open(&f, sport), Some(REAL1));
    }
    // At the upper threshold: the fourth gets port unreachable, as when no real is left.
    assert_eq!(open(&f, 42003), None);
    assert_eq!(reason(&f.maps, Reason::NoRealUnreach), 1);
    // Connections that end stay counted (inactive) until their entries go; here they go as
    // an expiry or an eviction would take them, and the recount sees it.
    let gone = |f: &mut Fixture, sport: u16| {
        f.maps.conns.remove(&client_key(sport, PORT)).unwrap();
        conntrack::recount(&mut f.maps, &HashMap::new()).unwrap();
    };
    gone(&mut f, 42000);
    gone(&mut f, 42001);
    // One left: still not below the lower threshold (1).
    assert_eq!(counted(&f)[&REAL1], (1, 0));
    assert_eq!(open(&f, 42004), None);
    gone(&mut f, 42002);
    assert_eq!(open(&f, 42005), Some(REAL1));

    // Without a lower threshold, three quarters of the upper: over at 4, back at 2.
    f.apply(&[svc(Scheduler::Wlc, &[limited(REAL1, 4, 0)])])
        .unwrap();
    for sport in 42010..42013 {
        assert_eq!(open(&f, sport), Some(REAL1));
    }
    assert_eq!(open(&f, 42013), None);
    gone(&mut f, 42005);
    assert_eq!(open(&f, 42014), None, "3 of 4 is not below three quarters");
    gone(&mut f, 42010);
    assert_eq!(open(&f, 42015), Some(REAL1));
}

#[test]
fn round_robin_steps_past_an_overloaded_real() {
    let mut f = Fixture::new().unwrap();
    f.apply(&[svc(
        Scheduler::Rr,
        &[limited(REAL1, 2, 0), RealServer::new(REAL2, 1)],
    )])
    .unwrap();
    let got: Vec<Ipv4Addr> = (43000..43006).map(|p| open(&f, p).unwrap()).collect();
    assert_eq!(
        got,
        vec![REAL1, REAL2, REAL1, REAL2, REAL2, REAL2],
        "REAL1 is full after two"
    );
    let listed = f.maps.read().unwrap();
    assert_eq!(listed[0].spec.reals[0].u_threshold, 2);
}

/// Connections per real counted by the data path against the tables, over 100,000
/// connections that open, complete or abandon their handshake, close by FIN or RST, and have
/// their tuple reused by a new connection.
#[test]
fn counts_stay_true_to_the_tables_over_100k_connections() {
    const CONNS: u32 = 100_000;
    let mut f = Fixture::with_conns(1 << 18).unwrap();
    f.apply(&[svc(
        Scheduler::Wlc,
        &[
            RealServer::new(REAL1, 1),
            RealServer::new(REAL2, 2),
            RealServer::new(REAL3, 1),
        ],
    )])
    .unwrap();
    let client = |i: u32| Ipv4Addr::from(0x6440_0000 + (i >> 8));
    let sport = |i: u32| 30000 + (i & 0xff) as u16;
    let mut frames = Vec::new();
    let mut push = |i: u32, flags: u8| {
        frames.push(client_tcp(client(i), sport(i), VIP, PORT, flags, b""));
    };
    for i in 0..CONNS {
        push(i, TCP_SYN);
        match i % 10 {
            0 => {}                // abandoned handshake: SYN_RECV
            1 => push(i, TCP_RST), // gave up: CLOSE, unconfirmed
            2 | 3 => {
                push(i, TCP_ACK);
                push(i, TCP_FIN | TCP_ACK) // FIN_WAIT
            }
            4 => {
                push(i, TCP_ACK);
                push(i, TCP_RST | TCP_ACK) // CLOSE
            }
            _ => push(i, TCP_ACK), // ESTABLISHED
        }
        // Every tenth tuple is reused by a new connection a while later.
        if i % 10 == 7 && i >= 1000 {
            push(i - 1000, TCP_SYN);
            push(i - 1000, TCP_ACK);
        }
    }
    let started = std::time::Instant::now();
    let outs = f.run_all(&frames).unwrap();
    let took = started.elapsed();
    assert!(outs.iter().all(|o| o.action == XDP_TX));
    // Against every entry the tables hold, expired or not: the data path counts an entry out
    // when it finds it dead, and on a slow machine (qemu) CLOSE entries pass their 10 s before
    // the run ends, with no packet to find them. Those are the recount's, checked below.
    let truth = held_in_tables(&f);
    let counts = counted(&f);
    let total: u64 = truth.values().map(|&(a, i)| (a + i) as u64).sum();
    let error: u64 = truth
        .iter()
        .map(|(r, &(a, i))| {
            let (ca, ci) = counts[r];
            (ca.abs_diff(a) + ci.abs_diff(i)) as u64
        })
        .sum();
    println!(
        "{} frames in {took:?}; {total} connections in the tables; counted {counts:?}; tables {truth:?}; error {error} ({:.4} %)",
        frames.len(),
        error as f64 * 100.0 / total as f64
    );
    assert!(total > 90_000, "{total}");
    assert!(
        error * 100 <= total,
        "the data path's counts are off by {error} of {total}: {counts:?} vs {truth:?}"
    );
    let started = std::time::Instant::now();
    let r = conntrack::recount(&mut f.maps, &HashMap::new()).unwrap();
    println!(
        "a recount of the tables took {:?}: {r:?}",
        started.elapsed()
    );
    // Entries that expired since (CLOSE lasts 10 s; a slow machine gets there) are what the
    // recount took out.
    assert!(r.drift <= total - r.connections + error, "{r:?}");
    // wlc kept the active counts in proportion to the weights (1:2:1).
    let active: Vec<u32> = [REAL1, REAL2, REAL3].iter().map(|r| truth[r].0).collect();
    assert!(
        active[1].abs_diff(2 * active[0]) <= 2 && active[0].abs_diff(active[2]) <= 1,
        "{active:?}"
    );
}

/// A table too small for the connections: the LRU evicts entries the data path counted, and
/// only the recount can see it.
#[test]
fn the_recount_corrects_what_eviction_took() {
    let mut f = Fixture::with_conns(lb_common::MIN_CONNS).unwrap();
    f.apply(&[svc(
        Scheduler::Wlc,
        &[RealServer::new(REAL1, 1), RealServer::new(REAL2, 1)],
    )])
    .unwrap();
    let mut frames = Vec::new();
    for i in 0..20_000u32 {
        let c = Ipv4Addr::from(0x6440_0000 + (i >> 8));
        let p = 30000 + (i & 0xff) as u16;
        frames.push(client_tcp(c, p, VIP, PORT, TCP_SYN, b""));
        frames.push(client_tcp(c, p, VIP, PORT, TCP_ACK, b""));
    }
    f.run_all(&frames).unwrap();
    let before: u32 = counted(&f).values().map(|&(a, i)| a + i).sum();
    let r = conntrack::recount(&mut f.maps, &HashMap::new()).unwrap();
    let truth = in_tables(&f);
    let live: u32 = truth.values().map(|&(a, i)| a + i).sum();
    println!("counted {before} before the recount, {live} in the tables; {r:?}");
    assert!(before > live, "nothing was evicted: {before} vs {live}");
    assert_eq!(counted(&f), truth);
    assert_eq!(r.drift, (before - live) as u64);
}

/// A real whose server died keeps its established connections in the table (their clients got
/// the server's RST directly); counted active, they would keep wlc from the real once it is
/// back. Those with no packet since it went DOWN count as inactive; one that was only idle is
/// active again from its next packet.
#[test]
fn connections_idle_since_their_real_went_down_count_as_inactive() {
    let mut f = Fixture::new().unwrap();
    let one = RealServer::new;
    f.apply(&[svc(Scheduler::Wlc, &[one(REAL1, 1), one(REAL2, 1)])])
        .unwrap();
    for sport in 44000..44004 {
        open(&f, sport).unwrap();
    }
    let slot2 = f.maps.read().unwrap()[0].real_slots[1];
    std::thread::sleep(std::time::Duration::from_millis(20));
    let down = HashMap::from([(slot2, conntrack::now_ns())]);
    conntrack::recount(&mut f.maps, &down).unwrap();
    assert_eq!(counted(&f)[&REAL2], (0, 2));
    assert_eq!(counted(&f)[&REAL1], (2, 0));
    // The next two new connections go to REAL2, which wlc now sees as idle.
    assert_eq!(open(&f, 44010), Some(REAL2));
    assert_eq!(open(&f, 44011), Some(REAL2));
    // A packet on an old connection of REAL2: active again at the next recount (`last_seen`
    // moves only when a quarter second old).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let old = (44000..44004)
        .find(|&p| {
            let o = f
                .run(&client_tcp(CLIENT, p, VIP, PORT, TCP_ACK | TCP_PSH, b"x"))
                .unwrap();
            outer_dst(&o.data) == REAL2
        })
        .unwrap();
    conntrack::recount(&mut f.maps, &down).unwrap();
    assert_eq!(counted(&f)[&REAL2], (3, 1), "after a packet on {old}");
    // ipvsadm's listing keeps IPVS's view: every ESTABLISHED entry is active.
    assert_eq!(in_tables(&f)[&REAL2], (4, 0));
}
