//! `lbadm`: the director's command line.
//!
//! `lbadm attach|detach|status|log …` manage the data path; everything else is ipvsadm's
//! grammar (`-A`, `-a`, `-L -n`, `-S`, `-R`, …), run against the pinned maps.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lb_userspace::{datapath, services::Maps};
use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(name = "lbadm", version, about = "Layer-4 load balancer (LVS-TUN) on XDP")]
struct Cli {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, global = true, env = "LBADM_PIN_DIR", default_value = datapath::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the director's data path to the interface that receives client traffic.
    Attach {
        #[arg(long)]
        iface: String,
        /// Outer source address of tunnelled packets (default: the interface's first IPv4 address).
        #[arg(long)]
        tunnel_source: Option<Ipv4Addr>,
        /// Use generic (skb) XDP even if the driver supports native XDP.
        #[arg(long)]
        generic: bool,
        /// Data-path events to log (read them with `lbadm log`); fixed at attach time, and
        /// free when off.
        #[arg(long, value_enum, default_value_t = datapath::LogLevel::Off)]
        log_level: datapath::LogLevel,
    },
    /// Stream the data path's log events (attach with --log-level to have any) until Ctrl-C.
    Log,
    /// Detach the data path and remove its pinned maps.
    Detach,
    /// Show where the data path is attached and its packet counters.
    Status {
        #[arg(long)]
        json: bool,
    },
}

/// The words that select lbadm's own commands; any other first argument is ipvsadm grammar.
const SUBCOMMANDS: &[&str] = &["attach", "detach", "status", "log", "help"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let first = args.get(1).map(String::as_str);
    let is_sub = first.is_some_and(|a| SUBCOMMANDS.contains(&a))
        || (first == Some("--pin-dir") && args.get(3).is_some_and(|a| SUBCOMMANDS.contains(&a.as_str())));
    if !is_sub {
        return ipvsadm(&args);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lbadm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// ipvsadm's command line. The pin directory comes from `LBADM_PIN_DIR` (ipvsadm's grammar
/// has no place for it).
fn ipvsadm(args: &[String]) -> ExitCode {
    let program = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "lbadm".into());
    let pin_dir = std::env::var_os("LBADM_PIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(datapath::DEFAULT_PIN_DIR));
    let out = lb_userspace::ipvsadm_command::run(&program, &args[1..], &pin_dir, &mut std::io::stdin());
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    ExitCode::from(out.code as u8)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Attach { iface, tunnel_source, generic, log_level } => {
            let r = datapath::attach(&datapath::AttachOptions {
                iface: iface.clone(),
                pin_dir: cli.pin_dir.clone(),
                tunnel_source,
                generic,
                log: log_level,
            })?;
            for w in &r.warnings {
                eprintln!("lbadm: warning: {w}");
            }
            println!(
                "attached to {iface} ({} XDP), tunnel source {}, state pinned under {}",
                if r.generic { "generic" } else { "native" },
                r.tunnel_source,
                cli.pin_dir.display()
            );
            if r.forwarding_enabled {
                println!(
                    "enabled net.ipv4.conf.{iface}.forwarding (bpf_fib_lookup needs it); detach restores it"
                );
            }
        }
        Cmd::Detach => {
            let r = datapath::detach(&cli.pin_dir)?;
            println!(
                "detached{}",
                r.iface.map(|i| format!(" from {i}")).unwrap_or_default()
            );
        }
        Cmd::Status { json } => status(&cli.pin_dir, json)?,
        Cmd::Log => stream_log(&cli.pin_dir)?,
    }
    Ok(())
}

fn status(pin_dir: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let maps = Maps::open(pin_dir)?;
    let cfg = maps.config()?;
    let iface = datapath::ifname(cfg.ifindex).unwrap_or_else(|| format!("ifindex {}", cfg.ifindex));
    let attached = datapath::is_attached(pin_dir);
    let mode = if cfg.attach & lb_common::ATTACH_XDP_GENERIC != 0 { "generic" } else { "native" };
    let reasons = maps.reasons().context("reading counters")?;
    let services = maps.read()?;
    if json {
        let v = serde_json::json!({
            "attached": attached,
            "iface": iface,
            "xdp_mode": mode,
            "tunnel_source": Ipv4Addr::from(cfg.tunnel_src.to_ne_bytes()).to_string(),
            "pin_dir": pin_dir,
            "services": services.len(),
            "counters": reasons.iter().map(|(r, n)| (r.name(), *n)).collect::<std::collections::BTreeMap<_, _>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "data path: {} on {iface} ({mode} XDP), tunnel source {}",
        if attached { "attached" } else { "NOT attached (maps only)" },
        Ipv4Addr::from(cfg.tunnel_src.to_ne_bytes())
    );
    println!("pin dir:   {}", pin_dir.display());
    println!("services:  {}", services.len());
    println!("counters:");
    for (r, n) in reasons {
        println!("  {:<20} {n}", r.name());
    }
    Ok(())
}

fn stream_log(pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let id = datapath::program_id(pin_dir)?;
    env_logger::Builder::new()
        .filter_level(log::LevelFilter::Trace)
        .format_timestamp_millis()
        .init();
    let mut logger = aya_log::EbpfLogger::init_from_id(id)
        .context("the data path was built without its log buffer")?;
    use std::os::fd::AsRawFd as _;
    loop {
        let mut pfd = libc::pollfd { fd: logger.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        if unsafe { libc::poll(&mut pfd, 1, 1000) } < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("waiting for log events");
            }
        }
        logger.flush();
    }
}
