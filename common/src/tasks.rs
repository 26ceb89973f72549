//! The one shutdown model: every long-lived task is spawned through [`Tasks`] with a name, and
//! [`Tasks::stop`] cancels them all and waits for them with a deadline, naming any that did not
//! end (those are aborted). Nothing long-lived is a bare `tokio::spawn` whose end nobody awaits.

use std::{future::Future, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// A group of named tasks sharing one cancellation token.
#[derive(Debug, Default)]
pub struct Tasks {
    token: CancellationToken,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

/// Tasks that had not ended by the deadline (and were aborted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("still running at the deadline: {}", .0.join(", "))]
pub struct Overrun(pub Vec<&'static str>);

impl Tasks {
    pub fn new() -> Self {
        Self::default()
    }

    /// The token the tasks watch: cancelled by [`Tasks::stop`].
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Spawns `task` in a span named `name`, tracked until [`Tasks::stop`].
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = tokio::spawn(task.instrument(tracing::info_span!("task", name)));
        self.running.push((name, handle));
    }

    /// Tracks a task spawned elsewhere.
    pub fn track(&mut self, name: &'static str, handle: JoinHandle<()>) {
        self.running.push((name, handle));
    }

    /// Names of the tasks not yet finished.
    pub fn running(&self) -> Vec<&'static str> {
        self.running
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(n, _)| *n)
            .collect()
    }

    /// Cancels every task and waits for all of them until `deadline`; those still running then
    /// are aborted and named in the error.
    pub async fn stop(self, deadline: Duration) -> Result<(), Overrun> {
        self.token.cancel();
        let until = tokio::time::Instant::now() + deadline;
        let mut late = Vec::new();
        for (name, mut handle) in self.running {
            match tokio::time::timeout_at(until, &mut handle).await {
                Ok(Ok(())) => {}
                Ok(Err(join)) if join.is_panic() => {
                    tracing::error!(task = name, "task panicked");
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    handle.abort();
                    late.push(name);
                }
            }
        }
        if late.is_empty() {
            Ok(())
        } else {
            Err(Overrun(late))
        }
    }

    /// Ends every task now, without letting it clean up.
    pub fn abort(self) {
        for (_, handle) in self.running {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_tasks_that_end_and_names_those_that_do_not() {
        let mut tasks = Tasks::new();
        let token = tasks.token();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tasks.spawn("polite", async move {
            token.cancelled().await;
            // Cleanup after the cancel still runs before stop returns.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        tasks.spawn("stubborn", std::future::pending());
        assert_eq!(tasks.running(), ["polite", "stubborn"]);
        let outcome = tasks.stop(Duration::from_secs(1)).await;
        assert_eq!(outcome, Err(Overrun(vec!["stubborn"])));
        assert!(
            done_rx.await.is_ok(),
            "the polite task finished its cleanup"
        );
    }

    #[tokio::test]
    async fn stop_is_ok_when_everything_ends() {
        let mut tasks = Tasks::new();
        let token = tasks.token();
        tasks.spawn("a", async move { token.cancelled().await });
        assert_eq!(tasks.stop(Duration::from_secs(5)).await, Ok(()));
    }
}
