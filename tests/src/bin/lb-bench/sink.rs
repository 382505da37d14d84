//! UDP receivers on every real that count what the director delivered to them.

use anyhow::{Context as _, Result};
use lb_tests::testbed::TestBed;
use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

pub struct Sinks {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Sinks {
    /// Binds `port` on each of the bed's reals.
    pub fn start(bed: &TestBed, port: u16) -> Result<Sinks> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 1..=bed.real_count() {
            let sock = bed
                .real(i)
                .run(|| UdpSocket::bind(("0.0.0.0", port)))
                .with_context(|| format!("sink on real {i}"))?;
            // So the thread sees `stop` while nothing arrives.
            sock.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (received, stop) = (received.clone(), stop.clone());
            threads.push(thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv(&mut buf).is_ok() {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        Ok(Sinks {
            received,
            stop,
            threads,
        })
    }

    /// Datagrams received so far, over all reals.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
