//! `cargo xtask vm-test`: runs the VM suite (the test binaries that need a stock kernel: the
//! oldest supported one, with the `ipip` module and IPVS) inside Debian's stock 6.1 kernel
//! under qemu.
//!
//! How (a port of the shared `run-in-vm.sh`):
//! - the kernel package (`linux-image-6.1.0-*-amd64`, not `-cloud-`, which lacks 9p) is fetched
//!   once with `apt-get download` into `~/.cache/lbadm/vm/<pkg>` and unpacked there (`depmod`
//!   run on it; the compressed kernel uncompressed so qemu boots it through its PVH entry);
//! - a busybox initramfs with the virtio/9p/overlay modules and `tests/vm/init` is built there
//!   when its inputs change;
//! - ONE guest boots: `tests/vm/init` mounts the host's `/` read-only over virtio-9p under a
//!   tmpfs overlay (so the host's test binaries, `ip`, `nft`, `modprobe` run unchanged), binds
//!   the guest kernel's modules to `/lib/modules/<ver>`, mounts the run directory read-write,
//!   then runs `tests/vm/suite.sh`, which runs each test binary of [`VM_SUITE`] and records its
//!   output and exit status in the run directory;
//! - qemu is killed on timeout, on error, on SIGINT/SIGTERM/SIGHUP, and on drop.
//!
//! Where `/dev/kvm` is PVM-only (`kvm_pvm`), a stock kernel cannot boot under KVM, so the
//! accelerator is TCG unless `kvm_intel`/`kvm_amd` is loaded (`LBADM_VM_ACCEL=kvm|tcg`
//! overrides). If qemu cannot run at all, `LBADM_VM_OPTIONAL=1` turns the failure into
//! `vm-test: skipped: <reason>` and exit 0.

use std::{
    env,
    ffi::OsString,
    fmt,
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

mod guest;
mod kernel;
mod report;

use crate::{
    cmd::{self, CommandFailed, Ctx},
    setup,
};
use guest::*;
use kernel::*;
use report::*;

/// The test binaries (integration-test targets of `tests/`) that run in the guest, in order.
pub const VM_SUITE: &[&str] = &[
    "datapath_fixture",
    "conntrack_fixture",
    "leastconn_fixture",
    "realserver",
    "e2e_director",
    "fuzz_datapath",
];

/// The whole `vm-test` run (build + kernel + guest) is bounded by this.
const TOTAL_SECS: u64 = 20 * 60;

/// Host packages the runner needs (installed when missing).
const HOST_PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("kmod", "depmod"),
    ("cpio", "cpio"),
    ("xz-utils", "xz"),
    // Debian's ipvsadm, compared byte for byte with lbadm against the guest's kernel IPVS.
    ("ipvsadm", "ipvsadm"),
];

/// Bump when the initramfs layout changes (rebuilds it, keeps the download).
const INITRD_FORMAT: u32 = 1;

/// Modules loaded by the initramfs, with their dependencies.
const INITRD_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

pub struct VmArgs {
    pub kernel_pkg: Option<String>,
    pub timeout: u64,
    pub filter: Vec<OsString>,
}

/// qemu cannot run here (as opposed to: the tests failed): a skip with `LBADM_VM_OPTIONAL=1`.
#[derive(Debug)]
struct Unavailable(String);

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unavailable {}

fn unavailable(reason: impl Into<String>) -> anyhow::Error {
    Unavailable(reason.into()).into()
}

fn log(msg: impl fmt::Display) {
    eprintln!("vm-test: {msg}");
}

pub fn vm_test(ctx: &Ctx, args: VmArgs) -> Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(TOTAL_SECS);
    let optional = env::var_os("LBADM_VM_OPTIONAL").is_some_and(|v| v == "1");
    let result = run(ctx, &args, start, deadline);
    let secs = start.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            log(format_args!("PASSED in {secs:.1} s"));
            Ok(())
        }
        Err(err) => match err.downcast_ref::<Unavailable>() {
            Some(reason) if optional => {
                println!("vm-test: skipped: {reason}");
                log(format_args!(
                    "skipped after {secs:.1} s (LBADM_VM_OPTIONAL=1)"
                ));
                Ok(())
            }
            Some(_) => Err(err.context(
                "qemu cannot run the VM suite here (set LBADM_VM_OPTIONAL=1 to skip instead)",
            )),
            None => {
                log(format_args!("FAILED after {secs:.1} s"));
                Err(err)
            }
        },
    }
}

fn run(ctx: &Ctx, args: &VmArgs, start: Instant, deadline: Instant) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    setup::setup(ctx)?;
    ensure_host_packages(ctx, root)?;
    let tests = build_tests(ctx)?;
    log(format_args!(
        "test binaries built ({:.1} s since start)",
        start.elapsed().as_secs_f64()
    ));
    let cache = ctx.cache_dir.join("vm");
    fs::create_dir_all(&cache).with_context(|| format!("cannot create {}", cache.display()))?;
    check_path("cache directory", &cache)?;
    let _lock = Lock::take(&cache.join(".lock"))?;
    let kernel = prepare_kernel(ctx, &cache, args.kernel_pkg.as_deref(), root)?;
    let initrd = ensure_initrd(ctx, &kernel)?;
    drop(_lock);
    log(format_args!(
        "kernel {} ready ({:.1} s since start)",
        kernel.kver,
        start.elapsed().as_secs_f64()
    ));
    let remaining = deadline.saturating_duration_since(Instant::now());
    let timeout = Duration::from_secs(args.timeout).min(remaining);
    if timeout < Duration::from_secs(30) {
        bail!(
            "only {} s left of the {TOTAL_SECS} s budget for the guest",
            timeout.as_secs()
        );
    }
    run_guest(ctx, &kernel, &initrd, &tests, &args.filter, timeout)
}

// ---------------------------------------------------------------------------------------------
// Host packages.

pub(super) fn ensure_host_packages(ctx: &Ctx, root: bool) -> Result<()> {
    let missing: Vec<&str> = HOST_PACKAGES
        .iter()
        .filter(|(_, tool)| cmd::which(tool).is_none())
        .map(|(pkg, _)| *pkg)
        .collect();
    if !missing.is_empty() {
        if !root || cmd::which("apt-get").is_none() {
            return Err(unavailable(format!(
                "missing host packages {} (not root or no apt-get: cannot install them)",
                missing.join(" ")
            )));
        }
        log(format_args!("installing {}", missing.join(" ")));
        let apt_get = cmd::apt_get;
        ctx.run(&mut apt_get(&["-qq", "update"]))
            .map_err(|e| unavailable(format!("apt-get update failed: {e:#}")))?;
        let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
        install.extend(&missing);
        ctx.run(&mut apt_get(&install))
            .map_err(|e| unavailable(format!("cannot install {}: {e:#}", missing.join(" "))))?;
    }
    for (pkg, tool) in HOST_PACKAGES {
        if cmd::which(tool).is_none() {
            return Err(unavailable(format!("`{tool}` (package {pkg}) is missing")));
        }
    }
    for tool in ["dpkg-deb", "gzip", "apt-get"] {
        if cmd::which(tool).is_none() {
            return Err(unavailable(format!("`{tool}` is missing")));
        }
    }
    // busybox must be static: it runs in the initramfs before the host's root is there.
    let busybox = cmd::which("busybox").expect("checked above");
    let ldd = cmd::output(Command::new("ldd").arg(&busybox))?;
    if ldd.status.success() {
        return Err(unavailable(format!(
            "{} is dynamically linked: need busybox-static",
            busybox.display()
        )));
    }
    // TCG must be compiled in (it is in Debian's qemu-system-x86).
    let accels = cmd::output(Command::new("qemu-system-x86_64").args(["-accel", "help"]))?;
    let accels = String::from_utf8_lossy(&accels.stdout).into_owned();
    let (accel, _) = accel()?;
    if !accels.lines().any(|line| line.trim() == accel) {
        return Err(unavailable(format!(
            "qemu-system-x86_64 has no `{accel}` accelerator (it has: {})",
            accels
                .split_whitespace()
                .skip(1)
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    Ok(())
}

/// `(accel, reason)`: KVM only when a full KVM module is loaded; a PVM-only /dev/kvm
/// (`kvm_pvm`) cannot boot a stock kernel, so TCG there.
pub(super) fn accel() -> Result<(&'static str, &'static str)> {
    match env::var("LBADM_VM_ACCEL").as_deref() {
        Ok("kvm") => return Ok(("kvm", "LBADM_VM_ACCEL=kvm")),
        Ok("tcg") => return Ok(("tcg", "LBADM_VM_ACCEL=tcg")),
        Ok("auto") | Ok("") | Err(_) => {}
        Ok(other) => bail!("LBADM_VM_ACCEL must be auto, kvm or tcg, not {other:?}"),
    }
    let kvm_usable = File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let full_kvm =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    Ok(match (kvm_usable, full_kvm) {
        (true, true) => ("kvm", "kvm_intel/kvm_amd loaded"),
        (true, false) => ("tcg", "/dev/kvm is not kvm_intel/kvm_amd (PVM-only?)"),
        (false, _) => ("tcg", "no usable /dev/kvm"),
    })
}

// ---------------------------------------------------------------------------------------------
// Test binaries.

pub(super) struct TestBin {
    pub(super) name: String,
    pub(super) exe: PathBuf,
}

pub(super) fn build_tests(ctx: &Ctx) -> Result<Vec<TestBin>> {
    // The tests run the `lbadm` binary (target/debug/lbadm) as an operator would.
    let mut bins = ctx.cargo();
    bins.args(["build", "--workspace", "--exclude", "lb-ebpf", "--bins"]);
    ctx.run(&mut bins)?;
    let mut build = ctx.cargo();
    build
        .args([
            "test",
            "--no-run",
            "--workspace",
            "--exclude",
            "lb-ebpf",
            "--message-format=json",
        ])
        .stdout(Stdio::piped());
    eprintln!("xtask: $ {}", cmd::display(&build));
    let out = build
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run `{}`", cmd::display(&build)))?;
    if !out.status.success() {
        return Err(CommandFailed {
            command: cmd::display(&build),
            code: out.status.code(),
            detail: None,
        }
        .into());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    for line in stdout.lines() {
        if !line.contains("\"reason\":\"compiler-artifact\"") {
            continue;
        }
        let Some(exe) = json_string_after(line, "\"executable\":") else {
            continue;
        };
        let Some(target) = line.find("\"target\":{").map(|at| &line[at..]) else {
            continue;
        };
        let Some(name) = json_string_after(target, "\"name\":") else {
            continue;
        };
        if target.contains("\"kind\":[\"test\"]") && VM_SUITE.contains(&name.as_str()) {
            found.push(TestBin {
                name,
                exe: PathBuf::from(exe),
            });
        }
    }
    let mut tests = Vec::new();
    for name in VM_SUITE {
        let bin = found
            .iter()
            .find(|bin| bin.name == *name)
            .ok_or_else(|| anyhow!("`cargo test --no-run` built no test binary `{name}`"))?;
        check_path("test binary", &bin.exe)?;
        tests.push(TestBin {
            name: bin.name.clone(),
            exe: bin.exe.clone(),
        });
    }
    Ok(tests)
}

/// The JSON string value right after `key` in `text` (`"executable":"/x/y"` → `/x/y`), with
/// the escapes cargo uses for paths undone; `None` for `null` or when `key` is absent.
pub(super) fn json_string_after(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// Paths go on the kernel command line and into qemu's comma-separated options.
pub(super) fn check_path(what: &str, path: &Path) -> Result<()> {
    let text = path.to_string_lossy();
    if text.contains(|c: char| c.is_whitespace() || c == ',' || c == '"') {
        bail!(
            "the {what} path {} contains a space, comma or quote, which qemu's options and the \
             kernel command line cannot carry",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::json_string_after;

    #[test]
    fn json_strings() {
        let line = r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"realserver"},"executable":"/w/target/debug/deps/realserver-ab\"c"}"#;
        assert_eq!(
            json_string_after(line, "\"executable\":").as_deref(),
            Some("/w/target/debug/deps/realserver-ab\"c")
        );
        assert_eq!(
            json_string_after(line, "\"name\":").as_deref(),
            Some("realserver")
        );
        assert_eq!(
            json_string_after(r#"{"executable":null}"#, "\"executable\":"),
            None
        );
    }
}
