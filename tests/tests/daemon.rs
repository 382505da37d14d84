//! `lbadm daemon` end to end: health checks quiesce and restore reals, the mysql check needs a
//! real greeting, SIGHUP applies only the difference, the daemon's death loses nothing, and
//! `--check-config` names what is wrong.

use lb_tests::{
    assertions::{lbadm_in as lbadm, ok, wait_until},
    fixture::PinDir,
    lbadm_bin,
    lbbed::{Decap, attach_pass},
    netns::{ChildGuard, Netns},
    testbed::{TestBed, TestBedOpts, tcp_echo_server},
};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

static N: AtomicUsize = AtomicUsize::new(0);

/// Files of one test under /tmp, removed on drop.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str) -> Files {
        let dir = PathBuf::from(format!(
            "/tmp/lbadm-daemon-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Files { dir }
    }
    fn config(&self) -> PathBuf {
        self.dir.join("lbadm.toml")
    }
    fn status(&self) -> PathBuf {
        self.dir.join("status.json")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }
    fn status_json(&self) -> serde_json::Value {
        std::fs::read(self.status())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn header(pins: &Path, files: &Files) -> String {
    format!(
        "iface = \"eth0\"\npin_dir = \"{}\"\nstatus_file = \"{}\"\n",
        pins.display(),
        files.status().display()
    )
}

/// A configuration of VIP:6033 over real1 (weight `w1`) and real2 (weight 1), fast tcp checks.
fn write_two_reals(pins: &Path, files: &Files, w1: u32) {
    std::fs::write(
        files.config(),
        format!(
            "{}[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n[service.check]\ntype = \"tcp\"\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\nweight = {w1}\n[[service.real]]\naddress = \"198.18.0.12\"\nweight = 1\n",
            header(pins, files)
        ),
    )
    .unwrap();
}

const FAST: &str =
    "interval = \"200ms\"\ntimeout = \"150ms\"\nfall = 2\nrise = 2\njitter = \"20ms\"\n";

/// (service line, real address, weight) rows of `-L -n`.
fn weights(ns: &Netns, pins: &Path) -> Vec<(String, String, u32)> {
    let out = ok(lbadm(ns, pins, &["-L", "-n"]));
    let mut svc = String::new();
    let mut rows = Vec::new();
    for l in out.lines() {
        if l.starts_with("TCP") || l.starts_with("UDP") {
            svc = l.split_whitespace().nth(1).unwrap().to_string();
        } else if let Some(r) = l.strip_prefix("  -> ")
            && !r.starts_with("RemoteAddress")
        {
            let f: Vec<&str> = r.split_whitespace().collect();
            let addr = f[0].split(':').next().unwrap().to_string();
            rows.push((svc.clone(), addr, f[2].parse().unwrap()));
        }
    }
    rows
}

fn weight_of(ns: &Netns, pins: &Path, svc: &str, real: &str) -> Option<u32> {
    weights(ns, pins)
        .into_iter()
        .find(|(s, r, _)| s == svc && r == real)
        .map(|(_, _, w)| w)
}

/// Starts the daemon in the director's namespace, from the calling (test) thread.
fn start_daemon(bed: &TestBed, pins: &Path, files: &Files) -> ChildGuard {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.log())
        .unwrap();
    ChildGuard::spawn(
        bed.director()
            .command(lbadm_bin())
            .env("LBADM_PIN_DIR", pins)
            .args(["daemon", "--config"])
            .arg(files.config())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
    .unwrap()
}

/// A bed with the director attached by `lbadm attach` (unless `attach` is false), the peer's
/// XDP_PASS program and decapsulation on the reals.
fn bed(prefix: &str, attach: bool) -> (TestBed, PinDir, aya::Ebpf, Decap) {
    bed_of(prefix, attach, 2)
}

fn bed_of(prefix: &str, attach: bool, reals: usize) -> (TestBed, PinDir, aya::Ebpf, Decap) {
    let bed = TestBed::new(TestBedOpts {
        prefix: prefix.into(),
        reals,
        ..Default::default()
    })
    .unwrap();
    let pins = PinDir::new(prefix);
    if attach {
        ok(bed
            .director()
            .command(lbadm_bin())
            .args(["--pin-dir"])
            .arg(&pins.0)
            .args(["attach", "--iface", "eth0"])
            .output()
            .unwrap());
    }
    let peer = bed.director_host().bridge_port().index;
    let pass = bed.bridge().run(move || attach_pass(peer)).unwrap();
    let decap = Decap::attach_all(&bed).unwrap();
    (bed, pins, pass, decap)
}

fn detach(bed: &TestBed, pins: &Path) {
    let _ = bed
        .director()
        .command(lbadm_bin())
        .args(["--pin-dir"])
        .arg(pins)
        .arg("detach")
        .output();
}

use lb_tests::assertions::who_answers as who;

#[test]
fn dead_backend_is_quiesced_and_restored() {
    let (bed, pins, _pass, _decap) = bed("dmq", false);
    let mut servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("quiesce");
    std::fs::write(
        files.config(),
        format!(
            "{}metrics = \"127.0.0.1:9477\"\n[[service]]\nvip = \"198.18.0.100\"\nport = 6033\nscheduler = \"wrr\"\non_failure = \"quiesce\"\n[service.check]\ntype = \"tcp\"\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\nweight = 1\n[[service.real]]\naddress = \"198.18.0.12\"\nweight = 1\n",
            header(&pins.0, &files)
        ),
    )
    .unwrap();
    // The daemon attaches the data path itself.
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    let start = Instant::now();
    // The pins appear one by one while the daemon attaches: wait for a listing that works.
    while !(lbadm(d, &pins.0, &["-L", "-n"]).status.success() && weights(d, &pins.0).len() == 2) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the daemon did not attach and configure: {}",
            files.log_text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let both = who(&bed, 6033, 10);
    assert!(
        both.iter().any(|r| r == "real1") && both.iter().any(|r| r == "real2"),
        "{both:?}"
    );

    // Kill real1's backend: weight 0 within fall × interval + timeout (+ jitter and margin).
    drop(servers.remove(0));
    let took = wait_until("real1 quiesced", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11") == Some(0)
    });
    // fall × (interval + jitter) + timeout, plus 1 s for polling and a loaded machine.
    assert!(
        took < Duration::from_millis(2 * 220 + 150 + 1000),
        "quiesced after {took:?}"
    );
    assert!(
        files.log_text().contains("tcp: connection refused"),
        "{}",
        files.log_text()
    );
    // New connections all go to real2, and none fails.
    assert!(who(&bed, 6033, 20).iter().all(|r| r == "real2"));
    wait_until(
        "status file shows real1 down",
        Duration::from_secs(3),
        || files.status_json()["services"][0]["reals"][0]["health"] == "down",
    );
    let status = ok(lbadm(
        d,
        &pins.0,
        &["status", "--status-file", files.status().to_str().unwrap()],
    ));
    assert!(
        status.contains("198.18.0.11") && status.contains("DOWN"),
        "{status}"
    );
    // The Prometheus endpoint: counters from the maps, health gauges.
    let metrics = d.run(|| {
        let mut c = TcpStream::connect("127.0.0.1:9477").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    });
    assert!(metrics.starts_with("HTTP/1.0 200 OK\r\n"), "{metrics}");
    // OpenMetrics text, which Prometheus negotiates for; the exposition ends with `# EOF`.
    assert!(
        metrics
            .to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");
    // Read by an independent, strict OpenMetrics parser (Prometheus' Python client's).
    let body = metrics.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let families = lb_tests::openmetrics::parse(body).unwrap();
    let kind = |name: &str| {
        families
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.kind.as_str())
    };
    assert_eq!(kind("lbadm_packets"), Some("counter"), "{families:?}");
    assert_eq!(kind("lbadm_real_up"), Some("gauge"));
    let value = |name: &str, labels: &[(&str, &str)]| {
        lb_tests::openmetrics::value(&families, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in {families:?}"))
    };
    // The data path's counters by reason: the connections above were forwarded.
    assert!(value("lbadm_packets_total", &[("reason", "tx_forwarded")]) > 0.0);
    assert!(value("lbadm_packets_total", &[("reason", "new_conn")]) >= 30.0);
    // The daemon: the file loaded once, at start, and applied; each UP real's check latency.
    assert_eq!(value("lbadm_config_last_reload_success", &[]), 1.0);
    assert_eq!(
        value("lbadm_config_reloads_total", &[("result", "applied")]),
        1.0
    );
    let latency = value("lbadm_check_duration_seconds", &[("real", "198.18.0.12")]);
    assert!(latency > 0.0 && latency < 1.0, "{latency}");
    let (active, slow) = (
        value("lbadm_real_active_connections", &[("real", "198.18.0.12")]),
        value("lbadm_conntrack_size", &[("table", "established")]),
    );
    assert!(active >= 0.0 && slow > 0.0);
    let other = d.run(|| {
        let mut c = TcpStream::connect("127.0.0.1:9477").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
        let mut r = String::new();
        c.read_to_string(&mut r).unwrap();
        r
    });
    assert!(
        other.starts_with("HTTP/1.0 404 Not Found\r\n") && other.ends_with("try /metrics\n"),
        "{other}"
    );
    let labels = |real: &str| {
        format!("{{protocol=\"tcp\",vip=\"198.18.0.100\",port=\"6033\",real=\"{real}\"}}")
    };
    assert!(
        metrics.contains(&format!("lbadm_real_up{} 0\n", labels("198.18.0.11"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("lbadm_real_up{} 1\n", labels("198.18.0.12"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("lbadm_real_weight{} 0\n", labels("198.18.0.11"))),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "lbadm_real_overloaded{} 0\n",
            labels("198.18.0.11")
        )) && metrics.contains("# TYPE lbadm_real_active_connections gauge\n"),
        "{metrics}"
    );
    let conns: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "lbadm_real_connections_total{} ",
                labels("198.18.0.12")
            ))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(conns >= 20, "{metrics}");

    // A restarted daemon inherits DOWN from the maps: real1 stays at weight 0 (no flap up).
    // (Without the metrics endpoint, whose port the killed daemon's connections may hold.)
    daemon.kill().unwrap();
    let text = std::fs::read_to_string(files.config()).unwrap();
    std::fs::write(
        files.config(),
        text.replace("metrics = \"127.0.0.1:9477\"\n", ""),
    )
    .unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    wait_until("the restarted daemon's log", Duration::from_secs(5), || {
        files
            .log_text()
            .contains("starts DOWN (inherited from the maps)")
    });
    for _ in 0..10 {
        assert_eq!(
            weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11"),
            Some(0)
        );
        thread::sleep(Duration::from_millis(60));
    }

    // Restart the backend: weight restored after `rise` successes.
    let _back = tcp_echo_server(
        bed.real(1),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6033),
        "real1",
    )
    .unwrap();
    wait_until("real1 restored", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11") == Some(1)
    });
    let split = who(&bed, 6033, 10);
    assert!(split.iter().any(|r| r == "real1"), "{split:?}");
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

/// A fake backend on `port` in `ns`: each accepted connection gets `greeting` (nothing when
/// empty: accept and stay silent).
struct Fake {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Fake {
    fn start(ns: &Netns, port: u16, greeting: Vec<u8>) -> Fake {
        let l = ns.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap());
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = thread::spawn(move || {
            let mut held = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        if !greeting.is_empty() {
                            let _ = c.write_all(&greeting);
                        }
                        held.push(c);
                        if held.len() > 64 {
                            held.remove(0);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Fake {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn packet(payload: &[u8]) -> Vec<u8> {
    let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
    p.push(0);
    p.extend_from_slice(payload);
    p
}

fn mysql_greeting() -> Vec<u8> {
    let mut p = vec![0x0a];
    p.extend_from_slice(b"5.5.30 (ProxySQL)\0");
    p.extend_from_slice(&42u32.to_le_bytes());
    p.extend_from_slice(b"12345678");
    p.push(0);
    p.extend_from_slice(&[0x0f, 0xa2, 0x21, 0x02, 0x00, 0x08, 0x80, 21]);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(b"123456789012\0mysql_native_password\0");
    packet(&p)
}

fn mysql_err(errno: u16, msg: &str) -> Vec<u8> {
    let mut p = vec![0xff];
    p.extend_from_slice(&errno.to_le_bytes());
    p.extend_from_slice(b"#08004");
    p.extend_from_slice(msg.as_bytes());
    packet(&p)
}

#[test]
fn mysql_check_needs_a_greeting() {
    let (bed, pins, _pass, _decap) = bed("dmy", true);
    // real1:3306 accepts and never speaks; real2:3306 answers ERR 1040; real2:3307 greets.
    let _silent = Fake::start(bed.real(1), 3306, Vec::new());
    let _err = Fake::start(bed.real(2), 3306, mysql_err(1040, "Too many connections"));
    let _good = Fake::start(bed.real(2), 3307, mysql_greeting());
    let files = Files::new("mysql");
    std::fs::write(
        files.config(),
        format!(
            "{}[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n[service.check]\ntype = \"mysql\"\nport = 3306\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\nweight = 2\n[[service.real]]\naddress = \"198.18.0.12\"\nweight = 2\n\
             [[service]]\nvip = \"198.18.0.100\"\nport = 6034\n[service.check]\ntype = \"tcp\"\nport = 3306\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\nweight = 2\n[[service.real]]\naddress = \"198.18.0.12\"\nweight = 2\n\
             [service.real.check]\ntype = \"mysql\"\nport = 3307\n\
             [[service]]\nvip = \"198.18.0.100\"\nport = 6035\non_failure = \"remove\"\n[service.check]\ntype = \"mysql\"\nport = 3306\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\n[service.real.check]\ntype = \"tcp\"\n\
             [[service.real]]\naddress = \"198.18.0.12\"\n",
            header(&pins.0, &files)
        ),
    )
    .unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until(
        "mysql check quiesces the silent and the ERR backend",
        Duration::from_secs(5),
        || {
            weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11") == Some(0)
                && weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.12") == Some(0)
        },
    );
    // on_failure = "remove": the ERR backend leaves 6035, the other real stays.
    wait_until("real2 removed from 6035", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6035", "198.18.0.12").is_none()
    });
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6035", "198.18.0.11"),
        Some(1)
    );
    // Several more rounds: the tcp check keeps the silent backend UP, the greeting is UP.
    thread::sleep(Duration::from_millis(800));
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6034", "198.18.0.11"),
        Some(2)
    );
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6034", "198.18.0.12"),
        Some(2)
    );
    let st = files.status_json();
    let reals = |s: usize| st["services"][s]["reals"].clone();
    assert_eq!(reals(0)[0]["health"], "down", "{st}");
    assert_eq!(
        reals(0)[0]["last_result"],
        "mysql: timeout after 150ms (through the tunnel to 198.18.0.100:3306)",
        "{st}"
    );
    assert_eq!(reals(0)[1]["health"], "down", "{st}");
    assert_eq!(
        reals(0)[1]["last_result"],
        "mysql: ERR 1040 Too many connections (through the tunnel to 198.18.0.100:3306)",
        "{st}"
    );
    assert_eq!(reals(1)[0]["health"], "up", "{st}");
    assert_eq!(reals(1)[0]["last_result"], "ok", "{st}");
    assert_eq!(reals(1)[1]["health"], "up", "{st}");
    assert_eq!(reals(1)[1]["check"], "mysql", "{st}");
    assert_eq!(reals(1)[1]["last_result"], "ok", "{st}");
    let log = files.log_text();
    assert!(
        log.contains("mysql: ERR 1040 Too many connections"),
        "{log}"
    );
    assert!(log.contains("timeout after 150ms"), "{log}");
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

#[test]
fn tunnel_check_finds_a_real_without_its_vip() {
    let (bed, pins, _pass, _decap) = bed("dtu", true);
    let _servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("tunnel");
    // The same two reals, checked through the tunnel (6033, the default) and directly (6034).
    let svc = |port: u16, via: &str| {
        format!(
            "[[service]]\nvip = \"198.18.0.100\"\nport = {port}\n[service.check]\ntype = \"tcp\"\nport = 6033\n{via}{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\n[[service.real]]\naddress = \"198.18.0.12\"\n"
        )
    };
    std::fs::write(
        files.config(),
        format!(
            "{}{}{}",
            header(&pins.0, &files),
            svc(6033, ""),
            svc(6034, "via = \"direct\"\n")
        ),
    )
    .unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until(
        "every check passed through the tunnel and directly",
        Duration::from_secs(5),
        || {
            let st = files.status_json();
            (0..2).all(|s| (0..2).all(|r| st["services"][s]["reals"][r]["last_result"] == "ok"))
        },
    );
    assert_eq!(
        files.status_json()["services"][0]["reals"][0]["via"],
        "tunnel"
    );
    assert_eq!(
        files.status_json()["services"][1]["reals"][0]["via"],
        "direct"
    );

    // real2 loses its VIP: its own address still answers, the path clients take does not.
    bed.real(2).del_addr("lo", bed.vip(), 32).unwrap();
    wait_until(
        "real2 quiesced by the tunnel check",
        Duration::from_secs(5),
        || weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.12") == Some(0),
    );
    thread::sleep(Duration::from_millis(600));
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6034", "198.18.0.12"),
        Some(1),
        "the direct check cannot see it"
    );
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11"),
        Some(1)
    );
    let st = files.status_json();
    let why = st["services"][0]["reals"][1]["last_result"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        why.starts_with(
            "tcp: timeout after 150ms; nothing came back from 198.18.0.100:6033 through the tunnel"
        ),
        "{why}"
    );
    assert_eq!(st["services"][1]["reals"][1]["last_result"], "ok", "{st}");
    // New client connections go only where the tunnel works.
    assert!(who(&bed, 6033, 10).iter().all(|r| r == "real1"));

    // The VIP back: UP again after `rise` tunnel checks.
    bed.real(2).add_addr("lo", bed.vip(), 32).unwrap();
    wait_until("real2 restored", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.12") == Some(1)
    });
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

#[test]
fn quorum_sorry_server_and_notify_commands() {
    let (bed, pins, _pass, _decap) = bed_of("dqs", true, 3);
    let mut servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("quorum");
    let events = files.dir.join("events");
    // Commands are argv lists, run without a shell: this one is a shell only because the test
    // wants to record its environment.
    let record = format!(
        "[\"/bin/sh\", \"-c\", \"echo $LBADM_EVENT $LBADM_SERVICE ${{LBADM_REAL:--}} >> {}\"]",
        events.display()
    );
    std::fs::write(
        files.config(),
        format!(
            "{}notify_timeout = \"300ms\"\n[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n\
             sorry_server = \"198.18.0.13\"\nquorum = 2\nnotify_up = {record}\nnotify_down = {record}\n\
             quorum_up = {record}\nquorum_down = [\"/bin/sleep\", \"30\"]\n\
             [service.check]\ntype = \"tcp\"\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\n[[service.real]]\naddress = \"198.18.0.12\"\n",
            header(&pins.0, &files)
        ),
    )
    .unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until("both reals checked", Duration::from_secs(5), || {
        let st = files.status_json();
        (0..2).all(|r| st["services"][0]["reals"][r]["last_result"] == "ok")
    });
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.13"),
        None
    );

    // real2 dies: alive weight 1 < quorum 2: the quorum is lost, the sorry server (real3)
    // takes every new connection, real1 included in the reals taken out.
    drop(servers.remove(1));
    wait_until("the sorry server in", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.13") == Some(1)
    });
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11"),
        Some(0)
    );
    assert_eq!(
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.12"),
        Some(0)
    );
    assert!(who(&bed, 6033, 10).iter().all(|r| r == "real3"));
    let status = ok(lbadm(
        d,
        &pins.0,
        &["status", "--status-file", files.status().to_str().unwrap()],
    ));
    assert!(
        status.contains("QUORUM LOST: sorry server 198.18.0.13"),
        "{status}"
    );
    // quorum_down (sleep 30) is killed at notify_timeout.
    wait_until(
        "the slow notify command killed",
        Duration::from_secs(3),
        || {
            files
                .log_text()
                .contains("notify command killed after 0.3s")
        },
    );

    // real2 back: quorum regained, the sorry server out, both reals in.
    servers.push(
        tcp_echo_server(
            bed.real(2),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6033),
            "real2",
        )
        .unwrap(),
    );
    wait_until("the sorry server out", Duration::from_secs(5), || {
        weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.13").is_none()
    });
    let both = who(&bed, 6033, 10);
    assert!(
        both.iter().all(|r| r == "real1" || r == "real2"),
        "{both:?}"
    );
    wait_until("the notify commands ran", Duration::from_secs(3), || {
        std::fs::read_to_string(&events)
            .unwrap_or_default()
            .lines()
            .count()
            >= 3
    });
    let ev = std::fs::read_to_string(&events).unwrap();
    // Commands run concurrently: up and quorum_up may finish in either order.
    let mut lines: Vec<&str> = ev.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "down [198.18.0.100]:tcp:6033 198.18.0.12",
            "quorum_up [198.18.0.100]:tcp:6033 -",
            "up [198.18.0.100]:tcp:6033 198.18.0.12",
        ],
        "{ev}"
    );
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

fn sighup(child: &ChildGuard) {
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) },
        0
    );
}

#[test]
fn sighup_applies_only_the_difference() {
    let (bed, pins, _pass, _decap) = bed("dmh", true);
    let _servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("hup");
    let check = format!("[service.check]\ntype = \"tcp\"\nport = 6033\n{FAST}");
    let real = |a: &str, w: u32| format!("[[service.real]]\naddress = \"{a}\"\nweight = {w}\n");
    let svc = |port: u16| format!("[[service]]\nvip = \"198.18.0.100\"\nport = {port}\n{check}");
    // v1: 6033 {real1 1, real2 0}, 6034 {real2 1}.
    let v1 = format!(
        "{}{}{}{}{}{}",
        header(&pins.0, &files),
        svc(6033),
        real("198.18.0.11", 1),
        real("198.18.0.12", 0),
        svc(6034),
        real("198.18.0.12", 1)
    );
    std::fs::write(files.config(), &v1).unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until("v1 applied", Duration::from_secs(5), || {
        weights(d, &pins.0).len() == 3
    });
    // Let a few checks run, so health is established.
    thread::sleep(Duration::from_millis(600));

    // A connection to real1 (the only real of 6033 with a weight), held across the reload.
    let vip = SocketAddrV4::new(bed.vip(), 6033);
    let mut held = bed
        .client()
        .run(|| TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5)).unwrap());
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    held.write_all(b"before-").unwrap();

    // v2: 6033 loses real2, 6034's real2 gets weight 5, 6035 is new.
    let v2 = format!(
        "{}{}{}{}{}{}{}",
        header(&pins.0, &files),
        svc(6033),
        real("198.18.0.11", 1),
        svc(6034),
        real("198.18.0.12", 5),
        svc(6035),
        real("198.18.0.11", 2)
    );
    std::fs::write(files.config(), &v2).unwrap();
    sighup(&daemon);
    let want = vec![
        (
            "198.18.0.100:6033".to_string(),
            "198.18.0.11".to_string(),
            1,
        ),
        (
            "198.18.0.100:6034".to_string(),
            "198.18.0.12".to_string(),
            5,
        ),
        (
            "198.18.0.100:6035".to_string(),
            "198.18.0.11".to_string(),
            2,
        ),
    ];
    wait_until("v2 applied", Duration::from_secs(5), || {
        weights(d, &pins.0) == want
    });
    // The held connection goes on, on the same real.
    held.write_all(b"after\n").unwrap();
    held.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    let _ = held.read_to_string(&mut reply);
    assert_eq!(reply, "real1 13\n");

    // A broken file changes nothing.
    let before = ok(lbadm(d, &pins.0, &["-S", "-n"]));
    std::fs::write(
        files.config(),
        "iface = \"eth0\"\n[[service]]\nvip = \"nonsense\n",
    )
    .unwrap();
    sighup(&daemon);
    wait_until("the reload error logged", Duration::from_secs(5), || {
        files.log_text().contains("reload ignored")
    });
    thread::sleep(Duration::from_millis(600));
    assert_eq!(ok(lbadm(d, &pins.0, &["-S", "-n"])), before);
    let mut daemon = daemon;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon died on a broken file"
    );
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

#[test]
fn daemon_death_and_restart_lose_nothing() {
    let (bed, pins, _pass, _decap) = bed("dmk", true);
    let _servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("kill");
    write_two_reals(&pins.0, &files, 3);
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until("configured", Duration::from_secs(5), || {
        weights(d, &pins.0).len() == 2
    });
    thread::sleep(Duration::from_millis(500));
    let table = ok(lbadm(d, &pins.0, &["-S", "-n"]));

    // Stream 2 MiB through the VIP while the daemon is SIGKILLed.
    const TOTAL: usize = 2 << 20;
    let vip = SocketAddrV4::new(bed.vip(), 6033);
    let mut s = bed
        .client()
        .run(|| TcpStream::connect_timeout(&vip.into(), Duration::from_secs(5)).unwrap());
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![b'x'; 16 * 1024];
        for _ in 0..TOTAL / chunk.len() {
            w.write_all(&chunk).unwrap();
            thread::sleep(Duration::from_millis(5));
        }
    });
    thread::sleep(Duration::from_millis(200));
    let status = daemon.kill().unwrap();
    assert!(!status.success());
    writer.join().unwrap();
    assert_eq!(
        ok(lbadm(d, &pins.0, &["-S", "-n"])),
        table,
        "the table changed without the daemon"
    );

    // A restarted daemon re-reads the maps and resets nothing: the connection still works.
    let daemon = start_daemon(&bed, &pins.0, &files);
    thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        ok(lbadm(d, &pins.0, &["-S", "-n"])),
        table,
        "the restarted daemon changed the table"
    );
    s.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    let n: usize = reply
        .trim()
        .split(' ')
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    assert_eq!(n, TOTAL, "reply {reply:?}");
    let count = files.log_text().matches("maps updated").count();
    assert_eq!(
        count,
        1,
        "only the first start configures; the restart must not rewrite matching maps: {}",
        files.log_text()
    );
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

#[test]
fn check_config_names_line_column_and_field() {
    let files = Files::new("check");
    let run = |text: &str| {
        std::fs::write(files.config(), text).unwrap();
        let o = std::process::Command::new(lbadm_bin())
            .args(["daemon", "--check-config", "--config"])
            .arg(files.config())
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let good = "iface = \"eth0\"\n[[service]]\nvip = \"198.18.0.100\"\nport = 6033\n\
                [[service.real]]\naddress = \"198.18.0.11\"\n[[service.real]]\naddress = \"198.18.0.12\"\n";
    assert_eq!(run(good).0, Some(0));
    let (code, err) = run("iface = \"eth0\"\n[[service]]\nvip = 198.18\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("lbadm.toml:3:"), "{err}");
    let (code, err) = run(&good.replace("198.18.0.12", "198.18.0.11"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("lbadm.toml:8:11: service[0].real[1].address: duplicate real 198.18.0.11"),
        "{err}"
    );
    let (code, err) = run(&good.replace("port = 6033", "port = 6033\nscheduler = \"lblc\""));
    assert_eq!(code, Some(1));
    assert!(err.contains("lblc"), "{err}");
    let (code, err) = run(&good.replace(
        "address = \"198.18.0.11\"",
        "address = \"198.18.0.11\"\nmax_conns = 5\nmin_conns = 6",
    ));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("service[0].real[0].min_conns: 6 is above max_conns (5)"),
        "{err}"
    );
    // A file without services would empty the maps: refused unless it says so.
    let (code, err) = run("iface = \"eth0\"\n");
    assert_eq!(code, Some(1));
    assert!(err.contains("service: no [[service]]"), "{err}");
    assert_eq!(
        run("iface = \"eth0\"\nallow_no_services = true\n").0,
        Some(0)
    );
    // An address that cannot be a host, where it is.
    let (code, err) = run(&good.replace("198.18.0.12", "255.255.255.255"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains(
            "lbadm.toml:8:11: service[0].real[1].address: 255.255.255.255 cannot be a real server"
        ),
        "{err}"
    );
}

/// `lbadm detach` + `lbadm attach` under a running daemon: it notices, says so, and the new
/// (empty) data path gets the configuration within a couple of seconds, without a SIGHUP.
#[test]
fn a_replaced_data_path_gets_the_configuration_again() {
    let (bed, pins, _pass, _decap) = bed("dmr", true);
    let _servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("replace");
    write_two_reals(&pins.0, &files, 1);
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    wait_until("configured", Duration::from_secs(5), || {
        weights(d, &pins.0).len() == 2
    });
    ok(lbadm(d, &pins.0, &["detach"]));
    wait_until("the detach noticed", Duration::from_secs(3), || {
        files.log_text().contains("the data path was detached")
    });
    ok(lbadm(d, &pins.0, &["attach", "--iface", "eth0"]));
    let took = wait_until("configured again", Duration::from_secs(5), || {
        weights(d, &pins.0).len() == 2
    });
    eprintln!("the new data path was configured {took:?} after attach");
    assert!(files.log_text().contains("the data path was replaced"));
    // And it serves: a connection through the VIP is answered.
    let vip = SocketAddrV4::new(bed.vip(), 6033);
    lb_tests::testbed::tcp_echo_request(bed.client(), vip, b"hello\n").unwrap();
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}

/// A real that comes back UP ramps its weight over `slow_start` (the service's weights are
/// scaled ×100 meanwhile), `lbadm status` shows the ramp, and at its end the configured
/// weights are back. Thresholds from the file reach the maps.
#[test]
fn slow_start_ramps_a_real_back() {
    let (bed, pins, _pass, _decap) = bed("dss", false);
    let mut servers = bed.start_echo_servers(6033).unwrap();
    let files = Files::new("slowstart");
    std::fs::write(
        files.config(),
        format!(
            "{}[[service]]\nvip = \"198.18.0.100\"\nport = 6033\nslow_start = \"3s\"\n[service.check]\ntype = \"tcp\"\n{FAST}\
             [[service.real]]\naddress = \"198.18.0.11\"\nweight = 1\nmax_conns = 50\nmin_conns = 40\n\
             [[service.real]]\naddress = \"198.18.0.12\"\nweight = 1\n",
            header(&pins.0, &files)
        ),
    )
    .unwrap();
    let daemon = start_daemon(&bed, &pins.0, &files);
    let d = bed.director();
    let w1 = || weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.11");
    let w2 = || weight_of(d, &pins.0, "198.18.0.100:6033", "198.18.0.12");
    wait_until("configured", Duration::from_secs(10), || {
        lbadm(d, &pins.0, &["-L", "-n"]).status.success() && weights(d, &pins.0).len() == 2
    });
    // No ramp at start: the reals are new with their service.
    assert_eq!((w1(), w2()), (Some(1), Some(1)));
    let thresholds = ok(lbadm(d, &pins.0, &["-L", "-n", "--thresholds"]));
    assert!(
        thresholds.contains("  -> 198.18.0.11:6033             50         40"),
        "{thresholds}"
    );
    drop(servers.remove(0));
    wait_until("real1 quiesced", Duration::from_secs(5), || w1() == Some(0));
    let _back = tcp_echo_server(
        bed.real(1),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 6033),
        "real1",
    )
    .unwrap();
    // Back UP: a fraction of the scaled weight, the other real at 1 × 100.
    wait_until("real1 ramping", Duration::from_secs(5), || {
        matches!(w1(), Some(1..=99)) && w2() == Some(100)
    });
    let first = w1().unwrap();
    let status = ok(lbadm(
        d,
        &pins.0,
        &["status", "--status-file", files.status().to_str().unwrap()],
    ));
    assert!(status.contains("slow start "), "{status}");
    wait_until("real1 ramps up", Duration::from_secs(3), || {
        w1().is_some_and(|w| w > first && w < 100)
    });
    // Done: the configured weights again.
    wait_until("ramp over", Duration::from_secs(5), || {
        (w1(), w2()) == (Some(1), Some(1))
    });
    assert!(
        files.log_text().contains("slow start done"),
        "{}",
        files.log_text()
    );
    assert!(daemon.kill().is_ok());
    detach(&bed, &pins.0);
}
