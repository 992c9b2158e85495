//! The shim's configuration: one clap struct ([`Config`]) where every option
//! also reads an environment variable, and its validated form ([`Settings`]).
//!
//! The options, their variables and defaults are documented by clap
//! (`agent-shim --help`, and `docs/reference/agent-shim.md`, generated from it).
//!
//! Environment values are read through clap only; this module never reads
//! or changes the process environment itself. Secrets are not options: see
//! `secrets.rs`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use logdrain::client::{ClientTls, PemError};
use logdrain::ids::{self, IdError};
use logdrain::units::{parse_duration, parse_size};
use tonic::codegen::http::Uri;

use crate::multiline::{Bounds, Mode, ModeError};
use crate::redact::RedactMode;

/// Largest accepted `--max-line-bytes`: a batch always fits one line, and
/// every batch must stay far below `logdrain::MAX_MESSAGE_BYTES`.
pub const MAX_LINE_BYTES_LIMIT: usize = 4 * 1024 * 1024;
/// Smallest accepted `--max-line-bytes`.
pub const MIN_LINE_BYTES: usize = 64;
/// `--buffer-bytes` must hold at least this many maximum-size lines.
pub const BUFFER_MIN_LINES: usize = 4;
/// Largest accepted `--batch-lines`.
pub const MAX_BATCH_LINES: usize = 100_000;
/// Largest accepted `--multiline-max-lines`.
pub const MAX_MULTILINE_LINES: usize = 100_000;
/// Largest accepted `--multiline-flush`.
pub const MAX_MULTILINE_FLUSH: Duration = Duration::from_secs(10);
/// Largest accepted `--batch-linger`.
pub const MAX_BATCH_LINGER: Duration = Duration::from_secs(5);

const AFTER_HELP: &str = "\
Secrets: these variables, when set in the shim's environment, are sent to the gateway \
(never printed) so it can deliver to the tenant's destinations: DATADOG_TOKEN, \
DATADOG_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, \
SENTRY_DSN, NEW_RELIC_LICENSE_KEY.

The agent inherits the shim's stdin and environment, except LOGDRAIN_TOKEN and \
LOGDRAIN_TOKEN_FILE; pass the token in a file (--token-file) so it is in no environment or \
command line. Its stdout and \
stderr pass through unchanged. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are \
forwarded to it. If the shim dies, the agent gets SIGKILL.

Exit status: the agent's exit code, or 128+N if a signal N killed it; 127 if the command \
was not found, 126 if it could not be executed; 2 for a configuration error; 77 if the agent \
exited 0 but every gateway refused the shim for good (wrong token, an id or the protocol \
version the gateway does not accept), so its lines were not delivered.

--check: run with the deployment's environment to see, without starting the agent, which \
destinations its secrets switch on (naming the secrets, never their values), which are \
half-configured or invalid, and whether each gateway accepts the token. Exit status 0 when \
everything is usable, 1 when anything is wrong (a configuration error, a half-configured or \
invalid destination, no destination at all, a gateway unreachable or refusing).

Sizes accept a unit: 65536, 512KiB, 64MiB, 1GiB (K, M, G are binary; KB, MB, GB decimal). \
Durations accept 500ms, 10s, 2m, 1h.";

/// `agent-shim [OPTIONS] -- COMMAND [ARGS...]`
#[derive(Clone, Parser)]
#[command(
    name = "agent-shim",
    version,
    about = "Runs an agent, passes its output through, and streams every line to logdrain-gateway",
    after_help = AFTER_HELP
)]
pub struct Config {
    /// Gateway gRPC URL, or several, comma-separated. A host name that
    /// resolves to several addresses (a Kubernetes headless Service,
    /// compose's service DNS) is that many gateways; names are resolved
    /// again on every reconnect. The shim ranks the gateways for its
    /// agent-server id (rendezvous hashing, so a fleet's shims spread
    /// evenly), ships to the first and fails over in rank order. `https://`
    /// uses TLS (checked against the host name), `http://` plain text.
    /// Example: `https://logdrain.example.com:4317`
    #[arg(long, env = "LOGDRAIN_GATEWAY", value_name = "URL[,URL...]")]
    pub gateway: Option<String>,

    /// Ingest token for --agent-id, created with
    /// `logdrain-gateway token --agent-id ID`. Removed from the agent's
    /// environment, and overwritten in the shim's own command line and
    /// environment so the agent cannot read it there; prefer
    /// --token-file.
    #[arg(
        long,
        env = "LOGDRAIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// File holding the ingest token (surrounding whitespace ignored), the
    /// recommended way to pass it: it never appears in a command line or
    /// an environment. Make the file unreadable to the agent if the agent
    /// runs as another user.
    #[arg(
        long,
        env = "LOGDRAIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,

    /// The agent's id (required); the token must belong to it.
    #[arg(long, env = "LOGDRAIN_AGENT_ID", value_name = "ID")]
    pub agent_id: Option<String>,

    /// Names this replica of the agent. Defaults to the host name (the
    /// container id under Docker).
    #[arg(long, env = "LOGDRAIN_AGENT_SERVER_ID", value_name = "ID")]
    pub agent_server_id: Option<String>,

    /// Memory bound for lines the gateway has not acked yet. When full, the
    /// oldest lines not yet sent are dropped, counted, and reported in the
    /// drain once delivery resumes; lines awaiting their ack (at most half
    /// the bound, and at most 16MiB) are never dropped.
    #[arg(long, env = "LOGDRAIN_BUFFER_BYTES", value_name = "SIZE", default_value = "64MiB", value_parser = parse_size::<usize>)]
    pub buffer_bytes: usize,

    /// After the agent exits, how long to keep delivering buffered lines
    /// before exiting anyway.
    #[arg(long, env = "LOGDRAIN_DRAIN_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Lines longer than this are sent as several marked pieces (never
    /// dropped). Between 64 and 4MiB.
    #[arg(long, env = "LOGDRAIN_MAX_LINE_BYTES", value_name = "SIZE", default_value = "256KiB", value_parser = parse_size::<usize>)]
    pub max_line_bytes: usize,

    /// Most lines per batch sent to the gateway (batches also stay below
    /// 1MiB).
    #[arg(
        long,
        env = "LOGDRAIN_BATCH_LINES",
        value_name = "N",
        default_value_t = 1000
    )]
    pub batch_lines: usize,

    /// How long to wait for more lines before sending a batch that is not
    /// full. 0 sends every line at once.
    #[arg(long, env = "LOGDRAIN_BATCH_LINGER", value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub batch_linger: Duration,

    /// While the shim streams to a gateway other than its first-ranked one,
    /// it checks every DURATION to 2×DURATION (at random) whether that
    /// one answers again, and if so moves its stream back at a moment when
    /// no line is in flight (nothing is sent twice). Gateways that come
    /// back so refill gradually, without a stampede. 0 stays put until the
    /// stream ends.
    #[arg(long, env = "LOGDRAIN_REBALANCE_AFTER", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub rebalance_after: Duration,

    /// PEM file with extra CA certificates to trust for `https://`
    /// gateways (for a private CA). The Mozilla roots are always trusted.
    #[arg(long, env = "LOGDRAIN_GATEWAY_CA_FILE", value_name = "PATH")]
    pub gateway_ca_file: Option<PathBuf>,

    /// PEM client certificate, for a gateway that requires mutual TLS
    /// (`logdrain-gateway serve --tls-client-ca`). Needs --client-key.
    #[arg(
        long,
        env = "LOGDRAIN_CLIENT_CERT",
        value_name = "PATH",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "LOGDRAIN_CLIENT_KEY",
        value_name = "PATH",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,

    /// Also reap orphaned descendants when not running as PID 1 (Linux
    /// child subreaper). As PID 1 the shim always reaps them.
    #[arg(
        long,
        env = "LOGDRAIN_SUBREAPER",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub subreaper: bool,

    /// Check the configuration and exit without running the agent: prints
    /// every destination (on, half-configured, invalid or off), then asks
    /// each gateway whether it accepts the token and the secrets. A command
    /// after `--` is allowed and not run, so a deployment's own command
    /// line can be checked by adding --check.
    #[arg(
        long,
        env = "LOGDRAIN_CHECK",
        value_name = "BOOL",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub check: bool,

    /// `auto` masks, in every line shipped (never in the passthrough), each
    /// value of 8 bytes or more of a variable named `*_KEY`, `*_SECRET`,
    /// `*_TOKEN`, `*_PASSWORD`, `*_DSN` or `*API_KEY*` and of the drain's
    /// own secrets, as `[redacted:NAME]`. `off` ships lines as written.
    #[arg(long, env = "LOGDRAIN_REDACT", value_name = "MODE", value_enum, default_value_t = RedactMode::Auto)]
    pub redact: RedactMode,

    /// Groups multi-line events, per stream, into one shipped line joined
    /// by newlines: `off` ships each line on its own; `auto` groups Python
    /// tracebacks (chained, asyncio), Go panics, Java/Kotlin and Node.js
    /// stack traces, Rust panics and lines that continue with leading
    /// whitespace; `pattern:REGEX` starts an event at each line matching
    /// REGEX, the lines that do not match continue it. An event holds at
    /// most --multiline-max-lines lines and --max-line-bytes bytes (more is
    /// cut into marked parts, never dropped).
    #[arg(
        long,
        env = "LOGDRAIN_MULTILINE",
        value_name = "MODE",
        default_value = "off"
    )]
    pub multiline: String,

    /// Most lines in one multi-line event.
    #[arg(
        long,
        env = "LOGDRAIN_MULTILINE_MAX_LINES",
        value_name = "N",
        default_value_t = 1000
    )]
    pub multiline_max_lines: usize,

    /// With --multiline, how long a line waits for a continuation before it
    /// is shipped: the most an ordinary line is delayed.
    #[arg(long, env = "LOGDRAIN_MULTILINE_FLUSH", value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub multiline_flush: Duration,

    /// The agent to run, with its arguments (not needed with --check).
    #[arg(last = true, required_unless_present = "check", value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("gateway", &self.gateway)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("agent_id", &self.agent_id)
            .field("agent_server_id", &self.agent_server_id)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("batch_lines", &self.batch_lines)
            .field("batch_linger", &self.batch_linger)
            .field("rebalance_after", &self.rebalance_after)
            .field("gateway_ca_file", &self.gateway_ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("subreaper", &self.subreaper)
            .field("check", &self.check)
            .field("redact", &self.redact)
            .field("multiline", &self.multiline)
            .field("multiline_max_lines", &self.multiline_max_lines)
            .field("multiline_flush", &self.multiline_flush)
            .field("command", &self.command)
            .finish()
    }
}

/// A configuration value the shim cannot run with. Each message names the
/// value and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no gateway given: pass --gateway URL or set LOGDRAIN_GATEWAY (e.g. https://logdrain.example.com:4317)")]
    MissingGateway,
    #[error(
        "invalid gateway URL {url:?}: {reason}; expected http://HOST:PORT or https://HOST:PORT"
    )]
    BadGatewayUrl { url: String, reason: String },
    #[error("no ingest token given: pass --token TOKEN or set LOGDRAIN_TOKEN; create one with `logdrain-gateway token --agent-id ID`")]
    MissingToken,
    #[error("cannot read --token-file / LOGDRAIN_TOKEN_FILE {path:?}: {source}; point it at the file holding the ingest token")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Never shows the token.
    #[error("the ingest token (--token / LOGDRAIN_TOKEN) contains spaces, line breaks or non-ASCII characters; pass it exactly as `logdrain-gateway token --agent-id ID` printed it")]
    MalformedToken,
    #[error("no agent id given: pass --agent-id ID or set LOGDRAIN_AGENT_ID")]
    MissingAgentId,
    #[error("no command given: run `agent-shim [OPTIONS] -- COMMAND [ARGS...]`, or pass --check to only check the configuration")]
    MissingCommand,
    /// An id the gateway would refuse: the message names the rule.
    /// (The rule is in the message, so it is not repeated as a source.)
    #[error("invalid {option}: {rule}")]
    BadId { option: &'static str, rule: IdError },
    #[error("cannot read the host name for the default agent-server id ({0}); pass --agent-server-id ID or set LOGDRAIN_AGENT_SERVER_ID")]
    Hostname(#[source] std::io::Error),
    #[error("--max-line-bytes {value} is out of range: use a size between {MIN_LINE_BYTES} and {MAX_LINE_BYTES_LIMIT} bytes (4MiB)")]
    MaxLineBytes { value: usize },
    #[error("--buffer-bytes {value} is too small for --max-line-bytes {max_line_bytes}: use at least {minimum} (4 maximum-size lines) or lower --max-line-bytes")]
    BufferTooSmall {
        value: usize,
        max_line_bytes: usize,
        minimum: usize,
    },
    #[error("--batch-lines {value} is out of range: use 1 to {MAX_BATCH_LINES}")]
    BatchLines { value: usize },
    #[error("invalid LOGDRAIN_MULTILINE / --multiline: {0}; use off, auto or pattern:REGEX (a regex that compiles, e.g. pattern:^\\d{{4}}-)")]
    Multiline(#[from] ModeError),
    #[error("--multiline-max-lines {value} is out of range: use 1 to {MAX_MULTILINE_LINES}")]
    MultilineMaxLines { value: usize },
    #[error("--multiline-flush {value:?} is out of range: use 1ms to 10s")]
    MultilineFlush { value: Duration },
    #[error("--batch-linger {value:?} is too long: use at most 5s")]
    BatchLinger { value: Duration },
    #[error(transparent)]
    Pem(#[from] PemError),
}

/// The configuration after validation: everything the shim runs with.
#[derive(Clone)]
pub struct Settings {
    /// Gateway URLs, in failover order.
    pub gateways: Vec<Uri>,
    /// Ingest token (never printed).
    pub token: String,
    pub agent_id: String,
    pub agent_server_id: String,
    pub buffer_bytes: usize,
    pub drain_timeout: Duration,
    pub max_line_bytes: usize,
    pub batch_lines: usize,
    pub batch_linger: Duration,
    /// How often to check whether the first-ranked gateway is back (0: never).
    pub rebalance_after: Duration,
    /// Extra trusted CA certificates and the client identity for
    /// `https://` gateways.
    pub tls: ClientTls,
    /// Reap orphans even when not PID 1.
    pub subreaper: bool,
    pub redact: RedactMode,
    pub multiline: Mode,
    pub multiline_bounds: Bounds,
    /// Program and arguments (never empty, except with `--check`).
    pub command: Vec<OsString>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("gateways", &self.gateways)
            .field("token", &"<redacted>")
            .field("agent_id", &self.agent_id)
            .field("agent_server_id", &self.agent_server_id)
            .field("buffer_bytes", &self.buffer_bytes)
            .field("drain_timeout", &self.drain_timeout)
            .field("max_line_bytes", &self.max_line_bytes)
            .field("batch_lines", &self.batch_lines)
            .field("batch_linger", &self.batch_linger)
            .field("rebalance_after", &self.rebalance_after)
            .field("tls", &self.tls)
            .field("subreaper", &self.subreaper)
            .field("redact", &self.redact)
            .field("multiline", &self.multiline)
            .field("multiline_bounds", &self.multiline_bounds)
            .field("command", &self.command)
            .finish()
    }
}

impl Config {
    /// Checks every value; the host name is looked up only when
    /// `--agent-server-id` is not given.
    pub fn validate(self) -> Result<Settings, ConfigError> {
        self.validate_with_hostname(crate::sys::hostname)
    }

    /// [`Config::validate`] with the host name lookup passed in.
    pub fn validate_with_hostname(
        self,
        hostname: impl FnOnce() -> std::io::Result<String>,
    ) -> Result<Settings, ConfigError> {
        // clap requires a command unless --check is given, but
        // `--check false` (or LOGDRAIN_CHECK=false) is given too.
        if !self.check && self.command.is_empty() {
            return Err(ConfigError::MissingCommand);
        }
        let gateways = parse_gateways(self.gateway.as_deref().unwrap_or(""))?;
        let from_file = match &self.token_file {
            Some(path) => Some(logdrain::client::read_token_file(path).map_err(|source| {
                ConfigError::TokenFile {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let token = match from_file
            .as_deref()
            .or(self.token.as_deref())
            .map(str::trim)
        {
            Some(token) if token.bytes().all(|b| b.is_ascii_graphic()) && !token.is_empty() => {
                token.to_string()
            }
            Some(token) if !token.is_empty() => return Err(ConfigError::MalformedToken),
            _ => return Err(ConfigError::MissingToken),
        };
        let agent_id = match self.agent_id {
            Some(id) if !id.trim().is_empty() => id,
            _ => return Err(ConfigError::MissingAgentId),
        };
        ids::check_agent_id(&agent_id).map_err(|rule| ConfigError::BadId {
            option: "--agent-id / LOGDRAIN_AGENT_ID",
            rule,
        })?;
        let (agent_server_id, option) = match self.agent_server_id {
            Some(id) => (id, "--agent-server-id / LOGDRAIN_AGENT_SERVER_ID"),
            None => (
                hostname().map_err(ConfigError::Hostname)?,
                "--agent-server-id (the host name by default)",
            ),
        };
        ids::check_agent_server_id(&agent_server_id)
            .map_err(|rule| ConfigError::BadId { option, rule })?;
        if !(MIN_LINE_BYTES..=MAX_LINE_BYTES_LIMIT).contains(&self.max_line_bytes) {
            return Err(ConfigError::MaxLineBytes {
                value: self.max_line_bytes,
            });
        }
        let minimum = BUFFER_MIN_LINES * (self.max_line_bytes + crate::buffer::LINE_OVERHEAD_BYTES);
        if self.buffer_bytes < minimum {
            return Err(ConfigError::BufferTooSmall {
                value: self.buffer_bytes,
                max_line_bytes: self.max_line_bytes,
                minimum,
            });
        }
        if !(1..=MAX_BATCH_LINES).contains(&self.batch_lines) {
            return Err(ConfigError::BatchLines {
                value: self.batch_lines,
            });
        }
        if self.batch_linger > MAX_BATCH_LINGER {
            return Err(ConfigError::BatchLinger {
                value: self.batch_linger,
            });
        }
        let multiline = Mode::parse(&self.multiline)?;
        if !(1..=MAX_MULTILINE_LINES).contains(&self.multiline_max_lines) {
            return Err(ConfigError::MultilineMaxLines {
                value: self.multiline_max_lines,
            });
        }
        if self.multiline_flush.is_zero() || self.multiline_flush > MAX_MULTILINE_FLUSH {
            return Err(ConfigError::MultilineFlush {
                value: self.multiline_flush,
            });
        }
        let tls = ClientTls::load(
            self.gateway_ca_file.as_deref(),
            self.client_cert.as_deref(),
            self.client_key.as_deref(),
        )?;
        Ok(Settings {
            gateways,
            token,
            agent_id,
            agent_server_id,
            buffer_bytes: self.buffer_bytes,
            drain_timeout: self.drain_timeout,
            max_line_bytes: self.max_line_bytes,
            batch_lines: self.batch_lines,
            batch_linger: self.batch_linger,
            rebalance_after: self.rebalance_after,
            tls,
            subreaper: self.subreaper,
            redact: self.redact,
            multiline,
            multiline_bounds: Bounds {
                max_lines: self.multiline_max_lines,
                max_bytes: self.max_line_bytes,
                flush: self.multiline_flush,
            },
            command: self.command,
        })
    }
}

/// Splits and checks a comma-separated list of gateway URLs.
pub fn parse_gateways(list: &str) -> Result<Vec<Uri>, ConfigError> {
    let mut gateways = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = |reason: &str| ConfigError::BadGatewayUrl {
            url: item.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = item
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| bad(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("the scheme is missing")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("the host is missing"));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad("a gateway URL has no path or query"));
        }
        gateways.push(uri);
    }
    if gateways.is_empty() {
        return Err(ConfigError::MissingGateway);
    }
    Ok(gateways)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["agent-shim"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv)
    }

    fn valid_args() -> Vec<&'static str> {
        vec![
            "--gateway",
            "http://127.0.0.1:4317",
            "--token",
            "tok",
            "--agent-id",
            "agent-1",
            "--",
            "sh",
            "-c",
            "true",
        ]
    }

    #[test]
    fn defaults_are_documented_values() {
        let settings = config(&valid_args())
            .unwrap()
            .validate_with_hostname(|| Ok("host-a".into()))
            .unwrap();
        assert_eq!(settings.buffer_bytes, 64 << 20);
        assert_eq!(settings.drain_timeout, Duration::from_secs(10));
        assert_eq!(settings.max_line_bytes, 256 << 10);
        assert_eq!(settings.batch_lines, 1000);
        assert_eq!(settings.batch_linger, Duration::from_millis(20));
        assert_eq!(settings.agent_server_id, "host-a");
        assert!(!settings.subreaper);
        assert_eq!(settings.command, vec!["sh", "-c", "true"]);
    }

    #[test]
    fn command_needs_the_double_dash_and_keeps_its_own_flags() {
        let parsed = config(&["--agent-id", "a", "--", "agent", "--agent-id", "x", "-v"]).unwrap();
        assert_eq!(parsed.command, vec!["agent", "--agent-id", "x", "-v"]);
        assert_eq!(parsed.agent_id.as_deref(), Some("a"));
        assert!(
            config(&["--agent-id", "a"]).is_err(),
            "a command is required"
        );
    }

    #[test]
    fn check_needs_no_command_and_tolerates_one() {
        let parsed = config(&["--check"]).unwrap();
        assert!(parsed.check && parsed.command.is_empty());
        let parsed = config(&["--check", "--", "agent", "-v"]).unwrap();
        assert!(parsed.check);
        assert_eq!(parsed.command, vec!["agent", "-v"]);
        assert!(!config(&["--", "agent"]).unwrap().check);
    }

    #[test]
    fn check_turned_off_still_needs_a_command() {
        let mut args = valid_args();
        args.truncate(6);
        args.splice(0..0, ["--check", "false"]);
        let err = config(&args).unwrap().validate().unwrap_err();
        assert!(matches!(err, ConfigError::MissingCommand), "{err}");
        assert!(err.to_string().contains("-- COMMAND"), "{err}");
    }

    #[test]
    fn several_gateways_are_kept_in_order() {
        let gateways = parse_gateways("https://a.example:443, http://b.example:4317").unwrap();
        let hosts: Vec<&str> = gateways.iter().filter_map(Uri::host).collect();
        assert_eq!(hosts, vec!["a.example", "b.example"]);
    }

    #[test]
    fn bad_gateway_urls_are_named_in_the_error() {
        for bad in ["ftp://x:1", "localhost:4317", "http://", "http://h:1/path"] {
            let err = parse_gateways(bad).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
            assert!(err.contains("expected http://HOST:PORT"), "{err}");
        }
        assert!(matches!(
            parse_gateways(" , "),
            Err(ConfigError::MissingGateway)
        ));
    }

    #[test]
    fn missing_agent_id_says_how_to_set_it() {
        let mut args = valid_args();
        args.drain(4..6);
        let err = config(&args).unwrap().validate().unwrap_err().to_string();
        assert!(
            err.contains("--agent-id") && err.contains("LOGDRAIN_AGENT_ID"),
            "{err}"
        );
    }

    #[test]
    fn missing_token_says_how_to_get_one() {
        let mut args = valid_args();
        args.drain(2..4);
        let err = config(&args).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("logdrain-gateway token --agent-id"), "{err}");
    }

    #[test]
    fn a_malformed_token_is_named_never_echoed() {
        for bad in ["secret tok", "secret\ntok", "secrét"] {
            let mut args = valid_args();
            args[3] = bad;
            let err = config(&args).unwrap().validate().unwrap_err().to_string();
            assert!(err.contains("--token / LOGDRAIN_TOKEN"), "{err}");
            assert!(!err.contains("secr"), "{err}");
        }
        let mut args = valid_args();
        args[3] = " tok\n";
        let settings = config(&args).unwrap().validate().unwrap();
        assert_eq!(settings.token, "tok", "a pasted line break is trimmed");
    }

    #[test]
    fn the_token_is_read_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "file-token\n").unwrap();
        let mut args = valid_args();
        args.drain(2..4);
        let path_arg = path.to_str().unwrap();
        args.splice(0..0, ["--token-file", path_arg]);
        let settings = config(&args).unwrap().validate().unwrap();
        assert_eq!(settings.token, "file-token");
        args[1] = "/nonexistent/token";
        let err = config(&args).unwrap().validate().unwrap_err().to_string();
        assert!(err.contains("LOGDRAIN_TOKEN_FILE"), "{err}");
    }

    #[test]
    fn ids_the_gateway_refuses_are_refused_at_start_naming_the_rule() {
        for bad in ["agent 1", "my/agent", "café", ".hidden"] {
            let mut args = valid_args();
            args[5] = bad;
            let err = config(&args).unwrap().validate().unwrap_err();
            assert!(matches!(err, ConfigError::BadId { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains("--agent-id") && text.contains(ids::ID_CHARACTERS),
                "{text}"
            );
        }
        let err = config(&valid_args())
            .unwrap()
            .validate_with_hostname(|| Ok("host_a/b".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the host name") && err.contains(ids::ID_CHARACTERS),
            "{err}"
        );
    }

    #[test]
    fn buffer_must_hold_several_maximum_lines() {
        let mut args = valid_args();
        args.splice(0..0, ["--buffer-bytes", "100KiB"]);
        let err = config(&args).unwrap().validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::BufferTooSmall { value: 102_400, .. }),
            "{err}"
        );
    }

    #[test]
    fn max_line_bytes_is_bounded() {
        let mut args = valid_args();
        args.splice(0..0, ["--max-line-bytes", "8MiB", "--buffer-bytes", "1GiB"]);
        let err = config(&args).unwrap().validate().unwrap_err();
        assert!(matches!(err, ConfigError::MaxLineBytes { .. }), "{err}");
    }

    #[test]
    fn token_never_shows_in_debug_output() {
        let parsed = config(&valid_args()).unwrap();
        assert!(!format!("{parsed:?}").contains("tok\""));
        let settings = parsed.validate_with_hostname(|| Ok("h".into())).unwrap();
        assert!(!format!("{settings:?}").contains("\"tok\""));
    }

    #[test]
    fn subreaper_accepts_a_bare_flag_or_a_boolish_value() {
        let mut args = valid_args();
        args.insert(0, "--subreaper");
        assert!(config(&args).unwrap().subreaper);
        let mut args = valid_args();
        args.splice(0..0, ["--subreaper", "false"]);
        assert!(!config(&args).unwrap().subreaper);
    }
}
