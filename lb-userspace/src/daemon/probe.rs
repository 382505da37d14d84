//! Health checks through the tunnel: a probe reaches VIP:port inside IPIP to one chosen real,
//! exactly as client packets do, so a real whose decapsulation, VIP or rp_filter is broken
//! fails the check even though its own address answers.
//!
//! How the director's own stack sends such a probe (the data path's TC programs do the packet
//! work, see `lb_tc_egress` / `lb_tc_ingress`):
//! 1. the socket is marked [`PROBE_MARK`], bound to the tunnel source and given a local port;
//! 2. `LB_PROBES[port]` = {VIP, real, port} is written *before* connecting;
//! 3. it connects to `real:port`, an ordinary route out of the director's interface;
//! 4. TC egress rewrites the destination to the VIP and encapsulates to the real (or drops the
//!    packet: a marked packet never leaves bare);
//! 5. the real decapsulates and answers from VIP:port straight to the director; TC ingress
//!    rewrites the source back to the real's address, so the socket accepts the reply. (The
//!    director owns the VIP, and its stack would drop a packet from a local address.)
//!
//! The entry's counters tell whether both rewrites happened; a check is UP only if they did.

use aya::maps::{HashMap, Map, MapData};
use lb_common::{MAP_PROBES, PROBE_MARK, Probe, ProbeKey, ip_be, port_be};
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{Arc, Mutex},
};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "cannot open the tunnel-probe map {path}: {source} (is the data path attached by this \
         version of lbadm? `lbadm detach && lbadm attach --iface IF` re-creates it)"
    )]
    Open {
        path: String,
        source: aya::maps::MapError,
    },
    #[error("tunnel probe: {0}")]
    Socket(String),
    #[error("tunnel probe: registering local port {port}: {source}")]
    Register {
        port: u16,
        source: aya::maps::MapError,
    },
}

/// The pinned `LB_PROBES` map, shared by every checker of a daemon.
pub struct Probes {
    map: Mutex<HashMap<MapData, ProbeKey, Probe>>,
    /// Where probes come from: the data path's tunnel source (the director's address).
    pub source: Ipv4Addr,
}

impl Probes {
    pub fn open(pin_dir: &Path, source: Ipv4Addr) -> Result<Arc<Self>, ProbeError> {
        let path = pin_dir.join(MAP_PROBES);
        let open = || -> Result<HashMap<MapData, ProbeKey, Probe>, aya::maps::MapError> {
            let data = MapData::from_pin(&path)?;
            HashMap::try_from(Map::from_map_data(data)?)
        };
        let map = open().map_err(|source| ProbeError::Open {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Arc::new(Probes {
            map: Mutex::new(map),
            source,
        }))
    }

    /// Removes entries a killed daemon left behind.
    pub fn clear(&self) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<ProbeKey> = map.keys().filter_map(Result::ok).collect();
        for k in keys {
            let _ = map.remove(&k);
        }
    }

    /// A TCP socket whose connection to `real:port` goes to `vip:port` through the tunnel, and
    /// the registration that makes it so (removed when dropped).
    pub fn socket(
        self: &Arc<Self>,
        vip: Ipv4Addr,
        real: Ipv4Addr,
        port: u16,
    ) -> Result<(tokio::net::TcpSocket, Registration), ProbeError> {
        let sock = tokio::net::TcpSocket::new_v4()
            .map_err(|e| ProbeError::Socket(format!("socket: {e}")))?;
        set_int(&sock, libc::SOL_SOCKET, libc::SO_MARK, PROBE_MARK as i32)
            .map_err(|e| ProbeError::Socket(format!("SO_MARK: {e}")))?;
        // The outer header adds 20 bytes: keep every segment within the path MTU.
        set_int(&sock, libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1400)
            .map_err(|e| ProbeError::Socket(format!("TCP_MAXSEG: {e}")))?;
        // Closing resets the connection at once, while the registration still exists: a FIN
        // sent later, after it is removed, would be dropped by the egress program.
        sock.set_zero_linger()
            .map_err(|e| ProbeError::Socket(format!("SO_LINGER: {e}")))?;
        sock.bind(SocketAddr::V4(SocketAddrV4::new(self.source, 0)))
            .map_err(|e| ProbeError::Socket(format!("binding to {}: {e}", self.source)))?;
        let local = sock
            .local_addr()
            .map_err(|e| ProbeError::Socket(format!("local address: {e}")))?;
        let key = ProbeKey {
            port: port_be(local.port()),
            _pad: 0,
        };
        let value = Probe {
            vip: ip_be(vip.octets()),
            real: ip_be(real.octets()),
            port: port_be(port),
            ..Probe::default()
        };
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, value, 0)
            .map_err(|source| ProbeError::Register {
                port: local.port(),
                source,
            })?;
        Ok((
            sock,
            Registration {
                probes: self.clone(),
                key,
            },
        ))
    }
}

fn set_int(
    sock: &tokio::net::TcpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// One probe's entry in `LB_PROBES`; removed on drop.
pub struct Registration {
    probes: Arc<Probes>,
    key: ProbeKey,
}

impl Registration {
    /// (packets encapsulated, replies unwrapped) so far.
    pub fn counters(&self) -> (u32, u32) {
        let map = self.probes.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&self.key, 0)
            .map(|p| (p.egress, p.ingress))
            .unwrap_or((0, 0))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.probes.map.lock().unwrap_or_else(|e| e.into_inner());
        let _ = map.remove(&self.key);
    }
}
