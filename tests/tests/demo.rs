//! The README's main command, run the way a newcomer would (but without a terminal): every scene
//! must pass and say so.

use std::{path::PathBuf, process::Command};

#[test]
fn the_local_fleet_demo_runs_every_scene() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    // The binaries are built by scripts/test.sh before the tests; building from inside
    // `cargo test` would wait on cargo's own lock.
    let coordinator = autoheal_tests::bin("autoheal-coordinator");
    autoheal_tests::bin("autoheal-agent");
    let bin_dir = coordinator.parent().expect("binary folder").to_owned();
    let out = Command::new("bash")
        .arg(root.join("scripts/demo.sh"))
        .current_dir(&root)
        .env("AUTOHEAL_DEMO_NONINTERACTIVE", "1")
        .env("AUTOHEAL_DEMO_SKIP_BUILD", "1")
        .env("AUTOHEAL_DEMO_BIN_DIR", &bin_dir)
        .output()
        .expect("run scripts/demo.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "healthy again as pid",
        "replacement requested from the auto scaling group",
        "=Unhealthy",
        "dependency brake",
        "no action taken during the outage",
        "brakes released",
        "demo: all scenes passed",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}
