//! rtnetlink, the one wrapper: links, addresses and the default route, on a private
//! current-thread runtime so synchronous callers (the CLI) can use it; and the daemon's
//! announced VIP routes, async in the daemon's runtime. The requests that change something are
//! built by separate functions so their exact bytes can be unit-tested.

use futures::TryStreamExt as _;
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage, LinkXdp},
    route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope},
};
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};
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

impl NetlinkError {
    /// The errno of a kernel netlink error (positive), if it is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Rtnetlink {
                source: rtnetlink::Error::NetlinkError(m),
                ..
            } => m.code.map(|c| -c.get()),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, NetlinkError>;

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Rtnetlink { what, source }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// RTM_NEWLINK setting IFF_UP (or clearing it) on `index`, nothing else.
pub fn link_up_message(index: u32, up: bool) -> LinkMessage {
    let b = LinkUnspec::new_with_index(index);
    if up { b.up() } else { b.down() }.build()
}

/// RTM_NEWADDR / RTM_DELADDR for `addr/32` on `index`.
pub fn host_address_message(index: u32, addr: Ipv4Addr) -> AddressMessage {
    AddressMessageBuilder::<Ipv4Addr>::new()
        .index(index)
        .address(addr, 32)
        .build()
}

/// The routing protocol number lbadm's own routes carry (`ip route … proto 252`), so routing
/// daemons that learn from the kernel can tell them apart.
pub const RTPROT_LBADM: u8 = 252;

/// RTM_NEWROUTE / RTM_DELROUTE for `addr/32 dev lo` in `table`, proto [`RTPROT_LBADM`]: what
/// the daemon announces through a routing daemon that learns that table.
pub fn host_route_message(table: u32, addr: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(addr, 32)
        .table_id(table)
        .output_interface(1)
        .scope(RouteScope::Link)
        .protocol(RouteProtocol::Other(RTPROT_LBADM))
        .build()
}

/// The destination of `m` if it is one of lbadm's host routes in `table`.
pub fn our_host_route(m: &RouteMessage, table: u32) -> Option<Ipv4Addr> {
    if m.header.destination_prefix_length != 32
        || m.header.protocol != RouteProtocol::Other(RTPROT_LBADM)
    {
        return None;
    }
    let mut t = m.header.table as u32;
    let mut dst = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(x) => t = *x,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            _ => {}
        }
    }
    dst.filter(|_| t == table)
}

/// The /32 destinations of lbadm's routes in `table`.
pub async fn host_routes(h: &rtnetlink::Handle, table: u32) -> Result<Vec<Ipv4Addr>> {
    let mut s = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    let mut out = Vec::new();
    while let Some(m) = s.try_next().await.map_err(nl("listing routes"))? {
        out.extend(our_host_route(&m, table));
    }
    Ok(out)
}

/// Adds (or keeps) `addr/32 dev lo` in `table`.
pub async fn add_host_route(h: &rtnetlink::Handle, table: u32, addr: Ipv4Addr) -> Result<()> {
    h.route()
        .add(host_route_message(table, addr))
        .replace()
        .execute()
        .await
        .map_err(nl(format!("adding {addr}/32 to table {table}")))
}

/// Removes `addr/32` from `table`; a route already gone is fine.
pub async fn del_host_route(h: &rtnetlink::Handle, table: u32, addr: Ipv4Addr) -> Result<()> {
    match h
        .route()
        .del(host_route_message(table, addr))
        .execute()
        .await
    {
        Err(e) if matches!(errno(&e), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
        r => r.map_err(nl(format!("removing {addr}/32 from table {table}"))),
    }
}

#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub mtu: u32,
    /// The id of the XDP program attached to it, if any.
    pub xdp_prog: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// The name of link `index` among `links`, or `ifindex N` if it has gone.
pub fn name_of(links: &[Link], index: u32) -> String {
    links
        .iter()
        .find(|l| l.index == index)
        .map(|l| l.name.clone())
        .unwrap_or(format!("ifindex {index}"))
}

fn link_from(m: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mtu = 0;
    let mut xdp_prog = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = n.clone(),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Xdp(x) => {
                xdp_prog = x.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id != 0 => Some(*id),
                    _ => None,
                });
            }
            _ => {}
        }
    }
    Link {
        index: m.header.index,
        name,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu,
        xdp_prog,
    }
}

pub struct Rtnl {
    rt: tokio::runtime::Runtime,
    handle: rtnetlink::Handle,
}

impl Rtnl {
    pub fn new() -> Result<Rtnl> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| NetlinkError::Io {
                what: "starting a runtime".into(),
                source,
            })?;
        let handle = {
            let _g = rt.enter();
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| NetlinkError::Io {
                    what: "opening a socket".into(),
                    source,
                })?;
            rt.spawn(conn);
            handle
        };
        Ok(Rtnl { rt, handle })
    }

    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        self.rt.block_on(async {
            match self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
                .try_next()
                .await
            {
                Ok(m) => Ok(m.as_ref().map(link_from)),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(nl(format!("looking up link {name}"))(e)),
            }
        })
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        self.rt.block_on(async {
            let mut s = self.handle.link().get().execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(nl("listing links"))? {
                out.push(link_from(&m));
            }
            Ok(out)
        })
    }

    /// Every IPv4 address, primary ones first per interface (as the kernel lists them).
    pub fn addrs(&self) -> Result<Vec<Addr>> {
        self.rt.block_on(async {
            let mut s = self.handle.address().get().execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(nl("listing addresses"))? {
                for a in &m.attributes {
                    if let AddressAttribute::Local(IpAddr::V4(ip)) = a {
                        out.push(Addr {
                            ifindex: m.header.index,
                            addr: *ip,
                            prefix: m.header.prefix_len,
                        });
                    }
                }
            }
            Ok(out)
        })
    }

    /// The output interface of the main table's IPv4 default route.
    pub fn default_route_ifindex(&self) -> Result<Option<u32>> {
        self.rt.block_on(async {
            let mut s = self
                .handle
                .route()
                .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
                .execute();
            while let Some(m) = s.try_next().await.map_err(nl("listing routes"))? {
                if m.header.destination_prefix_length != 0 {
                    continue;
                }
                let mut table = m.header.table as u32;
                let mut oif = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        _ => {}
                    }
                }
                if table == RouteHeader::RT_TABLE_MAIN as u32 && oif.is_some() {
                    return Ok(oif);
                }
            }
            Ok(None)
        })
    }

    pub fn set_up(&self, index: u32, up: bool) -> Result<()> {
        self.rt.block_on(async {
            self.handle
                .link()
                .set(link_up_message(index, up))
                .execute()
                .await
                .map_err(nl(format!(
                    "setting ifindex {index} {}",
                    if up { "up" } else { "down" }
                )))
        })
    }

    /// Adds `addr/32` to `index`.
    pub fn add_host_address(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        self.rt.block_on(async {
            let mut req = self.handle.address().add(index, IpAddr::V4(addr), 32);
            *req.message_mut() = host_address_message(index, addr);
            req.execute()
                .await
                .map_err(nl(format!("adding {addr}/32 to ifindex {index}")))
        })
    }

    /// Removes `addr/32` from `index`; an address that is already gone is fine.
    pub fn del_host_address(&self, index: u32, addr: Ipv4Addr) -> Result<()> {
        self.rt.block_on(async {
            match self
                .handle
                .address()
                .del(host_address_message(index, addr))
                .execute()
                .await
            {
                Err(e)
                    if matches!(
                        errno(&e),
                        Some(libc::EADDRNOTAVAIL | libc::ENODEV | libc::ENOENT)
                    ) =>
                {
                    Ok(())
                }
                r => r.map_err(nl(format!("removing {addr}/32 from ifindex {index}"))),
            }
        })
    }

    /// Creates a link (RTM_NEWLINK with NLM_F_CREATE|NLM_F_EXCL).
    pub fn add_link(&self, msg: LinkMessage, what: &str) -> Result<()> {
        self.rt
            .block_on(async { self.handle.link().add(msg).execute().await })
            .map_err(nl(what))
    }

    pub fn del_link(&self, index: u32, what: &str) -> Result<()> {
        self.rt
            .block_on(async { self.handle.link().del(index).execute().await })
            .map_err(nl(what))
    }
}

/// IPv4 addresses of one interface, primary first.
pub fn ipv4_addrs(ifindex: u32) -> Result<Vec<Ipv4Addr>> {
    Ok(Rtnl::new()?
        .addrs()?
        .into_iter()
        .filter(|a| a.ifindex == ifindex)
        .map(|a| a.addr)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::address::AddressHeaderFlags;
    use rtnetlink::packet_core::{Emitable, Parseable};

    pub fn bytes<E: Emitable>(m: &E) -> Vec<u8> {
        let mut b = vec![0; m.buffer_len()];
        m.emit(&mut b);
        b
    }

    #[test]
    fn link_up_message_sets_only_iff_up() {
        let m = link_up_message(7, true);
        let b = bytes(&m);
        // ifinfomsg: family 0, pad, type 0, index 7, flags IFF_UP, change IFF_UP; no attributes.
        assert_eq!(b, [0, 0, 0, 0, 7, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0]);
        let m = link_up_message(7, false);
        assert_eq!(bytes(&m), [0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    }

    #[test]
    fn host_route_message_is_lo_in_the_table_with_our_protocol() {
        let m = host_route_message(100, Ipv4Addr::new(198, 18, 0, 100));
        let b = bytes(&m);
        // rtmsg: AF_INET, dst_len 32, src_len 0, tos 0, table 100, proto 252, scope link (253),
        // type unicast (1), flags 0.
        assert_eq!(&b[..12], &[2, 32, 0, 0, 100, 252, 253, 1, 0, 0, 0, 0]);
        let parsed = RouteMessage::parse(b.as_slice()).unwrap();
        assert!(parsed.attributes.contains(&RouteAttribute::Oif(1)));
        assert!(
            parsed
                .attributes
                .contains(&RouteAttribute::Destination(RouteAddress::Inet(
                    Ipv4Addr::new(198, 18, 0, 100)
                )))
        );
    }

    #[test]
    fn only_our_host_routes_in_the_table_are_ours() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let ours = host_route_message(1000, vip);
        assert_eq!(our_host_route(&ours, 1000), Some(vip));
        // The kernel reports a table above 255 as RT_TABLE_COMPAT (252) in the header and the
        // real one in RTA_TABLE.
        let mut dumped = ours.clone();
        dumped.header.table = 252;
        assert_eq!(our_host_route(&dumped, 1000), Some(vip));
        assert_eq!(our_host_route(&dumped, 252), None);
        let mut static_route = ours.clone();
        static_route.header.protocol = RouteProtocol::Static;
        assert_eq!(our_host_route(&static_route, 1000), None);
        let mut subnet = ours;
        subnet.header.destination_prefix_length = 24;
        assert_eq!(our_host_route(&subnet, 1000), None);
    }

    #[test]
    fn host_address_message_is_a_slash_32() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let m = host_address_message(3, vip);
        let b = bytes(&m);
        // ifaddrmsg: AF_INET, prefix 32, flags 0, scope universe, index 3.
        assert_eq!(&b[..8], &[2, 32, 0, 0, 3, 0, 0, 0]);
        let parsed = AddressMessage::parse(b.as_slice()).unwrap();
        assert_eq!(parsed.header.prefix_len, 32);
        assert_eq!(parsed.header.index, 3);
        assert!(
            parsed.header.flags.is_empty() || parsed.header.flags == AddressHeaderFlags::empty()
        );
        let mut attrs = parsed.attributes.clone();
        attrs.sort_by_key(|a| format!("{a:?}"));
        assert_eq!(
            attrs,
            vec![
                AddressAttribute::Address(IpAddr::V4(vip)),
                AddressAttribute::Local(IpAddr::V4(vip))
            ],
            "a /32 has no broadcast"
        );
    }
}
