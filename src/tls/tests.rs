#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::{ClientConfig, ProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::*;
use crate::clock::{FixedClock, SystemClock};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the test server saw of one connection.
#[derive(Debug)]
struct Seen {
    leaf: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
    alpn: Option<Vec<u8>>,
}

fn dev_pki() -> DevPki {
    generate_pki(&[], &SystemClock).unwrap()
}

fn server_with_admin_ca(pki: &DevPki) -> Arc<ServerConfig> {
    server_config_from_pem(
        &pki.server_chain_pem(),
        pki.server_key_pem.expose_secret(),
        Some(&pki.ca_pem),
    )
    .unwrap()
}

/// Serves exactly one connection on 127.0.0.1:0: handshake via [`accept`], then writes
/// "ok" and closes.
async fn serve_one(config: Arc<ServerConfig>) -> (SocketAddr, JoinHandle<Result<Seen, TlsError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut stream, leaf) = accept(&acceptor, tcp, HANDSHAKE_TIMEOUT).await?;
        let conn = stream.get_ref().1;
        let seen = Seen {
            leaf,
            version: conn.protocol_version(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        stream.write_all(b"ok").await.unwrap();
        stream.shutdown().await.unwrap();
        Ok(seen)
    });
    (addr, task)
}

/// Connects, completes the handshake and reads the server's greeting.
/// Returns the negotiated version and the greeting, or the first error.
async fn talk(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<(Option<ProtocolVersion>, String)> {
    let tcp = TcpStream::connect(addr).await?;
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut stream = TlsConnector::from(config).connect(server_name, tcp).await?;
    let version = stream.get_ref().1.protocol_version();
    let mut greeting = String::new();
    stream.read_to_string(&mut greeting).await?;
    Ok((version, greeting))
}

fn with_alpn(config: Arc<ClientConfig>, protocols: &[&[u8]]) -> Arc<ClientConfig> {
    let mut config = (*config).clone();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn client_for(pki: &DevPki, role: Option<AdminRole>) -> Arc<ClientConfig> {
    match role {
        Some(role) => {
            let (cert, key) = pki.client(role).unwrap();
            client_config(Some(&pki.ca_pem), Some(cert), Some(key.expose_secret())).unwrap()
        }
        None => client_config(Some(&pki.ca_pem), None, None).unwrap(),
    }
}

fn der_of(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// A self-signed certificate with the given subject CN (optional) and OUs.
fn leaf_with_subject(cn: Option<&str>, ous: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    for (i, ou) in ous.iter().enumerate() {
        // rcgen keeps one value per attribute type; the second OU goes in under the same
        // OID (2.5.4.11) spelled as a custom type.
        let ty = if i == 0 {
            DnType::OrganizationalUnitName
        } else {
            DnType::CustomDnType(vec![2, 5, 4, 11])
        };
        dn.push(ty, *ou);
    }
    params.distinguished_name = dn;
    params.self_signed(&key).unwrap().der().as_ref().to_vec()
}

// ---- handshakes -------------------------------------------------------------------------

#[tokio::test]
async fn generated_pki_completes_a_tls13_handshake_with_h2() {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    let client = with_alpn(client_for(&pki, None), &[b"h2", b"http/1.1"]);

    let (version, greeting) = talk(addr, client, "localhost").await.unwrap();
    let seen = server.await.unwrap().unwrap();

    assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_3));
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(greeting, "ok");
}

#[tokio::test]
async fn server_offers_http11_to_clients_without_h2() {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    let client = with_alpn(client_for(&pki, None), &[b"http/1.1"]);

    talk(addr, client, "localhost").await.unwrap();
    let seen = server.await.unwrap().unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn client_without_certificate_is_accepted_and_seen_as_anonymous() {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;

    let (_, greeting) = talk(addr, client_for(&pki, None), "localhost")
        .await
        .unwrap();
    let seen = server.await.unwrap().unwrap();

    assert_eq!(greeting, "ok");
    assert!(seen.leaf.is_none());
}

#[tokio::test]
async fn each_role_certificate_is_verified_and_yields_its_identity() {
    let pki = dev_pki();
    for role in AdminRole::ALL {
        let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
        let (version, greeting) = talk(addr, client_for(&pki, Some(role)), "localhost")
            .await
            .unwrap();
        let seen = server.await.unwrap().unwrap();

        assert_eq!(version, Some(ProtocolVersion::TLSv1_3));
        assert_eq!(greeting, "ok");
        let leaf = seen.leaf.expect("server sees the client certificate");
        let (cert_pem, _) = pki.client(role).unwrap();
        assert_eq!(leaf, der_of(cert_pem));
        let identity = admin_identity(&leaf).expect("identity from role certificate");
        assert_eq!(identity.role, role);
        assert_eq!(identity.common_name, format!("{role}-user"));
    }
}

#[tokio::test]
async fn client_certificate_from_another_ca_fails_the_handshake() {
    let pki = dev_pki();
    let other = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    // Trusts the right server CA, but presents a certificate issued by another CA.
    let (cert, key) = other.client(AdminRole::Admin).unwrap();
    let client = client_config(Some(&pki.ca_pem), Some(cert), Some(key.expose_secret())).unwrap();

    let client_result = talk(addr, client, "localhost").await;
    let server_result = server.await.unwrap();

    assert!(
        matches!(server_result, Err(TlsError::Handshake(_))),
        "server must refuse: {server_result:?}"
    );
    assert!(
        client_result.is_err(),
        "client must not get through: {client_result:?}"
    );
}

#[tokio::test]
async fn server_without_admin_ca_never_sees_client_certificates() {
    let pki = dev_pki();
    let config = server_config_from_pem(
        &pki.server_chain_pem(),
        pki.server_key_pem.expose_secret(),
        None,
    )
    .unwrap();
    let (addr, server) = serve_one(config).await;

    talk(addr, client_for(&pki, Some(AdminRole::Admin)), "localhost")
        .await
        .unwrap();
    assert!(server.await.unwrap().unwrap().leaf.is_none());
}

#[tokio::test]
async fn client_refuses_a_server_from_an_untrusted_ca() {
    let pki = dev_pki();
    let other = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;

    let client = client_config(Some(&other.ca_pem), None, None).unwrap();
    assert!(talk(addr, client, "localhost").await.is_err());
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn default_roots_do_not_trust_the_dev_ca() {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;

    let client = client_config(None, None, None).unwrap();
    assert!(talk(addr, client, "localhost").await.is_err());
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn tls12_only_client_is_accepted_with_its_certificate() {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    let (cert, key) = pki.client(AdminRole::Security).unwrap();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(root_store(&pki.ca_pem, "ca").unwrap())
        .with_client_auth_cert(
            parse_certs(cert, "cert").unwrap(),
            parse_key(key.expose_secret(), "key").unwrap(),
        )
        .unwrap();

    let (version, greeting) = talk(addr, Arc::new(client), "localhost").await.unwrap();
    let seen = server.await.unwrap().unwrap();

    assert_eq!(version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(seen.version, Some(ProtocolVersion::TLSv1_2));
    assert_eq!(greeting, "ok");
    let identity = admin_identity(&seen.leaf.unwrap()).unwrap();
    assert_eq!(identity.role, AdminRole::Security);
}

/// A hand-made ClientHello offering at most `version` (rustls cannot build pre-1.2 ones),
/// with ECDHE-ECDSA/RSA-AES128-SHA and ECDHE-ECDSA-AES128-GCM-SHA256.
fn raw_client_hello(version: [u8; 2]) -> Vec<u8> {
    let mut body = version.to_vec(); // client_version
    body.extend([0x42; 32]); // random
    body.push(0); // empty session id
    body.extend([0x00, 0x06, 0xc0, 0x09, 0xc0, 0x13, 0xc0, 0x2b]);
    body.extend([0x01, 0x00]); // null compression
    let extensions = [
        0x00, 0x0a, 0x00, 0x04, 0x00, 0x02, 0x00, 0x17, // supported_groups: secp256r1
        0x00, 0x0b, 0x00, 0x02, 0x01, 0x00, // ec_point_formats: uncompressed
        // signature_algorithms (not a TLS 1.1 extension, but without it rustls stops earlier
        // with handshake_failure; with it the refusal is about the version alone)
        0x00, 0x0d, 0x00, 0x06, 0x00, 0x04, 0x04, 0x03, 0x04, 0x01,
    ];
    body.extend(u16::try_from(extensions.len()).unwrap().to_be_bytes());
    body.extend(extensions);
    let mut handshake = vec![0x01]; // ClientHello
    handshake.extend(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `hello` to a fresh test server; returns the first 7 bytes of its answer and the
/// server's handshake result (after the client has hung up).
async fn answer_to(hello: &[u8]) -> ([u8; 7], Result<Seen, TlsError>) {
    let pki = dev_pki();
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(hello).await.unwrap();
    let mut reply = [0u8; 7];
    tcp.read_exact(&mut reply).await.unwrap();
    drop(tcp);
    (reply, server.await.unwrap())
}

#[tokio::test]
async fn tls11_and_tls10_client_hellos_are_refused_with_protocol_version_alert() {
    for version in [[0x03, 0x02], [0x03, 0x01]] {
        let (reply, server) = answer_to(&raw_client_hello(version)).await;
        assert_eq!(reply[0], 0x15, "alert record for {version:?}");
        assert_eq!(reply[5], 2, "fatal");
        assert_eq!(reply[6], 70, "protocol_version");
        assert!(matches!(server, Err(TlsError::Handshake(_))));
    }
    // The same bytes offering TLS 1.2 get a ServerHello: the refusal above is the version's.
    let (reply, _) = answer_to(&raw_client_hello([0x03, 0x03])).await;
    assert_eq!(reply[0], 0x16, "handshake record");
    assert_eq!(reply[5], 0x02, "ServerHello");
}

#[tokio::test]
async fn silent_client_hits_the_handshake_timeout() {
    let pki = dev_pki();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let acceptor = TlsAcceptor::from(server_with_admin_ca(&pki));

    let result = accept(&acceptor, tcp, Duration::from_millis(200)).await;
    assert!(matches!(result, Err(TlsError::HandshakeTimeout(_))));
}

#[tokio::test]
async fn server_certificate_covers_loopback_ips_and_extra_names() {
    let pki = generate_pki(&["broker.internal".into(), "10.1.2.3".into()], &SystemClock).unwrap();
    for name in ["127.0.0.1", "::1", "broker.internal", "10.1.2.3"] {
        let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
        talk(addr, client_for(&pki, None), name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        server.await.unwrap().unwrap();
    }
    let (addr, server) = serve_one(server_with_admin_ca(&pki)).await;
    assert!(
        talk(addr, client_for(&pki, None), "example.com")
            .await
            .is_err()
    );
    drop(server.await);
}

// ---- configuration errors ---------------------------------------------------------------

#[test]
fn server_config_refuses_a_key_that_does_not_match_the_certificate() {
    let pki = dev_pki();
    let (_, client_key) = pki.client(AdminRole::Admin).unwrap();
    let result = server_config_from_pem(&pki.server_pem, client_key.expose_secret(), None);
    assert!(
        matches!(
            result,
            Err(TlsError::Config(rustls::Error::InconsistentKeys(_)))
        ),
        "{result:?}"
    );
}

#[test]
fn malformed_or_missing_pem_is_refused_without_echoing_it() {
    let pki = dev_pki();
    let key = pki.server_key_pem.expose_secret();

    let no_key = server_config_from_pem(&pki.server_pem, &pki.server_pem, None).unwrap_err();
    assert!(matches!(no_key, TlsError::NoPrivateKey(_)));

    let no_cert = server_config_from_pem(key, key, None).unwrap_err();
    assert!(matches!(no_cert, TlsError::NoCertificate(_)));

    // A key with a corrupted body: the error must not contain any of it.
    let corrupted = key.replacen('\n', "\n!!!!", 1);
    let err = server_config_from_pem(&pki.server_pem, &corrupted, None).unwrap_err();
    let body_line = key.lines().nth(1).unwrap();
    assert!(!err.to_string().contains(body_line));
    assert!(!format!("{err:?}").contains(body_line));
}

#[test]
fn client_config_needs_both_certificate_and_key() {
    let pki = dev_pki();
    let (cert, key) = pki.client(AdminRole::Auditor).unwrap();
    assert!(matches!(
        client_config(Some(&pki.ca_pem), Some(cert), None),
        Err(TlsError::NoPrivateKey(_))
    ));
    assert!(matches!(
        client_config(Some(&pki.ca_pem), None, Some(key.expose_secret())),
        Err(TlsError::NoCertificate(_))
    ));
    assert!(matches!(
        client_config(Some(""), None, None),
        Err(TlsError::NoCertificate(_))
    ));
}

// ---- admin identities -------------------------------------------------------------------

#[test]
fn unknown_ou_yields_no_identity() {
    assert!(admin_identity(&leaf_with_subject(Some("mallory"), &["superuser"])).is_none());
}

#[test]
fn role_must_be_exactly_one_lowercase_ou_and_cn_must_be_present() {
    assert!(admin_identity(&leaf_with_subject(Some("alice"), &[])).is_none());
    let two_ous = leaf_with_subject(Some("alice"), &["admin", "auditor"]);
    let (_, parsed) = X509Certificate::from_der(&two_ous).unwrap();
    assert_eq!(parsed.subject().iter_organizational_unit().count(), 2);
    assert!(admin_identity(&two_ous).is_none());
    assert!(admin_identity(&leaf_with_subject(Some("alice"), &["Admin"])).is_none());
    assert!(admin_identity(&leaf_with_subject(Some("alice"), &["admin "])).is_none());
    assert!(admin_identity(&leaf_with_subject(None, &["admin"])).is_none());
    assert!(admin_identity(&leaf_with_subject(Some(" "), &["admin"])).is_none());
    assert!(admin_identity(b"not a certificate").is_none());

    let id = admin_identity(&leaf_with_subject(Some("alice"), &["auditor"])).unwrap();
    assert_eq!(
        id,
        AdminIdentity {
            common_name: "alice".into(),
            role: AdminRole::Auditor
        }
    );
}

#[test]
fn roles_serialize_lowercase() {
    assert_eq!(
        serde_json::to_string(&AdminRole::ALL).unwrap(),
        r#"["admin","security","auditor"]"#
    );
}

// ---- generated certificates ---------------------------------------------------------------

#[test]
fn generated_certificates_follow_the_dev_pki_profile() {
    const NOW: i64 = 1_800_000_000;
    let pki = generate_pki(&["broker.internal".into()], &FixedClock::at(NOW)).unwrap();

    let mut all = vec![der_of(&pki.ca_pem), der_of(&pki.server_pem)];
    all.extend(pki.clients.iter().map(|(_, cert, _)| der_of(cert)));
    let mut serials = Vec::new();
    for der in &all {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), NOW - 300);
        assert_eq!(cert.validity().not_after.timestamp(), NOW + 365 * 86_400);
        let serial = cert.raw_serial();
        assert!(serial.len() >= 15, "random serial");
        assert_eq!(serial[0] & 0x80, 0, "positive serial");
        serials.push(serial.to_vec());
        match cert.public_key().parsed().unwrap() {
            PublicKey::EC(point) => assert_eq!(point.key_size(), 256),
            other => panic!("not an EC key: {other:?}"),
        }
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), all.len(), "serials are distinct");

    let (_, ca) = X509Certificate::from_der(&all[0]).unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    let (_, server) = X509Certificate::from_der(&all[1]).unwrap();
    assert!(
        server
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    let sans = &server
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let has_dns = |n: &str| {
        sans.iter()
            .any(|s| matches!(s, GeneralName::DNSName(d) if *d == n))
    };
    let has_ip = |ip: &[u8]| {
        sans.iter()
            .any(|s| matches!(s, GeneralName::IPAddress(a) if *a == ip))
    };
    assert!(has_dns("localhost") && has_dns("broker.internal"));
    assert!(has_ip(&[127, 0, 0, 1]));
    assert!(has_ip(&std::net::Ipv6Addr::LOCALHOST.octets()));

    for (role, cert, _) in &pki.clients {
        let der = der_of(cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        let ou: Vec<_> = cert.subject().iter_organizational_unit().collect();
        assert_eq!(ou.len(), 1);
        assert_eq!(ou[0].as_str().unwrap(), role.as_str());
    }
}

#[test]
fn invalid_extra_san_is_refused() {
    assert!(matches!(
        generate_pki(&["bad name\u{e9}".into()], &SystemClock),
        Err(TlsError::InvalidSan(_))
    ));
    assert!(matches!(
        generate_pki(&[" ".into()], &SystemClock),
        Err(TlsError::InvalidSan(_))
    ));
}

#[test]
fn debug_output_hides_private_keys() {
    let pki = dev_pki();
    let shown = format!("{pki:?}");
    assert!(shown.contains("[REDACTED]"));
    assert!(!shown.contains("PRIVATE KEY"));
    let key_line = pki.server_key_pem.expose_secret().lines().nth(1).unwrap();
    assert!(!shown.contains(key_line));
}

// ---- certs init ---------------------------------------------------------------------------

const ALL_FILES: [(&str, bool); 10] = [
    ("ca.pem", false),
    ("ca-key.pem", true),
    ("server.pem", false),
    ("server-key.pem", true),
    ("admin.pem", false),
    ("admin-key.pem", true),
    ("security.pem", false),
    ("security-key.pem", true),
    ("auditor.pem", false),
    ("auditor-key.pem", true),
];

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn certs_init_writes_every_file_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs/dev");
    let written = certs_init(&dir, &[], false, &SystemClock).unwrap();

    let expected: Vec<PathBuf> = ALL_FILES.iter().map(|(n, _)| dir.join(n)).collect();
    assert_eq!(written, expected);
    for (name, secret) in ALL_FILES {
        let path = dir.join(name);
        let text = fs::read_to_string(&path).unwrap();
        if secret {
            assert_eq!(mode(&path), 0o600, "{name}");
            assert!(text.contains("PRIVATE KEY"), "{name}");
        } else {
            assert!(text.contains("BEGIN CERTIFICATE"), "{name}");
        }
    }
    assert_eq!(mode(&dir), 0o700);

    // The files are a working PKI.
    let config = server_config(
        &dir.join("server.pem"),
        &dir.join("server-key.pem"),
        Some(Arc::new(
            AdminClientAuth::load(&dir.join("ca.pem"), None, &SystemClock).unwrap(),
        )),
    )
    .unwrap();
    let ca = fs::read_to_string(dir.join("ca.pem")).unwrap();
    let cert = fs::read_to_string(dir.join("admin.pem")).unwrap();
    let key = fs::read_to_string(dir.join("admin-key.pem")).unwrap();
    let client = client_config(Some(&ca), Some(&cert), Some(&key)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (addr, server) = serve_one(config).await;
        talk(addr, client, "localhost").await.unwrap();
        let leaf = server.await.unwrap().unwrap().leaf.unwrap();
        assert_eq!(admin_identity(&leaf).unwrap().role, AdminRole::Admin);
    });
}

#[cfg(unix)]
#[test]
fn certs_init_refuses_to_overwrite_unless_forced() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    certs_init(dir, &[], false, &SystemClock).unwrap();
    let before = fs::read_to_string(dir.join("admin-key.pem")).unwrap();

    let err = certs_init(dir, &[], false, &SystemClock).unwrap_err();
    assert!(matches!(err, TlsError::Exists(_)));
    assert_eq!(
        fs::read_to_string(dir.join("admin-key.pem")).unwrap(),
        before
    );

    // One file present is enough to refuse, and nothing else is written.
    let lone = tempfile::tempdir().unwrap();
    fs::write(lone.path().join("auditor-key.pem"), "mine").unwrap();
    assert!(matches!(
        certs_init(lone.path(), &[], false, &SystemClock),
        Err(TlsError::Exists(p)) if p.ends_with("auditor-key.pem")
    ));
    assert!(!lone.path().join("ca.pem").exists());
    assert_eq!(
        fs::read_to_string(lone.path().join("auditor-key.pem")).unwrap(),
        "mine"
    );

    // --force replaces everything, and a loosened key file comes back as 0600.
    fs::set_permissions(dir.join("admin-key.pem"), fs::Permissions::from_mode(0o644)).unwrap();
    certs_init(dir, &[], true, &SystemClock).unwrap();
    assert_ne!(
        fs::read_to_string(dir.join("admin-key.pem")).unwrap(),
        before
    );
    assert_eq!(mode(&dir.join("admin-key.pem")), 0o600);
    let leftovers: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}
