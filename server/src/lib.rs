//! logdrain-gateway: the central service of logdrain.
//!
//! The pipeline, one module per stage:
//!
//! ```text
//! agent-shim ──gRPC──▶ ingest ──▶ queue (sled) ──▶ sinks::engine ──▶ sinks::{datadog, ...}
//!                        │                              │
//!                        └──▶ tail (live)               └──▶ metrics
//! ```
//!
//! * [`ingest`] authenticates shim streams, de-duplicates batches and acks
//!   only what the queue made durable; it also serves live `tail`.
//! * [`queue`] is our own small queue interface over sled: segments per agent,
//!   a cursor per route, group commit.
//! * [`route`] decides which destinations a stream's secrets enable.
//! * [`sinks`] holds the delivery engine (batching, retry, backoff,
//!   Retry-After, isolation — written once) and one folder per vendor.
//! * [`metrics`] names every metric the gateway exports.
//! * [`tls`] loads the gateway's certificates and runs TLS handshakes.
//! * [`logging`] sets up the log, keeping credentials the AWS SDK would
//!   print out of it.
//! * [`fleet`] knows the other gateways of the fleet, which the tail and
//!   the status ask.
//! * [`status`] renders what the others know (replicas, destinations,
//!   delivery state, where to look) for the admin API, `status` and the
//!   status page.
//!
//! The binary (`main.rs`) only parses [`config::Config`] and calls into here.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod fleet;
pub mod handoff;
pub mod http;
pub mod http_listener;
pub mod ingest;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod queue;
pub mod route;
pub mod serve;
pub mod shutdown;
pub mod sinks;
pub mod status;
pub mod tail_client;
pub mod tls;
