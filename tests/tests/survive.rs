//! Connections outlive the director's programs and its daemon: `lbadm attach` on an attached
//! data path upgrades it in place (under sysbench, from an older layout, and refusing a layout
//! that does not fit), and `lbadm daemon` can be SIGKILLed and restarted under load.

use lb_tests::{
    assertions::{assert_one_line_error, lbadm_in, text, wait_until},
    held::Held,
    lbbed::{Decap, Director, service},
    mysqlbed::{MysqlBed, MysqlBedOpts, Sysbench, SysbenchOpts, parse_interval},
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::{Protocol, Scheduler};
use std::{net::SocketAddrV4, path::Path, thread, time::Duration};

fn sysbench(my: &MysqlBed, seconds: u32) -> Sysbench {
    let sb = Sysbench::start(
        my.bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: my.vip(),
            threads: 8,
            seconds,
            table_size: 1000,
            reconnect: true,
        },
    )
    .unwrap();
    // Two seconds of traffic before anything happens.
    let mut seen = 0;
    while seen < 2 {
        if parse_interval(&sb.lines.recv().unwrap()).is_some() {
            seen += 1;
        }
    }
    sb
}

fn bed(prefix: &str) -> MysqlBed {
    MysqlBed::new(MysqlBedOpts {
        prefix: prefix.into(),
        table_size: 1000,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn upgrades_under_sysbench_lose_no_connection() {
    let my = bed("upg");
    let maps = my.maps().unwrap();
    let sb = sysbench(&my, 12);
    let before = my.per_real(&maps).unwrap();
    for _ in 0..5 {
        let o = lbadm_in(
            my.bed.director(),
            &my.pins.0,
            &["attach", "--iface", "eth0"],
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        assert!(
            out.contains("eth0: upgraded in place: programs swapped"),
            "{out}"
        );
        thread::sleep(Duration::from_millis(1500));
    }
    let s = sb.finish().unwrap();
    let after = my.per_real(&maps).unwrap();
    eprintln!("5 upgrades under sysbench: {s:?}; per real before {before:?}, after {after:?}");
    assert!(s.transactions > 100, "{s:?}");
    assert_eq!(
        (s.lost, s.reconnected, s.ignored_errors),
        (0, 0, 0),
        "{s:?}"
    );
    // The 8 connections were scheduled once, before the upgrades, and never again; the
    // counters went on from where they were.
    let conns =
        |v: &[lb_tests::mysqlbed::RealView]| v.iter().map(|r| r.counters.conns).sum::<u64>();
    assert_eq!(conns(&before), 8);
    assert_eq!(conns(&after), 8);
    for (b, a) in before.iter().zip(&after) {
        assert!(a.counters.packets > b.counters.packets, "{b:?} -> {a:?}");
    }
}

#[test]
fn the_daemon_can_be_killed_and_restarted_under_sysbench() {
    let mut my = bed("kill");
    let maps = my.maps().unwrap();
    let sb = sysbench(&my, 10);
    let reals_before = maps.all_reals().unwrap();
    let services_before = maps.read().unwrap();
    let pid_before = my.status()["pid"].clone();
    my.signal_daemon(libc::SIGKILL);
    thread::sleep(Duration::from_secs(2));
    my.start_daemon("daemon2.log").unwrap();
    let took = wait_until(
        "the restarted daemon's checks pass",
        Duration::from_secs(10),
        || {
            let st = my.status();
            st["pid"] != pid_before
                && st["services"][0]["reals"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|r| r["last_result"] == "ok"))
        },
    );
    let s = sb.finish().unwrap();
    let log = my.file_text("daemon2.log");
    eprintln!(
        "daemon SIGKILLed, restarted 2 s later, checks passing {took:?} after; sysbench: {s:?}"
    );
    assert!(s.transactions > 100, "{s:?}");
    assert_eq!(
        (s.lost, s.reconnected, s.ignored_errors),
        (0, 0, 0),
        "{s:?}"
    );
    // The restarted daemon inherited everything and wrote nothing: the same reals in the same
    // slots with the same generations and weights.
    assert!(log.contains("running"), "{log}");
    assert!(!log.contains("maps updated"), "{log}");
    assert_eq!(maps.all_reals().unwrap(), reals_before);
    assert_eq!(maps.read().unwrap(), services_before);
}

fn echo_bed(prefix: &str) -> (TestBed, Director, Decap) {
    let mut bed = TestBed::new(TestBedOpts {
        prefix: prefix.into(),
        ..Default::default()
    })
    .unwrap();
    for g in bed.start_line_echo_servers(7000).unwrap() {
        bed.own(g);
    }
    let mut dir = Director::attach(&bed).unwrap();
    let decap = Decap::attach_all(&bed).unwrap();
    dir.maps
        .apply(&[service(&bed, Protocol::Tcp, 7000, Scheduler::Rr, &[1, 1])])
        .unwrap();
    (bed, dir, decap)
}

fn attach(bed: &TestBed, pins: &Path) -> std::process::Output {
    lbadm_in(bed.director(), pins, &["attach", "--iface", "eth0"])
}

fn pins_of(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The state an lbadm before layout records left: no `LB_META`, no `LB_SYNC`, none of layout
/// 3's maps (the unconfirmed table, limits, flood detectors, allow-lists), 19 reason counters.
/// The upgrade adds the new maps and carries the counters into the larger array.
#[test]
fn upgrade_from_layout_1_adds_maps_and_keeps_counters() {
    let (bed, dir, _decap) = echo_bed("upl1");
    let mut held = Held::open(bed.client(), SocketAddrV4::new(bed.vip(), 7000), 10).unwrap();
    let pins = dir.pins.0.clone();
    let reasons_before = dir.maps.reasons().unwrap();
    let conns_before = dir.maps.conns.keys().count();
    // Make the pin directory look like layout 1.
    for name in [
        lb_common::MAP_META,
        lb_common::MAP_SYNC,
        lb_common::MAP_CONNS_NEW,
        lb_common::MAP_LIMITS,
        lb_common::MAP_FLOOD,
        lb_common::MAP_ALLOW,
        lb_common::MAP_REAL_CONNS,
    ] {
        std::fs::remove_file(pins.join(name)).unwrap();
    }
    let mut old = aya::Ebpf::load(lb_userspace::objects::BENCH).unwrap();
    let mut v1: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(old.map_mut("BENCH_REASONS1").unwrap()).unwrap();
    let cpus = aya::util::nr_cpus().unwrap();
    for (i, (_, n)) in reasons_before.iter().enumerate().take(19) {
        let mut per_cpu = vec![0u64; cpus];
        per_cpu[0] = *n;
        v1.set(
            i as u32,
            aya::maps::PerCpuValues::try_from(per_cpu).unwrap(),
            0,
        )
        .unwrap();
    }
    std::fs::remove_file(pins.join(lb_common::MAP_REASONS)).unwrap();
    old.map_mut("BENCH_REASONS1")
        .map(|m| match m {
            aya::maps::Map::PerCpuArray(d) => d.pin(pins.join(lb_common::MAP_REASONS)).unwrap(),
            _ => unreachable!(),
        })
        .unwrap();
    drop(old);

    let o = attach(&bed, &pins);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("grown and copied: LB_REASONS"), "{out}");
    assert!(
        out.contains(
            "new: LB_ALLOW, LB_CONNS_NEW, LB_FLOOD, LB_LIMITS, LB_META, LB_REAL_CONNS, LB_SYNC"
        ),
        "{out}"
    );
    assert!(out.contains("(layout 1 -> 4)"), "{out}");
    let maps = lb_userspace::director::Maps::open(&pins).unwrap();
    // The new limits map starts with the default flood threshold, not with flood mode off.
    assert_eq!(
        maps.limits().unwrap().flood_rate,
        lb_common::DEFAULT_FLOOD_RATE
    );
    assert_eq!(
        lb_userspace::director::layout::read_meta(&pins).map(|m| m.layout),
        Some(lb_common::LAYOUT_VERSION)
    );
    let reasons = aya::maps::MapInfo::from_pin(pins.join(lb_common::MAP_REASONS)).unwrap();
    assert_eq!(reasons.max_entries(), lb_common::REASON_SLOTS);
    // Counters carried over (they only grow from here), connections too.
    let after = maps.reasons().unwrap();
    for ((r, b), (_, a)) in reasons_before.iter().zip(&after).take(19) {
        assert!(a >= b, "{}: {b} -> {a}", r.name());
    }
    assert_eq!(maps.conns.keys().count(), conns_before);
    // The connections carried over are counted per real at once (no daemon runs here): the
    // least-connection schedulers see them, and their ends do not count below zero.
    let counted: u32 = maps
        .all_real_conns()
        .unwrap()
        .iter()
        .map(|c| c.counts().0)
        .sum();
    assert_eq!(counted, 10);
    held.check("after the upgrade");
}

#[test]
fn an_incompatible_layout_is_refused_and_nothing_changes() {
    let (bed, dir, _decap) = echo_bed("upbad");
    let mut held = Held::open(bed.client(), SocketAddrV4::new(bed.vip(), 7000), 4).unwrap();
    let pins = dir.pins.0.clone();
    // Another table where LB_CONNS was: the new programs could not use it.
    std::fs::remove_file(pins.join(lb_common::MAP_CONNS)).unwrap();
    let mut other = aya::Ebpf::load(lb_userspace::objects::BENCH).unwrap();
    match other.map_mut("BENCH_CTR").unwrap() {
        aya::maps::Map::PerCpuArray(d) => d.pin(pins.join(lb_common::MAP_CONNS)).unwrap(),
        _ => unreachable!(),
    }
    drop(other);
    let listing = pins_of(&pins);
    let o = attach(&bed, &pins);
    assert_one_line_error(
        &o,
        &[
            "cannot upgrade",
            "LB_CONNS does not fit",
            "nothing was changed",
        ],
    );
    assert_eq!(pins_of(&pins), listing);
    held.check("after the refused upgrade");
    // On another interface the data path is not upgraded but refused.
    assert_one_line_error(
        &lbadm_in(bed.director(), &pins, &["attach", "--iface", "lo"]),
        &["is attached to eth0"],
    );
}
