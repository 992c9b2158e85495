//! The logdrain wire protocol: the gRPC service between `agent-shim` and
//! `logdrain-gateway`, generated from `proto/logdrain.proto`.
//!
//! Owns the message types and a few helpers about them. It must not contain
//! any shim or gateway behaviour.
#![forbid(unsafe_code)]

/// Generated protobuf and tonic code for package `logdrain.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("logdrain.v1");
}

/// The protocol version this build speaks (sent in `Open.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest encoded gRPC message either side accepts (16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Environment variable names of the destination secrets the shim forwards.
pub const SECRET_VARS: &[&str] = &[
    "DATADOG_TOKEN",
    "DATADOG_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "SENTRY_DSN",
    "NEW_RELIC_LICENSE_KEY",
];

impl v1::StreamKind {
    /// The name vendors receive: `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            v1::StreamKind::Stderr => "stderr",
            _ => "stdout",
        }
    }
}
