//! An IMDSv2 emulator for enrollment tests: `PUT /latest/api/token` (the TTL header required),
//! then, with the token, the instance id, the availability zone, the instance identity document
//! and its RSA-2048 PKCS7 signature, made by a test signer whose certificate the coordinator is
//! configured to trust. Also: identity documents, CSRs and an enrollment client for tests that
//! talk to the coordinator directly, and EC2 changes in moto (stop, terminate, launch outside
//! any group).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use autoheal_coordinator::services::enroll::pkcs7::testing;
use autoheal_proto::v1::{self, enroll_service_client::EnrollServiceClient};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tonic::transport::Channel;

/// moto's account.
pub const ACCOUNT: &str = "123456789012";
pub const REGION: &str = "us-east-1";

/// An RSA-2048 signer like an AWS region's: its certificate on disk for the coordinator's
/// `[enroll] signers`, its key to sign documents.
#[derive(Debug)]
pub struct Signer {
    pub cert: PathBuf,
    key: rcgen::KeyPair,
}

impl Signer {
    pub fn new(dir: &Path, name: &str) -> Self {
        let (der, key) = testing::signer(name);
        let cert = dir.join(format!("{name}.pem"));
        let text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_lines(&der)
        );
        std::fs::write(&cert, text).expect("write signer certificate");
        Self { cert, key }
    }

    /// The rsa2048 signature of `document`, base64 as IMDSv2 serves it.
    pub fn sign(&self, document: &[u8]) -> String {
        testing::sign_base64(document, &self.key)
    }
}

fn base64_lines(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out.as_bytes()
        .chunks(64)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An instance identity document, as IMDSv2 serves it (pretty-printed JSON).
#[derive(Debug, Clone)]
pub struct Document {
    pub instance_id: String,
    pub account_id: String,
    pub region: String,
    pub availability_zone: String,
    pub pending_time: SystemTime,
}

impl Document {
    /// A document of `instance_id` in moto's account and region, launched a minute ago.
    pub fn new(instance_id: &str) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            account_id: ACCOUNT.to_owned(),
            region: REGION.to_owned(),
            availability_zone: format!("{REGION}a"),
            pending_time: SystemTime::now() - Duration::from_secs(60),
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let pending = time::OffsetDateTime::from(self.pending_time)
            .replace_nanosecond(0)
            .expect("nanoseconds")
            .format(&time::format_description::well_known::Rfc3339)
            .expect("format");
        format!(
            "{{\n  \"accountId\" : \"{}\",\n  \"architecture\" : \"x86_64\",\n  \"availabilityZone\" : \"{}\",\n  \"imageId\" : \"ami-12c6146b\",\n  \"instanceId\" : \"{}\",\n  \"instanceType\" : \"t3.micro\",\n  \"pendingTime\" : \"{}\",\n  \"privateIp\" : \"10.0.0.7\",\n  \"region\" : \"{}\",\n  \"version\" : \"2017-09-30\"\n}}",
            self.account_id, self.availability_zone, self.instance_id, pending, self.region
        )
        .into_bytes()
    }
}

#[derive(Debug, Default)]
struct Served {
    document: Vec<u8>,
    signature: String,
    instance_id: String,
    availability_zone: String,
    tokens: Vec<String>,
    token_puts: usize,
}

/// The emulator. Serves until dropped.
#[derive(Debug)]
pub struct Imds {
    pub addr: SocketAddr,
    served: Arc<Mutex<Served>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Imds {
    /// Serves `document` signed by `signer`.
    pub async fn start(document: &Document, signer: &Signer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = Arc::new(Mutex::new(Served::default()));
        let task = tokio::spawn(serve(listener, served.clone()));
        let imds = Self { addr, served, task };
        imds.set(document, signer);
        imds
    }

    /// What it serves from now on (a new boot, a forged signature…).
    pub fn set(&self, document: &Document, signer: &Signer) {
        let bytes = document.bytes();
        let mut s = self.served.lock().expect("lock");
        s.signature = signer.sign(&bytes);
        s.document = bytes;
        s.instance_id = document.instance_id.clone();
        s.availability_zone = document.availability_zone.clone();
    }

    /// How many session tokens were asked for.
    pub fn token_puts(&self) -> usize {
        self.served.lock().expect("lock").token_puts
    }
}

async fn serve(listener: TcpListener, served: Arc<Mutex<Served>>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 2048];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                if buf.len() > 16 * 1024 {
                    return;
                }
            }
            let request = String::from_utf8_lossy(&buf).to_string();
            let mut lines = request.lines();
            let first = lines.next().unwrap_or_default().to_owned();
            let headers: Vec<(String, String)> = lines
                .take_while(|l| !l.is_empty())
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            };
            let (status, body): (u16, Vec<u8>) = {
                let mut s = served.lock().expect("lock");
                if first.starts_with("PUT /latest/api/token ") {
                    match header("x-aws-ec2-metadata-token-ttl-seconds")
                        .and_then(|t| t.parse::<u32>().ok())
                    {
                        Some(ttl) if (1..=21600).contains(&ttl) => {
                            s.token_puts += 1;
                            let token = format!("token-{}-{}", s.token_puts, ttl);
                            s.tokens.push(token.clone());
                            (200, token.into_bytes())
                        }
                        _ => (400, Vec::new()),
                    }
                } else if !header("x-aws-ec2-metadata-token").is_some_and(|t| s.tokens.contains(&t))
                {
                    (401, Vec::new())
                } else if first.starts_with("GET /latest/dynamic/instance-identity/document ") {
                    (200, s.document.clone())
                } else if first.starts_with("GET /latest/dynamic/instance-identity/rsa2048 ") {
                    (200, s.signature.clone().into_bytes())
                } else if first.starts_with("GET /latest/meta-data/instance-id ") {
                    (200, s.instance_id.clone().into_bytes())
                } else if first.starts_with("GET /latest/meta-data/placement/availability-zone ") {
                    (200, s.availability_zone.clone().into_bytes())
                } else {
                    (404, Vec::new())
                }
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// A P-256 CSR (DER) asking for nothing, and its key.
pub fn csr() -> (Vec<u8>, rcgen::KeyPair) {
    csr_with(rcgen::CertificateParams::default())
}

/// A P-256 CSR (DER) with `params`.
pub fn csr_with(params: rcgen::CertificateParams) -> (Vec<u8>, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().expect("key");
    let der = params.serialize_request(&key).expect("csr").der().to_vec();
    (der, key)
}

/// An `EnrollService` client on the enrollment listener: server-authenticated TLS against
/// `ca`, no client certificate.
pub fn enroll_client(addr: &str, ca: &Path) -> EnrollServiceClient<Channel> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(autoheal_common::tls::provider())
        .with_protocol_versions(autoheal_common::tls::PROTOCOL_VERSIONS)
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let channel = autoheal_common::tls::channel(addr, Arc::new(config), Duration::from_secs(5))
        .expect("channel");
    EnrollServiceClient::new(channel)
}

/// Challenge, then Enroll.
pub async fn enroll(
    client: &mut EnrollServiceClient<Channel>,
    document: Vec<u8>,
    signature: String,
    csr: Vec<u8>,
) -> v1::enroll_response::Outcome {
    let nonce = client
        .challenge(v1::ChallengeRequest {})
        .await
        .expect("challenge")
        .into_inner()
        .nonce;
    client
        .enroll(v1::EnrollRequest {
            document,
            rsa2048_signature: signature.into_bytes(),
            csr,
            nonce,
        })
        .await
        .expect("enroll call")
        .into_inner()
        .outcome
        .expect("an outcome")
}

/// Runs `script` with `ec2` (a boto3 EC2 client on moto) in scope; returns what it prints.
pub fn ec2(moto_endpoint: &str, script: &str) -> String {
    let program = format!(
        "import boto3, json\nec2 = boto3.session.Session(aws_access_key_id='testing', aws_secret_access_key='testing', region_name='{REGION}').client('ec2', endpoint_url='{moto_endpoint}')\n{script}\n"
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &program])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "ec2 script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Launches an instance in no Auto Scaling group; returns its id.
pub fn launch_standalone(moto_endpoint: &str) -> String {
    ec2(
        moto_endpoint,
        "image = ec2.describe_images(Owners=['amazon'])['Images'][0]['ImageId']\nprint(ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType='t3.micro')['Instances'][0]['InstanceId'])",
    )
}

pub fn stop(moto_endpoint: &str, id: &str) {
    ec2(
        moto_endpoint,
        &format!("ec2.stop_instances(InstanceIds=['{id}'])"),
    );
}

pub fn terminate(moto_endpoint: &str, id: &str) {
    ec2(
        moto_endpoint,
        &format!("ec2.terminate_instances(InstanceIds=['{id}'])"),
    );
}
