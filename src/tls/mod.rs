//! TLS for jobpass: server and client configurations, the handshake, admin client
//! certificates and the development PKI (SPEC §4, §7, §8 `[tls]`).
//!
//! What this module guarantees:
//! - **One crypto provider.** Every configuration is built with rustls' `ring` provider
//!   ([`provider`]); nothing relies on a process-wide default provider.
//! - **HTTPS only, TLS 1.2+.** Servers and clients speak TLS 1.3 and TLS 1.2 only (1.3 is
//!   preferred: it is chosen whenever both sides offer it). Older versions fail the handshake.
//!   Servers offer ALPN `h2` and `http/1.1`.
//! - **Admin client certificates.** With an admin CA configured, a client certificate is
//!   *optional* at the handshake (ordinary CI clients have none), but a certificate that is
//!   presented must chain to that CA and carry the clientAuth usage, or the handshake fails.
//!   [`accept`] hands back the verified leaf; [`admin_identity`] turns it into the actor
//!   (subject CN) and role (subject OU). Requiring a certificate on `/v1/admin/` is the HTTP
//!   layer's job. With `tls.crl`, a revoked admin certificate fails the handshake
//!   ([`AdminClientAuth`]: what is checked, when the CRLs are reloaded, expired CRLs).
//! - **Handshakes are bounded** by a timeout ([`accept`]).
//! - **Keys stay secret.** Private key PEM read from disk is zeroized after parsing; errors
//!   name files and never echo PEM contents; [`DevPki`]'s `Debug` hides its keys.

mod admin_crl;
mod identity;
mod pki;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

pub use admin_crl::{AdminClientAuth, CrlInfo};
pub use identity::{AdminIdentity, AdminRole, admin_identity};
pub use pki::{
    BACKDATE, CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, ClientCert, DevPki, SERVER_CERT_FILE,
    SERVER_KEY_FILE, VALIDITY, certs_init, client_file_names, generate_pki,
};

/// ALPN protocols the server offers, most preferred first.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The protocol versions jobpass speaks: TLS 1.3 (preferred) and TLS 1.2.
pub static PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Everything that can go wrong in this module. Messages name files and kinds of material,
/// never their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `certs init` would overwrite a file and `--force` was not given.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// No certificate in a PEM source.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// No private key in a PEM source.
    #[error("no private key found in {0}")]
    NoPrivateKey(String),
    /// A PEM source is malformed (details withheld: it may hold key material).
    #[error("malformed PEM in {0}")]
    MalformedPem(String),
    /// rustls refused the configuration (bad certificate, key not matching the certificate…).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The admin client CA could not be turned into a client certificate verifier.
    #[error("admin client CA: {0}")]
    ClientVerifier(#[from] rustls::server::VerifierBuilderError),
    /// The admin CRL file (`tls.crl`) could not be read.
    #[error("tls.crl: cannot read {}: {source}", path.display())]
    CrlRead {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The admin CRL file (`tls.crl`) failed a check.
    #[error("tls.crl: {}: {reason}", path.display())]
    CrlInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `tls.crl` without `tls.admin_client_ca`.
    #[error(
        "tls.crl is set but tls.admin_client_ca is not: there is no admin CA to revoke certificates of"
    )]
    CrlWithoutCa,
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    CertGen(#[from] rcgen::Error),
    /// An extra subject alternative name is neither an IP address nor a valid DNS name.
    #[error("invalid subject alternative name {0:?}")]
    InvalidSan(String),
    /// The clock is outside the range a certificate can express.
    #[error("current time cannot be expressed in a certificate")]
    InvalidTime,
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
    /// The peer did not complete the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The handshake failed (protocol version, untrusted client certificate, I/O…).
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// The crypto provider for every TLS configuration: rustls' `ring` provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration from PEM files: `cert_pem` holds the certificate chain (leaf first),
/// `key_pem` its private key; `admin` verifies admin client certificates (the broker's, from
/// `App::admin_client_auth`, so that a CRL reload reaches this configuration).
///
/// With `admin`, client certificates are optional at the handshake; one that is presented must
/// chain to the admin CA (with the clientAuth usage) and not be revoked, or the handshake
/// fails. ALPN `h2` and `http/1.1`; TLS 1.3 and 1.2.
pub fn server_config(
    cert_pem: &Path,
    key_pem: &Path,
    admin: Option<Arc<AdminClientAuth>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = parse_certs(&read_text(cert_pem)?, &cert_pem.display().to_string())?;
    warn_if_key_file_is_shared(key_pem);
    let key_text = Zeroizing::new(read_text(key_pem)?);
    let key = parse_key(&key_text, &key_pem.display().to_string())?;
    build_server_config(chain, key, admin)
}

/// Same as [`server_config`] from in-memory PEM text (dev mode, tests).
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    admin_client_ca_pem: Option<&str>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = parse_certs(cert_pem, "server certificate PEM")?;
    let key = parse_key(key_pem, "server key PEM")?;
    let admin = match admin_client_ca_pem {
        Some(pem) => Some(Arc::new(AdminClientAuth::from_pem(
            pem,
            "admin client CA PEM",
        )?)),
        None => None,
    };
    build_server_config(chain, key, admin)
}

fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    admin: Option<Arc<AdminClientAuth>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?;
    let builder = match admin {
        Some(admin) => builder.with_client_cert_verifier(admin),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Client configuration for the CLI and tests.
///
/// Trusts the certificates in `ca_pem` (only those) when given, else the Mozilla roots of
/// `webpki-roots`. With `client_cert_pem` (chain, leaf first) and `client_key_pem` it presents
/// that certificate; giving only one of the two is an error. TLS 1.3 and 1.2; no ALPN is set
/// (the HTTP client chooses).
pub fn client_config(
    ca_pem: Option<&str>,
    client_cert_pem: Option<&str>,
    client_key_pem: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = match ca_pem {
        Some(pem) => root_store(pem, "CA PEM")?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots);
    let config = match (client_cert_pem, client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain = parse_certs(cert, "client certificate PEM")?;
            let key = parse_key(key, "client key PEM")?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(TlsError::NoPrivateKey("client key PEM".into())),
        (None, Some(_)) => return Err(TlsError::NoCertificate("client certificate PEM".into())),
    };
    Ok(Arc::new(config))
}

/// Performs the server side of one TLS handshake, giving up after `timeout`.
///
/// Returns the stream and the peer's leaf certificate (DER) when the client presented one;
/// rustls has verified it against the admin CA by then. Pass the DER to [`admin_identity`].
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, Option<Vec<u8>>), TlsError> {
    let stream = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| TlsError::HandshakeTimeout(timeout))?
        .map_err(TlsError::Handshake)?;
    let leaf = peer_leaf(stream.get_ref().1);
    Ok((stream, leaf))
}

/// The verified peer's leaf certificate (DER) of an established server connection.
pub fn peer_leaf(conn: &rustls::ServerConnection) -> Option<Vec<u8>> {
    conn.peer_certificates()
        .and_then(|certs| certs.first())
        .map(|leaf| leaf.as_ref().to_vec())
}

/// Parses every certificate in `pem` (at least one). `what` names the source in errors.
pub fn parse_certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::MalformedPem(what.to_owned()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what.to_owned()));
    }
    Ok(certs)
}

/// Parses the first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoPrivateKey(what.to_owned()),
        _ => TlsError::MalformedPem(what.to_owned()),
    })
}

/// A root store holding exactly the certificates in `pem` (at least one).
pub fn root_store(pem: &str, what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem, what)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

fn read_text(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Logs a warning when a private key file is readable by group or others.
fn warn_if_key_file_is_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path) {
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "TLS private key file is accessible by group or others; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
