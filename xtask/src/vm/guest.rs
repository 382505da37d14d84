//! The guest: one qemu run of the suite, killed on timeout, on error, on a signal and on drop.

use std::{
    env,
    ffi::OsString,
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};

use super::*;

// ---------------------------------------------------------------------------------------------
// The guest.

/// The signal (SIGINT/SIGTERM/SIGHUP) received while qemu runs, or 0.
pub(super) static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

pub(super) const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Catches the signals while alive (so qemu is killed and waited for), restores them on drop.
pub(super) struct SignalGuard;

impl SignalGuard {
    pub(super) fn install() -> Self {
        SIGNAL.store(0, Ordering::SeqCst);
        for sig in SIGNALS {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        }
        Self
    }
}

impl Drop for SignalGuard {
    fn drop(&mut self) {
        for sig in SIGNALS {
            // SAFETY: restoring the default disposition.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
}

/// The qemu child: killed (TERM, then KILL) and reaped on drop, whatever happened.
pub(super) struct Qemu(Child);

impl Qemu {
    pub(super) fn stop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let pid = self.0.id() as libc::pid_t;
        // SAFETY: the pid is our child's, not yet reaped, so it cannot be reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The per-run directory (shared read-write with the guest), removed on drop unless kept.
pub(super) struct RunDir {
    pub(super) path: PathBuf,
    pub(super) keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            log(format_args!("run directory kept: {}", self.path.display()));
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

pub(super) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

pub(super) fn run_guest(
    ctx: &Ctx,
    kernel: &Kernel,
    initrd: &Path,
    tests: &[TestBin],
    filter: &[OsString],
    timeout: Duration,
) -> Result<()> {
    // Under the workspace's target directory (shared with the guest over its own 9p mount).
    let base = ctx.root.join("target").join("vm-test");
    fs::create_dir_all(&base)?;
    let run = base.join(format!("run-{}", std::process::id()));
    if run.exists() {
        fs::remove_dir_all(&run)?;
    }
    fs::create_dir_all(&run)?;
    let mut run_dir = RunDir {
        path: run.clone(),
        keep: env::var_os("LBADM_VM_KEEP").is_some_and(|v| v == "1"),
    };
    check_path("run directory", &run)?;
    let suite = ctx.root.join("tests/vm/suite.sh");
    if !suite.is_file() {
        bail!("{} is missing", suite.display());
    }
    let tests_dir = ctx.root.join("tests");
    let mut list = String::new();
    for test in tests {
        list += &format!(
            "{}\t{}\t{}\n",
            test.name,
            test.exe.display(),
            tests_dir.display()
        );
    }
    fs::write(run.join("tests"), list)?;
    let mut args = String::new();
    for arg in filter {
        let arg = arg
            .to_str()
            .ok_or_else(|| anyhow!("test filter {arg:?} is not UTF-8"))?;
        if arg.contains('\n') {
            bail!("test filter {arg:?} contains a newline");
        }
        args += arg;
        args.push('\n');
    }
    fs::write(run.join("args"), args)?;
    let path = env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    // Stage 2: PID 1 in the guest after switch_root (the host's /bin/sh).
    let guest = format!(
        "#!/bin/sh\n\
         export PATH={path} HOME=/root TERM=dumb RUN_IN_VM=1 VM_RUN={run}\n\
         ulimit -l unlimited 2>/dev/null\n\
         cd {root} || cd /\n\
         /bin/sh {suite} </dev/null >/dev/ttyS1 2>&1\n\
         echo $? >\"$VM_RUN/rc\"\n\
         sync\n\
         echo o >/proc/sysrq-trigger\n\
         sleep 30\n",
        path = shell_quote(&path),
        run = shell_quote(&run.to_string_lossy()),
        root = shell_quote(&ctx.root.to_string_lossy()),
        suite = shell_quote(&suite.to_string_lossy()),
    );
    fs::write(run.join("guest.sh"), guest)?;

    let (accel, why) = accel()?;
    let cpus = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(8);
    let mem = env::var("LBADM_VM_MEM").unwrap_or_else(|_| "2G".into());
    let append = format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic tsc=reliable no_timer_check \
         vm_run={} vm_kdir={} vm_kver={}",
        run.display(),
        kernel.dir.display(),
        kernel.kver
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-name", "lbadm-vm-test"]);
    match accel {
        "kvm" => qemu.args(["-accel", "kvm", "-cpu", "host"]),
        _ => qemu.args(["-accel", "tcg,thread=multi", "-cpu", "max"]),
    };
    qemu.args(["-smp", &cpus.to_string(), "-m", &mem])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-monitor", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(&append)
        .arg("-serial")
        .arg(format!("file:{}", run.join("console.log").display()))
        .args(["-serial", "stdio"])
        .arg("-virtfs")
        .arg("local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap")
        .arg("-virtfs")
        .arg(format!(
            "local,path={},mount_tag=vmrun,security_model=none",
            run.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(run.join("qemu.stderr"))?)
        // Its own process group: a terminal's Ctrl-C reaches us, and we stop qemu ourselves.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        // If xtask dies without cleaning up (SIGKILL), the kernel kills qemu.
        qemu.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    log(format_args!(
        "booting {} under qemu ({accel}: {why}; {cpus} vCPUs, {mem}; guest timeout {} s)",
        kernel.kver,
        timeout.as_secs()
    ));
    let signals = SignalGuard::install();
    let started = Instant::now();
    let mut child = Qemu(
        qemu.spawn()
            .map_err(|e| unavailable(format!("cannot start qemu-system-x86_64: {e}")))?,
    );
    let mut stdout = child.0.stdout.take().expect("piped");
    let echo = thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut out = std::io::stdout();
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            let _ = out.write_all(&buf[..n]);
            let _ = out.flush();
        }
    });
    let outcome = loop {
        if let Some(status) = child.0.try_wait()? {
            break Ok(status);
        }
        let sig = SIGNAL.load(Ordering::SeqCst);
        if sig != 0 {
            break Err(sig);
        }
        if started.elapsed() >= timeout {
            break Err(0);
        }
        thread::sleep(Duration::from_millis(100));
    };
    child.stop();
    let _ = echo.join();
    drop(signals);
    let secs = started.elapsed().as_secs_f64();
    let console = fs::read_to_string(run.join("console.log")).unwrap_or_default();
    let console_tail = || {
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    };
    let status = match outcome {
        Ok(status) => status,
        Err(0) => {
            eprintln!("---- guest console (last lines) ----\n{}", console_tail());
            run_dir.keep = true;
            report(tests, &run);
            bail!(
                "the guest timed out after {} s (accel {accel}); killed qemu",
                timeout.as_secs()
            );
        }
        Err(sig) => {
            drop(run_dir);
            log(format_args!("interrupted by signal {sig}: killed qemu"));
            std::process::exit(128 + sig);
        }
    };
    let rc = fs::read_to_string(run.join("rc")).ok();
    let Some(rc) = rc.and_then(|rc| rc.trim().parse::<i32>().ok()) else {
        let stderr = fs::read_to_string(run.join("qemu.stderr")).unwrap_or_default();
        if !console.contains("lbadm-vm: stage 1 started") {
            // The guest never reached its init: qemu (or the kernel) cannot run here.
            return Err(unavailable(format!(
                "qemu ({accel}) did not boot the guest ({status}): {}{}",
                stderr.trim(),
                if console.is_empty() {
                    String::new()
                } else {
                    format!("\nguest console:\n{}", console_tail())
                }
            )));
        }
        eprintln!("---- guest console (last lines) ----\n{}", console_tail());
        if !stderr.trim().is_empty() {
            eprintln!("---- qemu stderr ----\n{}", stderr.trim());
        }
        run_dir.keep = true;
        bail!("the guest failed: no exit status came back (qemu: {status}, accel {accel})");
    };
    log(format_args!(
        "guest ({}, accel {accel}) exited with status {rc} after {secs:.1} s",
        kernel.kver
    ));
    let all_passed = report(tests, &run);
    if rc != 0 || !all_passed {
        return Err(CommandFailed {
            command: format!("the VM suite in the {} guest", kernel.kver),
            code: Some(if rc == 0 { 1 } else { rc }),
            detail: None,
        }
        .into());
    }
    Ok(())
}
