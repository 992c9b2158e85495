//! The AWS SDK calls to CloudWatch Logs and the classification of their
//! failures.
//!
//! [`Service::deliver_stream`] writes one log stream's puts in order. A
//! stream this sink has not written to yet is created first
//! (CreateLogStream, and CreateLogGroup when the group is missing;
//! `ResourceAlreadyExistsException` counts as success). A put that fails
//! with `ResourceNotFoundException` (the group or stream was deleted)
//! creates them and is sent once more: that is CloudWatch's protocol for a
//! missing destination, not a retry policy.
//!
//! [`classify`] is the one decision about what a failure means for the
//! engine; [`most_severe`] picks the error a send reports when several
//! streams failed. Reasons name the call, the group and stream, CloudWatch's
//! error code and message, with every key redacted. This module must not
//! retry, back off or wait: the engine does.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_cloudwatchlogs::types::{InputLogEvent, RejectedLogEventsInfo};
use aws_sdk_cloudwatchlogs::Client;

use super::outcome::Verdict;
use super::request_builder::Event;
use crate::queue::Cursor;
use crate::sinks::http::{self, redact, StatusClass};
use crate::sinks::SinkError;

/// Most log streams remembered as existing; beyond it the set is cleared
/// (creating a stream that exists costs one call answered
/// `ResourceAlreadyExistsException`).
pub const MAX_KNOWN_STREAMS: usize = 10_000;

/// Most characters of CloudWatch's error message kept in a reason.
const DETAIL_CHARS: usize = 300;

/// The calls this sink makes; each names the IAM permission it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    CreateLogGroup,
    CreateLogStream,
    PutLogEvents,
}

impl Call {
    pub fn name(self) -> &'static str {
        match self {
            Call::CreateLogGroup => "CreateLogGroup",
            Call::CreateLogStream => "CreateLogStream",
            Call::PutLogEvents => "PutLogEvents",
        }
    }

    /// The IAM action the call needs.
    pub fn permission(self) -> &'static str {
        match self {
            Call::CreateLogGroup => "logs:CreateLogGroup",
            Call::CreateLogStream => "logs:CreateLogStream",
            Call::PutLogEvents => "logs:PutLogEvents",
        }
    }
}

/// Why a call failed, as facts taken from the SDK's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// CloudWatch answered with an error.
    Answer {
        code: Option<String>,
        status: u16,
        message: Option<String>,
    },
    /// No usable answer: timeout, connection failure, or an answer that
    /// could not be read.
    Transport { detail: String },
    /// The request could not be built or sent as configured (for example a
    /// bad endpoint).
    Setup { detail: String },
}

impl Failure {
    pub fn of<E>(error: &SdkError<E, HttpResponse>) -> Failure
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let detail = || DisplayErrorContext(error).to_string();
        match error {
            SdkError::ServiceError(service) => Failure::Answer {
                code: error.code().map(str::to_string),
                status: service.raw().status().as_u16(),
                message: error.message().map(str::to_string),
            },
            SdkError::ConstructionFailure(_) => Failure::Setup { detail: detail() },
            SdkError::DispatchFailure(dispatch) if dispatch.is_user() => {
                Failure::Setup { detail: detail() }
            }
            _ => Failure::Transport { detail: detail() },
        }
    }

    fn code(&self) -> Option<&str> {
        match self {
            Failure::Answer { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    fn is_code(&self, wanted: &str) -> bool {
        self.code() == Some(wanted)
    }
}

const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalServerError",
    "RequestTimeout",
    "RequestTimeoutException",
    // A concurrent create of the same group or stream.
    "OperationAbortedException",
    // Still missing right after it was created (creation is eventually
    // consistent).
    "ResourceNotFoundException",
];

const CREDENTIAL_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
];

const PAYLOAD_CODES: &[&str] = &[
    "InvalidParameterException",
    "SerializationException",
    "ValidationException",
];

/// What a failed call means for the engine: the one place this is decided.
///
/// | failure | result |
/// |---|---|
/// | `ThrottlingException`, `ServiceUnavailableException`, other 5xx/429/408 codes, timeouts, network errors | [`SinkError::Retryable`] |
/// | `AccessDeniedException`, `UnrecognizedClientException`, `InvalidSignatureException`, `ExpiredTokenException` (and the STS spellings), other 401/403 | [`SinkError::Unauthorized`] (keep the data) |
/// | `InvalidParameterException` (and `SerializationException`, `ValidationException`) | [`SinkError::PayloadRejected`] (split, never loop) |
/// | `LimitExceededException` (too many groups or streams in the account), any other answer, a request that cannot be built | [`SinkError::Config`] (keep the data) |
///
/// `target` names the group and stream; `secrets` are redacted from the
/// reason.
pub fn classify(call: Call, target: &str, failure: &Failure, secrets: &[&str]) -> SinkError {
    let what = format!("CloudWatch Logs {} to {target}", call.name());
    let (code, status, message) = match failure {
        Failure::Transport { detail } => {
            return SinkError::Retryable {
                reason: redact(
                    &format!("{what} failed: {}", short(detail, secrets)),
                    secrets,
                ),
                retry_after: None,
            };
        }
        Failure::Setup { detail } => {
            return SinkError::Config {
                reason: redact(
                    &format!(
                        "{what} could not be sent: {} (is the CloudWatch endpoint right?)",
                        short(detail, secrets)
                    ),
                    secrets,
                ),
            };
        }
        Failure::Answer {
            code,
            status,
            message,
        } => (code.as_deref(), *status, message.as_deref()),
    };
    let answered = match (code, message) {
        (Some(code), Some(message)) => format!("{code}: {}", short(message, secrets)),
        (Some(code), None) => code.to_string(),
        (None, Some(message)) => format!("HTTP {status}: {}", short(message, secrets)),
        (None, None) => format!("HTTP {status}"),
    };
    let reason = redact(&format!("{what} answered {answered}"), secrets);
    let code = code.unwrap_or_default();
    let refused = http::status_class(status) == StatusClass::Unauthorized;
    if CREDENTIAL_CODES.contains(&code) || (code.is_empty() && refused) {
        return SinkError::Unauthorized {
            reason: format!("{reason} (the key needs {})", call.permission()),
        };
    }
    if RETRYABLE_CODES.contains(&code) {
        return SinkError::Retryable {
            reason,
            retry_after: None,
        };
    }
    if PAYLOAD_CODES.contains(&code) {
        return SinkError::PayloadRejected { reason };
    }
    if code == "LimitExceededException" {
        return SinkError::Config {
            reason: format!("{reason} (an account quota of CloudWatch Logs is reached)"),
        };
    }
    // Without a code this sink knows, the status decides; a 400 or 413 is
    // not taken for a bad payload, since CloudWatch names those by code.
    match http::status_class(status) {
        StatusClass::Retryable => SinkError::Retryable {
            reason,
            retry_after: None,
        },
        StatusClass::Unauthorized => SinkError::Unauthorized { reason },
        StatusClass::Accepted | StatusClass::PayloadRejected | StatusClass::Other => {
            SinkError::Config {
                reason: format!("{reason} (is the CloudWatch endpoint right?)"),
            }
        }
    }
}

/// The error a send reports when several of its streams failed: the one
/// that needs the strongest action. Refused credentials and a broken setup
/// park the route; a retryable failure resends everything not yet taken; a
/// rejected payload is split only when nothing else went wrong.
pub fn most_severe(a: SinkError, b: SinkError) -> SinkError {
    fn rank(e: &SinkError) -> u8 {
        match e {
            SinkError::Unauthorized { .. } => 3,
            SinkError::Config { .. } => 2,
            SinkError::Retryable { .. } => 1,
            SinkError::PayloadRejected { .. } => 0,
        }
    }
    if rank(&b) > rank(&a) {
        b
    } else {
        a
    }
}

/// CloudWatch's verdict on each of `events` events of an accepted put, from
/// its `rejectedLogEventsInfo`: `expiredLogEventEndIndex` and
/// `tooOldLogEventEndIndex` are exclusive ends, `tooNewLogEventStartIndex`
/// an inclusive start (AWS API reference, RejectedLogEventsInfo:
/// "This field is exclusive" / "This field is inclusive"). moto reads the
/// ends as inclusive, so only the unit tests pin this.
pub fn verdicts(info: Option<&RejectedLogEventsInfo>, events: usize) -> Vec<Verdict> {
    let index = |v: Option<i32>| v.and_then(|i| usize::try_from(i).ok());
    let (expired_end, too_old_end, too_new_start) = match info {
        Some(info) => (
            index(info.expired_log_event_end_index()),
            index(info.too_old_log_event_end_index()),
            index(info.too_new_log_event_start_index()),
        ),
        None => (None, None, None),
    };
    (0..events)
        .map(|i| {
            if expired_end.is_some_and(|end| i < end) {
                Verdict::Expired
            } else if too_old_end.is_some_and(|end| i < end) {
                Verdict::TooOld
            } else if too_new_start.is_some_and(|start| i >= start) {
                Verdict::TooNew
            } else {
                Verdict::Stored
            }
        })
        .collect()
}

/// What one stream's delivery did: the lines CloudWatch took (with their
/// verdicts), and the failure that stopped it, if any.
#[derive(Debug, Default)]
pub struct StreamResult {
    pub taken: Vec<(Cursor, Verdict)>,
    pub error: Option<SinkError>,
}

/// One route's CloudWatch Logs client, its log group, and the streams known
/// to exist. `Debug` shows no key.
pub struct Service {
    client: Client,
    group: String,
    known: Mutex<HashSet<Arc<str>>>,
    /// Key values to redact from anything CloudWatch says.
    secrets: Vec<String>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("group", &self.group)
            .field("known_streams", &self.known().len())
            .finish_non_exhaustive()
    }
}

/// A put's result before classification: a missing group or stream is
/// CloudWatch's protocol, handled here.
enum PutError {
    NotFound,
    Failed(SinkError),
}

impl Service {
    pub fn new(client: Client, group: String, secrets: Vec<String>) -> Self {
        Self {
            client,
            group,
            known: Mutex::new(HashSet::new()),
            secrets,
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    fn known(&self) -> MutexGuard<'_, HashSet<Arc<str>>> {
        // Whole entries only: a panic elsewhere cannot leave it inconsistent.
        self.known
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_known(&self, stream: &str) -> bool {
        self.known().contains(stream)
    }

    fn set_known(&self, stream: &Arc<str>, exists: bool) {
        let mut known = self.known();
        if exists {
            if known.len() >= MAX_KNOWN_STREAMS {
                known.clear();
            }
            known.insert(Arc::clone(stream));
        } else {
            known.remove(&**stream);
        }
    }

    fn fail(&self, call: Call, stream: &str, failure: &Failure) -> SinkError {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let target = format!("{} / {stream}", self.group);
        classify(call, &target, failure, &secrets)
    }

    /// Writes `puts` (chronological, each a valid request) to `stream`, in
    /// order, stopping at the first failure.
    pub async fn deliver_stream(&self, stream: Arc<str>, puts: Vec<Vec<Event>>) -> StreamResult {
        let mut result = StreamResult::default();
        if !self.is_known(&stream) {
            if let Err(error) = self.create_stream(&stream).await {
                result.error = Some(error);
                return result;
            }
        }
        for events in puts {
            match self.put_creating(&stream, &events).await {
                Ok(verdicts) => result.taken.extend(
                    events
                        .iter()
                        .map(|e| e.cursor)
                        .zip(verdicts.iter().copied()),
                ),
                Err(error) => {
                    result.error = Some(error);
                    break;
                }
            }
        }
        result
    }

    /// A put; if the group or stream is missing, creates them and puts
    /// once more.
    async fn put_creating(
        &self,
        stream: &Arc<str>,
        events: &[Event],
    ) -> Result<Vec<Verdict>, SinkError> {
        match self.put(stream, events).await {
            Ok(verdicts) => Ok(verdicts),
            Err(PutError::Failed(error)) => Err(error),
            Err(PutError::NotFound) => {
                self.set_known(stream, false);
                self.create_stream(stream).await?;
                match self.put(stream, events).await {
                    Ok(verdicts) => Ok(verdicts),
                    Err(PutError::Failed(error)) => Err(error),
                    Err(PutError::NotFound) => Err(SinkError::Retryable {
                        reason: format!(
                            "CloudWatch Logs PutLogEvents to {} / {stream} answered \
                             ResourceNotFoundException right after the stream was created",
                            self.group
                        ),
                        retry_after: None,
                    }),
                }
            }
        }
    }

    async fn put(&self, stream: &Arc<str>, events: &[Event]) -> Result<Vec<Verdict>, PutError> {
        let mut input = Vec::with_capacity(events.len());
        for event in events {
            let built = InputLogEvent::builder()
                .timestamp(event.timestamp_ms)
                .message(event.message.clone())
                .build()
                .map_err(|e| {
                    PutError::Failed(SinkError::Config {
                        reason: format!("cannot build a CloudWatch Logs event: {e}"),
                    })
                })?;
            input.push(built);
        }
        let answer = self
            .client
            .put_log_events()
            .log_group_name(&self.group)
            .log_stream_name(&**stream)
            .set_log_events(Some(input))
            .send()
            .await;
        match answer {
            Ok(output) => {
                self.set_known(stream, true);
                Ok(verdicts(output.rejected_log_events_info(), events.len()))
            }
            Err(error) => {
                let failure = Failure::of(&error);
                if failure.is_code("ResourceNotFoundException") {
                    Err(PutError::NotFound)
                } else {
                    Err(PutError::Failed(self.fail(
                        Call::PutLogEvents,
                        stream,
                        &failure,
                    )))
                }
            }
        }
    }

    /// Creates `stream` (and the group when it is missing); existing ones
    /// count as created.
    async fn create_stream(&self, stream: &Arc<str>) -> Result<(), SinkError> {
        match self.create_log_stream(stream).await {
            Ok(()) => {}
            Err(failure) if failure.is_code("ResourceNotFoundException") => {
                self.create_log_group(stream).await?;
                self.create_log_stream(stream)
                    .await
                    .map_err(|f| self.fail(Call::CreateLogStream, stream, &f))?;
            }
            Err(failure) => return Err(self.fail(Call::CreateLogStream, stream, &failure)),
        }
        self.set_known(stream, true);
        Ok(())
    }

    async fn create_log_stream(&self, stream: &str) -> Result<(), Failure> {
        let answer = self
            .client
            .create_log_stream()
            .log_group_name(&self.group)
            .log_stream_name(stream)
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(error) => {
                let failure = Failure::of(&error);
                if failure.is_code("ResourceAlreadyExistsException") {
                    Ok(())
                } else {
                    Err(failure)
                }
            }
        }
    }

    async fn create_log_group(&self, stream: &str) -> Result<(), SinkError> {
        let answer = self
            .client
            .create_log_group()
            .log_group_name(&self.group)
            .send()
            .await;
        match answer {
            Ok(_) => Ok(()),
            Err(error) => {
                let failure = Failure::of(&error);
                if failure.is_code("ResourceAlreadyExistsException") {
                    Ok(())
                } else {
                    Err(self.fail(Call::CreateLogGroup, stream, &failure))
                }
            }
        }
    }
}

/// At most [`DETAIL_CHARS`] characters, on one line, with `secrets`
/// redacted before it is cut (a cut secret would escape redaction).
fn short(text: &str, secrets: &[&str]) -> String {
    let line = redact(text, secrets)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match line.char_indices().nth(DETAIL_CHARS) {
        Some((at, _)) => format!("{}…", &line[..at]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_cloudwatchlogs::error::ErrorMetadata;
    use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;

    use super::*;

    fn answer(code: &str, status: u16) -> Failure {
        Failure::Answer {
            code: Some(code.to_string()),
            status,
            message: Some("something went wrong".to_string()),
        }
    }

    fn class_of(code: &str, status: u16) -> &'static str {
        classify(Call::PutLogEvents, "g / s", &answer(code, status), &[]).class()
    }

    #[test]
    fn a_secret_at_every_cut_position_of_a_message_is_redacted_whole() {
        let secret = "ASIA0123456789SESSIONTOKENEXAMPLEVALUE";
        for at in 0..=DETAIL_CHARS + secret.len() {
            let failure = Failure::Answer {
                code: Some("AccessDeniedException".to_string()),
                status: 400,
                message: Some(format!("{}{secret} is not allowed", ".".repeat(at))),
            };
            let reason = classify(Call::PutLogEvents, "g / s", &failure, &[secret]).to_string();
            let message = reason.split("AccessDeniedException: ").nth(1).unwrap();
            let message = message.split(" (the key needs").next().unwrap();
            assert!(
                !message
                    .bytes()
                    .any(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
                "part of a secret at {at}: {reason}"
            );
        }
    }

    #[test]
    fn throttling_and_unavailability_are_retried() {
        assert_eq!(class_of("ThrottlingException", 400), "retryable");
        assert_eq!(class_of("ServiceUnavailableException", 503), "retryable");
        assert_eq!(class_of("InternalFailure", 500), "retryable");
        assert_eq!(class_of("SomethingNew", 502), "retryable");
        assert_eq!(class_of("SomethingNew", 429), "retryable");
    }

    #[test]
    fn refused_credentials_keep_the_data() {
        for code in [
            "AccessDeniedException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
        ] {
            assert_eq!(class_of(code, 400), "credentials_rejected", "{code}");
        }
        let no_code = Failure::Answer {
            code: None,
            status: 403,
            message: None,
        };
        assert_eq!(
            classify(Call::PutLogEvents, "g / s", &no_code, &[]).class(),
            "credentials_rejected"
        );
    }

    #[test]
    fn an_invalid_parameter_rejects_the_payload() {
        assert_eq!(class_of("InvalidParameterException", 400), "permanent");
    }

    #[test]
    fn quotas_and_unknown_answers_are_configuration_problems() {
        assert_eq!(class_of("LimitExceededException", 400), "invalid_secret");
        assert_eq!(class_of("UnknownOperationException", 404), "invalid_secret");
        // CloudWatch names a bad payload by its code, never by the status.
        assert_eq!(class_of("SomethingNew", 400), "invalid_secret");
        assert_eq!(class_of("SomethingNew", 413), "invalid_secret");
    }

    #[test]
    fn network_failures_are_retried_and_setup_failures_are_config() {
        let transport = Failure::Transport {
            detail: "connection refused".into(),
        };
        assert_eq!(
            classify(Call::PutLogEvents, "g / s", &transport, &[]).class(),
            "retryable"
        );
        let setup = Failure::Setup {
            detail: "invalid URI".into(),
        };
        assert_eq!(
            classify(Call::PutLogEvents, "g / s", &setup, &[]).class(),
            "invalid_secret"
        );
    }

    #[test]
    fn facts_are_taken_from_sdk_errors() {
        let timeout: SdkError<PutLogEventsError, HttpResponse> =
            SdkError::timeout_error("operation timed out");
        assert!(matches!(Failure::of(&timeout), Failure::Transport { .. }));
        let building: SdkError<PutLogEventsError, HttpResponse> =
            SdkError::construction_failure("no endpoint");
        assert!(matches!(Failure::of(&building), Failure::Setup { .. }));
        // The error metadata of a generic service error carries the code.
        let generic = PutLogEventsError::generic(
            ErrorMetadata::builder()
                .code("ThrottlingException")
                .message("Rate exceeded")
                .build(),
        );
        assert_eq!(generic.code(), Some("ThrottlingException"));
    }

    #[test]
    fn a_reason_names_the_call_target_code_and_permission_but_no_key() {
        let failure = Failure::Answer {
            code: Some("AccessDeniedException".into()),
            status: 400,
            message: Some("key AKIAROUTEKEY is not authorized".into()),
        };
        let error = classify(
            Call::CreateLogGroup,
            "livekit/a1 / replica-1",
            &failure,
            &["AKIAROUTEKEY"],
        );
        let text = error.to_string();
        assert!(
            text.contains("CloudWatch Logs CreateLogGroup to livekit/a1 / replica-1"),
            "{text}"
        );
        assert!(text.contains("AccessDeniedException"), "{text}");
        assert!(text.contains("logs:CreateLogGroup"), "{text}");
        assert!(!text.contains("AKIAROUTEKEY"), "{text}");
    }

    #[test]
    fn the_strongest_failure_of_a_send_wins() {
        let retry = || SinkError::Retryable {
            reason: "r".into(),
            retry_after: None,
        };
        let payload = || SinkError::PayloadRejected { reason: "p".into() };
        let auth = || SinkError::Unauthorized { reason: "a".into() };
        assert_eq!(most_severe(payload(), retry()), retry());
        assert_eq!(most_severe(retry(), payload()), retry());
        assert_eq!(most_severe(retry(), auth()), auth());
    }

    #[test]
    fn rejected_end_indexes_are_exclusive_and_the_too_new_start_inclusive() {
        let info = RejectedLogEventsInfo::builder()
            .expired_log_event_end_index(1)
            .too_old_log_event_end_index(2)
            .too_new_log_event_start_index(4)
            .build();
        assert_eq!(
            verdicts(Some(&info), 6),
            [
                Verdict::Expired,
                Verdict::TooOld,
                Verdict::Stored,
                Verdict::Stored,
                Verdict::TooNew,
                Verdict::TooNew,
            ]
        );
        assert_eq!(verdicts(None, 2), [Verdict::Stored, Verdict::Stored]);
        // An end index of 0 rejects nothing.
        let none = RejectedLogEventsInfo::builder()
            .too_old_log_event_end_index(0)
            .build();
        assert_eq!(verdicts(Some(&none), 1), [Verdict::Stored]);
    }
}
