//! A director tier behind a router, as the field runs it: BIRD 2 on the router (ECMP over every
//! director announcing the VIP, BFD) and on each director (announcing what the lbadm daemon
//! puts in kernel table 100), with the configuration files lbadm ships
//! (`lb-userspace/dist/bird/`) — only their `define`s are set here, and the log goes to a file.

use crate::{
    directors::{DirectorDaemon, ServiceSpec},
    mysqlbed::TempDir,
    netns::{ChildGuard, Netns},
    testbed::TestBed,
};
use anyhow::{Context as _, Result, ensure};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

/// The shipped configuration `name` (`director.conf`, `router.conf`) with its defines set.
pub fn bird_config(name: &str, defines: &[(&str, String)]) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../lb-userspace/dist/bird")
        .join(name);
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let mut out = String::new();
    for line in text.lines() {
        let mut line = line.to_string();
        if let Some((name, value)) = defines
            .iter()
            .find(|(n, _)| line.starts_with(&format!("define {n} ")))
        {
            line = format!("define {name} = {value};");
        }
        if line == "log syslog all;" {
            line = "log stderr all;".into();
        }
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// One BIRD in one namespace, stopped on drop (a deleted namespace does not end it).
pub struct Bird {
    child: Option<ChildGuard>,
    pub dir: TempDir,
}

impl Bird {
    pub fn start(ns: &Netns, name: &str, config: &str) -> Result<Bird> {
        let dir = TempDir::new(&format!("bird-{name}"))?;
        std::fs::write(dir.0.join("bird.conf"), config)?;
        let log = std::fs::File::create(dir.0.join("bird.log"))?;
        let child = ChildGuard::spawn(
            ns.command("/usr/sbin/bird")
                .arg("-f")
                .arg("-c")
                .arg(dir.0.join("bird.conf"))
                .arg("-s")
                .arg(dir.0.join("bird.ctl"))
                .arg("-P")
                .arg(dir.0.join("bird.pid"))
                .stdout(Stdio::null())
                .stderr(Stdio::from(log)),
        )?;
        Ok(Bird {
            child: Some(child),
            dir,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("bird.log")).unwrap_or_default()
    }

    /// `birdc show protocols`.
    pub fn protocols(&self) -> String {
        std::process::Command::new("/usr/sbin/birdc")
            .arg("-s")
            .arg(self.dir.0.join("bird.ctl"))
            .args(["show", "protocols"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Whether the BGP protocol `name` is Established.
    pub fn established(&self, name: &str) -> bool {
        self.protocols()
            .lines()
            .any(|l| l.starts_with(&format!("{name} ")) && l.contains("Established"))
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            let _ = c.kill();
        }
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A director of the tier: its lbadm daemon and its BIRD.
pub struct FleetDirector {
    pub daemon: DirectorDaemon,
    pub bird: Bird,
}

/// The router's BIRD for `bed` (directors at 198.18.0.2.., AS 65001; router AS 65000).
pub fn start_router(bed: &TestBed) -> Result<Bird> {
    Bird::start(
        bed.router().ns(),
        "router",
        &bird_config("router.conf", &[])?,
    )
}

/// The `[announce]` section every fleet director runs with.
pub const ANNOUNCE: &str = "[announce]\ntable = 100\ndrain = \"1s\"\n";

/// Starts director `i` (daemon with `[sync]` and `[announce]`, then BIRD), without waiting for
/// its BGP session.
pub fn start_director(bed: &TestBed, i: usize, services: &[ServiceSpec]) -> Result<FleetDirector> {
    let daemon = DirectorDaemon::start_with(bed, i, services, true, ANNOUNCE)?;
    daemon.wait_checks()?;
    let conf = bird_config(
        "director.conf",
        &[("DIRECTOR_ID", bed.director_n(i).addr().to_string())],
    )?;
    let bird = Bird::start(bed.director_n(i).ns(), &format!("director{i}"), &conf)?;
    Ok(FleetDirector { daemon, bird })
}

/// Waits until the router's route to the VIP has exactly `hops` (sorted); how long it took.
pub fn wait_nexthops(
    bed: &TestBed,
    hops: &[std::net::Ipv4Addr],
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let now = bed.router().ns().route_nexthops(bed.vip())?;
        if now == hops {
            return Ok(start.elapsed());
        }
        ensure!(
            start.elapsed() < timeout,
            "the router's route to the VIP has next hops {now:?}, not {hops:?}, after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Where a fleet's files go, for reading after a failure.
pub fn describe(birds: &[&Bird]) -> Vec<PathBuf> {
    birds.iter().map(|b| b.dir.0.clone()).collect()
}

/// keepalived (VRRP only) in one namespace, with the shipped configuration
/// (`lb-userspace/dist/keepalived/keepalived.conf`): only the router id, the priority and the
/// readiness script's path and arguments are set. Stopped on drop.
pub struct Keepalived {
    child: Option<ChildGuard>,
    pub dir: TempDir,
}

impl Keepalived {
    pub fn start(ns: &Netns, name: &str, priority: u32, ready_script: &str) -> Result<Keepalived> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../lb-userspace/dist/keepalived/keepalived.conf");
        let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
        let conf: String = text
            .lines()
            .map(|l| match l.trim() {
                t if t.starts_with("router_id ") => format!("    router_id lbadm_{name}"),
                t if t.starts_with("priority ") => format!("    priority {priority}"),
                t if t.starts_with("script \"") => format!("    script \"{ready_script}\""),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let dir = TempDir::new(&format!("keepalived-{name}"))?;
        std::fs::write(dir.0.join("keepalived.conf"), conf + "\n")?;
        let log = std::fs::File::create(dir.0.join("keepalived.log"))?;
        let mut cmd = ns.command("/usr/sbin/keepalived");
        // Its own process group: keepalived forks a VRRP child, which a kill must reach.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = ChildGuard::spawn(
            cmd.args(["-n", "-l", "-D", "-P", "-f"])
                .arg(dir.0.join("keepalived.conf"))
                .arg("-p")
                .arg(dir.0.join("keepalived.pid"))
                .arg("-r")
                .arg(dir.0.join("vrrp.pid"))
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log)),
        )?;
        Ok(Keepalived {
            child: Some(child),
            dir,
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("keepalived.log")).unwrap_or_default()
    }

    /// The main process (the leader of its process group).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn kill(&mut self) {
        if let Some(c) = self.child.take() {
            // keepalived's VRRP child is its own process: end the whole group.
            unsafe { libc::kill(-(c.id() as libc::pid_t), libc::SIGKILL) };
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
    }
}
