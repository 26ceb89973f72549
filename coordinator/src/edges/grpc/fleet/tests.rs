use std::{sync::Arc, time::Duration};

use super::*;

#[test]
fn request_ids_are_checked_and_errors_echo_a_short_prefix() {
    let huge = "i-".to_owned() + &"0".repeat(900 * 1024) + "/";
    let e = instance_id(&huge).expect_err("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("instance_id: "), "{}", e.message());
    assert!(e.message().len() < 300, "{} bytes", e.message().len());
    assert_eq!(instance_id("i-0abc").expect("valid"), "i-0abc");
    assert_eq!(instance_filter("").expect("empty is every instance"), None);
    assert!(reason(&"r".repeat(MAX_REASON + 1)).is_err());
}
use crate::adapters::store::EmbeddedStore;
use crate::ports::store::{Store, system_clock};
use crate::services::lease::{Lease, LeaseSettings};

fn api(store: Arc<dyn Store>, lease: crate::services::lease::LeaseHandle) -> FleetApi {
    FleetApi {
        fleet: Fleet::new("c1", true, Some(store.clone())).expect("fleet"),
        journal: Arc::new(crate::services::journal::Journal::empty(store)),
        control: None,
        leadership: lease,
        shutdown: CancellationToken::new(),
    }
}

fn answered_by<T>(response: &Response<T>) -> String {
    response
        .metadata()
        .get(ANSWERED_BY)
        .and_then(|v| v.to_str().ok())
        .expect("autoheal-answered-by on every answer")
        .to_owned()
}

/// A follower has no agents: its answers must say so, or an operator reads "all disconnected".
#[tokio::test]
async fn every_answer_says_whether_a_follower_or_the_leader_gave_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let settings = LeaseSettings {
        owner: "c1".into(),
        endpoint: "10.0.1.5:7443".into(),
        ttl: Duration::from_secs(3),
        renew_interval: Duration::from_millis(200),
    };
    let (lease, handle) = Lease::new(store.clone(), settings, system_clock()).expect("lease");
    let api = api(store, handle.clone());

    // Before the lease runs: a follower that knows no leader yet.
    let status = api
        .get_fleet_status(Request::new(v1::GetFleetStatusRequest {}))
        .await
        .expect("status");
    assert_eq!(answered_by(&status), "follower; leader=unknown");
    let list = api
        .list_instances(Request::new(v1::ListInstancesRequest::default()))
        .await
        .expect("list");
    assert_eq!(answered_by(&list), "follower; leader=unknown");

    let shutdown = CancellationToken::new();
    let run = tokio::spawn(lease.run(shutdown.clone()));
    let mut watch = handle.watch();
    tokio::time::timeout(
        Duration::from_secs(10),
        watch.wait_for(|s| s.token().is_some()),
    )
    .await
    .expect("leads in time")
    .expect("lease running");
    let status = api
        .get_fleet_status(Request::new(v1::GetFleetStatusRequest {}))
        .await
        .expect("status");
    assert_eq!(answered_by(&status), "leader");
    shutdown.cancel();
    let _ = run.await;
}
