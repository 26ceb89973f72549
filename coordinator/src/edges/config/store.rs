//! The `[store]` section: the embedded file or the DynamoDB table, lease and event lifetimes.

use std::time::Duration;

use autoheal_common::config::ConfigErrors;
use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
pub(super) struct RawStore {
    backend: Option<String>,
    table: Option<String>,
    lease_ttl: Option<String>,
    lease_renew_interval: Option<String>,
    event_ttl: Option<String>,
    /// How many coordinators share this state: more than one needs a shared store.
    replicas: Option<u32>,
}

/// Where state lives and how leadership is held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreBackend {
    /// One file in `state_dir`: one coordinator.
    Embedded,
    /// A DynamoDB table shared by every replica (needs `[aws]`).
    Dynamo { table: String },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    pub lease_ttl: Duration,
    pub lease_renew_interval: Duration,
    pub event_ttl: Duration,
    /// How many coordinators the operator runs (1 unless said).
    pub replicas: u32,
}

pub(super) fn store_config(raw: RawStore, has_aws: bool, errors: &mut ConfigErrors) -> StoreConfig {
    let backend = match raw.backend.as_deref() {
        None | Some("embedded") => StoreBackend::Embedded,
        Some("dynamodb") => {
            if !has_aws {
                errors.push(
                    "store.backend",
                    "dynamodb needs an [aws] section (region, endpoint, credentials)",
                );
            }
            StoreBackend::Dynamo {
                table: raw
                    .table
                    .clone()
                    .unwrap_or_else(|| "autoheal-state".to_owned()),
            }
        }
        Some(other) => {
            errors.push(
                "store.backend",
                format!("{other:?}: use \"embedded\" or \"dynamodb\""),
            );
            StoreBackend::Embedded
        }
    };
    if raw.table.is_some() && backend == StoreBackend::Embedded {
        errors.push("store.table", "only used with backend = \"dynamodb\"");
    }
    let lease_ttl = errors.duration(
        "store.lease_ttl",
        raw.lease_ttl.as_deref(),
        Duration::from_secs(15),
    );
    let lease_renew_interval = errors.duration(
        "store.lease_renew_interval",
        raw.lease_renew_interval.as_deref(),
        lease_ttl / 4,
    );
    if lease_renew_interval * 3 >= lease_ttl {
        errors.push(
            "store.lease_renew_interval",
            "must be shorter than a third of store.lease_ttl, so two renewals can fail before the lease lapses",
        );
    }
    let event_ttl = errors.duration(
        "store.event_ttl",
        raw.event_ttl.as_deref(),
        Duration::from_secs(7 * 24 * 3600),
    );
    let replicas = raw.replicas.unwrap_or(1);
    if replicas == 0 {
        errors.push("store.replicas", "must be at least 1");
    } else if replicas > 1 && backend == StoreBackend::Embedded {
        errors.push(
            "store.replicas",
            format!("{replicas} replicas with the embedded store: each would keep its own file and win its own lease, so all {replicas} would lead and act; use backend = \"dynamodb\" (one shared table)"),
        );
    }
    StoreConfig {
        replicas,
        backend,
        lease_ttl,
        lease_renew_interval,
        event_ttl,
    }
}
