//! What `cargo xtask install` ships, checked as an operator would use it: the man pages `lbadm
//! generate` renders (through groff, with its warnings on, and naming every verb), the bash
//! completion (loaded and asked to complete), and the systemd units (`systemd-analyze verify`
//! in a root holding the installed binary, and their exposure score).

use lb_tests::lbadm_bin;
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// A directory removed when the test ends, pass or fail.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("lbadm-install-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A terminal rendering without its overstriking (`X\x08X` for bold, `_\x08X` underlined).
fn plain(s: &str) -> String {
    let mut out: Vec<char> = Vec::new();
    for c in s.chars() {
        if c == '\u{8}' {
            out.pop();
        } else {
            out.push(c);
        }
    }
    out.into_iter().collect()
}

/// The verbs `lbadm --help` lists after ipvsadm's usage.
fn verbs() -> Vec<String> {
    let (_, help, _) = run(Command::new(lbadm_bin()).arg("--help"));
    let own = help
        .split("lbadm's own commands")
        .nth(1)
        .expect("--help lists lbadm's own commands");
    own.lines()
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn man_pages_render_cleanly_and_cover_every_verb() {
    let dir = TempDir::new("man");
    let (ok, _, err) = run(Command::new(lbadm_bin())
        .args(["generate", "man"])
        .arg(&dir.0));
    assert!(ok, "{err}");
    let verbs = verbs();
    assert!(verbs.len() >= 8, "{verbs:?}");
    for v in &verbs {
        assert!(
            dir.0.join(format!("lbadm-{v}.8")).exists(),
            "no page for the verb {v}"
        );
    }
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    for page in &pages {
        // groff with every warning (a malformed request or escape is one), its input through
        // preconv as man-db does (the pages are UTF-8).
        let (ok, text, err) = run(Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww"])
            .arg(page));
        assert!(ok && err.is_empty(), "{}: {err}", page.display());
        assert!(plain(&text).contains("NAME"), "{}", page.display());
        // As an operator reads it.
        let (ok, text, err) = run(Command::new("man")
            .env("MANWIDTH", "100")
            .arg("-l")
            .arg(page));
        assert!(ok && !text.is_empty(), "man -l {}: {err}", page.display());
    }
    let (_, top, _) = run(Command::new("man")
        .env("MANWIDTH", "100")
        .arg("-l")
        .arg(dir.0.join("lbadm.8")));
    assert!(
        top.contains("IPVSADM COMMANDS") && top.contains("--add-service"),
        "{top}"
    );
    assert!(top.contains("wlc"), "{top}");
    for v in &verbs {
        assert!(
            top.contains(&format!("lbadm-{v}(8)")),
            "lbadm(8) does not name {v}"
        );
    }
    let (_, conf, _) = run(Command::new("man")
        .env("MANWIDTH", "100")
        .arg("-l")
        .arg(dir.0.join("lbadm.toml.5")));
    for key in [
        "scheduler",
        "max_conns",
        "slow_start",
        "on_failure",
        "conn_table",
    ] {
        assert!(conf.contains(key), "lbadm.toml(5) lacks {key}");
    }
}

#[test]
fn bash_completes_the_verbs() {
    let dir = TempDir::new("bash");
    let (ok, script, err) =
        run(Command::new(lbadm_bin()).args(["generate", "completions", "bash"]));
    assert!(ok, "{err}");
    let file = dir.0.join("lbadm");
    std::fs::write(&file, script).unwrap();
    // Load it as bash-completion would, then ask for what follows `lbadm att` and
    // `lbadm realserver s`.
    let probe = format!(
        "source {}; complete -p lbadm; \
         COMP_WORDS=(lbadm att); COMP_CWORD=1; COMP_LINE='lbadm att'; COMP_POINT=9; _lbadm lbadm att lbadm; \
         echo \"one: ${{COMPREPLY[*]}}\"; \
         COMP_WORDS=(lbadm realserver s); COMP_CWORD=2; COMP_LINE='lbadm realserver s'; COMP_POINT=18; \
         _lbadm lbadm s realserver; echo \"two: ${{COMPREPLY[*]}}\"",
        file.display()
    );
    let (ok, out, err) = run(Command::new("bash").args(["--norc", "-c", &probe]));
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("-F _lbadm lbadm"), "{out}");
    assert!(out.contains("one: attach"), "{out}");
    assert!(out.contains("two: setup"), "{out}");
}

/// A root holding what the package installs for the units, and what `systemd-analyze verify`
/// resolves in it: the binary, the commands the units run, the targets they name.
fn unit_root(dir: &Path) {
    let units = dir.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(dir.join("usr/sbin")).unwrap();
    let dist = workspace().join("lb-userspace/dist");
    for unit in ["lbadm.service", "lbadm-attach@.service"] {
        std::fs::copy(dist.join(unit), units.join(unit)).unwrap();
    }
    std::fs::copy(lbadm_bin(), dir.join("usr/sbin/lbadm")).unwrap();
    systemd_bits(dir);
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What `systemd-analyze verify --root` resolves besides the units: the commands they run and
/// the targets they name (copied: a symbolic link would resolve inside the root).
fn systemd_bits(dir: &Path) {
    let units = dir.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    for bin in ["/bin/kill", "/bin/sh"] {
        let real = std::fs::canonicalize(bin).unwrap();
        std::fs::copy(real, dir.join(&bin[1..])).unwrap();
    }
    for e in std::fs::read_dir("/lib/systemd/system").unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "target") {
            let real = std::fs::canonicalize(&p).unwrap();
            std::fs::copy(real, units.join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn units_verify_and_are_confined() {
    let root = TempDir::new("units");
    unit_root(&root.0);
    verify_units(&root.0);
    for unit in ["lbadm.service", "lbadm-attach@eth0.service"] {
        let (_, out, err) = run(Command::new("systemd-analyze")
            .args(["security", "--offline=yes"])
            .arg(format!("--root={}", root.0.display()))
            .arg(unit));
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level for {unit}: {out}{err}"));
        let score: f64 = line
            .split(": ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{line}"));
        println!("{unit}: exposure {score}");
        // systemd's scale: 0 (confined) to 10 (UNSAFE); a service needing CAP_SYS_ADMIN and
        // CAP_NET_ADMIN on the host's network cannot get far below its "OK" band.
        assert!(score <= 4.5, "{unit}: {line}");
    }
}

/// `systemd-analyze verify` of the units in `root`: no complaint at all.
fn verify_units(root: &Path) {
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(["--man=no", "lbadm.service", "lbadm-attach@eth0.service"]));
    assert!(ok && err.is_empty() && out.is_empty(), "{out}{err}");
}

/// Every file under `root` but dpkg's own database.
fn files_under(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.starts_with(root.join("var/lib/dpkg")) {
                continue;
            }
            if p.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// The Debian package (cargo-deb, from the dev build here: `cargo xtask package` makes the
/// release one the same way) installed with `dpkg -i` into an empty root with its own dpkg
/// database (holding only libc6, the one package it depends on, as the host has it): the
/// binary runs, the man pages open with `man -l`, bash loads the completion, the units verify;
/// `dpkg -r` leaves only the conffile, `dpkg -P` nothing.
#[test]
fn the_package_installs_and_removes_cleanly() {
    let ws = workspace();
    let assets = ws.join("target/assets");
    let _ = std::fs::remove_dir_all(&assets);
    std::fs::create_dir_all(assets.join("completions")).unwrap();
    let (ok, _, err) = run(Command::new(lbadm_bin())
        .args(["generate", "man"])
        .arg(assets.join("man")));
    assert!(ok, "{err}");
    for (shell, file) in [
        ("bash", "lbadm.bash"),
        ("zsh", "_lbadm"),
        ("fish", "lbadm.fish"),
    ] {
        let (ok, script, err) =
            run(Command::new(lbadm_bin()).args(["generate", "completions", shell]));
        assert!(ok, "{err}");
        std::fs::write(assets.join("completions").join(file), script).unwrap();
    }
    let out = TempDir::new("deb");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if lbadm_bin().to_string_lossy().contains("/release/") {
        "release"
    } else {
        "dev"
    };
    let (ok, stdout, err) = run(Command::new(cargo)
        .current_dir(&ws)
        .args([
            "deb",
            "-p",
            "lb-userspace",
            "--no-build",
            "--quiet",
            "--profile",
            profile,
            "-o",
        ])
        .arg(&out.0));
    assert!(ok, "cargo deb (installed by `cargo xtask setup`): {err}");
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("{stdout}"))
        .trim()
        .to_string();

    let root = TempDir::new("root");
    let r = &root.0;
    let db = r.join("var/lib/dpkg");
    std::fs::create_dir_all(db.join("info")).unwrap();
    std::fs::create_dir_all(db.join("updates")).unwrap();
    std::fs::write(db.join("available"), "").unwrap();
    let (ok, libc, err) = run(Command::new("dpkg-query").args(["-s", "libc6"]));
    assert!(ok, "{err}");
    std::fs::write(db.join("status"), format!("{}\n", libc.trim_end())).unwrap();
    let dpkg = |args: &[&str]| {
        let (ok, out, err) = run(Command::new("dpkg")
            .arg(format!("--root={}", r.display()))
            .args(args));
        assert!(ok, "dpkg {args:?}: {out}{err}");
    };
    dpkg(&["-i", &deb]);

    let (ok, version, err) = run(Command::new(r.join("usr/sbin/lbadm")).arg("--version"));
    assert!(ok && version.starts_with("lbadm v"), "{version}{err}");
    for page in [
        "usr/share/man/man8/lbadm.8.gz",
        "usr/share/man/man8/lbadm-daemon.8.gz",
        "usr/share/man/man8/lbadm-realserver.8.gz",
        "usr/share/man/man5/lbadm.toml.5.gz",
    ] {
        let (ok, text, err) = run(Command::new("man")
            .env("MANWIDTH", "100")
            .arg("-l")
            .arg(r.join(page)));
        assert!(ok && text.contains("lbadm"), "man -l {page}: {err}");
    }
    let probe = format!(
        "source {}; complete -p lbadm",
        r.join("usr/share/bash-completion/completions/lbadm")
            .display()
    );
    let (ok, out, err) = run(Command::new("bash").args(["--norc", "-c", &probe]));
    assert!(ok && out.contains("-F _lbadm lbadm"), "{out}{err}");
    let conf = r.join("etc/lbadm/lbadm.toml");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
        0o600
    );
    systemd_bits(r);
    verify_units(r);
    let extra = |mut f: Vec<PathBuf>| {
        // What systemd_bits put there for the verification is not the package's.
        f.retain(|p| !p.starts_with("bin") && p.extension().is_none_or(|e| e != "target"));
        f
    };

    dpkg(&["-r", "lbadm"]);
    assert_eq!(
        extra(files_under(r)),
        vec![PathBuf::from("etc/lbadm/lbadm.toml")]
    );
    dpkg(&["-P", "lbadm"]);
    assert_eq!(extra(files_under(r)), Vec::<PathBuf>::new());
}
