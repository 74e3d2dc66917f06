//! Maps configuration keys to places in the source text, and places back to keys.
//!
//! Owns the walk over a span-preserving `toml_edit` document; used only to decorate errors
//! with `file:line:col` and a key path. Validation itself lives in `validate.rs`.

use std::fmt;
use std::ops::Range;

use toml_edit::{ImDocument, Item, Table, Value};

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A key inside a table.
    Key(String),
    /// An index inside an array or array of tables.
    Index(usize),
}

/// A dotted path to a configuration key, such as `halb.listener[1].bind`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// The empty path (the whole file).
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_string()));
        next
    }

    /// This path extended by an index.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for seg in &self.0 {
            match seg {
                Segment::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Segment::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        if first {
            f.write_str("(top level)")?;
        }
        Ok(())
    }
}

/// A source text with a parsed, span-preserving view of it.
pub struct SourceMap<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
}

impl<'a> SourceMap<'a> {
    /// Parses `text`; a text that does not parse still maps offsets to lines.
    pub fn new(text: &'a str) -> Self {
        SourceMap {
            text,
            doc: ImDocument::parse(text).ok(),
        }
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    /// The span of the key (or, failing that, the value) at `path`. For a missing key the
    /// span of the closest existing parent is returned, so errors still point somewhere useful.
    pub fn span_of(&self, path: &KeyPath) -> Option<Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut best = None;
        let mut cur = Some(Walk::Table(doc.as_table()));
        for seg in &path.0 {
            let Some(node) = cur.take() else { break };
            cur = step(node, seg, &mut best);
        }
        best
    }

    /// The key path of the innermost key whose key or value span contains `offset`.
    pub fn path_at(&self, offset: usize) -> Option<KeyPath> {
        let doc = self.doc.as_ref()?;
        let mut path = KeyPath::root();
        find_in_table(doc.as_table(), offset, &mut path).then_some(path)
    }
}

enum Walk<'d> {
    Table(&'d Table),
    Item(&'d Item),
    Value(&'d Value),
}

fn step<'d>(cur: Walk<'d>, seg: &Segment, best: &mut Option<Range<usize>>) -> Option<Walk<'d>> {
    let cur = match cur {
        Walk::Item(Item::Table(t)) => Walk::Table(t),
        Walk::Item(Item::Value(v)) => Walk::Value(v),
        other => other,
    };
    match (cur, seg) {
        (Walk::Table(t), Segment::Key(k)) => {
            let (key, item) = t.get_key_value(k).or_else(|| t.get_key_value(alias_of(k)?))?;
            if let Some(s) = key.span() {
                *best = Some(s);
            }
            Some(Walk::Item(item))
        }
        (Walk::Value(Value::InlineTable(t)), Segment::Key(k)) => {
            let k = if t.contains_key(k) {
                k.as_str()
            } else {
                alias_of(k).unwrap_or(k)
            };
            let v = t.get(k)?;
            if let Some(s) = t.key(k).and_then(|key| key.span()).or_else(|| v.span()) {
                *best = Some(s);
            }
            Some(Walk::Value(v))
        }
        (Walk::Item(Item::ArrayOfTables(a)), Segment::Index(i)) => {
            let t = a.get(*i)?;
            if let Some(s) = t.span() {
                *best = Some(s);
            }
            Some(Walk::Table(t))
        }
        (Walk::Value(Value::Array(a)), Segment::Index(i)) => {
            let v = a.get(*i)?;
            if let Some(s) = v.span() {
                *best = Some(s);
            }
            Some(Walk::Value(v))
        }
        _ => None,
    }
}

/// The other spelling a key may have in the file (serde aliases of the schema).
fn alias_of(key: &str) -> Option<&'static str> {
    match key {
        "backends" => Some("backend"),
        _ => None,
    }
}

fn find_in_table(t: &Table, offset: usize, path: &mut KeyPath) -> bool {
    for (key, item) in t.iter() {
        let Some((k, _)) = t.get_key_value(key) else {
            continue;
        };
        let in_key = k.span().is_some_and(|s| s.contains(&offset));
        let child = path.key(key);
        let mut sub = child.clone();
        if find_in_item(item, offset, &mut sub) {
            *path = sub;
            return true;
        }
        let in_value = match item {
            Item::Value(v) => v.span().is_some_and(|s| s.contains(&offset)),
            _ => false,
        };
        if in_key || in_value {
            *path = child;
            return true;
        }
    }
    false
}

fn find_in_item(item: &Item, offset: usize, path: &mut KeyPath) -> bool {
    match item {
        Item::Table(t) => find_in_table(t, offset, path),
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter().enumerate() {
                let mut sub = path.index(i);
                if find_in_table(t, offset, &mut sub) {
                    *path = sub;
                    return true;
                }
            }
            false
        }
        Item::Value(v) => find_in_value(v, offset, path),
        Item::None => false,
    }
}

fn find_in_value(v: &Value, offset: usize, path: &mut KeyPath) -> bool {
    match v {
        Value::InlineTable(t) => {
            for (key, val) in t.iter() {
                let key_span = t.key(key).and_then(|k| k.span());
                let mut sub = path.key(key);
                if find_in_value(val, offset, &mut sub) {
                    *path = sub;
                    return true;
                }
                let hit = key_span.is_some_and(|s| s.contains(&offset))
                    || val.span().is_some_and(|s| s.contains(&offset));
                if hit {
                    *path = path.key(key);
                    return true;
                }
            }
            false
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                let mut sub = path.index(i);
                if find_in_value(val, offset, &mut sub) {
                    *path = sub;
                    return true;
                }
                if val.span().is_some_and(|s| s.contains(&offset)) {
                    *path = path.index(i);
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}
