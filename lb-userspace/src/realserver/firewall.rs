//! Finds nftables rules that drop or reject IP protocol 4 (IPIP), by dumping the ruleset over
//! nfnetlink, the way `nft list ruleset` reads it. A `tunl0` real server behind such a rule
//! never sees the director's packets.
//!
//! Recognised: `ip protocol 4` / `meta l4proto 4` (also what `iptables-nft -p 4` generates)
//! followed by `drop` or `reject`. Not recognised: protocol sets (`ip protocol { 4, 47 }`), a
//! chain whose *policy* drops what no rule accepts, and legacy (x_tables) iptables rules.

use std::io;

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_GETRULE: u16 = 7;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_NETDEV: u8 = 5;
/// Netfilter hooks that see a packet arriving for this host (prerouting, input; netdev ingress).
const HOOK_PREROUTING: u32 = 0;
const HOOK_INPUT: u32 = 1;

/// One rule that drops or rejects IPIP.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct IpipBlock {
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    pub verdict: &'static str,
}

/// A netlink attribute: type (flags stripped) and payload.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
    }
    out
}

fn attr<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: Option<&[u8]>) -> Option<u32> {
    v.filter(|v| v.len() >= 4)
        .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
}

fn string(v: Option<&[u8]>) -> String {
    v.map(|v| String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or(&[])).into_owned())
        .unwrap_or_default()
}

/// Dumps one nftables object type; returns (family, attribute bytes) per message.
fn dump(msg_type: u16) -> io::Result<Vec<(u8, Vec<u8>)>> {
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor socket() just returned, owned from here on.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&20u32.to_ne_bytes());
    req.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | msg_type).to_ne_bytes());
    req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&[0, 0, 0, 0]); // nfgenmsg: every family, version 0, res_id 0
    if unsafe { libc::send(raw, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut b = &buf[..n as usize];
        while b.len() >= 16 {
            let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            if len < 16 || len > b.len() {
                return Ok(out);
            }
            match ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = i32::from_ne_bytes([b[16], b[17], b[18], b[19]]);
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                _ if len >= 20 => out.push((b[16], b[20..len].to_vec())),
                _ => {}
            }
            b = &b[((len + 3) & !3).min(b.len())..];
        }
    }
}

fn family_name(f: u8) -> Option<&'static str> {
    match f {
        NFPROTO_IPV4 => Some("ip"),
        NFPROTO_INET => Some("inet"),
        NFPROTO_NETDEV => Some("netdev"),
        _ => None,
    }
}

/// Does this rule's expression list match IP protocol 4 and end in drop/reject?
fn rule_blocks_ipip(exprs: &[u8]) -> Option<&'static str> {
    let mut loaded_proto = false;
    let mut matches_ipip = false;
    for (_, elem) in attrs(exprs) {
        let e = attrs(elem);
        let name = string(attr(&e, 1));
        let data = attrs(attr(&e, 2).unwrap_or(&[]));
        match name.as_str() {
            // ip protocol: network header, offset 9, 1 byte.
            "payload" => {
                loaded_proto = be32(attr(&data, 2)) == Some(1)
                    && be32(attr(&data, 3)) == Some(9)
                    && be32(attr(&data, 4)) == Some(1);
            }
            // meta l4proto (NFT_META_L4PROTO = 16).
            "meta" => loaded_proto = be32(attr(&data, 2)) == Some(16),
            "cmp" => {
                let eq = be32(attr(&data, 2)) == Some(0);
                let value = attr(&data, 3)
                    .map(attrs)
                    .and_then(|v| attr(&v, 1).map(|x| x.to_vec()));
                if loaded_proto && eq && value.as_deref() == Some(&[4]) {
                    matches_ipip = true;
                }
            }
            "immediate" if matches_ipip => {
                let verdict = attr(&data, 2)
                    .map(attrs)
                    .and_then(|d| attr(&d, 2).map(attrs))
                    .and_then(|v| be32(attr(&v, 1)));
                if verdict == Some(0) {
                    return Some("drop");
                }
            }
            "reject" if matches_ipip => return Some("reject"),
            _ => {}
        }
    }
    None
}

/// Rules that drop or reject IPIP before it reaches this host's stack. Chains hooked on
/// forward, output or postrouting are skipped: they never see packets for this host.
pub fn ipip_blocking_rules() -> io::Result<Vec<IpipBlock>> {
    let mut outbound = std::collections::HashSet::new();
    for (family, msg) in dump(NFT_MSG_GETCHAIN)? {
        let a = attrs(&msg);
        let hook = attr(&a, 4).map(attrs).and_then(|h| be32(attr(&h, 1)));
        if family != NFPROTO_NETDEV && hook.is_some_and(|h| h != HOOK_PREROUTING && h != HOOK_INPUT)
        {
            outbound.insert((family, string(attr(&a, 1)), string(attr(&a, 3))));
        }
    }
    let mut out = Vec::new();
    for (family, msg) in dump(NFT_MSG_GETRULE)? {
        let Some(fam) = family_name(family) else {
            continue;
        };
        let a = attrs(&msg);
        let (table, chain) = (string(attr(&a, 1)), string(attr(&a, 2)));
        if outbound.contains(&(family, table.clone(), chain.clone())) {
            continue;
        }
        if let Some(verdict) = attr(&a, 4).and_then(rule_blocks_ipip) {
            out.push(IpipBlock {
                family: fam,
                table,
                chain,
                verdict,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nla(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn expr(name: &str, data: Vec<u8>) -> Vec<u8> {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        nla(1, &[nla(1, &n), nla(2 | 0x8000, &data)].concat())
    }

    fn payload_proto() -> Vec<u8> {
        expr(
            "payload",
            [
                nla(1, &1u32.to_be_bytes()),
                nla(2, &1u32.to_be_bytes()),
                nla(3, &9u32.to_be_bytes()),
                nla(4, &1u32.to_be_bytes()),
            ]
            .concat(),
        )
    }

    fn cmp_eq(v: u8) -> Vec<u8> {
        expr(
            "cmp",
            [
                nla(1, &1u32.to_be_bytes()),
                nla(2, &0u32.to_be_bytes()),
                nla(3, &nla(1, &[v])),
            ]
            .concat(),
        )
    }

    fn verdict(code: u32) -> Vec<u8> {
        expr(
            "immediate",
            [
                nla(1, &0u32.to_be_bytes()),
                nla(2, &nla(2, &nla(1, &code.to_be_bytes()))),
            ]
            .concat(),
        )
    }

    #[test]
    fn recognises_protocol_4_drop_and_reject_only() {
        let rule = |parts: Vec<Vec<u8>>| parts.concat();
        assert_eq!(
            rule_blocks_ipip(&rule(vec![payload_proto(), cmp_eq(4), verdict(0)])),
            Some("drop")
        );
        assert_eq!(
            rule_blocks_ipip(&rule(vec![
                payload_proto(),
                cmp_eq(4),
                expr("counter", vec![]),
                expr("reject", vec![])
            ])),
            Some("reject")
        );
        // accept (NF_ACCEPT = 1), another protocol, or drop without a protocol match: fine
        assert_eq!(
            rule_blocks_ipip(&rule(vec![payload_proto(), cmp_eq(4), verdict(1)])),
            None
        );
        assert_eq!(
            rule_blocks_ipip(&rule(vec![payload_proto(), cmp_eq(47), verdict(0)])),
            None
        );
        assert_eq!(rule_blocks_ipip(&rule(vec![verdict(0)])), None);
        let meta = expr(
            "meta",
            [nla(1, &1u32.to_be_bytes()), nla(2, &16u32.to_be_bytes())].concat(),
        );
        assert_eq!(
            rule_blocks_ipip(&rule(vec![meta, cmp_eq(4), verdict(0)])),
            Some("drop")
        );
    }
}
