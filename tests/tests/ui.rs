//! `autohealctl ui` in a real browser: a coordinator on moto with three simulated agents, the
//! real `autohealctl ui` process with a viewer certificate, and Debian's chromium driven by
//! `playwright-core` (`tests/ui/fleet.spec.mjs`, run with node). The script asserts what the page
//! shows and asks this test, one line at a time, to change the world under it: escalate an agent,
//! fail a shared dependency, pause and skip as an operator, freeze the coordinator (SIGSTOP) and
//! thaw it, kill it, start it again.

use std::{path::PathBuf, process::Stdio, time::Duration};

use autoheal_proto::identity::Role;
use autoheal_tests::{AWS_ENV, Coordinator, Pki, bin, free_addr, moto::Moto, sim::SimAgent};
use autohealctl::pki::Validity;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

const CHROMIUM: &str = "/usr/bin/chromium";
const DEPENDENCY: &str = "postgres-main";
/// The whole browser run; the script's own steps time out sooner.
const RUN: Duration = Duration::from_secs(90);

fn ui_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ui")
}

/// `autohealctl ui` as a child process, with its address from its first line.
async fn start_ui(coordinator: &Coordinator, pki: &Pki) -> (tokio::process::Child, String) {
    let viewer = pki.viewer();
    let mut child = tokio::process::Command::new(bin("autohealctl"))
        .arg("--endpoint")
        .arg(coordinator.endpoint())
        .arg("--ca")
        .arg(&viewer.ca)
        .arg("--cert")
        .arg(&viewer.cert)
        .arg("--key")
        .arg(&viewer.key)
        .args(["ui", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn autohealctl ui");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("autohealctl ui printed its address")
        .expect("read")
        .expect("a line");
    let url = first
        .strip_prefix("autohealctl ui listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {first:?}"))
        .to_owned();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_view_shows_the_fleet_a_remediation_a_brake_and_a_lost_coordinator_and_reconnects() {
    assert!(
        std::path::Path::new(CHROMIUM).exists()
            && ui_dir().join("node_modules/playwright-core").exists(),
        "chromium and playwright-core are missing: run scripts/setup.sh"
    );
    let moto = Moto::start();
    let fleet = moto.fleet("web", 3);
    let pki = Pki::new();
    for (id, _) in &fleet.instances {
        pki.issue(Role::Instance(id.clone()), Validity::default());
    }
    let extra = format!(
        r#"dry_run = false

[aws]
region = "us-east-1"
endpoint = "{endpoint}"
asg_names = ["web"]
interval = "300ms"
call_timeout = "5s"

[ladder]
drain_timeout = "1s"
agent_silence_grace = "3s"
ssm_timeout = "2s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
"#,
        endpoint = moto.endpoint(),
    );
    // A fixed port, so the restarted coordinator is found where the view looks.
    let mut coordinator = Coordinator::start_with(&pki, &extra, &free_addr(), AWS_ENV);
    let addr = coordinator.addr;
    let agents: Vec<SimAgent> = fleet
        .instances
        .iter()
        .map(|(id, az)| SimAgent::spawn(addr, pki.instance(id), id, az))
        .collect();
    let (_ui, url) = start_ui(&coordinator, &pki).await;

    let screenshot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fleet-view.png");
    let _ = std::fs::remove_file(&screenshot);
    let escalated = fleet.instances[0].0.clone();
    let skipped = fleet.instances[1].0.clone();
    let mut script = tokio::process::Command::new("node")
        .arg("fleet.spec.mjs")
        .current_dir(ui_dir())
        .env("UI_URL", &url)
        .env("ESCALATED", &escalated)
        .env("SKIPPED", &skipped)
        .env("DEPENDENCY", DEPENDENCY)
        .env("SCREENSHOT", &screenshot)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (run scripts/setup.sh)");
    let mut stdin = script.stdin.take().expect("stdin");
    let mut out = BufReader::new(script.stdout.take().expect("stdout")).lines();
    let mut said = Vec::new();
    let run = async {
        while let Some(line) = out.next_line().await.expect("read script output") {
            eprintln!("fleet.spec: {line}");
            said.push(line.clone());
            match line.as_str() {
                "need escalate" => {
                    agents[0].escalate("web", "3 restarts in 5m failed; HTTP check still failing")
                }
                // Two of three instances name the same failing database: the dependency brake.
                "need outage" => {
                    for agent in &agents[1..] {
                        agent.dependency_failing(DEPENDENCY);
                    }
                }
                // What an operator does with autohealctl; the view shows who and why.
                "need pause" => {
                    let operator = pki.operator();
                    for args in [
                        &["pause", "--reason", "change freeze"][..],
                        &["skip", &skipped, "--reason", "kernel debugging"][..],
                    ] {
                        let out = coordinator.ctl(&operator, args);
                        assert!(out.status.success(), "{args:?}: {out:?}");
                    }
                }
                "need freeze" => coordinator.signal("STOP"),
                "need thaw" => coordinator.signal("CONT"),
                "need stop" => {
                    let _ = coordinator.child.kill();
                    let _ = coordinator.child.wait();
                }
                "need restart" => coordinator.restart(),
                _ => continue,
            }
            stdin.write_all(b"go\n").await.expect("write to the script");
        }
    };
    tokio::time::timeout(RUN, run)
        .await
        .unwrap_or_else(|_| panic!("the browser run took over {RUN:?}: {said:?}"));
    let status = script.wait().await.expect("script exit");
    let log = coordinator.log();
    assert!(status.success(), "fleet.spec.mjs failed: {said:?}\n{log}");
    for step in [
        "ok fleet",
        "ok read-only",
        "ok remediation",
        "ok timeline",
        "ok brake",
        "ok pause and skip",
        "ok frozen",
        "ok thawed",
        "ok banner",
        "ok reconnected",
    ] {
        assert!(
            said.iter().any(|l| l.starts_with(step)),
            "{step} missing: {said:?}"
        );
    }
    let brake = said
        .iter()
        .find(|l| l.starts_with("ok brake"))
        .expect("brake line");
    assert!(
        brake.contains(DEPENDENCY),
        "the brake names its reason: {brake}"
    );
    assert!(
        screenshot.exists(),
        "no screenshot at {}",
        screenshot.display()
    );
}
