//! Long-lived client connections through a VIP, as a connection pool holds them: each one
//! remembers the real that answered it first, and [`Held::probe`] checks that every one still
//! answers, from that same real.

use crate::netns::Netns;
use anyhow::{Context as _, Result, bail};
use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddrV4, TcpStream},
    time::Duration,
};

struct Conn {
    stream: BufReader<TcpStream>,
    real: String,
    alive: bool,
}

pub struct Held {
    conns: Vec<Conn>,
    sent: u64,
}

/// The outcome of one round of [`Held::probe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Answered by the real the connection started on.
    pub same: usize,
    /// Broke in this round (reset, closed, timed out) or answered by another real.
    pub lost: usize,
    /// Broken in an earlier round (not probed again).
    pub dead: usize,
}

impl Held {
    /// Opens `n` connections from `ns` to `dst` (a [`crate::testbed::line_echo_server`]
    /// behind it) and records the real each one reached.
    pub fn open(ns: &Netns, dst: SocketAddrV4, n: usize) -> Result<Held> {
        let mut h = Held {
            conns: Vec::with_capacity(n),
            sent: 0,
        };
        for i in 0..n {
            let s = ns
                .run(|| TcpStream::connect_timeout(&dst.into(), Duration::from_secs(3)))
                .with_context(|| format!("held connection {i} to {dst}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            h.conns.push(Conn {
                stream: BufReader::new(s),
                real: String::new(),
                alive: true,
            });
        }
        for i in 0..n {
            let real = h.ask(i)?;
            h.conns[i].real = real;
        }
        Ok(h)
    }

    /// One line out and back on connection `i`; the real that answered.
    fn ask(&mut self, i: usize) -> Result<String> {
        self.sent += 1;
        let msg = format!("held {i} {}", self.sent);
        let c = &mut self.conns[i];
        c.stream
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        if c.stream.read_line(&mut line)? == 0 {
            bail!("closed");
        }
        match line.trim_end().strip_suffix(&msg) {
            Some(real) => Ok(real.trim_end().to_string()),
            None => bail!("unexpected answer {line:?}"),
        }
    }

    /// Sends one line on every live connection.
    pub fn probe(&mut self) -> Tally {
        let mut t = Tally::default();
        for i in 0..self.conns.len() {
            if !self.conns[i].alive {
                t.dead += 1;
                continue;
            }
            match self.ask(i) {
                Ok(real) if real == self.conns[i].real => t.same += 1,
                _ => {
                    self.conns[i].alive = false;
                    t.lost += 1;
                }
            }
        }
        t
    }

    /// Panics unless every connection still answers from its first real.
    pub fn check(&mut self, when: &str) {
        let t = self.probe();
        assert_eq!(
            (t.lost, t.dead),
            (0, 0),
            "{when}: {t:?} of {} held connections",
            self.conns.len()
        );
    }

    /// How many connections each real holds, by the name its echo server gives.
    pub fn per_real(&self) -> std::collections::BTreeMap<String, usize> {
        let mut m = std::collections::BTreeMap::new();
        for c in &self.conns {
            *m.entry(c.real.clone()).or_insert(0) += 1;
        }
        m
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }
}
