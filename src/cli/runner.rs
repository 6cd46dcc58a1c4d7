//! The runner-side client (`jobpass exchange`): finds the job's OIDC token itself (GitHub
//! Actions' token endpoint, a GitLab `id_tokens` variable, a file or an argument), exchanges
//! it, and hands the credentials to the job — as JSON, shell `export` lines, or on GitHub
//! Actions masked (`::add-mask::`) and written to `$GITHUB_ENV`/`$GITHUB_OUTPUT` in the
//! multi-line-safe format — optionally running a command with them and revoking the lease when
//! it ends, whatever its outcome.
#![allow(
    clippy::print_stdout,
    reason = "the runner-side client writes credentials and shell lines to standard output"
)]

use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use openidconnect::http::Method;
use openidconnect::reqwest;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::error::CliError;
use super::https::Https;

/// Where the job's OIDC token comes from.
pub enum TokenSource {
    /// Given as is (`--token`).
    Literal(Zeroizing<String>),
    /// Read from a file (`--token-file`).
    File(PathBuf),
    /// Read from an environment variable (`--token-env`; GitLab CI's `id_tokens:`).
    Env(String),
    /// Asked of the CI platform: GitHub Actions' token endpoint
    /// (`ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`).
    Platform,
}

impl TokenSource {
    /// Where the token came from, as the command line names it (for error messages; never the
    /// token).
    fn label(&self) -> &'static str {
        match self {
            Self::Literal(_) => "--token",
            Self::File(_) => "--token-file",
            Self::Env(_) => "--token-env",
            Self::Platform => "GitHub Actions",
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(_) => f.write_str("Literal(..)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Env(name) => f.debug_tuple("Env").field(name).finish(),
            Self::Platform => f.write_str("Platform"),
        }
    }
}

/// How the credentials are handed to the job when no command is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The JSON answer, indented or on one line.
    Json {
        /// Indented.
        pretty: bool,
    },
    /// `export NAME=value` lines for a shell.
    Env,
    /// GitHub Actions: masked values appended to `$GITHUB_ENV` and `$GITHUB_OUTPUT`.
    Github,
}

/// One `jobpass exchange`.
#[derive(Debug)]
pub struct ExchangeRequest {
    /// Broker URL.
    pub server: String,
    /// Environment.
    pub environment: String,
    /// Role (default: the environment's default role).
    pub role: Option<String>,
    /// Where the OIDC token comes from.
    pub token: TokenSource,
    /// Audience to ask the CI platform for (default: the environment's, asked of the broker).
    pub audience: Option<String>,
    /// CA certificate (PEM) to trust for the broker (default: the public roots).
    pub ca: Option<PathBuf>,
    /// Output (default: [`Output::Github`] on GitHub Actions, else [`Output::Json`], indented
    /// when standard output is a terminal); unused when a command runs.
    pub output: Option<Output>,
    /// Revoke the lease when the command ends (whatever its exit status).
    pub revoke_at_exit: bool,
    /// Command (program and arguments) to run with the credentials in its environment; empty
    /// to print them instead.
    pub command: Vec<String>,
}

/// The environment's expected audience, from the broker (`GET /v1/envs/<env>`).
async fn audience(https: &Https, server: &str, env: &str) -> Result<String, CliError> {
    let answer = https
        .send(Method::GET, &format!("{server}/v1/envs/{env}"), None)
        .await?;
    if !answer.status.is_success() {
        return Err(CliError::Audience {
            env: env.to_owned(),
            answer: https.explain(server, Some(env), &answer).await,
        });
    }
    answer.body["audience"]
        .as_str()
        .map(str::to_string)
        .ok_or(CliError::NoAudience)
}

/// GitHub Actions: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD` with the request token.
async fn github_token(
    audience: &str,
    url: &str,
    bearer: &str,
) -> Result<Zeroizing<String>, CliError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(CliError::TokenEndpointClient)?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let aud: String = serde_urlencoded::to_string([("audience", audience)])?;
    let resp = client
        .get(format!("{url}{sep}{aud}"))
        .bearer_auth(bearer)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(CliError::TokenEndpointUnreachable)?;
    let status = resp.status();
    let text = Zeroizing::new(resp.text().await.map_err(CliError::TokenEndpointRead)?);
    if !status.is_success() {
        return Err(CliError::TokenEndpointRefused(status));
    }
    // `v` holds a copy of the token that is not wiped (a serde_json value cannot be); it is
    // dropped at the end of this function.
    let v: Value = serde_json::from_str(&text).map_err(|_| CliError::TokenEndpointNotJson)?;
    v["value"]
        .as_str()
        .map(|s| Zeroizing::new(s.to_string()))
        .ok_or(CliError::TokenEndpointNoToken)
}

/// Finds the OIDC token: explicit sources first, then the CI platform's.
async fn find_token(
    r: &ExchangeRequest,
    https: &Https,
    server: &str,
) -> Result<Zeroizing<String>, CliError> {
    match &r.token {
        TokenSource::Literal(t) => Ok(Zeroizing::new(t.trim().to_string())),
        TokenSource::File(f) => {
            let t =
                Zeroizing::new(std::fs::read_to_string(f).map_err(|source| CliError::Read {
                    path: f.clone(),
                    source,
                })?);
            Ok(Zeroizing::new(t.trim().to_string()))
        }
        TokenSource::Env(name) => std::env::var(name)
            .ok()
            .map(Zeroizing::new)
            .filter(|v| !v.trim().is_empty())
            .map(|v| Zeroizing::new(v.trim().to_string()))
            .ok_or_else(|| CliError::TokenVariable(name.clone())),
        TokenSource::Platform => {
            let (Ok(url), Ok(bearer)) = (
                std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
                std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
            ) else {
                return Err(CliError::NoToken);
            };
            let bearer = Zeroizing::new(bearer);
            let aud = match &r.audience {
                Some(aud) => aud.clone(),
                None => audience(https, server, &r.environment).await?,
            };
            github_token(&aud, &url, &bearer).await
        }
    }
}

/// Variables (name, value) for the credentials: `JOBPASS_LEASE_ID`, `JOBPASS_<NAME>` for tokens
/// and JWTs, `JOBPASS_<NAME>_<FIELD>` for the parts of database and certificate credentials.
pub fn variables(answer: &Value) -> Vec<(String, Zeroizing<String>)> {
    credential_variables(answer)
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .collect()
}

/// [`variables`], each with the grant it comes from (`None`: the lease id).
fn credential_variables(answer: &Value) -> Vec<(Option<String>, String, Zeroizing<String>)> {
    let mut out = vec![(
        None,
        "JOBPASS_LEASE_ID".to_string(),
        Zeroizing::new(answer["lease_id"].as_str().unwrap_or_default().to_string()),
    )];
    for c in answer["credentials"].as_array().into_iter().flatten() {
        let grant = c["name"].as_str().unwrap_or("credential");
        let Some(fields) = c.as_object() else {
            continue;
        };
        if let Some(t) = c["token"].as_str() {
            out.push((
                Some(grant.to_owned()),
                crate::names::credential_variable(grant, None),
                Zeroizing::new(t.to_string()),
            ));
        }
        let parts = crate::names::DATABASE_FIELDS
            .iter()
            .chain(crate::names::CERTIFICATE_FIELDS);
        for (field, suffix) in parts {
            if let Some(v) = fields.get(*field) {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                out.push((
                    Some(grant.to_owned()),
                    crate::names::credential_variable(grant, Some(suffix)),
                    Zeroizing::new(text),
                ));
            }
        }
    }
    out
}

/// Refuses variables that jobpass itself reads or that two credentials share: a grant named
/// `server` would put a broker token into `JOBPASS_SERVER`, where the next command would show
/// it in an error, and one named like a configuration key would be read as configuration.
fn check_variables(answer: &Value) -> Result<(), CliError> {
    let mut seen = std::collections::HashSet::new();
    for (grant, variable, _) in credential_variables(answer) {
        let why = if !seen.insert(variable.clone()) {
            Some("a name another credential of the lease has")
        } else if grant.is_none() {
            None
        } else {
            crate::config::credential_variable_conflict(&variable)
        };
        if let Some(why) = why {
            return Err(CliError::CredentialVariable {
                lease: answer["lease_id"].as_str().unwrap_or_default().to_owned(),
                grant: grant.unwrap_or_default(),
                variable,
                why,
            });
        }
    }
    Ok(())
}

/// The secret values of an answer (what must be masked).
fn secret_values(answer: &Value) -> Vec<Zeroizing<String>> {
    let mut out = Vec::new();
    for c in answer["credentials"].as_array().into_iter().flatten() {
        for field in ["token", "password", "private_key_pem"] {
            if let Some(v) = c[field].as_str() {
                out.push(Zeroizing::new(v.to_string()));
            }
        }
    }
    out
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Appends `NAME<<DELIM\nvalue\nDELIM\n` lines (GitHub's multi-line-safe format) with a random
/// delimiter that cannot occur in the value.
fn append_github_file(path: &Path, vars: &[(String, Zeroizing<String>)]) -> Result<(), CliError> {
    let write_error = |source| CliError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(write_error)?;
    for (name, value) in vars {
        let delim = loop {
            let d = format!(
                "ghadelimiter_{}",
                hex::encode(crate::crypto::random::bytes::<12>()?)
            );
            if !value.contains(&d) {
                break d;
            }
        };
        let text = Zeroizing::new(format!("{name}<<{delim}\n{}\n{delim}\n", value.as_str()));
        f.write_all(text.as_bytes()).map_err(write_error)?;
    }
    Ok(())
}

/// Whether the broker ended the lease: sent, and answered with success.
fn revocation_answer(resp: Result<reqwest::Response, reqwest::Error>) -> Result<(), CliError> {
    let resp = resp.map_err(CliError::RevocationFailed)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(CliError::RevocationRefused(resp.status()))
    }
}

/// Revokes the lease of an exchange answer with its own credential (a broker token through
/// `/v1/revoke/self`, else a JWT through RFC 7009).
async fn revoke_own(
    client: &reqwest::Client,
    server: &str,
    answer: &Value,
) -> Result<(), CliError> {
    let creds = answer["credentials"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if let Some(t) = creds.iter().find_map(|c| {
        (c["kind"] == "token")
            .then(|| c["token"].as_str())
            .flatten()
    }) {
        let resp = client
            .post(format!("{server}/v1/revoke/self"))
            .bearer_auth(t)
            .send()
            .await;
        return revocation_answer(resp);
    }
    if let Some(t) = creds
        .iter()
        .find_map(|c| (c["kind"] == "jwt").then(|| c["token"].as_str()).flatten())
    {
        let form = Zeroizing::new(serde_urlencoded::to_string([("token", t)])?);
        let resp = client
            .post(format!("{server}/v1/oauth/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await;
        return revocation_answer(resp);
    }
    Err(CliError::NothingToRevokeWith)
}

/// `jobpass exchange`: exchanges the job's token and hands the credentials over as
/// `request.output` says, or runs `request.command` with them (revoking the lease afterwards
/// with `revoke_at_exit`). Returns the exit status: 1 when the broker refuses, the command's
/// own when one runs (1 when it succeeded but the revocation failed).
///
/// # Errors
/// No token, an unreachable broker, an unwritable `$GITHUB_ENV`…: nothing was handed over.
pub async fn exchange(request: ExchangeRequest) -> Result<i32, CliError> {
    let server = request.server.trim_end_matches('/').to_string();
    let https = Https::new(request.ca.as_deref(), None, None)?;
    let client = &https.client;
    let token = find_token(&request, &https, &server).await?;
    let mut body = json!({"token": token.as_str(), "environment": request.environment});
    if let Some(r) = &request.role {
        body["role"] = Value::String(r.clone());
    }
    let exchanged = https
        .send(Method::POST, &format!("{server}/v1/exchange"), Some(body))
        .await?;
    if !exchanged.status.is_success() {
        eprintln!(
            "{} (token from {})",
            https
                .explain(&server, Some(&request.environment), &exchanged)
                .await,
            request.token.label()
        );
        return Ok(1);
    }
    let answer = exchanged.body;
    let on_github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if on_github {
        // Mask every value, line by line, before anything could print it into the job log.
        for v in secret_values(&answer) {
            for line in v.lines().filter(|l| !l.trim().is_empty()) {
                println!("::add-mask::{line}");
            }
        }
    }
    if let Err(refused) = check_variables(&answer) {
        // Nothing is handed over: the lease ends now instead of living until it expires.
        if let Err(e) = revoke_own(client, &server, &answer).await {
            eprintln!("jobpass: {e}");
        }
        return Err(refused);
    }
    let vars = variables(&answer);
    let output = request.output.unwrap_or(if on_github {
        Output::Github
    } else {
        Output::Json {
            pretty: std::io::stdout().is_terminal(),
        }
    });
    let Some((program, args)) = request.command.split_first() else {
        match output {
            Output::Json { pretty: false } => println!("{answer}"),
            Output::Json { pretty: true } => println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            ),
            Output::Env => {
                for (k, v) in &vars {
                    println!("export {k}={}", shell_quote(v));
                }
            }
            Output::Github => {
                let env_file = std::env::var("GITHUB_ENV").map_err(|_| CliError::NoGithubEnv)?;
                append_github_file(Path::new(&env_file), &vars)?;
                if let Ok(out) = std::env::var("GITHUB_OUTPUT") {
                    let outputs: Vec<(String, Zeroizing<String>)> = vars
                        .iter()
                        .map(|(k, v)| {
                            (
                                k.strip_prefix("JOBPASS_").unwrap_or(k).to_lowercase(),
                                v.clone(),
                            )
                        })
                        .collect();
                    append_github_file(Path::new(&out), &outputs)?;
                }
                let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
                println!(
                    "jobpass: lease {} — set {}",
                    answer["lease_id"].as_str().unwrap_or(""),
                    names.join(", ")
                );
            }
        }
        return Ok(0);
    };
    // Run the command with the credentials in its environment, then end the lease.
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for (k, v) in &vars {
        cmd.env(k, v.as_str());
    }
    let status = cmd.status().await;
    let revoked = if request.revoke_at_exit {
        Some(revoke_own(client, &server, &answer).await)
    } else {
        None
    };
    if let Some(Err(e)) = &revoked {
        eprintln!("jobpass: {e}");
    }
    let code = match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("jobpass: cannot run {program}: {e}");
            127
        }
    };
    Ok(if code == 0 && matches!(revoked, Some(Err(_))) {
        1
    } else {
        code
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn answer(grants: &[&str]) -> Value {
        let credentials: Vec<Value> = grants
            .iter()
            .map(|g| json!({"name": g, "kind": "token", "token": "jpt_secret"}))
            .collect();
        json!({"lease_id": "lse_1", "credentials": credentials})
    }

    fn refused(grants: &[&str]) -> Option<String> {
        check_variables(&answer(grants))
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn grants_that_would_overwrite_what_jobpass_reads_are_not_exported() {
        for (grant, variable) in [
            ("server", "JOBPASS_SERVER"),
            ("ca", "JOBPASS_CA"),
            ("store", "JOBPASS_STORE"),
            ("tls-crl", "JOBPASS_TLS_CRL"),
            ("lease-id", "JOBPASS_LEASE_ID"),
        ] {
            let e = refused(&[grant]).unwrap_or_else(|| panic!("{grant} was exported"));
            assert!(
                e.contains(&format!("grant `{grant}`")) && e.contains(variable),
                "{e}"
            );
            assert!(!e.contains("jpt_secret"), "{e}");
        }
        let e = refused(&["deploy-db", "deploy_db"]).unwrap_or_default();
        assert!(e.contains("another credential"), "{e}");
        // The grant named is the one whose variable it is, not one whose name is a prefix.
        let e = refused(&["s", "server"]).unwrap_or_default();
        assert!(e.contains("grant `server`") && e.contains("lse_1"), "{e}");
        for ok in [&["secrets"][..], &["deploy", "test-api", "api"][..]] {
            assert_eq!(refused(ok), None, "{ok:?}");
        }
    }
}
