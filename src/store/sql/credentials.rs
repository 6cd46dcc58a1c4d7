//! Credentials: the rows minted for a lease (never their values) and every read that finds a
//! credential — a broker token by its digest (with the secret it reads, in one round trip),
//! a JWT by its id, the revoked JWTs and certificates of an environment — and the revocation
//! of one JWT on its own.
//!
//! Tables: `credentials` (read joined with `leases` and `lease_revocations`; a secret read
//! also joins `secrets` and `data_keys`). `credentials.revoked_at` is set for a JWT revoked on
//! its own (RFC 7009 by its holder); the lease and its other credentials stay live.
//!
//! Guarantees:
//! - a broker token is found by its keyed digest only, never by its value;
//! - every answer carries its lease's revocation state, read in the same statement, so a
//!   revoked lease's credentials stop working at once; a JWT's answers (introspection, the
//!   revoked list) also carry its own revocation, read in the same statement;
//! - only a JWT is revoked on its own; the other kinds die with their lease;
//! - a stored kind or scope that does not decode is an error, never an empty scope or a
//!   skipped certificate.

use sqlx::{ColumnIndex, Decode, FromRow, QueryBuilder, Row, Type};

use super::Store;
use super::batch::push_list;
use super::decode::json_column;
use crate::store::{
    CredentialRow, CredentialState, Result, SecretRow, StoreError, TokenGrant, WriteTx,
};

/// A broker token's grant from a row with the columns of [`Store::token_grant`].
impl<'r, R: Row> FromRow<'r, R> for TokenGrant
where
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(r: &'r R) -> sqlx::Result<Self> {
        Ok(TokenGrant {
            credential_id: r.try_get("id")?,
            name: r.try_get("name")?,
            lease_id: r.try_get("lease_id")?,
            env: r.try_get("env")?,
            role: r.try_get("role")?,
            subject: r.try_get("subject")?,
            issuer: r.try_get("issuer")?,
            scope: json_column(r, "scope")?,
            expires_at: r.try_get("expires_at")?,
            revoked_at: r.try_get("revoked_at")?,
        })
    }
}

impl Store {
    /// The grant behind a broker token digest, with its lease's state.
    pub async fn token_grant(&self, digest: &[u8]) -> Result<Option<TokenGrant>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, TokenGrant>(
                "SELECT c.id, c.name, c.scope, c.expires_at, l.id AS lease_id, l.env, l.role, l.subject,
                    l.issuer, r.revoked_at
             FROM credentials c JOIN leases l ON l.id = c.lease_id
             LEFT JOIN lease_revocations r ON r.lease_id = l.id
             WHERE c.token_hash = $1",
            )
            .bind(digest)
            .fetch_optional(r)
            .await?)
        })
    }

    /// One round trip for a secret read: the grant behind a broker token digest (with its
    /// lease's state) and, when present, the secret `env`/`path` at `version` (the latest when
    /// None) with whether its data key is still live. The caller checks the grant before it
    /// decrypts anything.
    pub async fn token_secret(
        &self,
        digest: &[u8],
        env: &str,
        path: &str,
        version: Option<i64>,
    ) -> Result<Option<(TokenGrant, Option<(SecretRow, bool)>)>> {
        with_db!(self, |w, r, Db| {
            // The secret's columns carry the names `SecretRow` reads (none is a grant's).
            let row = sqlx::query(
                "SELECT c.id, c.name, c.scope, c.expires_at, l.id AS lease_id, l.env, l.role,
                        l.subject, l.issuer, r.revoked_at,
                        s.version, s.fields, s.key_version, s.sealed, s.created_at,
                        CAST(CASE WHEN d.wrapped IS NULL THEN 0 ELSE 1 END AS BIGINT) AS s_key_live
                 FROM credentials c JOIN leases l ON l.id = c.lease_id
                 LEFT JOIN lease_revocations r ON r.lease_id = l.id
                 LEFT JOIN secrets s ON s.env = $2 AND s.path = $3 AND s.version = COALESCE($4,
                     (SELECT MAX(version) FROM secrets WHERE env = $2 AND path = $3))
                 LEFT JOIN data_keys d ON d.env = s.env AND d.version = s.key_version
                 WHERE c.token_hash = $1",
            )
            .bind(digest)
            .bind(env)
            .bind(path)
            .bind(version)
            .fetch_optional(r)
            .await?;
            let Some(r) = row else { return Ok(None) };
            let grant = TokenGrant::from_row(&r)?;
            let secret = match r.try_get::<Option<i64>, _>("version")? {
                None => None,
                Some(_) => Some((
                    SecretRow::from_row(&r)?,
                    r.try_get::<i64, _>("s_key_live")? != 0,
                )),
            };
            Ok(Some((grant, secret)))
        })
    }

    /// Credentials of a lease.
    pub async fn lease_credentials(&self, lease_id: &str) -> Result<Vec<CredentialRow>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, CredentialRow>(
                "SELECT id, lease_id, env, name, kind, token_hash, scope, expires_at FROM credentials
             WHERE lease_id = $1 ORDER BY id",
            )
            .bind(lease_id)
            .fetch_all(r)
            .await?)
        })
    }

    /// Ids and expiry of an environment's JWT credentials that are revoked — with their lease,
    /// or on their own — and have not expired yet.
    pub async fn revoked_jwts(&self, env: &str, now: i64) -> Result<Vec<(String, i64)>> {
        with_db!(self, |w, r, Db| {
            // Two index reads: the JWTs of revoked leases, and the few revoked on their own
            // (partial index) whose lease is not revoked (so none is listed twice).
            Ok(sqlx::query_as::<Db, (String, i64)>(
                "SELECT c.id, c.expires_at FROM credentials c
             JOIN lease_revocations r ON r.lease_id = c.lease_id
             WHERE c.env = $1 AND c.kind = 'jwt' AND c.expires_at > $2
             UNION ALL
             SELECT c.id, c.expires_at FROM credentials c
             WHERE c.env = $1 AND c.kind = 'jwt' AND c.expires_at > $2 AND c.revoked_at IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM lease_revocations r WHERE r.lease_id = c.lease_id)
             ORDER BY 1",
            )
            .bind(env)
            .bind(now)
            .fetch_all(r)
            .await?)
        })
    }

    /// A credential by id with its lease's state: revoked when it was revoked on its own or
    /// its lease was.
    pub async fn credential_state(&self, id: &str) -> Result<Option<CredentialState>> {
        with_db!(self, |w, r, Db| {
            Ok(sqlx::query_as::<Db, CredentialState>(
                "SELECT c.id, c.lease_id, c.env, c.name, c.kind, c.token_hash, c.scope, c.expires_at,
                    l.role, l.subject, l.issuer, COALESCE(c.revoked_at, r.revoked_at) AS revoked_at
             FROM credentials c JOIN leases l ON l.id = c.lease_id
             LEFT JOIN lease_revocations r ON r.lease_id = l.id WHERE c.id = $1",
            )
            .bind(id)
            .fetch_optional(r)
            .await?)
        })
    }

    /// Revokes one JWT on its own at `now`; its lease and the lease's other credentials stay
    /// live. False when there is no such JWT or it was already revoked on its own (a
    /// concurrent revocation of the same JWT, on any replica, counts once).
    pub async fn revoke_jwt(&self, id: &str, now: i64) -> Result<bool> {
        with_db!(self, |w, r, Db| {
            let done = sqlx::query(
                "UPDATE credentials SET revoked_at = $2
                 WHERE id = $1 AND kind = 'jwt' AND revoked_at IS NULL",
            )
            .bind(id)
            .bind(now)
            .execute(w)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// The credentials of these leases revoked on their own: (credential id, when), for the
    /// lease listing.
    pub async fn credentials_revoked_alone(
        &self,
        lease_ids: &[String],
    ) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        for chunk in lease_ids.chunks(500) {
            with_db!(self, |w, r, Db| {
                let mut q: QueryBuilder<Db> = QueryBuilder::new(
                    "SELECT id, revoked_at FROM credentials WHERE revoked_at IS NOT NULL AND lease_id IN ",
                );
                push_list(&mut q, chunk.iter().cloned(), " ORDER BY id");
                out.extend(q.build_query_as::<(String, i64)>().fetch_all(r).await?);
                Ok::<(), StoreError>(())
            })?;
        }
        Ok(out)
    }

    /// Serials and revocation times of an environment's unexpired certificates whose lease is
    /// revoked (the CRL's content). A scope that is not JSON is an error; one without a
    /// serial string lists nothing.
    pub async fn revoked_certificates(&self, env: &str, now: i64) -> Result<Vec<(String, i64)>> {
        with_db!(self, |w, r, Db| {
            let rows = sqlx::query(
                "SELECT c.scope, r.revoked_at FROM credentials c
             JOIN lease_revocations r ON r.lease_id = c.lease_id
             WHERE c.env = $1 AND c.kind = 'x509' AND c.expires_at > $2
             ORDER BY c.id",
            )
            .bind(env)
            .bind(now)
            .fetch_all(r)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                // `{"serial": "…"}`, as the x509 minter writes it.
                let scope: serde_json::Value = json_column(r, "scope")?;
                if let Some(serial) = scope["serial"].as_str() {
                    out.push((serial.to_string(), r.try_get("revoked_at")?));
                }
            }
            Ok(out)
        })
    }
}

impl WriteTx {
    /// Inserts a credential row.
    pub async fn insert_credential(&mut self, c: &CredentialRow) -> Result<()> {
        with_tx!(self, |conn| {
            sqlx::query(
                "INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&c.id)
            .bind(&c.lease_id)
            .bind(&c.env)
            .bind(&c.name)
            .bind(c.kind.name())
            .bind(c.token_hash.as_deref())
            .bind(&c.scope)
            .bind(c.expires_at)
            .execute(&mut *conn)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::decode::tests::store_with;
    use crate::store::Selector;

    #[tokio::test]
    async fn only_a_jwt_is_revoked_on_its_own_and_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, None, "token", "[]", "[]").await;
        assert!(!store.revoke_jwt("c1", 1_000).await.unwrap(), "not a JWT");
        assert!(
            store
                .credential_state("c1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );

        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, None, "jwt", "{}", "[]").await;
        assert!(store.revoked_jwts("prod", 0).await.unwrap().is_empty());
        assert!(store.revoke_jwt("c1", 1_000).await.unwrap());
        assert!(
            !store.revoke_jwt("c1", 2_000).await.unwrap(),
            "counted once"
        );
        let state = store.credential_state("c1").await.unwrap().unwrap();
        assert_eq!(state.revoked_at, Some(1_000));
        assert!(
            store
                .lease("l1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at
                .is_none()
        );
        assert_eq!(
            store
                .credentials_revoked_alone(&["l1".into()])
                .await
                .unwrap(),
            [("c1".to_string(), 1_000)]
        );
        let listed = vec![("c1".to_string(), 9_000_000_000)];
        assert_eq!(store.revoked_jwts("prod", 0).await.unwrap(), listed);
        assert!(store.revoked_jwts("staging", 0).await.unwrap().is_empty());
        // Its lease revoked too: still listed once.
        let sel = Selector {
            lease_id: Some("l1".into()),
            ..Selector::default()
        };
        assert_eq!(store.revoke(&sel, 3_000, "INC").await.unwrap(), ["l1"]);
        assert_eq!(store.revoked_jwts("prod", 0).await.unwrap(), listed);
        assert_eq!(
            store
                .credential_state("c1")
                .await
                .unwrap()
                .unwrap()
                .revoked_at,
            Some(1_000),
            "revoked when it was revoked first"
        );
    }
}
