//! A service's process side: performs restarts and watches the main process so an exit is seen
//! at once, not at the next check: a child we own is awaited directly; a systemd unit's MainPID
//! or a pidfile's pid is found by polling every 250 ms and then held as a pidfd, which wakes us
//! the moment it exits (polling alone is the fallback where pidfd_open is refused). A `run`
//! service's whole tree ([`Tree`]) is stopped when its main process exits, before a restart
//! and on stop; a restart command's daemons are reaped.

use std::{path::Path, process::Stdio, time::Duration};

use tokio::{
    net::unix::pipe,
    process::{Child, Command},
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Action,
    probe::{self, pid_alive, read_pidfile},
    tree::Tree,
};

const WATCH_PERIOD: Duration = Duration::from_millis(250);

/// Ok(pid of the new main process, if known) or Err(why the action failed).
pub type RestartReply = Result<Option<u32>, String>;

#[derive(Debug)]
pub enum ProcessCommand {
    Restart {
        reply: oneshot::Sender<RestartReply>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    Up { pid: u32 },
    Down { pid: Option<u32>, detail: String },
}

#[derive(Debug)]
pub struct ProcessTask {
    pub service: String,
    pub action: Action,
    pub action_timeout: Duration,
    pub commands: mpsc::Receiver<ProcessCommand>,
    pub liveness: mpsc::Sender<Liveness>,
}

impl ProcessTask {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut child: Option<Child> = None;
        // The pid being watched (unit MainPID, pidfile), with whether it was last seen alive.
        let mut watched: Option<(u32, bool)> = None;
        let mut tick = tokio::time::interval(WATCH_PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tree = Tree::new(&self.service);
        // A child of the tree died (or was re-parented to us and died): reap it.
        let mut sigchld = None;
        // The watched pid and its pidfd.
        let mut exit: Option<(u32, pipe::Receiver)> = None;
        if matches!(self.action, Action::Command { .. }) {
            // A restart command's daemons are re-parented to us (we are a subreaper): reap them.
            sigchld = signal(SignalKind::child()).ok();
        }
        if let Action::Run { .. } = &self.action {
            sigchld = signal(SignalKind::child())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot watch SIGCHLD; orphans are reaped at restarts only"))
                .ok();
            match self.spawn(&mut tree) {
                Ok(c) => {
                    let pid = c.id();
                    child = Some(c);
                    if let Some(pid) = pid {
                        self.tell(Liveness::Up { pid }).await;
                    }
                }
                Err(detail) => self.tell(Liveness::Down { pid: None, detail }).await,
            }
        }
        loop {
            follow(&watched, &mut exit);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                cmd = self.commands.recv() => match cmd {
                    None => break,
                    Some(ProcessCommand::Restart { reply }) => {
                        let result = self.restart(&mut child, &mut tree).await;
                        if matches!(self.action, Action::Command { .. }) {
                            // What the command left running, remembered while it is alive.
                            tree.members();
                        }
                        if let Ok(Some(pid)) = result {
                            watched = Some((pid, true));
                        } else {
                            watched = None;
                        }
                        let _ = reply.send(result);
                    }
                },
                status = wait(&mut child) => {
                    let pid = child.as_ref().and_then(Child::id);
                    child = None;
                    let detail = match status {
                        Ok(s) => format!("main process exited ({s})"),
                        Err(e) => format!("main process lost: {e}"),
                    };
                    self.tell(Liveness::Down { pid, detail }).await;
                    // The service is its main process: what it leaves behind goes with it.
                    if let Action::Run { stop_timeout, .. } = &self.action {
                        tree.stop(*stop_timeout).await;
                    }
                }
                Some(()) = child_signal(&mut sigchld) => {
                    tree.members();
                    tree.reap();
                }
                () = exited(&exit) => {
                    exit = None;
                    if let Some((pid, true)) = watched {
                        watched = Some((pid, false));
                        self.tell(Liveness::Down {
                            pid: Some(pid),
                            detail: format!("main process {pid} exited"),
                        })
                        .await;
                    }
                }
                _ = tick.tick(), if !matches!(self.action, Action::Run { .. } | Action::None) => {
                    self.watch(&mut watched).await;
                }
            }
        }
        if let Action::Run { stop_timeout, .. } = &self.action {
            if let Some(c) = child.as_mut() {
                stop(c, *stop_timeout).await;
            }
            tree.stop(*stop_timeout).await;
        }
    }

    async fn tell(&self, l: Liveness) {
        let _ = self.liveness.send(l).await;
    }

    fn spawn(&self, tree: &mut Tree) -> Result<Child, String> {
        let Action::Run { argv, dir, .. } = &self.action else {
            return Err("not a run service".into());
        };
        let (var, mark) = tree.mark();
        let child = command(argv, dir)
            .map_err(|e| e.to_string())?
            .stdin(Stdio::null())
            .env(var, mark)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", argv[0]))?;
        tree.set_leader(child.id());
        Ok(child)
    }

    async fn restart(&self, child: &mut Option<Child>, tree: &mut Tree) -> RestartReply {
        match &self.action {
            Action::None => Err("no restart action configured".into()),
            Action::Run { stop_timeout, .. } => {
                if let Some(c) = child.as_mut() {
                    stop(c, *stop_timeout).await;
                }
                *child = None;
                tree.stop(*stop_timeout).await;
                let c = self.spawn(tree)?;
                let pid = c.id();
                *child = Some(c);
                Ok(pid)
            }
            Action::Unit(unit) => {
                let argv = ["systemctl".to_owned(), "restart".to_owned(), unit.clone()];
                run_to_completion(&argv, Path::new("/"), self.action_timeout).await?;
                Ok(main_pid(unit).await)
            }
            Action::Command { argv, dir, pidfile } => {
                run_to_completion_marked(argv, dir, self.action_timeout, Some(tree.mark())).await?;
                Ok(match pidfile {
                    Some(f) => read_pidfile(f).await.ok(),
                    None => None,
                })
            }
        }
    }

    /// Polls the watched pid; reports Down when it goes, Up when a new one appears.
    async fn watch(&self, watched: &mut Option<(u32, bool)>) {
        let current = match &self.action {
            Action::Unit(unit) => match *watched {
                Some((pid, true)) if pid_alive(pid).await => return,
                _ => main_pid(unit).await,
            },
            Action::Command {
                pidfile: Some(f), ..
            } => read_pidfile(f).await.ok(),
            _ => return,
        };
        let alive = match current {
            Some(pid) => pid_alive(pid).await,
            None => false,
        };
        match (*watched, current, alive) {
            (Some((old, true)), _, false) => {
                *watched = Some((old, false));
                self.tell(Liveness::Down {
                    pid: Some(old),
                    detail: format!("main process {old} exited"),
                })
                .await;
            }
            (Some((old, true)), Some(new), true) if new != old => {
                *watched = Some((new, true));
                self.tell(Liveness::Up { pid: new }).await;
            }
            (None | Some((_, false)), Some(new), true) => {
                *watched = Some((new, true));
                self.tell(Liveness::Up { pid: new }).await;
            }
            _ => {}
        }
    }
}

fn command(argv: &[String], dir: &Path) -> Result<Command, &'static str> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut c = Command::new(program);
    c.args(args)
        .current_dir(dir)
        // Its own process group, so a stop reaches the whole tree.
        .process_group(0)
        .kill_on_drop(true);
    Ok(c)
}

async fn child_signal(s: &mut Option<Signal>) -> Option<()> {
    match s {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn wait(child: &mut Option<Child>) -> std::io::Result<std::process::ExitStatus> {
    match child {
        Some(c) => c.wait().await,
        None => std::future::pending().await,
    }
}

/// SIGTERM (and SIGCONT, so a stopped process can act on it) to the group, then SIGKILL after
/// `grace`.
pub async fn stop(child: &mut Child, grace: Duration) {
    if let Some(pid) = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::CONT);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            // The leader is gone; make sure the rest of its group is too.
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            return;
        }
        tracing::warn!(
            pid = pid.as_raw_pid(),
            ?grace,
            "did not stop in time; killing"
        );
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
}

/// Keeps `exit` on the pidfd of the watched pid while it is alive (a new pid, a new pidfd).
fn follow(watched: &Option<(u32, bool)>, exit: &mut Option<(u32, pipe::Receiver)>) {
    let want = match watched {
        Some((pid, true)) => Some(*pid),
        _ => None,
    };
    if exit.as_ref().map(|(p, _)| *p) == want {
        return;
    }
    *exit = want.and_then(|pid| {
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::NONBLOCK).ok()?;
        // Not a pipe, but a pollable "special file" as tokio's safe constructor allows: epoll
        // reports a pidfd readable once its process exits, and only `readable()` is used.
        pipe::Receiver::from_owned_fd_unchecked(fd)
            .ok()
            .map(|fd| (pid, fd))
    });
}

/// A pidfd turns readable when its process exits.
async fn exited(exit: &Option<(u32, pipe::Receiver)>) {
    if let Some((_, fd)) = exit
        && fd.readable().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

async fn run_to_completion(argv: &[String], dir: &Path, timeout: Duration) -> Result<(), String> {
    run_to_completion_marked(argv, dir, timeout, None).await
}

/// Runs `argv`; `mark`, if any, goes into its environment (and so its daemons') for [`Tree`].
async fn run_to_completion_marked(
    argv: &[String],
    dir: &Path,
    timeout: Duration,
    mark: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut c = command(argv, dir).map_err(str::to_owned)?;
    if let Some((var, value)) = mark {
        c.env(var, value);
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(probe::cap(format!(
            "{} {}: {}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Err(e)) => Err(format!("{}: {e}", argv[0])),
        Err(_) => {
            if let Some(pid) = pid {
                probe::kill_group(pid);
            }
            Err(format!("{} timed out after {timeout:?}", argv.join(" ")))
        }
    }
}

async fn main_pid(unit: &str) -> Option<u32> {
    let out = Command::new("systemctl")
        .args(["show", "--property=MainPID", "--value", "--", unit])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|p| *p != 0)
}
