//! `lbadm`: the director's command line.
//!
//! `lbadm attach|detach|status|log …` manage the data path; everything else is ipvsadm's
//! grammar (`-A`, `-a`, `-L -n`, `-S`, `-R`, …), run against the pinned maps.

use clap::{CommandFactory as _, Parser, Subcommand};
use lb_userspace::{
    daemon::{self, config, status::Status},
    director::{Maps, Protocol, allow, datapath, status, trace},
    realserver,
    sys::bpffs,
};
use std::{net::Ipv4Addr, path::PathBuf, process::ExitCode};

#[derive(Parser)]
#[command(
    name = "lbadm",
    version,
    about = "Layer-4 load balancer (LVS-TUN) on XDP"
)]
struct Cli {
    /// bpffs directory holding the pinned maps and links (default: /sys/fs/bpf/lbadm, and
    /// /sys/fs/bpf/lbadm-NAME in the `ip netns` NAME).
    #[arg(long, global = true, env = "LBADM_PIN_DIR")]
    pin_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach the director's data path to the interface that receives client traffic; on an
    /// attached data path, upgrade it in place (new programs, every map and connection kept).
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
        /// Established connections the director tracks (default 1048576, about 130 bytes each;
        /// a quarter as many more for handshakes in progress). Fixed until detach: an upgrade
        /// keeps it.
        #[arg(long, value_name = "ENTRIES")]
        conn_table: Option<u32>,
        /// New flows per second on one CPU above which that CPU goes into flood mode: SYNs are
        /// forwarded but not recorded (default 50000; 0 never). An upgrade keeps the running
        /// value unless this is given.
        #[arg(long, value_name = "PER_SEC")]
        flood_rate: Option<u32>,
    },
    /// Stream the data path's log events (attach with --log-level to have any) until Ctrl-C.
    Log,
    /// Detach the data path and remove its pinned maps.
    Detach,
    /// Show where the data path is attached, its packet counters and, when a daemon status
    /// file exists, the health of the reals.
    Status {
        #[arg(long)]
        json: bool,
        /// Only say whether this director may take traffic, in one line, and exit 0 if so, 1 if
        /// not: its data path is attached and, when the daemon syncs with peers, it has learned
        /// their connections (for keepalived's track_script).
        #[arg(long, conflicts_with = "json")]
        ready: bool,
        /// The daemon's status file (its config's `status_file`).
        #[arg(long, env = "LBADM_STATUS_FILE", default_value = config::DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
    },
    /// Health-check the reals of a configuration file and keep the maps in line with it
    /// (SIGHUP re-reads the file).
    Daemon {
        /// The configuration file (TOML; see lb-userspace/dist/lbadm.toml).
        #[arg(long, default_value = "/etc/lbadm/lbadm.toml")]
        config: PathBuf,
        /// Only validate the file: exit 0 if it is valid, 1 with the reason otherwise.
        #[arg(long)]
        check_config: bool,
    },
    /// Which real a client's flow goes to, and why: its connection entry, its persistence
    /// template, or the scheduler's pick for a new connection (read from the live tables,
    /// changing nothing).
    Trace {
        /// The client: ADDR for every connection of it, ADDR:PORT for one flow.
        #[arg(value_parser = parse_client)]
        client: (Ipv4Addr, Option<u16>),
        /// The virtual service, VIP:PORT.
        #[arg(value_parser = parse_service)]
        service: (Ipv4Addr, u16),
        #[arg(long, value_enum, default_value_t = TraceProto::Tcp)]
        proto: TraceProto,
        #[arg(long)]
        json: bool,
    },
    /// Source allow-lists per VIP (an lbadm extension; IPVS has none): a VIP with a list takes
    /// new connections only from the listed networks; established connections are kept.
    Allow {
        #[command(subcommand)]
        cmd: AllowCmd,
    },
    /// Real-server side of LVS-TUN: decapsulation, VIPs, rp_filter, ARP (setup / teardown /
    /// check).
    Realserver {
        #[command(subcommand)]
        cmd: RealserverCmd,
    },
    /// Write the manual (man pages) or a shell's completion script, for packaging.
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: GenerateCmd,
    },
}

#[derive(Subcommand)]
enum GenerateCmd {
    /// The man pages (lbadm.8, lbadm-VERB.8, lbadm.toml.5), into DIR.
    Man { dir: PathBuf },
    /// The completion script of SHELL, on standard output.
    Completions { shell: clap_complete::Shell },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TraceProto {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum AllowCmd {
    /// Allow networks (CIDR or address) to open connections to VIP; the first one starts the
    /// VIP's list, refusing every other source.
    Add {
        vip: Ipv4Addr,
        #[arg(required = true)]
        sources: Vec<allow::Cidr>,
    },
    /// Remove networks from VIP's list (an emptied list still refuses everyone: `clear` ends it).
    Del {
        vip: Ipv4Addr,
        #[arg(required = true)]
        sources: Vec<allow::Cidr>,
    },
    /// Remove VIP's list: every source may connect again.
    Clear { vip: Ipv4Addr },
    /// Show every VIP's list.
    List {
        #[arg(long)]
        json: bool,
    },
}

fn parse_client(s: &str) -> Result<(Ipv4Addr, Option<u16>), String> {
    match s.split_once(':') {
        None => s
            .parse()
            .map(|a| (a, None))
            .map_err(|_| format!("{s:?}: expected ADDR or ADDR:PORT")),
        Some(_) => parse_service(s).map(|(a, p)| (a, Some(p))),
    }
}

fn parse_service(s: &str) -> Result<(Ipv4Addr, u16), String> {
    let bad = || format!("{s:?}: expected ADDR:PORT, e.g. 198.18.0.100:6033");
    let (a, p) = s.split_once(':').ok_or_else(bad)?;
    Ok((a.parse().map_err(|_| bad())?, p.parse().map_err(|_| bad())?))
}

#[derive(Subcommand)]
enum RealserverCmd {
    /// Configure this host as a real server: decapsulation, VIPs as /32, rp_filter, ARP,
    /// persisted in a sysctl.d file; idempotent.
    Setup {
        /// Virtual IPs this server answers for (comma-separated or repeated).
        #[arg(long, value_delimiter = ',', required = true)]
        vip: Vec<Ipv4Addr>,
        /// How tunnelled packets are decapsulated.
        #[arg(long, value_enum, default_value_t = realserver::DecapMode::Tunl0)]
        decap: realserver::DecapMode,
        /// Interface that receives the tunnelled packets (default: the default route's).
        #[arg(long)]
        iface: Option<String>,
        /// Directors whose IPIP packets are accepted (required with --decap xdp and director).
        #[arg(long, value_delimiter = ',')]
        director: Vec<Ipv4Addr>,
        /// [default: /etc/sysctl.d/90-lbadm-realserver.conf; /run/lbadm/netns-NAME/sysctl.conf
        /// in the `ip netns` NAME]
        #[arg(long)]
        sysctl_file: Option<PathBuf>,
        /// [default: /var/lib/lbadm/realserver.json; /run/lbadm/netns-NAME/realserver.json in
        /// the `ip netns` NAME]
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// bpffs directory for the XDP decapsulation's pins.
        /// (default: /sys/fs/bpf/lbadm-decap, -NAME in the `ip netns` NAME)
        #[arg(long)]
        decap_pin_dir: Option<PathBuf>,
    },
    /// Undo what setup did: restore sysctls, remove added addresses, detach, remove files.
    Teardown {
        /// [default: as setup's]
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// The sysctl.d file to remove (default: the one recorded by setup).
        #[arg(long)]
        sysctl_file: Option<PathBuf>,
    },
    /// Inspect this host as a real server; exit 0 when healthy, 1 otherwise.
    Check {
        /// VIPs to check (default: those recorded by setup, else the /32s on lo and tunl0).
        #[arg(long, value_delimiter = ',')]
        vip: Vec<Ipv4Addr>,
        /// Default: the mode recorded by setup, else tunl0.
        #[arg(long, value_enum)]
        decap: Option<realserver::DecapMode>,
        #[arg(long)]
        iface: Option<String>,
        /// [default: as setup's]
        #[arg(long)]
        state_file: Option<PathBuf>,
        /// (default: /sys/fs/bpf/lbadm-decap, -NAME in the `ip netns` NAME)
        #[arg(long)]
        decap_pin_dir: Option<PathBuf>,
        /// Warnings (mtu-too-small) make the check fail too.
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // First, while this process has one thread (setns into a mount namespace needs that).
    if let Err(e) = bpffs::graft_system_bpffs() {
        eprintln!("lbadm: warning: under `ip netns exec`, cannot mount the system's bpffs: {e}");
    }
    let args: Vec<String> = std::env::args().collect();
    // `--pin-dir DIR` / `--pin-dir=DIR` may come first, before a verb or ipvsadm's options.
    let (pin_dir, skip) = match args.get(1).map(String::as_str) {
        Some("--pin-dir") => (args.get(2).map(PathBuf::from), 3),
        Some(a) if a.starts_with("--pin-dir=") => (Some(PathBuf::from(&a[10..])), 2),
        _ => (None, 1),
    };
    // lbadm's own verbs come from the clap definition; any other first word is ipvsadm's.
    let cli = Cli::command();
    let is_verb = |a: &str| a == "help" || cli.get_subcommands().any(|c| c.get_name() == a);
    // (`--pin-dir` without its value goes to clap, which says so.)
    let to_clap = args.get(skip).is_some_and(|a| is_verb(a)) || (skip == 3 && pin_dir.is_none());
    if !to_clap {
        let mut rest = vec![args[0].clone()];
        rest.extend(args.iter().skip(skip).cloned());
        return ipvsadm(&rest, pin_dir);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lbadm: {}", lb_userspace::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run_allow(cmd: AllowCmd, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut maps = Maps::open(pin_dir)?;
    let _lock = maps.lock()?;
    let mut lists = allow::read(&maps)?;
    let change = match cmd {
        AllowCmd::List { json: false } => {
            print!("{}", allow::render(&lists));
            return Ok(());
        }
        AllowCmd::List { json: true } => {
            let v: std::collections::BTreeMap<String, Vec<String>> = lists
                .iter()
                .map(|(vip, l)| (vip.to_string(), l.iter().map(|c| c.to_string()).collect()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        AllowCmd::Add { vip, sources } => allow::Edit::Add(vip, sources),
        AllowCmd::Del { vip, sources } => allow::Edit::Del(vip, sources),
        AllowCmd::Clear { vip } => allow::Edit::Clear(vip),
    };
    allow::edit(&mut lists, change)?;
    allow::replace(&mut maps, &lists)?;
    Ok(())
}

/// lbadm's own commands, for the end of ipvsadm's usage text.
fn own_commands() -> String {
    let mut out = String::from("\nlbadm's own commands (lbadm COMMAND --help for each):\n");
    for c in Cli::command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
    {
        let about = c.get_about().map(|a| a.to_string()).unwrap_or_default();
        let first = about.split(['.', ':']).next().unwrap_or_default().trim();
        out.push_str(&format!("  {:<11} {first}\n", c.get_name()));
    }
    out.push_str(&format!(
        "The pinned state lives in {} ({}-NAME in the `ip netns` NAME); --pin-dir DIR first, or\nLBADM_PIN_DIR, to change.\n",
        datapath::DEFAULT_PIN_DIR,
        datapath::DEFAULT_PIN_DIR
    ));
    out
}

/// ipvsadm's command line. The pin directory comes from a leading `--pin-dir`, else from
/// `LBADM_PIN_DIR` (ipvsadm's own grammar has no place for it).
fn ipvsadm(args: &[String], pin_dir: Option<PathBuf>) -> ExitCode {
    // As ipvsadm: messages name the program as it was invoked (argv[0], path and all).
    let program = args.first().cloned().unwrap_or_else(|| "lbadm".into());
    let pin_dir = pin_dir
        .or_else(|| std::env::var_os("LBADM_PIN_DIR").map(PathBuf::from))
        .unwrap_or_else(|| bpffs::default_pin_dir("lbadm"));
    let mut out = lb_userspace::ipvsadm::run(&program, &args[1..], &pin_dir, &mut std::io::stdin());
    if matches!(&args[1..], [h] if h == "-h" || h == "--help") {
        out.stdout.push_str(&own_commands());
    }
    use std::io::Write as _;
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    ExitCode::from(out.code as u8)
}

fn generate(what: GenerateCmd) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use lb_userspace::manual;
    match what {
        GenerateCmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let usage = lb_userspace::ipvsadm::grammar::usage("lbadm") + &own_commands();
            for (name, page) in manual::man_pages(Cli::command(), &usage)? {
                let path = dir.join(&name);
                std::fs::write(&path, page)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        GenerateCmd::Completions { shell } => {
            use std::io::Write as _;
            std::io::stdout().write_all(&manual::completions(Cli::command(), shell))?;
        }
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let pin = cli
        .pin_dir
        .unwrap_or_else(|| bpffs::default_pin_dir("lbadm"));
    match cli.cmd {
        Cmd::Realserver { cmd } => return run_realserver(cmd, &pin),
        Cmd::Generate { what } => {
            generate(what)?;
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Attach {
            iface,
            tunnel_source,
            generic,
            log_level,
            conn_table,
            flood_rate,
        } => {
            let r = datapath::attach(&datapath::AttachOptions {
                iface: iface.clone(),
                pin_dir: pin.clone(),
                tunnel_source,
                generic,
                log: log_level,
                conn_table,
                flood_rate,
            })?;
            for w in &r.warnings {
                eprintln!("lbadm: warning: {w}");
            }
            if let Some(plan) = &r.upgrade {
                println!(
                    "{iface}: {}; every connection, template and counter kept",
                    lb_userspace::director::upgrade::describe(plan)
                );
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "attached to {iface} ({} XDP), tunnel source {}, state pinned under {}",
                if r.generic { "generic" } else { "native" },
                r.tunnel_source,
                pin.display()
            );
            if r.forwarding_enabled {
                println!(
                    "enabled net.ipv4.conf.{iface}.forwarding (bpf_fib_lookup needs it); detach restores it"
                );
            }
        }
        Cmd::Trace {
            client,
            service,
            proto,
            json,
        } => {
            let maps = Maps::open(&pin)?;
            let q = trace::Query {
                client: client.0,
                client_port: client.1,
                vip: service.0,
                port: service.1,
                proto: match proto {
                    TraceProto::Tcp => Protocol::Tcp,
                    TraceProto::Udp => Protocol::Udp,
                },
            };
            let t = trace::trace(&maps, &q)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print!("{}", t.render(&q));
            }
        }
        Cmd::Allow { cmd } => run_allow(cmd, &pin)?,
        Cmd::Detach => {
            let r = datapath::detach(&pin)?;
            println!(
                "detached{}",
                r.iface.map(|i| format!(" from {i}")).unwrap_or_default()
            );
        }
        Cmd::Status {
            ready: true,
            status_file,
            ..
        } => {
            let st = Status::read(&status_file);
            let alive = st.as_ref().is_some_and(|s| s.alive());
            return Ok(
                match daemon::status::readiness(datapath::is_attached(&pin), st.as_ref(), alive) {
                    Ok(why) => {
                        println!("ready: {why}");
                        ExitCode::SUCCESS
                    }
                    Err(why) => {
                        println!("not ready: {why}");
                        ExitCode::from(1)
                    }
                },
            );
        }
        Cmd::Status {
            json, status_file, ..
        } => {
            let dp = status::read(&pin)?;
            let health = Status::read(&status_file);
            if json {
                let mut v = serde_json::to_value(&dp)?;
                v["health"] = serde_json::to_value(&health)?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", dp.render());
                if let Some(h) = health {
                    print!(
                        "{}",
                        h.render(
                            &status_file,
                            daemon::status::unix(std::time::SystemTime::now())
                        )
                    );
                }
            }
        }
        Cmd::Daemon {
            config,
            check_config,
        } => {
            if check_config {
                return Ok(match config::load(&config) {
                    Ok(c) => {
                        let reals: usize = c.services.iter().map(|s| s.reals.len()).sum();
                        println!(
                            "{}: valid ({} services, {reals} reals)",
                            config.display(),
                            c.services.len()
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("lbadm: {e}");
                        ExitCode::from(1)
                    }
                });
            }
            daemon::run(daemon::Options {
                config,
                pin_dir: pin.clone(),
            })?;
        }
        Cmd::Log => status::stream_log(&pin)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn run_realserver(cmd: RealserverCmd, pin_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (default_sysctl, default_state) = realserver::default_files(bpffs::netns_name().as_deref());
    match cmd {
        RealserverCmd::Setup {
            vip,
            decap,
            iface,
            director,
            sysctl_file,
            state_file,
            decap_pin_dir,
        } => {
            let r = realserver::setup(&realserver::SetupOptions {
                vips: vip,
                decap,
                iface,
                directors: director,
                sysctl_file: sysctl_file.unwrap_or(default_sysctl),
                state_file: state_file.unwrap_or(default_state),
                decap_pin_dir: decap_pin_dir
                    .unwrap_or_else(|| bpffs::default_pin_dir("lbadm-decap")),
                director_pin_dir: pin_dir.to_path_buf(),
            })?;
            for w in &r.warnings {
                eprintln!("lbadm: warning: {w}");
            }
            if r.changes.is_empty() {
                println!("nothing changed: this real server is already set up");
            }
            for c in &r.changes {
                println!("{c}");
            }
            for (what, v) in &r.effective {
                println!("effective {what}: {v}");
            }
        }
        RealserverCmd::Teardown {
            state_file,
            sysctl_file,
        } => {
            let state_file = state_file.unwrap_or(default_state);
            let r = realserver::teardown(&state_file, sysctl_file.as_deref())?;
            for c in &r.changes {
                println!("{c}");
            }
        }
        RealserverCmd::Check {
            vip,
            decap,
            iface,
            state_file,
            decap_pin_dir,
            strict,
            json,
        } => {
            let r = realserver::check(&realserver::CheckOptions {
                vips: vip,
                decap,
                iface,
                state_file: state_file.unwrap_or(default_state),
                decap_pin_dir: decap_pin_dir
                    .unwrap_or_else(|| bpffs::default_pin_dir("lbadm-decap")),
                director_pin_dir: pin_dir.to_path_buf(),
            })?;
            let healthy = r.healthy(strict);
            if json {
                let mut v = serde_json::to_value(&r)?;
                v["healthy"] = healthy.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for f in &r.findings {
                    let sev = match f.severity {
                        realserver::Severity::Error => "error",
                        realserver::Severity::Warning => "warning",
                    };
                    println!("{sev} [{}]: {}", f.code, f.message);
                    println!("  why: {}", f.why);
                    println!("  fix: {}", f.fix);
                }
                for n in &r.not_checked {
                    println!("note [{}]: {}", n.code, n.reason);
                }
                let vips = r
                    .vips
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
                println!(
                    "{}: --decap {} on {} for VIP {}",
                    if healthy { "healthy" } else { "NOT healthy" },
                    r.decap.name(),
                    r.iface,
                    if vips.is_empty() {
                        "(none)".into()
                    } else {
                        vips
                    }
                );
            }
            return Ok(if healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}
