//! `cargo xtask install`: lbadm's files where an operator's system expects them, for people who
//! do not use the Debian package: the binary, the man pages and completions it generates from
//! its own definitions, the systemd units, the annotated configuration (never over an existing
//! one) and the docs.

use crate::cmd::Ctx;
use anyhow::{Context as _, Result, bail};
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

pub struct InstallArgs {
    /// Where the files go: PREFIX/sbin/lbadm, PREFIX/share/man, … (default /usr/local).
    pub prefix: PathBuf,
    /// Staging root prepended to every path (packaging); empty: the live system.
    pub destdir: Option<PathBuf>,
}

/// Every file installed, as (source, destination relative to the root), for the layout under
/// `prefix`. `gen` holds what `lbadm generate` wrote.
pub fn layout(root: &Path, prefix: &Path, gen_dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let p = prefix.strip_prefix("/").unwrap_or(prefix);
    // /usr's configuration lives in /etc; any other prefix keeps its own.
    let etc = if prefix == Path::new("/usr") {
        PathBuf::from("etc")
    } else {
        p.join("etc")
    };
    let dist = root.join("lb-userspace/dist");
    let mut files = vec![
        (root.join("target/release/lbadm"), p.join("sbin/lbadm")),
        (dist.join("lbadm.toml"), etc.join("lbadm/lbadm.toml")),
        (root.join("README.md"), p.join("share/doc/lbadm/README.md")),
        (
            root.join("docs/benchmarks.md"),
            p.join("share/doc/lbadm/benchmarks.md"),
        ),
        (
            gen_dir.join("completions/lbadm.bash"),
            p.join("share/bash-completion/completions/lbadm"),
        ),
        (
            gen_dir.join("completions/_lbadm"),
            p.join("share/zsh/vendor-completions/_lbadm"),
        ),
        (
            gen_dir.join("completions/lbadm.fish"),
            p.join("share/fish/vendor_completions.d/lbadm.fish"),
        ),
    ];
    for unit in ["lbadm.service", "lbadm-attach@.service"] {
        files.push((dist.join(unit), p.join("lib/systemd/system").join(unit)));
    }
    let man = gen_dir.join("man");
    let mut pages: Vec<PathBuf> = fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    pages.sort();
    for page in pages {
        let name = page.file_name().unwrap_or_default().to_owned();
        let section = page.extension().and_then(|e| e.to_str()).unwrap_or("8");
        files.push((
            page.clone(),
            p.join(format!("share/man/man{section}")).join(name),
        ));
    }
    Ok(files)
}

/// Builds the release binary and writes the generated files into `target/assets`.
pub fn generate(ctx: &Ctx) -> Result<PathBuf> {
    crate::build_quietly(ctx, &["-p", "lb-userspace", "--bin", "lbadm"])?;
    let root = &ctx.root;
    let lbadm = root.join("target/release/lbadm");
    let out = root.join("target/assets");
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(out.join("completions"))?;
    let status = Command::new(&lbadm)
        .args(["generate", "man"])
        .arg(out.join("man"))
        .status()
        .context("running lbadm generate man")?;
    if !status.success() {
        bail!("lbadm generate man failed: {status}");
    }
    for (shell, file) in [
        ("bash", "lbadm.bash"),
        ("zsh", "_lbadm"),
        ("fish", "lbadm.fish"),
    ] {
        let o = Command::new(&lbadm)
            .args(["generate", "completions", shell])
            .output()
            .context("running lbadm generate completions")?;
        if !o.status.success() {
            bail!("lbadm generate completions {shell} failed: {}", o.status);
        }
        fs::write(out.join("completions").join(file), o.stdout)?;
    }
    Ok(out)
}

/// Builds the Debian package with cargo-deb from the release binary and the generated files
/// (the assets of lb-userspace's `[package.metadata.deb]`); returns its path.
pub fn package(ctx: &Ctx) -> Result<PathBuf> {
    generate(ctx)?;
    let out_dir = ctx.root.join("target/debian");
    let o = ctx
        .cargo()
        .args([
            "deb",
            "-p",
            "lb-userspace",
            "--no-build",
            "--quiet",
            "--output",
        ])
        .arg(&out_dir)
        .output()
        .context("running cargo deb (cargo xtask setup installs it)")?;
    if !o.status.success() {
        bail!(
            "cargo deb failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let deb = String::from_utf8_lossy(&o.stdout)
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .context("cargo deb did not say which file it wrote")?;
    Ok(deb)
}

pub fn install(ctx: &Ctx, args: InstallArgs) -> Result<()> {
    if !args.prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path (it is written into the systemd units), not {}",
            args.prefix.display()
        );
    }
    let gen_dir = generate(ctx)?;
    let root_dir = args.destdir.clone().unwrap_or_else(|| PathBuf::from("/"));
    let sbin = args.prefix.join("sbin/lbadm");
    for (src, rel) in layout(&ctx.root, &args.prefix, &gen_dir)? {
        let dst = root_dir.join(&rel);
        if let Some(dir) = dst.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let is_conf = rel.components().any(|c| c.as_os_str() == "etc")
            && rel.extension().is_some_and(|e| e == "toml");
        if is_conf && dst.exists() {
            eprintln!(
                "xtask install: kept {} (an existing configuration is never replaced)",
                dst.display()
            );
            continue;
        }
        if rel.extension().is_some_and(|e| e == "service") {
            // The units name the binary where this prefix puts it.
            let unit =
                fs::read_to_string(&src)?.replace("/usr/sbin/lbadm", &sbin.to_string_lossy());
            fs::write(&dst, unit)?;
        } else {
            fs::copy(&src, &dst)
                .with_context(|| format!("{} -> {}", src.display(), dst.display()))?;
        }
        let bin_dir = args
            .prefix
            .strip_prefix("/")
            .unwrap_or(&args.prefix)
            .join("sbin");
        let mode = if rel.starts_with(&bin_dir) {
            0o755
        } else if is_conf {
            // It may hold a check password.
            0o600
        } else {
            0o644
        };
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
        println!("{}", dst.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_where_the_prefix_says() {
        let gen_dir = std::env::temp_dir().join(format!("xtask-install-{}", std::process::id()));
        fs::create_dir_all(gen_dir.join("man")).unwrap();
        fs::write(gen_dir.join("man/lbadm.8"), "").unwrap();
        fs::write(gen_dir.join("man/lbadm.toml.5"), "").unwrap();
        let dests = |prefix: &str| -> Vec<String> {
            layout(Path::new("/src"), Path::new(prefix), &gen_dir)
                .unwrap()
                .into_iter()
                .map(|(_, d)| d.display().to_string())
                .collect()
        };
        let usr = dests("/usr");
        for want in [
            "usr/sbin/lbadm",
            "etc/lbadm/lbadm.toml",
            "usr/lib/systemd/system/lbadm.service",
            "usr/share/man/man8/lbadm.8",
            "usr/share/man/man5/lbadm.toml.5",
            "usr/share/bash-completion/completions/lbadm",
            "usr/share/zsh/vendor-completions/_lbadm",
            "usr/share/fish/vendor_completions.d/lbadm.fish",
        ] {
            assert!(usr.iter().any(|d| d == want), "{want} missing: {usr:?}");
        }
        // Another prefix keeps its configuration to itself.
        assert!(dests("/opt/lbadm").contains(&"opt/lbadm/etc/lbadm/lbadm.toml".to_string()));
        let _ = fs::remove_dir_all(&gen_dir);
    }
}
