//! Wires the tasks together: per service a supervisor, its check tasks and its process task;
//! the reporter (when a coordinator is configured) and the status socket.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use tokio::sync::{mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    action::ProcessTask,
    check::{CheckTask, Control},
    clock::SharedClock,
    config::{Config, IdentitySource},
    metrics::{Metrics, MetricsServer},
    reporter::Reporter,
    service::{Supervisor, initial_snapshot},
    state::{EventSink, ReporterStatus, ServiceSnapshot},
    status::{self, StatusError, StatusServer},
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("cannot serve metrics on {addr}")]
    Metrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running agent: its tasks and what they publish.
#[derive(Debug)]
pub struct Agent {
    tasks: TaskTracker,
    shutdown: CancellationToken,
    pub services: BTreeMap<String, watch::Receiver<ServiceSnapshot>>,
    pub reporter: Option<watch::Receiver<ReporterStatus>>,
    pub paused: watch::Sender<bool>,
    pub events: EventSink,
    pub metrics: Metrics,
    /// Where `/metrics` is served, when `[metrics] listen` is set.
    pub metrics_addr: Option<SocketAddr>,
}

impl Agent {
    /// Starts every task on the current runtime. The status socket is bound here so a second
    /// agent or a bad path fails at once.
    pub fn start(
        config: Config,
        clock: SharedClock,
        shutdown: CancellationToken,
    ) -> Result<Self, StartError> {
        let listener = status::bind(&config.status_socket)?;
        let metrics_listener = config
            .metrics_listen
            .map(|addr| bind_tcp(addr).map_err(|source| StartError::Metrics { addr, source }))
            .transpose()?;
        let metrics = Metrics::new();
        let tasks = TaskTracker::new();
        if config
            .services
            .iter()
            .any(|s| matches!(s.action, crate::config::Action::Run { .. }))
            && let Err(e) = crate::tree::become_subreaper()
        {
            tracing::warn!(error = %e, "cannot become a child subreaper; a service's orphans go to PID 1");
        }
        let (paused_tx, paused_rx) = watch::channel(false);
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let events = EventSink::new(config.coordinator.as_ref().map(|_| events_tx));

        let mut senders = BTreeMap::new();
        let mut services = BTreeMap::new();
        for s in &config.services {
            let (tx, rx) = watch::channel(initial_snapshot(s));
            senders.insert(s.name.clone(), tx);
            services.insert(s.name.clone(), rx);
        }

        for s in &config.services {
            let (results_tx, results_rx) = mpsc::channel(64);
            let (control_tx, control_rx) = watch::channel(Control::default());
            for (index, c) in s.checks.iter().enumerate() {
                let task = CheckTask {
                    index,
                    config: c.clone(),
                    results: results_tx.clone(),
                    control: control_rx.clone(),
                    clock: clock.clone(),
                    metrics: metrics.check(&s.name, &c.name),
                };
                let span = tracing::info_span!("check", service = %s.name, check = %c.name);
                tasks.spawn(task.run(shutdown.clone()).instrument(span));
            }
            let (cmd_tx, cmd_rx) = mpsc::channel(4);
            let (live_tx, live_rx) = mpsc::channel(16);
            let process = ProcessTask {
                service: s.name.clone(),
                action: s.action.clone(),
                action_timeout: s.policy.action_timeout,
                commands: cmd_rx,
                liveness: live_tx,
            };
            tasks.spawn(
                process
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("process", service = %s.name)),
            );
            let Some(state) = senders.remove(&s.name) else {
                continue;
            };
            let supervisor = Supervisor {
                config: s.clone(),
                clock: clock.clone(),
                results: results_rx,
                control: control_tx,
                liveness: live_rx,
                process: cmd_tx,
                deps: s
                    .depends_on
                    .iter()
                    .filter_map(|d| services.get(d).map(|rx| (d.clone(), rx.clone())))
                    .collect(),
                paused: paused_rx.clone(),
                events: events.clone(),
                state,
                metrics: metrics.service(&s.name),
            };
            tasks.spawn(
                supervisor
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("supervisor", service = %s.name)),
            );
        }

        let reporter = config.coordinator.as_ref().map(|c| {
            let (status_tx, status_rx) = watch::channel(ReporterStatus::default());
            let reporter = Reporter {
                config: c.clone(),
                identity: config.identity.clone(),
                specs: config.service_specs(),
                events: events_rx,
                services: services.values().cloned().collect(),
                paused: paused_tx.clone(),
                status: status_tx,
                clock: clock.clone(),
                metrics: metrics.clone(),
            };
            tasks.spawn(
                reporter
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("reporter")),
            );
            status_rx
        });

        let instance_id = match &config.identity {
            IdentitySource::Static { instance_id, .. } => Some(instance_id.clone()),
            IdentitySource::Imds { .. } => None,
        };
        let server = StatusServer {
            listener,
            path: config.status_socket.clone(),
            instance_id,
            services: services.values().cloned().collect(),
            paused: paused_rx,
            reporter: reporter.clone(),
        };
        tasks.spawn(
            server.run(shutdown.clone()).instrument(
                tracing::info_span!("status", socket = %config.status_socket.display()),
            ),
        );
        let mut metrics_addr = None;
        if let Some(listener) = metrics_listener {
            let server = MetricsServer {
                listener,
                metrics: metrics.clone(),
                services: services.values().cloned().collect(),
                reporter: reporter.clone(),
            };
            let addr = server.local_addr().ok();
            metrics_addr = addr;
            // Plain HTTP: the docs say to keep it on loopback or a private interface.
            tracing::info!(?addr, "serving Prometheus metrics on /metrics");
            tasks.spawn(
                server
                    .run(shutdown.clone())
                    .instrument(tracing::info_span!("metrics")),
            );
        }
        tasks.close();
        Ok(Self {
            tasks,
            shutdown,
            services,
            reporter,
            paused: paused_tx,
            events,
            metrics,
            metrics_addr,
        })
    }

    /// Cancels every task and waits up to `deadline` for them (supervised processes are stopped
    /// on the way out). Returns false if some task overran.
    pub async fn stop(self, deadline: Duration) -> bool {
        self.shutdown.cancel();
        self.wait(deadline).await
    }

    /// Waits (after shutdown was cancelled elsewhere) up to `deadline`.
    pub async fn wait(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok()
    }

    pub fn snapshot(&self, service: &str) -> Option<ServiceSnapshot> {
        self.services.get(service).map(|rx| rx.borrow().clone())
    }
}

/// Binds at start (not in the task) so a taken port fails the start, like the status socket.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}
