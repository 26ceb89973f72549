//! The agent's Prometheus metrics and a tiny plain-HTTP `/metrics` endpoint.
//!
//! Small on purpose (the agent's RSS budget is 6 MiB): each check and service gets its counters
//! once, at start, so a probe or a restart only bumps an atomic; the histogram has five buckets;
//! what the agent already publishes over `watch` (service states, the reporter's connection and
//! buffer) is read at scrape time instead of being mirrored on every change. The HTTP side is a
//! hand-written HTTP/1.1 responder (one request per connection) rather than a server crate.
//!
//! The endpoint is plain HTTP and off unless `[metrics] listen` is set: bind it to loopback or a
//! private interface.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tokio_util::sync::CancellationToken;

use crate::state::{ReporterStatus, ServiceSnapshot, ServiceState};

/// Upper bounds of the check latency histogram, in seconds: local probes take milliseconds, a
/// slow HTTP or exec check seconds.
const LATENCY_BUCKETS: [f64; 5] = [0.005, 0.025, 0.1, 0.5, 2.5];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckRun {
    service: String,
    check: String,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckKey {
    service: String,
    check: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RestartOutcome {
    service: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceKey {
    service: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateKey {
    service: String,
    state: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    checks: Family<CheckRun, Counter>,
    check_seconds: Family<CheckKey, Histogram, fn() -> Histogram>,
    restarts: Family<RestartOutcome, Counter>,
    escalations: Family<ServiceKey, Counter>,
    service_state: Family<StateKey, Gauge>,
    reporter_connected: Gauge,
    events_buffered: Gauge,
    events_dropped: Counter,
    reconnects: Counter,
}

/// Every metric the agent exports; clones share them.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

/// One check's counters, taken once so a probe only bumps atomics.
#[derive(Debug, Clone)]
pub struct CheckMetrics {
    success: Counter,
    failure: Counter,
    seconds: Histogram,
}

impl CheckMetrics {
    pub fn observe(&self, ok: bool, took: Duration) {
        if ok { &self.success } else { &self.failure }.inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

/// One service's healing counters.
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    restart_ok: Counter,
    restart_failed: Counter,
    escalations: Counter,
}

impl ServiceMetrics {
    pub fn restart(&self, succeeded: bool) {
        if succeeded {
            &self.restart_ok
        } else {
            &self.restart_failed
        }
        .inc();
    }

    pub fn escalated(&self) {
        self.escalations.inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("autoheal_agent");
        let checks = Family::<CheckRun, Counter>::default();
        let check_seconds = Family::<CheckKey, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let restarts = Family::<RestartOutcome, Counter>::default();
        let escalations = Family::<ServiceKey, Counter>::default();
        let service_state = Family::<StateKey, Gauge>::default();
        let reporter_connected = Gauge::default();
        let events_buffered = Gauge::default();
        let events_dropped = Counter::default();
        let reconnects = Counter::default();
        registry.register(
            "checks",
            "Probes run, by service, check and result (success or failure)",
            checks.clone(),
        );
        registry.register_with_unit(
            "check_duration",
            "How long each probe took",
            Unit::Seconds,
            check_seconds.clone(),
        );
        registry.register(
            "restarts",
            "Restart attempts, by service and outcome (succeeded: the action ran; failed: it errored or the service wasn't healthy by the verify deadline)",
            restarts.clone(),
        );
        registry.register(
            "escalations",
            "Times local healing was exhausted and the service escalated to the coordinator",
            escalations.clone(),
        );
        registry.register(
            "service_state",
            "1 for the state each service is in, 0 for the others",
            service_state.clone(),
        );
        registry.register(
            "reporter_connected",
            "1 while the stream to the coordinator is up, else 0",
            reporter_connected.clone(),
        );
        registry.register(
            "events_buffered",
            "Events numbered but not yet acknowledged by the coordinator",
            events_buffered.clone(),
        );
        registry.register(
            "events_dropped",
            "Events dropped because the buffer was full while disconnected",
            events_dropped.clone(),
        );
        registry.register(
            "reconnects",
            "Attempts to open the coordinator stream after the first one",
            reconnects.clone(),
        );
        Self(Arc::new(Inner {
            registry,
            checks,
            check_seconds,
            restarts,
            escalations,
            service_state,
            reporter_connected,
            events_buffered,
            events_dropped,
            reconnects,
        }))
    }

    pub fn check(&self, service: &str, check: &str) -> CheckMetrics {
        let run = |result| {
            self.0.checks.get_or_create_owned(&CheckRun {
                service: service.to_owned(),
                check: check.to_owned(),
                result,
            })
        };
        CheckMetrics {
            success: run("success"),
            failure: run("failure"),
            seconds: self.0.check_seconds.get_or_create_owned(&CheckKey {
                service: service.to_owned(),
                check: check.to_owned(),
            }),
        }
    }

    pub fn service(&self, service: &str) -> ServiceMetrics {
        let restart = |outcome| {
            self.0.restarts.get_or_create_owned(&RestartOutcome {
                service: service.to_owned(),
                outcome,
            })
        };
        ServiceMetrics {
            restart_ok: restart("succeeded"),
            restart_failed: restart("failed"),
            escalations: self.0.escalations.get_or_create_owned(&ServiceKey {
                service: service.to_owned(),
            }),
        }
    }

    pub fn reconnected(&self) {
        self.0.reconnects.inc();
    }

    /// Copies what the agent publishes over `watch` into the gauges, then renders every metric
    /// in the Prometheus text format.
    pub fn render(
        &self,
        services: &[watch::Receiver<ServiceSnapshot>],
        reporter: Option<&watch::Receiver<ReporterStatus>>,
    ) -> String {
        let m = &self.0;
        for rx in services {
            let snapshot = rx.borrow();
            for state in ServiceState::ALL {
                m.service_state
                    .get_or_create(&StateKey {
                        service: snapshot.name.clone(),
                        state: state.as_str(),
                    })
                    .set(i64::from(snapshot.state == state));
            }
        }
        if let Some(rx) = reporter {
            let status = rx.borrow();
            m.reporter_connected.set(i64::from(status.connected));
            m.events_buffered
                .set(i64::try_from(status.unacked).unwrap_or(i64::MAX));
            // The reporter keeps the running total; the counter catches up to it.
            let dropped = status.dropped_events;
            let counted = m.events_dropped.get();
            if dropped > counted {
                m.events_dropped.inc_by(dropped - counted);
            }
        }
        let mut open = String::new();
        // Writing into a String can't fail.
        let _ = prometheus_client::encoding::text::encode(&mut open, &m.registry);
        autoheal_common::exposition::from_openmetrics(&open)
    }
}

/// Scrapes served at once; more are closed unanswered (Prometheus scrapes one at a time).
const MAX_CONNECTIONS: usize = 4;
/// A client that hasn't sent its request head by then is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request head read: a scrape's is a few hundred bytes.
const MAX_REQUEST: usize = 4096;

#[derive(Debug)]
pub struct MetricsServer {
    pub listener: TcpListener,
    pub metrics: Metrics,
    pub services: Vec<watch::Receiver<ServiceSnapshot>>,
    pub reporter: Option<watch::Receiver<ReporterStatus>>,
}

impl MetricsServer {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                accepted = this.listener.accept() => accepted,
            };
            match accepted {
                Ok((tcp, _)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        continue;
                    };
                    let this = this.clone();
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => {}
                            () = this.answer(tcp) => {}
                        }
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn answer(&self, mut tcp: TcpStream) {
        let Ok(Some(head)) = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut tcp)).await
        else {
            return;
        };
        let response = match request_target(&head) {
            Some(("GET", "/metrics")) => {
                let body = self.metrics.render(&self.services, self.reporter.as_ref());
                response("200 OK", autoheal_common::exposition::CONTENT_TYPE, &body)
            }
            _ => response(
                "404 Not Found",
                "text/plain; charset=utf-8",
                "not found: try GET /metrics\n",
            ),
        };
        if let Err(error) = tcp.write_all(response.as_bytes()).await {
            tracing::debug!(%error, "metrics response not sent");
        }
        let _ = tcp.shutdown().await;
    }
}

/// Reads until the blank line ending the request head; `None` if the client stops first or the
/// head is too long.
async fn read_head(tcp: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Some(head)
}

/// Method and path (without a query) of an HTTP/1.x request head.
fn request_target(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|b| *b == b'\r').next()?;
    let mut parts = std::str::from_utf8(line).ok()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some((method, path))
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn probes_restarts_and_escalations_are_counted() {
        let m = Metrics::new();
        let check = m.check("web", "http");
        check.observe(true, Duration::from_millis(3));
        check.observe(false, Duration::from_secs(1));
        check.observe(true, Duration::from_millis(3));
        let service = m.service("web");
        service.restart(true);
        service.restart(false);
        service.escalated();
        let text = m.render(&[], None);
        let runs = |result| {
            sample(
                &text,
                &format!(
                    "autoheal_agent_checks_total{{service=\"web\",check=\"http\",result=\"{result}\"}}"
                ),
            )
        };
        assert_eq!(
            (runs("success"), runs("failure")),
            (Some(2.0), Some(1.0)),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "autoheal_agent_check_duration_seconds_bucket{le=\"0.005\",service=\"web\",check=\"http\"}"
            ),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                "autoheal_agent_check_duration_seconds_count{service=\"web\",check=\"http\"}"
            ),
            Some(3.0)
        );
        assert_eq!(
            sample(
                &text,
                "autoheal_agent_restarts_total{service=\"web\",outcome=\"failed\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "autoheal_agent_escalations_total{service=\"web\"}"),
            Some(1.0)
        );
        assert!(
            text.contains("# TYPE autoheal_agent_checks_total counter"),
            "{text}"
        );
    }

    #[test]
    fn states_and_the_reporter_are_read_at_scrape_time() {
        let m = Metrics::new();
        let mut snapshot = ServiceSnapshot {
            name: "web".into(),
            state: ServiceState::Healthy,
            reason: String::new(),
            pid: None,
            restarts: 0,
            checks: Vec::new(),
        };
        let (service_tx, service_rx) = watch::channel(snapshot.clone());
        let (status_tx, status_rx) = watch::channel(ReporterStatus::default());
        let state = |text: &str, state: &str| {
            sample(
                text,
                &format!("autoheal_agent_service_state{{service=\"web\",state=\"{state}\"}}"),
            )
        };
        let text = m.render(std::slice::from_ref(&service_rx), Some(&status_rx));
        assert_eq!(state(&text, "healthy"), Some(1.0), "{text}");
        assert_eq!(state(&text, "escalated"), Some(0.0));
        assert_eq!(
            sample(&text, "autoheal_agent_reporter_connected"),
            Some(0.0)
        );

        snapshot.state = ServiceState::Escalated;
        service_tx.send_replace(snapshot);
        status_tx.send_modify(|s| {
            s.connected = true;
            s.unacked = 3;
            s.dropped_events = 5;
        });
        m.reconnected();
        let text = m.render(std::slice::from_ref(&service_rx), Some(&status_rx));
        assert_eq!(state(&text, "healthy"), Some(0.0), "{text}");
        assert_eq!(state(&text, "escalated"), Some(1.0));
        assert_eq!(
            sample(&text, "autoheal_agent_reporter_connected"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "autoheal_agent_events_buffered"), Some(3.0));
        assert_eq!(
            sample(&text, "autoheal_agent_events_dropped_total"),
            Some(5.0)
        );
        assert_eq!(sample(&text, "autoheal_agent_reconnects_total"), Some(1.0));
        // Scraping again doesn't count the same drops twice.
        let text = m.render(std::slice::from_ref(&service_rx), Some(&status_rx));
        assert_eq!(
            sample(&text, "autoheal_agent_events_dropped_total"),
            Some(5.0)
        );
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        assert_eq!(
            request_target(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(
            request_target(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(("GET", "/metrics"))
        );
        assert_eq!(request_target(b"GET /metrics\r\n\r\n"), None);
        assert_eq!(request_target(b"GET /metrics SPDY/3 x\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn only_get_metrics_is_served() {
        let server = MetricsServer {
            listener: TcpListener::bind("127.0.0.1:0").await.expect("bind"),
            metrics: Metrics::new(),
            services: Vec::new(),
            reporter: None,
        };
        server.metrics.reconnected();
        let addr = server.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(server.run(shutdown.clone()));
        let get = |request: &'static str| async move {
            let mut tcp = TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(30), tcp.read_to_string(&mut answer))
                .await
                .expect("answered in time")
                .expect("read");
            answer
        };
        let ok = get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("Content-Type: text/plain; version=0.0.4"),
            "{ok}"
        );
        assert!(ok.contains("\nautoheal_agent_reconnects_total 1\n"), "{ok}");
        let body = ok
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        assert!(
            ok.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{ok}"
        );
        for other in [
            "GET / HTTP/1.1\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            let answer = get(other).await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{other:?}: {answer}");
        }
        shutdown.cancel();
    }
}
