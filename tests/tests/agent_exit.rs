//! An exit is noticed at once for every kind of service (#19.8), measured: a `run` child is
//! awaited, a pidfile's process is held as a pidfd. Prints exit→noticed figures (BENCHMARKS.md).

use std::time::{Duration, Instant};

use autoheal_agent::{Agent, state::ServiceState};
use autoheal_tests::{
    agent::{signal, socket_section, start_agent_from_toml},
    until,
};
use rustix::process::Signal;

/// Kills the service's main process `rounds` times; each time, how long until the agent's
/// published state leaves Healthy (the exit seen, a restart begun).
async fn exit_to_noticed(agent: &Agent, service: &str, rounds: usize) -> Vec<Duration> {
    let mut rx = agent.services[service].clone();
    let mut figures = Vec::new();
    for round in 0..rounds {
        let pid = until(&format!("{service} healthy (round {round})"), || {
            let s = rx.borrow();
            (s.state == ServiceState::Healthy)
                .then_some(s.pid)
                .flatten()
        })
        .await;
        rx.borrow_and_update();
        let killed = Instant::now();
        signal(pid, Signal::KILL);
        loop {
            tokio::time::timeout(Duration::from_secs(10), rx.changed())
                .await
                .expect("a state change within 10 s")
                .expect("agent running");
            // The exit and the restart it starts are one step: the state leaves Healthy.
            if rx.borrow_and_update().state != ServiceState::Healthy {
                break;
            }
        }
        figures.push(killed.elapsed());
    }
    figures
}

fn summary(kind: &str, mut f: Vec<Duration>) -> Duration {
    f.sort();
    let median = f[f.len() / 2];
    println!(
        "exit->noticed {kind}: median {median:?}, max {:?}, n {} (all: {f:?})",
        f[f.len() - 1],
        f.len()
    );
    median
}

#[tokio::test]
async fn exits_are_noticed_at_once_for_run_and_pidfile_services() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The daemon must not hold the command's stderr, or the restart waits for it to close.
    let start = "sleep 1000 >/dev/null 2>&1 & echo $! > svc.pid";
    // The pidfile service runs before the agent starts, as a service the agent didn't start.
    std::process::Command::new("sh")
        .args(["-c", start])
        .current_dir(dir.path())
        .status()
        .expect("start the pidfile service");
    let toml = format!(
        r#"
{socket}
[services.child]
run = ["sleep", "1000"]
[services.child.restart]
max_attempts = 20
backoff_initial = "10ms"
backoff_max = "20ms"
flap_transitions = 100
[[services.child.checks]]
kind = "exec"
command = ["true"]
interval = "5s"
timeout = "1s"

[services.pidfile]
restart_command = ["sh", "-c", "{start}"]
pidfile = "svc.pid"
[services.pidfile.restart]
max_attempts = 20
backoff_initial = "10ms"
backoff_max = "20ms"
flap_transitions = 100
[[services.pidfile.checks]]
kind = "process"
pidfile = "svc.pid"
interval = "5s"
timeout = "1s"
"#,
        socket = socket_section(dir.path()),
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let child = summary("run", exit_to_noticed(&agent, "child", 7).await);
    let pidfile = summary("pidfile", exit_to_noticed(&agent, "pidfile", 7).await);
    // The old poll every 250 ms took 125 ms on average; a pidfd or a wait wakes at once.
    assert!(child < Duration::from_millis(100), "{child:?}");
    assert!(pidfile < Duration::from_millis(100), "{pidfile:?}");
    assert!(agent.stop(Duration::from_secs(30)).await);
    if let Ok(pid) = std::fs::read_to_string(dir.path().join("svc.pid")) {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}
