//! Kernel parameters through procfs (never the `sysctl` program). Keys are dotted, as in
//! `sysctl.conf`; they resolve in the caller's network namespace.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {key} ({path}): {source}")]
    Read {
        key: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set {key} to {value} ({path}): {source}")]
    Write {
        key: String,
        value: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} holds `{value}`, not a number")]
    NotANumber { key: String, value: String },
}

pub fn path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

pub fn read(key: &str) -> Result<String, SysctlError> {
    let p = path(key);
    std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError::Read {
            key: key.into(),
            path: p,
            source,
        })
}

pub fn read_u32(key: &str) -> Result<u32, SysctlError> {
    let v = read(key)?;
    v.parse().map_err(|_| SysctlError::NotANumber {
        key: key.into(),
        value: v,
    })
}

pub fn write(key: &str, value: &str) -> Result<(), SysctlError> {
    let p = path(key);
    std::fs::write(&p, value).map_err(|source| SysctlError::Write {
        key: key.into(),
        value: value.into(),
        path: p,
        source,
    })
}

/// `/proc/sys/net/ipv4/conf/<dev>/<name>`, built from the device name directly: a dotted
/// sysctl key cannot name a device with a dot in it (`eth0.100`).
pub fn ipv4_conf_path(dev: &str, name: &str) -> PathBuf {
    PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(dev)
        .join(name)
}

/// The key as `sysctl.conf` and messages spell it.
pub fn ipv4_conf_key(dev: &str, name: &str) -> String {
    format!("net.ipv4.conf.{dev}.{name}")
}

pub fn ipv4_conf_read(dev: &str, name: &str) -> Result<u32, SysctlError> {
    let key = ipv4_conf_key(dev, name);
    let p = ipv4_conf_path(dev, name);
    let v = std::fs::read_to_string(&p)
        .map(|s| s.trim().to_string())
        .map_err(|source| SysctlError::Read {
            key: key.clone(),
            path: p,
            source,
        })?;
    v.parse()
        .map_err(|_| SysctlError::NotANumber { key, value: v })
}

pub fn ipv4_conf_write(dev: &str, name: &str, v: u32) -> Result<(), SysctlError> {
    let p = ipv4_conf_path(dev, name);
    std::fs::write(&p, v.to_string()).map_err(|source| SysctlError::Write {
        key: ipv4_conf_key(dev, name),
        value: v.to_string(),
        path: p,
        source,
    })
}

/// The value the kernel uses for `dev` of a setting that is IN_DEV_MAXCONF (rp_filter,
/// arp_ignore, arp_announce): the larger of `conf/all` and `conf/<dev>`.
pub fn ipv4_conf_effective(dev: &str, name: &str) -> Result<u32, SysctlError> {
    Ok(ipv4_conf_read("all", name)?.max(ipv4_conf_read(dev, name)?))
}
