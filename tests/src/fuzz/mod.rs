//! The differential packet fuzzer: generated and broken frames, with random configuration
//! changes and clock jumps between them, run through the compiled director (`BPF_PROG_TEST_RUN`
//! on CPU 0, in the fixture's namespace, whose routes make `bpf_fib_lookup` known) and through
//! the reference model ([`crate::model`]); action, output bytes and every map entry the packet
//! touched must be equal, and every thousand packets or so all of the data path's maps.
//!
//! Time: the program reads the coarse monotonic clock once per packet, which the fuzzer reads
//! just before and after the run. When the clock ticked in between, the model runs at each tick
//! in that span and one of them must match.

mod frames;
mod kernel;

use crate::{
    fixture::{
        self, DIRECTOR, Fixture, GATEWAY, GATEWAY_MAC, REAL_REMOTE, REAL_UNRESOLVED, REAL1,
        REAL1_MAC, REAL2, REAL2_MAC, REAL3, REAL3_MAC, VIP,
    },
    model::{Model, Out, Routes},
};
use anyhow::{Context as _, Result, bail};
use kernel::{View, model_view};
use lb_common::{Reason, ip_be};
use lb_userspace::director::conntrack::now_ns;
use lb_userspace::director::{
    Maps, Protocol, RealServer, Scheduler, ServiceId, VirtualService, allow, peers,
};
use std::{collections::VecDeque, net::Ipv4Addr, os::fd::AsFd as _};

/// A small, fast, seedable generator (splitmix64): a run is reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn word(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n.
    pub fn below(&mut self, n: u64) -> u64 {
        self.word() % n.max(1)
    }

    /// True `percent` times in 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Real servers the configurations draw from: resolved neighbours, one behind the gateway, one
/// whose neighbour is unknown (handed to TC), the director itself and one with no route.
const POOL: [Ipv4Addr; 7] = [
    REAL1,
    REAL2,
    REAL3,
    REAL_REMOTE,
    REAL_UNRESOLVED,
    DIRECTOR,
    Ipv4Addr::new(203, 0, 113, 9),
];

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    pub packets: u64,
    pub config_changes: u64,
    pub clock_jumps: u64,
    pub full_checks: u64,
    /// Packets during whose run the clock ticked (the model ran at each tick).
    pub ticked: u64,
    /// How the packets left, by the reason the data path counted.
    pub reasons: Vec<(Reason, u64)>,
    pub seconds: f64,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} packets in {:.1} s ({:.0}/s), 0 differences; {} configuration changes, {} clock jumps, {} full map comparisons, {} packets across a clock tick",
            self.packets,
            self.seconds,
            self.packets as f64 / self.seconds.max(1e-9),
            self.config_changes,
            self.clock_jumps,
            self.full_checks,
            self.ticked
        )?;
        for (r, n) in &self.reasons {
            writeln!(f, "  {:<24} {n}", r.name())?;
        }
        Ok(())
    }
}

/// What `bpf_fib_lookup` answers in the fixture's namespace.
fn routes(f: &Fixture) -> Routes {
    let be = |a: Ipv4Addr| ip_be(a.octets());
    let mut hops = std::collections::HashMap::new();
    for (a, mac) in [(REAL1, REAL1_MAC), (REAL2, REAL2_MAC), (REAL3, REAL3_MAC)] {
        hops.insert(be(a), (be(a), Some(mac)));
    }
    hops.insert(be(REAL_REMOTE), (be(GATEWAY), Some(GATEWAY_MAC)));
    hops.insert(be(REAL_UNRESOLVED), (be(REAL_UNRESOLVED), None));
    Routes {
        ifindex: f.ifindex,
        mac: f.mac,
        mtu: fixture::MTU,
        hops,
    }
}

/// A random configuration of services over the two VIPs.
fn services(rng: &mut Rng) -> Vec<VirtualService> {
    let mut out: Vec<VirtualService> = Vec::new();
    for vip in [VIP, frames::VIP2] {
        for _ in 0..rng.below(3) {
            let persistence = *rng.pick(&[0, 0, 30, 600]);
            let port = match rng.below(10) {
                0 if persistence > 0 => 0,
                _ => *rng.pick(&frames::PORTS),
            };
            let proto = if rng.chance(75) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let id = ServiceId {
                proto,
                addr: vip,
                port,
            };
            if out.iter().any(|s| s.id == id) {
                continue;
            }
            let mut reals: Vec<RealServer> = Vec::new();
            for _ in 0..rng.below(5) {
                let addr = *rng.pick(&POOL);
                if reals.iter().any(|r| r.addr == addr) {
                    continue;
                }
                let mut r = RealServer::new(addr, rng.below(4) as u32);
                if rng.chance(20) {
                    r.u_threshold = 1 + rng.below(4) as u32;
                    r.l_threshold = rng.below(r.u_threshold as u64) as u32;
                }
                reals.push(r);
            }
            out.push(VirtualService {
                id,
                sched: *rng.pick(&Scheduler::ALL),
                persistence,
                reals,
            });
        }
    }
    out
}

/// One change a operator or the daemon could make; says what it did.
fn reconfigure(rng: &mut Rng, maps: &mut Maps) -> Result<String> {
    // A director without a tunnel source forwards nothing: one change long at most.
    let mut c = maps.config()?;
    if c.tunnel_src == 0 {
        c.tunnel_src = ip_be(DIRECTOR.octets());
        maps.config.set(0, c, 0)?;
    }
    Ok(match rng.below(100) {
        0..55 => {
            let s = services(rng);
            let what = format!("apply {s:?}");
            // A configuration userspace refuses changes nothing; the run goes on.
            match maps.apply(&s) {
                Ok(()) => what,
                Err(e) => format!("{what}: refused: {e}"),
            }
        }
        55..70 => {
            let mut lists = allow::AllowLists::new();
            if rng.chance(60) {
                let cidrs = ["198.18.0.10/32", "10.9.0.0/16", "10.9.1.0/24", "0.0.0.0/0"];
                let n = rng.below(3);
                let list = (0..n).map(|_| rng.pick(&cidrs).parse().unwrap()).collect();
                lists.insert(*rng.pick(&[VIP, frames::VIP2]), list);
            }
            allow::replace(maps, &lists)?;
            let mut l = maps.limits()?;
            l.flood_rate = *rng.pick(&[0, 0, 2, 8]);
            maps.set_limits(&l)?;
            format!("allow {lists:?}, flood rate {}", l.flood_rate)
        }
        70..78 => {
            let p: &[Ipv4Addr] = if rng.chance(60) { &[frames::PEER] } else { &[] };
            peers::write(maps.pin_dir(), p)?;
            format!("peers {p:?}")
        }
        78..81 => {
            c.tunnel_src = 0;
            maps.config.set(0, c, 0)?;
            "no tunnel source".into()
        }
        84..94 => {
            let Some(slot) = real_in_use(rng, maps)? else {
                return Ok("recount: no real".into());
            };
            let (a, i) = (rng.below(4), rng.below(4));
            maps.set_real_counts(slot, a, i)?;
            format!("recount real slot {slot}: {a} active, {i} inactive")
        }
        _ => {
            let Some(slot) = real_in_use(rng, maps)? else {
                return Ok("local flag: no real".into());
            };
            let mut r = maps.reals.get(&slot, 0)?;
            r.flags ^= lb_common::REAL_F_LOCAL;
            maps.reals.set(slot, r, 0)?;
            format!("real slot {slot} flags {}", r.flags)
        }
    })
}

/// A random slot of a real some service uses.
fn real_in_use(rng: &mut Rng, maps: &Maps) -> Result<Option<u32>> {
    let in_use: Vec<u32> = (0u32..)
        .zip(maps.all_reals()?)
        .filter(|(_, r)| r.flags & lb_common::REAL_F_IN_USE != 0)
        .map(|(i, _)| i)
        .collect();
    Ok((!in_use.is_empty()).then(|| *rng.pick(&in_use)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The entries on which two views differ, one line each.
fn differences(model: &View, kernel: &View) -> Vec<String> {
    let mut out = Vec::new();
    for (k, m) in &model.conns {
        let kv = kernel.conns.get(k);
        if kv != Some(m) {
            out.push(format!(
                "conn {k:?}: model (established, new) {m:?}, kernel {kv:?}"
            ));
        }
    }
    macro_rules! each {
        ($field:ident) => {
            for (k, m) in &model.$field {
                let kv = kernel.$field.get(k);
                if kv != Some(m) {
                    out.push(format!(
                        "{} {k:?}: model {m:?}, kernel {kv:?}",
                        stringify!($field)
                    ));
                }
            }
        };
    }
    each!(persist);
    each!(real_conns);
    each!(svc_stats);
    each!(real_stats);
    each!(cursors);
    if model.flood != kernel.flood {
        out.push(format!(
            "flood: model {:?}, kernel {:?}",
            model.flood, kernel.flood
        ));
    }
    for (i, (m, k)) in model.reasons.iter().zip(&kernel.reasons).enumerate() {
        if m != k {
            let name = Reason::ALL.get(i).map_or("?", |r| r.name());
            out.push(format!("reason {name}: model {m}, kernel {k}"));
        }
    }
    out
}

/// Runs `packets` frames from `seed`; the first difference is an error that says everything
/// needed to see it again.
pub fn run(packets: u64, seed: u64, progress: bool) -> Result<Report> {
    // Tables far larger than the flows a run makes: an LRU map evicts before it is full (it
    // tops up a CPU's free list from the least recently used), which no model can foresee.
    let mut f = Fixture::with_conns(1 << 16)?;
    let routes = routes(&f);
    let prog: &aya::programs::Xdp = f
        .bpf
        .program(lb_common::PROG_LB)
        .context("lb_xdp missing")?
        .try_into()?;
    let fd = prog.fd()?.as_fd().try_clone_to_owned()?;
    let (ifindex, maps) = (f.ifindex, &mut f.maps);
    let started = std::time::Instant::now();
    let mut report = f.ns.run(|| -> Result<Report> {
        fixture::pin_cpu0()?;
        let mut run = Run {
            rng: Rng::new(seed),
            maps,
            routes,
            history: VecDeque::new(),
            report: Report::default(),
        };
        run.all(packets, &fd, ifindex, progress)?;
        Ok(run.report)
    })?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

struct Run<'a> {
    rng: Rng,
    maps: &'a mut Maps,
    routes: Routes,
    /// The last operations, for a difference's report.
    history: VecDeque<String>,
    report: Report,
}

impl Run<'_> {
    fn note(&mut self, what: String) {
        if self.history.len() == 24 {
            self.history.pop_front();
        }
        self.history.push_back(what);
    }

    fn fail(&self, what: String) -> anyhow::Error {
        let mut s = format!("{what}\nthe operations before it, oldest first:\n");
        for h in &self.history {
            s.push_str(&format!("  {h}\n"));
        }
        anyhow::anyhow!(s)
    }

    /// Compares every map entry the data path writes with the model.
    fn check_all(&mut self, model: &Model) -> Result<()> {
        let ks = kernel::state(self.maps)?;
        let t = kernel::everything(&model.st, &ks);
        let d = differences(&model_view(&model.st, &t), &model_view(&ks, &t));
        self.report.full_checks += 1;
        if !d.is_empty() {
            return Err(self.fail(format!(
                "the maps differ from the model after packet {}:\n  {}",
                self.report.packets,
                d.join("\n  ")
            )));
        }
        Ok(())
    }

    fn all(
        &mut self,
        packets: u64,
        fd: &std::os::fd::OwnedFd,
        ifindex: u32,
        progress: bool,
    ) -> Result<()> {
        let what = reconfigure(&mut Rng::new(self.rng.word()), self.maps)?;
        self.note(what);
        let mut model = kernel::model(self.maps, &self.routes)?;
        let mut services: Vec<_> = model.cfg.services.keys().copied().collect();
        for i in 0..packets {
            if i % 500 == 499 || self.rng.below(1000) < 1 {
                self.check_all(&model)?;
                let what = reconfigure(&mut self.rng, self.maps)?;
                self.note(what);
                self.report.config_changes += 1;
                model = kernel::model(self.maps, &self.routes)?;
                services = model.cfg.services.keys().copied().collect();
            }
            if self.rng.below(1000) < 6 {
                let secs = *self
                    .rng
                    .pick(&[0.3, 0.9, 1.1, 9.9, 10.2, 61.0, 121.0, 301.0, 601.0, 901.0]);
                let by = (secs * 1e9) as u64 + self.rng.below(1_000_000);
                kernel::age(self.maps, by)?;
                kernel::age_model(&mut model.st, by);
                self.note(format!("clock jump: every timestamp {by} ns older"));
                self.report.clock_jumps += 1;
            }
            let live = {
                let n = model.st.conns.len() + model.st.conns_new.len();
                (n > 0).then(|| {
                    let k = self.rng.below(n as u64) as usize;
                    *model
                        .st
                        .conns
                        .keys()
                        .chain(model.st.conns_new.keys())
                        .nth(k)
                        .unwrap()
                })
            };
            let frame = frames::frame(&mut self.rng, live, &services);
            let t0 = now_ns();
            let out = fixture::xdp_once(fd, ifindex, &frame)?;
            let t1 = now_ns();
            self.note(format!("packet {i}: {}", hex(&frame)));
            model = self.compare(model, &frame, out.action, &out.data, t0, t1)?;
            self.report.packets += 1;
            if i % 1024 == 1023 {
                self.check_all(&model)?;
            }
            if progress && i % 100_000 == 99_999 {
                eprintln!("{} packets, 0 differences", i + 1);
            }
        }
        self.check_all(&model)?;
        let reasons = kernel::reasons(self.maps)?;
        self.report.reasons = Reason::ALL
            .iter()
            .map(|&r| (r, reasons[r as usize]))
            .filter(|(_, n)| *n > 0)
            .collect();
        Ok(())
    }

    /// The model after `frame`, at the tick the kernel used; an error if no tick matches.
    fn compare(
        &mut self,
        model: Model,
        frame: &[u8],
        action: u32,
        data: &[u8],
        t0: u64,
        t1: u64,
    ) -> Result<Model> {
        // The clock's ticks are not evenly spaced (NTP slews them): the instants between t0 and
        // t1 worth trying are the timestamps the kernel wrote in that span.
        let mut ticks = vec![t0];
        if t1 != t0 {
            self.report.ticked += 1;
            ticks.push(t1);
        }
        let mut first: Option<(Out, Vec<String>)> = None;
        let mut model = Some(model);
        let mut i = 0;
        while i < ticks.len() {
            let now = ticks[i];
            let mut m = if t1 == t0 {
                model.take().expect("one tick")
            } else {
                model.clone().expect("kept for every tick")
            };
            let out = m.step(frame, now);
            let kv = kernel::kernel_view(self.maps, &m.touched)?;
            for stamp in kernel::stamps(&kv) {
                if t0 < stamp && stamp < t1 && !ticks.contains(&stamp) {
                    ticks.push(stamp);
                }
            }
            let d = differences(&model_view(&m.st, &m.touched), &kv);
            if out.action == action && out.data == data && d.is_empty() {
                return Ok(m);
            }
            first.get_or_insert((out, d));
            i += 1;
        }
        let (out, d) = first.expect("one tick at least");
        let mut what = format!(
            "packet {} differs (clock {t0}..{t1}):\n  frame  {}\n  model  action {} reason {} data {}\n  kernel action {action} data {}",
            self.report.packets,
            hex(frame),
            out.action,
            out.reason.name(),
            hex(&out.data),
            hex(data)
        );
        if let Some(i) = (0..out.data.len().min(data.len())).find(|&i| out.data[i] != data[i]) {
            what.push_str(&format!("\n  first different byte: {i}"));
        }
        for l in d {
            what.push_str(&format!("\n  {l}"));
        }
        bail!(self.fail(what))
    }
}
