//! The reporter: one mTLS bidi stream to the coordinator (`AgentService.Connect`). It numbers
//! events, keeps the unacknowledged ones in a bounded buffer and replays them after a reconnect,
//! sends heartbeats, follows redirects and reconnects with exponential backoff and full jitter.
//! It never blocks healing: events reach it over an unbounded channel it always drains. With
//! enrollment on it keeps its certificate current first (`crate::enroll`), and it reconnects
//! with a new certificate when one is due or when the files change on disk.

use std::{sync::Arc, time::Duration};

use autoheal_common::{
    backoff,
    error::DisplayChain,
    tls::{self, TlsFiles},
};
use autoheal_proto::{
    MAX_MESSAGE_BYTES, VERSION,
    v1::{self, agent_message, agent_service_client::AgentServiceClient, coordinator_message},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    clock::SharedClock,
    config::{CoordinatorConfig, IdentitySource},
    identity::{self, InstanceIdentity},
    metrics::Metrics,
    state::{Emitted, ReporterStatus, ServiceSnapshot},
};

mod buffer;

pub use buffer::EventBuffer;

/// The wait before reconnect attempt `attempt` (0-based): the one backoff's full jitter over
/// `reconnect_initial`..`reconnect_max`, `unit` being the random sample in [0, 1].
fn reconnect_delay(config: &CoordinatorConfig, attempt: u32, unit: f64) -> Duration {
    backoff::full_jitter(
        attempt,
        config.reconnect_initial,
        config.reconnect_max,
        unit,
    )
}

#[derive(Debug)]
pub struct Reporter {
    pub config: CoordinatorConfig,
    pub identity: IdentitySource,
    pub specs: Vec<v1::ServiceSpec>,
    pub events: mpsc::UnboundedReceiver<Emitted>,
    pub services: Vec<watch::Receiver<ServiceSnapshot>>,
    pub paused: watch::Sender<bool>,
    pub status: watch::Sender<ReporterStatus>,
    pub clock: SharedClock,
    pub metrics: Metrics,
}

enum End {
    Shutdown,
    Redirect(String),
    Failed {
        error: String,
        welcomed: bool,
    },
    /// The certificate is due for renewal, or its files changed on disk: reconnect at once
    /// with the new one (the event buffer stays; healing never noticed).
    Recertify(&'static str),
}

/// How long to wait for response headers and then for the Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Reporter {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let epoch = loop {
            let e = rand::random::<u64>();
            if e != 0 {
                break e;
            }
        };
        let mut buffer = EventBuffer::new(self.config.event_buffer.get());
        self.status.send_modify(|s| s.epoch = epoch);
        let mut identity: Option<InstanceIdentity> = None;
        let mut failures: u32 = 0;
        let mut redirects: u32 = 0;
        let mut next_endpoint = 0usize;
        let mut redirect: Option<String> = None;
        let mut delay = Duration::ZERO;
        let mut first_attempt = true;
        let enrollment = crate::enroll::Enrollment::from_config(&self.config, &self.identity);
        loop {
            if !std::mem::take(&mut first_attempt) {
                self.metrics.reconnected();
            }
            if !delay.is_zero() {
                let until = self.clock.now() + delay;
                if !self.drain_until(&shutdown, &mut buffer, until).await {
                    return;
                }
            }
            let id = match &identity {
                Some(id) => id.clone(),
                None => {
                    let resolved = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return,
                        r = identity::resolve(&self.identity) => r,
                    };
                    match resolved {
                        Ok(id) => {
                            identity = Some(id.clone());
                            id
                        }
                        Err(e) => {
                            self.failed(&e, &mut failures, &mut delay);
                            continue;
                        }
                    }
                }
            };
            let endpoint = match redirect.take() {
                Some(e) => e,
                None => {
                    let e =
                        self.config.endpoints[next_endpoint % self.config.endpoints.len()].clone();
                    next_endpoint += 1;
                    e
                }
            };
            // Enrollment never blocks healing: events queue on the unbounded channel meanwhile,
            // and every step of it is bounded by a timeout.
            let renew_at = match &enrollment {
                None => None,
                Some(enrollment) => {
                    let ensured = tokio::select! {
                        biased;
                        () = shutdown.cancelled() => return,
                        r = enrollment.ensure(&id.instance_id, &endpoint) => r,
                    };
                    match ensured {
                        Ok(held) => Some(held.renew_at),
                        Err(e) => {
                            self.failed(&e, &mut failures, &mut delay);
                            continue;
                        }
                    }
                }
            };
            let cert_files = crate::enroll::fingerprint(&self.config.tls);
            let tls_config = match load_tls(&self.config.tls, &id) {
                Ok(c) => c,
                Err(e) => {
                    self.failed(&*e, &mut failures, &mut delay);
                    continue;
                }
            };
            let credentials = Credentials {
                config: tls_config,
                renew_at,
                cert_files,
            };
            match self
                .session(&shutdown, &mut buffer, &id, epoch, &endpoint, credentials)
                .await
            {
                End::Shutdown => return,
                End::Redirect(to) => {
                    tracing::info!(from = %endpoint, %to, "redirected by the coordinator");
                    redirects += 1;
                    redirect = Some(to);
                    // Follow at once, but don't let two coordinators bounce us in a tight loop.
                    delay = if redirects > 3 {
                        reconnect_delay(&self.config, redirects, rand::random())
                    } else {
                        Duration::ZERO
                    };
                }
                End::Recertify(why) => {
                    tracing::info!(%endpoint, why, "reconnecting with a new certificate");
                    redirect = Some(endpoint);
                    delay = Duration::ZERO;
                }
                End::Failed { error, welcomed } => {
                    if welcomed {
                        failures = 0;
                        redirects = 0;
                    }
                    tracing::warn!(%endpoint, %error, "coordinator stream ended");
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.last_error = Some(format!("{endpoint}: {error}"));
                    });
                    delay = reconnect_delay(&self.config, failures, rand::random());
                    failures = failures.saturating_add(1);
                }
            }
        }
    }

    fn failed(
        &self,
        e: &(dyn std::error::Error + 'static),
        failures: &mut u32,
        delay: &mut Duration,
    ) {
        let error = DisplayChain(e).to_string();
        tracing::error!(%error, "cannot connect to the coordinator; healing continues locally");
        self.status.send_modify(|s| {
            s.connected = false;
            s.last_error = Some(error);
        });
        *delay = reconnect_delay(&self.config, *failures, rand::random());
        *failures = failures.saturating_add(1);
    }

    fn take_event(&self, buffer: &mut EventBuffer, e: Emitted) -> v1::Event {
        let ev = buffer.push(e);
        self.publish(buffer);
        ev
    }

    fn publish(&self, buffer: &EventBuffer) {
        self.status.send_modify(|s| {
            s.last_seq = buffer.last_seq();
            s.unacked = buffer.len();
            s.dropped_events = buffer.dropped_total();
            s.healing_paused = *self.paused.borrow();
        });
    }

    /// Sleeps until `until`, buffering events meanwhile. False on shutdown.
    async fn drain_until(
        &mut self,
        shutdown: &CancellationToken,
        buffer: &mut EventBuffer,
        until: tokio::time::Instant,
    ) -> bool {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return false,
                Some(e) = self.events.recv() => { self.take_event(buffer, e); }
                () = tokio::time::sleep_until(until) => return true,
            }
        }
    }

    fn heartbeat(&self, buffer: &EventBuffer) -> v1::AgentMessage {
        v1::AgentMessage {
            kind: Some(agent_message::Kind::Heartbeat(v1::Heartbeat {
                last_seq: buffer.last_seq(),
                dropped_events: buffer.dropped_total(),
                services: self.services.iter().map(|s| s.borrow().wire()).collect(),
            })),
        }
    }

    async fn session(
        &mut self,
        shutdown: &CancellationToken,
        buffer: &mut EventBuffer,
        id: &InstanceIdentity,
        epoch: u64,
        endpoint: &str,
        credentials: Credentials,
    ) -> End {
        let failed = |error: String| End::Failed {
            error,
            welcomed: false,
        };
        let channel = match tls::channel(
            endpoint,
            credentials.config.clone(),
            self.config.connect_timeout,
        ) {
            Ok(c) => c,
            Err(e) => return failed(e.to_string()),
        };
        let mut client = AgentServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel::<v1::AgentMessage>(buffer.capacity() + 64);
        let hello = v1::AgentMessage {
            kind: Some(agent_message::Kind::Hello(v1::Hello {
                instance_id: id.instance_id.clone(),
                availability_zone: id.availability_zone.clone(),
                agent_version: VERSION.to_owned(),
                epoch,
                last_seq: buffer.last_seq(),
                services: self.specs.clone(),
                healing_paused: *self.paused.borrow(),
            })),
        };
        if tx.try_send(hello).is_err() {
            return failed("cannot queue Hello".into());
        }
        let deadline = self.clock.now() + self.config.connect_timeout + HANDSHAKE_TIMEOUT;
        let call = client.connect(ReceiverStream::new(rx));
        tokio::pin!(call);
        let mut inbound = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                Some(e) = self.events.recv() => { self.take_event(buffer, e); }
                r = &mut call => match r {
                    Ok(resp) => break resp.into_inner(),
                    Err(status) => return failed(status_text(&status)),
                },
                () = tokio::time::sleep_until(deadline) => return failed("timed out connecting".into()),
            }
        };
        let welcome = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                Some(e) = self.events.recv() => { self.take_event(buffer, e); }
                m = inbound.message() => match m {
                    Ok(Some(v1::CoordinatorMessage { kind: Some(coordinator_message::Kind::Welcome(w)) })) => break w,
                    Ok(Some(v1::CoordinatorMessage { kind: Some(coordinator_message::Kind::Redirect(r)) })) => {
                        return End::Redirect(r.endpoint);
                    }
                    Ok(Some(other)) => return failed(format!("expected Welcome, got {other:?}")),
                    Ok(None) => return failed("stream closed before Welcome".into()),
                    Err(status) => return failed(status_text(&status)),
                },
                () = tokio::time::sleep_until(deadline) => return failed("no Welcome in time".into()),
            }
        };
        let heartbeat_every = welcome
            .heartbeat_interval
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(self.config.heartbeat_interval);
        tracing::info!(%endpoint, coordinator = %welcome.coordinator_id, acked = welcome.acked_seq, "connected to the coordinator");
        buffer.ack(welcome.acked_seq);
        if let Some(e) = buffer.flush_drops(self.clock.wall()) {
            tracing::warn!(event = ?e.kind, "events were dropped while disconnected");
        }
        let welcomed = |error: String| End::Failed {
            error,
            welcomed: true,
        };
        for e in buffer.unacked() {
            let msg = v1::AgentMessage {
                kind: Some(agent_message::Kind::Event(e.clone())),
            };
            if tx.try_send(msg).is_err() {
                return welcomed("send queue full during replay".into());
            }
        }
        self.status.send_modify(|s| {
            s.connected = true;
            s.endpoint = Some(endpoint.to_owned());
            s.coordinator_id = Some(welcome.coordinator_id.clone());
            s.last_error = None;
        });
        self.publish(buffer);

        let mut tick = tokio::time::interval(heartbeat_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = self.clock.now();
        let silence = heartbeat_every * 3 + Duration::from_secs(5);
        let renew_deadline = credentials
            .renew_at
            .map(|at| self.clock.now() + at.duration_since(self.clock.wall()).unwrap_or_default());
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return End::Shutdown,
                Some(e) = self.events.recv() => {
                    let ev = self.take_event(buffer, e);
                    let msg = v1::AgentMessage { kind: Some(agent_message::Kind::Event(ev)) };
                    if tx.try_send(msg).is_err() {
                        return welcomed("send queue full: the coordinator is not reading".into());
                    }
                }
                m = inbound.message() => {
                    last_heard = self.clock.now();
                    match m {
                        Ok(Some(v1::CoordinatorMessage { kind: Some(kind) })) => match kind {
                            coordinator_message::Kind::Ack(a) => {
                                buffer.ack(a.seq);
                                if let Some(e) = buffer.flush_drops(self.clock.wall()) {
                                    let msg = v1::AgentMessage { kind: Some(agent_message::Kind::Event(e)) };
                                    if tx.try_send(msg).is_err() {
                                        return welcomed("send queue full".into());
                                    }
                                }
                                self.publish(buffer);
                            }
                            coordinator_message::Kind::Directive(d) => self.directive(d),
                            coordinator_message::Kind::Redirect(r) => return End::Redirect(r.endpoint),
                            coordinator_message::Kind::Welcome(_) => {}
                        },
                        Ok(Some(_)) => {}
                        Ok(None) => return welcomed("stream closed by the coordinator".into()),
                        Err(status) => return welcomed(status_text(&status)),
                    }
                }
                () = sleep_until_opt(renew_deadline) => return End::Recertify("renewal due"),
                _ = tick.tick() => {
                    if crate::enroll::fingerprint(&self.config.tls) != credentials.cert_files {
                        return End::Recertify("certificate files changed on disk");
                    }
                    if self.clock.now().saturating_duration_since(last_heard) > silence {
                        return welcomed(format!("no answer from the coordinator for {silence:?}"));
                    }
                    if tx.try_send(self.heartbeat(buffer)).is_err() {
                        return welcomed("send queue full: the coordinator is not reading".into());
                    }
                }
            }
        }
    }

    fn directive(&self, d: v1::Directive) {
        match d.kind {
            Some(v1::directive::Kind::PauseHealing(p)) => {
                tracing::warn!(reason = %p.reason, "coordinator paused local healing");
                self.paused.send_replace(true);
            }
            Some(v1::directive::Kind::ResumeHealing(r)) => {
                tracing::info!(reason = %r.reason, "coordinator resumed local healing");
                self.paused.send_replace(false);
            }
            None => {}
        }
        self.status
            .send_modify(|s| s.healing_paused = *self.paused.borrow());
    }
}

/// The TLS configuration a session uses, and what makes it end early for a new certificate.
#[derive(Debug, Clone)]
struct Credentials {
    config: Arc<rustls::ClientConfig>,
    /// When the certificate in use is due for renewal (with enrollment on).
    renew_at: Option<std::time::SystemTime>,
    /// The `[tls]` files as they were when the session started.
    cert_files: u64,
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn status_text(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    // Transport errors repeat their source in the message; add it only when it says more.
    if let Some(source) = std::error::Error::source(status) {
        let source = DisplayChain(source).to_string();
        if !status.message().contains(&source) {
            text.push_str(": ");
            text.push_str(&source);
        }
    }
    text
}

#[derive(Debug, thiserror::Error)]
#[error(
    "certificate {cert} is for instance {in_cert:?} but this agent is {ours:?}; the coordinator will refuse it"
)]
pub struct WrongInstance {
    cert: String,
    in_cert: String,
    ours: String,
}

fn load_tls(
    files: &TlsFiles,
    id: &InstanceIdentity,
) -> Result<Arc<rustls::ClientConfig>, Box<dyn std::error::Error + Send + Sync>> {
    let material = files.load()?;
    let identity = files.identity(&material)?;
    let in_cert = identity.instance_id().unwrap_or_default().to_owned();
    if in_cert != id.instance_id {
        return Err(Box::new(WrongInstance {
            cert: files.cert.display().to_string(),
            in_cert,
            ours: id.instance_id.clone(),
        }));
    }
    Ok(Arc::new(tls::client_config(material)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_under_the_capped_ceiling() {
        let i = Duration::from_millis(500);
        let cap = Duration::from_secs(30);
        let config = CoordinatorConfig {
            endpoints: Vec::new(),
            tls: TlsFiles {
                ca: "ca.pem".into(),
                cert: "cert.pem".into(),
                key: "key.pem".into(),
            },
            connect_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(5),
            event_buffer: std::num::NonZeroUsize::MIN,
            reconnect_initial: i,
            reconnect_max: cap,
            enroll_endpoint: None,
        };
        let full_jitter = |attempt, unit| reconnect_delay(&config, attempt, unit);
        assert_eq!(full_jitter(0, 1.0), i);
        assert_eq!(full_jitter(3, 1.0), Duration::from_secs(4));
        assert_eq!(full_jitter(30, 1.0), cap);
        assert_eq!(full_jitter(30, 0.0), Duration::ZERO);
        for k in 0..100 {
            let d = full_jitter(10, f64::from(k) / 100.0);
            assert!(d <= cap);
        }
    }
}
