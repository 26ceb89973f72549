//! Validation: a [`RawConfig`] into a typed [`Config`], every problem collected with its path
//! (`services.web.restart.window: must be longer than zero`) so one run of `check-config` shows
//! them all. The checks of a service are validated by [`super::probe`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::Duration,
};

use autoheal_common::{
    config::{ConfigErrors, RawTls, parse_duration},
    tls::split_endpoint,
};

use super::{
    parse::shown,
    probe::{health_check, parse_host_port},
    raw::{RawConfig, RawCoordinator, RawIdentity, RawRestart, RawService},
    typed::{
        Action, CheckConfig, Config, CoordinatorConfig, DEFAULT_IMDS, DEFAULT_SOCKET,
        IdentitySource, RestartPolicyConfig, ServiceConfig,
    },
};

pub(super) fn config(raw: RawConfig, base: &Path) -> Result<Config, ConfigErrors> {
    let mut errors = ConfigErrors::default();

    let coordinator = raw
        .coordinator
        .as_ref()
        .map(|c| coordinator(c, raw.tls.as_ref(), base, &mut errors));
    if raw.coordinator.is_none() && raw.tls.is_some() {
        errors.push(
            "tls",
            "set but unused: add a [coordinator] section with endpoints, or remove [tls]",
        );
    }

    let identity = identity(raw.identity.unwrap_or_default(), &mut errors);

    let status_socket = raw
        .status
        .and_then(|s| s.socket)
        .map(|s| base.join(s))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));

    let metrics_listen = raw.metrics.and_then(|m| match m.listen.as_deref() {
        None => {
            errors.push(
                "metrics.listen",
                "required in [metrics]: e.g. \"127.0.0.1:9465\" (or remove [metrics])",
            );
            None
        }
        Some(l) => l.parse::<SocketAddr>().map_err(|_| {
            errors.push(
                "metrics.listen",
                format!("{} is not an address: use e.g. \"127.0.0.1:9465\" (plain HTTP: keep it on loopback or a private interface)", shown(l)),
            );
        }).ok(),
    });

    let mut services = Vec::new();
    for (name, raw) in &raw.services {
        services.push(service(name, raw, base, &mut errors));
    }
    dependency_graph(&services, &mut errors);

    errors.finish(Config {
        base: base.to_owned(),
        coordinator,
        identity,
        status_socket,
        metrics_listen,
        services,
    })
}

fn coordinator(
    raw: &RawCoordinator,
    tls: Option<&RawTls>,
    base: &Path,
    errors: &mut ConfigErrors,
) -> CoordinatorConfig {
    let endpoints = raw.endpoints.clone().unwrap_or_default();
    if endpoints.is_empty() {
        errors.push(
            "coordinator.endpoints",
            "required: at least one host:port, e.g. [\"coordinator.example.com:7443\"]",
        );
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        let path = format!("coordinator.endpoints[{i}]");
        match split_endpoint(endpoint) {
            Err(e) => errors.push(path, e.to_string()),
            Ok((_, 0)) => errors.push(path, "port 0 is not a port to connect to"),
            Ok(_) => {}
        }
    }
    let tls = match tls {
        Some(tls) => tls.resolve(base, "tls", errors),
        None => {
            errors.push(
                "tls",
                "required with [coordinator]: set ca, cert and key (PEM files)",
            );
            RawTls::default().resolve(base, "tls", &mut ConfigErrors::default())
        }
    };
    // Zero would never connect.
    let connect_timeout = positive(
        errors,
        "coordinator.connect_timeout",
        raw.connect_timeout.as_deref(),
        Duration::from_secs(5),
    );
    let heartbeat_interval = positive(
        errors,
        "coordinator.heartbeat_interval",
        raw.heartbeat_interval.as_deref(),
        Duration::from_secs(5),
    );
    let reconnect_initial = positive(
        errors,
        "coordinator.reconnect_initial",
        raw.reconnect_initial.as_deref(),
        Duration::from_millis(500),
    );
    let reconnect_max = positive(
        errors,
        "coordinator.reconnect_max",
        raw.reconnect_max.as_deref(),
        Duration::from_secs(30),
    );
    if reconnect_initial > reconnect_max {
        errors.push(
            "coordinator.reconnect_initial",
            "must not be longer than reconnect_max",
        );
    }
    let event_buffer = int(
        errors,
        "coordinator.event_buffer",
        raw.event_buffer,
        1024,
        1,
        1_000_000,
    );
    if let Some(endpoint) = &raw.enroll_endpoint {
        match split_endpoint(endpoint) {
            Err(e) => errors.push("coordinator.enroll_endpoint", e.to_string()),
            Ok((_, 0)) => errors.push(
                "coordinator.enroll_endpoint",
                "port 0 is not a port to connect to",
            ),
            Ok(_) => {}
        }
    }
    CoordinatorConfig {
        endpoints,
        tls,
        connect_timeout,
        heartbeat_interval,
        event_buffer: NonZeroUsize::new(event_buffer as usize).unwrap_or(NonZeroUsize::MIN),
        reconnect_initial,
        reconnect_max,
        enroll_endpoint: raw.enroll_endpoint.clone(),
    }
}

fn identity(raw: RawIdentity, errors: &mut ConfigErrors) -> IdentitySource {
    let imds_timeout = positive(
        errors,
        "identity.imds_timeout",
        raw.imds_timeout.as_deref(),
        Duration::from_secs(1),
    );
    match (raw.instance_id, raw.availability_zone) {
        (Some(instance_id), Some(availability_zone)) => {
            if let Err(e) = segment("instance id", &instance_id) {
                errors.push("identity.instance_id", e);
            }
            if availability_zone.trim().is_empty() {
                errors.push("identity.availability_zone", "must not be empty");
            }
            if raw.imds_endpoint.is_some() {
                errors.push(
                    "identity.imds_endpoint",
                    "unused when instance_id and availability_zone are set",
                );
            }
            IdentitySource::Static {
                instance_id,
                availability_zone,
            }
        }
        (Some(_), None) => {
            errors.push(
                "identity.availability_zone",
                "required with identity.instance_id (set both off EC2, or neither to use IMDSv2)",
            );
            IdentitySource::Imds {
                endpoint: DEFAULT_IMDS.to_owned(),
                timeout: imds_timeout,
            }
        }
        (None, Some(_)) => {
            errors.push(
                "identity.instance_id",
                "required with identity.availability_zone (set both off EC2, or neither to use IMDSv2)",
            );
            IdentitySource::Imds {
                endpoint: DEFAULT_IMDS.to_owned(),
                timeout: imds_timeout,
            }
        }
        (None, None) => {
            let endpoint = raw.imds_endpoint.unwrap_or_else(|| DEFAULT_IMDS.to_owned());
            if let Err(e) = parse_host_port(&endpoint) {
                errors.push("identity.imds_endpoint", e);
            }
            IdentitySource::Imds {
                endpoint,
                timeout: imds_timeout,
            }
        }
    }
}

fn service(name: &str, raw: &RawService, base: &Path, errors: &mut ConfigErrors) -> ServiceConfig {
    let p = format!("services.{name}");
    if let Err(e) = segment("service name", name) {
        errors.push(&p, e);
    }
    let dir = raw
        .working_dir
        .as_ref()
        .map(|d| base.join(d))
        .unwrap_or_else(|| base.to_owned());
    let stop_timeout = positive(
        errors,
        &format!("{p}.stop_timeout"),
        raw.stop_timeout.as_deref(),
        Duration::from_secs(10),
    );
    let set: Vec<&str> = [
        raw.run.as_ref().map(|_| "run"),
        raw.unit.as_ref().map(|_| "unit"),
        raw.restart_command.as_ref().map(|_| "restart_command"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if set.len() > 1 {
        errors.push(
            &p,
            format!(
                "{} are exclusive: a service has one restart action",
                set.join(" and ")
            ),
        );
    }
    let action = if let Some(argv) = &raw.run {
        argv_ok(errors, &format!("{p}.run"), argv);
        Action::Run {
            argv: argv.clone(),
            dir,
            stop_timeout,
        }
    } else if let Some(unit) = &raw.unit {
        if unit.trim().is_empty() || unit.contains(char::is_whitespace) {
            errors.push(
                format!("{p}.unit"),
                "must be a systemd unit name, e.g. \"nginx.service\"",
            );
        }
        Action::Unit(unit.clone())
    } else if let Some(argv) = &raw.restart_command {
        argv_ok(errors, &format!("{p}.restart_command"), argv);
        Action::Command {
            argv: argv.clone(),
            dir,
            pidfile: raw.pidfile.as_ref().map(|f| base.join(f)),
        }
    } else {
        Action::None
    };
    if raw.pidfile.is_some() && raw.restart_command.is_none() {
        errors.push(
            format!("{p}.pidfile"),
            "only used with restart_command (run and unit services are watched directly)",
        );
    }
    if raw.stop_timeout.is_some() && raw.run.is_none() {
        errors.push(format!("{p}.stop_timeout"), "only used with run");
    }

    let policy = restart_policy(&p, raw.restart.as_ref(), errors);

    let depends_on = raw.depends_on.clone().unwrap_or_default();
    let mut seen = BTreeSet::new();
    let mut checks: Vec<CheckConfig> = Vec::new();
    for (i, c) in raw.checks.iter().enumerate() {
        let cp = format!("{p}.checks[{i}]");
        let check = health_check(&cp, c, base, errors);
        if let Some(check) = check {
            if !seen.insert(check.name.clone()) {
                errors.push(
                    format!("{cp}.name"),
                    format!(
                            "{} is used by another check of this service: give each check a unique name",
                        shown(&check.name)
                    ),
                );
            }
            checks.push(check);
        }
    }
    if raw.checks.is_empty() && !matches!(action, Action::Run { .. }) {
        errors.push(
            format!("{p}.checks"),
            "at least one check is required (only a `run` service is watched without checks)",
        );
    }
    ServiceConfig {
        name: name.to_owned(),
        action,
        depends_on,
        policy,
        checks,
    }
}

fn restart_policy(
    p: &str,
    raw: Option<&RawRestart>,
    errors: &mut ConfigErrors,
) -> RestartPolicyConfig {
    let d = RestartPolicyConfig::default();
    let Some(raw) = raw else { return d };
    let p = format!("{p}.restart");
    let max_attempts = int(
        errors,
        &format!("{p}.max_attempts"),
        raw.max_attempts,
        i64::from(d.max_attempts),
        1,
        1000,
    ) as u32;
    let window = positive(
        errors,
        &format!("{p}.window"),
        raw.window.as_deref(),
        d.window,
    );
    let backoff_initial = duration(
        errors,
        &format!("{p}.backoff_initial"),
        raw.backoff_initial.as_deref(),
        d.backoff_initial,
    );
    let backoff_max = duration(
        errors,
        &format!("{p}.backoff_max"),
        raw.backoff_max.as_deref(),
        d.backoff_max,
    );
    if backoff_initial > backoff_max {
        errors.push(
            format!("{p}.backoff_initial"),
            "must not be longer than backoff_max",
        );
    }
    let verify_timeout = positive(
        errors,
        &format!("{p}.verify_timeout"),
        raw.verify_timeout.as_deref(),
        d.verify_timeout,
    );
    let action_timeout = positive(
        errors,
        &format!("{p}.action_timeout"),
        raw.action_timeout.as_deref(),
        d.action_timeout,
    );
    let flap_transitions = int(
        errors,
        &format!("{p}.flap_transitions"),
        raw.flap_transitions,
        i64::from(d.flap_transitions),
        2,
        10_000,
    ) as u32;
    let flap_window = positive(
        errors,
        &format!("{p}.flap_window"),
        raw.flap_window.as_deref(),
        d.flap_window,
    );
    RestartPolicyConfig {
        max_attempts,
        window,
        backoff_initial,
        backoff_max,
        verify_timeout,
        action_timeout,
        flap_transitions,
        flap_window,
    }
}

fn dependency_graph(services: &[ServiceConfig], errors: &mut ConfigErrors) {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for s in services {
        for (i, d) in s.depends_on.iter().enumerate() {
            let path = format!("services.{}.depends_on[{i}]", s.name);
            if d == &s.name {
                errors.push(path, "a service cannot depend on itself");
            } else if !names.contains(d.as_str()) {
                errors.push(path, format!("no service named {} is configured", shown(d)));
            }
        }
    }
    // Cycles: depth-first search from each service.
    let deps: BTreeMap<&str, Vec<&str>> = services
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                s.depends_on.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    let mut reported = BTreeSet::new();
    for s in services {
        let mut stack = vec![(s.name.as_str(), vec![s.name.as_str()])];
        while let Some((at, trail)) = stack.pop() {
            for &next in deps.get(at).map(Vec::as_slice).unwrap_or_default() {
                if next == s.name && trail.len() > 1 {
                    let mut cycle = trail.clone();
                    cycle.sort_unstable();
                    if reported.insert(cycle) {
                        let mut shown = trail.clone();
                        shown.push(next);
                        errors.push(
                            format!("services.{}.depends_on", s.name),
                            format!("dependency cycle: {}", shown.join(" -> ")),
                        );
                    }
                } else if !trail.contains(&next) {
                    let mut t = trail.clone();
                    t.push(next);
                    stack.push((next, t));
                }
            }
        }
    }
}

pub(super) fn argv_ok(errors: &mut ConfigErrors, path: &str, argv: &[String]) {
    if argv.first().is_none_or(|a| a.trim().is_empty()) {
        errors.push(
            path,
            "must be a non-empty argv list, e.g. [\"/usr/bin/myservice\", \"--port\", \"8080\"]",
        );
    }
}

pub(super) fn positive(
    errors: &mut ConfigErrors,
    path: &str,
    raw: Option<&str>,
    default: Duration,
) -> Duration {
    let d = duration(errors, path, raw, default);
    if raw.is_some() && d.is_zero() {
        errors.push(path, "must be longer than zero");
        return default;
    }
    d
}

pub(super) fn int(
    errors: &mut ConfigErrors,
    path: &str,
    raw: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> i64 {
    match raw {
        None => default,
        Some(v) if (min..=max).contains(&v) => v,
        Some(v) => {
            errors.push(path, format!("{v} is out of range: use {min}..={max}"));
            default
        }
    }
}

/// A duration, or `default` when unset; a bad one is recorded (echoing a short prefix only).
pub(super) fn duration(
    errors: &mut ConfigErrors,
    path: &str,
    raw: Option<&str>,
    default: Duration,
) -> Duration {
    match raw.map(|r| (r, parse_duration(r))) {
        None => default,
        Some((_, Ok(d))) => d,
        Some((r, Err(_))) => {
            errors.push(
                path,
                format!(
                    "{} is not a duration: use e.g. \"250ms\", \"5s\", \"2m\", \"1h\"",
                    shown(r)
                ),
            );
            default
        }
    }
}

/// A name that becomes part of an identity (instance, service, check, dependency).
pub(super) fn segment(kind: &'static str, value: &str) -> Result<(), String> {
    autoheal_proto::identity::validate_segment(kind, value)
        .map_err(|e| e.to_string().replace(&format!("{value:?}"), &shown(value)))
}
