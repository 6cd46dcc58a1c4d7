//! Admin identities read from verified client certificates (SPEC §4).
//!
//! The subject's common name is the actor recorded in the audit log; the subject's single
//! organizational unit is the role. A certificate with no OU, several OUs, an unknown OU, or
//! no usable common name yields no identity at all, so callers answer 403.

use std::fmt;

use x509_parser::prelude::{FromDer, X509Certificate};

/// The role an admin client certificate carries as its subject `OU=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminRole {
    /// Policies, secrets, keys.
    Admin,
    /// Revoke, freeze, unfreeze, read the audit log.
    Security,
    /// Read only.
    Auditor,
}

impl AdminRole {
    /// Every role, in a stable order.
    pub const ALL: [AdminRole; 3] = [AdminRole::Admin, AdminRole::Security, AdminRole::Auditor];

    /// The role's name as written in the certificate's `OU=` (lowercase).
    pub fn as_str(self) -> &'static str {
        match self {
            AdminRole::Admin => "admin",
            AdminRole::Security => "security",
            AdminRole::Auditor => "auditor",
        }
    }

    /// Parses an `OU=` value. Exact, case-sensitive match: `"Admin"` is not a role.
    pub fn from_ou(ou: &str) -> Option<Self> {
        AdminRole::ALL.into_iter().find(|r| r.as_str() == ou)
    }
}

impl fmt::Display for AdminRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is calling an admin route: the certificate's subject CN and its role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminIdentity {
    /// Subject common name; the actor in the audit log.
    pub common_name: String,
    /// Subject organizational unit.
    pub role: AdminRole,
}

/// Reads the admin identity from a peer's leaf certificate (DER).
///
/// Call this only with a certificate the TLS layer has already verified against the admin
/// CA (see [`crate::tls::accept`]); this function checks names, not signatures.
/// Returns `None` unless the subject has exactly one non-empty common name and exactly one
/// organizational unit that is `admin`, `security` or `auditor`.
pub fn admin_identity(leaf_der: &[u8]) -> Option<AdminIdentity> {
    let (rest, cert) = X509Certificate::from_der(leaf_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let subject = cert.subject();

    let mut cns = subject.iter_common_name();
    let cn = cns.next()?.as_str().ok()?;
    if cns.next().is_some() || cn.trim().is_empty() {
        return None;
    }

    let mut ous = subject.iter_organizational_unit();
    let ou = ous.next()?.as_str().ok()?;
    if ous.next().is_some() {
        return None;
    }
    let role = AdminRole::from_ou(ou)?;

    Some(AdminIdentity {
        common_name: cn.to_owned(),
        role,
    })
}
