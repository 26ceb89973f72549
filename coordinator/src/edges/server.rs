//! Wires the coordinator together: registry, TLS listener with certificate reload, the gRPC
//! services behind the role check, health and reflection.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use autoheal_common::tasks::Tasks;
use autoheal_common::tls::{ServerReloader, TlsError};
use autoheal_proto::{
    MAX_MESSAGE_BYTES,
    v1::{
        self, agent_service_server::AgentServiceServer, fleet_service_server::FleetServiceServer,
    },
};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::adapters::aws::sdk::Clients;
use crate::adapters::store::DynamoStore;
use crate::adapters::store::EmbeddedStore;
use crate::edges::config::Config;
use crate::edges::config::StoreBackend;
use crate::edges::grpc::TlsListener;
use crate::edges::grpc::agent::AgentStreams;
use crate::edges::grpc::authz::AuthzLayer;
use crate::edges::grpc::fleet::FleetApi;
use crate::metrics::MetricsServer;
use crate::ports::store::Store;
use crate::ports::store::system_clock;
use crate::services::control::Controller;
use crate::services::control::Hands;
use crate::services::control::Settings as ControlSettings;
use crate::services::fleet::Fleet;
use crate::services::journal::Journal;
use crate::services::lease::LeaderState;
use crate::services::lease::Lease;
use crate::services::lease::LeaseSettings;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the TLS certificate")]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the state directory {path}")]
    State {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::ports::store::StoreError),
    #[error(transparent)]
    Lease(#[from] crate::services::lease::LeaseSettingsError),
    #[error("cannot start notifications")]
    Notify(#[from] crate::services::notify::NotifyError),
    #[error(transparent)]
    Platform(#[from] crate::edges::config::ecs::EcsError),
    #[error("cannot start enrollment")]
    Enroll(#[from] crate::edges::grpc::enroll::EnrollStartError),
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A started coordinator. Dropping it does not stop it; call [`Running::stop`].
///
/// Its tasks stop in three steps, so nothing is lost and nobody waits out a lease:
/// 1. `serving`: the gRPC server (streams end, in-flight calls finish), the listener, the
///    controller (no AWS call starts after this), inventory, metrics, the TLS reloader;
/// 2. `lease`: released — but only if step 1 ended in time, so a call still in flight can't
///    overlap a successor's; otherwise left to expire;
/// 3. `last`: the event recorder and the notifier, which flush what steps 1 and 2 produced.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub fleet: Fleet,
    serving: Tasks,
    lease: Tasks,
    last: Tasks,
}

impl Running {
    pub fn shutdown_token(&self) -> CancellationToken {
        self.serving.token()
    }

    /// Stops every task, each step with `deadline`. Returns whether everything ended in time;
    /// what did not is named in a warning.
    pub async fn stop(self, deadline: Duration) -> bool {
        let serving = self.serving.stop(deadline).await;
        let lease = match &serving {
            Ok(()) => self.lease.stop(deadline).await,
            Err(late) => {
                tracing::warn!(%late, "not releasing the lease: it expires on its own");
                self.lease.abort();
                Ok(())
            }
        };
        let last = self.last.stop(deadline).await;
        let mut clean = true;
        for (step, outcome) in [("serving", serving), ("lease", lease), ("last", last)] {
            if let Err(late) = outcome {
                tracing::warn!(step, %late, "shutdown deadline passed");
                clean = false;
            }
        }
        clean
    }
}

pub async fn start(mut config: Config) -> Result<Running, StartError> {
    // On ECS: `advertise` from the task's IP, and no embedded store in a service's task.
    if let Some(task) =
        crate::edges::config::ecs::apply(&mut config, |k| std::env::var(k).ok()).await?
    {
        tracing::info!(task = %task.task_arn, service = ?task.service, advertise = ?config.advertise, "running as an ECS task");
    }
    let mut serving = Tasks::new();
    let mut lease_task = Tasks::new();
    let mut last = Tasks::new();
    let shutdown = serving.token();
    std::fs::create_dir_all(&config.state_dir).map_err(|source| StartError::State {
        path: config.state_dir.clone(),
        source,
    })?;
    let clients = match &config.aws {
        Some(aws) => Some(Arc::new(Clients::new(aws.settings.clone()).await)),
        None => None,
    };
    let store: Arc<dyn Store> = match (&config.store.backend, &clients) {
        (StoreBackend::Dynamo { table }, Some(clients)) => Arc::new(DynamoStore::new(
            clients.dynamodb.clone(),
            table.clone(),
            clients.settings.clone(),
            system_clock(),
        )),
        // Config validation refuses dynamodb without [aws].
        _ => Arc::new(EmbeddedStore::open(&config.state_dir)?),
    };
    let fleet = Fleet::new(&config.coordinator_id, config.dry_run, Some(store.clone())).map_err(
        |source| StartError::State {
            path: config.state_dir.clone(),
            source,
        },
    )?;
    match fleet.restore_events().await {
        Ok(n) => tracing::info!(events = n, "fleet events restored from the store"),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "cannot read earlier fleet events yet")
        }
    }
    if let Err(error) = fleet.load_persisted().await {
        // A follower can serve without it, and the leader reloads at the start of its term.
        tracing::warn!(error = %crate::error_chain(&error), "cannot read the pause and skips yet");
    }
    let journal = Arc::new(Journal::open(store.clone()).await.unwrap_or_else(|error| {
        tracing::warn!(error = %crate::error_chain(&error), "cannot read the journal yet");
        Journal::empty(store.clone())
    }));

    let (reloader, tls_configs) = ServerReloader::new(
        config.tls.clone(),
        config.trust_domain.clone(),
        config.tls_reload_interval,
    )?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;

    let (accepted_tx, accepted_rx) = mpsc::channel(config.max_concurrent_handshakes.get());
    let tls_listener = TlsListener {
        listener,
        configs: tls_configs,
        handshakes: Arc::new(Semaphore::new(config.max_concurrent_handshakes.get())),
        handshake_timeout: config.handshake_timeout,
        accepted: accepted_tx,
    };

    let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
    let (lease, leadership) = Lease::new(
        store.clone(),
        LeaseSettings {
            owner: config.coordinator_id.clone(),
            endpoint: advertise.clone(),
            ttl: config.store.lease_ttl,
            renew_interval: config.store.lease_renew_interval,
        },
        system_clock(),
    )?;
    lease_task.spawn("lease", lease.run(lease_task.token()));
    // Followers send agents to the leader; `None` while we lead (or nobody does: agents retry).
    let (redirect_tx, redirect) = watch::channel(None);
    let agents = AgentStreams {
        fleet: fleet.clone(),
        heartbeat_interval: config.heartbeat_interval,
        redirect,
        shutdown: shutdown.clone(),
    };
    let mut control = None;
    if let (Some(aws), Some(clients)) = (&config.aws, clients.clone()) {
        let hands = Hands {
            groups: clients.clone(),
            lb: clients.clone(),
            commands: clients,
        };
        let (controller, handle) = Controller::new(
            autoheal_policy::Engine::new(config.policy.clone()),
            fleet.clone(),
            hands,
            journal.clone(),
            ControlSettings {
                selector: aws.selector.clone(),
                interval: aws.interval,
                replace_with: aws.replace_with,
                respect_grace: aws.respect_grace_period,
                in_flight: aws.settings.longest_call(config.store.lease_ttl / 5),
            },
            leadership.clone(),
            store.clone(),
        );
        control = Some(handle);
        serving.spawn("controller", controller.run(shutdown.clone()));
        tracing::info!(region = %aws.settings.region, endpoint = ?aws.settings.endpoint, selector = ?aws.selector, "acting on AWS");
    } else {
        tracing::info!("no [aws] section: watching agents only, no inventory, no actions");
    }
    // Never blocks a decision: the dispatcher reads the fleet's event broadcast on its own.
    if let Some(notifier) = crate::services::notify::spawn_notifications(
        config.notify.clone(),
        &fleet,
        clients.as_deref(),
        last.token(),
    )? {
        last.track("notify", notifier);
    }
    let api = FleetApi {
        fleet: fleet.clone(),
        journal: journal.clone(),
        control,
        leadership: leadership.clone(),
        shutdown: shutdown.clone(),
    };

    let enrollment = crate::edges::grpc::enroll::start(
        &config,
        store.clone(),
        fleet.clone(),
        clients.clone(),
        &mut serving,
    )
    .await?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<FleetServiceServer<FleetApi>>().await;
    health
        .set_not_serving::<AgentServiceServer<AgentStreams>>()
        .await;
    // AgentService is SERVING only on the leader, so an NLB health check sends agents there.
    let mut leader_state = leadership.watch();
    let stop = shutdown.clone();
    let advertised = advertise.clone();
    serving.spawn("leadership", async move {
        loop {
            let state = leader_state.borrow_and_update().clone();
            crate::metrics::global().leadership(state.token());
            match &state {
                LeaderState::Leader { .. } => {
                    redirect_tx.send_replace(None);
                    health
                        .set_serving::<AgentServiceServer<AgentStreams>>()
                        .await;
                }
                LeaderState::Follower { leader_endpoint } => {
                    redirect_tx.send_replace(leader_endpoint.clone().filter(|e| *e != advertised));
                    health
                        .set_not_serving::<AgentServiceServer<AgentStreams>>()
                        .await;
                }
            }
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                changed = leader_state.changed() => if changed.is_err() { return },
            }
        }
    });
    // Fleet events are kept in the store (with a TTL), off the decision path.
    last.spawn(
        "event_recorder",
        record_events(
            fleet.clone(),
            store.clone(),
            config.store.event_ttl,
            last.token(),
        ),
    );
    serving.spawn(
        "fleet_event_metrics",
        crate::services::fleet::count_events(fleet.clone(), shutdown.clone()),
    );
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let metrics = MetricsServer {
                listener: TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            };
            let bound = metrics
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            serving.spawn(
                "metrics",
                metrics
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("metrics", addr = %bound)),
            );
            // Plain HTTP: the config docs say to keep it on loopback or a private interface.
            tracing::info!(addr = %bound, "serving Prometheus metrics at http://{bound}/metrics");
            Some(bound)
        }
        None => None,
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    serving.spawn("tls_reloader", reloader.run(shutdown.clone()));
    serving.spawn(
        "tls_listener",
        tls_listener
            .run(shutdown.clone())
            .instrument(tracing::info_span!("tls_listener", %addr)),
    );

    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(AuthzLayer)
        .add_service(
            AgentServiceServer::new(agents)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            FleetServiceServer::new(api)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        // Renew (instances) and the operators' enrollment calls; Challenge and Enroll are
        // refused here by the role check: they have their own listener.
        .add_optional_service(enrollment.as_ref().map(|e| {
            v1::enroll_service_server::EnrollServiceServer::new(e.api.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
        }))
        .add_optional_service(
            enrollment
                .as_ref()
                .map(|e| v1::enrollment_admin_server::EnrollmentAdminServer::new(e.admin.clone())),
        )
        .add_service(health_service)
        .add_service(reflection);
    let stop = shutdown.clone();
    serving.spawn("grpc", async move {
        let served = router
            .serve_with_incoming_shutdown(ReceiverStream::new(accepted_rx), async move {
                stop.cancelled().await;
            })
            .await;
        if let Err(error) = served {
            tracing::warn!(error = %crate::error_chain(&error), "gRPC server ended with an error");
        }
    });
    tracing::info!(%addr, %advertise, coordinator = %config.coordinator_id, dry_run = config.dry_run, "coordinator serving");
    Ok(Running {
        addr,
        metrics_addr,
        fleet,
        serving,
        lease: lease_task,
        last,
    })
}

async fn record_events(
    fleet: Fleet,
    store: Arc<dyn Store>,
    ttl: Duration,
    shutdown: CancellationToken,
) {
    let (_, mut events) = fleet.subscribe(u64::MAX);
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => {
                if let Err(error) = store.append_event(&event, ttl).await {
                    // Not fatal (the event was broadcast and is in memory), but never silent.
                    crate::metrics::global().store_error("append_event");
                    tracing::warn!(cursor = event.cursor, error = %crate::error_chain(&error), "fleet event not kept in the store");
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(
                    missed = n,
                    "fleet events came faster than the store took them"
                );
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}
