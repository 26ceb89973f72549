//! The agent's TOML configuration: a raw, serde-shaped document ([`raw`]), validated
//! (`check`, `probe`) into typed values ([`typed`]) with every problem collected (with its
//! path) instead of stopping at the first.
//!
//! Unknown keys are errors (the `deny_unknown_fields` contract), but they are collected, like
//! mistyped values, by [`parse`] so that `check-config` lists all of them at once.

use std::path::{Path, PathBuf};

use autoheal_common::config::ConfigErrors;
use autoheal_proto::v1;

mod check;
pub mod parse;
mod probe;
pub mod raw;
pub mod typed;

pub use probe::{parse_host_port, parse_http_url, parse_status_range};
pub use raw::*;
pub use typed::*;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} has {} error(s):\n{errors}", errors.errors.len())]
    Invalid { path: PathBuf, errors: ConfigErrors },
}

impl Config {
    /// Reads and validates a config file; relative paths resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        Self::parse_bytes(&bytes, &base).map_err(|errors| LoadError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    /// Parses and validates a config file's bytes (see [`Config::parse`]).
    pub fn parse_bytes(bytes: &[u8], base: &Path) -> Result<Self, ConfigErrors> {
        Self::parse(parse::text(bytes)?, base)
    }

    /// Parses and validates a config document: every problem is listed (each with its path, at
    /// most [`parse::MAX_ERRORS`] of them), not only the first.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        // The document's shape first (mistyped values, unknown keys), then, since those don't
        // stop validation, every typed problem too: one run of check-config shows everything.
        let (raw, mut errors) = parse::raw(text);
        let Some(raw) = raw else {
            return Err(parse::bounded(errors));
        };
        match Self::from_raw(raw, base) {
            Ok(config) => errors.finish(config),
            Err(more) => {
                errors.errors.extend(more.errors);
                Err(errors)
            }
        }
        .map_err(parse::bounded)
    }

    /// Validates a raw document; relative paths resolve against `base`.
    pub fn from_raw(raw: RawConfig, base: &Path) -> Result<Self, ConfigErrors> {
        check::config(raw, base)
    }

    /// What the Hello declares.
    pub fn service_specs(&self) -> Vec<v1::ServiceSpec> {
        self.services
            .iter()
            .map(|s| v1::ServiceSpec {
                name: s.name.clone(),
                unit: match &s.action {
                    Action::Unit(u) => u.clone(),
                    _ => String::new(),
                },
                depends_on: s.depends_on.clone(),
                checks: s
                    .checks
                    .iter()
                    .map(|c| v1::CheckSpec {
                        name: c.name.clone(),
                        kind: c.probe.kind().to_owned(),
                        dependency: c.dependency.clone().unwrap_or_default(),
                        interval: prost_types::Duration::try_from(c.interval).ok(),
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
