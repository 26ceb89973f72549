//! Zero-touch enrollment (#14) over the real coordinator binary, moto (DescribeInstances, Auto
//! Scaling membership), an IMDSv2 emulator with a test RSA-2048 signer the coordinator trusts,
//! and the real agent in-process.

use std::{path::Path, time::Duration};

use autoheal_common::tls;
use autoheal_proto::v1::{
    self, enroll_response::Outcome, enrollment_admin_client::EnrollmentAdminClient,
};
use autoheal_tests::{
    AWS_ENV, Coordinator, DEADLINE, Pki, TempDir, client_config, eventually, fleet_client,
    free_addr,
    imds::{self, Document, Imds, Signer},
    moto::{FleetFixture, Moto},
};

/// A coordinator with `[enroll]` on moto, its signer, and the folder for agents' files.
struct Setup {
    moto: Moto,
    fleet: FleetFixture,
    pki: Pki,
    signer: Signer,
    coordinator: Coordinator,
    enroll_addr: String,
    metrics_addr: String,
    dir: TempDir,
}

/// `enroll` goes into the `[enroll]` table (e.g. `lifetime = "10s"`); `ca` names the issuing
/// CA's files in the PKI folder (`ca` for the fleet CA).
fn setup_with(pki: Pki, enroll: &str, ca: &str) -> Setup {
    let moto = Moto::start();
    let fleet = moto.fleet("web", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let signer = Signer::new(dir.path(), "test-region-signer");
    let enroll_addr = free_addr();
    let metrics_addr = free_addr();
    let extra = format!(
        r#"
metrics_listen = "{metrics_addr}"
dry_run = true

[aws]
region = "{region}"
endpoint = "{moto}"
asg_names = ["{asg}"]
interval = "300ms"
call_timeout = "5s"

[enroll]
listen = "{enroll_addr}"
ca_cert = "{pki}/{ca}.pem"
ca_key = "{pki}/{ca}-key.pem"
accounts = ["{account}"]
signers = {{ "{region}" = "{signer}" }}
requests_per_minute = 6000
burst = 1000
{enroll}
"#,
        region = imds::REGION,
        moto = moto.endpoint(),
        asg = fleet.asg,
        pki = pki.path().display(),
        account = imds::ACCOUNT,
        signer = signer.cert.display(),
    );
    let coordinator = Coordinator::start_with(&pki, &extra, "127.0.0.1:0", AWS_ENV);
    Setup {
        moto,
        fleet,
        pki,
        signer,
        coordinator,
        enroll_addr,
        metrics_addr,
        dir,
    }
}

fn setup(enroll: &str) -> Setup {
    setup_with(Pki::new(), enroll, "ca")
}

impl Setup {
    fn instance(&self, i: usize) -> String {
        self.fleet.instances[i].0.clone()
    }

    fn client(&self) -> v1::enroll_service_client::EnrollServiceClient<tonic::transport::Channel> {
        imds::enroll_client(&self.enroll_addr, &self.pki.path().join("ca.pem"))
    }

    fn admin(&self) -> EnrollmentAdminClient<tonic::transport::Channel> {
        let channel = tls::channel(
            &self.coordinator.addr.to_string(),
            client_config(&self.pki.operator()),
            Duration::from_secs(5),
        )
        .expect("channel");
        EnrollmentAdminClient::new(channel)
    }

    async fn metrics(&self) -> String {
        http_get(&self.metrics_addr, "/metrics").await
    }

    /// An agent for `instance` whose identity comes from `imds` and whose certificate comes
    /// from enrollment, its files in `dir`.
    fn agent(
        &self,
        dir: &Path,
        imds: &Imds,
    ) -> (autoheal_agent::Agent, tokio_util::sync::CancellationToken) {
        // The fleet CA, as packaging ships it; the certificate and key come from enrollment.
        if !dir.join("ca.pem").exists() {
            std::fs::copy(self.pki.path().join("ca.pem"), dir.join("ca.pem")).expect("ca");
        }
        let toml = format!(
            r#"
[coordinator]
endpoints = ["{endpoint}"]
enroll_endpoint = "{enroll}"
connect_timeout = "2s"
reconnect_initial = "100ms"
reconnect_max = "1s"
heartbeat_interval = "500ms"

[tls]
ca = "{dir}/ca.pem"
cert = "{dir}/instance.pem"
key = "{dir}/instance-key.pem"

[identity]
imds_endpoint = "{imds}"

[status]
socket = "{dir}/agent.sock"
"#,
            endpoint = self.coordinator.endpoint(),
            enroll = self.enroll_addr,
            dir = dir.display(),
            imds = imds.addr,
        );
        autoheal_tests::agent::start_agent_from_toml(dir, &toml)
    }

    async fn connected(&self, instance: &str) {
        let mut fleet = fleet_client(self.coordinator.addr, &self.pki.viewer());
        eventually(DEADLINE, &format!("{instance} connected"), || {
            let mut fleet = fleet.clone();
            let instance = instance.to_owned();
            async move {
                let got = fleet
                    .get_instance(v1::GetInstanceRequest {
                        instance_id: instance,
                    })
                    .await
                    .ok()?
                    .into_inner();
                got.summary.filter(|s| s.connected).map(|_| ())
            }
        })
        .await;
        let _ = &mut fleet;
    }
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut out = String::new();
    stream.read_to_string(&mut out).await.expect("read");
    out
}

fn refused(outcome: Outcome) -> v1::Refused {
    match outcome {
        Outcome::Refused(r) => r,
        Outcome::Issued(i) => panic!("expected a refusal, got a certificate for {}", i.spiffe_id),
    }
}

fn leaf_of(pem: &str) -> rustls_pki_types::CertificateDer<'static> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
}

/// What a refusal case sends and the check it must name: (what, document, signature, CSR,
/// check).
type Case = (&'static str, Vec<u8>, String, Vec<u8>, &'static str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_names_its_check_issues_nothing_and_is_counted() {
    let s = setup("");
    let a = s.instance(0);
    let b = s.instance(1);
    let mut client = s.client();
    let (good_csr, _) = imds::csr();
    let rogue = Signer::new(s.dir.path(), "rogue");
    let stopped = imds::launch_standalone(&s.moto.endpoint());
    imds::stop(&s.moto.endpoint(), &stopped);
    let terminated = imds::launch_standalone(&s.moto.endpoint());
    imds::terminate(&s.moto.endpoint(), &terminated);
    let loner = imds::launch_standalone(&s.moto.endpoint());

    let doc_a = Document::new(&a).bytes();
    let signed_a = s.signer.sign(&doc_a);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "forged signature",
        doc_a.clone(),
        rogue.sign(&doc_a),
        good_csr.clone(),
        "signature",
    ));
    let doc_b = Document::new(&b).bytes();
    cases.push((
        "content is not the document",
        doc_a.clone(),
        s.signer.sign(&doc_b),
        good_csr.clone(),
        "content-mismatch",
    ));
    let mut far = Document::new(&a);
    far.region = "eu-south-9".into();
    let far = far.bytes();
    cases.push((
        "unknown region",
        far.clone(),
        s.signer.sign(&far),
        good_csr.clone(),
        "unknown-region",
    ));
    let mut foreign = Document::new(&a);
    foreign.account_id = "999999999999".into();
    let foreign = foreign.bytes();
    cases.push((
        "wrong account",
        foreign.clone(),
        s.signer.sign(&foreign),
        good_csr.clone(),
        "account",
    ));
    for (what, id, check) in [
        ("stopped instance", &stopped, "instance-state"),
        ("terminated instance", &terminated, "terminated"),
        ("not in a managed group", &loner, "not-in-managed-group"),
    ] {
        let doc = Document::new(id).bytes();
        cases.push((
            what,
            doc.clone(),
            s.signer.sign(&doc),
            good_csr.clone(),
            check,
        ));
    }
    let mut old = Document::new(&a);
    old.pending_time = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    let old = old.bytes();
    cases.push((
        "too old",
        old.clone(),
        s.signer.sign(&old),
        good_csr.clone(),
        "too-old",
    ));
    // A CSR whose signature is not its own key's.
    let mut mismatched = good_csr.clone();
    let last = mismatched.len() - 1;
    mismatched[last] ^= 0x01;
    cases.push((
        "CSR key mismatch",
        doc_a.clone(),
        signed_a.clone(),
        mismatched,
        "csr",
    ));
    let (extra_sans, _) = imds::csr_with(
        rcgen::CertificateParams::new(vec!["coordinator.example.com".to_owned()]).expect("params"),
    );
    cases.push((
        "extra SANs",
        doc_a.clone(),
        signed_a.clone(),
        extra_sans,
        "csr",
    ));

    for (what, document, signature, csr, check) in cases {
        let r = refused(imds::enroll(&mut client, document, signature, csr).await);
        assert_eq!(r.check, check, "{what}: {}", r.message);
    }

    // A nonce is used once.
    let nonce = client
        .challenge(v1::ChallengeRequest {})
        .await
        .expect("challenge")
        .into_inner()
        .nonce;
    let request = |nonce: Vec<u8>| v1::EnrollRequest {
        document: doc_b.clone(),
        rsa2048_signature: s.signer.sign(&doc_b).into_bytes(),
        csr: good_csr.clone(),
        nonce,
    };
    let first = client.enroll(request(nonce.clone())).await.expect("enroll");
    assert!(
        matches!(first.into_inner().outcome, Some(Outcome::Issued(_))),
        "B enrolls"
    );
    let again = client
        .enroll(request(nonce))
        .await
        .expect("enroll")
        .into_inner();
    assert_eq!(refused(again.outcome.expect("outcome")).check, "nonce");
    // The same document again, and another boot's: trust on first use.
    let replay = imds::enroll(
        &mut client,
        doc_b.clone(),
        s.signer.sign(&doc_b),
        good_csr.clone(),
    )
    .await;
    assert_eq!(refused(replay).check, "replayed");
    let mut reboot = Document::new(&b);
    reboot.pending_time += Duration::from_secs(5);
    let reboot = reboot.bytes();
    let replay = imds::enroll(
        &mut client,
        reboot.clone(),
        s.signer.sign(&reboot),
        good_csr.clone(),
    )
    .await;
    assert_eq!(refused(replay).check, "replayed");

    // Nothing recorded for any refusal: B alone is enrolled.
    let list = s
        .admin()
        .list_enrollments(v1::ListEnrollmentsRequest {})
        .await
        .expect("list")
        .into_inner()
        .enrollments;
    assert_eq!(
        list.iter()
            .map(|e| e.instance_id.as_str())
            .collect::<Vec<_>>(),
        vec![b.as_str()]
    );
    // A metric and a fleet event per refusal, by check.
    let metrics = s.metrics().await;
    for (check, n) in [
        ("signature", 1),
        ("content-mismatch", 1),
        ("unknown-region", 1),
        ("account", 1),
        ("instance-state", 1),
        ("terminated", 1),
        ("not-in-managed-group", 1),
        ("too-old", 1),
        ("csr", 2),
        ("nonce", 1),
        ("replayed", 2),
    ] {
        let line = format!("enrollments_denied_total{{reason=\"{check}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    let out = s.coordinator.ctl(&s.pki.viewer(), &["events"]);
    let events = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for check in [
        "signature",
        "content-mismatch",
        "not-in-managed-group",
        "too-old",
        "replayed",
    ] {
        assert!(
            events
                .lines()
                .any(|l| l.contains("enrollment-denied") && l.contains(check)),
            "an enrollment-denied event for {check} in:\n{events}"
        );
    }
    assert!(
        events
            .lines()
            .any(|l| l.contains("enrollment-denied") && l.contains(&loner))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_enrolls_on_its_own_connects_and_shows_in_status() {
    let s = setup("");
    let a = s.instance(0);
    let imds = Imds::start(&Document::new(&a), &s.signer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(
        !dir.path().join("instance.pem").exists(),
        "no pre-issued certificate"
    );
    let (_agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    // The certificate: one URI SAN naming the instance, the key 0600, about an hour.
    let pem = std::fs::read_to_string(dir.path().join("instance.pem")).expect("cert");
    let id = autoheal_proto::identity::Identity::from_certificate(&leaf_of(&pem)).expect("spiffe");
    assert_eq!(
        id.to_string(),
        format!("spiffe://autoheal.test/instance/{a}")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("instance-key.pem"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let held = autoheal_agent::enroll::validity(&leaf_of(&pem)).expect("dates");
    let lifetime = held
        .not_after
        .duration_since(held.not_before)
        .expect("lifetime");
    assert!(lifetime <= Duration::from_secs(3600 + 60), "{lifetime:?}");
    // autohealctl: status and enrollments.
    let out = s.coordinator.ctl(&s.pki.viewer(), &["instances"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains(&a), "{out:?}");
    let out = s.coordinator.ctl(&s.pki.viewer(), &["enrollments"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&a) && text.contains("enrolled"), "{text}");
    // A viewer may not reset; an operator may, and deny for good.
    let out = s.coordinator.ctl(&s.pki.viewer(), &["enroll", "reset", &a]);
    assert!(
        !out.status.success(),
        "a viewer reset an enrollment: {out:?}"
    );
    let out = s
        .coordinator
        .ctl(&s.pki.operator(), &["enroll", "deny", &a]);
    assert!(out.status.success(), "{out:?}");
    let out = s.coordinator.ctl(&s.pki.viewer(), &["enrollments"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("denied"),
        "{out:?}"
    );
    let mut client = s.client();
    let doc = Document::new(&a).bytes();
    let (csr, _) = imds::csr();
    let r = refused(imds::enroll(&mut client, doc.clone(), s.signer.sign(&doc), csr.clone()).await);
    assert_eq!(r.check, "denied");
    let out = s
        .coordinator
        .ctl(&s.pki.operator(), &["enroll", "reset", &a]);
    assert!(out.status.success(), "{out:?}");
    assert!(matches!(
        imds::enroll(&mut client, doc.clone(), s.signer.sign(&doc), csr).await,
        Outcome::Issued(_)
    ));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_over_mtls_before_it_expires() {
    let s = setup("lifetime = \"10s\"");
    let a = s.instance(0);
    let imds = Imds::start(&Document::new(&a), &s.signer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    let first = std::fs::read_to_string(dir.path().join("instance.pem")).expect("cert");
    let first_held = autoheal_agent::enroll::validity(&leaf_of(&first)).expect("dates");
    // Renewed at 40–60% of its 11 s: well before it expires.
    let second = eventually(Duration::from_secs(20), "a renewed certificate", || {
        let first = first.clone();
        let path = dir.path().join("instance.pem");
        async move {
            let now = std::fs::read_to_string(path).ok()?;
            (now != first && !now.is_empty()).then_some(now)
        }
    })
    .await;
    let second_held = autoheal_agent::enroll::validity(&leaf_of(&second)).expect("dates");
    assert!(
        std::time::SystemTime::now() < first_held.not_after,
        "renewed before expiry"
    );
    assert!(second_held.not_after > first_held.not_after);
    // Renewed, not enrolled again: the IMDS was read for the first enrollment only (and the
    // identity once), and the coordinator counted a renewal.
    eventually(Duration::from_secs(10), "a renewal counted", || async {
        s.metrics()
            .await
            .contains("certificates_issued_total{kind=\"renew\"}")
            .then_some(())
    })
    .await;
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("certificates_issued_total{kind=\"enroll\"} 1"),
        "{metrics}"
    );
    // And the agent is connected with the new certificate, its events still flowing.
    s.connected(&a).await;
    stop.cancel();
    agent.wait(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cas_in_the_trust_bundle_let_the_ca_rotate() {
    // The fleet CA (old) made the coordinator's and the operators' certificates; a new CA
    // issues enrolled ones. Both are in the bundle the coordinator trusts and hands out.
    let pki = Pki::new();
    let new_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "autoheal rotated CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let new_ca = params.self_signed(&new_ca_key).expect("new CA");
    std::fs::write(pki.path().join("ca2.pem"), new_ca.pem()).expect("write");
    std::fs::write(pki.path().join("ca2-key.pem"), new_ca_key.serialize_pem()).expect("write");
    let old = std::fs::read_to_string(pki.path().join("ca.pem")).expect("ca");
    std::fs::write(pki.path().join("ca.pem"), format!("{old}{}", new_ca.pem())).expect("bundle");
    let s = setup_with(pki, "", "ca2");
    let a = s.instance(0);
    let imds = Imds::start(&Document::new(&a), &s.signer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (_agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    let pem = std::fs::read_to_string(dir.path().join("instance.pem")).expect("cert");
    assert!(
        issuer_text(&pem).contains("autoheal rotated CA"),
        "issued by the new CA"
    );
    let bundle = std::fs::read_to_string(dir.path().join("ca.pem")).expect("bundle");
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "both CAs handed out"
    );
    // An agent with a certificate of the old CA still connects.
    let b = s.instance(1);
    let old_files = s.pki.issue(
        autoheal_proto::identity::Role::Instance(b.clone()),
        autohealctl::pki::Validity::default(),
    );
    let mut agent_b = autoheal_tests::agent_client(s.coordinator.addr, &old_files);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(v1::AgentMessage {
        kind: Some(v1::agent_message::Kind::Hello(v1::Hello {
            instance_id: b.clone(),
            availability_zone: "us-east-1a".into(),
            agent_version: "test".into(),
            epoch: 1,
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut inbound = agent_b
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("old CA's certificate accepted")
        .into_inner();
    assert!(inbound.message().await.expect("welcome").is_some());
    stop.cancel();
}

/// The leaf's DER as lossy text: its issuer's common name shows, enough to tell two CAs apart.
fn issuer_text(pem: &str) -> String {
    String::from_utf8_lossy(&leaf_of(pem)).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrolled_agent_restarted_keeps_its_identity() {
    let s = setup("");
    let a = s.instance(0);
    let imds = Imds::start(&Document::new(&a), &s.signer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    let cert = std::fs::read(dir.path().join("instance.pem")).expect("cert");
    let key = std::fs::read(dir.path().join("instance-key.pem")).expect("key");
    stop.cancel();
    assert!(agent.wait(Duration::from_secs(10)).await, "the agent stops");
    let (_agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    assert_eq!(
        std::fs::read(dir.path().join("instance.pem")).expect("cert"),
        cert
    );
    assert_eq!(
        std::fs::read(dir.path().join("instance-key.pem")).expect("key"),
        key
    );
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("certificates_issued_total{kind=\"enroll\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("enrollments_denied_total{reason=\"replayed\"}"),
        "{metrics}"
    );
    stop.cancel();
}

/// The coordinator unreachable across the certificate's expiry (frozen here): the agent keeps
/// going, and when the coordinator is back it enrolls again with the same boot's document and
/// its last key, the one way back in the coordinator allows (see the README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_certificate_expired_while_the_coordinator_was_away_enrolls_again() {
    let s = setup("lifetime = \"10s\"");
    let a = s.instance(0);
    let imds = Imds::start(&Document::new(&a), &s.signer).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, stop) = s.agent(dir.path(), &imds);
    s.connected(&a).await;
    let pem = std::fs::read_to_string(dir.path().join("instance.pem")).expect("cert");
    let held = autoheal_agent::enroll::validity(&leaf_of(&pem)).expect("dates");
    let key = std::fs::read(dir.path().join("instance-key.pem")).expect("key");
    s.coordinator.signal("STOP");
    let expired = held.not_after + Duration::from_secs(1);
    if let Ok(wait) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    s.coordinator.signal("CONT");
    let renewed = eventually(DEADLINE, "a new certificate", || {
        let path = dir.path().join("instance.pem");
        let pem = pem.clone();
        async move {
            let now = std::fs::read_to_string(path).ok()?;
            (now != pem && !now.is_empty()).then_some(now)
        }
    })
    .await;
    assert!(
        autoheal_agent::enroll::validity(&leaf_of(&renewed))
            .expect("dates")
            .not_after
            > std::time::SystemTime::now()
    );
    s.connected(&a).await;
    let metrics = s.metrics().await;
    assert!(
        metrics.contains("certificates_issued_total{kind=\"enroll\"} 2"),
        "enrolled again, not renewed: {metrics}"
    );
    assert!(!metrics.contains("reason=\"replayed\""), "{metrics}");
    assert_eq!(
        std::fs::read(dir.path().join("instance-key.pem")).expect("key"),
        key,
        "the expired certificate's key proved the instance"
    );
    stop.cancel();
    agent.wait(Duration::from_secs(10)).await;
}

/// The enrollment listener presents the coordinator's certificate, and a new one once the files
/// are replaced (rotation without a restart, as on the agent port).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_listener_picks_up_a_rotated_certificate() {
    let s = setup("");
    let presented = || async {
        use rustls_pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(s.pki.path().join("ca.pem")).expect("ca") {
            roots.add(cert.expect("pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_protocol_versions(tls::PROTOCOL_VERSIONS)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(&s.enroll_addr)
            .await
            .expect("connect");
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect("localhost".try_into().expect("name"), tcp)
            .await
            .expect("server-authenticated handshake without a client certificate");
        tls.get_ref().1.peer_certificates().expect("certificate")[0].to_vec()
    };
    let file = || {
        leaf_of(&std::fs::read_to_string(s.pki.path().join("coordinator.pem")).expect("cert"))
            .to_vec()
    };
    assert_eq!(presented().await, file());
    autohealctl::pki::issue_server(s.pki.path(), &[]).expect("new server certificate");
    let new = file();
    eventually(
        Duration::from_secs(10),
        "the new certificate presented",
        || {
            let new = new.clone();
            let presented = presented();
            async move { (presented.await == new).then_some(()) }
        },
    )
    .await;
}

/// Trust on first use rests on this: of two writers expecting the same version, one wins; a
/// record survives a reopen. Both backends.
async fn enrollment_writes_are_conditional(
    store: std::sync::Arc<dyn autoheal_coordinator::ports::store::Store>,
) {
    use autoheal_coordinator::model::enrollment::{Enrollment, EnrollmentStatus};
    let record = |version: u64, status: EnrollmentStatus| Enrollment {
        instance_id: "i-0123456789abcdef0".into(),
        status,
        pending_time: "2026-12-01T10:00:00Z".into(),
        account_id: imds::ACCOUNT.into(),
        region: imds::REGION.into(),
        enrolled_at: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        certificate_expires_at: std::time::UNIX_EPOCH + Duration::from_secs(1_700_003_600),
        reason: String::new(),
        key_sha256: "ab".repeat(32),
        version,
    };
    let first = record(1, EnrollmentStatus::Enrolled);
    assert!(store.put_enrollment(&first, None).await.expect("write"));
    assert!(
        store.put_enrollment(&first, None).await.expect("write"),
        "a retry of a write that landed is a success"
    );
    let rival = Enrollment {
        key_sha256: "cd".repeat(32),
        ..first.clone()
    };
    assert!(
        !store.put_enrollment(&rival, None).await.expect("write"),
        "a second first enrollment loses"
    );
    let reset = record(2, EnrollmentStatus::Reset);
    assert!(store.put_enrollment(&reset, Some(1)).await.expect("write"));
    assert!(
        !store
            .put_enrollment(&record(2, EnrollmentStatus::Denied), Some(1))
            .await
            .expect("write"),
        "a stale version loses"
    );
    assert_eq!(
        store.enrollment(&first.instance_id).await.expect("read"),
        Some(reset.clone())
    );
    assert_eq!(store.enrollments().await.expect("list"), vec![reset]);
    assert_eq!(store.enrollment("i-other").await.expect("read"), None);
}

#[tokio::test]
async fn enrollment_records_are_conditional_writes_in_the_embedded_store() {
    use autoheal_coordinator::adapters::store::EmbeddedStore;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    enrollment_writes_are_conditional(store.clone()).await;
    drop(store);
    let reopened = EmbeddedStore::open(dir.path()).expect("reopen");
    use autoheal_coordinator::ports::store::Store as _;
    assert_eq!(reopened.enrollments().await.expect("list").len(), 1);
}

#[tokio::test]
async fn enrollment_records_are_conditional_writes_in_dynamodb() {
    use autoheal_coordinator::adapters::store::{
        DynamoStore, aws_sdk_dynamodb as ddb, create_table,
    };
    let moto = Moto::start();
    let config = ddb::Config::builder()
        .behavior_version(ddb::config::BehaviorVersion::latest())
        .region(ddb::config::Region::new(imds::REGION))
        .credentials_provider(ddb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(moto.endpoint())
        .build();
    let client = ddb::Client::from_conf(config);
    create_table(&client, "enroll-state").await.expect("table");
    let store = DynamoStore::new(
        client,
        "enroll-state",
        autoheal_coordinator::adapters::aws::AwsSettings::default(),
        autoheal_coordinator::ports::store::system_clock(),
    );
    enrollment_writes_are_conditional(std::sync::Arc::new(store)).await;
}
