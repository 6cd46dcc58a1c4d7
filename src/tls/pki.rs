//! The development PKI: `jobpass certs init --dir DIR` and the in-memory set used by
//! `serve --dev` and the tests (SPEC §7, §8).
//!
//! Guarantees:
//! - one CA (`CA:TRUE, pathlen:0`, key usages keyCertSign + cRLSign), a server certificate
//!   (serverAuth; SANs `localhost`, `127.0.0.1`, `::1` plus any extra names) and one client
//!   certificate per admin role (clientAuth; `CN=<role>-user`, `OU=<role>`);
//! - ECDSA P-256 keys, random positive 128-bit serials, validity from now − 5 min to now + 1
//!   year, where "now" comes from the [`Clock`] passed in;
//! - private keys are held as [`SecretString`] (zeroized on drop, `Debug` prints
//!   `[REDACTED]`) and written with mode 0600; existing files are never overwritten unless
//!   `force` is given, and with `force` each file is replaced atomically (write to a
//!   temporary file, then rename).

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::{ExposeSecret, SecretString};

use super::TlsError;
use super::identity::AdminRole;
use crate::clock::Clock;

/// How far back generated certificates are valid, to absorb clock skew between machines.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// How long generated certificates are valid.
pub const VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Subject common name of the development CA.
pub const CA_COMMON_NAME: &str = "jobpass dev CA";

/// One admin client certificate of the development PKI.
pub type ClientCert = (AdminRole, String, SecretString);

/// A complete development PKI as PEM text. Private keys are secrets.
pub struct DevPki {
    /// The CA certificate (trust anchor for the server certificate and the admin clients).
    pub ca_pem: String,
    /// The CA's private key (PKCS#8).
    pub ca_key_pem: SecretString,
    /// The server certificate (leaf only; signed by the CA).
    pub server_pem: String,
    /// The server's private key (PKCS#8).
    pub server_key_pem: SecretString,
    /// One `(role, certificate PEM, private key PEM)` per admin role, in [`AdminRole::ALL`] order.
    pub clients: Vec<ClientCert>,
}

impl DevPki {
    /// The certificate and key PEM of the client certificate for `role`.
    pub fn client(&self, role: AdminRole) -> Option<(&str, &SecretString)> {
        self.clients
            .iter()
            .find(|(r, _, _)| *r == role)
            .map(|(_, cert, key)| (cert.as_str(), key))
    }

    /// The server certificate followed by the CA certificate, as a chain to serve.
    pub fn server_chain_pem(&self) -> String {
        format!("{}{}", self.server_pem, self.ca_pem)
    }
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<AdminRole> = self.clients.iter().map(|(r, _, _)| *r).collect();
        f.debug_struct("DevPki")
            .field("ca_pem", &self.ca_pem)
            .field("ca_key_pem", &"[REDACTED]")
            .field("server_pem", &self.server_pem)
            .field("server_key_pem", &"[REDACTED]")
            .field("clients", &roles)
            .finish()
    }
}

/// Generates a fresh development PKI in memory (for `serve --dev` and tests).
///
/// `extra_sans` are added to the server certificate: values that parse as an IP address
/// become IP SANs, everything else a DNS SAN.
pub fn generate_pki(extra_sans: &[String], clock: &dyn Clock) -> Result<DevPki, TlsError> {
    let rng = SystemRandom::new();
    let now = clock.unix();
    let not_before = asn1_time(now.saturating_sub(secs(BACKDATE)))?.to_datetime();
    let not_after = asn1_time(now.saturating_add(secs(VALIDITY)))?.to_datetime();

    let base = |cn: &str| -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial(&rng)?);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "jobpass");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        Ok(params)
    };

    // CA.
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut ca_params = base(CA_COMMON_NAME)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_key_pem = SecretString::from(ca_key.serialize_pem());
    let issuer = Issuer::new(ca_params, ca_key);

    // Server.
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut server_params = base("localhost")?;
    server_params.subject_alt_names = server_sans(extra_sans)?;
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.use_authority_key_identifier_extension = true;
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    // One client certificate per admin role.
    let mut clients = Vec::with_capacity(AdminRole::ALL.len());
    for role in AdminRole::ALL {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = base(&format!("{role}-user"))?;
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, role.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        clients.push((role, cert.pem(), SecretString::from(key.serialize_pem())));
    }

    Ok(DevPki {
        ca_pem: ca_cert.pem(),
        ca_key_pem,
        server_pem: server_cert.pem(),
        server_key_pem: SecretString::from(server_key.serialize_pem()),
        clients,
    })
}

/// The file names `certs init` writes, relative to its directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// CA private key file name.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// Server certificate file name.
pub const SERVER_CERT_FILE: &str = "server.pem";
/// Server private key file name.
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// File names of the client certificate and key for `role` (`admin.pem`, `admin-key.pem`…).
pub fn client_file_names(role: AdminRole) -> (String, String) {
    (format!("{role}.pem"), format!("{role}-key.pem"))
}

/// `jobpass certs init --dir DIR`: generates a development PKI and writes it to `dir`
/// (created, mode 0700, when missing).
///
/// Writes `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` and `<role>.pem` /
/// `<role>-key.pem` for `admin`, `security` and `auditor`. Key files get mode 0600,
/// certificates 0644. Without `force`, nothing is written when any of these files already
/// exists. Returns the paths written, in that order.
pub fn certs_init(
    dir: &Path,
    extra_sans: &[String],
    force: bool,
    clock: &dyn Clock,
) -> Result<Vec<PathBuf>, TlsError> {
    let pki = generate_pki(extra_sans, clock)?;

    let mut files: Vec<(PathBuf, &str, bool)> = vec![
        (dir.join(CA_CERT_FILE), pki.ca_pem.as_str(), false),
        (dir.join(CA_KEY_FILE), pki.ca_key_pem.expose_secret(), true),
        (dir.join(SERVER_CERT_FILE), pki.server_pem.as_str(), false),
        (
            dir.join(SERVER_KEY_FILE),
            pki.server_key_pem.expose_secret(),
            true,
        ),
    ];
    for (role, cert, key) in &pki.clients {
        let (cert_name, key_name) = client_file_names(*role);
        files.push((dir.join(cert_name), cert.as_str(), false));
        files.push((dir.join(key_name), key.expose_secret(), true));
    }

    if !force {
        for (path, _, _) in &files {
            if fs::symlink_metadata(path).is_ok() {
                return Err(TlsError::Exists(path.clone()));
            }
        }
    }

    create_dir(dir)?;
    let mut written = Vec::with_capacity(files.len());
    for (path, contents, secret) in files {
        let mode = if secret { 0o600 } else { 0o644 };
        if force {
            replace_file(&path, contents.as_bytes(), mode)?;
        } else {
            write_new_file(&path, contents.as_bytes(), mode)?;
        }
        written.push(path);
    }
    Ok(written)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// A Unix time as a certificate timestamp (`x509-parser` converts it to the `time` type rcgen
/// takes, so this crate needs no direct `time` dependency).
fn asn1_time(unix: i64) -> Result<x509_parser::time::ASN1Time, TlsError> {
    x509_parser::time::ASN1Time::from_timestamp(unix).map_err(|_| TlsError::InvalidTime)
}

/// A random positive serial of 16 bytes (MSB cleared so it encodes as a positive INTEGER,
/// first byte never zero so it encodes in exactly 16 bytes).
fn random_serial(rng: &SystemRandom) -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes).map_err(|_| TlsError::Random)?;
    bytes[0] &= 0x7f;
    if bytes[0] == 0 {
        bytes[0] = 0x01;
    }
    Ok(SerialNumber::from_slice(&bytes))
}

fn server_sans(extra: &[String]) -> Result<Vec<SanType>, TlsError> {
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for name in extra {
        let name = name.trim();
        if name.is_empty() {
            return Err(TlsError::InvalidSan(String::new()));
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
        .into_iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name
                .as_str()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| TlsError::InvalidSan(name)),
        })
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| TlsError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn open_options(mode: u32) -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options
}

/// Creates `path` (which must not exist) with `mode` and writes `contents`, synced.
fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let io_err = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = open_options(mode).open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            TlsError::Exists(path.to_path_buf())
        } else {
            io_err(e)
        }
    })?;
    file.write_all(contents).map_err(io_err)?;
    file.sync_all().map_err(io_err)
}

/// Replaces `path` atomically: a fresh temporary file with `mode` in the same directory,
/// renamed over the target, so an existing file's looser permissions are not inherited.
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    // A stale temporary file from an interrupted run is ours to remove.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(TlsError::Io { path: tmp, source }),
    }
    write_new_file(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|source| {
        drop(fs::remove_file(&tmp));
        TlsError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}
