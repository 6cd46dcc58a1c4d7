//! Integration tests: one binary, driving the real router over HTTPS on loopback against a
//! real OIDC issuer served by the tests, and the real `jobpass` binary for the CLI.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod admin;
mod audit_log;
mod ci;
mod cli;
mod dynamic;
mod emergency;
mod exchange;
mod ledger;
mod oidc;
mod refusals;
mod reload;
mod replicas;
mod secrets;
mod support;
mod vault;
