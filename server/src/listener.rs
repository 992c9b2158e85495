//! Accepted gRPC connections: TCP options, and a deadline for the HTTP/2
//! preface so a peer that connects and sends nothing cannot hold a socket
//! forever.
//!
//! Once the preface has arrived, hyper's HTTP/2 keepalive (set in
//! `serve.rs`) closes a connection whose peer stops answering pings. This
//! module must not look at what the bytes say: it only counts them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpIncoming};

/// Length of the HTTP/2 client connection preface (RFC 9113, 3.4).
const PREFACE_BYTES: usize = 24;
/// TCP keepalive probes on idle connections, to notice vanished peers.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The gRPC listener's connections, each with `handshake_timeout` to send
/// its HTTP/2 preface.
pub fn incoming(
    listener: TcpListener,
    handshake_timeout: Duration,
) -> impl Stream<Item = io::Result<Guarded<TcpStream>>> {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE))
        .map(move |accepted| accepted.map(|io| Guarded::new(io, handshake_timeout)))
}

/// A TCP connection whose reads fail with `TimedOut` if the first
/// [`PREFACE_BYTES`] bytes do not arrive in time; after that, the stream
/// itself.
pub struct Guarded<IO> {
    io: IO,
    /// Running until the preface is in; `None` afterwards.
    deadline: Option<Pin<Box<Sleep>>>,
    received: usize,
}

impl<IO> Guarded<IO> {
    pub fn new(io: IO, timeout: Duration) -> Self {
        Self {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            received: 0,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_some() {
                    this.received += buf.filled().len() - before;
                    if this.received >= PREFACE_BYTES {
                        this.deadline = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer did not send the HTTP/2 preface in time",
                    )));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair(timeout: Duration) -> (Guarded<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (Guarded::new(server, timeout), client)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_timed_out() {
        let (mut server, _client) = pair(Duration::from_secs(10)).await;
        let mut buf = [0u8; 64];
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sent_the_preface_may_then_stay_quiet() {
        let (mut server, mut client) = pair(Duration::from_secs(10)).await;
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; PREFACE_BYTES];
        server.read_exact(&mut buf).await.unwrap();
        let quiet = tokio::time::timeout(Duration::from_secs(60), server.read(&mut buf)).await;
        assert!(quiet.is_err(), "no deadline once the preface is in");
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_preface_is_still_timed_out() {
        let (mut server, mut client) = pair(Duration::from_secs(10)).await;
        client.write_all(b"PRI * HTTP").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(n, 10);
        let err = server.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
