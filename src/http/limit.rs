//! The rate limit of a source address, applied to a group of routes before anything else of
//! the request is read: one check of the source's bucket and the global bucket of the
//! group's [`Class`]; over either, `429 rate_limited` with `Retry-After`, counted into the
//! aggregate refusal records, never a line each. Admin calls over a connection with a verified
//! admin certificate skip these two buckets and spend their certificate's own.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ConnInfo;
use crate::app::App;
use crate::limits::Class;

/// The state of a limited route group.
pub type Limit = (Arc<App>, Class);

/// Refuses a request whose source is over its rate (native error shape).
pub async fn by_source(State((app, class)): State<Limit>, req: Request, next: Next) -> Response {
    match check(&app, class, &req) {
        Ok(()) => next.run(req).await,
        Err(answer) => answer.into_response(),
    }
}

/// The same check, answered in the Vault-compatible error shape.
pub async fn by_source_vault(
    State((app, class)): State<Limit>,
    req: Request,
    next: Next,
) -> Response {
    match check(&app, class, &req) {
        Ok(()) => next.run(req).await,
        Err(answer) => super::vault::VaultError::from(answer).into_response(),
    }
}

fn check(app: &App, class: Class, req: &Request) -> Result<(), crate::error::ApiError> {
    match req.extensions().get::<ConnInfo>() {
        // A caller whose admin certificate was verified at the handshake is limited by its
        // own bucket (per certificate) only: anonymous traffic spending the source and global
        // admin buckets cannot lock the security on-call out of a revocation.
        Some(conn) if class == Class::Admin && conn.admin.is_some() => Ok(()),
        Some(conn) => app.check_source(class, conn.peer.ip()),
        None => Ok(()),
    }
}
