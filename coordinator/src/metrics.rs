//! The coordinator's Prometheus metrics and the plain-HTTP `/metrics` endpoint that serves them.
//!
//! One process-wide [`Metrics`], reached with [`global`]: the things counted happen deep in
//! modules that don't otherwise share state — the AWS retry loop (a free function called from
//! every SDK wrapper and the DynamoDB store), the TLS listener, agent streams and the control
//! loop — and a coordinator process is one coordinator, so one registry matches what a scrape
//! describes. Threading a handle through would change constructors and call sites (and their
//! tests) across the crate for no gain in what is measured. Unit tests read deltas, never
//! absolute values, since tests in one process share the registry.
//!
//! The endpoint is plain HTTP and off unless `metrics_listen` is set: bind it to loopback or a
//! private interface.

use std::{convert::Infallible, net::SocketAddr, sync::LazyLock, time::Duration};

use hyper::{Method, Request, Response, StatusCode, header, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AwsCallLabels {
    pub operation: String,
    /// `ok`, `retried` (an attempt failed and another follows) or `failed` (gave up).
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardrailLabel {
    pub guardrail: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub step: String,
    /// The journal phase written: `intent`, `succeeded`, `failed`, `would-act`.
    pub phase: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric the coordinator exports. Cloning a metric clones a handle to the same value.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub agents_connected: Gauge,
    pub agent_streams: Counter,
    pub agent_events: Family<KindLabel, Counter>,
    pub duplicate_events: Counter,
    pub heartbeats: Counter,
    pub fleet_events: Family<KindLabel, Counter>,
    pub aws_calls: Family<AwsCallLabels, Counter>,
    pub decisions: Family<KindLabel, Counter>,
    pub guardrail_holds: Family<GuardrailLabel, Counter>,
    pub actions: Family<ActionLabels, Counter>,
    pub leader: Gauge,
    pub fencing_token: Gauge,
    pub tls_refused: Family<ReasonLabel, Counter>,
    pub store_errors: Family<OperationLabel, Counter>,
    pub enrollments_denied: Family<ReasonLabel, Counter>,
    pub certificates_issued: Family<KindLabel, Counter>,
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("autoheal");
        let m = Self {
            agents_connected: Gauge::default(),
            agent_streams: Counter::default(),
            agent_events: Family::default(),
            duplicate_events: Counter::default(),
            heartbeats: Counter::default(),
            fleet_events: Family::default(),
            aws_calls: Family::default(),
            decisions: Family::default(),
            guardrail_holds: Family::default(),
            actions: Family::default(),
            leader: Gauge::default(),
            fencing_token: Gauge::default(),
            tls_refused: Family::default(),
            store_errors: Family::default(),
            enrollments_denied: Family::default(),
            certificates_issued: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "agents_connected",
            "Agent streams open on this coordinator",
            m.agents_connected.clone(),
        );
        r.register(
            "agent_streams_opened",
            "Agent streams accepted after a valid Hello (redirected ones not counted)",
            m.agent_streams.clone(),
        );
        r.register(
            "agent_events_received",
            "Events received from agents, by kind, duplicates included",
            m.agent_events.clone(),
        );
        r.register(
            "agent_events_duplicate",
            "Events received again after a reconnect and acknowledged without recording",
            m.duplicate_events.clone(),
        );
        r.register(
            "heartbeats_received",
            "Heartbeats received from agents",
            m.heartbeats.clone(),
        );
        r.register(
            "fleet_events",
            "Fleet events recorded (what WatchEvents streams), by kind",
            m.fleet_events.clone(),
        );
        r.register(
            "aws_calls",
            "AWS API calls by operation and outcome: ok, retried (an attempt failed, another follows), failed (gave up)",
            m.aws_calls.clone(),
        );
        r.register(
            "decisions",
            "Policy decisions per control pass, by kind (act, would-act, hold, alert, wait, finished)",
            m.decisions.clone(),
        );
        r.register(
            "guardrail_holds",
            "Held decisions per control pass, by the guardrail holding them",
            m.guardrail_holds.clone(),
        );
        r.register(
            "actions",
            "Journal entries written, by step and phase (intent, succeeded, failed, would-act)",
            m.actions.clone(),
        );
        r.register(
            "leader",
            "1 while this coordinator holds the leader lease, else 0",
            m.leader.clone(),
        );
        r.register(
            "fencing_token",
            "Fencing token of this coordinator's current term as leader (0 when following)",
            m.fencing_token.clone(),
        );
        r.register(
            "tls_handshakes_refused",
            "Incoming TLS handshakes refused (bad or missing client certificate) or timed out, by reason",
            m.tls_refused.clone(),
        );
        r.register(
            "store_errors",
            "Store writes that failed outside the decision path (kept in memory, not in the store), by operation",
            m.store_errors.clone(),
        );
        r.register(
            "enrollments_denied",
            "Enrollments and renewals refused, by the check that refused them",
            m.enrollments_denied.clone(),
        );
        r.register(
            "certificates_issued",
            "Instance certificates issued, by kind (enroll, renew)",
            m.certificates_issued.clone(),
        );
        // Series known up front start at zero, so a rate() has a baseline before the first one.
        for kind in ["act", "would-act", "hold", "alert", "wait", "finished"] {
            let _ = m.decisions.get_or_create_owned(&KindLabel {
                kind: kind.to_owned(),
            });
        }
        for reason in ["refused", "timeout", "idle", "busy", "per-source"] {
            let _ = m.tls_refused.get_or_create_owned(&ReasonLabel {
                reason: reason.to_owned(),
            });
        }
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut open = String::new();
        // Writing into a String can't fail.
        let _ = prometheus_client::encoding::text::encode(&mut open, &self.registry);
        autoheal_common::exposition::from_openmetrics(&open)
    }

    pub fn agent_event(&self, kind: &'static str, duplicate: bool) {
        self.agent_events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
        if duplicate {
            self.duplicate_events.inc();
        }
    }

    pub fn fleet_event(&self, kind: &'static str) {
        self.fleet_events
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn aws_call(&self, operation: &str, outcome: &'static str) {
        self.aws_calls
            .get_or_create(&AwsCallLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// One decision of the engine, by kind (`act`, `hold`, …), and each guardrail that held it.
    pub fn decision(&self, kind: &'static str, held_by: &[&'static str]) {
        for guardrail in held_by {
            self.guardrail_holds
                .get_or_create(&GuardrailLabel {
                    guardrail: (*guardrail).to_owned(),
                })
                .inc();
        }
        self.decisions
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn journaled(&self, step: &'static str, phase: &'static str) {
        self.actions
            .get_or_create(&ActionLabels {
                step: step.to_owned(),
                phase: phase.to_owned(),
            })
            .inc();
    }

    pub fn leadership(&self, token: Option<u64>) {
        self.leader.set(i64::from(token.is_some()));
        self.fencing_token
            .set(i64::try_from(token.unwrap_or(0)).unwrap_or(i64::MAX));
    }

    pub fn enrollment_denied(&self, reason: &'static str) {
        self.enrollments_denied
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn certificate_issued(&self, kind: &'static str) {
        self.certificates_issued
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }

    pub fn tls_refused(&self, reason: &'static str) {
        self.tls_refused
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

/// Counts an open agent stream for as long as it lives.
#[derive(Debug)]
pub struct ConnectedAgent(());

impl ConnectedAgent {
    pub fn new() -> Self {
        let m = global();
        m.agent_streams.inc();
        m.agents_connected.inc();
        Self(())
    }
}

impl Default for ConnectedAgent {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ConnectedAgent {
    fn drop(&mut self) {
        global().agents_connected.dec();
    }
}

/// A scrape that sends its request head slower than this is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The `/metrics` endpoint: `GET /metrics` answers the exposition, anything else 404.
#[derive(Debug)]
pub struct MetricsServer {
    pub listener: TcpListener,
}

impl MetricsServer {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let stop = shutdown.clone();
            tokio::spawn(
                async move {
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(
                            TokioIo::new(tcp),
                            hyper::service::service_fn(|req| async move {
                                Ok::<_, Infallible>(respond(&req))
                            }),
                        );
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => {}
                        served = conn => if let Err(error) = served {
                            tracing::debug!(%error, "metrics connection ended with an error");
                        },
                    }
                }
                .instrument(tracing::debug_span!("metrics_conn", %remote)),
            );
        }
    }
}

fn respond<B>(req: &Request<B>) -> Response<String> {
    let (status, content_type, body) =
        if req.method() == Method::GET && req.uri().path() == "/metrics" {
            (
                StatusCode::OK,
                autoheal_common::exposition::CONTENT_TYPE,
                global().render(),
            )
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: try GET /metrics\n".to_owned(),
            )
        };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample `name` (with its labels, as rendered), if present.
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn every_family_has_help_and_counters_are_typed_by_their_samples() {
        let m = Metrics::new();
        m.heartbeats.inc();
        m.aws_call("DescribeAutoScalingGroups", "ok");
        let text = m.render();
        assert!(
            text.contains("# HELP autoheal_heartbeats_received_total Heartbeats received"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE autoheal_heartbeats_received_total counter"),
            "{text}"
        );
        assert_eq!(
            sample(&text, "autoheal_heartbeats_received_total"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "autoheal_aws_calls_total{operation=\"DescribeAutoScalingGroups\",outcome=\"ok\"}"
            ),
            Some(1.0),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = family.split(' ').next().unwrap_or_default();
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
    }

    #[test]
    fn connected_agents_are_counted_while_their_stream_lives() {
        let before = global().agent_streams.get();
        let guard = ConnectedAgent::new();
        assert!(global().agent_streams.get() > before);
        // Other tests may hold streams of their own: only this one's presence is certain.
        assert!(global().agents_connected.get() >= 1);
        drop(guard);
        assert!(
            global().agent_streams.get() > before,
            "a counter never drops"
        );
    }

    #[test]
    fn leadership_sets_leader_and_token() {
        let m = Metrics::new();
        m.leadership(Some(7));
        let text = m.render();
        assert_eq!(sample(&text, "autoheal_leader"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "autoheal_fencing_token"), Some(7.0));
        m.leadership(None);
        let text = m.render();
        assert_eq!(sample(&text, "autoheal_leader"), Some(0.0));
        assert_eq!(sample(&text, "autoheal_fencing_token"), Some(0.0));
    }

    #[test]
    fn journal_phases_are_counted_by_step() {
        let m = Metrics::new();
        m.journaled("deregister", "intent");
        m.journaled("deregister", "succeeded");
        m.journaled("deregister", "succeeded");
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "autoheal_actions_total{step=\"deregister\",phase=\"succeeded\"}"
            ),
            Some(2.0),
            "{text}"
        );
    }

    #[tokio::test]
    async fn only_get_metrics_is_served() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        global().heartbeats.inc();
        let server = MetricsServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
        };
        let addr = server.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        let get = |request: &'static str| async move {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let mut response = String::new();
            tokio::time::timeout(Duration::from_secs(30), tcp.read_to_string(&mut response))
                .await
                .expect("answered in time")
                .expect("read");
            response
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("content-type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("autoheal_heartbeats_received_total "), "{ok}");
        for other in [
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ] {
            let answer = get(other).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{other:?}: {answer}");
        }
        shutdown.cancel();
    }
}
