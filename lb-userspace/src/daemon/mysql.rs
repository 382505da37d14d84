//! Just enough of the MySQL protocol for a health check: the server's greeting
//! (HandshakeV10, or an ERR packet such as 1040 *Too many connections*), and, with credentials,
//! a mysql_native_password login, `SELECT 1` and COM_QUIT. Secrets never reach an error text.

use super::config::Secret;
use sha1::{Digest as _, Sha1};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// What the server said in its greeting (only what a check may log: no auth data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub thread_id: u32,
    /// Capability flags (lower and upper halves).
    pub capabilities: u32,
    /// auth-plugin-data (parts 1 and 2): the nonce a password is scrambled with. Never logged.
    pub scramble: Vec<u8>,
    /// Empty when the server does not say (pre-4.1 style).
    pub auth_plugin: String,
}

/// Longest greeting accepted (a real one is ~80 bytes).
const MAX_GREETING: usize = 4096;

pub async fn read_greeting(s: &mut TcpStream) -> Result<Greeting, String> {
    let mut hdr = [0u8; 4];
    read_exact(s, &mut hdr, "greeting's header").await?;
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
    if len == 0 || len > MAX_GREETING {
        return Err(format!("mysql: bad packet length {len}"));
    }
    let mut payload = vec![0u8; len];
    read_exact(s, &mut payload, "greeting's payload").await?;
    parse_greeting(hdr[3], &payload)
}

async fn read_exact(s: &mut TcpStream, buf: &mut [u8], what: &str) -> Result<(), String> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(format!("mysql: connection closed before the {what}"))
        }
        Err(e) => Err(format!("mysql: reading the {what}: {e}")),
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
    let mut scramble = rest[4..12].to_vec();
    let mut capabilities = 0u32;
    let mut auth_plugin = String::new();
    // capability_flags_1 (2) charset (1) status (2) capability_flags_2 (2) auth data length (1)
    // reserved (10), then part 2 of the auth data and the plugin name.
    let more = &rest[13..];
    if more.len() >= 18 {
        capabilities = u32::from(u16::from_le_bytes([more[0], more[1]]))
            | u32::from(u16::from_le_bytes([more[5], more[6]])) << 16;
        let data_len = more[7] as usize;
        let tail = &more[18..];
        if capabilities & CLIENT_SECURE_CONNECTION != 0 {
            let part2 = data_len.saturating_sub(8).max(13).min(tail.len());
            // The last byte of part 2 is a NUL terminator, not data.
            let data = &tail[..part2];
            scramble.extend_from_slice(data.strip_suffix(&[0]).unwrap_or(data));
            if capabilities & CLIENT_PLUGIN_AUTH != 0 {
                let name = &tail[part2..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                auth_plugin = printable(&name[..end]);
            }
        }
    }
    Ok(Greeting {
        server_version: version,
        thread_id: u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]),
        capabilities,
        scramble,
        auth_plugin,
    })
}

fn printable(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect()
}

const CLIENT_LONG_PASSWORD: u32 = 1;
const CLIENT_PROTOCOL_41: u32 = 0x200;
const CLIENT_TRANSACTIONS: u32 = 0x2000;
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
const NATIVE_PASSWORD: &str = "mysql_native_password";
const COM_QUERY: u8 = 0x03;
const COM_QUIT: u8 = 0x01;

/// mysql_native_password: SHA1(password) XOR SHA1(scramble + SHA1(SHA1(password))).
pub fn native_password_token(password: &[u8], scramble: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let h1 = Sha1::digest(password);
    let h2 = Sha1::digest(h1);
    let mut h = Sha1::new();
    h.update(scramble);
    h.update(h2);
    let h3 = h.finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

/// HandshakeResponse41 for `user` with a mysql_native_password token.
pub fn handshake_response(user: &str, token: &[u8]) -> Vec<u8> {
    let caps = CLIENT_LONG_PASSWORD
        | CLIENT_PROTOCOL_41
        | CLIENT_TRANSACTIONS
        | CLIENT_SECURE_CONNECTION
        | CLIENT_PLUGIN_AUTH;
    let mut p = Vec::with_capacity(64 + user.len());
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&(1u32 << 24).to_le_bytes());
    p.push(33); // utf8_general_ci
    p.extend_from_slice(&[0; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(token.len() as u8);
    p.extend_from_slice(token);
    p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
    p.push(0);
    p
}

async fn write_packet(s: &mut TcpStream, seq: u8, payload: &[u8]) -> Result<(), String> {
    let len = payload.len() as u32;
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_le_bytes()[..3]);
    buf.push(seq);
    buf.extend_from_slice(payload);
    s.write_all(&buf)
        .await
        .map_err(|e| format!("mysql: writing: {e}"))
}

async fn read_packet(s: &mut TcpStream, what: &str) -> Result<(u8, Vec<u8>), String> {
    let mut hdr = [0u8; 4];
    read_exact(s, &mut hdr, &format!("{what} answer")).await?;
    let len = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], 0]) as usize;
    if len > MAX_GREETING {
        return Err(format!("mysql: {what}: packet of {len} bytes"));
    }
    let mut payload = vec![0u8; len];
    read_exact(s, &mut payload, &format!("{what} answer")).await?;
    Ok((hdr[3], payload))
}

fn err_packet(p: &[u8], what: &str) -> String {
    match parse_greeting(0, p) {
        Err(e) if p.first() == Some(&0xff) => e.replacen("mysql:", &format!("mysql: {what}:"), 1),
        _ => format!(
            "mysql: {what}: unexpected packet {:#04x}",
            p.first().copied().unwrap_or(0)
        ),
    }
}

/// Logs in as `user` (mysql_native_password, also after an auth switch) and runs `SELECT 1`,
/// expecting exactly one row `1`; then says COM_QUIT. Errors never contain the password.
pub async fn authenticate_and_select(
    s: &mut TcpStream,
    greeting: &Greeting,
    user: &str,
    password: Option<&Secret>,
) -> Result<(), String> {
    let pw = password.map(|p| p.expose().as_bytes()).unwrap_or(b"");
    // A server whose default plugin is another one answers with an auth switch.
    let token = native_password_token(pw, &greeting.scramble);
    write_packet(s, 1, &handshake_response(user, &token)).await?;
    let (mut seq, mut p) = read_packet(s, "login").await?;
    if p.first() == Some(&0xfe) && p.len() > 1 {
        // AuthSwitchRequest: plugin name NUL, new scramble (NUL-terminated).
        let body = &p[1..];
        let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
        let plugin = printable(&body[..end]);
        if plugin != NATIVE_PASSWORD {
            return Err(format!(
                "mysql: login: the server wants auth plugin {plugin}; the check speaks only \
                 {NATIVE_PASSWORD} (create the monitor user WITH {NATIVE_PASSWORD})"
            ));
        }
        let data = body.get(end + 1..).unwrap_or(&[]);
        let scramble = data.strip_suffix(&[0]).unwrap_or(data);
        let token = native_password_token(pw, scramble);
        write_packet(s, seq.wrapping_add(1), &token).await?;
        (seq, p) = read_packet(s, "login").await?;
    }
    let _ = seq;
    if p.first() != Some(&0x00) {
        return Err(err_packet(&p, "login"));
    }
    let mut q = vec![COM_QUERY];
    q.extend_from_slice(b"SELECT 1");
    write_packet(s, 0, &q).await?;
    let (_, p) = read_packet(s, "SELECT 1").await?;
    if p != [0x01] {
        return Err(err_packet(&p, "SELECT 1"));
    }
    // Column definition, EOF, rows..., EOF (no CLIENT_DEPRECATE_EOF was asked for).
    let mut eofs = 0;
    let mut rows = Vec::new();
    while eofs < 2 {
        let (_, p) = read_packet(s, "SELECT 1").await?;
        match p.first() {
            Some(0xff) => return Err(err_packet(&p, "SELECT 1")),
            Some(0xfe) if p.len() < 9 => eofs += 1,
            _ if eofs == 1 => rows.push(p),
            _ => {}
        }
    }
    if rows != [vec![1, b'1']] {
        return Err(format!(
            "mysql: SELECT 1 returned {} rows, not one row 1",
            rows.len()
        ));
    }
    let _ = write_packet(s, 0, &[COM_QUIT]).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::{
        config::CheckConfig,
        healthcheck::{CheckTarget, run_check},
    };
    use std::net::{SocketAddr, SocketAddrV4};

    fn greeting() -> Vec<u8> {
        let mut p = vec![0x0a];
        p.extend_from_slice(b"5.5.30 (ProxySQL)\0");
        p.extend_from_slice(&7u32.to_le_bytes());
        p.extend_from_slice(b"abcdefgh");
        p.push(0);
        p.extend_from_slice(&[0xff, 0xf7, 33, 2, 0, 0x0f, 0x80, 21]);
        p.extend_from_slice(&[0; 10]);
        p.extend_from_slice(b"ijklmnopqrst\0mysql_native_password\0");
        p
    }

    /// Computed independently (Python hashlib) for "monitor-secret" and the greeting's scramble.
    const TOKEN: &str = "fb188f8fae3a63ff8edab5d40a306ffdb9f7383f";

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn scramble_and_token() {
        let g = parse_greeting(0, &greeting()).unwrap();
        assert_eq!(g.scramble, b"abcdefghijklmnopqrst");
        assert_eq!(g.auth_plugin, "mysql_native_password");
        assert_eq!(
            hex(&native_password_token(b"monitor-secret", &g.scramble)),
            TOKEN
        );
        assert!(native_password_token(b"", &g.scramble).is_empty());
    }

    fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = (payload.len() as u32).to_le_bytes()[..3].to_vec();
        p.push(seq);
        p.extend_from_slice(payload);
        p
    }

    /// A MySQL server on loopback that accepts only `monitor` with TOKEN and answers SELECT 1.
    /// Returns its address and what it was told (user, token) per connection.
    async fn fake_server() -> (
        SocketAddrV4,
        tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = l.local_addr().unwrap() else {
            unreachable!()
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    c.write_all(&frame(0, &greeting())).await.unwrap();
                    let (_, resp) = read_packet(&mut c, "response").await.unwrap();
                    let rest = &resp[32..];
                    let end = rest.iter().position(|&b| b == 0).unwrap();
                    let user = String::from_utf8_lossy(&rest[..end]).to_string();
                    let n = rest[end + 1] as usize;
                    let token = hex(&rest[end + 2..end + 2 + n]);
                    let _ = tx.send((user.clone(), token.clone()));
                    if user != "monitor" || token != TOKEN {
                        let mut e = vec![0xff, 0x15, 0x04];
                        e.extend_from_slice(b"#28000Access denied for user 'monitor'");
                        c.write_all(&frame(2, &e)).await.unwrap();
                        return;
                    }
                    c.write_all(&frame(2, &[0, 0, 0, 2, 0, 0, 0]))
                        .await
                        .unwrap();
                    let (_, q) = read_packet(&mut c, "query").await.unwrap();
                    assert_eq!(q, b"\x03SELECT 1");
                    let mut out = frame(1, &[1]);
                    out.extend(frame(
                        2,
                        b"\x03def\0\0\0\x011\0\x0c\x3f\0\x01\0\0\0\x08\x81\0\0\0\0",
                    ));
                    out.extend(frame(3, &[0xfe, 0, 0, 2, 0]));
                    out.extend(frame(4, b"\x011"));
                    out.extend(frame(5, &[0xfe, 0, 0, 2, 0]));
                    c.write_all(&out).await.unwrap();
                    let (_, quit) = read_packet(&mut c, "quit").await.unwrap();
                    assert_eq!(quit, [COM_QUIT]);
                });
            }
        });
        (addr, rx)
    }

    fn mysql_check(user: &str, password: &str, port: u16) -> CheckConfig {
        let text = format!(
            "iface = \"lo\"\n[[service]]\nvip = \"10.0.0.1\"\nport = {port}\n\
             [service.check]\ntype = \"mysql\"\nvia = \"direct\"\nuser = \"{user}\"\n\
             password = \"{password}\"\n[[service.real]]\naddress = \"127.0.0.1\"\n"
        );
        let c = crate::daemon::config::parse(std::path::Path::new("t.toml"), &text).unwrap();
        c.services[0].reals[0].check.clone()
    }

    #[tokio::test]
    async fn select_1_with_credentials() {
        let (addr, mut seen) = fake_server().await;
        let good = mysql_check("monitor", "monitor-secret", addr.port());
        assert!(!format!("{good:?}").contains("monitor-secret"), "{good:?}");
        run_check(&CheckTarget::Direct(addr), &good).await.unwrap();
        assert_eq!(
            seen.recv().await.unwrap(),
            ("monitor".to_string(), TOKEN.to_string())
        );
        let bad = mysql_check("monitor", "wrong-secret", addr.port());
        let e = run_check(&CheckTarget::Direct(addr), &bad)
            .await
            .unwrap_err();
        assert_eq!(e, "mysql: login: ERR 1045 Access denied for user 'monitor'");
        assert!(!e.contains("secret"));
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
}
