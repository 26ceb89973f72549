//! `DescribeInstances` for many enrollments at once: requests arriving within a short window
//! share one call, at most [`MAX_IDS_PER_CALL`] ids each, so 1000 instances enrolling together
//! cost about ten calls rather than a thousand.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::enrollment::InstanceStatus;
use crate::ports::aws::AwsError;
use crate::ports::instances::{Instances, MAX_IDS_PER_CALL};

type Answer = Result<Option<InstanceStatus>, Arc<AwsError>>;

/// The handle enrollments ask through. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DescribeBatcher {
    tx: mpsc::Sender<(String, oneshot::Sender<Answer>)>,
}

/// The task that makes the calls.
pub struct BatchTask {
    rx: mpsc::Receiver<(String, oneshot::Sender<Answer>)>,
    instances: Arc<dyn Instances>,
    window: Duration,
}

impl std::fmt::Debug for BatchTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchTask")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DescribeError {
    #[error(transparent)]
    Aws(Arc<AwsError>),
    #[error("the DescribeInstances batcher stopped")]
    Stopped,
}

impl DescribeBatcher {
    /// `window`: how long a batch waits for one more request (at most five windows in all).
    pub fn new(instances: Arc<dyn Instances>, window: Duration) -> (Self, BatchTask) {
        let (tx, rx) = mpsc::channel(4 * MAX_IDS_PER_CALL);
        (
            Self { tx },
            BatchTask {
                rx,
                instances,
                window,
            },
        )
    }

    pub async fn describe(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceStatus>, DescribeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((instance_id.to_owned(), tx))
            .await
            .map_err(|_| DescribeError::Stopped)?;
        rx.await
            .map_err(|_| DescribeError::Stopped)?
            .map_err(DescribeError::Aws)
    }
}

impl BatchTask {
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                first = self.rx.recv() => match first { Some(f) => f, None => return },
            };
            let mut batch = vec![first];
            // Waits while requests keep coming (each resets an idle `window`), at most five
            // windows in all: a burst fills whole batches, a lone request waits one window.
            let cap = tokio::time::Instant::now() + self.window * 5;
            while batch.len() < MAX_IDS_PER_CALL {
                let idle = (tokio::time::Instant::now() + self.window).min(cap);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return,
                    next = self.rx.recv() => match next { Some(n) => batch.push(n), None => break },
                    () = tokio::time::sleep_until(idle) => break,
                }
            }
            let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            ids.sort();
            ids.dedup();
            let answer = self.instances.describe(&ids).await;
            match answer {
                Ok(statuses) => {
                    let by_id: HashMap<_, _> = statuses
                        .into_iter()
                        .map(|s| (s.instance_id.clone(), s))
                        .collect();
                    for (id, tx) in batch {
                        let _ = tx.send(Ok(by_id.get(&id).cloned()));
                    }
                }
                Err(e) => {
                    let e = Arc::new(e);
                    for (_, tx) in batch {
                        let _ = tx.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::model::enrollment::InstanceState;

    #[derive(Default)]
    struct Counting(AtomicUsize);

    #[tonic::async_trait]
    impl Instances for Counting {
        async fn describe(&self, ids: &[String]) -> Result<Vec<InstanceStatus>, AwsError> {
            assert!(ids.len() <= MAX_IDS_PER_CALL);
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(ids
                .iter()
                .filter(|id| id.as_str() != "i-unknown")
                .map(|id| InstanceStatus {
                    instance_id: id.clone(),
                    state: InstanceState::Running,
                    owner_id: None,
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn a_thousand_concurrent_lookups_take_ten_calls() {
        let counting = Arc::new(Counting::default());
        let (batcher, task) = DescribeBatcher::new(counting.clone(), Duration::from_millis(50));
        let stop = CancellationToken::new();
        tokio::spawn(task.run(stop.clone()));
        let lookups = (0..1000).map(|i| {
            let b = batcher.clone();
            async move { b.describe(&format!("i-{i:04}")).await }
        });
        let answers = futures::future::join_all(lookups).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Some(_)))));
        assert_eq!(counting.0.load(Ordering::SeqCst), 10);
        assert!(matches!(batcher.describe("i-unknown").await, Ok(None)));
        stop.cancel();
    }
}
