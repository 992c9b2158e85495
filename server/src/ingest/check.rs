//! `Drain.Check`: the dry run behind `agent-shim --check`.
//!
//! Admits the caller exactly as a ship stream is admitted (protocol version,
//! ids, token), then answers, for every destination the secrets enable,
//! whether this gateway could build its sink. It must not queue anything,
//! store a route, start a worker or count as a replica's stream, and its
//! answer must never contain a secret value.

use logdrain::v1::{CheckReply, CheckRequest, DestinationCheck};
use tonic::Status;

use super::Ingest;
use crate::route::routes_for;

/// Answers one check request.
pub(super) fn check(ingest: &Ingest, request: CheckRequest) -> Result<CheckReply, Status> {
    ingest
        .admit(
            request.protocol_version,
            &request.agent_id,
            &request.agent_server_id,
            &request.token,
        )
        .map_err(|refused| refused.status)?;
    super::validate::check_secret_sizes(&request.secrets)?;
    let secrets = request.secrets.into_iter().collect();
    let destinations = routes_for(&request.agent_id, &secrets, &ingest.credential_key)
        .into_iter()
        .map(|(route, secrets)| DestinationCheck {
            destination: route.kind.name().to_string(),
            problem: ingest
                .engine
                .check_secrets(&route, &secrets)
                .err()
                .map(|problem| problem.to_string())
                .unwrap_or_default(),
        })
        .collect();
    tracing::debug!(agent = %request.agent_id, agent_server = %request.agent_server_id,
        "configuration check answered");
    Ok(CheckReply {
        destinations,
        accepts_handoff: true,
    })
}
