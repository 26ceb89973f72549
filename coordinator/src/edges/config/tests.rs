mod unit {
    use super::super::*;

    const GOOD: &str = r#"
        listen = "127.0.0.1:0"
        [tls]
        ca = "pki/ca.pem"
        cert = "pki/coordinator.pem"
        key = "pki/coordinator-key.pem"
    "#;

    #[test]
    fn minimal_config_gets_safe_defaults() {
        let c = Config::from_toml(GOOD, Path::new("/etc/autoheal")).expect("valid");
        assert!(c.dry_run, "acting on AWS must be opted into");
        assert_eq!(c.tls.ca, Path::new("/etc/autoheal/pki/ca.pem"));
        assert_eq!(c.state_dir, Path::new("/etc/autoheal/state"));
        assert_eq!(c.heartbeat_interval, Duration::from_secs(5));
        assert_eq!(c.trust_domain.as_str(), "autoheal.local");
        assert_eq!(c.metrics_listen, None, "metrics are opted into");
    }

    #[test]
    fn several_replicas_refuse_the_embedded_store() {
        let two = format!("{GOOD}\n[store]\nreplicas = 2\n");
        let errors = Config::from_toml(&two, Path::new(".")).expect_err("two leaders");
        assert_eq!(errors.errors[0].path, "store.replicas", "{errors}");
        assert!(errors.to_string().contains("dynamodb"), "{errors}");
        let shared = format!("{GOOD}\n[aws]\n[store]\nbackend = \"dynamodb\"\nreplicas = 2\n");
        let c = Config::from_toml(&shared, Path::new(".")).expect("a shared table is fine");
        assert_eq!(c.store.replicas, 2);
    }

    /// The config the README puts in Parameter Store acts once dry_run is off: it has [aws] and
    /// the stack's DynamoDB table (it is rendered from the CloudFormation template).
    #[test]
    fn the_shipped_ecs_config_acts_on_the_stack_table() {
        let text = include_str!("../../../../packaging/coordinator/coordinator.toml");
        let c = Config::from_toml(text, Path::new("/run/autoheal")).expect("shipped config");
        assert!(c.aws.is_some(), "no [aws]: it would only watch");
        assert_eq!(
            c.store.backend,
            StoreBackend::Dynamo {
                table: "autoheal-state".into()
            }
        );
        assert_eq!(c.advertise, None, "left to the ECS task metadata");
    }

    #[test]
    fn metrics_listen_is_an_address_apart_from_listen() {
        let ok = format!("metrics_listen = \"127.0.0.1:9464\"\n{GOOD}");
        let c = Config::from_toml(&ok, Path::new(".")).expect("valid");
        assert_eq!(
            c.metrics_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        for bad in ["localhost", "127.0.0.1:7443"] {
            let text = format!(
                "metrics_listen = {bad:?}\nlisten = \"127.0.0.1:7443\"\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n"
            );
            let errors = Config::from_toml(&text, Path::new(".")).expect_err(bad);
            assert_eq!(errors.errors[0].path, "metrics_listen", "{bad}: {errors}");
        }
    }

    #[test]
    fn every_error_is_listed_with_its_path() {
        let text = r#"
            listen = "nowhere"
            trust_domain = "Not Valid"
            tls_reload_interval = "soon"
            typo = 1
            [tls]
            ca = "ca.pem"
            [agents]
            heartbeat_interval = "1ms"
            max_concurrent_handshakes = 0
        "#;
        let errors = Config::from_toml(text, Path::new(".")).expect_err("invalid");
        let mut paths: Vec<_> = errors.errors.iter().map(|e| e.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "agents.heartbeat_interval",
                "agents.max_concurrent_handshakes",
                "listen",
                "tls.cert",
                "tls.key",
                "tls_reload_interval",
                "trust_domain",
                "typo",
            ],
            "{errors}"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let text = format!("{GOOD}\n[agents]\nheartbeat = \"5s\"\n");
        let errors = Config::from_toml(&text, Path::new(".")).expect_err("unknown key");
        assert_eq!(errors.errors[0].path, "agents.heartbeat");
    }
}

/// Stand-in for a fuzz target: no input makes the config parser panic, and every rejection says
/// where.
mod robustness {
    use proptest::prelude::*;

    use super::super::*;

    proptest! {
        #[test]
        fn any_text_is_parsed_or_rejected_with_paths(text in "(\\\\PC|\\n|=|\\[|\\]|\"){0,300}") {
            if let Err(errors) = Config::from_toml(&text, Path::new(".")) {
                prop_assert!(!errors.errors.is_empty());
                prop_assert!(errors.errors.iter().all(|e| !e.path.is_empty() && !e.message.is_empty()));
            }
        }

        #[test]
        fn mutated_configs_never_panic(
            listen in ".{0,30}", td in ".{0,30}", hb in ".{0,12}", n in any::<i64>(),
        ) {
            let text = format!(
                "listen = {listen:?}\ntrust_domain = {td:?}\n[tls]\nca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[agents]\nheartbeat_interval = {hb:?}\nmax_concurrent_handshakes = {n}\n"
            );
            let _ = Config::from_toml(&text, Path::new("."));
        }
    }
}
