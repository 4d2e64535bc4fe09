//! Masking of secret values: the detectors and the scanner that runs them.
//!
//! A clean value costs one walk of an Aho-Corasick DFA over the detectors'
//! keywords, one table step a byte; a detector's regular expression only
//! runs on a value that contains one of its keywords. Matching works on
//! bytes, so a value that is not valid UTF-8 is scanned like any other.

mod assign;
pub mod detectors;
pub mod gitleaks;
mod kube;
pub mod policy;
pub mod rows;
pub mod sql;
pub mod stream;
mod views;

use std::{
    borrow::Cow,
    collections::HashSet,
    ops::Range,
    sync::{Arc, LazyLock, Mutex, OnceLock},
};

use aho_corasick::{
    Anchored, MatchKind,
    automaton::{Automaton, StateID},
    dfa,
};
use regex::bytes::{Regex, RegexBuilder};

use detectors::Pattern;

pub use detectors::{DETECTORS, Detector};
pub use sql::{MaskedSql, masked_statement, statement_text, statement_text_in};

/// A Policy names a detector that does not exist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown masking detector {name:?}; known: all, {known}, {gitleaks} (every rule imported from gitleaks), or a gitleaks rule id such as twilio-api-key"
)]
pub struct UnknownDetector {
    /// The name as written.
    pub name: String,
    /// Our detector groups.
    pub known: String,
    /// The group of gitleaks' rules.
    pub gitleaks: &'static str,
}

/// The detectors `names` enable, as positions in [`DETECTORS`], sorted.
/// A name is `all` (every secret detector, not the opt-in ones), a group
/// (`aws`, `gitleaks`, `email`, ...) or one detector's name (a gitleaks
/// rule id, `payment-card`, ...).
///
/// # Errors
///
/// The first name that is none of these.
pub fn resolve(names: &[impl AsRef<str>]) -> Result<Vec<usize>, UnknownDetector> {
    let mut ids = Vec::new();
    for name in names {
        let name = name.as_ref();
        let before = ids.len();
        ids.extend(
            DETECTORS
                .iter()
                .enumerate()
                .filter(|(_, d)| (name == "all" && !d.opt_in) || d.group == name || d.name == name)
                .map(|(i, _)| i),
        );
        if ids.len() == before {
            let mut known: Vec<&str> = detectors::OURS.iter().map(|d| d.group).collect();
            known.dedup();
            return Err(UnknownDetector {
                name: name.to_owned(),
                known: known.join(", "),
                gitleaks: detectors::GITLEAKS,
            });
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Checks that every name is `all`, a detector group or a detector.
///
/// # Errors
///
/// The first name that is none of these.
pub fn check_names(names: &[impl AsRef<str>]) -> Result<(), UnknownDetector> {
    resolve(names).map(drop)
}

/// A secret found in a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where, in bytes.
    pub range: Range<usize>,
    /// Which detector found it.
    pub detector: &'static str,
    /// Its position in [`DETECTORS`], for metrics; [`CUSTOM`] for a
    /// Policy's own.
    pub id: usize,
}

/// The [`Found::id`] of a Policy's own detectors.
pub const CUSTOM: usize = usize::MAX;

/// The metrics label of a Policy's own detectors: their names are the
/// Policy author's, so they are not labels.
pub const CUSTOM_LABEL: &str = "custom";

/// How much of each keyword the automaton looks for; see
/// [`Scanner::candidates`].
const KEYWORD_PREFIX: usize = 6;

/// Most detectors one scanner runs: every built-in one and the Policies'
/// own.
const MAX_DETECTORS: usize = Set::BITS;

/// Most detectors all the Policies of a configuration may define
/// together: the scanner for text the proxy shows runs all of them beside
/// every built-in one, and its candidate set has [`MAX_DETECTORS`] bits.
pub const MAX_CUSTOM_DETECTORS: usize = 256;

/// A set of detectors, by their position in a [`Scanner`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Set([u64; 8]);

impl Set {
    const BITS: usize = 8 * 64;

    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn is_empty(&self) -> bool {
        self.0 == [0; 8]
    }

    fn union(&mut self, other: &Set) {
        for (word, other) in self.0.iter_mut().zip(other.0) {
            *word |= other;
        }
    }

    fn full(len: usize) -> Set {
        let mut set = Set::default();
        (0..len).for_each(|i| set.insert(i));
        set
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        self.0.into_iter().enumerate().flat_map(|(word, mut bits)| {
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let i = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    word * 64 + i
                })
            })
        })
    }
}

/// What finds a detector's secrets, compiled.
#[derive(Debug)]
enum Matcher {
    /// With `grouped`, only capture group 1 is the secret.
    Regex {
        regex: Regex,
        grouped: bool,
    },
    Code(fn(&[u8], &mut Vec<Range<usize>>)),
    Gitleaks(Box<gitleaks::Compiled>),
}

impl Matcher {
    fn new(pattern: Pattern) -> Result<Matcher, String> {
        Ok(match pattern {
            Pattern::Regex(pattern) => Matcher::regex(pattern, 10 << 20)?,
            Pattern::Code(find) => Matcher::Code(find),
            Pattern::Gitleaks(rule) => Matcher::Gitleaks(Box::new(gitleaks::Compiled::new(rule)?)),
        })
    }

    fn regex(pattern: &str, size_limit: usize) -> Result<Matcher, String> {
        let regex = RegexBuilder::new(pattern)
            .unicode(false)
            .size_limit(size_limit)
            .build()
            .map_err(|e| e.to_string())?;
        let grouped = regex.captures_len() > 1;
        Ok(Matcher::Regex { regex, grouped })
    }
}

/// The built-in detectors' matchers, each compiled the first time a
/// scanner needs it and shared by every scanner after.
static BUILT_IN: LazyLock<Vec<OnceLock<Matcher>>> =
    LazyLock::new(|| DETECTORS.iter().map(|_| OnceLock::new()).collect());

/// The matcher of built-in detector `id`.
fn built_in(id: usize) -> &'static Matcher {
    BUILT_IN[id].get_or_init(|| {
        // Every built-in pattern compiles in `cargo test`
        // (`every_detector_compiles`); a failure is a bug in this crate.
        #[allow(clippy::expect_used)]
        Matcher::new(DETECTORS[id].pattern).expect("built-in detector compiles")
    })
}

/// A detector a Policy defines for its own token formats
/// (`masking.customDetectors`), compiled.
#[derive(Debug)]
pub struct Custom {
    name: &'static str,
    keywords: Vec<String>,
    matcher: Matcher,
}

/// Longest compiled pattern of a Policy's own detector: a Policy cannot
/// make the proxy build a huge automaton.
const MAX_CUSTOM_PATTERN_BYTES: usize = 1 << 20;

/// Shortest keyword of a Policy's own detector: a shorter one would run
/// its pattern on most values.
pub const MIN_KEYWORD_BYTES: usize = 3;

impl Custom {
    /// Compiles a Policy's detector: `name` for the mask, `regex` (when it
    /// has a capture group, group 1 is the secret), and the `keywords` one
    /// of which a value must hold for the pattern to run.
    ///
    /// # Errors
    ///
    /// A message naming what is wrong: no keyword, a keyword shorter than
    /// [`MIN_KEYWORD_BYTES`], a pattern that does not compile or that
    /// matches empty text.
    pub fn new(name: &str, regex: &str, keywords: &[String]) -> Result<Custom, String> {
        // The name goes into every mask, `[masked:<name>]`, which must stay
        // valid inside JSON strings, COPY text and CSV.
        let shaped = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let bytes = name.as_bytes();
        if bytes.is_empty()
            || bytes.len() > 63
            || !bytes.iter().all(|b| shaped(b) || *b == b'-')
            || !bytes.first().is_some_and(shaped)
            || !bytes.last().is_some_and(shaped)
        {
            return Err(format!(
                "name {name:?} must be 1 to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
            ));
        }
        if keywords.is_empty() {
            return Err("needs at least one keyword".into());
        }
        if let Some(short) = keywords.iter().find(|k| k.len() < MIN_KEYWORD_BYTES) {
            return Err(format!(
                "keyword {short:?} is shorter than {MIN_KEYWORD_BYTES} bytes; it would run the pattern on most values"
            ));
        }
        let matcher = Matcher::regex(regex, MAX_CUSTOM_PATTERN_BYTES)
            .map_err(|e| format!("regex is not a valid regular expression: {e}"))?;
        if let Matcher::Regex { regex, .. } = &matcher
            && regex.is_match(b"")
        {
            return Err("regex matches empty text; it must match the secret itself".into());
        }
        Ok(Custom {
            name: intern(name),
            keywords: keywords.iter().map(|k| k.to_ascii_lowercase()).collect(),
            matcher,
        })
    }

    /// The name shown in the mask.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// `name` as a `&'static str`, for [`Found::detector`]. Each distinct name
/// of a Policy's detector is kept once for the life of the process; there
/// are as many as Policy authors write, not as many as values.
fn intern(name: &str) -> &'static str {
    static NAMES: LazyLock<Mutex<HashSet<&'static str>>> = LazyLock::new(Default::default);
    let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
    match names.get(name) {
        Some(interned) => interned,
        None => {
            let interned: &'static str = Box::leak(name.to_owned().into_boxed_str());
            names.insert(interned);
            interned
        }
    }
}

#[derive(Debug)]
struct Compiled {
    name: &'static str,
    /// Position in [`DETECTORS`], or [`CUSTOM`].
    id: usize,
    check: detectors::Check,
    matcher: Slot,
}

#[derive(Debug)]
enum Slot {
    BuiltIn,
    Custom(Arc<Custom>),
}

impl Compiled {
    fn matcher(&self) -> &Matcher {
        match &self.matcher {
            Slot::BuiltIn => built_in(self.id),
            Slot::Custom(custom) => &custom.matcher,
        }
    }
}

/// The enabled detectors, ready to scan.
#[derive(Debug)]
pub struct Scanner {
    detectors: Vec<Compiled>,
    prefilter: Option<dfa::DFA>,
    /// Keyword pattern index → the detectors that have it.
    owners: Vec<Set>,
    /// Detectors without keywords.
    always: Set,
    /// The key/value detector, whose find names a JSON key's whole value.
    assignment: Option<usize>,
    /// See [`Scanner::reads_bare_values`].
    bare: bool,
}

impl Scanner {
    /// A scanner for the detectors a Policy names (see [`resolve`]).
    ///
    /// # Errors
    ///
    /// A name that is no detector.
    pub fn new(names: &[impl AsRef<str>]) -> Result<Scanner, UnknownDetector> {
        Ok(Self::with_ids(&resolve(names)?, &[]))
    }

    /// A scanner running the built-in detectors at `ids` (positions in
    /// [`DETECTORS`], from [`resolve`]) and Policies' `custom` ones.
    ///
    /// # Panics
    ///
    /// With more than [`MAX_DETECTORS`] in all, which compiling Policies
    /// rules out: at most [`MAX_CUSTOM_DETECTORS`] of their own beside the
    /// built-in ones (a test checks that both fit).
    pub fn with_ids(ids: &[usize], custom: &[Arc<Custom>]) -> Scanner {
        assert!(
            ids.len() + custom.len() <= MAX_DETECTORS,
            "at most {MAX_DETECTORS} detectors"
        );
        let mut detectors: Vec<Compiled> = ids
            .iter()
            .filter_map(|&id| {
                DETECTORS.get(id).map(|d| Compiled {
                    name: d.name,
                    id,
                    check: d.check,
                    matcher: Slot::BuiltIn,
                })
            })
            .collect();
        // Each keyword cut to its first KEYWORD_PREFIX bytes (a value that
        // holds a keyword holds its prefix), once, with every detector
        // that has it.
        let mut keywords: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<Set> = Vec::new();
        let mut add = |keyword: &[u8], detector: usize| {
            let prefix = keyword[..keyword.len().min(KEYWORD_PREFIX)].to_ascii_lowercase();
            let at = keywords.iter().position(|k| *k == prefix).unwrap_or_else(|| {
                keywords.push(prefix);
                owners.push(Set::default());
                keywords.len() - 1
            });
            owners[at].insert(detector);
        };
        let mut always = Set::default();
        for (i, &id) in ids.iter().enumerate().take(detectors.len()) {
            let d = &DETECTORS[id];
            if d.keywords.is_empty() {
                always.insert(i);
            }
            for keyword in d.keywords {
                add(keyword.as_bytes(), i);
            }
        }
        for custom in custom {
            for keyword in &custom.keywords {
                add(keyword.as_bytes(), detectors.len());
            }
            detectors.push(Compiled {
                name: custom.name,
                id: CUSTOM,
                check: detectors::Check::None,
                matcher: Slot::Custom(custom.clone()),
            });
        }
        // Built from at most a few thousand short keywords; cannot fail.
        #[allow(clippy::expect_used)]
        let prefilter = (!keywords.is_empty()).then(|| {
            dfa::DFA::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .prefilter(false)
                .build(&keywords)
                .expect("keyword automaton builds")
        });
        let assignment = detectors.iter().position(|c| c.name == detectors::ASSIGNMENT);
        let bare = !always.is_empty() || !custom.is_empty();
        Scanner {
            detectors,
            prefilter,
            owners,
            always,
            assignment,
            bare,
        }
    }

    /// Whether a detector reads values that hold no keyword: one without
    /// keywords (payment cards, IBANs), or a Policy's own, which may
    /// describe bare digits. Numbers, dates and uuids are scanned only then.
    pub fn reads_bare_values(&self) -> bool {
        self.bare
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
        if candidates.is_empty() && memchr::memchr3(b'\\', b'%', b'\n', value).is_none() {
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
    fn find_json(&self, value: &[u8], candidates: Set, strings: &[views::JsonString], out: &mut Vec<Found>) {
        let assignment = self.assignment.map(|i| &self.detectors[i]);
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
                        detector: c.name,
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

    /// The detectors worth running on `text`: those whose keyword it
    /// holds, and those without keywords.
    fn candidates(&self, text: &[u8]) -> Set {
        let mut candidates = self.always;
        let Some(dfa) = &self.prefilter else {
            return candidates;
        };
        // The automaton walked by hand, one table step a byte: the
        // overlapping iterator costs more per call than a short value
        // takes to scan. An unanchored automaton has a start state.
        let Ok(start) = dfa.start_state(Anchored::No) else {
            return Set::full(self.detectors.len());
        };
        // Each step waits for the one before it, a load from the table,
        // so one walk cannot go faster than the load's latency. A longer
        // value is cut into parts walked side by side, whose steps the
        // processor overlaps. A keyword is at most KEYWORD_PREFIX bytes,
        // so a lane that starts that many bytes less one before its part
        // finds every keyword that ends in its part. Every lane walks as
        // many bytes (the first one a little into the second part), and
        // the last lane the remainder of the division after.
        const OVERLAP: usize = KEYWORD_PREFIX - 1;
        let lanes = match text.len() {
            n if n >= 4 * OVERLAP => 4,
            n if n >= 2 * OVERLAP => 2,
            _ => {
                self.walk(dfa, start, text, &mut candidates);
                return candidates;
            }
        };
        let part = text.len() / lanes;
        let steps = part + OVERLAP;
        let lane = |j: usize| &text[(j * part).saturating_sub(OVERLAP)..][..steps];
        // The states live in locals, not an array, so that they stay in
        // registers: a store and reload would lengthen every step.
        let (mut s0, mut s1, mut s2, mut s3) = (start, start, start, start);
        let next = |state, byte| dfa.next_state(Anchored::No, state, byte);
        if lanes == 4 {
            let (l0, l1, l2, l3) = (lane(0), lane(1), lane(2), lane(3));
            for (((&b0, &b1), &b2), &b3) in l0.iter().zip(l1).zip(l2).zip(l3) {
                s0 = next(s0, b0);
                s1 = next(s1, b1);
                s2 = next(s2, b2);
                s3 = next(s3, b3);
                if dfa.is_special(s0) | dfa.is_special(s1) | dfa.is_special(s2) | dfa.is_special(s3) {
                    for s in [s0, s1, s2, s3] {
                        self.seen(dfa, s, &mut candidates);
                    }
                }
            }
        } else {
            for (&b0, &b1) in lane(0).iter().zip(lane(1)) {
                s0 = next(s0, b0);
                s1 = next(s1, b1);
                if dfa.is_special(s0) | dfa.is_special(s1) {
                    self.seen(dfa, s0, &mut candidates);
                    self.seen(dfa, s1, &mut candidates);
                }
            }
            s3 = s1;
        }
        // The remainder of the division, after the last lane.
        self.walk(dfa, s3, &text[lanes * part..], &mut candidates);
        candidates
    }

    /// Walks `bytes` from `state`, adding the detectors whose keyword ends
    /// on the way.
    #[inline(always)]
    fn walk(&self, dfa: &dfa::DFA, mut state: StateID, bytes: &[u8], candidates: &mut Set) {
        for &byte in bytes {
            state = dfa.next_state(Anchored::No, state, byte);
            self.seen(dfa, state, candidates);
        }
    }

    /// Adds the detectors whose keyword `state` has just matched.
    #[inline(always)]
    fn seen(&self, dfa: &dfa::DFA, state: StateID, candidates: &mut Set) {
        if dfa.is_special(state) && dfa.is_match(state) {
            for i in 0..dfa.match_len(state) {
                candidates.union(&self.owners[dfa.match_pattern(state, i).as_usize()]);
            }
        }
    }

    /// The secrets the `candidates` find in `text` itself, unsorted. In a
    /// view whose lines were `joined`, only the patterns of tokens run: a
    /// key's value ends with its line.
    fn run(&self, text: &[u8], candidates: Set, joined: bool, out: &mut Vec<Found>) {
        let mut ranges = Vec::new();
        for i in candidates.iter() {
            let compiled = &self.detectors[i];
            let (name, id, check) = (compiled.name, compiled.id, compiled.check);
            let mut found = |range: Range<usize>| {
                out.push(Found {
                    range,
                    detector: name,
                    id,
                })
            };
            match compiled.matcher() {
                // A Policy's own pattern says exactly what is secret: its
                // group, or its whole match where the group took no part.
                Matcher::Regex { regex, grouped: true } if id == CUSTOM => {
                    for captures in regex.captures_iter(text) {
                        let whole = captures.get_match().range();
                        found(captures.get(1).map_or(whole, |g| g.range()));
                    }
                }
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
                Matcher::Gitleaks(rule) => {
                    ranges.clear();
                    rule.find(text, &mut ranges);
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
static ALL_SECRETS: LazyLock<Arc<Scanner>> = LazyLock::new(|| Arc::new(Scanner::shown(&[])));

impl Scanner {
    /// The scanner for text the proxy itself shows (logs, recordings,
    /// ApprovalRequests): every built-in secret detector, whatever the
    /// Policies enable, and the `custom` detectors of every Policy, since
    /// an organisation's token is as secret in a log line as in a row.
    pub fn shown(custom: &[Arc<Custom>]) -> Scanner {
        let all: Vec<usize> = (0..DETECTORS.len()).filter(|&i| !DETECTORS[i].opt_in).collect();
        Scanner::with_ids(&all, custom)
    }

    /// [`Scanner::shown`] without Policies' detectors, built once.
    pub fn all_secrets() -> Arc<Scanner> {
        ALL_SECRETS.clone()
    }
}

/// A message's text as logs and recordings show it (a refusal's reason, an
/// error): every secret the built-in detectors find is masked. SQL goes
/// through [`statement_text`] instead, which keeps its syntax.
pub fn text(message: &str) -> Cow<'_, str> {
    text_in(&ALL_SECRETS, message)
}

/// [`text`], with what `scanner` finds (see [`Scanner::shown`]).
pub fn text_in<'a>(scanner: &Scanner, message: &'a str) -> Cow<'a, str> {
    match scanner.mask(message.as_bytes()) {
        Some(masked) => Cow::Owned(String::from_utf8_lossy(&masked).into_owned()),
        None => Cow::Borrowed(message),
    }
}

/// Values the proxy itself shows (a held statement's parameters), masked
/// with `scanner` (see [`Scanner::shown`]), whatever the Policies' masking
/// says, since a value sent to the database is as secret as the column it
/// lands in; `None` when there is nothing to mask.
pub fn value_text(scanner: &Scanner, value: &[u8]) -> Option<Vec<u8>> {
    scanner.mask(value)
}

/// The secrets `scanner` (see [`Scanner::shown`]) finds in `value`.
pub fn secrets_in(scanner: &Scanner, value: &[u8]) -> Vec<Found> {
    let mut found = Vec::new();
    scanner.find(value, &mut found);
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
