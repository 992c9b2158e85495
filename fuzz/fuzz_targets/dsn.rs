//! Sentry DSN parsing, as the shim checks it and as the gateway turns it into
//! an endpoint.
//!
//! Checks: neither ever panics; a DSN the shared rule accepts, written back
//! in its canonical form, parses to the same parts (and is accepted by the
//! gateway exactly when the original is); problems never quote the DSN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use logdrain::secrets::{sentry_dsn, SentryDsn};
use logdrain_gateway::sinks::sentry::config::parse_dsn;

fn canonical(dsn: &SentryDsn<'_>) -> String {
    let port = dsn.port.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}@{}{}{}/{}",
        dsn.scheme,
        dsn.public_key(),
        dsn.host,
        port,
        dsn.path,
        dsn.project_id
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let gateway = parse_dsn(text);
    match sentry_dsn(text) {
        Ok(dsn) => {
            let again = canonical(&dsn);
            let reparsed = sentry_dsn(&again).expect("the canonical form of a valid DSN parses");
            assert_eq!(reparsed, dsn, "round trip changed the DSN");
            assert_eq!(
                parse_dsn(&again).is_ok(),
                gateway.is_ok(),
                "the gateway judges the canonical form differently"
            );
        }
        Err(problem) => {
            assert!(
                gateway.is_err(),
                "the gateway accepts what the rule refuses"
            );
            let shown = problem.to_string();
            let trimmed = text.trim();
            if trimmed.len() >= 8 {
                assert!(!shown.contains(trimmed), "a problem quotes the DSN");
            }
        }
    }
});
