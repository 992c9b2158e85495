//! Sentry DSN parsing, as the shim checks it and as the gateway turns it into
//! an endpoint.
//!
//! Checks: neither ever panics; a DSN the shared rule accepts, written back
//! in its canonical form, parses to the same parts (and is accepted by the
//! gateway exactly when the original is); problems never quote the DSN.
#![no_main]

use std::sync::OnceLock;

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

/// Every problem message, from inputs that show each problem once.
fn fixed_wording() -> &'static str {
    static WORDING: OnceLock<String> = OnceLock::new();
    WORDING.get_or_init(|| {
        const KEY: &str = "0123456789abcdef0123456789abcdef";
        [
            String::new(),
            "ftp://x/1".into(),
            "https://a b@h/1".into(),
            "https://h/1".into(),
            "https://k@h/1".into(),
            format!("https://{KEY}@/1"),
            format!("https://{KEY}@h!/1"),
            format!("https://{KEY}@h:99999/1"),
            format!("https://{KEY}@h/x"),
        ]
        .iter()
        .filter_map(|dsn| sentry_dsn(dsn).err())
        .map(|problem| problem.to_string())
        .chain([logdrain::secrets::SENTRY_DSN_NOT_AN_ENDPOINT.to_string()])
        .collect::<Vec<_>>()
        .join("\n")
    })
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
            // The help text itself shows an example DSN (`https://<32 hex
            // characters>@...`): only input that is not part of the fixed
            // wording counts as quoted.
            if trimmed.len() >= 8 && shown.contains(trimmed) {
                assert!(
                    fixed_wording().contains(trimmed),
                    "a problem quotes the DSN"
                );
            }
        }
    }
});
