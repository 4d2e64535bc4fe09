//! Masking result rows: a plan per result (from its RowDescription and the
//! formats the client asked for), then each DataRow's cells rewritten where a
//! column rule or a detector says so. A row with nothing to mask is handed
//! back untouched, so the relay forwards its original bytes.
//!
//! A masked value stays valid for its column's type as the client decodes
//! it: text-like columns get text, `json`/`jsonb` get a JSON string, `bytea`
//! gets bytes in the format the client reads; a column rule on any other
//! type (a number, a timestamp, a uuid) has no valid masked value and gives
//! NULL.

use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use regex::Regex;
use sha2::Sha256;

use super::{Found, Scanner};
use crate::api::policy::{FailureMode, MaskStrategy};
use crate::pg::{
    Frame, ProtocolError,
    messages::{DataRow, FieldDescription, Format, Message},
};

/// Type OIDs the proxy knows (pg_type.dat).
mod oid {
    pub const BYTEA: u32 = 17;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const NUMERIC: u32 = 1700;
    pub const JSON: u32 = 114;
    pub const JSONB: u32 = 3802;
    /// Types whose values cannot hold a secret: numbers, booleans, times,
    /// network addresses, uuids. Neither detectors nor text rules apply.
    pub const NOT_TEXT: &[u32] = &[
        16, 20, 21, 23, 26, 28, 29, 700, 701, 790, 1700, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 650, 829,
        774, 869, 3220,
    ];
    /// Text-like types whose binary format is their text.
    pub const TEXT_BINARY: &[u32] = &[25, 1043, 1042, 19, 18, 705, 142, 114];
}

/// How a column's values are read and rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Text as the client reads it (any type in text format, text-like
    /// types in binary).
    Text,
    /// `json` in text or binary, `jsonb` in text: JSON text.
    Json,
    /// `jsonb` in binary: a version byte, then JSON text.
    JsonbBinary,
    /// `bytea` in text format: `\x` and hex (or the escape format).
    ByteaText,
    /// `bytea` in binary format: the bytes.
    ByteaBinary,
    /// A number, a date, a uuid, ... (the type's oid, and the format): its
    /// text holds no token, so only detectors that read bare digits (the
    /// ones without keywords: card, iban) and a Policy's own run on it; a
    /// find makes it NULL, the one masked value every type has.
    Typed(u32, Format),
    /// A value of unknown layout in binary (an array, a composite, a
    /// user type): scanned as its bytes, NULL where anything is found, as
    /// a mask inside it would break its layout.
    Opaque,
}

impl Kind {
    /// Whether a mask can be written into a value of this kind; where not,
    /// the value is masked as NULL.
    fn has_text(self) -> bool {
        !matches!(self, Kind::Typed(..) | Kind::Opaque)
    }

    fn of(field: &FieldDescription, format: Format) -> Kind {
        match (field.type_oid, format) {
            (oid::BYTEA, Format::Text) => Kind::ByteaText,
            (oid::BYTEA, Format::Binary) => Kind::ByteaBinary,
            (oid::JSON, _) | (oid::JSONB, Format::Text) => Kind::Json,
            (oid::JSONB, Format::Binary) => Kind::JsonbBinary,
            (t, format) if oid::NOT_TEXT.contains(&t) => Kind::Typed(t, format),
            (_, Format::Text) => Kind::Text,
            (t, Format::Binary) if oid::TEXT_BINARY.contains(&t) => Kind::Text,
            // A user type or an array in binary: its layout is unknown.
            (_, Format::Binary) => Kind::Opaque,
        }
    }
}

/// A column rule, compiled.
#[derive(Debug, Clone)]
pub struct ColumnRule {
    /// Matched against the column name.
    pub name: Regex,
    /// What happens to its values.
    pub strategy: MaskStrategy,
    /// With `partial`: characters kept at the end.
    pub keep_last: usize,
}

/// What to do with one column of a result.
#[derive(Debug, Clone, Copy)]
struct Column {
    kind: Kind,
    /// Index into the masker's rules.
    rule: Option<usize>,
    /// Whether the detectors run on its values.
    scanned: bool,
}

/// The masking plan of one result.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    columns: Vec<Column>,
    /// Whether any column can change at all.
    active: bool,
}

impl Plan {
    /// Whether rows of this result are forwarded without looking at them.
    pub fn is_passthrough(&self) -> bool {
        !self.active
    }

    /// The number of columns.
    pub fn len(&self) -> usize {
        self.columns.len()
    }

    /// Whether the result has no columns.
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }
}

/// Why a row could not be masked; with `strict` the row is refused.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// The row does not match its RowDescription.
    #[error("a result row has {got} columns where its description has {expected}")]
    Shape {
        /// Columns described.
        expected: usize,
        /// Columns in the row.
        got: usize,
    },
    /// A cell is larger than the scan limit.
    #[error(
        "a value of {len} bytes in column {column} is larger than the masking scan limit of {limit} bytes"
    )]
    TooLarge {
        /// The column's position (1-based).
        column: usize,
        /// The value's size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A cell could not be read as its type says.
    #[error("a value in column {column} could not be read for masking: {why}")]
    Unreadable {
        /// The column's position (1-based).
        column: usize,
        /// Why.
        why: &'static str,
    },
    /// The row itself is malformed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// What masking did, counted per session and added to the metrics once per
/// round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskStats {
    /// Values the detectors scanned.
    pub cells_scanned: u64,
    /// Bytes the detectors scanned.
    pub bytes_scanned: u64,
    /// Values masked, by detector: its position in
    /// [`DETECTORS`](super::DETECTORS) ([`CUSTOM`](super::CUSTOM) for a
    /// Policy's own), and how many.
    pub by_detector: Vec<(usize, u64)>,
    /// Values masked by a column rule, by strategy (redact, partial, hash, null).
    pub by_rule: [u64; 4],
    /// Values that could not be scanned and were replaced (`bestEffort`).
    pub unscannable_replaced: u64,
    /// Results refused because a value could not be masked (`strict`, or
    /// a malformed row in either mode).
    pub refused: u64,
}

impl MaskStats {
    pub(crate) fn found(&mut self, found: &[Found]) {
        for f in found {
            match self.by_detector.iter_mut().find(|(id, _)| *id == f.id) {
                Some((_, count)) => *count += 1,
                None => self.by_detector.push((f.id, 1)),
            }
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == MaskStats::default()
    }
}

/// The position of a strategy in [`MaskStats::by_rule`], and its rank: a
/// column several rules match gets the one that shows least.
pub fn strategy_index(strategy: MaskStrategy) -> usize {
    match strategy {
        MaskStrategy::Partial => 0,
        MaskStrategy::Hash => 1,
        MaskStrategy::Redact => 2,
        MaskStrategy::Null => 3,
    }
}

/// Everything masking needs: the detectors, the column rules, the HMAC key
/// for `hash`, the scan limit and the failure mode.
#[derive(Debug)]
pub struct Masker {
    scanner: Scanner,
    rules: Vec<ColumnRule>,
    hash_key: Vec<u8>,
    /// Largest value scanned, in bytes.
    pub scan_limit: usize,
    /// What happens to a value that cannot be scanned.
    pub failure_mode: FailureMode,
}

/// The result of masking one row.
#[derive(Debug)]
pub enum Masked {
    /// Nothing to change: forward the original frame.
    Unchanged,
    /// The rewritten DataRow frame.
    Rewritten(Frame),
}

/// What replaces a value the detectors could not scan under `bestEffort`.
pub const UNSCANNED: &str = "[masked:unscanned]";

impl Masker {
    /// A masker; `hash_key` keys the `hash` strategy's HMAC.
    pub fn new(
        scanner: Scanner,
        rules: Vec<ColumnRule>,
        hash_key: Vec<u8>,
        scan_limit: usize,
        failure_mode: FailureMode,
    ) -> Masker {
        Masker {
            scanner,
            rules,
            hash_key,
            scan_limit,
            failure_mode,
        }
    }

    /// The detectors.
    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    /// Whether any column rule is configured.
    pub fn has_column_rules(&self) -> bool {
        !self.rules.is_empty()
    }

    /// Whether a column name matches a column rule.
    pub fn column_is_masked(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.name.is_match(name))
    }

    /// The plan for a result with these fields, read in `formats` (the
    /// Bind's result formats; RowDescription's own codes for a simple query).
    pub fn plan(&self, fields: &[FieldDescription], formats: &[Format]) -> Plan {
        let columns: Vec<Column> = fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let kind = Kind::of(field, Format::for_index(formats, i));
                Column {
                    kind,
                    scanned: self.scans(kind),
                    rule: self
                        .rules
                        .iter()
                        .enumerate()
                        .filter(|(_, r)| r.name.is_match(&field.name))
                        .max_by_key(|(_, r)| strategy_index(r.strategy))
                        .map(|(i, _)| i),
                }
            })
            .collect();
        let active = columns.iter().any(|c| c.rule.is_some() || c.scanned);
        Plan { columns, active }
    }

    /// Whether the detectors run on values of `kind`.
    fn scans(&self, kind: Kind) -> bool {
        match kind {
            Kind::Typed(..) => self.scanner.reads_bare_values(),
            _ => !self.scanner.is_empty(),
        }
    }

    /// Masks one DataRow frame of a result planned as `plan`.
    pub fn mask_row(&self, plan: &Plan, frame: &Frame, stats: &mut MaskStats) -> Result<Masked, MaskError> {
        if !plan.active {
            return Ok(Masked::Unchanged);
        }
        let row = DataRow::decode(frame)?;
        if row.len() != plan.columns.len() {
            return Err(MaskError::Shape {
                expected: plan.columns.len(),
                got: row.len(),
            });
        }
        let mut found = Vec::new();
        let mut rewritten: Vec<Option<Option<Bytes>>> = Vec::new();
        for (i, (cell, column)) in row.cells().zip(&plan.columns).enumerate() {
            let new = match (&cell, column.rule) {
                (None, _) => None,
                (Some(value), Some(rule)) => {
                    let rule = &self.rules[rule];
                    stats.by_rule[strategy_index(rule.strategy)] += 1;
                    Some(self.apply_rule(rule, column.kind, value))
                }
                (Some(value), None) if column.scanned => {
                    match self.scan_cell(i, column.kind, value, &mut found, stats) {
                        // A value with no text form is masked as NULL.
                        Ok(masked) => masked.map(|m| column.kind.has_text().then(|| Bytes::from(m))),
                        Err(e) if self.failure_mode == FailureMode::BestEffort => {
                            stats.unscannable_replaced += 1;
                            tracing::debug!(error = %e, "replaced a value that could not be scanned");
                            Some(encode_text(column.kind, UNSCANNED))
                        }
                        Err(e) => return Err(e),
                    }
                }
                (Some(_), None) => None,
            };
            if let Some(new) = new {
                if rewritten.is_empty() {
                    rewritten = row.cells().map(|_| None).collect();
                }
                rewritten[i] = Some(new);
            }
        }
        if rewritten.is_empty() {
            return Ok(Masked::Unchanged);
        }
        let mut out = BytesMut::with_capacity(frame.raw().len());
        let cells = row.cells().zip(rewritten).map(|(old, new)| new.unwrap_or(old));
        DataRow::encode_cells(&mut out, cells)?;
        Ok(Masked::Rewritten(Frame::from_raw(out.freeze())?))
    }

    /// Runs the detectors on column `i`'s value: the masked value, or
    /// `None` when clean.
    fn scan_cell(
        &self,
        i: usize,
        kind: Kind,
        value: &[u8],
        found: &mut Vec<Found>,
        stats: &mut MaskStats,
    ) -> Result<Option<Vec<u8>>, MaskError> {
        if value.len() > self.scan_limit {
            return Err(MaskError::TooLarge {
                column: i + 1,
                len: value.len(),
                limit: self.scan_limit,
            });
        }
        stats.cells_scanned += 1;
        stats.bytes_scanned += value.len() as u64;
        let masked = self
            .detect(kind, value, found)
            .map_err(|why| MaskError::Unreadable { column: i + 1, why })?;
        stats.found(found);
        Ok(masked)
    }

    /// `value` with every secret the detectors find masked, or `None` when
    /// clean or too large to scan (the caller decides what that means).
    pub fn mask_text(&self, value: &[u8], stats: &mut MaskStats) -> Option<Vec<u8>> {
        if self.scanner.is_empty() {
            return None;
        }
        let mut found = Vec::new();
        stats.cells_scanned += 1;
        stats.bytes_scanned += value.len() as u64;
        self.scanner.find(value, &mut found);
        stats.found(&found);
        (!found.is_empty()).then(|| super::replace(value, &found))
    }

    /// Runs the detectors on a value; the masked value, or `None` when clean.
    fn detect(
        &self,
        kind: Kind,
        value: &[u8],
        found: &mut Vec<Found>,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        match kind {
            Kind::ByteaText if value.starts_with(b"\\x") => {
                let bytes = hex::decode(&value[2..]).map_err(|_| "bytea hex output is not valid hex")?;
                self.scanner.find(&bytes, found);
                Ok((!found.is_empty()).then(|| {
                    let masked = super::replace(&bytes, found);
                    let mut out = b"\\x".to_vec();
                    out.extend_from_slice(hex::encode(masked).as_bytes());
                    out
                }))
            }
            Kind::JsonbBinary => {
                let Some((&version, json)) = value.split_first() else {
                    return Err("empty jsonb value");
                };
                self.scanner.find(json, found);
                Ok((!found.is_empty()).then(|| {
                    let mut out = vec![version];
                    out.extend_from_slice(&super::replace(json, found));
                    out
                }))
            }
            // A number in binary (integer, float, numeric), read as its
            // digits; a date, a uuid, ... in binary has none to read.
            Kind::Typed(t, Format::Binary) => {
                let Some(digits) = binary_number_text(t, value)? else {
                    return Ok(None);
                };
                self.scanner.find(digits.as_bytes(), found);
                Ok((!found.is_empty()).then(Vec::new))
            }
            // Text, JSON (the replacement is JSON-string safe), bytea in
            // binary and in the escape format (the replacement has no
            // backslash); typed values in text and opaque ones are NULL
            // where anything is found (see `mask_row`).
            _ => {
                self.scanner.find(value, found);
                Ok((!found.is_empty()).then(|| super::replace(value, found)))
            }
        }
    }

    /// A column rule's value for a non-NULL cell: `None` is SQL NULL.
    fn apply_rule(&self, rule: &ColumnRule, kind: Kind, value: &[u8]) -> Option<Bytes> {
        let text = match rule.strategy {
            MaskStrategy::Null => return None,
            MaskStrategy::Redact => "[masked]".to_owned(),
            MaskStrategy::Partial => {
                let readable = String::from_utf8_lossy(value);
                let chars: Vec<char> = readable.chars().collect();
                let keep = rule.keep_last.min(chars.len() / 2);
                let tail: String = chars[chars.len() - keep..].iter().collect();
                format!("****{tail}")
            }
            MaskStrategy::Hash => {
                // Equal values give equal hashes, so masked columns still join.
                #[allow(clippy::expect_used)]
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(&self.hash_key).expect("HMAC takes a key of any length");
                mac.update(value);
                hex::encode(&mac.finalize().into_bytes()[..16])
            }
        };
        encode_text(kind, &text)
    }
}

/// A number in binary as the digits its text holds, for the detectors that
/// read bare digits: `int2`, `int4`, `int8`, `float4`, `float8` and
/// `numeric` (its digits, without sign, point or scale). `None` for other
/// types (dates, uuids, ... hold no such digits); an error when the bytes
/// do not fit the type.
fn binary_number_text(oid: u32, value: &[u8]) -> Result<Option<String>, &'static str> {
    let wrong = "a binary number of the wrong length";
    let be8 = |v: &[u8]| -> Result<[u8; 8], &'static str> { v.try_into().map_err(|_| wrong) };
    let be4 = |v: &[u8]| -> Result<[u8; 4], &'static str> { v.try_into().map_err(|_| wrong) };
    Ok(Some(match oid {
        oid::INT2 => i16::from_be_bytes(value.try_into().map_err(|_| wrong)?).to_string(),
        oid::INT4 => i32::from_be_bytes(be4(value)?).to_string(),
        oid::INT8 => i64::from_be_bytes(be8(value)?).to_string(),
        oid::FLOAT4 => format!("{}", f32::from_be_bytes(be4(value)?)),
        oid::FLOAT8 => format!("{}", f64::from_be_bytes(be8(value)?)),
        oid::NUMERIC => {
            // ndigits, weight, sign, dscale, then base-10000 digits.
            let (header, digits) = value
                .split_at_checked(8)
                .ok_or("a binary numeric shorter than its header")?;
            let ndigits = usize::from(u16::from_be_bytes([header[0], header[1]]));
            if digits.len() != 2 * ndigits {
                return Err("a binary numeric whose digits do not match its count");
            }
            digits
                .chunks_exact(2)
                .map(|d| format!("{:04}", u16::from_be_bytes([d[0], d[1]])))
                .collect::<String>()
                .trim_start_matches('0')
                .to_owned()
        }
        _ => return Ok(None),
    }))
}

/// `text` as a value of `kind`, or NULL where the kind has no text form.
fn encode_text(kind: Kind, text: &str) -> Option<Bytes> {
    match kind {
        Kind::Text | Kind::ByteaBinary => Some(Bytes::copy_from_slice(text.as_bytes())),
        Kind::ByteaText => Some(Bytes::from(format!("\\x{}", hex::encode(text)))),
        Kind::Json => Some(Bytes::from(json_string(text))),
        Kind::JsonbBinary => {
            let mut out = vec![1u8];
            out.extend_from_slice(json_string(text).as_bytes());
            Some(Bytes::from(out))
        }
        Kind::Typed(..) | Kind::Opaque => None,
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    // The masked texts are ASCII without quotes or backslashes, except a
    // `partial` tail, which may hold anything.
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, type_oid: u32) -> FieldDescription {
        FieldDescription {
            name: name.into(),
            table_oid: 0,
            column_id: 0,
            type_oid,
            type_size: -1,
            type_modifier: -1,
            format: Format::Text,
        }
    }

    fn masker(rules: Vec<ColumnRule>) -> Masker {
        Masker::new(
            Scanner::new(&["all"]).unwrap(),
            rules,
            b"key".to_vec(),
            1 << 20,
            FailureMode::Strict,
        )
    }

    fn rule(pattern: &str, strategy: MaskStrategy, keep_last: usize) -> ColumnRule {
        ColumnRule {
            name: Regex::new(pattern).unwrap(),
            strategy,
            keep_last,
        }
    }

    fn row(cells: &[Option<&[u8]>]) -> Frame {
        let mut out = BytesMut::new();
        DataRow::encode_cells(&mut out, cells.iter().copied()).unwrap();
        Frame::from_raw(out.freeze()).unwrap()
    }

    fn cells(frame: &Frame) -> Vec<Option<Vec<u8>>> {
        DataRow::decode(frame)
            .unwrap()
            .cells()
            .map(|c| c.map(|b| b.to_vec()))
            .collect()
    }

    fn masked(m: &Masker, plan: &Plan, frame: &Frame) -> Vec<Option<Vec<u8>>> {
        match m.mask_row(plan, frame, &mut MaskStats::default()).unwrap() {
            Masked::Unchanged => cells(frame),
            Masked::Rewritten(frame) => cells(&frame),
        }
    }

    #[test]
    fn clean_rows_are_unchanged_and_secrets_are_masked_in_place() {
        let m = masker(vec![]);
        let plan = m.plan(&[field("id", 23), field("note", 25)], &[]);
        let clean = row(&[Some(b"1"), Some(b"shipped on time")]);
        assert!(matches!(
            m.mask_row(&plan, &clean, &mut MaskStats::default()).unwrap(),
            Masked::Unchanged
        ));
        let dirty = row(&[Some(b"2"), Some(b"key AKIAIOSFODNN7EXAMPLE here")]);
        assert_eq!(
            masked(&m, &plan, &dirty),
            [
                Some(b"2".to_vec()),
                Some(b"key [masked:aws-access-key-id] here".to_vec())
            ]
        );
    }

    /// A secret in an array (or any value of unknown layout) in binary is
    /// found in its bytes, and the value goes as NULL: a mask inside it
    /// would break its layout. A clean one goes as it came.
    #[test]
    fn a_secret_in_a_binary_array_is_masked_as_null() {
        let m = masker(vec![]);
        let text_array = 1009;
        let plan = m.plan(&[field("tags", text_array), field("n", 23)], &[Format::Binary]);
        // A text[] in binary: header, then each element's length and bytes.
        let array = |element: &[u8]| {
            let mut v = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 25, 0, 0, 0, 1, 0, 0, 0, 1];
            v.extend_from_slice(&u32::try_from(element.len()).unwrap().to_be_bytes());
            v.extend_from_slice(element);
            v
        };
        let dirty = array(b"deploy with AKIAZ3MPLE7QX4RT2WVN");
        let clean = array(b"shipped");
        let one = 1i32.to_be_bytes();
        assert_eq!(
            masked(&m, &plan, &row(&[Some(&dirty), Some(&one)])),
            [None, Some(one.to_vec())]
        );
        assert!(matches!(
            m.mask_row(
                &plan,
                &row(&[Some(&clean), Some(&one)]),
                &mut MaskStats::default()
            )
            .unwrap(),
            Masked::Unchanged
        ));
    }

    /// Numbers, dates and uuids hold no token: with `[all]` they are not
    /// scanned. Detectors that read bare digits (cards) scan them, in text
    /// and as binary integers, and a find goes as NULL.
    #[test]
    fn a_card_in_a_number_column_is_masked_when_cards_are() {
        let card = b"4111111111111111";
        let number = 4_111_111_111_111_111i64.to_be_bytes();
        let all = masker(vec![]);
        let plan = all.plan(&[field("n", oid::INT8)], &[]);
        assert!(!plan.active, "[all] leaves numbers alone");
        let cards = Masker::new(
            Scanner::new(&["all", "card"]).unwrap(),
            vec![],
            b"key".to_vec(),
            1 << 20,
            FailureMode::Strict,
        );
        let text = cards.plan(&[field("n", oid::INT8), field("m", oid::INT8)], &[]);
        assert_eq!(
            masked(&cards, &text, &row(&[Some(card), Some(b"42")])),
            [None, Some(b"42".to_vec())]
        );
        let binary = cards.plan(&[field("n", oid::INT8)], &[Format::Binary]);
        assert_eq!(masked(&cards, &binary, &row(&[Some(&number)])), [None]);
        assert_eq!(
            masked(&cards, &binary, &row(&[Some(&42i64.to_be_bytes())])),
            [Some(42i64.to_be_bytes().to_vec())]
        );
        // numeric(16) and float8 in binary, as drivers ask for them.
        let numeric: Vec<u8> = [4u16, 3, 0, 0, 4111, 1111, 1111, 1111]
            .iter()
            .flat_map(|d| d.to_be_bytes())
            .collect();
        let float = 4_111_111_111_111_111f64.to_be_bytes();
        let plan = cards.plan(
            &[field("n", oid::NUMERIC), field("f", oid::FLOAT8)],
            &[Format::Binary],
        );
        assert_eq!(
            masked(&cards, &plan, &row(&[Some(&numeric), Some(&float)])),
            [None, None]
        );
        // A millisecond timestamp passes Luhn by chance, but no card
        // number starts with 1.
        let ms = 1_733_450_335_000i64;
        assert_eq!(
            masked(&cards, &binary, &row(&[Some(&ms.to_be_bytes())])),
            [Some(ms.to_be_bytes().to_vec())]
        );
        // Bytes that do not fit the type cannot be read: refused.
        assert!(
            cards
                .mask_row(&binary, &row(&[Some(b"abc")]), &mut MaskStats::default())
                .is_err()
        );
    }

    #[test]
    fn column_rules_keep_values_valid_for_their_type() {
        let m = masker(vec![
            rule("^card$", MaskStrategy::Partial, 4),
            rule("^email$", MaskStrategy::Hash, 0),
            rule("^born$", MaskStrategy::Redact, 0),
            rule("^doc$", MaskStrategy::Redact, 0),
            rule("^gone$", MaskStrategy::Null, 0),
        ]);
        let fields = [
            field("card", 25),
            field("email", 1043),
            field("born", 1082),
            field("doc", 3802),
            field("gone", 25),
        ];
        let plan = m.plan(&fields, &[]);
        let r = row(&[
            Some(b"4111111111111111"),
            Some(b"ada@example.com"),
            Some(b"1815-12-10"),
            Some(br#"{"a": 1}"#),
            Some(b"x"),
        ]);
        let out = masked(&m, &plan, &r);
        assert_eq!(out[0].as_deref(), Some(&b"****1111"[..]));
        assert_eq!(out[1].as_ref().map(Vec::len), Some(32));
        assert_eq!(out[2], None, "a date has no valid masked value");
        assert_eq!(out[3].as_deref(), Some(&b"\"[masked]\""[..]));
        assert_eq!(out[4], None);
        // Equal values hash alike, so masked columns still join.
        let again = masked(&m, &plan, &r);
        assert_eq!(out[1], again[1]);
    }

    #[test]
    fn bytea_and_binary_jsonb_are_masked_in_their_own_encoding() {
        let m = masker(vec![]);
        let plan = m.plan(
            &[field("blob", 17), field("doc", 3802)],
            &[Format::Text, Format::Binary],
        );
        let hex = format!(
            "\\x{}",
            hex::encode("token=ghp_1a2B3c4D5e6F7g8H9i0J1k2L3m4N5o6P7q8R")
        );
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(br#"{"k": "AKIAIOSFODNN7EXAMPLE"}"#);
        let out = masked(&m, &plan, &row(&[Some(hex.as_bytes()), Some(&jsonb)]));
        let blob = out[0].clone().unwrap();
        assert!(blob.starts_with(b"\\x"));
        let decoded = hex::decode(&blob[2..]).unwrap();
        assert!(
            !String::from_utf8_lossy(&decoded).contains("ghp_1a2B"),
            "{decoded:?}"
        );
        assert_eq!(
            out[1].as_deref(),
            Some(&b"\x01{\"k\": \"[masked:aws-access-key-id]\"}"[..])
        );
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        let m = masker(vec![]);
        let plan = m.plan(&[field("note", 25)], &[]);
        let two = row(&[Some(b"a"), Some(b"b")]);
        assert!(matches!(
            m.mask_row(&plan, &two, &mut MaskStats::default()),
            Err(MaskError::Shape { expected: 1, got: 2 })
        ));
        let mut small = masker(vec![]);
        small.scan_limit = 4;
        let plan = small.plan(&[field("note", 25)], &[]);
        assert!(matches!(
            small.mask_row(&plan, &row(&[Some(b"too long")]), &mut MaskStats::default()),
            Err(MaskError::TooLarge {
                column: 1,
                len: 8,
                limit: 4
            })
        ));
        let plan = m.plan(&[field("blob", 17)], &[]);
        assert!(matches!(
            m.mask_row(&plan, &row(&[Some(b"\\xZZ")]), &mut MaskStats::default()),
            Err(MaskError::Unreadable { column: 1, .. })
        ));
        let truncated = Frame::new(b'D', &[0, 1, 0, 0, 0, 9, b'a']).unwrap();
        assert!(
            m.mask_row(
                &m.plan(&[field("note", 25)], &[]),
                &truncated,
                &mut MaskStats::default()
            )
            .is_err()
        );
    }

    #[test]
    fn invalid_utf8_is_scanned_as_bytes() {
        let m = masker(vec![rule("^p$", MaskStrategy::Partial, 4)]);
        let plan = m.plan(&[field("note", 25), field("p", 25)], &[]);
        let mut note = b"\xff\xfe key AKIAIOSFODNN7EXAMPLE \xc3".to_vec();
        note.push(0x80);
        let out = masked(&m, &plan, &row(&[Some(&note), Some(b"\xffabcd\xc3\xa9xyz")]));
        let note = out[0].clone().unwrap();
        assert!(
            note.starts_with(b"\xff\xfe key [masked:aws-access-key-id] "),
            "{note:?}"
        );
        // `partial` reads what it can and keeps valid text.
        assert_eq!(out[1].as_deref(), Some("****\u{e9}xyz".as_bytes()));
    }

    #[test]
    fn results_without_text_columns_are_passed_through() {
        let m = masker(vec![]);
        assert!(
            m.plan(&[field("id", 23), field("at", 1184)], &[])
                .is_passthrough()
        );
        assert!(
            !m.plan(&[field("id", 23), field("note", 25)], &[])
                .is_passthrough()
        );
    }
}
