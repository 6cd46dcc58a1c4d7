//! The suite's own test harness (libtest-mimic, `harness = false`): every test that starts a
//! broker runs once per store backend inside this one binary, as `sqlite::<module>::<test>`
//! and `postgres::<module>::<test>`; tests that need no store run once as `<module>::<test>`.
//!
//! PostgreSQL is found once, before anything runs: `JOBPASS_TEST_POSTGRES_URL` if set, else the
//! local server on 127.0.0.1:5432 if it answers. Without one, every test that needs it is
//! listed as ignored (never as passed), and under `CI=true` the run fails before it starts.
//!
//! A module declares its tests with [`cases!`], naming where each one runs; a test function
//! left out of the list is dead code, which the lints refuse, so none is silently not run.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;

use libtest_mimic::{Failed, Trial};

/// Store backend of the broker a test starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the broker's directory.
    Sqlite,
    /// A fresh database of its own on the PostgreSQL server.
    Postgres,
    /// A test declared `Once` / `OnceWithPostgres`: it starts no in-process broker (starting
    /// one panics, so a store-dependent test cannot hide on one store).
    None,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::None => "once",
        }
    }
}

/// Where a test runs.
#[derive(Clone, Copy, Debug)]
pub enum Runs {
    /// Once per store backend (it starts brokers).
    EachStore,
    /// Once per store backend, and it also uses the PostgreSQL server itself (dynamic database
    /// credentials): ignored on both when there is no server.
    EachStoreWithPostgres,
    /// Only on the PostgreSQL store (several replicas share one store).
    PostgresStore,
    /// Once: it starts no in-process broker (offline tools, a child `serve --dev`).
    Once,
    /// Once, against the PostgreSQL server itself (no broker): ignored when there is none.
    OnceWithPostgres,
}

type Body = fn() -> Pin<Box<dyn Future<Output = ()>>>;

/// One test of a module.
pub struct Case {
    module: &'static str,
    name: &'static str,
    runs: Runs,
    body: Body,
}

impl Case {
    pub fn new(module_path: &'static str, name: &'static str, runs: Runs, body: Body) -> Case {
        // `it::admin` → `admin`
        let module = module_path
            .split_once("::")
            .map_or(module_path, |(_, rest)| rest);
        Case {
            module,
            name,
            runs,
            body,
        }
    }
}

/// Declares a module's tests for the harness: `cases! { EachStore: [a, b], Once: [c] }`.
macro_rules! cases {
    ($($runs:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        /// This module's tests, for the harness.
        pub fn cases() -> Vec<$crate::support::harness::Case> {
            vec![$($(
                $crate::support::harness::Case::new(
                    module_path!(),
                    stringify!($name),
                    $crate::support::harness::Runs::$runs,
                    || Box::pin($name()),
                ),
            )*)*]
        }
    };
}
pub(crate) use cases;

tokio::task_local! {
    static BACKEND: Backend;
}

static POSTGRES: OnceLock<Option<String>> = OnceLock::new();

/// The store backend of the running test (read where the test itself starts a broker).
pub fn backend() -> Backend {
    BACKEND
        .try_with(|b| *b)
        .expect("a broker is started from the test's own task, inside the harness")
}

/// The PostgreSQL admin URL found at start-up. Only tests the harness runs because a server
/// was found call this.
pub fn postgres_url() -> String {
    POSTGRES
        .get()
        .cloned()
        .flatten()
        .expect("the harness runs this test only when a PostgreSQL server was found")
}

/// Finds PostgreSQL (see the module docs) and records it for [`postgres_url`].
pub fn find_postgres() -> Option<String> {
    let found = std::env::var(super::pg::ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .or_else(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the probe");
            rt.block_on(super::pg::reachable(
                super::pg::DEFAULT_URL,
                std::time::Duration::from_secs(2),
            ))
            .then(|| super::pg::DEFAULT_URL.to_string())
        });
    POSTGRES.set(found.clone()).expect("found once");
    found
}

/// The trials: each case once per backend it runs on, ignored where PostgreSQL is needed and
/// none was found.
pub fn trials(cases: Vec<Case>, postgres: bool) -> Vec<Trial> {
    let mut out = Vec::new();
    for case in cases {
        let (backends, needs_postgres): (&[Backend], bool) = match case.runs {
            Runs::EachStore => (&[Backend::Sqlite, Backend::Postgres], false),
            Runs::EachStoreWithPostgres => (&[Backend::Sqlite, Backend::Postgres], true),
            Runs::PostgresStore => (&[Backend::Postgres], true),
            Runs::Once => (&[Backend::None], false),
            Runs::OnceWithPostgres => (&[Backend::None], true),
        };
        for &backend in backends {
            let name = match case.runs {
                Runs::Once | Runs::OnceWithPostgres => format!("{}::{}", case.module, case.name),
                _ => format!("{}::{}::{}", backend.name(), case.module, case.name),
            };
            let ignored = !postgres && (needs_postgres || backend == Backend::Postgres);
            let body = case.body;
            out.push(Trial::test(name, move || run(backend, body)).with_ignored_flag(ignored));
        }
    }
    out
}

fn run(backend: Backend, body: Body) -> Result<(), Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    rt.block_on(BACKEND.scope(backend, body()));
    Ok(())
}
