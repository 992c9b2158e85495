//! The fleet-wide status: this gateway's own report, and the reports of its
//! peers ([`crate::fleet`]) merged in, each replica and destination naming
//! the gateway that holds it.
//!
//! Peers are asked at once, over gRPC (`Drain.Status`), with the caller's
//! own token, which each peer checks itself; a peer that does not answer
//! within `--peer-timeout` (or refuses) is listed in `missing_gateways`, so
//! the view is never silently partial. A peer's `Status` answers for itself
//! only: it never asks further.
//!
//! This module only reads; it must not change anything it reports.

use std::time::{Duration, SystemTime};

use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::StatusRequest;

use super::{build, MissingGateway, Report, Sources};
use crate::auth::ReadAccess;
use crate::fleet::{Fleet, Peer};
use crate::ingest::replicas::Replicas;
use crate::queue::Queue;
use crate::sinks::engine::Engine;
use crate::sinks::SinkFactory;

/// What this gateway's reports are made of, and whom to ask for the rest.
#[derive(Clone)]
pub struct StatusSource {
    pub engine: Engine<Queue>,
    pub queue: Queue,
    pub replicas: Replicas,
    pub sinks: SinkFactory,
    pub access: ReadAccess,
    pub fleet: Fleet,
    /// How long a peer has to answer.
    pub peer_timeout: Duration,
}

impl StatusSource {
    /// This gateway's own report of `agents` (every agent when `None`).
    pub fn local(&self, agents: Option<&[String]>) -> Report {
        let view = self.fleet.view();
        build(
            &Sources {
                engine: &self.engine,
                queue: &self.queue,
                replicas: &self.replicas,
                sinks: self.sinks.settings(),
                gateway: &view.own_name,
            },
            agents,
            SystemTime::now(),
        )
    }

    /// The report of `agent` (every agent when `None`) across the fleet,
    /// asking every peer with `token` (already checked here).
    pub async fn fleet_wide(&self, agent: Option<&str>, token: &str) -> Report {
        let agents = agent.map(|a| vec![a.to_string()]);
        let local = self.local(agents.as_deref());
        let view = self.fleet.view();
        let timeout = self.peer_timeout;
        let calls = view.peers.iter().map(|peer| async move {
            let answer = match tokio::time::timeout(timeout, ask(peer, token, agent)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {timeout:?} (--peer-timeout)")),
            };
            (peer.name.clone(), answer)
        });
        merge(local, futures::future::join_all(calls).await)
    }
}

/// One peer's own report.
async fn ask(peer: &Peer, token: &str, agent: Option<&str>) -> Result<Report, String> {
    let mut client = DrainClient::new(peer.channel.clone())
        .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    let reply = client
        .status(StatusRequest {
            token: token.to_string(),
            agent_id: agent.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unimplemented => {
                "it does not answer fleet status (an older logdrain-gateway): upgrade it"
                    .to_string()
            }
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => format!(
                "it refused the credential ({}); peers need the same signing key and admin token",
                status.message()
            ),
            code => format!("{code:?}: {}", status.message()),
        })?
        .into_inner();
    serde_json::from_str(&reply.report_json).map_err(|e| {
        format!("its report cannot be read ({e}); run matching versions of logdrain-gateway")
    })
}

/// `local` with each peer's answer merged in (by agent; queued totals
/// summed; refused streams summed by reason), or the peer named missing.
pub fn merge(mut report: Report, answers: Vec<(String, Result<Report, String>)>) -> Report {
    for (gateway, answer) in answers {
        let peer = match answer {
            Ok(peer) => peer,
            Err(reason) => {
                report
                    .missing_gateways
                    .push(MissingGateway { gateway, reason });
                continue;
            }
        };
        for mut agent in peer.agents {
            for replica in &mut agent.replicas {
                replica.gateway.clone_from(&gateway);
            }
            for destination in &mut agent.destinations {
                destination.gateway.clone_from(&gateway);
            }
            match report
                .agents
                .iter_mut()
                .find(|a| a.agent_id == agent.agent_id)
            {
                Some(known) => {
                    known.queued_lines += agent.queued_lines;
                    known.queued_bytes += agent.queued_bytes;
                    known.replicas.append(&mut agent.replicas);
                    known.destinations.append(&mut agent.destinations);
                }
                None => report.agents.push(agent),
            }
        }
        for refused in peer.refused_streams {
            match report
                .refused_streams
                .iter_mut()
                .find(|r| r.reason == refused.reason)
            {
                Some(known) => {
                    known.count += refused.count;
                    known.last_unix = known.last_unix.max(refused.last_unix);
                }
                None => report.refused_streams.push(refused),
            }
        }
        report.gateways.push(gateway);
    }
    report.agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    for agent in &mut report.agents {
        agent.replicas.sort_by(|a, b| {
            (&a.agent_server_id, &a.gateway).cmp(&(&b.agent_server_id, &b.gateway))
        });
    }
    report
}

#[cfg(test)]
mod tests {
    use super::super::{AgentStatus, RefusedStreams, SCHEMA};
    use super::*;
    use crate::ingest::replicas::ReplicaInfo;

    fn one(gateway: &str, agent: &str, replica: &str, queued: u64) -> Report {
        Report {
            schema: SCHEMA,
            generated_unix: 1,
            agents: vec![AgentStatus {
                agent_id: agent.into(),
                queued_lines: queued,
                queued_bytes: queued * 10,
                replicas: vec![ReplicaInfo {
                    agent_server_id: replica.into(),
                    connected_streams: 1,
                    last_seen_unix: 1,
                    shim_dropped_total: 0,
                    shim_redacted_total: Default::default(),
                    // What the peer calls itself does not matter.
                    gateway: "0.0.0.0:50051".into(),
                }],
                destinations: Vec::new(),
            }],
            refused_streams: vec![RefusedStreams {
                reason: "unauthenticated".into(),
                count: 2,
                last_unix: queued,
            }],
            gateways: vec![gateway.into()],
            missing_gateways: Vec::new(),
        }
    }

    #[test]
    fn peers_answers_are_merged_by_agent_each_replica_naming_its_gateway() {
        let mut local = one("10.0.0.1:1", "a1", "r1", 3);
        local.agents[0].replicas[0].gateway = "10.0.0.1:1".into();
        let merged = merge(
            local,
            vec![
                ("10.0.0.2:1".into(), Ok(one("x", "a1", "r2", 4))),
                ("10.0.0.3:1".into(), Ok(one("y", "a2", "r3", 5))),
                ("10.0.0.4:1".into(), Err("no answer within 2s".into())),
            ],
        );
        assert_eq!(merged.gateways, ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]);
        assert_eq!(
            merged.missing_gateways,
            [MissingGateway {
                gateway: "10.0.0.4:1".into(),
                reason: "no answer within 2s".into()
            }]
        );
        let a1 = &merged.agents[0];
        assert_eq!((a1.agent_id.as_str(), a1.queued_lines), ("a1", 7));
        let held: Vec<(&str, &str)> = a1
            .replicas
            .iter()
            .map(|r| (r.agent_server_id.as_str(), r.gateway.as_str()))
            .collect();
        assert_eq!(held, [("r1", "10.0.0.1:1"), ("r2", "10.0.0.2:1")]);
        assert_eq!(merged.agents[1].replicas[0].gateway, "10.0.0.3:1");
        assert_eq!(merged.refused_streams[0].count, 6);
        assert_eq!(merged.refused_streams[0].last_unix, 5);
    }

    #[test]
    fn a_missing_peer_is_named_in_the_text_report() {
        let merged = merge(
            one("10.0.0.1:1", "a1", "r1", 0),
            vec![("10.0.0.9:1".into(), Err("no answer within 2s".into()))],
        );
        let text = super::super::render_text(&merged);
        assert!(
            text.contains("MISSING   10.0.0.9:1: no answer within 2s"),
            "{text}"
        );
    }
}
