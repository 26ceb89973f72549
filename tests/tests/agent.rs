//! The real agent (in-process, with real child processes) against the real
//! `autoheal-coordinator` binary over mTLS.

use std::time::Duration;

use autoheal_agent::state::ServiceState;
use autoheal_proto::v1;
use autoheal_tests::{
    Coordinator, INSTANCE_A, Pki,
    agent::{signal, start_agent},
    eventually, free_port,
};
use rustix::process::Signal;

const WAIT: Duration = Duration::from_secs(90);

/// The coordinator's recorded events for our instance, as (kind, message).
/// Only what the agent sent (not the coordinator's own agent-* or events-missing notes).
fn agent_sent(events: Vec<(String, String)>) -> Vec<(String, String)> {
    events
        .into_iter()
        .filter(|(k, _)| {
            matches!(
                k.as_str(),
                "check-changed" | "service-state-changed" | "restart-attempted"
            )
        })
        .collect()
}

async fn coordinator_events(coordinator: &Coordinator, pki: &Pki) -> Vec<(String, String)> {
    let endpoint = coordinator.endpoint();
    let files = pki.viewer();
    let ctl = autoheal_tests::bin("autohealctl");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(ctl)
            .args(["--endpoint", &endpoint])
            .arg("--ca")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key)
            .args(["--output", "json", "events", "--instance", INSTANCE_A])
            .output()
            .expect("run autohealctl")
    })
    .await
    .expect("join");
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["kind"].as_str().unwrap_or_default().to_owned(),
                v["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_from_a_service_that_cannot_start_reaches_the_coordinator() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(&pki, "");
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, _shutdown) = start_agent(
        dir.path(),
        &pki,
        &coordinator.endpoint(),
        r#"
[services.broken]
run = ["sh", "-c", "echo missing config >&2; exit 78"]
[services.broken.restart]
max_attempts = 2
backoff_initial = "100ms"
verify_timeout = "2s"
[[services.broken.checks]]
kind = "exec"
command = ["false"]
interval = "500ms"
timeout = "300ms"
"#,
    );
    let events = eventually(
        WAIT,
        "the escalation recorded by the coordinator",
        || async {
            let events = coordinator_events(&coordinator, &pki).await;
            events
                .iter()
                .any(|(kind, _)| kind.contains("escalat"))
                .then_some(events)
        },
    )
    .await;
    let restarts = events
        .iter()
        .filter(|(kind, _)| kind == "restart-attempted")
        .count();
    assert_eq!(restarts, 2, "every attempt is reported: {events:#?}");
    assert_eq!(
        agent.snapshot("broken").map(|s| s.state),
        Some(ServiceState::Escalated)
    );
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healing_continues_through_a_coordinator_outage_and_every_event_arrives_once_in_order() {
    let pki = Pki::new();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut coordinator = Coordinator::start_with(&pki, "", &listen, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (agent, _shutdown) = start_agent(
        dir.path(),
        &pki,
        &coordinator.endpoint(),
        &format!(
            r#"
[services.web]
run = ["python3", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
stop_timeout = "2s"
[services.web.restart]
backoff_initial = "100ms"
verify_timeout = "20s"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "500ms"
timeout = "300ms"
"#
        ),
    );
    let mut tap = agent.events.subscribe();
    let reporter = agent.reporter.clone().expect("reporter");
    let first = eventually(WAIT, "web healthy and the agent connected", || async {
        let s = agent.snapshot("web")?;
        let r = reporter.borrow();
        (s.state == ServiceState::Healthy && r.connected && r.unacked == 0)
            .then_some(s.pid)
            .flatten()
    })
    .await;
    // Everything so far is acknowledged: only what happens from here on must be replayed.
    while tap.try_recv().is_ok() {}
    // The coordinator keeps its events across a restart: what it holds now comes before.
    let earlier = agent_sent(coordinator_events(&coordinator, &pki).await).len();

    // The coordinator goes away; the agent keeps healing.
    let _ = coordinator.child.kill();
    let _ = coordinator.child.wait();
    eventually(WAIT, "the agent to notice", || async {
        (!reporter.borrow().connected).then_some(())
    })
    .await;
    signal(first, Signal::KILL);
    eventually(
        WAIT,
        "web healthy again with a new pid while the coordinator is down",
        || async {
            agent
                .snapshot("web")
                .filter(|s| s.state == ServiceState::Healthy && s.pid.is_some_and(|p| p != first))
                .map(|_| ())
        },
    )
    .await;
    assert!(
        reporter.borrow().unacked > 0,
        "events wait for the coordinator"
    );

    // It comes back (same address, same state folder): everything is delivered.
    coordinator.restart();
    eventually(WAIT, "every event acknowledged", || async {
        let s = reporter.borrow();
        (s.connected && s.unacked == 0).then_some(())
    })
    .await;

    // What the agent emitted since the outage began, in order, against what the coordinator
    // recorded after coming back (its event list lives in memory): once each, same order.
    let mut emitted = Vec::new();
    while let Ok(e) = tap.try_recv() {
        emitted.push(match e.kind {
            v1::event::Kind::CheckChanged(_) => "check-changed",
            v1::event::Kind::ServiceStateChanged(_) => "service-state-changed",
            v1::event::Kind::RestartAttempted(_) => "restart-attempted",
            _ => "other",
        });
    }
    let recorded: Vec<(String, String)> = agent_sent(coordinator_events(&coordinator, &pki).await)
        .into_iter()
        .skip(earlier)
        .collect();
    let kinds: Vec<&str> = recorded.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds, emitted, "recorded {recorded:#?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "restart-attempted").count(),
        1,
        "the restart made during the outage, once"
    );
    assert!(agent.stop(Duration::from_secs(30)).await);
}
