//! The few rtnetlink queries the director needs, run on a private current-thread runtime so
//! synchronous callers (the CLI) can use them.

use futures::TryStreamExt as _;
use netlink_packet_route::address::AddressAttribute;
use std::net::{IpAddr, Ipv4Addr};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink: {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("netlink: {what}: {source}")]
    Rtnetlink {
        what: String,
        source: rtnetlink::Error,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, NetlinkError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| NetlinkError::Io {
            what: "starting a runtime".into(),
            source,
        })
}

/// IPv4 addresses of the interface, primary first (as the kernel lists them).
pub fn ipv4_addrs(ifindex: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
    runtime()?.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|source| NetlinkError::Io {
            what: "opening a socket".into(),
            source,
        })?;
        tokio::spawn(conn);
        let mut stream = handle
            .address()
            .get()
            .set_link_index_filter(ifindex)
            .execute();
        let mut out = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|source| NetlinkError::Rtnetlink {
                what: format!("listing addresses of ifindex {ifindex}"),
                source,
            })?
        {
            for attr in msg.attributes {
                if let AddressAttribute::Local(IpAddr::V4(a)) = attr {
                    out.push(a);
                }
            }
        }
        Ok(out)
    })
}
