//! The compiled director's side of the comparison: its maps read into the model's shapes, and
//! the same views of both.
use crate::model::{Config, Model, Routes, State, Touched};
use anyhow::{Context as _, Result};
use aya::maps::{IterableMap, MapData};
use lb_common::{
    Conn, ConnKey, Counters, FloodState, MAX_REALS, MAX_SERVICES, Persist, PersistKey,
    REASON_SLOTS, Real, RealConns, ip_be,
};
use lb_userspace::{
    director::{Maps, peers},
    sys::bpffs::raw,
};
use std::{
    collections::HashMap,
    os::fd::{AsFd, BorrowedFd},
};

fn fd<M: IterableMap<K, V>, K: aya::Pod, V>(m: &M) -> BorrowedFd<'_> {
    m.map().fd().as_fd()
}

/// Every entry of a map read with `BPF_MAP_LOOKUP_BATCH` (hash maps and arrays alike).
fn all<K: bytemuck::Pod + Eq + std::hash::Hash, V: bytemuck::Pod>(
    fd: BorrowedFd<'_>,
) -> Result<HashMap<K, V>> {
    let mut out = HashMap::new();
    raw::each_batch::<K, V>(fd, |k, v| {
        out.extend(k.iter().copied().zip(v.iter().copied()))
    })
    .context("BPF_MAP_LOOKUP_BATCH")?;
    Ok(out)
}

/// The first `n` entries of a per-CPU array, each as its values on every possible CPU.
fn per_cpu<V: bytemuck::Pod>(fd: BorrowedFd<'_>, n: u32) -> Result<Vec<Vec<V>>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    let stride = std::mem::size_of::<V>().next_multiple_of(8);
    let mut keys = vec![0u32; n as usize];
    let mut values = vec![0u8; n as usize * stride * cpus];
    let mut token = None;
    let mut read = 0usize;
    while read < n as usize {
        // SAFETY: room for the remaining keys and their per-CPU values.
        let (got, done) = unsafe {
            raw::lookup_batch(
                fd,
                &mut token,
                keys[read..].as_mut_ptr().cast(),
                values[read * stride * cpus..].as_mut_ptr(),
                n - read as u32,
            )
        }
        .context("BPF_MAP_LOOKUP_BATCH on a per-CPU array")?;
        read += got as usize;
        if done || got == 0 {
            break;
        }
    }
    Ok((0..read)
        .map(|i| {
            (0..cpus)
                .map(|c| {
                    bytemuck::pod_read_unaligned(
                        &values[(i * cpus + c) * stride..][..size_of::<V>()],
                    )
                })
                .collect()
        })
        .collect())
}

fn sum(c: &[Counters]) -> Counters {
    c.iter().fold(Counters::default(), |a, b| Counters {
        conns: a.conns + b.conns,
        packets: a.packets + b.packets,
        bytes: a.bytes + b.bytes,
    })
}

fn nonzero<V: bytemuck::Pod + PartialEq>(v: &V) -> bool {
    bytemuck::bytes_of(v).iter().any(|&b| b != 0)
}

/// The configuration the maps hold.
pub fn config(maps: &Maps) -> Result<Config> {
    let services: HashMap<_, _> = maps.services.iter().collect::<Result<_, _>>()?;
    let reals = all::<u32, Real>(fd(&maps.reals))?
        .into_iter()
        .filter(|(_, r)| nonzero(r))
        .collect();
    let mut tables = HashMap::new();
    for s in services.values() {
        for idx in [s.id * 2, s.id * 2 + 1] {
            tables.insert(idx, maps.tables.get(&idx, 0)?);
        }
    }
    let mut words: Vec<(u32, u64)> = all(fd(&maps.vip_filter))?.into_iter().collect();
    words.sort_unstable();
    let vip_filter = words.into_iter().map(|(_, w)| w).collect();
    let cfg = maps.config()?;
    Ok(Config {
        services,
        reals,
        tables,
        vip_filter,
        limits: maps.limits()?,
        allow: maps
            .allow
            .iter()
            .map(|e| e.map(|(k, v)| (k.prefix_len(), k.data(), v)))
            .collect::<Result<_, _>>()?,
        tunnel_src: cfg.tunnel_src,
        nr_cpus: cfg.nr_cpus,
        peers: peers::read(maps.pin_dir())?
            .into_iter()
            .map(|a| ip_be(a.octets()))
            .collect(),
    })
}

/// Everything the data path writes, as CPU 0 sees it (the fuzzer runs there).
pub fn state(maps: &Maps) -> Result<State> {
    let by_slot = |v: Vec<Vec<Counters>>| -> HashMap<u32, Counters> {
        v.iter()
            .enumerate()
            .map(|(i, c)| (i as u32, sum(c)))
            .filter(|(_, c)| nonzero(c))
            .collect()
    };
    Ok(State {
        conns: all(fd(&maps.conns))?.into_iter().collect(),
        conns_new: all(fd(&maps.conns_new))?.into_iter().collect(),
        persist: all(fd(&maps.persist))?.into_iter().collect(),
        real_conns: all::<u32, RealConns>(fd(&maps.real_conns))?
            .into_iter()
            .filter(|(_, r)| nonzero(r))
            .collect(),
        cursors: per_cpu::<u32>(fd(&maps.cursors), MAX_SERVICES)?
            .iter()
            .enumerate()
            .map(|(i, c)| (i as u32, c[0]))
            .filter(|(_, c)| *c != 0)
            .collect(),
        flood: per_cpu::<FloodState>(fd(&maps.flood), 1)?[0][0],
        reasons: reasons(maps)?,
        svc_stats: by_slot(per_cpu(fd(&maps.svc_stats), MAX_SERVICES)?),
        real_stats: by_slot(per_cpu(fd(&maps.real_stats), MAX_REALS)?),
    })
}

pub fn reasons(maps: &Maps) -> Result<Vec<u64>> {
    Ok(per_cpu::<u64>(fd(&maps.reasons), REASON_SLOTS)?
        .iter()
        .map(|v| v.iter().sum())
        .collect())
}

pub fn model(maps: &Maps, routes: &Routes) -> Result<Model> {
    Ok(Model::new(config(maps)?, state(maps)?, routes.clone()))
}

/// The entries a step touched (or, for `everything`, all of them), side by side.
#[derive(Debug, PartialEq)]
pub struct View {
    pub conns: HashMap<ConnKey, (Option<Conn>, Option<Conn>)>,
    pub persist: HashMap<PersistKey, Option<Persist>>,
    pub real_conns: HashMap<u32, RealConns>,
    pub svc_stats: HashMap<u32, Counters>,
    pub real_stats: HashMap<u32, Counters>,
    pub cursors: HashMap<u32, u32>,
    pub flood: FloodState,
    pub reasons: Vec<u64>,
}

/// The model's view of `t`.
pub fn model_view(st: &State, t: &Touched) -> View {
    View {
        conns: t
            .conns
            .iter()
            .map(|k| (*k, (st.conns.get(k).copied(), st.conns_new.get(k).copied())))
            .collect(),
        persist: t
            .persist
            .iter()
            .map(|k| (*k, st.persist.get(k).copied()))
            .collect(),
        real_conns: t
            .reals
            .iter()
            .map(|&i| (i, st.real_conns.get(&i).copied().unwrap_or_default()))
            .collect(),
        svc_stats: t
            .services
            .iter()
            .map(|&i| (i, st.svc_stats.get(&i).copied().unwrap_or_default()))
            .collect(),
        real_stats: t
            .reals
            .iter()
            .map(|&i| (i, st.real_stats.get(&i).copied().unwrap_or_default()))
            .collect(),
        cursors: t
            .services
            .iter()
            .map(|&i| (i, st.cursors.get(&i).copied().unwrap_or_default()))
            .collect(),
        flood: st.flood,
        reasons: st.reasons.clone(),
    }
}

/// The kernel's view of `t`, read entry by entry.
pub fn kernel_view(maps: &Maps, t: &Touched) -> Result<View> {
    let get = |m: &aya::maps::HashMap<MapData, ConnKey, Conn>, k: &ConnKey| match m.get(k, 0) {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(e),
    };
    let mut st = State::default();
    let mut conns = HashMap::new();
    for k in &t.conns {
        conns.insert(*k, (get(&maps.conns, k)?, get(&maps.conns_new, k)?));
    }
    for k in &t.persist {
        match maps.persist.get(k, 0) {
            Ok(v) => {
                st.persist.insert(*k, v);
            }
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for &i in &t.reals {
        st.real_conns.insert(i, maps.real_conns.get(&i, 0)?);
        st.real_stats.insert(i, sum(&maps.real_stats.get(&i, 0)?));
    }
    for &i in &t.services {
        st.svc_stats.insert(i, sum(&maps.svc_stats.get(&i, 0)?));
        st.cursors.insert(i, maps.cursors.get(&i, 0)?[0]);
    }
    st.flood = maps.flood.get(&0, 0)?[0];
    st.reasons = reasons(maps)?;
    let mut v = model_view(&st, t);
    v.conns = conns;
    Ok(v)
}

/// The timestamps a view holds (entries' last packet, the flood window).
pub fn stamps(v: &View) -> Vec<u64> {
    let mut out = vec![v.flood.window_ns, v.flood.since_ns];
    for (a, b) in v.conns.values() {
        out.extend(a.iter().chain(b.iter()).map(|c| c.last_seen_ns));
    }
    out.extend(v.persist.values().flatten().map(|t| t.last_seen_ns));
    out
}

/// Every key either side holds, for a comparison of everything.
pub fn everything(a: &State, b: &State) -> Touched {
    let mut t = Touched::default();
    for s in [a, b] {
        t.conns.extend(s.conns.keys().chain(s.conns_new.keys()));
        t.persist.extend(s.persist.keys());
        t.reals
            .extend(s.real_conns.keys().chain(s.real_stats.keys()));
        t.services
            .extend(s.svc_stats.keys().chain(s.cursors.keys()));
    }
    t
}

/// Moves every timestamp the data path keeps `by` nanoseconds into the past, in the maps.
pub fn age(maps: &mut Maps, by: u64) -> Result<()> {
    for table in [&mut maps.conns, &mut maps.conns_new] {
        let entries: Vec<(ConnKey, Conn)> = table.iter().collect::<Result<_, _>>()?;
        for (k, mut c) in entries {
            c.last_seen_ns = c.last_seen_ns.wrapping_sub(by);
            table.insert(k, c, 0)?;
        }
    }
    let entries: Vec<(PersistKey, Persist)> = maps.persist.iter().collect::<Result<_, _>>()?;
    for (k, mut t) in entries {
        t.last_seen_ns = t.last_seen_ns.wrapping_sub(by);
        maps.persist.insert(k, t, 0)?;
    }
    let mut flood = maps.flood.get(&0, 0)?;
    let mut v: Vec<FloodState> = flood.iter().copied().collect();
    v[0].window_ns = v[0].window_ns.wrapping_sub(by);
    v[0].since_ns = v[0].since_ns.wrapping_sub(by);
    flood = aya::maps::PerCpuValues::try_from(v)?;
    maps.flood.set(0, flood, 0)?;
    Ok(())
}

/// The same in the model.
pub fn age_model(st: &mut State, by: u64) {
    for c in st.conns.values_mut().chain(st.conns_new.values_mut()) {
        c.last_seen_ns = c.last_seen_ns.wrapping_sub(by);
    }
    for t in st.persist.values_mut() {
        t.last_seen_ns = t.last_seen_ns.wrapping_sub(by);
    }
    st.flood.window_ns = st.flood.window_ns.wrapping_sub(by);
    st.flood.since_ns = st.flood.since_ns.wrapping_sub(by);
}
