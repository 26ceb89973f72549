//! A simulated agent speaking the real protocol over real mTLS: Hello, heartbeats, events with
//! sequence numbers, replay of unacknowledged events after reconnecting. For coordinator tests
//! that need many well-behaved agents without their services.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use autoheal_common::tls::TlsFiles;
use autoheal_proto::v1::{self, agent_message, coordinator_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::agent_client;

#[derive(Debug, Default)]
struct SimState {
    services: BTreeMap<String, v1::ServiceState>,
    unacked: VecDeque<v1::Event>,
    next_seq: u64,
    acked: u64,
    welcomes: u32,
}

/// A running simulated agent; stops when dropped.
#[derive(Debug)]
pub struct SimAgent {
    pub instance: String,
    state: Arc<Mutex<SimState>>,
    stop: CancellationToken,
}

impl Drop for SimAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SimAgent {
    /// Connects (and keeps reconnecting) to `endpoint` as `instance`, with one healthy service
    /// `web` (unit `web.service`).
    pub fn spawn(
        endpoint: std::net::SocketAddr,
        files: TlsFiles,
        instance: &str,
        az: &str,
    ) -> Self {
        Self::spawn_multi(vec![endpoint], files, instance, az)
    }

    /// Like [`SimAgent::spawn`], trying `endpoints` in turn and following redirects, as the real
    /// agent does. A coordinator that says nothing for 3 s is treated as gone.
    pub fn spawn_multi(
        endpoints: Vec<std::net::SocketAddr>,
        files: TlsFiles,
        instance: &str,
        az: &str,
    ) -> Self {
        let state = Arc::new(Mutex::new(SimState {
            services: BTreeMap::from([("web".to_owned(), v1::ServiceState::Healthy)]),
            next_seq: 1,
            ..Default::default()
        }));
        let stop = CancellationToken::new();
        let epoch = rand_epoch();
        let (instance_s, az_s) = (instance.to_owned(), az.to_owned());
        let (st, sp) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let mut next = 0usize;
            let mut redirected: Option<std::net::SocketAddr> = None;
            while !sp.is_cancelled() {
                let endpoint = redirected.take().unwrap_or_else(|| {
                    let e = endpoints[next % endpoints.len()];
                    next += 1;
                    e
                });
                if let Ok(Some(to)) =
                    session(endpoint, &files, &instance_s, &az_s, epoch, &st, &sp).await
                {
                    redirected = Some(to);
                    continue;
                }
                tokio::select! {
                    () = sp.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        });
        Self {
            instance: instance.to_owned(),
            state,
            stop,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, kind: v1::event::Kind) {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.unacked.push_back(v1::Event {
            seq,
            at: Some(SystemTime::now().into()),
            kind: Some(kind),
        });
    }

    /// Reports that local healing of `service` is exhausted.
    pub fn escalate(&self, service: &str, reason: &str) {
        let from = self
            .lock()
            .services
            .insert(service.to_owned(), v1::ServiceState::Escalated)
            .unwrap_or_default();
        self.push(v1::event::Kind::ServiceStateChanged(
            v1::ServiceStateChanged {
                service: service.into(),
                from: from.into(),
                to: v1::ServiceState::Escalated.into(),
                reason: reason.into(),
            },
        ));
        self.push(v1::event::Kind::Escalated(v1::Escalated {
            service: service.into(),
            reason: reason.into(),
            last_results: vec![],
            attempts: vec![],
        }));
    }

    /// Reports a shared dependency failing.
    pub fn dependency_failing(&self, dependency: &str) {
        self.push(v1::event::Kind::DependencyChanged(v1::DependencyChanged {
            dependency: dependency.into(),
            check: "db".into(),
            failing: true,
            detail: "connect: refused".into(),
        }));
    }

    /// Everything this agent sent has been acknowledged.
    pub fn all_acked(&self) -> bool {
        let s = self.lock();
        s.unacked.is_empty() && s.acked + 1 == s.next_seq
    }

    /// How many times a coordinator welcomed this agent.
    pub fn welcomes(&self) -> u32 {
        self.lock().welcomes
    }
}

fn rand_epoch() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos());
    u64::try_from(nanos % u128::from(u64::MAX)).unwrap_or(1) | 1
}

async fn session(
    endpoint: std::net::SocketAddr,
    files: &TlsFiles,
    instance: &str,
    az: &str,
    epoch: u64,
    state: &Arc<Mutex<SimState>>,
    stop: &CancellationToken,
) -> Result<Option<std::net::SocketAddr>, tonic::Status> {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let (tx, rx) = mpsc::channel(256);
    let last_seq = lock().next_seq - 1;
    let _ = tx
        .send(v1::AgentMessage {
            kind: Some(agent_message::Kind::Hello(v1::Hello {
                instance_id: instance.into(),
                availability_zone: az.into(),
                agent_version: "sim".into(),
                epoch,
                last_seq,
                services: vec![v1::ServiceSpec {
                    name: "web".into(),
                    unit: "web.service".into(),
                    depends_on: vec![],
                    checks: vec![],
                }],
                healing_paused: false,
            })),
        })
        .await;
    let mut client = agent_client(endpoint, files);
    let mut inbound = tokio::time::timeout(
        Duration::from_secs(3),
        client.connect(ReceiverStream::new(rx)),
    )
    .await
    .map_err(|_| tonic::Status::deadline_exceeded("coordinator did not answer"))??
    .into_inner();
    let mut sent_up_to = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(300));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(None),
            msg = tokio::time::timeout(Duration::from_secs(3), inbound.message()) => {
                let Ok(msg) = msg else { return Ok(None) };
                let Some(msg) = msg? else { return Ok(None) };
                match msg.kind {
                    Some(coordinator_message::Kind::Welcome(w)) => {
                        let mut s = lock();
                        s.welcomes += 1;
                        s.acked = s.acked.max(w.acked_seq);
                        let acked = s.acked;
                        s.unacked.retain(|e| e.seq > acked);
                        sent_up_to = acked;
                    }
                    Some(coordinator_message::Kind::Redirect(r)) => {
                        return Ok(r.endpoint.parse().ok());
                    }
                    Some(coordinator_message::Kind::Ack(a)) => {
                        let mut s = lock();
                        s.acked = s.acked.max(a.seq);
                        let acked = s.acked;
                        s.unacked.retain(|e| e.seq > acked);
                    }
                    _ => {}
                }
            }
            _ = tick.tick() => {
                let (events, services) = {
                    let s = lock();
                    let events: Vec<_> = s.unacked.iter().filter(|e| e.seq > sent_up_to).cloned().collect();
                    let services = s.services.iter().map(|(n, st)| v1::ServiceStatus { name: n.clone(), state: (*st).into() }).collect();
                    (events, services)
                };
                for e in events {
                    sent_up_to = sent_up_to.max(e.seq);
                    if tx.send(v1::AgentMessage { kind: Some(agent_message::Kind::Event(e)) }).await.is_err() {
                        return Ok(None);
                    }
                }
                let last_seq = lock().next_seq - 1;
                let hb = v1::Heartbeat { last_seq, dropped_events: 0, services };
                if tx.send(v1::AgentMessage { kind: Some(agent_message::Kind::Heartbeat(hb)) }).await.is_err() {
                    return Ok(None);
                }
            }
        }
    }
}
