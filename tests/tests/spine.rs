//! The spine end to end: a real coordinator process, real certificates, real TLS on loopback.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use autoheal_common::tls::{PROTOCOL_VERSIONS, TlsFiles, provider};
use autoheal_proto::{
    identity::Role,
    v1::{self, agent_message, coordinator_message},
};
use autoheal_tests::{
    Coordinator, INSTANCE_A, INSTANCE_B, Pki, agent_client, client_config, eventually, fleet_client,
};
use autohealctl::pki;
use autohealctl::pki::Validity;
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

/// Completes a TLS handshake and sends the HTTP/2 preface. Under TLS 1.3 the server judges the
/// client certificate after the client's last flight, so its verdict arrives on the first read:
/// `Ok(server certificate)` if it answered with HTTP/2, `Err(why)` if it refused us.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<CertificateDer<'static>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .ok_or("no server certificate")?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Ok(server_cert.into_owned()),
        Ok(Ok(_)) => Err("connection closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".into()),
    }
}

fn config_without_client_cert(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    let material = files.load().expect("load");
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("versions")
        .with_root_certificates(material.roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

fn hello(instance: &str) -> v1::AgentMessage {
    v1::AgentMessage {
        kind: Some(agent_message::Kind::Hello(v1::Hello {
            instance_id: instance.to_owned(),
            availability_zone: "test-1a".into(),
            agent_version: "0.0.0-test".into(),
            epoch: 42,
            last_seq: 0,
            services: vec![v1::ServiceSpec {
                name: "web".into(),
                unit: "web.service".into(),
                depends_on: vec![],
                checks: vec![v1::CheckSpec {
                    name: "http".into(),
                    kind: "http".into(),
                    dependency: String::new(),
                    interval: Some(prost_types_duration(5)),
                }],
            }],
            healing_paused: false,
        })),
    }
}

fn prost_types_duration(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn heartbeat() -> v1::AgentMessage {
    v1::AgentMessage {
        kind: Some(agent_message::Kind::Heartbeat(v1::Heartbeat {
            last_seq: 0,
            dropped_events: 0,
            services: vec![v1::ServiceStatus {
                name: "web".into(),
                state: v1::ServiceState::Healthy.into(),
            }],
        })),
    }
}

fn check_event(seq: u64) -> v1::AgentMessage {
    v1::AgentMessage {
        kind: Some(agent_message::Kind::Event(v1::Event {
            seq,
            at: Some(std::time::SystemTime::now().into()),
            kind: Some(v1::event::Kind::CheckChanged(v1::CheckChanged {
                service: "web".into(),
                check: "http".into(),
                status: v1::CheckStatus::Unhealthy.into(),
                detail: "HTTP 503".into(),
            })),
        })),
    }
}

type Inbound = tonic::Streaming<v1::CoordinatorMessage>;

async fn open_stream(
    coordinator: &Coordinator,
    files: &TlsFiles,
    first: v1::AgentMessage,
) -> Result<(mpsc::Sender<v1::AgentMessage>, Inbound), tonic::Status> {
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.expect("queue hello");
    let mut client = agent_client(coordinator.addr, files);
    let inbound = client.connect(ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

async fn next(inbound: &mut Inbound) -> Result<coordinator_message::Kind, tonic::Status> {
    let msg = tokio::time::timeout(WAIT, inbound.message())
        .await
        .expect("coordinator answers in time")?
        .expect("stream open");
    Ok(msg.kind.expect("message has a kind"))
}

async fn next_ack(inbound: &mut Inbound) -> u64 {
    match next(inbound).await.expect("ack") {
        coordinator_message::Kind::Ack(a) => a.seq,
        other => panic!("expected an Ack, got {other:?}"),
    }
}

#[tokio::test]
async fn valid_agent_connects_and_is_acked() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let (tx, mut inbound) = open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_A))
        .await
        .expect("stream opens");
    match next(&mut inbound).await.expect("welcome") {
        coordinator_message::Kind::Welcome(w) => {
            assert_eq!(w.acked_seq, 0);
            assert_eq!(w.coordinator_id, "test-coordinator");
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    tx.send(heartbeat()).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, 0, "heartbeat acked");
    tx.send(check_event(1)).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, 1);
    tx.send(check_event(2)).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, 2);
    // A replayed event is acked again, not recorded twice.
    tx.send(check_event(2)).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, 2);

    let out = coordinator.ctl(&pki.operator(), &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("1 instances, 1 connected"), "{text}");

    let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "instance", INSTANCE_A]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["summary"]["connected"], true);
    assert_eq!(json["summary"]["availability_zone"], "test-1a");
    let checks = json["recent_events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["kind"] == "check-changed")
        .count();
    assert_eq!(checks, 2, "the replayed event is recorded once: {json}");
}

#[tokio::test]
async fn invalid_fields_are_rejected_with_their_name() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let (tx, mut inbound) = open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_A))
        .await
        .expect("stream opens");
    next(&mut inbound).await.expect("welcome");
    tx.send(check_event(0)).await.expect("send");
    let status = next(&mut inbound).await.expect_err("seq 0 is invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("event.seq"), "{status:?}");

    let mut bad = hello(INSTANCE_A);
    if let Some(agent_message::Kind::Hello(h)) = bad.kind.as_mut() {
        h.services[0].checks[0].name.clear();
    }
    let status = match open_stream(&coordinator, &pki.instance(INSTANCE_A), bad).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => next(&mut inbound).await.expect_err("rejected"),
    };
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("hello.services[0].checks[0].name"),
        "{status:?}"
    );
}

#[tokio::test]
async fn instance_cert_may_not_speak_for_another_instance() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let result = open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_B)).await;
    let status = match result {
        Err(status) => status,
        Ok((_tx, mut inbound)) => next(&mut inbound).await.expect_err("must be refused"),
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // Nothing was recorded about either instance.
    let mut fleet = fleet_client(coordinator.addr, &pki.operator());
    let list = fleet
        .list_instances(v1::ListInstancesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(list.instances.is_empty(), "{list:?}");
    let err = fleet
        .get_instance(v1::GetInstanceRequest {
            instance_id: INSTANCE_B.into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn roles_are_bound_to_methods() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let mut viewer = fleet_client(coordinator.addr, &pki.viewer());
    let err = viewer
        .pause(v1::PauseRequest {
            reason: "viewer tries".into(),
        })
        .await
        .expect_err("viewers can't pause");
    assert_eq!(err.code(), Code::PermissionDenied);
    // Reads are fine, and the pause did not happen.
    let status = viewer
        .get_fleet_status(v1::GetFleetStatusRequest {})
        .await
        .expect("viewer reads")
        .into_inner();
    assert!(!status.pause.expect("pause state").paused);

    // The CLI says so in one line.
    let out = coordinator.ctl(&pki.viewer(), &["pause", "--reason", "x"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");

    // An instance certificate can't use the fleet API at all.
    let mut instance = fleet_client(coordinator.addr, &pki.instance(INSTANCE_A));
    let err = instance
        .get_fleet_status(v1::GetFleetStatusRequest {})
        .await
        .expect_err("instances can't read the fleet");
    assert_eq!(err.code(), Code::PermissionDenied);

    // Operators can pause; the pause names who did it.
    let mut operator = fleet_client(coordinator.addr, &pki.operator());
    let paused = operator
        .pause(v1::PauseRequest {
            reason: "maintenance".into(),
        })
        .await
        .expect("operators pause")
        .into_inner();
    assert!(paused.paused);
    assert_eq!(paused.by, "spiffe://autoheal.test/operator/admin");

    // An operator certificate can't open an agent stream.
    let err = match open_stream(&coordinator, &pki.operator(), hello(INSTANCE_A)).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => next(&mut inbound).await.expect_err("refused"),
    };
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn handshake_refuses_missing_foreign_and_expired_certificates() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");

    handshake(coordinator.addr, client_config(&pki.operator()))
        .await
        .expect("a valid certificate is accepted");

    let refused = handshake(
        coordinator.addr,
        config_without_client_cert(&pki.operator()),
    )
    .await
    .expect_err("no client certificate");
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // Signed by another CA (same trust domain, so only the chain is wrong).
    let other = Pki::new();
    let foreign = TlsFiles {
        ca: pki.path().join("ca.pem"),
        ..other.operator()
    };
    let refused = handshake(coordinator.addr, client_config(&foreign))
        .await
        .expect_err("foreign CA");
    assert!(refused.to_lowercase().contains("alert"), "{refused}");

    let now = time::OffsetDateTime::now_utc();
    let expired = pki.issue(
        Role::Operator("expired".into()),
        Validity {
            not_before: now - time::Duration::days(30),
            not_after: now - time::Duration::days(1),
        },
    );
    let refused = handshake(coordinator.addr, client_config(&expired))
        .await
        .expect_err("expired");
    assert!(refused.to_lowercase().contains("alert"), "{refused}");

    // Right CA, wrong trust domain.
    let elsewhere = Pki::with_trust_domain("other.test");
    let files = TlsFiles {
        ca: pki.path().join("ca.pem"),
        ..elsewhere.operator()
    };
    assert!(
        handshake(coordinator.addr, client_config(&files))
            .await
            .is_err()
    );

    // And the coordinator is still serving.
    handshake(coordinator.addr, client_config(&pki.operator()))
        .await
        .expect("still serving");
    assert!(coordinator.log().contains("TLS handshake refused"));
}

#[tokio::test]
async fn wrong_trust_domain_is_refused_even_when_signed_by_the_fleet_ca() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    // Issue, from the fleet's own CA, a certificate whose SPIFFE ID names another trust domain.
    let td_file = pki.path().join("trust-domain");
    std::fs::write(&td_file, "intruder.test\n").expect("write");
    let files = pki.issue(Role::Operator("mallory".into()), Validity::default());
    std::fs::write(&td_file, format!("{}\n", pki.trust_domain)).expect("restore");
    let refused = handshake(coordinator.addr, client_config(&files))
        .await
        .expect_err("foreign trust domain");
    assert!(refused.to_lowercase().contains("alert"), "{refused}");
}

/// A hand-built ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = TLS 1.1) and
/// two CBC suites, no extensions: what an old client sends.
fn legacy_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&version);
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // AES128-SHA, AES256-SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let len = u32::try_from(body.len()).expect("small");
    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&len.to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, version[0], version[1]];
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("small").to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn tls_1_0_and_1_1_clients_are_refused_and_1_2_accepted() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    for version in [[3, 1], [3, 2]] {
        let mut tcp = TcpStream::connect(coordinator.addr).await.expect("connect");
        tcp.write_all(&legacy_client_hello(version))
            .await
            .expect("send hello");
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply)).await;
        // 0x16 would be a ServerHello; we want an alert (0x15) or a closed connection.
        assert_ne!(reply.first(), Some(&0x16), "TLS {version:?} was negotiated");
        if let Some(first) = reply.first() {
            assert_eq!(*first, 0x15, "expected an alert record, got {reply:?}");
        }
    }

    // TLS 1.2 is still spoken (1.3 preferred).
    let files = pki.operator();
    let material = files.load().expect("load");
    let mut tls12 = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("tls12")
        .with_root_certificates(material.roots)
        .with_client_auth_cert(material.chain, material.key)
        .expect("client auth");
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    handshake(coordinator.addr, Arc::new(tls12))
        .await
        .expect("TLS 1.2 with a valid certificate is accepted");
}

#[tokio::test]
async fn replaced_certificate_is_served_without_restart() {
    let pki = Pki::new();
    let mut coordinator = Coordinator::start(&pki, "");
    let before = handshake(coordinator.addr, client_config(&pki.operator()))
        .await
        .expect("handshake");
    let pid = coordinator.child.id();

    pki::issue_server(pki.path(), &["rotated.example".into()]).expect("rotate");
    let new_pem = std::fs::read(pki.path().join("coordinator.pem")).expect("read");
    let new_cert = CertificateDer::from_pem_slice(&new_pem).expect("pem");
    assert_ne!(before, new_cert);

    let addr = coordinator.addr;
    let operator = client_config(&pki.operator());
    eventually(WAIT, "the new certificate to be served", || {
        let operator = operator.clone();
        let expected = new_cert.clone();
        async move {
            let served = handshake(addr, operator).await.ok()?;
            (served == expected).then_some(())
        }
    })
    .await;
    assert!(coordinator.is_running());
    assert_eq!(coordinator.child.id(), pid, "same process");
    assert!(coordinator.log().contains("reloaded TLS certificate"));

    // A broken replacement is ignored: the last good certificate stays in force.
    std::fs::write(pki.path().join("coordinator.pem"), b"not a certificate").expect("break");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let served = handshake(addr, operator.clone())
        .await
        .expect("still serving");
    assert_eq!(served, new_cert);
}

#[tokio::test]
async fn oversized_messages_are_resource_exhausted_and_server_keeps_serving() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let mut big = hello(INSTANCE_A);
    if let Some(agent_message::Kind::Hello(h)) = big.kind.as_mut() {
        h.agent_version = "x".repeat(2 * 1024 * 1024);
    }
    let status = match open_stream(&coordinator, &pki.instance(INSTANCE_A), big).await {
        Err(status) => status,
        Ok((_tx, mut inbound)) => next(&mut inbound).await.expect_err("too big"),
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    let mut fleet = fleet_client(coordinator.addr, &pki.viewer());
    let err = fleet
        .get_instance(v1::GetInstanceRequest {
            instance_id: "i".repeat(2 * 1024 * 1024),
        })
        .await
        .expect_err("too big");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");

    // Still serving, on the same and on new connections.
    fleet
        .get_fleet_status(v1::GetFleetStatusRequest {})
        .await
        .expect("same connection");
    let (tx, mut inbound) = open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_A))
        .await
        .expect("new stream");
    next(&mut inbound).await.expect("welcome");
    tx.send(heartbeat()).await.expect("send");
    assert_eq!(next_ack(&mut inbound).await, 0);
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let channel = autoheal_common::tls::channel(
        &coordinator.endpoint(),
        client_config(&pki.viewer()),
        Duration::from_secs(5),
    )
    .expect("channel");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "autoheal.v1.AgentService", "autoheal.v1.FleetService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            resp.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn pause_survives_a_coordinator_restart() {
    let pki = Pki::new();
    let mut coordinator = Coordinator::start(&pki, "");
    let out = coordinator.ctl(&pki.operator(), &["pause", "--reason", "db migration"]);
    assert!(out.status.success(), "{out:?}");
    coordinator.restart();
    let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "status"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["pause"]["paused"], true, "{json}");
    assert_eq!(json["pause"]["reason"], "db migration");
}

#[tokio::test]
async fn autohealctl_reads_a_config_file_and_explains_failures_in_one_line() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("autohealctl.toml");
    std::fs::write(
        &config,
        format!(
            "endpoint = \"{}\"\npki = \"{}\"\n",
            coordinator.endpoint(),
            pki.path().display()
        ),
    )
    .expect("write");
    let ctl = || {
        let mut c = std::process::Command::new(autoheal_tests::bin("autohealctl"));
        c.env_remove("AUTOHEAL_ENDPOINT").env("HOME", dir.path());
        c
    };
    let out = ctl()
        .args(["--config"])
        .arg(&config)
        .arg("status")
        .output()
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 instances"));

    // Nobody listening: one line that says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("addr");
    let out = ctl()
        .arg("--config")
        .arg(&config)
        .args(["--endpoint", &closed.to_string(), "status"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    // A certificate from another CA: refused, and said so.
    let other = Pki::new();
    let out = ctl()
        .args(["--endpoint", &coordinator.endpoint()])
        .arg("--ca")
        .arg(pki.path().join("ca.pem"))
        .arg("--cert")
        .arg(other.operator().cert)
        .arg("--key")
        .arg(other.operator().key)
        .arg("status")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate refused"), "{stderr}");
}

#[tokio::test]
async fn server_reflection_lists_the_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let channel = autoheal_common::tls::channel(
        &coordinator.endpoint(),
        client_config(&pki.viewer()),
        Duration::from_secs(5),
    )
    .expect("channel");
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "autoheal.v1.AgentService",
        "autoheal.v1.FleetService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test]
async fn operators_skip_and_unskip_an_instance_and_it_is_persisted() {
    let pki = Pki::new();
    let mut coordinator = Coordinator::start(&pki, "");
    let (_tx, mut inbound) =
        open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_A))
            .await
            .expect("stream");
    next(&mut inbound).await.expect("welcome");
    let skipped = |c: &Coordinator| {
        let out = c.ctl(&pki.viewer(), &["--output", "json", "instance", INSTANCE_A]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")["skipped"].clone()
    };
    let out = coordinator.ctl(&pki.viewer(), &["skip", INSTANCE_A, "--reason", "x"]);
    assert!(!out.status.success(), "viewers can't skip");
    assert_eq!(skipped(&coordinator), false);
    let out = coordinator.ctl(
        &pki.operator(),
        &["skip", INSTANCE_A, "--reason", "debugging"],
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(skipped(&coordinator), true);

    // Persisted: still skipped after a restart, once the instance is known again.
    drop(inbound);
    coordinator.restart();
    let (_tx, mut inbound) =
        open_stream(&coordinator, &pki.instance(INSTANCE_A), hello(INSTANCE_A))
            .await
            .expect("stream");
    next(&mut inbound).await.expect("welcome");
    assert_eq!(skipped(&coordinator), true);
    let out = coordinator.ctl(&pki.operator(), &["unskip", INSTANCE_A]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(skipped(&coordinator), false);
}
