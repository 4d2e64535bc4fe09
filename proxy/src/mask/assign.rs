//! Secrets written as the value of a key that names one: `password=...`,
//! `POSTGRES_PASSWORD: ...`, `"clientSecret": "..."`,
//! `<password>...</password>`, `Password={a;b}`, `--token ...`,
//! `- name: DB_PASS` + `value: ...`, `Authorization: Bearer ...`.
//!
//! Written by hand rather than as one regular expression: where a value ends
//! depends on how it is quoted (a quote with its escapes, `{}` with `}}`, an
//! XML element), on whether the key starts its line (then an unquoted value
//! runs to the end of the line, as in `.env` files and YAML) and on the key's
//! shape, and the `regex` crate has neither look-around nor back-references
//! to say so.
//!
//! # Which keys
//!
//! A key is an identifier (`[A-Za-z0-9_.$-]`) that ends, after any
//! [`MODIFIERS`] (`_b64`, `_old`, `2`, ...), with a secret word of
//! [`WORDS`], in any case and spelling: `PGPASSWORD`, `db_pass`,
//! `postgresPassword`, `spring.datasource.password`, `client-secret`,
//! `JWT_SECRET`, `refresh_token`, `SECRET_KEY`, `x-api-key`. Short words
//! (`pass`, `pwd`, `pw`, `auth`) must start a component of the name, so
//! `bypass` and `author` are not keys; `key` counts only after a word that
//! makes it a secret (`api`, `private`, `account`, ...), so `primary_key`
//! and `sort_key` are not. A name that goes on after the secret word is
//! about the secret, not the secret itself (`password_file`, `token_type`,
//! `secretName`, `max_tokens`).
//!
//! # Which values
//!
//! A value is not a secret when it is empty, a placeholder or a reference
//! ([`is_placeholder`]: `********`, `<redacted>`, `${DB_PASS}`, `{{ .x }}`,
//! `process.env.X`, ...), or prose: a single lower-case word after a key
//! that is a plain word and a `:` (`password: incorrect`, `Token: expired`).
//! A well-known default such as `changeme` or `postgres` is masked: in a
//! production table it is the password.

use std::{ops::Range, sync::LazyLock};

use aho_corasick::AhoCorasick;

/// The secret words a key name ends with, and how they must start.
const WORDS: &[(&str, Start)] = &[
    ("password", Start::Anywhere),
    ("passwd", Start::Anywhere),
    ("passphrase", Start::Anywhere),
    ("passcode", Start::Anywhere),
    ("secret", Start::Anywhere),
    ("token", Start::Anywhere),
    ("credential", Start::Anywhere),
    ("credentials", Start::Anywhere),
    ("apikey", Start::Anywhere),
    ("authorization", Start::Anywhere),
    ("pass", Start::Component),
    ("pwd", Start::Component),
    ("pw", Start::Component),
    ("auth", Start::Component),
    ("sig", Start::Whole),
    ("key", Start::Qualified),
];

/// Words that make a following `key` a secret one.
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "signing",
    "sign",
    "signature",
    "encryption",
    "encrypt",
    "crypt",
    "cipher",
    "master",
    "license",
    "licence",
    "session",
    "auth",
    "app",
    "application",
    "client",
    "account",
    "sharedaccess",
    "storage",
    "service",
    "subscription",
    "webhook",
    "hmac",
    "jwt",
    "aes",
    "root",
    "admin",
    "consumer",
    "developer",
    "ssh",
    "gpg",
    "pgp",
    "decryption",
    "primaryaccess",
    "secondaryaccess",
];

/// Name parts after the secret word that still name the secret itself.
const MODIFIERS: &[&str] = &[
    "s",
    "base",
    "value",
    "b64",
    "base64",
    "enc",
    "encrypted",
    "hash",
    "hashed",
    "str",
    "string",
    "plain",
    "plaintext",
    "raw",
    "text",
    "old",
    "new",
    "current",
    "prev",
    "previous",
    "prod",
    "production",
    "staging",
    "stage",
    "dev",
    "test",
    "local",
    "primary",
    "secondary",
    "default",
];

/// Where a secret word must start within a key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Anywhere: `PGPASSWORD`, `clientsecret`.
    Anywhere,
    /// At the start of a component: `db_pass`, `smtpPass`, not `bypass`.
    Component,
    /// The whole key: `sig=` (a SAS signature).
    Whole,
    /// After a qualifier of [`KEY_QUALIFIERS`].
    Qualified,
}

/// The keywords that must appear before [`find`] is worth running.
pub const KEYWORDS: &[&str] = &[
    "pass",
    "pwd",
    "pw",
    "secret",
    "token",
    "credential",
    "apikey",
    "auth",
    "sig",
    "key",
];

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$')
}

/// Where a key's name begins within its identifier: past `--`, `$`, `.`.
fn trim_key(text: &[u8], key: Range<usize>) -> Range<usize> {
    let mut start = key.start;
    while start < key.end && matches!(text[start], b'-' | b'$' | b'.' | b'_') {
        start += 1;
    }
    start..key.end
}

/// Whether the key `name` names a secret.
pub fn names_secret(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > 128 {
        return false;
    }
    // Split into lower-case components at `_ - .` and at camelCase humps.
    let mut parts: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    for (i, &b) in name.iter().enumerate() {
        let boundary = matches!(b, b'_' | b'-' | b'.' | b'$')
            || (b.is_ascii_uppercase() && i > 0 && name[i - 1].is_ascii_lowercase());
        if boundary && !current.is_empty() {
            parts.push((start, std::mem::take(&mut current)));
        }
        if matches!(b, b'_' | b'-' | b'.' | b'$') {
            start = i + 1;
        } else {
            if current.is_empty() {
                start = i;
            }
            current.push(b.to_ascii_lowercase() as char);
        }
    }
    if !current.is_empty() {
        parts.push((start, current));
    }
    // Take off trailing modifiers and version numbers (`key_v2`, `_2`).
    while parts.len() > 1 {
        let last = &parts[parts.len() - 1].1;
        let number = last.trim_start_matches('v');
        let version = !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit());
        if version || MODIFIERS.contains(&last.as_str()) {
            parts.pop();
        } else {
            break;
        }
    }
    // `password2`, `token01`.
    if let Some((_, last)) = parts.last_mut() {
        let trimmed = last.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if trimmed > 0 {
            last.truncate(trimmed);
        }
    }
    let Some((_, last)) = parts.last() else {
        return false;
    };
    let joined: String = parts.iter().map(|(_, p)| p.as_str()).collect();
    WORDS.iter().any(|&(word, start)| match start {
        Start::Anywhere => {
            last.ends_with(word)
                || (parts.len() > 1 && joined.ends_with(word) && word.len() > last.len() && {
                    // `pass_word`, `api_key` written in parts: the word spans them.
                    let tail = &joined[joined.len() - word.len()..];
                    tail == word
                })
        }
        Start::Component => last == word,
        Start::Whole => parts.len() == 1 && last == word,
        Start::Qualified => {
            if last == "key" || last == "keys" {
                parts.len() > 1 && KEY_QUALIFIERS.contains(&parts[parts.len() - 2].1.as_str())
            } else {
                // `apikey`, `privatekey`, `AccountKey` in one word.
                last.strip_suffix("key")
                    .or_else(|| last.strip_suffix("keys"))
                    .is_some_and(|q| KEY_QUALIFIERS.iter().any(|k| q.ends_with(k) && !q.is_empty()))
            }
        }
    })
}

/// A key that is a plain word (`password`, `Token`): prose may follow it.
fn is_plain_word(name: &[u8]) -> bool {
    name.iter().all(u8::is_ascii_alphabetic) && name.iter().skip(1).all(u8::is_ascii_lowercase)
}

/// Whether `value` stands in for a secret rather than being one.
pub fn is_placeholder(value: &[u8]) -> bool {
    let value = value.trim_ascii();
    let Some(&first) = value.first() else {
        return true;
    };
    let last = value[value.len() - 1];
    // One character repeated, or only masking characters: `****`, `xxxx`.
    if value.iter().all(|&b| b == first)
        || value
            .iter()
            .all(|b| matches!(b, b'*' | b'x' | b'X' | b'.' | b'#' | b'?' | b'-' | b'_'))
        || std::str::from_utf8(value).is_ok_and(|s| s.chars().all(|c| matches!(c, '•' | '●' | '*' | '…')))
    {
        return true;
    }
    // A template, a variable or a marker: `${X}`, `{{ x }}`, `$(cmd)`,
    // `#{x}`, `%(x)s`, `%X%`, `$X`, `<redacted>`, `[masked:jwt]`, `{x}`.
    if value.starts_with(b"${")
        || value.starts_with(b"{{")
        || value.starts_with(b"$(")
        || value.starts_with(b"#{")
        || value.starts_with(b"%(")
        || value.starts_with(b"[masked")
        || (first == b'<' && last == b'>')
        || (first == b'[' && last == b']')
        || (first == b'%' && last == b'%' && value.len() > 2)
        || (first == b'{' && last == b'}' && value[1..value.len() - 1].iter().all(|&b| is_key_byte(b)))
        || (first == b'$'
            && value.len() > 1
            && value[1..]
                .iter()
                .all(|&b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'))
    {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    const MARKERS: &[&[u8]] = &[
        b"redacted",
        b"masked",
        b"hidden",
        b"removed",
        b"omitted",
        b"placeholder",
        b"none",
        b"null",
        b"nil",
        b"undefined",
        b"empty",
        b"unset",
        b"notset",
        b"not set",
        b"n/a",
        b"tbd",
        b"todo",
        b"true",
        b"false",
    ];
    if MARKERS.contains(&lower.as_slice()) {
        return true;
    }
    // `your_password_here`, `<your-api-key>` without the brackets.
    if lower.starts_with(b"your_") || lower.starts_with(b"your-") || lower.starts_with(b"your ") {
        return true;
    }
    // A reference in code: `process.env.DB_PASS`, `os.environ["X"]`,
    // `getenv("X")`, `config.db.password`, `req.body.apiKey`. Not a dotted
    // passphrase: `correct.horse.battery.staple`, `this.is.my.pass`.
    let reference = |s: &[u8]| {
        let parts: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
        let shaped = parts.len() > 1
            && !s.iter().any(u8::is_ascii_digit)
            && parts.iter().all(|p| {
                !p.is_empty()
                    && (p[0].is_ascii_alphabetic() || p[0] == b'_' || p[0] == b'$')
                    && p.iter()
                        .all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$')
            });
        if !shaped {
            return false;
        }
        let root = parts[0].to_ascii_lowercase();
        let root = &root[root.iter().take_while(|b| matches!(b, b'$' | b'_')).count()..];
        // What code reads settings through is a reference whatever follows.
        if SETTINGS_ROOTS.contains(&root) {
            return true;
        }
        // An object's field is one when it names a secret (or an
        // environment variable) and reads like code, not words.
        let last = parts[parts.len() - 1];
        let env_name = last
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
        OBJECT_ROOTS.contains(&root)
            && parts[1..].iter().all(|p| p.len() >= 3)
            && (names_secret(last) || env_name)
    };
    let bare = value.strip_suffix(b",").unwrap_or(value);
    if reference(bare) {
        return true;
    }
    if let Some(open) = memchr::memchr2(b'(', b'[', bare)
        && matches!(bare.last(), Some(b')' | b']'))
        && open > 0
        && reference_or_ident(&bare[..open])
    {
        return true;
    }
    false
}

/// The names code reads settings through: a dotted value that starts
/// with one (lower-case, without a leading `$` or `_`) is a reference.
const SETTINGS_ROOTS: &[&[u8]] = &[
    b"process",
    b"os",
    b"env",
    b"environ",
    b"environment",
    b"config",
    b"conf",
    b"cfg",
    b"configuration",
    b"settings",
    b"secrets",
    b"vault",
    b"ctx",
    b"props",
    b"properties",
    b"params",
    b"args",
    b"opts",
    b"options",
    b"spring",
    b"credentials",
    b"creds",
    b"runtime",
    b"import",
];

/// Objects code reads a secret from (`user.password`, `req.body.apiKey`):
/// a reference only when the field names a secret.
const OBJECT_ROOTS: &[&[u8]] = &[
    b"this",
    b"self",
    b"user",
    b"current_user",
    b"request",
    b"req",
    b"res",
    b"response",
    b"body",
    b"form",
    b"data",
    b"app",
    b"context",
    b"values",
    b"rails",
    b"account",
    b"client",
    b"connection",
    b"conn",
    b"db",
    b"database",
    b"auth",
    b"session",
    b"secret",
];

/// `os.environ`, `config.get`, `getenv`, `env`: what a value read from
/// elsewhere is called through.
fn reference_or_ident(s: &[u8]) -> bool {
    let shaped = s
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'$'))
        && s.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_');
    let lower = s.to_ascii_lowercase();
    shaped
        && (s.contains(&b'.')
            || matches!(
                lower.as_slice(),
                b"getenv" | b"env" | b"secret" | b"secrets" | b"lookup" | b"vault" | b"var"
            ))
}

/// The separator after a key: its length, or `None`.
fn separator(text: &[u8], at: usize) -> Option<(usize, u8)> {
    let rest = &text[at..];
    if rest.starts_with(b":=") || rest.starts_with(b"=>") {
        return Some((2, rest[0]));
    }
    match rest.first() {
        Some(b'=') if rest.get(1) != Some(&b'=') => Some((1, b'=')),
        Some(b':') if rest.get(1) != Some(&b':') => Some((1, b':')),
        _ => None,
    }
}

fn skip_blanks(text: &[u8], mut at: usize) -> usize {
    while at < text.len() && matches!(text[at], b' ' | b'\t') {
        at += 1;
    }
    at
}

fn line_start(text: &[u8], at: usize) -> usize {
    memchr::memrchr(b'\n', &text[..at]).map_or(0, |i| i + 1)
}

fn line_end(text: &[u8], at: usize) -> usize {
    memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i)
}

/// Whether the key at `key_start` is the first thing on its line (after
/// indentation, a list dash or `export`).
fn starts_line(text: &[u8], key_start: usize) -> bool {
    let before = text[line_start(text, key_start)..key_start].trim_ascii();
    matches!(
        before,
        b"" | b"-" | b"export" | b"set" | b"ENV" | b"declare" | b"#" | b"//"
    )
}

/// The end of a quoted value starting after `quote` at `at`: the closing
/// quote's position. A value whose quote does not close ends at its line's
/// end, or (quoted with `'` or a backtick) at a `"`: that is the end of the
/// JSON string or the attribute holding it, not part of the value.
fn quoted_end(text: &[u8], at: usize, quote: u8) -> usize {
    let mut i = at;
    while i < text.len() {
        match text[i] {
            b'\\' if quote != b'`' => i += 2,
            b if b == quote => {
                // SQL and libpq double a quote to escape it.
                if quote == b'\'' && text.get(i + 1) == Some(&b'\'') {
                    i += 2;
                    continue;
                }
                return i;
            }
            b'\n' | b'\r' => return i,
            b'"' if quote != b'"' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

/// Where an escaped line break or quote (`\n`, `\r`, `\"`) first
/// follows `at`: in text that is still escaped (a JSON document read raw),
/// it ends an unquoted value as the real one would.
fn escaped_break(text: &[u8], at: usize) -> usize {
    let mut from = at;
    while let Some(i) = memchr::memchr(b'\\', &text[from..]) {
        let i = from + i;
        if matches!(text.get(i + 1), Some(b'n' | b'r' | b'"')) {
            return i;
        }
        from = i + 1;
    }
    text.len()
}

/// Where the next `key=value` pair of the same line starts, when one
/// follows a `;`, `&` or blank (`User=a;Password=b;Host=c`,
/// `PGPASSWORD=x PGUSER=y`).
fn next_pair(text: &[u8], at: usize) -> Option<usize> {
    let end = line_end(text, at);
    let mut i = at;
    while i < end {
        if matches!(text[i], b';' | b'&' | b' ' | b'\t') {
            let mut j = i + 1;
            if j < end && (text[j].is_ascii_alphabetic() || text[j] == b'_') {
                while j < end
                    && (text[j].is_ascii_alphanumeric() || matches!(text[j], b'_' | b'.' | b'-' | b' '))
                    && text[j] != b'='
                {
                    j += 1;
                }
                if j < end && text[j] == b'=' && text[i + 1..j].trim_ascii() == &text[i + 1..j] {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

/// The value after a separator at `at`, or `None` when there is none or it
/// is structure (an object, a list) rather than a value.
fn value_at(text: &[u8], at: usize, anchored: bool, indent: usize, separator: u8) -> Option<Range<usize>> {
    let at = skip_blanks(text, at);
    let first = *text.get(at)?;
    match first {
        b'"' | b'\'' | b'`' => {
            let end = quoted_end(text, at + 1, first);
            Some(at + 1..end)
        }
        // `Password={a;b}` in ODBC and ADO.NET: `}}` is a literal brace.
        b'{' if separator == b'=' => {
            let mut i = at + 1;
            while i < text.len() {
                if text[i] == b'}' {
                    if text.get(i + 1) == Some(&b'}') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            Some(at + 1..i.min(text.len()))
        }
        b'{' | b'[' | b'\n' | b'\r' => None,
        // A YAML block scalar: the more-indented lines that follow.
        b'|' | b'>' if anchored => {
            let mut end = line_end(text, at);
            let start = (end + 1).min(text.len());
            let mut next = start;
            while next < text.len() {
                let stop = line_end(text, next);
                let line = &text[next..stop];
                let depth = line.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
                if !line.trim_ascii().is_empty() && depth <= indent {
                    break;
                }
                end = stop;
                next = stop + 1;
            }
            (end > start).then_some(start..end)
        }
        _ if anchored => {
            // A `"` ends it too: in a value that is JSON, the line is the
            // whole document, and the quote closes the string it is in.
            let quote = memchr::memchr(b'"', &text[at..]).map_or(text.len(), |i| at + i);
            let end = next_pair(text, at)
                .unwrap_or_else(|| line_end(text, at))
                .min(escaped_break(text, at))
                .min(quote);
            let mut value = at..end;
            while value.end > value.start && text[value.end - 1].is_ascii_whitespace() {
                value.end -= 1;
            }
            if separator == b':' && value.end > value.start && text[value.end - 1] == b',' {
                value.end -= 1;
            }
            Some(value)
        }
        _ => {
            let stop = escaped_break(text, at);
            let mut end = at;
            while end < stop
                && !text[end].is_ascii_whitespace()
                && !matches!(
                    text[end],
                    b';' | b'&' | b',' | b'}' | b')' | b']' | b'<' | b'>' | b'"' | b'\'' | b'`'
                )
            {
                end += 1;
            }
            Some(at..end)
        }
    }
}

/// Finds the keywords of [`KEYWORDS`], ASCII case-insensitively.
static KEYWORD_FINDER: LazyLock<AhoCorasick> = LazyLock::new(|| {
    // Constant keywords; building cannot fail.
    #[allow(clippy::expect_used)]
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(KEYWORDS)
        .expect("keyword automaton builds")
});

/// The secrets `text` holds as values of keys that name them, as ranges of
/// `text`, in order.
pub fn find(text: &[u8], out: &mut Vec<Range<usize>>) {
    // Every form below needs a separator (`=`, `:`), an XML tag or a
    // `--flag`: prose that only mentions a password has none of them.
    if memchr::memchr3(b'=', b':', b'<', text).is_none() && memchr::memmem::find(text, b"--").is_none() {
        return;
    }
    let mut done = 0;
    for hit in KEYWORD_FINDER.find_iter(text) {
        if hit.start() < done {
            continue;
        }
        // The identifier around the keyword.
        let mut start = hit.start();
        while start > 0 && is_key_byte(text[start - 1]) {
            start -= 1;
        }
        let mut end = hit.end();
        while end < text.len() && is_key_byte(text[end]) {
            end += 1;
        }
        done = end;
        let key = trim_key(text, start..end);
        // A trailing `.` or `-` belongs to the text around, not the name.
        let mut key_end = key.end;
        while key_end > key.start && matches!(text[key_end - 1], b'.' | b'-') {
            key_end -= 1;
        }
        if !names_secret(&text[key.start..key_end]) {
            continue;
        }
        if let Some(value) = value_of(text, start, key.start..key_end) {
            done = done.max(value.end);
            let secret = &text[value.clone()];
            if secret.trim_ascii().len() >= 3 && !is_placeholder(secret) {
                out.push(value);
            }
        }
    }
}

/// The value of the key at `key` (whose identifier began at `ident`).
fn value_of(text: &[u8], ident: usize, key: Range<usize>) -> Option<Range<usize>> {
    let name = &text[key.clone()];
    let opener = ident.checked_sub(1).map(|i| text[i]);
    let mut after = key.end;
    // `<password>value</password>`, `<Password attr="x">value<`.
    if opener == Some(b'<') {
        let close = memchr::memchr(b'>', &text[after..]).map(|i| after + i)?;
        if text[close - 1] == b'/' {
            return None;
        }
        let start = close + 1;
        // To the closing tag; with none, to the end of the line or of the
        // string holding the document.
        let end = match memchr::memchr(b'<', &text[start..]) {
            Some(i) if text.get(start + i + 1) == Some(&b'/') => start + i,
            _ => memchr::memchr3(b'<', b'"', b'\n', &text[start..]).map_or(text.len(), |i| start + i),
        };
        let mut value = start..end;
        while value.start < value.end && text[value.start].is_ascii_whitespace() {
            value.start += 1;
        }
        while value.end > value.start && text[value.end - 1].is_ascii_whitespace() {
            value.end -= 1;
        }
        return (!value.is_empty()).then_some(value);
    }
    // A quoted key: `"password": ...`, `'pass' => ...`.
    if let Some(q @ (b'"' | b'\'')) = opener
        && text.get(after) == Some(&q)
    {
        after += 1;
    }
    let sep_at = skip_blanks(text, after);
    let anchored = starts_line(
        text,
        ident.saturating_sub(usize::from(matches!(opener, Some(b'"' | b'\'')))),
    );
    let indent = text[line_start(text, ident)..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if let Some((len, sep)) = separator(text, sep_at) {
        let mut value = value_at(text, sep_at + len, anchored, indent, sep)?;
        // Prose: `password: incorrect`, `Token: expired.`
        let quoted = value.start > 0 && matches!(text[value.start - 1], b'"' | b'\'' | b'`');
        if sep == b':' && !quoted && is_plain_word(name) {
            let word = &text[value.clone()];
            let word = word.strip_suffix(b".").unwrap_or(word);
            if word.len() < 16
                && !word.is_empty()
                && word.iter().all(u8::is_ascii_alphabetic)
                && word[1..].iter().all(u8::is_ascii_lowercase)
            {
                return None;
            }
        }
        // `Authorization: Bearer <token>`: the scheme is not the secret.
        if name.to_ascii_lowercase().ends_with(b"authorization") {
            let v = &text[value.clone()];
            if let Some(space) = memchr::memchr(b' ', v)
                && v[..space].iter().all(u8::is_ascii_alphabetic)
            {
                value.start += space + 1;
            }
        }
        return Some(value);
    }
    // `--password value` on a command line.
    if text[ident..].starts_with(b"--") && text.get(sep_at).is_some() && sep_at > after {
        let value = value_at(text, sep_at, false, indent, b' ')?;
        return (!value.is_empty()).then_some(value);
    }
    // `name: DB_PASSWORD` then `value: ...`: a name/value pair (Kubernetes
    // env lists, `<add key="DbPassword" value="...">`, JSON settings).
    paired_value(text, ident, after)
}

/// The `value` that belongs to a secret's name given as the value of a
/// `name` or `key` field that ends at `after`.
fn paired_value(text: &[u8], ident: usize, after: usize) -> Option<Range<usize>> {
    let mut before = ident;
    if before > 0 && matches!(text[before - 1], b'"' | b'\'') {
        before -= 1;
    }
    let head = text[..before].trim_ascii_end();
    let head = head
        .strip_suffix(b":")
        .or_else(|| head.strip_suffix(b"="))?
        .trim_ascii_end();
    let head = head
        .strip_suffix(b"\"")
        .or_else(|| head.strip_suffix(b"'"))
        .unwrap_or(head);
    let field_start = head.iter().rposition(|&b| !is_key_byte(b)).map_or(0, |i| i + 1);
    let field = head[field_start..].to_ascii_lowercase();
    if !matches!(field.as_slice(), b"name" | b"key" | b"variable" | b"id") {
        return None;
    }
    // The `value` field within the next few hundred bytes.
    // ... and within the same object or list item: before a `}`, a `/>`
    // or the next `- ` item of a YAML list.
    let mut window_end = (after + 256).min(text.len());
    if let Some(close) = memchr::memchr(b'}', &text[after..window_end]) {
        window_end = after + close;
    }
    let mut line = after;
    while let Some(nl) = memchr::memchr(b'\n', &text[line..window_end]) {
        line += nl + 1;
        if text[line..window_end].trim_ascii_start().starts_with(b"- ") {
            window_end = line;
            break;
        }
    }
    let window = &text[after..window_end];
    let mut search = 0;
    while let Some(found) = find_ci(&window[search..], b"value") {
        let start = after + search + found;
        search += found + 5;
        let end = start + 5;
        let before_ok = start == 0 || !is_key_byte(text[start - 1]);
        let mut sep_at = end;
        if matches!(text.get(sep_at), Some(b'"' | b'\'')) {
            sep_at += 1;
        }
        let sep_at = skip_blanks(text, sep_at);
        if !before_ok || text.get(end).is_some_and(|&b| is_key_byte(b)) {
            continue;
        }
        if let Some((len, sep)) = separator(text, sep_at) {
            let anchored = starts_line(text, start);
            let indent = text[line_start(text, start)..]
                .iter()
                .take_while(|&&b| b == b' ' || b == b'\t')
                .count();
            return value_at(text, sep_at + len, anchored, indent, sep);
        }
    }
    None
}

fn find_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        find(text.as_bytes(), &mut out);
        out.into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn key_names_people_use() {
        for (text, secret) in [
            ("POSTGRES_PASSWORD=Wq8-zz1!", "Wq8-zz1!"),
            ("postgresPassword: n0t-Guessable", "n0t-Guessable"),
            ("PGPASSWORD=kT5mQ2 psql -h db", "kT5mQ2 psql -h db"),
            ("PGPASSWORD=kT5mQ2 PGUSER=app psql", "kT5mQ2"),
            ("export DB_PASS='two words here'", "two words here"),
            ("SECRET_KEY = \"django-insecure-4f9#q\"", "django-insecure-4f9#q"),
            ("JWT_SECRET=abc.def.ghi-123", "abc.def.ghi-123"),
            ("api_secret: \"x y;z\"", "x y;z"),
            ("refresh_token=1//0gAbCdEfGh", "1//0gAbCdEfGh"),
            (r#"{"password": "p\"q r"}"#, r#"p\"q r"#),
            ("<password>Sp4ce d Out</password>", "Sp4ce d Out"),
            ("<Password type=\"x\">q1w2e3r4</Password>", "q1w2e3r4"),
            ("const cfg = { user: 'app', pass: 'Kq9!x' };", "Kq9!x"),
            ("spring.datasource.password=Mz9$k", "Mz9$k"),
            ("client-secret: \"Zr7_88\"", "Zr7_88"),
            ("x-api-key: 9b1c2d3e4f", "9b1c2d3e4f"),
            ("AccountKey=bWFzaz1tZQ==;EndpointSuffix=core", "bWFzaz1tZQ=="),
            ("Server=db;User Id=sa;Password={a;b}}c};", "a;b}}c"),
            ("host=db password='with spaces' user=x", "with spaces"),
            ("Authorization: Bearer abc.DEF.123", "abc.DEF.123"),
            ("mysql --password=Hx72k -u root", "Hx72k"),
            ("run --token Hx72kLm2 now", "Hx72kLm2"),
            ("smtpPass=Qq11Ww22", "Qq11Ww22"),
            ("password2=Pw2-value", "Pw2-value"),
            ("'pass' => 'b4r!'", "b4r!"),
            ("password := \"go-l4ng\"", "go-l4ng"),
            ("password: hunter2", "hunter2"),
            ("password: supersecretpassword", "supersecretpassword"),
        ] {
            assert_eq!(secrets(text), vec![secret], "{text}");
        }
    }

    #[test]
    fn unquoted_values_at_line_start_run_to_the_line_end() {
        assert_eq!(
            secrets("DB_PASS=p@ss w0rd;& more\nUSER=app"),
            vec!["p@ss w0rd;& more"]
        );
        assert_eq!(secrets("url?user=a&password=Zx81&next=1"), vec!["Zx81"]);
    }

    #[test]
    fn yaml_block_scalars_and_name_value_pairs() {
        assert_eq!(
            secrets("db:\n  password: |\n    line-one-secret\n    line-two\n  user: app\n"),
            vec!["    line-one-secret\n    line-two"]
        );
        assert_eq!(
            secrets("env:\n- name: DB_PASSWORD\n  value: s3cr3t-V4l\n- name: LOG\n  value: debug\n"),
            vec!["s3cr3t-V4l"]
        );
        assert_eq!(
            secrets(r#"[{"name":"API_TOKEN","value":"tok-998877"}]"#),
            vec!["tok-998877"]
        );
        assert_eq!(
            secrets(r#"<add key="DbPassword" value="Pa$$-w0rd" />"#),
            vec!["Pa$$-w0rd"]
        );
    }

    #[test]
    fn look_alikes_are_left_alone() {
        for text in [
            "password: incorrect",
            "Password: Expired.",
            "the token expired",
            "password reset requested",
            "token count: 42",
            "token_count=42",
            "max_tokens: 4096",
            "token_type: bearer",
            "password_file: /run/secrets/db",
            "secretName: db-creds",
            "primary_key = id",
            "sort_key: created_at",
            "keyboard=qwerty",
            "bypass=true",
            "author: Ada",
            "password=\nnext=line",
            r#"{"v": "password=\nnext=1"}"#,
            "password: ********",
            "password=<redacted>",
            "password: '${DB_PASSWORD}'",
            "token: {{ .Values.token }}",
            "pass: process.env.DB_PASS,",
            "password = os.environ['DB_PASSWORD']",
            "PASSWORD=$DB_PASSWORD",
            "secret: [masked:jwt]",
            "password: null",
            "api_key: your_api_key_here",
            "password: {",
            "credentials:\n  user: x",
            "passwordPolicy: strict-8",
            "tokenUrl: https://x/token",
            "<password/>",
            "valueFrom:\n  secretKeyRef:\n    name: db\n    key: password",
            "- secretKeyRef:\n    key: password\n- name: LOG\n  value: debug",
        ] {
            assert_eq!(secrets(text), Vec::<&str>::new(), "{text}");
        }
    }

    #[test]
    fn names() {
        for yes in [
            "password",
            "PGPASSWORD",
            "db_pass",
            "smtpPass",
            "JWT_SECRET",
            "SECRET_KEY",
            "apiKey",
            "api-key",
            "x-api-key",
            "AccountKey",
            "SharedAccessKey",
            "refresh_token",
            "password_b64",
            "DB_PASSWORD_OLD",
            "token2",
            "sig",
            "auth",
            "_auth",
            "pw",
            "client_secret",
            "privateKey",
            "secret_key_base",
        ] {
            assert!(names_secret(yes.trim_start_matches('_').as_bytes()), "{yes}");
        }
        for no in [
            "bypass",
            "compass",
            "author",
            "authority",
            "primary_key",
            "foreign_key",
            "key",
            "keyboard",
            "tokens_used",
            "token_type",
            "password_file",
            "secretName",
            "passport",
            "signal",
            "design",
        ] {
            assert!(!names_secret(no.as_bytes()), "{no}");
        }
    }
}
