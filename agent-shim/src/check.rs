//! `agent-shim --check`: a report on the deployment's configuration, without
//! running the agent.
//!
//! It lists every destination with what the secrets present make of it
//! ([`Secrets::destinations`]: on, half-configured, invalid, off), then asks
//! every gateway, through the `Drain.Check` dry run, whether it accepts the
//! token for the agent id and what it would make of the secrets. The answer
//! is a report on stdout and an exit code ([`EXIT_CHECK_OK`],
//! [`EXIT_CHECK_FAILED`]).
//!
//! It must never print a secret value or the token (names only; the
//! gateway's messages name secrets, never their values), and it must not
//! start the agent or ship a line: the gateway does not count a check as a
//! replica.

use std::fmt::Write as _;
use std::time::Duration;

use logdrain::client::{self, code_name, connect_failure, ClientTls};
use logdrain::v1::drain_client::DrainClient;
use logdrain::v1::{CheckReply, CheckRequest};
use tonic::transport::Uri;
use tonic::Code;

use crate::config::{Config, Settings};
use crate::secrets::{DestinationState, Secrets};

/// Exit code when everything checked is usable.
pub const EXIT_CHECK_OK: i32 = 0;
/// Exit code when the check found at least one problem.
pub const EXIT_CHECK_FAILED: i32 = 1;

/// How long one gateway has to accept the connection, and then to answer.
pub const CHECK_TIMEOUT: Duration = client::CONNECT_TIMEOUT;

/// The report and how many problems it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// Human-readable, one finding per line, ending with a summary line.
    pub text: String,
    pub problems: usize,
}

impl CheckReport {
    /// The shim's exit code for this report.
    pub fn exit_code(&self) -> i32 {
        if self.problems == 0 {
            EXIT_CHECK_OK
        } else {
            EXIT_CHECK_FAILED
        }
    }
}

/// Runs the check with the process environment's secrets on a
/// single-threaded runtime, prints the report on stdout, and returns the
/// exit code.
pub fn run(config: Config) -> i32 {
    let secrets = Secrets::from_env();
    let report = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(check(config, &secrets)),
        Err(err) => CheckReport {
            text: format!("cannot start the async runtime: {err}\n"),
            problems: 1,
        },
    };
    print!("{}", report.text);
    report.exit_code()
}

/// Checks `config` and `secrets`: destinations first, then every gateway.
pub async fn check(config: Config, secrets: &Secrets) -> CheckReport {
    let mut report = Report::default();
    report.line("agent-shim --check: the agent is not started");
    destinations(&mut report, secrets);
    let token = config
        .token
        .clone()
        .map(|t| ("LOGDRAIN_TOKEN".to_owned(), t));
    let redactor = crate::redact::Redactor::from_vars(std::env::vars_os(), token);
    report.line(crate::redact::check_line(config.redact, &redactor));
    match config.validate() {
        Ok(settings) => gateways(&mut report, &settings, secrets).await,
        Err(err) => {
            report.problem(format_args!("configuration: {err}"));
            report.line("gateways: not contacted until the configuration is fixed");
        }
    }
    report.finish()
}

#[derive(Default)]
struct Report {
    text: String,
    problems: usize,
}

impl Report {
    fn line(&mut self, line: impl std::fmt::Display) {
        let _ = writeln!(self.text, "{line}");
    }

    fn problem(&mut self, line: impl std::fmt::Display) {
        self.problems += 1;
        self.line(line);
    }

    fn finish(mut self) -> CheckReport {
        match self.problems {
            0 => self.line("result: ok, everything checked is usable"),
            1 => self.line("result: 1 problem; exit status 1"),
            n => self.line(format_args!("result: {n} problems; exit status 1")),
        }
        CheckReport {
            text: self.text,
            problems: self.problems,
        }
    }
}

/// One line per destination, then whether anything is delivered at all.
fn destinations(report: &mut Report, secrets: &Secrets) {
    report.line("destinations (from this environment's secrets; values are never shown):");
    let mut on = 0;
    for (destination, state) in secrets.destinations() {
        let name = destination.name;
        let text = match &state {
            DestinationState::On { names } => {
                on += 1;
                let mut text = format!("on, switched on by {}", names.join(", "));
                if let Some(problem) = secrets.endpoint_problem(destination) {
                    let _ = write!(text, "; but {problem} (the gateway's answer below decides)");
                }
                text
            }
            DestinationState::HalfConfigured {
                present,
                missing,
                problems,
            } => {
                let mut text = format!(
                    "half-configured: {} set but {} missing; nothing is delivered to {name}",
                    present.join(", "),
                    missing.join(", ")
                );
                for problem in problems {
                    let _ = write!(text, "; also {problem}");
                }
                text
            }
            DestinationState::Invalid { problems } => format!(
                "invalid: {}; the gateway keeps its lines until a deployment brings valid secrets",
                problems.join("; ")
            ),
            DestinationState::Off { unused } if unused.is_empty() => "off".to_string(),
            DestinationState::Off { unused } => format!(
                "off ({} set, unused without {})",
                unused.join(", "),
                destination.required.join(" and ")
            ),
        };
        let line = format_args!("  {name:<11} {text}");
        if state.is_problem() {
            report.problem(line);
        } else {
            report.line(line);
        }
    }
    for name in secrets.ignored_not_utf8() {
        report.problem(format_args!(
            "  {name} is set but not valid UTF-8, so it is ignored; give it a text value"
        ));
    }
    if on == 0 {
        let all: Vec<String> = logdrain::secrets::DESTINATIONS
            .iter()
            .map(|d| d.required.join(" and "))
            .collect();
        report.problem(format_args!(
            "  nothing will be delivered: no destination is on; set the secrets of at least one \
             ({})",
            all.join("; or ")
        ));
    }
}

/// One line per gateway with its answer, then one per destination it
/// cannot deliver to.
async fn gateways(report: &mut Report, settings: &Settings, secrets: &Secrets) {
    report.line(format_args!(
        "gateways (agent id {:?}, agent-server id {:?}):",
        settings.agent_id, settings.agent_server_id
    ));
    let expected: Vec<&str> = secrets
        .destinations()
        .into_iter()
        .filter(|(_, state)| {
            matches!(
                state,
                DestinationState::On { .. } | DestinationState::Invalid { .. }
            )
        })
        .map(|(destination, _)| destination.name)
        .collect();
    for uri in &settings.gateways {
        // As the operator wrote it, without the `/` Uri adds.
        let url = uri.to_string().trim_end_matches('/').to_string();
        let request = CheckRequest {
            token: settings.token.clone(),
            agent_id: settings.agent_id.clone(),
            agent_server_id: settings.agent_server_id.clone(),
            secrets: secrets.to_open_map(),
            protocol_version: logdrain::PROTOCOL_VERSION,
        };
        match ask(uri, &settings.tls, request).await {
            Err(failure) => report.problem(format_args!("  {url}  {failure}")),
            Ok(reply) => {
                let names: Vec<&str> = reply
                    .destinations
                    .iter()
                    .map(|d| d.destination.as_str())
                    .collect();
                let delivers = if names.is_empty() {
                    "nowhere".to_string()
                } else {
                    names.join(", ")
                };
                report.line(format_args!(
                    "  {url}  ok: token accepted; the gateway makes routes to {delivers}"
                ));
                for destination in reply.destinations.iter().filter(|d| !d.problem.is_empty()) {
                    report.problem(format_args!(
                        "  {url}  cannot deliver to {}: {}",
                        destination.destination, destination.problem
                    ));
                }
                if names != expected {
                    report.problem(format_args!(
                        "  {url}  derives other destinations from these secrets than this shim \
                         ({delivers} instead of {}); run matching versions of agent-shim and \
                         logdrain-gateway",
                        if expected.is_empty() {
                            "none".to_string()
                        } else {
                            expected.join(", ")
                        }
                    ));
                }
            }
        }
    }
}

/// Connects to one gateway and sends the check. The error says what
/// happened, with the fix where one is known; never the token.
async fn ask(url: &Uri, tls: &ClientTls, request: CheckRequest) -> Result<CheckReply, String> {
    let endpoint = client::endpoint(url, tls).map_err(|err| err.to_string())?;
    let channel = match tokio::time::timeout(CHECK_TIMEOUT, endpoint.connect()).await {
        Err(_) => {
            return Err(format!(
                "unreachable: no connection within {CHECK_TIMEOUT:?}"
            ))
        }
        Ok(Err(err)) => return Err(connect_failure(url, &err)),
        Ok(Ok(channel)) => channel,
    };
    let mut client = DrainClient::new(channel)
        .max_decoding_message_size(logdrain::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(logdrain::MAX_MESSAGE_BYTES);
    match tokio::time::timeout(CHECK_TIMEOUT, client.check(request)).await {
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        Ok(Ok(reply)) => Ok(reply.into_inner()),
        Ok(Err(status)) if status.code() == Code::Unimplemented => Err(format!(
            "this gateway does not answer checks (UNIMPLEMENTED: {}); it is older than this \
             shim: upgrade logdrain-gateway",
            status.message()
        )),
        Ok(Err(status)) => Err(format!(
            "refused ({}): {}",
            code_name(status.code()),
            status.message()
        )),
    }
}
