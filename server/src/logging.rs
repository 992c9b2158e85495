//! The gateway's log: `LOGDRAIN_LOG` (an `EnvFilter`, default `info`) on
//! stderr, with one rule no filter can lift: the AWS SDK's crates log at
//! most `info`. At `debug` and `trace` they print the tenant's credentials
//! (the access key id in every resolved identity, a session token in the
//! signed request), and tenant secrets must never reach a log.

use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::prelude::*;

/// Whether an event or span may be logged at all, whatever `LOGDRAIN_LOG`
/// asks for: nothing more verbose than `info` from the AWS SDK.
pub fn may_log(meta: &Metadata<'_>) -> bool {
    let aws = meta.target().starts_with("aws_");
    !aws || *meta.level() <= Level::INFO
}

/// Installs the subscriber: `LOGDRAIN_LOG`, then [`may_log`].
pub fn init() {
    let filter = EnvFilter::try_from_env("LOGDRAIN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(filter)
        .with_filter(filter_fn(may_log));
    tracing_subscriber::registry().with(layer).init();
}
