//! The HTTP listener's limits, so a peer cannot tie up the gateway's
//! sockets and memory, and `/healthz` and `/readyz` keep answering:
//!
//! * a request's headers must arrive within the header timeout
//!   (`--http-header-timeout`), else the connection is closed;
//! * hyper's read buffer for a request head is capped at
//!   [`MAX_HEADER_BYTES`] (a head that does not fit is answered 431), and a
//!   declared body at [`MAX_BODY_BYTES`] (413);
//! * at most `--http-max-connections` connections are open. At the cap, a
//!   new connection closes the oldest one that has no request in progress
//!   (idle, or still sending its headers, as a slowloris peer is), so a
//!   health probe is still served; only when every connection is busy
//!   with a request is the new one refused.
//!
//! Every refusal is counted in `logdrain_http_refused_total{reason}`. This
//! module serves connections; what requests mean is `http.rs`'s.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header::CONTENT_LENGTH, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::metrics::HttpRefused;
use crate::shutdown::Shutdown;

/// Cap of hyper's read buffer for a request head (request line and
/// headers); at least hyper's minimum of 8 KiB.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest request body declared (`Content-Length`); no endpoint takes one.
pub const MAX_BODY_BYTES: u64 = 64 * 1024;

/// The listener's limits (from `--http-max-connections` and
/// `--http-header-timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// One open connection: whether a request is in progress, and how to close
/// it early.
struct Conn {
    id: u64,
    requests: AtomicUsize,
    evict: Notify,
}

/// The open connections, oldest first.
#[derive(Default)]
struct Conns {
    open: Mutex<VecDeque<Arc<Conn>>>,
    next_id: AtomicU64,
}

impl Conns {
    /// Registers a new connection, closing the oldest one without a request
    /// in progress when `max` are open; `None` when every one is busy.
    fn admit(&self, max: usize) -> Option<Arc<Conn>> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= max {
            let idle = open
                .iter()
                .position(|c| c.requests.load(Ordering::SeqCst) == 0)?;
            if let Some(evicted) = open.remove(idle) {
                evicted.evict.notify_one();
                crate::metrics::http_refused(HttpRefused::IdleEvicted);
            }
        }
        let conn = Arc::new(Conn {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            requests: AtomicUsize::new(0),
            evict: Notify::new(),
        });
        open.push_back(conn.clone());
        Some(conn)
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|c| c.id != id);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`, then
/// lets requests in progress finish.
pub async fn serve<L>(mut listener: L, router: Router, limits: HttpLimits, shutdown: Shutdown)
where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let router = router.layer(axum::middleware::from_fn(refuse_large_bodies));
    let conns = Arc::new(Conns::default());
    let mut tasks = JoinSet::new();
    loop {
        let io = tokio::select! {
            _ = shutdown.wait() => break,
            Some(_) = tasks.join_next() => continue,
            (io, _) = listener.accept() => io,
        };
        let Some(conn) = conns.admit(limits.max_connections.max(1)) else {
            crate::metrics::http_refused(HttpRefused::ConnectionCap);
            continue;
        };
        tasks.spawn(serve_connection(
            io,
            router.clone(),
            limits,
            conn,
            conns.clone(),
            shutdown.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
}

async fn serve_connection<Io>(
    io: Io,
    router: Router,
    limits: HttpLimits,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    shutdown: Shutdown,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let counted = conn.clone();
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let router = router.clone();
            let conn = counted.clone();
            conn.requests.fetch_add(1, Ordering::SeqCst);
            async move {
                let response = router.oneshot(request.map(Body::new)).await;
                conn.requests.fetch_sub(1, Ordering::SeqCst);
                response
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => Some(ended),
        _ = conn.evict.notified() => None,
        _ = shutdown.wait() => {
            connection.as_mut().graceful_shutdown();
            Some(connection.as_mut().await)
        }
    };
    if let Some(Err(e)) = ended {
        if e.is_timeout() {
            crate::metrics::http_refused(HttpRefused::HeaderTimeout);
        } else if e.is_parse_too_large() {
            crate::metrics::http_refused(HttpRefused::TooLarge);
        }
    }
    conns.remove(conn.id);
}

/// Answers 413 to a request that declares a body over [`MAX_BODY_BYTES`].
async fn refuse_large_bodies(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        crate::metrics::http_refused(HttpRefused::TooLarge);
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request bodies are limited to {MAX_BODY_BYTES} bytes\n"),
        )
            .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_connection_without_a_request_makes_room() {
        let conns = Conns::default();
        let first = conns.admit(2).unwrap();
        let second = conns.admit(2).unwrap();
        first.requests.fetch_add(1, Ordering::SeqCst);
        // `first` is busy: `second`, the oldest idle one, is closed.
        let third = conns.admit(2).unwrap();
        let open: Vec<u64> = conns.open.lock().unwrap().iter().map(|c| c.id).collect();
        assert_eq!(open, [first.id, third.id]);
        // Its task is told to close (the permit waits for it).
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(second.evict.notified());
        // With every connection busy, a new one is refused.
        third.requests.fetch_add(1, Ordering::SeqCst);
        assert!(conns.admit(2).is_none());
        conns.remove(first.id);
        assert!(conns.admit(2).is_some());
    }

    async fn serving(limits: HttpLimits) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/healthz", axum::routing::any(|| async { "ok\n" }));
        tokio::spawn(serve(listener, router, limits, Shutdown::new()));
        addr
    }

    async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(request).await.unwrap();
        let mut answer = Vec::new();
        let _ = conn.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn a_connection_that_never_finishes_its_headers_is_closed() {
        let addr = serving(HttpLimits {
            max_connections: 8,
            header_timeout: Duration::from_millis(50),
        })
        .await;
        // Reads to the end: the gateway closes it without an answer.
        let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
        assert!(!answer.contains("ok"), "{answer}");
    }

    #[tokio::test]
    async fn oversized_headers_and_bodies_are_refused() {
        let addr = serving(HttpLimits {
            max_connections: 8,
            header_timeout: Duration::from_secs(60),
        })
        .await;
        let big_header = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(4 * MAX_HEADER_BYTES)
        );
        let answer = exchange(addr, big_header.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
        let big_body = format!(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY_BYTES + 1
        );
        let answer = exchange(addr, big_body.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        let fine = exchange(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            fine.starts_with("HTTP/1.1 200") && fine.ends_with("ok\n"),
            "{fine}"
        );
    }
}
