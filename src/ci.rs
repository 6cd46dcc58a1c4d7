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

use std::io::Write;
use std::path::Path;

use openidconnect::http::Method;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::cli::{ExchangeArgs, Format};
use crate::client::{error_text, http_client, send};

/// Where the token came from (for error messages; never the token).
fn token_source(a: &ExchangeArgs) -> &'static str {
    if a.token.is_some() {
        "--token"
    } else if a.token_file.is_some() {
        "--token-file"
    } else if a.token_env.is_some() {
        "--token-env"
    } else {
        "GitHub Actions"
    }
}

/// The environment's expected audience, from the broker (`GET /v1/envs/<env>`).
async fn audience(
    client: &openidconnect::reqwest::Client,
    server: &str,
    env: &str,
) -> Result<String, String> {
    let (status, v) = send(
        client,
        Method::GET,
        &format!("{server}/v1/envs/{env}"),
        None,
    )
    .await?;
    if !status.is_success() {
        return Err(format!(
            "cannot learn the audience of `{env}`: {}",
            error_text(&v)
        ));
    }
    v["audience"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| "the broker did not name the environment's audience".into())
}

/// GitHub Actions: `GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=AUD` with the request token.
async fn github_token(
    audience: &str,
    url: &str,
    bearer: &str,
) -> Result<Zeroizing<String>, String> {
    let client = openidconnect::reqwest::Client::builder()
        .redirect(openidconnect::reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let aud: String =
        serde_urlencoded::to_string([("audience", audience)]).map_err(|e| e.to_string())?;
    let resp = client
        .get(format!("{url}{sep}{aud}"))
        .bearer_auth(bearer)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("cannot reach the GitHub Actions token endpoint: {e}"))?;
    let status = resp.status();
    let text = Zeroizing::new(resp.text().await.map_err(|e| e.to_string())?);
    if !status.is_success() {
        return Err(format!(
            "the GitHub Actions token endpoint answered {status}; does the job have `permissions: id-token: write`?"
        ));
    }
    let v: Value = serde_json::from_str(&text)
        .map_err(|_| "the GitHub Actions token endpoint did not answer JSON".to_string())?;
    v["value"]
        .as_str()
        .map(|s| Zeroizing::new(s.to_string()))
        .ok_or_else(|| "the GitHub Actions token endpoint answered without a token".into())
}

/// Finds the OIDC token: explicit sources first, then the CI platform's.
async fn find_token(
    a: &ExchangeArgs,
    client: &openidconnect::reqwest::Client,
    server: &str,
) -> Result<Zeroizing<String>, String> {
    if let Some(t) = &a.token {
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    if let Some(f) = &a.token_file {
        let t =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        return Ok(Zeroizing::new(t.trim().to_string()));
    }
    if let Some(name) = &a.token_env {
        return std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| Zeroizing::new(v.trim().to_string()))
            .ok_or_else(|| format!("variable {name} is empty or unset (GitLab: declare it under `id_tokens:` in the job)"));
    }
    if let (Ok(url), Ok(bearer)) = (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) {
        let aud = match &a.audience {
            Some(aud) => aud.clone(),
            None => audience(client, server, &a.env).await?,
        };
        return github_token(&aud, &url, &bearer).await;
    }
    Err("no OIDC token found: on GitHub Actions give the job `permissions: id-token: write`; on GitLab CI \
         declare an `id_tokens:` variable and pass --token-env NAME; elsewhere pass --token-file FILE"
        .into())
}

/// Variables (name, value) for the credentials: `JOBPASS_LEASE_ID`, `JOBPASS_<NAME>` for tokens
/// and JWTs, `JOBPASS_<NAME>_<FIELD>` for the parts of database and certificate credentials.
pub fn variables(answer: &Value) -> Vec<(String, Zeroizing<String>)> {
    let mut out = vec![(
        "JOBPASS_LEASE_ID".to_string(),
        Zeroizing::new(answer["lease_id"].as_str().unwrap_or_default().to_string()),
    )];
    for c in answer["credentials"].as_array().into_iter().flatten() {
        let name = env_name(c["name"].as_str().unwrap_or("credential"));
        let Some(fields) = c.as_object() else {
            continue;
        };
        if let Some(t) = c["token"].as_str() {
            out.push((format!("JOBPASS_{name}"), Zeroizing::new(t.to_string())));
        }
        for (field, suffix) in [
            ("username", "USERNAME"),
            ("password", "PASSWORD"),
            ("host", "HOST"),
            ("port", "PORT"),
            ("database", "DATABASE"),
            ("certificate_pem", "CERTIFICATE"),
            ("private_key_pem", "PRIVATE_KEY"),
            ("ca_pem", "CA"),
        ] {
            if let Some(v) = fields.get(field) {
                let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                out.push((format!("JOBPASS_{name}_{suffix}"), Zeroizing::new(text)));
            }
        }
    }
    out
}

/// The secret values of an answer (what must be masked).
fn secret_values(answer: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in answer["credentials"].as_array().into_iter().flatten() {
        for field in ["token", "password", "private_key_pem"] {
            if let Some(v) = c[field].as_str() {
                out.push(v.to_string());
            }
        }
    }
    out
}

fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Appends `NAME<<DELIM\nvalue\nDELIM\n` lines (GitHub's multi-line-safe format) with a random
/// delimiter that cannot occur in the value.
fn append_github_file(path: &Path, vars: &[(String, Zeroizing<String>)]) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    for (name, value) in vars {
        let delim = loop {
            let d = format!(
                "ghadelimiter_{}",
                hex::encode(crate::crypto::random::bytes::<12>().map_err(|e| e.to_string())?)
            );
            if !value.contains(&d) {
                break d;
            }
        };
        let text = Zeroizing::new(format!("{name}<<{delim}\n{}\n{delim}\n", value.as_str()));
        f.write_all(text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Revokes the lease of an exchange answer with its own credential (a broker token through
/// `/v1/revoke/self`, else a JWT through RFC 7009).
async fn revoke_own(
    client: &openidconnect::reqwest::Client,
    server: &str,
    answer: &Value,
) -> Result<(), String> {
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
            .await
            .map_err(|e| format!("revocation failed: {e}"))?;
        return if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("revocation answered {}", resp.status()))
        };
    }
    if let Some(t) = creds
        .iter()
        .find_map(|c| (c["kind"] == "jwt").then(|| c["token"].as_str()).flatten())
    {
        let form =
            Zeroizing::new(serde_urlencoded::to_string([("token", t)]).map_err(|e| e.to_string())?);
        let resp = client
            .post(format!("{server}/v1/oauth/revoke"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.to_string())
            .send()
            .await
            .map_err(|e| format!("revocation failed: {e}"))?;
        return if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("revocation answered {}", resp.status()))
        };
    }
    Err("the role grants no token or JWT to revoke the lease with; it ends at its expiry".into())
}

/// `jobpass exchange`.
pub async fn exchange(a: ExchangeArgs) -> Result<i32, String> {
    let server = a.server.trim_end_matches('/').to_string();
    let client = http_client(a.ca.as_deref(), None, None)?;
    let token = find_token(&a, &client, &server).await?;
    let mut body = json!({"token": token.as_str(), "environment": a.env});
    if let Some(r) = &a.role {
        body["role"] = Value::String(r.clone());
    }
    let (status, answer) = send(
        &client,
        Method::POST,
        &format!("{server}/v1/exchange"),
        Some(body),
    )
    .await?;
    if !status.is_success() {
        eprintln!("{} (token from {})", error_text(&answer), token_source(&a));
        return Ok(1);
    }
    let on_github = std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true");
    if on_github {
        // Mask every value, line by line, before anything could print it into the job log.
        for v in secret_values(&answer) {
            for line in v.lines().filter(|l| !l.trim().is_empty()) {
                println!("::add-mask::{line}");
            }
        }
    }
    let vars = variables(&answer);
    let format = a.format.unwrap_or(if on_github {
        Format::Github
    } else {
        Format::Json
    });
    if a.command.is_empty() {
        match format {
            Format::Json => println!("{answer}"),
            Format::Env => {
                for (k, v) in &vars {
                    println!("export {k}={}", shell_quote(v));
                }
            }
            Format::Github => {
                let env_file = std::env::var("GITHUB_ENV").map_err(|_| {
                    "--format github needs $GITHUB_ENV (run inside GitHub Actions)".to_string()
                })?;
                append_github_file(Path::new(&env_file), &vars)?;
                if let Ok(out) = std::env::var("GITHUB_OUTPUT") {
                    let outputs: Vec<(String, Zeroizing<String>)> = vars
                        .iter()
                        .map(|(k, v)| (k.trim_start_matches("JOBPASS_").to_lowercase(), v.clone()))
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
    }
    // Run the command with the credentials in its environment, then end the lease.
    let mut cmd = tokio::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    for (k, v) in &vars {
        cmd.env(k, v.as_str());
    }
    let status = cmd.status().await;
    let revoked = if a.revoke_at_exit {
        Some(revoke_own(&client, &server, &answer).await)
    } else {
        None
    };
    if let Some(Err(e)) = &revoked {
        eprintln!("jobpass: {e}");
    }
    let code = match status {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("jobpass: cannot run {}: {e}", a.command[0]);
            127
        }
    };
    Ok(if code == 0 && matches!(revoked, Some(Err(_))) {
        1
    } else {
        code
    })
}
