//! The director's maps, opened from their pins: the one place that changes the configuration
//! maps, and where counters and the connection table are read.
//!
//! Callers describe the virtual services they want; [`Maps::apply`] takes the lock, reads a
//! [`Snapshot`], lets [`plan`](super::plan::plan) work out the writes, and [`Maps::publish`]es
//! them in the order that keeps the data path consistent.

use super::{
    plan::{self, Plan, PlanError, Snapshot},
    scheduler::Scheduler,
    table::{InstalledService, RealServer, ServiceId, VirtualService, addr},
};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapInfo, PerCpuArray, PerCpuValues};
use lb_common::{
    AllowKey, Config, Conn, ConnKey, Counters, FloodState, Limits, MAP_ALLOW, MAP_CONFIG,
    MAP_CONNS, MAP_CONNS_NEW, MAP_CURSORS, MAP_FLOOD, MAP_LIMITS, MAP_PERSIST, MAP_REAL_CONNS,
    MAP_REAL_STATS, MAP_REALS, MAP_REASONS, MAP_SERVICES, MAP_SVC_STATS, MAP_TABLES,
    MAP_VIP_FILTER, MAX_REALS, Persist, PersistKey, REAL_F_IN_USE, Real, RealConns, Reason,
    SchedTable, Service, ServiceKey, VIP_FILTER_WORDS,
};
use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "the data path is not attached (nothing pinned under {0}): run `lbadm attach --iface IF`"
    )]
    NotAttached(PathBuf),
    #[error(
        "the data path pinned under {0} was attached by an older lbadm (no {MAP_REAL_CONNS}): `lbadm attach --iface IF` upgrades it in place, keeping its connections"
    )]
    OlderLayout(PathBuf),
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
    #[error(transparent)]
    Plan(#[from] PlanError),
}

type Result<T, E = MapsError> = std::result::Result<T, E>;

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    let what = what.into();
    move |source| MapsError::Map { what, source }
}

/// The director's maps, opened from their pins.
pub struct Maps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub reals: Array<MapData, Real>,
    pub tables: Array<MapData, SchedTable>,
    pub cursors: PerCpuArray<MapData, u32>,
    /// Established (confirmed) connections.
    pub conns: HashMap<MapData, ConnKey, Conn>,
    /// Connections not confirmed yet.
    pub conns_new: HashMap<MapData, ConnKey, Conn>,
    pub limits: Array<MapData, Limits>,
    pub flood: PerCpuArray<MapData, FloodState>,
    pub allow: LpmTrie<MapData, AllowKey, u32>,
    pub svc_stats: PerCpuArray<MapData, Counters>,
    pub real_stats: PerCpuArray<MapData, Counters>,
    /// Connections per real as the data path counts them, and the thresholds.
    pub real_conns: Array<MapData, RealConns>,
    pub reasons: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, Config>,
    pub vip_filter: Array<MapData, u64>,
    pub persist: HashMap<MapData, PersistKey, Persist>,
    pin_dir: PathBuf,
}

fn open_map(dir: &Path, name: &'static str) -> Result<Map> {
    let data =
        MapData::from_pin(dir.join(name)).map_err(|source| MapsError::Open { name, source })?;
    Map::from_map_data(data).map_err(|source| MapsError::Open { name, source })
}

macro_rules! typed {
    ($dir:expr, $name:expr) => {
        open_map($dir, $name)?
            .try_into()
            .map_err(|source| MapsError::Open {
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
            return Err(MapsError::NotAttached(pin_dir.into()));
        }
        if !pin_dir.join(MAP_REAL_CONNS).exists() {
            return Err(MapsError::OlderLayout(pin_dir.into()));
        }
        Ok(Maps {
            services: typed!(pin_dir, MAP_SERVICES),
            reals: typed!(pin_dir, MAP_REALS),
            tables: typed!(pin_dir, MAP_TABLES),
            cursors: typed!(pin_dir, MAP_CURSORS),
            conns: typed!(pin_dir, MAP_CONNS),
            conns_new: typed!(pin_dir, MAP_CONNS_NEW),
            limits: typed!(pin_dir, MAP_LIMITS),
            flood: typed!(pin_dir, MAP_FLOOD),
            allow: typed!(pin_dir, MAP_ALLOW),
            svc_stats: typed!(pin_dir, MAP_SVC_STATS),
            real_stats: typed!(pin_dir, MAP_REAL_STATS),
            real_conns: typed!(pin_dir, MAP_REAL_CONNS),
            reasons: typed!(pin_dir, MAP_REASONS),
            config: typed!(pin_dir, MAP_CONFIG),
            vip_filter: typed!(pin_dir, MAP_VIP_FILTER),
            persist: typed!(pin_dir, MAP_PERSIST),
            pin_dir: pin_dir.into(),
        })
    }

    /// Serialises writers: two `lbadm` processes (or the daemon and `lbadm`) never interleave
    /// their read-modify-write of the tables.
    pub fn lock(&self) -> Result<Lock> {
        let f = File::open(&self.pin_dir).map_err(|source| MapsError::Lock {
            path: self.pin_dir.clone(),
            source,
        })?;
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(MapsError::Lock {
                path: self.pin_dir.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Lock(f))
    }

    /// Reads the installed services, sorted by id, reals in scheduling (slot) order.
    pub fn read(&self) -> Result<Vec<InstalledService>> {
        self.installed(&self.all_reals()?)
    }

    /// The installed services, given the whole reals array.
    fn installed(&self, reals: &[Real]) -> Result<Vec<InstalledService>> {
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
        let conns = self.all_real_conns()?;
        for (slot, r) in reals.iter().enumerate() {
            if r.flags & REAL_F_IN_USE == 0 {
                continue;
            }
            if let Some(s) = by_slot.get_mut(&r.service_id) {
                let c = conns.get(slot).copied().unwrap_or_default();
                s.spec.reals.push(RealServer {
                    u_threshold: c.u_threshold,
                    l_threshold: c.l_threshold,
                    ..RealServer::new(addr(r.addr), r.weight)
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
        let snap = self.snapshot()?;
        let plan = plan::plan(&snap, want)?;
        self.publish(&plan)
    }

    /// What planning needs to know of the maps.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let all = self.all_reals()?;
        let services = self.installed(&all)?;
        let reals = all
            .into_iter()
            .enumerate()
            .filter(|(_, r)| *r != Real::default())
            .map(|(i, r)| (i as u32, r))
            .collect();
        let mut live_tables = std::collections::HashMap::new();
        for s in &services {
            let t = self
                .tables
                .get(&(s.slot * 2 + s.table_copy), 0)
                .map_err(map_err("reading LB_TABLES"))?;
            live_tables.insert(s.slot, t);
        }
        let src = self.config()?.tunnel_src;
        Ok(Snapshot {
            services,
            reals,
            live_tables,
            filter: self.read_filter()?,
            local: (src != 0).then(|| addr(src)),
        })
    }

    /// Makes the writes of `plan`, in its order (see [`super::plan`]).
    pub fn publish(&mut self, plan: &Plan) -> Result<()> {
        self.write_filter(&plan.filter_open)?;
        for &(slot, r, fresh) in &plan.reals {
            if fresh {
                self.zero_real_stats(slot)?;
            }
            self.reals
                .set(slot, r, 0)
                .map_err(map_err("writing LB_REALS"))?;
        }
        for &(slot, u_threshold, l_threshold, fresh) in &plan.thresholds {
            let cur = if fresh {
                RealConns::default()
            } else {
                self.real_conns(slot)?
            };
            let next = RealConns {
                u_threshold,
                l_threshold,
                ..cur
            };
            self.real_conns
                .set(slot, next, 0)
                .map_err(map_err("writing LB_REAL_CONNS"))?;
        }
        for (idx, t) in &plan.tables {
            self.tables
                .set(*idx, *t, 0)
                .map_err(map_err("writing LB_TABLES"))?;
        }
        for &slot in &plan.new_services {
            self.zero_svc_stats(slot)?;
        }
        for (k, v) in &plan.services {
            self.services.insert(k, v, 0).map_err(map_err(format!(
                "writing service {}",
                ServiceId::from_key(k).map_or("?".into(), |id| id.to_string())
            )))?;
        }
        for k in &plan.removed_services {
            self.services.remove(k).map_err(map_err(format!(
                "removing service {}",
                ServiceId::from_key(k).map_or("?".into(), |id| id.to_string())
            )))?;
        }
        for &(slot, r) in &plan.retired {
            self.reals
                .set(slot, r, 0)
                .map_err(map_err("writing LB_REALS"))?;
        }
        self.write_filter(&plan.filter_close)
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

    /// Every entry of the per-real connection counts.
    pub fn all_real_conns(&self) -> Result<Vec<RealConns>> {
        if let Some(v) = batch_read_array::<RealConns>(&self.real_conns, MAX_REALS) {
            return Ok(v);
        }
        self.real_conns
            .iter()
            .map(|r| r.map_err(map_err("reading LB_REAL_CONNS")))
            .collect()
    }

    pub fn real_conns(&self, slot: u32) -> Result<RealConns> {
        self.real_conns
            .get(&slot, 0)
            .map_err(map_err("reading LB_REAL_CONNS"))
    }

    /// Overwrites a real's counts (thresholds and overload state kept): the recount. Between
    /// its read and its write the data path may count a connection that is then lost from the
    /// count; the next recount finds it.
    pub fn set_real_counts(&mut self, slot: u32, active: u64, inactive: u64) -> Result<()> {
        let cur = self.real_conns(slot)?;
        self.real_conns
            .set(
                slot,
                RealConns {
                    active,
                    inactive,
                    ..cur
                },
                0,
            )
            .map_err(map_err("writing LB_REAL_CONNS"))
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

    fn write_filter(&mut self, words: &[(u32, u64)]) -> Result<()> {
        for &(i, w) in words {
            self.vip_filter
                .set(i, w, 0)
                .map_err(map_err("writing LB_VIP_FILTER"))?;
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

    /// Global reason counters, summed over CPUs, in [`Reason::ALL`] order.
    pub fn reasons(&self) -> Result<Vec<(Reason, u64)>> {
        Reason::ALL
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

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn limits(&self) -> Result<Limits> {
        self.limits.get(&0, 0).map_err(map_err("reading LB_LIMITS"))
    }

    pub fn set_limits(&mut self, l: &Limits) -> Result<()> {
        self.limits
            .set(0, l, 0)
            .map_err(map_err("writing LB_LIMITS"))
    }

    /// Every CPU's flood detector.
    pub fn flood_states(&self) -> Result<Vec<FloodState>> {
        Ok(self
            .flood
            .get(&0, 0)
            .map_err(map_err("reading LB_FLOOD"))?
            .iter()
            .copied()
            .collect())
    }

    /// Entries of the established table and of the unconfirmed one, as created.
    pub fn table_sizes(&self) -> Result<(u32, u32)> {
        let size = |name: &'static str| {
            MapInfo::from_pin(self.pin_dir.join(name))
                .map(|i| i.max_entries())
                .map_err(|source| MapsError::Open { name, source })
        };
        Ok((size(MAP_CONNS)?, size(MAP_CONNS_NEW)?))
    }
}

/// Reads a whole array map with `BPF_MAP_LOOKUP_BATCH`; None if the kernel refuses (then the
/// caller falls back to single lookups).
fn batch_read_array<T: aya::Pod + Default + Clone>(
    map: &Array<MapData, T>,
    len: u32,
) -> Option<Vec<T>> {
    use std::os::fd::AsFd as _;
    let fd = aya::maps::IterableMap::map(map).fd().as_fd();
    let mut keys = vec![0u32; len as usize];
    let mut values = vec![T::default(); len as usize];
    // SAFETY: both buffers hold `len` entries.
    let read = unsafe {
        crate::sys::bpffs::raw::lookup_batch(
            fd,
            &mut None,
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            len,
        )
    };
    // The whole array fits in one batch.
    match read {
        Ok((n, _)) if n == len => Some(values),
        _ => None,
    }
}

fn zeros<T: aya::Pod + Default>() -> Result<PerCpuValues<T>> {
    let n = aya::util::nr_cpus().map_err(|(_, source)| MapsError::Io {
        what: "counting CPUs".into(),
        source,
    })?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(|source| MapsError::Io {
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
