//! Who this agent speaks for: the EC2 instance id and availability zone, from IMDSv2 (a session
//! token first, then the two metadata paths) or from the config off EC2.

use std::time::Duration;

use crate::{
    config::{IdentitySource, parse_host_port},
    http,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceIdentity {
    pub instance_id: String,
    pub availability_zone: String,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "cannot reach the EC2 instance metadata service (IMDSv2) at {endpoint}: {step}: {source}; \
         off EC2, set identity.instance_id and identity.availability_zone in the config"
    )]
    Unreachable {
        endpoint: String,
        step: &'static str,
        #[source]
        source: http::HttpError,
    },
    #[error("IMDSv2 at {endpoint}: {step} answered HTTP {status}")]
    Status {
        endpoint: String,
        step: &'static str,
        status: u16,
    },
    #[error("IMDSv2 at {endpoint}: {step} returned an unusable value {value:?}")]
    Value {
        endpoint: String,
        step: &'static str,
        value: String,
    },
    #[error("identity.imds_endpoint: {0}")]
    Endpoint(String),
}

pub async fn resolve(source: &IdentitySource) -> Result<InstanceIdentity, IdentityError> {
    match source {
        IdentitySource::Static {
            instance_id,
            availability_zone,
        } => Ok(InstanceIdentity {
            instance_id: instance_id.clone(),
            availability_zone: availability_zone.clone(),
        }),
        IdentitySource::Imds { endpoint, timeout } => imds(endpoint, *timeout).await,
    }
}

async fn imds(endpoint: &str, timeout: Duration) -> Result<InstanceIdentity, IdentityError> {
    let (host, port) = parse_host_port(endpoint).map_err(IdentityError::Endpoint)?;
    let call = |step: &'static str,
                method: &'static str,
                path: &'static str,
                header: (&'static str, String)| {
        let host = host.clone();
        async move {
            let r = http::request(&host, port, method, path, &[(header.0, &header.1)], timeout)
                .await
                .map_err(|source| IdentityError::Unreachable {
                    endpoint: endpoint.to_owned(),
                    step,
                    source,
                })?;
            if r.status != 200 {
                return Err(IdentityError::Status {
                    endpoint: endpoint.to_owned(),
                    step,
                    status: r.status,
                });
            }
            let value = String::from_utf8_lossy(&r.body).trim().to_owned();
            let ok = !value.is_empty()
                && value.len() <= 128
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok && step != "token" || value.is_empty() {
                return Err(IdentityError::Value {
                    endpoint: endpoint.to_owned(),
                    step,
                    value,
                });
            }
            Ok(value)
        }
    };
    let token = call(
        "token",
        "PUT",
        "/latest/api/token",
        ("X-aws-ec2-metadata-token-ttl-seconds", "300".to_owned()),
    )
    .await?;
    let instance_id = call(
        "instance-id",
        "GET",
        "/latest/meta-data/instance-id",
        ("X-aws-ec2-metadata-token", token.clone()),
    )
    .await?;
    let availability_zone = call(
        "availability-zone",
        "GET",
        "/latest/meta-data/placement/availability-zone",
        ("X-aws-ec2-metadata-token", token),
    )
    .await?;
    Ok(InstanceIdentity {
        instance_id,
        availability_zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    /// A fake IMDSv2 that insists on the token header, like the real one.
    async fn fake_imds() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let (status, body) = if req.starts_with("PUT /latest/api/token")
                    && req.contains("X-aws-ec2-metadata-token-ttl-seconds")
                {
                    (200, "tok123")
                } else if !req.contains("X-aws-ec2-metadata-token: tok123") {
                    (401, "")
                } else if req.starts_with("GET /latest/meta-data/instance-id") {
                    (200, "i-0abc")
                } else if req.starts_with("GET /latest/meta-data/placement/availability-zone") {
                    (200, "eu-west-1b")
                } else {
                    (404, "")
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn imdsv2_token_then_identity() {
        let endpoint = fake_imds().await;
        let id = resolve(&IdentitySource::Imds {
            endpoint,
            timeout: Duration::from_secs(10),
        })
        .await
        .expect("identity");
        assert_eq!(
            id,
            InstanceIdentity {
                instance_id: "i-0abc".into(),
                availability_zone: "eu-west-1b".into()
            }
        );
    }

    #[tokio::test]
    async fn unreachable_imds_says_what_to_do() {
        // A port that was just free: connection refused.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").port()
        };
        let e = resolve(&IdentitySource::Imds {
            endpoint: format!("127.0.0.1:{port}"),
            timeout: Duration::from_secs(5),
        })
        .await
        .expect_err("unreachable");
        let text = e.to_string();
        assert!(text.contains("IMDSv2"), "{text}");
        assert!(text.contains("identity.instance_id"), "{text}");
    }
}
