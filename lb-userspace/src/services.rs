//! The one place that changes the director's configuration maps.
//!
//! Callers describe the virtual services they want; [`Maps::apply`] takes the lock, works out
//! the difference with what the maps hold, builds the scheduling tables and publishes them so
//! the data path never sees a half-written table: reals first, then the inactive copy of each
//! changed table, then the service entry that flips to it (one atomic hash-map update), and only
//! then are removed reals retired.

use crate::scheduler::{self, Candidate, Scheduler};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use lb_common::{
    Config, Conn, ConnKey, Counters, IPPROTO_TCP, IPPROTO_UDP, MAP_CONFIG, MAP_CONNS, MAP_CURSORS,
    MAP_REAL_STATS, MAP_REALS, MAP_REASONS, MAP_SERVICES, MAP_SVC_STATS, MAP_TABLES,
    MAP_VIP_FILTER, MAX_REALS, MAX_SERVICES, REAL_F_IN_USE, Real, SCHED_SLOTS, SchedTable, Service,
    ServiceKey, VIP_FILTER_WORDS, ip_be, vip_filter_bit,
};
use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    fs::File,
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "the data path is not attached (nothing pinned under {0}): run `lbadm attach --iface IF`"
    )]
    NotAttached(PathBuf),
    #[error("cannot open the pinned map {name}: {source}")]
    Open {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("cannot lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Map {
        what: String,
        source: aya::maps::MapError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("too many virtual services (the maximum is {MAX_SERVICES})")]
    TooManyServices,
    #[error("too many real servers (the maximum is {MAX_REALS} over all services)")]
    TooManyReals,
    #[error("service {0} has the real {1} twice")]
    DuplicateReal(ServiceId, Ipv4Addr),
    #[error("service {0} is listed twice")]
    DuplicateService(ServiceId),
}

type Result<T, E = ServiceError> = std::result::Result<T, E>;

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Map { what, source }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
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

    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
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

/// The director's maps, opened from their pins.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub reals: Array<MapData, Real>,
    pub tables: Array<MapData, SchedTable>,
    pub cursors: PerCpuArray<MapData, u32>,
    pub conns: HashMap<MapData, ConnKey, Conn>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub real_stats: PerCpuArray<MapData, Counters>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, Config>,
    pub vip_filter: Array<MapData, u64>,
    pub persist: HashMap<MapData, lb_common::PersistKey, lb_common::Persist>,
    pin_dir: PathBuf,
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map> {
    let data =
        MapData::from_pin(dir.join(name)).map_err(|source| ServiceError::Open { name, source })?;
    Map::from_map_data(data).map_err(|source| ServiceError::Open { name, source })
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open_map($dir, $name)?
            .try_into()
            .map_err(|source| ServiceError::Open {
                name: $name,
                source,
            })?
    };
}

/// Holds the configuration lock (an exclusive `flock` on the pin directory) while alive.
pub struct Lock(File);

impl Drop for Lock {
    fn drop(&mut self) {
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl Maps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        if !pin_dir.join(MAP_SERVICES).exists() {
            return Err(ServiceError::NotAttached(pin_dir.into()));
        }
        Ok(Maps {
            services: typed!(pin_dir, MAP_SERVICES),
            reals: typed!(pin_dir, MAP_REALS),
            tables: typed!(pin_dir, MAP_TABLES),
            cursors: typed!(pin_dir, MAP_CURSORS),
            conns: typed!(pin_dir, MAP_CONNS),
            svc_stats: typed!(pin_dir, MAP_SVC_STATS),
            real_stats: typed!(pin_dir, MAP_REAL_STATS),
            reasons: typed!(pin_dir, MAP_REASONS),
            config: typed!(pin_dir, MAP_CONFIG),
            vip_filter: typed!(pin_dir, MAP_VIP_FILTER),
            persist: typed!(pin_dir, lb_common::MAP_PERSIST),
            pin_dir: pin_dir.into(),
        })
    }

    /// Serialises writers: two `lbadm` processes (or the daemon and `lbadm`) never interleave
    /// their read-modify-write of the tables.
    pub fn lock(&self) -> Result<Lock> {
        let f = File::open(&self.pin_dir).map_err(|source| ServiceError::Lock {
            path: self.pin_dir.clone(),
            source,
        })?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(ServiceError::Lock {
                path: self.pin_dir.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Lock(f))
    }

    /// Reads the installed services, sorted by id, reals in scheduling (slot) order.
    pub fn read(&self) -> Result<Vec<InstalledService>> {
        let mut by_slot: BTreeMap<u32, InstalledService> = BTreeMap::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(map_err("reading LB_SERVICES"))?;
            let Some(id) = ServiceId::from_key(&k) else {
                continue;
            };
            let Some(sched) = Scheduler::from_raw(v.sched) else {
                continue;
            };
            by_slot.insert(
                v.id,
                InstalledService {
                    spec: VirtualService {
                        id,
                        sched,
                        persistence: v.persist_timeout,
                        reals: Vec::new(),
                    },
                    slot: v.id,
                    table_copy: v.table & 1,
                    real_slots: Vec::new(),
                },
            );
        }
        for (slot, r) in self.all_reals()?.into_iter().enumerate() {
            if r.flags & REAL_F_IN_USE == 0 {
                continue;
            }
            if let Some(s) = by_slot.get_mut(&r.service_id) {
                s.spec.reals.push(RealServer {
                    addr: Ipv4Addr::from(r.addr.to_ne_bytes()),
                    weight: r.weight,
                });
                s.real_slots.push(slot as u32);
            }
        }
        let mut out: Vec<_> = by_slot.into_values().collect();
        out.sort_by_key(|s| s.spec.id);
        Ok(out)
    }

    /// Makes the maps hold exactly `want`, touching only what differs.
    pub fn apply(&mut self, want: &[VirtualService]) -> Result<()> {
        let _lock = self.lock()?;
        self.apply_locked(want)
    }

    /// [`Maps::apply`] for a caller that already holds [`Maps::lock`].
    pub fn apply_locked(&mut self, want: &[VirtualService]) -> Result<()> {
        let mut seen = HashSet::new();
        for s in want {
            if !seen.insert(s.id) {
                return Err(ServiceError::DuplicateService(s.id));
            }
            let mut addrs = HashSet::new();
            for r in &s.reals {
                if !addrs.insert(r.addr) {
                    return Err(ServiceError::DuplicateReal(s.id, r.addr));
                }
            }
        }
        let current = self.read()?;
        let cur_by_id: std::collections::HashMap<ServiceId, &InstalledService> =
            current.iter().map(|s| (s.spec.id, s)).collect();

        // Plan slots before writing anything, so running out fails cleanly.
        let mut used_svc: HashSet<u32> = current.iter().map(|s| s.slot).collect();
        let mut used_real: HashSet<u32> = current
            .iter()
            .flat_map(|s| s.real_slots.iter().copied())
            .collect();
        let want_ids: HashSet<ServiceId> = want.iter().map(|s| s.id).collect();
        // Slots of services and reals that go away are not reused within this apply, so an
        // old connection can never see a new occupant under the same generation.
        let mut next_svc = 0u32;
        let mut next_real = 0u32;
        struct Planned<'a> {
            spec: &'a VirtualService,
            slot: u32,
            is_new: bool,
            real_slots: Vec<(u32, bool)>,
        }
        let mut plan = Vec::with_capacity(want.len());
        for s in want {
            let (slot, is_new) = match cur_by_id.get(&s.id) {
                Some(c) => (c.slot, false),
                None => {
                    while used_svc.contains(&next_svc) {
                        next_svc += 1;
                    }
                    if next_svc >= MAX_SERVICES {
                        return Err(ServiceError::TooManyServices);
                    }
                    used_svc.insert(next_svc);
                    (next_svc, true)
                }
            };
            let mut real_slots = Vec::with_capacity(s.reals.len());
            for r in &s.reals {
                let existing = cur_by_id.get(&s.id).and_then(|c| {
                    c.spec
                        .reals
                        .iter()
                        .position(|cr| cr.addr == r.addr)
                        .map(|i| c.real_slots[i])
                });
                match existing {
                    Some(rs) => real_slots.push((rs, false)),
                    None => {
                        while used_real.contains(&next_real) {
                            next_real += 1;
                        }
                        if next_real >= MAX_REALS {
                            return Err(ServiceError::TooManyReals);
                        }
                        used_real.insert(next_real);
                        real_slots.push((next_real, true));
                    }
                }
            }
            plan.push(Planned {
                spec: s,
                slot,
                is_new,
                real_slots,
            });
        }

        // 0. The VIP pre-filter lets the new services' packets through before they exist...
        let old_filter = self.read_filter()?;
        let new_filter = filter_of(want);
        let union: Vec<u64> = old_filter
            .iter()
            .zip(&new_filter)
            .map(|(a, b)| a | b)
            .collect();
        self.write_filter(&old_filter, &union)?;

        // 1. Reals: new ones get a fresh generation and zeroed counters.
        for p in &plan {
            for (r, &(rslot, is_new)) in p.spec.reals.iter().zip(&p.real_slots) {
                let old = self
                    .reals
                    .get(&rslot, 0)
                    .map_err(map_err("reading LB_REALS"))?;
                let mut next = old;
                if is_new {
                    next = Real {
                        addr: ip_be(r.addr.octets()),
                        weight: r.weight,
                        service_id: p.slot,
                        generation: old.generation.wrapping_add(1),
                        flags: REAL_F_IN_USE,
                        _pad: 0,
                    };
                    self.zero_real_stats(rslot)?;
                } else {
                    next.weight = r.weight;
                }
                if next != old {
                    self.reals
                        .set(rslot, next, 0)
                        .map_err(map_err("writing LB_REALS"))?;
                }
            }
        }

        // 2. Tables, then the service entries that point at them.
        for p in &plan {
            let candidates: Vec<Candidate> = p
                .spec
                .reals
                .iter()
                .zip(&p.real_slots)
                .map(|(r, &(id, _))| Candidate {
                    id,
                    addr: ip_be(r.addr.octets()),
                    weight: r.weight,
                })
                .collect();
            let slots = scheduler::build(p.spec.sched, &candidates);
            let mut table = SchedTable {
                len: slots.len() as u32,
                ..Default::default()
            };
            table.slots[..slots.len().min(SCHED_SLOTS)]
                .copy_from_slice(&slots[..slots.len().min(SCHED_SLOTS)]);

            let cur = cur_by_id.get(&p.spec.id);
            let active = cur.map(|c| c.table_copy).unwrap_or(1);
            let live_idx = p.slot * 2 + active;
            let same_table = !p.is_new
                && self
                    .tables
                    .get(&live_idx, 0)
                    .map_err(map_err("reading LB_TABLES"))?
                    == table;
            let same_svc = cur.is_some_and(|c| {
                c.spec.sched == p.spec.sched && c.spec.persistence == p.spec.persistence
            });
            if same_table && same_svc {
                continue;
            }
            let copy = if same_table { active } else { 1 - active };
            if !same_table {
                self.tables
                    .set(p.slot * 2 + copy, table, 0)
                    .map_err(map_err("writing LB_TABLES"))?;
            }
            if p.is_new {
                self.zero_svc_stats(p.slot)?;
            }
            let svc = Service {
                id: p.slot,
                table: copy,
                persist_timeout: p.spec.persistence,
                sched: p.spec.sched.to_raw(),
                flags: 0,
                _pad: [0; 2],
            };
            self.services
                .insert(p.spec.id.key(), svc, 0)
                .map_err(map_err(format!("writing service {}", p.spec.id)))?;
        }

        // 3. Retire what is gone: services first, so no new packet reaches a retired real.
        for c in &current {
            if !want_ids.contains(&c.spec.id) {
                self.services
                    .remove(&c.spec.id.key())
                    .map_err(map_err(format!("removing service {}", c.spec.id)))?;
            }
        }
        let keep: HashSet<u32> = plan
            .iter()
            .flat_map(|p| p.real_slots.iter().map(|&(s, _)| s))
            .collect();
        for c in &current {
            for &rslot in &c.real_slots {
                if !keep.contains(&rslot) {
                    let mut r = self
                        .reals
                        .get(&rslot, 0)
                        .map_err(map_err("reading LB_REALS"))?;
                    r.flags &= !REAL_F_IN_USE;
                    self.reals
                        .set(rslot, r, 0)
                        .map_err(map_err("writing LB_REALS"))?;
                }
            }
        }
        // ...and stops letting removed services' packets in only after they are gone.
        self.write_filter(&union, &new_filter)?;
        Ok(())
    }

    /// Every entry of the reals array. One `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+) instead of a
    /// lookup per slot: listing and every change read the whole array.
    pub fn all_reals(&self) -> Result<Vec<Real>> {
        if let Some(v) = batch_read_array::<Real>(&self.reals, MAX_REALS) {
            return Ok(v);
        }
        self.reals
            .iter()
            .map(|r| r.map_err(map_err("reading LB_REALS")))
            .collect()
    }

    fn read_filter(&self) -> Result<Vec<u64>> {
        if let Some(v) = batch_read_array::<u64>(&self.vip_filter, VIP_FILTER_WORDS) {
            return Ok(v);
        }
        (0..VIP_FILTER_WORDS)
            .map(|i| {
                self.vip_filter
                    .get(&i, 0)
                    .map_err(map_err("reading LB_VIP_FILTER"))
            })
            .collect()
    }

    fn write_filter(&mut self, old: &[u64], new: &[u64]) -> Result<()> {
        for (i, (o, n)) in old.iter().zip(new).enumerate() {
            if o != n {
                self.vip_filter
                    .set(i as u32, *n, 0)
                    .map_err(map_err("writing LB_VIP_FILTER"))?;
            }
        }
        Ok(())
    }

    fn zero_svc_stats(&mut self, slot: u32) -> Result<()> {
        self.svc_stats
            .set(slot, zeros()?, 0)
            .map_err(map_err("zeroing LB_SVC_STATS"))?;
        self.cursors
            .set(slot, zeros()?, 0)
            .map_err(map_err("zeroing LB_CURSORS"))
    }

    fn zero_real_stats(&mut self, slot: u32) -> Result<()> {
        self.real_stats
            .set(slot, zeros()?, 0)
            .map_err(map_err("zeroing LB_REAL_STATS"))
    }

    /// Zeroes the counters of a service and its reals (`ipvsadm -Z`).
    pub fn zero_service(&mut self, s: &InstalledService) -> Result<()> {
        self.svc_stats
            .set(s.slot, zeros()?, 0)
            .map_err(map_err("zeroing LB_SVC_STATS"))?;
        for &r in &s.real_slots {
            self.zero_real_stats(r)?;
        }
        Ok(())
    }

    pub fn service_stats(&self, slot: u32) -> Result<Counters> {
        sum(self
            .svc_stats
            .get(&slot, 0)
            .map_err(map_err("reading LB_SVC_STATS"))?)
    }

    pub fn real_stats(&self, slot: u32) -> Result<Counters> {
        sum(self
            .real_stats
            .get(&slot, 0)
            .map_err(map_err("reading LB_REAL_STATS"))?)
    }

    /// Global reason counters, summed over CPUs, in [`lb_common::Reason::ALL`] order.
    pub fn reasons(&self) -> Result<Vec<(lb_common::Reason, u64)>> {
        lb_common::Reason::ALL
            .iter()
            .map(|&r| {
                let v = self
                    .reasons
                    .get(&(r as u32), 0)
                    .map_err(map_err("reading LB_REASONS"))?;
                Ok((r, v.iter().sum()))
            })
            .collect()
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(map_err("reading LB_CONFIG"))
    }
}

/// Reads a whole array map with `BPF_MAP_LOOKUP_BATCH`; None if the kernel refuses (then the
/// caller falls back to single lookups).
fn batch_read_array<T: aya::Pod + Default + Clone>(
    map: &Array<MapData, T>,
    len: u32,
) -> Option<Vec<T>> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    let fd = aya::maps::IterableMap::map(map).fd().as_fd().as_raw_fd();
    let mut keys = vec![0u32; len as usize];
    let mut values = vec![T::default(); len as usize];
    let mut out_batch = 0u32;
    let mut attr = BatchAttr {
        in_batch: 0,
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: len,
        map_fd: fd as u32,
        elem_flags: 0,
        flags: 0,
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    // The whole array fits in one batch: success, or ENOENT ("no more") with everything read.
    let done = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT);
    if done && attr.count == len {
        Some(values)
    } else {
        None
    }
}

fn filter_of(services: &[VirtualService]) -> Vec<u64> {
    let mut words = vec![0u64; VIP_FILTER_WORDS as usize];
    for s in services {
        let bit = vip_filter_bit(ip_be(s.id.addr.octets()));
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}

fn zeros<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(_, source)| ServiceError::Io {
        what: "counting CPUs".into(),
        source,
    })?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(|source| ServiceError::Io {
        what: "per-CPU values".into(),
        source,
    })
}

fn sum(v: PerCpuValues<Counters>) -> Result<Counters> {
    Ok(v.iter().fold(Counters::default(), |a, c| Counters {
        conns: a.conns + c.conns,
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    }))
}
