//! The one harness for autoheal's end-to-end tests (`tests/tests/main.rs`, one binary): a
//! development PKI in a temporary folder, the real `autoheal-coordinator` and `autohealctl`
//! binaries as child processes, mTLS clients and poll-until helpers. Beside it: the real agent
//! in-process ([`agent`]), a fake coordinator for the agent's reporter ([`fake`]), simulated
//! agents ([`sim`]), moto ([`moto`]) and a fault-injecting AWS proxy ([`proxy`]).
//!
//! The binaries come from the same target folder as the test executable; build them first
//! (`cargo build --workspace --bins`, which `scripts/test.sh` does).

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use autoheal_common::tls::{self, TlsFiles};
use autoheal_proto::{
    MAX_MESSAGE_BYTES,
    identity::{Role, TrustDomain},
    v1::{agent_service_client::AgentServiceClient, fleet_service_client::FleetServiceClient},
};
use autohealctl::pki;
use tonic::transport::Channel;

pub use tempfile::TempDir;

pub mod agent;
pub mod fake;
pub mod imds;
pub mod moto;
pub mod proxy;
pub mod sim;

/// Instance ids that every test PKI has certificates for.
pub const INSTANCE_A: &str = "i-aaaaaaaaaaaaaaaa";
pub const INSTANCE_B: &str = "i-bbbbbbbbbbbbbbbb";

/// Credentials and settings for a coordinator talking to moto: fixed test keys, and nothing read
/// from the machine's AWS config or instance metadata.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
    ("AWS_CONFIG_FILE", "/nonexistent"),
    ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
];

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `127.0.0.1:<free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Path of a workspace binary next to the running test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/<test> -> target/debug/<name>
    // Test executables live in target/<profile>/deps, binaries of this crate (bench) one up.
    let dir = exe.parent().expect("executable has a folder");
    let dir = if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>")
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// A development PKI in a temporary folder.
#[derive(Debug)]
pub struct Pki {
    pub dir: TempDir,
    pub trust_domain: TrustDomain,
}

impl Pki {
    pub fn new() -> Self {
        Self::with_trust_domain("autoheal.test")
    }

    pub fn with_trust_domain(td: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust_domain = TrustDomain::new(td).expect("trust domain");
        pki::init(
            dir.path(),
            &trust_domain,
            &[],
            &[INSTANCE_A.to_owned(), INSTANCE_B.to_owned()],
            false,
        )
        .expect("pki init");
        Self { dir, trust_domain }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// CA, cert and key of `<stem>.pem` (e.g. `operator-admin`, `instance-i-...`).
    pub fn files(&self, stem: &str) -> TlsFiles {
        TlsFiles {
            ca: self.path().join("ca.pem"),
            cert: self.path().join(format!("{stem}.pem")),
            key: self.path().join(format!("{stem}-key.pem")),
        }
    }

    pub fn operator(&self) -> TlsFiles {
        self.files("operator-admin")
    }

    pub fn viewer(&self) -> TlsFiles {
        self.files("viewer-readonly")
    }

    /// The coordinator's server certificate (localhost, 127.0.0.1, ::1).
    pub fn coordinator(&self) -> TlsFiles {
        self.files("coordinator")
    }

    pub fn instance(&self, id: &str) -> TlsFiles {
        self.files(&format!("instance-{id}"))
    }

    pub fn issue(&self, role: Role, validity: pki::Validity) -> TlsFiles {
        let issued = pki::issue(self.path(), role, validity).expect("issue");
        TlsFiles {
            ca: self.path().join("ca.pem"),
            cert: issued.cert,
            key: issued.key,
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// A real `autoheal-coordinator` process, killed when dropped.
#[derive(Debug)]
pub struct Coordinator {
    pub child: Child,
    pub addr: SocketAddr,
    pub workdir: TempDir,
    pub stderr_log: PathBuf,
    env: Vec<(String, String)>,
}

impl Coordinator {
    /// Starts a coordinator on a free loopback port with the PKI's coordinator certificate.
    /// `extra` is appended to the top level of the config (before any table).
    pub fn start(pki: &Pki, extra: &str) -> Self {
        Self::start_with(pki, extra, "127.0.0.1:0", &[])
    }

    /// Like [`Coordinator::start`], on a chosen address and with extra environment variables
    /// (e.g. AWS credentials for moto, or a fault to inject).
    pub fn start_with(pki: &Pki, extra: &str, listen: &str, env: &[(&str, &str)]) -> Self {
        Self::start_named(pki, "test-coordinator", extra, listen, env)
    }

    /// Like [`Coordinator::start_with`], with a coordinator id (replicas need distinct ones).
    pub fn start_named(
        pki: &Pki,
        name: &str,
        extra: &str,
        listen: &str,
        env: &[(&str, &str)],
    ) -> Self {
        if env.iter().any(|(k, _)| *k == "AUTOHEAL_FAULT") {
            let version = Command::new(bin("autoheal-coordinator"))
                .arg("--version")
                .output()
                .expect("autoheal-coordinator --version");
            assert!(
                String::from_utf8_lossy(&version.stdout).contains("fault-injection"),
                "this test needs the crash-test hooks: the coordinator binary was built without \
                 the fault-injection feature (run `cargo build --workspace --bins`, which the \
                 test crate's dependency turns it on for)"
            );
        }
        let workdir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            r#"
coordinator_id = "{name}"
listen = "{listen}"
trust_domain = "{td}"
state_dir = "{state}"
tls_reload_interval = "200ms"
{extra}

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/coordinator.pem"
key = "{pki}/coordinator-key.pem"
{agents}
"#,
            // An `extra` with its own [agents] table sets the heartbeat itself.
            agents = if extra.contains("[agents]") {
                ""
            } else {
                "\n[agents]\nheartbeat_interval = \"1s\""
            },
            td = pki.trust_domain,
            listen = listen,
            name = name,
            state = workdir.path().join("state").display(),
            pki = pki.path().display(),
        );
        let path = workdir.path().join("coordinator.toml");
        std::fs::write(&path, config).expect("write config");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let stderr_log = workdir.path().join("coordinator.log");
        let (child, addr) = spawn(&path, &stderr_log, &env);
        Self {
            child,
            addr,
            workdir,
            stderr_log,
            env,
        }
    }

    /// The process's exit status, waiting up to `timeout` for it to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (SIGKILL) and starts it again with the same config and state folder.
    /// The listen port may change (the config says port 0).
    pub fn restart(&mut self) {
        let env = self.env.clone();
        self.restart_with_env(env);
    }

    /// Restarts with a different environment (e.g. without an injected fault).
    pub fn restart_with_env(&mut self, env: Vec<(String, String)>) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.env = env;
        let (child, addr) = spawn(
            &self.workdir.path().join("coordinator.toml"),
            &self.stderr_log,
            &self.env,
        );
        self.child = child;
        self.addr = addr;
    }
}

fn spawn(config: &Path, stderr_log: &Path, env: &[(String, String)]) -> (Child, SocketAddr) {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_log)
        .expect("log file");
    let mut child = Command::new(bin("autoheal-coordinator"))
        .arg("--config")
        .arg(config)
        .env("AUTOHEAL_LOG", "info,autoheal_coordinator=debug")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn autoheal-coordinator");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader
        .read_line(&mut line)
        .expect("read coordinator stdout");
    // Keep draining, so a later write to stdout never meets a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let addr = line
        .trim()
        .strip_prefix("autoheal-coordinator listening on ")
        .unwrap_or_else(|| {
            panic!(
                "coordinator did not start: {line:?}\n{}",
                std::fs::read_to_string(stderr_log).unwrap_or_default()
            )
        })
        .parse()
        .expect("address");
    (child, addr)
}

impl Coordinator {
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Runs `autohealctl` against this coordinator with `files`.
    pub fn ctl(&self, files: &TlsFiles, args: &[&str]) -> Output {
        Command::new(bin("autohealctl"))
            .arg("--endpoint")
            .arg(self.endpoint())
            .arg("--ca")
            .arg(&files.ca)
            .arg("--cert")
            .arg(&files.cert)
            .arg("--key")
            .arg(&files.key)
            .args(args)
            .output()
            .expect("run autohealctl")
    }

    /// Sends a signal (e.g. `STOP`, `CONT`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
    }

    /// Whether the process is stopped (SIGSTOP), from `/proc/<pid>/stat`.
    pub fn is_stopped(&self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rustls client config from PEM files.
pub fn client_config(files: &TlsFiles) -> Arc<rustls::ClientConfig> {
    Arc::new(tls::client_config(files.load().expect("load client files")).expect("client config"))
}

pub fn fleet_client(addr: SocketAddr, files: &TlsFiles) -> FleetServiceClient<Channel> {
    let channel = tls::channel(
        &addr.to_string(),
        client_config(files),
        Duration::from_secs(5),
    )
    .expect("channel");
    FleetServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 4)
        .max_encoding_message_size(MAX_MESSAGE_BYTES * 4)
}

pub fn agent_client(addr: SocketAddr, files: &TlsFiles) -> AgentServiceClient<Channel> {
    let channel = tls::channel(
        &addr.to_string(),
        client_config(files),
        Duration::from_secs(5),
    )
    .expect("channel");
    // Bigger than the server's limit on purpose: tests send oversized messages.
    AgentServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES * 4)
        .max_encoding_message_size(MAX_MESSAGE_BYTES * 4)
}

/// How long [`until`] and the agent's [`agent::Events::wait_for`] wait: generous, for a loaded
/// 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a synchronous condition until it gives a value, or panics with `what` after
/// [`DEADLINE`]: [`eventually`] for conditions that need no `.await`.
pub async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    eventually(DEADLINE, what, || std::future::ready(f())).await
}
