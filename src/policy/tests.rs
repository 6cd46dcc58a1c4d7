use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::*;

// ---------------------------------------------------------------- helpers

/// Knows the issuers of the example policies and refuses postgres databases other than
/// `main`.
struct Stub;

impl ServerCapabilities for Stub {
    fn knows_issuer(&self, url: &str) -> bool {
        matches!(
            url,
            "https://token.actions.githubusercontent.com" | "https://gitlab.com"
        )
    }

    fn supports_grant(&self, grant: &Grant) -> Result<(), UnsupportedGrant> {
        match &grant.kind {
            GrantKind::Postgres { database, .. } if database != "main" => {
                Err(UnsupportedGrant::PostgresTarget(database.clone()))
            }
            _ => Ok(()),
        }
    }
}

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => unreachable!("not an object: {other}"),
    }
}

fn github_claims() -> Map<String, Value> {
    obj(json!({
        "jti": "6cf8862b-b832-4372-9998-22026ecd21a1",
        "sub": "repo:octo-org/octo-repo:environment:prod",
        "environment": "prod",
        "aud": "https://github.com/octo-org",
        "ref": "refs/heads/main",
        "sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
        "repository": "octo-org/octo-repo",
        "repository_owner": "octo-org",
        "repository_owner_id": "46576199",
        "repository_id": "1104004353",
        "repository_visibility": "private",
        "actor": "octocat",
        "actor_id": "1492007",
        "run_id": "19677834613",
        "run_number": "4",
        "run_attempt": "1",
        "runner_environment": "github-hosted",
        "workflow": "CI",
        "workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "job_workflow_ref": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_type": "branch",
        "ref_protected": "false",
        "iss": "https://token.actions.githubusercontent.com",
        "nbf": 1_764_090_168,
        "iat": 1_764_090_468,
        "exp": 1_764_090_768
    }))
}

fn gitlab_claims() -> Map<String, Value> {
    obj(json!({
        "namespace_id": "72", "namespace_path": "my-group",
        "project_id": "20", "project_path": "my-group/my-project",
        "user_login": "sample-user", "user_access_level": "owner",
        "pipeline_id": "574", "pipeline_source": "push", "job_id": "302",
        "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
        "environment": "production", "environment_protected": "true",
        "deployment_tier": "production",
        "runner_id": 1, "runner_environment": "self-hosted",
        "project_visibility": "private",
        "iss": "https://gitlab.example.com",
        "sub": "project_path:my-group/my-project:ref_type:branch:ref:main",
        "aud": "https://jobpass.example.com"
    }))
}

fn circleci_claims() -> Map<String, Value> {
    obj(json!({
        "iss": "https://oidc.circleci.com/org/01234567-89ab-cdef-0123-456789abcdef",
        "sub": "org/01234567-89ab-cdef-0123-456789abcdef/project/76543210-ba98-fedc-3210-fedcba987654/user/11111111-2222-3333-4444-555555555555",
        "aud": "01234567-89ab-cdef-0123-456789abcdef",
        "oidc.circleci.com/project-id": "76543210-ba98-fedc-3210-fedcba987654",
        "oidc.circleci.com/vcs-origin": "github.com/acme/web",
        "oidc.circleci.com/vcs-ref": "refs/heads/main",
        "oidc.circleci.com/context-ids": ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"],
        "oidc.circleci.com/ssh-rerun": false
    }))
}

fn buildkite_claims() -> Map<String, Value> {
    obj(json!({
        "iss": "https://agent.buildkite.com",
        "sub": "organization:acme-inc:pipeline:web:ref:refs/heads/main:commit:9f3182061f1e2cca4702c368cbc039b7dc9d4485:step:build",
        "aud": "https://jobpass.example.com",
        "organization_slug": "acme-inc", "pipeline_slug": "web",
        "build_number": 1, "build_branch": "main", "build_tag": null,
        "step_key": "build",
        "build_source": "ui", "runner_environment": "buildkite-hosted"
    }))
}

const HEADER: &str = r#"[environment]
name = "t"
issuers = ["https://token.actions.githubusercontent.com"]
audience = "https://jobpass.example.com"
max_ttl = "1h"
"#;

/// A one-file set `t.toml` = HEADER + `rest`.
fn load(rest: &str) -> Result<PolicySet, PolicyErrors> {
    PolicySet::from_files(&[("t.toml".to_owned(), format!("{HEADER}{rest}"))], &Stub)
}

fn env_of(rest: &str) -> Environment {
    match load(rest) {
        Ok(set) => set
            .environment("t")
            .cloned()
            .unwrap_or_else(|| unreachable!()),
        Err(e) => unreachable!("policy should be valid:\n{e}"),
    }
}

fn errors_of(rest: &str) -> Vec<PolicyError> {
    match load(rest) {
        Ok(_) => unreachable!("policy should be invalid"),
        Err(PolicyErrors(errors)) => errors,
    }
}

/// An environment with one role `r` whose `[role.match]` is `conditions`.
fn role_matching(conditions: &str) -> Environment {
    env_of(&format!(
        "[[role]]\nname = \"r\"\n[role.match]\n{conditions}\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n"
    ))
}

fn allows(env: &Environment, claims: &Map<String, Value>) -> bool {
    env.evaluate(Some("r"), claims).is_ok()
}

fn denied_claim(result: Result<&Role, Denial>) -> (String, bool, bool) {
    match result {
        Err(Denial::Condition {
            claim,
            guardrail,
            missing,
            ..
        }) => (claim, guardrail, missing),
        Err(other) => unreachable!("unexpected denial {other:?}"),
        Ok(role) => unreachable!("unexpectedly allowed role {}", role.name),
    }
}

fn has_error(errors: &[PolicyError], line: usize, needle: &str) -> bool {
    errors
        .iter()
        .any(|e| e.line == Some(line) && e.reason.contains(needle))
}

fn examples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

// ---------------------------------------------------------------- matchers

#[test]
fn glob_condition_matches_exactly_or_with_star() {
    let exact = role_matching(r#"repository = "octo-org/octo-repo""#);
    assert!(allows(&exact, &github_claims()));
    let star = role_matching(r#"workflow_ref = "octo-org/*@refs/heads/main""#);
    assert!(allows(&star, &github_claims()));
    let other = role_matching(r#"repository = "octo-org/other""#);
    assert!(!allows(&other, &github_claims()));
    let prefix_only = role_matching(r#"repository = "octo-org""#);
    assert!(!allows(&prefix_only, &github_claims()));
}

#[test]
fn list_of_globs_matches_when_any_matches() {
    let env = role_matching(r#"event_name = ["pull_request", "push"]"#);
    assert!(allows(&env, &github_claims()));
    let env = role_matching(r#"event_name = ["pull_request", "workflow_*"]"#);
    assert!(!allows(&env, &github_claims()));
}

#[test]
fn regex_is_anchored_at_both_ends() {
    let env = role_matching(r#"ref = { regex = 'refs/heads/(main|release/.+)' }"#);
    assert!(allows(&env, &github_claims()));
    let unanchored = role_matching(r#"ref = { regex = "heads" }"#);
    assert!(!allows(&unanchored, &github_claims()));
    let alternation = role_matching(r#"ref = { regex = "refs/heads/main|nothing" }"#);
    let mut claims = github_claims();
    claims.insert("ref".into(), json!("refs/heads/main-evil"));
    assert!(!allows(&alternation, &claims));
}

#[test]
fn built_in_postgres_roles_are_refused_as_groups() {
    let errors = errors_of(
        r#"[[role]]
name = "r"
[[role.grant]]
name = "db"
kind = "postgres"
database = "main"
member_of = ["app_readonly", "pg_execute_server_program"]
"#,
    );
    assert!(
        errors.iter().any(|e| e
            .to_string()
            .contains("built-in role `pg_execute_server_program`")),
        "{errors:?}"
    );
    assert!(
        !errors
            .iter()
            .any(|e| e.to_string().contains("app_readonly"))
    );
}

#[test]
fn a_regex_cannot_escape_its_anchors() {
    // `^(?:a)|(.*)$` would compile and match anything: the pattern must stand on its own.
    for escaping in ["a)|(.*", "nothing)|(.*", "x)|(?:.*"] {
        let errors = errors_of(&format!(
            "[[role]]\nname = \"r\"\n[role.match]\nref = {{ regex = '{escaping}' }}\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n"
        ));
        assert!(
            errors
                .iter()
                .any(|e| e.to_string().contains("invalid regex")),
            "{escaping}: {errors:?}"
        );
    }
}

#[test]
fn not_matches_a_present_claim_that_matches_none() {
    let env = role_matching(r#"event_name = { not = ["pull_request", "pull_request_target"] }"#);
    assert!(allows(&env, &github_claims()));
    let mut claims = github_claims();
    claims.insert("event_name".into(), json!("pull_request_target"));
    assert!(!allows(&env, &claims));
    let single = role_matching(r#"event_name = { not = "pu*" }"#);
    assert!(!allows(&single, &github_claims()));
}

#[test]
fn missing_claim_never_matches_even_not() {
    let env = role_matching(r#"deployment = { not = "anything" }"#);
    let (claim, guardrail, missing) = denied_claim(env.evaluate(Some("r"), &github_claims()));
    assert_eq!(
        (claim.as_str(), guardrail, missing),
        ("deployment", false, true)
    );
    let star = role_matching(r#"deployment = "*""#);
    assert!(!allows(&star, &github_claims()));
}

#[test]
fn in_matches_an_array_claim_containing_one_of_the_globs() {
    let env = role_matching(r#"groups = { in = ["admins", "deploy-*"] }"#);
    let mut claims = github_claims();
    claims.insert("groups".into(), json!(["dev", "deploy-web"]));
    assert!(allows(&env, &claims));
    claims.insert("groups".into(), json!(["dev", "ops"]));
    assert!(!allows(&env, &claims));
    // `in` is for arrays: a scalar claim does not satisfy it.
    claims.insert("groups".into(), json!("admins"));
    assert!(!allows(&env, &claims));
}

#[test]
fn array_or_object_claim_never_matches_a_glob() {
    let mut claims = github_claims();
    claims.insert("groups".into(), json!(["admins"]));
    claims.insert("nested".into(), json!({"a": "b"}));
    assert!(!allows(&role_matching(r#"groups = "*""#), &claims));
    assert!(!allows(
        &role_matching(r#"groups = { not = "x" }"#),
        &claims
    ));
    assert!(!allows(
        &role_matching(r#"groups = { regex = ".*" }"#),
        &claims
    ));
    assert!(!allows(&role_matching(r#"nested = "*""#), &claims));
}

#[test]
fn pointer_key_reaches_nested_claims() {
    let mut claims = github_claims();
    claims.insert(
        "ext".into(),
        json!({"team": {"name": "web"}, "list": ["a", "b"], "a/b": {"c~d": "yes"}}),
    );
    assert!(allows(
        &role_matching(r#""/ext/team/name" = "web""#),
        &claims
    ));
    assert!(!allows(
        &role_matching(r#""/ext/team/name" = "api""#),
        &claims
    ));
    assert!(allows(&role_matching(r#""/ext/list/1" = "b""#), &claims));
    assert!(allows(
        &role_matching(r#""/ext/a~1b/c~0d" = "yes""#),
        &claims
    ));
    let (claim, _, missing) =
        denied_claim(role_matching(r#""/ext/team/lead" = "*""#).evaluate(Some("r"), &claims));
    assert_eq!((claim.as_str(), missing), ("/ext/team/lead", true));
    // A pointer to a top-level claim works too, with `/` escaped as `~1`.
    assert!(allows(
        &role_matching(r#""/oidc.circleci.com~1vcs-origin" = "github.com/acme/web""#),
        &circleci_claims()
    ));
}

#[test]
fn toml_booleans_and_integers_are_compared_as_text() {
    assert!(allows(
        &role_matching("ref_protected = false"),
        &github_claims()
    ));
    assert!(allows(&role_matching("run_attempt = 1"), &github_claims()));
    assert!(!allows(
        &role_matching("ref_protected = true"),
        &github_claims()
    ));
}

// ---------------------------------------------------------------- CI platforms

#[test]
fn github_deploy_job_gets_the_prod_role() {
    let set = PolicySet::load_dir(&examples_dir(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    let prod = set.environment("prod").unwrap_or_else(|| unreachable!());
    let role = prod
        .evaluate(Some("deploy-web"), &github_claims())
        .unwrap_or_else(|d| unreachable!("{}", d.detail()));
    assert_eq!(role.name, "deploy-web");
    assert_eq!(role.ttl, Duration::from_secs(15 * 60));
    assert_eq!(role.grants.len(), 3);
}

#[test]
fn gitlab_ref_is_bare_and_ref_path_is_full() {
    let set = PolicySet::load_dir(&examples_dir(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    let staging = set.environment("staging").unwrap_or_else(|| unreachable!());
    assert!(
        staging
            .evaluate(Some("deploy-gitlab"), &gitlab_claims())
            .is_ok()
    );

    let full_ref = role_matching(r#"ref = "refs/heads/main""#);
    let (claim, _, missing) = denied_claim(full_ref.evaluate(Some("r"), &gitlab_claims()));
    assert_eq!((claim.as_str(), missing), ("ref", false));
    assert!(allows(&role_matching(r#"ref = "main""#), &gitlab_claims()));
    assert!(allows(
        &role_matching(r#"ref_path = "refs/heads/main""#),
        &gitlab_claims()
    ));
    // `runner_id` is a JSON number in GitLab tokens.
    assert!(allows(
        &role_matching(r#"runner_id = "1""#),
        &gitlab_claims()
    ));
}

#[test]
fn circleci_dotted_key_is_one_literal_claim_and_in_checks_context_ids() {
    let env = role_matching(
        r#""oidc.circleci.com/vcs-origin" = "github.com/acme/*"
"oidc.circleci.com/context-ids" = { in = ["aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"] }
"oidc.circleci.com/ssh-rerun" = "false""#,
    );
    assert!(allows(&env, &circleci_claims()));

    let wrong_context =
        role_matching(r#""oidc.circleci.com/context-ids" = { in = ["ffffffff-*"] }"#);
    let (claim, _, missing) = denied_claim(wrong_context.evaluate(Some("r"), &circleci_claims()));
    assert_eq!(
        (claim.as_str(), missing),
        ("oidc.circleci.com/context-ids", false)
    );

    // The dotted key is not a path: nested claims of that shape do not satisfy it.
    let nested = obj(json!({"oidc": {"circleci": {"com/vcs-origin": "github.com/acme/web"}}}));
    assert!(!allows(
        &role_matching(r#""oidc.circleci.com/vcs-origin" = "github.com/acme/*""#),
        &nested
    ));
}

#[test]
fn buildkite_number_is_text_and_null_never_matches() {
    let env = role_matching(
        r#"organization_slug = "acme-inc"
pipeline_slug = "web"
build_number = "1""#,
    );
    assert!(allows(&env, &buildkite_claims()));
    assert!(!allows(
        &role_matching(r#"build_number = "2""#),
        &buildkite_claims()
    ));

    for tag in [r#"build_tag = "*""#, r#"build_tag = { not = "v*" }"#] {
        let (claim, _, missing) =
            denied_claim(role_matching(tag).evaluate(Some("r"), &buildkite_claims()));
        assert_eq!((claim.as_str(), missing), ("build_tag", true), "{tag}");
    }
}

// ---------------------------------------------------------------- evaluation

#[test]
fn guardrail_denial_is_reported_before_role_denial() {
    let set = PolicySet::load_dir(&examples_dir(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    let prod = set.environment("prod").unwrap_or_else(|| unreachable!());
    let mut claims = github_claims();
    claims.insert("ref".into(), json!("refs/heads/feature"));
    claims.insert("repository".into(), json!("octo-org/other"));
    let (claim, guardrail, missing) = denied_claim(prod.evaluate(Some("deploy-web"), &claims));
    assert_eq!((claim.as_str(), guardrail, missing), ("ref", true, false));

    // With the guardrails satisfied, the role's own condition is the one reported.
    claims.insert("ref".into(), json!("refs/heads/main"));
    let (claim, guardrail, _) = denied_claim(prod.evaluate(Some("deploy-web"), &claims));
    assert_eq!((claim.as_str(), guardrail), ("repository", false));
}

#[test]
fn first_failing_condition_in_file_order_is_reported() {
    let env = role_matching("zz = \"1\"\naa = \"2\"");
    let (claim, _, _) = denied_claim(env.evaluate(Some("r"), &github_claims()));
    assert_eq!(claim, "zz");
}

#[test]
fn default_role_is_used_when_no_role_is_named() {
    let set = PolicySet::load_dir(&examples_dir(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    let dev = set.environment("dev").unwrap_or_else(|| unreachable!());
    for role in [None, Some("")] {
        let chosen = dev
            .evaluate(role, &github_claims())
            .unwrap_or_else(|d| unreachable!("{}", d.detail()));
        assert_eq!(chosen.name, "ci");
    }
    let prod = set.environment("prod").unwrap_or_else(|| unreachable!());
    assert_eq!(
        prod.evaluate(None, &github_claims()).err(),
        Some(Denial::NoRole)
    );
    assert_eq!(
        prod.evaluate(Some("admin"), &github_claims()).err(),
        Some(Denial::UnknownRole("admin".into()))
    );
}

#[test]
fn public_message_names_the_claim_but_never_the_pattern() {
    let env = env_of(
        r#"[environment.require]
repository_owner = "secret-owner-*"
[[role]]
name = "r"
[role.match]
repository = { regex = "hidden-(pattern)" }
ref = { not = ["refs/heads/main"] }
[[role.grant]]
name = "g"
kind = "token"
secrets = ["x/*"]
"#,
    );
    let mut claims = github_claims();
    let guard = env
        .evaluate(Some("r"), &claims)
        .err()
        .unwrap_or_else(|| unreachable!());
    claims.insert("repository_owner".into(), json!("secret-owner-1"));
    let role = env
        .evaluate(Some("r"), &claims)
        .err()
        .unwrap_or_else(|| unreachable!());
    claims.insert("repository".into(), json!("hidden-pattern"));
    let not = env
        .evaluate(Some("r"), &claims)
        .err()
        .unwrap_or_else(|| unreachable!());
    claims.remove("ref");
    let missing = env
        .evaluate(Some("r"), &claims)
        .err()
        .unwrap_or_else(|| unreachable!());

    for (denial, claim, pattern) in [
        (&guard, "repository_owner", "secret-owner"),
        (&role, "repository", "hidden"),
        (&not, "ref", "refs/heads/main"),
        (&missing, "ref", "refs/heads/main"),
    ] {
        let public = denial.public_message();
        assert!(public.contains(claim), "{public}");
        assert!(!public.contains(pattern), "{public}");
        assert_eq!(denial.to_string(), public);
        assert!(denial.detail().contains(pattern), "{}", denial.detail());
    }
    assert!(guard.public_message().contains("environment"));
    assert!(missing.public_message().contains("missing"));
}

#[test]
fn unknown_role_message_is_bounded() {
    let long = "x".repeat(10_000);
    assert!(Denial::UnknownRole(long).public_message().len() < 200);
}

// ---------------------------------------------------------------- validation

#[test]
fn unknown_key_is_rejected_with_its_line() {
    let errors = errors_of(
        "[[role]]\nname = \"r\"\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\nsecret = [\"y\"]\n",
    );
    // HEADER has 5 lines; `secret` is line 7 of the rest.
    assert!(
        has_error(&errors, 12, "unknown field `secret`"),
        "{errors:?}"
    );
    let errors = errors_of("bogus = 1\n");
    assert!(has_error(&errors, 6, "bogus"), "{errors:?}");
    let errors = errors_of("[environment.extra]\n");
    assert!(errors[0].reason.contains("extra"), "{errors:?}");
}

#[test]
fn ttl_above_max_ttl_is_rejected_with_its_line() {
    let errors = errors_of(
        "[[role]]\nname = \"r\"\nttl = \"2h\"\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n",
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        has_error(&errors, 8, "above the environment's max_ttl 1h"),
        "{errors:?}"
    );
    assert_eq!(
        errors[0].to_string(),
        format!("t.toml:8: {}", errors[0].reason)
    );
}

#[test]
fn role_ttl_defaults_to_max_ttl_and_zero_is_rejected() {
    let env = env_of(
        "[[role]]\nname = \"r\"\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n",
    );
    assert_eq!(env.roles[0].ttl, Duration::from_secs(3600));
    assert_eq!(env.max_ttl, Duration::from_secs(3600));
    for bad in ["0s", "soon", "1500ms"] {
        let errors = errors_of(&format!(
            "[[role]]\nname = \"r\"\nttl = \"{bad}\"\n[[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n"
        ));
        assert!(has_error(&errors, 8, "ttl"), "{bad}: {errors:?}");
    }
}

#[test]
fn max_ttl_is_required() {
    let file =
        "[environment]\nname = \"t\"\nissuers = [\"https://gitlab.com\"]\naudience = \"a\"\n";
    let result = PolicySet::from_files(&[("t.toml".into(), file.into())], &Stub);
    let errors = result.err().unwrap_or_else(|| unreachable!()).0;
    assert!(errors[0].reason.contains("max_ttl"), "{errors:?}");
}

#[test]
fn unknown_issuer_is_rejected() {
    let file = "[environment]\nname = \"t\"\nissuers = [\n  \"https://gitlab.com\",\n  \"https://evil.example\",\n]\naudience = \"a\"\nmax_ttl = \"1h\"\n";
    let errors = PolicySet::from_files(&[("t.toml".into(), file.into())], &Stub)
        .err()
        .unwrap_or_else(|| unreachable!())
        .0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        has_error(&errors, 5, "`https://evil.example` is not configured"),
        "{errors:?}"
    );
    assert!(PolicySet::from_files(&[("t.toml".into(), file.into())], &AnyCapabilities).is_ok());
}

#[test]
fn environment_fields_are_validated() {
    let file = "[environment]\nname = \"other\"\nissuers = []\naudience = \"\"\nmax_ttl = \"1h\"\ndefault_role = \"nope\"\n";
    let errors = PolicySet::from_files(&[("t.toml".into(), file.into())], &Stub)
        .err()
        .unwrap_or_else(|| unreachable!())
        .0;
    assert!(
        has_error(&errors, 2, "must match the file name"),
        "{errors:?}"
    );
    assert!(has_error(&errors, 3, "at least one issuer"), "{errors:?}");
    assert!(
        has_error(&errors, 4, "`audience` must not be empty"),
        "{errors:?}"
    );
    assert!(has_error(&errors, 6, "default_role `nope`"), "{errors:?}");
}

#[test]
fn roles_and_grants_are_validated() {
    let errors = errors_of(
        r#"[[role]]
name = "a"
[[role.grant]]
name = "g"
kind = "token"
secrets = ["x/*"]
[[role.grant]]
name = "g"
kind = "token"
secrets = ["/abs/*"]
[[role]]
name = "a"
[[role]]
name = "bad name"
[[role.grant]]
name = "g"
kind = "x509"
common_name = "c"
"#,
    );
    let line = |n: usize| n + 5;
    assert!(
        has_error(&errors, line(8), "grant `g` is defined twice"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(10), "must not start with `/`"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(12), "role `a` is defined twice"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(12), "has no [[role.grant]]"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(14), "role name `bad name`"),
        "{errors:?}"
    );
}

#[test]
fn grant_fields_depend_on_kind() {
    let errors = errors_of(
        r#"[[role]]
name = "r"
[[role.grant]]
name = "a"
kind = "token"
audience = "x"
[[role.grant]]
name = "b"
kind = "jwt"
claims = { sub = "me", scope = "ok" }
[[role.grant]]
name = "c"
kind = "postgres"
database = "other"
member_of = ["app"]
[[role.grant]]
name = "d"
kind = "ldap"
[[role.grant]]
name = "e"
kind = "x509"
common_name = ""
"#,
    );
    let line = |n: usize| n + 5;
    assert!(
        has_error(&errors, line(5), "kind = \"token\" requires `secrets`"),
        "{errors:?}"
    );
    assert!(
        has_error(
            &errors,
            line(6),
            "`audience` does not apply to kind = \"token\""
        ),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(9), "requires `audience`"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(10), "claim `sub` is reserved"),
        "{errors:?}"
    );
    assert!(
        has_error(
            &errors,
            line(13),
            "postgres database `other` is not configured"
        ),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(18), "unknown kind `ldap`"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(22), "`common_name` must not be empty"),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 7, "{errors:?}");
}

#[test]
fn valid_grants_of_every_kind_are_parsed() {
    let env = env_of(
        r#"[[role]]
name = "r"
[[role.grant]]
name = "api"
kind = "token"
secrets = ["deploy/web/*"]
[[role.grant]]
name = "deploy"
kind = "jwt"
audience = "https://deploy.internal"
claims = { scope = "deploy:web", n = 3, nested = { a = [true] } }
[[role.grant]]
name = "db"
kind = "postgres"
database = "main"
member_of = ["app_readonly"]
[[role.grant]]
name = "mtls"
kind = "x509"
common_name = "web-deployer"
"#,
    );
    let grants = &env.roles[0].grants;
    let kinds: Vec<&str> = grants.iter().map(|g| g.kind.name()).collect();
    assert_eq!(kinds, ["token", "jwt", "postgres", "x509"]);
    assert_eq!(
        grants[1].kind,
        GrantKind::Jwt {
            audience: "https://deploy.internal".into(),
            claims: obj(json!({"scope": "deploy:web", "n": 3, "nested": {"a": [true]}})),
        }
    );
}

#[test]
fn bad_conditions_are_rejected_with_their_line() {
    let errors = errors_of(
        r#"[environment.require]
a = { regex = "(unclosed" }
[[role]]
name = "r"
[role.match]
b = { regex = "x", not = "y" }
c = { like = "x" }
d = []
e = 1.5
"/f~2" = "x"
g = { in = "x" }
[[role.grant]]
name = "g"
kind = "token"
secrets = ["x/*"]
"#,
    );
    let line = |n: usize| n + 5;
    assert!(has_error(&errors, line(2), "invalid regex"), "{errors:?}");
    assert!(
        has_error(&errors, line(6), "exactly one operator"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(7), "unknown operator `like`"),
        "{errors:?}"
    );
    assert!(has_error(&errors, line(8), "empty list"), "{errors:?}");
    assert!(has_error(&errors, line(9), "found float"), "{errors:?}");
    assert!(
        has_error(&errors, line(10), "not a valid JSON pointer"),
        "{errors:?}"
    );
    assert!(
        has_error(&errors, line(11), "`in` must be a list"),
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| !e.reason.contains('\n')));
}

#[test]
fn errors_of_every_file_are_collected() {
    let files = [
        ("a.toml".to_owned(), "not toml = = =".to_owned()),
        (
            "b.toml".to_owned(),
            HEADER
                .to_owned()
                .replace("\"t\"", "\"b\"")
                .replace("1h", "forever"),
        ),
        ("c".to_owned(), String::new()),
    ];
    let errors = PolicySet::from_files(&files, &Stub)
        .err()
        .unwrap_or_else(|| unreachable!());
    let files: Vec<&str> = errors.0.iter().map(|e| e.file.as_str()).collect();
    assert_eq!(files, ["a.toml", "b.toml", "c"], "{errors}");
    assert_eq!(errors.to_string().lines().count(), 3);
    assert!(errors.to_string().starts_with("a.toml:1: "), "{errors}");
}

#[test]
fn one_environment_in_two_files_is_rejected() {
    let file = HEADER.to_owned();
    let files = [
        ("t.toml".to_owned(), file.clone()),
        ("t.toml".to_owned(), file),
    ];
    let errors = PolicySet::from_files(&files, &Stub)
        .err()
        .unwrap_or_else(|| unreachable!());
    assert!(
        errors
            .0
            .iter()
            .any(|e| e.reason.contains("already defined")),
        "{errors}"
    );
}

// ---------------------------------------------------------------- loading and version

#[test]
fn example_policies_load_with_the_server_issuers() {
    let set = PolicySet::load_dir(&examples_dir(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    let names: Vec<&str> = set.environments().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["dev", "prod", "staging"]);
    for env in set.environments() {
        assert_eq!(env.audience, "https://jobpass.example.com");
        assert_eq!(env.file, format!("{}.toml", env.name));
        for role in &env.roles {
            assert!(role.ttl <= env.max_ttl);
            assert!(
                role.grants
                    .iter()
                    .all(|g| matches!(g.kind.name(), "token" | "jwt" | "x509"))
            );
        }
    }
    assert!(
        !set.environment("prod")
            .unwrap_or_else(|| unreachable!())
            .require
            .is_empty()
    );

    struct GithubOnly;
    impl ServerCapabilities for GithubOnly {
        fn knows_issuer(&self, url: &str) -> bool {
            url == "https://token.actions.githubusercontent.com"
        }
        fn supports_grant(&self, _: &Grant) -> Result<(), UnsupportedGrant> {
            Ok(())
        }
    }
    let errors = PolicySet::load_dir(&examples_dir(), &GithubOnly)
        .err()
        .unwrap_or_else(|| unreachable!());
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].file, "staging.toml");
    assert_eq!(errors.0[0].line, Some(4));
}

#[test]
fn load_dir_ignores_dotfiles_editor_files_and_subdirectories() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
    let write = |name: &str, text: &str| {
        std::fs::write(dir.path().join(name), text).unwrap_or_else(|e| unreachable!("{e}"));
    };
    write("t.toml", HEADER);
    for junk in [
        ".t.toml.swp",
        ".#t.toml",
        "#t.toml#",
        "t.toml~",
        "README.md",
        ".x.toml",
    ] {
        write(junk, "garbage = = =");
    }
    std::fs::create_dir(dir.path().join("sub.toml")).unwrap_or_else(|e| unreachable!("{e}"));
    let set = PolicySet::load_dir(dir.path(), &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(set.environments().count(), 1);
    let same = PolicySet::from_files(&[("t.toml".into(), HEADER.into())], &Stub)
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(set.version(), same.version());

    let missing = PolicySet::load_dir(&dir.path().join("nope"), &Stub);
    assert!(missing.is_err());
}

#[test]
fn version_is_stable_and_changes_with_any_file() {
    let a = ("t.toml".to_owned(), HEADER.to_owned());
    let b = ("u.toml".to_owned(), HEADER.replace("\"t\"", "\"u\""));
    let v1 = PolicySet::from_files(&[a.clone(), b.clone()], &Stub)
        .unwrap_or_else(|e| unreachable!("{e}"));
    let v2 = PolicySet::from_files(&[b.clone(), a.clone()], &Stub)
        .unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(v1.version(), v2.version());
    assert!(v1.version().starts_with("sha256:"));
    assert_eq!(v1.version().len(), "sha256:".len() + 64);

    let edited = ("t.toml".to_owned(), format!("{HEADER}# a comment\n"));
    let v3 =
        PolicySet::from_files(&[edited, b.clone()], &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    assert_ne!(v1.version(), v3.version());
    let v4 = PolicySet::from_files(&[a], &Stub).unwrap_or_else(|e| unreachable!("{e}"));
    assert_ne!(v1.version(), v4.version());

    // Length-prefixed framing: moving bytes between name and contents changes the hash.
    let x = ("ab".to_owned(), "c".to_owned());
    let y = ("a".to_owned(), "bc".to_owned());
    assert_ne!(version_of(&[&x]), version_of(&[&y]));
}

#[test]
fn any_capabilities_accepts_everything() {
    let grant = Grant {
        name: "db".into(),
        kind: GrantKind::Postgres {
            database: "anything".into(),
            member_of: vec!["x".into()],
        },
    };
    assert!(AnyCapabilities.knows_issuer("https://whatever"));
    assert!(AnyCapabilities.supports_grant(&grant).is_ok());
}
