//! Decoded views of a value: the same text with one layer of encoding taken
//! off, and a map from every decoded byte back to the bytes it came from.
//!
//! Secrets are rarely stored bare. A JSON document escapes `/` as `\/`, a
//! quote as `\"` and any character as `\u0041`; a JSON document inside a
//! JSON string escapes everything twice; COPY's text format and most
//! programming languages use the same backslash escapes; a URL or a form
//! body writes `:` as `%3A`; a long token is wrapped over several lines.
//! Each of these breaks a pattern written for the plain text. So the scanner
//! also looks at the value with the encoding taken off, and maps each secret
//! it finds there back to the exact span of encoded bytes, which the mask
//! then replaces whole: a mask never leaves half of an escape sequence
//! behind, so the JSON (or COPY row, or URL) stays well-formed.
//!
//! Written by hand: the decoders that exist (serde_json, percent-encoding)
//! decode whole documents and do not say where each output byte came from,
//! and a value is often only partly JSON (a log line with a JSON tail).

use std::ops::Range;

/// A decoded copy of a value, with where each of its bytes came from.
#[derive(Debug, Default, Clone)]
pub struct View {
    /// The decoded bytes.
    pub text: Vec<u8>,
    /// For each decoded byte, the span of the original value it came from
    /// (every byte of a multi-byte escape maps to the whole escape).
    spans: Vec<(u32, u32)>,
    /// Where in `text` a line break was taken out ([`View::unwrapped`]).
    joins: Vec<u32>,
}

impl View {
    /// The span of the original value that `range` of the view came from.
    pub fn original(&self, range: Range<usize>) -> Range<usize> {
        match (
            self.spans.get(range.start),
            range.end.checked_sub(1).and_then(|e| self.spans.get(e)),
        ) {
            (Some(first), Some(last)) if range.start < range.end => first.0 as usize..last.1 as usize,
            _ => 0..0,
        }
    }

    /// Whether line breaks were taken out of this view.
    pub fn has_joins(&self) -> bool {
        !self.joins.is_empty()
    }

    /// Whether `range` of the view spans a line break that was taken out.
    pub fn crosses_join(&self, range: &Range<usize>) -> bool {
        let at = self.joins.partition_point(|&j| (j as usize) <= range.start);
        self.joins.get(at).is_some_and(|&j| (j as usize) < range.end)
    }

    /// A view of `view` seen through `decode`, mapped back to the original.
    fn compose(&self, inner: View) -> View {
        let spans = inner
            .spans
            .iter()
            .map(|&(start, end)| {
                let range = self.original(start as usize..end.max(start + 1) as usize);
                (range.start as u32, range.end as u32)
            })
            .collect();
        View {
            text: inner.text,
            spans,
            joins: inner.joins,
        }
    }

    /// `value` with each two-byte escape pair starting at `pairs` (sorted
    /// offsets) read as its second byte: CSV's `""` and `\"`.
    pub fn pairs_collapsed(value: &[u8], pairs: &[usize]) -> View {
        let mut view = View::default();
        let mut pairs = pairs.iter().peekable();
        let mut i = 0;
        while i < value.len() {
            if pairs.next_if(|&&p| p == i).is_some() && i + 1 < value.len() {
                view.push(value[i + 1], i..i + 2);
                i += 2;
            } else {
                view.push(value[i], i..i + 1);
                i += 1;
            }
        }
        view
    }

    fn push(&mut self, byte: u8, span: Range<usize>) {
        self.text.push(byte);
        self.spans.push((span.start as u32, span.end as u32));
    }

    fn push_str(&mut self, bytes: &[u8], span: Range<usize>) {
        for &b in bytes {
            self.push(b, span.clone());
        }
    }
}

/// How many backslash layers are taken off at most: JSON in a JSON string
/// in a COPY row is three.
const MAX_UNESCAPES: usize = 3;

/// The decoded views of `value` worth scanning beside the value itself:
/// backslash escapes taken off (layer after layer), then `%XX` escapes, then
/// line breaks inside a token. Empty when `value` has none of them, which is
/// the common case and costs three `memchr` passes.
pub fn decoded(value: &[u8]) -> Vec<View> {
    // Every step needs a backslash, a `%` or a line break to decode.
    if value.len() > u32::MAX as usize || memchr::memchr3(b'\\', b'%', b'\n', value).is_none() {
        return Vec::new();
    }
    // Each step decodes what the one before it left.
    type Step = fn(&[u8]) -> Option<View>;
    const STEPS: [Step; MAX_UNESCAPES + 2] = [unescaped, unescaped, unescaped, percent_decoded, unwrapped];
    let mut views: Vec<View> = Vec::new();
    for step in STEPS {
        let text = views.last().map_or(value, |v| &v.text);
        let Some(inner) = step(text) else { continue };
        let next = match views.last() {
            Some(outer) => outer.compose(inner),
            None => inner,
        };
        views.push(next);
    }
    views
}

/// `text` with backslash escapes decoded (`\"`, `\\`, `\/`, `\n`, `\t`,
/// `\r`, `\b`, `\f`, `\'`, `\uXXXX` with surrogate pairs, `\xHH`), or
/// `None` when it has none.
pub fn unescaped(text: &[u8]) -> Option<View> {
    let first = memchr::memchr(b'\\', text)?;
    let mut view = View::default();
    let mut decoded_any = false;
    for (i, &b) in text[..first].iter().enumerate() {
        view.push(b, i..i + 1);
    }
    let mut i = first;
    while i < text.len() {
        if text[i] != b'\\' || i + 1 >= text.len() {
            view.push(text[i], i..i + 1);
            i += 1;
            continue;
        }
        let simple = match text[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'\'' => Some(b'\''),
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            b'r' => Some(b'\r'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            _ => None,
        };
        if let Some(b) = simple {
            view.push(b, i..i + 2);
            decoded_any = true;
            i += 2;
            continue;
        }
        if text[i + 1] == b'x'
            && let Some(byte) = text.get(i + 2..i + 4).and_then(hex_byte)
        {
            view.push(byte, i..i + 4);
            decoded_any = true;
            i += 4;
            continue;
        }
        if text[i + 1] == b'u'
            && let Some((c, len)) = unicode_escape(&text[i..])
        {
            let mut utf8 = [0u8; 4];
            view.push_str(c.encode_utf8(&mut utf8).as_bytes(), i..i + len);
            decoded_any = true;
            i += len;
            continue;
        }
        view.push(text[i], i..i + 1);
        i += 1;
    }
    decoded_any.then_some(view)
}

/// A string literal of a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonString {
    /// Its content, between the quotes, still escaped.
    pub content: Range<usize>,
    /// Whether it is an object's key (a `:` follows it).
    pub is_key: bool,
}

/// The string literals of `text` when it is a JSON object or array, or
/// `None` when it is not one (anything but JSON's punctuation, numbers and
/// literals outside the strings, or a string that does not close). Scanning
/// each string on its own, decoded, keeps every find inside one string, so
/// a masked document is still JSON with the same shape.
pub fn json_strings(text: &[u8]) -> Option<Vec<JsonString>> {
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    if !matches!(text[start], b'{' | b'[') {
        return None;
    }
    let mut strings = Vec::new();
    let mut i = start;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let content = i + 1;
                let mut j = content;
                while j < text.len() && text[j] != b'"' {
                    j += if text[j] == b'\\' { 2 } else { 1 };
                }
                if j >= text.len() {
                    return None;
                }
                let next = text[j + 1..].iter().position(|b| !b.is_ascii_whitespace());
                let is_key = next.is_some_and(|n| text[j + 1 + n] == b':');
                strings.push(JsonString {
                    content: content..j,
                    is_key,
                });
                i = j + 1;
            }
            b'{' | b'}' | b'[' | b']' | b',' | b':' | b'-' | b'+' | b'.' => i += 1,
            b if b.is_ascii_whitespace() || b.is_ascii_digit() => i += 1,
            b't' | b'r' | b'u' | b'e' | b'f' | b'a' | b'l' | b's' | b'n' | b'E' => i += 1,
            _ => return None,
        }
    }
    Some(strings)
}

/// Where each backslash escape sequence of `text` lies, in order, read as
/// [`unescaped`] reads them (an unknown escape is two bytes).
pub fn escapes(text: &[u8]) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(at) = memchr::memchr(b'\\', &text[from..]) {
        let i = from + at;
        let len = match text.get(i + 1) {
            None => 1,
            Some(b'x') if text.get(i + 2..i + 4).and_then(hex_byte).is_some() => 4,
            Some(b'u') => unicode_escape(&text[i..]).map_or(2, |(_, len)| len),
            Some(_) => 2,
        };
        spans.push(i..i + len);
        from = i + len;
    }
    spans
}

/// `range` widened so that it neither starts nor ends inside one of the
/// sorted, disjoint `spans`.
pub fn widen(mut range: Range<usize>, spans: &[Range<usize>]) -> Range<usize> {
    let inside = |at: usize| {
        let i = spans.partition_point(|s| s.end <= at);
        spans.get(i).filter(|s| s.start < at && at < s.end).cloned()
    };
    if let Some(span) = inside(range.start) {
        range.start = span.start;
    }
    if let Some(span) = inside(range.end) {
        range.end = span.end;
    }
    range
}

/// A `\uXXXX` escape (or a surrogate pair of two) at the start of `text`:
/// the character and the escape's length.
fn unicode_escape(text: &[u8]) -> Option<(char, usize)> {
    let unit = |at: usize| -> Option<u32> {
        let digits = text.get(at..at + 6)?;
        if &digits[..2] != b"\\u" {
            return None;
        }
        u32::from_str_radix(std::str::from_utf8(&digits[2..]).ok()?, 16).ok()
    };
    let high = unit(0)?;
    if (0xD800..0xDC00).contains(&high) {
        let low = unit(6).filter(|low| (0xDC00..0xE000).contains(low))?;
        let c = char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))?;
        return Some((c, 12));
    }
    Some((char::from_u32(high)?, 6))
}

fn hex_byte(digits: &[u8]) -> Option<u8> {
    let value = |d: u8| (d as char).to_digit(16);
    Some((value(digits[0])? * 16 + value(digits[1])?) as u8)
}

/// `text` with `%XX` escapes decoded (URLs, form bodies), or `None` when it
/// has none. `+` stays a `+`: tokens hold it far more often than a form
/// value holds an encoded space that matters to a pattern.
fn percent_decoded(text: &[u8]) -> Option<View> {
    let mut view = View::default();
    let mut decoded_any = false;
    let mut i = 0;
    let mut at = memchr::memchr(b'%', text)?;
    while i < text.len() {
        if i == at {
            if let Some(byte) = text.get(i + 1..i + 3).and_then(hex_byte) {
                view.push(byte, i..i + 3);
                decoded_any = true;
                i += 3;
            } else {
                view.push(text[i], i..i + 1);
                i += 1;
            }
            at = memchr::memchr(b'%', &text[i..]).map_or(usize::MAX, |next| i + next);
            continue;
        }
        let stop = at.min(text.len());
        for (j, &b) in text[i..stop].iter().enumerate() {
            view.push(b, i + j..i + j + 1);
        }
        i = stop;
    }
    decoded_any.then_some(view)
}

/// `text` with each line break between two token characters taken out,
/// together with the indentation and quoting that wrap a long token over
/// lines (`"` + newline + `"` in a concatenation, a trailing `\`), or `None`
/// when it has none. Only finds that cross such a join count
/// ([`View::crosses_join`]): everything else the plain value already showed.
fn unwrapped(text: &[u8]) -> Option<View> {
    memchr::memchr(b'\n', text)?;
    let token = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-' | b'.');
    let mut view = View::default();
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\n' && i > 0 {
            // Back over `\r` and a continuation backslash already pushed.
            let mut before = view.text.len();
            while before > 0 && matches!(view.text[before - 1], b'\r' | b'\\' | b' ' | b'\t') {
                before -= 1;
            }
            let mut after = i + 1;
            while after < text.len() && matches!(text[after], b' ' | b'\t' | b'\r') {
                after += 1;
            }
            if before > 0 && token(view.text[before - 1]) && after < text.len() && token(text[after]) {
                view.text.truncate(before);
                view.spans.truncate(before);
                view.joins.push(before as u32);
                i = after;
                continue;
            }
        }
        view.push(text[i], i..i + 1);
        i += 1;
    }
    (!view.joins.is_empty()).then_some(view)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view_of(value: &str) -> Vec<String> {
        decoded(value.as_bytes())
            .iter()
            .map(|v| String::from_utf8_lossy(&v.text).into_owned())
            .collect()
    }

    #[test]
    fn plain_text_has_no_views() {
        assert!(decoded(b"nothing to decode here, 100% sure").is_empty());
    }

    #[test]
    fn escapes_are_taken_off_layer_by_layer() {
        let value = r#"{"cfg": "{\"url\": \"https:\\/\\/x\\u0041\"}"}"#;
        let views = view_of(value);
        assert_eq!(views[0], r#"{"cfg": "{"url": "https:\/\/x\u0041"}"}"#);
        assert_eq!(views[1], r#"{"cfg": "{"url": "https://xA"}"}"#);
    }

    #[test]
    fn a_decoded_range_maps_to_whole_escapes() {
        let value = r#"a\u0041\/b"#;
        let views = decoded(value.as_bytes());
        let view = &views[0];
        assert_eq!(view.text, b"aA/b");
        assert_eq!(view.original(1..3), 1..9);
        assert_eq!(&value[view.original(1..2)], r"\u0041");
        assert_eq!(&value[view.original(3..4)], "b");
    }

    #[test]
    fn surrogate_pairs_and_bad_escapes() {
        let views = view_of(r"\ud83d\ude00 \u12 \x4 \q");
        assert_eq!(views[0], "\u{1F600} \\u12 \\x4 \\q");
    }

    #[test]
    fn csv_pairs_collapse_and_map_back() {
        let value = r#"a ""b"" c"#;
        let view = View::pairs_collapsed(value.as_bytes(), &[2, 5]);
        assert_eq!(view.text, br#"a "b" c"#);
        assert_eq!(&value[view.original(2..5)], r#"""b"""#);
    }

    #[test]
    fn ranges_widen_to_whole_escapes() {
        let text = br#"ab\"cd\u0041e\\"#;
        let spans = escapes(text);
        assert_eq!(spans, vec![2..4, 6..12, 13..15]);
        assert_eq!(widen(0..3, &spans), 0..4);
        assert_eq!(widen(3..8, &spans), 2..12);
        assert_eq!(widen(4..6, &spans), 4..6);
        assert_eq!(widen(12..14, &spans), 12..15);
    }

    #[test]
    fn json_strings_are_found_with_their_role() {
        let text = br#" {"k": "v\"w", "n": [1, -2.5e3, true, null, "x"]}"#;
        let strings = json_strings(text).unwrap();
        let parts: Vec<(&[u8], bool)> = strings
            .iter()
            .map(|s| (&text[s.content.clone()], s.is_key))
            .collect();
        assert_eq!(
            parts,
            vec![
                (&b"k"[..], true),
                (&br#"v\"w"#[..], false),
                (&b"n"[..], true),
                (&b"x"[..], false)
            ]
        );
        assert_eq!(json_strings(b"note: {\"a\": 1}"), None);
        assert_eq!(json_strings(br#"{"open": "never closed}"#), None);
        assert_eq!(json_strings(b"{not json}"), None);
    }

    #[test]
    fn percent_escapes_map_back() {
        let value = "u%3Ap%40ss%2";
        let views = decoded(value.as_bytes());
        assert_eq!(views[0].text, b"u:p@ss%2");
        assert_eq!(&value[views[0].original(1..4)], "%3Ap%40");
    }

    #[test]
    fn wrapped_tokens_are_joined_only_between_token_characters() {
        let value = "key: eyJhbGci\n   OiJIUzI1\r\n  NiJ9\n\nnext: line";
        let views = decoded(value.as_bytes());
        let view = views.last().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&view.text),
            "key: eyJhbGciOiJIUzI1NiJ9\n\nnext: line"
        );
        let start = 5;
        let end = start + "eyJhbGciOiJIUzI1NiJ9".len();
        assert!(view.crosses_join(&(start..end)));
        assert!(!view.crosses_join(&(0..4)));
        assert_eq!(
            &value[view.original(start..end)],
            "eyJhbGci\n   OiJIUzI1\r\n  NiJ9"
        );
    }

    #[test]
    fn escaped_line_breaks_are_joined_too() {
        let value = r#"{"k": "abc\ndef"}"#;
        let views = decoded(value.as_bytes());
        let view = views.last().unwrap();
        assert_eq!(view.text, br#"{"k": "abcdef"}"#);
        assert_eq!(&value[view.original(7..13)], r"abc\ndef");
    }
}
