//! Announcing the VIPs through the routing daemon the site already runs (BIRD, FRR, …), never
//! a routing protocol of our own: while this director can serve a VIP, the daemon keeps
//! `VIP/32 dev lo proto 252` in a dedicated kernel routing table; the routing daemon learns that
//! table and announces what it finds there (BGP to the routers, which spread flows over every
//! director announcing it by ECMP). The table is not used for forwarding: no rule points at it.
//!
//! A VIP is announced only while the data path is attached, sync has converged (learn before
//! serve) and every service on the VIP holds its quorum; at shutdown the daemon withdraws first
//! and keeps the data path serving for `drain` while the routers move the flows away.
//!
//! ```toml
//! [announce]
//! table = 100               # kernel routing table the routing daemon learns (default 100)
//! vips = ["198.18.0.100"]   # default: the VIP of every service
//! drain = "2s"              # at shutdown: withdraw, then wait this long (default 2s)
//! ```

use crate::{
    daemon::config::{ConfigError, Dur, ErrAt},
    sys::netlink,
};
use serde::{Deserialize, Serialize};
use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};
use toml::Spanned;
use tracing::{info, warn};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceConfig {
    pub table: u32,
    /// None: the VIP of every configured service.
    pub vips: Option<Vec<Ipv4Addr>>,
    pub drain: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnnounce {
    table: Option<Spanned<u32>>,
    vips: Option<Vec<Ipv4Addr>>,
    drain: Option<Dur>,
}

pub fn validate(raw: &RawAnnounce, err: &ErrAt) -> Result<AnnounceConfig, ConfigError> {
    let table = match &raw.table {
        None => 100,
        // The kernel's own tables (local 255, main 254, default 253, unspec 0) forward.
        Some(t) if matches!(*t.get_ref(), 0 | 253..=255) => {
            return Err(err(
                Some(t.span()),
                "announce.table",
                format!(
                    "table {} is one the kernel forwards with: pick a table of its own (e.g. 100)",
                    t.get_ref()
                ),
            ));
        }
        Some(t) => *t.get_ref(),
    };
    Ok(AnnounceConfig {
        table,
        vips: raw.vips.clone(),
        drain: raw.drain.map(|d| d.0).unwrap_or(Duration::from_secs(2)),
    })
}

/// What decides whether this director announces its VIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conditions {
    pub attached: bool,
    /// Sync has converged, or sync is not configured.
    pub sync_ready: bool,
    pub stopping: bool,
}

/// Whether `vip` is announced: Ok, or why not. `quorum` is whether every service on the VIP
/// holds its quorum.
pub fn decide(c: Conditions, quorum: bool) -> Result<(), &'static str> {
    if c.stopping {
        Err("shutting down")
    } else if !c.attached {
        Err("the data path is not attached")
    } else if !c.sync_ready {
        Err("learning connections from the peers")
    } else if !quorum {
        Err("quorum lost")
    } else {
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    pub vips: Vec<VipStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipStatus {
    pub vip: Ipv4Addr,
    pub announced: bool,
    /// Why not, when it is not.
    pub reason: Option<String>,
}

/// Keeps the table in line with the decisions.
pub struct Announcer {
    cfg: AnnounceConfig,
    handle: rtnetlink::Handle,
    state: BTreeMap<Ipv4Addr, Result<(), &'static str>>,
}

impl Announcer {
    /// Must run inside the daemon's runtime (the netlink connection is one of its tasks).
    pub fn new(cfg: AnnounceConfig) -> anyhow::Result<Announcer> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok(Announcer {
            cfg,
            handle,
            state: BTreeMap::new(),
        })
    }

    pub fn drain(&self) -> Duration {
        self.cfg.drain
    }

    /// The VIPs this director announces: the configured ones, else the services'.
    pub fn vips(&self, services: impl Iterator<Item = Ipv4Addr>) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = match &self.cfg.vips {
            Some(v) => v.clone(),
            None => services.collect(),
        };
        v.sort();
        v.dedup();
        v
    }

    /// Announces or withdraws each of `vips` as `quorum(vip)` and `c` decide, and withdraws
    /// what is in the table but no longer a VIP of ours. Without `verify` it touches the kernel
    /// only when a decision changed; with it, it also repairs what someone else changed.
    pub async fn reconcile(
        &mut self,
        vips: &[Ipv4Addr],
        c: Conditions,
        quorum: impl Fn(Ipv4Addr) -> bool,
        verify: bool,
    ) {
        let unchanged = vips.len() == self.state.len()
            && vips
                .iter()
                .all(|v| self.state.get(v) == Some(&decide(c, quorum(*v))));
        if unchanged && !verify {
            return;
        }
        let table = self.cfg.table;
        let present = match netlink::host_routes(&self.handle, table).await {
            Ok(p) => p,
            Err(e) => return warn!(table, "announce: reading the table: {e}"),
        };
        for &vip in vips {
            let d = decide(c, quorum(vip));
            let changed = self.state.get(&vip) != Some(&d);
            let result = match d {
                Ok(()) if !present.contains(&vip) => {
                    netlink::add_host_route(&self.handle, table, vip).await
                }
                Err(_) if present.contains(&vip) => {
                    netlink::del_host_route(&self.handle, table, vip).await
                }
                _ => Ok(()),
            };
            match (&result, changed) {
                (Err(e), _) => warn!(%vip, table, "announce: {e}"),
                (Ok(()), true) => match d {
                    Ok(()) => info!(%vip, table, "announcing the VIP"),
                    Err(why) => info!(%vip, table, "VIP not announced: {why}"),
                },
                _ => {}
            }
            if result.is_ok() {
                self.state.insert(vip, d);
            }
        }
        for stale in present.iter().filter(|p| !vips.contains(p)) {
            info!(vip = %stale, table, "withdrawing a VIP no service has any more");
            if let Err(e) = netlink::del_host_route(&self.handle, table, *stale).await {
                warn!(vip = %stale, table, "announce: {e}");
            }
            self.state.remove(stale);
        }
    }

    pub fn status(&self) -> AnnounceStatus {
        AnnounceStatus {
            table: self.cfg.table,
            vips: self
                .state
                .iter()
                .map(|(vip, d)| VipStatus {
                    vip: *vip,
                    announced: d.is_ok(),
                    reason: d.err().map(str::to_string),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UP: Conditions = Conditions {
        attached: true,
        sync_ready: true,
        stopping: false,
    };

    #[test]
    fn announced_only_when_able_to_serve() {
        assert_eq!(decide(UP, true), Ok(()));
        assert_eq!(decide(UP, false), Err("quorum lost"));
        let learning = Conditions {
            sync_ready: false,
            ..UP
        };
        assert_eq!(
            decide(learning, true),
            Err("learning connections from the peers")
        );
        let detached = Conditions {
            attached: false,
            ..UP
        };
        assert_eq!(decide(detached, true), Err("the data path is not attached"));
        // Stopping wins over everything: withdraw first.
        let stopping = Conditions {
            stopping: true,
            ..UP
        };
        assert_eq!(decide(stopping, true), Err("shutting down"));
    }

    #[test]
    fn the_kernels_own_tables_are_refused() {
        let text = "iface = \"eth0\"\nallow_no_services = true\n[announce]\ntable = 254\n";
        let e = crate::daemon::config::parse(std::path::Path::new("t.toml"), text).unwrap_err();
        assert_eq!(e.field, "announce.table", "{e}");
        let ok = "iface = \"eth0\"\nallow_no_services = true\n[announce]\ndrain = \"500ms\"\n";
        let c = crate::daemon::config::parse(std::path::Path::new("t.toml"), ok).unwrap();
        let a = c.announce.unwrap();
        assert_eq!((a.table, a.drain), (100, Duration::from_millis(500)));
    }
}
