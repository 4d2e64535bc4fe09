//! Recorded text made safe to print, and aligned columns.
//!
//! Statements, values and messages come from clients and databases: a value
//! holding terminal escape sequences or bidirectional overrides could hide or
//! rewrite what an investigator sees. Such characters are printed escaped
//! (`\u{1b}`), never sent to the terminal.

/// `text` on one line: control characters (newlines too) and bidirectional
/// formatting characters escaped.
pub fn line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || is_bidi_format(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The lines of `text` (split at `\n`), each made safe with [`line()`].
pub fn lines(text: &str) -> Vec<String> {
    text.split('\n').map(line).collect()
}

/// `text` over several lines: each line made safe with [`line()`].
pub fn block(text: &str) -> String {
    lines(text).join("\n")
}

/// Unicode's explicit directional formatting characters, which reorder what
/// is displayed ("Trojan Source").
fn is_bidi_format(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// At most `max` characters of `text`, ending in `…` when cut.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Rows as lines with their columns aligned, cells separated by `gap`; the
/// last column is not padded. Rows may have different lengths.
pub fn columns(rows: &[Vec<String>], gap: &str) -> Vec<String> {
    let widths = widths(rows);
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(gap);
                }
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect()
}

/// The width of each column: its widest cell, in characters.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let width = cell.chars().count();
            match widths.get_mut(i) {
                Some(w) if *w < width => *w = width,
                Some(_) => {}
                None => widths.push(width),
            }
        }
    }
    widths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_overrides_are_shown_not_obeyed() {
        assert_eq!(line("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(line("one\ntwo\t"), "one\\ntwo\\t");
        assert_eq!(line("abc\u{202E}def"), "abc\\u{202e}def");
        assert_eq!(line("café \"quoted\" C:\\"), "café \"quoted\" C:\\");
        assert_eq!(lines("SELECT 1\r\nFROM t"), ["SELECT 1\\r", "FROM t"]);
        assert_eq!(block("one\u{1b}\ntwo"), "one\\u{1b}\ntwo");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abcde…");
        assert_eq!(cut("ééééééé", 3), "éé…");
    }

    #[test]
    fn columns_line_up() {
        let rows = vec![
            vec!["ID".to_owned(), "NAME".to_owned(), "X".to_owned()],
            vec!["1234".to_owned(), "é".to_owned(), "last".to_owned()],
            vec!["5".to_owned()],
        ];
        assert_eq!(columns(&rows, "  "), ["ID    NAME  X", "1234  é     last", "5"]);
    }
}
