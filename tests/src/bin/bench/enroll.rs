//! Benchmark 6: N instances enrolling at once (#14). moto holds an Auto Scaling group of N
//! instances; a generator signs N identity documents with a test RSA-2048 signer the coordinator
//! trusts and makes N P-256 CSRs beforehand; then N clients, each on its own TLS connection to
//! the enrollment listener, ask for a challenge and enroll, all at once. Reported: wall time
//! until the last certificate, enrollments/s, coordinator CPU per enrollment, and how many
//! `DescribeInstances` and `DescribeAutoScalingGroups` calls it made (target: ≤ one per 100).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use autoheal_proto::v1::enroll_response::Outcome;
use autoheal_tests::{
    imds::{self, Document, Signer},
    moto::Moto,
};

use crate::util::{CoordinatorProc, Pki, clk_tck, free_port, sample};

pub struct Report {
    pub wall: Duration,
    pub per_sec: f64,
    pub cpu_ms_per_enrollment: f64,
    pub describe_instances_calls: u64,
    pub describe_groups_calls: u64,
}

fn counter(metrics: &str, operation: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("autoheal_aws_calls_total{") && l.contains(operation))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

async fn scrape(port: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

pub async fn run(n: usize) -> Result<Report> {
    println!("\n== enroll: {n} instances at once ==");
    let t = Instant::now();
    let moto = Moto::start();
    // The fixture's two /24 subnets hold 250 instances per group comfortably.
    let fleets: Vec<_> = (0..n.div_ceil(250))
        .map(|i| moto.fleet(&format!("bench{i}"), 250.min(n - i * 250)))
        .collect();
    let instances: Vec<String> = fleets
        .iter()
        .flat_map(|f| f.instances.iter().map(|(id, _)| id.clone()))
        .collect();
    let asgs = fleets
        .iter()
        .map(|f| format!("\"{}\"", f.asg))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "moto: {} instances in {} groups ({:.1}s)",
        instances.len(),
        fleets.len(),
        t.elapsed().as_secs_f64()
    );
    let pki = Pki::new()?;
    let work = tempfile::tempdir()?;
    let signer = Signer::new(work.path(), "bench-signer");
    let enroll_port = free_port()?;
    let metrics_port = free_port()?;
    let top = format!("metrics_listen = \"127.0.0.1:{metrics_port}\"\ndry_run = true");
    let tables = format!(
        r#"
[aws]
region = "{region}"
endpoint = "{moto}"
asg_names = [{asgs}]
interval = "60s"
call_timeout = "30s"

[enroll]
listen = "127.0.0.1:{enroll_port}"
ca_cert = "{pki}/ca.pem"
ca_key = "{pki}/ca-key.pem"
accounts = ["{account}"]
signers = {{ "{region}" = "{signer}" }}
requests_per_minute = 10000000
burst = 1000000
"#,
        region = imds::REGION,
        moto = moto.endpoint(),
        pki = pki.path().display(),
        account = imds::ACCOUNT,
        signer = signer.cert.display(),
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let coordinator =
        CoordinatorProc::start(&pki, work.path(), "127.0.0.1:0", "5s", &top, &tables, &env)?;
    // The generator: every document signed and every CSR made before the clock starts.
    let requests: Vec<(Vec<u8>, String, Vec<u8>)> = instances
        .iter()
        .map(|id| {
            let doc = Document::new(id).bytes();
            let sig = signer.sign(&doc);
            let (csr, _) = imds::csr();
            (doc, sig, csr)
        })
        .collect();
    let ca = pki.path().join("ca.pem");
    let endpoint = format!("127.0.0.1:{enroll_port}");
    // Let the coordinator settle (inventory's first pass) before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_metrics = scrape(metrics_port).await.unwrap_or_default();
    let before = sample(coordinator.pid()).context("coordinator /proc")?;
    let start = Instant::now();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(doc, sig, csr)| {
            let mut client = imds::enroll_client(&endpoint, &ca);
            tokio::spawn(async move { imds::enroll(&mut client, doc, sig, csr).await })
        })
        .collect();
    let mut issued = 0;
    let mut refused = std::collections::BTreeMap::<String, usize>::new();
    for t in tasks {
        match t.await? {
            Outcome::Issued(_) => issued += 1,
            Outcome::Refused(r) => *refused.entry(r.check).or_default() += 1,
        }
    }
    let wall = start.elapsed();
    let after = sample(coordinator.pid()).context("coordinator /proc")?;
    let metrics = scrape(metrics_port).await?;
    if issued != n {
        bail!("{issued} of {n} issued; refused: {refused:?}");
    }
    let cpu_s = (after.cpu_ticks - before.cpu_ticks) as f64 / clk_tck() as f64;
    let report = Report {
        wall,
        per_sec: n as f64 / wall.as_secs_f64(),
        cpu_ms_per_enrollment: cpu_s * 1000.0 / n as f64,
        describe_instances_calls: counter(&metrics, "ec2:DescribeInstances")
            - counter(&before_metrics, "ec2:DescribeInstances"),
        describe_groups_calls: counter(&metrics, "DescribeAutoScalingGroups")
            - counter(&before_metrics, "DescribeAutoScalingGroups"),
    };
    println!(
        "enroll: {n} issued in {:.2}s = {:.0}/s; coordinator CPU {:.2} ms per enrollment; \
         DescribeInstances calls {} ({} per 100), DescribeAutoScalingGroups calls {} (inventory's included)",
        report.wall.as_secs_f64(),
        report.per_sec,
        report.cpu_ms_per_enrollment,
        report.describe_instances_calls,
        report.describe_instances_calls as f64 * 100.0 / n as f64,
        report.describe_groups_calls,
    );
    drop(coordinator);
    Ok(report)
}
