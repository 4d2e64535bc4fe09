//! What an approval covers, and what the approver sees of it.
//!
//! An approval covers exactly one statement: the SHA-256 of its bytes and
//! the parameter types it was prepared with ([`Binding::statement_hash`]),
//! and of the values it is bound to with their formats
//! ([`Binding::parameters_hash`]); the ApprovalRequest adds the requester and
//! the Connection's uid. Nothing lossy takes part: pg_query's fingerprint
//! ignores `true`/`false`/`NULL`, `$n` numbering and the order of some
//! lists, so it is kept for grouping only.
//!
//! The approver sees the whole statement, as it will run ([`shown`]):
//! secrets are masked inside its literals and comments only, its
//! parameters are listed with their types, and a statement that does not fit
//! in an ApprovalRequest, or that holds characters a person cannot see, is
//! refused rather than shortened or shown misleadingly.

use gatehouse_crds::{Parameter, ParameterFormat};
use postgres_types::{FromSql, Type};
use sha2::{Digest, Sha256};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::{
    mask::Scanner,
    pg::{
        messages::{Bind, Format},
        sqlstate,
    },
    policy::Refusal,
};

/// The longest statement an ApprovalRequest shows, in bytes (the CRD allows
/// 65536 characters).
pub const MAX_STATEMENT_BYTES: usize = 65536;
/// The most parameters an ApprovalRequest lists.
pub const MAX_PARAMETERS: usize = 1024;
/// The longest parameter value it shows, in characters.
pub const MAX_VALUE_CHARS: usize = 16384;
/// The most it shows of all parameter values together, in bytes.
pub const MAX_PARAMETER_BYTES: usize = 65536;

/// What an approval is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// SHA-256 (hex) of the statement's bytes and its parameter type OIDs.
    pub statement_hash: String,
    /// SHA-256 (hex) of the bound values, each with its format.
    pub parameters_hash: String,
    /// pg_query's fingerprint (hex): grouping and display only.
    pub fingerprint: String,
}

/// The binding of `sql`, prepared with `param_types` (empty for a simple
/// Query), run with `bind`'s values (`None` for a simple Query).
pub fn binding(sql: &str, param_types: &[u32], bind: Option<&Bind>) -> Binding {
    let mut statement = Sha256::new();
    // Domain-separated and length-prefixed: no two inputs hash alike.
    statement.update(b"gatehouse.dev/v1alpha1 statement\0");
    statement.update((sql.len() as u64).to_be_bytes());
    statement.update(sql.as_bytes());
    statement.update((param_types.len() as u64).to_be_bytes());
    for oid in param_types {
        statement.update(oid.to_be_bytes());
    }
    let mut parameters = Sha256::new();
    parameters.update(b"gatehouse.dev/v1alpha1 parameters\0");
    let values = bind.map_or(&[][..], |b| b.params.as_slice());
    parameters.update((values.len() as u64).to_be_bytes());
    for (i, value) in values.iter().enumerate() {
        let format = bind.map_or(Format::Text, |b| b.param_format(i));
        parameters.update([u8::from(format == Format::Binary)]);
        match value {
            Some(v) => {
                parameters.update((v.len() as u64).to_be_bytes());
                parameters.update(v);
            }
            None => parameters.update(u64::MAX.to_be_bytes()),
        }
    }
    let statement_hash = hex::encode(statement.finalize());
    let options =
        pg_query::FingerprintOptions::RANGEVAR_PG17_COMPAT | pg_query::FingerprintOptions::FULL_RELNAME;
    let fingerprint = pg_query::fingerprint(sql, 0, options)
        .map(|f| f.hex)
        .unwrap_or_else(|_| statement_hash[..16].to_owned());
    Binding {
        statement_hash,
        parameters_hash: hex::encode(parameters.finalize()),
        fingerprint,
    }
}

/// What an approver sees of a held statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    /// The whole statement, secrets in its literals and comments masked.
    pub statement: String,
    /// Its parameters, `$1` first, secrets masked.
    pub parameters: Vec<Parameter>,
}

/// What the approver of `sql` (prepared with `param_types`, bound by `bind`)
/// sees, or why it cannot be held: it does not fit in an ApprovalRequest
/// (SQLSTATE 54000), or it holds characters a person would not see
/// (42501). Either way the statement does not run.
pub fn shown(
    scanner: &Scanner,
    sql: &str,
    param_types: &[u32],
    bind: Option<&Bind>,
) -> Result<Shown, Refusal> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(too_large(format!(
            "the statement is {} bytes and an ApprovalRequest shows at most {MAX_STATEMENT_BYTES}",
            sql.len()
        )));
    }
    if let Some((at, c)) = hidden(sql) {
        return Err(unseeable("the statement", at, c));
    }
    let masked = crate::mask::masked_statement(scanner, sql);
    if masked.text.len() > MAX_STATEMENT_BYTES {
        return Err(too_large(format!(
            "with its secrets masked the statement is {} bytes and an ApprovalRequest shows at most {MAX_STATEMENT_BYTES}",
            masked.text.len()
        )));
    }
    let values = bind.map_or(&[][..], |b| b.params.as_slice());
    if values.len() > MAX_PARAMETERS {
        return Err(too_large(format!(
            "the statement has {} parameters and an ApprovalRequest lists at most {MAX_PARAMETERS}",
            values.len()
        )));
    }
    let mut parameters = Vec::with_capacity(values.len());
    let mut total = 0;
    for (i, value) in values.iter().enumerate() {
        let number = i + 1;
        let oid = param_types.get(i).copied().unwrap_or(0);
        let binary = bind.is_some_and(|b| b.param_format(i) == Format::Binary);
        let secret = u32::try_from(number)
            .ok()
            .and_then(|n| masked.secret_parameters.get(&n));
        let shown = match (value, secret) {
            (None, _) => None,
            (Some(_), Some(detector)) => Some(crate::mask::replacement(detector)),
            (Some(v), None) => Some(
                show_value(scanner, oid, binary, v)
                    .map_err(|c| unseeable(&format!("parameter ${number}"), c.0, c.1))?,
            ),
        };
        if let Some(text) = &shown {
            let chars = text.chars().count();
            if chars > MAX_VALUE_CHARS {
                return Err(too_large(format!(
                    "parameter ${number} shows as {chars} characters and an ApprovalRequest shows at most {MAX_VALUE_CHARS} of one value"
                )));
            }
            total += text.len();
        }
        parameters.push(Parameter {
            type_name: type_name(oid),
            format: if binary {
                ParameterFormat::Binary
            } else {
                ParameterFormat::Text
            },
            value: shown,
        });
    }
    if total > MAX_PARAMETER_BYTES {
        return Err(too_large(format!(
            "its parameters show as {total} bytes and an ApprovalRequest shows at most {MAX_PARAMETER_BYTES} of them"
        )));
    }
    Ok(Shown {
        statement: masked.text.into_owned(),
        parameters,
    })
}

/// A value as the approver reads it, secrets masked: text as sent; binary
/// decoded when its type is a known one, else in hex. `Err` names a
/// character a person would not see.
fn show_value(scanner: &Scanner, oid: u32, binary: bool, value: &[u8]) -> Result<String, (usize, char)> {
    let text = if binary {
        match decode_binary(oid, value) {
            Some(text) => text,
            // Hex would show a secret encoded: mask the value whole instead.
            None => match crate::mask::secrets_in(scanner, value).first() {
                Some(found) => return Ok(crate::mask::replacement(found.detector)),
                None => format!("\\x{}", hex::encode(value)),
            },
        }
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    if let Some(found) = hidden(&text) {
        return Err(found);
    }
    Ok(match crate::mask::value_text(scanner, text.as_bytes()) {
        Some(masked) => String::from_utf8_lossy(&masked).into_owned(),
        None => text,
    })
}

/// A binary value of a built-in type as text, or `None`.
fn decode_binary(oid: u32, raw: &[u8]) -> Option<String> {
    let ty = Type::from_oid(oid)?;
    Some(match ty {
        Type::BOOL => bool::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT2 => i16::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT4 => i32::from_sql(&ty, raw).ok()?.to_string(),
        Type::INT8 => i64::from_sql(&ty, raw).ok()?.to_string(),
        Type::OID => u32::from_sql(&ty, raw).ok()?.to_string(),
        Type::FLOAT4 => f32::from_sql(&ty, raw).ok()?.to_string(),
        Type::FLOAT8 => f64::from_sql(&ty, raw).ok()?.to_string(),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN | Type::JSON => {
            <&str>::from_sql(&ty, raw).ok()?.to_owned()
        }
        // jsonb: a version byte, then the text.
        Type::JSONB => match raw.split_first() {
            Some((1, text)) => std::str::from_utf8(text).ok()?.to_owned(),
            _ => return None,
        },
        _ => return None,
    })
}

/// `int4`, `text`, ...; the OID of a type that is not built in;
/// `unspecified` when the server infers it.
fn type_name(oid: u32) -> String {
    match oid {
        0 => "unspecified".to_owned(),
        oid => Type::from_oid(oid).map_or_else(|| oid.to_string(), |t| t.name().to_owned()),
    }
}

/// The first character of `text` a person reading it would not see, or
/// that would change how the rest reads on a screen: control characters
/// other than tab and line ends (a lone carriage return rewrites a line),
/// format characters (bidirectional overrides, zero-width characters),
/// line and paragraph separators, the other characters Unicode says render
/// as nothing (variation selectors, Hangul fillers: see
/// [`default_ignorable`]), the blank Braille pattern, code points not
/// assigned yet (a newer font may draw them as anything, or nothing),
/// enclosing marks, and combining marks on a digit, symbol, punctuation or
/// space (`=` with U+0338 reads as `≠`). With its byte offset. A combining
/// mark on a letter (a decomposed accent) is text.
pub fn hidden(text: &str) -> Option<(usize, char)> {
    let bytes = text.as_bytes();
    let mut previous: Option<char> = None;
    text.char_indices().find(|&(at, c)| {
        let base = previous.replace(c);
        match c {
            '\t' | '\n' => false,
            '\r' => bytes.get(at + 1) != Some(&b'\n'),
            c if c.is_control() => true,
            '\u{2800}' => true,
            c if default_ignorable(c) => true,
            c => match c.general_category() {
                GeneralCategory::Format
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
                | GeneralCategory::Unassigned
                | GeneralCategory::EnclosingMark => true,
                GeneralCategory::NonspacingMark | GeneralCategory::SpacingMark => {
                    !base.is_some_and(char::is_alphabetic)
                }
                _ => false,
            },
        }
    })
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt):
/// characters a renderer shows as nothing when it has no glyph for them.
/// Most are format characters; these ranges also hold the ones that are
/// not (marks such as the variation selectors and the combining grapheme
/// joiner, letters such as the Hangul fillers, which PostgreSQL takes into
/// identifiers).
fn default_ignorable(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

fn too_large(why: String) -> Refusal {
    Refusal {
        sqlstate: sqlstate::PROGRAM_LIMIT_EXCEEDED,
        message: format!("statement too large to hold for approval: {why}"),
        hint: "Gatehouse never shortens what an approver sees; send a shorter statement (split the work, or bind large values as fewer, smaller parameters)".to_owned(),
        decision: "requireApproval",
    }
}

fn unseeable(what: &str, at: usize, c: char) -> Refusal {
    Refusal {
        sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
        message: format!(
            "statement refused by Gatehouse: {what} holds U+{:04X} at byte {at}, a character an approver would not see",
            u32::from(c)
        ),
        hint: "remove control, format (bidirectional, zero-width) and separator characters from the statement and its values, then send it again to ask for approval".to_owned(),
        decision: "requireApproval",
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn bind(formats: &[Format], values: &[Option<&[u8]>]) -> Bind {
        Bind {
            portal: String::new(),
            statement: String::new(),
            param_formats: formats.to_vec(),
            params: values.iter().map(|v| v.map(Bytes::copy_from_slice)).collect(),
            result_formats: Vec::new(),
        }
    }

    /// Statement pairs one lossy fingerprint cannot tell apart.
    const PAIRS: [(&str, &str); 5] = [
        (
            "DELETE FROM t WHERE archived = true",
            "DELETE FROM t WHERE archived = false",
        ),
        (
            "DELETE FROM t WHERE id=42 AND customer_id=7",
            "DELETE FROM t WHERE customer_id=42 AND id=7",
        ),
        (
            "UPDATE t SET balance=0, credit_limit=100000",
            "UPDATE t SET credit_limit=0, balance=100000",
        ),
        (
            "INSERT INTO t(from_acct,to_acct) VALUES (1,2)",
            "INSERT INTO t(to_acct,from_acct) VALUES (1,2)",
        ),
        ("UPDATE t SET a=$1 WHERE id=$2", "UPDATE t SET a=$2 WHERE id=$1"),
    ];

    #[test]
    fn statements_a_fingerprint_confuses_are_bound_apart() {
        for (a, b) in PAIRS {
            let (x, y) = (binding(a, &[], None), binding(b, &[], None));
            assert_eq!(
                x.fingerprint, y.fingerprint,
                "premise: the fingerprint cannot tell {a:?} from {b:?}"
            );
            assert_ne!(x.statement_hash, y.statement_hash, "{a:?} / {b:?}");
        }
        // The same values bound to the two `$n` orders: still apart.
        let values = bind(&[], &[Some(b"5"), Some(b"7")]);
        let (a, b) = PAIRS[4];
        assert_ne!(
            binding(a, &[], Some(&values)).statement_hash,
            binding(b, &[], Some(&values)).statement_hash
        );
    }

    #[test]
    fn the_exact_bytes_types_values_and_formats_are_bound() {
        let sql = "DELETE FROM orders WHERE id = $1";
        let one = binding(sql, &[23], Some(&bind(&[], &[Some(b"1")])));
        assert_eq!(one, binding(sql, &[23], Some(&bind(&[], &[Some(b"1")]))));
        assert_ne!(
            one.statement_hash,
            binding("delete from orders where id = $1", &[23], None).statement_hash,
            "case and spacing are bytes too"
        );
        assert_ne!(
            one.statement_hash,
            binding(sql, &[25], None).statement_hash,
            "another type"
        );
        assert_ne!(
            one.statement_hash,
            binding(sql, &[], None).statement_hash,
            "an unspecified type"
        );
        for other in [
            bind(&[], &[Some(b"2")]),
            bind(&[], &[None]),
            bind(&[], &[Some(b"")]),
            bind(&[], &[Some(b"1"), Some(b"")]),
            bind(&[Format::Binary], &[Some(b"1")]),
        ] {
            assert_ne!(
                one.parameters_hash,
                binding(sql, &[23], Some(&other)).parameters_hash,
                "{other:?}"
            );
        }
        assert_ne!(
            binding(sql, &[], Some(&bind(&[], &[Some(b"ab"), Some(b"c")]))).parameters_hash,
            binding(sql, &[], Some(&bind(&[], &[Some(b"a"), Some(b"bc")]))).parameters_hash,
            "values are length-prefixed"
        );
        // A simple Query has no values; its hash is still a SHA-256.
        assert_eq!(binding("SELECT 1", &[], None).parameters_hash.len(), 64);
    }

    #[test]
    fn a_statement_that_does_not_fit_is_refused_never_cut() {
        let sql = format!("DELETE FROM t WHERE id=5{}OR true", " ".repeat(70 * 1024));
        let refusal = shown(&Scanner::all_secrets(), &sql, &[], None).expect_err("70 KiB does not fit");
        assert_eq!(refusal.sqlstate, "54000");
        assert!(
            refusal.message.contains("too large to hold for approval"),
            "{refusal:?}"
        );
        let fits = format!("DELETE FROM t WHERE id=5{}OR true", " ".repeat(1000));
        assert_eq!(
            shown(&Scanner::all_secrets(), &fits, &[], None)
                .expect("fits")
                .statement,
            fits
        );

        let many: Vec<Option<&[u8]>> = vec![Some(b"1"); MAX_PARAMETERS + 1];
        let refusal =
            shown(&Scanner::all_secrets(), "SELECT $1", &[], Some(&bind(&[], &many))).expect_err("too many");
        assert_eq!(refusal.sqlstate, "54000");
        let big = vec![b'a'; MAX_VALUE_CHARS + 1];
        let refusal = shown(
            &Scanner::all_secrets(),
            "SELECT $1",
            &[],
            Some(&bind(&[], &[Some(&big)])),
        )
        .expect_err("too long");
        assert!(refusal.message.contains("parameter $1"), "{refusal:?}");
    }

    #[test]
    fn the_approver_sees_the_structure_not_a_mask_over_it() {
        let sql = "DELETE FROM accounts WHERE(token=id)OR(true)";
        assert_eq!(
            shown(&Scanner::all_secrets(), sql, &[], None)
                .expect("shown")
                .statement,
            sql
        );
        let masked = shown(
            &Scanner::all_secrets(),
            "UPDATE users SET note = 'AKIAIOSFODNN7EXAMPLE' WHERE id = 1",
            &[],
            None,
        )
        .expect("shown")
        .statement;
        assert_eq!(
            masked,
            "UPDATE users SET note = '[masked:aws-access-key-id]' WHERE id = 1"
        );
    }

    #[test]
    fn characters_an_approver_cannot_see_are_refused() {
        for sql in [
            "DELETE FROM t WHERE id = 5 -- \u{202E}eurt RO",
            "DELETE FROM t WHERE id = 5\u{200B}",
            "DELETE FROM t WHERE id = 5 OR true\rDELETE FROM t WHERE id = 5",
            "DELETE FROM t WHERE id = 5\u{2028}",
            // `=` overlaid with a long solidus reads as `≠`.
            "DELETE FROM t WHERE id =\u{0338} 5",
            "DELETE FROM t WHERE id = 5\u{20DD}",
        ] {
            let refusal = shown(&Scanner::all_secrets(), sql, &[], None).expect_err(sql);
            assert_eq!(refusal.sqlstate, "42501");
            assert!(refusal.message.contains("would not see"), "{refusal:?}");
        }
        assert!(
            shown(
                &Scanner::all_secrets(),
                "DELETE FROM t\r\nWHERE id = 5\t",
                &[],
                None
            )
            .is_ok(),
            "line ends and tabs are seen"
        );
        let refusal = shown(
            &Scanner::all_secrets(),
            "UPDATE t SET a = $1",
            &[],
            Some(&bind(&[], &[Some("x\u{202E}y".as_bytes())])),
        )
        .expect_err("a hidden character in a value");
        assert!(refusal.message.contains("parameter $1"), "{refusal:?}");
    }

    /// Characters that render as nothing (or as a blank) without being
    /// format characters: variation selectors and the combining grapheme
    /// joiner (marks), Hangul fillers (letters, so PostgreSQL takes them
    /// into identifiers), the blank Braille pattern, and code points not
    /// assigned yet. `'admin\u{FE0F}'` reads as `'admin'` to the approver
    /// and is another value to the server.
    #[test]
    fn blank_and_unassigned_characters_are_refused() {
        for c in [
            '\u{FE0F}',
            '\u{FE00}',
            '\u{E0100}',
            '\u{034F}',
            '\u{180B}',
            '\u{115F}',
            '\u{1160}',
            '\u{3164}',
            '\u{FFA0}',
            '\u{2800}',
            '\u{0378}',
            '\u{E0FFF}',
        ] {
            let sql = format!("DELETE FROM users WHERE role <> 'admin{c}'");
            let refusal = shown(&Scanner::all_secrets(), &sql, &[], None)
                .expect_err(&format!("U+{:04X}", u32::from(c)));
            assert!(
                refusal.message.contains(&format!("U+{:04X}", u32::from(c))),
                "{refusal:?}"
            );
        }
        assert!(
            shown(
                &Scanner::all_secrets(),
                "UPDATE t SET note = 'café ☕ 東京 ≠ naïve'",
                &[],
                None
            )
            .is_ok(),
            "visible text of any script is shown"
        );
    }

    #[test]
    fn parameters_are_shown_typed_decoded_and_masked() {
        let values = bind(
            &[
                Format::Binary,
                Format::Text,
                Format::Text,
                Format::Binary,
                Format::Text,
            ],
            &[
                Some(&7i32.to_be_bytes()),
                None,
                Some(b"AKIAIOSFODNN7EXAMPLE"),
                Some(&[0xde, 0xad]),
                Some(b"Tr0ub4dor&3"),
            ],
        );
        let shown = shown(
            &Scanner::all_secrets(),
            "UPDATE t SET a = $1, b = $2, c = $3, d = $4, password = $5",
            &[23, 0, 25, 17],
            Some(&values),
        )
        .expect("shown");
        let seen: Vec<(&str, Option<&str>)> = shown
            .parameters
            .iter()
            .map(|p| (p.type_name.as_str(), p.value.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                ("int4", Some("7")),
                ("unspecified", None),
                ("text", Some("[masked:aws-access-key-id]")),
                ("bytea", Some("\\xdead")),
                ("unspecified", Some("[masked:password-assignment]")),
            ]
        );
        assert_eq!(shown.parameters[0].format, ParameterFormat::Binary);
    }
}
