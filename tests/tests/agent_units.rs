//! What stopping the agent does (#19.7): SIGTERM stops the `run` services (the agent's own
//! children) and leaves `unit` services alone: an agent restart or upgrade through the SSM
//! package never restarts a unit. systemd is faked by a `systemctl` script on the agent's PATH.

use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use autoheal_tests::{agent::signal, bin};
use rustix::process::Signal;

/// A `systemctl` that logs every call to `log`, says `fake.service` is active with MainPID
/// `pid`, and succeeds at everything else.
fn fake_systemctl(dir: &Path, log: &Path, pid: u32) {
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {log}\ncase \"$1\" in\n  is-active) echo active ;;\n  show) echo {pid} ;;\nesac\nexit 0\n",
        log = log.display()
    );
    let path = dir.join("systemctl");
    std::fs::write(&path, script).expect("write fake systemctl");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn start(config: &Path, fake_bin: &Path) -> Child {
    let path = format!(
        "{}:{}",
        fake_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(bin("autoheal-agent"))
        .args(["--config", config.to_str().expect("utf-8")])
        .env("PATH", path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent")
}

fn status(config: &Path) -> Option<serde_json::Value> {
    let out = Command::new(bin("autoheal-agent"))
        .args([
            "status",
            "--config",
            config.to_str().expect("utf-8"),
            "--output",
            "json",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn wait_healthy(config: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = status(config)
            && v["services"]
                .as_array()
                .is_some_and(|s| s.len() == 2 && s.iter().all(|s| s["state"] == "healthy"))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "agent never reported healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(mut agent: Child) {
    signal(agent.id(), Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = agent.try_wait().expect("wait") {
            assert!(s.success(), "{s:?}");
            return;
        }
        assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn stopping_and_restarting_the_agent_stops_run_services_and_never_restarts_a_unit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake_bin = dir.path().join("bin");
    std::fs::create_dir(&fake_bin).expect("mkdir");
    let log = dir.path().join("systemctl.log");
    // The unit's main process, as systemd would own it: not a child of the agent.
    let mut unit_main = Command::new("sleep")
        .arg("1000")
        .spawn()
        .expect("spawn the unit's process");
    fake_systemctl(&fake_bin, &log, unit_main.id());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[status]
socket = "{sock}"
[services.own]
run = ["sleep", "1000"]
[[services.own.checks]]
kind = "process"
process_name = "sleep"
interval = "200ms"
timeout = "150ms"
[services.nginx]
unit = "fake.service"
[[services.nginx.checks]]
kind = "systemd"
unit = "fake.service"
interval = "200ms"
timeout = "150ms"
"#,
            sock = dir.path().join("agent.sock").display()
        ),
    )
    .expect("write config");

    let mut run_pids = Vec::new();
    for _ in 0..2 {
        let agent = start(&config, &fake_bin);
        let v = wait_healthy(&config);
        let own = v["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "own"))
            .and_then(|s| s["pid"].as_u64())
            .expect("own's pid") as u32;
        run_pids.push(own);
        sigterm(agent);
        assert!(!alive(own), "the run service stops with the agent");
    }
    assert_ne!(run_pids[0], run_pids[1]);
    let calls = std::fs::read_to_string(&log).expect("systemctl was called");
    assert!(calls.contains("is-active"), "{calls}");
    for verb in ["restart", "stop", "start", "kill"] {
        assert!(
            !calls
                .lines()
                .any(|l| l.split_whitespace().next() == Some(verb)),
            "the agent ran `systemctl {verb}`:\n{calls}"
        );
    }
    assert!(
        alive(unit_main.id()),
        "the unit's process outlived two agents"
    );
    let _ = unit_main.kill();
    let _ = unit_main.wait();
}
