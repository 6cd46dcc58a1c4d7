//! The PostgreSQL login roles of `kind = "postgres"` credentials, made and dropped through
//! `jobpass::mint::postgres::PgTarget` against the real server (127.0.0.1:5432 or
//! JOBPASS_TEST_POSTGRES_URL; the harness lists these tests as ignored where there is none).
//! They prove that:
//! - our SCRAM-SHA-256 math accepts the verifier the server itself computed for a password,
//!   and only for that password;
//! - a minted role stores a verifier of its password (and no other), is `LOGIN NOSUPERUSER
//!   NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 10`, valid
//!   until exactly the requested second, a member of exactly its group; logged in, it reads
//!   what the group may read and is refused (42501) writing, creating tables or roles;
//!   creating it again is an error that quotes neither the password nor a verifier;
//! - dropping a role ends its sessions and only its sessions, forbids new logins, leaves
//!   nothing it owned, and succeeds again (or for a role that never existed);
//! - an unknown, superuser or hostile `member_of` group is refused and leaves no role behind;
//!   role names outside the generated pattern never reach the server;
//! - `roles_with_prefix` lists exactly the roles with that prefix (`_` is no wildcard) and
//!   refuses an empty prefix.
//!
//! Roles are cluster-wide: every role and schema made here has a unique name and is dropped
//! after its test, even when the test fails.

use std::future::Future;
use std::time::Duration;

use jobpass::mint::MintError;
use jobpass::mint::postgres::{PgTarget, new_password, new_role_name, quote_ident, scram_check};
use secrecy::ExposeSecret;
use sqlx::postgres::{PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection};

use crate::support::pg;

/// 12 random lowercase characters, for unique role and schema names.
fn suffix() -> String {
    new_role_name().unwrap()[3..15].to_string()
}

/// The admin URL as a `PgTarget` takes it: `sslmode=disable` added where [`pg::options`]
/// turns TLS off (loopback without an explicit `sslmode`).
fn target_url(admin_url: &str) -> String {
    let tls_off = matches!(
        pg::options(admin_url).unwrap().get_ssl_mode(),
        PgSslMode::Disable
    );
    if tls_off && !admin_url.contains("sslmode") {
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        format!("{admin_url}{sep}sslmode=disable")
    } else {
        admin_url.to_string()
    }
}

/// The target under test, a direct admin pool and the admin URL the harness found (it runs
/// these tests only when it found a server, so none is a failure here).
async fn server() -> (PgTarget, PgPool, String) {
    let url = pg::admin_url();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(3))
        .connect_with(pg::options(&url).unwrap())
        .await
        .unwrap_or_else(|e| panic!("admin pool on {url}: {e}"));
    (PgTarget::new("main", &target_url(&url)).unwrap(), pool, url)
}

async fn exec(pool: &PgPool, sql: String) {
    sqlx::query(AssertSqlSafe(sql)).execute(pool).await.unwrap();
}

/// The SCRAM verifier the server stores for `role`; panics if it has none.
async fn stored_verifier(admin_url: &str, role: &str) -> String {
    pg::stored_verifier(admin_url, role)
        .await
        .unwrap_or_else(|| panic!("no stored password for {role}"))
}

/// Runs `body`, then always drops the listed roles and schemas (even when `body` panicked),
/// then re-raises the panic.
async fn with_cleanup<F>(
    admin: PgPool,
    admin_url: &str,
    roles: Vec<String>,
    schemas: Vec<String>,
    body: F,
) where
    F: Future<Output = ()> + Send + 'static,
{
    let outcome = tokio::spawn(body).await;
    for schema in &schemas {
        drop(
            sqlx::query(AssertSqlSafe(format!(
                "DROP SCHEMA IF EXISTS {} CASCADE",
                quote_ident(schema)
            )))
            .execute(&admin)
            .await,
        );
    }
    let target = PgTarget::new("cleanup", &target_url(admin_url)).unwrap();
    for role in &roles {
        if target.drop_role(role).await.is_err() {
            drop(
                sqlx::query(AssertSqlSafe(format!(
                    "DROP ROLE IF EXISTS {}",
                    quote_ident(role)
                )))
                .execute(&admin)
                .await,
            );
        }
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scram_math_matches_what_postgres_computes() {
    let (_, admin, url) = server().await;
    let role = format!("jp_test_scram_{}", suffix());
    let (a, u, r) = (admin.clone(), url.clone(), role.clone());
    with_cleanup(admin, &url, vec![role], vec![], async move {
        // Let the server hash a known password itself, then check it with our math.
        let mut tx = a.begin().await.unwrap();
        sqlx::query("SET LOCAL password_encryption = 'scram-sha-256'")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE ROLE {} PASSWORD 'server-side secret'",
            quote_ident(&r)
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        let v = stored_verifier(&u, &r).await;
        assert!(
            v.starts_with("SCRAM-SHA-256$"),
            "server did not store SCRAM"
        );
        assert!(scram_check("server-side secret", &v));
        assert!(!scram_check("server-side secreT", &v));
    })
    .await;
}

async fn minted_role_has_the_password_expiry_and_only_its_groups_privileges() {
    let (target, admin, url) = server().await;
    let s = suffix();
    let group = format!("jp_test_reader_{s}");
    let schema = format!("jp_test_schema_{s}");
    let role = format!("jp_test_role_{s}");
    let (a, u, g, sc, r) = (
        admin.clone(),
        url.clone(),
        group.clone(),
        schema.clone(),
        role.clone(),
    );
    let body = async move {
        exec(&a, format!("CREATE ROLE {} NOLOGIN", quote_ident(&g))).await;
        exec(&a, format!("CREATE SCHEMA {}", quote_ident(&sc))).await;
        exec(&a, format!("CREATE TABLE {}.t (v int)", quote_ident(&sc))).await;
        exec(&a, format!("INSERT INTO {}.t VALUES (7)", quote_ident(&sc))).await;
        exec(
            &a,
            format!(
                "GRANT USAGE ON SCHEMA {} TO {}",
                quote_ident(&sc),
                quote_ident(&g)
            ),
        )
        .await;
        exec(
            &a,
            format!(
                "GRANT SELECT ON {}.t TO {}",
                quote_ident(&sc),
                quote_ident(&g)
            ),
        )
        .await;

        let password = new_password().unwrap();
        let valid_until = 4_102_444_800; // 2100-01-01T00:00:00Z
        target
            .create_role(&r, &password, valid_until, std::slice::from_ref(&g))
            .await
            .unwrap();
        assert!(target.role_exists(&r).await.unwrap());

        // The stored verifier matches the password (and only it).
        let v = stored_verifier(&u, &r).await;
        assert!(scram_check(password.expose_secret(), &v));
        assert!(!scram_check("not the password", &v));

        // Attributes.
        let row: (bool, bool, bool, bool, bool, bool, bool, i32, i64) = sqlx::query_as(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolinherit, \
             rolreplication, rolbypassrls, rolconnlimit, \
             extract(epoch FROM rolvaliduntil)::bigint FROM pg_authid WHERE rolname = $1",
        )
        .bind(&r)
        .fetch_one(&a)
        .await
        .unwrap();
        assert_eq!(
            row,
            (
                true,
                false,
                false,
                false,
                true,
                false,
                false,
                10,
                valid_until
            )
        );
        let groups: Vec<(String,)> = sqlx::query_as(
            "SELECT g.rolname::text FROM pg_auth_members m \
             JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles u ON u.oid = m.member \
             WHERE u.rolname = $1",
        )
        .bind(&r)
        .fetch_all(&a)
        .await
        .unwrap();
        assert_eq!(groups, vec![(g.clone(),)]);

        // Log in as the role: what the group allows works, nothing more.
        let mut conn = pg::connect_as(&u, &r).await.unwrap();
        let (who,): (String,) = sqlx::query_as("SELECT current_user::text")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(who, r);
        let (v,): (i32,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT v FROM {}.t",
            quote_ident(&sc)
        )))
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert_eq!(v, 7);
        let denied = |res: Result<_, sqlx::Error>| {
            let e = res.unwrap_err();
            assert_eq!(
                e.as_database_error().and_then(|d| d.code()).as_deref(),
                Some("42501"),
                "expected insufficient_privilege, got {e}"
            );
        };
        denied(
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {}.t VALUES (8)",
                quote_ident(&sc)
            )))
            .execute(&mut conn)
            .await,
        );
        denied(
            sqlx::query(AssertSqlSafe(format!(
                "CREATE TABLE {}.mine (v int)",
                quote_ident(&sc)
            )))
            .execute(&mut conn)
            .await,
        );
        denied(
            sqlx::query(AssertSqlSafe(format!("CREATE TABLE public.{r}_t (v int)")))
                .execute(&mut conn)
                .await,
        );
        denied(
            sqlx::query("CREATE ROLE jp_test_should_not_exist")
                .execute(&mut conn)
                .await,
        );
        conn.close().await.unwrap();

        // Creating it again is an error, not a silent reuse.
        let again = target
            .create_role(&r, &password, valid_until, &[])
            .await
            .unwrap_err();
        assert!(matches!(again, MintError::Database { .. }));
        assert!(!again.to_string().contains(password.expose_secret()));
        assert!(!again.to_string().contains("SCRAM"));

        target.drop_role(&r).await.unwrap();
        assert!(!target.role_exists(&r).await.unwrap());
    };
    with_cleanup(admin, &url, vec![role, group], vec![schema], body).await;
}

async fn drop_role_terminates_open_sessions_and_removes_the_role() {
    let (target, admin, url) = server().await;
    let s = suffix();
    let role = format!("jp_test_drop_{s}");
    let bystander = format!("jp_test_bystander_{s}");
    let (u, r, b) = (url.clone(), role.clone(), bystander.clone());
    let body = async move {
        let password = new_password().unwrap();
        for name in [&r, &b] {
            target
                .create_role(name, &password, 4_102_444_800, &[])
                .await
                .unwrap();
        }
        let mut held = pg::connect_as(&u, &r).await.unwrap();
        sqlx::query("SELECT 1").execute(&mut held).await.unwrap();
        let mut other = pg::connect_as(&u, &b).await.unwrap();
        let mut admin_conn = pg::admin(&u).await;

        target.drop_role(&r).await.unwrap();

        assert!(!target.role_exists(&r).await.unwrap());
        assert!(
            sqlx::query("SELECT 1").execute(&mut held).await.is_err(),
            "the session of a dropped role must be terminated"
        );
        // Only that role's sessions: others live on.
        sqlx::query("SELECT 1").execute(&mut other).await.unwrap();
        sqlx::query("SELECT 1")
            .execute(&mut admin_conn)
            .await
            .unwrap();
        other.close().await.unwrap();
        admin_conn.close().await.unwrap();
        assert!(pg::connect_as(&u, &r).await.is_err());
        // Dropping again (or a role that never existed) is fine.
        target.drop_role(&r).await.unwrap();
        target.drop_role("jp_never_existed_x").await.unwrap();
    };
    with_cleanup(admin, &url, vec![role, bystander], vec![], body).await;
}

async fn drop_role_drops_objects_the_role_created() {
    let (target, admin, url) = server().await;
    let s = suffix();
    let role = format!("jp_test_owner_{s}");
    let schema = format!("jp_test_schema_{s}");
    let (a, u, r, sc) = (admin.clone(), url.clone(), role.clone(), schema.clone());
    let body = async move {
        target
            .create_role(&r, &new_password().unwrap(), 4_102_444_800, &[])
            .await
            .unwrap();
        exec(
            &a,
            format!(
                "CREATE SCHEMA {} AUTHORIZATION {}",
                quote_ident(&sc),
                quote_ident(&r)
            ),
        )
        .await;
        let mut conn = pg::connect_as(&u, &r).await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE {}.made (v int)",
            quote_ident(&sc)
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        target.drop_role(&r).await.unwrap();
        assert!(!target.role_exists(&r).await.unwrap());
        // Nothing the job owned survives it (no object handed to the admin user).
        let left: Vec<(String,)> =
            sqlx::query_as("SELECT tablename::text FROM pg_tables WHERE schemaname = $1")
                .bind(&sc)
                .fetch_all(&a)
                .await
                .unwrap();
        assert!(left.is_empty(), "{left:?}");
    };
    with_cleanup(admin, &url, vec![role], vec![schema], body).await;
}

async fn unknown_or_superuser_group_is_refused_without_leaving_the_role() {
    let (target, admin, url) = server().await;
    // The admin user is a superuser (the harness's admin URL reads `pg_authid`).
    let superuser = pg::options(&url).unwrap().get_username().to_string();
    let s = suffix();
    let role = format!("jp_test_orphan_{s}");
    let missing = format!("jp_test_missing_{s}");
    let (r, m) = (role.clone(), missing.clone());
    let body = async move {
        let pw = new_password().unwrap();
        let err = target
            .create_role(&r, &pw, 4_102_444_800, std::slice::from_ref(&m))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&m), "{err}");
        assert!(!target.role_exists(&r).await.unwrap());

        let err = target
            .create_role(&r, &pw, 4_102_444_800, std::slice::from_ref(&superuser))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("superuser"), "{err}");
        assert!(!target.role_exists(&r).await.unwrap());

        // A hostile group name stays one quoted identifier.
        let err = target
            .create_role(
                &r,
                &pw,
                4_102_444_800,
                &[format!("x\"; DROP ROLE {superuser}; --")],
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(target.role_exists(&superuser).await.unwrap());
        assert!(!target.role_exists(&r).await.unwrap());

        // Names outside the pattern never reach the server.
        assert!(
            target
                .create_role("Bad\"Name", &pw, 4_102_444_800, &[])
                .await
                .is_err()
        );
        assert!(target.drop_role("Bad\"Name").await.is_err());
    };
    with_cleanup(admin, &url, vec![role], vec![], body).await;
}

async fn built_in_pg_roles_and_their_members_are_refused_as_groups() {
    let (target, admin, url) = server().await;
    let s = suffix();
    let role = format!("jp_test_pgrole_{s}");
    let member = format!("jp_test_pgmember_{s}");
    let a = admin.clone();
    let (r, m) = (role.clone(), member.clone());
    let body = async move {
        // A group that can write the server's files, one role removed from it.
        exec(&a, format!("CREATE ROLE {} NOLOGIN", quote_ident(&m))).await;
        exec(
            &a,
            format!("GRANT pg_write_server_files TO {}", quote_ident(&m)),
        )
        .await;
        let pw = new_password().unwrap();
        for group in [
            "pg_execute_server_program",
            "pg_read_server_files",
            m.as_str(),
        ] {
            let err = target
                .create_role(&r, &pw, 4_102_444_800, &[group.to_string()])
                .await
                .unwrap_err();
            assert!(err.to_string().contains("privileged"), "{group}: {err}");
            assert!(!target.role_exists(&r).await.unwrap(), "{group}");
        }
    };
    with_cleanup(admin, &url, vec![role, member], vec![], body).await;
}

async fn roles_with_prefix_lists_exactly_the_matching_roles() {
    let (target, admin, url) = server().await;
    let prefix = format!("jp_test_pfx_{}_", suffix());
    let roles = vec![format!("{prefix}a"), format!("{prefix}b")];
    let (p, rs) = (prefix.clone(), roles.clone());
    let body = async move {
        assert!(target.roles_with_prefix(&p).await.unwrap().is_empty());
        for r in &rs {
            target
                .create_role(r, &new_password().unwrap(), 4_102_444_800, &[])
                .await
                .unwrap();
        }
        assert_eq!(target.roles_with_prefix(&p).await.unwrap(), rs);
        // `_` is not a wildcard here.
        let wild = p.replace('_', "x");
        assert!(target.roles_with_prefix(&wild).await.unwrap().is_empty());
        assert!(target.roles_with_prefix("").await.is_err());
    };
    with_cleanup(admin, &url, roles, vec![], body).await;
}

crate::support::harness::cases! {
    OnceWithPostgres: [
        scram_math_matches_what_postgres_computes,
        minted_role_has_the_password_expiry_and_only_its_groups_privileges,
        drop_role_terminates_open_sessions_and_removes_the_role,
        drop_role_drops_objects_the_role_created,
        unknown_or_superuser_group_is_refused_without_leaving_the_role,
        roles_with_prefix_lists_exactly_the_matching_roles,
        built_in_pg_roles_and_their_members_are_refused_as_groups,
    ],
}
