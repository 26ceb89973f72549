//! The coordinator acting the way Auto Scaling really behaves (#15), against moto behind the
//! fault proxy: suspended processes, the ASG's health check grace.

use std::process::Command;
use std::time::Duration;

use crate::aws::{WAIT, World, asg_health, settled, target_state, world};
use autoheal_tests::eventually;

/// Suspends (or resumes) scaling processes of the fixture's group in moto.
fn processes(w: &World, verb: &str, names: &[&str]) {
    let script = format!(
        "import boto3,sys\n\
         c=boto3.session.Session(aws_access_key_id='testing',aws_secret_access_key='testing',\
         region_name='us-east-1').client('autoscaling',endpoint_url=sys.argv[1])\n\
         c.{verb}_processes(AutoScalingGroupName=sys.argv[2],ScalingProcesses=sys.argv[3:])\n"
    );
    let out = Command::new("python3")
        .args(["-c", &script, &w.moto.endpoint(), &w.fleet.asg])
        .args(names)
        .output()
        .expect("python3 with boto3");
    assert!(
        out.status.success(),
        "{verb}_processes: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The names of the guardrails what-if reports holding `action` on `id`, once the engine has
/// decided at least once and any of them holds.
async fn held(w: &World, id: &str, action: &str, name: &str) -> serde_json::Value {
    eventually(WAIT, "what-if to name the guardrail", || async {
        let out = w
            .coordinator
            .ctl(&w.pki.viewer(), &["--output", "json", "whatif", id, action]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let names = json["held_by"].as_array()?;
        names
            .iter()
            .any(|g| g["name"].as_str().is_some_and(|n| n.contains(name)))
            .then_some(json)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_suspended_holds_and_alerts_and_nothing_says_replaced() {
    let w = world(&[], "").await;
    settled(&w).await;
    processes(&w, "suspend", &["Launch", "ReplaceUnhealthy"]);
    let victim = w.fleet.instances[0].0.clone();
    held(&w, &victim, "replace", "processes_suspended").await;
    w.agents[0].escalate("web", "3 restarts in 5m failed; HTTP check still failing");

    // Several passes: nothing is taken out of traffic that nothing would replace.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.proxy.count("DeregisterTargets"), 0);
    assert_eq!(w.proxy.count("SetInstanceHealth"), 0);
    assert_eq!(w.proxy.count("TerminateInstanceInAutoScalingGroup"), 0);
    let out = w
        .coordinator
        .ctl(&w.pki.viewer(), &["--output", "json", "instance", &victim]);
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(!json.contains("replacement requested"), "{json}");
    let q = w.moto.query(&w.fleet);
    assert_eq!(target_state(&q, &victim).as_deref(), Some("healthy"), "{q}");

    // Launch resumed (ReplaceUnhealthy still suspended): the ASG can replace again, by
    // terminate-without-decrement, since marking it unhealthy would replace nothing.
    processes(&w, "resume", &["Launch"]);
    eventually(WAIT, "the instance to be terminated", || async {
        (w.proxy.count("TerminateInstanceInAutoScalingGroup") > 0).then_some(())
    })
    .await;
    assert_eq!(
        w.proxy.count("SetInstanceHealth"),
        0,
        "SetInstanceHealth replaces nothing with ReplaceUnhealthy suspended"
    );
    let bodies = w.proxy.requests("TerminateInstanceInAutoScalingGroup");
    assert!(
        bodies
            .iter()
            .all(|b| b.contains(&victim) && b.contains("ShouldDecrementDesiredCapacity=false")),
        "{bodies:?}"
    );
    assert!(w.proxy.count("DeregisterTargets") > 0, "deregistered first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacement_asks_the_asg_to_respect_its_grace_period() {
    let w = world(&[], "").await;
    settled(&w).await;
    let victim = w.fleet.instances[0].0.clone();
    w.agents[0].escalate("web", "3 restarts in 5m failed; HTTP check still failing");
    eventually(WAIT, "the instance to be marked unhealthy", || async {
        let q = w.moto.query(&w.fleet);
        (asg_health(&q, &victim).as_deref() == Some("Unhealthy")).then_some(())
    })
    .await;
    let bodies = w.proxy.requests("SetInstanceHealth");
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(
        bodies[0].contains(&victim)
            && bodies[0].contains("HealthStatus=Unhealthy")
            && bodies[0].contains("ShouldRespectGracePeriod=true"),
        "{bodies:?}"
    );
    // The ASG now holds it Unhealthy: it is not set again on later passes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(w.proxy.count("SetInstanceHealth"), 1);
}

/// What `DescribeInstanceRefreshes` says while a refresh of `asg` runs (moto has no such call).
fn refresh_in_progress(asg: &str) -> String {
    format!(
        r#"<DescribeInstanceRefreshesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeInstanceRefreshesResult><InstanceRefreshes><member><InstanceRefreshId>r-0e2e</InstanceRefreshId><AutoScalingGroupName>{asg}</AutoScalingGroupName><Status>InProgress</Status><PercentageComplete>30</PercentageComplete></member></InstanceRefreshes></DescribeInstanceRefreshesResult><ResponseMetadata><RequestId>fault-proxy</RequestId></ResponseMetadata></DescribeInstanceRefreshesResponse>"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_refresh_in_progress_holds_remediation_until_it_ends() {
    let w = world(&[], "").await;
    w.proxy.answer(
        "DescribeInstanceRefreshes",
        Some(&refresh_in_progress(&w.fleet.asg)),
    );
    settled(&w).await;
    let victim = w.fleet.instances[0].0.clone();
    let json = held(&w, &victim, "deregister", "instance_refresh").await;
    assert!(json.to_string().contains("InProgress"), "{json}");
    eventually(
        WAIT,
        "status to show the refresh holding the group",
        || async {
            let out = w
                .coordinator
                .ctl(&w.pki.viewer(), &["--output", "json", "status"]);
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            json["groups"]
                .to_string()
                .contains("instance refresh")
                .then_some(())
        },
    )
    .await;
    w.agents[0].escalate("web", "3 restarts in 5m failed; HTTP check still failing");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(w.proxy.count("DeregisterTargets"), 0);
    assert_eq!(w.proxy.count("SetInstanceHealth"), 0);

    // The refresh ends: the remediation goes ahead.
    w.proxy.answer("DescribeInstanceRefreshes", None);
    eventually(WAIT, "the instance to be marked unhealthy", || async {
        let q = w.moto.query(&w.fleet);
        (asg_health(&q, &victim).as_deref() == Some("Unhealthy")).then_some(())
    })
    .await;
    assert!(w.proxy.count("DeregisterTargets") > 0);
}
