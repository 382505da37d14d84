//! Observations shared by the integration tests.

use crate::netns::Netns;
use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Output,
};

/// A command's stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The command failed with exactly one line on stderr, containing all of `needles`.
pub fn assert_one_line_error(o: &Output, needles: &[&str]) {
    let (out, err) = text(o);
    assert!(!o.status.success(), "succeeded: {out}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    for n in needles {
        assert!(err.contains(n), "{err:?} does not mention {n:?}");
    }
}

/// Counts IPv4 frames from a source address that reach the stack of a namespace on one
/// interface (an AF_PACKET socket sees what XDP passes, not what it transmits).
pub struct Sniffer(OwnedFd);

impl Sniffer {
    pub fn open(ns: &Netns, ifindex: u32) -> Sniffer {
        ns.run(|| unsafe {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                proto as i32,
            );
            assert!(
                fd >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            let buf: libc::c_int = 8 << 20;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &buf as *const _ as *const libc::c_void,
                4,
            );
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            Sniffer(OwnedFd::from_raw_fd(fd))
        })
    }

    /// Frames from `src` received since the last call.
    pub fn count_from(&self, src: Ipv4Addr) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        loop {
            let r =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if r < 0 {
                return n;
            }
            let f = &buf[..r as usize];
            if f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[26..30] == src.octets() {
                n += 1;
            }
        }
    }
}

/// The names of the reals that answered `n` echo requests to VIP:`port` from the client.
pub fn who_answers(bed: &crate::testbed::TestBed, port: u16, n: usize) -> Vec<String> {
    let vip = std::net::SocketAddrV4::new(bed.vip(), port);
    (0..n)
        .map(|i| {
            let reply =
                crate::testbed::tcp_echo_request(bed.client(), vip, format!("q{i}\n").as_bytes())
                    .unwrap();
            reply.split(' ').next().unwrap().to_string()
        })
        .collect()
}

/// An `ipvsadm -R` file of `services` services with `reals` reals each (1,000 × 10 is the
/// issue's restore benchmark).
pub fn restore_rules(services: u32, reals: u32) -> String {
    let mut rules = String::new();
    for s in 0..services {
        let vip = format!("198.19.{}.{}:6033", s / 250, s % 250 + 1);
        rules += &format!("-A -t {vip} -s wrr\n");
        for r in 0..reals {
            rules += &format!(
                "-a -t {vip} -r 198.18.{}.{}:6033 -i -w {} --tun-type ipip\n",
                100 + r,
                s % 250 + 1,
                r + 1
            );
        }
    }
    rules
}

/// `lbadm ARGS` in `ns` on the maps pinned under `pins`.
pub fn lbadm_in(ns: &Netns, pins: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = ns.command(crate::lbadm_bin());
    cmd.env("LBADM_PIN_DIR", pins).args(args);
    cmd.output().expect("running lbadm")
}

/// The command succeeded: its stdout.
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "lbadm failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Polls `f` every 20 ms until it holds; how long that took. Panics after `timeout`.
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut f: impl FnMut() -> bool,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    start.elapsed()
}
