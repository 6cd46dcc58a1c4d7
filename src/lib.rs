//! jobpass — a secrets broker for CI.
//!
//! A CI job presents the OIDC ID token its platform gave it; jobpass verifies it, checks it
//! against the policy of the environment the job asks for, and mints scoped, short-lived
//! credentials. The exchange path reads, module by module:
//! [`oidc`] (verify) → [`policy`] (match) → [`mint`] (mint) → [`crypto`] (seal) →
//! [`store`] (store) → [`audit`] (audit), orchestrated by [`exchange`]. Errors become HTTP
//! answers in one place, [`error`]. The command line — the server, offline tools, the admin
//! client and the runner-side client — is [`cli`].

pub mod admin_crl;
pub mod app;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dev;
pub mod error;
pub mod exchange;
pub mod freeze;
pub mod grants;
pub mod http;
pub mod keys;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod mint;
pub mod names;
pub mod oidc;
pub mod policy;
pub mod reason;
pub mod secrets;
pub mod store;
pub mod tls;
