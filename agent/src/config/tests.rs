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
        url = "https://x:0/"
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
        "services.web.checks[0].url: \"https://x:0/\": bad host or port",
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

// Issue #19, point 4: config errors.

const WEB: &str = "[services.web]\nrun = [\"x\"]\n";

#[test]
fn mistyped_values_are_listed_with_their_paths_and_reading_goes_on() {
    let errs = errors_of(&format!(
        "{WEB}[[services.web.checks]]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = 5\ntimeout = \"x\"\nfailure_threshold = \"3\"\n"
    ));
    assert_eq!(
        errs,
        [
            "services.web.checks[0].failure_threshold: expected a whole number, got \"3\"",
            "services.web.checks[0].interval: expected a duration like \"5s\", got 5",
            "services.web.checks[0].timeout: \"x\" is not a duration: use e.g. \"250ms\", \"5s\", \"2m\", \"1h\"",
        ]
    );
}

#[test]
fn messages_speak_toml_not_rust_types() {
    for (text, path, message) in [
        (
            "[services]\nweb = 5\n",
            "services.web",
            "expected a table, got 5",
        ),
        (
            "[coordinator]\nendpoints = [\"a:1\"]\nevent_buffer = 1.5\n",
            "coordinator.event_buffer",
            "expected a whole number, got 1.5",
        ),
        ("tls = [1]\n", "tls", "expected a table, got a list"),
        (
            "[services.web]\nrun = \"/bin/app\"\n",
            "services.web.run",
            "expected a list, got \"/bin/app\"",
        ),
        (
            "[services.web]\nrun = [\"/bin/app\", 8080]\n",
            "services.web.run[1]",
            "expected a string, got 8080",
        ),
    ] {
        let errors = Config::parse(text, Path::new("/")).expect_err(text);
        let e = &errors.errors[0];
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            (path, message),
            "{errors}"
        );
        let all = errors.to_string();
        for internal in ["Raw", "i64", "f64", "struct", "sequence", "map"] {
            assert!(!all.contains(internal), "{internal:?} in {all}");
        }
    }
}

#[test]
fn port_zero_is_refused_in_tcp_and_http_checks_and_endpoints() {
    let errs = errors_of(&format!(
        "[coordinator]\nendpoints = [\"coordinator.example.com:0\"]\n[tls]\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
         [identity]\ninstance_id = \"i-1\"\navailability_zone = \"a\"\n\
         {WEB}[[services.web.checks]]\nkind = \"tcp\"\naddress = \"127.0.0.1:0\"\n\
         [[services.web.checks]]\nkind = \"http\"\nurl = \"http://127.0.0.1:0/healthz\"\n"
    ));
    for want in [
        "coordinator.endpoints[0]: port 0",
        "services.web.checks[0].address: \"127.0.0.1:0\": port 0",
        "services.web.checks[1].url: \"http://127.0.0.1:0/healthz\": bad host or port",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "missing {want:?} in {errs:#?}"
        );
    }
}

#[test]
fn zero_durations_that_mean_nothing_are_refused() {
    let errs = errors_of(
        "[coordinator]\nendpoints = [\"c:7443\"]\nconnect_timeout = \"0s\"\n[tls]\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n\
         [identity]\ninstance_id = \"i-1\"\navailability_zone = \"a\"\n",
    );
    assert_eq!(
        errs,
        ["coordinator.connect_timeout: must be longer than zero"]
    );
    for field in ["interval", "timeout"] {
        let errs = errors_of(&format!(
            "{WEB}[[services.web.checks]]\nkind = \"tcp\"\naddress = \"a:1\"\n{field} = \"0ms\"\n"
        ));
        assert_eq!(
            errs,
            [format!(
                "services.web.checks[0].{field}: must be longer than zero"
            )]
        );
    }
    let errs = errors_of(&format!("{WEB}[services.web.restart]\nwindow = \"-5s\"\n"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("services.web.restart.window: \"-5s\" is not a duration"));
}

#[test]
fn output_is_bounded_whatever_the_input() {
    // 10 MB of one-line garbage: one short error.
    let garbage = "garbage ".repeat(10 << 17);
    let errors = Config::parse(&garbage, Path::new("/")).expect_err("garbage");
    let shown = errors.to_string();
    assert!(
        errors.errors.len() == 1 && shown.len() < 300,
        "{} bytes",
        shown.len()
    );
    assert!(shown.starts_with("line 1: "), "{shown}");

    // A long value is echoed as a short prefix.
    let long = "x".repeat(100_000);
    let errs = errors_of(&format!(
        "{WEB}[[services.web.checks]]\nkind = \"{long}\"\n[[services.web.checks]]\nkind = \"tcp\"\naddress = \"a:1\"\ninterval = \"{long}\"\n[services.web.{long}]\n"
    ));
    assert_eq!(errs.len(), 3, "{errs:?}");
    for e in &errs {
        assert!(e.len() < 300, "{} bytes: {}...", e.len(), &e[..100]);
        assert!(
            e.contains(&long[..64]) && !e.contains(&long[..65]),
            "echoes 64 characters: {e}"
        );
    }

    // Many problems: a bounded list that says how many more there are.
    let many: String = (0..500).map(|i| format!("k{i} = {i}\n")).collect();
    let errors = Config::parse(&many, Path::new("/")).expect_err("unknown keys");
    assert_eq!(errors.errors.len(), parse::MAX_ERRORS + 1);
    assert_eq!(
        errors.errors[parse::MAX_ERRORS].message,
        "450 more error(s) not shown: fix these first"
    );
}

#[test]
fn non_utf8_input_names_the_byte_offset() {
    let errors = Config::parse_bytes(b"[services.web]\nrun = [\"\xff\"]\n", Path::new("/"))
        .expect_err("not UTF-8");
    assert_eq!(
        errors.to_string(),
        "line 2: not UTF-8 at byte offset 23: a config file must be UTF-8 text"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, b"# caf\xe9\n").expect("write");
    let e = Config::load(&path).expect_err("not UTF-8");
    assert!(
        e.to_string().contains("line 1: not UTF-8 at byte offset 5"),
        "{e}"
    );
}

#[test]
fn every_check_kind_is_named_once_and_read_back() {
    for kind in CheckKind::ALL {
        assert_eq!(CheckKind::from_name(kind.as_str()), Some(kind));
    }
    let errs = errors_of(&format!("{WEB}[[services.web.checks]]\nkind = \"ping\"\n"));
    assert_eq!(
        errs,
        [
            "services.web.checks[0].kind: unknown check kind \"ping\": use one of http, tcp, grpc, exec, process, systemd, disk, memory, load"
        ]
    );
}
