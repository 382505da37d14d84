//! Running child commands: where the workspace and the tools are, and failing clearly.

use std::{
    env,
    ffi::OsString,
    fmt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, Result, anyhow};

/// Paths every task needs.
pub struct Ctx {
    /// The workspace root (the parent of xtask's manifest directory).
    pub root: PathBuf,
    /// The cargo binary: `$CARGO` (set by `cargo run`) or `cargo` from PATH.
    pub cargo: OsString,
    /// `$CARGO_HOME` or `~/.cargo`: rustup, cargo and bpf-linker live in its `bin`.
    pub cargo_home: PathBuf,
    /// `~/.cache/lbadm`: a stable place for what setup builds (bpf-linker's rpath points here).
    pub cache_dir: PathBuf,
}

impl Ctx {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or_else(|| anyhow!("xtask's manifest directory has no parent"))?
            .to_path_buf();
        let home = env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(PathBuf::from)
            .ok_or_else(|| anyhow!("HOME is not set"))?;
        let cargo_home = env::var_os("CARGO_HOME")
            .filter(|dir| !dir.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".cargo"));
        ensure_on_path(&cargo_home.join("bin"))?;
        let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Self {
            root,
            cargo,
            cargo_home,
            cache_dir: home.join(".cache").join("lbadm"),
        })
    }

    /// `cargo`, to run in the workspace root.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(&self.root);
        cmd
    }

    /// Runs `cmd` with inherited stdio; an error names the command if it fails.
    pub fn run(&self, cmd: &mut Command) -> Result<()> {
        eprintln!("xtask: $ {}", display(cmd));
        let status = cmd
            .status()
            .with_context(|| format!("cannot run `{}`", display(cmd)))?;
        if status.success() {
            Ok(())
        } else {
            Err(CommandFailed {
                command: display(cmd),
                code: status.code(),
                detail: None,
            }
            .into())
        }
    }
}

/// Runs `cmd` quietly (stdin closed, output captured) and returns its output whatever its status.
/// `apt-get ARGS`, non-interactive and without standard input.
pub fn apt_get(args: &[&str]) -> Command {
    let mut apt = Command::new("apt-get");
    apt.args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(std::process::Stdio::null());
    apt
}

pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", display(cmd)))
}

/// Runs `cmd` quietly and returns its stdout; an error names the command and shows its stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(CommandFailed {
            command: display(cmd),
            code: out.status.code(),
            detail: (!stderr.is_empty()).then_some(stderr),
        }
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child command that exited unsuccessfully; `main` forwards its exit code.
#[derive(Debug)]
pub struct CommandFailed {
    pub command: String,
    pub code: Option<i32>,
    pub detail: Option<String>,
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "`{}` failed with exit code {code}", self.command)?,
            None => write!(f, "`{}` was killed by a signal", self.command)?,
        }
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandFailed {}

/// The command line, for messages (environment changes and the directory are not shown; the
/// cargo binary, often a long path from `$CARGO`, is shown as `cargo`).
pub fn display(cmd: &Command) -> String {
    let program = Path::new(cmd.get_program());
    let program = if program.file_name().is_some_and(|name| name == "cargo") {
        "cargo".into()
    } else {
        program.to_string_lossy()
    };
    let mut words = vec![program.into_owned()];
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || "'\"$\\".contains(c)) {
            words.push(format!("'{}'", arg.replace('\'', r"'\''")));
        } else {
            words.push(arg.into_owned());
        }
    }
    words.join(" ")
}

/// Puts `dir` at the front of PATH (for this process, so for all children) if it is not on it:
/// CI may run with a minimal PATH, and rustc must find `bpf-linker` there.
fn ensure_on_path(dir: &Path) -> Result<()> {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|entry| entry == dir) {
        return Ok(());
    }
    let joined = env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path)))
        .context("cannot add cargo's bin directory to PATH")?;
    // SAFETY: called from `main` before any other thread exists.
    unsafe { env::set_var("PATH", joined) };
    Ok(())
}

/// The first executable file named `name` in PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}
