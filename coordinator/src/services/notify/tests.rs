use std::{
    sync::{
        Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use tokio::sync::Semaphore;

use std::{collections::BTreeMap, path::Path, sync::Arc, time::SystemTime};

use autoheal_common::config::ConfigErrors;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::{dispatch::Pending, *};
use crate::adapters::notify as sinks;
use crate::adapters::notify::SlackWebhook;
use crate::adapters::notify::arn_region;
use crate::model::events::EventKind;
use crate::model::events::FleetEvent;
use crate::ports::notify::Batch;
use crate::ports::notify::MAX_MESSAGE_CHARS;
use crate::ports::notify::Notifier;
use crate::ports::notify::SendError;
use crate::ports::notify::WebhookUrl;
use crate::services::fleet::Fleet;

/// A sink that records what it is sent, can fail its first attempts, and can be held shut.
#[derive(Debug, Default)]
struct Recorder {
    sent: Mutex<Vec<(Instant, Batch)>>,
    attempts: AtomicU32,
    fail_first: u32,
    fail_status: u16,
    gate: Option<Semaphore>,
}

impl Recorder {
    fn failing(times: u32, status: u16) -> Self {
        Self {
            fail_first: times,
            fail_status: status,
            ..Self::default()
        }
    }

    fn sent(&self) -> Vec<(Instant, Batch)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn covered(&self) -> usize {
        self.sent().iter().map(|(_, b)| b.total()).sum()
    }
}

#[async_trait::async_trait]
impl Notifier for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    async fn send(&self, batch: &Batch) -> Result<(), SendError> {
        if let Some(gate) = &self.gate {
            gate.acquire()
                .await
                .map_err(|_| SendError::Status { status: 599 })?
                .forget();
        }
        let attempt = self.attempts.fetch_add(1, Ordering::SeqCst) + 1;
        if attempt <= self.fail_first {
            return Err(SendError::Status {
                status: self.fail_status,
            });
        }
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), batch.clone()));
        Ok(())
    }
}

fn settings() -> Settings {
    Settings {
        min_interval: Duration::from_secs(30),
        max_batch: 5,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        ..Settings::default()
    }
}

fn start(sink: &Arc<Recorder>, settings: Settings) -> (Fleet, CancellationToken, JoinHandle<()>) {
    let fleet = Fleet::new("c", true, None).expect("fleet");
    let notifications = Notifications::new(&fleet, vec![sink.clone()], settings);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(notifications.run(shutdown.clone()));
    (fleet, shutdown, task)
}

/// Polls `done` in (paused, auto-advancing) time, failing after an hour of it.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_storm_becomes_a_few_batched_messages_one_per_interval() {
    let sink = Arc::new(Recorder::default());
    let (fleet, _shutdown, _task) = start(&sink, settings());
    let started = Instant::now();
    for i in 0..200 {
        let kind = if i % 4 == 0 {
            EventKind::Escalated
        } else {
            EventKind::ActionFailed
        };
        fleet.record_event(&format!("i-{i}"), kind, format!("event {i}"));
    }
    until("all 200 events", || sink.covered() >= 200).await;

    let sent = sink.sent();
    assert_eq!(sink.covered(), 200, "each event counted once");
    assert!(sent.len() <= 3, "{} messages for one storm", sent.len());
    assert!(
        sent[0].0 - started < Duration::from_secs(1),
        "the first message goes out at once"
    );
    for pair in sent.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= Duration::from_secs(30),
            "messages closer than min_interval"
        );
    }
    for (_, batch) in &sent {
        assert!(batch.events.len() <= 5, "max_batch shown in full");
    }
    let last = &sent[sent.len() - 1].1;
    let summary = last.summary().expect("a summary of the rest");
    assert!(summary.starts_with("and "), "{summary}");
    assert!(summary.contains("action-failed"), "{summary}");
}

#[tokio::test(start_paused = true)]
async fn events_after_a_message_wait_out_the_interval_together() {
    let sink = Arc::new(Recorder::default());
    let (fleet, _shutdown, _task) = start(&sink, settings());
    fleet.record_event(
        "i-1",
        EventKind::Escalated,
        "web: local healing exhausted".into(),
    );
    until("the first message", || sink.sent().len() == 1).await;
    let first = sink.sent()[0].0;
    for i in 2..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        fleet.record_event(&format!("i-{i}"), EventKind::Escalated, "again".into());
    }
    until("the second message", || sink.sent().len() == 2).await;
    let (at, batch) = &sink.sent()[1];
    let gap = *at - first;
    assert!(
        gap >= Duration::from_secs(30) && gap < Duration::from_secs(31),
        "sent {gap:?} after the first"
    );
    let ids: Vec<&str> = batch
        .events
        .iter()
        .map(|e| e.instance_id.as_str())
        .collect();
    assert_eq!(ids, ["i-2", "i-3", "i-4"]);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_connects_and_check_flaps_are_not_notified() {
    let sink = Arc::new(Recorder::default());
    let (fleet, _shutdown, _task) = start(&sink, settings());
    fleet.record_event(
        "i-1",
        EventKind::AgentConnected,
        "agent 0.1.0 connected".into(),
    );
    fleet.record_event(
        "i-1",
        EventKind::CheckChanged,
        "web/http is unhealthy".into(),
    );
    fleet.record_event(
        "i-1",
        EventKind::ServiceStateChanged,
        "web: healthy -> failing".into(),
    );
    fleet.record_event(
        "i-1",
        EventKind::Escalated,
        "web: local healing exhausted".into(),
    );
    until("a message", || !sink.sent().is_empty()).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    let sent = sink.sent();
    assert_eq!(sent.len(), 1);
    let kinds: Vec<&str> = sent[0].1.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["escalated"]);
    assert!(sent[0].1.more.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_failed_send_is_retried_with_backoff() {
    let sink = Arc::new(Recorder::failing(2, 503));
    let (fleet, _shutdown, _task) = start(&sink, settings());
    fleet.record_event(
        "i-1",
        EventKind::ActionFailed,
        "deregister: throttled".into(),
    );
    until("delivery", || !sink.sent().is_empty()).await;
    assert_eq!(sink.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(sink.sent()[0].1.events[0].message, "deregister: throttled");
}

#[tokio::test(start_paused = true)]
async fn a_refused_send_is_not_retried_and_the_outbox_carries_on() {
    let sink = Arc::new(Recorder::failing(1, 404));
    let (fleet, _shutdown, _task) = start(&sink, settings());
    fleet.record_event("i-1", EventKind::ActionFailed, "lost".into());
    until("the attempt", || sink.attempts.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(
        sink.attempts.load(Ordering::SeqCst),
        1,
        "a 404 is not retried"
    );
    assert!(sink.sent().is_empty());
    fleet.record_event("i-2", EventKind::ActionFailed, "next".into());
    until("the next message", || !sink.sent().is_empty()).await;
    assert_eq!(sink.sent()[0].1.events[0].instance_id, "i-2");
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_and_counts_without_blocking_the_fleet() {
    let sink = Arc::new(Recorder {
        gate: Some(Semaphore::new(0)),
        ..Recorder::default()
    });
    let settings = Settings {
        queue: 2,
        timeout: Duration::from_secs(24 * 3600),
        ..settings()
    };
    let (fleet, _shutdown, _task) = start(&sink, settings);
    fleet.record_event("i-0", EventKind::Escalated, "first".into());
    // The sink now hangs on the first message.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 1..=50 {
        fleet.record_event(&format!("i-{i}"), EventKind::Escalated, "storm".into());
    }
    // Let the dispatcher see all 50 (paused time advances only once every task is idle).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let gate = sink.gate.as_ref().expect("gated");
    gate.add_permits(100);
    until("two messages", || sink.sent().len() == 2).await;
    let second = &sink.sent()[1].1;
    assert_eq!(second.total(), 2, "the queue held two");
    assert_eq!(second.dropped, 48, "the rest were counted");
    let summary = second.summary().expect("summary");
    assert!(summary.contains("48 events dropped"), "{summary}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_sends_what_is_pending_at_once() {
    let sink = Arc::new(Recorder::default());
    let (fleet, shutdown, task) = start(&sink, settings());
    fleet.record_event(
        "i-1",
        EventKind::Paused,
        "fleet paused by alice: deploy".into(),
    );
    until("the first message", || sink.sent().len() == 1).await;
    let first = sink.sent()[0].0;
    fleet.record_event("i-1", EventKind::Resumed, "fleet resumed by alice".into());
    tokio::time::sleep(Duration::from_secs(1)).await;
    shutdown.cancel();
    task.await.expect("dispatcher ends");
    let sent = sink.sent();
    assert_eq!(sent.len(), 2);
    assert!(sent[1].0 - first < Duration::from_secs(30), "not held back");
    assert_eq!(sent[1].1.events[0].kind, EventKind::Resumed);
}

fn event(kind: EventKind, instance: &str, message: &str) -> FleetEvent {
    FleetEvent {
        cursor: 1,
        at: SystemTime::UNIX_EPOCH,
        instance_id: instance.into(),
        asg: "web".into(),
        kind,
        message: message.into(),
    }
}

#[test]
fn the_summary_counts_the_rest_by_kind_most_frequent_first() {
    let batch = Batch {
        coordinator_id: "c".into(),
        events: vec![event(EventKind::Escalated, "i-1", "web: exhausted")],
        more: [(EventKind::Escalated, 30), (EventKind::ActionFailed, 7)].into(),
        dropped: 0,
    };
    assert_eq!(
        batch.summary().as_deref(),
        Some("and 37 more events: 30 escalated, 7 action-failed")
    );
    assert_eq!(batch.total(), 38);
    assert_eq!(batch.subject(), "autoheal: 38 fleet events");
    let text = batch.text();
    assert!(
        text.contains("- escalated i-1 (web): web: exhausted\n"),
        "{text}"
    );
}

#[test]
fn slack_text_escapes_what_slack_would_interpret() {
    let batch = Batch {
        coordinator_id: "c".into(),
        events: vec![event(EventKind::Alert, "i-1", "<!channel> a & b")],
        more: BTreeMap::new(),
        dropped: 0,
    };
    let text = sinks::slack_text(&batch);
    assert!(text.contains("&lt;!channel&gt; a &amp; b"), "{text}");
    assert!(!text.contains("<!channel>"));
    assert_eq!(batch.subject(), "autoheal alert: i-1");
}

#[test]
fn long_messages_are_cut() {
    let mut pending = Pending::default();
    pending.push(event(EventKind::Alert, "i-1", &"x".repeat(5000)), 5);
    assert_eq!(
        pending.events[0].message.chars().count(),
        MAX_MESSAGE_CHARS + 1
    );
}

#[test]
fn the_event_bridge_detail_is_structured() {
    let batch = Batch {
        coordinator_id: "c".into(),
        events: vec![event(EventKind::Decision, "i-1", "deregister")],
        more: [(EventKind::Decision, 2)].into(),
        dropped: 3,
    };
    let json = batch.to_json();
    assert_eq!(json["coordinator"], "c");
    assert_eq!(json["events"][0]["kind"], "decision");
    assert_eq!(json["events"][0]["at"], "1970-01-01T00:00:00Z");
    assert_eq!(json["more"]["decision"], 2);
    assert_eq!(json["dropped"], 3);
}

const SECRET: &str = "https://hooks.slack.com/services/T000/B000/sEcReTtOkEn";

fn no_env(_: &str) -> Option<String> {
    None
}

#[test]
fn the_webhook_url_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hook"), format!("{SECRET}\n")).expect("write");
    let raw = RawNotify {
        slack_webhook_file: Some("hook".into()),
        ..RawNotify::default()
    };
    let mut errors = ConfigErrors::default();
    let config = NotifyConfig::from_raw(raw, dir.path(), no_env, false, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    let url = config.slack_webhook.clone().expect("slack on");
    assert_eq!(url.expose(), SECRET, "read and trimmed");
    let debug = format!("{config:?}");
    assert!(!debug.contains("sEcReT"), "{debug}");
    let sink = SlackWebhook::new(url, Duration::from_secs(1)).expect("client");
    assert!(!format!("{sink:?}").contains("sEcReT"));
}

#[test]
fn a_bad_webhook_is_reported_without_its_url() {
    let env = |name: &str| {
        (name == SLACK_WEBHOOK_ENV).then(|| "http://hooks.slack.com/services/sEcReT".to_owned())
    };
    let mut errors = ConfigErrors::default();
    let config = NotifyConfig::from_raw(
        RawNotify::default(),
        Path::new("."),
        env,
        false,
        &mut errors,
    );
    assert!(config.slack_webhook.is_none());
    let text = errors.to_string();
    assert!(text.contains("must use https"), "{text}");
    assert!(!text.contains("sEcReT"), "{text}");
}

#[test]
fn the_environment_alone_turns_slack_on_and_loopback_http_is_allowed() {
    let env =
        |name: &str| (name == SLACK_WEBHOOK_ENV).then(|| "http://127.0.0.1:9/hook".to_owned());
    let mut errors = ConfigErrors::default();
    let config = NotifyConfig::from_raw(
        RawNotify::default(),
        Path::new("."),
        env,
        false,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    assert!(config.slack_webhook.is_some());
    assert!(!config.is_empty());
}

#[test]
fn no_section_and_no_environment_means_no_sinks_with_defaults() {
    let mut errors = ConfigErrors::default();
    let config = NotifyConfig::from_raw(
        RawNotify::default(),
        Path::new("."),
        no_env,
        false,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    assert!(config.is_empty());
    assert_eq!(config.settings, Settings::default());
    assert!(config.settings.kinds.contains(&EventKind::Escalated));
    assert!(!config.settings.kinds.contains(&EventKind::CheckChanged));
}

#[test]
fn every_notify_error_is_listed_with_its_path() {
    let raw = RawNotify {
        slack_webhook_file: Some("missing-file".into()),
        sns_topic_arn: Some("arn:aws:sqs:us-east-1:123456789012:q".into()),
        event_bus: Some("bad bus!".into()),
        min_interval: Some("100ms".into()),
        max_batch: Some(0),
        queue: Some(0),
        max_attempts: Some(0),
        timeout: Some("soon".into()),
        kinds: Some(vec!["escalated".into(), "heartbeat".into()]),
    };
    let mut errors = ConfigErrors::default();
    NotifyConfig::from_raw(raw, Path::new("/nonexistent"), no_env, true, &mut errors);
    let mut paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "notify.event_bus",
            "notify.kinds[1]",
            "notify.max_attempts",
            "notify.max_batch",
            "notify.min_interval",
            "notify.queue",
            "notify.slack_webhook_file",
            "notify.sns_topic_arn",
            "notify.timeout",
        ],
        "{errors}"
    );
}

#[test]
fn aws_sinks_need_an_aws_section_and_accept_names_and_arns() {
    let raw = || RawNotify {
        sns_topic_arn: Some("arn:aws:sns:eu-west-1:123456789012:autoheal".into()),
        event_bus: Some("arn:aws:events:eu-west-1:123456789012:event-bus/ops".into()),
        ..RawNotify::default()
    };
    let mut errors = ConfigErrors::default();
    NotifyConfig::from_raw(raw(), Path::new("."), no_env, false, &mut errors);
    let paths: Vec<&str> = errors.errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["notify.sns_topic_arn", "notify.event_bus"],
        "{errors}"
    );

    let mut errors = ConfigErrors::default();
    let config = NotifyConfig::from_raw(raw(), Path::new("."), no_env, true, &mut errors);
    assert!(errors.is_empty(), "{errors}");
    assert_eq!(
        arn_region(config.sns_topic_arn.as_deref().unwrap_or_default()),
        Some("eu-west-1")
    );
    let mut errors = ConfigErrors::default();
    let named = RawNotify {
        event_bus: Some("default".into()),
        ..RawNotify::default()
    };
    NotifyConfig::from_raw(named, Path::new("."), no_env, true, &mut errors);
    assert!(errors.is_empty(), "{errors}");
}

#[tokio::test]
async fn a_failed_webhook_call_is_described_without_its_url() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let url = WebhookUrl::parse("http://127.0.0.1:1/services/T000/B000/sEcReT").expect("url");
    let sink = SlackWebhook::new(url, Duration::from_secs(5)).expect("client");
    let batch = Batch {
        coordinator_id: "c".into(),
        events: vec![event(EventKind::Alert, "i-1", "x")],
        more: BTreeMap::new(),
        dropped: 0,
    };
    let error = sink.send(&batch).await.expect_err("refused");
    assert!(error.is_retryable(), "{error}");
    let text = format!("{error} {error:?}");
    assert!(!text.contains("sEcReT"), "{text}");
    assert!(!text.contains("127.0.0.1:1"), "{text}");
}
