//! A Vault-compatible subset of the API on a separate listener (`vault_compat_listen`), so
//! that Vault clients in CI (hvac, node-vault, vault-action, GitLab's `secrets: vault:`) work by
//! changing the server address.

use std::sync::Arc;

use axum::Router;

use crate::app::App;

/// The Vault-compatible routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new().with_state(app)
}
