//! The runner-side client (`jobpass exchange`, the real binary) on GitHub Actions and GitLab
//! CI: it finds the job's token itself, masks values, writes `$GITHUB_ENV` in the
//! multi-line-safe format, and `--revoke-at-exit` revokes the lease even when the command fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::support::{AUDIENCE, Broker, binary, gitlab_claims};

/// A fake GitHub Actions token endpoint: answers the pre-signed token when asked with the
/// request token, and records the audience asked for.
async fn token_endpoint(token: String) -> (String, Arc<Mutex<Vec<String>>>) {
    let asked = Arc::new(Mutex::new(Vec::new()));
    let state = (token, asked.clone());
    async fn handler(
        State((token, asked)): State<(String, Arc<Mutex<Vec<String>>>)>,
        headers: HeaderMap,
        Query(q): Query<Vec<(String, String)>>,
    ) -> Result<Json<Value>, StatusCode> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !auth.eq_ignore_ascii_case("bearer request-token-123") {
            return Err(StatusCode::UNAUTHORIZED);
        }
        for (k, v) in &q {
            if k == "audience" {
                asked.lock().unwrap().push(v.clone());
            }
        }
        Ok(Json(json!({"count": 1, "value": token})))
    }
    let app = Router::new()
        .route("/token", get(handler))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/token?api-version=2.0"), asked)
}

fn ca_file(b: &Broker) -> PathBuf {
    let p = b.dir.path().join("client-ca.pem");
    std::fs::write(&p, &b.pki.ca_pem).unwrap();
    p
}

fn jobpass(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(binary());
    cmd.current_dir(dir).args(args);
    for var in [
        "GITHUB_ACTIONS",
        "ACTIONS_ID_TOKEN_REQUEST_URL",
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
        "GITHUB_ENV",
        "GITHUB_OUTPUT",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn on_github_actions_the_token_is_fetched_for_the_right_audience_and_values_are_masked() {
    let b = Broker::start().await;
    let (url, asked) = token_endpoint(b.github_token()).await;
    let ca = ca_file(&b);
    let env_file = b.dir.path().join("github_env");
    let out_file = b.dir.path().join("github_output");
    let (code, stdout, stderr) = tokio::task::spawn_blocking({
        let (dir, url, ca, env_file, out_file, server) = (
            b.dir.path().to_path_buf(),
            url.clone(),
            ca.clone(),
            env_file.clone(),
            out_file.clone(),
            b.url.clone(),
        );
        move || {
            jobpass(
                &dir,
                &[
                    "exchange",
                    "--server",
                    &server,
                    "--ca",
                    ca.to_str().unwrap(),
                    "--env",
                    "prod",
                    "--role",
                    "deploy-web",
                ],
                &[
                    ("GITHUB_ACTIONS", "true"),
                    ("ACTIONS_ID_TOKEN_REQUEST_URL", &url),
                    ("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-123"),
                    ("GITHUB_ENV", env_file.to_str().unwrap()),
                    ("GITHUB_OUTPUT", out_file.to_str().unwrap()),
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        *asked.lock().unwrap(),
        vec![AUDIENCE.to_string()],
        "the environment's audience was requested"
    );

    let env_text = std::fs::read_to_string(&env_file).unwrap();
    // NAME<<DELIM / value / DELIM, for every variable.
    let lines: Vec<&str> = env_text.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.starts_with("JOBPASS_API<<"))
        .expect("JOBPASS_API written");
    let delim = lines[i].split_once("<<").unwrap().1;
    assert!(delim.starts_with("ghadelimiter_") && delim.len() > 20);
    let token = lines[i + 1];
    assert!(token.starts_with("jpt_"));
    assert_eq!(lines[i + 2], delim);
    assert!(lines.iter().any(|l| l.starts_with("JOBPASS_DEPLOY<<")));
    assert!(lines.iter().any(|l| l.starts_with("JOBPASS_LEASE_ID<<")));
    // The value is masked before anything else is printed, and printed nowhere else.
    assert!(stdout.starts_with("::add-mask::"), "{stdout}");
    assert_eq!(
        stdout.matches(token).count(),
        1,
        "only in its mask line: {stdout}"
    );
    assert!(stdout.contains(&format!("::add-mask::{token}")));
    assert!(
        std::fs::read_to_string(&out_file)
            .unwrap()
            .contains("api<<ghadelimiter_")
    );
    // And it works.
    assert_ne!(
        b.get("/v1/secrets/prod/deploy/web/none", Some(token))
            .await
            .0,
        401
    );
}

async fn on_gitlab_ci_the_token_comes_from_the_named_id_tokens_variable() {
    let b = Broker::start().await;
    let ca = ca_file(&b);
    let token = b.gl.sign(gitlab_claims(&b.gl.issuer_url()));
    let (dir, server) = (b.dir.path().to_path_buf(), b.url.clone());
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        jobpass(
            &dir,
            &[
                "exchange",
                "--server",
                &server,
                "--ca",
                ca.to_str().unwrap(),
                "--env",
                "staging",
                "--token-env",
                "MY_ID_TOKEN",
                "--format",
                "env",
            ],
            &[("MY_ID_TOKEN", &token)],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("export JOBPASS_API='jpt_"), "{stdout}");
    assert!(stdout.contains("export JOBPASS_LEASE_ID='lse_"), "{stdout}");
}

async fn revoke_at_exit_revokes_the_lease_even_when_the_command_fails() {
    let b = Broker::start().await;
    b.put_secret(
        "prod",
        "deploy/web/api",
        json!({"key": "used-by-the-command"}),
    )
    .await;
    let ca = ca_file(&b);
    let token = b.github_token();
    let seen = b.dir.path().join("seen");
    let script = format!("echo \"$JOBPASS_API\" > {}; exit 3", seen.display());
    let (dir, server) = (b.dir.path().to_path_buf(), b.url.clone());
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        jobpass(
            &dir,
            &[
                "exchange",
                "--server",
                &server,
                "--ca",
                ca.to_str().unwrap(),
                "--env",
                "prod",
                "--role",
                "deploy-web",
                "--token",
                &token,
                "--revoke-at-exit",
                "--",
                "sh",
                "-c",
                &script,
            ],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 3, "the command's exit status: {stderr}");
    let broker_token = std::fs::read_to_string(&seen).unwrap().trim().to_string();
    assert!(
        broker_token.starts_with("jpt_"),
        "the command saw its credential"
    );
    let (s, _) = b
        .get("/v1/secrets/prod/deploy/web/api", Some(&broker_token))
        .await;
    assert_eq!(s, 401, "revoked when the command ended");
}

async fn without_a_token_source_the_error_says_what_to_do() {
    let b = Broker::start().await;
    let (dir, server) = (b.dir.path().to_path_buf(), b.url.clone());
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        jobpass(
            &dir,
            &["exchange", "--server", &server, "--env", "prod"],
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        stderr.contains("id-token: write") && stderr.contains("id_tokens"),
        "{stderr}"
    );
}

crate::support::harness::cases! {
    EachStore: [
        on_github_actions_the_token_is_fetched_for_the_right_audience_and_values_are_masked,
        on_gitlab_ci_the_token_comes_from_the_named_id_tokens_variable,
        revoke_at_exit_revokes_the_lease_even_when_the_command_fails,
        without_a_token_source_the_error_says_what_to_do,
    ],
}
