//! Kubernetes Secret manifests: every value under `data` and `stringData`
//! of a text that declares `kind: Secret`, in YAML (block or flow style) or
//! JSON, one Secret or a `List` of them.
//!
//! Written by hand: which values are the Secret's depends on indentation
//! (a YAML block mapping ends where a line is indented no deeper than its
//! key) and on quoting, which a regular expression cannot follow. gitleaks'
//! `kubernetes-secret-yaml` finds the first entry of a YAML Secret only.

use std::{ops::Range, sync::LazyLock};

use regex::bytes::Regex;

/// The keywords that must occur before [`find`] is worth running.
pub const KEYWORDS: &[&str] = &["kind"];

/// `kind: Secret` as YAML or JSON writes it.
static KIND_SECRET: LazyLock<Regex> = LazyLock::new(|| {
    // A constant pattern, compiled by the tests.
    #[allow(clippy::expect_used)]
    Regex::new(r#"["']?\bkind["']?\s*:\s*["']?Secret\b"#).expect("pattern compiles")
});

/// A `data:` or `stringData:` key, quoted or not, and where its value
/// starts.
static DATA_KEY: LazyLock<Regex> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    Regex::new(r#"["']?\b(?:data|stringData)["']?\s*:"#).expect("pattern compiles")
});

/// The values of the Secrets' `data` and `stringData` in `text`.
pub fn find(text: &[u8], out: &mut Vec<Range<usize>>) {
    if !KIND_SECRET.is_match(text) {
        return;
    }
    // Where the last map read ended: a key inside it (or inside the
    // comment or properties after another key) was read with it. Each
    // byte is read for one key at most, so a value made of keys costs
    // linear time.
    let mut read = 0;
    for key in DATA_KEY.find_iter(text) {
        if key.start() < read {
            continue;
        }
        // After the key: blanks, then an anchor and a tag (`&creds`,
        // `!!map`), then a `{` (a flow map, also on a later line) or the
        // end of the line, with or without a comment (a block map).
        let mut at = key.end();
        for _ in 0..3 {
            while text.get(at).is_some_and(|b| *b == b' ' || *b == b'\t') {
                at += 1;
            }
            match text.get(at) {
                Some(b'&' | b'!') => {
                    at += text[at..]
                        .iter()
                        .take_while(|b| !b.is_ascii_whitespace() && **b != b'{')
                        .count();
                }
                Some(b'#') => at += text[at..].iter().take_while(|b| **b != b'\n').count(),
                _ => break,
            }
        }
        read = at;
        match text.get(at) {
            Some(b'{') => read = flow(text, at + 1, out),
            Some(b'\r' | b'\n') | None => {
                let next = at + text[at..].iter().take_while(|b| b.is_ascii_whitespace()).count();
                read = if text.get(next) == Some(&b'{') {
                    flow(text, next + 1, out)
                } else {
                    block(text, key.start(), at, out)
                };
            }
            // `data: null`, `data: ~`, a value on the key's line: no map.
            _ => {}
        }
    }
}

/// A YAML block mapping: the lines after the key's that are indented
/// deeper than the line the key is on. Returns where it ended.
fn block(text: &[u8], key: usize, mut at: usize, out: &mut Vec<Range<usize>>) -> usize {
    let line_start = memchr::memrchr(b'\n', &text[..key]).map_or(0, |i| i + 1);
    // The key's own indentation, counting a list item's `- ` as indent.
    let depth = text[line_start..key]
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'-'))
        .count();
    // Indentation of the entries' keys, once the first is seen; a line
    // indented deeper is the continuation of a block scalar or of a
    // folded value, all of it secret.
    let mut entry: Option<usize> = None;
    while at < text.len() {
        let end = memchr::memchr(b'\n', &text[at..]).map_or(text.len(), |i| at + i);
        let line = &text[at..end];
        let indent = line.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        let content = trim_end(at + indent, end, text);
        // A line deeper than the entries' keys is a block scalar's or a
        // folded value's, `#` and all.
        let continued = entry.is_some_and(|e| indent > e);
        if content.is_empty() || (!continued && text[content.start] == b'#') {
            at = end + 1;
            continue;
        }
        if indent <= depth {
            return at;
        }
        if continued {
            out.push(content);
            at = end + 1;
            continue;
        }
        entry = Some(indent);
        at = match entry_value(text, content) {
            Some(value) => {
                out.push(value.clone());
                // A quoted value may go on over lines, at any indent.
                memchr::memchr(b'\n', &text[value.end..]).map_or(text.len(), |i| value.end + i) + 1
            }
            None => end + 1,
        };
    }
    text.len()
}

/// The value of a `key: value` line, without its quotes; `None` when the
/// value is on the lines below (`key: |`, `key:`).
fn entry_value(text: &[u8], line: Range<usize>) -> Option<Range<usize>> {
    let bytes = &text[line.clone()];
    let colon = bytes
        .windows(2)
        .position(|w| w == b": ")
        .map(|i| i + 1)
        .or_else(|| (bytes.last() == Some(&b':')).then(|| bytes.len() - 1))?;
    let mut start = line.start + colon + 1;
    while start < line.end && matches!(text[start], b' ' | b'\t') {
        start += 1;
    }
    let value = start..line.end;
    if value.is_empty() || matches!(text[value.start], b'|' | b'>' | b'#') {
        return None;
    }
    // A quoted value ends at its closing quote, on this line or a later
    // one; a plain one at the end of its line.
    let quote = text[value.start];
    if quote == b'"' || quote == b'\'' {
        let close = string_end(text, value.start + 1, quote);
        let inner = value.start + 1..close;
        return (!inner.is_empty()).then_some(inner);
    }
    Some(value)
}

/// A flow mapping or JSON object from just after its `{`: every value,
/// without its quotes. A map cut short masks to the end of the text.
/// Returns where it ended.
fn flow(text: &[u8], mut at: usize, out: &mut Vec<Range<usize>>) -> usize {
    let mut in_value = false;
    while at < text.len() {
        match text[at] {
            b'}' => return at + 1,
            b':' if !in_value => {
                in_value = true;
                at += 1;
            }
            b',' => {
                in_value = false;
                at += 1;
            }
            b' ' | b'\t' | b'\r' | b'\n' => at += 1,
            // A comment, after a blank, to the end of its line.
            b'#' if at > 0 && text[at - 1].is_ascii_whitespace() => {
                at += text[at..].iter().take_while(|b| **b != b'\n').count();
            }
            b'"' | b'\'' => {
                let quote = text[at];
                let end = string_end(text, at + 1, quote);
                if in_value && end > at + 1 {
                    out.push(at + 1..end);
                }
                at = end + 1;
            }
            _ => {
                // A plain scalar runs to the next `,` or `}`, a key's to
                // its `:`.
                let end = text[at..]
                    .iter()
                    .position(|b| matches!(b, b',' | b'}') || (*b == b':' && !in_value))
                    .map_or(text.len(), |i| at + i);
                let value = trim_end(at, end, text);
                if in_value && !value.is_empty() {
                    out.push(value);
                }
                at = end;
            }
        }
    }
    text.len()
}

/// Where a quoted string that starts at `at` ends (its closing quote, or
/// the end of the text), stepping over backslash escapes in `"` strings
/// and doubled quotes in `'` strings.
fn string_end(text: &[u8], mut at: usize, quote: u8) -> usize {
    while at < text.len() {
        match text[at] {
            b'\\' if quote == b'"' => at += 2,
            b'\'' if quote == b'\'' && text.get(at + 1) == Some(&b'\'') => at += 2,
            b if b == quote => return at,
            _ => at += 1,
        }
    }
    text.len()
}

fn trim_end(start: usize, mut end: usize, text: &[u8]) -> Range<usize> {
    while end > start && text[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    start..end
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
    fn every_entry_of_a_yaml_secret() {
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\ndata:\n  username: YXBwLXVzZXI=\n  password: \"Wm9vLTk5LXNlY3JldA==\"\n  # a comment\n  tls.key: |\n    LS0tLS1CRUdJTiBQUklW\n    QVRFIEtFWS0tLS0tCg==\nstringData:\n  token: 'plain text, with: colon'\n  empty: \"\"\n";
        assert_eq!(
            secrets(yaml),
            [
                "YXBwLXVzZXI=",
                "Wm9vLTk5LXNlY3JldA==",
                "LS0tLS1CRUdJTiBQUklW",
                "QVRFIEtFWS0tLS0tCg==",
                "plain text, with: colon",
            ]
        );
    }

    #[test]
    fn a_list_of_secrets_and_data_before_kind() {
        let yaml = "apiVersion: v1\nitems:\n- apiVersion: v1\n  data:\n    a: QUJD\n    b: REVG\n  kind: Secret\n- data:\n    c: R0hJ\n  kind: Secret\nkind: List\n";
        assert_eq!(secrets(yaml), ["QUJD", "REVG", "R0hJ"]);
    }

    #[test]
    fn json_secrets_compact_and_pretty() {
        let json =
            r#"{"apiVersion":"v1","data":{"password":"cGFzc3dvcmQ=","user":"dXNlcg=="},"kind":"Secret"}"#;
        assert_eq!(secrets(json), ["cGFzc3dvcmQ=", "dXNlcg=="]);
        let pretty = "{\n  \"kind\": \"Secret\",\n  \"stringData\": {\n    \"DB_URL\": \"postgres://a:b\\\"c@h/d\",\n    \"n\": 42\n  }\n}";
        assert_eq!(secrets(pretty), ["postgres://a:b\\\"c@h/d", "42"]);
        assert_eq!(
            secrets("kind: Secret\ndata: {a: QUJD, 'b': \"REVG\"}"),
            ["QUJD", "REVG"]
        );
    }

    #[test]
    fn a_cut_json_map_is_masked_to_its_end() {
        assert_eq!(
            secrets(r#"{"kind":"Secret","data":{"a":"QUJDREVGR0hJSktM"#),
            ["QUJDREVGR0hJSktM"]
        );
    }

    const V: &str = "UzNjcjN0LVZhbHVlLTk5";

    /// What YAML allows after `data:` on its line, a map that opens on
    /// the next line, and values YAML reads over several lines.
    #[test]
    fn every_form_yaml_and_json_give_the_map() {
        for after in ["# base64 values", "&creds", "!!map", "&a !!map # x"] {
            let m = format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: tls\ndata: {after}\n  ca.crt: {V}\n"
            );
            assert_eq!(secrets(&m), [V], "{after:?}");
        }
        for m in [
            format!("{{\n  \"kind\": \"Secret\",\n  \"data\":\n  {{\n    \"ca.crt\": \"{V}\"\n  }}\n}}"),
            format!("kind: Secret\ndata:\n  {{\"ca.crt\": \"{V}\"}}\n"),
            format!("{{\"kind\":\"Secret\",\"data\"\n:{{\"ca.crt\":\"{V}\"}}}}"),
            format!("kind:\n  Secret\ndata:\n  ca.crt: {V}\n"),
        ] {
            assert_eq!(secrets(&m), [V], "{m:?}");
        }
        // A block scalar's line may start with `#`.
        assert_eq!(
            secrets(&format!("kind: Secret\nstringData:\n  ca.crt: |\n    #{V}\n")),
            [format!("#{V}")]
        );
        // A comment in a flow map may hold `}`.
        assert_eq!(
            secrets(&format!(
                "kind: Secret\ndata: {{a: QUJD, # old }}\n  ca.crt: {V}}}\n"
            )),
            ["QUJD", V]
        );
        // A quoted value goes on to its closing quote, at any indent.
        assert_eq!(
            secrets(&format!(
                "kind: Secret\nstringData:\n    ca.crt: \"abc\n  {V}\"\n    next: QUJD\n"
            )),
            [format!("abc\n  {V}").as_str(), "QUJD"]
        );
    }

    /// Values made of keys, each of which would read to the end of the
    /// text: linear, not quadratic.
    #[test]
    fn a_value_built_of_keys_costs_linear_time() {
        for (head, unit) in [
            ("kind: Secret\n", "data: &"),
            ("kind: Secret\n", "data: !"),
            ("kind: Secret\n", "data: #"),
            ("kind: Secret\ndata: {", "data:{"),
            ("kind: Secret\ndata: {", "data: {a: \"x "),
            ("kind: Secret\ndata: {", "a: 1 #data: {"),
        ] {
            let mut text = head.to_owned();
            while text.len() < 1 << 20 {
                text.push_str(unit);
            }
            let started = std::time::Instant::now();
            let mut out = Vec::new();
            find(text.as_bytes(), &mut out);
            let took = started.elapsed();
            assert!(took < std::time::Duration::from_secs(2), "{unit:?}: {took:?}");
        }
    }

    #[test]
    fn other_kinds_and_prose_are_left_alone() {
        assert!(secrets("kind: ConfigMap\ndata:\n  color: blue\n").is_empty());
        assert!(secrets("what kind of secret data: nobody knows").is_empty());
        assert!(secrets("kind: Secret\ndata: null\n").is_empty());
        assert!(secrets("kind: SecretStore\ndata:\n  a: b\n").is_empty());
    }
}
