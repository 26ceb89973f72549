//! Local healing with real processes: crash, hang, failure to start, dependencies, pause.

use std::time::Duration;

use autoheal_agent::{
    state::{ServiceSnapshot, ServiceState},
    status,
};
use autoheal_proto::v1;
use autoheal_tests::{
    agent::{Events, python_server, signal, socket_section, start_agent_from_toml},
    free_port, until,
};
use rustix::process::Signal;

fn state_of(agent: &autoheal_agent::Agent, s: &str) -> ServiceSnapshot {
    agent.snapshot(s).expect("service exists")
}

async fn healthy_pid(agent: &autoheal_agent::Agent, service: &str) -> u32 {
    until(&format!("{service} healthy with a pid"), || {
        let s = state_of(agent, service);
        (s.state == ServiceState::Healthy)
            .then_some(s.pid)
            .flatten()
    })
    .await
}

fn web_config(dir: &std::path::Path, port: u16, extra: &str) -> String {
    format!(
        r#"
{socket}
[services.web]
run = {run}
stop_timeout = "2s"
[services.web.restart]
max_attempts = 5
window = "10m"
backoff_initial = "100ms"
backoff_max = "1s"
verify_timeout = "20s"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "500ms"
timeout = "300ms"
failure_threshold = 2
{extra}
"#,
        socket = socket_section(dir),
        run = python_server(port),
    )
}

#[tokio::test]
async fn crashed_service_is_restarted_and_healthy_with_a_new_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &web_config(dir.path(), port, ""));
    let mut events = Events::new(&agent);
    let first = healthy_pid(&agent, "web").await;

    signal(first, Signal::KILL);

    let attempt = events
        .wait_for("a successful restart", |e| match e {
            v1::event::Kind::RestartAttempted(r) if r.succeeded => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(attempt.attempt, 1);
    let second = healthy_pid(&agent, "web").await;
    assert_ne!(first, second, "a new process serves");
    let body =
        autoheal_agent::http::request("127.0.0.1", port, "GET", "/", &[], Duration::from_secs(10))
            .await
            .expect("the restarted server answers");
    assert_eq!(body.status, 200);
    // The exit was noticed from the process itself, not from a failing check.
    assert!(
        events.drain().iter().any(|e| matches!(e,
            v1::event::Kind::ServiceStateChanged(c) if c.reason.contains("main process exited"))),
        "{:#?}",
        events.seen
    );
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn hung_service_times_out_and_is_restarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &web_config(dir.path(), port, ""));
    let mut events = Events::new(&agent);
    let first = healthy_pid(&agent, "web").await;

    signal(first, Signal::STOP);

    let failed = events
        .wait_for("the http check failing", |e| match e {
            v1::event::Kind::CheckChanged(c) if c.status == v1::CheckStatus::Unhealthy as i32 => {
                Some(c.detail.clone())
            }
            _ => None,
        })
        .await;
    assert!(failed.contains("timed out"), "{failed}");
    events
        .wait_for("a successful restart", |e| match e {
            v1::event::Kind::RestartAttempted(r) if r.succeeded => Some(()),
            _ => None,
        })
        .await;
    let second = healthy_pid(&agent, "web").await;
    assert_ne!(first, second);
    // The stopped process was killed, not left behind.
    until("the hung process to be gone", || {
        (!std::path::Path::new(&format!("/proc/{first}")).exists()
            || std::fs::read_to_string(format!("/proc/{first}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true))
        .then_some(())
    })
    .await;
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn service_that_cannot_start_exhausts_attempts_and_escalates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let toml = format!(
        r#"
{socket}
[services.broken]
run = ["sh", "-c", "echo no config >&2; exit 1"]
[services.broken.restart]
max_attempts = 3
backoff_initial = "100ms"
backoff_max = "200ms"
verify_timeout = "5s"
[[services.broken.checks]]
kind = "tcp"
address = "127.0.0.1:{port}"
interval = "500ms"
timeout = "200ms"
"#,
        socket = socket_section(dir.path())
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let escalated = events
        .wait_for("an escalation", |e| match e {
            v1::event::Kind::Escalated(x) => Some(x.clone()),
            _ => None,
        })
        .await;
    assert_eq!(escalated.service, "broken");
    assert!(
        escalated.reason.contains("3 restart attempts"),
        "{}",
        escalated.reason
    );
    assert_eq!(escalated.attempts.len(), 3, "evidence: every attempt");
    assert!(escalated.attempts.iter().all(|a| !a.succeeded));
    assert!(
        escalated
            .last_results
            .iter()
            .any(|r| r.check == "main-process" || r.check == "tcp"),
        "{escalated:#?}"
    );
    let s = state_of(&agent, "broken");
    assert_eq!(s.state, ServiceState::Escalated);
    // Bounded: no attempt beyond the budget, even after a while.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events.restarts("broken").len(), 3);
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn failing_dependency_blocks_restarts_and_is_reported_as_the_dependency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = free_port();
    let toml = format!(
        r#"
{socket}
# A database that never becomes healthy.
[services.db]
run = ["sleep", "1000"]
[services.db.restart]
max_attempts = 1
backoff_initial = "100ms"
verify_timeout = "1s"
[[services.db.checks]]
kind = "tcp"
address = "127.0.0.1:{closed}"
interval = "300ms"
timeout = "200ms"
failure_threshold = 1

# Depends on db, and its own check fails too.
[services.app]
run = ["sleep", "1000"]
depends_on = ["db"]
restart.verify_timeout = "1s"
[[services.app.checks]]
kind = "tcp"
address = "127.0.0.1:{closed}"
interval = "300ms"
timeout = "200ms"
failure_threshold = 1

# Watches a shared dependency that is down.
[services.api]
run = ["sleep", "1000"]
restart.verify_timeout = "1s"
[[services.api.checks]]
name = "self"
kind = "exec"
command = ["false"]
interval = "300ms"
timeout = "200ms"
failure_threshold = 1
[[services.api.checks]]
name = "postgres"
kind = "tcp"
address = "127.0.0.1:{closed}"
dependency = "postgres-main"
interval = "300ms"
timeout = "200ms"
failure_threshold = 1
"#,
        socket = socket_section(dir.path())
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let dep = events
        .wait_for("the shared dependency reported failing", |e| match e {
            v1::event::Kind::DependencyChanged(d) if d.failing => Some(d.clone()),
            _ => None,
        })
        .await;
    assert_eq!(dep.dependency, "postgres-main");
    assert_eq!(dep.check, "api/postgres");
    until("app waiting on db and api on postgres-main", || {
        (state_of(&agent, "app").state == ServiceState::WaitingOnDependency
            && state_of(&agent, "api").state == ServiceState::WaitingOnDependency)
            .then_some(())
    })
    .await;
    // db itself is healed (and escalates); its dependents are left alone meanwhile.
    events
        .wait_for("db escalated", |e| match e {
            v1::event::Kind::Escalated(x) if x.service == "db" => Some(()),
            _ => None,
        })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(events.restarts("app").is_empty(), "{:#?}", events.seen);
    assert!(events.restarts("api").is_empty(), "{:#?}", events.seen);
    assert!(!events.restarts("db").is_empty());
    // The dependency's failure is not reported as api's own check failing.
    assert!(!events.seen.iter().any(|e| matches!(e,
        v1::event::Kind::CheckChanged(c) if c.service == "api" && c.check == "postgres")));
    let reason = state_of(&agent, "api").reason;
    assert!(reason.contains("postgres-main"), "{reason}");

    // The status socket shows the same, with mode 0600.
    let sock = dir.path().join("agent.sock");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&sock).expect("socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let report = status::query(&sock).await.expect("status");
    let app = report
        .services
        .iter()
        .find(|s| s.name == "app")
        .expect("app");
    assert_eq!(app.state, ServiceState::WaitingOnDependency);
    assert!(status::render(&report).contains("waiting_on_dependency"));
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn paused_healing_keeps_checking_but_does_not_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &web_config(dir.path(), port, ""));
    let mut events = Events::new(&agent);
    let first = healthy_pid(&agent, "web").await;
    agent.paused.send_replace(true);
    signal(first, Signal::KILL);
    until("web unhealthy with healing paused", || {
        let s = state_of(&agent, "web");
        (s.state == ServiceState::Unhealthy && s.reason.contains("paused")).then_some(())
    })
    .await;
    assert!(events.restarts("web").is_empty());
    agent.paused.send_replace(false);
    let second = healthy_pid(&agent, "web").await;
    assert_ne!(first, second);
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn too_many_transitions_are_reported_as_flapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The check passes twice, fails twice, and so on (a counter file in the config's folder).
    let toml = format!(
        r#"
{socket}
[services.flaky]
run = ["sleep", "1000"]
[services.flaky.restart]
max_attempts = 100
backoff_initial = "10ms"
backoff_max = "20ms"
verify_timeout = "10s"
flap_transitions = 4
flap_window = "10m"
[[services.flaky.checks]]
kind = "exec"
command = ["sh", "-c", "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; test $((n % 4)) -lt 2"]
interval = "200ms"
timeout = "150ms"
failure_threshold = 1
"#,
        socket = socket_section(dir.path())
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let change = events
        .wait_for("a change to flapping", |e| match e {
            v1::event::Kind::ServiceStateChanged(c)
                if c.to == v1::ServiceState::Flapping as i32 =>
            {
                Some(c.clone())
            }
            _ => None,
        })
        .await;
    assert_eq!(change.service, "flaky");
    assert!(change.reason.contains("transitions"), "{}", change.reason);
    assert!(agent.stop(Duration::from_secs(30)).await);
}
