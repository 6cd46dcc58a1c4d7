//! The `jobpass` command line.
//!
//! - [`args`]: the clap argument types (the whole CLI surface and its `--help` text);
//! - [`serve`]: the broker itself;
//! - [`offline`]: tools that need no broker (policy check and test, audit verification and
//!   search, root key, development certificates, dev tokens);
//! - [`admin`]: the admin API client, and the health check;
//! - [`runner`]: the runner-side client of `jobpass exchange`;
//! - [`https`]: the HTTPS client both clients share;
//! - [`error`]: [`CliError`], what stops a command.
//!
//! This module — [`run`] and its helpers — is the only code that sees the clap types: it turns
//! a parsed command into domain inputs, calls the module that does the work, prints the
//! outcome and chooses the exit status: 0 done, 1 refused (by the broker, the policy, a
//! check), 2 for a [`CliError`] (printed as `error: …` on standard error); `exchange` with a
//! command exits with the command's status.
//!
//! One output convention: JSON answers are indented when standard output is a terminal and on
//! one line otherwise, unless `--format json|pretty` says which. Clients of a broker on a
//! loopback address, given no `--ca` (or no `--cert`/`--key` for admin commands), use the
//! dev broker's files in `.jobpass-dev/certs/` of the current directory when they exist, and
//! say so on standard error.

pub mod admin;
pub mod args;
pub mod error;
pub mod https;
pub mod offline;
mod parse;
pub mod runner;
pub mod serve;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use serde_json::{Map, Value};
use zeroize::Zeroizing;

pub use args::Cli;
pub use error::CliError;

use crate::tls::AdminRole;
use admin::{AdminClient, AdminEndpoint, Health, LeaseQuery, RevokeSelector};
use args::{
    AdminConn, AuditCmd, CertsCmd, Command, DevCmd, ExchangeArgs, Format, JsonFormat, KeysCmd,
    LeasesOp, PolicyCmd, RevokeArgs, SecretsOp, ServeArgs,
};
use https::Answer;
use offline::{PolicyCheck, Verdict};
use runner::{ExchangeRequest, Output, TokenSource};
use serve::{DevOptions, ServeMode};

/// Runs the parsed command; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
async fn dispatch(command: Command) -> Result<i32, CliError> {
    match command {
        Command::Serve(a) => serve::serve(serve_mode(a)).await.map(|()| 0),
        Command::Exchange(a) => runner::exchange(exchange_request(a)).await,
        Command::Policy(c) => policy(c),
        Command::Audit(c) => audit(c).await,
        Command::Keys(c) => keys(c).await,
        Command::Certs(CertsCmd::Init { dir, sans, force }) => {
            for f in offline::init_certs(&dir, &sans, force)? {
                println!("wrote {}", f.display());
            }
            Ok(0)
        }
        Command::Dev(DevCmd::Token { shape, ttl }) => {
            let extra = extra_claims(shape.claims.as_deref())?;
            let token = offline::dev_token(
                &shape.data_dir,
                &shape.policies,
                &shape.env,
                shape.role.as_deref(),
                extra,
                ttl.into(),
            )?;
            println!("{}", token.as_str());
            Ok(0)
        }
        Command::Dev(DevCmd::Claims { shape, format }) => {
            let extra = extra_claims(shape.claims.as_deref())?;
            let made = offline::dev_claims(
                &shape.data_dir,
                &shape.policies,
                &shape.env,
                shape.role.as_deref(),
                extra,
            )?;
            println!("{}", json_text(&Value::Object(made.claims), format));
            match (made.role, made.denial) {
                (Some(role), Some(why)) => eprintln!(
                    "note: these claims do not get role `{role}`: {why}; edit them before \
                     trying `jobpass policy test`"
                ),
                (None, _) => eprintln!(
                    "note: environment `{}` has no default role: give --role to shape the \
                     claims to one",
                    shape.env
                ),
                (Some(_), None) => {}
            }
            Ok(0)
        }
        Command::Secrets(a) => secrets(&a.conn, a.op).await,
        Command::Leases(a) => {
            let LeasesOp::List {
                env,
                role,
                active,
                claims,
                limit,
                after,
            } = a.op;
            let query = LeaseQuery {
                environment: env,
                role,
                active,
                claims: parse::pairs(claims, || CliError::ClaimFilterSyntax)?,
                limit,
                after,
            };
            let client = admin_client(&a.conn, AdminRole::Auditor)?;
            let answer = client.list_leases(&query).await?;
            Ok(print_answer(&client, None, &answer, a.conn.format).await)
        }
        Command::Revoke(a) => revoke(a).await,
        Command::Freeze(a) => freeze(a, true).await,
        Command::Unfreeze(a) => freeze(a, false).await,
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "jobpass", &mut out);
            // A closed pipe (`| head`) is not an error worth a panic.
            drop(std::io::stdout().write_all(&out));
            Ok(0)
        }
        Command::Health { server, ca } => {
            let ca = ca.or_else(|| noted_dev_ca(&server));
            health(&server, ca).await
        }
    }
}

async fn health(server: &str, ca: Option<PathBuf>) -> Result<i32, CliError> {
    match admin::health(server, ca.as_deref()).await? {
        Health::Healthy => Ok(0),
        Health::Unhealthy(why) => {
            eprintln!("unhealthy: {why}");
            Ok(1)
        }
    }
}

/// The claims of an optional `--claims` argument (inline JSON, `@FILE`, `@-`).
fn extra_claims(arg: Option<&str>) -> Result<Map<String, Value>, CliError> {
    match arg {
        Some(arg) => parse::claims(arg, false, &mut std::io::stdin().lock()),
        None => Ok(Map::new()),
    }
}

/// JSON as `format` says, else indented on a terminal and on one line otherwise.
fn json_text(v: &Value, format: Option<JsonFormat>) -> String {
    let pretty = match format {
        Some(JsonFormat::Pretty) => true,
        Some(JsonFormat::Json) => false,
        None => std::io::stdout().is_terminal(),
    };
    if pretty {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        v.to_string()
    }
}

/// The dev broker's CA when `server` is on a loopback address and the file exists (said on
/// standard error).
fn noted_dev_ca(server: &str) -> Option<PathBuf> {
    let ca = https::dev_ca(server)?;
    eprintln!(
        "note: trusting the dev broker's CA {} (the server is on a loopback address); --ca or \
         JOBPASS_CA overrides",
        ca.display()
    );
    Some(ca)
}

fn serve_mode(a: ServeArgs) -> ServeMode {
    if a.dev {
        ServeMode::Dev(DevOptions {
            data_dir: a.data_dir,
            policies: a.policies,
            listen: a.listen,
        })
    } else {
        ServeMode::Config(a.config)
    }
}

fn exchange_request(a: ExchangeArgs) -> ExchangeRequest {
    // clap keeps the token sources mutually exclusive.
    let token = match (a.token, a.token_file, a.token_env) {
        (Some(t), _, _) => TokenSource::Literal(Zeroizing::new(t)),
        (None, Some(f), _) => TokenSource::File(f),
        (None, None, Some(name)) => TokenSource::Env(name),
        (None, None, None) => TokenSource::Platform,
    };
    let ca = a.ca.or_else(|| noted_dev_ca(&a.server));
    ExchangeRequest {
        server: a.server,
        environment: a.env,
        role: a.role,
        token,
        audience: a.audience,
        ca,
        output: a.format.map(|f| match f {
            Format::Json => Output::Json { pretty: false },
            Format::Pretty => Output::Json { pretty: true },
            Format::Env => Output::Env,
            Format::Github => Output::Github,
        }),
        revoke_at_exit: a.revoke_at_exit,
        command: a.command,
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
fn policy(c: PolicyCmd) -> Result<i32, CliError> {
    match c {
        PolicyCmd::Check {
            dir,
            config,
            strict,
        } => match offline::check_policies(&dir, config.as_deref())? {
            PolicyCheck::Valid(set) if set.environments().next().is_none() => {
                eprintln!(
                    "refused: {} holds no policy (one <environment>.toml file per \
                     environment); give the policy directory",
                    dir.display()
                );
                Ok(1)
            }
            PolicyCheck::Valid(set) => {
                let warnings = crate::policy::lint::warnings(&set);
                for w in &warnings {
                    eprintln!("{w}");
                }
                if strict && !warnings.is_empty() {
                    eprintln!(
                        "refused: {} warning(s), and --strict refuses any",
                        warnings.len()
                    );
                    return Ok(1);
                }
                let envs: Vec<&str> = set.environments().map(|e| e.name.as_str()).collect();
                let warned = match warnings.len() {
                    0 => String::new(),
                    n => format!(", {n} warning(s)"),
                };
                println!(
                    "OK: {} environments ({}), version {}{warned}",
                    envs.len(),
                    envs.join(", "),
                    set.version()
                );
                Ok(0)
            }
            PolicyCheck::Invalid(errors) => {
                eprintln!("{errors}");
                Ok(1)
            }
        },
        PolicyCmd::Test {
            dir,
            env,
            role,
            claims,
        } => match offline::test_policy(
            &dir,
            &env,
            role.as_deref(),
            &parse::claims(&claims, true, &mut std::io::stdin().lock())?,
        )? {
            Verdict::Allow { role } => {
                println!("allow: environment `{env}`, role `{role}`");
                Ok(0)
            }
            Verdict::Deny(why) => {
                println!("deny: {why}");
                Ok(1)
            }
        },
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
async fn audit(c: AuditCmd) -> Result<i32, CliError> {
    match c {
        AuditCmd::Verify {
            config,
            anchor,
            replica,
            files,
        } => {
            let mut code = 0;
            let anchors = if anchor {
                Some(offline::Anchors::open(&config, replica)?)
            } else {
                None
            };
            for (f, verified) in offline::verify_audit(&config, &files)? {
                let report = match verified {
                    Ok(r) => r,
                    Err(e) => {
                        println!("{}: FAILED: {e}", f.display());
                        code = 1;
                        continue;
                    }
                };
                let ok = format!(
                    "{}: OK, {} records, head {}",
                    f.display(),
                    report.lines,
                    report.head
                );
                match &anchors {
                    None => println!("{ok}"),
                    Some(a) => match a.check(f, &report).await {
                        Ok(at) => println!("{ok}; {at}"),
                        Err(e) => {
                            println!("{}: FAILED: {e}", f.display());
                            code = 1;
                        }
                    },
                }
            }
            Ok(code)
        }
        AuditCmd::Find {
            config,
            value,
            value_file,
            files,
        } => {
            // The value looked for is a leaked credential.
            let value = match (value, value_file) {
                (Some(v), _) => {
                    eprintln!(
                        "note: a value given with --value is visible to other users of this \
                         machine (ps, shell history); --value-file FILE or --value-file - \
                         (standard input) keep it off the command line"
                    );
                    Zeroizing::new(v)
                }
                (None, Some(path)) => offline::read_value(&path)?,
                (None, None) => return Err(CliError::NoValue),
            };
            let mut found = 0;
            for matches in offline::find_in_audit(&config, &value, &files)? {
                let (f, records) = matches?;
                for (line, text) in records {
                    println!("{}:{line}: {text}", f.display());
                    found += 1;
                }
            }
            if found == 0 {
                eprintln!("no record matches that value");
                return Ok(1);
            }
            Ok(0)
        }
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
async fn keys(c: KeysCmd) -> Result<i32, CliError> {
    let (conn, env) = match &c {
        KeysCmd::Generate { out } => {
            offline::generate_root_key(out)?;
            println!("wrote {} (mode 0600)", out.display());
            return Ok(0);
        }
        KeysCmd::Rotate { conn, env }
        | KeysCmd::Rewrap { conn, env }
        | KeysCmd::Destroy { conn, env, .. } => (conn, env),
    };
    let client = admin_client(conn, AdminRole::Admin)?;
    let answer = match &c {
        KeysCmd::Rotate { .. } => client.rotate_key(env).await?,
        KeysCmd::Rewrap { .. } => client.rewrap(env).await?,
        KeysCmd::Destroy {
            reason, confirm, ..
        } => client.destroy_keys(env, reason, confirm).await?,
        KeysCmd::Generate { .. } => return Ok(0),
    };
    Ok(print_answer(&client, Some(env), &answer, conn.format).await)
}

async fn secrets(conn: &AdminConn, op: SecretsOp) -> Result<i32, CliError> {
    let client = admin_client(conn, AdminRole::Admin)?;
    let env = match &op {
        SecretsOp::Put { env, .. }
        | SecretsOp::Get { env, .. }
        | SecretsOp::List { env, .. }
        | SecretsOp::Delete { env, .. } => env.clone(),
    };
    let answer = match op {
        SecretsOp::Put {
            env,
            path,
            fields,
            data_file,
        } => {
            let stdin = std::io::stdin();
            if stdin.is_terminal()
                && let Some(field) = parse::reads_stdin(&fields).next()
            {
                eprintln!("value of `{field}` (shown as you type; end with Ctrl-D):");
            }
            let data = parse::secret_data(data_file.as_deref(), fields, &mut stdin.lock())?;
            client.put_secret(&env, &path, data).await?
        }
        SecretsOp::Get { env, path } => client.secret_meta(&env, &path).await?,
        SecretsOp::List { env, prefix } => client.list_secrets(&env, &prefix).await?,
        SecretsOp::Delete { env, path } => client.delete_secret(&env, &path).await?,
    };
    Ok(print_answer(&client, Some(&env), &answer, conn.format).await)
}

async fn freeze(a: args::FreezeArgs, frozen: bool) -> Result<i32, CliError> {
    let client = admin_client(&a.conn, AdminRole::Security)?;
    let answer = client.set_frozen(&a.env, frozen, &a.reason).await?;
    Ok(print_answer(&client, Some(&a.env), &answer, a.conn.format).await)
}

async fn revoke(a: RevokeArgs) -> Result<i32, CliError> {
    let selector = RevokeSelector {
        lease_id: a.lease_id,
        environment: a.env,
        role: a.role,
        issuer: a.issuer,
        subject: a.subject,
        claims: parse::pairs(a.claims, || CliError::ClaimGlobSyntax)?,
        policy_version: a.policy_version,
        issued_after: a.issued_after,
        issued_before: a.issued_before,
        all: a.all,
    };
    let client = admin_client(&a.conn, AdminRole::Security)?;
    let env = selector.environment.clone();
    let answer = client.revoke(&selector, &a.reason).await?;
    Ok(print_answer(&client, env.as_deref(), &answer, a.conn.format).await)
}

/// An admin client for `conn`. Without `--ca`, `--cert` and `--key`, a broker on a loopback
/// address is reached with the dev broker's CA and its certificate for `role` (the role the
/// command needs) when they are in `.jobpass-dev/certs/`; a note says so.
fn admin_client(conn: &AdminConn, role: AdminRole) -> Result<AdminClient, CliError> {
    let ca = conn.ca.clone().or_else(|| noted_dev_ca(&conn.server));
    let (cert, key) = match (&conn.cert, &conn.key) {
        (None, None) => match https::dev_identity(&conn.server, role) {
            Some((cert, key)) => {
                eprintln!(
                    "note: presenting the dev broker's {role} certificate {} (key {}); --cert \
                     and --key override",
                    cert.display(),
                    key.display()
                );
                (Some(cert), Some(key))
            }
            None => (None, None),
        },
        (cert, key) => (cert.clone(), key.clone()),
    };
    AdminClient::new(&AdminEndpoint {
        server: conn.server.clone(),
        ca,
        cert,
        key,
    })
}

/// An admin answer: its JSON on standard output and 0 on success, else the error on standard
/// error (with the broker's environments when `env` is unknown to it) and 1.
#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
async fn print_answer(
    client: &AdminClient,
    env: Option<&str>,
    answer: &Answer,
    format: Option<JsonFormat>,
) -> i32 {
    if answer.status.is_success() {
        println!("{}", json_text(&answer.body, format));
        0
    } else {
        eprintln!("{}", client.explain(env, answer).await);
        1
    }
}
