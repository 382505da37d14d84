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
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicI32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    cmd::{self, CommandFailed, Ctx},
    setup,
};

/// The test binaries (integration-test targets of `tests/`) that run in the guest, in order.
pub const VM_SUITE: &[&str] = &["datapath_fixture", "realserver", "e2e_director"];

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

fn ensure_host_packages(ctx: &Ctx, root: bool) -> Result<()> {
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
fn accel() -> Result<(&'static str, &'static str)> {
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

struct TestBin {
    name: String,
    exe: PathBuf,
}

fn build_tests(ctx: &Ctx) -> Result<Vec<TestBin>> {
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
fn json_string_after(text: &str, key: &str) -> Option<String> {
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
fn check_path(what: &str, path: &Path) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Kernel cache: <cache>/<pkg>/root (unpacked package + depmod), vmlinux, initrd.gz, kver.

struct Kernel {
    /// `<cache>/<pkg>`
    dir: PathBuf,
    kver: String,
    /// What qemu boots: `vmlinux` (PVH entry, fast under TCG) or the bzImage.
    image: PathBuf,
}

fn prepare_kernel(ctx: &Ctx, cache: &Path, pkg: Option<&str>, root: bool) -> Result<Kernel> {
    let pkg = match pkg {
        Some(pkg) => pkg.to_string(),
        None => match newest_cached(cache) {
            Some(pkg) => pkg,
            None => resolve_kernel_pkg(ctx, root)?,
        },
    };
    if !pkg.starts_with("linux-image-") || pkg.contains('/') || pkg.contains("..") {
        bail!("not a kernel package name: {pkg:?}");
    }
    if pkg.contains("-cloud-") {
        log(format_args!(
            "warning: {pkg} is a -cloud- kernel, which lacks 9p: use a plain -amd64 one"
        ));
    }
    let dir = cache.join(&pkg);
    let kver_file = dir.join("kver");
    if !kver_file.is_file()
        && let Err(err) = fetch_kernel(&pkg, &dir)
    {
        // Leave no half-unpacked package behind (the next run starts over anyway).
        let _ = fs::remove_dir_all(&dir);
        return Err(err);
    }
    let kver = fs::read_to_string(&kver_file)?.trim().to_string();
    let bz = dir.join("root/boot").join(format!("vmlinuz-{kver}"));
    let vmlinux = dir.join("vmlinux");
    if !vmlinux.is_file() && !dir.join("vmlinux.none").exists() {
        let config = fs::read_to_string(dir.join("root/boot").join(format!("config-{kver}")))
            .unwrap_or_default();
        if config.lines().any(|l| l == "CONFIG_PVH=y") && extract_vmlinux(&bz, &vmlinux)? {
            log("uncompressed the kernel (qemu boots it through its PVH entry)");
        } else {
            log("cannot uncompress the kernel: booting the bzImage (slower)");
            File::create(dir.join("vmlinux.none"))?;
        }
    }
    let image = if vmlinux.is_file() { vmlinux } else { bz };
    Ok(Kernel { dir, kver, image })
}

/// The newest package already unpacked in the cache.
fn newest_cached(cache: &Path) -> Option<String> {
    let mut pkgs: Vec<String> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("linux-image-") && cache.join(name).join("kver").is_file())
        .collect();
    pkgs.sort_by_key(|name| version_key(name));
    pkgs.pop()
}

/// Sort key comparing the numbers in a name numerically (`6.1.0-9` < `6.1.0-28`).
fn version_key(name: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut chars = name.chars().peekable();
    while chars.peek().is_some() {
        let text: String = std::iter::from_fn(|| chars.next_if(|c| !c.is_ascii_digit())).collect();
        let num: String = std::iter::from_fn(|| chars.next_if(char::is_ascii_digit)).collect();
        key.push((num.parse().unwrap_or(0), text));
    }
    key
}

/// What `linux-image-amd64` (bookworm: the 6.1 kernel) depends on.
fn resolve_kernel_pkg(ctx: &Ctx, root: bool) -> Result<String> {
    let resolve = || -> Option<String> {
        let out =
            cmd::output(Command::new("apt-cache").args(["depends", "linux-image-amd64"])).ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let mut words = line.split_whitespace();
                (words.next() == Some("Depends:"))
                    .then(|| words.next())
                    .flatten()
                    .filter(|pkg| {
                        pkg.strip_prefix("linux-image-")
                            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
                    })
                    .map(str::to_string)
            })
    };
    if let Some(pkg) = resolve() {
        return Ok(pkg);
    }
    if root {
        let mut update = Command::new("apt-get");
        update.args(["-qq", "update"]).stdin(Stdio::null());
        let _ = ctx.run(&mut update);
        if let Some(pkg) = resolve() {
            return Ok(pkg);
        }
    }
    Err(unavailable(
        "cannot resolve linux-image-amd64 to a kernel package (no apt lists? pass --kernel-pkg)",
    ))
}

fn fetch_kernel(pkg: &str, dir: &Path) -> Result<()> {
    log(format_args!(
        "fetching and unpacking {pkg} into {} (one-time)",
        dir.display()
    ));
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    let dl = dir.join("dl");
    fs::create_dir_all(&dl)?;
    let out = cmd::output(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root", pkg])
            .current_dir(&dl),
    )?;
    if !out.status.success() {
        return Err(unavailable(format!(
            "`apt-get download {pkg}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|ext| ext == "deb"))
        .ok_or_else(|| unavailable(format!("`apt-get download {pkg}` left no .deb")))?;
    let root = dir.join("root");
    cmd::stdout(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    fs::remove_dir_all(&dl)?;
    if !root.join("lib/modules").is_dir() && root.join("usr/lib/modules").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let kver = fs::read_dir(root.join("lib/modules"))
        .with_context(|| format!("{pkg} has no /lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| anyhow!("{pkg} has an empty /lib/modules"))?;
    if !root.join("boot").join(format!("vmlinuz-{kver}")).is_file() {
        bail!("no /boot/vmlinuz-{kver} in {pkg}");
    }
    cmd::stdout(Command::new("depmod").arg("-b").arg(&root).arg(&kver))?;
    fs::write(dir.join("kver"), format!("{kver}\n"))?;
    Ok(())
}

/// Uncompresses the ELF kernel inside a bzImage (xz or gzip payload); `Ok(false)` if not found.
fn extract_vmlinux(bz: &Path, out: &Path) -> Result<bool> {
    let image = fs::read(bz).with_context(|| format!("cannot read {}", bz.display()))?;
    let formats: [(&[u8], &str); 2] = [(b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b\x08", "gzip")];
    for (magic, tool) in formats {
        let Some(at) = image.windows(magic.len()).position(|w| w == magic) else {
            continue;
        };
        let tmp = out.with_extension("tmp");
        let mut child = Command::new(tool)
            .arg("-dc")
            .stdin(Stdio::piped())
            .stdout(File::create(&tmp)?)
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot run {tool}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let payload = image[at..].to_vec();
        let writer = thread::spawn(move || {
            // Trailing data after the stream makes the tool stop early: ignore write errors.
            let _ = stdin.write_all(&payload);
        });
        let _ = child.wait();
        let _ = writer.join();
        let mut head = [0u8; 4];
        let is_elf = File::open(&tmp)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && &head == b"\x7fELF";
        if is_elf {
            fs::rename(&tmp, out)?;
            return Ok(true);
        }
        let _ = fs::remove_file(&tmp);
    }
    Ok(false)
}

/// Builds `<pkg>/initrd.gz` (busybox, the modules, tests/vm/init) unless its stamp says its
/// inputs are unchanged.
fn ensure_initrd(ctx: &Ctx, kernel: &Kernel) -> Result<PathBuf> {
    let init_src = ctx.root.join("tests/vm/init");
    let init =
        fs::read(&init_src).with_context(|| format!("cannot read {}", init_src.display()))?;
    let busybox = cmd::which("busybox").ok_or_else(|| unavailable("busybox is missing"))?;
    let busybox_bytes = fs::read(&busybox)?;
    let stamp = format!(
        "format={INITRD_FORMAT}\nkver={}\nmodules={}\ninit={:016x}\nbusybox={:016x}\n",
        kernel.kver,
        INITRD_MODULES.join(","),
        fnv1a(&init),
        fnv1a(&busybox_bytes),
    );
    let initrd = kernel.dir.join("initrd.gz");
    let stamp_file = kernel.dir.join("initrd.stamp");
    if initrd.is_file() && fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return Ok(initrd);
    }
    log("building the initramfs");
    let ir = kernel.dir.join("initrd.d");
    if ir.exists() {
        fs::remove_dir_all(&ir)?;
    }
    for sub in [
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "mnt/lower",
        "mnt/upper",
        "modules",
    ] {
        fs::create_dir_all(ir.join(sub))?;
    }
    fs::write(ir.join("bin/busybox"), &busybox_bytes)?;
    fs::set_permissions(ir.join("bin/busybox"), fs::Permissions::from_mode(0o755))?;
    fs::write(ir.join("init"), &init)?;
    fs::set_permissions(ir.join("init"), fs::Permissions::from_mode(0o755))?;
    let mut modules: Vec<String> = Vec::new();
    for module in INITRD_MODULES {
        let deps = cmd::stdout(
            Command::new("modprobe")
                .arg("-d")
                .arg(kernel.dir.join("root"))
                .args(["-S", &kernel.kver, "--show-depends", module]),
        )?;
        for line in deps.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("insmod")
                && let Some(path) = words.next()
                && !modules.iter().any(|m| m == path)
            {
                modules.push(path.to_string());
            }
        }
    }
    for (i, module) in modules.iter().enumerate() {
        let name = Path::new(module)
            .file_name()
            .ok_or_else(|| anyhow!("bad module path {module}"))?;
        fs::copy(
            module,
            ir.join("modules")
                .join(format!("{:02}-{}", i + 1, name.to_string_lossy())),
        )
        .with_context(|| format!("cannot copy {module}"))?;
    }
    let tmp = kernel.dir.join("initrd.gz.tmp");
    let script = "find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1";
    let status = Command::new("sh")
        .args(["-c", script])
        .current_dir(&ir)
        .stdin(Stdio::null())
        .stdout(File::create(&tmp)?)
        .status()?;
    if !status.success() {
        bail!("building the initramfs (`{script}`) failed: {status}");
    }
    fs::rename(&tmp, &initrd)?;
    fs::remove_dir_all(&ir)?;
    fs::write(&stamp_file, stamp)?;
    Ok(initrd)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An exclusive `flock` on a file (held while the value lives, released when the file closes),
/// so that two runs do not unpack into the cache at once.
struct Lock(#[allow(dead_code)] File);

impl Lock {
    fn take(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd as _;
        let file =
            File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        // SAFETY: flock on a valid descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Self(file))
    }
}

// ---------------------------------------------------------------------------------------------
// The guest.

/// The signal (SIGINT/SIGTERM/SIGHUP) received while qemu runs, or 0.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNAL.store(sig, Ordering::SeqCst);
}

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Catches the signals while alive (so qemu is killed and waited for), restores them on drop.
struct SignalGuard;

impl SignalGuard {
    fn install() -> Self {
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
struct Qemu(Child);

impl Qemu {
    fn stop(&mut self) {
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
struct RunDir {
    path: PathBuf,
    keep: bool,
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

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn run_guest(
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

/// Prints each test binary's result (its harness summary; the failures section when it
/// failed); true when all passed.
fn report(tests: &[TestBin], run: &Path) -> bool {
    let mut all = true;
    eprintln!("vm-test: results in the guest:");
    for test in tests {
        let rc = fs::read_to_string(run.join(format!("{}.rc", test.name)))
            .ok()
            .and_then(|rc| rc.trim().parse::<i32>().ok());
        let log_text =
            fs::read_to_string(run.join(format!("{}.log", test.name))).unwrap_or_default();
        let summary = log_text
            .lines()
            .rfind(|line| line.starts_with("test result:"))
            .unwrap_or("(no `test result:` line)");
        let started = run.join(format!("{}.log", test.name)).exists();
        let verdict = match rc {
            Some(0) => "PASS",
            Some(_) => "FAIL",
            None if started => "DID NOT FINISH",
            None => "NOT RUN",
        };
        if rc != Some(0) {
            all = false;
        }
        eprintln!(
            "vm-test:   {:<18} {verdict:<5} (exit {}) {summary}",
            test.name,
            rc.map_or("?".into(), |rc| rc.to_string())
        );
        if rc.is_some_and(|rc| rc != 0) {
            // The harness's list of failed tests (the last `failures:` section), each with its
            // panic message and the first cause of an error chain, from its stdout section.
            let lines: Vec<&str> = log_text.lines().collect();
            if let Some(at) = lines.iter().rposition(|line| *line == "failures:") {
                for name in lines[at + 1..]
                    .iter()
                    .take_while(|line| !line.starts_with("test result:"))
                    .map(|line| line.trim())
                    .filter(|line| !line.is_empty())
                {
                    eprintln!("vm-test:       failed: {name}");
                    for detail in failure_details(&lines, name) {
                        eprintln!("vm-test:         {detail}");
                    }
                }
            }
        }
    }
    if run.join("ipip.failed").exists() {
        all = false;
        eprintln!(
            "vm-test:   realserver did not load the ipip module (tunl0 tests skipped): see the \
             `vm-suite: ERROR` line above"
        );
    }
    all
}

/// From a test binary's output: the panic message of test `name` and the first cause of its
/// error chain (`0: ...`), each cut to a readable length.
fn failure_details(lines: &[&str], name: &str) -> Vec<String> {
    let header = format!("---- {name} stdout ----");
    let Some(start) = lines.iter().position(|line| *line == header) else {
        return Vec::new();
    };
    let section: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|line| !(line.starts_with("---- ") && line.ends_with(" stdout ----")))
        .take_while(|line| **line != "failures:")
        .copied()
        .collect();
    let cut = |text: &str| {
        let text = text.trim();
        match text.char_indices().nth(300) {
            Some((at, _)) => format!("{}...", &text[..at]),
            None => text.to_string(),
        }
    };
    let mut details = Vec::new();
    if let Some(at) = section.iter().position(|line| line.contains("panicked at"))
        && let Some(message) = section.get(at + 1)
    {
        details.push(cut(message));
    }
    if let Some(cause) = section
        .iter()
        .find(|line| line.trim_start().starts_with("0: "))
    {
        details.push(format!("caused by: {}", cut(&cause.trim_start()[3..])));
    }
    // A full verifier log: its last words before the statistics say why.
    if let Some(at) = section
        .iter()
        .position(|line| line.trim_start().starts_with("verification time"))
        && let Some(reason) = section[..at]
            .iter()
            .rev()
            .find(|line| !line.trim().is_empty())
    {
        details.push(format!("verifier: {}", cut(reason)));
    }
    details
}

#[cfg(test)]
mod tests {
    use super::{json_string_after, version_key};

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

    #[test]
    fn kernel_versions_sort_numerically() {
        assert!(
            version_key("linux-image-6.1.0-9-amd64") < version_key("linux-image-6.1.0-28-amd64")
        );
    }
}
