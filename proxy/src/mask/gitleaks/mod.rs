//! gitleaks' default rule set, applied as gitleaks applies it.
//!
//! [`rules`] is generated from a pinned gitleaks release by
//! `tools/gitleaks-rules/import.sh`; this module is the matcher, a port of
//! what gitleaks' `detect/detect.go` does with a rule once its keyword was
//! seen (the scanner's keyword automaton decides that, as for every other
//! detector). Every rule's own examples run as tests against it.
//!
//! Two parts of gitleaks are left out on purpose: the `gitleaks:allow`
//! comment, which anyone who can write a row could use to unmask it, and
//! the "generic rules give way" filter, which only chooses which of two
//! overlapping findings to report; both are masked here. Two are widened,
//! toward masking: a token pattern may end before punctuation
//! ([`WIDER_DELIMITER`]), and the search finds the secrets gitleaks' left
//! to right reading steps over ([`Compiled::find`]).

mod rules;

use std::{collections::HashMap, ops::Range, sync::LazyLock};

use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexBuilder};

pub use rules::{Allowlist, GLOBAL_ALLOWLIST, RULES, Rule, Target};

/// The gitleaks version [`RULES`] come from.
pub const VERSION: &str = "v8.30.0";

/// Whether `all` enables `rule`; a Policy can name any rule.
///
/// Two kinds are left out. `generic-api-key` reads `key = value` pairs by
/// entropy, which the assignment detector does by key name and quoting;
/// its keywords (`key`, `api`, `auth`, `token`, ...) occur in most text.
/// And the rules gitleaks only runs on files of one kind (a `path`:
/// `*.tf`, `*.yaml`, `nuget.config`, `*.php`), written to read a whole
/// file of that kind: in a value of any kind they cost a slow pattern on
/// every value that says `password` or `secret`, and what they find the
/// assignment and Kubernetes Secret detectors find too.
pub fn in_all(rule: &Rule) -> bool {
    !rule.id.contains("generic") && rule.path.is_empty()
}

/// Largest compiled pattern; the biggest rule needs a few MiB.
const SIZE_LIMIT: usize = 64 << 20;

/// How most of gitleaks' token patterns end: a quote, a blank, `;`, an
/// escaped line break, or the end of the text.
const DELIMITER: &str = r#"(?:[\x60'"\t\n\f\r ;]|\\[nr]|$)"#;

/// [`DELIMITER`], with the punctuation prose, URLs and markup put after a
/// token: `,` `)` `<` `>` `&` `]` `}` `|` `?` `!` `/` `#` `*`, `:` before a
/// blank, and `.` at the end of a sentence (before a blank, a quote, `)`,
/// `<` or another `.`; not a `.` that goes on, as in `a.ico-<hash>.png`).
/// gitleaks misses a token at the end of a sentence or before the next
/// query parameter; a masking proxy must not. Only for tokens that name
/// themselves by a prefix ([`names_itself`]): a rule that reads a key's
/// value (`dropbox: <15 letters>`) or a bare hash keeps gitleaks' ending,
/// or a word at the end of a sentence would be taken for a secret.
const WIDER_DELIMITER: &str =
    r#"(?:[\x60'"\t\n\f\r ;,)<>&\]}|?!/#*]|:(?:[\t\n\f\r ]|$)|\.(?:[\t\n\f\r "')<.]|$)|\\[nr]|$)"#;

/// Whether every match of `pattern`'s secret (its `group`, or group 1, or
/// the whole match) starts with a literal of 3 bytes or more, in all its forms: a token
/// that names itself (`ntn_`, `sgp_`, `hf_`), not a class of characters
/// that ordinary words and hashes also fill.
fn names_itself(pattern: &str, group: u8) -> bool {
    use regex_syntax::hir::{Hir, HirKind, literal::Extractor};
    fn capture(hir: &Hir, index: u32) -> Option<&Hir> {
        match hir.kind() {
            HirKind::Capture(c) if c.index == index => Some(&c.sub),
            HirKind::Capture(c) => capture(&c.sub, index),
            HirKind::Repetition(r) => capture(&r.sub, index),
            HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().find_map(|s| capture(s, index)),
            _ => None,
        }
    }
    let Ok(hir) = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(pattern)
    else {
        return false;
    };
    // Without that group, the secret is the whole match.
    let secret = capture(&hir, u32::from(group.max(1))).unwrap_or(&hir);
    let prefixes = Extractor::new().extract(secret);
    prefixes.is_finite() && prefixes.min_literal_len().is_some_and(|n| n >= 3)
}

/// Compiles a gitleaks pattern for bytes. Go's `\w`, `\d` and `\b` are
/// ASCII, so Unicode is off unless a pattern cannot do without it.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(SIZE_LIMIT)
        .build()
        .or_else(|_| RegexBuilder::new(pattern).size_limit(SIZE_LIMIT).build())
}

/// An allowlist, compiled.
#[derive(Debug)]
struct Allow {
    and: bool,
    target: Target,
    /// The regexes joined as gitleaks joins them: `(?:r1|r2|...)`.
    regex: Option<Regex>,
    stopwords: Option<AhoCorasick>,
}

impl Allow {
    fn new(list: &Allowlist) -> Result<Allow, String> {
        let regex = if list.regexes.is_empty() {
            None
        } else {
            Some(compile(&format!("(?:{})", list.regexes.join("|"))).map_err(|e| e.to_string())?)
        };
        let stopwords = if list.stopwords.is_empty() {
            None
        } else {
            Some(
                AhoCorasick::builder()
                    .ascii_case_insensitive(true)
                    .build(list.stopwords)
                    .map_err(|e| e.to_string())?,
            )
        };
        Ok(Allow {
            and: list.condition_and,
            target: list.target,
            regex,
            stopwords,
        })
    }

    fn needs_line(&self) -> bool {
        self.target == Target::Line && self.regex.is_some()
    }

    /// Whether this allowlist lets the finding go (gitleaks
    /// `checkFindingAllowed`).
    fn allows(&self, secret: &[u8], whole: &[u8], line: &[u8]) -> bool {
        let target = match self.target {
            Target::Secret => secret,
            Target::Match => whole,
            Target::Line => line,
        };
        let regex = self
            .regex
            .as_ref()
            .map(|r| !target.is_empty() && r.is_match(target));
        let stopword = self
            .stopwords
            .as_ref()
            .map(|s| !secret.is_empty() && s.is_match(secret));
        if self.and {
            regex.unwrap_or(true) && stopword.unwrap_or(true)
        } else {
            regex.unwrap_or(false) || stopword.unwrap_or(false)
        }
    }
}

/// The global allowlist, compiled once.
static GLOBAL: LazyLock<Allow> = LazyLock::new(|| {
    // Generated constants, compiled by the tests; a failure is a bug in
    // the importer, caught by `cargo test`.
    #[allow(clippy::expect_used)]
    Allow::new(&GLOBAL_ALLOWLIST).expect("gitleaks' global allowlist compiles")
});

/// One rule, compiled.
#[derive(Debug)]
pub struct Compiled {
    rule: &'static Rule,
    regex: Regex,
    allow: Vec<Allow>,
    needs_line: bool,
}

impl Compiled {
    /// Compiles `rule`.
    ///
    /// # Errors
    ///
    /// A pattern the `regex` crate refuses (the tests compile every rule).
    pub fn new(rule: &'static Rule) -> Result<Compiled, String> {
        let pattern = if names_itself(rule.regex, rule.secret_group) {
            rule.regex.replace(DELIMITER, WIDER_DELIMITER)
        } else {
            rule.regex.to_owned()
        };
        let regex = compile(&pattern).map_err(|e| format!("{}: {e}", rule.id))?;
        let allow = rule
            .allowlists
            .iter()
            .map(Allow::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: allowlist: {e}", rule.id))?;
        let needs_line = GLOBAL.needs_line() || allow.iter().any(Allow::needs_line);
        Ok(Compiled {
            rule,
            regex,
            allow,
            needs_line,
        })
    }

    /// The rule.
    pub fn rule(&self) -> &'static Rule {
        self.rule
    }

    /// The secrets this rule finds in `text`, as ranges of `text`, in
    /// order: for each match, the part gitleaks calls the secret, once its
    /// entropy and the allowlists let it through. Most rules' secret is the
    /// value of a key, the last thing the match holds but for a delimiter,
    /// and the key stays visible. Where the match goes on past the secret,
    /// the secret is only a piece of the token (a group that marks which
    /// header field a `jwt-base64` starts with, one segment of a webhook
    /// URL), and the whole match is masked.
    pub fn find(&self, text: &[u8], out: &mut Vec<Range<usize>>) {
        // gitleaks reads matches left to right, each after the last. That
        // loses secrets a proxy must not: a match that takes the delimiter
        // before the next token (two Azure secrets one blank apart), and
        // a greedy pattern that steps over earlier secrets to the last one
        // on a line (`curl -u a:b ... && curl -u c:d`). So the search goes
        // on from the end of each secret, and is run again on what a match
        // holds before its secret. Each region searched ends before the
        // one it came from, so this ends; past RESEARCHES regions (a value
        // built to make the searches quadratic), the part of a match before
        // its secret is masked whole instead.
        const RESEARCHES: usize = 16;
        let mut researched = 0;
        let mut regions = vec![(0, text.len())];
        while let Some((mut at, end)) = regions.pop() {
            let haystack = &text[..end];
            while at <= end {
                let Some(m) = self.regex.find_at(haystack, at) else {
                    break;
                };
                let next = match self.finding(haystack, m.range()) {
                    Some((secret, mask)) => {
                        if secret.start > m.start() {
                            if researched < RESEARCHES {
                                researched += 1;
                                regions.push((m.start(), secret.start));
                            } else {
                                out.push(m.start()..secret.start);
                            }
                        }
                        out.push(mask);
                        secret.end
                    }
                    None => m.end(),
                };
                at = next.max(m.start() + 1);
            }
        }
    }

    /// The secret of the match at `range` of `text`, and what to mask
    /// (see [`Compiled::find`]); `None` when gitleaks would drop it.
    fn finding(&self, text: &[u8], range: Range<usize>) -> Option<(Range<usize>, Range<usize>)> {
        // gitleaks trims `\n` off both ends of the match.
        let raw = &text[range.clone()];
        let lead = raw.iter().take_while(|&&b| b == b'\n').count();
        let trail = raw[lead..].iter().rev().take_while(|&&b| b == b'\n').count();
        let whole = range.start + lead..range.end - trail;
        let matched = &text[whole.clone()];
        let inner = self.secret(matched);
        let secret = whole.start + inner.start..whole.start + inner.end;
        let value = &text[secret.clone()];
        if value.is_empty() || (self.rule.entropy != 0.0 && shannon(value) <= self.rule.entropy) {
            return None;
        }
        // gitleaks' quirk: the match "ends" at its start plus the trimmed
        // length.
        let line = if self.needs_line {
            &text[line(text, range.start, range.start + matched.len())]
        } else {
            &[][..]
        };
        if GLOBAL.allows(value, matched, line) || self.allow.iter().any(|a| a.allows(value, matched, line)) {
            return None;
        }
        let rest = &text[secret.end..whole.end];
        let mask = if only_delimiter(rest) {
            secret.clone()
        } else {
            whole
        };
        Some((secret, mask))
    }

    /// The secret within a match: the pattern runs again on the match
    /// alone; the group the rule names, else its first non-empty group,
    /// else the whole match.
    fn secret(&self, matched: &[u8]) -> Range<usize> {
        let all = 0..matched.len();
        let Some(captures) = self.regex.captures(matched) else {
            return all;
        };
        if captures.len() < 2 {
            return all;
        }
        if self.rule.secret_group > 0 {
            // A group that did not take part is the empty secret.
            return captures
                .get(usize::from(self.rule.secret_group))
                .map_or(0..0, |g| g.range());
        }
        (1..captures.len())
            .filter_map(|i| captures.get(i))
            .find(|g| !g.is_empty())
            .map_or(all, |g| g.range())
    }
}

/// Whether what a match holds after its secret is no more than the
/// delimiter a token pattern ends with ([`WIDER_DELIMITER`]).
fn only_delimiter(rest: &[u8]) -> bool {
    let blank = |b: &u8| b"\t\n\x0c\r ".contains(b);
    match rest {
        [] | [b'\\', b'n' | b'r'] | [b'.' | b':'] => true,
        [b'.', b] => blank(b) || b"\"')<.".contains(b),
        [b':', b] => blank(b),
        [b] => blank(b) || b"`'\";,)<>&]}|?!/#*".contains(b),
        _ => false,
    }
}

/// The line gitleaks reports for a match (`detect/location.go`), as a
/// range of `text`; see [`Target::Line`].
fn line(text: &[u8], start: usize, end: usize) -> Range<usize> {
    let mut newlines: Vec<usize> = memchr::memchr_iter(b'\n', text).collect();
    if newlines.is_empty() {
        newlines.push(text.len());
    }
    let (mut previous, mut found, mut from, mut to) = (0, false, 0, 0);
    for &at in &newlines {
        if previous <= start && start < at {
            found = true;
            from = previous;
            to = at;
        }
        if previous < end && end <= at {
            to = at;
        }
        previous = at;
    }
    if !found {
        let rest = text.get(end..).unwrap_or_default();
        to = end + rest.iter().take_while(|&&b| b != b'\n' && b != b'\r').count();
    }
    from..to.max(end).min(text.len())
}

/// Go's `shannonEntropy`: over characters (one U+FFFD per invalid UTF-8
/// byte), each character's count divided by the length in bytes.
pub fn shannon(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts: HashMap<char, usize> = HashMap::new();
    for chunk in s.utf8_chunks() {
        for c in chunk.valid().chars() {
            *counts.entry(c).or_default() += 1;
        }
        if !chunk.invalid().is_empty() {
            *counts.entry('\u{FFFD}').or_default() += chunk.invalid().len();
        }
    }
    let n = s.len() as f64;
    counts
        .values()
        .map(|&c| c as f64 / n)
        .map(|p| -p * p.log2())
        .sum()
}

#[cfg(test)]
mod tests;
