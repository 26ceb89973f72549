//! A service's life with real processes (#19): slow starters after a restart, the whole process
//! tree, a dependency's recovery, flapping.

use std::time::Duration;

use autoheal_agent::{
    Agent,
    state::{ServiceSnapshot, ServiceState},
};
use autoheal_proto::v1;
use autoheal_tests::{
    agent::{Events, signal, socket_section, start_agent_from_toml},
    free_port, until,
};
use rustix::process::Signal;

fn state_of(agent: &Agent, s: &str) -> ServiceSnapshot {
    agent.snapshot(s).expect("service exists")
}

async fn healthy_pid(agent: &Agent, service: &str) -> u32 {
    until(&format!("{service} healthy with a pid"), || {
        let s = state_of(agent, service);
        (s.state == ServiceState::Healthy)
            .then_some(s.pid)
            .flatten()
    })
    .await
}

/// A shell that sleeps `delay` then becomes a Python HTTP server on `port` (same pid).
fn slow_server(delay: &str, port: u16) -> String {
    format!(
        "[\"sh\", \"-c\", \"sleep {delay}; exec python3 -m http.server {port} --bind 127.0.0.1\"]"
    )
}

#[tokio::test]
async fn a_slow_starter_is_given_its_startup_grace_after_a_crash_too() {
    // The issue's 8 s to listen / 12 s grace / 4 s verify, scaled down.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let toml = format!(
        r#"
{socket}
[services.web]
run = {run}
stop_timeout = "2s"
[services.web.restart]
max_attempts = 5
backoff_initial = "100ms"
backoff_max = "200ms"
verify_timeout = "1s"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "200ms"
timeout = "150ms"
startup_grace = "5s"
"#,
        socket = socket_section(dir.path()),
        run = slow_server("2.5", port),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let first = healthy_pid(&agent, "web").await;

    signal(first, Signal::KILL);

    let attempt = events
        .wait_for("the restart's verdict", |e| match e {
            v1::event::Kind::RestartAttempted(r) if r.service == "web" => Some(r.clone()),
            _ => None,
        })
        .await;
    assert!(attempt.succeeded, "{attempt:?}");
    assert_eq!(attempt.attempt, 1);
    healthy_pid(&agent, "web").await;
    assert_eq!(events.restarts("web").len(), 1, "{:#?}", events.seen);
    assert!(agent.stop(Duration::from_secs(30)).await);
}

/// Live processes (not zombies) whose command line contains `tag`.
fn processes_with(tag: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        if cmdline.contains(tag) && !zombie {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Zombies whose parent is this process (the agent runs in it): nobody reaped them.
fn our_zombies() -> Vec<u32> {
    let me = std::process::id();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rsplit(')').next() else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        if f.next() == Some("Z") && f.next() == Some(me.to_string().as_str()) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_crashed_service_leaves_no_children_or_daemons_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    // Two children in the group and a daemon in its own session, each tagged with the port.
    let tag = format!("9{port}");
    let toml = format!(
        r#"
{socket}
[services.web]
run = ["sh", "-c", "sleep {tag}1 & sleep {tag}2 & setsid sleep {tag}3 & exec python3 -m http.server {port} --bind 127.0.0.1"]
stop_timeout = "2s"
[services.web.restart]
max_attempts = 5
backoff_initial = "100ms"
backoff_max = "200ms"
verify_timeout = "10s"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "200ms"
timeout = "150ms"
"#,
        socket = socket_section(dir.path()),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let first = healthy_pid(&agent, "web").await;
    until("the first start's three sleepers", || {
        (processes_with(&tag).len() == 3).then_some(())
    })
    .await;
    // This test's sleepers, by pid: other tests in this binary have sleepers (and zombies) too.
    let mut ours: Vec<u32> = processes_with(&tag).iter().map(|(pid, _)| *pid).collect();

    signal(first, Signal::KILL);
    events
        .wait_for("a successful restart", |e| match e {
            v1::event::Kind::RestartAttempted(r) if r.succeeded => Some(()),
            _ => None,
        })
        .await;
    let second = healthy_pid(&agent, "web").await;
    assert_ne!(first, second);
    // The new start's three, and none of the old start's.
    until("only the second start's sleepers", || {
        (processes_with(&tag).len() == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(processes_with(&tag).len(), 3, "{:?}", processes_with(&tag));
    ours.extend(processes_with(&tag).iter().map(|(pid, _)| *pid));

    assert!(agent.stop(Duration::from_secs(30)).await);
    assert_eq!(processes_with(&tag), [], "leaked after stop");
    let zombies = our_zombies();
    assert!(
        zombies.iter().all(|z| !ours.contains(z)),
        "unreaped: {zombies:?} (this test's sleepers: {ours:?})"
    );
}

#[tokio::test]
async fn a_service_that_leaves_a_daemon_and_exits_leaves_no_daemon_after_escalation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let tag = format!("8{port}");
    let toml = format!(
        r#"
{socket}
[services.web]
run = ["sh", "-c", "setsid sleep {tag} & sleep 0.3; exit 1"]
stop_timeout = "1s"
[services.web.restart]
max_attempts = 2
backoff_initial = "100ms"
backoff_max = "200ms"
verify_timeout = "5s"
[[services.web.checks]]
kind = "tcp"
address = "127.0.0.1:{port}"
interval = "200ms"
timeout = "150ms"
"#,
        socket = socket_section(dir.path()),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    events
        .wait_for("escalation", |e| match e {
            v1::event::Kind::Escalated(x) if x.service == "web" => Some(()),
            _ => None,
        })
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(processes_with(&tag), [], "daemons left by the starts");
    assert!(agent.stop(Duration::from_secs(30)).await);
    assert_eq!(processes_with(&tag), []);
}

#[tokio::test]
async fn a_dependency_that_recovers_does_not_get_its_dependent_restarted_on_a_stale_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (db_port, app_port) = (free_port(), free_port());
    // db needs a second to listen after a restart; app's own check connects to db, so it fails
    // while db is down, and passes again as soon as db is back.
    let toml = format!(
        r#"
{socket}
[services.db]
run = {db}
stop_timeout = "2s"
[services.db.restart]
backoff_initial = "100ms"
verify_timeout = "5s"
[[services.db.checks]]
kind = "tcp"
address = "127.0.0.1:{db_port}"
interval = "100ms"
timeout = "80ms"

[services.app]
run = {app}
depends_on = ["db"]
stop_timeout = "2s"
[services.app.restart]
backoff_initial = "100ms"
verify_timeout = "5s"
[[services.app.checks]]
name = "db-conn"
kind = "tcp"
address = "127.0.0.1:{db_port}"
interval = "100ms"
timeout = "80ms"
"#,
        socket = socket_section(dir.path()),
        db = slow_server("1", db_port),
        app = slow_server("0", app_port),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let db = healthy_pid(&agent, "db").await;
    healthy_pid(&agent, "app").await;

    signal(db, Signal::KILL);
    events
        .wait_for("app's db-conn failing while db is down", |e| match e {
            v1::event::Kind::CheckChanged(c)
                if c.service == "app" && c.status == v1::CheckStatus::Unhealthy as i32 =>
            {
                Some(())
            }
            _ => None,
        })
        .await;
    events
        .wait_for("db healthy again", |e| match e {
            v1::event::Kind::RestartAttempted(r) if r.service == "db" && r.succeeded => Some(()),
            _ => None,
        })
        .await;
    healthy_pid(&agent, "app").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events.restarts("app"), [], "{:#?}", events.seen);
    assert!(agent.stop(Duration::from_secs(30)).await);
}

#[tokio::test]
async fn four_crashes_each_healed_are_not_flapping_at_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let toml = format!(
        r#"
{socket}
[services.web]
run = {run}
stop_timeout = "2s"
[services.web.restart]
max_attempts = 10
backoff_initial = "50ms"
backoff_max = "100ms"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:{port}/"
interval = "200ms"
timeout = "150ms"
"#,
        socket = socket_section(dir.path()),
        run = slow_server("0", port),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let mut events = Events::new(&agent);
    let mut pid = healthy_pid(&agent, "web").await;
    for kill in 1..=4 {
        signal(pid, Signal::KILL);
        events
            .wait_for(&format!("restart after kill {kill}"), |e| match e {
                v1::event::Kind::RestartAttempted(r) if r.succeeded => Some(()),
                _ => None,
            })
            .await;
        pid = healthy_pid(&agent, "web").await;
    }
    let flapped = events.drain().iter().any(|e| {
        matches!(e, v1::event::Kind::ServiceStateChanged(c) if c.to == v1::ServiceState::Flapping as i32)
    });
    assert!(!flapped, "{:#?}", events.seen);
    assert_eq!(state_of(&agent, "web").state, ServiceState::Healthy);
    assert!(agent.stop(Duration::from_secs(30)).await);
}
