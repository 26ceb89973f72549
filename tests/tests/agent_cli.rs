//! The `autoheal-agent` binary: check-config exit codes and output, status over the socket,
//! graceful shutdown on SIGTERM.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use autoheal_tests::{agent::signal, bin};
use rustix::process::Signal;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(bin("autoheal-agent"))
        .args(args)
        .output()
        .expect("run autoheal-agent")
}

#[test]
fn check_config_lists_every_error_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[coordinator]
endpoints = ["no-port"]
[tls]
ca = "missing/ca.pem"
cert = "missing/cert.pem"
key = "missing/key.pem"
[services.web]
run = ["python3", "-m", "http.server"]
depends_on = ["db"]
colour = "blue"
[[services.web.checks]]
kind = "http"
url = "http://127.0.0.1:8080/"
interval = "1s"
timeout = "2s"
[[services.web.checks]]
kind = "tcp"
"#,
    )
    .expect("write");
    let out = run(&["check-config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "coordinator.endpoints[0]: ",
        "services.web.colour: unknown key",
        "services.web.depends_on[0]: no service named \"db\"",
        "services.web.checks[0].timeout: must be shorter than interval",
        "services.web.checks[1].address: required for tcp checks",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{stdout}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 error(s)"));
}

#[test]
fn check_config_reports_unusable_tls_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    std::fs::write(
        &path,
        r#"
[coordinator]
endpoints = ["127.0.0.1:7443"]
[tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[identity]
instance_id = "i-1"
availability_zone = "a"
"#,
    )
    .expect("write");
    std::fs::write(dir.path().join("ca.pem"), "garbage").expect("write");
    let out = run(&["check-config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("tls.cert: cannot read"), "{stdout}");
    assert!(stdout.contains("tls.key: cannot read"), "{stdout}");

    // All readable, but the CA is not PEM.
    std::fs::write(dir.path().join("cert.pem"), "garbage").expect("write");
    std::fs::write(dir.path().join("key.pem"), "garbage").expect("write");
    let out = run(&["check-config", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("tls: ") && stdout.contains("ca.pem"),
        "{stdout}"
    );
}

#[test]
fn good_config_runs_reports_status_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.toml");
    let sock = dir.path().join("agent.sock");
    std::fs::write(
        &path,
        format!(
            r#"
[status]
socket = "{}"
[services.sleeper]
run = ["sleep", "1000"]
[[services.sleeper.checks]]
kind = "process"
process_name = "sleep"
interval = "500ms"
timeout = "300ms"
"#,
            sock.display()
        ),
    )
    .expect("write");
    let p = path.to_str().expect("utf-8");
    let out = run(&["check-config", p]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 1 service(s), 1 check(s)"));

    let mut agent = Command::new(bin("autoheal-agent"))
        .args(["--config", p, "--log-format", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let deadline = Instant::now() + Duration::from_secs(60);
    let json = loop {
        let out = run(&["status", "--config", p, "--output", "json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
            if v["services"][0]["state"] == "healthy" {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "agent never reported healthy");
        std::thread::sleep(Duration::from_millis(100));
    };
    let pid = json["services"][0]["pid"].as_u64().expect("pid") as u32;
    let text = run(&["status", "--socket", sock.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("sleeper") && text.contains("healthy"),
        "{text}"
    );

    signal(agent.id(), Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    assert!(!sock.exists(), "socket removed on shutdown");
    // The supervised process was stopped with the agent.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "{stat}");
}
