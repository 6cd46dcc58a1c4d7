//! Decoding helpers shared by the aggregates' [`FromRow`](sqlx::FromRow) impls: columns
//! holding JSON text and columns holding the name of an enum variant. Owns no table.
//!
//! Guarantees:
//! - a value that does not decode is an error naming the column
//!   ([`sqlx::Error::ColumnDecode`], surfaced as
//!   [`StoreError::Corrupt`](crate::store::StoreError::Corrupt)), never a default.

use serde::de::DeserializeOwned;
use sqlx::{ColumnIndex, Decode, Row, Type};

/// The JSON text of column `col`, deserialized.
pub(super) fn json_column<'r, R, T>(row: &'r R, col: &'r str) -> sqlx::Result<T>
where
    R: Row,
    T: DeserializeOwned,
    &'r str: ColumnIndex<R>,
    String: Decode<'r, R::Database> + Type<R::Database>,
{
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
        index: col.to_string(),
        source: Box::new(e),
    })
}

/// Stores an enum as its name: `Type` is the database's text type, and `Decode` parses the
/// text with the enum's `FromStr`, so any other stored text fails to decode.
macro_rules! stored_as_name {
    ($t:ty) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $t
        where
            str: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $t
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: DB::ValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                Ok(<&'r str as sqlx::Decode<'r, DB>>::decode(value)?.parse()?)
            }
        }
    };
}

stored_as_name!(crate::mint::Kind);
stored_as_name!(crate::store::ExternalRevocation);

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::mint::Kind;
    use crate::store::{ExternalRevocation, Store, StoreError};

    /// A SQLite store with one lease (`revocation` as given) holding one credential
    /// (`kind`, `scope` as given, token digest `[7; 32]`) and one secret (`fields` as given).
    pub(in crate::store::sql) async fn store_with(
        dir: &tempfile::TempDir,
        revocation: Option<&str>,
        kind: &str,
        scope: &str,
        fields: &str,
    ) -> Store {
        let store = Store::open(&format!("sqlite://{}", dir.path().join("s.db").display()))
            .await
            .unwrap();
        let Store::Sqlite { writer, .. } = &store else {
            unreachable!("a sqlite:// URL opens SQLite")
        };
        sqlx::query(
            "INSERT INTO leases (id, env, role, issuer, subject, policy_version, issued_at,
             expires_at, key_version, sealed, revocation)
             VALUES ('l1', 'prod', 'deploy', 'https://issuer', 'repo:a/b', 'v1', 900, 9000000000,
             1, x'00', $1)",
        )
        .bind(revocation)
        .execute(writer)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO credentials (id, lease_id, env, name, kind, token_hash, scope, expires_at)
             VALUES ('c1', 'l1', 'prod', 'api', $1, $2, $3, 9000000000)",
        )
        .bind(kind)
        .bind(vec![7u8; 32])
        .bind(scope)
        .execute(writer)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO secrets (env, path, version, fields, key_version, sealed, created_at)
             VALUES ('prod', 'app/db', 1, $1, 1, x'00', 900)",
        )
        .bind(fields)
        .execute(writer)
        .await
        .unwrap();
        store
    }

    #[tokio::test]
    async fn stored_names_and_json_decode_into_their_types() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, Some("failed"), "token", r#"["app/*"]"#, r#"["pw"]"#).await;
        let lease = store.lease("l1").await.unwrap().unwrap();
        assert_eq!(lease.revocation, Some(ExternalRevocation::Failed));
        let creds = store.lease_credentials("l1").await.unwrap();
        assert_eq!(creds[0].kind, Kind::Token);
        let grant = store.token_grant(&[7; 32]).await.unwrap().unwrap();
        assert_eq!(grant.scope, ["app/*"]);
        let secret = store
            .latest_secret("prod", "app/db")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(secret.fields, ["pw"]);
        let (_, secret) = store
            .token_secret(&[7; 32], "prod", "app/db", None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(secret.unwrap().0.fields, ["pw"]);
    }

    #[tokio::test]
    async fn unknown_names_and_bad_json_are_errors_not_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with(&dir, Some("maybe"), "ssh", "not json", "{").await;
        let corrupt = |r: Result<(), StoreError>, what: &str| {
            assert!(matches!(r, Err(StoreError::Corrupt(_))), "{what}: {r:?}");
        };
        corrupt(store.lease("l1").await.map(drop), "revocation state");
        corrupt(store.lease_credentials("l1").await.map(drop), "kind");
        corrupt(store.credential_state("c1").await.map(drop), "kind");
        corrupt(store.token_grant(&[7; 32]).await.map(drop), "scope");
        corrupt(
            store.latest_secret("prod", "app/db").await.map(drop),
            "fields",
        );
        corrupt(
            store
                .token_secret(&[7; 32], "prod", "app/db", None)
                .await
                .map(drop),
            "scope",
        );
    }
}
