//! Fleet events are data, not logs: listed from the store after a restart and resumable with a
//! cursor across it, with no gap and no duplicate.

use autoheal_tests::{Coordinator, Pki, free_addr};

fn events(c: &Coordinator, pki: &Pki, after: u64) -> Vec<serde_json::Value> {
    let after = after.to_string();
    let out = c.ctl(
        &pki.operator(),
        &["--output", "json", "events", "--after", &after],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn cursors(events: &[serde_json::Value]) -> Vec<u64> {
    events.iter().filter_map(|e| e["cursor"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_and_resumable_across_a_restart() {
    let pki = Pki::new();
    let mut c = Coordinator::start_with(&pki, "", &free_addr(), &[]);
    for reason in ["first", "second"] {
        let out = c.ctl(&pki.operator(), &["pause", "--reason", reason]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = c.ctl(&pki.operator(), &["resume"]);
        assert!(out.status.success());
    }
    let before = events(&c, &pki, 0);
    let seen = cursors(&before);
    assert!(seen.len() >= 4, "{before:?}");
    let resume_from = seen[1];

    c.restart();
    // Kept across the restart: the same events, listed from the store.
    let after_restart = cursors(&events(&c, &pki, 0));
    for cursor in &seen {
        assert!(
            after_restart.contains(cursor),
            "event {cursor} lost: {after_restart:?}"
        );
    }
    // New events continue after the old ones.
    let out = c.ctl(&pki.operator(), &["pause", "--reason", "third"]);
    assert!(out.status.success());
    let resumed = cursors(&events(&c, &pki, resume_from));
    let expected_old: Vec<u64> = seen.iter().copied().filter(|c| *c > resume_from).collect();
    assert_eq!(
        &resumed[..expected_old.len()],
        &expected_old[..],
        "a client resuming after {resume_from} gets the rest of the old events first"
    );
    assert!(
        resumed.len() > expected_old.len(),
        "and then the new one: {resumed:?}"
    );
    let mut sorted = resumed.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, resumed, "increasing, no duplicate");
}
