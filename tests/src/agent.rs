//! The real agent in-process (with real child processes): started from a whole TOML config or
//! as [`INSTANCE_A`] reporting to a coordinator, the TOML sections tests compose, the agent's
//! local event tap, and signals to the processes it supervises.

use std::path::Path;

use autoheal_agent::{Agent, Config, state::Emitted};
use autoheal_common::tls::TlsFiles;
use autoheal_proto::v1;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::{DEADLINE, INSTANCE_A, Pki};

/// Starts a real agent from `toml`, written to `agent.toml` in `dir`. Its logs go to the test's
/// captured output.
pub fn start_agent_from_toml(dir: &Path, toml: &str) -> (Agent, CancellationToken) {
    // One subscriber for the whole test binary: the first agent installs it, the others find it.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_test_writer()
        .try_init();
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write config");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("config: {e}"));
    let shutdown = CancellationToken::new();
    let agent = Agent::start(config, autoheal_agent::clock::system(), shutdown.clone())
        .expect("agent starts");
    (agent, shutdown)
}

/// Starts a real agent as [`INSTANCE_A`], reporting to `endpoint`, with its config (and status
/// socket) in `dir`; `sections` adds TOML tables (services, metrics…).
pub fn start_agent(
    dir: &Path,
    pki: &Pki,
    endpoint: &str,
    sections: &str,
) -> (Agent, CancellationToken) {
    let toml = format!(
        r#"
[coordinator]
endpoints = ["{endpoint}"]
connect_timeout = "2s"
reconnect_initial = "100ms"
reconnect_max = "1s"

{tls}
[identity]
instance_id = "{INSTANCE_A}"
availability_zone = "test-1a"

{socket}
{sections}
"#,
        tls = tls_section(&pki.instance(INSTANCE_A)),
        socket = socket_section(dir),
    );
    start_agent_from_toml(dir, &toml)
}

/// The `[tls]` table for `files`.
pub fn tls_section(files: &TlsFiles) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// The `[status]` table: the status socket `agent.sock` in `dir`.
pub fn socket_section(dir: &Path) -> String {
    format!(
        "[status]\nsocket = \"{}\"\n",
        dir.join("agent.sock").display()
    )
}

/// A service's `run` array: a Python HTTP server on loopback `port`.
pub fn python_server(port: u16) -> String {
    format!("[\"python3\", \"-m\", \"http.server\", \"{port}\", \"--bind\", \"127.0.0.1\"]")
}

/// Sends `sig` to process `pid` (a supervised service, or an agent process).
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .expect("pid");
    rustix::process::kill_process(pid, sig).expect("signal");
}

/// Collects events from the agent's local tap.
#[derive(Debug)]
pub struct Events {
    rx: broadcast::Receiver<Emitted>,
    pub seen: Vec<v1::event::Kind>,
}

impl Events {
    pub fn new(agent: &Agent) -> Self {
        Self {
            rx: agent.events.subscribe(),
            seen: Vec::new(),
        }
    }

    pub fn drain(&mut self) -> &[v1::event::Kind] {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e.kind);
        }
        &self.seen
    }

    /// The first event (since the last call) `f` picks, or a panic naming `what` and every
    /// event seen after [`DEADLINE`].
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&v1::event::Kind) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut checked = 0;
        loop {
            self.drain();
            for e in &self.seen[checked..] {
                if let Some(v) = f(e) {
                    return v;
                }
            }
            checked = self.seen.len();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; saw {:#?}",
                self.seen
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    pub fn restarts(&mut self, service: &str) -> Vec<v1::RestartAttempted> {
        self.drain()
            .iter()
            .filter_map(|e| match e {
                v1::event::Kind::RestartAttempted(r) if r.service == service => Some(r.clone()),
                _ => None,
            })
            .collect()
    }
}
