//! The leader lease: a task that claims the lease through the [`Store`], renews it, and publishes
//! whether this coordinator leads.
//!
//! Safety rests on the store, not on this task: every journal write is fenced by the token, so a
//! coordinator that believes it leads a little too long still cannot write an intent, and does
//! not act. This task's job is to make that rare: it steps down as soon as a renew fails, and as
//! soon as the monotonic time since the last renew was *sent* reaches the TTL (a SIGSTOPped
//! process that wakes up finds its lease over before it tries anything).

use std::{fmt, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::ports::aws::Fence;
use crate::ports::store::Claim;
use crate::ports::store::LeaseClaim;
use crate::ports::store::LeaseRecord;
use crate::ports::store::SharedClock;
use crate::ports::store::Store;
use crate::ports::store::StoreError;

/// Whether this coordinator leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// Act, stamping `token` on every journal entry.
    Leader { token: u64 },
    /// Don't act; redirect agents to the leader, if known.
    Follower { leader_endpoint: Option<String> },
}

impl LeaderState {
    pub fn token(&self) -> Option<u64> {
        match self {
            LeaderState::Leader { token } => Some(*token),
            LeaderState::Follower { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Unique per replica; a restarted replica with the same owner reclaims its lease at once.
    pub owner: String,
    /// The address agents should be redirected to while this replica leads.
    pub endpoint: String,
    /// How long a lease lasts without renewal: the longest failover after a leader dies is
    /// `ttl + renew_interval`.
    pub ttl: Duration,
    /// How often the leader renews and followers try to claim. Under `ttl / 3`, so two renews
    /// can fail before the lease lapses.
    pub renew_interval: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LeaseSettingsError {
    #[error(
        "lease renew_interval ({renew_interval:?}) must be positive and under a third of ttl ({ttl:?})"
    )]
    RenewTooSlow {
        renew_interval: Duration,
        ttl: Duration,
    },
    #[error("lease owner must not be empty")]
    NoOwner,
}

enum Command {
    Fenced { token: u64 },
}

/// What the rest of the coordinator holds: the published state, a [`LeaseFence`] for AWS
/// calls, and a way to report a fenced write so the lease steps down at once rather than at its
/// next renew.
#[derive(Debug, Clone)]
pub struct LeaseHandle {
    state: watch::Receiver<LeaderState>,
    act_until: watch::Receiver<Option<(u64, Instant)>>,
    commands: mpsc::Sender<Command>,
}

/// The fence of one term: until when (monotonic) the holder of `token` may act. Each renew moves
/// the deadline on; a renew that fails, a lease that lapsed (a process frozen past it), a lost
/// lease or the lease task's end take it away.
#[derive(Debug, Clone)]
pub struct LeaseFence {
    token: u64,
    act_until: watch::Receiver<Option<(u64, Instant)>>,
}

impl Fence for LeaseFence {
    fn act_deadline(&self) -> Option<Instant> {
        if self.act_until.has_changed().is_err() {
            return None;
        }
        match *self.act_until.borrow() {
            Some((token, until)) if token == self.token && Instant::now() < until => Some(until),
            _ => None,
        }
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Fenced { token } => write!(f, "Fenced({token})"),
        }
    }
}

impl LeaseHandle {
    /// The state now. A follower once the lease task has ended (shut down or panicked), whatever
    /// it last published.
    pub fn current(&self) -> LeaderState {
        if self.state.has_changed().is_err() {
            return LeaderState::Follower {
                leader_endpoint: None,
            };
        }
        self.state.borrow().clone()
    }

    /// A receiver to watch changes (health reporting, Hello redirects, the controller). Its
    /// `changed()` fails once the lease task has ended: treat that as following.
    pub fn watch(&self) -> watch::Receiver<LeaderState> {
        self.state.clone()
    }

    /// The fence destructive AWS calls of the term with `token` check before every attempt.
    pub fn fence(&self, token: u64) -> LeaseFence {
        LeaseFence {
            token,
            act_until: self.act_until.clone(),
        }
    }

    /// Tells the lease that a write with `token` was fenced: if that is its token, it steps down
    /// now.
    pub async fn report_fenced(&self, token: u64) {
        // The task has ended only at shutdown, when leading no longer matters.
        let _ = self.commands.send(Command::Fenced { token }).await;
    }
}

/// The lease task. See the module docs.
#[derive(Debug)]
pub struct Lease {
    store: Arc<dyn Store>,
    settings: LeaseSettings,
    clock: SharedClock,
    state: watch::Sender<LeaderState>,
    act_until: watch::Sender<Option<(u64, Instant)>>,
    commands: mpsc::Receiver<Command>,
}

impl Lease {
    /// A follower until `run` wins the lease.
    pub fn new(
        store: Arc<dyn Store>,
        settings: LeaseSettings,
        clock: SharedClock,
    ) -> Result<(Self, LeaseHandle), LeaseSettingsError> {
        if settings.owner.is_empty() {
            return Err(LeaseSettingsError::NoOwner);
        }
        if settings.renew_interval.is_zero() || settings.renew_interval * 3 >= settings.ttl {
            return Err(LeaseSettingsError::RenewTooSlow {
                renew_interval: settings.renew_interval,
                ttl: settings.ttl,
            });
        }
        let (state_tx, state_rx) = watch::channel(LeaderState::Follower {
            leader_endpoint: None,
        });
        let (act_until_tx, act_until_rx) = watch::channel(None);
        let (commands_tx, commands_rx) = mpsc::channel(8);
        Ok((
            Self {
                store,
                settings,
                clock,
                state: state_tx,
                act_until: act_until_tx,
                commands: commands_rx,
            },
            LeaseHandle {
                state: state_rx,
                act_until: act_until_rx,
                commands: commands_tx,
            },
        ))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let span = tracing::info_span!("lease", owner = %self.settings.owner);
        self.run_in_span(shutdown).instrument(span).await;
    }

    async fn run_in_span(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.renew_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The lease this replica holds, and until when (monotonic) it may believe so.
        let mut held: Option<(LeaseRecord, Instant)> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(command) = self.commands.recv() => {
                    let Command::Fenced { token } = command;
                    if held.as_ref().is_some_and(|(l, _)| l.fencing_token == token) {
                        tracing::warn!(token, "a write was fenced; stepping down");
                        held = None;
                        self.act_until.send_replace(None);
                        self.publish(LeaderState::Follower { leader_endpoint: None });
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            held = match held.take() {
                Some((lease, valid_until)) => self.renew(lease, valid_until).await,
                None => None,
            };
            if held.is_none() {
                held = self.claim().await;
            }
            let act_until = held
                .as_ref()
                .map(|(lease, until)| (lease.fencing_token, *until - self.skew()));
            self.act_until.send_replace(act_until);
        }
        self.act_until.send_replace(None);
        if let Some((lease, _)) = held {
            self.publish(LeaderState::Follower {
                leader_endpoint: None,
            });
            // Hand over without making the others wait out the TTL.
            match tokio::time::timeout(
                self.settings.renew_interval,
                self.store.release_lease(&lease),
            )
            .await
            {
                Ok(Ok(())) => tracing::info!(token = lease.fencing_token, "released the lease"),
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, "cannot release the lease; it expires on its own")
                }
                Err(_) => tracing::warn!("releasing the lease timed out; it expires on its own"),
            }
        }
    }

    async fn renew(
        &self,
        lease: LeaseRecord,
        valid_until: Instant,
    ) -> Option<(LeaseRecord, Instant)> {
        let sent = self.clock.now();
        let token = lease.fencing_token;
        if sent >= valid_until {
            tracing::warn!(
                token,
                "lease lapsed before it could be renewed (was this process paused?); stepping down"
            );
            self.publish(LeaderState::Follower {
                leader_endpoint: None,
            });
            return None;
        }
        let outcome = tokio::time::timeout(
            valid_until - sent,
            self.store
                .renew_lease(&lease, self.settings.ttl, self.clock.wall()),
        )
        .await;
        let error = match outcome {
            // Measured from when the renew was sent: the store's expiry starts then too.
            Ok(Ok(renewed)) => return Some((renewed, sent + self.settings.ttl)),
            Ok(Err(error)) => error,
            Err(_) => {
                tracing::warn!(
                    token,
                    "lease renew got no answer before the lease lapsed; stepping down"
                );
                self.publish(LeaderState::Follower {
                    leader_endpoint: None,
                });
                return None;
            }
        };
        match &error {
            StoreError::Fenced { .. } => {
                tracing::warn!(token, error = %error, "lost the lease; stepping down")
            }
            _ => {
                tracing::warn!(
                    token,
                    error = &error as &dyn std::error::Error,
                    "cannot renew the lease; stepping down"
                )
            }
        }
        self.publish(LeaderState::Follower {
            leader_endpoint: None,
        });
        None
    }

    async fn claim(&self) -> Option<(LeaseRecord, Instant)> {
        let sent = self.clock.now();
        let claim = LeaseClaim {
            owner: self.settings.owner.clone(),
            endpoint: self.settings.endpoint.clone(),
            ttl: self.settings.ttl,
        };
        let outcome = tokio::time::timeout(
            self.settings.renew_interval,
            self.store.claim_lease(&claim, self.clock.wall()),
        )
        .await;
        match outcome {
            Ok(Ok(Claim::Won(lease))) => {
                tracing::info!(token = lease.fencing_token, "took the lease; leading");
                self.publish(LeaderState::Leader {
                    token: lease.fencing_token,
                });
                Some((lease, sent + self.settings.ttl))
            }
            Ok(Ok(Claim::Held(holder))) => {
                self.publish(LeaderState::Follower {
                    leader_endpoint: holder.map(|l| l.endpoint),
                });
                None
            }
            Ok(Err(error)) => {
                tracing::warn!(
                    error = &error as &dyn std::error::Error,
                    "cannot read or claim the lease"
                );
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?self.settings.renew_interval, "lease claim got no answer");
                None
            }
        }
    }

    /// How much earlier than the lease's own end (as this replica measures it) it stops acting:
    /// room for the clocks of the replica that takes over, which judges expiry by wall time.
    fn skew(&self) -> Duration {
        self.settings.ttl / 5
    }

    fn publish(&self, state: LeaderState) {
        self.state.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            *current = state;
            true
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::store::EmbeddedStore;
    use crate::ports::store::system_clock;

    fn settings(owner: &str) -> LeaseSettings {
        LeaseSettings {
            owner: owner.into(),
            endpoint: format!("https://{owner}:7443"),
            ttl: Duration::from_secs(3),
            renew_interval: Duration::from_millis(200),
        }
    }

    /// Waits until the lease leads with a token above `after`.
    async fn leads(handle: &LeaseHandle, after: u64) -> u64 {
        let mut watch = handle.watch();
        let state = tokio::time::timeout(
            Duration::from_secs(30),
            watch.wait_for(|s| s.token().is_some_and(|t| t > after)),
        )
        .await
        .expect("leads in time")
        .expect("lease task running")
        .clone();
        state.token().expect("leader")
    }

    #[test]
    fn renewing_slower_than_a_third_of_the_ttl_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        let slow = LeaseSettings {
            renew_interval: Duration::from_secs(1),
            ..settings("a")
        };
        let error = Lease::new(store.clone(), slow, system_clock()).expect_err("too slow");
        assert!(matches!(error, LeaseSettingsError::RenewTooSlow { .. }));
        let nameless = LeaseSettings {
            owner: String::new(),
            ..settings("a")
        };
        assert_eq!(
            Lease::new(store, nameless, system_clock()).expect_err("no owner"),
            LeaseSettingsError::NoOwner
        );
    }

    #[tokio::test]
    async fn the_embedded_store_leads_at_once_and_each_term_gets_a_higher_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        let (lease, handle) =
            Lease::new(store.clone(), settings("a"), system_clock()).expect("settings");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lease.run(shutdown.clone()));
        let first = leads(&handle, 0).await;

        // A fenced write reported by the coordinator ends the term now; the next claim starts a
        // new one.
        handle.report_fenced(first).await;
        let second = leads(&handle, first).await;
        assert!(second > first, "{second} after {first}");

        shutdown.cancel();
        task.await.expect("lease task");
        assert_eq!(
            handle.current(),
            LeaderState::Follower {
                leader_endpoint: None
            },
            "a stopped lease task is a follower"
        );
        let released = store.lease().await.expect("lease").expect("stored");
        assert!(
            released.expires_at <= std::time::SystemTime::now(),
            "released"
        );

        // A restart of the same replica takes over at once, with a new token.
        drop(store);
        let store = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
        let (lease, handle) = Lease::new(store, settings("a"), system_clock()).expect("settings");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(lease.run(shutdown.clone()));
        let third = leads(&handle, second).await;
        assert!(third > second, "{third} after {second}");
        shutdown.cancel();
        task.await.expect("lease task");
    }
}
