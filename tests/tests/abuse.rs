//! The listener under abuse: sockets that never send a ClientHello must not lock out agents or
//! operators, whatever their number.

use std::time::{Duration, Instant};

use autoheal_tests::{Coordinator, Pki};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_beyond_the_handshake_permits_do_not_lock_anyone_out() {
    let pki = Pki::new();
    let coordinator = Coordinator::start(
        &pki,
        "[agents]\nheartbeat_interval = \"1s\"\nmax_concurrent_handshakes = 8\nhandshake_timeout = \"10s\"\n",
    );
    let port = coordinator.addr.port();
    // 300 idle connections from one address and 50 from another: far more than the 8 permits
    // (and more than one address may hold pending).
    let mut idle = Vec::new();
    for (source, n) in [("127.0.0.2", 300), ("127.0.0.3", 50)] {
        for _ in 0..n {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind(format!("{source}:0").parse().expect("addr"))
                .expect("bind source");
            if let Ok(stream) = socket
                .connect(format!("127.0.0.1:{port}").parse().expect("addr"))
                .await
            {
                idle.push(stream);
            }
        }
    }
    assert!(idle.len() > 8, "opened {} idle sockets", idle.len());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    let out = coordinator.ctl(&pki.viewer(), &["status"]);
    let took = asked.elapsed();
    assert!(
        out.status.success(),
        "an operator is served despite the idle sockets: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(1), "status took {took:?}");
    drop(idle);
}
