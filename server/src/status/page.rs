//! The status page (`GET /` on the HTTP port): the [`super::Report`] as one
//! small server-rendered HTML page with inline CSS, no script. Green is
//! healthy, amber retrying, red failing (credentials rejected, invalid
//! secret, stopped).
//!
//! Every string from outside (agent ids, agent-server ids, errors, notes) is
//! HTML-escaped here. This module only renders; authentication is the HTTP
//! layer's.

use std::fmt::Write as _;

use super::{age, bytes, when, Health, Report, NO_DESTINATION};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;margin:.5em 0}th,td{text-align:left;padding:.3em .7em;border:1px solid #ddd;vertical-align:top}\
th{background:#f4f4f4}.healthy{background:#c8f7c5}.retrying{background:#ffe08a}.failing{background:#ffb3ad}\
.err{font-family:monospace;white-space:pre-wrap;max-width:50em}.muted{color:#666}";

/// The whole page. `refresh_seconds` makes the browser reload it.
pub fn render(report: &Report, refresh_seconds: u32) -> String {
    let now = report.generated_unix;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh_seconds}\">\
         <title>logdrain-gateway status</title><style>{STYLE}</style></head><body>\
         <h1>logdrain-gateway status</h1><p class=\"muted\">generated {} &middot; reloads every {refresh_seconds}s &middot; \
         <span class=\"healthy\">&nbsp;healthy&nbsp;</span> <span class=\"retrying\">&nbsp;retrying&nbsp;</span> \
         <span class=\"failing\">&nbsp;failing&nbsp;</span></p>",
        escape(&when(Some(now), now))
    );
    if report.gateways.len() > 1 || !report.missing_gateways.is_empty() {
        let _ = write!(
            html,
            "<p>gateways: {}</p>",
            escape(&report.gateways.join(", "))
        );
    }
    for missing in &report.missing_gateways {
        let _ = write!(
            html,
            "<p class=\"failing missing\">missing gateway {}: {}; its replicas and destinations are not on this page</p>",
            escape(&missing.gateway),
            escape(&missing.reason)
        );
    }
    if report.agents.is_empty() {
        html.push_str("<p>No agents: no shim has connected to this gateway since it started, and no route is queued.</p>");
    }
    for agent in &report.agents {
        let worst = agent
            .destinations
            .iter()
            .map(|d| d.health)
            .max_by_key(|h| match h {
                Health::Healthy => 0,
                Health::Retrying => 1,
                Health::Failing => 2,
            })
            .unwrap_or(Health::Failing);
        let _ = write!(
            html,
            "<h2 class=\"agent\"><span class=\"{}\">&nbsp;&nbsp;</span> agent {} <span class=\"muted\">queued {} lines ({})</span></h2>",
            worst.name(),
            escape(&agent.agent_id),
            agent.queued_lines,
            escape(&bytes(agent.queued_bytes))
        );
        html.push_str("<h3>Destinations</h3>");
        if agent.destinations.is_empty() {
            let _ = write!(html, "<p class=\"failing\">{}</p>", escape(NO_DESTINATION));
        } else {
            html.push_str(
                "<table><tr><th>destination</th><th>state</th><th>switched on by</th><th>where to look</th>\
                 <th>queued</th><th>oldest undelivered</th><th>delivered</th><th>last success</th><th>last error</th><th>gateway</th></tr>",
            );
            for d in &agent.destinations {
                let _ = write!(
                    html,
                    "<tr><td>{}<br><span class=\"muted\">cred id {}</span></td><td class=\"state {}\">{}</td><td>{}</td><td>{}</td>\
                     <td>{} lines<br>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"err\">{}{}</td><td>{}</td></tr>",
                    escape(&d.destination),
                    escape(&d.cred_id),
                    d.health.name(),
                    d.state.as_str(),
                    escape(&d.enabled_by.join(", ")),
                    escape(
                        d.location
                            .as_ref()
                            .map_or("unknown until the secrets are valid", |l| &l.summary)
                    ),
                    d.queued_lines,
                    escape(&bytes(d.queued_bytes)),
                    d.oldest_undelivered_age_seconds.map_or("-".to_string(), age),
                    d.delivered_lines,
                    escape(&when(d.last_success_unix, now)),
                    escape(d.last_error.as_deref().unwrap_or("")),
                    d.note
                        .as_deref()
                        .map(|n| format!("\n{}", escape(n)))
                        .unwrap_or_default(),
                    escape(&d.gateway),
                );
            }
            html.push_str("</table>");
        }
        html.push_str("<h3>Replicas</h3>");
        if agent.replicas.is_empty() {
            html.push_str("<p class=\"muted\">none since the gateway started</p>");
        } else {
            html.push_str(
                "<table><tr><th>agent-server</th><th>connected</th><th>last seen</th><th>shim dropped</th>\
                 <th>secrets masked by the shim</th><th>gateway</th></tr>",
            );
            for r in &agent.replicas {
                let (class, connected) = if r.connected_streams > 0 {
                    ("healthy", format!("yes ({} streams)", r.connected_streams))
                } else {
                    ("retrying", "no".to_string())
                };
                // Names only, with how many values were masked: never a value.
                let masked: Vec<String> = r
                    .shim_redacted_total
                    .iter()
                    .map(|(name, count)| format!("{} {count}", escape(name)))
                    .collect();
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td class=\"{class}\">{connected}</td><td>{}</td><td class=\"{}\">{}</td>\
                     <td>{}</td><td>{}</td></tr>",
                    escape(&r.agent_server_id),
                    escape(&when(Some(r.last_seen_unix), now)),
                    if r.shim_dropped_total > 0 { "failing" } else { "" },
                    r.shim_dropped_total,
                    if masked.is_empty() { "-".to_string() } else { masked.join(", ") },
                    escape(&r.gateway)
                );
            }
            html.push_str("</table>");
        }
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    #[test]
    fn agent_ids_and_errors_are_escaped() {
        let report = Report {
            schema: SCHEMA,
            generated_unix: 100,
            agents: vec![AgentStatus {
                agent_id: "a1".into(),
                queued_lines: 0,
                queued_bytes: 0,
                replicas: vec![],
                destinations: vec![DestinationStatus {
                    destination: "sentry".into(),
                    cred_id: "ff".into(),
                    state: RouteState::Retrying,
                    health: Health::Retrying,
                    enabled_by: vec!["SENTRY_DSN".into()],
                    location: None,
                    last_error: Some("Sentry answered 500: <script>alert(1)</script>".into()),
                    consecutive_failures: 1,
                    queued_lines: 0,
                    queued_bytes: 0,
                    oldest_undelivered_age_seconds: None,
                    delivered_lines: 0,
                    delivered_requests: 0,
                    failed_requests: 1,
                    dropped_lines: 0,
                    last_success_unix: None,
                    note: None,
                    gateway: "10.0.0.1:50051".into(),
                }],
            }],
            refused_streams: vec![],
            gateways: vec!["10.0.0.1:50051".into()],
            missing_gateways: vec![MissingGateway {
                gateway: "<peer>".into(),
                reason: "no answer within 2s".into(),
            }],
        };
        let html = render(&report, 10);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("class=\"state retrying\">retrying"));
        assert!(html.contains("missing gateway &lt;peer&gt;: no answer within 2s"));
    }

    #[test]
    fn each_replica_shows_the_names_its_shim_masked_and_how_often() {
        let mut masked = Report {
            schema: SCHEMA,
            generated_unix: 100,
            agents: vec![AgentStatus {
                agent_id: "a1".into(),
                queued_lines: 0,
                queued_bytes: 0,
                replicas: vec![],
                destinations: vec![],
            }],
            refused_streams: vec![],
            gateways: vec!["gw-1".into()],
            missing_gateways: vec![],
        };
        masked.agents[0].replicas = vec![crate::ingest::replicas::ReplicaInfo {
            agent_server_id: "replica-1".into(),
            connected_streams: 1,
            last_seen_unix: 100,
            shim_dropped_total: 0,
            shim_redacted_total: [("OPENAI_API_KEY".to_string(), 2), ("<b>".to_string(), 1)].into(),
            gateway: "gw-1".into(),
        }];
        let page = render(&masked, 10);
        assert!(
            page.contains("<td>&lt;b&gt; 1, OPENAI_API_KEY 2</td><td>gw-1</td></tr>"),
            "{page}"
        );
    }
}
