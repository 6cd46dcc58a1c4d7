//! HTTPS plumbing shared by the admin and runner clients: a client trusting a private CA (or
//! the public roots) and optionally presenting a client certificate, one JSON request, and the
//! texts of errors.
//!
//! A request that gets no answer becomes the [`CliError`] that says the fix ([`Https::failure`]):
//! an untrusted or misnamed server certificate, a client certificate refused, plain `http://`,
//! nothing listening. A server on a loopback address with a dev broker's files in the current
//! directory is trusted through them ([`dev_ca`], [`dev_identity`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use openidconnect::http::{Method, StatusCode};
use openidconnect::reqwest;
use serde_json::Value;
use zeroize::Zeroizing;

use super::error::CliError;

/// Where `jobpass serve --dev` writes its certificates, relative to the directory it runs in.
pub const DEV_CERTS: &str = ".jobpass-dev/certs";

/// An answer of the broker: its status and its body (JSON, or the raw text as a JSON string
/// when it is not JSON).
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: Value,
}

// By hand: a body can hold issued credentials.
impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("body", &"[REDACTED]")
            .finish()
    }
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|source| CliError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// An HTTPS client of one broker, with the files it was built from (named in its errors).
#[derive(Debug, Clone)]
pub struct Https {
    /// The client.
    pub client: reqwest::Client,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
}

impl Https {
    /// A client trusting `ca` (or the public roots) and presenting the client certificate
    /// `cert` with its key `key` (both or neither).
    ///
    /// # Errors
    /// An unreadable or invalid PEM file; [`CliError::KeyMismatch`] when `key` is not the
    /// private key of `cert`.
    pub fn new(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, CliError> {
        let ca_pem = ca.map(read).transpose()?;
        let cert_pem = cert.map(read).transpose()?;
        let key_pem = key.map(read).transpose()?.map(Zeroizing::new);
        let tls = crate::tls::client_config(
            ca_pem.as_deref(),
            cert_pem.as_deref(),
            key_pem.as_deref().map(|k| k.as_str()),
        )
        .map_err(|e| match (e, cert, key) {
            (
                crate::tls::TlsError::Config(rustls::Error::InconsistentKeys(
                    rustls::InconsistentKeys::KeyMismatch,
                )),
                Some(cert),
                Some(key),
            ) => CliError::KeyMismatch {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            (e, _, _) => CliError::Tls(e),
        })?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(CliError::HttpClient)?;
        Ok(Self {
            client,
            ca: ca.map(Path::to_path_buf),
            cert: cert.map(Path::to_path_buf),
        })
    }

    /// Sends a request with an optional JSON body; returns status and JSON answer.
    ///
    /// # Errors
    /// No answer ([`Https::failure`]), or an unreadable body.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Answer, CliError> {
        let mut req = self.client.request(method, url);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| self.failure(url, e))?;
        let status = resp.status();
        // The answer may carry credentials: its text is wiped once parsed.
        let text = Zeroizing::new(resp.text().await.map_err(CliError::ReadAnswer)?);
        let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.to_string()));
        Ok(Answer { status, body })
    }

    /// The error saying why a request to `url` got no answer, and what to do about it.
    pub fn failure(&self, url: &str, source: reqwest::Error) -> CliError {
        let url = url.to_owned();
        let parsed = reqwest::Url::parse(&url).ok();
        let host = parsed
            .as_ref()
            .and_then(|u| u.host_str())
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if let Some(tls) = find_cause::<rustls::Error>(&source) {
            use rustls::{AlertDescription as Alert, CertificateError as Cert};
            match tls {
                // A CA of the same name that did not sign it (an older dev PKI): bad signature.
                rustls::Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
                    return CliError::UntrustedServer {
                        url,
                        ca: self.ca.clone(),
                    };
                }
                rustls::Error::InvalidCertificate(
                    Cert::NotValidForName | Cert::NotValidForNameContext { .. },
                ) => return CliError::NameMismatch { url, host },
                rustls::Error::AlertReceived(
                    Alert::BadCertificate
                    | Alert::UnknownCA
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::CertificateUnknown
                    | Alert::CertificateRequired
                    | Alert::AccessDenied
                    | Alert::DecryptError,
                ) if self.cert.is_some() => {
                    return CliError::ClientCertificateRefused {
                        url,
                        cert: self.cert.clone().unwrap_or_default(),
                    };
                }
                _ => {}
            }
        }
        if parsed.as_ref().is_some_and(|u| u.scheme() == "http")
            && !source.is_timeout()
            && !has_io_kind(&source, std::io::ErrorKind::ConnectionRefused)
        {
            // A TLS listener answers a plain request with bytes that are no HTTP, or hangs up.
            let https = format!("https{}", url.trim_start_matches("http"));
            return CliError::PlainHttp { url, https };
        }
        if has_io_kind(&source, std::io::ErrorKind::ConnectionRefused) {
            let base = parsed
                .as_ref()
                .map_or_else(|| url.clone(), |u| u.origin().ascii_serialization());
            return CliError::NotListening { url: base };
        }
        CliError::Unreachable { url, source }
    }

    /// The environments of the broker at `server` (`GET /v1/envs`), when it lists them.
    pub async fn environments(&self, server: &str) -> Option<Vec<String>> {
        let answer = self
            .send(Method::GET, &format!("{server}/v1/envs"), None)
            .await
            .ok()?;
        if !answer.status.is_success() {
            return None;
        }
        answer.body["environments"].as_array().map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
    }

    /// The text of an error answer, followed by the broker's environments when the answer
    /// says that `env` is unknown.
    pub async fn explain(&self, server: &str, env: Option<&str>, answer: &Answer) -> String {
        let text = error_text(&answer.body);
        if !env.is_some_and(|e| unknown_environment(answer, e)) {
            return text;
        }
        match self.environments(server).await {
            Some(envs) if envs.is_empty() => format!("{text}; the broker has no environment"),
            Some(envs) => format!("{text}; known environments: {}", envs.join(", ")),
            None => text,
        }
    }
}

/// Does this error answer say that `env` is an unknown environment?
pub fn unknown_environment(answer: &Answer, env: &str) -> bool {
    !answer.status.is_success()
        && answer.body["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&format!("unknown environment `{env}`")))
}

/// The chain of `e`, looking inside I/O errors too (an `io::Error`'s `source` skips the error
/// it wraps, which can be another `io::Error`).
fn causes<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'e (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |c| {
        match c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        }
    })
}

/// The first error of type `E` in the chain of `e`.
fn find_cause<'e, E: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    causes(e).find_map(|c| c.downcast_ref::<E>())
}

/// Is there an I/O error of this kind in the chain of `e`?
fn has_io_kind(e: &(dyn std::error::Error + 'static), kind: std::io::ErrorKind) -> bool {
    causes(e).any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Is `server` a URL on a loopback address (`localhost`, `127.0.0.0/8`, `::1`)?
pub fn is_loopback(server: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(server) else {
        return false;
    };
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// The dev broker's CA (`.jobpass-dev/certs/ca.pem` of the current directory) when `server`
/// is on a loopback address and the file is one `serve --dev` of this user wrote
/// ([`dev_files_are_ours`]).
pub fn dev_ca(server: &str) -> Option<PathBuf> {
    let ca = Path::new(DEV_CERTS).join("ca.pem");
    (is_loopback(server) && dev_files_are_ours(Path::new(DEV_CERTS), &[&ca], std::env::vars_os()))
        .then_some(ca)
}

/// The dev broker's client certificate and key for `role` (`.jobpass-dev/certs/<role>.pem`,
/// `<role>-key.pem`) when `server` is on a loopback address and both files are ones
/// `serve --dev` of this user wrote ([`dev_files_are_ours`]).
pub fn dev_identity(server: &str, role: crate::tls::AdminRole) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = crate::tls::client_file_names(role);
    let (cert, key) = (
        Path::new(DEV_CERTS).join(cert),
        Path::new(DEV_CERTS).join(key),
    );
    let ours = dev_files_are_ours(Path::new(DEV_CERTS), &[&cert, &key], std::env::vars_os());
    (is_loopback(server) && ours).then_some((cert, key))
}

/// Variables that say the command runs in a CI job: no dev file is trusted there (a checkout
/// is written by whoever can push, and its loopback may hold another job's process).
const CI_VARIABLES: &[&str] = &["CI", "GITHUB_ACTIONS", "GITLAB_CI", "BUILDKITE", "CIRCLECI"];

/// Whether `files` (in the directory `certs`, [`DEV_CERTS`] for the CLI) can be trusted without
/// being named: not in a CI job (`vars`), and — as `serve --dev` leaves them — `.jobpass-dev`
/// and its `certs` are
/// directories (not links) owned by the user running the command, `certs` is open to nobody
/// else (mode 0700), `.jobpass-dev` is not writable by others, and each file is a regular file
/// (not a link) of that user, writable by nobody else. Another user who planted the files in
/// a shared or group-writable checkout does not get them trusted.
pub fn dev_files_are_ours(
    certs: &Path,
    files: &[&Path],
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> bool {
    let in_ci = vars
        .into_iter()
        .any(|(k, v)| !v.is_empty() && CI_VARIABLES.iter().any(|c| k == *c));
    !in_ci && owned_by_us(certs, files)
}

#[cfg(unix)]
fn owned_by_us(certs: &Path, files: &[&Path]) -> bool {
    use std::os::unix::fs::MetadataExt;
    // The owner of this process's /proc entry is its effective user; without /proc nothing
    // is trusted.
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return false;
    };
    let mine = |p: &Path, dir: bool, others: u32| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            let kind = if dir { m.is_dir() } else { m.is_file() };
            kind && m.uid() == me && m.mode() & others == 0
        })
    };
    let base = certs.parent().unwrap_or(certs);
    mine(base, true, 0o022)
        && mine(certs, true, 0o077)
        && files.iter().all(|f| mine(f, false, 0o022))
}

#[cfg(not(unix))]
fn owned_by_us(_certs: &Path, _files: &[&Path]) -> bool {
    false
}

/// An error and its sources, `: `-separated (reqwest hides the useful part in the sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The human text of an error answer.
pub fn error_text(v: &Value) -> String {
    match (v["error"].as_str(), v["message"].as_str()) {
        (Some(code), Some(msg)) => format!("error: {code}: {msg}"),
        _ => format!("error: {v}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use secrecy::ExposeSecret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::clock::SystemClock;
    use crate::tls::{AdminRole, DevPki, generate_pki};

    /// A TLS server on `ip` with the server certificate of `pki` (and, with `client_ca`,
    /// verifying client certificates as the broker does), answering any request `200 {}`.
    async fn tls_server(ip: &str, pki: &DevPki, client_ca: Option<&str>) -> SocketAddr {
        let config = crate::tls::server_config_from_pem(
            &pki.server_chain_pem(),
            pki.server_key_pem.expose_secret(),
            client_ca,
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    drop(tls.read(&mut buf).await);
                    drop(
                        tls.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                              content-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await,
                    );
                    drop(tls.shutdown().await);
                });
            }
        });
        addr
    }

    fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    async fn get(https: &Https, url: &str) -> Result<Answer, CliError> {
        https.send(Method::GET, url, None).await
    }

    #[tokio::test]
    async fn an_untrusted_server_certificate_says_to_pass_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_pki(&[], &SystemClock).unwrap();
        let addr = tls_server("127.0.0.1", &pki, None).await;
        let url = format!("https://{addr}/healthz");
        // The public roots only.
        let e = get(&Https::new(None, None, None).unwrap(), &url)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the broker at {url} answered, but its certificate is not signed by a trusted \
                 CA: pass --ca FILE with the broker's CA certificate (a dev broker's is \
                 .jobpass-dev/certs/ca.pem) or set JOBPASS_CA"
            )
        );
        // The CA of another PKI, named.
        let other = generate_pki(&[], &SystemClock).unwrap();
        let wrong = file(dir.path(), "other-ca.pem", &other.ca_pem);
        let e = get(&Https::new(Some(&wrong), None, None).unwrap(), &url)
            .await
            .unwrap_err();
        assert!(matches!(e, CliError::UntrustedServer { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&format!(
                "its certificate is not signed by the CA in {}: pass --ca FILE",
                wrong.display()
            )),
            "{e}"
        );
        // The right CA.
        let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
        let answer = get(&Https::new(Some(&ca), None, None).unwrap(), &url)
            .await
            .unwrap();
        assert!(answer.status.is_success());
    }

    #[tokio::test]
    async fn a_host_name_the_certificate_does_not_hold_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_pki(&[], &SystemClock).unwrap();
        // The certificate names localhost, 127.0.0.1 and ::1; 127.0.0.2 is loopback too.
        let addr = tls_server("127.0.0.2", &pki, None).await;
        let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
        let url = format!("https://{addr}/healthz");
        let e = get(&Https::new(Some(&ca), None, None).unwrap(), &url)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the broker's certificate is not valid for the host name `127.0.0.2` (in {url}): \
                 use a name the certificate holds (a dev broker's: localhost or 127.0.0.1), or \
                 give the broker a certificate for it (jobpass certs init --san 127.0.0.2)"
            )
        );
    }

    #[tokio::test]
    async fn plain_http_to_the_broker_says_to_use_https() {
        let pki = generate_pki(&[], &SystemClock).unwrap();
        let addr = tls_server("127.0.0.1", &pki, None).await;
        let url = format!("http://{addr}/healthz");
        let e = get(&Https::new(None, None, None).unwrap(), &url)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{url} is plain HTTP, but the broker speaks HTTPS only: use https://{addr}/healthz"
            )
        );
    }

    #[tokio::test]
    async fn a_refused_connection_says_nothing_is_listening() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        for scheme in ["https", "http"] {
            let url = format!("{scheme}://{addr}/v1/exchange");
            let e = get(&Https::new(None, None, None).unwrap(), &url)
                .await
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "nothing is listening at {scheme}://{addr}: is the broker running (`jobpass \
                     serve --dev` for a dev broker)? Check --server or JOBPASS_SERVER"
                )
            );
        }
    }

    #[test]
    fn a_key_of_another_certificate_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_pki(&[], &SystemClock).unwrap();
        let (cert, _) = pki.client(AdminRole::Admin).unwrap();
        let (_, key) = pki.client(AdminRole::Security).unwrap();
        let cert = file(dir.path(), "admin.pem", cert);
        let key = file(dir.path(), "security-key.pem", key.expose_secret());
        let e = Https::new(None, Some(&cert), Some(&key)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "--cert {} and --key {} do not belong together (the key is not the \
                 certificate's): give the key issued with that certificate (e.g. admin.pem with \
                 admin-key.pem)",
                cert.display(),
                key.display()
            )
        );
    }

    #[tokio::test]
    async fn a_client_certificate_from_another_ca_is_said_to_be_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pki = generate_pki(&[], &SystemClock).unwrap();
        let addr = tls_server("127.0.0.1", &pki, Some(&pki.ca_pem)).await;
        let other = generate_pki(&[], &SystemClock).unwrap();
        let (cert, key) = other.client(AdminRole::Security).unwrap();
        let cert = file(dir.path(), "security.pem", cert);
        let key = file(dir.path(), "security-key.pem", key.expose_secret());
        let ca = file(dir.path(), "ca.pem", &pki.ca_pem);
        let url = format!("https://{addr}/v1/admin/leases");
        let e = get(
            &Https::new(Some(&ca), Some(&cert), Some(&key)).unwrap(),
            &url,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, CliError::ClientCertificateRefused { .. }),
            "{e:?}: {e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "the broker at {url} refused the client certificate {}: give one issued by",
                cert.display()
            )),
            "{e}"
        );
    }

    #[test]
    #[cfg(unix)]
    fn dev_files_are_trusted_only_as_serve_dev_leaves_them_and_never_in_ci() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let base = d.path().join(".jobpass-dev");
        let certs = base.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let set = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        set(&base, 0o755);
        set(&certs, 0o700);
        let ca = certs.join("ca.pem");
        std::fs::write(&ca, "pem").unwrap();
        set(&ca, 0o644);
        let none = Vec::<(std::ffi::OsString, std::ffi::OsString)>::new;
        assert!(
            dev_files_are_ours(&certs, &[&ca], none()),
            "as serve --dev leaves them"
        );
        for ci in ["CI", "GITHUB_ACTIONS", "GITLAB_CI"] {
            let vars = vec![(ci.into(), "true".into())];
            assert!(!dev_files_are_ours(&certs, &[&ca], vars), "in CI ({ci})");
        }
        // Writable by others: the directory, the certificates' directory, the file.
        for (p, bad, good) in [
            (&base, 0o777, 0o755),
            (&certs, 0o750, 0o700),
            (&ca, 0o664, 0o644),
        ] {
            set(p, bad);
            assert!(
                !dev_files_are_ours(&certs, &[&ca], none()),
                "{} at {bad:o}",
                p.display()
            );
            set(p, good);
        }
        // A link in place of the file, or a file that is not there.
        let elsewhere = d.path().join("planted.pem");
        std::fs::write(&elsewhere, "pem").unwrap();
        let link = certs.join("admin.pem");
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        assert!(
            !dev_files_are_ours(&certs, &[&link], none()),
            "a symbolic link"
        );
        assert!(!dev_files_are_ours(
            &certs,
            &[&certs.join("gone.pem")],
            none()
        ));
        assert!(dev_files_are_ours(&certs, &[&ca], none()), "back as it was");
    }

    #[test]
    fn loopback_servers_are_recognised() {
        for url in [
            "https://127.0.0.1:8443",
            "https://localhost:8443/",
            "https://LOCALHOST",
            "https://127.1.2.3:1",
            "https://[::1]:8443",
        ] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "https://jobpass.example.com",
            "https://10.0.0.1:8443",
            "https://localhost.example.com",
            "not a url",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
