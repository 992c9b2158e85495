//! The gateway's decode path for shim messages on arbitrary bytes: prost
//! decoding of `ShimMessage`, then the same checks a ship stream applies
//! (`ingest::validate`), then the routes an admitted `Open` enables.
//!
//! Checks: nothing panics; a refusal is INVALID_ARGUMENT or (protocol
//! version only) FAILED_PRECONDITION and never echoes a secret's value; an
//! admitted batch really has consecutive, non-overflowing sequence numbers
//! and known streams and origins.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logdrain::v1::{shim_message, Origin, ShimMessage, StreamKind};
use logdrain_gateway::ingest::validate::{check_batch, check_open, opening};
use logdrain_gateway::route::routes_for;
use prost::Message;
use tonic::Code;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = ShimMessage::decode(data) else {
        return;
    };
    match message.kind.clone() {
        Some(shim_message::Kind::Open(open)) => {
            let admitted = opening(message).expect("an Open is an opening");
            assert_eq!(admitted, open);
            match check_open(&open) {
                Ok(()) => {
                    let secrets = open.secrets.clone().into_iter().collect();
                    for (route, _) in routes_for(&open.agent_id, &secrets, b"fuzz-key") {
                        assert_eq!(route.agent_id, open.agent_id);
                    }
                }
                Err(status) => {
                    assert!(matches!(
                        status.code(),
                        Code::InvalidArgument | Code::FailedPrecondition
                    ));
                    for value in open.secrets.values().filter(|v| v.len() >= 8) {
                        assert!(!status.message().contains(value.as_str()));
                    }
                }
            }
        }
        Some(shim_message::Kind::Batch(batch)) => {
            assert!(opening(message).is_err(), "a Batch is not an opening");
            match check_batch(&batch) {
                Ok(()) => {
                    assert!(batch.first_seq >= 1);
                    assert!(batch
                        .first_seq
                        .checked_add(batch.lines.len() as u64)
                        .is_some());
                    for line in &batch.lines {
                        assert!(matches!(
                            StreamKind::try_from(line.stream),
                            Ok(StreamKind::Stdout | StreamKind::Stderr)
                        ));
                        assert!(matches!(
                            Origin::try_from(line.origin),
                            Ok(Origin::Agent | Origin::Shim)
                        ));
                    }
                }
                Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
            }
        }
        None => assert!(opening(message).is_err()),
    }
});
