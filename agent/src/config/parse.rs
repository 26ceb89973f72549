//! Reading a config file into a [`RawConfig`] so that `check-config` lists every problem at
//! once, each with its path, and prints a short list whatever the input:
//!
//! - bytes that are not UTF-8 are reported with their offset;
//! - a syntax error (TOML stops at the first) names its line and column;
//! - every mistyped value is reported with its path (`services.web.checks[0].interval: expected
//!   a duration like "5s", got 5`), dropped, and reading goes on, so the others are found too;
//! - every unknown key is listed with its path;
//! - no message echoes more than [`MAX_SHOWN`] characters of the input, and the list is cut at
//!   [`MAX_ERRORS`].
//!
//! Messages speak TOML (a table, a list, a whole number), never the Rust types behind them.

use autoheal_common::config::ConfigErrors;
use serde_path_to_error::Segment;
use toml::Value;

use super::raw::RawConfig;

/// Characters of an input value a message may echo.
pub const MAX_SHOWN: usize = 64;
/// Errors listed; the rest are counted.
pub const MAX_ERRORS: usize = 50;
/// Longest message or path kept from a library's error text.
const MAX_TEXT: usize = 240;

/// `s` quoted, cut to [`MAX_SHOWN`] characters (with `...` when cut).
pub fn shown(s: &str) -> String {
    match s.char_indices().nth(MAX_SHOWN) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?}...", &s[..cut]),
    }
}

/// `s` cut to `max` characters.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((i, _)) => format!("{}...", &s[..i]),
    }
}

/// The file's bytes as text, or where they stop being UTF-8.
pub fn text(bytes: &[u8]) -> Result<&str, ConfigErrors> {
    std::str::from_utf8(bytes).map_err(|e| {
        let offset = e.valid_up_to();
        let line = bytes[..offset].iter().filter(|b| **b == b'\n').count() + 1;
        let mut errors = ConfigErrors::default();
        errors.push(
            format!("line {line}"),
            format!("not UTF-8 at byte offset {offset}: a config file must be UTF-8 text"),
        );
        errors
    })
}

/// The raw document and what is wrong with its shape; `None` if it isn't TOML at all.
pub fn raw(text: &str) -> (Option<RawConfig>, ConfigErrors) {
    let mut errors = ConfigErrors::default();
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            let (line, column) = e
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((1, 1));
            errors.push(
                format!("line {line}"),
                format!(
                    "{} (column {column})",
                    cut(e.message().trim_end(), MAX_TEXT)
                ),
            );
            return (None, errors);
        }
    };
    let mut table = table;
    sections_are_tables(&mut table, &mut errors);
    let mut value = Value::Table(table);
    // Each pass finds the first mistyped value; it is reported and dropped, and the next pass
    // looks for the one after it.
    for _ in 0..=MAX_ERRORS {
        let Err(e) = serde_path_to_error::deserialize::<_, RawConfig>(value.clone()) else {
            break;
        };
        let segments: Vec<&Segment> = e.path().iter().collect();
        let got = find(&value, &segments).map(describe);
        errors.push(format_path(&segments), mistyped(e.inner().message(), got));
        if !drop_at(&mut value, &segments) {
            return (None, errors);
        }
    }
    let mut unknown = Vec::new();
    let raw = serde_ignored::deserialize(value, |path| unknown.push(ignored_path(&path)));
    for path in unknown {
        errors.push(
            path,
            "unknown key (check the spelling against the configuration reference)",
        );
    }
    match raw {
        Ok(raw) => (Some(raw), errors),
        Err(e) => {
            // Only if more values were mistyped than MAX_ERRORS passes could drop.
            errors.push("<file>", cut(&e.to_string(), MAX_TEXT));
            (None, errors)
        }
    }
}

/// Keeps the list short and every entry bounded.
pub fn bounded(mut errors: ConfigErrors) -> ConfigErrors {
    let more = errors.errors.len().saturating_sub(MAX_ERRORS);
    errors.errors.truncate(MAX_ERRORS);
    for e in &mut errors.errors {
        e.path = cut(&e.path, MAX_TEXT);
        e.message = cut(&e.message, MAX_TEXT);
    }
    if more > 0 {
        errors.push(
            "<file>",
            format!("{more} more error(s) not shown: fix these first"),
        );
    }
    errors
}

/// serde would read a list where a section is expected as the section's fields in order
/// (`tls = ["a", "b", "c"]`), with errors to match; what isn't a table there is dropped and
/// reported as such.
fn sections_are_tables(doc: &mut toml::Table, errors: &mut ConfigErrors) {
    for section in [
        "coordinator",
        "tls",
        "identity",
        "status",
        "metrics",
        "services",
    ] {
        expect_table(doc, section, section, errors);
    }
    let Some(Value::Table(services)) = doc.get_mut("services") else {
        return;
    };
    let names: Vec<String> = services.keys().cloned().collect();
    for name in names {
        let p = format!("services.{}", key(&name));
        expect_table(services, &name, &p, errors);
        let Some(Value::Table(service)) = services.get_mut(&name) else {
            continue;
        };
        expect_table(service, "restart", &format!("{p}.restart"), errors);
        if let Some(Value::Array(checks)) = service.get_mut("checks") {
            for (i, check) in checks.iter_mut().enumerate() {
                if !check.is_table() {
                    errors.push(
                        format!("{p}.checks[{i}]"),
                        format!("expected a table, got {}", describe(check)),
                    );
                    *check = Value::Table(toml::Table::new());
                }
            }
        }
    }
}

fn expect_table(parent: &mut toml::Table, key: &str, path: &str, errors: &mut ConfigErrors) {
    if parent.get(key).is_some_and(|v| !v.is_table())
        && let Some(v) = parent.remove(key)
    {
        errors.push(path, format!("expected a table, got {}", describe(&v)));
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// `expected a duration like "5s", got 5` from serde's `invalid type: integer `5`, expected
/// ...`, in TOML's words.
fn mistyped(message: &str, got: Option<String>) -> String {
    let expected = ["invalid type: ", "invalid value: "]
        .iter()
        .any(|p| message.starts_with(p))
        .then(|| message.rfind(", expected ").map(|i| &message[i + 11..]))
        .flatten();
    match (expected, got) {
        (Some(expected), Some(got)) => {
            format!("expected {}, got {got}", in_toml_words(expected))
        }
        (Some(expected), None) => format!("expected {}", in_toml_words(expected)),
        (None, _) => cut(message, MAX_TEXT),
    }
}

fn in_toml_words(expected: &str) -> String {
    match expected {
        "a map" | "map" => "a table".to_owned(),
        "a sequence" => "a list".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" | "isize" => {
            "a whole number".to_owned()
        }
        "f32" | "f64" => "a number".to_owned(),
        e if e.starts_with("struct ") => "a table".to_owned(),
        e => cut(e, MAX_TEXT),
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::String(s) => shown(s),
        Value::Integer(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Boolean(b) => b.to_string(),
        Value::Datetime(d) => cut(&d.to_string(), MAX_SHOWN),
        Value::Array(_) => "a list".to_owned(),
        Value::Table(_) => "a table".to_owned(),
    }
}

fn find<'v>(value: &'v Value, path: &[&Segment]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, segment| match segment {
        Segment::Map { key } => v.as_table()?.get(key),
        Segment::Seq { index } => v.as_array()?.get(*index),
        _ => None,
    })
}

/// Drops the mistyped value at `path` so the next pass gets past it: a key is removed; a list
/// element is replaced by an empty one of its siblings' kind (so later indices still match).
fn drop_at(value: &mut Value, path: &[&Segment]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let parent = parents.iter().try_fold(value, |v, segment| match segment {
        Segment::Map { key } => v.as_table_mut()?.get_mut(key),
        Segment::Seq { index } => v.as_array_mut()?.get_mut(*index),
        _ => None,
    });
    match (parent, last) {
        (Some(Value::Table(t)), Segment::Map { key }) => t.remove(key).is_some(),
        (Some(Value::Array(a)), Segment::Seq { index }) if *index < a.len() => {
            let tables = a.iter().any(Value::is_table);
            a[*index] = if tables {
                Value::Table(toml::Table::new())
            } else {
                Value::String(String::new())
            };
            true
        }
        _ => false,
    }
}

fn key(key: &str) -> String {
    cut(key, MAX_SHOWN)
}

/// `services.web.checks[0].interval`.
fn format_path(path: &[&Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key: k } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&key(k));
            }
            Segment::Enum { variant } => out.push_str(&key(variant)),
            Segment::Unknown => out.push('?'),
        }
    }
    if out.is_empty() {
        "<file>".to_owned()
    } else {
        out
    }
}

/// `services.web.checks[1].timeout`, not serde_ignored's `services.web.?.checks.1.timeout`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key: k } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key(k)
            } else {
                format!("{parent}.{}", key(k))
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}
