//! lbadm's ipvsadm: one command line against the director's maps. `grammar` (with `options`,
//! `popt`, `c_compat` and `usage`) parses it exactly as ipvsadm 1.31 does; [`run`] turns the
//! invocation into a change of the service table, applied by [`Maps::apply_locked`] as one
//! transaction, or into a listing that `format` renders byte for byte.
//!
//! Every change reads the current table under the lock, edits a copy, validates it and applies
//! the difference; a command that fails changes no map. `-R` applies a whole file the same way:
//! all of it or nothing (ipvsadm stops half-way, leaving the lines before the error applied).

pub mod c_compat;
pub mod format;
pub mod grammar;
pub mod options;
pub mod popt;
pub mod usage;

use crate::director::{
    InstalledService, Maps, MapsError, RealServer, Scheduler, ServiceId, VirtualService, conntrack,
    plan::PlanError,
};
use format::{self as fmt, ListOptions, ListReal, ListService, Resolver};
use grammar::{Command, Invocation};
use lb_common::Counters;
use std::{collections::HashMap, io::Read, path::Path, time::Duration};

/// What a run printed and how it exits.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub stderr: String,
    pub code: i32,
}

impl Outcome {
    fn ok(stdout: String) -> Self {
        Outcome {
            stdout,
            stderr: String::new(),
            code: 0,
        }
    }

    fn err(message: impl Into<String>, code: i32) -> Self {
        let mut stderr = message.into();
        if !stderr.ends_with('\n') {
            stderr.push('\n');
        }
        Outcome {
            stdout: String::new(),
            stderr,
            code,
        }
    }
}

pub const IPVS_VERSION: &str = "1.2.1";
pub const TIMEOUTS: (u32, u32, u32) = (
    lb_common::TIMEOUT_ESTABLISHED as u32,
    lb_common::TIMEOUT_FIN_WAIT as u32,
    lb_common::TIMEOUT_UDP as u32,
);
/// `--rate` samples the counters twice, this far apart (IPVS keeps a 2-second estimator in the
/// kernel; the data path keeps plain counters).
pub const RATE_INTERVAL: Duration = Duration::from_secs(1);

/// The kernel's EINVAL as ipvsadm words it (`libipvs.c`): what IPVS answers for a real server
/// that is not a unicast address.
const NOT_UNICAST: &str =
    "Invalid operation.  Possibly wrong module version, address not unicast, ...";

/// An operation error with ipvsadm's text for it (exit 255, as ipvsadm's `return -1`).
fn op_err(msg: &str) -> Outcome {
    Outcome::err(msg, 255)
}

fn map_failure(e: MapsError) -> Outcome {
    match e {
        MapsError::NotAttached(_) => Outcome::err(format!("lbadm: {e}"), 2),
        // ipvsadm's words for ENOMEM, then which limit it was.
        MapsError::Plan(ref p @ (PlanError::TooManyServices | PlanError::TooManyReals)) => {
            Outcome::err(format!("Memory allocation problem\nlbadm: {p}"), 255)
        }
        MapsError::Plan(PlanError::UnusableReal(..)) => op_err(NOT_UNICAST),
        other => Outcome::err(format!("lbadm: {other}"), 255),
    }
}

/// An error message with every overlong word cut (a 1 MB token is not echoed back whole).
fn clip(msg: &str) -> String {
    const MAX: usize = 64;
    msg.split(' ')
        .map(|w| match w.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}... ({} bytes)", &w[..cut], w.len()),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs one ipvsadm command line (`args` without the program name).
pub fn run(program: &str, args: &[String], pin_dir: &Path, stdin: &mut dyn Read) -> Outcome {
    let inv = match grammar::parse_as(program, args) {
        Ok(inv) => inv,
        Err(e) => return Outcome::err(clip(&e.message), e.exit_code),
    };
    match inv.command {
        Command::Help => return Outcome::ok(grammar::usage(program)),
        Command::Version => return Outcome::ok(format!("{}\n", grammar::VERSION_LINE)),
        Command::Set => return Outcome::err(usage::SET_UNSUPPORTED, 2),
        Command::StartDaemon | Command::StopDaemon => {
            return Outcome::err(usage::DAEMON_UNSUPPORTED, 2);
        }
        _ => {}
    }
    for (given, option) in [
        (inv.persistent_conn, "--persistent-conn"),
        (inv.tun_info, "--tun-info"),
    ] {
        if given {
            return Outcome::err(
                format!(
                    "Option '{option}' is not supported by this director's listings (use -L -n, --stats, --rate, -c or --json)"
                ),
                2,
            );
        }
    }
    let mut maps = match Maps::open(pin_dir) {
        Ok(m) => m,
        Err(e) => return map_failure(e),
    };
    match inv.command {
        Command::List => list(&maps, &inv),
        Command::Save => save(&maps, inv.numeric),
        Command::Zero => zero(&mut maps, &inv),
        Command::Restore => restore(program, &mut maps, stdin),
        _ => change(&mut maps, |table| edit(table, &inv)),
    }
}

/// Runs `f` on the current table under the lock and applies the result, or nothing.
fn change(
    maps: &mut Maps,
    f: impl FnOnce(&mut Vec<VirtualService>) -> Result<(), Outcome>,
) -> Outcome {
    let _lock = match maps.lock() {
        Ok(l) => l,
        Err(e) => return map_failure(e),
    };
    let mut table: Vec<VirtualService> = match maps.read() {
        Ok(t) => t.into_iter().map(|s| s.spec).collect(),
        Err(e) => return map_failure(e),
    };
    if let Err(o) = f(&mut table) {
        return o;
    }
    match maps.apply_locked(&table) {
        Ok(()) => Outcome::default(),
        Err(e) => map_failure(e),
    }
}

fn service_id(inv: &Invocation) -> Option<ServiceId> {
    inv.service.as_ref().map(|s| ServiceId {
        proto: s.proto,
        addr: s.addr,
        port: s.port,
    })
}

fn scheduler(name: Option<&str>) -> Result<Scheduler, Outcome> {
    match name {
        None => Ok(Scheduler::DEFAULT),
        Some(n) => n
            .parse()
            .map_err(|_| op_err("Scheduler or persistence engine not found")),
    }
}

/// Applies one configuration command to the in-memory table, with the kernel's error texts.
fn edit(table: &mut Vec<VirtualService>, inv: &Invocation) -> Result<(), Outcome> {
    let id = service_id(inv);
    let pos = |table: &Vec<VirtualService>| id.and_then(|id| table.iter().position(|s| s.id == id));
    match inv.command {
        Command::Clear => table.clear(),
        Command::AddService => {
            let id = id.expect("the grammar requires a service");
            let sched = scheduler(inv.scheduler.as_deref())?;
            if pos(table).is_some() {
                return Err(op_err("Service already exists"));
            }
            table.push(VirtualService {
                id,
                sched,
                persistence: inv.persistent.unwrap_or(0),
                reals: Vec::new(),
            });
        }
        Command::EditService => {
            let sched = scheduler(inv.scheduler.as_deref())?;
            let i = pos(table).ok_or_else(|| op_err("No such service"))?;
            // ipvsadm -E sends a full service spec: what is not given takes its default.
            table[i].sched = sched;
            table[i].persistence = inv.persistent.unwrap_or(0);
        }
        Command::DeleteService => {
            let i = pos(table).ok_or_else(|| op_err("No such service"))?;
            table.remove(i);
        }
        Command::AddServer | Command::EditServer | Command::DeleteServer => {
            let i = pos(table).ok_or_else(|| op_err("Service not defined"))?;
            let (addr, _port) = inv.real.expect("the grammar requires a real server");
            let unusable = crate::director::table::unusable_real(addr, table[i].id.addr);
            let reals = &mut table[i].reals;
            let r = reals.iter().position(|r| r.addr == addr);
            // ipvsadm sends the whole destination: what is not given takes its default.
            let spec = RealServer {
                u_threshold: inv.u_threshold,
                l_threshold: inv.l_threshold,
                ..RealServer::new(addr, inv.weight.unwrap_or(1))
            };
            match (inv.command, r) {
                // The kernel's first check (ip_vs_add_dest / ip_vs_edit_dest): ERANGE.
                (Command::AddServer | Command::EditServer, _)
                    if spec.l_threshold > spec.u_threshold =>
                {
                    return Err(op_err("Numerical result out of range"));
                }
                (Command::AddServer | Command::EditServer, _) if unusable.is_some() => {
                    return Err(op_err(NOT_UNICAST));
                }
                (Command::AddServer, Some(_)) => return Err(op_err("Destination already exists")),
                (Command::AddServer, None) => reals.push(spec),
                (_, None) => return Err(op_err("No such destination")),
                (Command::EditServer, Some(r)) => reals[r] = spec,
                (_, Some(r)) => {
                    reals.remove(r);
                }
            }
        }
        _ => unreachable!("not a configuration command"),
    }
    Ok(())
}

fn restore(program: &str, maps: &mut Maps, stdin: &mut dyn Read) -> Outcome {
    let mut input = String::new();
    if let Err(e) = stdin.read_to_string(&mut input) {
        return Outcome::err(
            format!("lbadm: reading the rules from standard input: {e}"),
            2,
        );
    }
    change(maps, |table| {
        // Line by line, so that an error says where it is (ipvsadm does not).
        let lines = input.split('\n').enumerate();
        for (n, args) in lines.flat_map(|(n, l)| {
            grammar::restore_lines(l)
                .into_iter()
                .map(move |a| (n + 1, a))
        }) {
            let at_line = |o: Outcome| Outcome {
                stderr: format!("line {n}: {}", o.stderr),
                ..o
            };
            let inv = grammar::parse_as(program, &args)
                .map_err(|e| at_line(Outcome::err(clip(&e.message), e.exit_code)))?;
            match inv.command {
                Command::AddService
                | Command::EditService
                | Command::DeleteService
                | Command::Clear
                | Command::AddServer
                | Command::EditServer
                | Command::DeleteServer => edit(table, &inv).map_err(at_line)?,
                // ipvsadm treats other commands inside a restore as a usage error.
                _ => return Err(at_line(Outcome::err(grammar::try_help(program), 255))),
            }
        }
        Ok(())
    })
}

fn zero(maps: &mut Maps, inv: &Invocation) -> Outcome {
    let _lock = match maps.lock() {
        Ok(l) => l,
        Err(e) => return map_failure(e),
    };
    let installed = match maps.read() {
        Ok(t) => t,
        Err(e) => return map_failure(e),
    };
    let id = service_id(inv);
    let chosen: Vec<_> = installed
        .iter()
        .filter(|s| id.is_none_or(|id| s.spec.id == id))
        .collect();
    if id.is_some() && chosen.is_empty() {
        return op_err("No such service");
    }
    for s in chosen {
        if let Err(e) = maps.zero_service(s) {
            return map_failure(e);
        }
    }
    Outcome::default()
}

/// Counters of every installed service and real, by slot.
struct Sample {
    services: HashMap<u32, Counters>,
    reals: HashMap<u32, Counters>,
}

fn sample(maps: &Maps, installed: &[InstalledService]) -> Result<Sample, MapsError> {
    let mut s = Sample {
        services: HashMap::new(),
        reals: HashMap::new(),
    };
    for svc in installed {
        s.services.insert(svc.slot, maps.service_stats(svc.slot)?);
        for &r in &svc.real_slots {
            s.reals.insert(r, maps.real_stats(r)?);
        }
    }
    Ok(s)
}

fn stats(c: Counters) -> fmt::Stats {
    fmt::Stats {
        conns: c.conns,
        inpkts: c.packets,
        outpkts: 0,
        inbytes: c.bytes,
        outbytes: 0,
    }
}

fn rate(a: Counters, b: Counters, secs: f64) -> fmt::Stats {
    let per = |x: u64, y: u64| ((y.saturating_sub(x)) as f64 / secs).round() as u64;
    fmt::Stats {
        conns: per(a.conns, b.conns),
        inpkts: per(a.packets, b.packets),
        outpkts: 0,
        inbytes: per(a.bytes, b.bytes),
        outbytes: 0,
    }
}

fn list(maps: &Maps, inv: &Invocation) -> Outcome {
    if inv.timeout {
        return Outcome::ok(fmt::timeouts(TIMEOUTS.0, TIMEOUTS.1, TIMEOUTS.2));
    }
    if inv.daemon {
        // ipvsadm prints nothing when no sync daemon runs.
        return Outcome::default();
    }
    let resolver: &dyn Resolver = if inv.numeric {
        &fmt::NumericResolver
    } else {
        &fmt::SystemResolver
    };
    let installed = match maps.read() {
        Ok(t) => t,
        Err(e) => return map_failure(e),
    };
    if inv.connection {
        return match conntrack::entries(maps, &installed) {
            Ok(rows) => Outcome::ok(fmt::connections(&rows, inv.numeric, resolver)),
            Err(e) => map_failure(e),
        };
    }
    let id = service_id(inv);
    let chosen: Vec<_> = installed
        .iter()
        .filter(|s| id.is_none_or(|id| s.spec.id == id))
        .cloned()
        .collect();
    if id.is_some() && chosen.is_empty() {
        return Outcome::err("No such service", 1);
    }
    let first = match sample(maps, &chosen) {
        Ok(s) => s,
        Err(e) => return map_failure(e),
    };
    let second = if inv.rate && !inv.stats {
        std::thread::sleep(RATE_INTERVAL);
        match sample(maps, &chosen) {
            Ok(s) => Some(s),
            Err(e) => return map_failure(e),
        }
    } else {
        None
    };
    let counts = match conntrack::counts_by_real(maps) {
        Ok(c) => c,
        Err(e) => return map_failure(e),
    };
    let rows = to_rows(&chosen, Some(&first), second.as_ref(), &counts);
    if inv.json {
        return Outcome::ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&fmt::json(&rows)).unwrap_or_default()
        ));
    }
    let columns = if inv.stats {
        fmt::Columns::Stats
    } else if inv.rate {
        fmt::Columns::Rate
    } else if inv.thresholds {
        fmt::Columns::Thresholds
    } else {
        fmt::Columns::Default
    };
    let opts = ListOptions {
        numeric: inv.numeric,
        exact: inv.exact,
        columns,
        single_service: id.is_some(),
        sort: !inv.nosort,
    };
    let size = match maps.table_sizes() {
        Ok((established, _)) => established,
        Err(e) => return map_failure(e),
    };
    Outcome::ok(fmt::list(&rows, &opts, size, resolver))
}

fn save(maps: &Maps, numeric: bool) -> Outcome {
    let installed = match maps.read() {
        Ok(t) => t,
        Err(e) => return map_failure(e),
    };
    let rows = to_rows(&installed, None, None, &HashMap::new());
    let resolver: &dyn Resolver = if numeric {
        &fmt::NumericResolver
    } else {
        &fmt::SystemResolver
    };
    Outcome::ok(fmt::save(&rows, numeric, resolver))
}

/// The formatter's view of installed services: counters from `first`, rates from the
/// difference to `second`, connection counts by real slot.
fn to_rows(
    installed: &[InstalledService],
    first: Option<&Sample>,
    second: Option<&Sample>,
    counts: &HashMap<u32, (u32, u32)>,
) -> Vec<ListService> {
    let secs = RATE_INTERVAL.as_secs_f64();
    let at = |slot: u32, m: Option<&HashMap<u32, Counters>>| {
        m.and_then(|m| m.get(&slot)).copied().unwrap_or_default()
    };
    let both =
        |slot: u32, pick: fn(&Sample) -> &HashMap<u32, Counters>| -> (fmt::Stats, fmt::Stats) {
            let a = at(slot, first.map(pick));
            let r = second
                .map(|b| rate(a, at(slot, Some(pick(b))), secs))
                .unwrap_or_default();
            (stats(a), r)
        };
    installed
        .iter()
        .map(|s| {
            let (svc_stats, svc_rate) = both(s.slot, |x| &x.services);
            ListService {
                proto: s.spec.id.proto,
                addr: s.spec.id.addr,
                port: s.spec.id.port,
                sched: s.spec.sched.name().to_string(),
                persistent: (s.spec.persistence > 0).then_some(s.spec.persistence),
                stats: svc_stats,
                rate: svc_rate,
                reals: s
                    .spec
                    .reals
                    .iter()
                    .zip(&s.real_slots)
                    .map(|(r, &slot)| {
                        let (active, inactive) = counts.get(&slot).copied().unwrap_or((0, 0));
                        let (stats, rate) = both(slot, |x| &x.reals);
                        ListReal {
                            addr: r.addr,
                            // Tunnel mode: the real port is the virtual port.
                            port: s.spec.id.port,
                            weight: r.weight,
                            u_threshold: r.u_threshold,
                            l_threshold: r.l_threshold,
                            active,
                            inactive,
                            stats,
                            rate,
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_names_the_default_scheduler_we_apply() {
        let u = grammar::usage("lbadm");
        assert!(
            u.contains(&format!(
                "the default scheduler is {}.",
                Scheduler::DEFAULT.name()
            )),
            "{u}"
        );
    }

    #[test]
    fn commands_that_need_no_maps_run_without_them() {
        let none = Path::new("/nonexistent/lbadm");
        let run = |a: &[&str]| {
            run(
                "lbadm",
                &a.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                none,
                &mut std::io::empty(),
            )
        };
        assert_eq!(run(&["-v"]).code, 0);
        assert!(run(&["-h"]).stdout.starts_with(grammar::VERSION_LINE));
        let o = run(&["--set", "1", "2", "3"]);
        assert_eq!((o.code, o.stderr.trim_end()), (2, usage::SET_UNSUPPORTED));
        let o = run(&["-L", "-n", "--tun-info"]);
        assert_eq!(o.code, 2);
        assert!(o.stderr.contains("--tun-info"));
        // Anything that reads or changes the table needs the data path.
        let o = run(&["-A", "-t", "198.18.0.100:80"]);
        assert_eq!(o.code, 2);
        assert!(o.stderr.contains("lbadm attach --iface IF"), "{}", o.stderr);
    }
}
