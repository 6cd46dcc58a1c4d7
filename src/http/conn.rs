//! One connection's life after its TLS handshake: what it is doing ([`Activity`]: requests in
//! flight, when the last one started or ended), so the accept loop can close it when it stays
//! silent too long; and how it ends ([`Lingering`]): after the server is done with it, the
//! socket is shut for writing and the client's remaining bytes are read and dropped for a
//! short while before it is closed, so that an answer sent before a request body was read
//! (a 413) reaches the client instead of being lost to a TCP reset.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::limits::ConnectionPermit;

/// How long a closing connection's remaining input is read and dropped, at most.
const LINGER_FOR: Duration = Duration::from_secs(2);
/// How many bytes of it, at most.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// What a connection is doing, shared by its requests and its watchdog.
#[derive(Debug)]
pub struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last request's start or end.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    any_request: AtomicBool,
}

/// A request in flight; its end is recorded on drop.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    /// A connection opened now.
    #[must_use]
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            any_request: AtomicBool::new(false),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// A request starts.
    #[must_use]
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.any_request.store(true, Ordering::Release);
        self.touch();
        InFlight(self.clone())
    }

    /// When the connection may be closed for silence: `first_request` after it opened while
    /// it has sent no request, `idle` after its last request started or ended; None while a
    /// request is in flight.
    #[must_use]
    pub fn deadline(&self, first_request: Duration, idle: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.any_request.load(Ordering::Acquire) {
            return Some(self.opened + first_request);
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Acquire));
        Some(self.opened + last + idle)
    }

    /// Whether a request was ever made on the connection.
    #[must_use]
    pub fn any_request(&self) -> bool {
        self.any_request.load(Ordering::Acquire)
    }
}

/// The connection's stream: when the server drops it, it is handed to a task that lingers
/// (shut for writing, then read and dropped for up to 2 s or 64 MiB)
/// before closing it. The connection's slot in the caps is held until then.
#[derive(Debug)]
pub struct Lingering<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    inner: Option<S>,
    permit: Option<ConnectionPermit>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<S> {
    /// Wraps `stream`, holding `permit` until it is closed.
    pub fn new(stream: S, permit: ConnectionPermit) -> Self {
        Lingering {
            inner: Some(stream),
            permit: Some(permit),
        }
    }

    fn stream(&mut self) -> std::io::Result<&mut S> {
        self.inner
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
    }
}

async fn linger<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let drain = async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 16 * 1024];
        let mut total = 0usize;
        while total < LINGER_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    };
    drop(tokio::time::timeout(LINGER_FOR, drain).await);
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let (Some(stream), permit) = (self.inner.take(), self.permit.take()) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger(stream).await;
                drop(permit);
            });
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner
            .as_ref()
            .is_some_and(AsyncWrite::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(s) => Pin::new(s).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_due_for_closing_only_without_a_request_in_flight() {
        let a = Activity::new();
        let first = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        assert_eq!(a.deadline(first, idle), Some(a.opened + first));
        let req = a.begin();
        assert_eq!(a.deadline(first, idle), None);
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(req);
        let due = a.deadline(first, idle).unwrap();
        assert!(
            due >= a.opened + Duration::from_millis(30) + idle,
            "the idle time counts from the end of the last request"
        );
    }
}
