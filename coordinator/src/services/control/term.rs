//! A leader's term: take the lease's fencing token, restore the remediation book, reconcile,
//! then one pass per interval — refresh the inventory, decide, tell, act.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::SystemTime,
};

use autoheal_policy as policy;
use tokio_util::sync::CancellationToken;

use crate::model::events::EventKind;
use crate::model::journal::Entry;
use crate::model::journal::Phase;
use crate::services::lease::LeaderState;

use super::{
    execute::{step_of, target_groups},
    *,
};

impl Controller {
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                Some(command) = self.commands.recv() => {
                    match command {
                        Command::Drain { instance, reason, by, reply } => {
                            let result = self.drain(&instance, &reason, &by).await;
                            let _ = reply.send(result);
                        }
                    }
                    continue;
                }
                _ = tick.tick() => {}
            }
            let fresh = self.refresh_inventory().await;
            match self.lease.current() {
                LeaderState::Leader { token } => {
                    if self.token != Some(token) && !self.begin_term(token).await {
                        continue;
                    }
                }
                LeaderState::Follower { .. } => {
                    // Only the leader acts. Keep the persisted view fresh for the read API.
                    if self.token.take().is_some() {
                        tracing::warn!("lost the lease: no longer acting");
                        self.fleet.record_event(
                            "",
                            EventKind::Leadership,
                            "this coordinator no longer leads: not acting".to_owned(),
                        );
                    }
                    if let Err(error) = self.fleet.load_persisted().await {
                        tracing::debug!(%error, "cannot refresh pause and skips");
                    }
                    continue;
                }
            }
            if !fresh {
                continue;
            }
            if !self.reconciled {
                self.reconciled = self.reconcile().await;
                if !self.reconciled {
                    // Nothing new is decided while an earlier call may still land.
                    continue;
                }
            }
            self.pass().await;
        }
    }

    /// A new term: what earlier leaders did is in the store, not in our memory.
    pub(super) async fn begin_term(&mut self, token: u64) -> bool {
        if let Err(error) = self.journal.reload().await {
            tracing::warn!(%error, "cannot read the journal at the start of a term; not acting");
            return false;
        }
        if let Err(error) = self.fleet.load_persisted().await {
            tracing::warn!(%error, "cannot read the pause and skips at the start of a term; not acting");
            return false;
        }
        // What the previous leader recorded is listed here too, and cursors continue after it.
        if let Err(error) = self.fleet.restore_events().await {
            tracing::warn!(%error, "cannot read earlier fleet events at the start of a term");
        }
        // The ladders, cooldowns and concurrency slots of earlier terms.
        match self.store.remediations().await {
            Ok(stored) => {
                let mut records = Vec::new();
                for (id, value) in &stored {
                    match crate::book::from_json(value) {
                        Some(r) => records.push(r),
                        None => {
                            tracing::warn!(instance = %id, "unreadable remediation record ignored")
                        }
                    }
                }
                match policy::RemediationBook::restore(records) {
                    Ok(book) => {
                        self.book = book;
                        self.persisted = stored.into_iter().collect();
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot restore the remediation book; not acting");
                        return false;
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot read remediation state at the start of a term; not acting");
                return false;
            }
        }
        tracing::info!(token, "leading: acting with this fencing token");
        self.fleet.record_event(
            "",
            EventKind::Leadership,
            format!("this coordinator leads (fencing token {token})"),
        );
        self.token = Some(token);
        self.reconciled = false;
        true
    }

    /// Writes every remediation that changed since the last write. `false`: not durable (or
    /// fenced), so don't act on it.
    pub(super) async fn persist_book(&mut self) -> bool {
        let Some(token) = self.token else {
            return false;
        };
        let changed: Vec<(String, serde_json::Value)> = self
            .book
            .iter()
            .map(|r| (r.instance.to_string(), crate::book::to_json(r)))
            .filter(|(id, v)| self.persisted.get(id) != Some(v))
            .collect();
        for (id, value) in changed {
            match self.store.set_remediation(&id, Some(&value), token).await {
                Ok(()) => {
                    self.persisted.insert(id, value);
                }
                Err(error) => {
                    if error.is_fenced() {
                        self.lease.report_fenced(token).await;
                        self.token = None;
                    }
                    tracing::warn!(error = %crate::error_chain(&error), "cannot persist remediation state; not acting");
                    return false;
                }
            }
        }
        true
    }

    /// Returns whether the inventory is fresh enough to act on.
    pub(super) async fn refresh_inventory(&mut self) -> bool {
        let groups = match self.hands.groups.groups(&self.settings.selector).await {
            Ok(g) => g,
            Err(error) => {
                tracing::warn!(%error, "inventory failed; not acting on a stale view");
                self.fleet.record_event(
                    "",
                    EventKind::InventoryFailed,
                    format!("cannot list auto scaling groups: {error}"),
                );
                return false;
            }
        };
        let mut targets = BTreeMap::new();
        let tgs: BTreeSet<&String> = groups.iter().flat_map(|g| &g.target_groups).collect();
        for tg in tgs {
            match self.hands.lb.target_health(tg).await {
                Ok(t) => {
                    targets.insert(tg.clone(), t);
                }
                Err(error) => {
                    tracing::warn!(%error, target_group = %tg, "target health failed; not acting on a stale view");
                    self.fleet.record_event(
                        "",
                        EventKind::InventoryFailed,
                        format!("cannot read target health of {tg}: {error}"),
                    );
                    return false;
                }
            }
        }
        for id in self.fleet.apply_inventory(&groups, &targets) {
            if self.unclaimed_reported.insert(id.clone()) {
                self.fleet.record_event(
                    &id,
                    EventKind::UnknownInstance,
                    "agent connected but no managed auto scaling group has this instance; it is reported, never acted on".to_owned(),
                );
            }
        }
        true
    }

    pub(super) async fn pass(&mut self) {
        let now = SystemTime::now();
        self.poll_commands().await;
        let (snapshot, assessments) = self.snapshot(now);
        let plan = self
            .engine
            .decide_assessed(&snapshot, &assessments, &mut self.book, ts(now));
        self.view.send_replace(Some(Arc::new(ControlView {
            engine: self.engine.clone(),
            fleet: snapshot.clone(),
            book: self.book.clone(),
            at: now,
        })));
        for decision in &plan.decisions {
            count_decision(decision);
            if let Some(entry) = self.tell(decision)
                && let Err(error) = self.record(&entry).await
            {
                tracing::warn!(%error, "cannot journal a dry-run decision");
            }
        }
        // Write-ahead: the book as decided is durable before any action it asks for.
        if !self.persist_book().await {
            return;
        }
        let actions: Vec<(policy::Decision, policy::Action)> = plan
            .executable()
            .map(|(d, a)| (d.clone(), a.clone()))
            .collect();
        for (decision, action) in actions {
            let outcome = self.execute(&decision, &action).await;
            if let Err(error) = self
                .book
                .record(&decision.instance, outcome, ts(SystemTime::now()))
            {
                tracing::warn!(%error, "remediation book refused an outcome");
            }
        }
    }

    /// One fleet event per change of what we'd say about an instance.
    pub(super) fn tell(&mut self, d: &policy::Decision) -> Option<Entry> {
        let (kind, what) = match &d.kind {
            policy::DecisionKind::Act(a) => (EventKind::Decision, format!("{a}")),
            policy::DecisionKind::WouldAct(a) => (EventKind::DryRun, format!("would {a}")),
            policy::DecisionKind::Hold { action, held_by } => (
                EventKind::Guardrail,
                format!(
                    "{action} held by {}",
                    held_by
                        .iter()
                        .map(|g| g.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            ),
            policy::DecisionKind::Wait { .. } => return None,
            policy::DecisionKind::Alert(a) => (EventKind::Alert, format!("{a:?}")),
            policy::DecisionKind::Finished(e) => (EventKind::RemediationFinished, format!("{e:?}")),
        };
        let message = format!("{what}: {}", d.reason);
        // One event per change of condition: the reason's figures (elapsed times, counts) move
        // every pass and are not a change ("silent for 13s" and "silent for 14s" are one).
        let condition = condition_of(&message);
        if self.last_said.get(d.instance.as_str()) == Some(&condition) {
            return None;
        }
        self.last_said
            .insert(d.instance.as_str().to_owned(), condition);
        self.fleet.record_event(d.instance.as_str(), kind, message);
        if let policy::DecisionKind::WouldAct(action) = &d.kind {
            return Some(Entry {
                key: format!("{}/{}/dry-run", d.instance, now_ms()),
                instance_id: d.instance.to_string(),
                asg: d.asg.to_string(),
                step: step_of(action, ReplaceWith::SetInstanceHealth),
                phase: Phase::WouldAct,
                target_groups: target_groups(action),
                reason: d.reason.clone(),
                detail: String::new(),
                fencing_token: self.token.unwrap_or_default(),
                at_ms: now_ms(),
                requested_by: String::new(),
                in_flight_until_ms: 0,
            });
        }
        None
    }
}

/// The engine's decision in the metrics: its kind, and each guardrail that held it.
pub(super) fn count_decision(decision: &policy::Decision) {
    let (kind, held_by) = match &decision.kind {
        policy::DecisionKind::Act(_) => ("act", Vec::new()),
        policy::DecisionKind::WouldAct(_) => ("would-act", Vec::new()),
        policy::DecisionKind::Hold { held_by, .. } => {
            ("hold", held_by.iter().map(|g| g.name()).collect())
        }
        policy::DecisionKind::Wait { .. } => ("wait", Vec::new()),
        policy::DecisionKind::Alert(_) => ("alert", Vec::new()),
        policy::DecisionKind::Finished(_) => ("finished", Vec::new()),
    };
    crate::metrics::global().decision(kind, &held_by);
}

/// A message with every run of digits folded to `#`: what stays the same while a condition
/// holds.
fn condition_of(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() || (in_number && c == '.') {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::condition_of;

    #[test]
    fn a_condition_is_its_message_without_the_moving_figures() {
        assert_eq!(
            condition_of("alert: agent silent for 13.2s, ALB healthy"),
            condition_of("alert: agent silent for 140.9s, ALB healthy")
        );
        assert_ne!(
            condition_of("alert: agent silent"),
            condition_of("guardrail: deregister held")
        );
    }
}
