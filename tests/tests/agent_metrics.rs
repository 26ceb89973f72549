//! Metrics move when the instrumented things happen: probes, failed restarts, an escalation,
//! the service state; and they are served over `/metrics` when `[metrics] listen` is set.

use std::time::Duration;

use autoheal_proto::v1;
use autoheal_tests::{
    DEADLINE,
    agent::{Events, socket_section, start_agent_from_toml},
    free_port,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_string(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer
}

fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn failed_restarts_and_the_escalation_are_counted_and_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let toml = format!(
        r#"
{socket}
[metrics]
listen = "127.0.0.1:0"
[services.broken]
run = ["sh", "-c", "exit 1"]
[services.broken.restart]
max_attempts = 2
backoff_initial = "100ms"
backoff_max = "200ms"
verify_timeout = "2s"
[[services.broken.checks]]
name = "port"
kind = "tcp"
address = "127.0.0.1:{port}"
interval = "300ms"
timeout = "200ms"
"#,
        socket = socket_section(dir.path())
    );
    let (agent, _shutdown) = start_agent_from_toml(dir.path(), &toml);
    let addr = agent.metrics_addr.expect("metrics served");
    assert!(addr.ip().is_loopback());
    let before = scrape(addr).await;
    // Every service's series exist from the start, so a dashboard sees zeros, not gaps.
    assert!(
        sample(
            &before,
            "autoheal_agent_restarts_total{service=\"broken\",outcome=\"failed\"}"
        )
        .is_some(),
        "{before}"
    );

    let mut events = Events::new(&agent);
    events
        .wait_for("an escalation", |e| {
            matches!(e, v1::event::Kind::Escalated(_)).then_some(())
        })
        .await;
    // The state is published just after the event: poll the scrape, with a deadline.
    let after = {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = scrape(addr).await;
            let state = "autoheal_agent_service_state{service=\"broken\",state=\"escalated\"}";
            if sample(&text, state) == Some(1.0) {
                break text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "never scraped as escalated:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(
        sample(
            &after,
            "autoheal_agent_restarts_total{service=\"broken\",outcome=\"failed\"}"
        ),
        Some(2.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "autoheal_agent_escalations_total{service=\"broken\"}"
        ),
        Some(1.0)
    );
    let failures = sample(
        &after,
        "autoheal_agent_checks_total{service=\"broken\",check=\"port\",result=\"failure\"}",
    )
    .expect("failed probes counted");
    assert!(failures >= 1.0, "{after}");
    let timed = sample(
        &after,
        "autoheal_agent_check_duration_seconds_count{service=\"broken\",check=\"port\"}",
    )
    .expect("probe latency observed");
    assert!(timed >= failures, "{after}");
    assert_eq!(
        sample(
            &after,
            "autoheal_agent_service_state{service=\"broken\",state=\"healthy\"}"
        ),
        Some(0.0)
    );
    assert!(agent.stop(Duration::from_secs(30)).await);
}
