//! The coordinator acting on AWS, end to end: a real coordinator process, simulated agents over
//! real mTLS, and moto server (behind a loopback fault proxy that counts calls and injects
//! throttling, 5xx and failing target health) as the AWS API.

use std::time::Duration;

use autoheal_proto::identity::Role;
use autoheal_tests::{
    AWS_ENV, Coordinator, Pki, eventually, free_addr,
    moto::{FleetFixture, Moto},
    proxy::{Fault, FaultProxy},
    sim::SimAgent,
};
use autohealctl::pki::Validity;

pub(crate) const WAIT: Duration = Duration::from_secs(60);

pub(crate) struct World {
    pub(crate) moto: Moto,
    pub(crate) proxy: FaultProxy,
    pub(crate) fleet: FleetFixture,
    pub(crate) pki: Pki,
    pub(crate) coordinator: Coordinator,
    pub(crate) agents: Vec<SimAgent>,
}

pub(crate) async fn world(extra_env: &[(&str, &str)], tuning: &str) -> World {
    world_selecting(extra_env, tuning, r#"asg_names = ["web"]"#).await
}

async fn world_selecting(extra_env: &[(&str, &str)], tuning: &str, selector: &str) -> World {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
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
{selector}
interval = "300ms"
call_timeout = "5s"

[ladder]
drain_timeout = "1s"
agent_silence_grace = "3s"
ssm_timeout = "2s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
{tuning}
"#,
        endpoint = proxy.endpoint(),
        selector = selector,
    );
    let mut env = AWS_ENV.to_vec();
    env.extend_from_slice(extra_env);
    let coordinator = Coordinator::start_with(&pki, &extra, &free_addr(), &env);
    let agents = fleet
        .instances
        .iter()
        .map(|(id, az)| SimAgent::spawn(coordinator.addr, pki.instance(id), id, az))
        .collect();
    World {
        moto,
        proxy,
        fleet,
        pki,
        coordinator,
        agents,
    }
}

pub(crate) fn target_state(q: &serde_json::Value, id: &str) -> Option<String> {
    q["targets"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == id)
        .map(|t| t["state"].as_str().unwrap_or_default().to_owned())
}

pub(crate) fn asg_health(q: &serde_json::Value, id: &str) -> Option<String> {
    q["instances"]
        .as_array()?
        .iter()
        .find(|t| t["id"] == id)
        .map(|t| t["health"].as_str().unwrap_or_default().to_owned())
}

/// Waits until every agent is connected and the inventory has placed every instance in its ASG.
pub(crate) async fn settled(w: &World) {
    let ids: Vec<String> = w.fleet.instances.iter().map(|(i, _)| i.clone()).collect();
    let coordinator = &w.coordinator;
    let pki = &w.pki;
    eventually(WAIT, "agents connected and inventory applied", || async {
        let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "instances"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let list = json.as_array()?;
        ids.iter()
            .all(|id| {
                list.iter().any(|i| {
                    i["instance_id"] == id.as_str() && i["connected"] == true && i["asg"] == "web"
                })
            })
            .then_some(())
    })
    .await;
}

async fn replaced(w: &World, id: &str) -> serde_json::Value {
    eventually(
        WAIT,
        "the instance to be deregistered and marked unhealthy",
        || async {
            let q = w.moto.query(&w.fleet);
            let gone = target_state(&q, id).is_none_or(|s| s == "draining" || s == "unused");
            (gone && asg_health(&q, id).as_deref() == Some("Unhealthy")).then_some(q)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalated_instance_is_deregistered_then_replaced_exactly_once() {
    let w = world(&[], "").await;
    settled(&w).await;
    let victim = w.fleet.instances[0].0.clone();
    w.agents[0].escalate("web", "3 restarts in 5m failed; HTTP check still failing");

    let q = replaced(&w, &victim).await;
    // The others are untouched.
    for (id, _) in &w.fleet.instances[1..] {
        assert_eq!(target_state(&q, id).as_deref(), Some("healthy"), "{q}");
        assert_eq!(asg_health(&q, id).as_deref(), Some("Healthy"), "{q}");
    }
    // Give the loop a few more passes: nothing is repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.proxy.count("DeregisterTargets"), 1);
    assert_eq!(w.proxy.count("SetInstanceHealth"), 1);

    let out = w.coordinator.ctl(
        &w.pki.viewer(),
        &["--output", "json", "actions", "--instance", &victim],
    );
    let actions: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let done: Vec<_> = actions
        .as_array()
        .expect("actions")
        .iter()
        .filter(|a| a["status"] == "succeeded")
        .map(|a| a["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(done.contains(&"deregister".to_owned()), "{actions}");
    assert!(done.contains(&"replace".to_owned()), "{actions}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_server_errors_are_retried_until_the_action_completes() {
    // Groups found by tag this time (autoheal:enabled=true, set by the fixture).
    let w = world_selecting(&[], "", r#"asg_tag = "autoheal:enabled=true""#).await;
    settled(&w).await;
    w.proxy
        .inject("DeregisterTargets", &[Fault::Throttle, Fault::ServerError]);
    w.proxy
        .inject("SetInstanceHealth", &[Fault::Unavailable, Fault::Throttle]);
    w.proxy
        .inject("DescribeAutoScalingGroups", &[Fault::Throttle]);
    let victim = w.fleet.instances[1].0.clone();
    w.agents[1].escalate("web", "restarts exhausted");
    replaced(&w, &victim).await;
    assert_eq!(
        w.proxy.count("DeregisterTargets"),
        3,
        "two faults, then success"
    );
    assert_eq!(
        w.proxy.count("SetInstanceHealth"),
        3,
        "two faults, then success"
    );
    assert!(w.coordinator.log().contains("AWS call failed; retrying"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_call_and_outcome_never_repeats_the_call() {
    let mut w = world(&[("AUTOHEAL_FAULT", "crash-after-call:deregister")], "").await;
    settled(&w).await;
    let victim = w.fleet.instances[2].0.clone();
    w.agents[2].escalate("web", "restarts exhausted");
    let status = w
        .coordinator
        .wait_exit(WAIT)
        .expect("the coordinator aborts after the DeregisterTargets call");
    assert!(!status.success());
    assert_eq!(w.proxy.count("DeregisterTargets"), 1);

    let env = AWS_ENV
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    w.coordinator.restart_with_env(env);
    replaced(&w, &victim).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.proxy.count("DeregisterTargets"), 1, "never called twice");
    assert_eq!(w.proxy.count("SetInstanceHealth"), 1);
    assert!(
        w.coordinator
            .log()
            .contains("reconciled interrupted action")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_instance_gets_the_fixed_ssm_command() {
    let mut w = world(&[], "").await;
    settled(&w).await;
    let (victim, _) = w.fleet.instances[0].clone();
    // The agent goes silent and the ALB fails the instance.
    drop(w.agents.remove(0));
    w.proxy.fail_target(&victim);
    let q = eventually(WAIT, "an SSM command for the silent instance", || async {
        let q = w.moto.query(&w.fleet);
        q["commands"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
            .then_some(q)
    })
    .await;
    let expected_script = serde_json::json!([
        "systemctl restart autoheal-agent.service",
        "systemctl restart -- web.service"
    ]);
    let commands = q["commands"].as_array().expect("commands");
    assert_eq!(commands.len(), 1, "{q}");
    assert_eq!(commands[0]["document"], "AWS-RunShellScript");
    assert_eq!(commands[0]["parameters"]["commands"], expected_script);
    // moto lists every instance on a command, whatever was asked: check what we sent.
    let sent = w.proxy.requests("SendCommand");
    assert_eq!(sent.len(), 1, "{sent:?}");
    let sent: serde_json::Value = serde_json::from_str(&sent[0]).expect("json body");
    assert_eq!(sent["InstanceIds"], serde_json::json!([victim]));
    assert_eq!(sent["DocumentName"], "AWS-RunShellScript");
    assert_eq!(
        sent["Parameters"]["commands"], expected_script,
        "only the fixed script, built from the declared unit names"
    );
    // Still silent after the SSM timeout: deregistered and replaced.
    replaced(&w, &victim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_is_reported_and_the_coordinator_keeps_serving() {
    let pki = Pki::new();
    let extra = format!(
        "dry_run = false\n[aws]\nendpoint = \"http://{}\"\nasg_names = [\"web\"]\ninterval = \"300ms\"\ncall_timeout = \"1s\"\nmax_attempts = 2\n",
        free_addr()
    );
    let coordinator = Coordinator::start_with(&pki, &extra, "127.0.0.1:0", AWS_ENV);
    eventually(WAIT, "the inventory failure to be reported", || async {
        coordinator.log().contains("inventory failed").then_some(())
    })
    .await;
    let out = coordinator.ctl(&pki.viewer(), &["events"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("inventory-failed"), "{text}");
    assert!(text.contains("DescribeAutoScalingGroups"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_drain_respects_min_healthy_and_whatif_names_the_guardrail() {
    let w = world(&[], "").await;
    settled(&w).await;
    let (first, second) = (
        w.fleet.instances[0].0.clone(),
        w.fleet.instances[1].0.clone(),
    );
    // Wait until the control loop has decided at least once (what-if needs its view).
    eventually(WAIT, "a what-if answer from the engine", || async {
        let out = w.coordinator.ctl(
            &w.pki.viewer(),
            &["--output", "json", "whatif", &first, "deregister"],
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (json["allowed"] == true).then_some(())
    })
    .await;

    let out = w.coordinator.ctl(&w.pki.viewer(), &["drain", &first]);
    assert!(!out.status.success(), "viewers can't drain");

    let out = w.coordinator.ctl(
        &w.pki.operator(),
        &["drain", &first, "--reason", "kernel update"],
    );
    assert!(out.status.success(), "{out:?}");
    let q = w.moto.query(&w.fleet);
    assert!(
        target_state(&q, &first).is_none_or(|s| s == "draining" || s == "unused"),
        "{q}"
    );

    // A second drain would leave 1 of 3 healthy (< 66%): held, and what-if says why.
    let out = w.coordinator.ctl(
        &w.pki.operator(),
        &["--output", "json", "whatif", &second, "deregister"],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["allowed"], false, "{json}");
    let names: Vec<_> = json["held_by"]
        .as_array()
        .expect("held_by")
        .iter()
        .map(|g| g["name"].clone())
        .collect();
    assert!(
        names
            .iter()
            .any(|n| n.as_str().is_some_and(|n| n.contains("min_healthy"))),
        "{json}"
    );
    let out = w.coordinator.ctl(&w.pki.operator(), &["drain", &second]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("min"), "{stderr}");
    let q = w.moto.query(&w.fleet);
    assert_eq!(target_state(&q, &second).as_deref(), Some("healthy"), "{q}");

    // The drained instance is skipped, so automation leaves it alone; the journal names who.
    let out = w
        .coordinator
        .ctl(&w.pki.viewer(), &["--output", "json", "instance", &first]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["skipped"], true, "{json}");
    let drained = json["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .any(|a| {
            a["status"] == "succeeded"
                && a["requested_by"] == "spiffe://autoheal.test/operator/admin"
        });
    assert!(drained, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_dependency_outage_is_held_by_the_brake() {
    let w = world(&[], "").await;
    settled(&w).await;
    for agent in &w.agents {
        agent.dependency_failing("postgres-main");
    }
    // One of them also escalates (its app can't work without the database).
    w.agents[0].escalate("web", "HTTP check failing: database unreachable");
    let coordinator = &w.coordinator;
    let pki = &w.pki;
    eventually(WAIT, "the dependency brake to be reported", || async {
        let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "status"]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let text = json["groups"].to_string();
        text.contains("dependency").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        w.proxy.count("DeregisterTargets"),
        0,
        "replacing instances can't fix a shared database"
    );
    assert_eq!(w.proxy.count("SetInstanceHealth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_no_managed_group_knows_is_reported_and_never_acted_on() {
    let w = world(&[], "").await;
    settled(&w).await;
    let stranger = "i-0stranger000000001";
    let files = w
        .pki
        .issue(Role::Instance(stranger.into()), Validity::default());
    let agent = SimAgent::spawn(w.coordinator.addr, files, stranger, "us-east-1a");
    agent.escalate("web", "restarts exhausted");
    let coordinator = &w.coordinator;
    let pki = &w.pki;
    eventually(WAIT, "the stranger to be reported", || async {
        let out = coordinator.ctl(&pki.viewer(), &["events", "--instance", stranger]);
        String::from_utf8_lossy(&out.stdout)
            .contains("unknown-instance")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.proxy.count("DeregisterTargets"), 0);
    assert_eq!(w.proxy.count("SetInstanceHealth"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_reported_at_once_and_retried_at_the_next_pass() {
    let w = world(&[], "").await;
    settled(&w).await;
    w.proxy.inject("DeregisterTargets", &[Fault::AccessDenied]);
    let victim = w.fleet.instances[0].0.clone();
    w.agents[0].escalate("web", "restarts exhausted");
    let coordinator = &w.coordinator;
    let pki = &w.pki;
    eventually(WAIT, "the failure in the journal", || async {
        let out = coordinator.ctl(
            &pki.viewer(),
            &["--output", "json", "actions", "--instance", &victim],
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        json.as_array()?
            .iter()
            .any(|a| {
                a["status"] == "failed"
                    && a["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("AccessDenied"))
            })
            .then_some(())
    })
    .await;
    // Not retried within the call (a client error), but not dropped either: the ladder decides
    // again, and with the permission back the action completes.
    replaced(&w, &victim).await;
    assert_eq!(
        w.proxy.count("DeregisterTargets"),
        2,
        "one denied, one that worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cooldowns_survive_a_coordinator_restart() {
    let mut w = world(&[], "\n[guardrails.asg.web]\nasg_cooldown = \"10m\"").await;
    settled(&w).await;
    let first = w.fleet.instances[0].0.clone();
    w.agents[0].escalate("web", "restarts exhausted");
    replaced(&w, &first).await;

    // SIGKILL and restart on the same address: the book comes back from the store, and the
    // agents reconnect by themselves.
    w.coordinator.restart();
    settled(&w).await;
    w.agents[1].escalate("web", "restarts exhausted");
    let coordinator = &w.coordinator;
    let pki = &w.pki;
    eventually(
        WAIT,
        "the ASG cooldown to hold the second remediation",
        || async {
            let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "status"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            json["groups"]
                .to_string()
                .contains("asg_cooldown")
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.proxy.count("DeregisterTargets"),
        1,
        "held by the persisted cooldown"
    );
}
