//! A bounded classification cache whose key ignores constants.
//!
//! pgbench `-S` and most ORMs send a new literal in every simple query, so a
//! cache keyed by the raw text would miss every time. The key here is the
//! token sequence of PostgreSQL's own scanner (`pg_query::scan`, the
//! same scanner the parser reads from), with:
//!
//! * every constant token (string, including `E''`, `U&''` and dollar-quoted;
//!   integer; float; bit-string; hex-string) replaced by a placeholder for its
//!   token kind, except the string after `UESCAPE` (below);
//! * comments dropped: the scanner treats them as whitespace and the parser
//!   never sees them (and drivers put per-request trace ids in them);
//! * every other token kept verbatim, whitespace between tokens dropped.
//!
//! Each token is written as `kind:text` followed by a NUL, which no token can
//! contain (the parser refuses NUL), so the key is an injective encoding of
//! the token sequence. No hand-written lexer decides what is a literal, a
//! comment or a dollar quote: the scanner does.
//!
//! # Why blanking constants is sound
//!
//! Two texts share a key only when the parser reads the same tokens from
//! both, except for the text of constants. That is enough only if a
//! constant's text never changes how the parser reads anything but that
//! constant's own value. PostgreSQL 18's parser has one place where it does,
//! and the key keeps that constant verbatim:
//!
//! * **`UESCAPE`.** The filter between the scanner and the grammar
//!   (`base_yylex` in `parser.c`) reads the string after `UESCAPE` as the
//!   escape character of the `U&"..."` identifier or `U&'...'` string before
//!   it. So `U&"!0070g_read_file" UESCAPE '!'` names `pg_read_file` while
//!   the same tokens with `UESCAPE '\'` name a function called
//!   `!0070g_read_file`: the constant decides which identifier, that is which
//!   function or table, the statement names. The first constant after a
//!   `UESCAPE` token (comments skipped, as the parser skips them) is kept
//!   with its text.
//!
//! Everywhere else the grammar (`gram.y`) turns a constant token into one
//! of: a constant value (`A_Const`, including the folded `-1`); a type
//! modifier (`varchar(10)`, `float(25)`, which picks `float8` over
//! `float4`); an option's argument (`DefElem`); or the name of something
//! that is neither a table nor a function (the role of `SET ROLE 'x'`, the
//! file of `COPY`, an encoding, a language, a two-phase transaction id).
//! Identifiers, keywords, operators, parameters, and so the names of
//! tables, functions, CTEs and prepared statements, always come from
//! non-constant tokens, which the key keeps. The filter's other look-aheads
//! (`NOT_LA`, `NULLS_LA`, `WITH_LA`, `WITHOUT_LA`, `FORMAT_LA`) turn on the
//! kind of the next token, which the key keeps too; the grammar's `strcmp`s
//! compare identifiers, not constants.
//!
//! The classifier reads a constant's value in a few places only, and marks
//! those statements [`constant_sensitive`](super::Statement): `COPY` (a
//! file, `STDIN`, and the format options), `EXPLAIN (ANALYZE ...)`, and
//! `SET standard_conforming_strings` or `client_encoding`. Such
//! classifications are never cached.
//!
//! One known difference: a text whose constant the grammar itself rejects
//! (`float(99)`, a `U&''` escape that is no character) shares the key of an
//! accepted sibling and gets its classification; the server rejects it with
//! the same parser, so nothing runs. Texts the scanner rejects (an
//! unterminated quote) get no key and are classified, and refused, every
//! time.

use std::sync::Arc;

use pg_query::protobuf::Token;
use prometheus_client::metrics::counter::Counter;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::{Classification, ClassifyError, classify};

/// The cache key of `sql`: its scanner tokens with constants replaced and
/// comments dropped. `None` when the scanner rejects the text.
pub fn cache_key(sql: &str) -> Option<String> {
    // `pg_query::scan`, not the faster `scan_tokens`: in pg_query 18.1
    // `scan_tokens` builds a slice from a null pointer when the text has no
    // token (whitespace only), which is undefined behaviour.
    let tokens = pg_query::scan(sql).ok()?.tokens;
    let mut key = String::with_capacity(sql.len() + 4 * tokens.len());
    // The next constant is a `UESCAPE` character, which changes how the
    // parser reads the `U&` identifier or string before it.
    let mut escape_next = false;
    for token in &tokens {
        let kind = Token::try_from(token.token).ok();
        let constant = match kind {
            Some(Token::SqlComment | Token::CComment) => continue,
            Some(
                Token::Sconst
                | Token::Usconst
                | Token::Iconst
                | Token::Fconst
                | Token::Bconst
                | Token::Xconst,
            ) => !escape_next,
            _ => false,
        };
        escape_next = kind == Some(Token::Uescape);
        key.push_str(&token.token.to_string());
        key.push(':');
        if !constant {
            let start = usize::try_from(token.start).ok()?;
            let end = usize::try_from(token.end).ok()?;
            key.push_str(sql.get(start..end)?);
        }
        key.push('\0');
    }
    Some(key)
}

/// Hit and miss counts of a [`ClassificationCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that ran the parser (including texts that cannot be cached).
    pub misses: u64,
    /// Entries held now.
    pub entries: u64,
    /// Approximate bytes held now.
    pub bytes: u64,
}

/// Approximate bytes an entry holds: its key, and its classification's
/// strings and lists.
#[derive(Debug, Clone, Copy)]
struct EntryWeighter;

impl Weighter<String, Arc<Classification>> for EntryWeighter {
    fn weight(&self, key: &String, value: &Arc<Classification>) -> u64 {
        let items: usize = value
            .statements
            .iter()
            .map(|s| s.accesses.len() + s.functions.len() + s.operations.len())
            .sum();
        (key.len() + 128 + 64 * items) as u64
    }
}

/// A bounded, concurrent cache of classifications, shared by every session
/// of a proxy. Failed classifications are not cached.
#[derive(Debug)]
pub struct ClassificationCache {
    cache: Cache<String, Arc<Classification>, EntryWeighter>,
    max_key_len: usize,
    counters: CacheCounters,
}

/// The hit and miss counters a [`ClassificationCache`] adds to: shared
/// handles, so the proxy's metrics registry exposes the same counts.
#[derive(Debug, Clone, Default)]
pub struct CacheCounters {
    /// Lookups answered from the cache.
    pub hits: Counter,
    /// Lookups that ran the parser.
    pub misses: Counter,
}

impl Default for ClassificationCache {
    fn default() -> Self {
        Self::new(Self::DEFAULT_CAPACITY_BYTES)
    }
}

impl ClassificationCache {
    /// The default capacity: 16 MiB.
    pub const DEFAULT_CAPACITY_BYTES: u64 = 16 << 20;

    /// A cache holding about `capacity_bytes` of keys and classifications.
    /// Texts whose key is longer than a sixty-fourth of that are classified
    /// every time rather than evicting everything else.
    pub fn new(capacity_bytes: u64) -> Self {
        Self::with_counters(capacity_bytes, CacheCounters::default())
    }

    /// As [`new`](Self::new), counting hits and misses into `counters`.
    pub fn with_counters(capacity_bytes: u64, counters: CacheCounters) -> Self {
        let capacity_bytes = capacity_bytes.max(4096);
        let estimated_items = usize::try_from(capacity_bytes / 512).unwrap_or(usize::MAX).max(8);
        Self {
            cache: Cache::with_weighter(estimated_items, capacity_bytes, EntryWeighter),
            max_key_len: usize::try_from(capacity_bytes / 64).unwrap_or(usize::MAX),
            counters,
        }
    }

    /// Classifies `sql`, from the cache when a text with the same key was
    /// classified before.
    ///
    /// # Errors
    ///
    /// As [`classify`]; errors are never cached.
    pub fn classify(&self, sql: &str) -> Result<Arc<Classification>, ClassifyError> {
        let key = cache_key(sql).filter(|k| k.len() <= self.max_key_len);
        if let Some(key) = &key
            && let Some(hit) = self.cache.get(key.as_str())
        {
            self.counters.hits.inc();
            return Ok(hit);
        }
        self.counters.misses.inc();
        let classification = Arc::new(classify(sql)?);
        if let Some(key) = key
            && !classification.constant_sensitive()
        {
            self.cache.insert(key, Arc::clone(&classification));
        }
        Ok(classification)
    }

    /// The counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.get(),
            misses: self.counters.misses.get(),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
        }
    }
}
