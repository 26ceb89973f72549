use std::time::Duration;

use super::*;
use crate::model::{
    events,
    report::{CheckStatus, Event, EventKind, Hello},
};

fn hello(epoch: u64) -> Hello {
    Hello {
        instance_id: "i-1".into(),
        availability_zone: "az-a".into(),
        agent_version: "0.1.0".into(),
        epoch,
        last_seq: 0,
        services: vec![],
        healing_paused: false,
    }
}

fn event(seq: u64) -> Event {
    Event {
        seq,
        at: SystemTime::now(),
        kind: EventKind::CheckChanged {
            service: "web".into(),
            check: "http".into(),
            status: CheckStatus::Unhealthy,
            detail: "HTTP 503".into(),
        },
    }
}

#[test]
fn replayed_events_are_recorded_once() {
    let fleet = Fleet::new("c", true, None).expect("fleet");
    let (session, acked) = fleet.agent_connected(&hello(9));
    assert_eq!(acked, 0);
    assert_eq!(
        fleet.event(&session, &event(1)),
        Recorded::New { acked_seq: 1 }
    );
    assert_eq!(
        fleet.event(&session, &event(2)),
        Recorded::New { acked_seq: 2 }
    );
    fleet.agent_disconnected(&session, "test");
    // Same epoch reconnects and replays 2 and 3: 2 is a duplicate.
    let (session, acked) = fleet.agent_connected(&hello(9));
    assert_eq!(acked, 2);
    assert_eq!(
        fleet.event(&session, &event(2)),
        Recorded::Duplicate { acked_seq: 2 }
    );
    assert_eq!(
        fleet.event(&session, &event(3)),
        Recorded::New { acked_seq: 3 }
    );
    let checks = fleet
        .instance("i-1")
        .expect("known")
        .recent_events
        .iter()
        .filter(|e| e.kind == events::EventKind::CheckChanged)
        .count();
    assert_eq!(checks, 3);
    // A restarted agent (new epoch) starts over.
    let (_, acked) = fleet.agent_connected(&hello(10));
    assert_eq!(acked, 0);
}

#[test]
fn a_restarted_coordinator_does_not_call_acked_events_missing() {
    let fleet = Fleet::new("c", true, None).expect("fleet");
    // The agent numbered 1..=2 and a previous coordinator acked them.
    let mut h = hello(5);
    h.last_seq = 2;
    let (session, acked) = fleet.agent_connected(&h);
    assert_eq!(acked, 0);
    assert_eq!(
        fleet.event(&session, &event(3)),
        Recorded::New { acked_seq: 3 }
    );
    // A real gap after the baseline is still reported.
    assert_eq!(
        fleet.event(&session, &event(5)),
        Recorded::New { acked_seq: 5 }
    );
    let kinds: Vec<_> = fleet
        .instance("i-1")
        .expect("known")
        .recent_events
        .iter()
        .map(|e| e.message.clone())
        .filter(|m| m.contains("never arrived"))
        .collect();
    assert_eq!(kinds, ["events 4..=4 never arrived"]);
}

#[test]
fn a_newer_stream_supersedes_the_old_one() {
    let fleet = Fleet::new("c", true, None).expect("fleet");
    let (old, _) = fleet.agent_connected(&hello(1));
    let (new, _) = fleet.agent_connected(&hello(1));
    assert!(old.superseded.is_cancelled());
    assert_eq!(fleet.event(&old, &event(1)), Recorded::Superseded);
    assert_eq!(fleet.event(&new, &event(1)), Recorded::New { acked_seq: 1 });
    // The old stream ending must not mark the instance disconnected.
    fleet.agent_disconnected(&old, "superseded");
    assert!(
        fleet
            .instance("i-1")
            .and_then(|r| r.agent)
            .is_some_and(|a| a.connected)
    );
}

#[tokio::test]
async fn pause_and_skips_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = || -> Arc<dyn crate::ports::store::Store> {
        Arc::new(crate::adapters::store::EmbeddedStore::open(dir.path()).expect("store"))
    };
    let fleet = Fleet::new("c", true, Some(open())).expect("fleet");
    let (_session, _) = fleet.agent_connected(&hello(1));
    fleet
        .set_paused(true, "maintenance", "spiffe://td/operator/alice")
        .await
        .expect("persist");
    fleet
        .set_skipped("i-1", true, "debugging", "spiffe://td/operator/alice")
        .await
        .expect("persist")
        .expect("known instance");
    drop(fleet);
    let again = Fleet::new("c", true, Some(open())).expect("reopen");
    again.load_persisted().await.expect("load");
    let pause = again.pause_state();
    assert!(pause.paused);
    assert_eq!(pause.reason, "maintenance");
    assert_eq!(pause.by, "spiffe://td/operator/alice");
    again.agent_connected(&hello(2));
    assert!(again.instance("i-1").expect("known").skipped);
}

#[tokio::test]
async fn watchers_resume_from_a_cursor_without_gaps() {
    let fleet = Fleet::new("c", true, None).expect("fleet");
    let (session, _) = fleet.agent_connected(&hello(1));
    fleet.event(&session, &event(1));
    // Cursors are increasing unix microseconds (so they stay increasing across restarts):
    // resume after the first event (the agent's connection).
    let (all, _) = fleet.subscribe(0);
    assert_eq!(all.len(), 2);
    let first = all[0].cursor;
    assert!(all[1].cursor > first);
    let (backlog, mut live) = fleet.subscribe(first);
    assert_eq!(backlog.len(), 1, "only events after the first cursor");
    assert_eq!(backlog[0].cursor, all[1].cursor);
    fleet.event(&session, &event(2));
    let next = tokio::time::timeout(Duration::from_secs(5), live.recv())
        .await
        .expect("in time")
        .expect("event");
    assert!(
        next.cursor > all[1].cursor,
        "the next one follows without a gap"
    );
}
