//! Validation of one `[[services.NAME.checks]]` entry into a [`CheckConfig`] (its kind, its
//! timing, the fields its kind needs and none it doesn't), and the parsers for the values checks
//! take: `host:port`, `http://` URLs and status ranges.

use std::{net::SocketAddr, path::Path, time::Duration};

use autoheal_common::config::ConfigErrors;
use rustls_pki_types::pem::PemObject;

use super::{
    check::{argv_ok, duration, int, positive, segment},
    parse::shown,
    raw::RawCheck,
    typed::{CheckConfig, CheckKind, HttpProbe, HttpsTrust, Probe, ProcessMatch},
};

fn kinds() -> String {
    CheckKind::ALL.map(CheckKind::as_str).join(", ")
}

fn names(kinds: &[CheckKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn health_check(
    p: &str,
    raw: &RawCheck,
    base: &Path,
    errors: &mut ConfigErrors,
) -> Option<CheckConfig> {
    let Some(kind_name) = raw.kind.as_deref() else {
        errors.push(format!("{p}.kind"), format!("required: one of {}", kinds()));
        return None;
    };
    let Some(kind) = CheckKind::from_name(kind_name) else {
        errors.push(
            format!("{p}.kind"),
            format!(
                "unknown check kind {}: use one of {}",
                shown(kind_name),
                kinds()
            ),
        );
        return None;
    };
    let name = raw.name.clone().unwrap_or_else(|| kind.as_str().to_owned());
    if let Err(e) = segment("check name", &name) {
        errors.push(format!("{p}.name"), e);
    }
    let interval = positive(
        errors,
        &format!("{p}.interval"),
        raw.interval.as_deref(),
        Duration::from_secs(5),
    );
    let default_timeout = Duration::from_secs(1).min(interval / 2);
    let timeout = positive(
        errors,
        &format!("{p}.timeout"),
        raw.timeout.as_deref(),
        default_timeout,
    );
    if raw.timeout.is_some() && timeout >= interval {
        errors.push(format!("{p}.timeout"), "must be shorter than interval");
    }
    let initial_delay = duration(
        errors,
        &format!("{p}.initial_delay"),
        raw.initial_delay.as_deref(),
        Duration::ZERO,
    );
    let startup_grace = duration(
        errors,
        &format!("{p}.startup_grace"),
        raw.startup_grace.as_deref(),
        Duration::ZERO,
    );
    let success_threshold = int(
        errors,
        &format!("{p}.success_threshold"),
        raw.success_threshold,
        1,
        1,
        100,
    ) as u32;
    let failure_threshold = int(
        errors,
        &format!("{p}.failure_threshold"),
        raw.failure_threshold,
        3,
        1,
        100,
    ) as u32;
    if let Some(Err(e)) = raw
        .dependency
        .as_ref()
        .map(|dep| segment("dependency name", dep))
    {
        errors.push(format!("{p}.dependency"), e);
    }

    // Which kind-specific fields are set, so a field meant for another kind is reported.
    let fields: [(&str, bool, &[CheckKind]); 15] = [
        ("url", raw.url.is_some(), &[CheckKind::Http]),
        ("method", raw.method.is_some(), &[CheckKind::Http]),
        (
            "expect_status",
            raw.expect_status.is_some(),
            &[CheckKind::Http],
        ),
        (
            "body_contains",
            raw.body_contains.is_some(),
            &[CheckKind::Http],
        ),
        (
            "address",
            raw.address.is_some(),
            &[CheckKind::Tcp, CheckKind::Grpc],
        ),
        (
            "grpc_service",
            raw.grpc_service.is_some(),
            &[CheckKind::Grpc],
        ),
        ("command", raw.command.is_some(), &[CheckKind::Exec]),
        ("output_cap", raw.output_cap.is_some(), &[CheckKind::Exec]),
        (
            "process_name",
            raw.process_name.is_some(),
            &[CheckKind::Process],
        ),
        ("pidfile", raw.pidfile.is_some(), &[CheckKind::Process]),
        ("ca", raw.ca.is_some(), &[CheckKind::Http]),
        ("unit", raw.unit.is_some(), &[CheckKind::Systemd]),
        ("path", raw.path.is_some(), &[CheckKind::Disk]),
        (
            "max_used_percent",
            raw.max_used_percent.is_some(),
            &[CheckKind::Disk, CheckKind::Memory],
        ),
        (
            "max_load_per_cpu",
            raw.max_load_per_cpu.is_some(),
            &[CheckKind::Load],
        ),
    ];
    for (field, set, kinds) in fields {
        if set && !kinds.contains(&kind) {
            errors.push(
                format!("{p}.{field}"),
                format!("not used by {kind} checks (only by {})", names(kinds)),
            );
        }
    }
    let required = |errors: &mut ConfigErrors, field: &str, hint: &str| {
        errors.push(
            format!("{p}.{field}"),
            format!("required for {kind} checks: {hint}"),
        );
    };

    let probe = match kind {
        CheckKind::Http => {
            let (host, port, path) = match raw.url.as_deref() {
                None => {
                    required(errors, "url", "e.g. \"http://127.0.0.1:8080/healthz\"");
                    (String::new(), 0, "/".to_owned())
                }
                Some(url) => parse_http_url(url).unwrap_or_else(|e| {
                    errors.push(format!("{p}.url"), e);
                    (String::new(), 0, "/".to_owned())
                }),
            };
            let https = raw
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"));
            if raw.ca.is_some() && !https {
                errors.push(format!("{p}.ca"), "only used with an https:// url");
            }
            let tls = https
                .then(|| {
                    let ca = raw.ca.as_ref().map(|c| base.join(c));
                    https_trust(ca.as_deref())
                        .map(|config| HttpsTrust {
                            ca,
                            config: std::sync::Arc::new(config),
                        })
                        .map_err(|e| {
                            let key = if raw.ca.is_some() { "ca" } else { "url" };
                            errors.push(format!("{p}.{key}"), e);
                        })
                        .ok()
                })
                .flatten();
            let method = raw.method.clone().unwrap_or_else(|| "GET".to_owned());
            if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push(
                    format!("{p}.method"),
                    format!(
                        "{} is not an HTTP method: use e.g. \"GET\" or \"HEAD\"",
                        shown(&method)
                    ),
                );
            }
            let status = match raw.expect_status.as_deref() {
                None => (200, 399),
                Some(s) => parse_status_range(s).unwrap_or_else(|e| {
                    errors.push(format!("{p}.expect_status"), e);
                    (200, 399)
                }),
            };
            Probe::Http(HttpProbe {
                host,
                port,
                path,
                method,
                status,
                body_contains: raw.body_contains.clone(),
                tls,
            })
        }
        CheckKind::Tcp | CheckKind::Grpc => {
            let address = raw.address.clone().unwrap_or_default();
            if raw.address.is_none() {
                required(errors, "address", "host:port, e.g. \"127.0.0.1:5432\"");
            } else if let Err(e) = parse_host_port(&address) {
                errors.push(format!("{p}.address"), e);
            }
            if kind == CheckKind::Tcp {
                Probe::Tcp { address }
            } else {
                Probe::Grpc {
                    address,
                    service: raw.grpc_service.clone().unwrap_or_default(),
                }
            }
        }
        CheckKind::Exec => {
            let argv = raw.command.clone().unwrap_or_default();
            if raw.command.is_none() {
                required(
                    errors,
                    "command",
                    "argv, e.g. [\"/usr/local/bin/check\", \"--quick\"]",
                );
            } else {
                argv_ok(errors, &format!("{p}.command"), &argv);
            }
            let output_cap = int(
                errors,
                &format!("{p}.output_cap"),
                raw.output_cap,
                1024,
                1,
                65536,
            );
            Probe::Exec {
                argv,
                dir: base.to_owned(),
                output_cap: output_cap as usize,
            }
        }
        CheckKind::Process => match (&raw.process_name, &raw.pidfile) {
            (Some(n), None) => {
                if n.is_empty() {
                    errors.push(format!("{p}.process_name"), "must not be empty");
                }
                Probe::Process(ProcessMatch::Name(n.clone()))
            }
            (None, Some(f)) => Probe::Process(ProcessMatch::Pidfile(base.join(f))),
            (Some(_), Some(_)) => {
                errors.push(p, "set process_name or pidfile, not both");
                Probe::Process(ProcessMatch::Name(String::new()))
            }
            (None, None) => {
                required(
                    errors,
                    "process_name",
                    "a process name (or set pidfile instead)",
                );
                Probe::Process(ProcessMatch::Name(String::new()))
            }
        },
        CheckKind::Systemd => {
            let unit = raw.unit.clone().unwrap_or_default();
            if unit.trim().is_empty() {
                required(errors, "unit", "a unit name, e.g. \"nginx.service\"");
            }
            Probe::Systemd { unit }
        }
        CheckKind::Disk => Probe::Disk {
            path: base.join(raw.path.as_deref().unwrap_or("/")),
            max_used_percent: percent(errors, p, raw.max_used_percent, 90.0),
        },
        CheckKind::Memory => Probe::Memory {
            max_used_percent: percent(errors, p, raw.max_used_percent, 95.0),
        },
        CheckKind::Load => {
            let max = raw.max_load_per_cpu.unwrap_or(4.0);
            if !(max > 0.0 && max.is_finite()) {
                errors.push(format!("{p}.max_load_per_cpu"), "must be a positive number");
            }
            Probe::Load { max_per_cpu: max }
        }
    };
    Some(CheckConfig {
        name,
        interval,
        timeout,
        initial_delay,
        startup_grace,
        success_threshold,
        failure_threshold,
        dependency: raw.dependency.clone(),
        probe,
    })
}

fn percent(errors: &mut ConfigErrors, p: &str, raw: Option<f64>, default: f64) -> f64 {
    let v = raw.unwrap_or(default);
    if !(v > 0.0 && v <= 100.0) {
        errors.push(
            format!("{p}.max_used_percent"),
            format!("{v} is not a percentage: use a number in (0, 100]"),
        );
    }
    v
}

/// `host:port`; the host may be a name or an IP (`[::1]:80` for IPv6).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(format!("{}: port 0 is not a port to connect to", shown(s)));
        }
        return Ok((addr.ip().to_string(), addr.port()));
    }
    let bad = || format!("{} is not host:port, e.g. \"127.0.0.1:8080\"", shown(s));
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', ' ']) {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The rustls client config of an https check: `ca`'s certificates, or the system's roots.
fn https_trust(ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert =
                    cert.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(match ca {
            Some(p) => format!("{}: no certificates in it", p.display()),
            None => "https: no system root certificates found; set ca = \"ca.pem\"".to_owned(),
        });
    }
    rustls::ClientConfig::builder_with_provider(autoheal_common::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// `http(s)://host[:port][/path]` → host, port (80 or 443 by default), path.
pub fn parse_http_url(url: &str) -> Result<(String, u16, String), String> {
    let (rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        (rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (rest, 443)
    } else {
        return Err(format!(
            "{} is not a URL: use e.g. \"http://127.0.0.1:8080/healthz\"",
            shown(url)
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let hostport = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let (host, port) =
        parse_host_port(&hostport).map_err(|_| format!("{}: bad host or port", shown(url)))?;
    Ok((host, port, path.to_owned()))
}

/// `200`, `200-399` or `2xx`.
pub fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "{} is not a status range: use e.g. \"200\", \"200-399\" or \"2xx\"",
            shown(s)
        )
    };
    let (lo, hi) = if let Some(class) = s.strip_suffix("xx") {
        let c: u16 = class.parse().map_err(|_| bad())?;
        (c * 100, c * 100 + 99)
    } else if let Some((a, b)) = s.split_once('-') {
        (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        )
    } else {
        let v = s.trim().parse().map_err(|_| bad())?;
        (v, v)
    };
    if !(100..=599).contains(&lo) || !(100..=599).contains(&hi) || lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_status_ranges() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/healthz?x=1"),
            Ok(("127.0.0.1".into(), 8080, "/healthz?x=1".into()))
        );
        assert_eq!(
            parse_http_url("http://localhost"),
            Ok(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_http_url("http://[::1]:81/"),
            Ok(("::1".into(), 81, "/".into()))
        );
        assert!(parse_http_url("ftp://x").is_err());
        assert_eq!(parse_status_range("2xx"), Ok((200, 299)));
        assert_eq!(parse_status_range("200-204"), Ok((200, 204)));
        assert_eq!(parse_status_range("204"), Ok((204, 204)));
        for bad in ["99", "300-200", "abc", "7xx"] {
            assert!(parse_status_range(bad).is_err(), "{bad}");
        }
    }
}
