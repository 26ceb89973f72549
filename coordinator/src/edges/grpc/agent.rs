//! `AgentService.Connect`: one long-lived stream per agent. Checks that the Hello speaks for the
//! certificate's own instance, then acks heartbeats and events as the registry records them.

use std::time::Duration;

use autoheal_proto::v1::{
    self, AgentMessage, CoordinatorMessage, agent_message, agent_service_server::AgentService,
    coordinator_message,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::PeerInfo;
use crate::model::report::Event;
use crate::model::report::Heartbeat;
use crate::model::report::Hello;
use crate::services::fleet::Fleet;
use crate::services::fleet::Recorded;
use crate::services::fleet::Session;

const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct AgentStreams {
    pub fleet: Fleet,
    pub heartbeat_interval: Duration,
    /// `Some(endpoint)` while another replica leads: agents are sent there.
    pub redirect: watch::Receiver<Option<String>>,
    pub shutdown: CancellationToken,
}

type Outbound = mpsc::Sender<Result<CoordinatorMessage, Status>>;

fn message(kind: coordinator_message::Kind) -> Result<CoordinatorMessage, Status> {
    Ok(CoordinatorMessage { kind: Some(kind) })
}

/// tonic reports an oversized message as OUT_OF_RANGE; the gRPC spec says RESOURCE_EXHAUSTED.
fn inbound_error(status: Status) -> Status {
    if status.code() == tonic::Code::OutOfRange && status.message().contains("too large") {
        Status::resource_exhausted(status.message().to_owned())
    } else {
        status
    }
}

#[tonic::async_trait]
impl AgentService for AgentStreams {
    type ConnectStream = ReceiverStream<Result<CoordinatorMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let own_id = peer
            .identity
            .instance_id()
            .ok_or_else(|| Status::permission_denied("only instance certificates may connect"))?
            .to_owned();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 10s of opening the stream"))?
            .map_err(inbound_error)?;
        let hello = match first.and_then(|m| m.kind) {
            Some(agent_message::Kind::Hello(hello)) => Hello::try_from(hello)?,
            Some(_) => {
                return Err(Status::invalid_argument(
                    "hello: the first message on a stream must be a Hello",
                ));
            }
            None => return Err(Status::cancelled("stream closed before its Hello")),
        };
        if hello.instance_id != own_id {
            // Nothing is recorded: an agent speaks only for its own instance.
            tracing::warn!(peer = %peer.identity, claimed = %hello.instance_id, remote = %peer.remote,
                "agent tried to speak for another instance");
            return Err(Status::permission_denied(format!(
                "certificate is for instance {own_id}; it may not speak for {}",
                hello.instance_id
            )));
        }

        let (tx, rx) = mpsc::channel(64);
        let leader = self.redirect.borrow().clone();
        if let Some(endpoint) = leader {
            let _ = tx.try_send(message(coordinator_message::Kind::Redirect(v1::Redirect {
                endpoint,
                reason: "this coordinator is not the leader".to_owned(),
            })));
            return Ok(Response::new(ReceiverStream::new(rx)));
        }

        let (session, acked_seq) = self.fleet.agent_connected(&hello);
        let heartbeat_interval = self.heartbeat_interval;
        let _ = tx.try_send(message(coordinator_message::Kind::Welcome(v1::Welcome {
            acked_seq,
            coordinator_id: self.fleet.coordinator_id.to_string(),
            heartbeat_interval: prost_types::Duration::try_from(heartbeat_interval).ok(),
        })));
        let stream = AgentStream {
            fleet: self.fleet.clone(),
            session,
            inbound,
            outbound: tx,
            // Three missed heartbeats and the stream is considered dead.
            silence: heartbeat_interval * 3,
            redirect: self.redirect.clone(),
            _connected: crate::metrics::ConnectedAgent::new(),
        };
        let span = tracing::info_span!("agent_stream", instance = %own_id, remote = %peer.remote);
        tokio::spawn(stream.run(self.shutdown.clone()).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Resolves with the leader's endpoint once another replica leads; never if the channel closes.
async fn redirected(mut redirect: watch::Receiver<Option<String>>) -> String {
    loop {
        if redirect.changed().await.is_err() {
            return std::future::pending().await;
        }
        if let Some(endpoint) = redirect.borrow_and_update().clone() {
            return endpoint;
        }
    }
}

struct AgentStream {
    fleet: Fleet,
    session: Session,
    inbound: Streaming<AgentMessage>,
    outbound: Outbound,
    silence: Duration,
    redirect: watch::Receiver<Option<String>>,
    /// Keeps the stream in `autoheal_agents_connected` until it ends.
    _connected: crate::metrics::ConnectedAgent,
}

impl AgentStream {
    async fn run(mut self, shutdown: CancellationToken) {
        // Made once per stream, not once per message: a fresh `cancelled()`, `changed()` or
        // `timeout()` in every turn of the loop registers and unregisters a waiter (the shutdown
        // token's lock is shared by every stream) and a timer entry for each heartbeat and event.
        let shutdown = shutdown.cancelled_owned();
        tokio::pin!(shutdown);
        let superseded = self.session.superseded.clone().cancelled_owned();
        tokio::pin!(superseded);
        let redirect = redirected(self.redirect.clone());
        tokio::pin!(redirect);
        // The silence deadline is only re-armed when it fires, from when the agent last spoke.
        let silence = tokio::time::sleep(self.silence);
        tokio::pin!(silence);
        let mut last_seen = tokio::time::Instant::now();
        let why = loop {
            let next = tokio::select! {
                biased;
                () = &mut shutdown => {
                    let _ = self.outbound.send(Err(Status::unavailable("coordinator is shutting down"))).await;
                    break "coordinator shutting down".to_owned();
                }
                endpoint = &mut redirect => {
                    // We stopped leading: send the agent to the leader instead of holding it here.
                    let _ = self.outbound.send(message(coordinator_message::Kind::Redirect(v1::Redirect {
                        endpoint: endpoint.clone(),
                        reason: "this coordinator no longer leads".to_owned(),
                    }))).await;
                    break format!("redirected to the leader at {endpoint}");
                }
                () = &mut superseded => {
                    let _ = self.outbound.send(Err(Status::aborted("superseded by a newer stream from the same instance"))).await;
                    break "superseded by a newer stream".to_owned();
                }
                // Before the silence check: a message that waited while an Ack was blocked on a
                // full outbound channel still counts.
                next = self.inbound.message() => {
                    last_seen = tokio::time::Instant::now();
                    Ok(next)
                }
                () = &mut silence => {
                    let deadline = last_seen + self.silence;
                    if deadline > tokio::time::Instant::now() {
                        silence.as_mut().reset(deadline);
                        continue;
                    }
                    Err(())
                }
            };
            match next {
                Err(_) => {
                    let _ = self
                        .outbound
                        .send(Err(Status::deadline_exceeded(
                            "no heartbeat in 3 intervals",
                        )))
                        .await;
                    break "agent went silent".to_owned();
                }
                Ok(Ok(None)) => break "agent closed the stream".to_owned(),
                Ok(Err(status)) => {
                    let status = inbound_error(status);
                    let why = format!("{}: {}", status.code(), status.message());
                    let _ = self.outbound.send(Err(status)).await;
                    break why;
                }
                Ok(Ok(Some(msg))) => match self.handle(msg) {
                    Ok(Some(reply)) => {
                        if self.outbound.send(message(reply)).await.is_err() {
                            break "agent stopped reading".to_owned();
                        }
                    }
                    Ok(None) => {}
                    Err(status) => {
                        let why = status.message().to_owned();
                        let _ = self.outbound.send(Err(status)).await;
                        break why;
                    }
                },
            }
        };
        tracing::info!(reason = %why, "agent stream ended");
        self.fleet.agent_disconnected(&self.session, &why);
    }

    fn handle(&mut self, msg: AgentMessage) -> Result<Option<coordinator_message::Kind>, Status> {
        let ack = |seq| Some(coordinator_message::Kind::Ack(v1::Ack { seq }));
        match msg.kind {
            Some(agent_message::Kind::Heartbeat(hb)) => {
                let hb = Heartbeat::try_from(hb)?;
                crate::metrics::global().heartbeats.inc();
                match self.fleet.heartbeat(&self.session, &hb) {
                    Some(acked) => Ok(ack(acked)),
                    None => Err(Status::aborted("superseded by a newer stream")),
                }
            }
            Some(agent_message::Kind::Event(ev)) => {
                let ev = Event::try_from(ev)?;
                let recorded = self.fleet.event(&self.session, &ev);
                crate::metrics::global().agent_event(
                    ev.kind.name(),
                    matches!(recorded, Recorded::Duplicate { .. }),
                );
                match recorded {
                    Recorded::New { acked_seq } | Recorded::Duplicate { acked_seq } => {
                        Ok(ack(acked_seq))
                    }
                    Recorded::Superseded => Err(Status::aborted("superseded by a newer stream")),
                }
            }
            Some(agent_message::Kind::Hello(_)) => Err(Status::invalid_argument(
                "hello: may only be sent once, as the first message",
            )),
            None => Err(Status::invalid_argument("kind: required")),
        }
    }
}
