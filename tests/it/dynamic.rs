//! Dynamic credentials (SPEC §1, §3): real PostgreSQL login roles and X.509 client
//! certificates, born for one job and dead at revocation or expiry. The PostgreSQL tests run
//! against the real server on 127.0.0.1:5432 (or JOBPASS_TEST_POSTGRES_URL); the harness
//! lists them as ignored where there is none.

use std::sync::Arc;

use jobpass::store::{ExternalRevocation, PgIntent};
use jobpass::tls::AdminRole;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::support::{Broker, Options, pg, proxy::Proxy};

/// The broker-side URL of a server: TLS off on loopback (see support::pg::options).
fn broker_url(admin: &str, port: Option<u16>) -> String {
    let mut u = admin.to_string();
    if let Some(p) = port {
        u = u.replace(":5432", &format!(":{p}"));
    }
    if u.contains('?') {
        format!("{u}&sslmode=disable")
    } else {
        format!("{u}?sslmode=disable")
    }
}

/// A broker whose revocation worker does not run by itself: each test runs it
/// (`revocation::run_due`, `reconcile_intents`) at the moment it means to, so nothing waits on a
/// background cadence.
async fn pg_broker(admin: &str, port: Option<u16>) -> Broker {
    pg::ensure_reader_group(admin).await;
    Broker::start_with(Options {
        postgres_url: Some(broker_url(admin, port)),
        no_background: true,
        ..Options::default()
    })
    .await
}

async fn revoke_lease(b: &Broker, lease: &str) {
    let (s, v) = b
        .request(
            &b.admin(AdminRole::Security),
            "POST",
            "/v1/admin/revoke",
            None,
            Some(json!({"selector": {"lease_id": lease}, "reason": "INC-9"}).to_string()),
        )
        .await;
    assert_eq!((s, v["revoked"].as_u64()), (200, Some(1)), "{v}");
}

/// One pass of the revocation worker, then the lease as it left it.
async fn run_worker(b: &Broker, lease: &str) -> jobpass::store::LeaseRow {
    jobpass::leases::teardown::run_due(&b.app).await;
    b.app.store().lease(lease).await.unwrap().unwrap()
}

/// `POST /v1/admin/keys/data/destroy`, confirmed.
async fn shred_data(b: &Broker) -> (u16, serde_json::Value) {
    b.request(
        &b.admin(AdminRole::Admin),
        "POST",
        "/v1/admin/keys/data/destroy",
        None,
        Some(json!({"reason": "decommission", "confirm": "data"}).to_string()),
    )
    .await
}

fn events(b: &Broker, lease: &str) -> Vec<String> {
    b.audit_records()
        .into_iter()
        .filter(|r| r["lease_id"] == lease)
        .map(|r| r["event"].as_str().unwrap().to_string())
        .collect()
}

async fn postgres_credential_logs_in_with_exactly_its_groups_rights_and_dies_at_revocation() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    let (s, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("db-reader"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let c = &v["credentials"][0];
    assert_eq!(c["kind"], "postgres");
    let user = c["username"].as_str().unwrap().to_string();
    let password = c["password"].as_str().unwrap().to_string();
    assert!(user.starts_with("jp_"));
    assert_eq!(c["host"], "127.0.0.1");
    assert_eq!(c["port"], 5432);
    assert_eq!(c["database"], "postgres");

    // The server trusts loopback, so prove the password against the verifier it stores.
    assert!(
        pg::password_matches(&admin, &user, &password).await,
        "the minted password is the role's"
    );
    assert!(!pg::password_matches(&admin, &user, "not-the-password").await);
    let exp = humantime::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        pg::valid_until(&admin, &user).await,
        Some(jobpass::clock::unix_seconds(exp))
    );
    assert_eq!(
        pg::member_of(&admin, &user).await,
        vec![pg::READER_GROUP.to_string()]
    );
    assert_eq!(
        pg::attributes(&admin, &user).await,
        (false, false, false, true)
    );

    // It can do what its group allows and nothing more.
    let mut conn = pg::connect_as(&admin, &user).await.unwrap();
    let name: String = sqlx::query_scalar("SELECT name FROM jp_it.items WHERE id = 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "one");
    assert!(
        sqlx::query("INSERT INTO jp_it.items VALUES (99, 'x')")
            .execute(&mut conn)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("CREATE TABLE jp_it.mine (x int)")
            .execute(&mut conn)
            .await
            .is_err()
    );

    // Revocation terminates the open session and drops the role.
    revoke_lease(&b, &lease).await;
    let l = run_worker(&b, &lease).await;
    assert_eq!(l.revocation.map(ExternalRevocation::as_str), Some("done"));
    assert!(!pg::role_exists(&admin, &user).await);
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "the open session was terminated"
    );
    assert!(
        pg::connect_as(&admin, &user).await.is_err(),
        "cannot log in after revocation"
    );
    let ev = events(&b, &lease);
    assert!(ev.contains(&"revocation_done".to_string()), "{ev:?}");
    // The password never reached the audit log or the store files.
    assert!(!b.audit_text().contains(&password));
}

async fn database_down_during_revocation_is_pending_then_done_when_it_returns() {
    let admin = pg::admin_url();
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let b = pg_broker(&admin, Some(proxy.port())).await;
    let (s, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("db-reader"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let user = v["credentials"][0]["username"]
        .as_str()
        .unwrap()
        .to_string();

    proxy.pause();
    revoke_lease(&b, &lease).await;
    // One failed attempt, still pending; not retried before its backoff is over.
    let l = run_worker(&b, &lease).await;
    assert_eq!(
        (
            l.revocation.map(ExternalRevocation::as_str),
            l.revocation_attempts
        ),
        (Some("pending"), 1)
    );
    let l = run_worker(&b, &lease).await;
    assert_eq!(l.revocation_attempts, 1, "retried before its backoff");
    let (_, list) = b
        .request(
            &b.admin(AdminRole::Auditor),
            "GET",
            "/v1/admin/leases?environment=data",
            None,
            None,
        )
        .await;
    assert_eq!(list["leases"][0]["revocation"], "pending", "{list}");
    assert!(
        pg::role_exists(&admin, &user).await,
        "still there while the database is unreachable"
    );

    proxy.resume();
    b.clock.advance(2);
    let l = run_worker(&b, &lease).await;
    assert_eq!(
        (
            l.revocation.map(ExternalRevocation::as_str),
            l.revocation_attempts
        ),
        (Some("done"), 2)
    );
    assert!(!pg::role_exists(&admin, &user).await);
    let ev = events(&b, &lease);
    assert!(
        ev.contains(&"revocation_retry".to_string()) && ev.contains(&"revocation_done".to_string()),
        "{ev:?}"
    );
}

async fn a_crash_between_role_creation_and_lease_commit_leaves_no_orphan() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    // Exactly what a crash leaves: the intent is recorded and the role exists, no lease.
    let role = jobpass::mint::postgres::new_role_name().unwrap();
    let intent = PgIntent {
        role_name: role.clone(),
        target: "main".into(),
        env: "data".into(),
        lease_id: "lse_never_committed".into(),
    };
    let password = jobpass::mint::postgres::new_password().unwrap();
    b.app
        .pg_target("main")
        .unwrap()
        .create_role(
            &role,
            &password,
            crate::support::now() + 600,
            &[pg::READER_GROUP.to_string()],
        )
        .await
        .unwrap();
    // Recorded long enough ago that no exchange can still be in flight for it (the role is
    // created first here only so this broker's own reconciliation cannot run in between).
    let then = crate::support::now() - 600;
    b.app.store().insert_intent(&intent, then).await.unwrap();
    assert!(pg::role_exists(&admin, &role).await);
    assert!(!password.expose_secret().is_empty());

    // What the worker does first on the restarted broker.
    let b = b.restart().await;
    assert_eq!(
        jobpass::leases::teardown::reconcile_intents(&b.app).await,
        1
    );
    assert!(
        !pg::role_exists(&admin, &role).await,
        "orphan role still exists after reconciliation"
    );
    assert!(b.app.store().intents(i64::MAX).await.unwrap().is_empty());
    assert!(
        b.audit_records()
            .iter()
            .any(|r| r["event"] == "orphan_role_dropped")
    );
    // A normal exchange leaves no intent behind either.
    assert_eq!(
        b.exchange(&b.github_token_for("data"), "data", Some("db-reader"))
            .await
            .0,
        200
    );
    assert!(b.app.store().intents(i64::MAX).await.unwrap().is_empty());
}

async fn an_expired_database_credential_is_dropped_by_the_broker() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    let (_, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("db-reader"))
        .await;
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let user = v["credentials"][0]["username"]
        .as_str()
        .unwrap()
        .to_string();
    b.clock.advance(11 * 60);
    jobpass::leases::sweeper::sweep(&b.app).await.unwrap();
    let l = run_worker(&b, &lease).await;
    assert_eq!(l.revocation.map(ExternalRevocation::as_str), Some("done"));
    assert!(!pg::role_exists(&admin, &user).await);
}

fn parse_cert(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The serial of a PEM certificate, lowercase hex.
fn cert_serial(pem: &str) -> String {
    let der = parse_cert(pem);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    x.raw_serial_as_string().replace(':', "").to_lowercase()
}

/// The serials of `env`'s CRL, its signature checked against the environment's CA.
async fn crl_serials(b: &Broker, env: &str) -> Vec<String> {
    use rustls_pki_types::pem::PemObject;
    let (_, ca) = b.get(&format!("/v1/envs/{env}/ca.pem"), None).await;
    let (_, crl) = b.get(&format!("/v1/envs/{env}/crl.pem"), None).await;
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(
        crl.as_str().unwrap().as_bytes(),
    )
    .unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(der.as_ref()).unwrap();
    let ca_der = parse_cert(ca.as_str().unwrap());
    let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    crl.verify_signature(ca_cert.public_key()).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| r.raw_serial_as_string().replace(':', "").to_lowercase())
        .collect()
}

/// A TLS server requiring client certificates from `client_ca`; returns whether a client
/// presenting `cert`/`key` completes the handshake.
async fn mtls_handshake(b: &Broker, client_ca: &str, cert: &str, key: &str) -> bool {
    use rustls_pki_types::pem::PemObject;
    let provider = jobpass::tls::provider();
    let roots = jobpass::tls::root_store(client_ca, "client CA").unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain = rustls_pki_types::CertificateDer::pem_slice_iter(b.pki.server_pem.as_bytes())
        .map(Result::unwrap)
        .collect();
    let skey = rustls_pki_types::PrivateKeyDer::from_pem_slice(
        b.pki.server_key_pem.expose_secret().as_bytes(),
    )
    .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, skey)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.ok()?;
        use tokio::io::AsyncWriteExt;
        s.write_all(b"ok").await.ok()?;
        s.shutdown().await.ok()
    });
    let client = jobpass::tls::client_config(Some(&b.pki.ca_pem), Some(cert), Some(key)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let ok = match connector.connect(name, tcp).await {
        Ok(mut s) => {
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await.is_ok() && buf == b"ok"
        }
        Err(_) => false,
    };
    let served = srv.await.unwrap().is_some();
    ok && served
}

async fn x509_certificate_verifies_against_the_environment_ca_and_lands_in_the_crl() {
    let b = Broker::start().await;
    let (s, v) = b
        .exchange(&b.github_token_for("pki"), "pki", Some("mtls"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let c = &v["credentials"][0];
    assert_eq!(c["kind"], "x509");
    let cert = c["certificate_pem"].as_str().unwrap();
    let key = c["private_key_pem"].as_str().unwrap();
    let (s, ca) = b.get("/v1/envs/pki/ca.pem", None).await;
    assert_eq!(s, 200);
    let ca = ca.as_str().unwrap().to_string();
    assert_eq!(ca, c["ca_pem"].as_str().unwrap());

    // A real TLS verifier accepts it; a certificate from another CA is refused.
    assert!(
        mtls_handshake(&b, &ca, cert, key).await,
        "verifies against ca.pem"
    );
    assert!(
        !mtls_handshake(&b, &b.pki.ca_pem, cert, key).await,
        "refused under another CA"
    );

    let der = parse_cert(cert);
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let exp = humantime::parse_rfc3339(c["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        x.validity().not_after.timestamp(),
        jobpass::clock::unix_seconds(exp)
    );
    let san = x.subject_alternative_name().unwrap().unwrap();
    let uris: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(uris, vec![format!("jobpass://pki/mtls/{lease}")]);
    assert!(x.extended_key_usage().unwrap().unwrap().value.client_auth);
    let serial = cert_serial(cert);

    assert!(!crl_serials(&b, "pki").await.contains(&serial));
    revoke_lease(&b, &lease).await;
    assert_eq!(crl_serials(&b, "pki").await, vec![serial]);
    // The private key never reaches the audit log.
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!b.audit_text().contains(&key_body[..40]));
}

async fn revoking_one_jwt_leaves_the_leases_database_role_and_certificate_alive() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    b.put_secret("data", "data/app", json!({"k": "v"})).await;
    let (s, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("every-kind"))
        .await;
    assert_eq!(s, 200, "{v}");
    let lease = v["lease_id"].as_str().unwrap().to_string();
    let cred = |name: &str| {
        v["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let token = cred("api")["token"].as_str().unwrap().to_string();
    let jwt = cred("deploy")["token"].as_str().unwrap().to_string();
    let user = cred("db")["username"].as_str().unwrap().to_string();
    let serial = cert_serial(cred("mtls")["certificate_pem"].as_str().unwrap());

    // A downstream service revokes the JWT it was sent: only the JWT dies.
    assert_eq!(b.oauth_revoke(&jwt).await, 200);
    let l = run_worker(&b, &lease).await;
    assert_eq!((l.revoked_at, l.revocation), (None, None));
    assert!(
        pg::role_exists(&admin, &user).await,
        "the database role lives"
    );
    assert!(pg::connect_as(&admin, &user).await.is_ok());
    assert!(
        crl_serials(&b, "data").await.is_empty(),
        "the certificate is not revoked"
    );
    assert_eq!(
        b.get("/v1/secrets/data/data/app", Some(&token)).await.0,
        200,
        "the broker token still reads"
    );

    // The broker token ends the whole lease: role dropped, certificate in the CRL.
    assert_eq!(b.oauth_revoke(&token).await, 200);
    let l = run_worker(&b, &lease).await;
    assert!(l.revoked_at.is_some());
    assert_eq!(l.revocation, Some(ExternalRevocation::Done));
    assert!(!pg::role_exists(&admin, &user).await);
    assert_eq!(crl_serials(&b, "data").await, vec![serial]);
}

async fn a_policy_naming_an_unconfigured_database_is_refused() {
    let b = Broker::start().await;
    std::fs::write(
        b.policy_dir().join("data.toml"),
        crate::support::data_policy(&b.gh.issuer_url()),
    )
    .unwrap();
    match jobpass::policy::reload::reload(&b.app, "test").await {
        jobpass::policy::reload::Reload::Rejected(e) => {
            assert!(e.contains("data.toml") && e.contains("main"), "{e}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn shredding_an_environment_drops_its_database_roles_first() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    let (_, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("db-reader"))
        .await;
    let user = v["credentials"][0]["username"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(pg::role_exists(&admin, &user).await);
    let (s, v) = shred_data(&b).await;
    assert_eq!(s, 200, "{v}");
    assert!(
        !pg::role_exists(&admin, &user).await,
        "the role died before the keys did"
    );
    // The intent is on record before the keys go, the outcome after.
    let events: Vec<String> = b
        .audit_records()
        .iter()
        .filter_map(|r| r["event"].as_str().map(str::to_string))
        .filter(|e| e.starts_with("key_destroy"))
        .collect();
    assert_eq!(events, ["key_destroy_begin", "key_destroy"]);
}

async fn shredding_drops_the_roles_of_leases_that_expired_but_were_not_swept() {
    let admin = pg::admin_url();
    let b = pg_broker(&admin, None).await;
    let (_, v) = b
        .exchange(&b.github_token_for("data"), "data", Some("db-reader"))
        .await;
    let user = v["credentials"][0]["username"]
        .as_str()
        .unwrap()
        .to_string();
    // Expired, the sweeper has not run: no revocation was ever started for it.
    b.clock.advance(11 * 60);
    assert!(pg::role_exists(&admin, &user).await);
    let (s, v) = shred_data(&b).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked"], 0, "{v}");
    assert!(
        !pg::role_exists(&admin, &user).await,
        "an expired lease's role died before the keys did"
    );
}

crate::support::harness::cases! {
    EachStore: [
        x509_certificate_verifies_against_the_environment_ca_and_lands_in_the_crl,
        a_policy_naming_an_unconfigured_database_is_refused,
    ],
    EachStoreWithPostgres: [
        postgres_credential_logs_in_with_exactly_its_groups_rights_and_dies_at_revocation,
        revoking_one_jwt_leaves_the_leases_database_role_and_certificate_alive,
        database_down_during_revocation_is_pending_then_done_when_it_returns,
        a_crash_between_role_creation_and_lease_commit_leaves_no_orphan,
        an_expired_database_credential_is_dropped_by_the_broker,
        shredding_an_environment_drops_its_database_roles_first,
        shredding_drops_the_roles_of_leases_that_expired_but_were_not_swept,
    ],
}
