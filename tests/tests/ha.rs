//! Several coordinators on one DynamoDB table (moto's, with real conditional-write semantics):
//! one leads and acts, the others redirect agents to it; a killed leader is replaced within the
//! lease TTL; a leader frozen past its lease is fenced when it wakes; a table that can't be
//! written means no destructive action.

use std::time::{Duration, Instant};

use autoheal_proto::identity::Role;
use autoheal_tests::{
    AWS_ENV, Coordinator, Pki, eventually, free_addr,
    moto::{FleetFixture, Moto},
    proxy::{Fault, FaultProxy},
    sim::SimAgent,
};
use autohealctl::pki::Validity;

const WAIT: Duration = Duration::from_secs(60);
const LEASE_TTL: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_millis(500);

struct Cluster {
    moto: Moto,
    proxy: FaultProxy,
    fleet: FleetFixture,
    pki: Pki,
    config: String,
}

async fn cluster() -> Cluster {
    let moto = Moto::start();
    let proxy = FaultProxy::start(moto.addr).await;
    let fleet = moto.fleet("web", 3);
    moto.state_table("autoheal-state");
    let pki = Pki::new();
    for (id, _) in &fleet.instances {
        pki.issue(Role::Instance(id.clone()), Validity::default());
    }
    let config = format!(
        r#"dry_run = false

[store]
backend = "dynamodb"
table = "autoheal-state"
lease_ttl = "{ttl}ms"
lease_renew_interval = "{renew}ms"

[aws]
region = "us-east-1"
endpoint = "{endpoint}"
asg_names = ["web"]
interval = "300ms"
call_timeout = "2s"
max_attempts = 2

[ladder]
drain_timeout = "1s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
"#,
        ttl = LEASE_TTL.as_millis(),
        renew = RENEW.as_millis(),
        endpoint = proxy.endpoint(),
    );
    Cluster {
        moto,
        proxy,
        fleet,
        pki,
        config,
    }
}

impl Cluster {
    fn start(&self, name: &str, env: &[(&str, &str)]) -> Coordinator {
        let mut all = AWS_ENV.to_vec();
        all.extend_from_slice(env);
        Coordinator::start_named(&self.pki, name, &self.config, &free_addr(), &all)
    }

    fn agents(&self, endpoints: &[&Coordinator]) -> Vec<SimAgent> {
        let addrs: Vec<_> = endpoints.iter().map(|c| c.addr).collect();
        self.fleet
            .instances
            .iter()
            .map(|(id, az)| SimAgent::spawn_multi(addrs.clone(), self.pki.instance(id), id, az))
            .collect()
    }

    fn deregistered(&self, id: &str) -> bool {
        let q = self.moto.query(&self.fleet);
        q["targets"]
            .as_array()
            .is_some_and(|t| !t.iter().any(|t| t["id"] == id && t["state"] == "healthy"))
    }
}

fn leads(c: &Coordinator, pki: &Pki) -> bool {
    let out = c.ctl(&pki.viewer(), &["--output", "json", "status"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|j| j["leader"] == true)
}

fn connected_to(c: &Coordinator, pki: &Pki) -> usize {
    let out = c.ctl(&pki.viewer(), &["--output", "json", "instances"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|j| {
            j.as_array()
                .map(|a| a.iter().filter(|i| i["connected"] == true).count())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leads_and_a_killed_leader_is_replaced_within_the_lease() {
    let c = cluster().await;
    let mut a = c.start("coordinator-a", &[]);
    eventually(WAIT, "a to lead", || async {
        leads(&a, &c.pki).then_some(())
    })
    .await;
    let b = c.start("coordinator-b", &[]);
    // B follows; agents that reach B are redirected to A.
    let agents = c.agents(&[&b, &a]);
    eventually(WAIT, "every agent on the leader", || async {
        (connected_to(&a, &c.pki) == 3).then_some(())
    })
    .await;
    assert!(!leads(&b, &c.pki), "only one leads");
    assert_eq!(connected_to(&b, &c.pki), 0, "followers redirect agents");

    let killed = Instant::now();
    a.child.kill().expect("SIGKILL the leader");
    let _ = a.child.wait();
    eventually(WAIT, "b to take over", || async {
        leads(&b, &c.pki).then_some(())
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took < LEASE_TTL + RENEW + Duration::from_secs(3),
        "takeover took {took:?}"
    );
    eventually(WAIT, "agents to follow to b", || async {
        (connected_to(&b, &c.pki) == 3).then_some(())
    })
    .await;

    // The new leader acts, once.
    let victim = c.fleet.instances[0].0.clone();
    agents[0].escalate("web", "restarts exhausted");
    eventually(WAIT, "b to deregister the escalated instance", || async {
        c.deregistered(&victim).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(c.proxy.count("DeregisterTargets"), 1);
    assert!(b.log().contains("leading: acting with this fencing token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_frozen_past_its_lease_is_fenced_when_it_wakes() {
    let c = cluster().await;
    // A freezes itself (SIGSTOP) right before writing its deregister intent.
    let a = c.start(
        "coordinator-a",
        &[("AUTOHEAL_FAULT", "pause-before-intent:deregister")],
    );
    eventually(WAIT, "a to lead", || async {
        leads(&a, &c.pki).then_some(())
    })
    .await;
    let b = c.start("coordinator-b", &[]);
    let agents = c.agents(&[&a, &b]);
    eventually(WAIT, "every agent on a", || async {
        (connected_to(&a, &c.pki) == 3).then_some(())
    })
    .await;

    let victim = c.fleet.instances[1].0.clone();
    agents[1].escalate("web", "restarts exhausted");
    eventually(WAIT, "a to freeze before its intent", || async {
        a.is_stopped().then_some(())
    })
    .await;

    // B takes over once A's lease lapses, hears the escalation from the agents, and acts.
    eventually(WAIT, "b to deregister", || async {
        c.deregistered(&victim).then_some(())
    })
    .await;
    assert_eq!(c.proxy.count("DeregisterTargets"), 1);

    // A wakes up still believing it is mid-action: its intent write is fenced, so it never calls.
    a.signal("CONT");
    eventually(WAIT, "a to notice it was fenced", || async {
        a.log().contains("fenced").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        c.proxy.count("DeregisterTargets"),
        1,
        "the frozen leader never acted"
    );
    assert!(!leads(&a, &c.pki), "a stepped down");
    assert!(leads(&b, &c.pki));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_destructive_action_while_the_table_cannot_be_written() {
    let c = cluster().await;
    let a = c.start("coordinator-a", &[]);
    eventually(WAIT, "a to lead", || async {
        leads(&a, &c.pki).then_some(())
    })
    .await;
    let agents = c.agents(&[&a]);
    eventually(WAIT, "agents connected", || async {
        (connected_to(&a, &c.pki) == 3).then_some(())
    })
    .await;

    // DynamoDB fails every write: the lease can't be renewed, intents can't be journaled.
    for action in ["UpdateItem", "PutItem"] {
        c.proxy.inject(action, &[Fault::ServerError; 10_000]);
    }
    eventually(WAIT, "a to step down", || async {
        (!leads(&a, &c.pki)).then_some(())
    })
    .await;
    let victim = c.fleet.instances[2].0.clone();
    agents[2].escalate("web", "restarts exhausted");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        c.proxy.count("DeregisterTargets"),
        0,
        "no journal, no action"
    );
    assert!(
        a.log().contains("autoheal-state"),
        "the error names the table"
    );

    // The table comes back: leadership and action resume.
    c.proxy.clear();
    eventually(WAIT, "a to lead again", || async {
        leads(&a, &c.pki).then_some(())
    })
    .await;
    eventually(WAIT, "the escalated instance deregistered", || async {
        c.deregistered(&victim).then_some(())
    })
    .await;
    assert_eq!(c.proxy.count("DeregisterTargets"), 1);
}

/// SIGTERM is a handover, not a crash: the leader stops acting, releases its lease and exits, so
/// the other replica leads at its next claim — long before the lease (30 s here) would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_over_at_once() {
    let mut c = cluster().await;
    c.config = c.config.replace(
        &format!("lease_ttl = \"{}ms\"", LEASE_TTL.as_millis()),
        "lease_ttl = \"30s\"",
    );
    let mut a = c.start("coordinator-a", &[]);
    eventually(WAIT, "a to lead", || async {
        leads(&a, &c.pki).then_some(())
    })
    .await;
    let b = c.start("coordinator-b", &[]);
    eventually(WAIT, "b to follow", || async {
        (!leads(&b, &c.pki)).then_some(())
    })
    .await;

    let stopped = Instant::now();
    a.signal("TERM");
    let status = a.child.wait().expect("wait for a");
    assert!(status.success(), "a exits cleanly on SIGTERM: {status:?}");
    eventually(WAIT, "b to take over", || async {
        leads(&b, &c.pki).then_some(())
    })
    .await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "takeover after SIGTERM took {took:?}: the lease was not released"
    );
    let log = a.log();
    assert!(log.contains("released the lease"), "{log}");
    assert!(!log.contains("still running at the deadline"), "{log}");
}
