//! The pinned state's layout, checked before an upgrade reuses it.
//!
//! Two checks, both before anything changes: the layout version recorded in `LB_META`
//! ([`LAYOUT_VERSION`]; none recorded means 1) must be one this lbadm knows, and every map the
//! new object pins must either not exist yet (it is created), have exactly the shape of the
//! pinned one (it is reused: type, key and value sizes, entries, flags), or be an array that
//! grew (it is migrated: a new map, the old values copied). Anything else is refused with the
//! map and both shapes named. The shapes are read from the object itself, so a change that
//! forgets to bump the version is still caught.

use aya::maps::MapInfo;
use aya_obj::maps::PinningType;
use lb_common::{LAYOUT_VERSION, MAP_META, Meta};
use std::{collections::BTreeMap, fmt, path::Path};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// What the kernel needs to agree on for a program to use a pinned map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub kind: u32,
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type {}, {}-byte keys, {}-byte values, {} entries, flags {:#x}",
            self.kind, self.key, self.value, self.max_entries, self.flags
        )
    }
}

/// How an upgrade treats the pinned maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpgradePlan {
    /// The layout found (1 when no record exists).
    pub from: u32,
    /// Maps the new object adds: created and pinned by loading it.
    pub new_maps: Vec<String>,
    /// Arrays with more entries now: re-created, their old entries copied.
    pub grown: Vec<String>,
    /// Maps reused as they are.
    pub kept: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the pinned state has layout {pinned}, written by a newer lbadm (this one knows layouts up to {ours}): use that lbadm, or `lbadm detach` and attach again (which loses connections)"
    )]
    Newer { pinned: u32, ours: u32 },
    #[error(
        "the pinned map {name} does not fit this lbadm's data path (pinned: {pinned}; needed: {ours}): nothing was changed; `lbadm detach` and attach again to start over (which loses connections)"
    )]
    Incompatible {
        name: String,
        pinned: Shape,
        ours: Shape,
    },
    #[error("reading the pinned map {name}: {source}")]
    Read {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("parsing the data path's object: {0}")]
    Object(String),
}

/// Decides how an upgrade from `pinned` (the shapes found under the pin directory, recorded
/// layout `pinned_layout`) to `ours` (the new object's pinned maps) goes, or why it cannot.
pub fn plan(
    pinned_layout: u32,
    pinned: &BTreeMap<String, Shape>,
    ours: &BTreeMap<String, Shape>,
) -> Result<UpgradePlan, LayoutError> {
    if pinned_layout > LAYOUT_VERSION {
        return Err(LayoutError::Newer {
            pinned: pinned_layout,
            ours: LAYOUT_VERSION,
        });
    }
    let mut p = UpgradePlan {
        from: pinned_layout,
        ..UpgradePlan::default()
    };
    for (name, &want) in ours {
        match pinned.get(name) {
            None => p.new_maps.push(name.clone()),
            Some(&have) if have == want => p.kept.push(name.clone()),
            Some(&have) if grows(have, want) => p.grown.push(name.clone()),
            Some(&have) => {
                return Err(LayoutError::Incompatible {
                    name: name.clone(),
                    pinned: have,
                    ours: want,
                });
            }
        }
    }
    Ok(p)
}

/// An array whose entries keep their meaning and only gain company (new counters).
fn grows(have: Shape, want: Shape) -> bool {
    matches!(want.kind, BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY)
        && Shape {
            max_entries: want.max_entries,
            ..have
        } == want
        && want.max_entries > have.max_entries
}

/// The maps an object pins by name, with their shapes.
pub fn object_shapes(object: &[u8]) -> Result<BTreeMap<String, Shape>, LayoutError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| LayoutError::Object(e.to_string()))?;
    Ok(obj
        .maps
        .iter()
        .filter(|(_, m)| m.pinning() == PinningType::ByName)
        .map(|(name, m)| {
            (
                name.clone(),
                Shape {
                    kind: m.map_type(),
                    key: m.key_size(),
                    value: m.value_size(),
                    max_entries: m.max_entries(),
                    flags: m.map_flags(),
                },
            )
        })
        .collect())
}

/// The connection tables' shapes as they will be loaded (the object holds the default sizes).
pub fn set_table_sizes(shapes: &mut BTreeMap<String, Shape>, sizes: super::datapath::TableSizes) {
    for (name, n) in [
        (lb_common::MAP_CONNS, sizes.conns),
        (lb_common::MAP_CONNS_NEW, sizes.unconfirmed),
    ] {
        if let Some(s) = shapes.get_mut(name) {
            s.max_entries = n;
        }
    }
}

/// The shapes of those of `names` that are pinned under `pin_dir`.
pub fn pinned_shapes<'a>(
    pin_dir: &Path,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, Shape>, LayoutError> {
    let mut out = BTreeMap::new();
    for name in names {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let read = |source| LayoutError::Read {
            name: name.clone(),
            source,
        };
        let info = MapInfo::from_pin(&path).map_err(read)?;
        out.insert(
            name.clone(),
            Shape {
                kind: info.map_type().map_err(read)? as u32,
                key: info.key_size(),
                value: info.value_size(),
                max_entries: info.max_entries(),
                flags: info.map_flags(),
            },
        );
    }
    Ok(out)
}

/// The layout record under `pin_dir`, if there is one (lbadm before layout 2 wrote none).
pub fn read_meta(pin_dir: &Path) -> Option<Meta> {
    let data = aya::maps::MapData::from_pin(pin_dir.join(MAP_META)).ok()?;
    let map = aya::maps::Map::from_map_data(data).ok()?;
    let arr: aya::maps::Array<_, Meta> = aya::maps::Array::try_from(map).ok()?;
    arr.get(&0, 0).ok().filter(|m| m.layout != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(kind: u32, value: u32, max_entries: u32) -> Shape {
        Shape {
            kind,
            key: 4,
            value,
            max_entries,
            flags: 0,
        }
    }

    fn maps(v: &[(&str, Shape)]) -> BTreeMap<String, Shape> {
        v.iter().map(|(n, s)| (n.to_string(), *s)).collect()
    }

    #[test]
    fn same_shapes_are_kept_new_maps_created_arrays_grown() {
        let conns = shape(9, 24, 262_144);
        let pinned = maps(&[
            ("LB_CONNS", conns),
            ("LB_REASONS", shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 19)),
        ]);
        let ours = maps(&[
            ("LB_CONNS", conns),
            ("LB_REASONS", shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 64)),
            ("LB_META", shape(BPF_MAP_TYPE_ARRAY, 20, 1)),
        ]);
        let p = plan(1, &pinned, &ours).unwrap();
        assert_eq!(p.from, 1);
        assert_eq!(p.kept, vec!["LB_CONNS"]);
        assert_eq!(p.grown, vec!["LB_REASONS"]);
        assert_eq!(p.new_maps, vec!["LB_META"]);
    }

    #[test]
    fn anything_else_is_refused_naming_the_map() {
        let pinned = maps(&[("LB_CONNS", shape(9, 24, 262_144))]);
        for ours in [
            shape(9, 32, 262_144),   // another value type
            shape(9, 24, 4_194_304), // a resized hash table
            shape(1, 24, 262_144),   // another map type
        ] {
            let e = plan(2, &pinned, &maps(&[("LB_CONNS", ours)])).unwrap_err();
            assert!(
                matches!(&e, LayoutError::Incompatible { name, .. } if name == "LB_CONNS"),
                "{e}"
            );
            assert!(e.to_string().contains("nothing was changed"), "{e}");
        }
        // An array that shrinks would lose entries.
        let pinned = maps(&[("LB_REASONS", shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 64))]);
        let ours = maps(&[("LB_REASONS", shape(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 19))]);
        assert!(plan(2, &pinned, &ours).is_err());
    }

    #[test]
    fn a_newer_layout_is_refused() {
        let e = plan(LAYOUT_VERSION + 1, &BTreeMap::new(), &BTreeMap::new()).unwrap_err();
        assert!(matches!(e, LayoutError::Newer { .. }), "{e}");
    }

    #[test]
    fn the_director_object_pins_what_the_layout_says() {
        let shapes = object_shapes(crate::objects::LB).unwrap();
        for name in [
            lb_common::MAP_CONNS,
            lb_common::MAP_META,
            lb_common::MAP_SYNC,
            lb_common::MAP_REASONS,
        ] {
            assert!(shapes.contains_key(name), "{name} missing: {shapes:?}");
        }
        assert_eq!(
            shapes[lb_common::MAP_REASONS].max_entries,
            lb_common::REASON_SLOTS
        );
        assert_eq!(
            shapes[lb_common::MAP_CONNS].value as usize,
            std::mem::size_of::<lb_common::Conn>()
        );
    }
}
