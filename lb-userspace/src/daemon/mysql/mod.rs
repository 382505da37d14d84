//! The MySQL check: the server's greeting (HandshakeV10, or an ERR packet such as 1040 *Too
//! many connections*), and, with credentials, a login, `SELECT 1` and COM_QUIT.
//!
//! The packets and the authentication plugins (caching_sha2_password with its fast and full
//! paths, mysql_native_password, sha256_password, auth switches) are those of `mysql_common`,
//! the protocol crate of the `mysql` and `mysql_async` clients. Their connection code cannot
//! use the check's own socket (a tunnel probe's is marked and bound before it connects), so this
//! module moves their packets over it, and upgrades it to TLS when asked. Secrets never reach an
//! error text: the password is only handed to the plugins.

mod wire;

use super::config::Secret;
use mysql_common::{
    auth::plugins::{AuthProc, ChallengeResponsePlugin as _, Context},
    constants::CapabilityFlags,
    io::ParseBuf,
    packets::{
        AuthPlugin, AuthSwitchRequest, ErrPacket, HandshakePacket, HandshakeResponse, SslRequest,
    },
    proto::MySerialize as _,
};
use serde::Deserialize;
use std::net::Ipv4Addr;
use tokio::net::TcpStream;
use wire::Wire;

/// TLS for the login (`tls = …` in a mysql check with a user).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tls {
    /// Never, even if the server offers it.
    Off,
    /// When the server offers it (its greeting has CLIENT_SSL), as MySQL's client does.
    #[default]
    Preferred,
    /// A server that does not offer TLS fails the check.
    Required,
}

/// The login a check makes.
pub struct Login<'a> {
    pub user: &'a str,
    pub password: Option<&'a Secret>,
    pub tls: Tls,
}

const COM_QUERY: u8 = 0x03;
const COM_QUIT: u8 = 0x01;
const MAX_PACKET_SIZE: u32 = 1 << 24;
/// utf8mb4_general_ci.
const COLLATION: u8 = 45;
/// Rounds of an authentication exchange before the check gives up on a server that never ends
/// it (caching_sha2_password's longest takes three).
const MAX_AUTH_ROUNDS: usize = 6;

/// Reads the greeting of the server at `server` on `s`; with a login, logs in, runs `SELECT 1`
/// (one row, `1`) and says COM_QUIT. Returns the server's version.
pub async fn check(
    s: TcpStream,
    server: Ipv4Addr,
    login: Option<Login<'_>>,
) -> Result<String, String> {
    let mut w = Wire {
        s: Box::new(s),
        seq: 0,
    };
    let p = w.read("greeting").await?;
    let hs = greeting(&p)?;
    let version = printable(hs.server_version_ref());
    let Some(login) = login else {
        return Ok(version);
    };
    let offered = hs.capabilities().contains(CapabilityFlags::CLIENT_SSL);
    let tls = match login.tls {
        Tls::Off => false,
        Tls::Preferred => offered,
        Tls::Required if offered => true,
        Tls::Required => {
            return Err(format!(
                "mysql: tls = \"required\", but {version} does not offer TLS"
            ));
        }
    };
    let mut caps = CapabilityFlags::CLIENT_PROTOCOL_41
        | CapabilityFlags::CLIENT_SECURE_CONNECTION
        | CapabilityFlags::CLIENT_PLUGIN_AUTH
        | CapabilityFlags::CLIENT_LONG_PASSWORD
        | CapabilityFlags::CLIENT_TRANSACTIONS;
    w.seq = 1;
    if tls {
        caps |= CapabilityFlags::CLIENT_SSL;
        let mut req = Vec::new();
        SslRequest::new(caps, MAX_PACKET_SIZE, COLLATION).serialize(&mut req);
        w.write(&req).await?;
        w = w.start_tls(server).await?;
    }
    let pass = login.password.map(|p| p.expose().as_bytes()).unwrap_or(b"");
    let mut auth = Auth {
        pass,
        tls,
        scramble: hs.nonce(),
    };
    let plugin = hs
        .auth_plugin()
        .unwrap_or(AuthPlugin::MysqlNativePassword)
        .into_owned();
    let mut proc = auth.start(&plugin)?;
    let first = proc
        .run(&auth, &auth.scramble.clone())
        .map_err(|e| format!("mysql: login: {}: {e}", printable(plugin.as_bytes())))?;
    let mut resp = Vec::new();
    HandshakeResponse::new(
        first.data().map(<[u8]>::to_vec),
        hs.server_version_parsed().unwrap_or((5, 7, 0)),
        Some(login.user.as_bytes()),
        None::<&[u8]>,
        Some(plugin.clone()),
        caps,
        None,
        MAX_PACKET_SIZE,
    )
    .serialize(&mut resp);
    w.write(&resp).await?;
    auth.finish(&mut w, proc, plugin).await?;
    select_1(&mut w).await?;
    w.seq = 0;
    let _ = w.write(&[COM_QUIT]).await;
    Ok(version)
}

/// The greeting, or the error a server greets with when it refuses connections.
fn greeting(p: &[u8]) -> Result<HandshakePacket<'_>, String> {
    if p.first() == Some(&0xff) {
        // As a server refusing connections says it, e.g. `mysql: ERR 1040 Too many connections`.
        return Err(err_text("mysql", p));
    }
    // mysql_common 0.38 reads the auth-plugin-data length as i8 and subtracts 8 from it: a
    // length of 128 or more overflows (a panic where overflow is checked). A real server sends
    // 21; anything that large is refused before it gets there (found by the property test).
    let len_at = p
        .get(1..)
        .and_then(|v| v.iter().position(|&b| b == 0))
        .map(|nul| 1 + nul + 1 + 4 + 8 + 1 + 2 + 1 + 2 + 2);
    if let Some(&n) = len_at.and_then(|i| p.get(i))
        && n >= 0x80
    {
        return Err(format!(
            "mysql: not a HandshakeV10 greeting: auth-plugin-data length {n}"
        ));
    }
    ParseBuf(p)
        .parse::<HandshakePacket>(())
        .map_err(|e| format!("mysql: not a HandshakeV10 greeting: {e}"))
}

/// What the authentication plugins may know.
struct Auth<'a> {
    pass: &'a [u8],
    tls: bool,
    /// The nonce of the greeting, or of the last auth switch.
    scramble: Vec<u8>,
}

impl Context for &Auth<'_> {
    fn pass(&self) -> &[u8] {
        self.pass
    }
    fn is_ipc_transport(&self) -> bool {
        false
    }
    fn is_tls_transport(&self) -> bool {
        self.tls
    }
    fn scramble(&self) -> &[u8] {
        &self.scramble
    }
    fn server_key_pem(&self) -> Option<&[u8]> {
        None
    }
}

impl Auth<'_> {
    fn start(&self, plugin: &AuthPlugin<'_>) -> Result<AuthProc, String> {
        // Cleartext passwords only inside TLS.
        if *plugin == AuthPlugin::MysqlClearPassword && !self.tls {
            return Err(
                "mysql: login: the server asks for the cleartext password outside TLS; \
                        refused (tls = \"required\")"
                    .into(),
            );
        }
        AuthProc::init(plugin).map_err(|_| {
            format!(
                "mysql: login: the server wants auth plugin {}, which the check does not speak \
                 (caching_sha2_password, mysql_native_password, sha256_password)",
                printable(plugin.as_bytes())
            )
        })
    }

    /// Answers the server's challenges until it says OK (or why not).
    async fn finish(
        &mut self,
        w: &mut Wire,
        mut proc: AuthProc,
        mut plugin: AuthPlugin<'static>,
    ) -> Result<(), String> {
        for _ in 0..MAX_AUTH_ROUNDS {
            let p = w.read("login").await?;
            let challenge = match p.first() {
                Some(0x00) => return Ok(()),
                Some(0xff) => return Err(err_text("mysql: login", &p)),
                Some(0xfe) => {
                    let req: AuthSwitchRequest = ParseBuf(&p)
                        .parse(())
                        .map_err(|e| format!("mysql: login: bad auth switch: {e}"))?;
                    plugin = req.auth_plugin().into_owned();
                    let data = req.plugin_data();
                    self.scramble = data.strip_suffix(&[0]).unwrap_or(data).to_vec();
                    proc = self.start(&plugin)?;
                    self.scramble.clone()
                }
                // More data for the plugin, after a 0x01 escape.
                Some(0x01) => p[1..].to_vec(),
                _ => return Err(unexpected("login", &p)),
            };
            let r = proc
                .run(&*self, &challenge)
                .map_err(|e| format!("mysql: login: {}: {e}", printable(plugin.as_bytes())))?;
            if let Some(data) = r.data() {
                w.write(data).await?;
            }
        }
        Err(format!(
            "mysql: login: no answer after {MAX_AUTH_ROUNDS} rounds of {}",
            printable(plugin.as_bytes())
        ))
    }
}

/// `SELECT 1`: exactly one row holding `1` (column count, definition, EOF, rows, EOF).
async fn select_1(w: &mut Wire) -> Result<(), String> {
    w.seq = 0;
    let mut q = vec![COM_QUERY];
    q.extend_from_slice(b"SELECT 1");
    w.write(&q).await?;
    let p = w.read("SELECT 1").await?;
    if p != [0x01] {
        return Err(unexpected("SELECT 1", &p));
    }
    let mut eofs = 0;
    let mut rows = Vec::new();
    while eofs < 2 {
        let p = w.read("SELECT 1").await?;
        match p.first() {
            Some(0xff) => return Err(err_text("mysql: SELECT 1", &p)),
            Some(0xfe) if p.len() < 9 => eofs += 1,
            _ if eofs == 1 => {
                if rows.len() > 8 {
                    return Err("mysql: SELECT 1 returned more than 8 rows".into());
                }
                rows.push(p)
            }
            _ => {}
        }
    }
    if rows != [vec![1, b'1']] {
        return Err(format!(
            "mysql: SELECT 1 returned {} rows, not one row 1",
            rows.len()
        ));
    }
    Ok(())
}

/// An ERR packet as one line: `PREFIX: ERR 1045 Access denied …`.
fn err_text(prefix: &str, p: &[u8]) -> String {
    match ParseBuf(p).parse::<ErrPacket>(CapabilityFlags::CLIENT_PROTOCOL_41) {
        Ok(ErrPacket::Error(e)) => format!(
            "{prefix}: ERR {} {}",
            e.error_code(),
            printable(e.message_ref())
        ),
        _ => format!("{prefix}: a malformed ERR packet"),
    }
}

fn unexpected(what: &str, p: &[u8]) -> String {
    match p.first() {
        Some(0xff) => err_text(&format!("mysql: {what}"), p),
        b => format!(
            "mysql: {what}: unexpected packet {:#04x}",
            b.copied().unwrap_or(0)
        ),
    }
}

/// Text from a server, fit for a log line.
fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests;
