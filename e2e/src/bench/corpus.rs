//! The rows the masking figures are measured on, as PostgreSQL sends them
//! in text format: an id, a uuid, a note (a sentence) and a small JSON
//! document with a hash and a timestamp; about 190 bytes of cells a row.
//!
//! The same rows fill the bench table the proxy streams and make the
//! in-process corpus, so both figures describe one workload. Row `i` is a
//! pure function of `i` (its words come from SHA-256 of `i`), so every run
//! measures the same bytes. In the mixed corpus one row in
//! [`SECRET_EVERY`] has a secret pasted into its note: each built-in
//! detector's own examples in turn. Clean notes use words that wake the
//! detectors' keyword prefilter ("password", "token", "key", URLs) without
//! being secrets, as real text does.

use gatehouse_proxy::mask::DETECTORS;
use sha2::{Digest, Sha256};

/// One row in [`SECRET_EVERY`] holds a secret in the mixed corpus.
pub const SECRET_EVERY: u64 = 100;

/// One row, each cell as PostgreSQL's text output of its column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusRow {
    /// `bigint`.
    pub id: String,
    /// `uuid`.
    pub reference: String,
    /// `text`: a sentence, or one with a secret pasted in.
    pub note: String,
    /// `json`: an order document.
    pub doc: String,
}

impl CorpusRow {
    /// The cells in column order.
    pub fn cells(&self) -> [&str; 4] {
        [&self.id, &self.reference, &self.note, &self.doc]
    }

    /// Bytes of the four cells.
    pub fn len(&self) -> usize {
        self.cells().iter().map(|c| c.len()).sum()
    }

    /// Whether every cell is empty (never, for a generated row).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The secret examples of every detector a Policy's `detectors: [all]`
/// enables (personal-data detectors are opt-in and left out).
pub fn secrets() -> Vec<&'static str> {
    DETECTORS
        .iter()
        .filter(|d| !d.opt_in)
        .flat_map(|d| d.positives.iter().copied())
        .collect()
}

/// Whether row `i` of the mixed corpus holds a secret.
pub fn holds_secret(i: u64) -> bool {
    i.is_multiple_of(SECRET_EVERY)
}

/// Row `i` (from 1); with `secrets`, every [`SECRET_EVERY`]th row's note
/// holds one of `secrets` (an empty list leaves every row clean).
pub fn row(i: u64, secrets: &[&str]) -> CorpusRow {
    let digest = Sha256::digest(i.to_le_bytes());
    let d = digest.as_slice();
    let note = match secrets.len() {
        n if n > 0 && holds_secret(i) => {
            let secret = secrets[((i / SECRET_EVERY) % n as u64) as usize];
            format!("Customer pasted their settings by mistake: {secret}")
        }
        _ => note(i, d),
    };
    CorpusRow {
        id: i.to_string(),
        reference: uuid(&d[16..32]),
        note,
        doc: doc(i, d),
    }
}

/// Rows `first..=last`.
pub fn rows(first: u64, last: u64, secrets: &[&str]) -> Vec<CorpusRow> {
    (first..=last).map(|i| row(i, secrets)).collect()
}

fn number(d: &[u8], at: usize) -> u64 {
    u64::from(u16::from_be_bytes([d[at], d[at + 1]]))
}

fn note(i: u64, d: &[u8]) -> String {
    let n = number(d, 1);
    match d[0] % 12 {
        0 => format!("Customer asked to move delivery {i} to the afternoon slot."),
        1 => "Password reset requested from the account page; reset link sent.".to_owned(),
        2 => format!(
            "Refund of {} EUR approved by the support lead after review.",
            n % 500
        ),
        3 => format!(
            "Tracking page https://track.example.com/parcel/{} shows it delivered.",
            hex::encode(&d[3..9])
        ),
        4 => format!(
            "Invoice {n} paid by bank transfer, reference {}.",
            hex::encode_upper(&d[3..7])
        ),
        5 => "Key account: call before changing the delivery date.".to_owned(),
        6 => format!("The summary job used a token count of {n} for this thread."),
        7 => format!("Address corrected after the courier returned parcel {i}."),
        8 => format!(
            "Shipped from warehouse {} with {} items, signed for on arrival.",
            n % 40,
            n % 9 + 1
        ),
        9 => "Customer prefers email; do not call between 9 and 11.".to_owned(),
        10 => format!("Duplicate of order {}, merged and closed.", i.saturating_sub(n)),
        _ => format!(
            "Release {} deployed; the checkout page now loads in {} ms.",
            hex::encode(&d[3..10]),
            n % 900 + 100
        ),
    }
}

/// A version-4 uuid from 16 bytes, in PostgreSQL's output form.
fn uuid(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A JSON document as a `json` column returns it: the text as written.
fn doc(i: u64, d: &[u8]) -> String {
    const STATUS: [&str; 4] = ["placed", "packed", "shipped", "delivered"];
    let status = STATUS[usize::from(d[10] % 4)];
    format!(
        r#"{{"order": {i}, "status": "{status}", "etag": "{}", "updated": "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z", "items": {}}}"#,
        hex::encode(&d[3..11]),
        1 + d[11] % 12,
        1 + d[12] % 28,
        d[13] % 24,
        d[14] % 60,
        d[15] % 60,
        1 + d[2] % 9,
    )
}

#[cfg(test)]
mod tests {
    use gatehouse_proxy::mask::{Found, Scanner};

    use super::*;

    #[test]
    fn rows_are_the_same_every_run_and_about_190_bytes() {
        assert_eq!(row(7, &[]), row(7, &[]));
        let rows = rows(1, 1000, &[]);
        let mean = rows.iter().map(CorpusRow::len).sum::<usize>() / rows.len();
        assert!((150..=230).contains(&mean), "{mean} bytes a row");
        let doc: serde_json::Value = serde_json::from_str(&rows[0].doc).unwrap();
        assert_eq!(doc["order"], 1);
        assert_eq!(rows[0].reference.len(), 36);
        assert_eq!(&rows[0].reference[14..15], "4");
    }

    #[test]
    fn clean_rows_hold_nothing_the_detectors_find() {
        let scanner = Scanner::new(&["all"]).unwrap();
        let mut found: Vec<Found> = Vec::new();
        for row in rows(1, 3000, &[]) {
            for cell in row.cells() {
                scanner.find(cell.as_bytes(), &mut found);
                assert!(found.is_empty(), "{cell:?}: {found:?}");
            }
        }
    }

    #[test]
    fn one_row_in_a_hundred_holds_a_secret_the_detectors_find() {
        let scanner = Scanner::new(&["all"]).unwrap();
        let secrets = secrets();
        assert!(secrets.len() > 10, "{secrets:?}");
        let mut found = Vec::new();
        let last = SECRET_EVERY * secrets.len() as u64;
        let mut with_secret = 0;
        for row in rows(1, last, &secrets) {
            let i: u64 = row.id.parse().unwrap();
            scanner.find(row.note.as_bytes(), &mut found);
            assert_eq!(!found.is_empty(), holds_secret(i), "{row:?}");
            with_secret += u64::from(holds_secret(i));
        }
        assert_eq!(with_secret, secrets.len() as u64);
    }
}
