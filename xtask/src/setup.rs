//! `cargo xtask setup`: installs what is missing, and only that, so it is quick when all is
//! present. Steps: the pinned nightly with rust-src (aya-build builds the eBPF crate with it),
//! a bpf-linker built against that nightly's LLVM, and the Debian packages the tests use.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cmd::{self, Ctx};

/// The nightly that builds the eBPF crate, used when `lb-userspace/build.rs` (which names it in
/// `const EBPF_TOOLCHAIN: &str = "...";`, the single source of truth) cannot be read.
const DEFAULT_EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

/// The bpf-linker release to build; it must have an `llvm-NN` feature for the nightly's LLVM
/// major (0.13.0 has llvm-21, llvm-22 and llvm-23).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// A Debian package the tests (or people debugging them) use.
struct AptPackage {
    name: &'static str,
    /// Optional packages are installed when the archive has them, and skipped otherwise.
    required: bool,
    /// Why we need it (documentation only).
    #[allow(dead_code)]
    purpose: &'static str,
}

/// Debian packages to install (only the missing ones, with `--no-install-recommends`: list a
/// recommended package here if it is needed).
const APT_PACKAGES: &[AptPackage] = &[
    AptPackage {
        name: "iproute2",
        required: true,
        purpose: "ip/tc, to look at the tests' namespaces and links",
    },
    AptPackage {
        name: "ethtool",
        required: true,
        purpose: "offload settings (GRO) of veth links",
    },
    AptPackage {
        name: "nftables",
        required: true,
        purpose: "`nft`, which the doctor tests use to create an IPIP-dropping rule in a namespace",
    },
    AptPackage {
        name: "mariadb-server",
        required: true,
        purpose: "MariaDB (the protocol ProxySQL speaks) on the reals of the demo, test and bench",
    },
    AptPackage {
        name: "sysbench",
        required: true,
        purpose: "MySQL clients of the demo, test and bench",
    },
    AptPackage {
        name: "haproxy",
        required: true,
        purpose: "the TCP-mode proxy lbadm is compared with in `cargo xtask bench`",
    },
    AptPackage {
        name: "bird2",
        required: true,
        purpose: "BIRD 2 (BGP, BFD): the router and the directors' announcements in the fleet tests",
    },
    AptPackage {
        name: "keepalived",
        required: true,
        purpose: "VRRP between two directors in the fleet tests (its LVS part is not used)",
    },
    AptPackage {
        name: "man-db",
        required: true,
        purpose: "`man -l` and groff, which the install tests read the generated man pages with",
    },
    AptPackage {
        name: "systemd",
        required: true,
        purpose: "`systemd-analyze verify` and `security`, which the install tests check the units with",
    },
    AptPackage {
        name: "openssl",
        required: true,
        purpose: "a self-signed certificate for the MariaDB the TLS check test logs in to",
    },
    AptPackage {
        name: "bpftool",
        required: false,
        purpose: "inspect loaded BPF programs and maps",
    },
];

const STEPS: usize = 5;

fn step(n: usize, msg: impl std::fmt::Display) {
    eprintln!("setup: [{n}/{STEPS}] {msg}");
}

pub fn setup(ctx: &Ctx) -> Result<()> {
    let start = Instant::now();
    let toolchain = ensure_toolchain(ctx)?;
    ensure_bpf_linker(ctx, &toolchain)?;
    ensure_apt_packages(ctx)?;
    ensure_cargo_deb(ctx)?;
    ensure_openmetrics_parser()?;
    eprintln!("setup: done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. The pinned nightly with rust-src.

struct Toolchain {
    name: String,
    sysroot: PathBuf,
    /// e.g. `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`
    rustc: String,
    /// e.g. `22.1.4`
    llvm_version: String,
    llvm_major: u32,
}

/// The toolchain named in lb-userspace/build.rs, so that the two cannot disagree.
fn ebpf_toolchain_name(ctx: &Ctx) -> String {
    let build_rs = ctx.root.join("lb-userspace").join("build.rs");
    let found = fs::read_to_string(&build_rs).ok().and_then(|text| {
        text.lines()
            .map(str::trim)
            .filter(|line| {
                line.starts_with("const EBPF_TOOLCHAIN")
                    || line.starts_with("pub const EBPF_TOOLCHAIN")
            })
            .find_map(|line| line.split('"').nth(1).map(str::to_string))
            .filter(|name| !name.is_empty())
    });
    found.unwrap_or_else(|| {
        eprintln!(
            "setup: warning: no `const EBPF_TOOLCHAIN: &str = \"...\";` in {}; using {DEFAULT_EBPF_TOOLCHAIN}",
            build_rs.display()
        );
        DEFAULT_EBPF_TOOLCHAIN.to_string()
    })
}

fn rustup() -> Result<PathBuf> {
    cmd::which("rustup").ok_or_else(|| {
        anyhow!("rustup is not on PATH (nor in ~/.cargo/bin): install it from https://rustup.rs")
    })
}

/// `rustc -vV` of the toolchain, or `None` if it is not installed.
fn rustc_version_verbose(rustup: &Path, name: &str) -> Result<Option<String>> {
    let out = cmd::output(
        Command::new(rustup)
            .args(["run", name, "rustc", "-vV"])
            // Only check: newer rustups would otherwise install a missing toolchain here.
            .env("RUSTUP_AUTO_INSTALL", "0"),
    )?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn ensure_toolchain(ctx: &Ctx) -> Result<Toolchain> {
    let rustup = rustup()?;
    let name = ebpf_toolchain_name(ctx);
    let mut did = Vec::new();
    let verbose = match rustc_version_verbose(&rustup, &name)? {
        Some(verbose) => verbose,
        None => {
            step(
                1,
                format_args!("{name}: missing, installing it with rust-src"),
            );
            let mut install = Command::new(&rustup);
            install
                .args([
                    "toolchain",
                    "install",
                    &name,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                    // Leave rustup itself alone (CI machines have no say in that).
                    "--no-self-update",
                ])
                .stdin(Stdio::null());
            ctx.run(&mut install)?;
            did.push("installed");
            rustc_version_verbose(&rustup, &name)?.ok_or_else(|| {
                anyhow!("`rustup run {name} rustc -vV` still fails after installing {name}")
            })?
        }
    };
    let sysroot = PathBuf::from(
        cmd::stdout(Command::new(&rustup).args(["run", &name, "rustc", "--print", "sysroot"]))?
            .trim(),
    );
    let rust_src = sysroot.join("lib/rustlib/src/rust/library");
    if !rust_src.is_dir() {
        step(1, format_args!("{name}: rust-src missing, adding it"));
        let mut add = Command::new(&rustup);
        add.args(["component", "add", "rust-src", "--toolchain", &name])
            .stdin(Stdio::null());
        ctx.run(&mut add)?;
        if !rust_src.is_dir() {
            bail!(
                "{} is still missing after `rustup component add rust-src`",
                rust_src.display()
            );
        }
        did.push("added rust-src");
    }
    let field = |key: &str| {
        verbose
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(|value| value.trim().to_string())
            .ok_or_else(|| anyhow!("no `{key}` in `rustc +{name} -vV`:\n{verbose}"))
    };
    let rustc = verbose
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let llvm_version = field("LLVM version:")?;
    let llvm_major = llvm_version
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot parse LLVM version {llvm_version:?} of {name}"))?;
    let state = if did.is_empty() {
        "present".to_string()
    } else {
        did.join(", ")
    };
    step(
        1,
        format_args!("{name}: {state} ({rustc}, LLVM {llvm_version}, rust-src)"),
    );
    Ok(Toolchain {
        name,
        sysroot,
        rustc,
        llvm_version,
        llvm_major,
    })
}

// ---------------------------------------------------------------------------------------------
// 2. bpf-linker, built against the nightly's own libLLVM.

fn stamp_path(ctx: &Ctx) -> PathBuf {
    ctx.cache_dir.join("bpf-linker.stamp")
}

fn read_stamp(ctx: &Ctx) -> BTreeMap<String, String> {
    fs::read_to_string(stamp_path(ctx))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// The LLVM major version in a libLLVM file name: `libLLVM.so.22.1-rust-1.97.0-nightly`,
/// `libLLVM-22.so`, `libLLVM.so.22`.
fn llvm_major_of_lib(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("libLLVM")?;
    let rest = rest
        .strip_prefix(".so.")
        .or_else(|| rest.strip_prefix('-'))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `Ok(description)` if the `bpf-linker` that rustc will find runs and uses LLVM `major`,
/// `Err(reason)` otherwise.
fn check_bpf_linker(ctx: &Ctx, major: u32) -> Result<String, String> {
    let path = cmd::which("bpf-linker").ok_or_else(|| "not found on PATH".to_string())?;
    let shown = path.display();
    // Without LD_LIBRARY_PATH (which `cargo run` sets): the binary must find libLLVM by its rpath.
    let out = cmd::output(
        Command::new(&path)
            .arg("--version")
            .env_remove("LD_LIBRARY_PATH"),
    )
    .map_err(|err| format!("{shown} does not run: {err:#}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{shown} does not run: {}",
            stderr.lines().next().unwrap_or("").trim()
        ));
    }
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ldd = cmd::output(Command::new("ldd").arg(&path).env_remove("LD_LIBRARY_PATH"))
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let lib = ldd
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|lib| lib.starts_with("libLLVM"));
    match lib.and_then(|lib| llvm_major_of_lib(lib).map(|found| (lib, found))) {
        Some((lib, found)) if found == major => {
            Ok(format!("{version} at {shown}, linked to {lib}"))
        }
        Some((lib, found)) => Err(format!(
            "{shown} uses LLVM {found} ({lib}), the nightly has LLVM {major}"
        )),
        None => {
            // LLVM linked statically, or an unversioned libLLVM.so: trust our stamp, if it is ours.
            let stamp = read_stamp(ctx);
            let ours = stamp
                .get("binary")
                .is_some_and(|binary| Path::new(binary) == path);
            if ours && stamp.get("llvm-major") == Some(&major.to_string()) {
                Ok(format!(
                    "{version} at {shown}, built for LLVM {major} (per {})",
                    stamp_path(ctx).display()
                ))
            } else {
                Err(format!("cannot tell which LLVM {shown} was built against"))
            }
        }
    }
}

fn ensure_bpf_linker(ctx: &Ctx, toolchain: &Toolchain) -> Result<()> {
    let major = toolchain.llvm_major;
    let reason = match check_bpf_linker(ctx, major) {
        Ok(found) => {
            step(2, format_args!("bpf-linker: present ({found})"));
            return Ok(());
        }
        Err(reason) => reason,
    };
    step(
        2,
        format_args!(
            "bpf-linker: {reason}; building bpf-linker {BPF_LINKER_VERSION} against {}'s LLVM {} (~2 minutes)",
            toolchain.name, toolchain.llvm_version
        ),
    );
    build_bpf_linker(ctx, toolchain)?;
    match check_bpf_linker(ctx, major) {
        Ok(found) => {
            step(2, format_args!("bpf-linker: built ({found})"));
            Ok(())
        }
        Err(reason) => {
            let ours = ctx.cargo_home.join("bin").join("bpf-linker");
            bail!(
                "bpf-linker is still not usable after installing {}: {reason} (another bpf-linker \
                 earlier on PATH would shadow ours)",
                ours.display()
            )
        }
    }
}

/// Builds bpf-linker with `LLVM_PREFIX` pointing to a directory that links the nightly's
/// libLLVM; the binary gets an rpath to that directory, so it lives in a stable place.
fn build_bpf_linker(ctx: &Ctx, toolchain: &Toolchain) -> Result<()> {
    let prefix = ctx.cache_dir.join("bpf-linker-llvm");
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    // Forget links to an older nightly's libLLVM.
    for entry in fs::read_dir(&lib_dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("libLLVM") {
            fs::remove_file(entry.path())
                .with_context(|| format!("cannot remove {}", entry.path().display()))?;
        }
    }
    // Link every libLLVM file of the sysroot under its own name: the build links `libLLVM.so`,
    // and at run time the loader looks for the library's SONAME
    // (`libLLVM.so.22.1-rust-1.97.0-nightly`) in the rpath directory.
    let sysroot_lib = toolchain.sysroot.join("lib");
    let mut soname_file = None;
    for entry in fs::read_dir(&sysroot_lib)
        .with_context(|| format!("cannot read {}", sysroot_lib.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("libLLVM") && name.contains(".so") {
            symlink(&entry.path(), &lib_dir.join(&name))?;
            if name.starts_with("libLLVM.so.") {
                soname_file = Some(entry.path());
            }
        }
    }
    let soname_file = soname_file.ok_or_else(|| {
        anyhow!(
            "no libLLVM.so.* in {} to build bpf-linker against",
            sysroot_lib.display()
        )
    })?;
    symlink(&soname_file, &lib_dir.join("libLLVM.so"))?;

    let feature = format!("llvm-{}", toolchain.llvm_major);
    let mut install = Command::new(&ctx.cargo);
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--force",
        ])
        .args(["--no-default-features", "--features", &feature])
        // The default root, explicitly: rustc looks for `bpf-linker` on PATH.
        .arg("--root")
        .arg(&ctx.cargo_home)
        .env("LLVM_PREFIX", &prefix)
        // Out of the workspace, so its .cargo/config.toml or toolchain file does not apply.
        .current_dir(&ctx.cache_dir)
        .stdin(Stdio::null());
    ctx.run(&mut install).with_context(|| {
        format!(
            "building bpf-linker failed (if bpf-linker {BPF_LINKER_VERSION} has no `{feature}` feature, \
             bump BPF_LINKER_VERSION in xtask/src/setup.rs)"
        )
    })?;

    let binary = ctx.cargo_home.join("bin").join("bpf-linker");
    let stamp = format!(
        "# written by `cargo xtask setup` after building {binary}\n\
         binary={binary}\nbpf-linker={BPF_LINKER_VERSION}\nllvm-major={}\nllvm-version={}\n\
         toolchain={}\nrustc={}\nlibllvm={}\n",
        toolchain.llvm_major,
        toolchain.llvm_version,
        toolchain.name,
        toolchain.rustc,
        soname_file.display(),
        binary = binary.display(),
    );
    fs::write(stamp_path(ctx), stamp)
        .with_context(|| format!("cannot write {}", stamp_path(ctx).display()))
}

/// `/usr/sbin/policy-rc.d` answering "no" (101) while it lives, unless one exists already
/// (container images ship one), which is then left alone.
struct PolicyRcD(Option<PathBuf>);

impl PolicyRcD {
    fn install() -> Result<PolicyRcD> {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Ok(PolicyRcD(None));
        }
        fs::write(
            &path,
            "#!/bin/sh\n# cargo xtask setup: do not start services\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        Ok(PolicyRcD(Some(path)))
    }
}

impl Drop for PolicyRcD {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

fn symlink(target: &Path, link: &Path) -> Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot remove {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
}

// ---------------------------------------------------------------------------------------------
// 3. Debian packages.

fn ensure_apt_packages(ctx: &Ctx) -> Result<()> {
    let names: Vec<&str> = APT_PACKAGES.iter().map(|pkg| pkg.name).collect();
    if cmd::which("dpkg-query").is_none() {
        step(
            3,
            format_args!(
                "Debian packages: no dpkg-query here, not checked ({} expected)",
                names.join(" ")
            ),
        );
        return Ok(());
    }
    let missing = missing_packages(&names)?;
    if missing.is_empty() {
        step(
            3,
            format_args!("Debian packages: present ({})", names.join(" ")),
        );
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        step(
            3,
            format_args!(
                "Debian packages: missing {}; not root, so not installed (run `cargo xtask setup` as root)",
                missing.join(" ")
            ),
        );
        return Ok(());
    }
    step(
        3,
        format_args!("Debian packages: missing {}; installing", missing.join(" ")),
    );
    let apt_get = cmd::apt_get;
    // Always refresh the lists first: on a fresh machine they may be missing or stale.
    ctx.run(&mut apt_get(&["-qq", "update"]))?;
    let mut install = Vec::new();
    let mut skipped = Vec::new();
    for pkg in APT_PACKAGES
        .iter()
        .filter(|pkg| missing.contains(&pkg.name))
    {
        if pkg.required || in_archive(pkg.name)? {
            install.push(pkg.name);
        } else {
            skipped.push(pkg.name);
        }
    }
    if !install.is_empty() {
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&install);
        // Packages with services (mariadb-server, haproxy, bird2, keepalived) must not start
        // them: the tests
        // run their own instances inside namespaces.
        let _no_services = PolicyRcD::install()?;
        ctx.run(&mut apt_get(&args))?;
    }
    let still_missing = missing_packages(&install)?;
    if !still_missing.is_empty() {
        bail!(
            "Debian packages still missing after apt-get install: {}",
            still_missing.join(" ")
        );
    }
    let mut msg = format!(
        "Debian packages: installed {}",
        if install.is_empty() {
            "nothing".into()
        } else {
            install.join(" ")
        }
    );
    if !skipped.is_empty() {
        msg += &format!(
            "; optional {} not in the archive, skipped",
            skipped.join(" ")
        );
    }
    step(3, msg);
    Ok(())
}

/// The packages of `names` that dpkg does not list as installed.
fn missing_packages<'a>(names: &[&'a str]) -> Result<Vec<&'a str>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    // Exits non-zero when some package is unknown to dpkg: that is an answer too.
    let out = cmd::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package}\t${Status}\n"])
            .args(names),
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(names
        .iter()
        .copied()
        .filter(|name| !installed.contains(name))
        .collect())
}

/// Whether the apt archive has an installable version of `name`.
fn in_archive(name: &str) -> Result<bool> {
    let out = cmd::output(Command::new("apt-cache").args(["policy", name]))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("Candidate:"))
        .is_some_and(|candidate| candidate.trim() != "(none)"))
}

// ---------------------------------------------------------------------------------------------
// 4. cargo-deb, which `cargo xtask package` (and its test) builds the Debian package with.

/// The cargo-deb release installed (`--locked`: its own lock file).
const CARGO_DEB_VERSION: &str = "3.8.0";

fn ensure_cargo_deb(ctx: &Ctx) -> Result<()> {
    let version = cmd::stdout(Command::new(&ctx.cargo).args(["deb", "--version"])).ok();
    if let Some(v) = version.filter(|v| v.contains(CARGO_DEB_VERSION)) {
        step(4, format_args!("cargo-deb: present ({})", v.trim()));
        return Ok(());
    }
    step(
        4,
        format_args!("cargo-deb: installing {CARGO_DEB_VERSION} (~2 minutes)"),
    );
    fs::create_dir_all(&ctx.cache_dir)?;
    let mut install = Command::new(&ctx.cargo);
    install
        .args([
            "install",
            &format!("cargo-deb@{CARGO_DEB_VERSION}"),
            "--locked",
        ])
        .arg("--root")
        .arg(&ctx.cargo_home)
        .current_dir(&ctx.cache_dir)
        .stdin(Stdio::null());
    ctx.run(&mut install).context("installing cargo-deb")
}

// ---------------------------------------------------------------------------------------------
// 5. The OpenMetrics parser the tests read /metrics with: Prometheus' own Python client's, a
//    strict one (a malformed exposition raises), independent of the crate that writes it.

const PROMETHEUS_CLIENT_VERSION: &str = "0.21.1";

fn ensure_openmetrics_parser() -> Result<()> {
    let probe = |cmd: &mut Command| cmd.status().map(|s| s.success()).unwrap_or(false);
    let check = || {
        probe(
            Command::new("python3")
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .stderr(Stdio::null()),
        )
    };
    if check() {
        step(5, "OpenMetrics parser (python3 prometheus_client): present");
        return Ok(());
    }
    step(
        5,
        format_args!(
            "OpenMetrics parser: installing python3 prometheus_client {PROMETHEUS_CLIENT_VERSION}"
        ),
    );
    let ok = probe(
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg(format!("prometheus-client=={PROMETHEUS_CLIENT_VERSION}"))
            .stdin(Stdio::null()),
    );
    if !ok || !check() {
        anyhow::bail!(
            "cannot install the Python package prometheus-client (python3 -m pip install prometheus-client=={PROMETHEUS_CLIENT_VERSION}): the metrics tests parse /metrics with it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major_of_lib;

    #[test]
    fn llvm_major_from_library_names() {
        assert_eq!(
            llvm_major_of_lib("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            llvm_major_of_lib("libLLVM-22-rust-1.97.0-nightly.so"),
            Some(22)
        );
        assert_eq!(llvm_major_of_lib("libLLVM-19.so.1"), Some(19));
        assert_eq!(llvm_major_of_lib("libLLVM.so.21"), Some(21));
        assert_eq!(llvm_major_of_lib("libLLVM.so"), None);
        assert_eq!(llvm_major_of_lib("libc.so.6"), None);
    }
}
