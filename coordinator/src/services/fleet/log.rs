//! Fleet events: numbered by a cursor, kept in a bounded log and per instance, broadcast to
//! watchers (who resume from a cursor) and counted in the metrics.

use std::time::SystemTime;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::model::events;
use crate::model::events::FleetEvent;

use super::*;

impl Fleet {
    /// Records a fleet event that is not from an agent (decisions, actions, inventory trouble).
    pub fn record_event(&self, instance_id: &str, kind: events::EventKind, message: String) {
        let mut state = self.lock();
        push_event(&mut state, &self.events, instance_id, kind, message);
    }

    /// Events after `cursor` still in the log, and a receiver for the ones to come. Subscribing
    /// under the lock means nothing falls between the two.
    /// Brings back the events kept in the store (after a restart or on a new leader), so they
    /// are listed and resumable; later cursors continue after them.
    pub async fn restore_events(&self) -> Result<usize, crate::ports::store::StoreError> {
        let Some(store) = &self.store else {
            return Ok(0);
        };
        let mut stored = store.recent_events(EVENT_LOG).await?;
        stored.sort_by_key(|e| e.cursor);
        let mut state = self.lock();
        let known: std::collections::BTreeSet<u64> = state.log.iter().map(|e| e.cursor).collect();
        let mut restored = 0;
        let mut merged: Vec<FleetEvent> = state.log.drain(..).collect();
        for event in stored {
            if !known.contains(&event.cursor) {
                merged.push(event);
                restored += 1;
            }
        }
        merged.sort_by_key(|e| e.cursor);
        let skip = merged.len().saturating_sub(EVENT_LOG);
        state.log = merged.into_iter().skip(skip).collect();
        if let Some(last) = state.log.back().map(|e| e.cursor) {
            state.next_cursor = state.next_cursor.max(last + 1);
        }
        Ok(restored)
    }

    pub fn subscribe(&self, after: u64) -> (Vec<FleetEvent>, broadcast::Receiver<FleetEvent>) {
        let state = self.lock();
        let receiver = self.events.subscribe();
        let backlog = state
            .log
            .iter()
            .filter(|e| e.cursor > after)
            .cloned()
            .collect();
        (backlog, receiver)
    }
}

/// Counts fleet events by kind in the metrics, off the fleet's broadcast like every other
/// observer.
pub async fn count_events(fleet: Fleet, shutdown: CancellationToken) {
    let (_, mut events) = fleet.subscribe(u64::MAX);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => crate::metrics::global().fleet_event(event.kind.as_str()),
            // Missed events stay uncounted; counting the rest matters more than stopping.
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

pub(super) fn push_event(
    state: &mut State,
    events: &broadcast::Sender<FleetEvent>,
    instance_id: &str,
    kind: events::EventKind,
    message: String,
) {
    push_event_at(state, events, instance_id, kind, message, SystemTime::now());
}

/// The next cursor: unix microseconds, or one past the last cursor if the clock has not moved
/// on. Cursors so stay increasing across restarts and failovers (a client resuming with
/// `--after` after a restart neither misses nor repeats events), not only within one process.
pub(super) fn next_cursor(state: &mut State) -> u64 {
    let now = u64::try_from(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros()),
    )
    .unwrap_or(u64::MAX);
    let cursor = now.max(state.next_cursor);
    state.next_cursor = cursor + 1;
    cursor
}

/// [`push_event`] for an event that happened at `at` (an agent's own event time, kept when the
/// event is replayed after a reconnect).
pub(super) fn push_event_at(
    state: &mut State,
    events: &broadcast::Sender<FleetEvent>,
    instance_id: &str,
    kind: events::EventKind,
    message: String,
    at: SystemTime,
) {
    let cursor = next_cursor(state);
    let asg = state
        .instances
        .get(instance_id)
        .and_then(|r| r.asg.clone())
        .unwrap_or_default();
    let event = FleetEvent {
        cursor,
        at,
        instance_id: instance_id.to_owned(),
        asg,
        kind,
        message,
    };
    // Routine agent chatter (every check flip, every restart) is debug: at fleet scale an info
    // line per event is most of the coordinator's ingest cost (BENCHMARKS.md, ingest). What a
    // person acts on stays at info; all of it is in WatchEvents and the store either way.
    use events::EventKind as K;
    if matches!(
        kind,
        K::CheckChanged
            | K::ServiceStateChanged
            | K::RestartAttempted
            | K::AgentConnected
            | K::AgentDisconnected
            | K::DependencyChanged
    ) {
        tracing::debug!(cursor, instance = instance_id, kind = kind.as_str(), message = %event.message, "fleet event");
    } else {
        tracing::info!(cursor, instance = instance_id, kind = kind.as_str(), message = %event.message, "fleet event");
    }
    if let Some(record) = state.instances.get_mut(instance_id) {
        if record.recent_events.len() == RECENT_PER_INSTANCE {
            record.recent_events.pop_front();
        }
        record.recent_events.push_back(event.clone());
    }
    if state.log.len() == EVENT_LOG {
        state.log.pop_front();
    }
    state.log.push_back(event.clone());
    // No receivers is fine: nobody is watching.
    let _ = events.send(event);
}
