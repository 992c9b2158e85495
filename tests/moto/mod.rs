//! `moto_server` (PyPI `moto[server]`, pinned in `tests/requirements.txt`)
//! as a local CloudWatch Logs peer for tests.
//!
//! [`MotoServer::start`] finds the executable, starts it on a free loopback
//! port, waits until it answers, and kills it when dropped.
//! [`MotoServer::shared`] hands the tests of one test binary that run at the
//! same time one server (moto takes seconds to start); it is killed when
//! the last of them drops it. Tests sharing it must use names of their own
//! (log groups, buckets). Include this file
//! from a test crate (`mod moto;` in the root package's tests, or
//! `#[path = "../../tests/moto/mod.rs"] mod moto;` from `server/tests`).
//!
//! Where the executable is looked for, first match wins:
//! 1. `LOGDRAIN_TEST_MOTO_SERVER` (a path to `moto_server`);
//! 2. `moto_server` on `PATH`;
//! 3. `.venv/bin/moto_server` in the repository.
//!
//! If none is found, the test is skipped with one loud line, or fails with
//! the command that installs it under `LOGDRAIN_TEST_REQUIRE_ALL=1`
//! (`tests/common/tool.rs`). Uses only the standard library, so any test
//! crate can include it.

#![allow(dead_code)] // each test crate uses the part it needs

// Also a module of `tests/common`; included here for `server/tests`, which
// have no `common`.
#[allow(clippy::duplicate_mod)]
#[path = "../common/tool.rs"]
mod tool;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable naming the `moto_server` executable.
pub const MOTO_ENV: &str = "LOGDRAIN_TEST_MOTO_SERVER";

/// How to install moto for the tests, from the repository root.
pub const INSTALL_HINT: &str =
    "python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt";

/// Longest time moto may take to start (it imports a large Python package).
const START_LIMIT: Duration = Duration::from_secs(60);

/// Lines of moto's output kept to explain a failure.
const KEPT_LINES: usize = 40;

/// A running `moto_server`, killed on drop.
pub struct MotoServer {
    child: Child,
    addr: SocketAddr,
    output: Arc<Mutex<VecDeque<String>>>,
}

impl MotoServer {
    /// Starts `moto_server` on `127.0.0.1` and a free port, and waits until
    /// it answers HTTP. `None` when it cannot be found (see
    /// `tests/common/tool.rs`); panics with its output if it does not come
    /// up.
    pub fn start() -> Option<MotoServer> {
        let exe = match find_executable() {
            Ok(exe) => exe,
            Err(looked) => {
                return tool::missing(
                    &format!("moto_server (PyPI moto[server]; {looked})"),
                    &format!(
                        "from the repository root, {INSTALL_HINT}, or point {MOTO_ENV} at one"
                    ),
                )
            }
        };
        // Port 0: the server picks a free port and prints it, so two tests
        // never race for one.
        let mut child = Command::new(&exe)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let output = Arc::new(Mutex::new(VecDeque::new()));
        let (port_tx, port_rx) = mpsc::channel();
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            drain(pipe, Arc::clone(&output), port_tx.clone());
        }
        drop(port_tx);
        let mut server = MotoServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            output,
        };
        let deadline = Instant::now() + START_LIMIT;
        let port = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match port_rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(port) => break port,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = server.child.try_wait() {
                        server.fail(&format!("exited with {status} before listening"));
                    }
                }
                Err(_) => server.fail("did not say where it listens"),
            }
        };
        server.addr = SocketAddr::from(([127, 0, 0, 1], port));
        while !answers(server.addr) {
            if Instant::now() >= deadline {
                server.fail("does not answer HTTP");
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                server.fail(&format!("exited with {status}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    /// The server that tests running now share, started if none is running.
    /// It is killed when the last test holding it drops it.
    pub fn shared() -> Option<Arc<MotoServer>> {
        static SHARED: Mutex<Weak<MotoServer>> = Mutex::new(Weak::new());
        // Held while starting, so tests that arrive meanwhile wait for this
        // server instead of starting their own.
        let mut slot = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(running) = slot.upgrade() {
            return Some(running);
        }
        let started = Arc::new(MotoServer::start()?);
        *slot = Arc::downgrade(&started);
        Some(started)
    }

    /// The endpoint URL, like `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines moto printed (its request log), to explain a failure.
    pub fn recent_output(&self) -> String {
        let lines = self.output.lock().unwrap_or_else(|p| p.into_inner());
        lines.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("moto_server {what}; its output:\n{}", self.recent_output());
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads one of moto's pipes to the end (so it never blocks on a full
/// pipe), keeps its last lines, and reports the port it listens on.
fn drain(
    pipe: Box<dyn Read + Send>,
    output: Arc<Mutex<VecDeque<String>>>,
    port_tx: mpsc::Sender<u16>,
) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = listening_port(&line) {
                let _ = port_tx.send(port);
            }
            let mut kept = output.lock().unwrap_or_else(|p| p.into_inner());
            if kept.len() == KEPT_LINES {
                kept.pop_front();
            }
            kept.push_back(line);
        }
    });
}

/// The port in werkzeug's ` * Running on http://127.0.0.1:PORT` line.
fn listening_port(line: &str) -> Option<u16> {
    let rest = line.split("Running on http://").nth(1)?;
    let port = rest.split(':').nth(1)?;
    let digits: String = port.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether an HTTP request to moto gets an HTTP answer.
fn answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET /moto-api/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/")
}

/// Finds `moto_server`, or says where it looked.
fn find_executable() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(MOTO_ENV).filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{MOTO_ENV}={} is not a file", path.display()))
        };
    }
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("moto_server"))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    let venv = repository_root().map(|root| root.join(".venv/bin/moto_server"));
    match venv {
        Some(path) if path.is_file() => Ok(path),
        Some(path) => Err(format!(
            "{MOTO_ENV} is unset, moto_server is not on PATH, and {} does not exist",
            path.display()
        )),
        None => Err(format!(
            "{MOTO_ENV} is unset, moto_server is not on PATH, and the repository root \
             (holding tests/requirements.txt) was not found"
        )),
    }
}

/// The repository root: the nearest directory at or above the test crate
/// that holds `tests/requirements.txt`.
fn repository_root() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|dir| dir.join("tests/requirements.txt").is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::listening_port;

    #[test]
    fn the_port_is_read_from_werkzeugs_banner() {
        assert_eq!(
            listening_port(" * Running on http://127.0.0.1:34889"),
            Some(34889)
        );
        assert_eq!(listening_port("Press CTRL+C to quit"), None);
    }
}
