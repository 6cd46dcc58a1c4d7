//! `kind = "x509"`: client certificates from the environment's own certificate authority.
//!
//! Guarantees:
//! - each environment has its own CA (ECDSA P-256, `CA:TRUE, pathlen:0`, key usages
//!   `keyCertSign` + `cRLSign` only), so a certificate of one environment never verifies
//!   against another environment's CA;
//! - a client certificate has a fresh P-256 key, the requested subject CN, exactly one URI SAN
//!   (naming environment, role and lease), `CA:FALSE`, key usage `digitalSignature`, extended
//!   key usage `clientAuth` only, a random positive 128-bit serial, `notBefore` 30 s in the past
//!   (clock skew) and `notAfter` exactly the credential's expiry, never beyond the CA's own;
//! - the CRL is signed by the CA and lists the revoked serials with their revocation times;
//! - every time comes from the [`Clock`]; private keys never appear in `Debug` output or errors
//!   (the leaf key is handed out as a [`SecretString`], the CA key as [`Zeroizing`] bytes).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::PrivatePkcs8KeyDer;
use secrecy::SecretString;
use zeroize::Zeroizing;

use super::MintError;
use crate::clock::Clock;

/// How long a CA certificate is valid.
const CA_VALIDITY: Duration = Duration::from_secs(3652 * 24 * 3600);
/// How far back a CA's `notBefore` is set (clock skew between replicas and clients).
const CA_BACKDATE: Duration = Duration::from_secs(5 * 60);
/// How far back a client certificate's `notBefore` is set.
const LEAF_BACKDATE_SECS: i64 = 30;
/// The latest time X.509 (and the `time` crate) can represent: 9999-12-31T23:59:59Z.
const MAX_UNIX: i64 = 253_402_300_799;

/// An environment's certificate authority: its certificate and signing key.
pub struct EnvCa {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    not_after: i64,
}

impl std::fmt::Debug for EnvCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvCa")
            .field("not_after", &self.not_after)
            .field("key", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// A freshly issued client certificate with its private key.
pub struct IssuedCert {
    /// The certificate, PEM (`CERTIFICATE`).
    pub certificate_pem: String,
    /// Its private key, PKCS#8 PEM (`PRIVATE KEY`).
    pub private_key_pem: SecretString,
    /// The serial number as lowercase hex (the CRL and the lease refer to it).
    pub serial_hex: String,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("not_after", &self.not_after)
            .field("private_key_pem", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> MintError + '_ {
    move |e| MintError::Crypto(format!("{what}: {e}"))
}

/// A Unix time as a `SystemTime`, refused outside what a certificate can encode.
fn system_time(unix: i64) -> Result<SystemTime, MintError> {
    if !(0..=MAX_UNIX).contains(&unix) {
        return Err(MintError::Crypto(format!(
            "time {unix} is outside the range a certificate can encode"
        )));
    }
    Ok(UNIX_EPOCH + Duration::from_secs(unix.unsigned_abs()))
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl EnvCa {
    /// New CA for environment `env`: ECDSA P-256 key, CN `jobpass <env> CA`, `CA:TRUE` with
    /// path length 0, key usages `keyCertSign` + `cRLSign`, valid from 5 minutes ago for ten
    /// years. Returns the CA and the PKCS#8 DER of its key (to be sealed and stored).
    pub fn generate(
        env: &str,
        clock: &dyn Clock,
    ) -> Result<(EnvCa, Zeroizing<Vec<u8>>), MintError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("CA key"))?;
        let pkcs8 = Zeroizing::new(key.serialize_der());
        let now = clock.unix();
        let not_before = now.saturating_sub(duration_secs(CA_BACKDATE));
        let not_after = now.saturating_add(duration_secs(CA_VALIDITY));

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("jobpass {env} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = system_time(not_before)?.into();
        params.not_after = system_time(not_after)?.into();
        params.serial_number = Some(random_serial()?.0);
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params.self_signed(&key).map_err(crypto("CA certificate"))?;
        let ca = EnvCa {
            issuer: Issuer::new(params, key),
            ca_pem: cert.pem(),
            not_after,
        };
        Ok((ca, pkcs8))
    }

    /// Rebuilds a CA from its stored certificate (PEM) and its PKCS#8 DER key (after
    /// decrypting it). Fails when the key is not a P-256 key or does not match the certificate.
    pub fn from_parts(ca_cert_pem: &str, ca_key_pkcs8: &[u8]) -> Result<EnvCa, MintError> {
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(ca_key_pkcs8),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|_| MintError::Key("stored CA key is not a P-256 PKCS#8 key".into()))?;
        let (_, pem) = x509_parser::pem::parse_x509_pem(ca_cert_pem.as_bytes())
            .map_err(|_| MintError::Key("stored CA certificate is not PEM".into()))?;
        let cert = pem
            .parse_x509()
            .map_err(|_| MintError::Key("stored CA certificate does not parse".into()))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(MintError::Key(
                "stored CA key does not match the CA certificate".into(),
            ));
        }
        if !cert.is_ca() {
            return Err(MintError::Key("stored CA certificate is not a CA".into()));
        }
        let not_after = cert.validity().not_after.timestamp();
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)
            .map_err(|_| MintError::Key("stored CA certificate is unusable".into()))?;
        Ok(EnvCa {
            issuer,
            ca_pem: ca_cert_pem.to_string(),
            not_after,
        })
    }

    /// The CA certificate, PEM (served at `GET /v1/envs/<env>/ca.pem`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Issues a client certificate: fresh P-256 key, subject CN `common_name`, one URI SAN
    /// `uri_san` (e.g. `jobpass://<env>/<role>/<lease_id>`), EKU `clientAuth` only, key usage
    /// `digitalSignature`, random positive 128-bit serial, `notBefore` = now − 30 s,
    /// `notAfter` = `not_after` (Unix seconds). `not_after` must be in the future and within
    /// the CA's validity.
    pub fn issue(
        &self,
        common_name: &str,
        uri_san: &str,
        not_after: i64,
        clock: &dyn Clock,
    ) -> Result<IssuedCert, MintError> {
        let now = clock.unix();
        if not_after <= now {
            return Err(MintError::Crypto(
                "certificate expiry is not in the future".into(),
            ));
        }
        if not_after > self.not_after {
            return Err(MintError::Crypto(
                "certificate would outlive the environment's CA".into(),
            ));
        }
        let san = rcgen::string::Ia5String::try_from(uri_san)
            .map_err(|_| MintError::Crypto("URI SAN must be ASCII".into()))?;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(crypto("client key"))?;
        let (serial, serial_hex) = random_serial()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(san)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(serial);
        params.use_authority_key_identifier_extension = true;
        params.not_before = system_time(now.saturating_sub(LEAF_BACKDATE_SECS).max(0))?.into();
        params.not_after = system_time(not_after)?.into();
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(crypto("client certificate"))?;
        Ok(IssuedCert {
            certificate_pem: cert.pem(),
            private_key_pem: SecretString::from(key.serialize_pem()),
            serial_hex,
            not_after,
        })
    }

    /// A CRL signed by the CA listing `revoked` (serial as hex, revocation time in Unix
    /// seconds), `thisUpdate` = now, `nextUpdate` = now + `validity`, CRL number `number`.
    pub fn crl_pem(
        &self,
        revoked: &[(String, i64)],
        number: u64,
        validity: Duration,
        clock: &dyn Clock,
    ) -> Result<String, MintError> {
        let now = clock.unix();
        let next = now.saturating_add(duration_secs(validity).max(1));
        let revoked_certs = revoked
            .iter()
            .map(|(serial_hex, at)| {
                let bytes = hex::decode(serial_hex)
                    .ok()
                    .filter(|b| !b.is_empty() && b.len() <= 20)
                    .ok_or_else(|| MintError::Crypto("invalid serial number in CRL".into()))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: system_time(*at)?.into(),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, MintError>>()?;
        let params = CertificateRevocationListParams {
            this_update: system_time(now)?.into(),
            next_update: system_time(next)?.into(),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(crypto("CRL"))?;
        crl.pem().map_err(crypto("CRL encoding"))
    }
}

/// A random positive serial of 16 bytes (top bit clear so the DER INTEGER is positive, next
/// bit set so it always has full length and is never zero), with its hex form.
fn random_serial() -> Result<(SerialNumber, String), MintError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| MintError::Crypto("randomness unavailable".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok((SerialNumber::from_slice(&bytes), hex::encode(bytes)))
}

/// Mints client certificates from the environment's CA, with the URI SAN
/// `jobpass://<env>/<role>/<lease>`; the row keeps the serial (for the CRL).
pub struct X509Minter {
    cas: std::sync::Arc<crate::keys::cas::Cas>,
}

impl X509Minter {
    /// A minter over the environments' CAs.
    #[must_use]
    pub fn new(cas: std::sync::Arc<crate::keys::cas::Cas>) -> Self {
        Self { cas }
    }
}

impl super::Minter for X509Minter {
    async fn prepare(
        &self,
        _grant: &crate::policy::Grant,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Prepared, MintError> {
        Ok(super::Prepared::X509(self.cas.for_env(cx.env).await?))
    }

    fn issue(
        &self,
        grant: &crate::policy::Grant,
        prepared: &super::Prepared,
        cx: &super::MintContext<'_>,
    ) -> Result<super::Minted, MintError> {
        let (crate::policy::GrantKind::X509 { common_name }, super::Prepared::X509(ca)) =
            (&grant.kind, prepared)
        else {
            return Err(MintError::Key("CA not loaded".into()));
        };
        let san = format!("jobpass://{}/{}/{}", cx.env, cx.role, cx.lease_id);
        let cert = ca.issue(common_name, &san, cx.expires_at, cx.clock)?;
        let mut public = serde_json::Map::new();
        public.insert(
            "certificate_pem".into(),
            serde_json::Value::String(cert.certificate_pem),
        );
        public.insert(
            "ca_pem".into(),
            serde_json::Value::String(ca.ca_pem().to_string()),
        );
        let scope = serde_json::json!({"serial": cert.serial_hex}).to_string();
        let row = cx.row(cx.credential_id()?, grant, None, scope);
        Ok(super::Minted {
            credential: super::IssuedCredential {
                name: grant.name.clone(),
                kind: super::Kind::X509,
                value: cert.private_key_pem,
                public,
                expires_at: cx.expires_at,
            },
            row,
        })
    }

    async fn teardown(&self, _prepared: &super::Prepared) {}
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::crypto::CryptoProvider;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{
        CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName,
    };
    use secrecy::ExposeSecret;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use x509_parser::extensions::GeneralName;
    use x509_parser::prelude::*;

    use super::*;
    use crate::clock::{FixedClock, SystemClock};

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn der_of(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    /// Runs one TLS handshake: a server requiring client certificates from `ca_pem` (and
    /// honouring `crls`) and a client presenting `cert`. Returns whether both ends completed
    /// the handshake and exchanged a byte.
    async fn handshake(ca_pem: &str, crls: Vec<Vec<u8>>, cert: &IssuedCert) -> bool {
        // Server identity for the test only.
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();

        let mut client_roots = RootCertStore::empty();
        client_roots
            .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
            .unwrap();
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(client_roots), provider());
        if !crls.is_empty() {
            builder = builder.with_crls(crls.into_iter().map(CertificateRevocationListDer::from));
        }
        let verifier = builder.build().unwrap();
        let server_config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();

        let mut server_roots = RootCertStore::empty();
        server_roots.add(server_cert.der().clone()).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(server_roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.certificate_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(cert.private_key_pem.expose_secret().as_bytes())
                    .unwrap(),
            )
            .unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            match acceptor.accept(tcp).await {
                Ok(mut tls) => {
                    let mut b = [0u8; 1];
                    if tls.read_exact(&mut b).await.is_err() {
                        return false;
                    }
                    tls.write_all(&b).await.is_ok() && tls.flush().await.is_ok()
                }
                Err(_) => false,
            }
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let client_ok = match connector
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            // With TLS 1.3 a refused client certificate surfaces on the first read.
            Ok(mut tls) => {
                let mut b = [0u8; 1];
                tls.write_all(b"x").await.is_ok()
                    && tls.flush().await.is_ok()
                    && tls.read_exact(&mut b).await.is_ok()
                    && &b == b"x"
            }
            Err(_) => false,
        };
        let server_ok = server.await.unwrap();
        assert_eq!(
            client_ok, server_ok,
            "client and server disagree on the handshake"
        );
        server_ok
    }

    fn in_an_hour() -> i64 {
        SystemClock.unix() + 3600
    }

    #[tokio::test]
    async fn issued_certificate_is_accepted_by_a_server_trusting_the_env_ca() {
        let (ca, _) = EnvCa::generate("prod", &SystemClock).unwrap();
        let cert = ca
            .issue(
                "web-deployer",
                "jobpass://prod/deploy/lse_1",
                in_an_hour(),
                &SystemClock,
            )
            .unwrap();
        assert!(handshake(ca.ca_pem(), vec![], &cert).await);
    }

    #[tokio::test]
    async fn certificate_from_another_environment_is_refused() {
        let (prod, _) = EnvCa::generate("prod", &SystemClock).unwrap();
        let (staging, _) = EnvCa::generate("staging", &SystemClock).unwrap();
        let cert = staging
            .issue("x", "jobpass://staging/r/lse_1", in_an_hour(), &SystemClock)
            .unwrap();
        assert!(!handshake(prod.ca_pem(), vec![], &cert).await);
    }

    #[tokio::test]
    async fn ca_rebuilt_from_parts_issues_certificates_that_still_verify() {
        let (ca, pkcs8) = EnvCa::generate("prod", &SystemClock).unwrap();
        let again = EnvCa::from_parts(ca.ca_pem(), &pkcs8).unwrap();
        assert_eq!(again.ca_pem(), ca.ca_pem());
        let cert = again
            .issue("x", "jobpass://prod/r/lse_2", in_an_hour(), &SystemClock)
            .unwrap();
        assert!(handshake(ca.ca_pem(), vec![], &cert).await);
        // Its CRLs verify under the original CA too.
        let crl = again
            .crl_pem(&[], 1, Duration::from_secs(600), &SystemClock)
            .unwrap();
        let ca_der = der_of(ca.ca_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        let crl_der = der_of(&crl);
        let (_, parsed) = parse_x509_crl(&crl_der).unwrap();
        parsed.verify_signature(ca_cert.public_key()).unwrap();
    }

    #[test]
    fn from_parts_refuses_a_key_that_does_not_match_the_certificate() {
        let (ca, _) = EnvCa::generate("prod", &SystemClock).unwrap();
        let (_, other_key) = EnvCa::generate("prod", &SystemClock).unwrap();
        let err = EnvCa::from_parts(ca.ca_pem(), &other_key).unwrap_err();
        assert!(matches!(err, MintError::Key(_)), "{err}");
        assert!(EnvCa::from_parts(ca.ca_pem(), b"not a key").is_err());
        assert!(EnvCa::from_parts("not pem", &other_key).is_err());
    }

    #[tokio::test]
    async fn revoked_certificate_is_refused_by_a_server_using_the_crl() {
        let (ca, _) = EnvCa::generate("prod", &SystemClock).unwrap();
        let revoked = ca
            .issue("x", "jobpass://prod/r/lse_3", in_an_hour(), &SystemClock)
            .unwrap();
        let live = ca
            .issue("x", "jobpass://prod/r/lse_4", in_an_hour(), &SystemClock)
            .unwrap();
        let crl = ca
            .crl_pem(
                &[(revoked.serial_hex.clone(), SystemClock.unix())],
                7,
                Duration::from_secs(600),
                &SystemClock,
            )
            .unwrap();
        let crl_der = der_of(&crl);
        assert!(!handshake(ca.ca_pem(), vec![crl_der.clone()], &revoked).await);
        assert!(handshake(ca.ca_pem(), vec![crl_der], &live).await);
    }

    #[test]
    fn client_certificate_has_the_requested_names_usages_and_validity() {
        let clock = FixedClock::at(1_800_000_000);
        let (ca, _) = EnvCa::generate("prod", &clock).unwrap();
        let not_after = 1_800_000_900;
        let cert = ca
            .issue(
                "web-deployer",
                "jobpass://prod/deploy-web/lse_abc",
                not_after,
                &clock,
            )
            .unwrap();
        assert_eq!(cert.not_after, not_after);
        let der = der_of(&cert.certificate_pem);
        let (_, x) = parse_x509_certificate(&der).unwrap();

        let cns: Vec<&str> = x
            .subject()
            .iter_common_name()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(cns, ["web-deployer"]);
        assert_eq!(
            x.issuer()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "jobpass prod CA"
        );
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            san.value.general_names,
            vec![GeneralName::URI("jobpass://prod/deploy-web/lse_abc")]
        );
        let eku = x.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth);
        assert!(!eku.server_auth && !eku.any && !eku.code_signing && eku.other.is_empty());
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());
        assert!(!x.is_ca());
        assert_eq!(x.validity().not_after.timestamp(), not_after);
        assert_eq!(x.validity().not_before.timestamp(), 1_800_000_000 - 30);

        // Serial: positive, 128 bits, matching serial_hex.
        assert_eq!(hex::encode(x.raw_serial()), cert.serial_hex);
        assert_eq!(x.raw_serial().len(), 16);
        assert_eq!(x.raw_serial()[0] & 0x80, 0);

        // Signed by the CA.
        let ca_der = der_of(ca.ca_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        x.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn ca_certificate_is_a_constrained_ten_year_ca() {
        let clock = FixedClock::at(1_800_000_000);
        let (ca, _) = EnvCa::generate("prod", &clock).unwrap();
        let der = der_of(ca.ca_pem());
        let (_, x) = parse_x509_certificate(&der).unwrap();
        assert_eq!(
            x.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "jobpass prod CA"
        );
        let bc = x.basic_constraints().unwrap().unwrap().value;
        assert!(bc.ca);
        assert_eq!(bc.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        assert_eq!(x.validity().not_before.timestamp(), 1_800_000_000 - 300);
        assert!(x.validity().not_after.timestamp() >= 1_800_000_000 + 10 * 365 * 86400);
        x.verify_signature(None).unwrap();
    }

    #[test]
    fn expiry_in_the_past_or_beyond_the_ca_is_refused() {
        let clock = FixedClock::at(1_800_000_000);
        let (ca, _) = EnvCa::generate("prod", &clock).unwrap();
        assert!(
            ca.issue("x", "jobpass://p/r/l", 1_800_000_000, &clock)
                .is_err()
        );
        assert!(
            ca.issue(
                "x",
                "jobpass://p/r/l",
                1_800_000_000 + 20 * 365 * 86400,
                &clock
            )
            .is_err()
        );
        assert!(
            ca.issue("x", "jobpass://p/r/é", 1_800_000_060, &clock)
                .is_err()
        );
    }

    #[test]
    fn crl_is_signed_by_the_ca_and_lists_exactly_the_revoked_serials() {
        let clock = FixedClock::at(1_800_000_000);
        let (ca, _) = EnvCa::generate("prod", &clock).unwrap();
        let a = ca
            .issue("a", "jobpass://p/r/a", 1_800_000_600, &clock)
            .unwrap();
        let b = ca
            .issue("b", "jobpass://p/r/b", 1_800_000_600, &clock)
            .unwrap();
        let _c = ca
            .issue("c", "jobpass://p/r/c", 1_800_000_600, &clock)
            .unwrap();
        let revoked = vec![
            (a.serial_hex.clone(), 1_799_999_900),
            (b.serial_hex.clone(), 1_799_999_950),
        ];
        let pem = ca
            .crl_pem(&revoked, 42, Duration::from_secs(3600), &clock)
            .unwrap();
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        let der = der_of(&pem);
        let (_, crl) = parse_x509_crl(&der).unwrap();

        let listed: Vec<(String, i64)> = crl
            .iter_revoked_certificates()
            .map(|r| (hex::encode(r.raw_serial()), r.revocation_date.timestamp()))
            .collect();
        assert_eq!(listed, revoked);
        assert_eq!(crl.last_update().timestamp(), 1_800_000_000);
        assert_eq!(crl.next_update().unwrap().timestamp(), 1_800_003_600);
        assert_eq!(crl.crl_number().unwrap(), &42u64.into());
        assert_eq!(
            crl.issuer()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "jobpass prod CA"
        );

        let ca_der = der_of(ca.ca_pem());
        let (_, ca_cert) = parse_x509_certificate(&ca_der).unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
        // A CRL from another CA does not verify under this one.
        let (other, _) = EnvCa::generate("prod", &clock).unwrap();
        let other_der = der_of(
            &other
                .crl_pem(&revoked, 1, Duration::from_secs(60), &clock)
                .unwrap(),
        );
        let (_, other_crl) = parse_x509_crl(&other_der).unwrap();
        assert!(other_crl.verify_signature(ca_cert.public_key()).is_err());

        assert!(
            ca.crl_pem(&[("zz".into(), 0)], 1, Duration::from_secs(60), &clock)
                .is_err()
        );
        let empty = der_of(&ca.crl_pem(&[], 1, Duration::from_secs(60), &clock).unwrap());
        assert_eq!(
            parse_x509_crl(&empty)
                .unwrap()
                .1
                .iter_revoked_certificates()
                .count(),
            0
        );
    }

    #[test]
    fn debug_output_hides_private_keys() {
        let (ca, pkcs8) = EnvCa::generate("prod", &SystemClock).unwrap();
        let cert = ca
            .issue("x", "jobpass://p/r/l", in_an_hour(), &SystemClock)
            .unwrap();
        let dbg = format!("{ca:?} {cert:?}");
        assert!(dbg.contains("[REDACTED]"));
        assert!(!dbg.contains("PRIVATE KEY"));
        assert!(!dbg.contains(&hex::encode(&pkcs8[..])));
        let key_body: String = cert
            .private_key_pem
            .expose_secret()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!dbg.contains(&key_body[..16]));
    }
}
