//! Connection sync between directors, the part IPVS's sync daemon plays: every director sends
//! its new and changed connections and persistence templates to its peers and installs theirs,
//! so a flow that reaches another director after a failover or an ECMP rehash goes on to the
//! same real.
//!
//! * **What is sent**: each event the data path queues on `LB_SYNC` (a new connection, a state
//!   change, a new template), batched per drain of the ring, to every peer; every `refresh`,
//!   the connections and templates seen since the last refresh (a peer's copy of a long-lived
//!   connection would otherwise expire); on a peer's hello, everything (a full sync).
//!   Never a message per packet.
//! * **Transport**: UDP unicast to the listed peers, one datagram of at most 55 entries
//!   ([`wire`]), HMAC-SHA256 with the shared key. A datagram from an address that is not a
//!   peer, with a bad tag, replayed (epoch + sequence window) or stamped more than 30 s away
//!   from our clock is dropped and counted.
//! * **Learn before serve**: at start the daemon asks every peer for a full sync and reports
//!   itself ready only when one has arrived complete, or when no peer answered at all within
//!   `learn_timeout` (the first director of a fleet has nobody to learn from).
//! * **Installed as the data path would**: by address, under this director's slots ([`table`]).

pub mod config;
pub mod table;
pub mod wire;

use crate::director::{Maps, conntrack::now_ns};
use anyhow::Context as _;
use aya::maps::{Array, MapData, RingBuf};
use config::SyncConfig;
use lb_common::{CONFIG_F_SYNC, Config, MAP_CONFIG, MAP_SYNC, SyncEvent};
use serde::{Deserialize, Serialize};
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};
use table::{Directory, Refused};
use tokio::{io::unix::AsyncFd, net::UdpSocket, task::JoinHandle};
use tracing::{info, warn};
use wire::{Entry, Kind, MAX_DATAGRAM, MAX_ENTRIES, Message, Reject, Window};

/// How often the translation of slots to addresses is rebuilt at most when an entry misses (a
/// service or real added a moment ago).
const DIRECTORY_MIN_AGE: Duration = Duration::from_millis(20);
/// How many recent lag samples the percentiles are computed over.
const LAG_SAMPLES: usize = 4096;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Default)]
struct Counters {
    sent_messages: AtomicU64,
    sent_entries: AtomicU64,
    sent_bytes: AtomicU64,
    received_messages: AtomicU64,
    received_entries: AtomicU64,
    received_bytes: AtomicU64,
    installed: AtomicU64,
    /// Data-path events that named a real or service gone meanwhile.
    unsendable: AtomicU64,
}

struct Peer {
    addr: SocketAddrV4,
    window: Window,
    last_contact: Option<SystemTime>,
    received: u64,
    rejected: u64,
}

struct Learning {
    nonce: u32,
    since: Instant,
    /// Entries of the current full sync received from each peer.
    dumped: HashMap<Ipv4Addr, u32>,
    heard: bool,
}

struct State {
    learning: Option<Learning>,
    ready_reason: Option<String>,
    peers: BTreeMap<Ipv4Addr, Peer>,
    rejected: BTreeMap<&'static str, u64>,
    lags: VecDeque<u32>,
}

/// The maps and their translation, shared by the tasks that install and translate.
struct Tables {
    maps: Maps,
    dir: Directory,
    built: Instant,
}

impl Tables {
    fn rebuild(&mut self) {
        match Directory::build(&self.maps) {
            Ok(d) => {
                self.dir = d;
                self.built = Instant::now();
            }
            Err(e) => warn!("sync: reading the service table: {e}"),
        }
    }

    /// Rebuilds if the translation is not fresh, so a service or real added since is found.
    fn rebuild_if_stale(&mut self) -> bool {
        if self.built.elapsed() < DIRECTORY_MIN_AGE {
            return false;
        }
        self.rebuild();
        true
    }
}

struct Shared {
    cfg: SyncConfig,
    pin_dir: PathBuf,
    epoch: u64,
    seq: AtomicU64,
    socket: UdpSocket,
    counters: Counters,
    state: Mutex<State>,
    tables: Mutex<Tables>,
}

/// The running sync; stops (and tells the data path to stop queuing events) when dropped.
pub struct ConnSync {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl ConnSync {
    /// Binds the sync socket, starts reading the data path's events, asks the peers for a
    /// full sync and sends them this director's table. Must run inside the daemon's runtime.
    pub async fn start(cfg: SyncConfig, pin_dir: &Path) -> anyhow::Result<ConnSync> {
        let std_socket = std::net::UdpSocket::bind(cfg.listen)
            .with_context(|| format!("sync: listening on {}", cfg.listen))?;
        std_socket.set_nonblocking(true)?;
        let socket = UdpSocket::from_std(std_socket)?;
        let maps = Maps::open(pin_dir)?;
        let dir = Directory::build(&maps)?;
        let ring = open_ring(pin_dir)?;
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        let peers = cfg
            .peers
            .iter()
            .map(|&addr| {
                (
                    *addr.ip(),
                    Peer {
                        addr,
                        window: Window::default(),
                        last_contact: None,
                        received: 0,
                        rejected: 0,
                    },
                )
            })
            .collect();
        let shared = Arc::new(Shared {
            pin_dir: pin_dir.into(),
            epoch,
            seq: AtomicU64::new(0),
            socket,
            counters: Counters::default(),
            state: Mutex::new(State {
                learning: Some(Learning {
                    nonce: rand::random(),
                    since: Instant::now(),
                    dumped: HashMap::new(),
                    heard: false,
                }),
                ready_reason: None,
                peers,
                rejected: BTreeMap::new(),
                lags: VecDeque::new(),
            }),
            tables: Mutex::new(Tables {
                maps,
                dir,
                built: Instant::now(),
            }),
            cfg,
        });
        set_sync_flag(pin_dir, true)?;
        info!(
            listen = %shared.cfg.listen,
            peers = shared.cfg.peers.len(),
            "sync: started; asking the peers for a full sync"
        );
        shared.hello().await;
        // A restarted daemon may have missed events while it was down: send everything once.
        let everything = scan(&shared.pin_dir, 0)?;
        shared.send_all(Kind::Entries, &everything).await;
        let tasks = vec![
            tokio::spawn(read_events(shared.clone(), ring)),
            tokio::spawn(receive(shared.clone())),
            tokio::spawn(tick(shared.clone())),
        ];
        Ok(ConnSync { shared, tasks })
    }

    /// Learned from a peer (or had nobody to learn from): may be announced.
    pub fn ready(&self) -> bool {
        self.shared.lock_state().learning.is_none()
    }

    pub fn status(&self) -> SyncStatus {
        let s = &self.shared;
        let c = &s.counters;
        let st = s.lock_state();
        let mut lags: Vec<u32> = st.lags.iter().copied().collect();
        lags.sort_unstable();
        let pct = |p: f64| {
            (!lags.is_empty())
                .then(|| f64::from(lags[((lags.len() - 1) as f64 * p).round() as usize]))
        };
        SyncStatus {
            listen: s.cfg.listen.to_string(),
            ready: st.learning.is_none(),
            ready_reason: st.ready_reason.clone(),
            peers: st
                .peers
                .values()
                .map(|p| PeerStatus {
                    address: p.addr.to_string(),
                    last_contact: p.last_contact.map(crate::daemon::status::unix),
                    received: p.received,
                    rejected: p.rejected,
                })
                .collect(),
            sent_messages: c.sent_messages.load(Relaxed),
            sent_entries: c.sent_entries.load(Relaxed),
            sent_bytes: c.sent_bytes.load(Relaxed),
            received_messages: c.received_messages.load(Relaxed),
            received_entries: c.received_entries.load(Relaxed),
            received_bytes: c.received_bytes.load(Relaxed),
            installed: c.installed.load(Relaxed),
            unsendable: c.unsendable.load(Relaxed),
            rejected: st
                .rejected
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            lag_p50_ms: pct(0.5),
            lag_p99_ms: pct(0.99),
        }
    }
}

impl Drop for ConnSync {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Err(e) = set_sync_flag(&self.shared.pin_dir, false) {
            warn!("sync: could not tell the data path to stop queuing events: {e}");
        }
    }
}

/// The sync part of the daemon's status file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub listen: String,
    /// Learned before serving (see the module's documentation).
    pub ready: bool,
    pub ready_reason: Option<String>,
    pub peers: Vec<PeerStatus>,
    pub sent_messages: u64,
    pub sent_entries: u64,
    pub sent_bytes: u64,
    pub received_messages: u64,
    pub received_entries: u64,
    pub received_bytes: u64,
    pub installed: u64,
    pub unsendable: u64,
    /// Dropped datagrams and refused entries, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Time from an event at the sender to its entry here (the sender's age of the entry plus
    /// the datagram's flight by the two clocks), over the last entries received.
    pub lag_p50_ms: Option<f64>,
    pub lag_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub address: String,
    /// Unix time of the last authenticated message.
    pub last_contact: Option<f64>,
    pub received: u64,
    pub rejected: u64,
}

fn open_ring(pin_dir: &Path) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    let path = pin_dir.join(MAP_SYNC);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "sync: opening {} (a data path attached by an older lbadm has none: `lbadm attach` upgrades it)",
            path.display()
        )
    })?;
    let ring = RingBuf::try_from(aya::maps::Map::from_map_data(data)?)?;
    // SAFETY: the ring owns its map fd and keeps it open as long as the AsyncFd holds it.
    Ok(unsafe { AsyncFd::register(ring)? })
}

/// Turns the data path's event queue on or off (`Config::flags`).
fn set_sync_flag(pin_dir: &Path, on: bool) -> anyhow::Result<()> {
    let data = MapData::from_pin(pin_dir.join(MAP_CONFIG))?;
    let mut cfg: Array<MapData, Config> = Array::try_from(aya::maps::Map::from_map_data(data)?)?;
    let mut c = cfg.get(&0, 0)?;
    if on {
        c.flags |= CONFIG_F_SYNC;
    } else {
        c.flags &= !CONFIG_F_SYNC;
    }
    cfg.set(0, c, 0)?;
    Ok(())
}

/// Everything live in the maps last seen after `since`, read with handles of its own (so the
/// installing tasks are not held up by a long walk).
fn scan(pin_dir: &Path, since: u64) -> anyhow::Result<Vec<Entry>> {
    let maps = Maps::open(pin_dir)?;
    let dir = Directory::build(&maps)?;
    Ok(dir.scan(&maps, since))
}

impl Shared {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn message(&self, kind: Kind, entries: &[Entry], nonce: u32, total: u32) -> Vec<u8> {
        let m = Message {
            kind,
            sender: *self.cfg.listen.ip(),
            epoch: self.epoch,
            seq: self.seq.fetch_add(1, Relaxed) + 1,
            sent_ms: now_ms(),
            nonce,
            total,
            entries: entries.to_vec(),
        };
        wire::encode(&m, self.cfg.key.expose().as_bytes())
    }

    async fn send_to(&self, to: SocketAddrV4, kind: Kind, entries: &[Entry], nonce: u32) {
        let chunks: Vec<&[Entry]> = if entries.is_empty() {
            vec![&[]]
        } else {
            entries.chunks(MAX_ENTRIES).collect()
        };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let b = self.message(kind, chunk, nonce, 0);
            match self.socket.send_to(&b, to).await {
                Ok(n) => {
                    let c = &self.counters;
                    c.sent_messages.fetch_add(1, Relaxed);
                    c.sent_entries.fetch_add(chunk.len() as u64, Relaxed);
                    c.sent_bytes.fetch_add(n as u64, Relaxed);
                }
                Err(e) => warn!(peer = %to, "sync: sending: {e}"),
            }
            // A full sync is thousands of datagrams: pace them so the peer's socket keeps up.
            if i % 64 == 63 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    async fn send_all(&self, kind: Kind, entries: &[Entry]) {
        if entries.is_empty() {
            return;
        }
        for &p in &self.cfg.peers {
            self.send_to(p, kind, entries, 0).await;
        }
    }

    /// Asks every peer that has not completed one for a full sync.
    async fn hello(&self) {
        let Some(nonce) = self.lock_state().learning.as_ref().map(|l| l.nonce) else {
            return;
        };
        for &p in &self.cfg.peers {
            let b = self.message(Kind::Hello, &[], nonce, 0);
            if let Err(e) = self.socket.send_to(&b, p).await {
                warn!(peer = %p, "sync: asking for a full sync: {e}");
            }
        }
    }

    fn reject(&self, peer: Option<Ipv4Addr>, why: &'static str) {
        let mut st = self.lock_state();
        *st.rejected.entry(why).or_default() += 1;
        if let Some(p) = peer.and_then(|p| st.peers.get_mut(&p)) {
            p.rejected += 1;
        }
    }

    /// Authenticates a datagram from `from`; the message, or why it was dropped.
    fn accept(&self, buf: &[u8], from: SocketAddr) -> Result<Message, Reject> {
        let SocketAddr::V4(from) = from else {
            return Err(Reject::UnknownPeer);
        };
        if !self.lock_state().peers.contains_key(from.ip()) {
            return Err(Reject::UnknownPeer);
        }
        let m = wire::decode(buf, self.cfg.key.expose().as_bytes())?;
        if m.sender != *from.ip() {
            return Err(Reject::UnknownPeer);
        }
        if !wire::fresh(m.sent_ms, now_ms()) {
            return Err(Reject::Stale);
        }
        let mut st = self.lock_state();
        let peer = st.peers.get_mut(from.ip()).ok_or(Reject::UnknownPeer)?;
        if !peer.window.accept(m.epoch, m.seq) {
            return Err(Reject::Replayed);
        }
        peer.last_contact = Some(SystemTime::now());
        peer.received += 1;
        if let Some(l) = st.learning.as_mut() {
            l.heard = true;
        }
        Ok(m)
    }

    /// Installs a peer's entries; how many were.
    fn install(&self, peer: Ipv4Addr, m: &Message) -> u32 {
        let mut done = 0;
        let mut refused: Vec<&'static str> = Vec::new();
        let now = now_ms();
        let mut lags = Vec::new();
        {
            let mut t = self.lock_tables();
            for e in &m.entries {
                let Tables { maps, dir, .. } = &mut *t;
                let mut r = dir.install(maps, e);
                if matches!(r, Err(Refused::UnknownService | Refused::UnknownReal))
                    && t.rebuild_if_stale()
                {
                    let Tables { maps, dir, .. } = &mut *t;
                    r = dir.install(maps, e);
                }
                match r {
                    Ok(()) => {
                        done += 1;
                        if m.kind == Kind::Entries {
                            lags.push(
                                e.age_ms
                                    .saturating_add(now.saturating_sub(m.sent_ms) as u32),
                            );
                        }
                    }
                    Err(why) => {
                        if refused.is_empty() {
                            tracing::debug!(%peer, ?e, "sync: refused an entry: {}", why.name());
                        }
                        refused.push(why.name());
                    }
                }
            }
        }
        self.counters.installed.fetch_add(u64::from(done), Relaxed);
        let mut st = self.lock_state();
        for why in refused {
            *st.rejected.entry(why).or_default() += 1;
        }
        for l in lags {
            if st.lags.len() == LAG_SAMPLES {
                st.lags.pop_front();
            }
            st.lags.push_back(l);
        }
        if m.kind == Kind::Dump
            && let Some(l) = st.learning.as_mut()
            && l.nonce == m.nonce
        {
            *l.dumped.entry(peer).or_default() += m.entries.len() as u32;
        }
        done
    }

    /// A peer finished a full sync for us: ready if all of it arrived, else ask again.
    async fn done(&self, peer: Ipv4Addr, m: &Message) {
        let again = {
            let mut st = self.lock_state();
            let Some(l) = st.learning.as_mut() else {
                return;
            };
            if l.nonce != m.nonce {
                return;
            }
            let got = l.dumped.get(&peer).copied().unwrap_or(0);
            if got == m.total {
                let why = format!("full sync from {peer}: {got} entries");
                info!("sync: ready ({why})");
                st.learning = None;
                st.ready_reason = Some(why);
                false
            } else {
                warn!(%peer, "sync: the full sync lost datagrams ({got} of {} entries arrived): asking again", m.total);
                l.nonce = rand::random();
                l.dumped.clear();
                true
            }
        };
        if again {
            self.hello().await;
        }
    }

    /// Sends `to` everything, answering its hello.
    async fn dump(self: Arc<Self>, to: SocketAddrV4, nonce: u32) {
        let pin_dir = self.pin_dir.clone();
        let entries = match tokio::task::spawn_blocking(move || scan(&pin_dir, 0)).await {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                return warn!(peer = %to, "sync: reading the table for a full sync: {e:#}");
            }
            Err(e) => return warn!(peer = %to, "sync: full sync: {e}"),
        };
        self.send_to(to, Kind::Dump, &entries, nonce).await;
        let b = self.message(Kind::Done, &[], nonce, entries.len() as u32);
        if let Err(e) = self.socket.send_to(&b, to).await {
            warn!(peer = %to, "sync: ending a full sync: {e}");
        }
        info!(peer = %to, entries = entries.len(), "sync: sent a full sync");
    }
}

/// Forwards the data path's events to every peer, one batch per drain of the ring.
async fn read_events(s: Arc<Shared>, mut ring: AsyncFd<RingBuf<MapData>>) {
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(g) => g,
            Err(e) => return warn!("sync: waiting for data-path events: {e}"),
        };
        let mut events = Vec::new();
        {
            let rb = guard.get_inner_mut();
            while let Some(item) = rb.next() {
                if item.len() >= std::mem::size_of::<SyncEvent>() {
                    events.push(bytemuck::pod_read_unaligned::<SyncEvent>(
                        &item[..std::mem::size_of::<SyncEvent>()],
                    ));
                }
            }
        }
        guard.clear_ready();
        if events.is_empty() {
            continue;
        }
        let now = now_ns();
        let entries: Vec<Entry> = {
            let mut t = s.lock_tables();
            events
                .iter()
                .filter_map(|ev| {
                    t.dir.from_event(ev, now).or_else(|| {
                        // A real or service added a moment ago: look again once.
                        t.rebuild_if_stale();
                        t.dir.from_event(ev, now)
                    })
                })
                .collect()
        };
        s.counters
            .unsendable
            .fetch_add((events.len() - entries.len()) as u64, Relaxed);
        s.send_all(Kind::Entries, &entries).await;
    }
}

/// Receives, authenticates and handles the peers' datagrams.
async fn receive(s: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let (n, from) = match s.socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                warn!("sync: receiving: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        s.counters.received_messages.fetch_add(1, Relaxed);
        s.counters.received_bytes.fetch_add(n as u64, Relaxed);
        let peer = match from {
            SocketAddr::V4(a) => Some(*a.ip()),
            _ => None,
        };
        let m = match s.accept(&buf[..n], from) {
            Ok(m) => m,
            Err(why) => {
                s.reject(peer, why.name());
                continue;
            }
        };
        let Some(peer) = peer else { continue };
        s.counters
            .received_entries
            .fetch_add(m.entries.len() as u64, Relaxed);
        match m.kind {
            Kind::Entries | Kind::Dump => {
                let s2 = s.clone();
                // Installing is a burst of map updates: off the receiving task.
                let _ = tokio::task::spawn_blocking(move || s2.install(peer, &m)).await;
            }
            Kind::Done => s.done(peer, &m).await,
            Kind::Hello => {
                let to = s.lock_state().peers.get(&peer).map(|p| p.addr);
                if let Some(to) = to {
                    tokio::spawn(s.clone().dump(to, m.nonce));
                }
            }
        }
    }
}

/// Once a second: learning (ask again, or give up waiting when nobody answers), the
/// translation's refresh, and every `refresh` the connections seen since the last one.
async fn tick(s: Arc<Shared>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    // The first tick is immediate; `start` has just asked for a full sync.
    every.tick().await;
    let mut last_refresh = Instant::now();
    let mut refreshed_to = now_ns();
    loop {
        every.tick().await;
        let waiting = {
            let mut st = s.lock_state();
            match st.learning.as_ref() {
                Some(l) if !l.heard && l.since.elapsed() >= s.cfg.learn_timeout => {
                    let why = format!(
                        "no peer answered within {:?}: nothing to learn",
                        s.cfg.learn_timeout
                    );
                    warn!("sync: ready ({why})");
                    st.learning = None;
                    st.ready_reason = Some(why);
                    false
                }
                Some(_) => true,
                None => false,
            }
        };
        if waiting {
            s.hello().await;
        }
        s.lock_tables().rebuild();
        if last_refresh.elapsed() >= s.cfg.refresh {
            last_refresh = Instant::now();
            let since = refreshed_to;
            refreshed_to = now_ns();
            let pin_dir = s.pin_dir.clone();
            match tokio::task::spawn_blocking(move || scan(&pin_dir, since)).await {
                Ok(Ok(entries)) => s.send_all(Kind::Entries, &entries).await,
                Ok(Err(e)) => warn!("sync: refresh: {e:#}"),
                Err(e) => warn!("sync: refresh: {e}"),
            }
        }
    }
}
