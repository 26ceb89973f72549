//! Notifications end to end, with the dispatcher in-process on a real `Fleet`: the Slack webhook
//! against a local HTTP receiver, SNS `Publish` and EventBridge `PutEvents` against moto (what
//! arrives is read back from SQS queues subscribed to the topic and targeted by a bus rule).

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use autoheal_common::config::ConfigErrors;
use autoheal_coordinator::adapters::aws::AwsSettings;
use autoheal_coordinator::adapters::notify::EventBus;
use autoheal_coordinator::adapters::notify::SnsTopic;
use autoheal_coordinator::model::events::EventKind;
use autoheal_coordinator::ports::notify::Notifier;
use autoheal_coordinator::services::fleet::Fleet;
use autoheal_coordinator::services::notify::Notifications;
use autoheal_coordinator::services::notify::NotifyConfig;
use autoheal_coordinator::services::notify::RawNotify;
use autoheal_coordinator::services::notify::SLACK_WEBHOOK_ENV;
use autoheal_coordinator::services::notify::Settings;
use autoheal_coordinator::services::notify::spawn_notifications;
use autoheal_tests::{eventually, moto::Moto};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
struct Received {
    path: String,
    content_type: String,
    body: serde_json::Value,
    answered: u16,
}

impl Received {
    fn text(&self) -> &str {
        self.body["text"].as_str().unwrap_or_default()
    }

    /// Events the message stands for: one bullet each, plus "and N more events".
    fn events(&self) -> usize {
        let text = self.text();
        let shown = text.lines().filter(|l| l.starts_with("• ")).count();
        let more = text
            .split("_and ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(0);
        shown + more
    }
}

/// A webhook stand-in on loopback: records each request and answers with the next scripted
/// status (200 once the script runs out).
#[derive(Debug, Clone)]
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(script: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                let script = script.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let log = log.clone();
                    let script = script.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let content_type = request
                            .headers()
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let bytes = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let body = serde_json::from_slice(&bytes).unwrap_or_default();
                        let answered = script
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .pop_front()
                            .unwrap_or(200);
                        log.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(Received {
                                path,
                                content_type,
                                body,
                                answered,
                            });
                        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                        *response.status_mut() =
                            http::StatusCode::from_u16(answered).expect("status");
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn webhook(&self) -> String {
        format!("http://{}/services/T000/B000/sEcReTtOkEn", self.addr)
    }
}

/// Slack configured the way an operator does it (the URL from the environment), with test
/// timings.
fn slack_config(receiver: &Receiver) -> NotifyConfig {
    let url = receiver.webhook();
    let env = move |name: &str| (name == SLACK_WEBHOOK_ENV).then(|| url.clone());
    let mut errors = ConfigErrors::default();
    let mut config = NotifyConfig::from_raw(
        RawNotify::default(),
        Path::new("."),
        env,
        false,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors}");
    config.settings.min_interval = Duration::from_secs(1);
    config.settings.base_backoff = Duration::from_millis(100);
    config.settings.max_backoff = Duration::from_millis(500);
    config
}

fn start_slack(receiver: &Receiver) -> (Fleet, CancellationToken) {
    let fleet = Fleet::new("coord-1", true, None).expect("fleet");
    let shutdown = CancellationToken::new();
    spawn_notifications(slack_config(receiver), &fleet, None, shutdown.clone())
        .expect("spawn")
        .expect("slack is configured");
    (fleet, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slack_payload_arrives() {
    let receiver = Receiver::start(&[]).await;
    let (fleet, shutdown) = start_slack(&receiver);
    fleet.record_event(
        "i-0abc",
        EventKind::Escalated,
        "web: local healing exhausted".to_owned(),
    );
    let r = &receiver;
    let got = eventually(Duration::from_secs(30), "the webhook call", || async move {
        r.received().into_iter().next()
    })
    .await;
    assert_eq!(got.path, "/services/T000/B000/sEcReTtOkEn");
    assert!(
        got.content_type.starts_with("application/json"),
        "{}",
        got.content_type
    );
    let text = got.text();
    assert!(text.contains("coord-1"), "{text}");
    assert!(
        text.contains("• escalated i-0abc: web: local healing exhausted"),
        "{text}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_200_events_becomes_a_handful_of_messages() {
    let receiver = Receiver::start(&[]).await;
    let (fleet, shutdown) = start_slack(&receiver);
    for i in 0..200 {
        fleet.record_event(
            &format!("i-{i:04}"),
            EventKind::ActionFailed,
            "deregister: throttled".to_owned(),
        );
    }
    let r = &receiver;
    let messages = eventually(Duration::from_secs(60), "all 200 events", || async move {
        let got = r.received();
        (got.iter().map(Received::events).sum::<usize>() >= 200).then_some(got)
    })
    .await;
    assert_eq!(messages.iter().map(Received::events).sum::<usize>(), 200);
    assert!(
        messages.len() <= 5,
        "{} messages for one storm",
        messages.len()
    );
    let summarized = messages
        .iter()
        .find(|m| m.text().contains("more events: "))
        .expect("a summarized message");
    assert!(
        summarized.text().contains(" action-failed"),
        "{}",
        summarized.text()
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_is_retried() {
    let receiver = Receiver::start(&[500]).await;
    let (fleet, shutdown) = start_slack(&receiver);
    fleet.record_event(
        "i-0abc",
        EventKind::ActionFailed,
        "replace: timed out".to_owned(),
    );
    let r = &receiver;
    let got = eventually(Duration::from_secs(30), "the retry", || async move {
        let got = r.received();
        (got.len() >= 2).then_some(got)
    })
    .await;
    let answered: Vec<u16> = got.iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 200]);
    assert_eq!(got[0].body, got[1].body, "the same message again");
    assert!(got[1].text().contains("replace: timed out"));
    shutdown.cancel();
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/moto_notify.py")
}

fn moto_notify(moto: &Moto, args: &[&str]) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(fixture())
        .args(args)
        .args(["--endpoint", &moto.endpoint()])
        .output()
        .expect("run moto_notify.py");
    assert!(
        out.status.success(),
        "moto_notify.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("fixture json")
}

/// Message bodies in an SQS queue (left in place).
fn queue_bodies(moto: &Moto, queue_url: &str) -> Vec<serde_json::Value> {
    moto_notify(moto, &["receive", "--queue-url", queue_url])
        .as_array()
        .expect("list")
        .iter()
        .map(|b| serde_json::from_str(b.as_str().expect("body")).expect("json body"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_publish_and_eventbridge_put_events_reach_moto() {
    let moto = Moto::start();
    let targets = moto_notify(&moto, &["setup"]);
    let field = |k: &str| targets[k].as_str().expect(k).to_owned();

    // Explicit test credentials: the coordinator's `Clients` use the default chain, and a test
    // must not set process environment.
    let credentials = aws_sdk_sns::config::Credentials::new("testing", "testing", None, None, "t");
    let sns = aws_sdk_sns::Client::from_conf(
        aws_sdk_sns::Config::builder()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .region(aws_sdk_sns::config::Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials.clone())
            .build(),
    );
    let events = aws_sdk_eventbridge::Client::from_conf(
        aws_sdk_eventbridge::Config::builder()
            .behavior_version(aws_sdk_eventbridge::config::BehaviorVersion::latest())
            .region(aws_sdk_eventbridge::config::Region::new("us-east-1"))
            .endpoint_url(moto.endpoint())
            .credentials_provider(credentials)
            .build(),
    );
    let aws = AwsSettings {
        endpoint: Some(moto.endpoint()),
        ..AwsSettings::default()
    };
    let sinks: Vec<Arc<dyn Notifier>> = vec![
        Arc::new(SnsTopic::new(sns, field("topic_arn"), &aws)),
        Arc::new(EventBus::new(events, field("bus_arn"), &aws)),
    ];
    let fleet = Fleet::new("coord-1", true, None).expect("fleet");
    let shutdown = CancellationToken::new();
    let settings = Settings {
        min_interval: Duration::from_secs(1),
        ..Settings::default()
    };
    tokio::spawn(Notifications::new(&fleet, sinks, settings).run(shutdown.clone()));

    fleet.record_event(
        "i-0abc",
        EventKind::Escalated,
        "web: local healing exhausted".to_owned(),
    );
    // Not notified: only what the default kinds name goes out.
    fleet.record_event(
        "i-0abc",
        EventKind::CheckChanged,
        "web/http is unhealthy".to_owned(),
    );

    let (m, sns_queue) = (&moto, &field("sns_queue"));
    let published = eventually(Duration::from_secs(60), "the SNS message", || async move {
        queue_bodies(m, sns_queue).into_iter().next()
    })
    .await;
    assert_eq!(published["TopicArn"], field("topic_arn").as_str());
    assert_eq!(published["Subject"], "autoheal escalated: i-0abc");
    let message = published["Message"].as_str().expect("message");
    assert!(message.contains("coord-1"), "{message}");
    assert!(
        message.contains("- escalated i-0abc: web: local healing exhausted"),
        "{message}"
    );
    assert!(!message.contains("check-changed"), "{message}");

    let events_queue = &field("events_queue");
    let put = eventually(
        Duration::from_secs(60),
        "the EventBridge event",
        || async move { queue_bodies(m, events_queue).into_iter().next() },
    )
    .await;
    assert_eq!(put["source"], "autoheal");
    assert_eq!(put["detail-type"], "autoheal fleet event");
    let detail = &put["detail"];
    assert_eq!(detail["coordinator"], "coord-1");
    let sent = detail["events"].as_array().expect("events");
    assert_eq!(sent.len(), 1, "{detail}");
    assert_eq!(sent[0]["kind"], "escalated");
    assert_eq!(sent[0]["instance_id"], "i-0abc");
    assert_eq!(sent[0]["message"], "web: local healing exhausted");
    shutdown.cancel();
}
