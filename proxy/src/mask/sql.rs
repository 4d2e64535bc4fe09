//! Secrets in SQL text that the proxy itself shows: in logs, recordings and
//! ApprovalRequests. They are masked only inside the statement's values
//! (string and number literals) and comments, never across its syntax.
//!
//! The detectors run over the whole text, because some secrets are found by
//! their context (`password = 'hunter2'`: the key is an identifier, the
//! secret a literal). What a match covers is then cut to the literal and
//! comment tokens PostgreSQL's own scanner finds in it, and only those bytes
//! are replaced. So `WHERE(token=id)OR(true)`, where the `token=` detector
//! matches `id)OR(true)`, stays as it is: a person judging the statement
//! sees its whole structure, and a literal never swallows its closing quote.

use std::{borrow::Cow, collections::BTreeMap, ops::Range};

use pg_query::protobuf::{ScanToken, Token};

use super::{ALL_SECRETS, Found, Scanner, merge, replace};

/// A statement's text with its secrets masked, and the parameters (`$n`)
/// whose values are secrets by their place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedSql<'a> {
    /// The text.
    pub text: Cow<'a, str>,
    /// Parameter number → the detector that makes its value a secret: a
    /// match ran over `$n` (`token=$1`), or `$n` is assigned to or compared
    /// with a name the detectors take for a secret's (`password = $1`).
    pub secret_parameters: BTreeMap<u32, &'static str>,
}

/// `sql` with every secret the built-in detectors find masked inside its
/// literals and comments. Text the scanner cannot read (it was never run:
/// the parser refused it) is masked as plain text.
pub fn statement_text(sql: &str) -> Cow<'_, str> {
    statement_text_in(&ALL_SECRETS, sql)
}

/// [`statement_text`], with what `scanner` finds (see [`Scanner::shown`]).
pub fn statement_text_in<'a>(scanner: &Scanner, sql: &'a str) -> Cow<'a, str> {
    let mut found = Vec::new();
    scanner.find(sql.as_bytes(), &mut found);
    // The common case costs one prefilter pass and no scan.
    if found.is_empty() {
        return Cow::Borrowed(sql);
    }
    match pg_query::scan(sql) {
        Ok(scanned) => {
            // Logs and recordings: a secret that names itself is masked
            // even where it spans syntax (a key pasted unquoted, in a
            // statement the parser then refuses).
            let mut cut = value_cuts(sql, &scanned.tokens, &found);
            cut.extend(found.iter().filter(|f| names_itself(f)).cloned());
            merge(&mut cut);
            Cow::Owned(String::from_utf8_lossy(&replace(sql.as_bytes(), &cut)).into_owned())
        }
        Err(_) => Cow::Owned(String::from_utf8_lossy(&replace(sql.as_bytes(), &found)).into_owned()),
    }
}

/// Detectors that find a secret by its context (`password=...`, the
/// password of a URL, `aws_secret_access_key = ...`) rather than by its own
/// format: their matches run over identifiers that are no secret
/// (`password = password_reset_hash`, `WHERE(token=id)`).
const BY_CONTEXT: [&str; 3] = [
    "password-assignment",
    "connection-string-password",
    "aws-secret-access-key",
];

/// Whether `found` is a secret by its own format (a GitHub or AWS key
/// id, a JWT, ...), so masked in identifiers too.
fn names_itself(found: &Found) -> bool {
    !BY_CONTEXT.contains(&found.detector)
}

/// [`statement_text`], and which of the statement's parameters hold secrets
/// by their place in it: what approvers see of a held prepared statement.
pub fn masked_statement<'a>(scanner: &Scanner, sql: &'a str) -> MaskedSql<'a> {
    let mut found = Vec::new();
    scanner.find(sql.as_bytes(), &mut found);
    // `pg_query::scan`, not `scan_tokens`: see `policy::cache_key`.
    let Ok(scanned) = pg_query::scan(sql) else {
        return MaskedSql {
            text: statement_text_in(scanner, sql),
            secret_parameters: BTreeMap::new(),
        };
    };
    let tokens = &scanned.tokens;
    let mut secret_parameters = BTreeMap::new();
    for (i, token) in tokens.iter().enumerate() {
        if kind(token) != Some(Token::Param) {
            continue;
        }
        let Some(range) = span(token) else { continue };
        let Some(number) = sql
            .get(range.start + 1..range.end)
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = found.iter().find(|f| overlaps(&f.range, &range)) {
            secret_parameters.insert(number, f.detector);
        } else if let Some(detector) = secret_by_name(sql, &tokens[..i]) {
            secret_parameters.insert(number, detector);
        }
    }
    let text = if found.is_empty() {
        Cow::Borrowed(sql)
    } else {
        Cow::Owned(mask_values(sql, tokens, &found))
    };
    MaskedSql {
        text,
        secret_parameters,
    }
}

/// The detector that takes `name = <value>` for a secret assignment, where
/// `name` is the identifier or keyword before a parameter (with `=`, `:=`
/// or `=>` between them), judged by pairing the name with a stand-in value.
fn secret_by_name(sql: &str, before: &[ScanToken]) -> Option<&'static str> {
    let mut rest = before.iter().rev();
    let mut token = rest.next()?;
    if matches!(
        kind(token),
        Some(Token::Ascii61 | Token::ColonEquals | Token::EqualsGreater)
    ) {
        token = rest.next()?;
    }
    // Identifiers and keywords (`password` is one) name; the rest does not.
    let named = kind(token) == Some(Token::Ident) || token.keyword_kind != 0;
    if !named {
        return None;
    }
    let name = sql.get(span(token)?)?;
    let probe = format!("{name}=Gatehouse-stand-in-value-7f3c9a2e");
    let mut found = Vec::new();
    ALL_SECRETS.find(probe.as_bytes(), &mut found);
    let value_at = name.len() + 1;
    found
        .iter()
        .find(|f| f.range.start >= value_at)
        .map(|f| f.detector)
}

/// `sql` with the parts of `found` that lie inside literal and comment
/// tokens replaced; syntax between them is kept.
///
/// A literal or comment is masked in part only when it still reads as the
/// same one token afterwards: a match may end inside an escape (`\'` in an
/// `E''` string) or take a nested comment's `*/`, and masking just that
/// would move where the literal or comment ends as the approver reads it,
/// turning what runs into what looks like a comment. Such a token's whole
/// value is masked instead.
///
/// Identifiers are syntax, except that a secret that names itself (a
/// GitHub token, not a `password=` context) is masked inside one too:
/// `SET app.token = ghp_...` takes a bare word as its value, and a quoted
/// identifier holds anything.
fn mask_values(sql: &str, tokens: &[ScanToken], found: &[Found]) -> String {
    String::from_utf8_lossy(&replace(sql.as_bytes(), &value_cuts(sql, tokens, found))).into_owned()
}

/// What [`mask_values`] replaces, sorted.
fn value_cuts(sql: &str, tokens: &[ScanToken], found: &[Found]) -> Vec<Found> {
    let mut cut: Vec<Found> = Vec::new();
    for token in tokens {
        let (inner, any) = match value_bytes(sql, token) {
            Some(inner) => (inner, true),
            None => match identifier_bytes(sql, token) {
                Some(inner) => (inner, false),
                None => continue,
            },
        };
        let first = cut.len();
        for f in found
            .iter()
            .filter(|f| overlaps(&f.range, &inner) && (any || names_itself(f)))
        {
            cut.push(Found {
                range: f.range.start.max(inner.start)..f.range.end.min(inner.end),
                detector: f.detector,
                id: f.id,
            });
        }
        if let Some(whole) = cut.get(first).cloned()
            && !keeps_its_shape(sql, token, &cut[first..])
        {
            cut.truncate(first);
            cut.push(Found {
                range: inner,
                ..whole
            });
        }
    }
    cut
}

/// The name an identifier token holds: a bare word whole, a quoted one
/// (`"..."`, `U&"..."`) without its quotes; `None` for other tokens.
fn identifier_bytes(sql: &str, token: &ScanToken) -> Option<Range<usize>> {
    if !matches!(kind(token)?, Token::Ident | Token::Uident) {
        return None;
    }
    let range = span(token)?;
    let text = sql.get(range.clone())?;
    let inner = match text.find('"') {
        Some(open) if text.len() > open + 1 && text.ends_with('"') => open + 1..text.len() - 1,
        Some(_) => return None,
        None => 0..text.len(),
    };
    Some(range.start + inner.start..range.start + inner.end)
}

/// Whether `token` (a literal or comment), with `cuts` masked, still scans
/// as one token of its kind, from its first byte to its last: its quotes,
/// escapes and comment nesting read as they did. A number has none.
fn keeps_its_shape(sql: &str, token: &ScanToken, cuts: &[Found]) -> bool {
    if matches!(kind(token), Some(Token::Iconst | Token::Fconst)) {
        return true;
    }
    let Some(range) = span(token) else {
        return false;
    };
    let Some(text) = sql.get(range.clone()) else {
        return false;
    };
    let local: Vec<Found> = cuts
        .iter()
        .map(|f| Found {
            range: f.range.start - range.start..f.range.end - range.start,
            ..f.clone()
        })
        .collect();
    let masked = String::from_utf8_lossy(&replace(text.as_bytes(), &local)).into_owned();
    match pg_query::scan(&masked) {
        Ok(scanned) => match scanned.tokens.as_slice() {
            [only] => {
                only.token == token.token
                    && only.start == 0
                    && usize::try_from(only.end).ok() == Some(masked.len())
            }
            _ => false,
        },
        Err(_) => false,
    }
}

/// The bytes of a literal or comment token that hold its value, without
/// the quotes, prefixes and comment markers around it; `None` for syntax.
fn value_bytes(sql: &str, token: &ScanToken) -> Option<Range<usize>> {
    let range = span(token)?;
    let text = sql.get(range.clone())?;
    let inner = match kind(token)? {
        Token::Iconst | Token::Fconst => 0..text.len(),
        Token::Sconst | Token::Usconst | Token::Bconst | Token::Xconst => {
            if let Some(body) = text.strip_prefix('$') {
                // $tag$ ... $tag$
                let tag = body.find('$')? + 2;
                tag..text.len().checked_sub(tag)?
            } else {
                // '...', E'...', B'...', X'...', N'...', U&'...'
                let open = text.find('\'')? + 1;
                let close = if text.ends_with('\'') {
                    text.len() - 1
                } else {
                    text.len()
                };
                open..close
            }
        }
        Token::SqlComment => 2..text.len(),
        Token::CComment => 2..text.len().saturating_sub(2).max(2),
        _ => return None,
    };
    (inner.start <= inner.end).then(|| range.start + inner.start..range.start + inner.end)
}

fn kind(token: &ScanToken) -> Option<Token> {
    Token::try_from(token.token).ok()
}

fn span(token: &ScanToken) -> Option<Range<usize>> {
    Some(usize::try_from(token.start).ok()?..usize::try_from(token.end).ok()?)
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_match_across_syntax_masks_nothing_of_the_syntax() {
        // The assignment detector matches `token_id` here; it is a column,
        // not a value, so the approver sees the whole condition.
        let sql = "DELETE FROM accounts WHERE(token=token_id)OR(true)";
        assert!(
            super::super::ALL_SECRETS.mask(sql.as_bytes()).is_some(),
            "premise: the detectors match across the syntax"
        );
        assert_eq!(statement_text(sql), sql);
        assert_eq!(masked_statement(&ALL_SECRETS, sql).text, sql);
    }

    #[test]
    fn secrets_in_literals_are_masked_inside_their_quotes() {
        assert_eq!(
            statement_text("UPDATE users SET note = 'password=Tr0ub4dor3x' WHERE id = 1"),
            "UPDATE users SET note = 'password=[masked:password-assignment]' WHERE id = 1"
        );
        assert_eq!(
            statement_text("UPDATE users SET password = 'Tr0ub4dor3x' WHERE id = 1"),
            "UPDATE users SET password = '[masked:password-assignment]' WHERE id = 1"
        );
        assert_eq!(
            statement_text(
                "INSERT INTO keys VALUES (E'AKIAIOSFODNN7EXAMPLE', $q$ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R$q$)"
            ),
            "INSERT INTO keys VALUES (E'[masked:aws-access-key-id]', $q$[masked:github-token]$q$)"
        );
        // Comments hold secrets too; their markers stay.
        assert_eq!(
            statement_text("SELECT 1 /* AKIAIOSFODNN7EXAMPLE */ -- token: abc123def456\n"),
            "SELECT 1 /* [masked:aws-access-key-id] */ -- token: [masked:password-assignment]\n"
        );
        let clean = "SELECT * FROM orders WHERE id = 5";
        assert!(matches!(statement_text(clean), Cow::Borrowed(s) if s == clean));
    }

    /// The statement's syntax as PostgreSQL's scanner reads it: each token's
    /// kind, with the text of every token that is not a value.
    fn syntax(sql: &str) -> Vec<(i32, String)> {
        let scanned = pg_query::scan(sql).expect("scans");
        scanned
            .tokens
            .iter()
            .map(|t| {
                let text = match value_bytes(sql, t) {
                    Some(_) => String::new(),
                    None => sql[span(t).expect("span")].to_owned(),
                };
                (t.token, text)
            })
            .collect()
    }

    /// A match that ends inside an escape (`\'` of an `E''` string) or
    /// takes a nested comment's `*/`: masking that part alone would change
    /// where the literal or comment ends as the approver reads it. Here the
    /// approver would read `... AND id = 5 -- ...` (one row) or a comment,
    /// where the server runs `... OR true` (every row).
    #[test]
    fn masking_never_moves_where_a_literal_or_comment_ends() {
        for sql in [
            r"DELETE FROM orders WHERE note = E'token=abcdef\' AND id = 5 --' OR true --'",
            "DELETE FROM orders WHERE id = 5 /* /* token=aaaaaa*/ */ OR true /* token=bbbbbb/* */ */",
            r"UPDATE t SET a = E'secret: Zz9-long\\\' OR b = 1 --' WHERE id = 1",
        ] {
            pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).expect("premise: PostgreSQL runs it");
            let shown = statement_text(sql);
            assert_ne!(shown, sql, "premise: a secret is masked in {sql}");
            assert_eq!(syntax(&shown), syntax(sql), "{sql}\n shown as\n{shown}");
            assert_eq!(masked_statement(&ALL_SECRETS, sql).text, shown);
        }
        // Where the syntax allows it, only the secret is masked.
        assert_eq!(
            statement_text(r"SELECT E'a\'b token=abcdef'"),
            r"SELECT E'a\'b token=[masked:password-assignment]'"
        );
    }

    /// A secret that names itself (a token's format, not a `password=`
    /// context) is masked wherever it stands: an unquoted value
    /// (`SET app.token = ghp_...`), a quoted identifier, and, in logs and
    /// recordings, text that is not valid SQL (a key pasted unquoted; the
    /// statement is refused, and logged).
    #[test]
    fn a_secret_outside_a_literal_never_leaks() {
        let key = "ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R";
        for sql in [
            format!("SET app.github_token = {key}"),
            format!("SELECT 1 AS \"{key}\""),
        ] {
            assert!(
                !statement_text(&sql).contains(key),
                "{sql}: {}",
                statement_text(&sql)
            );
            assert!(!masked_statement(&ALL_SECRETS, &sql).text.contains(key), "{sql}");
        }
        assert_eq!(
            masked_statement(&ALL_SECRETS, &format!("SELECT 1 AS \"{key}\"")).text,
            "SELECT 1 AS \"[masked:github-token]\""
        );
        assert_eq!(
            masked_statement(&ALL_SECRETS, &format!("SELECT 1 AS U&\"{key}\"")).text,
            "SELECT 1 AS U&\"[masked:github-token]\""
        );
        let pasted = "SELEC sk-proj-Ab12Cd34Ef56Gh78Ij90Kl12Mn34Op56Qr78St90Uv12Wx34 FROM t";
        assert!(
            !statement_text(pasted).contains("Ab12Cd34Ef56"),
            "{}",
            statement_text(pasted)
        );
        // A name the context only makes look like a secret stays.
        let sql = "UPDATE users SET password = password_reset_hash WHERE id = 1";
        assert_eq!(statement_text(sql), sql);
        assert_eq!(masked_statement(&ALL_SECRETS, sql).text, sql);
    }

    #[test]
    fn unscannable_text_is_masked_as_text() {
        assert_eq!(
            statement_text("SELECT 'AKIAIOSFODNN7EXAMPLE"),
            "SELECT '[masked:aws-access-key-id]"
        );
    }

    #[test]
    fn parameters_named_or_matched_as_secrets_are_reported() {
        let masked = masked_statement(
            &ALL_SECRETS,
            "UPDATE users SET password = $1, api_key := $2, note = $3 WHERE token=$4 AND id = $5",
        );
        let numbers: Vec<u32> = masked.secret_parameters.keys().copied().collect();
        assert_eq!(numbers, [1, 2, 4], "{masked:?}");
        assert!(
            masked_statement(&ALL_SECRETS, "DELETE FROM orders WHERE id = $1")
                .secret_parameters
                .is_empty()
        );
    }
}
