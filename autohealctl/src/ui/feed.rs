//! The web view's one `WatchEvents` stream: [`Watcher`] keeps it open (reconnecting with
//! backoff, and checking the coordinator's health while the stream is quiet), says whether the
//! coordinator can be reached, and hands both to every open page through [`Feed`], which also
//! keeps the last events for a page that has just opened.
//!
//! Cursors are the coordinator process's own and start again at 1 when it restarts (or another
//! replica takes over), so after a lost connection the watcher reads the whole retained log again
//! (`after = 0`) and the feed drops the events it has already seen; pages get the feed's own
//! sequence numbers, which never go back.

use std::{
    collections::{HashSet, VecDeque},
    hash::{Hash as _, Hasher as _},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use autoheal_common::tls::TlsFiles;
use autoheal_proto::v1;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{client, tables};

/// Events a page gets when it opens: enough for the timelines of a small fleet's last minutes.
const RECENT: usize = 500;
/// How often a quiet stream is checked: a coordinator that hangs (stopped, partitioned) closes
/// nothing, and HTTP/2 keepalive alone would notice only after about 40 s.
const LIVENESS: Duration = Duration::from_secs(5);
/// How long the health check may take before the coordinator counts as gone.
const LIVENESS_TIMEOUT: Duration = Duration::from_secs(3);

/// Events remembered as seen, to drop them when a re-read log replays them: more than the
/// coordinator retains (10 000).
const SEEN: usize = 20_000;

/// Whether the coordinator answers, as the page's banner shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Link {
    pub reachable: bool,
    /// Why not, in the words of `autohealctl`'s other commands.
    pub error: String,
    /// Since when (unix ms).
    pub since_ms: u64,
    pub endpoint: String,
}

/// One thing to push to the pages.
#[derive(Debug, Clone)]
pub enum Frame {
    Link(Link),
    /// A fleet event: the feed's sequence number and the event's JSON (as `autohealctl events
    /// -o json` prints it).
    Event(u64, Arc<str>),
}

#[derive(Debug)]
struct State {
    link: Link,
    recent: VecDeque<(u64, Arc<str>)>,
    next_seq: u64,
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
}

/// What a page gets when it opens its event stream.
#[derive(Debug)]
pub struct Subscription {
    pub link: Link,
    /// Kept events after the page's sequence number: (sequence, JSON).
    pub backlog: Vec<(u64, Arc<str>)>,
    pub live: broadcast::Receiver<Frame>,
}

/// What the watcher publishes: cheap to clone, one per server.
#[derive(Debug, Clone)]
pub struct Feed {
    /// Tells this process's sequence numbers from another's (a page outlives a restart).
    pub epoch: u64,
    frames: broadcast::Sender<Frame>,
    state: Arc<Mutex<State>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Feed {
    pub fn new(endpoint: &str) -> Self {
        let (frames, _) = broadcast::channel(1024);
        Self {
            epoch: now_ms(),
            frames,
            state: Arc::new(Mutex::new(State {
                link: Link {
                    reachable: false,
                    error: "connecting".into(),
                    since_ms: now_ms(),
                    endpoint: endpoint.to_owned(),
                },
                recent: VecDeque::new(),
                next_seq: 1,
                seen: HashSet::new(),
                seen_order: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The link now, the kept events after `after` (all kept ones for `None`) and the live
    /// frames from here on; taken under one lock, so nothing falls between them.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let state = self.lock();
        let live = self.frames.subscribe();
        let after = after.unwrap_or(0);
        let backlog = state
            .recent
            .iter()
            .filter(|(c, _)| *c > after)
            .cloned()
            .collect();
        Subscription {
            link: state.link.clone(),
            backlog,
            live,
        }
    }

    pub fn link(&self) -> Link {
        self.lock().link.clone()
    }

    fn set_link(&self, reachable: bool, error: String) {
        let mut state = self.lock();
        if state.link.reachable == reachable && state.link.error == error {
            return;
        }
        state.link = Link {
            reachable,
            error,
            since_ms: now_ms(),
            endpoint: state.link.endpoint.clone(),
        };
        // No page open is fine: nobody to tell.
        let _ = self.frames.send(Frame::Link(state.link.clone()));
    }

    /// Publishes `event` unless it was seen before; says whether it was new.
    fn push(&self, event: &v1::FleetEvent) -> bool {
        let key = identity(event);
        let mut state = self.lock();
        if !state.seen.insert(key) {
            return false;
        }
        state.seen_order.push_back(key);
        if state.seen_order.len() > SEEN
            && let Some(old) = state.seen_order.pop_front()
        {
            state.seen.remove(&old);
        }
        let json: Arc<str> = tables::event_json(event).to_string().into();
        let seq = state.next_seq;
        state.next_seq += 1;
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back((seq, json.clone()));
        let _ = self.frames.send(Frame::Event(seq, json));
        true
    }
}

/// What makes an event the same one when a log is read again: its cursor alone is not (a
/// restarted coordinator counts from 1 again), its cursor, time and content are.
fn identity(e: &v1::FleetEvent) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    e.cursor.hash(&mut h);
    e.at.map(|t| (t.seconds, t.nanos)).hash(&mut h);
    e.instance_id.hash(&mut h);
    e.kind.hash(&mut h);
    e.message.hash(&mut h);
    h.finish()
}

/// Keeps one `WatchEvents` stream open for all pages.
#[derive(Debug)]
pub struct Watcher {
    pub api: client::Client,
    /// `grpc.health.v1.Health` on the same port (any fleet certificate may call it).
    pub health: tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>,
    pub endpoint: String,
    pub files: TlsFiles,
    pub feed: Feed,
}

impl Watcher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut after = 0u64;
        let mut attempt = 0u32;
        loop {
            let (why, resume) = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                ended = self.watch(after, &mut attempt) => ended,
            };
            // Only a stream that fell behind resumes after its cursor: any other end may mean
            // another coordinator process, whose cursors started again.
            after = resume.unwrap_or(0);
            if resume.is_some() {
                continue;
            }
            self.feed.set_link(false, why);
            let wait = autoheal_common::backoff::random(
                attempt,
                Duration::from_millis(200),
                Duration::from_secs(3),
            );
            attempt = attempt.saturating_add(1);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One stream, until it ends; says why it ended, and the cursor to resume after when the
    /// same stream can go on (it fell behind).
    async fn watch(&mut self, after: u64, attempt: &mut u32) -> (String, Option<u64>) {
        let request = v1::WatchEventsRequest {
            after,
            instance_id: String::new(),
        };
        let opened = tokio::time::timeout(LIVENESS * 2, self.api.watch_events(request)).await;
        let mut stream = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return (self.explain(&status).await, None),
            Err(_) => {
                return (
                    format!(
                        "the coordinator at {} did not open the event stream within {}s",
                        self.endpoint,
                        (LIVENESS * 2).as_secs()
                    ),
                    None,
                );
            }
        };
        self.feed.set_link(true, String::new());
        *attempt = 0;
        let mut last = after;
        let mut check = tokio::time::interval(LIVENESS);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        check.tick().await;
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = check.tick() => {
                    if let Err(why) = self.alive().await {
                        return (why, None);
                    }
                    continue;
                }
            };
            match message {
                Ok(Some(event)) => {
                    last = last.max(event.cursor);
                    self.feed.push(&event);
                }
                Ok(None) => return ("the coordinator ended the event stream".into(), None),
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    return (status.message().to_owned(), Some(last));
                }
                Err(status) => return (self.explain(&status).await, None),
            }
        }
    }

    /// Whether the coordinator answers a health check in time; why not, if it doesn't.
    async fn alive(&mut self) -> Result<(), String> {
        let request = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        match tokio::time::timeout(LIVENESS_TIMEOUT, self.health.check(request)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(self.explain(&status).await),
            Err(_) => Err(format!(
                "the coordinator at {} stopped answering (no health check answer within {}s)",
                self.endpoint,
                LIVENESS_TIMEOUT.as_secs()
            )),
        }
    }

    async fn explain(&self, status: &tonic::Status) -> String {
        let tls = if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
        ) {
            client::diagnose_tls(&self.endpoint, &self.files).await
        } else {
            None
        };
        client::explain(status, &self.endpoint, tls.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(cursor: u64) -> v1::FleetEvent {
        v1::FleetEvent {
            cursor,
            kind: "escalated".into(),
            instance_id: "i-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_page_gets_the_kept_events_after_its_cursor_then_live_ones() {
        let feed = Feed::new("127.0.0.1:7443");
        for c in 1..=3 {
            feed.push(&event(c));
        }
        let Subscription {
            link,
            backlog,
            mut live,
        } = feed.subscribe(Some(1));
        assert!(!link.reachable);
        assert_eq!(backlog.iter().map(|(c, _)| *c).collect::<Vec<_>>(), [2, 3]);
        feed.push(&event(4));
        feed.set_link(true, String::new());
        assert!(matches!(live.try_recv(), Ok(Frame::Event(4, _))));
        assert!(matches!(
            live.try_recv(),
            Ok(Frame::Link(Link {
                reachable: true,
                ..
            }))
        ));
        // The same link state again tells nobody.
        feed.set_link(true, String::new());
        assert!(live.try_recv().is_err());
    }

    #[test]
    fn a_replayed_log_is_dropped_and_a_restarted_coordinators_events_are_not() {
        let feed = Feed::new("x:1");
        assert!(feed.push(&event(1)));
        assert!(feed.push(&event(2)));
        // The same process's log, read again after a lost connection.
        assert!(!feed.push(&event(1)));
        assert!(!feed.push(&event(2)));
        // A new process: cursor 1 again, but another event.
        let mut again = event(1);
        again.message = "agent sim connected".into();
        assert!(feed.push(&again));
        let seqs: Vec<u64> = feed
            .subscribe(None)
            .backlog
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(seqs, [1, 2, 3], "the feed's own numbers never go back");
    }

    #[test]
    fn only_the_last_events_are_kept() {
        let feed = Feed::new("x:1");
        for c in 1..=(RECENT as u64 + 10) {
            feed.push(&event(c));
        }
        let backlog = feed.subscribe(None).backlog;
        assert_eq!(backlog.len(), RECENT);
        assert_eq!(backlog.first().map(|(c, _)| *c), Some(11));
    }
}
