//! HTTPS front: the accept loop (TLS, timeouts, graceful shutdown), the public routes and the
//! admin routes (client certificates). Every handler error becomes JSON through
//! [`crate::error::ApiError`].

pub mod admin;
pub mod authorize;
pub mod body;
pub mod conn;
pub mod limit;
pub mod routes;
pub mod server;
pub mod vault;

use std::net::SocketAddr;

use crate::tls::AdminIdentity;

/// Per-connection facts the accept loop puts into every request's extensions.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Verified admin identity from the client certificate, if any.
    pub admin: Option<AdminIdentity>,
    /// Whether the client presented a verified certificate at all.
    pub client_cert: bool,
    /// The client's certificate chain as verified at the handshake (checked again on every
    /// admin call: [`crate::tls::AdminClientAuth::still_valid`]).
    pub client_chain: Option<std::sync::Arc<[rustls_pki_types::CertificateDer<'static>]>>,
    /// Remote address.
    pub peer: SocketAddr,
}
