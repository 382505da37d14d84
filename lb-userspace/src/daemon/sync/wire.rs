//! The sync protocol on the wire: one UDP datagram per message, authenticated with
//! HMAC-SHA256 under a key the directors share, and checked against replay. Pure: encoding,
//! decoding and the replay window are tested without a network.
//!
//! ```text
//! header (44 bytes, big-endian)
//!   0  magic "LBSY"      4  version (1)      5  kind       6  entries in this message (u16)
//!   8  sender (IPv4)    12  epoch: the sender's start, Unix ns (u64)
//!  20  seq (u64, per epoch)                  28  sent at, Unix ms (u64)
//!  36  nonce (u32): a full sync's, in its hello, dump and done messages
//!  40  total (u32): in `done`, how many entries the dump carried
//! entries (24 bytes each)
//!   client (IPv4), VIP (IPv4), real (IPv4), client port, virtual port, protocol, state,
//!   flags (template, persistent), 0, age in ms (u32: how long ago it happened)
//! tag: the first 16 bytes of HMAC-SHA256(key, header and entries)
//! ```
//!
//! IPVS's sync protocol (`ip_vs_sync.c`) was read for what to carry (connection, state,
//! templates, a periodic refresh of long-lived entries) but not copied: it has no
//! authentication, and its addresses are the only identity of a real, which is what we send too.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::net::Ipv4Addr;

pub const MAGIC: [u8; 4] = *b"LBSY";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 44;
pub const ENTRY_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// Keeps every datagram under 1,400 bytes, so it is never fragmented on an Ethernet path.
pub const MAX_ENTRIES: usize = 55;
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_ENTRIES * ENTRY_LEN + TAG_LEN;
const _: () = assert!(MAX_DATAGRAM <= 1400);
/// The shortest key accepted: 128 bits.
pub const MIN_KEY_LEN: usize = 16;
/// Messages stamped further than this from our clock are refused (directors run NTP).
pub const MAX_SKEW_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// New and changed entries, as they happen, and the periodic refresh.
    Entries = 1,
    /// "I am new or restarted: send me everything" (with a nonce).
    Hello = 2,
    /// Part of a full sync, answering a hello (its nonce).
    Dump = 3,
    /// End of a full sync: `total` entries were sent.
    Done = 4,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Entries,
            2 => Kind::Hello,
            3 => Kind::Dump,
            4 => Kind::Done,
            _ => return None,
        })
    }
}

pub const F_TEMPLATE: u8 = 1;
pub const F_PERSIST: u8 = 2;

/// One connection (or persistence template) as directors name it to each other: by addresses,
/// never by slot numbers, which are each director's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub client: Ipv4Addr,
    pub vip: Ipv4Addr,
    pub real: Ipv4Addr,
    /// 0 for a template.
    pub client_port: u16,
    /// The service's port (0 for a port-0 persistent service's template).
    pub vport: u16,
    pub proto: u8,
    /// `CONN_*`; 0 for a template.
    pub state: u8,
    pub flags: u8,
    /// How long ago it happened or was last seen.
    pub age_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub sender: Ipv4Addr,
    pub epoch: u64,
    pub seq: u64,
    pub sent_ms: u64,
    pub nonce: u32,
    pub total: u32,
    pub entries: Vec<Entry>,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Malformed,
    BadTag,
    UnknownPeer,
    Replayed,
    Stale,
}

impl Reject {
    pub fn name(self) -> &'static str {
        match self {
            Reject::Malformed => "malformed",
            Reject::BadTag => "bad_tag",
            Reject::UnknownPeer => "unknown_peer",
            Reject::Replayed => "replayed",
            Reject::Stale => "stale",
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn tag(key: &[u8], body: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    let full = mac.finalize().into_bytes();
    let mut t = [0u8; TAG_LEN];
    t.copy_from_slice(&full[..TAG_LEN]);
    t
}

pub fn encode(m: &Message, key: &[u8]) -> Vec<u8> {
    assert!(
        m.entries.len() <= MAX_ENTRIES,
        "at most {MAX_ENTRIES} entries"
    );
    let mut b = Vec::with_capacity(HEADER_LEN + m.entries.len() * ENTRY_LEN + TAG_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.push(m.kind as u8);
    b.extend_from_slice(&(m.entries.len() as u16).to_be_bytes());
    b.extend_from_slice(&m.sender.octets());
    b.extend_from_slice(&m.epoch.to_be_bytes());
    b.extend_from_slice(&m.seq.to_be_bytes());
    b.extend_from_slice(&m.sent_ms.to_be_bytes());
    b.extend_from_slice(&m.nonce.to_be_bytes());
    b.extend_from_slice(&m.total.to_be_bytes());
    for e in &m.entries {
        b.extend_from_slice(&e.client.octets());
        b.extend_from_slice(&e.vip.octets());
        b.extend_from_slice(&e.real.octets());
        b.extend_from_slice(&e.client_port.to_be_bytes());
        b.extend_from_slice(&e.vport.to_be_bytes());
        b.extend_from_slice(&[e.proto, e.state, e.flags, 0]);
        b.extend_from_slice(&e.age_ms.to_be_bytes());
    }
    let t = tag(key, &b);
    b.extend_from_slice(&t);
    b
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks the shape and the tag (in constant time), then decodes. The tag is checked before
/// anything in the message is believed.
pub fn decode(b: &[u8], key: &[u8]) -> Result<Message, Reject> {
    if b.len() < HEADER_LEN + TAG_LEN || b[..4] != MAGIC || b[4] != VERSION {
        return Err(Reject::Malformed);
    }
    let n = u16_at(b, 6) as usize;
    if n > MAX_ENTRIES || b.len() != HEADER_LEN + n * ENTRY_LEN + TAG_LEN {
        return Err(Reject::Malformed);
    }
    let (body, t) = b.split_at(b.len() - TAG_LEN);
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    mac.verify_truncated_left(t).map_err(|_| Reject::BadTag)?;
    let kind = Kind::from_u8(b[5]).ok_or(Reject::Malformed)?;
    let entries = (0..n)
        .map(|i| {
            let e = &b[HEADER_LEN + i * ENTRY_LEN..HEADER_LEN + (i + 1) * ENTRY_LEN];
            Entry {
                client: ip(&e[0..4]),
                vip: ip(&e[4..8]),
                real: ip(&e[8..12]),
                client_port: u16_at(e, 12),
                vport: u16_at(e, 14),
                proto: e[16],
                state: e[17],
                flags: e[18],
                age_ms: u32_at(e, 20),
            }
        })
        .collect();
    Ok(Message {
        kind,
        sender: ip(&b[8..12]),
        epoch: u64_at(b, 12),
        seq: u64_at(b, 20),
        sent_ms: u64_at(b, 28),
        nonce: u32_at(b, 36),
        total: u32_at(b, 40),
        entries,
    })
}

/// What is known of one peer's sender, to refuse replays: its current epoch (its start time;
/// a restarted peer has a later one) and a 64-message window of sequence numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    epoch: u64,
    top: u64,
    seen: u64,
}

impl Window {
    /// Accepts `(epoch, seq)` once; refuses an earlier epoch, a number seen already and one
    /// that fell out of the window behind the highest seen.
    pub fn accept(&mut self, epoch: u64, seq: u64) -> bool {
        if epoch < self.epoch {
            return false;
        }
        if epoch > self.epoch {
            *self = Window {
                epoch,
                top: seq,
                seen: 1,
            };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Whether a message stamped `sent_ms` is fresh at `now_ms` (both Unix ms).
pub fn fresh(sent_ms: u64, now_ms: u64) -> bool {
    sent_ms.abs_diff(now_ms) <= MAX_SKEW_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn msg(n: usize) -> Message {
        Message {
            kind: Kind::Entries,
            sender: Ipv4Addr::new(198, 18, 0, 2),
            epoch: 1_700_000_000_000_000_000,
            seq: 7,
            sent_ms: 1_700_000_000_000,
            nonce: 0,
            total: 0,
            entries: (0..n)
                .map(|i| Entry {
                    client: Ipv4Addr::new(198, 18, 0, 10),
                    vip: Ipv4Addr::new(198, 18, 0, 100),
                    real: Ipv4Addr::new(198, 18, 0, 11),
                    client_port: 40000 + i as u16,
                    vport: 6033,
                    proto: 6,
                    state: 2,
                    flags: F_PERSIST,
                    age_ms: 12,
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_at_the_exact_size() {
        for n in [0, 1, MAX_ENTRIES] {
            let m = msg(n);
            let b = encode(&m, KEY);
            assert_eq!(b.len(), HEADER_LEN + n * ENTRY_LEN + TAG_LEN);
            assert_eq!(decode(&b, KEY), Ok(m));
        }
        let b = encode(&msg(1), KEY);
        assert_eq!(&b[..8], b"LBSY\x01\x01\x00\x01");
        assert_eq!(&b[8..12], &[198, 18, 0, 2]);
        assert_eq!(&b[HEADER_LEN..HEADER_LEN + 4], &[198, 18, 0, 10]);
    }

    #[test]
    fn any_changed_byte_or_another_key_fails_the_tag() {
        let b = encode(&msg(3), KEY);
        for i in 8..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert_eq!(decode(&c, KEY), Err(Reject::BadTag), "byte {i}");
        }
        assert_eq!(
            decode(&b, b"another key of 32 bytes length!!"),
            Err(Reject::BadTag)
        );
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let b = encode(&msg(2), KEY);
        for cut in [0, 10, HEADER_LEN, b.len() - 1] {
            assert_eq!(decode(&b[..cut], KEY), Err(Reject::Malformed), "cut {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert_eq!(decode(&longer, KEY), Err(Reject::Malformed));
        let mut version = b.clone();
        version[4] = 2;
        assert_eq!(decode(&version, KEY), Err(Reject::Malformed));
        let mut count = b.clone();
        count[7] = 200;
        assert_eq!(decode(&count, KEY), Err(Reject::Malformed));
    }

    #[test]
    fn the_window_refuses_replays_and_old_epochs() {
        let mut w = Window::default();
        assert!(w.accept(10, 1));
        assert!(!w.accept(10, 1), "replayed");
        assert!(w.accept(10, 3));
        assert!(w.accept(10, 2), "late but new");
        assert!(!w.accept(10, 2));
        assert!(w.accept(10, 100));
        assert!(!w.accept(10, 30), "fell out of the window");
        assert!(w.accept(10, 99));
        assert!(!w.accept(9, 1000), "an earlier start of the peer");
        assert!(w.accept(11, 1), "the peer restarted");
        assert!(!w.accept(10, 101));
        assert!(fresh(1_000_000, 1_000_000 + MAX_SKEW_MS));
        assert!(!fresh(1_000_000, 1_000_001 + MAX_SKEW_MS));
    }
}
