//! Integration tests: one binary, driving the real router over HTTPS on loopback against a
//! real OIDC issuer served by the tests, and the real `jobpass` binary for the CLI.
#![allow(
    unreachable_pub,
    missing_docs,
    let_underscore_drop,
    clippy::print_stdout,
    reason = "a test or benchmark harness: its items are its own, and it reports on standard output"
)]
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
