//! What `agent-shim` and `logdrain-gateway` must agree on, and nothing else:
//!
//! * the wire protocol: the gRPC service generated from
//!   `proto/logdrain.proto` ([`v1`]) and a few helpers about its messages;
//! * the contract of destination secrets ([`secrets`]): which variables are
//!   forwarded, which destinations they enable, and which values are valid,
//!   so the shim's check at start and the gateway's sinks apply the same
//!   rules;
//! * the rule for tenant-supplied endpoints ([`endpoint`]): public
//!   addresses only;
//! * the rules for the ids a shim sends ([`ids`]), and the one parser of
//!   sizes and of durations ([`units`]) behind every such option;
//! * how a client reaches a gateway over gRPC ([`client`]), backoff between
//!   attempts ([`backoff`]) and the error chain ([`error_chain`]);
//! * how a fleet of gateways is found and shared out ([`fleet`]): names
//!   resolved to every address, the rendezvous ranking of gateways.
//!
//! It must not contain any shim or gateway behaviour: no I/O beyond the
//! generated client and server, connecting, resolving gateway names, and reading the PEM files of
//! the client's options; no vendor endpoints, headers or clients.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod endpoint;
pub mod fleet;
pub mod ids;
pub mod secrets;
pub mod units;

pub use secrets::SECRET_VARS;

/// Generated protobuf and tonic code for package `logdrain.v1`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("logdrain.v1");
}

/// The protocol version this build speaks (sent in `Open.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest encoded gRPC message either side accepts (16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// An error and its sources, joined with ": ", a source left out when the
/// text so far already holds it (transport and HTTP errors keep the useful
/// part, like "Connection refused" or an untrusted certificate, in their
/// sources).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl v1::StreamKind {
    /// The name vendors receive: `stdout` or `stderr`.
    pub fn name(self) -> &'static str {
        match self {
            v1::StreamKind::Stderr => "stderr",
            _ => "stdout",
        }
    }
}
