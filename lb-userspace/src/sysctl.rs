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
