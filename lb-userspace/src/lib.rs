//! lbadm's library: loading and attaching the data path, and the one module that changes its
//! configuration maps.

pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod datapath;
pub mod decap;
pub mod firewall;
pub mod healthcheck;
pub mod ipvsadm_command;
pub mod ipvsadm_format;
pub mod ipvsadm_grammar;
pub mod netlink;
pub mod probe;
pub mod realserver;
pub mod scheduler;
pub mod services;
pub mod sysctl;

/// The compiled eBPF objects, embedded at build time.
pub mod objects {
    pub static LB: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
    pub static DECAP: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/decap"));
    pub static BENCH: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
}
