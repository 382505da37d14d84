//! Packets lost to in-place upgrades (`--only upgrade`): a steady UDP stream through the
//! director to two reals, once undisturbed and once while `lbadm attach` swaps the programs
//! every half second; the reals count what arrives.

use crate::sink::Sinks;
use anyhow::{Context as _, Result};
use lb_tests::{
    lbbed::{Decap, Director, service},
    testbed::{TestBed, TestBedOpts},
};
use lb_userspace::director::{Protocol, Scheduler, datapath};
use std::{
    net::{SocketAddrV4, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const PORT: u16 = 9000;
const PPS: u64 = 20_000;
const SECONDS: u64 = 5;

pub fn bench() -> Result<()> {
    let bed = TestBed::new(TestBedOpts {
        prefix: "upb".into(),
        ..Default::default()
    })?;
    let mut dir = Director::attach(&bed)?;
    let _decap = Decap::attach_all(&bed)?;
    dir.maps
        .apply(&[service(&bed, Protocol::Udp, PORT, Scheduler::Rr, &[1, 1])])?;
    let sinks = Sinks::start(&bed, PORT)?;
    let vip = SocketAddrV4::new(bed.vip(), PORT);
    let sender = bed
        .client()
        .run(|| UdpSocket::bind("0.0.0.0:0"))
        .context("sender")?;
    println!("in-place upgrades under a UDP stream ({PPS} datagrams/s for {SECONDS} s, one flow):");
    for upgrades in [false, true] {
        let before = sinks.received();
        let swapping = Arc::new(AtomicBool::new(upgrades));
        let swaps = Arc::new(AtomicU64::new(0));
        let swapper = {
            let (swapping, swaps) = (swapping.clone(), swaps.clone());
            let opts = datapath::AttachOptions {
                iface: bed.director_eth0().name.clone(),
                pin_dir: dir.pins.0.clone(),
                tunnel_source: None,
                generic: false,
                log: datapath::LogLevel::Off,
                conn_table: None,
                flood_rate: None,
            };
            let ns = bed.director().fd().try_clone_to_owned()?;
            thread::spawn(move || -> Result<()> {
                // Into the director's namespace for good: this thread only swaps programs.
                if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }
                    != 0
                {
                    anyhow::bail!("setns: {}", std::io::Error::last_os_error());
                }
                while swapping.load(Ordering::Relaxed) {
                    let r = datapath::attach(&opts)?;
                    anyhow::ensure!(r.upgrade.is_some(), "not an upgrade");
                    swaps.fetch_add(1, Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(500));
                }
                Ok(())
            })
        };
        let t = Instant::now();
        let mut sent = 0u64;
        while t.elapsed() < Duration::from_secs(SECONDS) {
            let due = (t.elapsed().as_secs_f64() * PPS as f64) as u64;
            while sent < due {
                let payload = sent.to_be_bytes();
                sender.send_to(&payload, vip)?;
                sent += 1;
            }
            thread::sleep(Duration::from_micros(200));
        }
        swapping.store(false, Ordering::Relaxed);
        swapper.join().expect("swapper")?;
        thread::sleep(Duration::from_millis(300));
        let got = sinks.received() - before;
        println!(
            "  {:<28} {sent} sent, {got} received, {} lost ({:.3} %)",
            if upgrades {
                format!("{} upgrades:", swaps.load(Ordering::Relaxed))
            } else {
                "no upgrade:".to_string()
            },
            sent.saturating_sub(got),
            100.0 * sent.saturating_sub(got) as f64 / sent as f64
        );
    }
    Ok(())
}
