//! The reporter against a fake coordinator over real mTLS: Hello/Welcome, escalation delivery,
//! replay after an outage (every event once, in order), redirects, and pause directives.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use autoheal_agent::state::ServiceState;
use autoheal_common::tls::TlsFiles;
use autoheal_proto::{identity::Role, v1};
use autoheal_tests::{
    Pki,
    agent::{Events, python_server, signal, socket_section, start_agent_from_toml, tls_section},
    fake::{Behaviour, FakeCoordinator, Recorded},
    free_port, until,
};
use autohealctl::pki::Validity;
use rustix::process::Signal;

fn agent_toml(
    dir: &std::path::Path,
    agent_tls: &TlsFiles,
    endpoints: &[String],
    services: &str,
) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
{socket}
[coordinator]
endpoints = [{endpoints}]
connect_timeout = "2s"
heartbeat_interval = "1s"
reconnect_initial = "100ms"
reconnect_max = "1s"
{tls}
[identity]
instance_id = "i-0123"
availability_zone = "test-1a"
{services}
"#,
        socket = socket_section(dir),
        tls = tls_section(agent_tls),
    )
}

fn web(port: u16) -> String {
    format!(
        r#"
[services.web]
run = {run}
stop_timeout = "2s"
[services.web.restart]
max_attempts = 10
backoff_initial = "100ms"
backoff_max = "500ms"
verify_timeout = "20s"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "500ms"
timeout = "300ms"
"#,
        run = python_server(port)
    )
}

/// A test PKI (its coordinator certificate serves the fake) and a certificate for instance `id`.
fn instance_pki(id: &str) -> (Pki, TlsFiles) {
    let pki = Pki::new();
    let files = pki.issue(Role::Instance(id.to_owned()), Validity::default());
    (pki, files)
}

fn recorded() -> Arc<Mutex<Recorded>> {
    Arc::new(Mutex::new(Recorded::default()))
}

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

#[tokio::test]
async fn hello_declares_the_instance_and_escalations_reach_the_coordinator() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, agent_tls) = instance_pki("i-0123");
    let rec = recorded();
    let coord = FakeCoordinator::start(loopback(), &pki, rec.clone(), Behaviour::default()).await;
    let services = r#"
[services.broken]
run = ["sh", "-c", "exit 3"]
[services.broken.restart]
max_attempts = 2
backoff_initial = "100ms"
verify_timeout = "2s"
[[services.broken.checks]]
kind = "exec"
command = ["false"]
interval = "500ms"
timeout = "300ms"
"#;
    let (agent, _shutdown) = start_agent_from_toml(
        dir.path(),
        &agent_toml(dir.path(), &agent_tls, &[coord.addr.to_string()], services),
    );
    let escalated = until("the escalation at the coordinator", || {
        rec.lock()
            .expect("lock")
            .accepted
            .iter()
            .find_map(|e| match &e.kind {
                Some(v1::event::Kind::Escalated(x)) => Some(x.clone()),
                _ => None,
            })
    })
    .await;
    assert_eq!(escalated.service, "broken");
    assert_eq!(escalated.attempts.len(), 2);
    {
        let r = rec.lock().expect("lock");
        let hello = &r.hellos[0];
        assert_eq!(hello.instance_id, "i-0123");
        assert_eq!(hello.availability_zone, "test-1a");
        assert_eq!(hello.agent_version, autoheal_proto::VERSION);
        assert_ne!(hello.epoch, 0);
        assert_eq!(hello.services.len(), 1);
        assert_eq!(hello.services[0].checks[0].kind, "exec");
        assert!(r.gaps.is_empty(), "{:?}", r.gaps);
        let seqs: Vec<u64> = r.accepted.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }
    until("a heartbeat naming the escalated service", || {
        rec.lock()
            .expect("lock")
            .heartbeats
            .iter()
            .rev()
            .find_map(|h| {
                h.services
                    .iter()
                    .any(|s| s.name == "broken" && s.state == v1::ServiceState::Escalated as i32)
                    .then_some(())
            })
    })
    .await;
    assert!(agent.stop(Duration::from_secs(30)).await);
    coord.stop().await;
}

#[tokio::test]
async fn healing_goes_on_while_the_coordinator_is_down_and_every_event_arrives_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, agent_tls) = instance_pki("i-0123");
    let rec = recorded();
    let coord = FakeCoordinator::start(loopback(), &pki, rec.clone(), Behaviour::default()).await;
    let addr = coord.addr;
    let port = free_port();
    let (agent, _shutdown) = start_agent_from_toml(
        dir.path(),
        &agent_toml(dir.path(), &agent_tls, &[addr.to_string()], &web(port)),
    );
    let reporter = agent.reporter.clone().expect("reporter");
    until("web healthy and reported", || {
        let healthy = agent.snapshot("web").is_some_and(|s| s.state == ServiceState::Healthy);
        let reported = rec.lock().expect("lock").accepted.iter().any(|e| {
            matches!(&e.kind, Some(v1::event::Kind::ServiceStateChanged(c)) if c.to == v1::ServiceState::Healthy as i32)
        });
        (healthy && reported).then_some(())
    })
    .await;

    coord.stop().await;
    until("the agent to notice", || {
        (!reporter.borrow().connected).then_some(())
    })
    .await;
    let before = rec.lock().expect("lock").accepted.len();

    // Healing goes on, unchanged, while nobody listens.
    let first = agent.snapshot("web").and_then(|s| s.pid).expect("pid");
    signal(first, Signal::KILL);
    until("web healthy again with a new pid", || {
        agent
            .snapshot("web")
            .filter(|s| s.state == ServiceState::Healthy && s.pid.is_some_and(|p| p != first))
            .map(|_| ())
    })
    .await;
    let last_seq = reporter.borrow().last_seq;
    assert!(reporter.borrow().unacked > 0, "events wait in the buffer");
    assert_eq!(
        rec.lock().expect("lock").accepted.len(),
        before,
        "nothing delivered while down"
    );

    // The coordinator comes back on the same address (with its durable record).
    let coord = FakeCoordinator::start(addr, &pki, rec.clone(), Behaviour::default()).await;
    until("every event delivered", || {
        let r = rec.lock().expect("lock");
        (r.accepted.last().map(|e| e.seq) >= Some(last_seq)).then_some(())
    })
    .await;
    {
        let r = rec.lock().expect("lock");
        assert!(r.hellos.len() >= 2, "reconnected");
        assert_eq!(
            r.hellos[0].epoch, r.hellos[1].epoch,
            "same process, same epoch"
        );
        assert!(r.hellos[1].last_seq >= last_seq);
        assert!(r.gaps.is_empty(), "no event lost: {:?}", r.gaps);
        let seqs: Vec<u64> = r.accepted.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "once each, in order"
        );
        assert!(
            r.accepted[before..].iter().any(|e| matches!(&e.kind,
                Some(v1::event::Kind::RestartAttempted(a)) if a.succeeded)),
            "the restart made while down was replayed"
        );
    }
    until("the buffer drained by acks", || {
        (reporter.borrow().unacked == 0).then_some(())
    })
    .await;
    assert!(agent.stop(Duration::from_secs(30)).await);
    coord.stop().await;
}

#[tokio::test]
async fn redirect_is_followed_and_pause_directive_stops_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, agent_tls) = instance_pki("i-0123");
    let leader_rec = recorded();
    let leader = FakeCoordinator::start(
        loopback(),
        &pki,
        leader_rec.clone(),
        Behaviour {
            coordinator_id: "leader".into(),
            directive: Some(v1::Directive {
                kind: Some(v1::directive::Kind::PauseHealing(v1::PauseHealing {
                    reason: "maintenance".into(),
                })),
            }),
            ..Behaviour::default()
        },
    )
    .await;
    let follower_rec = recorded();
    let follower = FakeCoordinator::start(
        loopback(),
        &pki,
        follower_rec.clone(),
        Behaviour {
            redirect_to: Some(format!("localhost:{}", leader.addr.port())),
            coordinator_id: "follower".into(),
            ..Behaviour::default()
        },
    )
    .await;
    let port = free_port();
    let (agent, _shutdown) = start_agent_from_toml(
        dir.path(),
        &agent_toml(
            dir.path(),
            &agent_tls,
            &[follower.addr.to_string()],
            &web(port),
        ),
    );
    let reporter = agent.reporter.clone().expect("reporter");
    until("connected to the leader", || {
        let s = reporter.borrow();
        (s.connected && s.coordinator_id.as_deref() == Some("leader")).then_some(())
    })
    .await;
    assert_eq!(follower_rec.lock().expect("lock").hellos.len(), 1);
    assert!(follower_rec.lock().expect("lock").accepted.is_empty());
    until("healing paused", || (*agent.paused.borrow()).then_some(())).await;

    let mut events = Events::new(&agent);
    let first = until("web healthy", || {
        agent
            .snapshot("web")
            .filter(|s| s.state == ServiceState::Healthy)
            .and_then(|s| s.pid)
    })
    .await;
    signal(first, Signal::KILL);
    until("web left unhealthy while paused", || {
        agent
            .snapshot("web")
            .filter(|s| s.state == ServiceState::Unhealthy && s.reason.contains("paused"))
            .map(|_| ())
    })
    .await;
    assert!(events.restarts("web").is_empty());
    assert!(agent.stop(Duration::from_secs(30)).await);
    leader.stop().await;
    follower.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_instance_is_refused_before_connecting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pki, agent_tls) = instance_pki("i-other");
    let rec = recorded();
    let coord = FakeCoordinator::start(loopback(), &pki, rec.clone(), Behaviour::default()).await;
    let (agent, _shutdown) = start_agent_from_toml(
        dir.path(),
        &agent_toml(dir.path(), &agent_tls, &[coord.addr.to_string()], ""),
    );
    let reporter = agent.reporter.clone().expect("reporter");
    let error = until("the mismatch reported", || {
        reporter.borrow().last_error.clone()
    })
    .await;
    assert!(
        error.contains("i-other") && error.contains("i-0123"),
        "{error}"
    );
    assert!(rec.lock().expect("lock").hellos.is_empty());
    assert!(agent.stop(Duration::from_secs(30)).await);
    coord.stop().await;
}
