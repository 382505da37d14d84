//! Frames sent straight to an interface (AF_PACKET, qdisc bypassed), and the spoofed floods an
//! attacker sends: one sender per CPU, every packet twice, as a client's retransmission would.

use crate::{netns::Netns, packet};
use anyhow::{Result, ensure};
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
    thread,
};

/// An AF_PACKET socket bound to `ifindex` of the calling thread's namespace.
pub fn raw_socket(ifindex: u32) -> Result<OwnedFd> {
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // Straight to the driver: the qdisc is not what is measured.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(
        rc == 0,
        "bind AF_PACKET: {}",
        std::io::Error::last_os_error()
    );
    Ok(fd)
}

/// Sends every frame once (sendmmsg, batches of 64), retrying a batch the device had no room
/// for. Returns how many the kernel took.
pub fn send_all(fd: &OwnedFd, frames: &[Vec<u8>]) -> Result<usize> {
    let mut sent = 0;
    for chunk in frames.chunks(64) {
        let mut iov: Vec<libc::iovec> = chunk
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr() as *mut libc::c_void,
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|v| {
                let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n > 0 {
            sent += n as usize;
        }
    }
    Ok(sent)
}

/// Where a flood goes: the director's MAC and the service, sent from `ifindex` in `ns`.
pub struct Target<'a> {
    pub ns: &'a Netns,
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vip: Ipv4Addr,
    pub port: u16,
    /// Frames the receiver has handled so far (its XDP program's counters): senders wait while
    /// more than a ring's worth are in flight, since veth drops what its ring cannot hold.
    pub handled: &'a (dyn Fn() -> u64 + Sync),
}

const IN_FLIGHT: u64 = 192;

impl<'a> Target<'a> {
    /// From the bed's client to its (first) director's VIP:`port`; `handled` as above.
    pub fn bed(
        bed: &'a crate::testbed::TestBed,
        port: u16,
        handled: &'a (dyn Fn() -> u64 + Sync),
    ) -> Target<'a> {
        Target {
            ns: bed.client(),
            ifindex: bed.client_eth0().index,
            src_mac: bed.client_eth0().mac,
            dst_mac: bed.director_eth0().mac,
            vip: bed.vip(),
            port,
            handled,
        }
    }
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloodReport {
    /// Distinct spoofed flows.
    pub flows: usize,
    /// Frames the kernel took (every flow twice).
    pub frames: usize,
    pub seconds: f64,
}

/// `flows` spoofed TCP packets with `flags` (SYN, ACK, ...) from random sources in
/// 100.64.0.0/10 (random ports), every one sent twice back to back, split over one sender
/// thread per CPU.
pub fn tcp_flood(t: &Target, flows: usize, flags: u8, seed: u64) -> Result<FloodReport> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift64: reproducible, and no two flows of a flood share a tuple in practice.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut shares: Vec<Vec<Vec<u8>>> = vec![Vec::with_capacity(flows * 2 / cpus + 2); cpus];
    for i in 0..flows {
        let r = next();
        let src = Ipv4Addr::from(0x6440_0000 | (r as u32 & 0x003f_ffff));
        let sport = 1024 + ((r >> 32) as u16 % 64000);
        let f = packet::client_tcp_to(t.dst_mac, t.src_mac, src, sport, t.vip, t.port, flags, &[]);
        let share = &mut shares[i % cpus];
        share.push(f.clone());
        share.push(f);
    }
    let socks: Vec<OwnedFd> = (0..cpus)
        .map(|_| t.ns.run(|| raw_socket(t.ifindex)))
        .collect::<Result<_>>()?;
    let start = (t.handled)();
    let sent = AtomicU64::new(0);
    let t0 = std::time::Instant::now();
    let frames = thread::scope(|s| {
        let hs: Vec<_> = shares
            .iter()
            .zip(&socks)
            .enumerate()
            .map(|(cpu, (frames, fd))| {
                let sent = &sent;
                s.spawn(move || {
                    let _ = crate::fixture::pin_cpu(cpu);
                    let mut n = 0;
                    for batch in frames.chunks(32) {
                        while sent.load(Ordering::Relaxed) > (t.handled)() - start + IN_FLIGHT {
                            thread::yield_now();
                        }
                        // A full device queue takes part of a batch: the rest goes again.
                        let mut rest = batch;
                        while !rest.is_empty() {
                            let k = send_all(fd, rest)?;
                            if k == 0 {
                                thread::yield_now();
                            }
                            sent.fetch_add(k as u64, Ordering::Relaxed);
                            n += k;
                            rest = &rest[k..];
                        }
                    }
                    Ok(n)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("flood sender panicked"))
            .sum::<Result<usize>>()
    })?;
    Ok(FloodReport {
        flows,
        frames,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
