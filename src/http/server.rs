//! The accept loop: a free connection slot (`[limits] max_connections`; the loop waits for
//! one, so excess connections queue in the kernel) → TCP accept → the source's cap
//! (`max_connections_per_ip`; over it the connection is closed at once) → TLS handshake
//! (bounded in time, spawned per connection) → hyper (HTTP/1.1 with a header timeout, HTTP/2
//! with a stream limit and keep-alive pings) → the axum router (a request timeout), with the
//! connection's client identity in every request's extensions. A connection that sends no
//! request within `first_byte_timeout` of its handshake, or none for `idle_timeout` after its
//! last one ended, is closed; a closing connection lingers ([`super::conn::Lingering`]).
//! Graceful shutdown drains open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::ConnInfo;
use super::conn::{Activity, Lingering};
use super::routes::router;
use crate::app::{App, StartError};
use crate::limits::Limits;
use crate::tls;

/// A running server.
pub struct Running {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains connections (up to 10 s) and waits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        drop(self.join.await);
    }

    /// Waits until the server stops (after a shutdown signal).
    pub async fn wait(self) {
        drop(self.join.await);
    }

    /// A handle that can trigger shutdown.
    pub fn shutdown_handle(&self) -> watch::Sender<bool> {
        self.shutdown.clone()
    }
}

/// Binds `addr` and serves `app`. TLS unless `tls_config` is None (dev `--insecure-http` only).
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, StartError> {
    let limits = app.limits();
    serve_router(router(app), addr, tls_config, limits).await
}

/// Serves any router (the native API, or the Vault-compatible one) the same way, under the
/// broker's connection caps and timeouts (`limits`, shared by every listener).
pub async fn serve_router(
    router: axum::Router,
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<Limits>,
) -> Result<Running, StartError> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, mut rx) = watch::channel(false);
    let router = router.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(
                |_: tower::BoxError| async {
                    crate::error::ApiError::Unavailable("the request timed out".into())
                },
            ))
            .timeout(limits.timeouts.request),
    );
    let acceptor = tls_config.map(tokio_rustls::TlsAcceptor::from);
    let join = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            // A free slot first: over the global cap, connections wait in the kernel's queue.
            let slot = tokio::select! {
                s = limits.connections.slot() => match s {
                    Some(s) => s,
                    None => break,
                },
                _ = rx.changed() => break,
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = rx.changed() => break,
            };
            let Some(permit) = limits.connections.admit(slot, peer.ip()) else {
                tracing::debug!(%peer, "connection refused: its source is at its connection cap");
                limits.closed.inc("per_ip_cap");
                drop(tcp);
                continue;
            };
            drop(tcp.set_nodelay(true));
            let router = router.clone();
            let acceptor = acceptor.clone();
            let watcher = graceful.watcher();
            let timeouts = limits.timeouts;
            let closed = limits.closed.clone();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeouts.header);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(timeouts.http2_max_streams)
                    .keep_alive_interval(timeouts.http2_ping_interval)
                    .keep_alive_timeout(timeouts.http2_ping_timeout);
                let (info, io) = match acceptor {
                    Some(acceptor) => {
                        let (stream, leaf) =
                            match tls::accept(&acceptor, tcp, timeouts.handshake).await {
                                Ok(x) => x,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    closed.inc("handshake");
                                    return;
                                }
                            };
                        let client_chain = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .map(|c| c.iter().map(|d| d.clone().into_owned()).collect());
                        let info = ConnInfo {
                            admin: leaf.as_deref().and_then(tls::admin_identity),
                            client_cert: leaf.is_some(),
                            client_chain,
                            peer,
                        };
                        (info, Io::Tls(Box::new(stream)))
                    }
                    None => (
                        ConnInfo {
                            admin: None,
                            client_cert: false,
                            client_chain: None,
                            peer,
                        },
                        Io::Plain(tcp),
                    ),
                };
                // Silence is counted from the end of the handshake.
                let activity = Activity::new();
                let svc = service(router, info, activity.clone());
                let io = TokioIo::new(Lingering::new(io, permit));
                let conn = watcher.watch(builder.serve_connection(io, svc).into_owned());
                tokio::pin!(conn);
                loop {
                    let due = activity.deadline(timeouts.first_byte, timeouts.idle);
                    // While a request is in flight there is no deadline: look again in a
                    // second. Otherwise sleep until it; a request that started or ended
                    // meanwhile has moved it.
                    let at = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
                    tokio::select! {
                        _ = &mut conn => break,
                        () = tokio::time::sleep_until(at) => {
                            if due.is_some()
                                && activity.deadline(timeouts.first_byte, timeouts.idle) == due
                            {
                                tracing::debug!(%peer, "closing a silent connection");
                                closed.inc("silent");
                                break;
                            }
                        }
                    }
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                tracing::warn!("graceful shutdown timed out; closing remaining connections");
            }
        }
    });
    Ok(Running {
        addr,
        shutdown: tx,
        join,
    })
}

/// A connection's stream: TLS, or plain TCP (dev `--insecure-http` on loopback only).
enum Io {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Plain(TcpStream),
}

impl std::fmt::Debug for Io {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Io::Tls(_) => "Io::Tls",
            Io::Plain(_) => "Io::Plain",
        })
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tls(s) => s.is_write_vectored(),
            Io::Plain(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The router as a hyper service: the connection's facts in every request's extensions,
/// and every request counted in flight while it runs.
fn service(
    router: axum::Router,
    info: ConnInfo,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Future<Output = Result<axum::response::Response, std::convert::Infallible>>
             + Send
             + 'static,
> + Clone {
    let svc = move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let in_flight = activity.begin();
        let answer = tower::ServiceExt::oneshot(router.clone(), req);
        async move {
            let resp = answer.await;
            drop(in_flight);
            resp
        }
    };
    hyper::service::service_fn(svc)
}
