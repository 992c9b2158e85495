//! Command line and environment configuration of `logdrain-gateway`.
//!
//! One typed struct per subcommand, parsed by clap with an environment
//! variable for every option, and validated before anything starts. This
//! module must not start tasks or open files.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use logdrain::units::{parse_duration, parse_size};
use url::Url;

/// logdrain-gateway: receives agent output from agent-shim over gRPC, queues
/// it durably (sled) per agent, and forwards it to each tenant's monitoring
/// vendor (Datadog, CloudWatch Logs, Sentry, New Relic) with the tenant's own
/// credentials.
#[derive(Debug, Parser)]
#[command(name = "logdrain-gateway", version, about, long_about)]
pub struct Config {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once at startup: the size of the serve variant (one URL per
// vendor override) costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the gateway: gRPC ingest, the durable queue, delivery, and the
    /// HTTP endpoints /metrics, /healthz, /readyz, the status API and the
    /// status page at /.
    Serve(ServeConfig),
    /// Print the ingest token for an agent id. Give it to that agent's
    /// replicas as LOGDRAIN_TOKEN. It can write and tail only that agent.
    Token(TokenConfig),
    /// Follow an agent's lines live, from all of its replicas.
    Tail(TailConfig),
    /// Show what a running gateway knows about an agent (or, with the admin
    /// token, every agent): its replicas, its destinations and the secret
    /// names that switched them on, each destination's delivery state, last
    /// error, queue and where its logs land. Never shows a secret value.
    Status(StatusConfig),
    /// Send one clearly marked test line through each destination of an
    /// agent, with the credentials the gateway stored for it, and print
    /// each vendor's answer. The queue and delivery are not touched.
    TestSend(TestSendConfig),
    /// Bring back a queue whose start was refused because sled cannot open
    /// its database: with the gateway stopped, sets sled's files aside
    /// (kept, in `sled.corrupt-<time>` inside the queue) and rebuilds the
    /// index from the segment files, so the next start delivers every line
    /// they hold. A queue that opens is left as it is.
    Recover(RecoverConfig),
    /// Retire a gateway without stranding its backlog: with the gateway
    /// stopped, ship every line still queued in its data dir, with its
    /// route's credentials, to a peer gateway over the Ship protocol. A line
    /// leaves this queue only once the peer has it on disk; run it again
    /// after any failure to go on (the peer de-duplicates).
    Handoff(HandoffConfig),
}

#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Directory that holds the queue (one sled database) and, when
    /// LOGDRAIN_SIGNING_KEY is unset, the generated signing key.
    #[arg(long, env = "LOGDRAIN_DATA_DIR", default_value = "./logdrain-data")]
    pub data_dir: PathBuf,

    /// Key that signs ingest tokens (at least 16 bytes). Gateways that serve
    /// the same agents must share it. When unset, a key is generated into the
    /// data dir on first start.
    #[arg(long, env = "LOGDRAIN_SIGNING_KEY", hide_env_values = true)]
    pub signing_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub key: KeyArgs,

    /// Address for the gRPC ingest and tail service.
    #[arg(long, env = "LOGDRAIN_GRPC_LISTEN", default_value = "0.0.0.0:50051")]
    pub grpc_listen: SocketAddr,

    /// Address for the HTTP endpoints /metrics, /healthz, /readyz, the
    /// status API (/v1/...) and the status page (/).
    #[arg(long, env = "LOGDRAIN_HTTP_LISTEN", default_value = "0.0.0.0:9090")]
    pub http_listen: SocketAddr,

    /// Most HTTP connections open at once. At the limit, a new connection
    /// closes the oldest one with no request in progress (an idle or
    /// half-sent one), so health probes are still answered; it is refused
    /// only while every connection is busy with a request. Refusals are
    /// counted in logdrain_http_refused_total. Keep the open file limit
    /// (`ulimit -n`) above this plus --max-streams.
    #[arg(long, env = "LOGDRAIN_HTTP_MAX_CONNECTIONS", default_value_t = 256, value_parser = parse_http_max_connections)]
    pub http_max_connections: usize,

    /// How long an HTTP client has to send a request's headers before its
    /// connection is closed (requests are also capped at 64KiB of headers
    /// and 64KiB of declared body).
    #[arg(long, env = "LOGDRAIN_HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub http_header_timeout: Duration,

    /// Replace the Datadog base URL (scheme, host and port), for tests and
    /// proxies. The path /api/v2/logs is kept.
    #[arg(long, env = "LOGDRAIN_DATADOG_URL")]
    pub datadog_url: Option<Url>,

    /// Replace the New Relic base URL (scheme, host and port), for tests and
    /// proxies. The path /log/v1 is kept; every license key goes there, EU
    /// keys included.
    #[arg(long, env = "LOGDRAIN_NEWRELIC_URL")]
    pub newrelic_url: Option<Url>,
    /// Replace the CloudWatch Logs endpoint (scheme, host, port and path),
    /// for tests and proxies. When unset, AWS_ENDPOINT_URL_CLOUDWATCH_LOGS
    /// or AWS_ENDPOINT_URL of the gateway's environment apply, as in the AWS
    /// SDKs. Credentials always come from each agent's secrets, never from
    /// the gateway's environment.
    #[arg(long, env = "LOGDRAIN_CLOUDWATCH_URL")]
    pub cloudwatch_url: Option<Url>,

    /// A network (CIDR, like 10.20.0.0/16, or one address) that endpoints
    /// supplied by tenants may reach although it is not public, such as a
    /// self-hosted Sentry on a private network. Repeatable; the environment
    /// variable takes a comma-separated list. Without it, a tenant's
    /// SENTRY_DSN may lead only to public addresses: never to loopback,
    /// private, link-local, unique-local, multicast or cloud metadata
    /// addresses. The --*-url overrides above are not restricted.
    #[arg(long = "allow-endpoint-net", env = "LOGDRAIN_ALLOW_ENDPOINT_NETS", value_name = "CIDR[,CIDR...]", value_parser = parse_nets)]
    pub allow_endpoint_nets: Vec<AllowedNets>,

    /// On SIGTERM, how long in-flight deliveries may take to finish before
    /// they are abandoned (their lines stay queued).
    #[arg(long, env = "LOGDRAIN_SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// First wait of a route whose credentials were rejected (half to all
    /// of it, at random); each later wait doubles, up to 30 times this, so
    /// long-refused credentials cost the vendor few requests and routes
    /// parked together do not retry together.
    #[arg(long, env = "LOGDRAIN_AUTH_RETRY_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub auth_retry_interval: Duration,

    /// Timeout of one request to a vendor.
    #[arg(long, env = "LOGDRAIN_VENDOR_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub vendor_timeout: Duration,

    /// How long a new stream may take to send its opening message.
    #[arg(long, env = "LOGDRAIN_OPEN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub open_timeout: Duration,

    /// Most shim streams served at once (a stream waiting for its opening
    /// message counts). Further streams are refused with RESOURCE_EXHAUSTED
    /// so shims try another gateway. Each stream holds up to 8 batches in
    /// memory; keep the open file limit (`ulimit -n`) above this.
    #[arg(long, env = "LOGDRAIN_MAX_STREAMS", default_value_t = 10_000, value_parser = parse_max_streams)]
    pub max_streams: usize,

    /// Most routes one agent may have: each destination of each distinct
    /// set of credentials its replicas send is a route, with its own
    /// worker and vendor requests. A stream that would add more is refused
    /// with RESOURCE_EXHAUSTED naming this flag (the shim keeps its lines
    /// buffered and retries). A route that is parked (credentials refused
    /// or invalid) or has delivered nothing expires once no stream has
    /// carried it for an hour and its lines are gone.
    #[arg(long, env = "LOGDRAIN_MAX_ROUTES_PER_AGENT", default_value_t = crate::sinks::engine::DEFAULT_MAX_ROUTES_PER_AGENT, value_parser = parse_max_routes)]
    pub max_routes_per_agent: usize,

    /// Most line data one agent may keep queued (like 512MiB or 2GB; at
    /// least 16MiB, one gRPC message). When its destinations fail long
    /// enough to fill it, the agent's oldest lines are dropped, counted in
    /// logdrain_dropped_lines_total{reason="quota"}, and a notice with the
    /// count, time range and cause enters its drain. Other agents are not
    /// affected.
    #[arg(long, env = "LOGDRAIN_AGENT_QUOTA_BYTES", default_value = "1GiB", value_parser = parse_quota)]
    pub agent_quota_bytes: u64,

    /// New batches are refused with RESOURCE_EXHAUSTED (shims keep their
    /// lines and retry) while the data dir's filesystem has less free space
    /// than this; delivery goes on and appends resume by themselves. 0
    /// disables the check (sled stops writing after a full disk until
    /// restart: keep a margin).
    #[arg(long, env = "LOGDRAIN_DISK_MIN_FREE_BYTES", default_value = "256MiB", value_parser = parse_size::<u64>)]
    pub disk_min_free_bytes: u64,

    /// Memory for the queue database's page cache (like 64MiB): segment
    /// headers, cursors and routes. The lines themselves live in segment
    /// files on disk (read through the operating system's cache), so the
    /// gateway's memory does not follow a backlog while a vendor is down.
    #[arg(long, env = "LOGDRAIN_QUEUE_CACHE_BYTES", default_value = "64MiB", value_parser = parse_size::<u64>)]
    pub queue_cache_bytes: u64,

    /// At most one quota drop notice per route in this interval; each
    /// repeats the totals of the ongoing run of drops.
    #[arg(long, env = "LOGDRAIN_QUOTA_NOTICE_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub quota_notice_interval: Duration,

    /// PEM certificate (chain) of the gateway. With --tls-key, both the
    /// gRPC and the HTTP listener speak TLS only (clients use https://).
    #[arg(
        long,
        env = "LOGDRAIN_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        long,
        env = "LOGDRAIN_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate(s) of the CA that signs client certificates. When
    /// set, gRPC clients (shims, tail) must present a certificate it signed
    /// (mutual TLS). The HTTP listener never asks for one: its status
    /// endpoint needs a token and the others hold no secrets.
    #[arg(
        long,
        env = "LOGDRAIN_TLS_CLIENT_CA",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// The fleet's gateways, so `tail`, `status` and the status page asked
    /// of this one show every replica and route of the fleet: their gRPC
    /// addresses (`HOST:PORT`, `http://HOST:PORT`, or `https://HOST:PORT`
    /// for gateways serving TLS, checked against HOST), comma-separated. A
    /// name that resolves to several addresses (a headless Service,
    /// compose's service DNS) is that many gateways. This gateway finds
    /// itself among them (--advertise) and asks the others, with the
    /// caller's own token. List only the fleet's gateways: they receive
    /// callers' tokens.
    #[arg(long, env = "LOGDRAIN_PEERS", value_name = "ADDR[,ADDR...]", value_parser = parse_peers)]
    pub peers: Option<PeerList>,

    /// PEM CA certificate(s) to trust for `https://` peers (the Mozilla
    /// roots are always trusted). When this gateway requires client
    /// certificates (--tls-client-ca), it presents its own --tls-cert to
    /// its peers, which must then allow client authentication too.
    #[arg(long, env = "LOGDRAIN_PEER_CA_FILE", value_name = "PATH")]
    pub peer_ca_file: Option<PathBuf>,

    /// How often --peers is resolved again (a name that fails keeps its
    /// last addresses).
    #[arg(long, env = "LOGDRAIN_PEER_REFRESH", default_value = "30s", value_parser = parse_duration)]
    pub peer_refresh: Duration,

    /// How long a peer has to answer a fleet-wide status, or to start a
    /// tail; one that does not is listed as missing.
    #[arg(long, env = "LOGDRAIN_PEER_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub peer_timeout: Duration,

    /// This gateway's gRPC address as its peers reach it (`IP:PORT`; on
    /// Kubernetes the pod IP from the downward API and the gRPC port).
    /// Without it, the peer address equal to --grpc-listen is this gateway,
    /// or, listening on 0.0.0.0, the one with its port that is an address
    /// of this host. It names this gateway in the fleet-wide views.
    #[arg(long, env = "LOGDRAIN_ADVERTISE", value_name = "IP:PORT")]
    pub advertise: Option<String>,

    /// Token for the all-agents status (`GET /v1/status`, the status page
    /// without `agent_id`), at least 16 characters. It also reads any one
    /// agent's status and may test-send. When unset, only per-agent status
    /// with that agent's own token is available.
    #[arg(long, env = "LOGDRAIN_ADMIN_TOKEN", hide_env_values = true, value_parser = AdminTokenParser)]
    pub admin_token: Option<AdminToken>,
}

/// The gRPC URLs of `--peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerList(pub Vec<tonic::transport::Uri>);

/// A comma-separated list of `HOST:PORT` or `http://HOST:PORT`; empty
/// items are skipped.
fn parse_peers(value: &str) -> Result<PeerList, String> {
    let mut peers = Vec::new();
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let url = if item.contains("://") {
            item.to_string()
        } else {
            format!("http://{item}")
        };
        let bad = |reason: &str| {
            format!("peer {item:?} {reason}; give HOST:PORT or http://HOST:PORT, the gRPC address of a gateway")
        };
        let uri: tonic::transport::Uri = url.parse().map_err(|_| bad("is not an address"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) {
            return Err(bad("is neither http:// nor https://"));
        }
        if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
            return Err(bad("has no host or port"));
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(bad("has a path"));
        }
        peers.push(uri);
    }
    Ok(PeerList(peers))
}

/// The networks of one `--allow-endpoint-net` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedNets(pub Vec<ipnet::IpNet>);

impl ServeConfig {
    /// Every network of `--allow-endpoint-net`.
    pub fn allowed_endpoint_nets(&self) -> Vec<ipnet::IpNet> {
        self.allow_endpoint_nets
            .iter()
            .flat_map(|nets| nets.0.iter().copied())
            .collect()
    }
}

/// A comma-separated list of networks ([`crate::sinks::endpoint::parse_net`]);
/// empty items are skipped, so an empty variable allows nothing.
fn parse_nets(value: &str) -> Result<AllowedNets, String> {
    value
        .split(',')
        .filter(|item| !item.trim().is_empty())
        .map(crate::sinks::endpoint::parse_net)
        .collect::<Result<_, _>>()
        .map(AllowedNets)
}

/// The admin token of `serve`; `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN: usize = 16;

/// Parses `--admin-token` with [`parse_admin_token`]. A refusal names the
/// option and never shows the value (clap's own errors quote it).
#[derive(Clone, Copy, Debug)]
struct AdminTokenParser;

impl clap::builder::TypedValueParser for AdminTokenParser {
    type Value = AdminToken;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<AdminToken, clap::Error> {
        value
            .to_str()
            .ok_or_else(|| "the admin token is not valid UTF-8; use visible ASCII only".to_string())
            .and_then(parse_admin_token)
            .map_err(|problem| {
                clap::Error::raw(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--admin-token / LOGDRAIN_ADMIN_TOKEN is not usable: {problem}\n"),
                )
                .with_cmd(cmd)
            })
    }
}

fn parse_admin_token(value: &str) -> Result<AdminToken, String> {
    let value = value.trim();
    if value.len() < MIN_ADMIN_TOKEN {
        return Err(format!(
            "the admin token is {} characters long; use at least {MIN_ADMIN_TOKEN} random characters, for example from `openssl rand -hex 32`",
            value.len()
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the admin token contains spaces or non-ASCII characters; use visible ASCII only (it is sent in an HTTP header)".to_string());
    }
    Ok(AdminToken(value.to_string()))
}

/// How `status` and `test-send` reach and authenticate to a gateway.
/// `Debug` never shows the admin token.
#[derive(Clone, Args)]
pub struct GatewayHttpArgs {
    /// The gateway's HTTP address (its --http-listen), `https://` for TLS.
    #[arg(
        long,
        env = "LOGDRAIN_GATEWAY_HTTP",
        default_value = "http://127.0.0.1:9090"
    )]
    pub gateway_http: Url,

    #[command(flatten)]
    pub token: AgentToken,

    /// The gateway's admin token (its --admin-token); needed for every
    /// agent at once, and accepted for any single agent.
    #[arg(long, env = "LOGDRAIN_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Extra CA certificate(s) (PEM) to trust for an `https://` gateway
    /// whose certificate a private CA signed (its --tls-cert).
    #[arg(long, env = "LOGDRAIN_GATEWAY_CA_FILE", value_name = "PATH")]
    pub gateway_ca_file: Option<PathBuf>,

    /// Timeout of the request to the gateway (test-send waits for every
    /// vendor's answer).
    #[arg(long, env = "LOGDRAIN_HTTP_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

impl GatewayHttpArgs {
    /// The credential to send: the agent's token, else the admin token.
    /// Checks that the URL is http(s) and that a credential fits the ask.
    pub fn bearer(&self, agent_id: Option<&str>) -> Result<String, String> {
        if !matches!(self.gateway_http.scheme(), "http" | "https")
            || self.gateway_http.host_str().is_none()
        {
            return Err(format!(
                "--gateway-http {} is not an http:// or https:// URL; give the gateway's HTTP address, for example http://127.0.0.1:9090",
                self.gateway_http
            ));
        }
        match (agent_id, self.token.read()?, self.admin_token.as_deref()) {
            (Some(_), Some(token), _) => Ok(token),
            (_, _, Some(admin)) => Ok(admin.to_string()),
            (Some(agent), None, None) => Err(format!(
                "no credential: pass the agent's token with --token-file / LOGDRAIN_TOKEN_FILE or --token / LOGDRAIN_TOKEN (`logdrain-gateway token --agent-id {agent}`), or the gateway's --admin-token"
            )),
            (None, _, None) => Err(
                "every agent at once needs the gateway's admin token: pass --admin-token / LOGDRAIN_ADMIN_TOKEN, or choose one agent with --agent-id and its --token".to_string(),
            ),
        }
    }
}

/// The agent's ingest token, given as the shim takes it: in a file or as a
/// value. `Debug` never shows it.
#[derive(Clone, Args)]
pub struct AgentToken {
    /// The agent's ingest token (see `logdrain-gateway token`); prefer
    /// --token-file.
    #[arg(
        long,
        env = "LOGDRAIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// File holding the agent's ingest token (surrounding whitespace
    /// ignored): it then appears in no command line or environment.
    #[arg(
        long,
        env = "LOGDRAIN_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
}

impl AgentToken {
    /// The token from --token-file, else --token; `None` when neither is
    /// given. The error names the file, never its contents.
    pub fn read(&self) -> Result<Option<String>, String> {
        let token = match &self.token_file {
            Some(path) => logdrain::client::read_token_file(path)
                .map_err(|e| format!("cannot read --token-file / LOGDRAIN_TOKEN_FILE {path:?}: {e}; point it at the file holding the agent's ingest token"))?,
            None => match &self.token {
                Some(token) => token.clone(),
                None => return Ok(None),
            },
        };
        Ok(Some(token.trim().to_string()).filter(|token| !token.is_empty()))
    }

    /// The token, which this command needs.
    pub fn required(&self) -> Result<String, String> {
        self.read()?.ok_or_else(|| {
            "no ingest token: pass --token-file / LOGDRAIN_TOKEN_FILE or --token / LOGDRAIN_TOKEN (`logdrain-gateway token --agent-id ID`)".to_string()
        })
    }
}

impl std::fmt::Debug for GatewayHttpArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayHttpArgs")
            .field("gateway_http", &self.gateway_http.as_str())
            .field("token", &self.token)
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("gateway_ca_file", &self.gateway_ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl std::fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentToken")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

#[derive(Debug, Clone, Args)]
pub struct StatusConfig {
    #[command(flatten)]
    pub gateway: GatewayHttpArgs,

    /// Show only this agent (with its --token or the admin token). Without
    /// it, every agent the gateway knows (admin token only).
    #[arg(long, env = "LOGDRAIN_AGENT_ID")]
    pub agent_id: Option<String>,

    /// Print the versioned JSON document (schema 1, see
    /// docs/troubleshooting.md) instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TestSendConfig {
    #[command(flatten)]
    pub gateway: GatewayHttpArgs,

    /// The agent whose destinations get the test line.
    #[arg(long, env = "LOGDRAIN_AGENT_ID")]
    pub agent_id: String,

    /// Print the gateway's JSON answer instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TokenConfig {
    #[command(flatten)]
    pub key: KeyArgs,

    /// The agent id the token is for.
    #[arg(long, env = "LOGDRAIN_AGENT_ID")]
    pub agent_id: String,
}

#[derive(Debug, Clone, Args)]
pub struct RecoverConfig {
    #[command(flatten)]
    pub key: KeyArgs,

    /// The queue directory (default: `queue` in the data dir).
    pub queue: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct HandoffConfig {
    #[command(flatten)]
    pub key: KeyArgs,

    /// gRPC URL of the peer gateway that takes the lines over (`https://`
    /// for TLS). It must share this gateway's signing key.
    #[arg(long, env = "LOGDRAIN_HANDOFF_TO", value_name = "URL")]
    pub to: Url,

    /// The queue directory (default: `queue` in the data dir).
    #[arg(long, value_name = "PATH")]
    pub queue: Option<PathBuf>,

    /// PEM file with extra CA certificates to trust for an `https://` peer
    /// (for a private CA). The Mozilla roots are always trusted.
    #[arg(long, env = "LOGDRAIN_GATEWAY_CA_FILE", value_name = "PATH")]
    pub gateway_ca_file: Option<PathBuf>,

    /// PEM client certificate, for a peer that requires mutual TLS.
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
}

#[derive(Debug, Clone, Args)]
pub struct TailConfig {
    /// The agent whose lines to follow.
    #[arg(long, env = "LOGDRAIN_AGENT_ID")]
    pub agent_id: String,

    /// The gateway's gRPC address (its --grpc-listen), `https://` for TLS.
    #[arg(
        long,
        env = "LOGDRAIN_GATEWAY",
        default_value = "http://127.0.0.1:50051"
    )]
    pub gateway: Url,

    #[command(flatten)]
    pub token: AgentToken,

    /// Print one JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,

    /// PEM file with extra CA certificates to trust for an `https://`
    /// gateway (for a private CA). The Mozilla roots are always trusted.
    #[arg(long, env = "LOGDRAIN_GATEWAY_CA_FILE", value_name = "PATH")]
    pub gateway_ca_file: Option<PathBuf>,

    /// PEM client certificate, for a gateway that requires mutual TLS.
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
}

/// Smallest per-agent quota: one gRPC message (a batch is never split
/// across appends, and one batch must always fit).
pub const MIN_AGENT_QUOTA_BYTES: u64 = logdrain::MAX_MESSAGE_BYTES as u64;

fn parse_quota(value: &str) -> Result<u64, String> {
    let bytes: u64 = parse_size(value).map_err(|e| e.to_string())?;
    if bytes < MIN_AGENT_QUOTA_BYTES {
        return Err(format!(
            "{value:?} is below the smallest per-agent quota of 16MiB (one batch must always fit); raise it"
        ));
    }
    Ok(bytes)
}

/// `--max-streams`: a whole number of at least 1.
fn parse_max_streams(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a stream count; use a whole number of at least 1, like 10000"
        )),
    }
}

/// `--max-routes-per-agent`: a whole number of at least 1.
fn parse_max_routes(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a route count; use a whole number of at least 1, like 16"
        )),
    }
}

/// `--http-max-connections`: a whole number of at least 1.
fn parse_http_max_connections(value: &str) -> Result<usize, String> {
    match value.trim().parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{value:?} is not a connection count; use a whole number of at least 1, like 256"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn a_tls_certificate_without_its_key_is_refused_naming_the_missing_option() {
        let err = Config::try_parse_from(["logdrain-gateway", "serve", "--tls-cert", "gw.pem"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-key"), "{err}");
        let err =
            Config::try_parse_from(["logdrain-gateway", "serve", "--tls-client-ca", "ca.pem"])
                .unwrap_err()
                .to_string();
        assert!(err.contains("--tls-cert"), "{err}");
    }

    #[test]
    fn a_short_admin_token_is_refused_naming_the_minimum() {
        let err = parse_admin_token("short").unwrap_err();
        assert!(err.contains("16"), "{err}");
        assert!(!format!("{:?}", parse_admin_token("0123456789abcdef0").unwrap()).contains("0123"));
    }

    #[test]
    fn allowed_endpoint_networks_are_read_from_repeated_flags_and_lists() {
        let parsed = Config::try_parse_from([
            "logdrain-gateway",
            "serve",
            "--allow-endpoint-net",
            "10.20.0.0/16",
            "--allow-endpoint-net",
            "192.168.1.7, fd00::/8,",
        ])
        .unwrap();
        let Command::Serve(serve) = parsed.command else {
            panic!("not serve")
        };
        let nets: Vec<String> = serve
            .allowed_endpoint_nets()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(nets, ["10.20.0.0/16", "192.168.1.7/32", "fd00::/8"]);
        assert_eq!(parse_nets(""), Ok(AllowedNets(Vec::new())));
        assert!(parse_nets("10.0.0.0/8,intranet").is_err());
    }

    #[test]
    fn status_settings_never_show_the_admin_token_or_the_agent_token() {
        let cli = Config::try_parse_from([
            "logdrain-gateway",
            "status",
            "--admin-token",
            "admin-secret-0123456789",
            "--agent-id",
            "a",
            "--token",
            "agent-secret-0123456789",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn a_refused_admin_token_is_named_never_echoed() {
        for bad in ["shortsecret", "secret with a blank 0123456789"] {
            let err = Config::try_parse_from(["logdrain-gateway", "serve", "--admin-token", bad])
                .unwrap_err()
                .to_string();
            assert!(err.contains("--admin-token"), "{err}");
            assert!(!err.contains("secret") && !err.contains("blank"), "{err}");
        }
    }

    #[test]
    fn all_agents_status_without_the_admin_token_names_the_flag() {
        let config = Config::try_parse_from(["logdrain-gateway", "status"]).unwrap();
        let Command::Status(status) = config.command else {
            panic!("parsed as another command");
        };
        let err = status.gateway.bearer(None).unwrap_err();
        assert!(err.contains("--admin-token"), "{err}");
    }

    #[test]
    fn peers_are_addresses_or_grpc_urls_and_a_bad_one_is_named_with_the_form() {
        let peers =
            parse_peers("gw-0:50051, http://10.0.0.2:50051,,https://gw.example:4317").unwrap();
        let shown: Vec<String> = peers.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "http://gw-0:50051/",
                "http://10.0.0.2:50051/",
                "https://gw.example:4317/"
            ]
        );
        for bad in ["gw-0", "ftp://gw:21", "http://gw:1/path", "gw:notaport"] {
            let err = parse_peers(bad).unwrap_err();
            assert!(err.contains(bad) && err.contains("HOST:PORT"), "{err}");
        }
    }

    #[test]
    fn max_streams_must_be_a_positive_count() {
        assert_eq!(parse_max_streams("10000"), Ok(10_000));
        for bad in ["0", "-1", "many", ""] {
            let err = parse_max_streams(bad).unwrap_err();
            assert!(err.contains("at least 1"), "{err}");
        }
    }

    #[test]
    fn max_routes_per_agent_must_be_a_positive_count() {
        assert_eq!(parse_max_routes("16"), Ok(16));
        for bad in ["0", "-1", "many", ""] {
            let err = parse_max_routes(bad).unwrap_err();
            assert!(err.contains("at least 1"), "{err}");
        }
    }

    #[test]
    fn client_commands_read_the_token_from_its_file_trimmed_and_never_show_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  secret-token\n").unwrap();
        let path_arg = path.to_str().unwrap();
        let config = Config::try_parse_from([
            "logdrain-gateway",
            "tail",
            "--agent-id",
            "a",
            "--token-file",
            path_arg,
        ])
        .unwrap();
        let Command::Tail(tail) = config.command else {
            panic!("parsed as another command");
        };
        assert_eq!(tail.token.required().unwrap(), "secret-token");
        assert!(!format!("{tail:?}").contains("secret"));

        std::fs::write(&path, "\n").unwrap();
        let err = tail.token.required().unwrap_err();
        assert!(err.contains("--token-file"), "{err}");
        std::fs::remove_file(&path).unwrap();
        let err = tail.token.required().unwrap_err();
        assert!(
            err.contains("cannot read --token-file") && err.contains(path_arg),
            "{err}"
        );
        assert!(
            Config::try_parse_from([
                "logdrain-gateway",
                "status",
                "--token",
                "t",
                "--token-file",
                path_arg
            ])
            .is_err(),
            "one token, not two"
        );
    }

    #[test]
    fn a_quota_smaller_than_one_batch_is_refused() {
        let err = parse_quota("1MiB").unwrap_err();
        assert!(err.contains("16MiB"), "{err}");
        assert_eq!(parse_quota("16MiB"), Ok(16 << 20));
    }
}
