//! Status reports: what the gateway knows about an agent, for the admin API,
//! the `status` command and the status page.
//!
//! Owns the versioned report ([`Report`], `"schema": 1`, documented in
//! docs/troubleshooting.md), building it from the engine's route statuses,
//! the queue's depths, the replica registry and each route's secret *names*
//! ([`build`]), and its text rendering (a table per agent, [`render_text`]).
//! [`page`] renders it as HTML, [`client`] fetches it for the CLI,
//! [`test_send`] sends one marked line through an agent's destinations.
//!
//! This module only reads state owned elsewhere and must not change it.
//! It never holds a secret value: routes contribute their secret names,
//! errors are redacted by the sinks, and "where to look" comes from each
//! vendor's `config::location`.

pub mod client;
pub mod fleet;
pub mod page;
pub mod test_send;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::ingest::replicas::{ReplicaInfo, Replicas};
use crate::queue::Queue;
use crate::route::RouteKey;
use crate::sinks::engine::{Engine, RouteState};
use crate::sinks::{locate, Location, SinkSettings};

/// Version of the JSON report; bumped only when a field changes meaning or
/// disappears (new fields may be added within a version).
pub const SCHEMA: u32 = 1;

/// The status document of `GET /v1/status`, `GET /v1/agents/{id}/status`
/// and `logdrain-gateway status --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub schema: u32,
    /// When the gateway made it (Unix seconds).
    pub generated_unix: u64,
    pub agents: Vec<AgentStatus>,
    /// Shim streams this gateway refused at admission since it started, by
    /// reason (a wrong token, an invalid id, another protocol version, ...).
    /// Only in the report of every agent; empty in one agent's.
    #[serde(default)]
    pub refused_streams: Vec<RefusedStreams>,
    /// The gateways whose answers the report holds, the asked one first
    /// (its `ip:port` in the fleet, or its listen address alone).
    #[serde(default)]
    pub gateways: Vec<String>,
    /// The peers that did not answer: their replicas and destinations are
    /// missing from this report.
    #[serde(default)]
    pub missing_gateways: Vec<MissingGateway>,
}

/// A peer whose answer is missing from a fleet-wide report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingGateway {
    pub gateway: String,
    /// Why: no answer within the timeout, a refusal, an older version.
    pub reason: String,
}

/// Streams refused for one reason (`logdrain_refused_streams_total`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedStreams {
    pub reason: String,
    pub count: u64,
    /// When the last one was refused (Unix seconds).
    pub last_unix: u64,
}

/// One agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub agent_id: String,
    /// Lines and bytes queued for the agent, all destinations together.
    pub queued_lines: u64,
    pub queued_bytes: u64,
    /// Replicas this gateway heard from since it started (at most
    /// [`crate::ingest::replicas::MAX_REPLICAS_PER_AGENT`], most recent).
    pub replicas: Vec<ReplicaInfo>,
    /// Every destination switched on for the agent: one per set of
    /// credentials it was opened with.
    pub destinations: Vec<DestinationStatus>,
}

/// Green, amber, red.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Retrying,
    Failing,
}

impl Health {
    /// The colour of a route in `state`.
    pub fn of(state: RouteState) -> Health {
        match state.reported() {
            RouteState::Delivering => Health::Healthy,
            RouteState::Retrying => Health::Retrying,
            _ => Health::Failing,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Retrying => "retrying",
            Health::Failing => "failing",
        }
    }
}

/// One destination (route) of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationStatus {
    /// `datadog`, `cloudwatch`, `sentry` or `newrelic`.
    pub destination: String,
    /// Keyed hash of the credentials: tells two keys apart, reveals nothing.
    pub cred_id: String,
    /// The route's state as [`RouteState::reported`]: never `starting` or
    /// `idle`.
    pub state: RouteState,
    pub health: Health,
    /// The secret names that switched it on (never their values).
    pub enabled_by: Vec<String>,
    /// Where its lines land; `None` when the secrets cannot say (then
    /// `last_error` says why).
    pub location: Option<Location>,
    /// The latest failure, secrets redacted: the vendor's status code and
    /// an excerpt of its answer, or the secret that is wrong. Kept after
    /// recovery for diagnosis.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    /// Lines and bytes queued that this destination has not delivered.
    pub queued_lines: u64,
    pub queued_bytes: u64,
    /// Age of its oldest undelivered line (by the shim's clock when it read
    /// the line); `None` when nothing waits.
    pub oldest_undelivered_age_seconds: Option<u64>,
    pub delivered_lines: u64,
    pub delivered_requests: u64,
    pub failed_requests: u64,
    /// Lines dropped for good: refused by the vendor, or damaged on the
    /// gateway's disk (then `health` is failing and `note` says so).
    pub dropped_lines: u64,
    /// Last request the vendor accepted (Unix seconds), since the gateway
    /// started.
    pub last_success_unix: Option<u64>,
    /// For example "delivering with a newer deployment's credentials
    /// (cred id …, first seen …)".
    pub note: Option<String>,
    /// The gateway whose queue and worker this route is.
    #[serde(default)]
    pub gateway: String,
}

/// What a report is built from.
pub struct Sources<'a> {
    pub engine: &'a Engine<Queue>,
    pub queue: &'a Queue,
    pub replicas: &'a Replicas,
    pub sinks: &'a SinkSettings,
    /// This gateway's name in the fleet.
    pub gateway: &'a str,
}

/// The report of `agents`, or of every agent the gateway knows when `None`.
pub fn build(sources: &Sources<'_>, agents: Option<&[String]>, now: SystemTime) -> Report {
    let agents_asked = agents;
    let statuses = sources.engine.statuses();
    let oldest = sources.engine.oldest_undelivered();
    let ids: Vec<String> = match agents {
        Some(ids) => ids.to_vec(),
        None => {
            let mut all: BTreeSet<String> = statuses.iter().map(|s| s.agent_id.clone()).collect();
            all.extend(sources.replicas.agents());
            all.into_iter().collect()
        }
    };
    let now_unix = unix(now);
    let now_ns = i128::from(now_unix) * 1_000_000_000;
    let agents = ids
        .into_iter()
        .map(|agent_id| {
            let destinations = statuses
                .iter()
                .filter(|s| s.agent_id == agent_id)
                .map(|s| {
                    let key = RouteKey {
                        agent_id: s.agent_id.clone(),
                        kind: s.destination,
                        cred_id: s.cred_id.clone(),
                    };
                    let secrets = sources.engine.current_secrets(&key);
                    let enabled_by = secrets
                        .as_ref()
                        .map(|secrets| secrets.0.keys().cloned().collect())
                        .unwrap_or_default();
                    let location = secrets
                        .as_ref()
                        .and_then(|secrets| locate(&key, secrets, sources.sinks).ok());
                    let (queued_lines, queued_bytes) = sources.queue.route_depth(&key);
                    let head = oldest
                        .iter()
                        .find(|(route, _)| *route == key)
                        .and_then(|(_, head)| *head);
                    let state = s.state.reported();
                    // Lines lost to damage on the gateway's disk: unhealthy.
                    let damaged = sources.queue.route_damaged(&key);
                    let health = if damaged > 0 {
                        Health::Failing
                    } else {
                        Health::of(state)
                    };
                    let note = match (damaged, &s.note) {
                        (0, note) => note.clone(),
                        (n, _) => Some(format!(
                            "{n} queued lines were damaged on the gateway's disk and dropped"
                        )),
                    };
                    DestinationStatus {
                        destination: s.destination.name().to_string(),
                        cred_id: s.cred_id.clone(),
                        state,
                        health,
                        enabled_by,
                        location,
                        last_error: s.last_error.clone(),
                        consecutive_failures: s.consecutive_failures,
                        queued_lines,
                        queued_bytes,
                        oldest_undelivered_age_seconds: head.map(|ns| {
                            u64::try_from((now_ns - i128::from(ns)).max(0) / 1_000_000_000)
                                .unwrap_or(u64::MAX)
                        }),
                        delivered_lines: s.delivered_lines,
                        delivered_requests: s.delivered_requests,
                        failed_requests: s.failed_requests,
                        dropped_lines: s.dropped_lines + damaged,
                        last_success_unix: s.last_success_unix,
                        note,
                        gateway: sources.gateway.to_string(),
                    }
                })
                .collect();
            let (queued_lines, queued_bytes) = sources.queue.depth(&agent_id);
            let mut replicas = sources.replicas.of(&agent_id);
            for replica in &mut replicas {
                replica.gateway = sources.gateway.to_string();
            }
            AgentStatus {
                replicas,
                agent_id,
                queued_lines,
                queued_bytes,
                destinations,
            }
        })
        .collect();
    let refused_streams = match agents_asked {
        Some(_) => Vec::new(),
        None => crate::metrics::refused_streams_so_far()
            .into_iter()
            .map(|(reason, count, last)| RefusedStreams {
                reason: reason.to_string(),
                count,
                last_unix: unix(last),
            })
            .collect(),
    };
    Report {
        schema: SCHEMA,
        generated_unix: now_unix,
        agents,
        refused_streams,
        gateways: vec![sources.gateway.to_string()],
        missing_gateways: Vec::new(),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `2026-11-23T23:59:00Z (12s ago)`, or `never`.
pub fn when(unix_secs: Option<u64>, now_unix: u64) -> String {
    match unix_secs {
        None => "never".to_string(),
        Some(t) => format!(
            "{} ({} ago)",
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(t)),
            age(now_unix.saturating_sub(t))
        ),
    }
}

/// A short age: `42s`, `3m 5s`, `2h 1m`, `4d 2h`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86_400 => format!("{}h {}m", s / 3_600, s % 3_600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// `1.2 MiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// What an agent without destinations means.
pub const NO_DESTINATION: &str = "no destination is switched on: no stream of this agent carried a complete set of vendor secrets \
(run `agent-shim --check` where the agent runs; it names the missing secret)";

/// The report as tables, one block per agent.
pub fn render_text(report: &Report) -> String {
    let now = report.generated_unix;
    let mut out = String::new();
    if report.gateways.len() > 1 || !report.missing_gateways.is_empty() {
        let _ = writeln!(out, "GATEWAYS  {}", report.gateways.join(", "));
    }
    for missing in &report.missing_gateways {
        let _ = writeln!(
            out,
            "MISSING   {}: {}; its replicas and destinations are not in this report",
            missing.gateway, missing.reason
        );
    }
    if !out.is_empty() {
        out.push('\n');
    }
    if report.agents.is_empty() {
        out.push_str("no agents: no shim has connected to this gateway since it started, and no queued route\n");
    }
    for agent in &report.agents {
        let _ = writeln!(
            out,
            "AGENT {}  queued {} lines ({})",
            agent.agent_id,
            agent.queued_lines,
            bytes(agent.queued_bytes)
        );
        out.push_str("\nREPLICAS\n");
        if agent.replicas.is_empty() {
            out.push_str("  none since the gateway started\n");
        } else {
            let rows: Vec<Vec<String>> = agent
                .replicas
                .iter()
                .map(|r| {
                    vec![
                        r.agent_server_id.clone(),
                        if r.connected_streams > 0 {
                            format!("yes ({} streams)", r.connected_streams)
                        } else {
                            "no".to_string()
                        },
                        when(Some(r.last_seen_unix), now),
                        r.shim_dropped_total.to_string(),
                        r.gateway.clone(),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "AGENT-SERVER",
                    "CONNECTED",
                    "LAST SEEN",
                    "SHIM DROPPED",
                    "GATEWAY",
                ],
                &rows,
            );
            for r in agent
                .replicas
                .iter()
                .filter(|r| !r.shim_redacted_total.is_empty())
            {
                let counts: Vec<String> = r
                    .shim_redacted_total
                    .iter()
                    .map(|(name, count)| format!("{name} {count}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {}: secrets masked before shipping: {}",
                    r.agent_server_id,
                    counts.join(", ")
                );
            }
        }
        out.push_str("\nDESTINATIONS\n");
        if agent.destinations.is_empty() {
            let _ = writeln!(out, "  {NO_DESTINATION}");
        } else {
            let rows: Vec<Vec<String>> = agent
                .destinations
                .iter()
                .map(|d| {
                    vec![
                        d.destination.clone(),
                        d.state.as_str().to_string(),
                        format!("{} lines ({})", d.queued_lines, bytes(d.queued_bytes)),
                        d.oldest_undelivered_age_seconds
                            .map_or("-".to_string(), age),
                        d.delivered_lines.to_string(),
                        when(d.last_success_unix, now),
                        d.gateway.clone(),
                        d.enabled_by.join(","),
                    ]
                })
                .collect();
            table(
                &mut out,
                &[
                    "DESTINATION",
                    "STATE",
                    "QUEUED",
                    "OLDEST",
                    "DELIVERED",
                    "LAST SUCCESS",
                    "GATEWAY",
                    "SWITCHED ON BY",
                ],
                &rows,
            );
            for d in &agent.destinations {
                let _ = writeln!(
                    out,
                    "\n  {} (cred id {}, on gateway {}):",
                    d.destination, d.cred_id, d.gateway
                );
                match &d.location {
                    Some(location) => {
                        let _ = writeln!(out, "    where to look: {}", location.summary);
                    }
                    None => {
                        out.push_str("    where to look: unknown until the secrets are valid\n")
                    }
                }
                match (&d.last_error, d.consecutive_failures) {
                    (Some(error), 0) => {
                        let _ = writeln!(out, "    last error: {error}");
                    }
                    (Some(error), n) => {
                        let _ = writeln!(out, "    last error ({n} failed in a row): {error}");
                    }
                    (None, _) => {}
                }
                if let Some(note) = &d.note {
                    let _ = writeln!(out, "    note: {note}");
                }
            }
        }
        out.push('\n');
    }
    if !report.refused_streams.is_empty() {
        out.push_str("REFUSED STREAMS (since the gateway started)\n");
        let rows: Vec<Vec<String>> = report
            .refused_streams
            .iter()
            .map(|r| {
                vec![
                    r.reason.clone(),
                    r.count.to_string(),
                    when(Some(r.last_unix), now),
                ]
            })
            .collect();
        table(&mut out, &["REASON", "STREAMS", "LAST"], &rows);
    }
    out
}

/// Appends a left-aligned table with two spaces between columns.
fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut text = String::from("  ");
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            schema: SCHEMA,
            generated_unix: 1_000_000,
            agents: vec![AgentStatus {
                agent_id: "a1".into(),
                queued_lines: 3,
                queued_bytes: 2048,
                replicas: vec![ReplicaInfo {
                    agent_server_id: "r1".into(),
                    connected_streams: 1,
                    last_seen_unix: 999_990,
                    shim_dropped_total: 4,
                    shim_redacted_total: [("OPENAI_API_KEY".to_string(), 2)].into(),
                    gateway: "10.0.0.1:50051".into(),
                }],
                destinations: vec![DestinationStatus {
                    destination: "datadog".into(),
                    cred_id: "00aa".into(),
                    state: RouteState::CredentialsRejected,
                    health: Health::Failing,
                    enabled_by: vec!["DATADOG_TOKEN".into()],
                    location: None,
                    last_error: Some("Datadog answered 403 Forbidden: bad key".into()),
                    consecutive_failures: 2,
                    queued_lines: 3,
                    queued_bytes: 2048,
                    oldest_undelivered_age_seconds: Some(75),
                    delivered_lines: 0,
                    delivered_requests: 0,
                    failed_requests: 2,
                    dropped_lines: 0,
                    last_success_unix: None,
                    note: None,
                    gateway: "10.0.0.1:50051".into(),
                }],
            }],
            refused_streams: vec![RefusedStreams {
                reason: "unauthenticated".into(),
                count: 7,
                last_unix: 999_995,
            }],
            gateways: vec!["10.0.0.1:50051".into()],
            missing_gateways: Vec::new(),
        }
    }

    #[test]
    fn the_text_report_names_state_error_replica_and_secret_names() {
        let text = render_text(&report());
        for expected in [
            "AGENT a1",
            "r1",
            "yes (1 streams)",
            "credentials_rejected",
            "1m 15s",
            "DATADOG_TOKEN",
            "Datadog answered 403 Forbidden: bad key",
            "2.0 KiB",
            "never",
            "REFUSED STREAMS",
            "unauthenticated  7        1970-01-12T13:46:35Z (5s ago)",
            "r1: secrets masked before shipping: OPENAI_API_KEY 2",
        ] {
            assert!(text.contains(expected), "{expected:?} missing in:\n{text}");
        }
    }

    #[test]
    fn the_json_report_has_its_schema_and_snake_case_states() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["schema"], 1);
        assert_eq!(
            json["agents"][0]["destinations"][0]["state"],
            "credentials_rejected"
        );
        assert_eq!(json["agents"][0]["destinations"][0]["health"], "failing");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report());
    }

    #[test]
    fn an_agent_without_destinations_points_at_the_shim_check() {
        let mut r = report();
        r.agents[0].destinations.clear();
        assert!(render_text(&r).contains("agent-shim --check"));
    }
}
