//! Exactly once under crashes at random instants: a real coordinator process remediating an
//! escalated instance is SIGKILLed at a uniformly random moment of the remediation — often while
//! a DeregisterTargets or SetInstanceHealth call is in flight, since the fault proxy delays every
//! such call by a random time and forwards it even when its sender is dead — then restarted on
//! the same state. Every run must end with the instance replaced, and AWS must have accepted
//! exactly one DeregisterTargets and one SetInstanceHealth for it.
//!
//! `AUTOHEAL_CHAOS_RUNS` sets the number of runs (default 10; the longer local mode is e.g.
//! `AUTOHEAL_CHAOS_RUNS=100`). `AUTOHEAL_CHAOS_OLD_CONFIG=1` leaves out `[aws] max_backoff`, so
//! the test can be run against a coordinator from before that key (to show what it catches).

use std::time::Duration;

use autoheal_proto::identity::Role;
use autoheal_tests::{
    AWS_ENV, Coordinator, Pki, eventually, free_addr, moto::Moto, proxy::FaultProxy, sim::SimAgent,
};
use autohealctl::pki::Validity;

const WAIT: Duration = Duration::from_secs(60);
/// The longest the proxy holds a destructive call before forwarding it: longer than a restart
/// takes, so a restarted coordinator meets calls its dead predecessor still has in flight.
const CALL_DELAY: Duration = Duration::from_millis(1800);
/// Kills land uniformly in this span after the escalation: it covers the whole remediation
/// (deregister, drain, replace) with the delays above.
const KILL_SPAN: Duration = Duration::from_millis(5000);

fn runs() -> usize {
    std::env::var("AUTOHEAL_CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_never_repeats_or_loses_an_action() {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    proxy.delay_every("DeregisterTargets", CALL_DELAY);
    proxy.delay_every("SetInstanceHealth", CALL_DELAY);
    let pki = Pki::new();
    let runs = runs();
    let mut in_flight_kills = 0;
    for run in 0..runs {
        let name = format!("chaos{run}");
        let fleet = moto.fleet(&name, 3);
        for (id, _) in &fleet.instances {
            pki.issue(Role::Instance(id.clone()), Validity::default());
        }
        let config = format!(
            r#"dry_run = false

[store]
lease_ttl = "3s"
lease_renew_interval = "500ms"

[aws]
region = "us-east-1"
endpoint = "{endpoint}"
asg_names = ["{name}"]
interval = "200ms"
call_timeout = "2500ms"
max_attempts = 2
{max_backoff}

[ladder]
drain_timeout = "1s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
"#,
            endpoint = proxy.endpoint(),
            max_backoff = if std::env::var_os("AUTOHEAL_CHAOS_OLD_CONFIG").is_some() {
                ""
            } else {
                "max_backoff = \"200ms\""
            },
        );
        let mut coordinator = Coordinator::start_with(&pki, &config, &free_addr(), AWS_ENV);
        let agents: Vec<SimAgent> = fleet
            .instances
            .iter()
            .map(|(id, az)| SimAgent::spawn(coordinator.addr, pki.instance(id), id, az))
            .collect();
        let ids: Vec<String> = fleet.instances.iter().map(|(i, _)| i.clone()).collect();
        eventually(WAIT, "agents connected and inventory applied", || async {
            let out = coordinator.ctl(&pki.viewer(), &["--output", "json", "instances"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let list = json.as_array()?;
            ids.iter()
                .all(|id| {
                    list.iter()
                        .any(|i| i["instance_id"] == id.as_str() && i["asg"] == name.as_str())
                })
                .then_some(())
        })
        .await;

        let victim = fleet.instances[0].0.clone();
        let kill_after = KILL_SPAN.mul_f64(rand::random::<f64>());
        agents[0].escalate("web", "restarts exhausted");
        tokio::time::sleep(kill_after).await;
        // A call that reached the proxy but not yet AWS is in flight at the kill.
        let reached = proxy.count("DeregisterTargets") + proxy.count("SetInstanceHealth");
        let accepted = proxy.accepted_for("DeregisterTargets", &victim)
            + proxy.accepted_for("SetInstanceHealth", &victim);
        coordinator.restart();
        if reached > 0 && usize::try_from(reached).unwrap_or(0) > accepted {
            in_flight_kills += 1;
        }

        eventually(
            WAIT,
            "the victim deregistered and marked unhealthy",
            || async {
                let q = moto.query(&fleet);
                let target = q["targets"]
                    .as_array()?
                    .iter()
                    .find(|t| t["id"] == victim.as_str())
                    .map(|t| t["state"].as_str().unwrap_or_default().to_owned());
                let health = q["instances"]
                    .as_array()?
                    .iter()
                    .find(|t| t["id"] == victim.as_str())
                    .map(|t| t["health"].as_str().unwrap_or_default().to_owned());
                let gone = target.is_none_or(|s| s == "draining" || s == "unused");
                (gone && health.as_deref() == Some("Unhealthy")).then_some(())
            },
        )
        .await;
        // Let any call the dead process left in the proxy land, and the new one settle.
        tokio::time::sleep(CALL_DELAY + Duration::from_millis(500)).await;
        let deregistered = proxy.accepted_for("DeregisterTargets", &victim);
        let replaced = proxy.accepted_for("SetInstanceHealth", &victim);
        assert_eq!(
            (deregistered, replaced),
            (1, 1),
            "run {run}: killed {kill_after:?} after the escalation; AWS accepted {deregistered} \
             DeregisterTargets and {replaced} SetInstanceHealth for {victim}\n{}",
            coordinator.log()
        );
        if std::env::var_os("AUTOHEAL_CHAOS_VERBOSE").is_some() {
            eprintln!(
                "run {run}: killed after {kill_after:?}\n{}",
                coordinator.log()
            );
        }
        drop(agents);
        drop(coordinator);
    }
    eprintln!("chaos: {runs} runs, {in_flight_kills} killed with a destructive call in flight");
}
