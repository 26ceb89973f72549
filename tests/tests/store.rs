//! The DynamoDB store and the leader lease against moto's DynamoDB, which implements real
//! conditional writes: exactly one of two coordinators leads, the other takes over within the
//! lease TTL and one renew interval when the leader dies, a stale leader's writes are fenced, and
//! an unreachable table is a clear error, no leader, and recovery when it comes back.
//!
//! Each coordinator here is a `Lease` task and a `DynamoStore` in this process; cutting a
//! coordinator off (a loopback switch between it and moto) stands in for SIGSTOP.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use autoheal_coordinator::adapters::aws::AwsSettings;
use autoheal_coordinator::adapters::store::DynamoStore;
use autoheal_coordinator::adapters::store::aws_sdk_dynamodb as ddb;
use autoheal_coordinator::adapters::store::create_table;
use autoheal_coordinator::model::events::FleetEvent;
use autoheal_coordinator::model::events::PauseState;
use autoheal_coordinator::model::journal::Entry;
use autoheal_coordinator::model::journal::Phase;
use autoheal_coordinator::model::journal::Step;
use autoheal_coordinator::ports::store::Claim;
use autoheal_coordinator::ports::store::JournalQuery;
use autoheal_coordinator::ports::store::LeaseClaim;
use autoheal_coordinator::ports::store::Skip;
use autoheal_coordinator::ports::store::Store;
use autoheal_coordinator::ports::store::StoreError;
use autoheal_coordinator::ports::store::system_clock;
use autoheal_coordinator::services::lease::LeaderState;
use autoheal_coordinator::services::lease::Lease;
use autoheal_coordinator::services::lease::LeaseHandle;
use autoheal_coordinator::services::lease::LeaseSettings;
use autoheal_tests::{eventually, moto::Moto};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const TABLE: &str = "autoheal-state";
const TTL: Duration = Duration::from_secs(3);
const RENEW: Duration = Duration::from_millis(500);
/// Room for a loaded 2-core machine on top of each bound under test.
const SLACK: Duration = Duration::from_secs(2);
const WAIT: Duration = Duration::from_secs(30);

fn client(endpoint: &str) -> ddb::Client {
    client_with_timeout(endpoint, Duration::from_secs(2))
}

fn client_with_timeout(endpoint: &str, timeout: Duration) -> ddb::Client {
    let config = ddb::Config::builder()
        .behavior_version(ddb::config::BehaviorVersion::latest())
        .region(ddb::config::Region::new("us-east-1"))
        .credentials_provider(ddb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint)
        // `AwsSettings` drives retries, as in the coordinator.
        .retry_config(ddb::config::retry::RetryConfig::disabled())
        .timeout_config(
            ddb::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_attempt_timeout(timeout)
                .build(),
        )
        .build();
    ddb::Client::from_conf(config)
}

fn settings() -> AwsSettings {
    AwsSettings {
        call_timeout: Duration::from_secs(2),
        max_attempts: 3,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..AwsSettings::default()
    }
}

fn store(endpoint: &str) -> Arc<DynamoStore> {
    Arc::new(DynamoStore::new(
        client(endpoint),
        TABLE,
        settings(),
        system_clock(),
    ))
}

async fn moto_with_table() -> Moto {
    let moto = Moto::start();
    create_table(&client(&moto.endpoint()), TABLE)
        .await
        .expect("create the state table");
    moto
}

fn entry(key: &str, instance: &str, token: u64, phase: Phase) -> Entry {
    Entry {
        key: key.into(),
        instance_id: instance.into(),
        asg: "web".into(),
        step: Step::Deregister,
        phase,
        target_groups: vec!["tg".into()],
        reason: "escalated".into(),
        detail: String::new(),
        fencing_token: token,
        at_ms: u64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis(),
        )
        .expect("fits"),
        requested_by: String::new(),
        in_flight_until_ms: 0,
    }
}

struct Coordinator {
    name: &'static str,
    store: Arc<DynamoStore>,
    handle: LeaseHandle,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Coordinator {
    fn start(name: &'static str, endpoint: &str) -> Self {
        Self::with_store(name, store(endpoint))
    }

    fn with_store(name: &'static str, store: Arc<DynamoStore>) -> Self {
        let (lease, handle) = Lease::new(
            store.clone(),
            LeaseSettings {
                owner: name.into(),
                endpoint: format!("https://{name}:7443"),
                ttl: TTL,
                renew_interval: RENEW,
            },
            system_clock(),
        )
        .expect("valid lease settings");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lease.run(shutdown.clone()));
        Self {
            name,
            store,
            handle,
            shutdown,
            task,
        }
    }

    fn token(&self) -> Option<u64> {
        self.handle.current().token()
    }
}

/// Samples both coordinators until stopped; fails if both ever believed they led at once.
fn watch_for_two_leaders(a: LeaseHandle, b: LeaseHandle) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        while !flag.load(Ordering::Relaxed) {
            let (x, y) = (a.current(), b.current());
            assert!(
                !(x.token().is_some() && y.token().is_some()),
                "two leaders at once: {x:?} and {y:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (stop, task)
}

/// Waits until exactly one of `a`, `b` leads and the other follows it; returns (leader, follower).
async fn one_leader<'a>(
    a: &'a Coordinator,
    b: &'a Coordinator,
) -> (&'a Coordinator, &'a Coordinator) {
    eventually(
        WAIT,
        "exactly one leader, followed by the other",
        || async {
            let (leader, follower) = match (a.token(), b.token()) {
                (Some(_), None) => (a, b),
                (None, Some(_)) => (b, a),
                _ => return None,
            };
            let expected = format!("https://{}:7443", leader.name);
            (follower.handle.current()
                == LeaderState::Follower {
                    leader_endpoint: Some(expected),
                })
            .then_some((leader, follower))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_coordinators_one_leads_and_the_other_takes_over_when_it_dies() {
    let moto = moto_with_table().await;
    let a = Coordinator::start("a", &moto.endpoint());
    let b = Coordinator::start("b", &moto.endpoint());
    let (stop, monitor) = watch_for_two_leaders(a.handle.clone(), b.handle.clone());

    let (leader, follower) = one_leader(&a, &b).await;
    let old = leader.token().expect("leads");
    // Stays that way over several renewals.
    tokio::time::sleep(RENEW * 4).await;
    assert_eq!(leader.token(), Some(old), "the leader kept its lease");
    assert_eq!(follower.token(), None, "the follower stayed a follower");
    leader
        .store
        .append_journal(&entry("k1", "i-1", old, Phase::Intent))
        .await
        .expect("the leader writes its journal");

    // Kill the leader: no release, the lease must expire.
    leader.task.abort();
    let killed = Instant::now();
    let new = eventually(WAIT, "the follower takes over", || async {
        follower.token()
    })
    .await;
    let took = killed.elapsed();
    assert!(
        took <= TTL + RENEW + SLACK,
        "takeover took {took:?}, bound {:?}",
        TTL + RENEW
    );
    assert!(new > old, "token {new} after {old}");

    // The dead leader's token is fenced, even if its process were still writing.
    let error = leader
        .store
        .append_journal(&entry("k2", "i-1", old, Phase::Intent))
        .await
        .expect_err("a stale token must not write");
    assert!(
        matches!(error, StoreError::Fenced { token, current: Some(c) } if token == old && c == new),
        "{error}"
    );
    follower
        .store
        .append_journal(&entry("k2", "i-1", new, Phase::Intent))
        .await
        .expect("the new leader writes");
    let keys: Vec<_> = follower
        .store
        .journal(JournalQuery::All)
        .await
        .expect("journal")
        .into_iter()
        .map(|e| (e.key, e.fencing_token))
        .collect();
    assert_eq!(keys, [("k1".to_owned(), old), ("k2".to_owned(), new)]);

    stop.store(true, Ordering::Relaxed);
    monitor.await.expect("never two leaders");
    follower.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_hands_the_lease_over_without_waiting_for_the_ttl() {
    let moto = moto_with_table().await;
    let a = Coordinator::start("a", &moto.endpoint());
    let b = Coordinator::start("b", &moto.endpoint());
    let (leader, follower) = one_leader(&a, &b).await;
    let old = leader.token().expect("leads");
    leader.shutdown.cancel();
    let stopped = Instant::now();
    let new = eventually(WAIT, "the follower takes over", || async {
        follower.token()
    })
    .await;
    assert!(new > old);
    assert!(
        stopped.elapsed() < TTL,
        "took {:?}: the released lease was not expired early",
        stopped.elapsed()
    );
    follower.shutdown.cancel();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Up,
    /// Connections cut, new ones closed at once: a partition or a dead peer.
    Down,
    /// Connections held open, nothing forwarded: a stopped process, a black-holed network.
    Hung,
}

/// A loopback switch between a coordinator and moto.
struct Switch {
    addr: SocketAddr,
    link: watch::Sender<Link>,
}

impl Switch {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (link, _) = watch::channel(Link::Up);
        let state = link.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut link = state.subscribe();
                tokio::spawn(async move {
                    let now = *link.borrow_and_update();
                    if now == Link::Up {
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await
                        else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                            _ = link.wait_for(|l| *l != Link::Up) => {}
                        }
                    }
                    if *link.borrow_and_update() == Link::Hung {
                        let _ = link.wait_for(|l| *l != Link::Hung).await;
                    }
                    drop(inbound);
                });
            }
        });
        Self { addr, link }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_past_its_lease_is_fenced_when_it_comes_back() {
    let moto = moto_with_table().await;
    let switch = Switch::start(moto.addr).await;
    let a = Coordinator::start("a", &switch.endpoint());
    let old = eventually(WAIT, "a leads", || async { a.token() }).await;
    let b = Coordinator::start("b", &moto.endpoint());
    let (stop, monitor) = watch_for_two_leaders(a.handle.clone(), b.handle.clone());
    one_leader(&a, &b).await;

    switch.set(Link::Down);
    let cut = Instant::now();
    let new = eventually(WAIT, "b takes over", || async { b.token() }).await;
    assert!(new > old, "token {new} after {old}");
    assert!(
        cut.elapsed() <= TTL + RENEW + SLACK,
        "took {:?}",
        cut.elapsed()
    );
    assert_eq!(a.token(), None, "a stepped down on its own clock");

    // "SIGCONT": a reaches the table again and tries the write it was about to make.
    switch.set(Link::Up);
    let error = a
        .store
        .append_journal(&entry("late", "i-1", old, Phase::Intent))
        .await
        .expect_err("the old leader's intent is fenced");
    assert!(error.is_fenced(), "{error}");
    let error = a
        .store
        .set_remediation("i-1", Some(&serde_json::json!({"attempts": 9})), old)
        .await
        .expect_err("and so is its remediation state");
    assert!(error.is_fenced(), "{error}");
    assert!(
        a.store
            .journal(JournalQuery::Instance("i-1".into()))
            .await
            .expect("journal")
            .is_empty(),
        "nothing the fenced leader wrote is in the journal"
    );
    // a follows b, and b keeps leading.
    eventually(WAIT, "a follows b", || async {
        (a.handle.current()
            == LeaderState::Follower {
                leader_endpoint: Some("https://b:7443".into()),
            })
        .then_some(())
    })
    .await;
    assert_eq!(b.token(), Some(new));

    stop.store(true, Ordering::Relaxed);
    monitor.await.expect("never two leaders");
    a.shutdown.cancel();
    b.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_table_means_no_leader_no_writes_and_recovery_when_it_returns() {
    let moto = moto_with_table().await;
    let switch = Switch::start(moto.addr).await;
    let a = Coordinator::start("a", &switch.endpoint());
    let old = eventually(WAIT, "a leads", || async { a.token() }).await;

    switch.set(Link::Down);
    eventually(WAIT, "a steps down", || async {
        a.token().is_none().then_some(())
    })
    .await;
    let error = a
        .store
        .append_journal(&entry("k", "i-1", old, Phase::Intent))
        .await
        .expect_err("no journal without the table");
    assert!(
        matches!(error, StoreError::Dynamo { ref table, .. } if table == TABLE),
        "{error}"
    );
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(
        chain.contains("cannot use the state table autoheal-state")
            && chain.contains("dynamodb:UpdateItem"),
        "{chain}"
    );
    // Still no leader a few renewals later.
    tokio::time::sleep(RENEW * 4).await;
    assert_eq!(a.token(), None);

    switch.set(Link::Up);
    let new = eventually(WAIT, "a leads again", || async { a.token() }).await;
    assert!(new > old, "a new term after the outage: {new} after {old}");
    a.store
        .append_journal(&entry("k", "i-1", new, Phase::Intent))
        .await
        .expect("writes again");
    let error = a
        .store
        .append_journal(&entry("k0", "i-1", old, Phase::Intent))
        .await
        .expect_err("the term before the outage is over");
    assert!(error.is_fenced(), "{error}");
    a.shutdown.cancel();
}

#[tokio::test]
async fn a_closed_port_is_a_clear_error_and_never_a_leader() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let a = Coordinator::start("a", &format!("http://127.0.0.1:{port}"));
    let error = a.store.pause().await.expect_err("nothing listens there");
    assert!(!error.is_fenced());
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert!(
        chain.contains("cannot use the state table autoheal-state: dynamodb:GetItem"),
        "{chain}"
    );
    tokio::time::sleep(RENEW * 4).await;
    assert_eq!(
        a.handle.current(),
        LeaderState::Follower {
            leader_endpoint: None
        }
    );
    a.shutdown.cancel();
}

#[tokio::test]
async fn every_record_kind_round_trips_through_the_table() {
    let moto = moto_with_table().await;
    let store = store(&moto.endpoint());
    let a = Coordinator::start("a", &moto.endpoint());
    let token = eventually(WAIT, "a leads", || async { a.token() }).await;

    for (key, instance, phase) in [
        ("k1", "i-1", Phase::Intent),
        ("k1", "i-1", Phase::Succeeded),
        ("k2", "i-2", Phase::Intent),
    ] {
        store
            .append_journal(&entry(key, instance, token, phase))
            .await
            .expect("journal");
    }
    let all = store.journal(JournalQuery::All).await.expect("all");
    assert_eq!(all.len(), 3);
    assert_eq!(all[2].key, "k2", "oldest first");
    let one = store
        .journal(JournalQuery::Instance("i-1".into()))
        .await
        .expect("by instance");
    assert_eq!(
        one.iter().map(|e| e.phase).collect::<Vec<_>>(),
        [Phase::Intent, Phase::Succeeded]
    );
    let recent = store
        .journal(JournalQuery::Recent(2))
        .await
        .expect("recent");
    assert_eq!(recent.len(), 2);
    assert_eq!(recent[0], all[2], "newest first");

    assert_eq!(store.pause().await.expect("pause"), PauseState::default());
    let pause = PauseState {
        paused: true,
        reason: "incident".into(),
        by: "alice".into(),
        since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
    };
    store.set_pause(&pause).await.expect("set pause");
    assert_eq!(store.pause().await.expect("pause"), pause);

    for id in ["i-1", "i-2"] {
        store
            .set_skip(&Skip {
                instance_id: id.into(),
                reason: "debugging".into(),
                by: "bob".into(),
                since: SystemTime::UNIX_EPOCH,
            })
            .await
            .expect("skip");
    }
    store.unset_skip("i-1").await.expect("unskip");
    store
        .unset_skip("i-9")
        .await
        .expect("unskipping nothing is fine");
    let skips = store.skips().await.expect("skips");
    assert_eq!(
        skips
            .iter()
            .map(|s| s.instance_id.as_str())
            .collect::<Vec<_>>(),
        ["i-2"]
    );

    let event = |cursor: u64| FleetEvent {
        cursor,
        at: SystemTime::now(),
        instance_id: "i-1".into(),
        asg: "web".into(),
        kind: autoheal_coordinator::model::events::EventKind::Escalated,
        message: format!("event {cursor}"),
    };
    store
        .append_event(&event(1), Duration::from_secs(3600))
        .await
        .expect("event");
    store
        .append_event(&event(2), Duration::ZERO)
        .await
        .expect("expired event");
    let events = store.recent_events(10).await.expect("events");
    assert_eq!(
        events.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        [1],
        "the expired event is not listed"
    );

    let blob = serde_json::json!({"rung": "replace", "attempts": 2});
    store
        .set_remediation("i-1", Some(&blob), token)
        .await
        .expect("remediation");
    store
        .set_remediation("i-2", Some(&blob), token)
        .await
        .expect("remediation");
    store
        .set_remediation("i-2", None, token)
        .await
        .expect("clear");
    assert_eq!(store.remediation("i-1").await.expect("get"), Some(blob));
    assert_eq!(store.remediation("i-2").await.expect("get"), None);
    assert_eq!(
        store
            .remediations()
            .await
            .expect("all")
            .into_keys()
            .collect::<Vec<_>>(),
        ["i-1"]
    );
    let error = store
        .set_remediation("i-1", None, token + 1)
        .await
        .expect_err("a token that never held the lease");
    assert!(error.is_fenced(), "{error}");
    a.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_renewals_hang_steps_down_on_its_own_clock_before_a_takeover() {
    let moto = moto_with_table().await;
    let switch = Switch::start(moto.addr).await;
    // Calls that would wait far longer than the lease: only the lease's own clock ends them.
    let patient = AwsSettings {
        call_timeout: Duration::from_secs(60),
        ..settings()
    };
    let a = Coordinator::with_store(
        "a",
        Arc::new(DynamoStore::new(
            client_with_timeout(&switch.endpoint(), Duration::from_secs(60)),
            TABLE,
            patient,
            system_clock(),
        )),
    );
    let old = eventually(WAIT, "a leads", || async { a.token() }).await;
    let b = Coordinator::start("b", &moto.endpoint());
    let (stop, monitor) = watch_for_two_leaders(a.handle.clone(), b.handle.clone());
    one_leader(&a, &b).await;

    switch.set(Link::Hung);
    let hung = Instant::now();
    eventually(WAIT, "a steps down", || async {
        a.token().is_none().then_some(())
    })
    .await;
    let stepped_down = hung.elapsed();
    assert!(
        stepped_down <= TTL + SLACK,
        "a believed it led {stepped_down:?} into a hung renew"
    );
    let new = eventually(WAIT, "b takes over", || async { b.token() }).await;
    assert!(new > old);
    stop.store(true, Ordering::Relaxed);
    monitor
        .await
        .expect("a stepped down before b took over: never two leaders");
    switch.set(Link::Up);
    a.shutdown.cancel();
    b.shutdown.cancel();
}

#[tokio::test]
async fn an_expired_lease_fences_its_own_token_before_any_takeover() {
    let moto = moto_with_table().await;
    let store = store(&moto.endpoint());
    let claim = LeaseClaim {
        owner: "a".into(),
        endpoint: "https://a:7443".into(),
        ttl: Duration::from_secs(1),
    };
    let Claim::Won(lease) = store
        .claim_lease(&claim, SystemTime::now())
        .await
        .expect("claim")
    else {
        panic!("a free lease is won");
    };
    store
        .append_journal(&entry("k1", "i-1", lease.fencing_token, Phase::Intent))
        .await
        .expect("writes while the lease lasts");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Nobody else claimed it: the token is still the lease's, but the lease is over.
    let error = store
        .append_journal(&entry("k2", "i-1", lease.fencing_token, Phase::Intent))
        .await
        .expect_err("an expired lease does not write");
    assert!(
        matches!(error, StoreError::Fenced { token, current: Some(c) } if token == c),
        "{error}"
    );
    assert_eq!(
        store
            .journal(JournalQuery::All)
            .await
            .expect("journal")
            .len(),
        1
    );
}
