//! The real `jobpass` binary: the README's five-minute walk-through with `serve --dev`, and the
//! offline tools.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::child::DevServer;
use crate::support::{binary, client_with};

fn repo_policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary with `stdin` as its standard input.
fn run_with_stdin(dir: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(binary())
        .current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

async fn dev_mode_walk_through_from_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_policies(), &dir.path().join("policies"));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("https://{listen}");
    let mut server = DevServer::start(dir.path(), &listen).await;
    let ca_path = dir.path().join(".jobpass-dev/certs/ca.pem");
    let ca = std::fs::read_to_string(&ca_path).unwrap();
    let ready = client_with(Some(&ca), None)
        .get(format!("{url}/readyz"))
        .send()
        .await
        .unwrap();
    assert!(
        ready.status().is_success(),
        "dev server is ready once listening"
    );

    // A dev token, exchanged with the CLI.
    let (code, token, err) = run(dir.path(), &["dev", "token", "--env", "dev"]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    let ca = ca_path.to_str().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &[
            "exchange", "--server", &url, "--ca", ca, "--env", "dev", "--token", &token,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["role"], "ci", "the default role");
    let broker_token = v["credentials"][0]["token"].as_str().unwrap().to_string();

    // An admin stores a secret with the dev admin certificate; the job reads it.
    let certs = dir.path().join(".jobpass-dev/certs");
    let cert = certs.join("admin.pem");
    let key = certs.join("admin-key.pem");
    let put = |field: &str| {
        [
            "secrets",
            "put",
            "dev",
            "dev/app/db",
            field,
            "--server",
            &url,
            "--ca",
            ca,
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]
        .map(str::to_string)
    };
    // A value on the command line is refused, without echoing it, and nothing is stored.
    let (code, out, err) = run(
        dir.path(),
        &put("password=dev-password-123")
            .each_ref()
            .map(String::as_str),
    );
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("password=@FILE")
            && err.contains("password=@-")
            && err.contains("--data-file"),
        "{err}"
    );
    assert!(
        !err.contains("dev-password-123") && !out.contains("dev-password-123"),
        "{err}"
    );
    // The value from standard input (as `echo … |` gives it: the newline is not part of it).
    let (code, out, err) = run_with_stdin(
        dir.path(),
        &put("password=@-").each_ref().map(String::as_str),
        "dev-password-123\n",
    );
    assert_eq!(code, 0, "{err}");
    let put_answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        put_answer["version"], 1,
        "the refused put stored nothing: {out}"
    );
    let c = client_with(Some(&std::fs::read_to_string(&ca_path).unwrap()), None);
    let r = c
        .get(format!("{url}/v1/secrets/dev/dev/app/db"))
        .bearer_auth(&broker_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["data"]["password"], "dev-password-123");
    // The same dev token cannot be exchanged twice.
    let (code, _, err) = run(
        dir.path(),
        &[
            "exchange", "--server", &url, "--ca", ca, "--env", "dev", "--token", &token,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("token_replayed"), "{err}");

    // The service log (stdout and stderr) never shows the issued values.
    let logs = server.kill();
    assert!(
        logs.contains("dev token"),
        "the banner explains how to get a token: {logs}"
    );
    for v in [
        &broker_token,
        "dev-password-123",
        token.rsplit('.').next().unwrap(),
    ] {
        assert!(!logs.contains(v), "issued value in the service log");
    }
    // And the audit chain verifies with the dev config's root key.
    let cfg = dir.path().join("verify.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keys]\nroot_key_file = \"{}\"\n",
            dir.path().join(".jobpass-dev/root.key").display()
        ),
    )
    .unwrap();
    let (code, out, err) = run(
        dir.path(),
        &[
            "audit",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            ".jobpass-dev/audit.log",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

async fn serve_refuses_an_unknown_config_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("jobpass.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nstorre = \"sqlite://x.db\"\n",
    )
    .unwrap();
    let (code, _, err) = run(dir.path(), &["serve", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("storre"), "{err}");
}

async fn serve_refuses_a_missing_or_group_readable_root_key() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_policies(), &dir.path().join("policies"));
    let cfg = dir.path().join("jobpass.toml");
    std::fs::write(
        &cfg,
        "insecure_http = true\nlisten = \"127.0.0.1:0\"\n[keys]\nroot_key_file = \"root.key\"\n\
         [[issuer]]\nurl = \"https://token.actions.githubusercontent.com\"\n\
         [[issuer]]\nurl = \"https://gitlab.com\"\n",
    )
    .unwrap();
    let (code, _, err) = run(dir.path(), &["serve", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("keys generate"), "{err}");
    let (code, _, err) = run(dir.path(), &["keys", "generate", "--out", "root.key"]);
    assert_eq!(code, 0, "{err}");
    let key = dir.path().join("root.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, _, err) = run(dir.path(), &["serve", "--config", cfg.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("group or others"), "{err}");
}

async fn serve_refuses_plain_http_on_a_public_address_for_either_listener() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_policies(), &dir.path().join("policies"));
    let cfg = dir.path().join("jobpass.toml");
    // No root key: were the address accepted, the start would stop later on the key instead.
    for listeners in [
        "listen = \"0.0.0.0:0\"\n",
        "listen = \"127.0.0.1:0\"\nvault_compat_listen = \"0.0.0.0:0\"\n",
    ] {
        std::fs::write(
            &cfg,
            format!(
                "insecure_http = true\n{listeners}[keys]\nroot_key_file = \"root.key\"\n\
                 [[issuer]]\nurl = \"https://token.actions.githubusercontent.com\"\n\
                 [[issuer]]\nurl = \"https://gitlab.com\"\n"
            ),
        )
        .unwrap();
        let (code, _, err) = run(dir.path(), &["serve", "--config", cfg.to_str().unwrap()]);
        assert_ne!(code, 0, "{listeners}");
        assert!(
            err.contains("only allowed on a loopback address, not 0.0.0.0:0"),
            "{listeners}: {err}"
        );
    }
}

async fn policy_check_and_test_work_offline() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["policy", "check", repo_policies().to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 environments"), "{out}");
    // A directory without a policy is no policy set to call OK.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, out, err) = run(dir.path(), &["policy", "check", empty.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("holds no policy"), "{err}");

    let bad = dir.path().join("bad");
    copy_dir(&repo_policies(), &bad);
    let prod = bad.join("prod.toml");
    let text = std::fs::read_to_string(&prod)
        .unwrap()
        .replace("ttl = \"15m\"", "ttl = \"15m\"\nttl_typo = \"1m\"");
    std::fs::write(&prod, text).unwrap();
    let (code, _, err) = run(dir.path(), &["policy", "check", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.contains("prod.toml:") && err.contains("ttl_typo"),
        "{err}"
    );

    let claims = dir.path().join("claims.json");
    let fixture = serde_json::json!({
        "repository": "octo-org/octo-repo", "repository_owner": "octo-org", "ref": "refs/heads/feature",
        "event_name": "push", "environment": "prod", "runner_environment": "github-hosted",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/deploy.yml@refs/heads/main"
    });
    std::fs::write(&claims, fixture.to_string()).unwrap();
    let p = repo_policies();
    let args = [
        "policy",
        "test",
        p.to_str().unwrap(),
        "--env",
        "prod",
        "--role",
        "deploy-web",
        "--claims",
        claims.to_str().unwrap(),
    ];
    let (code, out, _) = run(dir.path(), &args);
    assert_eq!(code, 1);
    assert!(
        out.contains("deny") && out.contains("`ref`") && out.contains("guardrail"),
        "{out}"
    );
    let mut fixed = fixture.clone();
    fixed["ref"] = "refs/heads/main".into();
    std::fs::write(&claims, fixed.to_string()).unwrap();
    let (code, out, _) = run(dir.path(), &args);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("allow"), "{out}");
}

/// A policy directory whose `open.toml` trusts GitHub's multi-tenant issuer with one role
/// matching `conditions`.
fn open_policy(dir: &Path, conditions: &str) -> PathBuf {
    let policies = dir.join("open-policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("open.toml"),
        format!(
            "[environment]\nname = \"open\"\n\
             issuers = [\"https://token.actions.githubusercontent.com\"]\n\
             audience = \"https://jobpass.example.com\"\nmax_ttl = \"10m\"\n\n\
             [[role]]\nname = \"deploy\"\n[role.match]\n{conditions}\n\n\
             [[role.grant]]\nname = \"api\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n"
        ),
    )
    .unwrap();
    policies
}

async fn policy_check_warns_about_an_unpinned_multi_tenant_role_and_strict_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let open = open_policy(
        dir.path(),
        "repository = \"*/web\"\nref = \"refs/heads/main\"",
    );
    let open = open.to_str().unwrap();
    let (code, out, err) = run(dir.path(), &["policy", "check", open]);
    assert_eq!(code, 0, "a warning alone passes: {out}{err}");
    assert!(
        out.starts_with("OK: 1 environments (open)") && out.contains("1 warning(s)"),
        "{out}"
    );
    let warning = err.lines().next().unwrap();
    assert!(
        warning.starts_with(
            "open.toml:8: warning: environment `open`, role `deploy`: issuer \
             `https://token.actions.githubusercontent.com` (GitHub Actions)"
        ) && warning.contains("add `repository_owner_id = \"<id>\"`")
            && warning.ends_with("(`repository` does not fix the owner)"),
        "{err}"
    );
    let (code, out, err) = run(dir.path(), &["policy", "check", "--strict", open]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("open.toml:8: warning:") && err.contains("--strict"),
        "{err}"
    );
    assert!(out.is_empty(), "{out}");

    // Pinned to one owner: nothing to say, even with --strict.
    let pinned = open_policy(
        dir.path(),
        "repository = \"acme/*\"\nref = \"refs/heads/main\"",
    );
    let (code, out, err) = run(
        dir.path(),
        &["policy", "check", "--strict", pinned.to_str().unwrap()],
    );
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // The shipped policies pin their tenants.
    let (code, out, err) = run(
        dir.path(),
        &[
            "policy",
            "check",
            "--strict",
            repo_policies().to_str().unwrap(),
        ],
    );
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
}

async fn serve_logs_policy_warnings_at_start_and_serves_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let policies = open_policy(
        dir.path(),
        "ref = \"refs/heads/main\"\nrepository_ownr = \"acme\"",
    );
    std::fs::rename(&policies, dir.path().join("policies")).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut server = DevServer::start(dir.path(), &listen).await;
    let log = server.kill();
    // The misspelt claim too, with its line.
    let typo = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "WARN" && l["fields"]["claim"] == "repository_ownr")
        .unwrap_or_else(|| panic!("no warning about the claim logged:\n{log}"));
    assert_eq!(typo["fields"]["line"], 11, "{typo}");
    assert!(
        typo["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("(did you mean \"repository_owner\"?)"),
        "{typo}"
    );
    let warning = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["level"] == "WARN" && l["fields"]["role"] == "deploy")
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    let f = &warning["fields"];
    assert_eq!(
        (
            f["file"].as_str(),
            f["environment"].as_str(),
            f["issuer"].as_str(),
            f["claim"].as_str()
        ),
        (
            Some("open.toml"),
            Some("open"),
            Some("https://token.actions.githubusercontent.com"),
            Some("repository_owner_id")
        ),
        "{warning}"
    );
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Each shipped example claims file, and the answer `policy test` must give it for a role:
/// `None` allows, `Some(text)` denies with that text.
const EXAMPLE_ANSWERS: &[(&str, &str, &str, Option<&str>)] = &[
    ("github-deploy-main.json", "prod", "deploy-web", None),
    ("github-deploy-main.json", "prod", "read-config", None),
    ("github-deploy-main.json", "staging", "deploy-web", None),
    ("github-deploy-main.json", "dev", "ci", None),
    (
        "github-integration-pr.json",
        "dev",
        "integration-tests",
        None,
    ),
    ("github-integration-pr.json", "dev", "ci", None),
    (
        "github-integration-pr.json",
        "prod",
        "deploy-web",
        Some("environment guardrail on claim `ref` failed"),
    ),
    (
        "github-integration-pr.json",
        "staging",
        "deploy-web",
        Some("role condition on claim `ref` failed"),
    ),
    (
        "github-other-org.json",
        "dev",
        "ci",
        Some("role condition on claim `repository_owner` failed"),
    ),
    (
        "github-other-org.json",
        "prod",
        "read-config",
        Some("environment guardrail on claim `repository_owner` failed"),
    ),
    ("gitlab-main.json", "staging", "deploy-gitlab", None),
    (
        "gitlab-main.json",
        "staging",
        "deploy-web",
        Some("role condition on claim `repository` failed"),
    ),
];

async fn shipped_example_claims_get_the_answers_they_are_meant_to() {
    let root = repo_root();
    for (file, env, role, denied) in EXAMPLE_ANSWERS {
        let claims = format!("@examples/claims/{file}");
        let (code, out, err) = run(
            root,
            &[
                "policy", "test", "policies", "--env", env, "--role", role, "--claims", &claims,
            ],
        );
        let what = format!("{file} as {env}/{role}: {out}{err}");
        match denied {
            None => {
                assert_eq!(code, 0, "{what}");
                assert_eq!(
                    out.trim(),
                    format!("allow: environment `{env}`, role `{role}`"),
                    "{what}"
                );
            }
            Some(why) => {
                assert_eq!(code, 1, "{what}");
                assert!(out.starts_with("deny: ") && out.contains(why), "{what}");
            }
        }
    }
    // Every file has its answers, and every shipped role has an example it allows.
    for e in std::fs::read_dir(root.join("examples/claims")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            EXAMPLE_ANSWERS.iter().any(|(f, ..)| *f == name),
            "examples/claims/{name} has no expected answer here"
        );
    }
    let set =
        jobpass::policy::PolicySet::load_dir(&repo_policies(), &jobpass::policy::AnyCapabilities)
            .unwrap();
    for env in set.environments() {
        for role in &env.roles {
            assert!(
                EXAMPLE_ANSWERS
                    .iter()
                    .any(|(_, e, r, d)| *e == env.name && *r == role.name && d.is_none()),
                "no example in examples/claims/ is allowed as {}/{}",
                env.name,
                role.name
            );
        }
    }
}

async fn claims_are_inline_json_or_a_file_for_policy_test_and_dev_claims() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_policies(), &dir.path().join("policies"));
    // dev claims, shaped to a role, are allowed that role; written to a file, tried with @file.
    let (code, claims, err) = run(
        dir.path(),
        &[
            "dev",
            "claims",
            "--env",
            "dev",
            "--role",
            "integration-tests",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        claims.trim().lines().count(),
        1,
        "compact when piped: {claims}"
    );
    let v: Value = serde_json::from_str(&claims).unwrap();
    assert_eq!(v["aud"], "https://jobpass.example.com");
    std::fs::write(dir.path().join("claims.json"), &claims).unwrap();
    for arg in ["@claims.json", "claims.json", claims.trim()] {
        let (code, out, err) = run(
            dir.path(),
            &[
                "policy",
                "test",
                "policies",
                "--env",
                "dev",
                "--role",
                "integration-tests",
                "--claims",
                arg,
            ],
        );
        assert_eq!(code, 0, "{arg}: {out}{err}");
        assert!(out.starts_with("allow"), "{out}");
    }
    // Inline overrides win, and the note says why the role is then refused.
    let (code, out, err) = run(
        dir.path(),
        &[
            "dev",
            "claims",
            "--env",
            "prod",
            "--role",
            "deploy-web",
            "--format",
            "pretty",
            "--claims",
            r#"{"ref":"refs/heads/feature"}"#,
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().count() > 5, "indented: {out}");
    assert!(
        err.contains("do not get role `deploy-web`") && err.contains("`ref`"),
        "{err}"
    );
    // dev token refuses what is neither JSON nor @FILE; policy test names unknown environments.
    let (code, _, err) = run(
        dir.path(),
        &["dev", "token", "--env", "dev", "--claims", "repository=x"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("@FILE"), "{err}");
    let (code, _, err) = run(
        dir.path(),
        &[
            "policy", "test", "policies", "--env", "nope", "--claims", "{}",
        ],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("no environment `nope` in policies (its environments: dev, prod, staging)"),
        "{err}"
    );
}

/// Runs the binary with no `JOBPASS_*` connection variables from the test's environment.
fn run_clean(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .current_dir(dir)
        .args(args)
        .env_remove("JOBPASS_SERVER")
        .env_remove("JOBPASS_CA")
        .env_remove("JOBPASS_CERT")
        .env_remove("JOBPASS_KEY")
        // A developer's shell, not a CI job (where dev files are never trusted).
        .env_remove("CI")
        .env_remove("GITHUB_ACTIONS")
        .env_remove("GITLAB_CI")
        .env_remove("BUILDKITE")
        .env_remove("CIRCLECI")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn a_dev_broker_is_reached_from_its_directory_and_errors_say_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_policies(), &dir.path().join("policies"));
    let listen = format!("127.0.0.1:{}", free_port());
    let url = format!("https://{listen}");
    let mut server = DevServer::start(dir.path(), &listen).await;
    let d = dir.path();

    // No --ca: the dev CA of the directory, said on standard error.
    let (code, _, err) = run_clean(d, &["health", "--server", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(".jobpass-dev/certs/ca.pem"), "{err}");
    let (code, token, err) = run_clean(d, &["dev", "token", "--env", "dev"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_clean(
        d,
        &[
            "exchange",
            "--server",
            &url,
            "--env",
            "dev",
            "--token",
            token.trim(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim().lines().count(), 1, "compact when piped: {out}");
    // No --cert/--key: the dev certificate of the role the command needs.
    let (code, out, err) = run_clean(
        d,
        &[
            "leases", "list", "--server", &url, "--env", "dev", "--format", "pretty",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(".jobpass-dev/certs/auditor.pem"), "{err}");
    assert!(out.lines().count() > 1, "indented: {out}");

    // A token shaped to a prod role gets it; one with another audience is refused.
    let (_, token, err) = run_clean(
        d,
        &["dev", "token", "--env", "prod", "--role", "deploy-web"],
    );
    let (code, out, err2) = run_clean(
        d,
        &[
            "exchange",
            "--server",
            &url,
            "--env",
            "prod",
            "--role",
            "deploy-web",
            "--token",
            token.trim(),
        ],
    );
    assert_eq!(code, 0, "{err}{out}{err2}");
    let (_, token, _) = run_clean(
        d,
        &[
            "dev",
            "token",
            "--env",
            "dev",
            "--claims",
            r#"{"aud":"https://elsewhere.example"}"#,
        ],
    );
    let (code, _, err) = run_clean(
        d,
        &[
            "exchange",
            "--server",
            &url,
            "--env",
            "dev",
            "--token",
            token.trim(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid_token"), "{err}");

    // An unknown environment: the broker's code and message, then its environments.
    let (_, token, _) = run_clean(d, &["dev", "token", "--env", "dev"]);
    let (code, _, err) = run_clean(
        d,
        &[
            "exchange",
            "--server",
            &url,
            "--env",
            "nope",
            "--token",
            token.trim(),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "error: invalid_request: unknown environment `nope` (GET /v1/envs lists the environments); known environments: dev, prod, staging"
        ),
        "{err}"
    );
    let (code, _, err) = run_clean(
        d,
        &["freeze", "nope", "--reason", "INC-1", "--server", &url],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "error: not_found: unknown environment `nope` (GET /v1/envs lists the environments); known environments: dev, prod, staging"
        ),
        "{err}"
    );
    let c = client_with(
        Some(&std::fs::read_to_string(d.join(".jobpass-dev/certs/ca.pem")).unwrap()),
        None,
    );
    let envs = c
        .get(format!("{url}/v1/envs"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let envs: Value = serde_json::from_str(&envs).unwrap();
    assert_eq!(
        envs,
        serde_json::json!({"environments": ["dev", "prod", "staging"]})
    );
    let r = c.get(format!("{url}/v1/envs/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Elsewhere (no dev files): the fix for each failure.
    let other = tempfile::tempdir().unwrap();
    let o = other.path();
    let (code, _, err) = run_clean(o, &["health", "--server", &url]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("its certificate is not signed by a trusted CA: pass --ca FILE"),
        "{err}"
    );
    let (code, _, err) = run_clean(
        o,
        &[
            "exchange", "--server", &url, "--env", "dev", "--token", "x.y.z",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.starts_with(&format!(
            "error: the broker at {url}/v1/exchange answered, but"
        )),
        "{err}"
    );
    let plain = format!("http://{listen}");
    let (code, _, err) = run_clean(
        o,
        &[
            "exchange", "--server", &plain, "--env", "dev", "--token", "x.y.z",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("is plain HTTP, but the broker speaks HTTPS only: use https://"),
        "{err}"
    );
    let (code, _, err) = run_clean(o, &["leases", "list", "--server", &url]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cert"), "{err}");
    drop(server.kill());
    let (code, _, err) = run_clean(
        d,
        &[
            "exchange", "--server", &url, "--env", "dev", "--token", "x.y.z",
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "nothing is listening at {url}: is the broker running"
        )),
        "{err}"
    );
}

async fn policy_check_warns_about_a_misspelt_claim_and_strict_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let typo = open_policy(
        dir.path(),
        "repository_owner_id = \"1\"\nrepository_ownr = \"acme\"",
    );
    let typo = typo.to_str().unwrap();
    let (code, out, err) = run(dir.path(), &["policy", "check", typo]);
    assert_eq!(code, 0, "a warning alone passes: {out}{err}");
    assert!(out.contains("1 warning(s)"), "{out}");
    assert_eq!(
        err,
        "open.toml:11: warning: role \"deploy\": claim \"repository_ownr\" is not a claim \
         GitHub Actions tokens carry (did you mean \"repository_owner\"?); a condition on it \
         never holds\n"
    );
    let (code, out, err) = run(dir.path(), &["policy", "check", "--strict", typo]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("claim \"repository_ownr\"") && err.contains("--strict"),
        "{err}"
    );
    // Spelt right: nothing to say, even with --strict.
    let right = open_policy(
        dir.path(),
        "repository_owner_id = \"1\"\nrepository_owner = \"acme\"",
    );
    let (code, out, err) = run(
        dir.path(),
        &["policy", "check", "--strict", right.to_str().unwrap()],
    );
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // An issuer that is not a known CI platform may send any claim: no warning.
    std::fs::write(
        right.join("open.toml"),
        std::fs::read_to_string(right.join("open.toml"))
            .unwrap()
            .replace(
                "https://token.actions.githubusercontent.com",
                "https://gitlab.example.com",
            )
            .replace("repository_owner = ", "repository_ownr = "),
    )
    .unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["policy", "check", "--strict", right.to_str().unwrap()],
    );
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
}

async fn policy_check_of_a_directory_without_policies_says_so_without_parsing_its_toml() {
    // The repository's root: Cargo.toml, clippy.toml, jobpass.example.toml, no policy.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = run(root, &["policy", "check", "."]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with(".: holds no policy: its TOML files (Cargo.toml, clippy.toml, ")
            && err.contains("have no [environment] table; give the policies directory")
            && !err.contains("unknown field"),
        "{err}"
    );
    // A policies directory with a stray TOML file: that file is named, not skipped (a
    // policy with a mistyped header must not silently drop its environment).
    let dir = tempfile::tempdir().unwrap();
    let policies = open_policy(dir.path(), "repository_owner_id = \"1\"");
    std::fs::write(policies.join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    let (code, out, err) = run(dir.path(), &["policy", "check", policies.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with("Cargo.toml: not a policy file: it has no [environment] table"),
        "{err}"
    );
}

crate::support::harness::cases! {
    Once: [
        shipped_example_claims_get_the_answers_they_are_meant_to,
        claims_are_inline_json_or_a_file_for_policy_test_and_dev_claims,
        a_dev_broker_is_reached_from_its_directory_and_errors_say_the_fix,
        dev_mode_walk_through_from_the_readme,
        serve_refuses_an_unknown_config_key_naming_it,
        serve_refuses_a_missing_or_group_readable_root_key,
        serve_refuses_plain_http_on_a_public_address_for_either_listener,
        policy_check_and_test_work_offline,
        policy_check_warns_about_an_unpinned_multi_tenant_role_and_strict_refuses_it,
        serve_logs_policy_warnings_at_start_and_serves_anyway,
        policy_check_warns_about_a_misspelt_claim_and_strict_refuses_it,
        policy_check_of_a_directory_without_policies_says_so_without_parsing_its_toml,
    ],
}
