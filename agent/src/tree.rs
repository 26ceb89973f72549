//! A `run` service's whole process tree, not only its main process. The agent makes itself a
//! child subreaper, so what a service leaves behind (a child whose parent died, a `setsid`
//! daemon) is re-parented to the agent rather than to PID 1; the service's processes are found
//! by its process group (its main process leads one) and by a mark in their environment that
//! every descendant inherits, even one that left the group or the session. Killing the tree
//! signals both; reaping waits only for zombies the tree owns, never for a child some other part
//! of the agent (tokio's `Child`) is waiting for.
//!
//! Limits: a descendant that clears its environment *and* leaves the process group is not
//! found; a re-parented process that dies before the agent ever saw it alive (no mark can be
//! read from a zombie) stays a zombie until the agent exits.

use std::{collections::BTreeSet, time::Duration};

use rustix::process::{Pid, Signal, WaitOptions};

/// The environment variable that marks a service's processes.
pub const MARK_VAR: &str = "AUTOHEAL_SERVICE_TREE";

/// Makes the agent the reaper of its services' orphans (`PR_SET_CHILD_SUBREAPER`), so they are
/// re-parented to it and can be found, killed and reaped.
pub fn become_subreaper() -> std::io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(Into::into)
}

/// One process as /proc shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    zombie: bool,
    ppid: i32,
    pgrp: i32,
}

fn stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// `pid (comm) S ppid pgrp …`; comm may hold spaces and parentheses, so fields start after the
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat {
        zombie: state == "Z" || state == "X",
        ppid,
        pgrp,
    })
}

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The processes of one `run` service.
#[derive(Debug)]
pub struct Tree {
    /// `MARK_VAR=<value>\0` as it appears in /proc/<pid>/environ.
    needle: Vec<u8>,
    value: String,
    /// The main process (it leads the group); tokio's `Child` reaps it, we never do.
    leader: Option<i32>,
    /// Every process seen with the mark or in the group, so its zombie can be reaped.
    known: BTreeSet<i32>,
    /// Whether the main process's group was last seen to be ours (see [`Tree::members`]).
    group_ours: bool,
    me: i32,
}

impl Tree {
    pub fn new(service: &str) -> Self {
        let me = rustix::process::getpid().as_raw_nonzero().get();
        let value = format!("{service}:{me}:{:016x}", rand::random::<u64>());
        Self {
            needle: format!("{MARK_VAR}={value}\0").into_bytes(),
            value,
            leader: None,
            known: BTreeSet::new(),
            group_ours: false,
            me,
        }
    }

    /// The mark to put in the main process's environment.
    pub fn mark(&self) -> (&'static str, &str) {
        (MARK_VAR, &self.value)
    }

    /// A new main process (group leader) was spawned.
    pub fn set_leader(&mut self, pid: Option<u32>) {
        self.leader = pid.and_then(|p| i32::try_from(p).ok());
    }

    fn marked(&self, pid: i32) -> bool {
        std::fs::read(format!("/proc/{pid}/environ"))
            .is_ok_and(|env| env.windows(self.needle.len()).any(|w| w == self.needle))
    }

    /// The live processes of the tree other than the main process; remembers them. The main
    /// process's group counts only while it is provably ours (the main process, or one process
    /// in the group, carries our mark): once the group is empty its id may be reused by an
    /// unrelated group, which must never be signalled.
    pub fn members(&mut self) -> Vec<i32> {
        let mut live = Vec::new();
        let mut group = Vec::new();
        let mut marked_in_group = false;
        for pid in pids() {
            if pid == self.me || Some(pid) == self.leader {
                continue;
            }
            let Some(st) = stat(pid) else { continue };
            if st.zombie {
                continue;
            }
            let marked = self.marked(pid);
            if self.leader.is_some_and(|l| st.pgrp == l) {
                marked_in_group |= marked;
                group.push(pid);
            } else if marked {
                live.push(pid);
            }
        }
        self.group_ours = marked_in_group || self.leader.is_some_and(|l| self.marked(l));
        if self.group_ours {
            live.extend(group);
        }
        for pid in &live {
            self.known.insert(*pid);
        }
        live
    }

    /// Sends `sig` to the main process's group and to every member found.
    fn signal_all(&mut self, sig: Signal) -> usize {
        let members = self.members();
        if self.group_ours
            && let Some(l) = self.leader.and_then(Pid::from_raw)
        {
            let _ = rustix::process::kill_process_group(l, sig);
        }
        for pid in &members {
            if let Some(p) = Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(p, sig);
            }
        }
        members.len()
    }

    /// Stops what is left of the tree once its main process is gone or stopped: SIGTERM (and
    /// SIGCONT), SIGKILL to whatever is still alive after `grace`, then reaps.
    pub async fn stop(&mut self, grace: Duration) {
        if self.signal_all(Signal::TERM) > 0 {
            self.signal_all(Signal::CONT);
            let deadline = tokio::time::Instant::now() + grace;
            while tokio::time::Instant::now() < deadline && !self.members().is_empty() {
                self.reap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let left = self.signal_all(Signal::KILL);
            if left > 0 {
                tracing::warn!(
                    left,
                    ?grace,
                    "service processes did not stop in time; killed"
                );
            }
            // SIGKILL is not instant: give the kernel a moment before reaping.
            for _ in 0..50 {
                self.reap();
                if self.members().is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.reap();
    }

    /// Waits for every zombie the tree owns that was re-parented to the agent (a child of ours
    /// that tokio did not spawn): a known member, or one of the main process's group.
    pub fn reap(&mut self) {
        for pid in pids() {
            if Some(pid) == self.leader {
                continue;
            }
            let Some(st) = stat(pid) else {
                self.known.remove(&pid);
                continue;
            };
            let ours = self.known.contains(&pid) || self.leader.is_some_and(|l| st.pgrp == l);
            if st.zombie && st.ppid == self.me && ours {
                if let Some(p) = Pid::from_raw(pid) {
                    let _ = rustix::process::waitpid(Some(p), WaitOptions::NOHANG);
                }
                self.known.remove(&pid);
            }
        }
        self.known
            .retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_start_after_the_last_parenthesis() {
        let st = parse_stat("42 (a (weird) name) Z 1 40 40 0 -1").expect("parses");
        assert_eq!(
            st,
            Stat {
                zombie: true,
                ppid: 1,
                pgrp: 40
            }
        );
        assert_eq!(parse_stat("garbage"), None);
    }
}
