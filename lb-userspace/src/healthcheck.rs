//! Health checks of real servers and the fall/rise state machine.
//!
//! * `tcp`: connect to real:port within the timeout (keepalived's TCP_CHECK).
//! * `mysql`: connect and read the server's initial handshake (HandshakeV10) within the timeout:
//!   3-byte length, sequence 0, protocol 10, NUL-terminated version, thread id, 8 bytes of auth
//!   data, filler 0. An ERR packet (0xff) instead is DOWN with its errno and message. Nothing is
//!   sent: the connection is closed after the greeting. Extension point for an authenticated
//!   check (monitor user + COM_PING): [`mysql_after_greeting`].
//!
//! Checks go to the real's own address. Extension point for checks *through the tunnel* (to the
//! VIP, encapsulated to one real, as Katran/seesaw do): [`CheckTarget`] — today always the
//! real's address; a tunnelled variant would carry the VIP and a socket mark that the data path
//! steers to the real.

use crate::config::{CheckConfig, CheckKind};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};
use tokio::{io::AsyncReadExt as _, net::TcpStream};

/// Where a check connects. See the module docs for the tunnelled extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTarget {
    /// The real's own address and the check's port.
    Direct(SocketAddrV4),
}

impl CheckTarget {
    pub fn direct(real: Ipv4Addr, check: &CheckConfig) -> Self {
        CheckTarget::Direct(SocketAddrV4::new(real, check.port))
    }
}

/// One check's result: Ok(latency) or Err(reason, printable, no secrets).
pub type CheckResult = Result<Duration, String>;

/// Runs one check of kind `check.kind` against `target`, bounded by `check.timeout`.
pub async fn run_check(target: CheckTarget, check: &CheckConfig) -> CheckResult {
    let start = Instant::now();
    let CheckTarget::Direct(addr) = target;
    let fut = async {
        match check.kind {
            CheckKind::None => Ok(()),
            CheckKind::Tcp => connect(addr).await.map(drop),
            CheckKind::Mysql => {
                let mut s = connect(addr).await?;
                let greeting = read_greeting(&mut s).await?;
                mysql_after_greeting(&mut s, &greeting).await
                // Dropping the stream closes it without sending anything.
            }
        }
    };
    match tokio::time::timeout(check.timeout, fut).await {
        Ok(Ok(())) => Ok(start.elapsed()),
        Ok(Err(reason)) => Err(reason),
        Err(_) => Err(format!(
            "{}: timeout after {}ms",
            check.kind.name(),
            check.timeout.as_millis()
        )),
    }
}

async fn connect(addr: SocketAddrV4) -> Result<TcpStream, String> {
    TcpStream::connect(SocketAddr::V4(addr)).await.map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            std::io::ErrorKind::HostUnreachable => "host unreachable".to_string(),
            std::io::ErrorKind::NetworkUnreachable => "network unreachable".to_string(),
            _ => e.to_string(),
        };
        format!("tcp: {what}")
    })
}

/// What the server said in its greeting (only what a check may log: no auth data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub thread_id: u32,
}

/// Longest greeting accepted (a real one is ~80 bytes).
const MAX_GREETING: usize = 4096;

async fn read_greeting(s: &mut TcpStream) -> Result<Greeting, String> {
    let mut hdr = [0u8; 4];
    read_exact(s, &mut hdr, "header").await?;
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
    if len == 0 || len > MAX_GREETING {
        return Err(format!("mysql: bad packet length {len}"));
    }
    let mut payload = vec![0u8; len];
    read_exact(s, &mut payload, "payload").await?;
    parse_greeting(hdr[3], &payload)
}

async fn read_exact(s: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(format!(
            "mysql: connection closed before the greeting's {what}"
        )),
        Err(e) => Err(format!("mysql: reading the greeting: {e}")),
    }
}

/// Validates a greeting packet (sequence number and payload). Pure, for tests.
pub fn parse_greeting(seq: u8, p: &[u8]) -> Result<Greeting, String> {
    if p.first() == Some(&0xff) {
        if p.len() < 3 {
            return Err("mysql: short ERR packet".into());
        }
        let errno = u16::from_le_bytes([p[1], p[2]]);
        let mut msg = &p[3..];
        if msg.first() == Some(&b'#') && msg.len() >= 6 {
            msg = &msg[6..];
        }
        return Err(format!("mysql: ERR {errno} {}", printable(msg)));
    }
    if seq != 0 {
        return Err(format!("mysql: greeting has sequence {seq}, expected 0"));
    }
    if p.first() != Some(&0x0a) {
        return Err(format!(
            "mysql: not a HandshakeV10 greeting (first byte {:#04x})",
            p.first().copied().unwrap_or(0)
        ));
    }
    let Some(nul) = p[1..].iter().position(|&b| b == 0) else {
        return Err("mysql: server version not NUL-terminated".into());
    };
    let version = printable(&p[1..1 + nul]);
    let rest = &p[1 + nul + 1..];
    // thread id (4) + auth-plugin-data-part-1 (8) + filler (1)
    if rest.len() < 13 {
        return Err("mysql: greeting too short".into());
    }
    if rest[12] != 0 {
        return Err(format!(
            "mysql: greeting filler is {:#04x}, expected 0",
            rest[12]
        ));
    }
    Ok(Greeting {
        server_version: version,
        thread_id: u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
    })
}

fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

/// Extension point: with credentials configured, this is where a monitor user would
/// authenticate and send `COM_PING`/`COM_QUIT`. Without them the greeting is enough and
/// nothing is sent (ProxySQL may log "Closing unhealthy client connection" for each check;
/// `mysql-log_unhealthy_connections=false` silences it). Never log the password or the scramble.
async fn mysql_after_greeting(_s: &mut TcpStream, _greeting: &Greeting) -> Result<(), String> {
    Ok(())
}

/// A real's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

    fn greeting() -> Vec<u8> {
        let mut p = vec![0x0a];
        p.extend_from_slice(b"5.5.30 (ProxySQL)\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&[0xff, 0xf7, 33, 2, 0, 0x0f, 0x80, 21]);
        p
    }

    #[test]
    fn greeting_parses() {
        let g = parse_greeting(0, &greeting()).unwrap();
        assert_eq!(g.server_version, "5.5.30 (ProxySQL)");
        assert_eq!(g.thread_id, 7);
        assert!(parse_greeting(1, &greeting()).is_err());
        assert!(parse_greeting(0, &greeting()[..20]).is_err());
        let mut bad = greeting();
        bad[0] = 9;
        assert!(parse_greeting(0, &bad).is_err());
        let mut err = vec![0xff];
        err.extend_from_slice(&1040u16.to_le_bytes());
        err.extend_from_slice(b"#08004Too many connections");
        assert_eq!(
            parse_greeting(0, &err).unwrap_err(),
            "mysql: ERR 1040 Too many connections"
        );
    }

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
