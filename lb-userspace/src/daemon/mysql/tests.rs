//! The check against scripted servers: every byte a server sends is written here by hand, and
//! what the check sends is read back by hand, independently of `mysql_common`.
use super::{Login, Tls, check, wire::Wire};
use crate::daemon::config::Secret;
use sha2::{Digest as _, Sha256};
use std::{future::Future, net::Ipv4Addr, time::Duration};
use tokio::net::{TcpListener, TcpStream};

const PASSWORD: &str = "monitor-secret";
const SCRAMBLE: &[u8; 20] = b"abcdefghijklmnopqrst";
/// mysql_native_password's token for PASSWORD and SCRAMBLE, computed with Python's hashlib.
const NATIVE_TOKEN: &str = "fb188f8fae3a63ff8edab5d40a306ffdb9f7383f";
const CLIENT_SSL: u32 = 0x800;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A HandshakeV10 from MySQL 8.0 whose default plugin is `plugin`.
fn greeting(plugin: &str, ssl: bool) -> Vec<u8> {
    let caps: u32 = 0x000f_f7ff & !CLIENT_SSL | if ssl { CLIENT_SSL } else { 0 };
    let mut p = vec![0x0a];
    p.extend_from_slice(b"8.0.36\0");
    p.extend_from_slice(&7u32.to_le_bytes());
    p.extend_from_slice(&SCRAMBLE[..8]);
    p.push(0);
    p.extend_from_slice(&(caps as u16).to_le_bytes());
    p.push(255);
    p.extend_from_slice(&2u16.to_le_bytes());
    p.extend_from_slice(&((caps >> 16) as u16).to_le_bytes());
    p.push(21);
    p.extend_from_slice(&[0; 10]);
    p.extend_from_slice(&SCRAMBLE[8..]);
    p.push(0);
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    p
}

/// HandshakeResponse41: capabilities, user, auth response, plugin.
fn response(p: &[u8]) -> (u32, String, Vec<u8>, String) {
    let caps = u32::from_le_bytes(p[..4].try_into().unwrap());
    let rest = &p[32..];
    let end = rest.iter().position(|&b| b == 0).unwrap();
    let user = String::from_utf8_lossy(&rest[..end]).into_owned();
    let n = rest[end + 1] as usize;
    let auth = rest[end + 2..end + 2 + n].to_vec();
    let plugin = &rest[end + 2 + n..];
    let plugin = String::from_utf8_lossy(plugin.strip_suffix(&[0]).unwrap_or(plugin)).into_owned();
    (caps, user, auth, plugin)
}

/// caching_sha2_password's scramble: SHA256(p) XOR SHA256(SHA256(SHA256(p)) || nonce).
fn sha2_token(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    let h1 = Sha256::digest(password);
    let h2 = Sha256::digest(h1);
    let h3 = Sha256::new()
        .chain_update(h2)
        .chain_update(nonce)
        .finalize();
    h1.iter().zip(h3.iter()).map(|(a, b)| a ^ b).collect()
}

const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];

fn err_1045() -> Vec<u8> {
    let mut e = vec![0xff, 0x15, 0x04];
    e.extend_from_slice(b"#28000Access denied for user 'monitor'");
    e
}

/// `SELECT 1` answered as MySQL does, then COM_QUIT.
async fn answer_select_1(w: &mut Wire) {
    assert_eq!(w.read("query").await.unwrap(), b"\x03SELECT 1");
    w.write(&[1]).await.unwrap();
    w.write(b"\x03def\0\0\0\x011\0\x0c\x3f\0\x01\0\0\0\x08\x81\0\0\0\0")
        .await
        .unwrap();
    w.write(&[0xfe, 0, 0, 2, 0]).await.unwrap();
    w.write(b"\x011").await.unwrap();
    w.write(&[0xfe, 0, 0, 2, 0]).await.unwrap();
    assert_eq!(w.read("quit").await.unwrap(), [super::COM_QUIT]);
}

/// One connection to a server running `script`, checked with `tls`; returns the check's result
/// and asserts the script ran to its end.
async fn against<F, Fut>(tls: Tls, script: F) -> Result<String, String>
where
    F: FnOnce(Wire) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        script(Wire {
            s: Box::new(c),
            seq: 0,
        })
        .await;
    });
    let secret = Secret::new(PASSWORD.into());
    let s = TcpStream::connect(addr).await.unwrap();
    let login = Login {
        user: "monitor",
        password: Some(&secret),
        tls,
    };
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        check(s, Ipv4Addr::LOCALHOST, Some(login)),
    )
    .await
    .expect("the check hung");
    server.await.expect("the scripted server failed");
    if let Err(e) = &r {
        assert!(!e.contains(PASSWORD), "the password leaked: {e}");
    }
    r
}

/// The case: MySQL 8's default plugin, the password in the server's cache.
#[tokio::test]
async fn caching_sha2_fast_auth() {
    let r = against(Tls::Preferred, |mut w| async move {
        w.write(&greeting("caching_sha2_password", false))
            .await
            .unwrap();
        let (caps, user, auth, plugin) = response(&w.read("response").await.unwrap());
        assert_eq!(caps & CLIENT_SSL, 0);
        assert_eq!(
            (user.as_str(), plugin.as_str()),
            ("monitor", "caching_sha2_password")
        );
        assert_eq!(hex(&auth), hex(&sha2_token(PASSWORD.as_bytes(), SCRAMBLE)));
        w.write(&[0x01, 0x03]).await.unwrap();
        w.write(OK).await.unwrap();
        answer_select_1(&mut w).await;
    })
    .await;
    assert_eq!(r, Ok("8.0.36".into()));
}

/// Not cached and no TLS: the check asks for the server's RSA key and sends the password
/// encrypted with it (here refused, as a wrong password would be).
#[tokio::test]
async fn caching_sha2_full_auth_encrypts_with_the_servers_key() {
    let r = against(Tls::Off, |mut w| async move {
        w.write(&greeting("caching_sha2_password", true))
            .await
            .unwrap();
        let (caps, ..) = response(&w.read("response").await.unwrap());
        assert_eq!(caps & CLIENT_SSL, 0, "tls = off");
        w.write(&[0x01, 0x04]).await.unwrap();
        assert_eq!(w.read("key request").await.unwrap(), [0x02]);
        let mut key = vec![0x01];
        key.extend_from_slice(RSA_PUBLIC_KEY.as_bytes());
        w.write(&key).await.unwrap();
        let sealed = w.read("encrypted password").await.unwrap();
        assert_eq!(sealed.len(), 256);
        assert!(
            !sealed
                .windows(PASSWORD.len())
                .any(|x| x == PASSWORD.as_bytes())
        );
        w.write(&err_1045()).await.unwrap();
    })
    .await;
    assert_eq!(
        r,
        Err("mysql: login: ERR 1045 Access denied for user 'monitor'".into())
    );
}

/// ProxySQL and MariaDB answer a caching_sha2 greeting's client with a switch to native.
#[tokio::test]
async fn auth_switch_to_native_password() {
    let r = against(Tls::Preferred, |mut w| async move {
        w.write(&greeting("caching_sha2_password", false))
            .await
            .unwrap();
        w.read("response").await.unwrap();
        let mut switch = vec![0xfe];
        switch.extend_from_slice(b"mysql_native_password\0");
        switch.extend_from_slice(SCRAMBLE);
        switch.push(0);
        w.write(&switch).await.unwrap();
        assert_eq!(hex(&w.read("token").await.unwrap()), NATIVE_TOKEN);
        w.write(OK).await.unwrap();
        answer_select_1(&mut w).await;
    })
    .await;
    assert_eq!(r, Ok("8.0.36".into()));
}

/// TLS when required and offered: SSLRequest, the handshake, then the login inside it, where
/// caching_sha2's full authentication sends the password itself.
#[tokio::test]
async fn tls_then_caching_sha2_full_auth() {
    let r = against(Tls::Required, |mut w| async move {
        w.write(&greeting("caching_sha2_password", true))
            .await
            .unwrap();
        let req = w.read("SSLRequest").await.unwrap();
        assert_eq!(req.len(), 32);
        assert_ne!(
            u32::from_le_bytes(req[..4].try_into().unwrap()) & CLIENT_SSL,
            0
        );
        let seq = w.seq;
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let key =
            tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der())
                .unwrap();
        let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(
            super::wire::provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let tls = acceptor.accept(w.s).await.unwrap();
        let mut w = Wire {
            s: Box::new(tls),
            seq,
        };
        let (caps, user, ..) = response(&w.read("response").await.unwrap());
        assert_ne!(caps & CLIENT_SSL, 0);
        assert_eq!(user, "monitor");
        w.write(&[0x01, 0x04]).await.unwrap();
        assert_eq!(w.read("password").await.unwrap(), b"monitor-secret\0");
        w.write(OK).await.unwrap();
        answer_select_1(&mut w).await;
    })
    .await;
    assert_eq!(r, Ok("8.0.36".into()));
}

#[tokio::test]
async fn tls_required_and_not_offered_fails_before_the_login() {
    let r = against(Tls::Required, |mut w| async move {
        w.write(&greeting("mysql_native_password", false))
            .await
            .unwrap();
        assert!(w.read("nothing").await.is_err(), "the check sent a login");
    })
    .await;
    assert_eq!(
        r,
        Err("mysql: tls = \"required\", but 8.0.36 does not offer TLS".into())
    );
}

#[tokio::test]
async fn a_cleartext_request_outside_tls_is_refused() {
    let r = against(Tls::Off, |mut w| async move {
        w.write(&greeting("mysql_native_password", false))
            .await
            .unwrap();
        w.read("response").await.unwrap();
        w.write(b"\xfemysql_clear_password\0").await.unwrap();
        assert!(
            w.read("nothing").await.is_err(),
            "the password went out in clear"
        );
    })
    .await;
    assert!(r.unwrap_err().contains("cleartext password outside TLS"));
}

#[test]
fn greetings_and_refusals_parse() {
    let bytes = greeting("mysql_native_password", false);
    let g = super::greeting(&bytes).unwrap();
    assert_eq!(g.nonce(), SCRAMBLE);
    let mut err = vec![0xff];
    err.extend_from_slice(&1040u16.to_le_bytes());
    err.extend_from_slice(b"#08004Too many connections");
    assert_eq!(
        super::greeting(&err).err().unwrap(),
        "mysql: ERR 1040 Too many connections"
    );
    assert!(super::greeting(&[9, 1, 2]).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Whatever a backend greets with: an answer, never a panic.
    #[test]
    fn any_greeting_is_an_answer(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let _ = super::greeting(&bytes);
        let mut g = greeting("caching_sha2_password", true);
        let n = bytes.len() % g.len();
        g.truncate(n);
        g.extend_from_slice(&bytes);
        let _ = super::greeting(&g);
    }

    /// Whatever a backend answers a login with, then closing: the check ends, with an error
    /// that does not hold the password.
    #[test]
    fn any_login_answer_ends_the_check(
        answers in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..80), 0..5),
        first in 0u8..4,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let _ = against(Tls::Off, move |mut w| async move {
                w.write(&greeting("caching_sha2_password", false)).await.unwrap();
                let _ = w.read("response").await;
                for (i, mut a) in answers.into_iter().enumerate() {
                    // Steer the first answer into each branch of the exchange.
                    if i == 0 && !a.is_empty() {
                        a[0] = [0x00, 0x01, 0xfe, 0xff][first as usize];
                    }
                    if w.write(&a).await.is_err() {
                        return;
                    }
                }
            })
            .await;
        });
    }
}

/// A 2048-bit RSA public key (openssl genrsa 2048).
const RSA_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAi5drLKOnqDoGRcpr0CWF
zgtjiKl9vruxw6dYjosVVC9jv3A5fbCGIPRvUNk1nHJ3SW+DHAciUh3p1i+Dc6VC
hj2C/KaYUcplSFXiNnMKEtIHNZPhlQd9k80WUJFRUi+6rusyBExw6JnO4EeULHqa
67txIhCI9LGlXzY1wgKaxhUqGCTw/1zmnQMx3uNxzFxJfmKyDlezBcZsmtlcVpt9
0J/htaAyCROQjlW29kUBBLT6g4Ead+M05YgDA6NIimjiJvj54s8iDtDx+k+K3eQa
FfLkVN3x9FIjALnKl1j8QjPR5FyAICtu91RBCX5/IZ+JYrfnto2gmN45FHklPe/b
twIDAQAB
-----END PUBLIC KEY-----
";
