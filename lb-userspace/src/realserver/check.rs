//! `lbadm realserver check`, the doctor: inspects this host as an LVS-TUN real server (no
//! state file needed) and explains every problem: what is wrong, why it breaks traffic, and the
//! exact fix.

use super::{
    DecapMode, MIN_MTU, RealServerError, TUNL0, decap_attached, decap_members, dedup, join,
    load_state, receiving_iface,
};
use crate::sys::{
    netlink::{Addr, Rtnl, name_of},
    sysctl::{ipv4_conf_effective, ipv4_conf_read},
};
use serde::Serialize;
use std::{net::Ipv4Addr, path::PathBuf};

type Result<T> = std::result::Result<T, RealServerError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks traffic: `check` exits 1.
    Error,
    /// May break some traffic depending on the network: reported, exit 1 only with `--strict`.
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Stable identifier (`decap-missing`, `vip-missing`, …).
    pub code: &'static str,
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Why it breaks traffic.
    pub why: String,
    /// The exact fix.
    pub fix: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NotChecked {
    pub code: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub decap: DecapMode,
    pub iface: String,
    pub vips: Vec<Ipv4Addr>,
    pub findings: Vec<Finding>,
    pub not_checked: Vec<NotChecked>,
}

impl CheckReport {
    pub fn healthy(&self, strict: bool) -> bool {
        !self
            .findings
            .iter()
            .any(|f| f.severity == Severity::Error || strict)
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// VIPs to check; empty: the state file's, else every non-loopback /32 on lo and tunl0.
    pub vips: Vec<Ipv4Addr>,
    /// Default: the state file's, else tunl0.
    pub decap: Option<DecapMode>,
    pub iface: Option<String>,
    pub state_file: PathBuf,
    pub decap_pin_dir: PathBuf,
    /// This host's director data path (`--decap director`).
    pub director_pin_dir: PathBuf,
}

pub fn check(opts: &CheckOptions) -> Result<CheckReport> {
    let nl = Rtnl::new()?;
    let st = load_state(&opts.state_file).ok().flatten();
    let decap = opts
        .decap
        .or(st.as_ref().map(|s| s.decap))
        .unwrap_or(DecapMode::Tunl0);
    let iface = receiving_iface(
        &nl,
        opts.iface
            .as_deref()
            .or(st.as_ref().map(|s| s.iface.as_str())),
    )?;
    let links = nl.links()?;
    let addrs = nl.addrs()?;
    let name_of = |i: u32| name_of(&links, i);
    let tunl0 = links.iter().find(|l| l.name == TUNL0);
    let vips: Vec<Ipv4Addr> = if !opts.vips.is_empty() {
        dedup(&opts.vips)
    } else if let Some(s) = &st {
        s.vips.clone()
    } else {
        dedup(
            &addrs
                .iter()
                .filter(|a| a.prefix == 32 && !a.addr.is_loopback())
                .filter(|a| matches!(name_of(a.ifindex).as_str(), "lo" | TUNL0))
                .map(|a| a.addr)
                .collect::<Vec<_>>(),
        )
    };
    let vip_list = if vips.is_empty() {
        "VIP".to_string()
    } else {
        join(&vips)
    };
    let setup_cmd = match decap {
        DecapMode::Tunl0 => format!(
            "lbadm realserver setup --decap tunl0 --vip {vip_list} --iface {}",
            iface.name
        ),
        DecapMode::Xdp => format!(
            "lbadm realserver setup --decap xdp --director DIRECTOR --vip {vip_list} --iface {}",
            iface.name
        ),
        DecapMode::Director => format!(
            "lbadm realserver setup --decap director --director PEER --vip {vip_list} --iface {}",
            iface.name
        ),
    };
    let vip_dev = match decap {
        DecapMode::Tunl0 => TUNL0,
        DecapMode::Xdp | DecapMode::Director => "lo",
    };
    let mut f = Vec::new();

    // Decapsulation.
    match decap {
        DecapMode::Tunl0 => match tunl0 {
            None => f.push(Finding {
                code: "decap-missing",
                severity: Severity::Error,
                message: "there is no tunl0: nothing decapsulates the director's IPIP packets".into(),
                why: "the director forwards every client packet IPIP-encapsulated; without tunl0 the kernel answers them with ICMP protocol-unreachable and clients time out".into(),
                fix: format!("{setup_cmd} (loads ipip; if the kernel has no CONFIG_NET_IPIP, use --decap xdp --director DIRECTOR)"),
            }),
            Some(t) if !t.up => f.push(Finding {
                code: "decap-down",
                severity: Severity::Error,
                message: "tunl0 is down".into(),
                why: "a down tunl0 does not receive IPIP packets, so every tunnelled client packet is dropped".into(),
                fix: format!("{setup_cmd} (or `ip link set tunl0 up`)"),
            }),
            Some(_) => {}
        },
        // bpffs is root-only: without root the pins cannot be seen, which says nothing.
        DecapMode::Xdp | DecapMode::Director if unsafe { libc::geteuid() } != 0 => {}
        DecapMode::Director => {
            let pin = &opts.director_pin_dir;
            let peers = crate::director::peers::read(pin).ok();
            let expected: Vec<Ipv4Addr> = st.as_ref().map(|s| s.directors.clone()).unwrap_or_default();
            if !crate::director::datapath::is_attached(pin) {
                f.push(Finding {
                    code: "decap-missing",
                    severity: Severity::Error,
                    message: format!("--decap director, but no director data path is attached on this host (nothing pinned under {})", pin.display()),
                    why: "in the two-node layout this host's director program decapsulates what the peer director sends its real; without it the peer's tunnelled packets are dropped (this kernel's stack has no tunl0 for them)".into(),
                    fix: format!("lbadm attach --iface {}; then {setup_cmd}", iface.name),
                });
            } else if let Some(peers) = peers {
                let missing: Vec<Ipv4Addr> = expected.iter().copied().filter(|p| !peers.contains(p)).collect();
                if peers.is_empty() || !missing.is_empty() {
                    f.push(Finding {
                        code: "decap-missing",
                        severity: Severity::Error,
                        message: if peers.is_empty() {
                            "this host's director decapsulates for no peer director".into()
                        } else {
                            format!("this host's director does not decapsulate IPIP from {}", join(&missing))
                        },
                        why: "while a peer director holds the VIP, it tunnels part of the connections to this host's real; the director program passes IPIP from unknown directors to the stack, which has no tunl0 for them".into(),
                        fix: setup_cmd.clone(),
                    });
                }
            }
            if decap_attached(&opts.decap_pin_dir) {
                f.push(Finding {
                    code: "decap-conflict",
                    severity: Severity::Error,
                    message: format!("the XDP decapsulation program is pinned under {} beside this host's director", opts.decap_pin_dir.display()),
                    why: "an interface runs one XDP program: in the two-node layout the director's program decapsulates, and a separate decapsulation program cannot be attached beside it".into(),
                    fix: format!("lbadm realserver teardown, then {setup_cmd}"),
                });
            }
        }
        DecapMode::Xdp => {
            if !decap_attached(&opts.decap_pin_dir) {
                f.push(Finding {
                    code: "decap-missing",
                    severity: Severity::Error,
                    message: format!(
                        "the XDP decapsulation is not attached (nothing pinned under {})",
                        opts.decap_pin_dir.display()
                    ),
                    why: "the director forwards every client packet IPIP-encapsulated; nothing strips the outer header, so the kernel answers them with ICMP protocol-unreachable and clients time out".into(),
                    fix: setup_cmd.clone(),
                });
            } else if !vips.is_empty()
                && let Ok((_, have)) = decap_members(&opts.decap_pin_dir)
            {
                let missing: Vec<Ipv4Addr> = vips.iter().copied().filter(|v| !have.contains(v)).collect();
                if !missing.is_empty() {
                    f.push(Finding {
                        code: "decap-missing",
                        severity: Severity::Error,
                        message: format!("the XDP decapsulation does not accept VIP {}", join(&missing)),
                        why: "it drops IPIP packets whose inner destination is not a configured VIP".into(),
                        fix: setup_cmd.clone(),
                    });
                }
            }
        }
    }

    // VIPs.
    for &vip in &vips {
        let on: Vec<&Addr> = addrs.iter().filter(|a| a.addr == vip).collect();
        if on.is_empty() {
            f.push(Finding {
                code: "vip-missing",
                severity: Severity::Error,
                message: format!("VIP {vip} is not on any interface"),
                why: "after decapsulation the packet is addressed to the VIP; a host that does not own it drops (or forwards) it instead of answering".into(),
                fix: format!("{setup_cmd} (or `ip addr add {vip}/32 dev {vip_dev}`)"),
            });
        }
        for a in on {
            let dev = name_of(a.ifindex);
            let right_dev = dev == "lo" || dev == TUNL0;
            if !right_dev || a.prefix != 32 {
                f.push(Finding {
                    code: "vip-wrong-device",
                    severity: Severity::Error,
                    message: format!("VIP {vip} is configured as {vip}/{} on {dev}", a.prefix),
                    why: if !right_dev {
                        format!("on {dev} the host answers ARP for the VIP and steals it from the director (clients then bypass the load balancer or break)")
                    } else {
                        format!("a /{} prefix adds a connected route for the whole subnet via {dev}, so replies to that subnet are misrouted", a.prefix)
                    },
                    fix: format!(
                        "ip addr del {vip}/{} dev {dev}; then {setup_cmd} (the VIP belongs as {vip}/32 on {vip_dev})",
                        a.prefix
                    ),
                });
            }
        }
    }

    // rp_filter.
    let mut rp_devs = vec![iface.name.clone()];
    if decap == DecapMode::Tunl0 && tunl0.is_some() {
        rp_devs.push(TUNL0.into());
    }
    for dev in &rp_devs {
        let (all, d) = (
            ipv4_conf_read("all", "rp_filter")?,
            ipv4_conf_read(dev, "rp_filter")?,
        );
        if all.max(d) == 1 {
            f.push(Finding {
                code: "rp-filter-strict",
                severity: Severity::Error,
                message: format!("reverse-path filtering is strict on {dev}: effective rp_filter 1 (net.ipv4.conf.all.rp_filter={all}, net.ipv4.conf.{dev}.rp_filter={d}; the kernel uses the larger)"),
                why: format!("decapsulated packets come from client addresses the host may not route back via {dev}; strict mode drops them silently"),
                fix: format!(
                    "{setup_cmd} (or `sysctl -w net.ipv4.conf.{dev}.rp_filter=2{}`)",
                    if all == 1 { " net.ipv4.conf.all.rp_filter=2" } else { "" }
                ),
            });
        }
    }

    // ARP.
    if !vips.is_empty() {
        let ign = ipv4_conf_effective(&iface.name, "arp_ignore")?;
        let ann = ipv4_conf_effective(&iface.name, "arp_announce")?;
        if ign < 1 || ann < 2 {
            f.push(Finding {
                code: "arp-answers-vip",
                severity: Severity::Error,
                message: format!(
                    "{} may answer or announce the VIP in ARP: effective arp_ignore {ign} (needs >= 1), arp_announce {ann} (needs 2)",
                    iface.name
                ),
                why: "the real server then answers ARP requests for the VIP on the LAN, so the gateway may send client traffic straight to it, bypassing the director (or flapping between reals)".into(),
                fix: format!("{setup_cmd} (or `sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2`)"),
            });
        }
    }

    // MTU.
    if iface.mtu < MIN_MTU {
        f.push(Finding {
            code: "mtu-too-small",
            severity: Severity::Warning,
            message: format!("{} has MTU {} (< {MIN_MTU}): a full-size 1500-byte client packet cannot arrive encapsulated", iface.name, iface.mtu),
            why: "IPIP adds 20 bytes; large packets only get through if the clients' path-MTU discovery works (lbadm's director answers with ICMP fragmentation-needed, but firewalls that drop ICMP make large transfers hang) or the director-to-real path carries jumbo frames".into(),
            fix: format!("raise the MTU of the director-to-real path to >= {MIN_MTU} (`ip link set {} mtu {MIN_MTU}`, and the same on the director and switches), or clamp the TCP MSS of the service to 1440 (`ip route change ... advmss 1440`); make sure ICMP type 3 code 4 reaches the clients", iface.name),
        });
    }

    let mut not_checked = Vec::new();
    if decap != DecapMode::Tunl0 && unsafe { libc::geteuid() } != 0 {
        not_checked.push(NotChecked {
            code: "decap-missing",
            reason: "not checked: the XDP decapsulation's pins on bpffs are readable by root only; run check as root".into(),
        });
    }
    match decap {
        DecapMode::Xdp | DecapMode::Director => not_checked.push(NotChecked {
            code: "ipip-blocked",
            reason: "not applicable: the XDP decapsulation runs before netfilter, so firewall rules never see IP protocol 4".into(),
        }),
        DecapMode::Tunl0 => match super::firewall::ipip_blocking_rules() {
            Ok(rules) => {
                for r in rules {
                    f.push(Finding {
                        code: "ipip-blocked",
                        severity: Severity::Error,
                        message: format!(
                            "nftables rule in {} {} chain {} {}s IP protocol 4 (IPIP)",
                            r.family, r.table, r.chain, r.verdict
                        ),
                        why: "every packet the director forwards is IPIP; the firewall discards it before tunl0 can decapsulate it".into(),
                        fix: format!(
                            "accept IPIP from the directors ahead of that rule: `nft insert rule {} {} {} ip protocol 4 ip saddr DIRECTOR accept` (or remove the rule)",
                            r.family, r.table, r.chain
                        ),
                    });
                }
            }
            Err(e) => not_checked.push(NotChecked {
                code: "ipip-blocked",
                reason: format!("not checked: cannot read the nftables ruleset ({e}); make sure IP protocol 4 from the directors is accepted"),
            }),
        },
    }
    Ok(CheckReport {
        decap,
        iface: iface.name.clone(),
        vips,
        findings: f,
        not_checked,
    })
}
