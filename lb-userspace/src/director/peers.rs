//! The peer directors whose IPIP this host's director program decapsulates for its own real
//! server (the two-node layout, `lbadm realserver setup --decap director`).

use super::maps::MapsError;
use aya::maps::{HashMap, Map, MapData};
use lb_common::{MAP_PEERS, ip_be};
use std::{collections::BTreeSet, net::Ipv4Addr, path::Path};

fn open(pin_dir: &Path) -> Result<HashMap<MapData, u32, u8>, MapsError> {
    let path = pin_dir.join(MAP_PEERS);
    if !path.exists() {
        return Err(MapsError::NotAttached(pin_dir.into()));
    }
    let open = || HashMap::try_from(Map::from_map_data(MapData::from_pin(&path)?)?);
    open().map_err(|source| MapsError::Open {
        name: MAP_PEERS,
        source,
    })
}

/// The peers the director pinned under `pin_dir` accepts.
pub fn read(pin_dir: &Path) -> Result<BTreeSet<Ipv4Addr>, MapsError> {
    Ok(open(pin_dir)?
        .keys()
        .filter_map(Result::ok)
        .map(|k| Ipv4Addr::from(k.to_ne_bytes()))
        .collect())
}

/// Makes the set exactly `peers`: added first, then the others removed, so a peer that stays
/// is never missing.
pub fn write(pin_dir: &Path, peers: &[Ipv4Addr]) -> Result<(), MapsError> {
    let mut m = open(pin_dir)?;
    let want: BTreeSet<u32> = peers.iter().map(|a| ip_be(a.octets())).collect();
    let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
    let err = |what: &str| {
        let what = what.to_string();
        move |source| MapsError::Map { what, source }
    };
    for k in &want {
        m.insert(*k, 1, 0).map_err(err("writing LB_PEERS"))?;
    }
    for k in have.into_iter().filter(|k| !want.contains(k)) {
        m.remove(&k).map_err(err("writing LB_PEERS"))?;
    }
    Ok(())
}
