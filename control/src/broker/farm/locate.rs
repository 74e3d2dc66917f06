//! Finds where a key path such as `resource[2].pool` or `ldap.user_filter` is written in the
//! farm file, so an error can say `FILE:LINE:COLUMN`. Used only to decorate errors; the
//! checks themselves are `file.rs`'s.

use toml_edit::{ImDocument, Item, Value};

/// 1-based line and column of byte `offset` in `text`.
pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The byte offset where `key` (the farm checks' `a[1].b[2].c` form) is written: the key
/// itself where the path ends at a key, else the nearest enclosing table or value found.
pub(super) fn key_offset(text: &str, key: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    let mut best: Option<usize> = None;
    let mut item: Option<&Item> = None;
    let mut value: Option<&Value> = None;
    let mut table = Some(doc.as_table());
    for segment in segments(key) {
        match segment {
            Segment::Key(k) => {
                if let Some(t) = table {
                    if let Some(span) = t.key(k).and_then(|k| k.span()) {
                        best = Some(span.start);
                    }
                    item = t.get(k);
                    value = None;
                } else if let Some(Value::InlineTable(t)) = value {
                    if let Some(span) = t.key(k).and_then(|k| k.span()) {
                        best = Some(span.start);
                    }
                    value = t.get(k);
                    item = None;
                } else {
                    break;
                }
            }
            Segment::Index(i) => match (item, value) {
                (Some(Item::ArrayOfTables(a)), _) => {
                    let t = a.get(i);
                    if let Some(span) = t.and_then(|t| t.span()) {
                        best = Some(span.start);
                    }
                    table = t;
                    item = None;
                    value = None;
                    continue;
                }
                (Some(Item::Value(Value::Array(a))), _) | (None, Some(Value::Array(a))) => {
                    value = a.get(i);
                    if let Some(span) = value.and_then(|v| v.span()) {
                        best = Some(span.start);
                    }
                    item = None;
                }
                _ => break,
            },
        }
        table = match item {
            Some(Item::Table(t)) => Some(t),
            _ => None,
        };
        if value.is_none() {
            value = item.and_then(Item::as_value);
        }
    }
    best
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a[1].b` -> `a`, `1`, `b`.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Segment::Key(name));
        }
        while let Some((index, tail)) = rest.split_once(']') {
            if let Ok(i) = index.parse() {
                out.push(Segment::Index(i));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[[site]]\nname = \"a\"\n\n[[pool]]\nname = \"p\"\nhosts = [\"h1\", \"h2\"]\n\n\
                        [[pool]]\nname = \"q\"\nhosts = [\"h3\"]\n\n[login]\nlockout = \"0s\"\n";

    fn line(key: &str) -> Option<usize> {
        key_offset(TEXT, key).map(|o| line_col(TEXT, o).0)
    }

    #[test]
    fn keys_map_to_their_lines() {
        assert_eq!(line("site[0].name"), Some(2));
        assert_eq!(line("pool[1]"), Some(8));
        assert_eq!(line("pool[1].name"), Some(9));
        assert_eq!(line("pool[0].hosts[1]"), Some(6));
        assert_eq!(line("login.lockout"), Some(13));
        // Unknown parts fall back to the nearest known place.
        assert_eq!(line("pool[1].bogus"), Some(8));
        assert_eq!(line("nothing"), None);
        assert_eq!(line_col(TEXT, 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }
}
