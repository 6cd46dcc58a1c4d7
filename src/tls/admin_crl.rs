//! Admin client certificates and their revocation: the verifier behind `tls.admin_client_ca`
//! and `tls.crl`.
//!
//! What this module guarantees:
//! - **A revoked admin certificate fails the handshake.** With `tls.crl` set, a client
//!   certificate listed in the CRL of the CA that issued it is refused by rustls during the
//!   handshake (alert `certificate_revoked`): no request is read on that connection.
//! - **Every CRL is checked when it is read**, at start and at every reload: it must be issued
//!   by a certificate of `tls.admin_client_ca` and verify under that certificate's key, and
//!   every certificate of `tls.admin_client_ca` must have a CRL in the file. Anything else is
//!   an error naming `tls.crl`, the file and the reason, so a CRL that could lock every admin
//!   out (a CA without a CRL means an unknown revocation status, which is refused) never
//!   goes live.
//! - **Fail closed on unknown status.** A certificate whose revocation status cannot be
//!   determined (e.g. issued by an intermediate CA, whose CRL cannot be in the file) is
//!   refused.
//! - **An expired CRL still revokes.** A CRL past its `nextUpdate` keeps refusing what it
//!   lists (rustls' default expiration policy, which ignores `nextUpdate`); it is logged as
//!   stale when read, and [`CrlInfo::next_update`] is published as a metric so staleness can be
//!   alerted on. Refusing every admin because a CRL file was not refreshed in time would lock
//!   out the emergency controls without revoking anything more.
//! - **Reload swaps atomically and keeps the last good set.** [`AdminClientAuth::reload_crl`]
//!   rereads the file; a file that fails any check changes nothing. New handshakes use the new
//!   CRLs; the trust anchors (`tls.admin_client_ca`) are those read at start.
//! - Clients without a certificate still connect (CI jobs); requiring a certificate on
//!   `/v1/admin/` stays the HTTP layer's job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{TlsError, parse_certs, provider, read_text};
use crate::clock::Clock;
use crate::config::TlsConfig;

/// What a CRL file that went live holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlInfo {
    /// CRLs in the file.
    pub crls: usize,
    /// Revoked certificates they list, together.
    pub revoked: usize,
    /// The earliest `nextUpdate` among them (Unix seconds), if any has one.
    pub next_update: Option<i64>,
}

/// The verifier of admin client certificates: chains to `tls.admin_client_ca` (optional at the
/// handshake), revocation by the CRLs of `tls.crl` (swappable by [`Self::reload_crl`]).
pub struct AdminClientAuth {
    roots: Arc<RootCertStore>,
    /// The CA certificates (DER), which CRLs must be issued and signed by.
    cas: Vec<CertificateDer<'static>>,
    hints: Vec<DistinguishedName>,
    crl_path: Option<PathBuf>,
    live: ArcSwap<Live>,
}

/// The verifier in force and what its CRLs hold.
struct Live {
    verifier: Arc<dyn ClientCertVerifier>,
    info: Option<CrlInfo>,
}

impl std::fmt::Debug for AdminClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClientAuth")
            .field("cas", &self.cas.len())
            .field("crl_path", &self.crl_path)
            .field("crls", &self.live.load().info)
            .finish()
    }
}

impl AdminClientAuth {
    /// The admin client verifier of a `[tls]` section: None without `admin_client_ca`.
    ///
    /// # Errors
    /// An unreadable or invalid CA or CRL file (the message names the setting), or `crl`
    /// without `admin_client_ca`.
    pub fn from_config(tls: &TlsConfig, clock: &dyn Clock) -> Result<Option<Arc<Self>>, TlsError> {
        match (&tls.admin_client_ca, &tls.crl) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(TlsError::CrlWithoutCa),
            (Some(ca), crl) => Self::load(ca, crl.as_deref(), clock).map(|a| Some(Arc::new(a))),
        }
    }

    /// The verifier for the CA certificates of the PEM file `ca`, with the CRLs of the PEM file
    /// `crl` when given (`clock` tells whether they are stale).
    ///
    /// # Errors
    /// As [`Self::from_config`].
    pub fn load(ca: &Path, crl: Option<&Path>, clock: &dyn Clock) -> Result<Self, TlsError> {
        let (roots, cas) = anchors(&read_text(ca)?, &ca.display().to_string())?;
        let live = match crl {
            Some(path) => load_crls(&roots, &cas, path, clock)?,
            None => Live {
                verifier: verifier(&roots, Vec::new())?,
                info: None,
            },
        };
        Ok(Self::with(roots, cas, crl.map(Path::to_path_buf), live))
    }

    /// The verifier for the CA certificates in `ca_pem` (`what` names it in errors), without
    /// CRLs (dev mode, tests).
    ///
    /// # Errors
    /// `ca_pem` holds no certificate, or one rustls refuses as a trust anchor.
    pub fn from_pem(ca_pem: &str, what: &str) -> Result<Self, TlsError> {
        let (roots, cas) = anchors(ca_pem, what)?;
        let live = Live {
            verifier: verifier(&roots, Vec::new())?,
            info: None,
        };
        Ok(Self::with(roots, cas, None, live))
    }

    fn with(
        roots: Arc<RootCertStore>,
        cas: Vec<CertificateDer<'static>>,
        crl_path: Option<PathBuf>,
        live: Live,
    ) -> Self {
        Self {
            hints: roots.subjects(),
            roots,
            cas,
            crl_path,
            live: ArcSwap::from_pointee(live),
        }
    }

    /// The CRL file (`tls.crl`), if one is configured.
    #[must_use]
    pub fn crl_path(&self) -> Option<&Path> {
        self.crl_path.as_deref()
    }

    /// What the CRLs in force hold (None without `tls.crl`).
    #[must_use]
    pub fn crl_info(&self) -> Option<CrlInfo> {
        self.live.load().info
    }

    /// Whether a client chain accepted at an earlier handshake still passes now (Unix
    /// seconds), under the CRLs in force now: a resumed TLS session skips the verifier, and a
    /// connection opened before a CRL reload or before the certificate expired outlives both,
    /// so every admin call checks its connection's chain again.
    #[must_use]
    pub fn still_valid(&self, chain: &[CertificateDer<'static>], now: i64) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        self.live
            .load()
            .verifier
            .verify_client_cert(leaf, intermediates, now)
            .is_ok()
    }

    /// Reads the CRL file again; when it passes every check, new handshakes use it. On error
    /// the CRLs in force stay. Ok(None) when no CRL file is configured.
    ///
    /// # Errors
    /// The file cannot be read or fails a check (the error names `tls.crl` and the file).
    pub fn reload_crl(&self, clock: &dyn Clock) -> Result<Option<CrlInfo>, TlsError> {
        let Some(path) = &self.crl_path else {
            return Ok(None);
        };
        let live = load_crls(&self.roots, &self.cas, path, clock)?;
        let info = live.info;
        self.live.store(Arc::new(live));
        Ok(info)
    }
}

/// The trust anchors of a CA PEM text, and its certificates.
fn anchors(
    ca_pem: &str,
    what: &str,
) -> Result<(Arc<RootCertStore>, Vec<CertificateDer<'static>>), TlsError> {
    let cas = parse_certs(ca_pem, what)?;
    let mut roots = RootCertStore::empty();
    for cert in &cas {
        roots.add(cert.clone())?;
    }
    Ok((Arc::new(roots), cas))
}

/// A rustls client verifier over `roots` honouring `crls`: certificates optional, revocation
/// status required for every certificate of a presented chain when there are CRLs.
fn verifier(
    roots: &Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    Ok(
        WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .with_crls(crls)
            .build()?,
    )
}

/// Reads and checks the CRL file `path` and builds the verifier honouring it.
fn load_crls(
    roots: &Arc<RootCertStore>,
    cas: &[CertificateDer<'static>],
    path: &Path,
    clock: &dyn Clock,
) -> Result<Live, TlsError> {
    let invalid = |reason: String| TlsError::CrlInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::CrlRead {
        path: path.to_path_buf(),
        source,
    })?;
    let ders = CertificateRevocationListDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| invalid("malformed PEM".into()))?;
    if ders.is_empty() {
        return Err(invalid("no `X509 CRL` PEM block".into()));
    }
    let info = check_crls(cas, &ders).map_err(invalid)?;
    if let Some(next) = info.next_update
        && next < clock.unix()
    {
        tracing::warn!(
            path = %path.display(),
            next_update = next,
            "the admin CRL is past its nextUpdate; it still revokes what it lists: replace it with a fresh one"
        );
    }
    let verifier = verifier(roots, ders).map_err(|e| invalid(e.to_string()))?;
    Ok(Live {
        verifier,
        info: Some(info),
    })
}

/// Checks that each CRL is issued and signed by one of `cas`, and that each of `cas` has one.
fn check_crls(
    cas: &[CertificateDer<'static>],
    ders: &[CertificateRevocationListDer<'static>],
) -> Result<CrlInfo, String> {
    let cas = cas
        .iter()
        .map(|der| {
            X509Certificate::from_der(der.as_ref())
                .map(|(_, cert)| cert)
                .map_err(|_| "a certificate of tls.admin_client_ca does not parse".to_string())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut covered = vec![false; cas.len()];
    let mut info = CrlInfo {
        crls: ders.len(),
        revoked: 0,
        next_update: None,
    };
    for (n, der) in ders.iter().enumerate() {
        let crl = match x509_parser::parse_x509_crl(der.as_ref()) {
            Ok(([], crl)) => crl,
            _ => return Err(format!("CRL {} of the file does not parse", n + 1)),
        };
        let issuer = crl.issuer();
        let Some(i) = cas
            .iter()
            .position(|ca| ca.subject().as_raw() == issuer.as_raw())
        else {
            return Err(format!(
                "the CRL of `{issuer}` is not from a certificate of tls.admin_client_ca"
            ));
        };
        crl.verify_signature(cas[i].public_key()).map_err(|_| {
            format!("the CRL of `{issuer}` is not signed by the key of that tls.admin_client_ca certificate")
        })?;
        covered[i] = true;
        info.revoked += crl.iter_revoked_certificates().count();
        if let Some(next) = crl.next_update().map(|t| t.timestamp()) {
            info.next_update = Some(info.next_update.map_or(next, |n: i64| n.min(next)));
        }
    }
    if let Some(i) = covered.iter().position(|c| !c) {
        return Err(format!(
            "no CRL of `{}`: every certificate of tls.admin_client_ca needs one (otherwise the \
             revocation status of what it issued is unknown, and such certificates are refused)",
            cas[i].subject()
        ));
    }
    Ok(info)
}

impl ClientCertVerifier for AdminClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.live
            .load()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.live
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.live
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.live.load().verifier.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, IsCa, Issuer,
        KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber, date_time_ymd,
    };

    use super::*;
    use crate::clock::FixedClock;

    fn ca(cn: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    fn crl(issuer: &Issuer<'static, KeyPair>, revoked: &[u64], next_year: i32) -> String {
        CertificateRevocationListParams {
            this_update: date_time_ymd(2000, 1, 1),
            next_update: date_time_ymd(next_year, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: date_time_ymd(2000, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .pem()
        .unwrap()
    }

    /// `AdminClientAuth::load` of these CA and CRL texts, at 2050-01-01.
    fn load(dir: &Path, ca_pem: &str, crl_pem: &str) -> Result<AdminClientAuth, TlsError> {
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.join("crl.pem"), crl_pem).unwrap();
        AdminClientAuth::load(
            &dir.join("ca.pem"),
            Some(&dir.join("crl.pem")),
            &FixedClock::at(2_524_608_000),
        )
    }

    #[test]
    fn every_crl_must_be_from_an_admin_ca_and_every_admin_ca_needs_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a_pem, a) = ca("admin CA a");
        let (b_pem, b) = ca("admin CA b");
        let (_, imposter) = ca("admin CA a");
        let both = format!("{a_pem}{b_pem}");

        let auth = load(
            dir.path(),
            &both,
            &format!("{}{}", crl(&a, &[1, 2], 2100), crl(&b, &[3], 2040)),
        )
        .unwrap();
        assert_eq!(
            auth.crl_info(),
            Some(CrlInfo {
                crls: 2,
                revoked: 3,
                next_update: Some(2_208_988_800),
            }),
            "the earliest nextUpdate (2040), even though past: a stale CRL still loads"
        );
        let refused = |crl_pem: &str| load(dir.path(), &both, crl_pem).unwrap_err().to_string();
        let e = refused(&crl(&a, &[], 2100));
        assert!(
            e.starts_with("tls.crl: ") && e.contains("no CRL of `CN=admin CA b`"),
            "{e}"
        );
        let (_, other) = ca("other CA");
        let e = refused(&format!(
            "{}{}{}",
            crl(&a, &[], 2100),
            crl(&b, &[], 2100),
            crl(&other, &[], 2100)
        ));
        assert!(
            e.contains("the CRL of `CN=other CA` is not from a certificate of tls.admin_client_ca"),
            "{e}"
        );
        let e = refused(&format!(
            "{}{}",
            crl(&imposter, &[], 2100),
            crl(&b, &[], 2100)
        ));
        assert!(e.contains("is not signed by the key"), "{e}");
        let e = refused("");
        assert!(e.contains("no `X509 CRL` PEM block"), "{e}");
        let e = refused("-----BEGIN X509 CRL-----\nnot base64!\n-----END X509 CRL-----\n");
        assert!(e.contains("malformed PEM"), "{e}");
    }

    #[test]
    fn a_refused_reload_keeps_the_crls_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let (a_pem, a) = ca("admin CA a");
        let clock = FixedClock::at(2_524_608_000);
        let auth = load(dir.path(), &a_pem, &crl(&a, &[1], 2100)).unwrap();
        std::fs::write(dir.path().join("crl.pem"), crl(&a, &[1, 2], 2100)).unwrap();
        assert_eq!(auth.reload_crl(&clock).unwrap().map(|i| i.revoked), Some(2));
        std::fs::write(dir.path().join("crl.pem"), "garbage").unwrap();
        let e = auth.reload_crl(&clock).unwrap_err();
        assert!(e.to_string().starts_with("tls.crl: "), "{e}");
        assert_eq!(
            auth.crl_info().map(|i| i.revoked),
            Some(2),
            "the last good CRL stays"
        );
        std::fs::remove_file(dir.path().join("crl.pem")).unwrap();
        let e = auth.reload_crl(&clock).unwrap_err();
        assert!(e.to_string().starts_with("tls.crl: cannot read "), "{e}");
        assert_eq!(auth.crl_info().map(|i| i.revoked), Some(2));
    }

    #[test]
    fn a_crl_needs_an_admin_ca() {
        let tls = TlsConfig {
            crl: Some("crl.pem".into()),
            ..TlsConfig::default()
        };
        let e = AdminClientAuth::from_config(&tls, &FixedClock::at(0)).unwrap_err();
        assert!(matches!(e, TlsError::CrlWithoutCa), "{e}");
        assert!(
            AdminClientAuth::from_config(&TlsConfig::default(), &FixedClock::at(0))
                .unwrap()
                .is_none()
        );
    }
}
