//! What the ECS task metadata endpoint (v4) tells a coordinator at start: the task's own IP
//! (the `advertise` address followers redirect agents to, when the config sets none) and whether
//! the task belongs to an ECS service (then it is one of several replicas, and the embedded
//! store would make each of them a leader).
//!
//! ECS sets `ECS_CONTAINER_METADATA_URI_V4` in every container; outside ECS it is unset and
//! nothing here runs.

use std::{net::Ipv4Addr, time::Duration};

use serde::Deserialize;

use super::{Config, StoreBackend};

/// Set by the ECS agent (and Fargate) in every container of a task.
pub const METADATA_ENV: &str = "ECS_CONTAINER_METADATA_URI_V4";
/// The endpoint is local to the task: an answer slower than this means something is wrong.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(2);

/// The part of `${ECS_CONTAINER_METADATA_URI_V4}/task` the coordinator uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMetadata {
    pub task_arn: String,
    /// The ECS service that started the task; absent for a task run on its own.
    pub service: Option<String>,
    /// The task's IPv4 address (awsvpc: one per task, shared by its containers).
    pub ipv4: Option<Ipv4Addr>,
}

#[derive(Debug, Deserialize)]
struct RawTask {
    #[serde(rename = "TaskARN", default)]
    task_arn: String,
    #[serde(rename = "ServiceName", default)]
    service_name: Option<String>,
    #[serde(rename = "Containers", default)]
    containers: Vec<RawContainer>,
}

#[derive(Debug, Deserialize)]
struct RawContainer {
    #[serde(rename = "Networks", default)]
    networks: Vec<RawNetwork>,
}

#[derive(Debug, Deserialize)]
struct RawNetwork {
    #[serde(rename = "IPv4Addresses", default)]
    ipv4_addresses: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EcsError {
    #[error("cannot read the ECS task metadata at {url} ({METADATA_ENV})")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the ECS task metadata at {url} is not the v4 task format")]
    Parse {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the ECS task metadata at {url} names no IPv4 address for this task, so followers could not redirect agents here: set `advertise`"
    )]
    NoAddress { url: String },
    #[error(
        "refusing the embedded store: this task belongs to the ECS service {service:?}, which runs several coordinators at once (its DesiredCount, and old and new tasks side by side during every deployment); each would hold its own embedded lease and act as leader. Set [store] backend = \"dynamodb\" with the stack's table"
    )]
    SeveralReplicas { service: String },
}

impl TaskMetadata {
    pub fn parse(url: &str, body: &[u8]) -> Result<Self, EcsError> {
        let raw: RawTask = serde_json::from_slice(body).map_err(|source| EcsError::Parse {
            url: url.to_owned(),
            source,
        })?;
        let ipv4 = raw
            .containers
            .iter()
            .flat_map(|c| &c.networks)
            .flat_map(|n| &n.ipv4_addresses)
            .find_map(|a| a.parse().ok());
        Ok(TaskMetadata {
            task_arn: raw.task_arn,
            service: raw.service_name.filter(|s| !s.is_empty()),
            ipv4,
        })
    }

    /// `GET {base}/task`, bounded by `timeout`.
    pub async fn fetch(base: &str, timeout: Duration) -> Result<Self, EcsError> {
        let url = format!("{}/task", base.trim_end_matches('/'));
        let fetch_err = |source| EcsError::Fetch {
            url: url.clone(),
            source,
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(fetch_err)?;
        let body = client
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(fetch_err)?
            .bytes()
            .await
            .map_err(fetch_err)?;
        Self::parse(&url, &body)
    }
}

/// What the platform changes in `config`: on ECS, `advertise` from the task's IP (when unset)
/// and the embedded store refused for a service's task. Off ECS (`env` has no
/// [`METADATA_ENV`]) nothing changes. Returns the metadata read, if any.
pub async fn apply(
    config: &mut Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<TaskMetadata>, EcsError> {
    let Some(base) = env(METADATA_ENV).filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let task = TaskMetadata::fetch(&base, METADATA_TIMEOUT).await?;
    if let (StoreBackend::Embedded, Some(service)) = (&config.store.backend, &task.service) {
        return Err(EcsError::SeveralReplicas {
            service: service.clone(),
        });
    }
    if config.advertise.is_none() {
        let ip = task.ipv4.ok_or_else(|| EcsError::NoAddress {
            url: format!("{}/task", base.trim_end_matches('/')),
        })?;
        config.advertise = Some(std::net::SocketAddr::from((ip, config.listen.port())).to_string());
    }
    Ok(Some(task))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// What Fargate returns, trimmed to the fields read (and a few that are not).
    const FARGATE_TASK: &str = r#"{
        "Cluster": "arn:aws:ecs:us-east-1:111122223333:cluster/autoheal",
        "TaskARN": "arn:aws:ecs:us-east-1:111122223333:task/autoheal/0123456789abcdef",
        "Family": "autoheal-coordinator", "Revision": "3", "ServiceName": "autoheal-Service-abc",
        "LaunchType": "FARGATE", "AvailabilityZone": "us-east-1a",
        "Containers": [
            {"Name": "tls-init", "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.20.1.17"]}]},
            {"Name": "coordinator", "Networks": [{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.20.1.17"]}]}
        ]
    }"#;

    /// A one-shot HTTP server on loopback answering every request with `status` and `body`;
    /// `delay` before answering. Returns its base URL.
    async fn fake_endpoint(status: u16, body: &'static str, delay: Duration) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let _ = conn.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/v4/abc")
    }

    fn config(store: &str, advertise: Option<&str>) -> Config {
        let text = format!(
            "listen = \"0.0.0.0:7443\"\n{}\n[tls]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n{store}",
            advertise.map_or(String::new(), |a| format!("advertise = \"{a}\""))
        );
        Config::from_toml(&text, Path::new("/tmp")).expect("valid config")
    }

    const DYNAMO: &str = "[aws]\n[store]\nbackend = \"dynamodb\"\ntable = \"autoheal-state\"\n";

    #[test]
    fn parses_the_task_ip_and_service() {
        let t = TaskMetadata::parse("u", FARGATE_TASK.as_bytes()).expect("parse");
        assert_eq!(t.ipv4, Some(Ipv4Addr::new(10, 20, 1, 17)));
        assert_eq!(t.service.as_deref(), Some("autoheal-Service-abc"));
        assert!(t.task_arn.ends_with("/0123456789abcdef"));
    }

    #[tokio::test]
    async fn advertise_comes_from_the_task_ip_with_the_listen_port() {
        let base = fake_endpoint(200, FARGATE_TASK, Duration::ZERO).await;
        let mut c = config(DYNAMO, None);
        let env = |k: &str| (k == METADATA_ENV).then(|| base.clone());
        apply(&mut c, env).await.expect("apply");
        assert_eq!(c.advertise.as_deref(), Some("10.20.1.17:7443"));
    }

    #[tokio::test]
    async fn an_advertise_in_the_config_wins() {
        let base = fake_endpoint(200, FARGATE_TASK, Duration::ZERO).await;
        let mut c = config(DYNAMO, Some("coord-1.internal:7443"));
        apply(&mut c, |k: &str| (k == METADATA_ENV).then(|| base.clone()))
            .await
            .expect("apply");
        assert_eq!(c.advertise.as_deref(), Some("coord-1.internal:7443"));
    }

    #[tokio::test]
    async fn a_service_task_refuses_the_embedded_store_and_says_why() {
        let base = fake_endpoint(200, FARGATE_TASK, Duration::ZERO).await;
        let mut c = config("", None);
        let err = apply(&mut c, |k: &str| (k == METADATA_ENV).then(|| base.clone()))
            .await
            .expect_err("embedded on an ECS service must be refused");
        let text = err.to_string();
        assert!(text.contains("refusing the embedded store"), "{text}");
        assert!(text.contains("autoheal-Service-abc"), "{text}");
        assert!(text.contains("dynamodb"), "{text}");
    }

    #[tokio::test]
    async fn off_ecs_nothing_changes() {
        let mut c = config("", None);
        assert_eq!(apply(&mut c, |_: &str| None).await.expect("apply"), None);
        assert_eq!(c.advertise, None);
    }

    #[tokio::test(start_paused = false)]
    async fn a_slow_or_failing_endpoint_is_an_error_not_a_hang() {
        let slow = fake_endpoint(200, FARGATE_TASK, Duration::from_secs(30)).await;
        let started = std::time::Instant::now();
        let err = TaskMetadata::fetch(&slow, Duration::from_millis(200))
            .await
            .expect_err("timeout");
        assert!(matches!(err, EcsError::Fetch { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let failing = fake_endpoint(500, "{}", Duration::ZERO).await;
        assert!(matches!(
            TaskMetadata::fetch(&failing, METADATA_TIMEOUT).await,
            Err(EcsError::Fetch { .. })
        ));
        let garbage = fake_endpoint(200, "not json", Duration::ZERO).await;
        assert!(matches!(
            TaskMetadata::fetch(&garbage, METADATA_TIMEOUT).await,
            Err(EcsError::Parse { .. })
        ));
    }

    #[tokio::test]
    async fn no_task_ip_and_no_advertise_is_an_error() {
        let base = fake_endpoint(200, r#"{"TaskARN":"t","Containers":[]}"#, Duration::ZERO).await;
        let mut c = config(DYNAMO, None);
        let err = apply(&mut c, |k: &str| (k == METADATA_ENV).then(|| base.clone()))
            .await
            .expect_err("no address");
        assert!(matches!(err, EcsError::NoAddress { .. }), "{err:?}");
    }
}
