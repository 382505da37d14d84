//! The main job with real MySQL software: sysbench through VIP:6033 to MariaDB on two real
//! servers set up by `lbadm realserver setup`, `lbadm daemon` checking them through the tunnel
//! (mysql login + SELECT 1). One backend is killed and restarted midway.

use lb_tests::assertions::wait_until;
use lb_tests::mysqlbed::{MysqlBed, MysqlBedOpts, Sysbench, SysbenchOpts, parse_interval};
use std::{path::Path, thread, time::Duration};

#[test]
fn sysbench_survives_a_backend_crash() {
    let opts = MysqlBedOpts {
        prefix: "myf".into(),
        weights: vec![1, 1],
        table_size: 1000,
        interval: Duration::from_millis(500),
        timeout: Duration::from_millis(400),
        fall: 2,
        rise: 2,
    };
    // Health transition bound: fall x (interval + jitter) + timeout, plus polling slack.
    let bound = Duration::from_millis(2 * 550 + 400 + 1000);
    let mut my = MysqlBed::new(opts).unwrap();
    let (pins, files) = (my.pins.0.clone(), my.files.0.clone());
    let maps = my.maps().unwrap();
    let threads = 8;
    let sb = Sysbench::start(
        my.bed.client(),
        &SysbenchOpts {
            test: "oltp_read_only",
            target: my.vip(),
            threads,
            seconds: 14,
            table_size: 1000,
            reconnect: true,
        },
    )
    .unwrap();
    // Two seconds of traffic on both reals.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        if let Some(i) = parse_interval(&sb.lines.recv().unwrap()) {
            seen.push(i);
        }
    }
    let before = my.per_real(&maps).unwrap();
    // Connections follow the weights (1:1), within one table cycle per CPU.
    let (a, b) = (before[0].counters.conns, before[1].counters.conns);
    assert_eq!(a + b, u64::from(threads), "{before:?}");
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as u64;
    assert!(a.abs_diff(b) <= cpus, "{before:?}");
    let on_real2 = before[1].active;
    assert!(on_real2 > 0);

    my.servers[1].kill().unwrap();
    let took = wait_until("real2 quiesced", bound, || {
        my.per_real(&maps).unwrap()[1].weight == Some(0)
    });
    let log = my.daemon_log();
    assert!(log.contains("DOWN after 2 failed checks"), "{log}");
    // Once quiesced, every connection sysbench makes goes to real1.
    let conns_real2 = my.per_real(&maps).unwrap()[1].counters.conns;
    thread::sleep(Duration::from_secs(2));
    assert_eq!(my.per_real(&maps).unwrap()[1].counters.conns, conns_real2);

    my.servers[1].restart(my.bed.real(2)).unwrap();
    let back = wait_until("real2 restored", bound, || {
        my.per_real(&maps).unwrap()[1].weight == Some(1)
    });
    let s = sb.finish().unwrap();
    // Every transaction succeeded except one on each connection real2 had when it died; those
    // threads reconnected (attempts scheduled to real2 before it was quiesced are refused and
    // retried) and went on.
    assert!(s.transactions > 100, "{s:?}");
    assert_eq!(
        s.lost,
        u64::from(on_real2),
        "{s:?}, {on_real2} connections were on real2"
    );
    assert_eq!(s.reconnected, s.lost, "{s:?}");
    eprintln!(
        "real2 quiesced {took:?} after the kill, restored {back:?} after the restart; sysbench: {s:?}"
    );
    drop(maps);
    drop(my);
    // Nothing left behind: pins, files, servers.
    assert!(!Path::new(&pins).exists());
    assert!(!files.exists());
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("cmdline")).ok());
    let left: Vec<String> = procs
        .filter(|c| c.contains("lbadm-mariadb-real") || c.contains(&files.display().to_string()))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
