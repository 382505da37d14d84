//! A director tier behind a router running BIRD (BGP, ECMP by 5-tuple, BFD), each director
//! running `lbadm daemon` with `[sync]` and `[announce]` and BIRD with the shipped
//! configuration, in front of two MariaDB reals, under sysbench and 600 held connections: a
//! director joins late (learns before it serves), one is upgraded while announced, one has its
//! link cut and its processes killed, one is shut down (withdraws first).

use lb_tests::{
    assertions::{lbadm_in, text},
    directors::ServiceSpec,
    fleet::{FleetDirector, start_director, start_router, wait_nexthops},
    held::Held,
    lbbed::Decap,
    mysqlbed::{MariaDb, Sysbench, SysbenchOpts, Template, parse_interval},
    testbed::{TestBed, TestBedOpts},
};
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

const ECHO: u16 = 7000;
const MYSQL: u16 = 6033;

fn services() -> Vec<ServiceSpec> {
    [(MYSQL, "wrr"), (ECHO, "rr")]
        .into_iter()
        .map(|(port, scheduler)| ServiceSpec::tcp(port, scheduler, vec![1, 1]))
        .collect()
}

/// New connections to the VIP every 10 ms (connect, one line, answer, close), each given 300
/// ms; the times of the ones that failed.
struct Prober {
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<Instant>>>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Prober {
    fn start(bed: &TestBed) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let dst = SocketAddr::from((bed.vip(), ECHO));
        let ns = bed.client().fd().try_clone_to_owned().unwrap();
        let (s, f) = (stop.clone(), failures.clone());
        let thread = thread::spawn(move || {
            use std::os::fd::AsRawFd;
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let mut tries = 0;
            while !s.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = (|| -> std::io::Result<()> {
                    let mut c = TcpStream::connect_timeout(&dst, Duration::from_millis(300))?;
                    c.set_read_timeout(Some(Duration::from_millis(300)))?;
                    c.write_all(b"probe\n")?;
                    let mut line = String::new();
                    BufReader::new(c).read_line(&mut line)?;
                    if line.ends_with("probe\n") {
                        Ok(())
                    } else {
                        Err(std::io::ErrorKind::InvalidData.into())
                    }
                })();
                if ok.is_err() {
                    f.lock().unwrap().push(t);
                }
                tries += 1;
                thread::sleep(Duration::from_millis(10).saturating_sub(t.elapsed()));
            }
            tries
        });
        Prober {
            stop,
            failures,
            thread: Some(thread),
        }
    }

    /// Failures at or after `since`: how many, and the last one's offset from `since`.
    fn failed_since(&self, since: Instant) -> (usize, Option<Duration>) {
        let f = self.failures.lock().unwrap();
        let after: Vec<&Instant> = f.iter().filter(|t| **t >= since).collect();
        (after.len(), after.last().map(|t| t.duration_since(since)))
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn announce_reason(d: &FleetDirector) -> String {
    d.daemon.status()["announce"]["vips"][0]["reason"]
        .as_str()
        .unwrap_or("announced")
        .to_string()
}

#[test]
fn a_bgp_director_tier_loses_no_connection() {
    let mut bed = TestBed::new(TestBedOpts {
        prefix: "bgp".into(),
        directors: 3,
        router: true,
        ..Default::default()
    })
    .unwrap();
    for g in bed.start_line_echo_servers(ECHO).unwrap() {
        bed.own(g);
    }
    let _decap = Decap::attach_all(&bed).unwrap();
    let template = Template::create(1000).unwrap();
    let mut dbs: Vec<MariaDb> = (1..=2)
        .map(|i| MariaDb::start(bed.real(i), &format!("bgp-real{i}"), &template).unwrap())
        .collect();
    let router = start_router(&bed).unwrap();
    let svc = services();
    let d: Vec<Ipv4Addr> = bed.director_addrs();
    let d1 = start_director(&bed, 1, &svc).unwrap();
    let mut d2 = start_director(&bed, 2, &svc).unwrap();
    let t = wait_nexthops(&bed, &[d[0], d[1]], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\nrouter:\n{}\n{}", router.protocols(), router.log()));
    eprintln!("two directors announced, ECMP route at the router after {t:?}");

    let vip7000 = SocketAddrV4::new(bed.vip(), ECHO);
    let mut held = Held::open(bed.client(), vip7000, 600).unwrap();
    let sb = Sysbench::start(
        bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: SocketAddr::from((bed.vip(), MYSQL)),
            threads: 8,
            seconds: 30,
            table_size: 1000,
            reconnect: true,
        },
    )
    .unwrap();
    let mut seen = 0;
    while seen < 2 {
        if parse_interval(&sb.lines.recv().unwrap()).is_some() {
            seen += 1;
        }
    }
    let prober = Prober::start(&bed);

    // A third director joins: it learns every connection before BIRD may announce it.
    let d3 = start_director(&bed, 3, &svc).unwrap();
    let joined = Instant::now();
    let t = wait_nexthops(&bed, &[d[0], d[1], d[2]], Duration::from_secs(30)).unwrap();
    let why = d3.daemon.sync()["ready_reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(why.starts_with("full sync from"), "{why}");
    eprintln!("director 3 announced {t:?} after it started ({why})");
    thread::sleep(Duration::from_millis(500));
    held.check("after director 3 joined the ECMP route");
    assert_eq!(
        prober.failed_since(joined).0,
        0,
        "new connections failed while director 3 joined"
    );

    // Director 1 is upgraded while announced.
    let o = lbadm_in(
        bed.director_n(1).ns(),
        &d1.daemon.pin_dir(),
        &["attach", "--iface", "eth0"],
    );
    assert!(o.status.success(), "{:?}", text(&o));
    held.check("after director 1 was upgraded in place");

    // Director 2 dies: link cut, lbadm daemon and BIRD killed.
    let cut = Instant::now();
    bed.bridge()
        .set_down(&bed.director_n(2).bridge_port().name)
        .unwrap();
    d2.daemon.signal(libc::SIGKILL);
    d2.bird.kill();
    let bfd = wait_nexthops(&bed, &[d[0], d[2]], Duration::from_secs(10)).unwrap();
    thread::sleep(Duration::from_millis(1500));
    let tally = held.probe();
    let (failed, last) = prober.failed_since(cut);
    eprintln!(
        "director 2 cut: next hop withdrawn after {bfd:?} (BFD 100 ms x 3); new connections failing: {failed}, the last {last:?} after the cut; held: {tally:?} of 600"
    );
    assert!(tally.same * 1000 >= 600 * 999, "{tally:?}");
    assert!(
        last.is_none_or(|l| l < bfd + Duration::from_millis(400)),
        "new connections failed {last:?} after the cut, the route was fixed after {bfd:?}"
    );

    // Director 3 is shut down: it withdraws first, so no new connection fails.
    let mut d3 = d3;
    let stopping = Instant::now();
    d3.daemon.signal(libc::SIGTERM);
    let withdrawn = wait_nexthops(&bed, &[d[0]], Duration::from_secs(5)).unwrap();
    let log3 = d3.daemon.log("daemon.log");
    assert!(log3.contains("VIPs withdrawn; draining"), "{log3}");
    thread::sleep(Duration::from_millis(500));
    held.check("after director 3 was shut down");
    let (failed, _) = prober.failed_since(stopping);
    eprintln!(
        "director 3 shut down: withdrawn after {withdrawn:?}; new connections failing since: {failed}"
    );
    assert_eq!(failed, 0);
    assert_eq!(announce_reason(&d1), "announced");

    let tries = prober.stop();
    let s = sb.finish().unwrap();
    eprintln!("sysbench through it all: {s:?}; {tries} new-connection probes");
    assert!(s.transactions > 100, "{s:?}");
    assert_eq!((s.lost, s.ignored_errors), (0, 0), "{s:?}");
    for db in &mut dbs {
        let _ = db.kill();
    }
    drop(d1);
}
