//! Benchmark 2: local healing latency. The same small HTTP service (python's http.server) under
//! autoheal-agent, monit (5 s cycle) and supervisord; kill -9 it again and again and time until
//! `GET /` answers 200 again. The three run side by side in the same window.

use std::{
    os::unix::fs::PermissionsExt,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    footprint::verdict,
    util::{self, CoordinatorProc, Pki, Rng, ms, percentile},
};

struct Supervised {
    name: &'static str,
    port: u16,
    child: Child,
}

impl Drop for Supervised {
    fn drop(&mut self) {
        // SIGTERM first: each stops its service; then make sure nothing is left behind (monit's
        // service is not its child, and a supervisor killed hard leaves orphans).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in util::find_pids(&["http.server", &self.port.to_string()]) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

pub struct Report {
    /// (name, p50 ms, p99 ms)
    pub rows: Vec<(&'static str, f64, f64)>,
}

pub async fn run(kills: usize) -> Result<Report> {
    println!(
        "\n== heal: kill -9 the supervised service {kills} times; time until GET / answers 200 =="
    );
    let py = util::python()?;
    let pki = Pki::new()?;
    let work = tempfile::tempdir()?;
    let dir = work.path();
    let coordinator = CoordinatorProc::start(&pki, dir, "127.0.0.1:0", "5s", "", "", &[])?;
    let serve = |port: u16| {
        vec![
            py.clone(),
            "-m".to_owned(),
            "http.server".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
        ]
    };

    // autoheal-agent: owns the process (`run`), restarts it as soon as it exits.
    let agent_port = util::free_port()?;
    let argv = serve(agent_port)
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let services = format!(
        r#"[services.web]
run = [{argv}]
stop_timeout = "1s"

[services.web.restart]
max_attempts = 1000
window = "1m"
backoff_initial = "100ms"
backoff_max = "1s"
verify_timeout = "10s"

[[services.web.checks]]
name = "http"
kind = "http"
url = "http://127.0.0.1:{agent_port}/"
interval = "1s"
timeout = "500ms"
failure_threshold = 2
"#
    );
    let agent_toml = dir.join("agent.toml");
    std::fs::write(
        &agent_toml,
        util::agent_config(
            &pki,
            util::AGENT_INSTANCES[0],
            coordinator.addr,
            &dir.join("agent.sock"),
            &services,
        ),
    )?;
    util::check_agent_config(&agent_toml)?;
    let (agent_name, agent_bin) = util::agent_builds()?.swap_remove(0);
    let agent = Supervised {
        name: agent_name,
        port: agent_port,
        child: Command::new(&agent_bin)
            .arg("--config")
            .arg(&agent_toml)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("agent.log"))?)
            .spawn()
            .context("spawn autoheal-agent")?,
    };

    // supervisord: autorestart=true; it restarts an exited program at once.
    let sup_port = util::free_port()?;
    let conf = format!(
        "[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\n[program:web]\ncommand={cmd}\nautorestart=true\nstartretries=1000\nstdout_logfile=NONE\nstderr_logfile=NONE\n",
        d = dir.display(),
        cmd = serve(sup_port).join(" "),
    );
    let sup_conf = dir.join("supervisord.conf");
    std::fs::write(&sup_conf, conf)?;
    let supervisord = Supervised {
        name: "supervisord",
        port: sup_port,
        child: Command::new("supervisord")
            .arg("-n")
            .arg("-c")
            .arg(&sup_conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("supervisord.stderr"))?)
            .spawn()
            .context("spawn supervisord (pip install supervisor; scripts/bench.sh does)")?,
    };

    // monit: `check process` with a pidfile, started by a start program; 5 s cycle.
    let monit_port = util::free_port()?;
    let pidfile = dir.join("web.pid");
    let start = format!(
        "/bin/sh -c '{cmd} >/dev/null 2>&1 & echo $! > {pid}'",
        cmd = serve(monit_port).join(" "),
        pid = pidfile.display()
    );
    let monitrc = format!(
        "set daemon 5\nset logfile {d}/monit.log\nset idfile {d}/monit.id\nset statefile {d}/monit.state\nset pidfile {d}/monit.pid\n\ncheck process web with pidfile {pid}\n  start program = \"{start}\"\n  stop program = \"/bin/sh -c 'kill $(cat {pid})'\"\n",
        d = dir.display(),
        pid = pidfile.display(),
    );
    let monitrc_path = dir.join("monitrc");
    std::fs::write(&monitrc_path, monitrc)?;
    std::fs::set_permissions(&monitrc_path, std::fs::Permissions::from_mode(0o600))?;
    let monit = Supervised {
        name: "monit 5.33",
        port: monit_port,
        child: Command::new("monit")
            .arg("-I")
            .arg("-c")
            .arg(&monitrc_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("monit.stderr"))?)
            .spawn()
            .context("spawn monit")?,
    };

    let mut tasks = Vec::new();
    for (i, s) in [&agent, &monit, &supervisord].into_iter().enumerate() {
        let (name, port) = (s.name, s.port);
        tasks.push(tokio::spawn(async move {
            let r = kill_loop(name, port, kills, 17 + i as u64).await;
            (name, r)
        }));
    }
    let mut rows = Vec::new();
    let mut results = Vec::new();
    for t in tasks {
        let (name, r) = t.await?;
        let lat = r.with_context(|| name.to_string())?;
        results.push((name, lat));
    }
    drop((agent, monit, supervisord, coordinator));
    println!(
        "{:<16} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "", "kills", "p50 ms", "p99 ms", "min ms", "max ms"
    );
    for (name, lat) in &results {
        let (p50, p99) = (percentile(lat, 50.0), percentile(lat, 99.0));
        println!(
            "{:<16} {:>6} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            name,
            lat.len(),
            p50,
            p99,
            percentile(lat, 0.0),
            percentile(lat, 100.0)
        );
        rows.push((*name, p50, p99));
    }
    let (a50, a99) = (rows[0].1, rows[0].2);
    let (m50, m99) = (rows[1].1, rows[1].2);
    let (s50, s99) = (rows[2].1, rows[2].2);
    println!(
        "ratio monit/agent: p50 {:.1}x, p99 {:.1}x faster (goal >= 5x: {}); supervisord/agent: p50 {:.2}, p99 {:.2}; agent p99 {:.0} ms (goal <= 1000 ms: {})",
        m50 / a50,
        m99 / a99,
        verdict(m99 / a99 >= 5.0),
        s50 / a50,
        s99 / a99,
        a99,
        verdict(a99 <= 1000.0)
    );
    Ok(Report { rows })
}

/// Kills the service on `port` `kills` times; returns each time-to-healthy in ms.
async fn kill_loop(name: &str, port: u16, kills: usize, seed: u64) -> Result<Vec<f64>> {
    let mut rng = Rng::new(seed);
    let port_s = port.to_string();
    let mut out = Vec::new();
    // First start: monit may need a whole cycle.
    wait_healthy(port, Duration::from_secs(30))
        .await
        .with_context(|| format!("{name}: service never came up"))?;
    for _ in 0..kills {
        // A phase uniform over monit's whole 5 s cycle (a fixed settle time would bias it).
        tokio::time::sleep(Duration::from_secs_f64(1.5 + 5.0 * rng.next_f64())).await;
        let pids = util::find_pids(&["http.server", &port_s]);
        if pids.len() != 1 {
            bail!("{name}: expected one service process on {port}, found {pids:?}");
        }
        let pid = pids[0].to_string();
        let status = Command::new("kill").args(["-9", &pid]).status()?;
        let t0 = Instant::now();
        anyhow::ensure!(status.success(), "kill -9 {pid} failed");
        // Wait until the old process is gone, so its last answers don't count.
        while util::find_pids(&["http.server", &port_s]).contains(&pids[0]) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        wait_healthy(port, Duration::from_secs(60))
            .await
            .with_context(|| format!("{name}: not healthy 60s after kill"))?;
        out.push(ms(t0.elapsed()));
    }
    Ok(out)
}

async fn wait_healthy(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if util::http_ok(port, Duration::from_millis(200)).await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("timed out")
}
