//! Real MySQL software on a [`TestBed`](crate::testbed::TestBed): a MariaDB server (same
//! protocol as ProxySQL) on port 6033 of each real server, sysbench on the client. Shared by the
//! demo, the integration test and the benchmarks.
//!
//! One data directory is initialised per run (users `sbtest` and `monitor`, the sysbench tables)
//! and copied for each server, so every real serves the same data. Servers and sysbench runs
//! are child processes killed on drop; data directories are removed on drop.

use crate::netns::{ChildGuard, Netns};
use anyhow::{Context as _, Result, bail, ensure};
use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

pub const PORT: u16 = 6033;
pub const USER: &str = "sbtest";
pub const PASSWORD: &str = "sbtest";
/// The health check's login (mysql check with `SELECT 1`).
pub const MONITOR_USER: &str = "monitor";
pub const MONITOR_PASSWORD: &str = "monitor";
pub const TABLES: u32 = 2;

/// The Debian packages this needs (`cargo xtask setup` installs them).
pub fn ensure_installed() -> Result<()> {
    for (bin, pkg) in [
        ("/usr/sbin/mariadbd", "mariadb-server"),
        ("/usr/bin/mariadb-install-db", "mariadb-server"),
        ("/usr/bin/mariadb", "mariadb-client"),
        ("/usr/bin/sysbench", "sysbench"),
    ] {
        ensure!(
            Path::new(bin).exists(),
            "{bin} is missing: install Debian's {pkg} (`cargo xtask setup` does)"
        );
    }
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot run {:?}", cmd.get_program()))?;
    if !o.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("lbadm-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An initialised, prepared data directory that servers are copied from.
pub struct Template {
    dir: TempDir,
    pub table_size: u32,
}

const MARIADBD: &str = "/usr/sbin/mariadbd";

/// `c` is `MARIADBD`, in the namespace it should run in.
fn server_cmd(mut c: Command, datadir: &Path, network: bool) -> Command {
    c.arg("--no-defaults")
        .arg("--user=root")
        .arg(format!("--datadir={}", datadir.display()))
        .arg(format!("--socket={}", datadir.join("sock").display()))
        .arg(format!("--pid-file={}", datadir.join("pid").display()))
        .arg(format!(
            "--log-error={}",
            datadir.join("error.log").display()
        ))
        .args([
            "--skip-name-resolve",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--max-connections=1000",
            "--max-connect-errors=1000000",
        ]);
    if network {
        c.arg(format!("--port={PORT}"))
            .arg("--bind-address=0.0.0.0");
    } else {
        c.arg("--skip-networking");
    }
    c
}

fn wait_socket(datadir: &Path, child: &mut std::process::Child) -> Result<()> {
    let start = Instant::now();
    loop {
        if Command::new("/usr/bin/mariadb")
            .arg(format!("--socket={}", datadir.join("sock").display()))
            .args(["-uroot", "-e", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(());
        }
        if let Some(st) = child.try_wait()? {
            bail!(
                "mariadbd exited ({st}): {}",
                std::fs::read_to_string(datadir.join("error.log")).unwrap_or_default()
            );
        }
        ensure!(
            start.elapsed() < Duration::from_secs(60),
            "mariadbd did not come up in 60 s: {}",
            std::fs::read_to_string(datadir.join("error.log")).unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

impl Template {
    /// `mariadb-install-db`, users, and `sysbench … prepare` of [`TABLES`] tables of
    /// `table_size` rows, on a server reachable only by its socket.
    pub fn create(table_size: u32) -> Result<Template> {
        ensure_installed()?;
        let dir = TempDir::new("mariadb-template")?;
        let data = dir.0.join("data");
        run(
            Command::new("/usr/bin/mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=root")
                .arg(format!("--datadir={}", data.display()))
                .args(["--skip-test-db", "--auth-root-authentication-method=socket"]),
            "mariadb-install-db",
        )?;
        let mut child = ChildGuard::spawn(
            server_cmd(Command::new(MARIADBD), &data, false)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )?;
        wait_socket(&data, &mut child)?;
        let sock = format!("--socket={}", data.join("sock").display());
        run(
            Command::new("/usr/bin/mariadb").args([
                &sock,
                "-uroot",
                "-e",
                &format!(
                    "CREATE DATABASE sbtest; \
                     CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
                     GRANT ALL ON sbtest.* TO '{USER}'@'%'; \
                     CREATE USER '{MONITOR_USER}'@'%' IDENTIFIED BY '{MONITOR_PASSWORD}';"
                ),
            ]),
            "creating the users",
        )?;
        run(
            Command::new("/usr/bin/sysbench").args([
                "oltp_read_only",
                "--db-driver=mysql",
                &format!("--mysql-socket={}", data.join("sock").display()),
                &format!("--mysql-user={USER}"),
                &format!("--mysql-password={PASSWORD}"),
                &format!("--tables={TABLES}"),
                &format!("--table-size={table_size}"),
                "prepare",
            ]),
            "sysbench prepare",
        )?;
        run(
            Command::new("/usr/bin/mariadb").args([&sock, "-uroot", "-e", "SHUTDOWN"]),
            "shutting the template server down",
        )?;
        let start = Instant::now();
        while child.try_wait()?.is_none() {
            ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the template server did not shut down"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(Template { dir, table_size })
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }
}

/// A MariaDB server on 0.0.0.0:[`PORT`] in a namespace.
pub struct MariaDb {
    pub name: String,
    dir: TempDir,
    child: Option<ChildGuard>,
    /// Server options beyond the common ones (e.g. TLS).
    extra: Vec<String>,
}

impl MariaDb {
    /// Copies the template's data directory and starts a server on it in `ns`.
    pub fn start(ns: &Netns, name: &str, template: &Template) -> Result<MariaDb> {
        MariaDb::start_with(ns, name, template, &[])
    }

    /// [`MariaDb::start`] with more server options.
    pub fn start_with(
        ns: &Netns,
        name: &str,
        template: &Template,
        extra: &[String],
    ) -> Result<MariaDb> {
        let dir = TempDir::new(&format!("mariadb-{name}"))?;
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template.data())
                .arg(dir.0.join("data")),
            "copying the template data directory",
        )?;
        let mut db = MariaDb {
            name: name.into(),
            dir,
            child: None,
            extra: extra.to_vec(),
        };
        db.restart(ns)?;
        Ok(db)
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// The server's unix socket (root logs in there by socket authentication).
    pub fn socket(&self) -> PathBuf {
        self.data().join("sock")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the server (again) and waits until it answers on its socket.
    pub fn restart(&mut self, ns: &Netns) -> Result<()> {
        ensure!(self.child.is_none(), "{} is already running", self.name);
        let _ = std::fs::remove_file(self.data().join("sock"));
        let mut child = ChildGuard::spawn(
            server_cmd(ns.command(MARIADBD), &self.data(), true)
                .args(&self.extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .with_context(|| format!("starting MariaDB on {}", self.name))?;
        wait_socket(&self.data(), &mut child)
            .with_context(|| format!("MariaDB on {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// Connections of the sysbench user the server has now (None while it is down): what the
    /// backend sees, unlike the director, which only sees the inbound half.
    pub fn client_connections(&self) -> Option<u32> {
        self.child.as_ref()?;
        let out = Command::new("/usr/bin/mariadb")
            .arg(format!("--socket={}", self.data().join("sock").display()))
            .args([
                "-uroot",
                "-N",
                "-e",
                &format!(
                    "SELECT COUNT(*) FROM information_schema.processlist WHERE user = '{USER}'"
                ),
            ])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }

    /// SIGKILL, as a crash: clients see their connections reset.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(c) = self.child.take() {
            c.kill()
                .with_context(|| format!("killing MariaDB on {}", self.name))?;
        }
        Ok(())
    }
}

/// One line of sysbench's `--report-interval=1` output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Interval {
    pub second: u32,
    pub threads: u32,
    pub tps: f64,
    pub qps: f64,
    pub p95_ms: f64,
    pub errors_per_s: f64,
    pub reconnects_per_s: f64,
}

/// sysbench's final report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Transactions whose connection was lost ("lbadm: lost" lines of `failover.lua`).
    pub lost: u64,
    /// New connections opened after a loss.
    pub reconnected: u64,
    pub transactions: u64,
    pub tps: f64,
    pub queries: u64,
    pub qps: f64,
    pub ignored_errors: u64,
    pub reconnects: u64,
    pub p95_ms: f64,
}

/// Parses `[ 5s ] thds: 8 tps: 302.84 qps: 4862.45 (r/w/o: …) lat (ms,95%): 33.12 err/s: 0.00
/// reconn/s: 0.00`.
pub fn parse_interval(line: &str) -> Option<Interval> {
    let rest = line.trim().strip_prefix('[')?;
    let (sec, rest) = rest.split_once("s ]")?;
    let field = |name: &str| -> Option<f64> {
        let after = rest.split(name).nth(1)?;
        after.split_whitespace().next()?.parse().ok()
    };
    Some(Interval {
        second: sec.trim().parse().ok()?,
        threads: field("thds:")? as u32,
        tps: field("tps:")?,
        qps: field("qps:")?,
        p95_ms: field("lat (ms,95%):")?,
        errors_per_s: field("err/s:")?,
        reconnects_per_s: field("reconn/s:")?,
    })
}

/// Parses the final report (the lines after "SQL statistics:").
pub fn parse_summary(text: &str) -> Option<Summary> {
    let num = |key: &str| -> Option<(u64, f64)> {
        let line = text.lines().find(|l| l.trim_start().starts_with(key))?;
        let after = line.split_once(key)?.1.trim();
        let n: u64 = after.split_whitespace().next()?.parse().ok()?;
        let rate = after
            .split_once('(')
            .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Some((n, rate))
    };
    let p95 = text
        .lines()
        .find(|l| l.trim_start().starts_with("95th percentile:"))?
        .split_once(':')?
        .1
        .trim()
        .parse()
        .ok()?;
    let (transactions, tps) = num("transactions:")?;
    let (queries, qps) = num("queries:")?;
    // Anywhere, not at line starts: eight threads print at once, and one's line may land in
    // the middle of another's (seen once: 3 "lost" lines counted for 4 "reconnected").
    let count = |marker: &str| text.matches(marker).count() as u64;
    Some(Summary {
        lost: count("lbadm: lost "),
        reconnected: count("lbadm: reconnected "),
        transactions,
        tps,
        queries,
        qps,
        ignored_errors: num("ignored errors:")?.0,
        reconnects: num("reconnects:")?.0,
        p95_ms: p95,
    })
}

/// A running `sysbench … run` whose per-second lines arrive on a channel.
pub struct Sysbench {
    child: Option<ChildGuard>,
    pub lines: mpsc::Receiver<String>,
    output: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

pub struct SysbenchOpts<'a> {
    pub test: &'a str,
    pub target: SocketAddr,
    pub threads: u32,
    pub seconds: u32,
    pub table_size: u32,
    /// Run through `tests/sysbench/failover.lua`: a lost connection is counted and replaced
    /// by a new one instead of ending the run.
    pub reconnect: bool,
}

/// The wrapper that reconnects (see its comments for why sysbench's own reconnect is not used).
pub fn failover_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sysbench/failover.lua")
}

impl Sysbench {
    pub fn start(ns: &Netns, o: &SysbenchOpts) -> Result<Sysbench> {
        let SocketAddr::V4(target) = o.target else {
            bail!("IPv4 only");
        };
        let mut cmd = ns.command("/usr/bin/sysbench");
        if o.reconnect {
            cmd.arg(failover_script()).env("LBADM_SB_TEST", o.test);
        } else {
            cmd.arg(o.test);
        }
        cmd.args([
            "--db-driver=mysql",
            &format!("--mysql-host={}", target.ip()),
            &format!("--mysql-port={}", target.port()),
            &format!("--mysql-user={USER}"),
            &format!("--mysql-password={PASSWORD}"),
            &format!("--tables={TABLES}"),
            &format!("--table-size={}", o.table_size),
            &format!("--threads={}", o.threads),
            &format!("--time={}", o.seconds),
            "--report-interval=1",
            "--percentile=95",
            "--rand-type=uniform",
        ]);
        if o.reconnect {
            // Statements prepared client-side: nothing to re-prepare on the server.
            cmd.arg("--db-ps-mode=disable");
        }
        cmd.arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("sysbench stdout")?;
        let stderr = child.stderr.take().context("sysbench stderr")?;
        let (tx, rx) = mpsc::channel();
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let out = output.clone();
        let reader = thread::spawn(move || {
            let mut err = String::new();
            let mut stderr = stderr;
            let errs = thread::spawn(move || {
                let _ = stderr.read_to_string(&mut err);
                err
            });
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut o) = out.lock() {
                    o.push_str(&line);
                    o.push('\n');
                }
                let _ = tx.send(line);
            }
            // Failed connection attempts while reconnecting print FATAL lines on stderr: kept
            // out of the report, shown only if the run fails.
            if let (Ok(e), Ok(mut o)) = (errs.join(), out.lock()) {
                o.push_str("--- stderr ---\n");
                o.push_str(&e);
            }
        });
        Ok(Sysbench {
            child: Some(child),
            lines: rx,
            output,
            reader: Some(reader),
        })
    }

    /// Waits for the run to end; its final report, or its output as the error.
    pub fn finish(mut self) -> Result<Summary> {
        let status = self.child.take().map(|c| c.wait()).transpose()?;
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = self.output.lock().map(|o| o.clone()).unwrap_or_default();
        match (status, parse_summary(&text)) {
            (Some(s), Some(sum)) if s.success() => Ok(sum),
            (s, _) => bail!("sysbench failed ({s:?}):\n{text}"),
        }
    }
}

/// Waits until a MySQL greeting comes from `addr` (seen from `ns`).
pub fn wait_greeting(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let ok = ns.run(|| {
            TcpStream::connect_timeout(&addr, Duration::from_millis(500))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_millis(500)))?;
                    let mut b = [0u8; 5];
                    s.read_exact(&mut b)?;
                    Ok(b[4] == 10)
                })
                .unwrap_or(false)
        });
        if ok {
            return Ok(());
        }
        ensure!(
            start.elapsed() < timeout,
            "no MySQL greeting from {addr} within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// The address of a real, as a MySQL endpoint.
pub fn endpoint(addr: Ipv4Addr) -> SocketAddr {
    SocketAddr::from((addr, PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysbench_output() {
        let l = "[ 5s ] thds: 8 tps: 302.84 qps: 4862.45 (r/w/o: 4253.77/0.00/608.68) lat (ms,95%): 33.12 err/s: 0.00 reconn/s: 1.00";
        assert_eq!(
            parse_interval(l),
            Some(Interval {
                second: 5,
                threads: 8,
                tps: 302.84,
                qps: 4862.45,
                p95_ms: 33.12,
                errors_per_s: 0.0,
                reconnects_per_s: 1.0
            })
        );
        let report = "SQL statistics:\n    queries performed:\n        read:  1\n    transactions:                        12345  (411.41 per sec.)\n    queries:                             197520 (6582.58 per sec.)\n    ignored errors:                      4      (0.13 per sec.)\n    reconnects:                          4      (0.13 per sec.)\n\nLatency (ms):\n         min:                                    1.10\n         95th percentile:                       30.26\n";
        assert_eq!(
            parse_summary(report),
            Some(Summary {
                lost: 0,
                reconnected: 0,
                transactions: 12345,
                tps: 411.41,
                queries: 197520,
                qps: 6582.58,
                ignored_errors: 4,
                reconnects: 4,
                p95_ms: 30.26
            })
        );
    }
}

/// How a [`MysqlBed`] is built.
pub struct MysqlBedOpts {
    pub prefix: String,
    /// One real server per weight.
    pub weights: Vec<u32>,
    pub table_size: u32,
    pub interval: Duration,
    pub timeout: Duration,
    pub fall: u32,
    pub rise: u32,
}

impl Default for MysqlBedOpts {
    fn default() -> Self {
        MysqlBedOpts {
            prefix: "my".into(),
            weights: vec![1, 1],
            table_size: 10_000,
            interval: Duration::from_millis(1000),
            timeout: Duration::from_millis(500),
            fall: 2,
            rise: 2,
        }
    }
}

/// The main job on a test bed: real servers configured by `lbadm realserver setup` (XDP
/// decapsulation), MariaDB on each, and `lbadm daemon` on the director with a mysql check
/// through the tunnel. Everything goes away on drop (the namespaces with the bed).
pub struct MysqlBed {
    pub opts: MysqlBedOpts,
    pub servers: Vec<MariaDb>,
    daemon: Option<ChildGuard>,
    /// What `lbadm realserver setup` printed, per real.
    pub setup_output: Vec<String>,
    pub files: TempDir,
    _template: Template,
    _pass: aya::Ebpf,
    _decap_pins: Vec<crate::fixture::PinDir>,
    pub pins: crate::fixture::PinDir,
    pub bed: crate::testbed::TestBed,
}

impl MysqlBed {
    pub fn new(opts: MysqlBedOpts) -> Result<MysqlBed> {
        use crate::{fixture::PinDir, lbadm_bin, lbbed::attach_pass, testbed};
        ensure_installed()?;
        let bed = testbed::TestBed::new(testbed::TestBedOpts {
            reals: opts.weights.len(),
            prefix: opts.prefix.clone(),
            configure_reals: false,
            ..Default::default()
        })?;
        let files = TempDir::new(&format!("{}-files", opts.prefix))?;
        let pins = PinDir::new(&format!("{}-director", opts.prefix));
        let mut decap_pins = Vec::new();
        let mut setup_output = Vec::new();
        for i in 1..=opts.weights.len() {
            let p = PinDir::new(&format!("{}-decap{i}", opts.prefix));
            let out = run(
                bed.real(i)
                    .command(lbadm_bin())
                    .args(["realserver", "setup", "--decap", "xdp", "--iface", "eth0"])
                    .arg("--vip")
                    .arg(bed.vip().to_string())
                    .arg("--director")
                    .arg(bed.director_addr().to_string())
                    .arg("--sysctl-file")
                    .arg(files.0.join(format!("real{i}-sysctl.conf")))
                    .arg("--state-file")
                    .arg(files.0.join(format!("real{i}-state.json")))
                    .arg("--decap-pin-dir")
                    .arg(&p.0),
                &format!("lbadm realserver setup on real{i}"),
            )?;
            decap_pins.push(p);
            setup_output.push(out);
        }
        let peer = bed.director_host().bridge_port().index;
        let pass = bed.bridge().run(move || attach_pass(peer))?;
        let template = Template::create(opts.table_size)?;
        let mut servers = Vec::new();
        for i in 1..=opts.weights.len() {
            servers.push(MariaDb::start(bed.real(i), &format!("real{i}"), &template)?);
        }
        let mut cfg = format!(
            "iface = \"eth0\"\npin_dir = \"{}\"\nstatus_file = \"{}\"\n\
             [[service]]\nvip = \"{}\"\nport = {PORT}\nscheduler = \"wlc\"\non_failure = \"quiesce\"\n\
             [service.check]\ntype = \"mysql\"\nvia = \"tunnel\"\nuser = \"{MONITOR_USER}\"\n\
             password = \"{MONITOR_PASSWORD}\"\ninterval = \"{}ms\"\ntimeout = \"{}ms\"\n\
             fall = {}\nrise = {}\njitter = \"{}ms\"\n",
            pins.0.display(),
            files.0.join("status.json").display(),
            bed.vip(),
            opts.interval.as_millis(),
            opts.timeout.as_millis(),
            opts.fall,
            opts.rise,
            opts.interval.as_millis() / 10,
        );
        for (i, w) in opts.weights.iter().enumerate() {
            cfg += &format!(
                "[[service.real]]\naddress = \"{}\"\nweight = {w}\n",
                bed.real_addr(i + 1)
            );
        }
        std::fs::write(files.0.join("lbadm.toml"), cfg)?;
        let daemon = spawn_daemon(&bed, &files, "daemon.log")?;
        let me = MysqlBed {
            opts,
            servers,
            daemon: Some(daemon),
            setup_output,
            files,
            _template: template,
            _pass: pass,
            _decap_pins: decap_pins,
            pins,
            bed,
        };
        let start = Instant::now();
        while !(0..me.servers.len()).all(|i| me.real_status(i)["last_result"] == "ok") {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon's checks did not pass within 20 s; its log:\n{}",
                me.daemon_log()
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(me)
    }

    pub fn config_path(&self) -> PathBuf {
        self.files.0.join("lbadm.toml")
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.files.0.join("daemon.log")).unwrap_or_default()
    }

    /// The daemon's status file.
    pub fn status(&self) -> serde_json::Value {
        std::fs::read(self.files.0.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Real `i` (0-based) of the status file.
    pub fn real_status(&self, i: usize) -> serde_json::Value {
        self.status()["services"][0]["reals"][i].clone()
    }

    pub fn maps(&self) -> Result<lb_userspace::director::Maps> {
        Ok(lb_userspace::director::Maps::open(&self.pins.0)?)
    }

    /// Per real (in configuration order): (weight in the maps, active connections, counters).
    pub fn per_real(&self, maps: &lb_userspace::director::Maps) -> Result<Vec<RealView>> {
        let installed = maps.read()?;
        let active = lb_userspace::director::conntrack::counts_by_real(maps)?;
        let mut out = Vec::new();
        for i in 1..=self.servers.len() {
            let addr = self.bed.real_addr(i);
            let view = installed.first().and_then(|s| {
                let k = s.spec.reals.iter().position(|r| r.addr == addr)?;
                Some((s.spec.reals[k].weight, s.real_slots[k]))
            });
            out.push(match view {
                Some((weight, slot)) => RealView {
                    weight: Some(weight),
                    active: active.get(&slot).map(|a| a.0).unwrap_or(0),
                    counters: maps.real_stats(slot)?,
                },
                None => RealView::default(),
            });
        }
        Ok(out)
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((self.bed.vip(), PORT))
    }

    /// Stops the daemon (SIGTERM: the maps stay, the data path keeps forwarding).
    pub fn stop_daemon(&mut self) {
        self.signal_daemon(libc::SIGTERM);
    }

    /// Sends `sig` to the daemon and reaps it.
    pub fn signal_daemon(&mut self, sig: libc::c_int) {
        if let Some(d) = self.daemon.take() {
            unsafe { libc::kill(d.id() as libc::pid_t, sig) };
            let _ = d.wait();
        }
    }

    /// Starts the daemon again (after [`MysqlBed::signal_daemon`]), logging to `log` in the
    /// bed's files.
    pub fn start_daemon(&mut self, log: &str) -> Result<()> {
        ensure!(self.daemon.is_none(), "the daemon is running");
        self.daemon = Some(spawn_daemon(&self.bed, &self.files, log)?);
        Ok(())
    }

    pub fn file_text(&self, name: &str) -> String {
        std::fs::read_to_string(self.files.0.join(name)).unwrap_or_default()
    }
}

fn spawn_daemon(bed: &crate::testbed::TestBed, files: &TempDir, log: &str) -> Result<ChildGuard> {
    let log = std::fs::File::create(files.0.join(log))?;
    ChildGuard::spawn(
        bed.director()
            .command(crate::lbadm_bin())
            .args(["daemon", "--config"])
            .arg(files.0.join("lbadm.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log)),
    )
}

#[derive(Debug, Clone, Default)]
pub struct RealView {
    /// None: not in the service.
    pub weight: Option<u32>,
    pub active: u32,
    pub counters: lb_common::Counters,
}

impl Drop for MysqlBed {
    fn drop(&mut self) {
        self.stop_daemon();
        for s in &mut self.servers {
            let _ = s.kill();
        }
    }
}
