//! Benchmark 3: an agent's escalation to the moment `DeregisterTargets` returns, against moto.
//! coordinator (dry_run = false) → timing proxy (timestamps each response) → FaultProxy (counts
//! calls) → moto server. One fleet, one simulated agent per instance; escalate one instance at a
//! time, wait for its DeregisterTargets to return, then the next. The fleet has 4 spare
//! instances: the policy never deregisters a target group's last healthy target.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use autoheal_tests::{moto::Moto, proxy::FaultProxy};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};

use crate::{
    footprint::verdict,
    load::{self, Load, LoadConfig},
    util::{CoordinatorProc, Pki, ms, percentile},
};

const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

/// When each `DeregisterTargets` response left for the coordinator, and its request body.
type Returned = Arc<Mutex<Vec<(Instant, String)>>>;

async fn timing_proxy(upstream: SocketAddr) -> Result<(SocketAddr, Returned)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let returned: Returned = Arc::default();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let shared = returned.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (client, returned) = (client.clone(), shared.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let (client, returned) = (client.clone(), returned.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let text = String::from_utf8_lossy(&body).into_owned();
                        let uri = format!(
                            "http://{upstream}{}",
                            parts.uri.path_and_query().map_or("/", |p| p.as_str())
                        );
                        let mut fwd = Request::builder().method(parts.method).uri(uri);
                        for (k, v) in &parts.headers {
                            fwd = fwd.header(k, v);
                        }
                        let resp = match fwd.body(Full::new(body)) {
                            Ok(r) => client.request(r).await,
                            Err(e) => {
                                return Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(500)
                                        .body(Full::new(Bytes::from(e.to_string())))
                                        .unwrap_or_default(),
                                );
                            }
                        };
                        let out = match resp {
                            Ok(resp) => {
                                let (parts, body) = resp.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|b| b.to_bytes())
                                    .unwrap_or_default();
                                Response::from_parts(parts, Full::new(body))
                            }
                            Err(e) => Response::builder()
                                .status(502)
                                .body(Full::new(Bytes::from(e.to_string())))
                                .unwrap_or_default(),
                        };
                        if text.contains("Action=DeregisterTargets") {
                            returned
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((Instant::now(), text));
                        }
                        Ok(out)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, returned))
}

pub struct Report {
    pub p50: f64,
    pub p99: f64,
    pub interval_ms: u64,
}

pub async fn run(reps: usize, interval_ms: u64) -> Result<Report> {
    println!(
        "\n== escalation: Escalated event sent -> DeregisterTargets returned (moto), {reps} escalations, [aws] interval = {interval_ms}ms =="
    );
    let moto = tokio::task::spawn_blocking(Moto::start).await?;
    let proxy = FaultProxy::start(moto.addr).await;
    let (timing, returned) = timing_proxy(proxy.addr).await?;
    let m = &moto;
    let fleet = tokio::task::block_in_place(|| m.fleet("web", reps + 4));
    let pki = Pki::new()?;
    let ids: Vec<String> = fleet.instances.iter().map(|(id, _)| id.clone()).collect();
    let idents = load::identities(pki.path(), &pki.trust_domain, &ids)?;
    let work = tempfile::tempdir()?;
    let top = format!(
        r#"[aws]
region = "us-east-1"
endpoint = "http://{timing}"
asg_names = ["web"]
interval = "{interval_ms}ms"
call_timeout = "5s"

[ladder]
drain_timeout = "1s"
agent_silence_grace = "30s"
ssm_timeout = "2s"

[guardrails]
startup_grace = "0s"
asg_cooldown = "0s"
instance_cooldown = "0s"
max_concurrent = 1000
max_concurrent_percent = 100
min_healthy_percent = 0
anomaly_percent = 100
brake_min_instances = 100000
"#
    );
    let coordinator = CoordinatorProc::start(
        &pki,
        work.path(),
        "127.0.0.1:0",
        "5s",
        "dry_run = false",
        &top,
        AWS_ENV,
    )?;
    // The load generator's agents send an event the moment they are asked to (the real agent
    // does too), so the clock starts when the Escalated event is written to the stream.
    let agents = Load::start(
        &idents,
        &LoadConfig {
            endpoint: coordinator.addr.to_string(),
            heartbeat: Duration::from_secs(5),
            flooders: 0,
            window: 1,
            ramp_parallel: 16,
        },
    );
    if agents
        .wait_connected(ids.len() as u64, Duration::from_secs(60))
        .await
        .is_none()
    {
        bail!("agents never connected:\n{}", tail(&coordinator.log));
    }
    // A few inventory passes, so the ASG claims every instance.
    tokio::time::sleep(Duration::from_millis(interval_ms * 5 + 1000)).await;

    let mut lat = Vec::new();
    // The policy never deregisters a group's last healthy target: spare instances stay untouched.
    for (i, id) in ids.iter().take(reps).enumerate() {
        let before = returned.lock().unwrap_or_else(|p| p.into_inner()).len();
        let (tx, rx) = tokio::sync::oneshot::channel();
        agents.escalate[i].send(tx).await?;
        let t0 = rx.await?;
        let deadline = t0 + Duration::from_secs(30);
        let at = loop {
            let seen = returned
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(before)
                .cloned();
            if let Some((at, body)) = seen {
                if !body.contains(id.as_str()) {
                    bail!("DeregisterTargets for another instance: {body}");
                }
                break at;
            }
            if Instant::now() > deadline {
                bail!(
                    "escalation {i}: no DeregisterTargets within 30s\n{}",
                    tail(&coordinator.log)
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        lat.push(ms(at - t0));
        // Let the replacement step finish, and vary the phase against the control loop.
        tokio::time::sleep(Duration::from_millis(
            interval_ms * 3 + (i as u64 * 37) % interval_ms,
        ))
        .await;
    }
    let (p50, p99) = (percentile(&lat, 50.0), percentile(&lat, 99.0));
    println!(
        "escalations {}, DeregisterTargets calls seen by the FaultProxy {}",
        lat.len(),
        proxy.count("DeregisterTargets")
    );
    println!(
        "escalate -> DeregisterTargets returned: p50 {p50:.0} ms, p99 {p99:.0} ms, min {:.0}, max {:.0} (control-loop interval {interval_ms} ms)",
        percentile(&lat, 0.0),
        percentile(&lat, 100.0)
    );
    println!(
        "ratio p99 / control-loop interval: {:.2}; goal p99 <= 1000 ms: {}",
        p99 / interval_ms as f64,
        verdict(p99 <= 1000.0)
    );
    drop(agents);
    drop(coordinator);
    Ok(Report {
        p50,
        p99,
        interval_ms,
    })
}

fn tail(path: &std::path::Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    // The control loop's "already done" lines drown everything else.
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("already done"))
        .collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
