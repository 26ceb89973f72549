//! The agent's TOML configuration: a raw, serde-shaped document ([`raw`]), validated
//! (`check`, `probe`) into typed values ([`typed`]) with every problem collected (with its
//! path) instead of stopping at the first.
//!
//! Unknown keys are errors (the `deny_unknown_fields` contract), but they are collected by
//! [`autoheal_common::config::parse_toml`] so that `check-config` lists all of them at once.

use std::path::{Path, PathBuf};

use autoheal_common::config::{ConfigErrors, parse_toml};
use autoheal_proto::v1;

mod check;
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
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_owned)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        Self::parse(&text, &base).map_err(|errors| LoadError::Invalid {
            path: path.to_owned(),
            errors,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, ConfigErrors> {
        // Unknown keys first (parse_toml lists them all), then, since unknown keys don't stop
        // typing, every typed problem too: one run of check-config shows everything.
        let (raw, mut errors) = match parse_toml::<RawConfig>(text) {
            Ok(raw) => (raw, ConfigErrors::default()),
            Err(errors) => match toml::from_str::<RawConfig>(text) {
                Ok(raw) => (raw, errors),
                // Syntax or type error: parse_toml already said where.
                Err(_) => return Err(errors),
            },
        };
        match Self::from_raw(raw, base) {
            Ok(config) => errors.finish(config),
            Err(more) => {
                errors.errors.extend(more.errors);
                Err(errors)
            }
        }
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
