//! Test harness: runs the real `logdrain-gateway` and `agent-shim` binaries.
//!
//! The binaries are the ones `cargo test` builds for the workspace (the
//! gateway and shim packages have their own integration tests, so cargo
//! always rebuilds them before running these).
#![allow(dead_code)]

pub mod pki;
pub mod tool;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing; build the workspace first (`cargo test` at the root builds it)",
        path.display()
    );
    path
}

/// A fixed signing key so tokens are predictable across gateway restarts.
pub const SIGNING_KEY: &str = "test-signing-key-0123456789abcdef";

/// The token for `agent_id` under [`SIGNING_KEY`], from the real binary.
pub fn token(agent_id: &str) -> String {
    let out = Command::new(bin("logdrain-gateway"))
        .args(["token", "--agent-id", agent_id])
        .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
        .output()
        .expect("run logdrain-gateway token");
    assert!(
        out.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A running gateway process.
pub struct Gateway {
    pub child: Child,
    pub data_dir: PathBuf,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    datadog_url: String,
    extra_env: Vec<(String, String)>,
    log: PathBuf,
}

impl Gateway {
    /// Starts a gateway on ephemeral ports with its queue in `data_dir`.
    pub fn start(data_dir: &Path, datadog_url: &str) -> Gateway {
        Self::start_with(
            data_dir,
            datadog_url,
            "127.0.0.1:0",
            "127.0.0.1:0",
            Vec::new(),
        )
    }

    pub fn start_with(
        data_dir: &Path,
        datadog_url: &str,
        grpc: &str,
        http: &str,
        extra_env: Vec<(String, String)>,
    ) -> Gateway {
        let mut command = Command::new(bin("logdrain-gateway"));
        command.arg("serve");
        Self::spawn(command, data_dir, datadog_url, grpc, http, extra_env)
    }

    /// Starts a gateway whose data dir is `<mount>/data` on a tmpfs of
    /// `size_mib` MiB mounted at `mount` in a new user and mount namespace
    /// (`unshare -Urm`), so a test can fill its disk. The test reaches the
    /// files through `/proc/<pid>/root` ([`Gateway::in_namespace`]). `None`
    /// when this machine cannot create such namespaces.
    pub fn start_on_tmpfs(
        mount: &Path,
        size_mib: u32,
        datadog_url: &str,
        extra_env: Vec<(String, String)>,
    ) -> Option<Gateway> {
        std::fs::create_dir_all(mount).expect("mount point");
        let probe = Command::new("unshare")
            .args(["-Urm", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size=1m tmpfs '{}'",
                mount.display()
            ))
            .output();
        if !probe.is_ok_and(|o| o.status.success()) {
            return None;
        }
        let mut command = Command::new("unshare");
        command
            .args(["-Urm", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size_mib}m tmpfs \"$1\" && exec \"$2\" serve"
            ))
            .arg("sh")
            .arg(mount)
            .arg(bin("logdrain-gateway"));
        let data_dir = mount.join("data");
        Some(Self::spawn(
            command,
            &data_dir,
            datadog_url,
            "127.0.0.1:0",
            "127.0.0.1:0",
            extra_env,
        ))
    }

    /// Starts a gateway on ephemeral ports whose open file limit is
    /// `open_files` (`ulimit -n`), so a test can exhaust it.
    pub fn start_with_open_files(
        data_dir: &Path,
        datadog_url: &str,
        open_files: u32,
        extra_env: Vec<(String, String)>,
    ) -> Gateway {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {open_files} && exec \"$0\" serve"))
            .arg(bin("logdrain-gateway"));
        Self::spawn(
            command,
            data_dir,
            datadog_url,
            "127.0.0.1:0",
            "127.0.0.1:0",
            extra_env,
        )
    }

    /// A path inside the gateway's own mount namespace (see
    /// [`Gateway::start_on_tmpfs`]).
    pub fn in_namespace(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.child.id())).join(relative)
    }

    fn spawn(
        mut command: Command,
        data_dir: &Path,
        datadog_url: &str,
        grpc: &str,
        http: &str,
        extra_env: Vec<(String, String)>,
    ) -> Gateway {
        let log = data_dir.with_extension("gateway.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("gateway log file");
        let mut child = command
            .env("LOGDRAIN_DATA_DIR", data_dir)
            .env("LOGDRAIN_SIGNING_KEY", SIGNING_KEY)
            .env("LOGDRAIN_GRPC_LISTEN", grpc)
            .env("LOGDRAIN_HTTP_LISTEN", http)
            .env("LOGDRAIN_DATADOG_URL", datadog_url)
            .env("LOGDRAIN_LOG", "info")
            // The test intakes stand in for the vendors on loopback.
            .env("LOGDRAIN_ALLOW_ENDPOINT_NETS", "127.0.0.0/8")
            .envs(extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn logdrain-gateway");
        let stdout = child.stdout.take().expect("gateway stdout");
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("gateway prints its addresses");
        let (grpc, http) = parse_listening(&line).unwrap_or_else(|| {
            panic!(
                "gateway did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        // Keep draining stdout so the gateway never blocks on it; what it
        // prints goes to the log too, after its stderr.
        let mut stdout_log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("gateway log file");
        std::thread::spawn(move || {
            use std::io::Write;
            let mut sink = line;
            loop {
                let _ = stdout_log.write_all(sink.as_bytes());
                sink.clear();
                if !reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    break;
                }
            }
        });
        Gateway {
            child,
            data_dir: data_dir.to_path_buf(),
            grpc,
            http,
            datadog_url: datadog_url.to_string(),
            extra_env,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The gRPC URL of a gateway started with TLS (see [`pki::Pki`]).
    pub fn https_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// The `https://` base URL of the HTTP endpoints of a TLS gateway.
    pub fn https_base(&self) -> String {
        format!("https://{}", self.http)
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), libc::SIGTERM);
        self.child.wait().expect("wait for gateway")
    }

    /// Starts again on the same ports and data dir (after kill9/terminate).
    pub fn restart(&mut self) {
        let mut attempts = 0;
        loop {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Gateway::start_with(
                    &self.data_dir,
                    &self.datadog_url,
                    &self.grpc.to_string(),
                    &self.http.to_string(),
                    self.extra_env.clone(),
                )
            }));
            match result {
                Ok(gateway) => {
                    // Dropping the old handle reaps the already-stopped process.
                    *self = gateway;
                    return;
                }
                // The port may still be held for a moment after a kill.
                Err(_) if attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        http_get(&format!("http://{}/metrics", self.http)).await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_listening(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("logdrain-gateway: listening ")?;
    let mut grpc = None;
    let mut http = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("grpc=") {
            grpc = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("http=") {
            http = v.parse().ok();
        }
    }
    Some((grpc?, http?))
}

#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a child pid we own.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// GET returning the body.
pub async fn http_get(url: &str) -> String {
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
}

/// An agent-shim command being built.
pub struct ShimBuilder {
    cmd: Command,
}

impl ShimBuilder {
    pub fn new(gateways: &str, agent_id: &str, server_id: &str) -> Self {
        let mut cmd = Command::new(bin("agent-shim"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOGDRAIN_GATEWAY", gateways)
            .env("LOGDRAIN_AGENT_ID", agent_id)
            .env("LOGDRAIN_AGENT_SERVER_ID", server_id)
            .env("LOGDRAIN_TOKEN", token(agent_id))
            .env("LOGDRAIN_DRAIN_TIMEOUT", "60s")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ShimBuilder { cmd }
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Runs `sh -c script` under the shim.
    pub fn spawn_sh(mut self, script: &str) -> Child {
        self.cmd.args(["--", "sh", "-c", script]);
        self.cmd.spawn().expect("spawn agent-shim")
    }

    pub fn spawn_args(mut self, args: &[&str]) -> Child {
        self.cmd.arg("--").args(args);
        self.cmd.spawn().expect("spawn agent-shim")
    }
}

/// Polls `check` until it returns true or `limit` passes. Returns whether it
/// became true. (A wait with a deadline, not a timing assertion.)
pub async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// Reads the value of a Prometheus counter line with all of `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && l[name.len()..].starts_with(['{', ' '])
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Datadog API key every test intake accepts.
pub const DD_KEY: &str = "dd-api-key-for-tests";

/// Starts a test intake that accepts [`DD_KEY`].
pub async fn intake() -> logdrain_test_intake::Intake {
    logdrain_test_intake::Intake::start(logdrain_test_intake::IntakeConfig::with_datadog_keys([
        DD_KEY,
    ]))
    .await
    .expect("start test intake")
}

/// Messages received by the Datadog intake for `host`, in arrival order.
pub fn dd_messages(intake: &logdrain_test_intake::Intake, host: &str) -> Vec<String> {
    intake
        .datadog_entries()
        .iter()
        .filter(|e| e["host"] == host)
        .filter_map(|e| e["message"].as_str().map(str::to_string))
        .collect()
}

/// Waits for a child to exit (polling, so the runtime keeps serving).
pub async fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads a child's stderr to a string (after it exited).
pub fn stderr_of(child: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Drains a child's stdout and stderr in background threads so it never
/// blocks on a full pipe; returns handles yielding the captured text.
pub fn capture(
    child: &mut Child,
) -> (
    std::thread::JoinHandle<Vec<u8>>,
    std::thread::JoinHandle<Vec<u8>>,
) {
    use std::io::Read;
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    (
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        }),
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        }),
    )
}

/// A child's stdout read line by line while it runs (its stderr drained
/// too), so a test can watch the agent's passthrough as it happens.
pub struct Passthrough {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stdout: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Passthrough {
    pub fn start(child: &mut Child) -> Passthrough {
        use std::io::Read;
        let out = child.stdout.take().expect("stdout piped");
        let mut err = child.stderr.take().expect("stderr piped");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&lines);
        let stdout = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(line) => sink.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err.read_to_end(&mut v);
            v
        });
        Passthrough {
            lines,
            stdout,
            stderr,
        }
    }

    /// Lines passed through so far.
    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// After the child exited: every stdout line and the stderr text.
    pub fn finish(self) -> (Vec<String>, String) {
        let _ = self.stdout.join();
        let err = String::from_utf8_lossy(&self.stderr.join().unwrap_or_default()).into_owned();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        (lines, err)
    }
}

/// Asserts what a shim's stderr says about its drain: it ended because
/// every line was acked, not cut short with lines undelivered or dropped.
/// (The shim's exit status is the agent's, so it does not tell.)
pub fn assert_drained(shim_stderr: &str) {
    for cut_short in ["not delivered to the gateway", "dropped earlier"] {
        assert!(
            !shim_stderr.contains(cut_short),
            "the shim did not deliver everything: {shim_stderr}"
        );
    }
}

/// The agent's status from the gateway's HTTP API (`routes`, queue depth).
pub async fn agent_status(gateway: &Gateway, agent_id: &str) -> serde_json::Value {
    let url = format!("http://{}/v1/agents/{agent_id}/status", gateway.http);
    reqwest::Client::new()
        .get(&url)
        .bearer_auth(token(agent_id))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"))
}

/// How often each message occurs in `messages`.
pub fn counted(messages: &[String]) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for m in messages {
        *counts.entry(m.clone()).or_insert(0) += 1;
    }
    counts
}
