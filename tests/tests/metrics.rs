//! `/metrics` on the real coordinator binary and a real agent (in-process, real child processes)
//! connected to it over mTLS: scraped over plain HTTP, checked for the expected series and
//! plausible values, and linted with `promtool check metrics` (Debian package `prometheus`).

use std::{
    io::Write as _,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use autoheal_tests::{Coordinator, Pki, agent::start_agent, eventually, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(90);

/// A service that's always healthy, checked often, and the agent's metrics endpoint.
const AGENT_SECTIONS: &str = r#"
[metrics]
listen = "127.0.0.1:0"

[services.idle]
run = ["sleep", "3600"]
stop_timeout = "2s"
[[services.idle.checks]]
name = "alive"
kind = "exec"
command = ["true"]
interval = "300ms"
timeout = "250ms"
"#;

/// Status code and body of one plain HTTP/1.1 request.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut answer = String::new();
    tokio::time::timeout(WAIT, tcp.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a full response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    (status, body.to_owned())
}

async fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `promtool check metrics` with `text` on stdin: parses and lints (HELP on every family,
/// counter naming, units). A missing promtool fails the test: it is part of the check.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): install the Debian package `prometheus` \
                 (scripts/setup.sh does: apt-get install prometheus)"
            )
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool check metrics refused the {what} metrics ({}):\n{}{}\n--- scraped ---\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_and_agent_metrics_are_served_plausible_and_pass_promtool() {
    let pki = Pki::new();
    let metrics_addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let coordinator = Coordinator::start_with(
        &pki,
        &format!("metrics_listen = \"{metrics_addr}\""),
        "127.0.0.1:0",
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let (agent, _shutdown) = start_agent(dir.path(), &pki, &coordinator.endpoint(), AGENT_SECTIONS);
    let agent_addr = agent.metrics_addr.expect("the agent serves metrics");

    // Something the handshake must refuse: plain text on the mTLS port.
    let mut plain = tokio::net::TcpStream::connect(coordinator.addr)
        .await
        .expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut sink)).await;

    let coordinator_text = eventually(
        WAIT,
        "the coordinator to count one connected agent, its heartbeats and the refused handshake",
        || async {
            let text = scrape(metrics_addr).await;
            let ready = sample(&text, "autoheal_agents_connected") == Some(1.0)
                && sample(&text, "autoheal_heartbeats_received_total").unwrap_or(0.0) >= 1.0
                && sample(
                    &text,
                    "autoheal_fleet_events_total{kind=\"agent-connected\"}",
                )
                .unwrap_or(0.0)
                    >= 1.0
                && sample(
                    &text,
                    "autoheal_tls_handshakes_refused_total{reason=\"refused\"}",
                )
                .unwrap_or(0.0)
                    >= 1.0;
            ready.then_some(text)
        },
    )
    .await;
    let t = &coordinator_text;
    assert!(
        sample(t, "autoheal_agent_streams_opened_total").unwrap_or(0.0) >= 1.0,
        "{t}"
    );
    assert!(
        t.lines()
            .any(|l| l.starts_with("autoheal_agent_events_received_total{kind=")),
        "the agent's state changes arrive as events: {t}"
    );
    // One coordinator on the embedded store leads, with a real fencing token.
    assert_eq!(sample(t, "autoheal_leader"), Some(1.0), "{t}");
    assert!(
        sample(t, "autoheal_fencing_token").unwrap_or(0.0) >= 1.0,
        "{t}"
    );
    // Without [aws] nothing is decided, but the known series are there at zero; AWS calls,
    // guardrail holds and journal phases appear with their first occurrence.
    assert_eq!(
        sample(t, "autoheal_agent_events_duplicate_total"),
        Some(0.0),
        "{t}"
    );
    for kind in ["act", "would-act", "hold", "alert"] {
        assert_eq!(
            sample(t, &format!("autoheal_decisions_total{{kind=\"{kind}\"}}")),
            Some(0.0),
            "{t}"
        );
    }
    promtool_check("coordinator", t);

    let agent_text = eventually(
        WAIT,
        "the agent to count passing checks, a healthy service and a connected reporter",
        || async {
            let text = scrape(agent_addr).await;
            let ready = sample(
                &text,
                "autoheal_agent_checks_total{service=\"idle\",check=\"alive\",result=\"success\"}",
            )
            .unwrap_or(0.0)
                >= 2.0
                && sample(
                    &text,
                    "autoheal_agent_service_state{service=\"idle\",state=\"healthy\"}",
                ) == Some(1.0)
                && sample(&text, "autoheal_agent_reporter_connected") == Some(1.0);
            ready.then_some(text)
        },
    )
    .await;
    let t = &agent_text;
    assert_eq!(
        sample(
            t,
            "autoheal_agent_checks_total{service=\"idle\",check=\"alive\",result=\"failure\"}"
        ),
        Some(0.0),
        "{t}"
    );
    assert!(
        sample(
            t,
            "autoheal_agent_check_duration_seconds_count{service=\"idle\",check=\"alive\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{t}"
    );
    assert_eq!(
        sample(
            t,
            "autoheal_agent_restarts_total{service=\"idle\",outcome=\"failed\"}"
        ),
        Some(0.0),
        "{t}"
    );
    assert_eq!(
        sample(t, "autoheal_agent_events_dropped_total"),
        Some(0.0),
        "{t}"
    );
    promtool_check("agent", t);

    // Nothing else is served on either port.
    for addr in [metrics_addr, agent_addr] {
        let (status, _) = http_get(addr, "/").await;
        assert_eq!(status, 404, "GET / on {addr}");
    }
    assert!(agent.stop(Duration::from_secs(30)).await);
}
