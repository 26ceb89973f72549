//! What `autohealctl` prints: the fleet API's answers as tables for people and JSON for scripts.

use autoheal_proto::v1;
use serde_json::{Value, json};

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| {
        time::OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()
            .map(|d| {
                d.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            })
    })
    .unwrap_or_else(|| "-".to_owned())
}

pub fn instance_state(raw: i32) -> &'static str {
    match v1::InstanceState::try_from(raw).unwrap_or_default() {
        v1::InstanceState::Unspecified => "-",
        v1::InstanceState::Healthy => "healthy",
        v1::InstanceState::Degraded => "degraded",
        v1::InstanceState::Escalated => "escalated",
        v1::InstanceState::Silent => "silent",
        v1::InstanceState::Remediating => "remediating",
        v1::InstanceState::Unknown => "unknown",
    }
}

pub fn service_state(raw: i32) -> &'static str {
    match v1::ServiceState::try_from(raw).unwrap_or_default() {
        v1::ServiceState::Unspecified => "-",
        v1::ServiceState::Starting => "starting",
        v1::ServiceState::Healthy => "healthy",
        v1::ServiceState::Unhealthy => "unhealthy",
        v1::ServiceState::Restarting => "restarting",
        v1::ServiceState::Flapping => "flapping",
        v1::ServiceState::WaitingOnDependency => "waiting-on-dependency",
        v1::ServiceState::Escalated => "escalated",
    }
}

pub fn pause_json(p: Option<&v1::PauseState>) -> Value {
    match p {
        Some(p) => {
            json!({"paused": p.paused, "reason": p.reason, "by": p.by, "since": time(p.since.as_ref())})
        }
        None => json!({"paused": false}),
    }
}

pub fn status_json(s: &v1::FleetStatus) -> Value {
    json!({
        "coordinator_id": s.coordinator_id,
        "leader": s.leader,
        "dry_run": s.dry_run,
        "pause": pause_json(s.pause.as_ref()),
        "instances": s.instances,
        "connected": s.connected,
        "groups": s.groups.iter().map(|g| json!({
            "name": g.name, "instances": g.instances, "connected": g.connected,
            "healthy": g.healthy, "unhealthy": g.unhealthy, "silent": g.silent,
            "remediating": g.remediating,
            "guardrails": g.guardrails.iter().map(|r| json!({"name": r.name, "reason": r.reason})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn status_table(s: &v1::FleetStatus) -> String {
    let mut out = String::new();
    let mode = if s.dry_run {
        "dry-run (records, never acts)"
    } else {
        "live"
    };
    out.push_str(&format!(
        "coordinator {} ({}), mode: {mode}\n",
        s.coordinator_id,
        if s.leader { "leader" } else { "follower" }
    ));
    match &s.pause {
        Some(p) if p.paused => out.push_str(&format!(
            "PAUSED by {} since {}: {}\n",
            p.by,
            time(p.since.as_ref()),
            p.reason
        )),
        _ => out.push_str("not paused\n"),
    }
    out.push_str(&format!(
        "{} instances, {} connected\n",
        s.instances, s.connected
    ));
    if !s.groups.is_empty() {
        let rows: Vec<Vec<String>> = s
            .groups
            .iter()
            .map(|g| {
                vec![
                    if g.name.is_empty() {
                        "(no asg)".into()
                    } else {
                        g.name.clone()
                    },
                    g.instances.to_string(),
                    g.connected.to_string(),
                    g.healthy.to_string(),
                    g.unhealthy.to_string(),
                    g.silent.to_string(),
                    g.remediating.to_string(),
                    {
                        // One brake can hold per ASG and per AZ: name it once.
                        let mut names: Vec<&str> =
                            g.guardrails.iter().map(|r| r.name.as_str()).collect();
                        names.dedup();
                        names.join(",")
                    },
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &[
                "ASG",
                "INSTANCES",
                "CONNECTED",
                "HEALTHY",
                "UNHEALTHY",
                "SILENT",
                "REMEDIATING",
                "HOLDING",
            ],
            &rows,
        ));
        for g in &s.groups {
            for r in &g.guardrails {
                out.push_str(&format!("  {}: {}\n", r.name, r.reason));
            }
        }
    }
    out
}

pub fn instances_json(list: &[v1::InstanceSummary]) -> Value {
    Value::Array(list.iter().map(summary_json).collect())
}

pub fn summary_json(i: &v1::InstanceSummary) -> Value {
    json!({
        "instance_id": i.instance_id, "asg": i.asg, "availability_zone": i.availability_zone,
        "state": instance_state(i.state), "connected": i.connected,
        "last_heartbeat": time(i.last_heartbeat.as_ref()), "agent_version": i.agent_version,
        "failing_dependencies": i.failing_dependencies,
    })
}

pub fn instances_table(list: &[v1::InstanceSummary]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.instance_id.clone(),
                if i.asg.is_empty() {
                    "-".into()
                } else {
                    i.asg.clone()
                },
                i.availability_zone.clone(),
                instance_state(i.state).into(),
                if i.connected {
                    "yes".into()
                } else {
                    "no".into()
                },
                time(i.last_heartbeat.as_ref()),
                i.failing_dependencies.join(","),
            ]
        })
        .collect();
    table(
        &[
            "INSTANCE",
            "ASG",
            "AZ",
            "STATE",
            "CONNECTED",
            "LAST HEARTBEAT",
            "FAILING DEPENDENCIES",
        ],
        &rows,
    )
}

pub fn instance_json(i: &v1::Instance) -> Value {
    json!({
        "summary": i.summary.as_ref().map(summary_json),
        "services": i.services.iter().map(|s| json!({"name": s.name, "state": service_state(s.state)})).collect::<Vec<_>>(),
        "recent_events": i.recent_events.iter().map(event_json).collect::<Vec<_>>(),
        "dropped_events": i.dropped_events,
        "skipped": i.skipped,
        "targets": i.targets.iter().map(|t| json!({"target_group": t.target_group_arn, "state": t.state, "reason": t.reason})).collect::<Vec<_>>(),
        "asg": i.asg.as_ref().map(|a| json!({"lifecycle_state": a.lifecycle_state, "health_status": a.health_status, "protected_from_scale_in": a.protected_from_scale_in})),
        "actions": i.actions.iter().map(action_json).collect::<Vec<_>>(),
    })
}

pub fn instance_text(i: &v1::Instance) -> String {
    let mut out = String::new();
    if let Some(s) = &i.summary {
        out.push_str(&instances_table(std::slice::from_ref(s)));
    }
    out.push_str("\nSERVICES\n");
    let rows: Vec<Vec<String>> = i
        .services
        .iter()
        .map(|s| vec![s.name.clone(), service_state(s.state).into()])
        .collect();
    out.push_str(&table(&["SERVICE", "STATE"], &rows));
    if let Some(a) = &i.asg {
        out.push_str(&format!(
            "\nASG: {} / {}{}\n",
            a.lifecycle_state,
            a.health_status,
            if a.protected_from_scale_in {
                " (scale-in protected)"
            } else {
                ""
            }
        ));
    }
    if !i.targets.is_empty() {
        out.push_str("\nTARGETS\n");
        let rows: Vec<Vec<String>> = i
            .targets
            .iter()
            .map(|t| {
                vec![
                    t.target_group_arn.clone(),
                    t.state.clone(),
                    t.reason.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["TARGET GROUP", "STATE", "REASON"], &rows));
    }
    if !i.actions.is_empty() {
        out.push_str("\nACTIONS\n");
        out.push_str(&actions_table(&i.actions));
    }
    out.push_str("\nRECENT EVENTS\n");
    for e in &i.recent_events {
        out.push_str(&event_line(e));
        out.push('\n');
    }
    if i.dropped_events > 0 {
        out.push_str(&format!("(agent dropped {} events)\n", i.dropped_events));
    }
    out
}

pub fn action_kind(raw: i32) -> &'static str {
    match v1::ActionKind::try_from(raw).unwrap_or_default() {
        v1::ActionKind::Unspecified => "-",
        v1::ActionKind::Deregister => "deregister",
        v1::ActionKind::Replace => "replace",
        v1::ActionKind::RemoteRestart => "remote-restart",
    }
}

pub fn action_status(raw: i32) -> &'static str {
    match v1::ActionStatus::try_from(raw).unwrap_or_default() {
        v1::ActionStatus::Unspecified => "-",
        v1::ActionStatus::Intended => "intended",
        v1::ActionStatus::Succeeded => "succeeded",
        v1::ActionStatus::Failed => "failed",
        v1::ActionStatus::DryRun => "dry-run",
        v1::ActionStatus::Held => "held",
    }
}

pub fn action_json(a: &v1::Action) -> Value {
    json!({
        "id": a.id, "instance_id": a.instance_id, "kind": action_kind(a.kind),
        "status": action_status(a.status), "reason": a.reason, "detail": a.detail,
        "at": time(a.at.as_ref()), "fencing_token": a.fencing_token, "requested_by": a.requested_by,
    })
}

pub fn actions_table(actions: &[v1::Action]) -> String {
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|a| {
            vec![
                time(a.at.as_ref()),
                a.instance_id.clone(),
                action_kind(a.kind).into(),
                action_status(a.status).into(),
                if a.detail.is_empty() {
                    a.reason.clone()
                } else {
                    format!("{} — {}", a.reason, a.detail)
                },
            ]
        })
        .collect();
    table(&["AT", "INSTANCE", "ACTION", "STATUS", "WHY / WHAT"], &rows)
}

pub fn event_json(e: &v1::FleetEvent) -> Value {
    json!({"cursor": e.cursor, "at": time(e.at.as_ref()), "instance_id": e.instance_id, "asg": e.asg, "kind": e.kind, "message": e.message})
}

pub fn event_line(e: &v1::FleetEvent) -> String {
    format!(
        "{:>6} {} {:<20} {:<22} {}",
        e.cursor,
        time(e.at.as_ref()),
        if e.instance_id.is_empty() {
            "-"
        } else {
            &e.instance_id
        },
        e.kind,
        e.message
    )
}

/// Columns padded to the widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONGER"],
            &[
                vec!["wide-cell".into(), "x".into()],
                vec!["y".into(), "z".into()],
            ],
        );
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "A          LONGER");
        assert_eq!(lines[1], "wide-cell  x");
        assert_eq!(lines[2], "y          z");
    }
}

/// The note for an `autoheal-answered-by` value; `None` when the leader answered.
pub fn answered_by(value: &str) -> Option<String> {
    let rest = value.trim().strip_prefix("follower")?;
    let leader = rest
        .split(';')
        .find_map(|part| part.trim().strip_prefix("leader="))
        .filter(|l| !l.is_empty())
        .unwrap_or("unknown");
    Some(format!(
        "answered by a follower (leader: {leader}): agents stream to the leader only, so here every agent shows as disconnected and recent actions may be missing; ask the leader for the fleet's state"
    ))
}

#[cfg(test)]
mod answered_by_tests {
    use super::answered_by;

    #[test]
    fn a_follower_answer_names_the_leader() {
        let note = answered_by("follower; leader=10.0.1.5:7443").expect("note");
        assert!(
            note.starts_with("answered by a follower (leader: 10.0.1.5:7443)"),
            "{note}"
        );
        assert!(
            answered_by("follower; leader=unknown")
                .expect("note")
                .contains("leader: unknown")
        );
        assert_eq!(answered_by("leader"), None);
    }
}
