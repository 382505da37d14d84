//! A spoofed SYN flood against a director at its default table size (`--only flood`): the rate
//! this machine's veth path delivers it at, with flood mode on and off, and the established
//! connections lost under it (target 0).

use anyhow::Result;
use lb_common::{DEFAULT_CONNS, DEFAULT_FLOOD_RATE, Limits, Reason};
use lb_tests::{
    flood::{self, Target},
    held::Held,
    lbbed::{Decap, Director, service},
    packet::TCP_SYN,
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::{Protocol, Scheduler};
use std::net::SocketAddrV4;

const PORT: u16 = 6033;
const HELD: usize = 50;

pub fn bench() -> Result<()> {
    let bed = TestBed::new(TestBedOpts {
        prefix: "flb".into(),
        ..Default::default()
    })?;
    let _servers = bed.start_line_echo_servers(PORT)?;
    let _decap = Decap::attach_all(&bed)?;
    let mut dir = Director::attach_sized(&bed, 1, DEFAULT_CONNS)?;
    dir.maps
        .apply(&[service(&bed, Protocol::Tcp, PORT, Scheduler::Rr, &[1, 1])])?;
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let mut held = Held::open(bed.client(), vip, HELD)?;
    let (size, _) = dir.maps.table_sizes()?;
    println!(
        "lb-bench flood: {HELD} connections held through VIP:{PORT} (rr, 2 reals); spoofed SYNs from random sources, 4 x the {size}-entry table, each sent twice, one sender per CPU"
    );
    for (i, rate) in [0, DEFAULT_FLOOD_RATE].into_iter().enumerate() {
        dir.maps.set_limits(&Limits {
            flood_rate: rate,
            ..dir.maps.limits()?
        })?;
        let reasons = |r: Reason| -> u64 {
            dir.maps
                .reasons()
                .map(|v| v.into_iter().find(|(x, _)| *x == r).map_or(0, |(_, n)| n))
                .unwrap_or(0)
        };
        let not_recorded = reasons(Reason::FloodNotRecorded);
        let handled = || dir.maps.reasons().unwrap().iter().map(|(_, n)| n).sum();
        let target = Target::bed(&bed, PORT, &handled);
        let r = flood::tcp_flood(&target, 4 * size as usize, TCP_SYN, 0xf100d + i as u64)?;
        let t = held.probe();
        println!(
            "  flood mode {:<3}: {} frames in {:.1} s = {:.0} frames/s delivered to the director; SYNs not recorded {}; held connections: {} same real, {} lost",
            if rate == 0 { "off" } else { "on" },
            r.frames,
            r.seconds,
            r.frames as f64 / r.seconds,
            reasons(Reason::FloodNotRecorded) - not_recorded,
            t.same,
            t.lost + t.dead
        );
    }
    let confirmed = dir.maps.conns.keys().filter(|k| k.is_ok()).count();
    println!("  established table afterwards: {confirmed} entries (the {HELD} held connections)");
    Ok(())
}
