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
mod metrics;
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
    let missing = match &postgres {
        support::harness::Postgres::Found(url) => {
            eprintln!("PostgreSQL: {url} (the suite runs on both stores)");
            None
        }
        support::harness::Postgres::Missing(why) if support::harness::under_ci() => {
            // Under CI a PostgreSQL server is part of the machine: its absence is a failure,
            // not a list of ignored tests that would read as a pass.
            eprintln!(
                "error: {why}, and CI=true: set {} or start the server",
                support::pg::ENV
            );
            return std::process::ExitCode::FAILURE;
        }
        support::harness::Postgres::Missing(why) => {
            eprintln!("PostgreSQL: {why}: the tests that need it are ignored");
            Some(why.as_str())
        }
    };
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
        metrics::cases(),
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
    let trials = support::harness::trials(cases, missing);
    libtest_mimic::run(&args, trials).exit_code()
}
