//! What a shim's messages must look like before anything is stored: the
//! opening message (protocol version, ids, boot id, secret sizes) and each
//! batch (sequence numbers, stream and origin of every line). Every refusal
//! names the field and the fix.
//!
//! Pure functions of one message, so the `ship_decode` fuzz target runs them
//! on arbitrary bytes. They must not verify tokens, touch the queue or keep
//! state across messages (which sequence numbers are new is the queue's
//! business).
//!
//! Deliberately accepted: an empty batch (answered with the stream's durable
//! mark); a batch whose sequence numbers are already acked (a resend, acked
//! again) or beyond the next expected one (the shim's buffer dropped lines,
//! or a shim moving between gateways resumes from its oldest unacked line:
//! `ship.rs` counts the skipped seqs); `part`/`more_parts` as sent (the
//! gateway never reassembles pieces, it forwards their marks); any
//! timestamp.

use std::collections::HashMap;

use logdrain::v1::{shim_message, Batch, Line, Open, Origin, ShimMessage, StreamKind};
use tonic::Status;

use logdrain::ids;

/// Largest single secret value accepted.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// The `Open` a stream must start with.
pub fn opening(first: ShimMessage) -> Result<Open, Status> {
    match first.kind {
        Some(shim_message::Kind::Open(open)) => Ok(open),
        _ => Err(Status::invalid_argument(
            "the first message of a stream must be Open (agent id, agent-server id, boot id, token)",
        )),
    }
}

/// Checks an opening message, except its token. Refuses with
/// FAILED_PRECONDITION for another protocol version, INVALID_ARGUMENT
/// otherwise.
pub fn check_open(open: &Open) -> Result<(), Status> {
    check_identity(open.protocol_version, &open.agent_id, &open.agent_server_id)?;
    ids::check_boot_id(&open.boot_id).map_err(refused)?;
    check_secret_sizes(&open.secrets)
}

/// Checks what every shim presents, for a stream or a check, except the
/// token: the protocol version (FAILED_PRECONDITION) and the ids
/// (INVALID_ARGUMENT).
pub fn check_identity(
    protocol_version: u32,
    agent_id: &str,
    agent_server_id: &str,
) -> Result<(), Status> {
    if protocol_version != logdrain::PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "the shim speaks protocol version {protocol_version}, this gateway speaks {}; run matching versions of agent-shim and logdrain-gateway",
            logdrain::PROTOCOL_VERSION
        )));
    }
    ids::check_agent_id(agent_id).map_err(refused)?;
    ids::check_agent_server_id(agent_server_id).map_err(refused)
}

/// INVALID_ARGUMENT naming the id rule.
pub fn refused(error: ids::IdError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Refuses a secret value larger than any real credential, naming the
/// secret (escaped and bounded: the name is the sender's), never the value.
pub fn check_secret_sizes(secrets: &HashMap<String, String>) -> Result<(), Status> {
    match secrets
        .iter()
        .find(|(_, value)| value.len() > MAX_SECRET_BYTES)
    {
        Some((name, _)) => {
            let name: String = name.escape_debug().take(64).collect();
            Err(Status::invalid_argument(format!(
                "the secret {name} is longer than {MAX_SECRET_BYTES} bytes; check its value"
            )))
        }
        None => Ok(()),
    }
}

/// Checks a batch's sequence numbers and every line's stream and origin.
pub fn check_batch(batch: &Batch) -> Result<(), Status> {
    if batch.first_seq == 0 {
        return Err(Status::invalid_argument(
            "Batch.first_seq is 0; sequence numbers start at 1",
        ));
    }
    let count = batch.lines.len() as u64;
    if batch.first_seq.checked_add(count).is_none() {
        return Err(Status::invalid_argument(format!(
            "Batch.first_seq {} plus its {count} lines overflows u64; sequence numbers restart at 1 with a new boot id",
            batch.first_seq
        )));
    }
    for (i, line) in batch.lines.iter().enumerate() {
        check_line(i, line)?;
    }
    Ok(())
}

fn check_line(index: usize, line: &Line) -> Result<(), Status> {
    if StreamKind::try_from(line.stream).map_or(true, |s| s == StreamKind::Unspecified) {
        return Err(Status::invalid_argument(format!(
            "line {index} of the batch has stream {}; use STDOUT (1) or STDERR (2)",
            line.stream
        )));
    }
    if Origin::try_from(line.origin).map_or(true, |o| o == Origin::Unspecified) {
        return Err(Status::invalid_argument(format!(
            "line {index} of the batch has origin {}; use AGENT (1) or SHIM (2)",
            line.origin
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn open() -> Open {
        Open {
            token: String::new(),
            agent_id: "agent-a".into(),
            agent_server_id: "replica-1".into(),
            boot_id: "0123456789abcdef0123456789abcdef".into(),
            secrets: Default::default(),
            protocol_version: logdrain::PROTOCOL_VERSION,
            handoff: None,
        }
    }

    fn line(stream: i32, origin: i32) -> Line {
        Line {
            timestamp_ns: 0,
            stream,
            data: Default::default(),
            origin,
            part: 0,
            more_parts: false,
        }
    }

    #[test]
    fn a_well_formed_open_passes() {
        assert!(check_open(&open()).is_ok());
    }

    #[test]
    fn another_protocol_version_is_a_failed_precondition() {
        let status = check_open(&Open {
            protocol_version: 2,
            ..open()
        })
        .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("protocol version 2"));
    }

    #[test]
    fn bad_boot_ids_are_refused() {
        for boot_id in ["", "a-b", &"a".repeat(ids::MAX_BOOT_ID + 1)] {
            let status = check_open(&Open {
                boot_id: boot_id.into(),
                ..open()
            })
            .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains("boot id"));
        }
    }

    #[test]
    fn an_oversized_secret_is_named_but_not_shown() {
        let mut bad = open();
        bad.secrets
            .insert("DATADOG_TOKEN".into(), "s".repeat(MAX_SECRET_BYTES + 1));
        let status = check_open(&bad).unwrap_err();
        assert!(status.message().contains("DATADOG_TOKEN"));
        assert!(!status.message().contains("sss"));
    }

    #[test]
    fn a_batch_first_is_not_an_opening() {
        let batch = ShimMessage {
            kind: Some(shim_message::Kind::Batch(Batch::default())),
        };
        assert_eq!(opening(batch).unwrap_err().code(), Code::InvalidArgument);
        assert!(opening(ShimMessage { kind: None }).is_err());
    }

    #[test]
    fn sequence_zero_and_overflow_are_refused() {
        let zero = Batch {
            first_seq: 0,
            lines: vec![line(1, 1)],
            ..Batch::default()
        };
        assert!(check_batch(&zero)
            .unwrap_err()
            .message()
            .contains("first_seq is 0"));
        let overflow = Batch {
            first_seq: u64::MAX,
            lines: vec![line(1, 1)],
            ..Batch::default()
        };
        assert!(check_batch(&overflow)
            .unwrap_err()
            .message()
            .contains("overflows"));
    }

    #[test]
    fn empty_batches_and_any_part_marks_are_accepted() {
        assert!(check_batch(&Batch {
            first_seq: 7,
            lines: vec![],
            ..Batch::default()
        })
        .is_ok());
        let mut odd = line(2, 2);
        odd.part = 9;
        odd.more_parts = true;
        assert!(check_batch(&Batch {
            first_seq: 1,
            lines: vec![odd],
            ..Batch::default()
        })
        .is_ok());
    }

    #[test]
    fn unknown_streams_and_origins_are_refused_naming_the_line() {
        for (stream, origin, what) in [(0, 1, "stream 0"), (99, 1, "stream 99"), (1, 0, "origin 0")]
        {
            let batch = Batch {
                first_seq: 1,
                lines: vec![line(1, 1), line(stream, origin)],
                ..Batch::default()
            };
            let status = check_batch(&batch).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains("line 1"), "{}", status.message());
            assert!(status.message().contains(what), "{}", status.message());
        }
    }
}
