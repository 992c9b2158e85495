//! The pieces of an HTTP exchange that every vendor sink handles the same
//! way: what a status usually means ([`status_class`]), `Retry-After`
//! ([`retry_after`]), a short excerpt of an error answer
//! ([`read_detail`], [`excerpt`], [`answered`]), a request that got no answer
//! ([`transport_error`]), keeping secrets out of all of it
//! ([`redact`], always before an excerpt is cut), what may be shown of an
//! endpoint a tenant chose ([`Origin`]), and the gzip request body
//! ([`gzip`]).
//!
//! Each vendor's `service::classify` stays the one place that decides what
//! its answers mean; it builds on these pieces. This module must not
//! decide for a vendor, retry, wait, or put a URL or a secret into a
//! reason.

use std::cell::RefCell;
use std::error::Error as _;
use std::io;
use std::time::{Duration, SystemTime};

use flate2::{Compress, Compression, FlushCompress, Status};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;

use crate::sinks::engine::retry::parse_retry_after;
use crate::sinks::SinkError;

/// Deflate level of every request body: fast, and most of what higher
/// levels would save on log text.
const GZIP_LEVEL: u32 = 2;

thread_local! {
    /// The compressor of this thread, reset for every body: a new one
    /// allocates and clears several hundred KiB of tables each time.
    static DEFLATE: RefCell<Option<Compress>> = const { RefCell::new(None) };
}

/// Most bytes of an error answer kept in a reason.
pub const DETAIL_BYTES: usize = 300;

/// What replaces a secret in any text.
pub const REDACTED: &str = "<redacted>";

/// What an HTTP status means for the engine, as the vendors' log intakes
/// use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx.
    Accepted,
    /// 408, 429, 5xx: worth trying again.
    Retryable,
    /// 400, 413: this payload will never be accepted.
    PayloadRejected,
    /// 401, 403: the credentials are refused.
    Unauthorized,
    /// Anything else (3xx, 404, …): usually a wrong endpoint.
    Other,
}

/// The usual meaning of `status`:
///
/// | status | class |
/// |---|---|
/// | 2xx | [`StatusClass::Accepted`] |
/// | 408, 429, 5xx | [`StatusClass::Retryable`] |
/// | 400, 413 | [`StatusClass::PayloadRejected`] |
/// | 401, 403 | [`StatusClass::Unauthorized`] |
/// | anything else | [`StatusClass::Other`] |
pub fn status_class(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Accepted,
        408 | 429 | 500..=599 => StatusClass::Retryable,
        400 | 413 => StatusClass::PayloadRejected,
        401 | 403 => StatusClass::Unauthorized,
        _ => StatusClass::Other,
    }
}

/// The reason of an answer: `"<vendor> answered <status>"`, with `detail`
/// (already redacted) after a colon when there is one.
pub fn answered(vendor: &str, status: StatusCode, detail: &str) -> String {
    if detail.is_empty() {
        format!("{vendor} answered {status}")
    } else {
        format!("{vendor} answered {status}: {detail}")
    }
}

/// The wait an answer's `Retry-After` header asks for (delta-seconds or an
/// HTTP-date, parsed by [`parse_retry_after`]); `None` when it is missing or
/// unreadable.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()))
}

/// What a status means for a vendor that follows the usual HTTP meanings
/// ([`status_class`]): accepted, retryable with `Retry-After`, payload
/// rejected, credentials refused, or misconfigured. `auth_hint` and
/// `config_hint`, when not empty, tell the operator what to check.
pub fn usual_meaning(
    vendor: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    detail: &str,
    auth_hint: &str,
    config_hint: &str,
) -> Result<(), SinkError> {
    let reason = answered(vendor, status, detail);
    let hinted = |hint: &str| {
        if hint.is_empty() {
            reason.clone()
        } else {
            format!("{reason} ({hint})")
        }
    };
    match status_class(status.as_u16()) {
        StatusClass::Accepted => Ok(()),
        StatusClass::Retryable => Err(SinkError::Retryable {
            reason,
            retry_after,
        }),
        StatusClass::PayloadRejected => Err(SinkError::PayloadRejected { reason }),
        StatusClass::Unauthorized => Err(SinkError::Unauthorized {
            reason: hinted(auth_hint),
        }),
        StatusClass::Other => Err(SinkError::Config {
            reason: hinted(config_hint),
        }),
    }
}

/// Gzips a whole body at once, straight into the returned `Vec` (no
/// staging buffer), with this thread's compressor. Encoders write their
/// JSON into a `Vec` first and compress it in one call.
pub fn gzip(json: &[u8]) -> io::Result<Vec<u8>> {
    DEFLATE.with(|slot| {
        // Taken out while in use, so the slot is never borrowed twice.
        let mut deflate = slot
            .borrow_mut()
            .take()
            .unwrap_or_else(|| Compress::new_gzip(Compression::new(GZIP_LEVEL), 15));
        deflate.reset();
        let body = gzip_with(&mut deflate, json);
        *slot.borrow_mut() = Some(deflate);
        body
    })
}

fn gzip_with(deflate: &mut Compress, json: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(json.len() / 4 + 64);
    loop {
        let read = usize::try_from(deflate.total_in()).unwrap_or(json.len());
        let rest = json.get(read..).unwrap_or_default();
        match deflate.compress_vec(rest, &mut out, FlushCompress::Finish) {
            Ok(Status::StreamEnd) => return Ok(out),
            Ok(Status::Ok | Status::BufError) => out.reserve(out.capacity().max(4 * 1024)),
            Err(e) => return Err(io::Error::other(e)),
        }
    }
}

/// Who chose the endpoint of a request, which decides what of its answers
/// and failures may be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The vendor's own endpoint, or the operator's override: an excerpt of
    /// an answer and the cause of a failure are shown.
    Vendor,
    /// An endpoint a tenant supplied in `secret` (a Sentry DSN's host). The
    /// rule of [`crate::sinks::endpoint`] refused it, or it is a public
    /// host: `quoted` (a host of the vendor's own) shows answers and
    /// causes; otherwise only the status is shown, and a failure to connect
    /// says just that, so the gateway tells a tenant nothing about hosts
    /// and ports that are not the vendor's.
    Tenant { secret: &'static str, quoted: bool },
}

impl Origin {
    fn quoted(self) -> bool {
        match self {
            Origin::Vendor => true,
            Origin::Tenant { quoted, .. } => quoted,
        }
    }
}

/// What a vendor answered: its status, headers and a short, redacted
/// excerpt of its body (empty when `origin` is not quoted).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub detail: String,
}

/// Sends `request` and reads the answer. The body is read even on success,
/// so the connection can be reused. A request that got no answer is a
/// [`transport_error`] (retryable, never naming the URL), and `secret` is
/// redacted from the excerpt. What the answer means is the vendor's
/// `classify`.
pub async fn send(
    vendor: &str,
    request: reqwest::RequestBuilder,
    secret: &str,
    origin: Origin,
) -> Result<Reply, SinkError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(vendor, e, secret, origin))?;
    let status = response.status();
    let headers = response.headers().clone();
    let detail = read_detail(response, &[secret]).await;
    Ok(Reply {
        status,
        headers,
        detail: if origin.quoted() {
            detail
        } else {
            String::new()
        },
    })
}

/// Most bytes of an answer's body read for its excerpt: far more than
/// [`DETAIL_BYTES`], so a secret the excerpt could reach is read whole and
/// redacted before the excerpt is cut.
pub const READ_BYTES: usize = 16 * 1024;

/// An excerpt of the answer's body ([`excerpt`] of its first
/// [`READ_BYTES`]). Reading it also lets the connection be reused.
pub async fn read_detail(mut response: reqwest::Response, secrets: &[&str]) -> String {
    let mut kept = Vec::new();
    while kept.len() < READ_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => kept.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    // Reading stopped at the limit: the body may go on.
    let cut = kept.len() >= READ_BYTES;
    kept.truncate(READ_BYTES);
    excerpt(&kept, cut, secrets)
}

/// At most [`DETAIL_BYTES`] of `body`, on one line, with `secrets`
/// redacted first and cut after, so no part of a secret is ever shown.
/// `cut` says the body went on after `body`: a secret's beginning left at
/// its end after redacting is dropped, since the rest was not read.
pub fn excerpt(body: &[u8], cut: bool, secrets: &[&str]) -> String {
    let mut text = redact(&String::from_utf8_lossy(body), secrets);
    if cut {
        let partial = secrets
            .iter()
            .filter_map(|s| {
                (1..s.len())
                    .rev()
                    .find(|&n| text.as_bytes().ends_with(&s.as_bytes()[..n]))
            })
            .max()
            .unwrap_or(0);
        text.truncate(text.len() - partial);
    }
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    cut_at(&line, DETAIL_BYTES).to_string()
}

/// `text` cut to at most `max` bytes, at a character boundary.
pub fn cut_at(text: &str, max: usize) -> &str {
    let mut end = max.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A request to `vendor` that got no answer: the network is worth
/// retrying; a request that could not even be built, or to a tenant
/// endpoint the rule refuses, is a configuration problem. The reason holds
/// the error and its causes (for a quoted [`Origin`]), never the URL (it may
/// carry a credential), with `secret` redacted.
pub fn transport_error(
    vendor: &str,
    error: reqwest::Error,
    secret: &str,
    origin: Origin,
) -> SinkError {
    if let (Origin::Tenant { secret: name, .. }, Some(refused)) =
        (origin, crate::sinks::endpoint::refusal(&error))
    {
        return SinkError::Config {
            reason: crate::sinks::SecretError::NotPublic {
                secret: name,
                kind: refused.0,
            }
            .to_string(),
        };
    }
    let building = error.is_builder();
    let timeout = error.is_timeout();
    let error = error.without_url();
    let mut reason = format!("request to {vendor} failed");
    if origin.quoted() {
        reason.push_str(&format!(": {error}"));
        let mut source = error.source();
        while let Some(cause) = source {
            reason.push_str(": ");
            reason.push_str(&cause.to_string());
            source = cause.source();
        }
        if timeout {
            reason.push_str(" (timed out)");
        }
    } else {
        reason.push_str(": could not connect or got no answer");
    }
    let reason = redact(&reason, &[secret]);
    if building {
        SinkError::Config { reason }
    } else {
        SinkError::Retryable {
            reason,
            retry_after: None,
        }
    }
}

/// Replaces every occurrence of each of `secrets` in `text` with
/// [`REDACTED`]; empty secrets are skipped.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(secret, REDACTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    fn gunzip(body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn bodies_gzipped_one_after_another_each_decompress_to_their_input() {
        // The compressor is reused: no state may leak from one body into
        // the next, whatever their sizes.
        let mut state = 7u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let bodies = [
            b"[]".to_vec(),
            b"{\"message\":\"hello\"}".repeat(10_000),
            noise,
            Vec::new(),
            b"x".to_vec(),
        ];
        for body in bodies.iter().chain(bodies.iter()) {
            let gzipped = gzip(body).unwrap();
            assert_eq!(&gzipped[..2], [0x1f, 0x8b], "a gzip header");
            assert!(gunzip(&gzipped) == *body, "{} bytes", body.len());
        }
    }

    #[test]
    fn statuses_fall_into_their_usual_classes() {
        let cases = [
            (200, StatusClass::Accepted),
            (202, StatusClass::Accepted),
            (299, StatusClass::Accepted),
            (408, StatusClass::Retryable),
            (429, StatusClass::Retryable),
            (500, StatusClass::Retryable),
            (599, StatusClass::Retryable),
            (400, StatusClass::PayloadRejected),
            (413, StatusClass::PayloadRejected),
            (401, StatusClass::Unauthorized),
            (403, StatusClass::Unauthorized),
            (301, StatusClass::Other),
            (404, StatusClass::Other),
            (415, StatusClass::Other),
        ];
        for (status, class) in cases {
            assert_eq!(status_class(status), class, "{status}");
        }
    }

    #[test]
    fn an_answer_reason_quotes_the_detail_only_when_there_is_one() {
        assert_eq!(
            answered("Datadog", StatusCode::BAD_REQUEST, "bad json"),
            "Datadog answered 400 Bad Request: bad json"
        );
        assert_eq!(
            answered("Datadog", StatusCode::BAD_GATEWAY, ""),
            "Datadog answered 502 Bad Gateway"
        );
    }

    #[test]
    fn retry_after_is_read_from_the_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn redaction_removes_every_occurrence_of_every_secret() {
        assert_eq!(
            redact("key abc and abc again", &["abc"]),
            "key <redacted> and <redacted> again"
        );
        assert_eq!(
            redact("id AKIA1 secret s3cr3t", &["AKIA1", "s3cr3t"]),
            "id <redacted> secret <redacted>"
        );
        assert_eq!(redact("nothing", &[""]), "nothing");
        assert_eq!(redact("nothing", &[]), "nothing");
    }

    /// No character of a secret made of upper-case letters and digits is
    /// left in `text` (`<redacted>` and the padding are lower case).
    fn assert_no_part_of_a_secret(text: &str) {
        assert!(
            !text
                .bytes()
                .any(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
            "part of a secret in {text:?}"
        );
    }

    #[test]
    fn a_secret_at_every_cut_position_of_the_excerpt_is_redacted_whole() {
        let secret = "SK0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
        for at in 0..=DETAIL_BYTES + secret.len() {
            let body = format!("{}{secret}{}", ".".repeat(at), ".".repeat(40));
            let shown = excerpt(body.as_bytes(), false, &[secret]);
            assert_no_part_of_a_secret(&shown);
            assert!(shown.len() <= DETAIL_BYTES);
        }
    }

    #[test]
    fn a_long_secret_cut_where_reading_stopped_is_not_shown_in_part() {
        // Long secrets (an AWS session token) redacted one after another
        // shrink the text, so the excerpt reaches where reading stopped.
        let secret: String = (0..1200)
            .map(|i| char::from(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[i % 36]))
            .collect();
        let body = format!("{secret} ").repeat(READ_BYTES / secret.len() + 2);
        for cut in 0..=secret.len() {
            let read = &body.as_bytes()[..READ_BYTES - cut];
            assert_no_part_of_a_secret(&excerpt(read, true, &[&secret]));
        }
    }

    #[test]
    fn an_excerpt_is_cut_at_a_character_boundary() {
        let body = "é".repeat(DETAIL_BYTES);
        let shown = excerpt(body.as_bytes(), false, &[]);
        assert_eq!(shown.len(), DETAIL_BYTES);
        assert!(shown.chars().all(|c| c == 'é'));
    }

    #[tokio::test]
    async fn a_request_without_an_answer_is_retryable_and_carries_no_url_or_secret() {
        // Nothing listens on port 1 of the loopback address: the connection
        // is refused at once.
        let client = reqwest::Client::new();
        let error = client
            .post("http://127.0.0.1:1/intake?dd-api-key=tok3n")
            .send()
            .await
            .unwrap_err();
        match transport_error("Datadog", error, "tok3n", Origin::Vendor) {
            SinkError::Retryable {
                reason,
                retry_after,
            } => {
                assert!(reason.starts_with("request to Datadog failed"), "{reason}");
                assert!(!reason.contains("tok3n"), "{reason}");
                assert!(!reason.contains("127.0.0.1:1/intake"), "{reason}");
                assert_eq!(retry_after, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_a_configuration_problem() {
        let client = reqwest::Client::new();
        let error = client
            .post("http://127.0.0.1:1/")
            .header("bad\nname", "x")
            .send()
            .await
            .unwrap_err();
        assert!(matches!(
            transport_error("Sentry", error, "", Origin::Vendor),
            SinkError::Config { .. }
        ));
    }
}
