//! `[sync]` in the daemon's configuration file:
//!
//! ```toml
//! [sync]
//! listen = "198.18.0.2:8849"        # this director's address and port (UDP)
//! peers = ["198.18.0.3:8849"]       # the other directors
//! key_file = "/etc/lbadm/sync.key"  # the shared secret (or key = "…"), at least 16 bytes
//! refresh = "30s"                   # resend live connections this often (default 30s)
//! learn_timeout = "5s"              # serve alone if no peer answers within this (default 5s)
//! ```

use super::wire::MIN_KEY_LEN;
use crate::daemon::config::{ConfigError, Dur, ErrAt, Secret};
use serde::Deserialize;
use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    pub listen: SocketAddrV4,
    pub peers: Vec<SocketAddrV4>,
    /// The HMAC key; its `Debug` prints `***`.
    pub key: Secret,
    pub refresh: Duration,
    pub learn_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSync {
    listen: Spanned<SocketAddr>,
    peers: Option<Spanned<Vec<SocketAddr>>>,
    key: Option<Spanned<Secret>>,
    key_file: Option<Spanned<PathBuf>>,
    refresh: Option<Spanned<Dur>>,
    learn_timeout: Option<Dur>,
}

fn v4(a: &Spanned<SocketAddr>, field: &str, err: &ErrAt) -> Result<SocketAddrV4, ConfigError> {
    match a.get_ref() {
        SocketAddr::V4(v) if v.port() != 0 => Ok(*v),
        other => Err(err(
            Some(a.span()),
            field,
            format!("{other} is not an IPv4 address with a port"),
        )),
    }
}

pub fn validate(raw: &RawSync, file: &Path, err: &ErrAt) -> Result<SyncConfig, ConfigError> {
    let listen = v4(&raw.listen, "sync.listen", err)?;
    let span = raw.peers.as_ref().map_or(raw.listen.span(), |p| p.span());
    let mut peers = Vec::new();
    for a in raw
        .peers
        .as_ref()
        .map(|p| p.get_ref().as_slice())
        .unwrap_or(&[])
    {
        let p = v4(&Spanned::new(span.clone(), *a), "sync.peers", err)?;
        if p.ip() == listen.ip() || peers.iter().any(|q: &SocketAddrV4| q.ip() == p.ip()) {
            return Err(err(
                Some(span),
                "sync.peers",
                format!(
                    "{} is listed twice, or is this director's own address",
                    p.ip()
                ),
            ));
        }
        peers.push(p);
    }
    if peers.is_empty() {
        return Err(err(
            Some(span),
            "sync.peers",
            "name at least one other director (\"ADDR:PORT\")".into(),
        ));
    }
    let key = match (&raw.key, &raw.key_file) {
        (Some(k), None) => Spanned::new(k.span(), k.get_ref().clone()),
        (None, Some(f)) => {
            let p = if f.get_ref().is_relative() {
                file.parent().unwrap_or(Path::new(".")).join(f.get_ref())
            } else {
                f.get_ref().clone()
            };
            let text = std::fs::read_to_string(&p).map_err(|e| {
                err(
                    Some(f.span()),
                    "sync.key_file",
                    format!("cannot read {}: {e}", p.display()),
                )
            })?;
            Spanned::new(f.span(), Secret::new(text.trim().to_string()))
        }
        _ => {
            return Err(err(
                Some(raw.listen.span()),
                "sync.key",
                "give exactly one of key and key_file: the secret every director shares".into(),
            ));
        }
    };
    if key.get_ref().expose().len() < MIN_KEY_LEN {
        return Err(err(
            Some(key.span()),
            "sync.key",
            format!(
                "the key is shorter than {MIN_KEY_LEN} bytes (e.g. `head -c 32 /dev/urandom | base64`)"
            ),
        ));
    }
    let refresh = raw.refresh.as_ref().map(|d| d.get_ref().0);
    if let (Some(r), Some(span)) = (refresh, raw.refresh.as_ref().map(|d| d.span()))
        && r < Duration::from_secs(1)
    {
        return Err(err(
            Some(span),
            "sync.refresh",
            "must be at least 1s".into(),
        ));
    }
    Ok(SyncConfig {
        listen,
        peers,
        key: key.into_inner(),
        refresh: refresh.unwrap_or(Duration::from_secs(30)),
        learn_timeout: raw
            .learn_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(5)),
    })
}

#[cfg(test)]
mod tests {
    use crate::daemon::config::parse;
    use std::path::Path;

    const BASE: &str =
        "iface = \"eth0\"\nallow_no_services = true\n[sync]\nlisten = \"198.18.0.2:8849\"\n";

    fn p(
        extra: &str,
    ) -> Result<crate::daemon::config::DaemonConfig, crate::daemon::config::ConfigError> {
        parse(Path::new("/nonexistent/t.toml"), &format!("{BASE}{extra}"))
    }

    #[test]
    fn a_good_section() {
        let c = p("peers = [\"198.18.0.3:8849\"]\nkey = \"0123456789abcdef\"\n").unwrap();
        let s = c.sync.unwrap();
        assert_eq!(s.peers.len(), 1);
        assert_eq!(s.refresh.as_secs(), 30);
        assert!(!format!("{s:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            ("key = \"0123456789abcdef\"\n", "sync.peers"),
            (
                "peers = [\"198.18.0.2:8849\"]\nkey = \"0123456789abcdef\"\n",
                "sync.peers",
            ),
            (
                "peers = [\"198.18.0.3:8849\"]\nkey = \"short\"\n",
                "sync.key",
            ),
            ("peers = [\"198.18.0.3:8849\"]\n", "sync.key"),
            (
                "peers = [\"198.18.0.3:8849\"]\nkey_file = \"missing.key\"\n",
                "sync.key_file",
            ),
            (
                "peers = [\"[::1]:8849\"]\nkey = \"0123456789abcdef\"\n",
                "sync.peers",
            ),
            (
                "peers = [\"198.18.0.3:8849\"]\nkey = \"0123456789abcdef\"\nrefresh = \"10ms\"\n",
                "sync.refresh",
            ),
        ];
        for (extra, field) in cases {
            let e = p(extra).unwrap_err();
            assert_eq!(e.field, field, "{extra}: {e}");
            assert!(!e.to_string().contains("0123456789abcdef"), "{e}");
        }
    }
}
