use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use autoheal_common::clock::from_unix_ms;

use super::{log::HEADER, *};
use crate::model::events::EventKind;
use crate::model::journal::Phase;
use crate::model::journal::Step;

fn entry(key: &str, instance: &str, token: u64, at_ms: u64) -> Entry {
    Entry {
        key: key.into(),
        instance_id: instance.into(),
        asg: "web".into(),
        step: Step::Deregister,
        phase: Phase::Intent,
        target_groups: vec!["tg".into()],
        reason: "escalated".into(),
        detail: String::new(),
        fencing_token: token,
        at_ms,
        requested_by: String::new(),
        in_flight_until_ms: 0,
    }
}

fn event(cursor: u64) -> FleetEvent {
    FleetEvent {
        cursor,
        at: from_unix_ms(1_700_000_000_000 + cursor),
        instance_id: "i-1".into(),
        asg: "web".into(),
        kind: EventKind::Escalated,
        message: format!("event {cursor}"),
    }
}

fn claim(owner: &str) -> LeaseClaim {
    LeaseClaim {
        owner: owner.into(),
        endpoint: format!("https://{owner}:7443"),
        ttl: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn every_kind_of_record_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    store
        .append_journal(&entry("a", "i-1", 0, 1))
        .await
        .expect("journal");
    store
        .append_journal(&entry("b", "i-2", 0, 2))
        .await
        .expect("journal");
    let pause = PauseState {
        paused: true,
        reason: "incident".into(),
        by: "alice".into(),
        since: Some(from_unix_ms(5)),
    };
    store.set_pause(&pause).await.expect("pause");
    for id in ["i-1", "i-2"] {
        store
            .set_skip(&Skip {
                instance_id: id.into(),
                reason: "debugging".into(),
                by: "bob".into(),
                since: from_unix_ms(7),
            })
            .await
            .expect("skip");
    }
    store.unset_skip("i-1").await.expect("unskip");
    store
        .append_event(&event(1), Duration::from_secs(3600))
        .await
        .expect("event");
    store
        .append_event(&event(2), Duration::ZERO)
        .await
        .expect("expired event");
    let blob = serde_json::json!({"attempts": 2});
    store
        .set_remediation("i-1", Some(&blob), 0)
        .await
        .expect("remediation");
    store
        .set_remediation("i-2", Some(&blob), 0)
        .await
        .expect("remediation");
    store
        .set_remediation("i-2", None, 0)
        .await
        .expect("clear remediation");
    drop(store);

    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let keys = |entries: Vec<Entry>| entries.into_iter().map(|e| e.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.journal(JournalQuery::All).await.expect("all")),
        ["a", "b"]
    );
    assert_eq!(
        keys(
            store
                .journal(JournalQuery::Instance("i-2".into()))
                .await
                .expect("by instance")
        ),
        ["b"]
    );
    assert_eq!(
        keys(
            store
                .journal(JournalQuery::Recent(1))
                .await
                .expect("recent")
        ),
        ["b"]
    );
    assert_eq!(store.pause().await.expect("pause"), pause);
    let skips = store.skips().await.expect("skips");
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0].instance_id, "i-2");
    let events = store.recent_events(10).await.expect("events");
    assert_eq!(events, [event(1)], "the expired event is gone");
    assert_eq!(
        store.remediation("i-1").await.expect("remediation"),
        Some(blob)
    );
    assert_eq!(store.remediations().await.expect("all").len(), 1);
}

#[tokio::test]
async fn a_torn_tail_is_dropped_and_appends_continue_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    store
        .append_journal(&entry("a", "i-1", 0, 1))
        .await
        .expect("append");
    let path = store.path().to_owned();
    drop(store);
    let whole = std::fs::read(&path).expect("read");
    let torn_frame = frame(&Record::Journal {
        entry: entry("torn", "i-1", 0, 2),
    })
    .expect("frame");
    // Every way a write can be torn: a short header, a short payload, a bad checksum on the
    // last frame, and zero fill.
    let mut bad_crc = torn_frame.clone();
    if let Some(b) = bad_crc.last_mut() {
        *b ^= 0xFF;
    }
    for tail in [
        torn_frame[..5].to_vec(),
        torn_frame[..torn_frame.len() - 3].to_vec(),
        bad_crc,
        vec![0; 64],
    ] {
        let mut bytes = whole.clone();
        bytes.extend(&tail);
        std::fs::write(&path, &bytes).expect("write");
        let store = EmbeddedStore::open(dir.path()).expect("reopen");
        store
            .append_journal(&entry("c", "i-1", 0, 3))
            .await
            .expect("append after the torn tail");
        drop(store);
        let store = EmbeddedStore::open(dir.path()).expect("reopen again");
        let keys: Vec<_> = store
            .journal(JournalQuery::All)
            .await
            .expect("all")
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys, ["a", "c"], "tail {tail:?}");
        drop(store);
        std::fs::write(&path, &whole).expect("restore");
    }
}

#[tokio::test]
async fn a_bad_record_before_good_ones_refuses_to_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for key in ["a", "b"] {
        store
            .append_journal(&entry(key, "i-1", 0, 1))
            .await
            .expect("append");
    }
    let path = store.path().to_owned();
    drop(store);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[HEADER + 2] ^= 0xFF;
    std::fs::write(&path, &bytes).expect("write");
    let error = EmbeddedStore::open(dir.path()).expect_err("corrupt");
    assert!(
        matches!(error, StoreError::Corrupt { offset: 0, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn a_stale_fencing_token_is_refused_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    let now = SystemTime::now();
    let Claim::Won(first) = store.claim_lease(&claim("a"), now).await.expect("claim") else {
        panic!("a free lease is won");
    };
    assert!(matches!(
        store.claim_lease(&claim("b"), now).await.expect("claim"),
        Claim::Held(Some(ref l)) if l.owner == "a"
    ));
    store.release_lease(&first).await.expect("release");
    let Claim::Won(second) = store.claim_lease(&claim("b"), now).await.expect("claim") else {
        panic!("a released lease is won");
    };
    assert!(second.fencing_token > first.fencing_token);
    let error = store
        .append_journal(&entry("stale", "i-1", first.fencing_token, 1))
        .await
        .expect_err("fenced");
    assert!(error.is_fenced(), "{error}");
    let error = store
        .set_remediation("i-1", None, first.fencing_token)
        .await
        .expect_err("fenced");
    assert!(error.is_fenced(), "{error}");
    assert!(matches!(
        store.renew_lease(&first, Duration::from_secs(1), now).await,
        Err(StoreError::Fenced { .. })
    ));
    store
        .append_journal(&entry("fresh", "i-1", second.fencing_token, 2))
        .await
        .expect("current token writes");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let keys: Vec<_> = store
        .journal(JournalQuery::All)
        .await
        .expect("all")
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys, ["fresh"]);
    let lease = store.lease().await.expect("lease").expect("held");
    assert_eq!(
        lease.fencing_token, second.fencing_token,
        "the token persists"
    );
}

#[tokio::test]
async fn a_mostly_dead_log_is_compacted_on_open_and_keeps_live_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    for i in 0..(COMPACT_MIN_RECORDS as u64 + 10) {
        store
            .set_pause(&PauseState {
                paused: i % 2 == 0,
                reason: format!("flip {i}"),
                by: "ops".into(),
                since: None,
            })
            .await
            .expect("pause");
    }
    store
        .append_journal(&entry("a", "i-1", 0, 1))
        .await
        .expect("journal");
    let path = store.path().to_owned();
    let before = std::fs::metadata(&path).expect("stat").len();
    let last = store.pause().await.expect("pause");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    let after = std::fs::metadata(&path).expect("stat").len();
    assert!(after * 10 < before, "{after} bytes after, {before} before");
    assert_eq!(store.pause().await.expect("pause"), last);
    assert_eq!(
        store.journal(JournalQuery::All).await.expect("all").len(),
        1
    );
    store
        .append_journal(&entry("b", "i-1", 0, 2))
        .await
        .expect("append after compaction");
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.journal(JournalQuery::All).await.expect("all").len(),
        2
    );
}

const BURST_DIR: &str = "AUTOHEAL_STORE_BURST_DIR";

/// As the child (re-executed with `BURST_DIR` set): writes until killed, printing each
/// acknowledged index. As the parent: SIGKILLs the child mid-burst, reopens, and checks that
/// every acknowledged write is there.
#[test]
fn kill_9_mid_burst_loses_no_acknowledged_write() {
    if let Some(dir) = std::env::var_os(BURST_DIR) {
        burst(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "adapters::store::embedded::tests::kill_9_mid_burst_loses_no_acknowledged_write",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(BURST_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the writer");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < 300 {
        assert!(Instant::now() < deadline, "writer too slow: {acked:?}");
        let line = lines
            .next()
            .expect("the writer stopped early")
            .expect("line");
        if let Some(n) = line.strip_prefix("ack ") {
            acked.push(n.parse::<u64>().expect("index"));
        }
    }
    child.kill().expect("SIGKILL");
    // Acks already in the pipe count too.
    for line in lines {
        if let Some(n) = line.expect("line").strip_prefix("ack ") {
            acked.push(n.parse::<u64>().expect("index"));
        }
    }
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the writer was killed, not finished");

    let store = EmbeddedStore::open(dir.path()).expect("reopen after kill -9");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let journal = rt
        .block_on(store.journal(JournalQuery::All))
        .expect("journal");
    let written: Vec<u64> = journal.iter().map(|e| e.at_ms).collect();
    let last_acked = *acked.iter().max().expect("acks");
    // Everything acknowledged is there, in order; at most the one write in flight beyond.
    assert!(
        written.len() as u64 > last_acked,
        "{} entries, last ack {last_acked}",
        written.len()
    );
    assert!(written.len() as u64 <= last_acked + 2);
    assert!(written.iter().copied().eq(0..written.len() as u64));
    let remediation = rt
        .block_on(store.remediation("i-burst"))
        .expect("remediation")
        .expect("set");
    assert!(remediation["n"].as_u64().expect("n") >= last_acked);
}

fn burst(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let store = EmbeddedStore::open(dir).expect("open");
    let mut stdout = std::io::stdout();
    rt.block_on(async {
        for n in 0..1_000_000u64 {
            store
                .append_journal(&entry(&format!("k{n}"), "i-burst", 0, n))
                .await
                .expect("append");
            store
                .set_remediation("i-burst", Some(&serde_json::json!({ "n": n })), 0)
                .await
                .expect("remediation");
            writeln!(stdout, "ack {n}").expect("print");
        }
    });
}
