//! Tests of the whole config: a good file typed, and every kind of problem listed with its path.

use std::{net::SocketAddr, path::Path, time::Duration};

use super::*;

fn errors_of(text: &str) -> Vec<String> {
    match Config::parse(text, Path::new("/etc/autoheal")) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect(),
    }
}

const GOOD: &str = r#"
    [coordinator]
    endpoints = ["127.0.0.1:7443"]
    [tls]
    ca = "pki/ca.pem"
    cert = "pki/cert.pem"
    key = "pki/key.pem"
    [identity]
    instance_id = "i-1"
    availability_zone = "local-1a"
    [services.db]
    run = ["sleep", "1000"]
    [services.web]
    run = ["python3", "-m", "http.server"]
    depends_on = ["db"]
    [services.web.restart]
    max_attempts = 2
    [[services.web.checks]]
    kind = "http"
    url = "http://127.0.0.1:8080/healthz"
    interval = "2s"
    timeout = "500ms"
    [[services.web.checks]]
    name = "pg"
    kind = "tcp"
    address = "127.0.0.1:5432"
    dependency = "postgres-main"
"#;

#[test]
fn good_config_parses_with_relative_paths_resolved() {
    let c = Config::parse(GOOD, Path::new("/etc/autoheal")).expect("valid");
    let coord = c.coordinator.expect("coordinator");
    assert_eq!(coord.tls.ca, Path::new("/etc/autoheal/pki/ca.pem"));
    assert_eq!(coord.event_buffer.get(), 1024);
    assert_eq!(c.services.len(), 2);
    let web = &c.services[1];
    assert_eq!(web.name, "web");
    assert_eq!(web.policy.max_attempts, 2);
    assert_eq!(web.checks[0].name, "http");
    assert_eq!(web.checks[0].timeout, Duration::from_millis(500));
    assert_eq!(web.checks[1].dependency.as_deref(), Some("postgres-main"));
    assert!(matches!(&web.action, Action::Run { dir, .. } if dir == Path::new("/etc/autoheal")));
    assert_eq!(
        c.identity,
        IdentitySource::Static {
            instance_id: "i-1".into(),
            availability_zone: "local-1a".into()
        }
    );
}

#[test]
fn every_error_is_listed_with_its_path() {
    let errs = errors_of(
        r#"
        [coordinator]
        endpoints = ["nope"]
        event_buffer = 0
        [identity]
        instance_id = "i-1"
        [services.web]
        run = ["x"]
        unit = "web.service"
        depends_on = ["ghost"]
        bogus = 1
        [[services.web.checks]]
        kind = "http"
        url = "https://x/"
        [[services.web.checks]]
        kind = "tcp"
        address = "127.0.0.1:1"
        interval = "1s"
        timeout = "2s"
        [[services.web.checks]]
        kind = "telepathy"
        [[services.web.checks]]
        kind = "exec"
        url = "http://a/"
        failure_threshold = 0
        interval = "soon"
    "#,
    );
    let expected = [
        "coordinator.endpoints[0]: ",
        "coordinator.event_buffer: 0 is out of range",
        "tls: required with [coordinator]",
        "identity.availability_zone: required",
        "services.web: run and unit are exclusive",
        "services.web.bogus: unknown key",
        "services.web.depends_on[0]: no service named \"ghost\"",
        "services.web.checks[0].url: \"https://x/\": https is not supported",
        "services.web.checks[1].timeout: must be shorter than interval",
        "services.web.checks[2].kind: unknown check kind \"telepathy\"",
        "services.web.checks[3].url: not used by exec checks",
        "services.web.checks[3].command: required for exec checks",
        "services.web.checks[3].failure_threshold: 0 is out of range",
        "services.web.checks[3].interval: \"soon\" is not a duration",
    ];
    let unknown = errors_of(
        "[services.web]\nbogus = 1\nrun = [\"x\"]\n[[services.web.checks]]\nkind=\"tcp\"\nadress=\"x\"\n",
    );
    assert_eq!(
        unknown,
        [
            "services.web.bogus: unknown key (check the spelling against the configuration reference)",
            "services.web.checks[0].adress: unknown key (check the spelling against the configuration reference)",
            "services.web.checks[0].address: required for tcp checks: host:port, e.g. \"127.0.0.1:5432\"",
        ]
    );
    for want in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn dependency_cycles_are_reported_once() {
    let errs = errors_of(
        r#"
        [services.a]
        run = ["x"]
        depends_on = ["b"]
        [services.b]
        run = ["x"]
        depends_on = ["a"]
        [services.c]
        run = ["x"]
        depends_on = ["c"]
    "#,
    );
    assert_eq!(
        errs,
        [
            "services.c.depends_on[0]: a service cannot depend on itself",
            "services.a.depends_on: dependency cycle: a -> b -> a",
        ]
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let errs = errors_of("[services.web\nrun = 1\n");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("line 1") || errs[0].starts_with("<toml>"),
        "{errs:?}"
    );
}

#[test]
fn imds_is_the_default_identity() {
    let c = Config::parse("", Path::new("/")).expect("empty config is valid");
    assert_eq!(
        c.identity,
        IdentitySource::Imds {
            endpoint: DEFAULT_IMDS.into(),
            timeout: Duration::from_secs(1)
        }
    );
    assert_eq!(c.status_socket, Path::new(DEFAULT_SOCKET));
    assert_eq!(c.metrics_listen, None, "metrics are opted into");
}

#[test]
fn metrics_listen_is_an_address() {
    let c =
        Config::parse("[metrics]\nlisten = \"127.0.0.1:9465\"\n", Path::new("/")).expect("valid");
    assert_eq!(
        c.metrics_listen,
        Some(SocketAddr::from(([127, 0, 0, 1], 9465)))
    );
    for bad in ["[metrics]\nlisten = \"localhost\"\n", "[metrics]\n"] {
        let errors = Config::parse(bad, Path::new("/")).expect_err(bad);
        assert_eq!(errors.errors[0].path, "metrics.listen", "{bad}: {errors}");
    }
}
