//! Masking of secret values: the detectors and the scanner that runs them.
//!
//! A clean value costs one walk of an Aho-Corasick DFA over the detectors'
//! keywords, one table step a byte; a detector's regular expression only
//! runs on a value that contains one of its keywords. Matching works on
//! bytes, so a value that is not valid UTF-8 is scanned like any other.

mod assign;
pub mod detectors;
pub mod policy;
pub mod rows;
pub mod sql;
pub mod stream;
mod views;

use std::{borrow::Cow, ops::Range, sync::LazyLock};

use aho_corasick::{Anchored, MatchKind, automaton::Automaton, dfa};
use regex::bytes::{Regex, RegexBuilder};

pub use detectors::{DETECTORS, Detector, Pattern};
pub use sql::{MaskedSql, masked_statement, statement_text};

/// A Policy names a detector group that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown masking detector {name:?}; known: all, {known}")]
pub struct UnknownDetector {
    /// The name as written.
    pub name: String,
    /// The names that exist.
    pub known: String,
}

/// Checks that every name is `all` or a detector group.
pub fn check_names(names: &[impl AsRef<str>]) -> Result<(), UnknownDetector> {
    for name in names {
        let name = name.as_ref();
        if name != "all" && !DETECTORS.iter().any(|d| d.group == name) {
            let mut known: Vec<&str> = DETECTORS.iter().map(|d| d.group).collect();
            known.dedup();
            return Err(UnknownDetector {
                name: name.to_owned(),
                known: known.join(", "),
            });
        }
    }
    Ok(())
}

/// A secret found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where, in bytes.
    pub range: Range<usize>,
    /// Which detector found it.
    pub detector: &'static str,
    /// Its position in [`DETECTORS`], for metrics.
    pub id: usize,
}

#[derive(Debug)]
struct Compiled {
    detector: &'static Detector,
    /// Position in [`DETECTORS`].
    id: usize,
    matcher: Matcher,
}

#[derive(Debug)]
enum Matcher {
    /// With `grouped`, only capture group 1 is the secret.
    Regex {
        regex: Regex,
        grouped: bool,
    },
    Code(fn(&[u8], &mut Vec<Range<usize>>)),
}

/// The enabled detectors, ready to scan.
#[derive(Debug)]
pub struct Scanner {
    detectors: Vec<Compiled>,
    prefilter: Option<dfa::DFA>,
    /// Keyword pattern index → detector index.
    owner: Vec<usize>,
    /// Detectors without keywords, as a bit set over `detectors`.
    always: u64,
}

impl Scanner {
    /// A scanner for the detector groups a Policy names (`all` is every
    /// secret detector; personal-data detectors only run when named).
    pub fn new(names: &[impl AsRef<str>]) -> Result<Scanner, UnknownDetector> {
        check_names(names)?;
        let all = names.iter().any(|n| n.as_ref() == "all");
        let enabled = DETECTORS
            .iter()
            .filter(|d| (all && !d.opt_in) || names.iter().any(|n| n.as_ref() == d.group));
        Ok(Self::with(enabled))
    }

    /// A scanner running exactly `detectors`.
    pub fn with<'a>(detectors: impl IntoIterator<Item = &'a Detector>) -> Scanner
    where
        'a: 'static,
    {
        let detectors: Vec<Compiled> = detectors
            .into_iter()
            .map(|detector| {
                let matcher = match detector.pattern {
                    Pattern::Regex(pattern) => {
                        // The built-in patterns are constants covered by
                        // tests, so a failure here is a bug in this file,
                        // caught by `cargo test`.
                        #[allow(clippy::expect_used)]
                        let regex = RegexBuilder::new(pattern)
                            .unicode(false)
                            .build()
                            .expect("built-in detector patterns compile");
                        let grouped = regex.captures_len() > 1;
                        Matcher::Regex { regex, grouped }
                    }
                    Pattern::Code(find) => Matcher::Code(find),
                };
                let id = DETECTORS
                    .iter()
                    .position(|d| d.name == detector.name)
                    .unwrap_or(usize::MAX);
                Compiled {
                    detector,
                    id,
                    matcher,
                }
            })
            .collect();
        assert!(detectors.len() <= 64, "the candidate set is a u64");
        let mut keywords = Vec::new();
        let mut owner = Vec::new();
        let mut always = 0u64;
        for (i, compiled) in detectors.iter().enumerate() {
            if compiled.detector.keywords.is_empty() {
                always |= 1 << i;
            }
            for keyword in compiled.detector.keywords {
                keywords.push(*keyword);
                owner.push(i);
            }
        }
        // Built from constant keywords; cannot fail for these sizes.
        #[allow(clippy::expect_used)]
        let prefilter = (!keywords.is_empty()).then(|| {
            dfa::DFA::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .prefilter(false)
                .build(&keywords)
                .expect("keyword automaton builds")
        });
        Scanner {
            detectors,
            prefilter,
            owner,
            always,
        }
    }

    /// How many detectors are enabled.
    pub fn len(&self) -> usize {
        self.detectors.len()
    }

    /// Whether any detector is enabled.
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty()
    }

    /// The secrets in `value`, sorted by position, overlaps merged: those
    /// in the value as it is, and those in its decoded views (backslash and
    /// `%XX` escapes taken off, wrapped tokens joined; see [`views`]),
    /// mapped back to the bytes that encode them.
    pub fn find(&self, value: &[u8], out: &mut Vec<Found>) {
        out.clear();
        // The common case, a clean value: no keyword and nothing to decode.
        let candidates = self.candidates(value);
        if candidates == 0 && memchr::memchr3(b'\\', b'%', b'\n', value).is_none() {
            return;
        }
        if let Some(strings) = views::json_strings(value) {
            self.find_json(value, candidates, &strings, out);
            merge(out);
            return;
        }
        self.run(value, candidates, false, out);
        if !out.is_empty() && memchr::memchr(b'\\', value).is_some() {
            // A pattern may end (or start) inside an escape sequence of the
            // value as it is (`\"` after a key in a JSON string); the mask
            // takes the whole sequence, so none is left half.
            let escapes = views::escapes(value);
            for f in out.iter_mut() {
                f.range = views::widen(f.range.clone(), &escapes);
            }
        }
        let views = views::decoded(value);
        if !views.is_empty() {
            let mut seen = Vec::new();
            for view in &views {
                seen.clear();
                let joined = view.has_joins();
                self.run(&view.text, self.candidates(&view.text), joined, &mut seen);
                for f in seen.drain(..) {
                    // A joined view only adds what crosses a join.
                    if joined && !view.crosses_join(&f.range) {
                        continue;
                    }
                    let range = view.original(f.range);
                    if !range.is_empty() {
                        out.push(Found { range, ..f });
                    }
                }
            }
        }
        merge(out);
    }

    /// The secrets of a JSON document: each string scanned on its own,
    /// decoded, and the value of every key that names a secret (directly,
    /// or as `{"name": "DB_PASSWORD", "value": ...}`), whole.
    fn find_json(&self, value: &[u8], candidates: u64, strings: &[views::JsonString], out: &mut Vec<Found>) {
        let assignment = self
            .detectors
            .iter()
            .find(|c| matches!(c.matcher, Matcher::Code(_)));
        let mut inner = Vec::new();
        // The document as it is, for patterns that read a key and its value
        // across strings (`"aws_secret_access_key": "..."`): a find counts
        // when it lies inside one string.
        self.run(value, candidates, false, &mut inner);
        let escapes = views::escapes(value);
        for f in inner.drain(..) {
            let range = views::widen(f.range.clone(), &escapes);
            let i = strings.partition_point(|s| s.content.end < range.end);
            if strings
                .get(i)
                .is_some_and(|s| s.content.start <= range.start && range.end <= s.content.end)
            {
                out.push(Found { range, ..f });
            }
        }
        let mut key: Option<Vec<u8>> = None;
        let mut named_secret = false;
        for string in strings {
            let raw = &value[string.content.clone()];
            let decoded = views::unescaped(raw);
            let text = decoded.as_ref().map_or(raw, |v| &v.text);
            let at = |range: Range<usize>| {
                let range = decoded.as_ref().map_or(range.clone(), |v| v.original(range));
                string.content.start + range.start..string.content.start + range.end
            };
            if string.is_key {
                key = Some(text.to_ascii_lowercase());
            } else if let Some(name) = key.take() {
                let secret = assign::names_secret(&name) || (named_secret && name == b"value");
                if matches!(name.as_slice(), b"name" | b"key" | b"variable") {
                    named_secret = assign::names_secret(text);
                }
                if let Some(c) = assignment
                    && secret
                    && text.trim_ascii().len() >= 3
                    && !assign::is_placeholder(text)
                {
                    out.push(Found {
                        range: string.content.clone(),
                        detector: c.detector.name,
                        id: c.id,
                    });
                    continue;
                }
            }
            if text.is_empty() {
                continue;
            }
            self.find(text, &mut inner);
            out.extend(inner.drain(..).map(|f| Found {
                range: at(f.range.clone()),
                ..f
            }));
        }
    }

    /// The detectors worth running on `text`, as a bit set: those whose
    /// keyword it holds, and those without keywords.
    fn candidates(&self, text: &[u8]) -> u64 {
        let mut candidates = self.always;
        let Some(dfa) = &self.prefilter else {
            return candidates;
        };
        // The automaton walked by hand, one table step a byte: the
        // overlapping iterator costs more per call than a short value
        // takes to scan. An unanchored automaton has a start state.
        let Ok(mut state) = dfa.start_state(Anchored::No) else {
            return u64::MAX >> (64 - self.detectors.len());
        };
        for &byte in text {
            state = dfa.next_state(Anchored::No, state, byte);
            if dfa.is_special(state) && dfa.is_match(state) {
                for i in 0..dfa.match_len(state) {
                    candidates |= 1 << self.owner[dfa.match_pattern(state, i).as_usize()];
                }
            }
        }
        candidates
    }

    /// The secrets the `candidates` find in `text` itself, unsorted. In a
    /// view whose lines were `joined`, only the patterns of tokens run: a
    /// key's value ends with its line.
    fn run(&self, text: &[u8], mut candidates: u64, joined: bool, out: &mut Vec<Found>) {
        let mut ranges = Vec::new();
        while candidates != 0 {
            let i = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            let compiled = &self.detectors[i];
            let (name, id) = (compiled.detector.name, compiled.id);
            let check = compiled.detector.check;
            let mut found = |range: Range<usize>| {
                out.push(Found {
                    range,
                    detector: name,
                    id,
                })
            };
            match &compiled.matcher {
                Matcher::Regex { regex, grouped: true } => {
                    for captures in regex.captures_iter(text) {
                        if let Some(group) = captures.get(1)
                            && detectors::passes(check, group.as_bytes())
                            && !assign::is_placeholder(group.as_bytes())
                        {
                            found(group.range());
                        }
                    }
                }
                Matcher::Regex {
                    regex,
                    grouped: false,
                } => {
                    for m in regex.find_iter(text) {
                        if detectors::passes(check, m.as_bytes()) {
                            found(m.range());
                        }
                    }
                }
                Matcher::Code(_) if joined => {}
                Matcher::Code(find) => {
                    ranges.clear();
                    find(text, &mut ranges);
                    for range in ranges.drain(..) {
                        found(range);
                    }
                }
            }
        }
    }

    /// `value` with every secret replaced by `[masked:<detector>]`, or
    /// `None` when it holds none (the caller then forwards it untouched).
    pub fn mask(&self, value: &[u8]) -> Option<Vec<u8>> {
        let mut found = Vec::new();
        self.find(value, &mut found);
        (!found.is_empty()).then(|| replace(value, &found))
    }
}

/// Sorts `found` by position and merges overlapping finds, so that
/// [`replace`] can take them in order.
fn merge(found: &mut Vec<Found>) {
    found.sort_by_key(|f| (f.range.start, std::cmp::Reverse(f.range.end)));
    found.dedup_by(|later, earlier| {
        if later.range.start < earlier.range.end {
            earlier.range.end = earlier.range.end.max(later.range.end);
            // A secret inside what looks like an e-mail address (a
            // token in a URL's user part) is named as the secret.
            let personal = |f: &Found| DETECTORS.get(f.id).is_some_and(|d| d.opt_in);
            if personal(earlier) && !personal(later) {
                earlier.detector = later.detector;
                earlier.id = later.id;
            }
            true
        } else {
            false
        }
    });
}

/// Every built-in secret detector, for text the proxy itself shows.
static ALL_SECRETS: LazyLock<Scanner> =
    LazyLock::new(|| Scanner::with(DETECTORS.iter().filter(|d| !d.opt_in)));

/// A message's text as logs and recordings show it (a refusal's reason, an
/// error): every secret the built-in detectors find is masked. SQL goes
/// through [`statement_text`] instead, which keeps its syntax.
pub fn text(message: &str) -> Cow<'_, str> {
    match ALL_SECRETS.mask(message.as_bytes()) {
        Some(masked) => Cow::Owned(String::from_utf8_lossy(&masked).into_owned()),
        None => Cow::Borrowed(message),
    }
}

/// The built-in detectors, for values the proxy itself shows (a held
/// statement's parameters): every secret detector, whatever the Policies'
/// masking says, since a value sent to the database is as secret as the
/// column it lands in.
pub fn value_text(value: &[u8]) -> Option<Vec<u8>> {
    ALL_SECRETS.mask(value)
}

/// The secrets the built-in detectors find in `value`.
pub fn secrets_in(value: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    ALL_SECRETS.find(value, &mut found);
    found
}

/// The text that replaces a secret: ASCII without quotes, backslashes or
/// separators, so it stays valid inside JSON strings, COPY text and CSV.
pub fn replacement(detector: &str) -> String {
    format!("[masked:{detector}]")
}

fn replace(value: &[u8], found: &[Found]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut at = 0;
    for f in found {
        out.extend_from_slice(&value[at..f.range.start]);
        out.extend_from_slice(replacement(f.detector).as_bytes());
        at = f.range.end;
    }
    out.extend_from_slice(&value[at..]);
    out
}

#[cfg(test)]
mod tests;
