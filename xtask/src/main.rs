//! Developer tasks for lbadm: `cargo xtask <command>` (`cargo xtask` is an alias in
//! `.cargo/config.toml`). The logic of CI (`.ci/run`) lives here too.

mod cmd;
mod setup;
mod vm;

use std::{ffi::OsString, process::ExitCode, time::Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{CommandFailed, Ctx};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for lbadm: set up the toolchain, build, test, benchmark, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing for building and testing (quick when nothing is)
    ///
    /// Checks, and installs only if missing: the pinned nightly with rust-src (named in
    /// lb-userspace/build.rs), a bpf-linker built against that nightly's LLVM, and the Debian
    /// packages the tests use.
    Setup,
    /// Set up, then build the workspace
    ///
    /// Runs `cargo build` of the default members: lb-userspace's build.rs builds the eBPF
    /// objects with the pinned nightly.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up, then run all tests (needs root)
    ///
    /// Runs `cargo test --workspace --exclude lb-ebpf [-- HARNESS_ARGS]` and exits with its
    /// status. Needs root: the tests load BPF programs and create network namespaces.
    Test {
        /// Build the tests with the release profile (default: dev; the eBPF objects are always
        /// built optimised).
        #[arg(long)]
        release: bool,
        /// Arguments for the test harness, after `--` (e.g. `-- --nocapture some_test`).
        #[arg(last = true, value_name = "HARNESS_ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, then run the VM suite inside Debian's stock 6.1 kernel under qemu
    ///
    /// Builds the test binaries, fetches the kernel package into ~/.cache/lbadm/vm (once),
    /// builds a busybox initramfs (when its inputs change), and boots one guest that runs the
    /// `datapath_fixture`, `realserver` (tunl0 for real) and `e2e_director` test binaries as
    /// root, then reports each one's result. The whole run is bounded to 20 minutes. With
    /// `LBADM_VM_OPTIONAL=1`, a machine where qemu cannot run prints `vm-test: skipped: <reason>`
    /// and exits 0. `LBADM_VM_ACCEL=kvm|tcg` forces the accelerator, `LBADM_VM_MEM` the guest
    /// memory (default 2G), `LBADM_VM_KEEP=1` keeps the run directory (logs) under target/vm-test.
    VmTest {
        /// Kernel package to boot (default: the newest in the cache, else what
        /// linux-image-amd64 depends on, e.g. linux-image-6.1.0-41-amd64).
        #[arg(long, value_name = "PKG")]
        kernel_pkg: Option<String>,
        /// Seconds before the guest is killed (also bounded by the 20-minute budget).
        #[arg(long, value_name = "SECS", default_value_t = 900)]
        timeout: u64,
        /// Arguments for each test binary's harness, after `--` (e.g. a test-name filter).
        #[arg(last = true, value_name = "TEST_FILTER")]
        filter: Vec<OsString>,
    },
    /// Set up, then run the benchmark
    ///
    /// Runs `cargo run --release -p lb-tests --bin lb-bench -- [BENCH_ARGS]`.
    Bench {
        /// Arguments for lb-bench, after `--` (`cargo xtask bench -- --help` lists them).
        #[arg(last = true, value_name = "BENCH_ARGS")]
        args: Vec<OsString>,
    },
    /// Set up, build, then run the demo
    ///
    /// Runs `cargo build --release`, then `cargo run --release -p lb-tests --bin lb-demo --
    /// [DEMO_ARGS]`.
    Demo {
        /// Arguments for lb-demo, after `--` (`cargo xtask demo -- --help` lists them).
        #[arg(last = true, value_name = "DEMO_ARGS")]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            // Forward a failed child's exit code (e.g. 101 from a failed `cargo test`).
            let code = err
                .downcast_ref::<CommandFailed>()
                .and_then(|failed| failed.code)
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new()?;
    match cli.command {
        Command::Setup => setup::setup(&ctx),
        Command::Build { release } => {
            setup::setup(&ctx)?;
            build(&ctx, release)
        }
        Command::Test { release, args } => test(&ctx, release, args),
        Command::VmTest {
            kernel_pkg,
            timeout,
            filter,
        } => vm::vm_test(
            &ctx,
            vm::VmArgs {
                kernel_pkg,
                timeout,
                filter,
            },
        ),
        Command::Bench { args } => {
            setup::setup(&ctx)?;
            // The health-check bench runs the release `lbadm` next to `lb-bench`.
            build(&ctx, true)?;
            let mut cmd = ctx.cargo();
            cmd.args([
                "run",
                "--release",
                "-p",
                "lb-tests",
                "--bin",
                "lb-bench",
                "--",
            ])
            .args(args);
            ctx.run(&mut cmd)
        }
        Command::Demo { args } => {
            setup::setup(&ctx)?;
            // Release, like the `cargo run` below, so the workspace is compiled once, and the
            // demo finds an up-to-date release `lbadm` binary next to itself.
            build(&ctx, true)?;
            let mut cmd = ctx.cargo();
            cmd.args([
                "run",
                "--release",
                "-p",
                "lb-tests",
                "--bin",
                "lb-demo",
                "--",
            ])
            .args(args);
            ctx.run(&mut cmd)
        }
    }
}

fn build(ctx: &Ctx, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo();
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    ctx.run(&mut cmd)
}

fn test(ctx: &Ctx, release: bool, args: Vec<OsString>) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "`cargo xtask test` needs root (the tests load BPF programs and create network \
             namespaces): run it as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    setup::setup(ctx)?;
    let start = Instant::now();
    // Profile: dev by default. aya-build always builds the eBPF objects with `--release`
    // (the verifier needs optimised code), so the profile only affects the userspace code:
    // the dev profile compiles faster on the 2-core machines and shares its artifacts with
    // `cargo xtask build`. `--release` is there for timing-sensitive runs.
    // The integration tests run the `lbadm` binary as an operator would; `cargo test` alone
    // does not rebuild binaries of packages without integration tests of their own.
    let mut bins = ctx.cargo();
    bins.args(["build", "--workspace", "--exclude", "lb-ebpf", "--bins"]);
    if release {
        bins.arg("--release");
    }
    ctx.run(&mut bins)?;
    let mut cmd = ctx.cargo();
    cmd.args(["test", "--workspace", "--exclude", "lb-ebpf"]);
    if release {
        cmd.arg("--release");
    }
    if !args.is_empty() {
        cmd.arg("--").args(args);
    }
    let result = ctx.run(&mut cmd);
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(()) => eprintln!("xtask test: PASSED in {secs:.1} s"),
        Err(err) => {
            let code = err
                .downcast_ref::<CommandFailed>()
                .and_then(|failed| failed.code);
            let status = code.map_or("killed by a signal".to_string(), |code| {
                format!("exit code {code}")
            });
            eprintln!("xtask test: FAILED after {secs:.1} s ({status})")
        }
    }
    result
}
