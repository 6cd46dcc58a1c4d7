//! The accept loop: TCP → TLS handshake (bounded in time, spawned per connection) → hyper
//! (HTTP/1.1 and HTTP/2) → the axum router, with the connection's client identity in every
//! request's extensions. Graceful shutdown drains open connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::ConnInfo;
use super::routes::router;
use crate::app::{App, StartError};
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

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr` and serves `app`. TLS unless `tls_config` is None (dev `--insecure-http` only).
pub async fn serve(
    app: Arc<App>,
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ServerConfig>>,
) -> Result<Running, StartError> {
    serve_router(router(app), addr, tls_config).await
}

/// Serves any router (the native API, or the Vault-compatible one) the same way.
pub async fn serve_router(
    router: axum::Router,
    addr: SocketAddr,
    tls_config: Option<Arc<rustls::ServerConfig>>,
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
            .timeout(REQUEST_TIMEOUT),
    );
    let acceptor = tls_config.map(tokio_rustls::TlsAcceptor::from);
    let join = tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
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
            drop(tcp.set_nodelay(true));
            let router = router.clone();
            let acceptor = acceptor.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                match acceptor {
                    Some(acceptor) => {
                        let (stream, leaf) =
                            match tls::accept(&acceptor, tcp, HANDSHAKE_TIMEOUT).await {
                                Ok(x) => x,
                                Err(e) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                            };
                        let info = ConnInfo {
                            admin: leaf.as_deref().and_then(tls::admin_identity),
                            client_cert: leaf.is_some(),
                            peer,
                        };
                        let svc = service(router, info);
                        let conn = builder.serve_connection(TokioIo::new(stream), svc);
                        drop(watcher.watch(conn.into_owned()).await);
                    }
                    None => {
                        let info = ConnInfo {
                            admin: None,
                            client_cert: false,
                            peer,
                        };
                        let svc = service(router, info);
                        let conn = builder.serve_connection(TokioIo::new(tcp), svc);
                        drop(watcher.watch(conn.into_owned()).await);
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

fn service(
    router: axum::Router,
    info: ConnInfo,
) -> hyper_util::service::TowerToHyperService<
    impl tower::Service<
        hyper::Request<Incoming>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future = impl Send,
    > + Clone,
> {
    let svc = tower::ServiceBuilder::new()
        .map_request(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(info.clone());
            req
        })
        .service(router);
    hyper_util::service::TowerToHyperService::new(svc)
}
