//! Admin client certificates can be revoked (`tls.crl`): a revoked certificate fails the TLS
//! handshake, the CRL file is reloaded the way SIGHUP does, a bad file on reload keeps the last
//! good one, and a bad or missing file stops the start naming the setting.

use std::path::Path;

use jobpass::admin_crl::{CrlReload, reload};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber, date_time_ymd,
};
use serde_json::Value;

use crate::support::{Broker, Options, binary, client_with};

/// An admin CA of the test's own.
struct AdminCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// An admin client certificate.
struct AdminCert {
    pem: String,
    key_pem: String,
    serial: SerialNumber,
}

fn admin_ca(cn: &str) -> AdminCa {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(rand::random::<u64>() >> 1));
    let cert = params.self_signed(&key).unwrap();
    AdminCa {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate of `ca` with `OU=admin` and `CN=<cn>`.
fn admin_cert(ca: &AdminCa, cn: &str) -> AdminCert {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationalUnitName, "admin");
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let serial = SerialNumber::from(rand::random::<u64>() >> 1);
    params.serial_number = Some(serial.clone());
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    AdminCert {
        pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial,
    }
}

/// A CRL of `ca` revoking `revoked`, valid until the start of `next_update_year`.
fn crl(ca: &AdminCa, revoked: &[&AdminCert], number: u64, next_update_year: i32) -> String {
    CertificateRevocationListParams {
        this_update: date_time_ymd(2000, 1, 1),
        next_update: date_time_ymd(next_update_year, 1, 1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|c| RevokedCertParams {
                serial_number: c.serial.clone(),
                revocation_time: date_time_ymd(2000, 1, 1),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca.issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// An admin call on a new connection with `cert`: its status, or the error chain of a refused
/// handshake.
async fn admin_call(b: &Broker, cert: &AdminCert) -> Result<u16, String> {
    let client = client_with(Some(&b.pki.ca_pem), Some((&cert.pem, &cert.key_pem)));
    match client
        .get(format!("{}/v1/admin/secrets/prod", b.url))
        .send()
        .await
    {
        Ok(r) => Ok(r.status().as_u16()),
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            Err(chain)
        }
    }
}

/// Refused at the handshake because revoked (not for any other reason).
async fn assert_revoked(b: &Broker, cert: &AdminCert, who: &str) {
    match admin_call(b, cert).await {
        Err(e) => assert!(e.contains("CertificateRevoked"), "{who}: {e}"),
        Ok(s) => panic!("{who}'s revoked certificate was accepted ({s})"),
    }
}

async fn revoked_admin_certificate_fails_the_handshake_and_a_reload_revokes_another() {
    let ca = admin_ca("test admin CA");
    let alice = admin_cert(&ca, "alice");
    let bob = admin_cert(&ca, "bob");
    // A CRL past its nextUpdate still revokes what it lists (the documented choice).
    let b = Broker::start_with(Options {
        admin_ca_pem: Some(ca.pem.clone()),
        admin_crl_pem: Some(crl(&ca, &[&alice], 1, 2001)),
        ..Options::default()
    })
    .await;
    assert_revoked(&b, &alice, "alice").await;
    assert_eq!(admin_call(&b, &bob).await, Ok(200), "bob is not revoked");
    assert_eq!(b.get("/healthz", None).await.0, 200, "no certificate: fine");
    let (_, m) = b.get("/metrics", None).await;
    assert!(
        m.as_str()
            .unwrap()
            .contains("jobpass_admin_crl_next_update_seconds 978307200"),
        "the stale CRL's nextUpdate (2001-01-01) is published: {m}"
    );

    // Bob keeps a connection open (and could resume his TLS session) across the reload.
    let bobs = client_with(Some(&b.pki.ca_pem), Some((&bob.pem, &bob.key_pem)));
    let url = format!("{}/v1/admin/secrets/prod", b.url);
    assert_eq!(bobs.get(&url).send().await.unwrap().status().as_u16(), 200);

    // The file is replaced by a CRL revoking bob; the SIGHUP reload puts it in force.
    let crl_path = b.app.config().tls.crl.clone().unwrap();
    std::fs::write(&crl_path, crl(&ca, &[&bob], 2, 2100)).unwrap();
    match reload(&b.app, "SIGHUP").await {
        CrlReload::Loaded(info) => assert_eq!((info.crls, info.revoked), (1, 1)),
        other => panic!("expected the new CRL in force, got {other:?}"),
    }
    assert_revoked(&b, &bob, "bob").await;
    // His open connection is refused too: every admin call checks the chain again.
    let r = bobs.get(&url).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "bob's kept connection still works"
    );
    assert!(r.text().await.unwrap().contains("revoked or expired"));
    assert_eq!(
        admin_call(&b, &alice).await,
        Ok(200),
        "the new CRL replaced the old one"
    );

    // A bad file on reload changes nothing: bob stays revoked, and it is counted and audited.
    let other = admin_ca("another CA");
    for (bad, reason) in [
        ("not a CRL".to_string(), "no `X509 CRL` PEM block"),
        (
            crl(&other, &[], 1, 2100),
            "is not from a certificate of tls.admin_client_ca",
        ),
    ] {
        std::fs::write(&crl_path, bad).unwrap();
        match reload(&b.app, "SIGHUP").await {
            CrlReload::Rejected(e) => {
                assert!(e.contains("tls.crl") && e.contains(reason), "{e}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_revoked(&b, &bob, "bob after a refused reload").await;
        assert_eq!(admin_call(&b, &alice).await, Ok(200));
    }
    let (_, m) = b.get("/metrics", None).await;
    let m = m.as_str().unwrap();
    assert!(
        m.contains("jobpass_admin_crl_reloads_total{outcome=\"failure\"} 2")
            && m.contains("jobpass_admin_crl_reloads_total{outcome=\"success\"} 1"),
        "{m}"
    );
    let records: Vec<Value> = b
        .audit_records()
        .into_iter()
        .filter(|r| r["event"] == "admin_crl_reload")
        .collect();
    let outcomes: Vec<&str> = records
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["success", "failure", "failure"]);
    assert_eq!(records[0]["details"]["trigger"], "SIGHUP");
    assert!(
        records[2]["details"]["error"]
            .as_str()
            .unwrap()
            .contains("not from a certificate"),
        "{}",
        records[2]
    );
}

fn serve_error(dir: &Path, config: &Path) -> String {
    let out = std::process::Command::new(binary())
        .current_dir(dir)
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn a_missing_or_invalid_crl_stops_the_start_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), policies.join(e.file_name())).unwrap();
    }
    let status = std::process::Command::new(binary())
        .current_dir(dir.path())
        .args(["keys", "generate", "--out", "root.key"])
        .status()
        .unwrap();
    assert!(status.success());
    let ca = admin_ca("test admin CA");
    std::fs::write(dir.path().join("admin-ca.pem"), &ca.pem).unwrap();
    let pki = jobpass::tls::generate_pki(&[], &jobpass::clock::SystemClock).unwrap();
    std::fs::write(dir.path().join("server.pem"), &pki.server_pem).unwrap();
    std::fs::write(
        dir.path().join("server-key.pem"),
        secrecy::ExposeSecret::expose_secret(&pki.server_key_pem),
    )
    .unwrap();
    let config = dir.path().join("jobpass.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:0\"\nstore = \"sqlite://jobpass.db\"\n\
         [tls]\ncert = \"server.pem\"\nkey = \"server-key.pem\"\n\
         admin_client_ca = \"admin-ca.pem\"\ncrl = \"crl.pem\"\n\
         [keys]\nroot_key_file = \"root.key\"\n[audit]\nfile = \"audit.log\"\n\
         [[issuer]]\nurl = \"https://token.actions.githubusercontent.com\"\n\
         [[issuer]]\nurl = \"https://gitlab.com\"\n",
    )
    .unwrap();
    let crl_path = dir.path().join("crl.pem");
    let err = serve_error(dir.path(), &config);
    assert!(
        err.contains("tls.crl: cannot read") && err.contains(&crl_path.display().to_string()),
        "{err}"
    );
    let other = admin_ca("another CA");
    let cert = admin_cert(&ca, "alice");
    for (text, reason) in [
        (cert.pem.clone(), "no `X509 CRL` PEM block"),
        (
            crl(&other, &[], 1, 2100),
            "the CRL of `CN=another CA` is not from a certificate of tls.admin_client_ca",
        ),
    ] {
        std::fs::write(&crl_path, text).unwrap();
        let err = serve_error(dir.path(), &config);
        assert!(err.contains("tls.crl") && err.contains(reason), "{err}");
    }
    // And with a good CRL the same configuration gets past the CRL (to the listener it asked).
    std::fs::write(&crl_path, crl(&ca, &[&cert], 1, 2100)).unwrap();
    let mut child = std::process::Command::new(binary())
        .current_dir(dir.path())
        .args(["serve", "--config", config.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let listening = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.contains("jobpass listening") || l.contains("error"))
    })
    .await
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        listening
            .as_deref()
            .is_some_and(|l| l.contains("jobpass listening")),
        "{listening:?}"
    );
}

crate::support::harness::cases! {
    EachStore: [
        revoked_admin_certificate_fails_the_handshake_and_a_reload_revokes_another,
    ],
    Once: [
        a_missing_or_invalid_crl_stops_the_start_naming_the_setting,
    ],
}
