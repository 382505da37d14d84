//! Directors run as operators run them: `lbadm daemon` in a director's namespace, from a
//! configuration file (services, checks, `[sync]` with the other directors), attaching the data
//! path itself. Stopped, detached and removed on drop.

use crate::{
    fixture::PinDir, lbadm_bin, lbbed::attach_pass, mysqlbed::TempDir, netns::ChildGuard,
    testbed::TestBed,
};
use anyhow::{Context as _, Result, ensure};
use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

/// The UDP port the directors sync on.
pub const SYNC_PORT: u16 = 8849;
/// The key every test director shares (written to its `key_file`).
pub const SYNC_KEY: &str = "test-sync-key-0123456789abcdef";

/// What one director's daemon serves.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub port: u16,
    pub scheduler: &'static str,
    pub weights: Vec<u32>,
    /// The reals' addresses, one per weight; empty: the bed's reals.
    pub addrs: Vec<Ipv4Addr>,
    /// The check type (`tcp`, `none`, …), through the tunnel every 500 ms.
    pub check: &'static str,
    /// Extra `[[service]]` lines (persistence, on_failure, …).
    pub extra: String,
}

impl ServiceSpec {
    /// A service on the bed's reals, checked by TCP connect.
    pub fn tcp(port: u16, scheduler: &'static str, weights: Vec<u32>) -> ServiceSpec {
        ServiceSpec {
            port,
            scheduler,
            weights,
            addrs: vec![],
            check: "tcp",
            extra: String::new(),
        }
    }
}

pub struct DirectorDaemon {
    pub index: usize,
    child: Option<ChildGuard>,
    pub files: TempDir,
    _pass: aya::Ebpf,
    // Last: removed after the daemon is stopped and the data path detached.
    pub pins: PinDir,
}

impl DirectorDaemon {
    /// The configuration of director `i`: `services` over the bed's reals (tcp checks through
    /// the tunnel), and `[sync]` with every other director when `sync` is set.
    pub fn config(
        bed: &TestBed,
        i: usize,
        pins: &PinDir,
        files: &TempDir,
        services: &[ServiceSpec],
        sync: bool,
    ) -> String {
        let mut c = format!(
            "iface = \"eth0\"\npin_dir = \"{}\"\nstatus_file = \"{}\"\n",
            pins.0.display(),
            files.0.join("status.json").display()
        );
        for s in services {
            c += &format!(
                "[[service]]\nvip = \"{}\"\nport = {}\nscheduler = \"{}\"\n{}\n\
                 [service.check]\ntype = \"{}\"\ninterval = \"500ms\"\ntimeout = \"400ms\"\n",
                bed.vip(),
                s.port,
                s.scheduler,
                s.extra,
                s.check
            );
            for (r, w) in s.weights.iter().enumerate() {
                let addr = s
                    .addrs
                    .get(r)
                    .copied()
                    .unwrap_or_else(|| bed.real_addr(r + 1));
                c += &format!("[[service.real]]\naddress = \"{addr}\"\nweight = {w}\n");
            }
        }
        if sync {
            let peers: Vec<String> = bed
                .director_addrs()
                .into_iter()
                .enumerate()
                .filter(|(j, _)| j + 1 != i)
                .map(|(_, a)| format!("\"{a}:{SYNC_PORT}\""))
                .collect();
            c += &format!(
                "[sync]\nlisten = \"{}:{SYNC_PORT}\"\npeers = [{}]\nkey_file = \"{}\"\nlearn_timeout = \"2s\"\n",
                bed.director_n(i).addr(),
                peers.join(", "),
                files.0.join("sync.key").display()
            );
        }
        c
    }

    /// Starts the daemon of director `i` and waits until every check has passed once.
    pub fn start(
        bed: &TestBed,
        i: usize,
        services: &[ServiceSpec],
        sync: bool,
    ) -> Result<DirectorDaemon> {
        let d = Self::start_with(bed, i, services, sync, "")?;
        d.wait_checks()?;
        Ok(d)
    }

    /// Starts the daemon of director `i` with `extra` appended to the configuration file (e.g.
    /// an `[announce]` section), without waiting for its checks.
    pub fn start_with(
        bed: &TestBed,
        i: usize,
        services: &[ServiceSpec],
        sync: bool,
        extra: &str,
    ) -> Result<DirectorDaemon> {
        let pins = PinDir::new(&format!("daemon{i}"));
        let files = TempDir::new(&format!("director{i}"))?;
        let key = files.0.join("sync.key");
        std::fs::write(&key, SYNC_KEY)?;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
        std::fs::write(
            files.0.join("lbadm.toml"),
            Self::config(bed, i, &pins, &files, services, sync) + extra,
        )?;
        let peer = bed.director_n(i).bridge_port().index;
        let pass = bed.bridge().run(move || attach_pass(peer))?;
        let mut d = DirectorDaemon {
            index: i,
            child: None,
            files,
            _pass: pass,
            pins,
        };
        d.spawn(bed, "daemon.log")?;
        Ok(d)
    }

    /// Waits until every check has passed once.
    pub fn wait_checks(&self) -> Result<()> {
        let start = Instant::now();
        while !self.checks_pass() {
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "director {}: the checks did not pass within 20 s:\n{}",
                self.index,
                self.log("daemon.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn spawn(&mut self, bed: &TestBed, log: &str) -> Result<()> {
        let out = std::fs::File::create(self.files.0.join(log))?;
        self.child = Some(ChildGuard::spawn(
            bed.director_n(self.index)
                .ns()
                .command(lbadm_bin())
                .args(["daemon", "--config"])
                .arg(self.files.0.join("lbadm.toml"))
                .env(
                    "LBADM_LOG",
                    std::env::var("LBADM_TEST_DAEMON_LOG").unwrap_or("info".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::from(out)),
        )?);
        Ok(())
    }

    /// Starts the daemon again after [`DirectorDaemon::signal`].
    pub fn restart(&mut self, bed: &TestBed, log: &str) -> Result<()> {
        ensure!(self.child.is_none(), "the daemon is running");
        self.spawn(bed, log)
    }

    pub fn signal(&mut self, sig: libc::c_int) {
        if let Some(c) = self.child.take() {
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
            let _ = c.wait();
        }
    }

    pub fn status(&self) -> serde_json::Value {
        std::fs::read(self.files.0.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn checks_pass(&self) -> bool {
        let st = self.status();
        st["services"].as_array().is_some_and(|svcs| {
            !svcs.is_empty()
                && svcs.iter().all(|s| {
                    s["reals"]
                        .as_array()
                        .is_some_and(|r| r.iter().all(|r| r["last_result"] == "ok"))
                })
        })
    }

    /// The sync part of the status file.
    pub fn sync(&self) -> serde_json::Value {
        self.status()["sync"].clone()
    }

    pub fn sync_ready(&self) -> bool {
        self.sync()["ready"] == true
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.files.0.join(name)).unwrap_or_default()
    }

    pub fn pin_dir(&self) -> PathBuf {
        self.pins.0.clone()
    }

    /// `lbadm status --ready` on this director: the check keepalived tracks.
    pub fn ready_command(&self) -> String {
        format!(
            "{} --pin-dir {} status --ready --status-file {}",
            lbadm_bin().display(),
            self.pins.0.display(),
            self.files.0.join("status.json").display()
        )
    }

    pub fn addr(bed: &TestBed, i: usize) -> Ipv4Addr {
        bed.director_n(i).addr()
    }

    /// The pid of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Connection-table entries of this director.
    pub fn connections(&self) -> Result<usize> {
        let maps = lb_userspace::director::Maps::open(&self.pins.0).context("maps")?;
        Ok(maps.conns.keys().count())
    }
}

impl Drop for DirectorDaemon {
    fn drop(&mut self) {
        // Removing the pins (PinDir) drops the last reference to the links, which detaches the
        // data path; `lbadm detach` would have to run inside the director's namespace.
        self.signal(libc::SIGTERM);
    }
}
