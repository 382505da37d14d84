//! Health checks of real servers and the fall/rise state machine.
//!
//! * `tcp`: connect to real:port within the timeout (keepalived's TCP_CHECK).
//! * `mysql`: connect and read the server's initial handshake (HandshakeV10) within the timeout:
//!   3-byte length, sequence 0, protocol 10, NUL-terminated version, thread id, 8 bytes of auth
//!   data, filler 0. An ERR packet (0xff) instead is DOWN with its errno and message. Without
//!   credentials nothing is sent: the connection is closed after the greeting. With `user` (and `password`) configured, it then authenticates (mysql_native_password)
//!   and runs `SELECT 1`; an authentication or query error is DOWN. Secrets are never logged.
//!
//! A check goes either to the real's own address (`via = "direct"`, keepalived's way) or to
//! VIP:port encapsulated to that real (`via = "tunnel"`, the path clients take; see
//! [`super::probe`]).

use super::{
    config::{CheckConfig, CheckKind, CheckVia},
    mysql,
    probe::{Probes, Registration},
};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::net::{TcpSocket, TcpStream};

/// Where a check connects.
#[derive(Clone)]
pub enum CheckTarget {
    /// The real's own address and the check's port.
    Direct(SocketAddrV4),
    /// VIP:port, encapsulated to `real` by the data path.
    Tunnel {
        vip: Ipv4Addr,
        real: Ipv4Addr,
        port: u16,
        probes: Arc<Probes>,
    },
}

impl CheckTarget {
    /// The target of `check` for this real of a service with VIP `vip`. A tunnel check needs
    /// the data path's probe map (`Err(why)` if it could not be opened).
    pub fn new(
        vip: Ipv4Addr,
        real: Ipv4Addr,
        check: &CheckConfig,
        probes: Result<&Arc<Probes>, &str>,
    ) -> Result<Self, String> {
        // A real on the director's own address (the two-node layout) is served up the local
        // stack, not through the tunnel: check it there.
        let local = probes.is_ok_and(|p| p.source == real);
        match check.via {
            CheckVia::Direct => Ok(CheckTarget::Direct(SocketAddrV4::new(real, check.port))),
            CheckVia::Tunnel if local => {
                Ok(CheckTarget::Direct(SocketAddrV4::new(real, check.port)))
            }
            CheckVia::Tunnel => Ok(CheckTarget::Tunnel {
                vip,
                real,
                port: check.port,
                probes: probes.map_err(|why| format!("tunnel: {why}"))?.clone(),
            }),
        }
    }
}

/// One check's result: Ok(latency) or Err(reason, printable, no secrets).
pub type CheckResult = Result<Duration, String>;

/// Runs one check of kind `check.kind` against `target`, bounded by `check.timeout`.
pub async fn run_check(target: &CheckTarget, check: &CheckConfig) -> CheckResult {
    let start = Instant::now();
    if check.kind == CheckKind::None {
        return Ok(Duration::ZERO);
    }
    let (socket, addr, probe) = match target {
        CheckTarget::Direct(addr) => (
            TcpSocket::new_v4().map_err(|e| format!("tcp: socket: {e}"))?,
            *addr,
            None,
        ),
        CheckTarget::Tunnel {
            vip,
            real,
            port,
            probes,
        } => {
            let (s, reg) = probes
                .socket(*vip, *real, *port)
                .map_err(|e| e.to_string())?;
            (s, SocketAddrV4::new(*real, *port), Some(reg))
        }
    };
    let fut = async {
        let s = connect(socket, addr).await?;
        if check.kind == CheckKind::Mysql {
            let login = check.user.as_deref().map(|user| mysql::Login {
                user,
                password: check.password.as_ref(),
                tls: check.tls,
            });
            mysql::check(s, *addr.ip(), login).await?;
        }
        Ok(())
        // Dropping the stream closes it.
    };
    let result = match tokio::time::timeout(check.timeout, fut).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!(
            "{}: timeout after {}ms",
            check.kind.name(),
            check.timeout.as_millis()
        )),
    };
    match (probe, target) {
        (Some(reg), CheckTarget::Tunnel { vip, port, .. }) => {
            tunnel_verdict(result, &reg, SocketAddrV4::new(*vip, *port))
        }
        _ => result,
    }
}

/// A tunnel check passes only if its packets were encapsulated and its replies came from the
/// VIP; a failure says which half is missing.
fn tunnel_verdict(result: CheckResult, reg: &Registration, vip: SocketAddrV4) -> CheckResult {
    let (egress, ingress) = reg.counters();
    match result {
        Ok(_) if egress == 0 => Err(
            "tunnel: answered without encapsulation (the director's TC egress program is not \
             attached to the interface the route to the real uses; lbadm attach --iface IF)"
                .to_string(),
        ),
        Ok(_) if ingress == 0 => Err(format!(
            "tunnel: the answer did not come from {vip} (the real answers from another address)"
        )),
        Ok(d) => Ok(d),
        Err(e) if egress > 0 && ingress == 0 => Err(format!(
            "{e}; nothing came back from {vip} through the tunnel (on the real: VIP configured? \
             decapsulation? rp_filter? `lbadm realserver check`)"
        )),
        Err(e) => Err(format!("{e} (through the tunnel to {vip})")),
    }
}

async fn connect(socket: TcpSocket, addr: SocketAddrV4) -> Result<TcpStream, String> {
    socket.connect(SocketAddr::V4(addr)).await.map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
            std::io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
            _ => e.to_string(),
        };
        format!("tcp: {what}")
    })
}

/// A real's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

/// fall/rise: `fall` consecutive failures mark an UP real DOWN, `rise` consecutive successes
/// mark a DOWN real UP. A real starts UP (keepalived without `alpha`) unless told otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub health: Health,
    pub fails: u32,
    pub oks: u32,
}

impl Tracker {
    pub fn new(health: Health) -> Self {
        Tracker {
            health,
            fails: 0,
            oks: 0,
        }
    }

    /// Records one result; returns the new health if it changed.
    pub fn record(&mut self, ok: bool, fall: u32, rise: u32) -> Option<Health> {
        match (self.health, ok) {
            (Health::Up, true) => {
                self.fails = 0;
                None
            }
            (Health::Up, false) => {
                self.fails += 1;
                if self.fails >= fall.max(1) {
                    self.health = Health::Down;
                    self.fails = 0;
                    self.oks = 0;
                    Some(Health::Down)
                } else {
                    None
                }
            }
            (Health::Down, true) => {
                self.oks += 1;
                if self.oks >= rise.max(1) {
                    self.health = Health::Up;
                    self.fails = 0;
                    self.oks = 0;
                    Some(Health::Up)
                } else {
                    None
                }
            }
            (Health::Down, false) => {
                self.oks = 0;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise() {
        let mut t = Tracker::new(Health::Up);
        assert_eq!(t.record(false, 3, 2), None);
        assert_eq!(t.record(false, 3, 2), None);
        assert_eq!(t.record(true, 3, 2), None);
        assert_eq!(t.record(false, 3, 2), None);
        assert_eq!(t.record(false, 3, 2), None);
        assert_eq!(t.record(false, 3, 2), Some(Health::Down));
        assert_eq!(t.record(true, 3, 2), None);
        assert_eq!(t.record(false, 3, 2), None);
        assert_eq!(t.record(true, 3, 2), None);
        assert_eq!(t.record(true, 3, 2), Some(Health::Up));
    }
}
