//! popt, as ipvsadm 1.31 drives it: `poptGetNextOpt` over one argv, with bundling, optional
//! arguments, leftovers and `!#:+` expansion.

use super::options::{ArgKind, Opt, POPT_TABLE, PoptOption};

/// popt's errors that ipvsadm can meet, with `poptStrerror`'s texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PoptError {
    /// POPT_ERROR_BADOPT
    BadOpt,
    /// POPT_ERROR_NOARG
    NoArg,
    /// POPT_ERROR_UNWANTEDARG
    UnwantedArg,
}

impl PoptError {
    pub(super) fn text(self) -> &'static str {
        match self {
            PoptError::BadOpt => "unknown option",
            PoptError::NoArg => "missing argument",
            PoptError::UnwantedArg => "option does not take an argument",
        }
    }
}

/// `poptGetNextOpt` over one argv (without `argv[0]`), for a table without aliases or execs.
pub(super) struct Popt<'a> {
    argv: &'a [&'a str],
    /// Index of the next argv element to read.
    next: usize,
    /// Unread short options of a bundle: (argv index, byte offset).
    next_char: Option<(usize, usize)>,
    /// After `--`: everything is a non-option.
    rest_leftover: bool,
    leftovers: Vec<&'a str>,
    next_leftover: usize,
    /// Elements taken by a `!#:+` expansion (popt's `argb`): skipped when reached.
    taken: Vec<bool>,
}

impl<'a> Popt<'a> {
    pub(super) fn new(argv: &'a [&'a str]) -> Self {
        Popt {
            argv,
            next: 0,
            next_char: None,
            rest_leftover: false,
            leftovers: Vec::new(),
            next_leftover: 0,
            taken: vec![false; argv.len()],
        }
    }

    /// `poptBadOption(con, POPT_BADOPTION_NOALIAS)`: the argv element read last.
    pub(super) fn bad_option(&self) -> &'a str {
        self.argv[self
            .next
            .saturating_sub(1)
            .min(self.argv.len().saturating_sub(1))]
    }

    /// `poptGetArg`.
    pub(super) fn get_arg(&mut self) -> Option<&'a str> {
        let a = self.leftovers.get(self.next_leftover).copied();
        if a.is_some() {
            self.next_leftover += 1;
        }
        a
    }

    /// `poptGetNextOpt`: `Ok(None)` at the end (-1), the option and its argument, or an error.
    pub(super) fn next_opt(&mut self) -> Result<Option<(Opt, Option<String>)>, PoptError> {
        loop {
            if self.next_char.is_none() && self.next == self.argv.len() {
                return Ok(None);
            }
            let mut found: Option<&PoptOption> = None;
            let mut long_arg: Option<&'a str> = None;
            if self.next_char.is_none() {
                if self.taken[self.next] {
                    self.next += 1;
                    continue;
                }
                let i = self.next;
                let s = self.argv[i];
                self.next += 1;
                if self.rest_leftover || !s.starts_with('-') || s == "-" {
                    self.leftovers.push(s);
                    continue;
                }
                if s == "--" {
                    self.rest_leftover = true;
                    continue;
                }
                if let Some(body) = s.strip_prefix("--") {
                    let (name, arg) = match body.find('=') {
                        Some(eq) => (&body[..eq], Some(&body[eq + 1..])),
                        None => (body, None),
                    };
                    // No ipvsadm option has POPT_ARGFLAG_ONEDASH, so `-name` is never long.
                    match POPT_TABLE
                        .iter()
                        .find(|o| !o.long.is_empty() && o.long == name)
                    {
                        Some(o) => {
                            found = Some(o);
                            long_arg = arg;
                        }
                        None => return Err(PoptError::BadOpt),
                    }
                } else {
                    self.next_char = Some((i, 1));
                }
            }
            if let Some((i, off)) = self.next_char.take() {
                let s = self.argv[i];
                let c = s.as_bytes()[off];
                let o = POPT_TABLE
                    .iter()
                    .find(|o| o.short != 0 && o.short == c)
                    .ok_or(PoptError::BadOpt)?;
                found = Some(o);
                // Short option names are ASCII, so `off + 1` is a char boundary.
                if off + 1 < s.len() {
                    self.next_char = Some((i, off + 1));
                }
            }
            let o = found.expect("an option was found or an error returned");
            match o.arg {
                ArgKind::None => {
                    let pending_eq = self
                        .next_char
                        .is_some_and(|(i, off)| self.argv[i].as_bytes()[off] == b'=');
                    if long_arg.is_some() || pending_eq {
                        return Err(PoptError::UnwantedArg);
                    }
                    return Ok(Some((o.opt, None)));
                }
                ArgKind::Required | ArgKind::Optional => {
                    let raw: Option<&'a str> = if let Some(a) = long_arg {
                        Some(a)
                    } else if let Some((i, off)) = self.next_char.take() {
                        let rest = &self.argv[i][off..];
                        Some(rest.strip_prefix('=').unwrap_or(rest))
                    } else if self.next == self.argv.len() {
                        if o.arg == ArgKind::Required {
                            return Err(PoptError::NoArg);
                        }
                        None
                    } else if o.arg == ArgKind::Optional && self.argv[self.next].starts_with('-') {
                        None
                    } else {
                        // popt does not skip `!#:+`-taken elements here.
                        self.next += 1;
                        Some(self.argv[self.next - 1])
                    };
                    let arg = raw.map(|a| self.expand_next_arg(a));
                    return Ok(Some((o.opt, arg)));
                }
            }
        }
    }

    /// popt's `expandNextArg`: each `!#:+` becomes the next non-option argv element, which is
    /// then skipped (the same one for every `!#:+` of this argument).
    fn expand_next_arg(&mut self, s: &str) -> String {
        let b = s.as_bytes();
        let mut out: Vec<u8> = Vec::with_capacity(b.len());
        let mut subst: Option<&'a str> = None;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            i += 1;
            if c == b'!' && b[i..].starts_with(b"#:+") {
                if subst.is_none() {
                    subst = self.find_next_arg();
                }
                if let Some(a) = subst {
                    out.extend_from_slice(a.as_bytes());
                    i += 3;
                    continue;
                }
            }
            out.push(c);
        }
        String::from_utf8(out).expect("whole UTF-8 pieces were joined")
    }

    /// popt's `findNextArg(con, 1, 1)`. Where popt would loop forever (elements remain but all
    /// start with `-`), nothing is found.
    fn find_next_arg(&mut self) -> Option<&'a str> {
        let i = (self.next..self.argv.len())
            .find(|&i| !self.taken[i] && !self.argv[i].starts_with('-'))?;
        self.taken[i] = true;
        Some(self.argv[i])
    }
}
