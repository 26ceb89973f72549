//! The web view's one `WatchEvents` stream: [`Watcher`] keeps it open (resuming after the last
//! cursor, reconnecting with backoff), says whether the coordinator can be reached, and hands
//! both to every open page through [`Feed`], which also keeps the last events for a page that
//! has just opened.

use std::{
    collections::VecDeque,
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
    /// A fleet event: its cursor and its JSON (as `autohealctl events -o json` prints it).
    Event(u64, Arc<str>),
}

#[derive(Debug)]
struct State {
    link: Link,
    recent: VecDeque<(u64, Arc<str>)>,
}

/// What a page gets when it opens its event stream.
#[derive(Debug)]
pub struct Subscription {
    pub link: Link,
    /// Kept events after the page's cursor: (cursor, JSON).
    pub backlog: Vec<(u64, Arc<str>)>,
    pub live: broadcast::Receiver<Frame>,
}

/// What the watcher publishes: cheap to clone, one per server.
#[derive(Debug, Clone)]
pub struct Feed {
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
            frames,
            state: Arc::new(Mutex::new(State {
                link: Link {
                    reachable: false,
                    error: "connecting".into(),
                    since_ms: now_ms(),
                    endpoint: endpoint.to_owned(),
                },
                recent: VecDeque::new(),
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

    fn push(&self, event: &v1::FleetEvent) {
        let json: Arc<str> = tables::event_json(event).to_string().into();
        let mut state = self.lock();
        if state.recent.len() == RECENT {
            state.recent.pop_front();
        }
        state.recent.push_back((event.cursor, json.clone()));
        let _ = self.frames.send(Frame::Event(event.cursor, json));
    }
}

/// Keeps one `WatchEvents` stream open for all pages.
#[derive(Debug)]
pub struct Watcher {
    pub api: client::Client,
    pub endpoint: String,
    pub files: TlsFiles,
    pub feed: Feed,
}

impl Watcher {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut after = 0u64;
        let mut attempt = 0u32;
        loop {
            let why = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                why = self.watch(&mut after, &mut attempt) => why,
            };
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

    /// One stream, until it ends; says why it ended.
    async fn watch(&mut self, after: &mut u64, attempt: &mut u32) -> String {
        let request = v1::WatchEventsRequest {
            after: *after,
            instance_id: String::new(),
        };
        let mut stream = match self.api.watch_events(request).await {
            Ok(r) => r.into_inner(),
            Err(status) => return self.explain(&status).await,
        };
        self.feed.set_link(true, String::new());
        *attempt = 0;
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    *after = (*after).max(event.cursor);
                    self.feed.push(&event);
                }
                Ok(None) => return "the coordinator ended the event stream".into(),
                // Fell behind: resume after the last cursor we have (the stream said which).
                Err(status) if status.code() == tonic::Code::DataLoss => {
                    return status.message().to_owned();
                }
                Err(status) => return self.explain(&status).await,
            }
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
