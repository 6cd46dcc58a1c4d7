//! The suite's own test harness (libtest-mimic, `harness = false`): every test that starts a
//! broker runs once per store backend inside this one binary, as `sqlite::<module>::<test>`
//! and `postgres::<module>::<test>`; tests that need no store run once as `<module>::<test>`.
//!
//! PostgreSQL is found once, before anything runs: `JOBPASS_TEST_POSTGRES_URL` if set, else the
//! local server on 127.0.0.1:5432; either must answer a connection. Without one, every test
//! that needs it is reported as ignored with the reason (never as passed), and under `CI=true`
//! the run fails before it starts.
//!
//! A test that needs an external tool asks for it with [`tool`]: when the tool is missing the
//! test ends there and is reported as ignored with the reason, or fails under `CI=true`.
//!
//! A module declares its tests with [`cases!`], naming where each one runs; a test function
//! left out of the list is dead code, which the lints refuse, so none is silently not run.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::OnceLock;

use libtest_mimic::{Completion, Failed, Trial};

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
    /// Set by [`tool`] when the running test cannot run here: why.
    static IGNORED: RefCell<Option<String>>;
}

/// Whether the run is CI's (`CI=true`): a missing prerequisite is a failure there.
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The path of the external tool `name`, searched in `PATH`. When it is missing the test is
/// reported as ignored with a reason naming `install` (it must return at once on `None`),
/// and under `CI=true` it fails instead.
pub fn tool(name: &str, install: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        let reason = format!("`{name}` is not installed ({install})");
        assert!(!under_ci(), "{reason}, and CI=true needs it");
        IGNORED
            .try_with(|i| *i.borrow_mut() = Some(reason))
            .expect("a test asks for a tool from its own task, inside the harness");
    }
    found
}

static POSTGRES: OnceLock<Option<String>> = OnceLock::new();

/// Where PostgreSQL was looked for at start-up.
#[derive(Debug)]
pub enum Postgres {
    /// This admin URL answered.
    Found(String),
    /// None answered; why, in one sentence.
    Missing(String),
}

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
pub fn find_postgres() -> Postgres {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the probe");
    let answers =
        |url: &str| rt.block_on(super::pg::reachable(url, std::time::Duration::from_secs(2)));
    let configured = std::env::var(super::pg::ENV)
        .ok()
        .filter(|u| !u.trim().is_empty());
    let found = match configured {
        Some(url) if answers(&url) => Postgres::Found(url),
        Some(_) => Postgres::Missing(format!(
            "{} is set but no PostgreSQL answers there",
            super::pg::ENV
        )),
        None if answers(super::pg::DEFAULT_URL) => {
            Postgres::Found(super::pg::DEFAULT_URL.to_string())
        }
        None => Postgres::Missing(format!(
            "no PostgreSQL at {} and {} is unset",
            super::pg::DEFAULT_URL,
            super::pg::ENV
        )),
    };
    let url = match &found {
        Postgres::Found(url) => Some(url.clone()),
        Postgres::Missing(_) => None,
    };
    POSTGRES.set(url).expect("found once");
    found
}

/// The trials: each case once per backend it runs on. Where PostgreSQL is needed and none
/// was found (`missing` says why), the trial is reported as ignored with that reason.
pub fn trials(cases: Vec<Case>, missing: Option<&str>) -> Vec<Trial> {
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
            let body = case.body;
            let trial = match missing {
                Some(why) if needs_postgres || backend == Backend::Postgres => {
                    let reason = format!("needs PostgreSQL: {why}");
                    Trial::ignorable_test(name, move || Ok(Completion::ignored_with(reason)))
                }
                _ => Trial::ignorable_test(name, move || run(backend, body)),
            };
            out.push(trial);
        }
    }
    out
}

fn run(backend: Backend, body: Body) -> Result<Completion, Failed> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
    let ignored = rt.block_on(BACKEND.scope(
        backend,
        IGNORED.scope(RefCell::new(None), async {
            body().await;
            IGNORED.with(|i| i.borrow_mut().take())
        }),
    ));
    Ok(match ignored {
        Some(reason) => Completion::ignored_with(reason),
        None => Completion::Completed,
    })
}
