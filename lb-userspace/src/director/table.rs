//! The service table as userspace thinks of it: virtual services (protocol, VIP, port) with a
//! scheduler, persistence and reals. Written by ipvsadm commands and the daemon alike,
//! published into the maps by [`super::maps::Maps::apply`].

use super::scheduler::Scheduler;
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, ServiceKey, ip_be};
use std::{ffi::CStr, fmt, net::Ipv4Addr};

/// The transport protocol of a virtual service (the data path balances TCP and UDP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number, as the maps store it and ipvsadm sorts by (TCP 6 < UDP 17).
    pub const fn raw(self) -> u8 {
        match self {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        }
    }

    pub const fn from_raw(raw: u8) -> Option<Self> {
        match raw {
            IPPROTO_TCP => Some(Protocol::Tcp),
            IPPROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// `TCP` / `UDP`, as ipvsadm's `Prot` column shows it.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }

    /// The `/etc/services` protocol name: `tcp` / `udp`.
    pub const fn services_name(self) -> &'static CStr {
        match self {
            Protocol::Tcp => c"tcp",
            Protocol::Udp => c"udp",
        }
    }
}

/// A virtual service's identity: protocol, VIP and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceId {
    pub proto: Protocol,
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl ServiceId {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: ip_be(self.addr.octets()),
            port: self.port.to_be(),
            proto: self.proto.raw(),
            _pad: 0,
        }
    }

    pub fn from_key(k: &ServiceKey) -> Option<Self> {
        Some(ServiceId {
            proto: Protocol::from_raw(k.proto)?,
            addr: Ipv4Addr::from(k.addr.to_ne_bytes()),
            port: u16::from_be(k.port),
        })
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}:{}", self.proto.name(), self.addr, self.port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RealServer {
    pub addr: Ipv4Addr,
    pub weight: u32,
    /// `-x`: connections (active + inactive) at which it takes no new one; 0 = no limit.
    pub u_threshold: u32,
    /// `-y`: connections below which it takes new ones again; 0 = three quarters of `-x`.
    pub l_threshold: u32,
}

impl RealServer {
    pub const fn new(addr: Ipv4Addr, weight: u32) -> Self {
        RealServer {
            addr,
            weight,
            u_threshold: 0,
            l_threshold: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VirtualService {
    pub id: ServiceId,
    pub sched: Scheduler,
    /// Persistence timeout in seconds, 0 = none.
    pub persistence: u32,
    /// In scheduling order.
    pub reals: Vec<RealServer>,
}

/// A service as the maps hold it, with the slot numbers userspace allocated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstalledService {
    pub spec: VirtualService,
    pub slot: u32,
    pub table_copy: u32,
    /// Slot in the reals array of each entry of `spec.reals`.
    pub real_slots: Vec<u32>,
}

/// Converts a wire-order address from the maps.
pub fn addr(be: u32) -> Ipv4Addr {
    Ipv4Addr::from(be.to_ne_bytes())
}

/// Why `addr` cannot be a host that answers for a VIP or takes tunnelled packets, if it cannot:
/// a packet encapsulated to it (or a VIP configured as it) would go nowhere. `None` for a
/// unicast address.
pub fn not_unicast(addr: Ipv4Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("0.0.0.0 is no host")
    } else if addr.is_broadcast() {
        Some("it is the broadcast address")
    } else if addr.is_multicast() {
        Some("it is a multicast address")
    } else {
        // Loopback and local addresses stay allowed: kernel IPVS takes them (its local node).
        None
    }
}

/// Why `addr` cannot be a real server of a service on `vip`, if it cannot.
pub fn unusable_real(addr: Ipv4Addr, vip: Ipv4Addr) -> Option<&'static str> {
    if addr == vip {
        return Some("it is the service's own VIP (the director would tunnel to itself)");
    }
    not_unicast(addr)
}

#[cfg(test)]
mod unicast_tests {
    use super::*;

    #[test]
    fn only_unicast_hosts_other_than_the_vip_can_be_reals() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "239.1.2.3",
            "198.18.0.100",
        ] {
            assert!(unusable_real(bad.parse().unwrap(), vip).is_some(), "{bad}");
        }
        for good in ["198.18.0.11", "10.0.0.1", "192.0.2.7", "127.0.0.1"] {
            assert_eq!(unusable_real(good.parse().unwrap(), vip), None, "{good}");
        }
    }
}
