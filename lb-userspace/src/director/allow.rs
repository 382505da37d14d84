//! Source allow-lists per VIP: which clients may open connections to a VIP (established
//! connections are not cut when a list changes, as a stateful firewall keeps them).
//!
//! In the data path's trie (`LB_ALLOW`, see [`lb_common::AllowKey`]) a VIP with a list has a
//! /32 entry over the VIP alone that denies, and one longer entry per allowed CIDR; the data
//! path looks a new flow up only while [`lb_common::LIMITS_F_ALLOW`] says some list exists.

use super::maps::{Maps, MapsError};
use aya::maps::lpm_trie::Key;
use lb_common::{ALLOW_DENY, ALLOW_PERMIT, AllowKey, LIMITS_F_ALLOW, MAX_ALLOW, ip_be};
use std::{collections::BTreeMap, fmt, net::Ipv4Addr, str::FromStr};

/// An IPv4 network: `10.0.0.0/8`, or an address alone (`/32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IPv4 address or network (e.g. 10.0.0.0/8 or 192.0.2.7)")]
    Syntax(String),
    #[error("{0:?}: the prefix length must be 0..=32")]
    Prefix(String),
    #[error("{given:?} has host bits set: did you mean {fixed}?")]
    HostBits { given: String, fixed: Cidr },
}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a.parse().map_err(|_| CidrError::Syntax(s.into()))?;
        let len: u8 = l.parse().map_err(|_| CidrError::Prefix(s.into()))?;
        if len > 32 {
            return Err(CidrError::Prefix(s.into()));
        }
        let mask = u32::MAX.checked_shl(32 - len as u32).unwrap_or(0);
        let net = Ipv4Addr::from(u32::from(addr) & mask);
        if net != addr {
            return Err(CidrError::HostBits {
                given: s.into(),
                fixed: Cidr { addr: net, len },
            });
        }
        Ok(Cidr { addr, len })
    }
}

/// Every VIP's list.
pub type AllowLists = BTreeMap<Ipv4Addr, Vec<Cidr>>;

/// A change to the lists (`lbadm allow add|del|clear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Allow these sources; the first one starts the VIP's list.
    Add(Ipv4Addr, Vec<Cidr>),
    /// Remove these sources (an emptied list still refuses everyone).
    Del(Ipv4Addr, Vec<Cidr>),
    /// Remove the VIP's list: everyone may connect.
    Clear(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{0} has no allow-list (`lbadm allow list` shows them)")]
    NoList(Ipv4Addr),
    #[error("{0} is not on {1}'s allow-list")]
    NotListed(Cidr, Ipv4Addr),
}

/// Applies `edit` to `lists`, or says why not and changes nothing.
pub fn edit(lists: &mut AllowLists, edit: Edit) -> Result<(), EditError> {
    match edit {
        Edit::Add(vip, sources) => {
            let l = lists.entry(vip).or_default();
            for c in sources {
                if !l.contains(&c) {
                    l.push(c);
                }
            }
            l.sort();
        }
        Edit::Del(vip, sources) => {
            let l = lists.get_mut(&vip).ok_or(EditError::NoList(vip))?;
            if let Some(c) = sources.iter().find(|c| !l.contains(c)) {
                return Err(EditError::NotListed(*c, vip));
            }
            l.retain(|c| !sources.contains(c));
        }
        Edit::Clear(vip) => {
            lists.remove(&vip).ok_or(EditError::NoList(vip))?;
        }
    }
    Ok(())
}

/// One line per VIP: `198.18.0.100: 10.0.0.0/8 192.0.2.7/32` (`(nobody)` for an empty list).
pub fn render(lists: &AllowLists) -> String {
    let mut out = String::new();
    for (vip, l) in lists {
        let l: Vec<String> = l.iter().map(|c| c.to_string()).collect();
        let l = if l.is_empty() {
            "(nobody)".to_string()
        } else {
            l.join(" ")
        };
        out.push_str(&format!("{vip}: {l}\n"));
    }
    out
}

/// The trie entries that express `lists`: per VIP, its deny-all /32 and one entry per CIDR.
/// `0.0.0.0/0` is that same /32 entry, permitting: a deny beside it would be overwritten (the
/// differential fuzzer found a list of `0.0.0.0/0` read back as "nobody" while it let everyone in).
pub fn trie_entries(lists: &AllowLists) -> Vec<(u32, AllowKey, u32)> {
    let mut out = Vec::new();
    for (vip, cidrs) in lists {
        let vip = ip_be(vip.octets());
        if !cidrs.iter().any(|c| c.len == 0) {
            out.push((32, AllowKey { vip, saddr: 0 }, ALLOW_DENY));
        }
        for c in cidrs {
            let saddr = ip_be(c.addr.octets());
            out.push((32 + c.len as u32, AllowKey { vip, saddr }, ALLOW_PERMIT));
        }
    }
    out
}

/// The lists the trie holds.
pub fn read(maps: &Maps) -> Result<AllowLists, MapsError> {
    let mut lists = AllowLists::new();
    for item in maps.allow.iter() {
        let (k, v) = item.map_err(|source| MapsError::Map {
            what: "reading LB_ALLOW".into(),
            source,
        })?;
        let d = k.data();
        let vip = Ipv4Addr::from(d.vip.to_ne_bytes());
        let list = lists.entry(vip).or_default();
        if v == ALLOW_PERMIT && k.prefix_len() >= 32 {
            list.push(Cidr {
                addr: Ipv4Addr::from(d.saddr.to_ne_bytes()),
                len: (k.prefix_len() - 32) as u8,
            });
        }
    }
    for l in lists.values_mut() {
        l.sort();
    }
    Ok(lists)
}

/// Makes the trie hold exactly `want`. Entries are added before old ones are removed, so a
/// source both lists allow is never refused in between.
pub fn replace(maps: &mut Maps, want: &AllowLists) -> Result<(), MapsError> {
    let new = trie_entries(want);
    if new.len() > MAX_ALLOW as usize {
        return Err(MapsError::Io {
            what: "allow-lists".into(),
            source: std::io::Error::other(format!(
                "{} entries (VIPs plus CIDRs) exceed the data path's {MAX_ALLOW}",
                new.len()
            )),
        });
    }
    let old = trie_entries(&read(maps)?);
    let err = |what: &str| {
        let what = what.to_string();
        move |source| MapsError::Map { what, source }
    };
    for (len, k, v) in &new {
        maps.allow
            .insert(&Key::new(*len, *k), v, 0)
            .map_err(err("writing LB_ALLOW"))?;
    }
    let mut limits = maps.limits()?;
    if !want.is_empty() {
        limits.flags |= LIMITS_F_ALLOW;
        maps.set_limits(&limits)?;
    }
    for (len, k, _) in old {
        if !new.iter().any(|(l, n, _)| *l == len && *n == k) {
            maps.allow
                .remove(&Key::new(len, k))
                .map_err(err("removing from LB_ALLOW"))?;
        }
    }
    if want.is_empty() {
        limits.flags &= !LIMITS_F_ALLOW;
        maps.set_limits(&limits)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_refuse_with_a_fix() {
        assert_eq!(
            "10.0.0.0/8".parse::<Cidr>().unwrap(),
            Cidr {
                addr: Ipv4Addr::new(10, 0, 0, 0),
                len: 8
            }
        );
        assert_eq!("192.0.2.7".parse::<Cidr>().unwrap().len, 32);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().len, 0);
        let e = "10.1.2.3/8".parse::<Cidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.1.2.3/8\" has host bits set: did you mean 10.0.0.0/8?"
        );
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix(_))
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::Syntax(_))
        ));
    }

    #[test]
    fn edits_change_the_lists_or_nothing() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let mut l = AllowLists::new();
        edit(
            &mut l,
            Edit::Add(vip, vec![c("10.0.0.0/8"), c("192.0.2.7")]),
        )
        .unwrap();
        edit(&mut l, Edit::Add(vip, vec![c("10.0.0.0/8")])).unwrap();
        assert_eq!(render(&l), "198.18.0.100: 10.0.0.0/8 192.0.2.7/32\n");
        let before = l.clone();
        let e = edit(
            &mut l,
            Edit::Del(vip, vec![c("192.0.2.7"), c("10.9.0.0/16")]),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "10.9.0.0/16 is not on 198.18.0.100's allow-list"
        );
        assert_eq!(l, before);
        edit(
            &mut l,
            Edit::Del(vip, vec![c("192.0.2.7"), c("10.0.0.0/8")]),
        )
        .unwrap();
        assert_eq!(render(&l), "198.18.0.100: (nobody)\n");
        edit(&mut l, Edit::Clear(vip)).unwrap();
        assert!(l.is_empty());
        assert_eq!(edit(&mut l, Edit::Clear(vip)), Err(EditError::NoList(vip)));
    }

    #[test]
    fn everyone_is_one_permit_over_the_vip() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        let lists = AllowLists::from([(vip, vec![all, "10.0.0.0/8".parse().unwrap()])]);
        let e = trie_entries(&lists);
        let v = ip_be(vip.octets());
        assert_eq!(e[0], (32, AllowKey { vip: v, saddr: 0 }, ALLOW_PERMIT));
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn a_list_is_a_deny_over_the_vip_and_a_permit_per_cidr() {
        let vip = Ipv4Addr::new(198, 18, 0, 100);
        let lists = AllowLists::from([(vip, vec!["10.0.0.0/8".parse().unwrap()])]);
        let e = trie_entries(&lists);
        let v = ip_be(vip.octets());
        assert_eq!(
            e,
            vec![
                (32, AllowKey { vip: v, saddr: 0 }, ALLOW_DENY),
                (
                    40,
                    AllowKey {
                        vip: v,
                        saddr: ip_be([10, 0, 0, 0])
                    },
                    ALLOW_PERMIT
                ),
            ]
        );
        // An empty list denies every source.
        assert_eq!(trie_entries(&AllowLists::from([(vip, vec![])])).len(), 1);
    }
}
