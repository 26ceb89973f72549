//! One probe of one check: what it saw, as `ok` plus a short, capped detail. Probes never panic
//! and never outlive their timeout (the caller bounds them; exec kills its process group).

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{io::AsyncReadExt, process::Command};

use crate::{
    config::{HttpProbe, Probe, ProcessMatch, parse_host_port},
    http,
};

/// Longest detail string sent to the coordinator.
pub const MAX_DETAIL: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
}

impl Outcome {
    pub fn ok(detail: impl Into<String>) -> Self {
        Self {
            ok: true,
            detail: cap(detail.into()),
        }
    }

    pub fn fail(detail: impl Into<String>) -> Self {
        Self {
            ok: false,
            detail: cap(detail.into()),
        }
    }
}

pub fn cap(mut s: String) -> String {
    if s.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Runs `probe` once, bounded by `timeout`.
pub async fn run(probe: &Probe, timeout: Duration) -> Outcome {
    match probe {
        // exec handles its own timeout so it can kill what it started.
        Probe::Exec {
            argv,
            dir,
            output_cap,
        } => exec(argv, dir, *output_cap, timeout).await,
        _ => match tokio::time::timeout(timeout, run_inner(probe, timeout)).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome::fail(format!("timed out after {timeout:?}")),
        },
    }
}

async fn run_inner(probe: &Probe, timeout: Duration) -> Outcome {
    match probe {
        Probe::Http(h) => http_probe(h, timeout).await,
        Probe::Tcp { address } => match tokio::net::TcpStream::connect(address.as_str()).await {
            Ok(_) => Outcome::ok("connected"),
            Err(e) => Outcome::fail(format!("connect: {e}")),
        },
        Probe::Grpc { address, service } => grpc::check(address, service, timeout).await,
        Probe::Exec { .. } => Outcome::fail("unreachable"),
        Probe::Process(m) => process(m).await,
        Probe::Systemd { unit } => systemd(unit).await,
        Probe::Disk {
            path,
            max_used_percent,
        } => disk(path, *max_used_percent),
        Probe::Memory { max_used_percent } => memory(*max_used_percent).await,
        Probe::Load { max_per_cpu } => load(*max_per_cpu).await,
    }
}

async fn http_probe(h: &HttpProbe, timeout: Duration) -> Outcome {
    let tls = h.tls.as_ref().map(|t| &t.config);
    match http::request_over(&h.host, h.port, &h.method, &h.path, &[], timeout, tls).await {
        Err(e) => Outcome::fail(e.to_string()),
        Ok(r) => {
            let (lo, hi) = h.status;
            if r.status < lo || r.status > hi {
                return Outcome::fail(format!("HTTP {} (expected {lo}-{hi})", r.status));
            }
            if let Some(needle) = &h.body_contains {
                let body = String::from_utf8_lossy(&r.body);
                if !body.contains(needle.as_str()) {
                    return Outcome::fail(format!("HTTP {}: body lacks {needle:?}", r.status));
                }
            }
            Outcome::ok(format!("HTTP {}", r.status))
        }
    }
}

async fn exec(argv: &[String], dir: &Path, output_cap: usize, timeout: Duration) -> Outcome {
    let Some((program, args)) = argv.split_first() else {
        return Outcome::fail("empty command");
    };
    let mut child = match Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::fail(format!("cannot start {program}: {e}")),
    };
    let pid = child.id();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = |pipe: Option<tokio::process::ChildStdout>| async move {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            // Keep draining past the cap so the child never blocks on a full pipe.
            let mut buf = [0u8; 4096];
            while let Ok(n) = p.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = output_cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        out
    };
    let read_err = |pipe: Option<tokio::process::ChildStderr>| async move {
        let mut out = Vec::new();
        if let Some(mut p) = pipe {
            let mut buf = [0u8; 4096];
            while let Ok(n) = p.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let room = output_cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        out
    };
    let all = async {
        let (status, out, err) = tokio::join!(child.wait(), read(stdout), read_err(stderr));
        (status, out, err)
    };
    match tokio::time::timeout(timeout, all).await {
        Ok((status, out, err)) => {
            let mut output = String::from_utf8_lossy(&out).trim().to_owned();
            let err = String::from_utf8_lossy(&err);
            if !err.trim().is_empty() {
                if !output.is_empty() {
                    output.push_str(" | ");
                }
                output.push_str(err.trim());
            }
            match status {
                Ok(s) if s.success() => Outcome::ok(format!("exit 0: {output}")),
                Ok(s) => Outcome::fail(format!("{s}: {output}")),
                Err(e) => Outcome::fail(format!("wait: {e}")),
            }
        }
        Err(_) => {
            if let Some(pid) = pid {
                kill_group(pid);
            }
            Outcome::fail(format!("timed out after {timeout:?}; killed"))
        }
    }
}

/// SIGKILL to a process group we created (`process_group(0)` makes the child its leader).
pub fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

/// Whether `pid` is a live (not zombie) process.
pub async fn pid_alive(pid: u32) -> bool {
    match tokio::fs::read_to_string(format!("/proc/{pid}/stat")).await {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub async fn read_pidfile(path: &Path) -> Result<u32, String> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| format!("pidfile {}: {e}", path.display()))?;
    text.trim()
        .parse::<u32>()
        .map_err(|_| format!("pidfile {}: {:?} is not a pid", path.display(), text.trim()))
}

async fn process(m: &ProcessMatch) -> Outcome {
    match m {
        ProcessMatch::Pidfile(path) => match read_pidfile(path).await {
            Err(e) => Outcome::fail(e),
            Ok(pid) if pid_alive(pid).await => Outcome::ok(format!("pid {pid} running")),
            Ok(pid) => Outcome::fail(format!(
                "pid {pid} (from {}) is not running",
                path.display()
            )),
        },
        ProcessMatch::Name(name) => {
            let Ok(mut dir) = tokio::fs::read_dir("/proc").await else {
                return Outcome::fail("cannot read /proc");
            };
            let mut found = Vec::new();
            while let Ok(Some(entry)) = dir.next_entry().await {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let comm = tokio::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .await
                    .unwrap_or_default();
                let matches = comm.trim_end() == name || {
                    // comm is cut at 15 bytes; compare argv[0]'s basename too.
                    let cmdline = tokio::fs::read(format!("/proc/{pid}/cmdline"))
                        .await
                        .unwrap_or_default();
                    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                    let argv0 = String::from_utf8_lossy(argv0);
                    argv0.rsplit('/').next() == Some(name.as_str())
                };
                if matches && pid_alive(pid).await {
                    found.push(pid);
                }
            }
            if found.is_empty() {
                Outcome::fail(format!("no running process named {name:?}"))
            } else {
                Outcome::ok(format!("{} process(es), pid {}", found.len(), found[0]))
            }
        }
    }
}

/// `systemctl is-active UNIT`: "active" (or "reloading") is healthy.
pub async fn systemd_state(unit: &str) -> Result<String, String> {
    let out = Command::new("systemctl")
        .args(["is-active", "--", unit])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn systemd(unit: &str) -> Outcome {
    match systemd_state(unit).await {
        Err(e) => Outcome::fail(e),
        Ok(s) if s == "active" || s == "reloading" => Outcome::ok(format!("{unit} {s}")),
        Ok(s) => Outcome::fail(format!("{unit} {s}")),
    }
}

fn disk(path: &Path, max: f64) -> Outcome {
    match rustix::fs::statvfs(path) {
        Err(e) => Outcome::fail(format!("statvfs {}: {e}", path.display())),
        Ok(s) => {
            // As df computes it: used / (used + available to unprivileged users).
            let used = s.f_blocks.saturating_sub(s.f_bfree);
            let denom = used + s.f_bavail;
            let pct = if denom == 0 {
                0.0
            } else {
                used as f64 * 100.0 / denom as f64
            };
            let detail = format!("{} {pct:.1}% used (max {max}%)", path.display());
            if pct > max {
                Outcome::fail(detail)
            } else {
                Outcome::ok(detail)
            }
        }
    }
}

async fn memory(max: f64) -> Outcome {
    let text = match tokio::fs::read_to_string("/proc/meminfo").await {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("/proc/meminfo: {e}")),
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
    };
    match (field("MemTotal:"), field("MemAvailable:")) {
        (Some(total), Some(avail)) if total > 0 => {
            let pct = (total.saturating_sub(avail)) as f64 * 100.0 / total as f64;
            let detail = format!("memory {pct:.1}% used (max {max}%)");
            if pct > max {
                Outcome::fail(detail)
            } else {
                Outcome::ok(detail)
            }
        }
        _ => Outcome::fail("/proc/meminfo lacks MemTotal/MemAvailable"),
    }
}

async fn load(max_per_cpu: f64) -> Outcome {
    let text = match tokio::fs::read_to_string("/proc/loadavg").await {
        Ok(t) => t,
        Err(e) => return Outcome::fail(format!("/proc/loadavg: {e}")),
    };
    let Some(load1) = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
    else {
        return Outcome::fail("/proc/loadavg is unreadable");
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_cpu = load1 / cpus;
    let detail = format!("load1 {load1:.2} = {per_cpu:.2}/cpu (max {max_per_cpu})");
    if per_cpu > max_per_cpu {
        Outcome::fail(detail)
    } else {
        Outcome::ok(detail)
    }
}

/// grpc.health.v1 over plain HTTP/2, with hand-written messages (two fields) instead of another
/// generated crate.
mod grpc {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        pub service: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        pub status: i32,
    }

    pub async fn check(address: &str, service: &str, timeout: Duration) -> Outcome {
        let (host, port) = match parse_host_port(address) {
            Ok(hp) => hp,
            Err(e) => return Outcome::fail(e),
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let endpoint =
            match tonic::transport::Endpoint::from_shared(format!("http://{host}:{port}")) {
                Ok(e) => e.connect_timeout(timeout).timeout(timeout),
                Err(e) => return Outcome::fail(format!("bad address: {e}")),
            };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => return Outcome::fail(format!("connect: {}", chain(&e))),
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(e) = grpc.ready().await {
            return Outcome::fail(format!("not ready: {e}"));
        }
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
        let request = tonic::Request::new(HealthCheckRequest {
            service: service.to_owned(),
        });
        let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
        match grpc.unary(request, path, codec).await {
            Ok(r) => match r.into_inner().status {
                1 => Outcome::ok("SERVING"),
                0 => Outcome::fail("UNKNOWN"),
                2 => Outcome::fail("NOT_SERVING"),
                3 => Outcome::fail("SERVICE_UNKNOWN"),
                s => Outcome::fail(format!("status {s}")),
            },
            Err(status) => Outcome::fail(format!("{:?}: {}", status.code(), status.message())),
        }
    }

    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        autoheal_common::error::DisplayChain(e).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[tokio::test]
    async fn exec_exit_code_and_capped_output() {
        let ok = run(
            &Probe::Exec {
                argv: vec!["sh".into(), "-c".into(), "echo hello; exit 0".into()],
                dir: "/".into(),
                output_cap: 3,
            },
            Duration::from_secs(20),
        )
        .await;
        assert_eq!(ok, Outcome::ok("exit 0: hel"));
        let bad = run(
            &Probe::Exec {
                argv: vec!["sh".into(), "-c".into(), "echo oops >&2; exit 3".into()],
                dir: "/".into(),
                output_cap: 100,
            },
            Duration::from_secs(20),
        )
        .await;
        assert!(!bad.ok);
        assert!(
            bad.detail.contains("3") && bad.detail.contains("oops"),
            "{}",
            bad.detail
        );
    }

    #[tokio::test]
    async fn exec_is_killed_on_timeout_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let start = Instant::now();
        let out = run(
            &Probe::Exec {
                argv: vec!["sh".into(), "-c".into(), script],
                dir: "/".into(),
                output_cap: 100,
            },
            Duration::from_millis(500),
        )
        .await;
        assert!(!out.ok && out.detail.contains("timed out"), "{out:?}");
        assert!(start.elapsed() < Duration::from_secs(60));
        let pid = read_pidfile(&pidfile).await.expect("grandchild pid");
        let deadline = Instant::now() + Duration::from_secs(30);
        while pid_alive(pid).await {
            assert!(
                Instant::now() < deadline,
                "grandchild {pid} survived the timeout"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn tcp_refused_and_accepted() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let up = run(
            &Probe::Tcp {
                address: addr.clone(),
            },
            Duration::from_secs(10),
        )
        .await;
        assert!(up.ok, "{up:?}");
        drop(listener);
        let down = run(&Probe::Tcp { address: addr }, Duration::from_secs(10)).await;
        assert!(!down.ok && down.detail.starts_with("connect"), "{down:?}");
    }

    #[tokio::test]
    async fn process_by_pidfile_and_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("p.pid");
        std::fs::write(&pidfile, format!("{}\n", std::process::id())).expect("write");
        let me = run(
            &Probe::Process(ProcessMatch::Pidfile(pidfile.clone())),
            Duration::from_secs(10),
        )
        .await;
        assert!(me.ok, "{me:?}");
        std::fs::write(&pidfile, "999999999\n").expect("write");
        let gone = run(
            &Probe::Process(ProcessMatch::Pidfile(pidfile)),
            Duration::from_secs(10),
        )
        .await;
        assert!(!gone.ok, "{gone:?}");
        let none = run(
            &Probe::Process(ProcessMatch::Name("no-such-process-autoheal".into())),
            Duration::from_secs(10),
        )
        .await;
        assert!(!none.ok);
    }

    #[tokio::test]
    async fn host_thresholds() {
        let disk_ok = run(
            &Probe::Disk {
                path: "/".into(),
                max_used_percent: 100.0,
            },
            Duration::from_secs(10),
        )
        .await;
        assert!(disk_ok.ok, "{disk_ok:?}");
        let mem_bad = run(
            &Probe::Memory {
                max_used_percent: 0.0001,
            },
            Duration::from_secs(10),
        )
        .await;
        assert!(
            !mem_bad.ok && mem_bad.detail.contains("% used"),
            "{mem_bad:?}"
        );
        let load_ok = run(&Probe::Load { max_per_cpu: 1e9 }, Duration::from_secs(10)).await;
        assert!(load_ok.ok, "{load_ok:?}");
    }

    #[tokio::test]
    async fn grpc_health_serving_and_not() {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("app", tonic_health::ServingStatus::Serving)
            .await;
        reporter
            .set_service_status("sick", tonic_health::ServingStatus::NotServing)
            .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let probe = |s: &str| Probe::Grpc {
            address: addr.clone(),
            service: s.into(),
        };
        let ok = run(&probe("app"), Duration::from_secs(20)).await;
        assert_eq!(ok, Outcome::ok("SERVING"));
        let sick = run(&probe("sick"), Duration::from_secs(20)).await;
        assert_eq!(sick, Outcome::fail("NOT_SERVING"));
    }
}
