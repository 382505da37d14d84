//! The director tier (`--only fleet`): how fast the router drops a dead director with BFD and
//! without it (BGP hold timer), and the forwarded packet rate through one director against
//! three behind the ECMP router, on this machine.

use crate::sink::Sinks;
use anyhow::{Context as _, Result};
use lb_tests::{
    directors::ServiceSpec,
    fleet::{Bird, FleetDirector, bird_config, start_director, wait_nexthops},
    lbbed::Decap,
    testbed::{TestBed, TestBedOpts},
};
use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

const PORT: u16 = 9000;
const FLOWS: u16 = 64;
const SECONDS: u64 = 5;

fn bed(prefix: &str, directors: usize) -> Result<(TestBed, Decap)> {
    let bed = TestBed::new(TestBedOpts {
        prefix: prefix.into(),
        directors,
        router: true,
        ..Default::default()
    })?;
    let decap = Decap::attach_all(&bed)?;
    Ok((bed, decap))
}

fn services() -> Vec<ServiceSpec> {
    vec![ServiceSpec {
        check: "none",
        extra: "protocol = \"udp\"".into(),
        ..ServiceSpec::tcp(PORT, "rr", vec![1, 1])
    }]
}

/// The router's BIRD with the shipped configuration, or without BFD and with a 9 s hold time.
fn router(bed: &TestBed, bfd: bool) -> Result<Bird> {
    let mut conf = bird_config("router.conf", &[])?;
    if !bfd {
        conf = conf.replace("    bfd yes;\n", "    hold time 9;\n");
    }
    Bird::start(
        bed.router().ns(),
        if bfd { "router" } else { "router-nobfd" },
        &conf,
    )
}

pub fn bench() -> Result<()> {
    println!("director tier behind a BIRD router (namespaces on this machine):");
    for bfd in [true, false] {
        let (bed, _decap) = bed(if bfd { "flb" } else { "fln" }, 2)?;
        let _router = router(&bed, bfd)?;
        let svc = services();
        let _d: Vec<FleetDirector> = (1..=2)
            .map(|i| start_director(&bed, i, &svc))
            .collect::<Result<_>>()?;
        let addrs = bed.director_addrs();
        wait_nexthops(&bed, &addrs, Duration::from_secs(30))?;
        let cut = Instant::now();
        bed.bridge()
            .set_down(&bed.director_n(2).bridge_port().name)?;
        let took = wait_nexthops(&bed, &addrs[..1], Duration::from_secs(30))?;
        let _ = cut;
        println!(
            "  a director's link cut: out of the router's ECMP route after {:>7.0} ms ({})",
            took.as_secs_f64() * 1000.0,
            if bfd {
                "BFD, 100 ms x 3"
            } else {
                "no BFD: BGP hold time 9 s"
            }
        );
    }

    // Forwarding: one director announced, then three.
    let (bed, _decap) = bed("flr", 3)?;
    let _router = router(&bed, true)?;
    let svc = services();
    let mut directors: Vec<FleetDirector> = (1..=3)
        .map(|i| start_director(&bed, i, &svc))
        .collect::<Result<_>>()?;
    let addrs: Vec<Ipv4Addr> = bed.director_addrs();
    wait_nexthops(&bed, &addrs, Duration::from_secs(30))?;
    let sinks = Sinks::start(&bed, PORT)?;
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let senders: Vec<UdpSocket> = (0..FLOWS)
        .map(|_| {
            bed.client()
                .run(|| UdpSocket::bind("0.0.0.0:0"))
                .context("sender")
        })
        .collect::<Result<_>>()?;
    let mut rates = Vec::new();
    for (label, keep) in [("three directors", 3usize), ("one director", 1)] {
        // Fewer directors: the others' BIRD stops, the router withdraws them.
        for d in directors.iter_mut().skip(keep) {
            d.bird.kill();
        }
        wait_nexthops(&bed, &addrs[..keep], Duration::from_secs(30))?;
        let before = sinks.received();
        let t = Instant::now();
        let mut sent = 0u64;
        let payload = [0u8; 64];
        while t.elapsed() < Duration::from_secs(SECONDS) {
            for s in &senders {
                if s.send_to(&payload, vip).is_ok() {
                    sent += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        thread::sleep(Duration::from_millis(300));
        let got = sinks.received() - before;
        println!(
            "  {label:<16} {FLOWS} UDP flows, {:>8.0} datagrams/s sent, {:>8.0}/s reached the reals",
            sent as f64 / secs,
            got as f64 / secs
        );
        rates.push(got as f64 / secs);
    }
    println!(
        "  three directors / one: {:.2} x (two vCPUs carry the client, the router, the directors and the reals alike)",
        rates[0] / rates[1]
    );
    Ok(())
}
