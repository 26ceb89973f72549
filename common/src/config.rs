//! Config vocabulary shared by the agent's and the coordinator's TOML files: durations, the
//! `[tls]` section, and an error list that collects every problem with its path instead of
//! stopping at the first.

use std::{fmt, path::Path, time::Duration};

use serde::Deserialize;

use crate::tls::TlsFiles;

/// Every problem found in a config file, each with the path of the offending value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub errors: Vec<ConfigError>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// e.g. `services.web.checks[1].timeout`
    pub path: String,
    pub message: String,
}

impl ConfigErrors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(value)` if nothing was recorded, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, Self> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Parses a required duration, recording an error (and returning `None`) if it's bad.
    pub fn duration(&mut self, path: &str, raw: Option<&str>, default: Duration) -> Duration {
        match raw {
            None => default,
            Some(raw) => match parse_duration(raw) {
                Ok(d) => d,
                Err(message) => {
                    self.push(path, message);
                    default
                }
            },
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Parses a TOML document into `T`, collecting unknown keys (all of them, with their paths) as
/// errors instead of failing on the first. Syntax and type errors come back as one error with
/// the line toml reports.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigErrors> {
    let (value, errors) = parse_toml_collecting(text)?;
    errors.finish(value)
}

/// Like [`parse_toml`], but hands back the unknown-key errors beside the value, so the caller
/// can add its own validation errors and report everything at once.
pub fn parse_toml_collecting<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<(T, ConfigErrors), ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        let mut errors = ConfigErrors::default();
        errors.push("<toml>", e.to_string().trim_end().to_owned());
        errors
    })?;
    let mut unknown = Vec::new();
    let value: Result<T, _> = serde_ignored::deserialize(deserializer, |path| {
        unknown.push(format_path(&path));
    });
    for path in unknown {
        errors.push(
            path,
            "unknown key (check the spelling against the configuration reference)",
        );
    }
    match value {
        Ok(value) => Ok((value, errors)),
        Err(e) => {
            let message = e.message().to_owned();
            let location = e
                .span()
                .map(|span| line_of(text, span.start))
                .map(|line| format!("line {line}"))
                .unwrap_or_else(|| "<toml>".to_owned());
            errors.push(location, message);
            Err(errors)
        }
    }
}

/// `services.web.checks[1].timeout`, not serde_ignored's `services.web.?.checks.1.timeout`.
fn format_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_path(parent)),
        Path::Map { parent, key } => {
            let parent = format_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => format_path(parent),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// `250ms`, `5s`, `2m`, `1h`, or a combination like `1m30s`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let bad = || format!("{raw:?} is not a duration: use e.g. \"250ms\", \"5s\", \"2m\", \"1h\"");
    let mut total = Duration::ZERO;
    let mut rest = raw.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = total.saturating_add(unit);
    }
    Ok(total)
}

/// The `[tls]` section both binaries share.
#[derive(Debug, Deserialize, Clone, Default)]
pub struct RawTls {
    pub ca: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl RawTls {
    /// Relative paths resolve against `base`, the config file's folder.
    pub fn resolve(&self, base: &Path, prefix: &str, errors: &mut ConfigErrors) -> TlsFiles {
        let mut get = |name: &str, value: &Option<String>| match value {
            Some(v) if !v.trim().is_empty() => base.join(v),
            _ => {
                errors.push(
                    format!("{prefix}.{name}"),
                    "required: path to a PEM file (relative to this config file)",
                );
                base.join(name)
            }
        };
        TlsFiles {
            ca: get("ca", &self.ca),
            cert: get("cert", &self.cert),
            key: get("key", &self.key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "5", "s", "5 s", "-1s", "5sec", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        a: Option<u32>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        b: Option<u32>,
    }

    #[test]
    fn every_unknown_key_is_listed_with_its_path() {
        let errors = parse_toml::<Sample>("a = 1\nzz = 2\n[inner]\nb = 1\ncc = 3\n")
            .expect_err("unknown keys");
        let mut paths: Vec<_> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["inner.cc", "zz"]);
    }

    #[test]
    fn type_errors_name_the_line() {
        let errors = parse_toml::<Sample>("a = \"x\"\n").expect_err("type error");
        assert_eq!(errors.errors.len(), 1);
        assert_eq!(errors.errors[0].path, "line 1");
    }
}

/// How much of a value from outside (a config file, a client's message) an error echoes.
pub const ECHO_CHARS: usize = 64;

/// At most [`ECHO_CHARS`] characters of `input`, with `…` when cut: errors name what was wrong
/// without echoing unbounded input back.
pub fn prefix(input: &str) -> String {
    match input.char_indices().nth(ECHO_CHARS) {
        None => input.to_owned(),
        Some((end, _)) => format!("{}…", &input[..end]),
    }
}

#[cfg(test)]
mod prefix_tests {
    #[test]
    fn long_input_is_cut_short_input_kept() {
        assert_eq!(super::prefix("short"), "short");
        let long = "é".repeat(10_000);
        let cut = super::prefix(&long);
        assert_eq!(cut.chars().count(), super::ECHO_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
