//! The Prometheus text exposition format (0.0.4) both binaries' `/metrics` endpoints speak.
//!
//! `prometheus-client` writes OpenMetrics text, where a counter family `x` has samples `x_total`.
//! The Prometheus text format names the family after its samples (`# TYPE x_total counter`), and
//! `promtool check metrics` (and Prometheus' own text parser) reads an OpenMetrics counter's HELP
//! and TYPE as belonging to a different, empty family. [`from_openmetrics`] rewrites those lines
//! and drops what the older format has no place for (`# UNIT`, `# EOF`), so every scraper and
//! linter sees the counters typed and documented.

/// The `Content-Type` of [`from_openmetrics`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Rewrites OpenMetrics text (as `prometheus_client::encoding::text::encode` writes it: HELP
/// before TYPE, one family at a time) into Prometheus text format 0.0.4.
pub fn from_openmetrics(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    // HELP comes before TYPE, and only TYPE says whether the family is renamed: hold it back.
    let mut help: Option<(&str, &str)> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), None);
            let (name, doc) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, doc));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let renamed = (kind == "counter" && !name.ends_with("_total")).then_some("_total");
            flush_help(&mut out, help.take().filter(|(h, _)| *h == name), renamed);
            push_line(
                &mut out,
                &["# TYPE ", name, renamed.unwrap_or(""), " ", kind],
            );
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            // Not part of the 0.0.4 format; the unit is already the name's suffix.
        } else {
            flush_help(&mut out, help.take(), None);
            push_line(&mut out, &[line]);
        }
    }
    flush_help(&mut out, help, None);
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: Option<&str>) {
    if let Some((name, doc)) = help {
        push_line(out, &["# HELP ", name, suffix.unwrap_or(""), " ", doc]);
    }
}

fn push_line(out: &mut String, parts: &[&str]) {
    for p in parts {
        out.push_str(p);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_after_their_samples() {
        let open = "# HELP autoheal_heartbeats Heartbeats received.\n\
                    # TYPE autoheal_heartbeats counter\n\
                    autoheal_heartbeats_total 3\n\
                    # HELP autoheal_agents_connected Agents connected.\n\
                    # TYPE autoheal_agents_connected gauge\n\
                    autoheal_agents_connected 1\n\
                    # HELP autoheal_check_duration_seconds Probe time.\n\
                    # TYPE autoheal_check_duration_seconds histogram\n\
                    # UNIT autoheal_check_duration_seconds seconds\n\
                    autoheal_check_duration_seconds_sum 0.5\n\
                    autoheal_check_duration_seconds_count 1\n\
                    autoheal_check_duration_seconds_bucket{le=\"+Inf\"} 1\n\
                    # EOF\n";
        assert_eq!(
            from_openmetrics(open),
            "# HELP autoheal_heartbeats_total Heartbeats received.\n\
             # TYPE autoheal_heartbeats_total counter\n\
             autoheal_heartbeats_total 3\n\
             # HELP autoheal_agents_connected Agents connected.\n\
             # TYPE autoheal_agents_connected gauge\n\
             autoheal_agents_connected 1\n\
             # HELP autoheal_check_duration_seconds Probe time.\n\
             # TYPE autoheal_check_duration_seconds histogram\n\
             autoheal_check_duration_seconds_sum 0.5\n\
             autoheal_check_duration_seconds_count 1\n\
             autoheal_check_duration_seconds_bucket{le=\"+Inf\"} 1\n"
        );
    }

    #[test]
    fn a_help_without_its_type_is_kept_as_it_is() {
        assert_eq!(
            from_openmetrics("# HELP a doc\na 1\n"),
            "# HELP a doc\na 1\n"
        );
    }
}
