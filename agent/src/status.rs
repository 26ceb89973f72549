//! The local status socket: a unix socket (mode 0600) that answers each connection with one JSON
//! document of the agent's state and closes. `autoheal-agent status` is its client.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{UnixListener, UnixStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

use crate::state::{ReporterStatus, ServiceSnapshot};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub instance_id: Option<String>,
    pub healing_paused: bool,
    pub coordinator: Option<serde_json::Value>,
    pub services: Vec<ServiceSnapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot create the status socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach the agent at {path} (is it running? is this the right --socket?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading from the agent at {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent at {path} answered something unexpected")]
    Decode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Debug)]
pub struct StatusServer {
    pub listener: UnixListener,
    pub path: PathBuf,
    pub instance_id: Option<String>,
    pub services: Vec<watch::Receiver<ServiceSnapshot>>,
    pub paused: watch::Receiver<bool>,
    pub reporter: Option<watch::Receiver<ReporterStatus>>,
}

/// Binds the socket with mode 0600 (replacing a stale one from a previous run).
pub fn bind(path: &Path) -> Result<UnixListener, StatusError> {
    let err = |source| StatusError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

impl StatusServer {
    pub fn report(&self) -> StatusReport {
        StatusReport {
            version: autoheal_proto::VERSION.to_owned(),
            instance_id: self.instance_id.clone(),
            healing_paused: *self.paused.borrow(),
            coordinator: self
                .reporter
                .as_ref()
                .and_then(|r| serde_json::to_value(&*r.borrow()).ok()),
            services: self.services.iter().map(|s| s.borrow().clone()).collect(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((mut stream, _)) => {
                        let mut body = serde_json::to_vec(&self.report()).unwrap_or_default();
                        body.push(b'\n');
                        // A slow reader must not hold the loop up for long.
                        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&body)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "status socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Client side: one report from the agent at `path`.
pub async fn query(path: &Path) -> Result<StatusReport, StatusError> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|source| StatusError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .map_err(|_| StatusError::Read {
            path: path.to_owned(),
            source: std::io::ErrorKind::TimedOut.into(),
        })?
        .map_err(|source| StatusError::Read {
            path: path.to_owned(),
            source,
        })?;
    serde_json::from_slice(&buf).map_err(|source| StatusError::Decode {
        path: path.to_owned(),
        source,
    })
}

/// A table for people.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "agent {} instance {}{}",
        report.version,
        report.instance_id.as_deref().unwrap_or("-"),
        if report.healing_paused {
            " (healing PAUSED)"
        } else {
            ""
        }
    );
    if let Some(c) = &report.coordinator {
        let connected = c
            .get("connected")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let endpoint = c.get("endpoint").and_then(|v| v.as_str()).unwrap_or("-");
        let unacked = c.get("unacked").and_then(|v| v.as_u64()).unwrap_or(0);
        let dropped = c
            .get("dropped_events")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let _ = write!(
            out,
            "coordinator: {} {endpoint} (unacked events {unacked}, dropped {dropped})",
            if connected {
                "connected to"
            } else {
                "NOT connected; last tried"
            },
        );
        if let Some(e) = c.get("last_error").and_then(|v| v.as_str()) {
            let _ = write!(out, " last error: {e}");
        }
        out.push('\n');
    } else {
        out.push_str("coordinator: not configured (local healing only)\n");
    }
    for s in &report.services {
        let state = s.state.as_str();
        let _ = writeln!(
            out,
            "\n{:<20} {:<22} restarts {}{}  {}",
            s.name,
            state,
            s.restarts,
            s.pid.map(|p| format!("  pid {p}")).unwrap_or_default(),
            s.reason
        );
        for c in &s.checks {
            let status = c.status.as_str();
            let dep = c
                .dependency
                .as_ref()
                .map(|d| format!(" [dependency {d}]"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<18} {:<8} {:<10} {}{dep}",
                c.name, c.kind, status, c.detail
            );
        }
    }
    out
}
