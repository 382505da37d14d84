//! lbadm's library. One folder per concern:
//! - `director`: the data path (attach, detach), its maps (the one writer), and the pure parts
//!   that decide what goes into them (service table, scheduling tables, plans);
//! - `ipvsadm`: ipvsadm 1.31's command line and output formats over the director;
//! - `daemon`: the health-check daemon (configuration, checks, reconciliation, status, metrics);
//! - `realserver`: the real-server side (decapsulation, VIPs, rp_filter, ARP, the doctor);
//! - `sys`: what all of them ask of the OS (netlink, procfs, bpffs, interfaces).

pub mod daemon;
pub mod director;
pub mod ipvsadm;
pub mod manual;
pub mod realserver;
pub mod sys;

/// The compiled eBPF objects, embedded at build time.
pub mod objects {
    pub static LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
    pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));
    pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
}

/// Logs to stderr through `tracing`, filtered by `LBADM_LOG` (`EnvFilter` syntax, e.g. `debug`
/// or `lb_userspace::daemon=debug`) or else `default`. Records of the `log` crate (aya-log's
/// data-path events) arrive through the same subscriber.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LBADM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// An error and its causes on one line, each cause once: library errors quote their source in
/// their own message, so `{:#}` would print it twice.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
