//! The kernel cache: `<cache>/<pkg>/root` (the unpacked package, depmod run), `vmlinux`,
//! `initrd.gz` and `kver`, built once and reused while their inputs do not change.

use std::{
    fs::{self, File},
    io::{Read as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
};

use anyhow::{Result, anyhow, bail};

use super::*;

// ---------------------------------------------------------------------------------------------
// Kernel cache: <cache>/<pkg>/root (unpacked package + depmod), vmlinux, initrd.gz, kver.

pub(super) struct Kernel {
    /// `<cache>/<pkg>`
    pub(super) dir: PathBuf,
    pub(super) kver: String,
    /// What qemu boots: `vmlinux` (PVH entry, fast under TCG) or the bzImage.
    pub(super) image: PathBuf,
}

pub(super) fn prepare_kernel(
    ctx: &Ctx,
    cache: &Path,
    pkg: Option<&str>,
    root: bool,
) -> Result<Kernel> {
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
pub(super) fn newest_cached(cache: &Path) -> Option<String> {
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
pub(super) fn version_key(name: &str) -> Vec<(u64, String)> {
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
pub(super) fn resolve_kernel_pkg(ctx: &Ctx, root: bool) -> Result<String> {
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

pub(super) fn fetch_kernel(pkg: &str, dir: &Path) -> Result<()> {
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
pub(super) fn extract_vmlinux(bz: &Path, out: &Path) -> Result<bool> {
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
pub(super) fn ensure_initrd(ctx: &Ctx, kernel: &Kernel) -> Result<PathBuf> {
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

pub(super) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An exclusive `flock` on a file (held while the value lives, released when the file closes),
/// so that two runs do not unpack into the cache at once.
pub(super) struct Lock(#[allow(dead_code)] File);

impl Lock {
    pub(super) fn take(path: &Path) -> Result<Self> {
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

#[cfg(test)]
mod tests {
    use super::version_key;

    #[test]
    fn kernel_versions_sort_numerically() {
        assert!(
            version_key("linux-image-6.1.0-9-amd64") < version_key("linux-image-6.1.0-28-amd64")
        );
    }
}
