//! Integration tests: one binary, driving the real router over HTTPS on loopback against a
//! real OIDC issuer served by the tests, and the real `jobpass` binary for the CLI. Its own
//! harness (`support::harness`) runs every test that starts a broker once per store backend.
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
mod admin_crl;
mod audit_anchor;
mod audit_log;
mod ci;
mod cli;
mod dynamic;
mod emergency;
mod exchange;
mod ledger;
mod limits;
mod oidc;
mod pg_roles;
mod races;
mod readme;
mod refusals;
mod reload;
mod replicas;
mod secrets;
mod support;
mod vault;

fn main() -> std::process::ExitCode {
    let args = libtest_mimic::Arguments::from_args();
    let postgres = support::harness::find_postgres();
    match &postgres {
        Some(url) => eprintln!("PostgreSQL: {url} (the suite runs on both stores)"),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            // Under CI a PostgreSQL server is part of the machine: its absence is a failure,
            // not a list of ignored tests that would read as a pass.
            eprintln!(
                "error: no PostgreSQL at {} and CI=true: set {} or start the server",
                support::pg::DEFAULT_URL,
                support::pg::ENV
            );
            return std::process::ExitCode::FAILURE;
        }
        None => eprintln!(
            "PostgreSQL: none at {} ({} unset): the tests that need it are ignored",
            support::pg::DEFAULT_URL,
            support::pg::ENV
        ),
    }
    let cases = [
        admin::cases(),
        admin_crl::cases(),
        audit_anchor::cases(),
        audit_log::cases(),
        ci::cases(),
        cli::cases(),
        dynamic::cases(),
        emergency::cases(),
        exchange::cases(),
        ledger::cases(),
        limits::cases(),
        oidc::cases(),
        pg_roles::cases(),
        races::cases(),
        readme::cases(),
        refusals::cases(),
        reload::cases(),
        replicas::cases(),
        secrets::cases(),
        vault::cases(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let trials = support::harness::trials(cases, postgres.is_some());
    libtest_mimic::run(&args, trials).exit_code()
}
