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

pub mod admin;
pub mod args;
pub mod error;
pub mod https;
pub mod offline;
mod parse;
pub mod runner;
pub mod serve;

use std::io::Write;

use serde_json::Map;
use zeroize::Zeroizing;

pub use args::Cli;
pub use error::CliError;

use admin::{AdminClient, AdminEndpoint, Health, LeaseQuery, RevokeSelector};
use args::{
    AdminConn, AuditCmd, CertsCmd, Command, DevCmd, ExchangeArgs, Format, KeysCmd, LeasesOp,
    PolicyCmd, RevokeArgs, SecretsOp, ServeArgs,
};
use https::{Answer, error_text};
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
        Command::Dev(DevCmd::Token {
            env,
            claims,
            data_dir,
            policies,
            ttl,
        }) => {
            let extra: Map<_, _> = serde_json::from_str(&claims).map_err(CliError::DevClaims)?;
            let token = offline::dev_token(&data_dir, &policies, &env, extra, ttl.into())?;
            println!("{}", token.as_str());
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
            let answer = admin_client(&a.conn)?.list_leases(&query).await?;
            Ok(print_answer(&answer))
        }
        Command::Revoke(a) => revoke(a).await,
        Command::Freeze(a) => {
            let answer = admin_client(&a.conn)?
                .set_frozen(&a.env, true, &a.reason)
                .await?;
            Ok(print_answer(&answer))
        }
        Command::Unfreeze(a) => {
            let answer = admin_client(&a.conn)?
                .set_frozen(&a.env, false, &a.reason)
                .await?;
            Ok(print_answer(&answer))
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "jobpass", &mut out);
            // A closed pipe (`| head`) is not an error worth a panic.
            drop(std::io::stdout().write_all(&out));
            Ok(0)
        }
        Command::Health { server, ca } => match admin::health(&server, ca.as_deref()).await? {
            Health::Healthy => Ok(0),
            Health::Unhealthy(why) => {
                eprintln!("unhealthy: {why}");
                Ok(1)
            }
        },
    }
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
    ExchangeRequest {
        server: a.server,
        environment: a.env,
        role: a.role,
        token,
        audience: a.audience,
        ca: a.ca,
        output: a.format.map(|f| match f {
            Format::Json => Output::Json,
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
        } => match offline::test_policy(&dir, &env, role.as_deref(), &claims)? {
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
    let answer = match c {
        KeysCmd::Generate { out } => {
            offline::generate_root_key(&out)?;
            println!("wrote {} (mode 0600)", out.display());
            return Ok(0);
        }
        KeysCmd::Rotate { conn, env } => admin_client(&conn)?.rotate_key(&env).await?,
        KeysCmd::Rewrap { conn, env } => admin_client(&conn)?.rewrap(&env).await?,
        KeysCmd::Destroy {
            conn,
            env,
            reason,
            confirm,
        } => {
            admin_client(&conn)?
                .destroy_keys(&env, &reason, &confirm)
                .await?
        }
    };
    Ok(print_answer(&answer))
}

async fn secrets(conn: &AdminConn, op: SecretsOp) -> Result<i32, CliError> {
    let answer = match op {
        SecretsOp::Put {
            env,
            path,
            fields,
            data_file,
        } => {
            let stdin = std::io::stdin();
            if std::io::IsTerminal::is_terminal(&stdin)
                && let Some(field) = parse::reads_stdin(&fields).next()
            {
                eprintln!("value of `{field}` (shown as you type; end with Ctrl-D):");
            }
            let data = parse::secret_data(data_file.as_deref(), fields, &mut stdin.lock())?;
            admin_client(conn)?.put_secret(&env, &path, data).await?
        }
        SecretsOp::Get { env, path } => admin_client(conn)?.secret_meta(&env, &path).await?,
        SecretsOp::List { env, prefix } => admin_client(conn)?.list_secrets(&env, &prefix).await?,
        SecretsOp::Delete { env, path } => admin_client(conn)?.delete_secret(&env, &path).await?,
    };
    Ok(print_answer(&answer))
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
    let answer = admin_client(&a.conn)?.revoke(&selector, &a.reason).await?;
    Ok(print_answer(&answer))
}

fn admin_client(conn: &AdminConn) -> Result<AdminClient, CliError> {
    AdminClient::new(&AdminEndpoint {
        server: conn.server.clone(),
        ca: conn.ca.clone(),
        cert: conn.cert.clone(),
        key: conn.key.clone(),
    })
}

/// An admin answer: pretty JSON on standard output and 0 on success, else the error on
/// standard error and 1.
#[allow(
    clippy::print_stdout,
    reason = "the command line answers on standard output"
)]
fn print_answer(answer: &Answer) -> i32 {
    if answer.status.is_success() {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer.body).unwrap_or_default()
        );
        0
    } else {
        eprintln!("{}", error_text(&answer.body));
        1
    }
}
