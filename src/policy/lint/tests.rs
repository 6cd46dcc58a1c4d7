use std::path::Path;

use super::*;
use crate::policy::AnyCapabilities;

const GITHUB: &str = "https://token.actions.githubusercontent.com";
const GITLAB: &str = "https://gitlab.com";
const BUILDKITE: &str = "https://agent.buildkite.com";

/// The warnings of a one-file set `e.toml`: environment `e` trusting `issuers`, with
/// `[environment.require]` = `require` and one role `r` whose `[role.match]` is `conditions`.
fn lint(issuers: &[&str], require: &str, conditions: &str) -> Vec<LintWarning> {
    let issuers: Vec<String> = issuers.iter().map(|i| format!("{i:?}")).collect();
    let text = format!(
        "[environment]\nname = \"e\"\nissuers = [{}]\naudience = \"a\"\nmax_ttl = \"1h\"\n\
         [environment.require]\n{require}\n\n\
         [[role]]\nname = \"r\"\n[role.match]\n{conditions}\n\
         [[role.grant]]\nname = \"g\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n",
        issuers.join(", ")
    );
    match PolicySet::from_files(&[("e.toml".to_owned(), text)], &AnyCapabilities) {
        Ok(set) => warnings(&set),
        Err(e) => unreachable!("policy should be valid:\n{e}"),
    }
}

fn pinned(issuer: &str, conditions: &str) -> bool {
    lint(&[issuer], "", conditions).is_empty()
}

#[test]
fn an_unpinned_github_role_warns_naming_file_line_environment_role_issuer_and_claim() {
    let w = lint(&[GITHUB], "", "ref = \"refs/heads/main\"");
    assert_eq!(w.len(), 1, "{w:?}");
    let w = &w[0];
    assert_eq!(
        (
            w.file.as_str(),
            w.line,
            w.environment.as_str(),
            w.role.as_str()
        ),
        ("e.toml", 10, "e", "r")
    );
    assert_eq!(
        (w.issuer.as_str(), w.claim.as_str()),
        (GITHUB, "repository_owner_id")
    );
    assert_eq!(
        w.to_string(),
        "e.toml:10: warning: environment `e`, role `r`: issuer \
         `https://token.actions.githubusercontent.com` (GitHub Actions) signs the tokens of every \
         organization and user on the platform, and no condition of the role or of \
         [environment.require] pins one; add `repository_owner_id = \"<id>\"` (or \
         `repository_owner = \"<owner>\"`, or `repository = \"<owner>/…\"`) to [role.match] or \
         [environment.require]"
    );
}

#[test]
fn github_tenant_pins() {
    for c in [
        "repository_owner = \"acme\"",
        "repository_owner_id = \"46576199\"",
        "repository_owner_id = 46576199",
        "repository_id = \"1104004353\"",
        "repository = \"acme/web\"",
        "repository = \"acme/*\"",
        "repository = [\"acme/web\", \"acme-eu/*\"]",
        "workflow_ref = \"acme/web/.github/workflows/*\"",
        "sub = \"repo:acme/*\"",
        "\"/repository_owner\" = \"acme\"",
        "repository = { regex = 'acme/.*' }",
        "repository = { regex = 'acme/(web|api)' }",
        "repository = { regex = 'acme/web|acme/api' }",
        "repository = { regex = 'acme/[a-z]+' }",
        "repository_owner = { regex = 'acme|acme-eu' }",
        "repository_owner = { in = [\"acme\"] }",
    ] {
        assert!(pinned(GITHUB, c), "{c} pins the owner");
    }
}

#[test]
fn github_conditions_that_do_not_pin() {
    for c in [
        "repository = \"*\"",
        "repository = \"acme*\"",
        "repository = \"*/web\"",
        "repository = \"/web/*\"",
        "repository = [\"acme/web\", \"*\"]",
        "repository_owner = \"acme*\"",
        "repository_owner_id = \"4657*\"",
        "repository_owner = { not = \"evil\" }",
        "repository = { regex = '.*' }",
        "repository = { regex = 'acme.*' }",
        "repository = { regex = 'acme/.*|.*' }",
        "repository = { regex = 'acme/.*|evil.*' }",
        "repository = { regex = '[a-z]+/web' }",
        "repository_owner = { regex = '(?i)acme.*' }",
        "sub = \"repo:*\"",
        "sub = \"repo:acme*\"",
        "sub = \"*:acme/*\"",
        // The reusable workflow any repository may call.
        "job_workflow_ref = \"acme/shared/.github/workflows/deploy.yml@refs/heads/main\"",
        "\"/repository_owner/x\" = \"acme\"",
    ] {
        assert!(!pinned(GITHUB, c), "{c} does not pin the owner");
    }
}

#[test]
fn a_loose_tenant_condition_is_named_in_the_warning() {
    let w = lint(&[GITHUB], "", "repository = \"*/web\"");
    assert!(
        w[0].message
            .ends_with("(`repository` does not fix the owner)"),
        "{}",
        w[0].message
    );
}

#[test]
fn a_guardrail_pins_every_role() {
    assert!(lint(&[GITHUB], "repository_owner = \"acme\"", "ref = \"x\"").is_empty());
    assert_eq!(
        lint(&[GITHUB], "ref = \"x\"", "event_name = \"push\"").len(),
        1
    );
}

#[test]
fn gitlab_com_tenant_pins() {
    assert_eq!(
        lint(&[GITLAB], "", "ref = \"main\"")[0].claim,
        "namespace_id"
    );
    for c in [
        "namespace_id = \"72\"",
        "namespace_path = \"my-group\"",
        "namespace_path = \"my-group/*\"",
        "project_path = \"my-group/my-project\"",
        "project_path = \"my-group/*\"",
        "project_id = \"20\"",
        "sub = \"project_path:my-group/*\"",
    ] {
        assert!(pinned(GITLAB, c), "{c} pins the group");
    }
    for c in [
        "namespace_path = \"my-*\"",
        "project_path = \"*\"",
        "project_path = \"*/my-project\"",
        "sub = \"project_path:*\"",
        "ref_path = \"refs/heads/main\"",
    ] {
        assert!(!pinned(GITLAB, c), "{c} does not pin the group");
    }
    // A self-managed instance is its owner's alone.
    assert!(pinned("https://gitlab.example.com", "ref = \"main\""));
}

#[test]
fn buildkite_tenant_pins() {
    assert_eq!(
        lint(&[BUILDKITE], "", "pipeline_slug = \"web\"")[0].claim,
        "organization_slug"
    );
    for c in [
        "organization_slug = \"acme-inc\"",
        "organization_id = \"0184990a\"",
        "sub = \"organization:acme-inc:*\"",
    ] {
        assert!(pinned(BUILDKITE, c), "{c} pins the organization");
    }
    for c in [
        "organization_slug = \"acme*\"",
        "organization_slug = \"*\"",
        "sub = \"organization:acme*\"",
        "sub = \"organization:*\"",
    ] {
        assert!(!pinned(BUILDKITE, c), "{c} does not pin the organization");
    }
}

#[test]
fn a_circleci_issuer_names_its_organization_itself() {
    let issuer = "https://oidc.circleci.com/org/01234567-89ab-cdef-0123-456789abcdef";
    assert!(pinned(
        issuer,
        "\"oidc.circleci.com/vcs-ref\" = \"refs/heads/main\""
    ));
}

#[test]
fn an_issuer_written_with_a_trailing_slash_is_recognised() {
    assert_eq!(
        lint(&["https://gitlab.com/"], "", "ref = \"main\"").len(),
        1
    );
}

#[test]
fn a_role_that_only_another_platforms_tokens_can_match_is_not_open() {
    // GitLab.com tokens have no `repository`; GitHub tokens no `project_path`.
    assert!(lint(&[GITHUB, GITLAB], "", "repository = \"acme/web\"").is_empty());
    assert!(
        lint(
            &[GITHUB, GITLAB],
            "",
            "project_path = \"my-group/my-project\""
        )
        .is_empty()
    );
    // (Neither sends that CircleCI claim: only the other lint speaks.)
    let w = lint(
        &[GITHUB, BUILDKITE],
        "",
        "\"/oidc.circleci.com~1project-id\" = \"x\"",
    );
    assert_eq!(
        w.iter().map(|w| w.kind).collect::<Vec<_>>(),
        [LintKind::UnknownClaim]
    );
    // …but a loose one still opens the role to its own platform.
    let w = lint(&[GITHUB, GITLAB], "", "repository = \"*/web\"");
    assert_eq!(
        w.iter().map(|w| w.issuer.as_str()).collect::<Vec<_>>(),
        [GITHUB]
    );
    // Conditions every platform can satisfy: one warning per open issuer.
    let w = lint(&[GITHUB, GITLAB, BUILDKITE], "", "ref_type = \"branch\"");
    assert_eq!(
        w.iter().map(|w| w.issuer.as_str()).collect::<Vec<_>>(),
        [GITHUB, GITLAB, BUILDKITE]
    );
}

#[test]
fn the_shipped_policies_pin_their_tenants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let set = PolicySet::load_dir(&dir, &AnyCapabilities).unwrap_or_else(|e| unreachable!("{e}"));
    assert_eq!(warnings(&set), []);
}

#[test]
fn a_misspelt_claim_warns_with_the_nearest_known_one() {
    let w = lint(
        &[GITHUB],
        "",
        "repository_ownr = \"acme\"\nrepository = \"acme/web\"",
    );
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(
        (
            w[0].kind,
            w[0].line,
            w[0].claim.as_str(),
            w[0].role.as_str()
        ),
        (LintKind::UnknownClaim, 12, "repository_ownr", "r")
    );
    assert_eq!(
        w[0].to_string(),
        "e.toml:12: warning: role \"r\": claim \"repository_ownr\" is not a claim GitHub Actions \
         tokens carry (did you mean \"repository_owner\"?); a condition on it never holds"
    );
    // In a guardrail; and a name near nothing gets no suggestion.
    let w = lint(
        &[GITLAB],
        "projectpath = \"g/p\"",
        "namespace_id = \"7\"\nzzz = \"1\"",
    );
    let messages: Vec<String> = w.iter().map(|w| w.message.clone()).collect();
    assert_eq!(
        messages,
        [
            "[environment.require]: claim \"projectpath\" is not a claim GitLab.com tokens carry \
             (did you mean \"project_path\"?); a condition on it never holds",
            "role \"r\": claim \"zzz\" is not a claim GitLab.com tokens carry; a condition on it \
             never holds",
        ]
    );
}

#[test]
fn known_claims_of_each_platform_do_not_warn() {
    let circleci = "https://oidc.circleci.com/org/01234567-89ab-cdef-0123-456789abcdef";
    for (issuer, conditions) in [
        (
            GITHUB,
            "repository_owner_id = \"1\"\nenvironment = \"prod\"\nrun_attempt = \"1\"",
        ),
        (
            GITLAB,
            "namespace_id = \"7\"\nref_path = \"refs/heads/main\"",
        ),
        (
            BUILDKITE,
            "organization_slug = \"acme\"\n\"agent_tag:queue\" = \"deploy\"",
        ),
        (
            circleci,
            "\"oidc.circleci.com/vcs-origin\" = \"github.com/acme/web\"",
        ),
        (GITHUB, "repository_owner_id = \"1\"\n\"/sub\" = \"repo:*\""),
    ] {
        assert_eq!(
            lint(&[issuer], "", conditions),
            [],
            "{issuer}: {conditions}"
        );
    }
    // A claim of either of two trusted platforms is known.
    assert_eq!(
        lint(
            &[GITHUB, GITLAB],
            "",
            "repository_owner_id = \"1\"\nnamespace_id = \"7\""
        ),
        []
    );
}

#[test]
fn an_environment_trusting_an_unknown_issuer_is_not_checked_for_claim_names() {
    for issuers in [
        &["https://gitlab.example.com"][..],
        &[GITHUB, "https://sso.example.com"],
        &["https://oidc.circleci.com/org/"],
    ] {
        let w = lint(issuers, "", "repository_ownr = \"acme\"");
        // (GitHub's own lint may still say the role pins no owner.)
        assert!(
            w.iter().all(|w| w.kind != LintKind::UnknownClaim),
            "{issuers:?}: {w:?}"
        );
    }
}

#[test]
fn the_claims_of_the_real_token_fixtures_are_known() {
    // The claim sets of real tokens of each platform (tests/fixtures shape, written here).
    let github = [
        "jti",
        "sub",
        "environment",
        "aud",
        "ref",
        "sha",
        "repository",
        "repository_owner",
        "repository_owner_id",
        "repository_id",
        "repository_visibility",
        "actor",
        "actor_id",
        "run_id",
        "run_number",
        "run_attempt",
        "runner_environment",
        "workflow",
        "workflow_ref",
        "workflow_sha",
        "job_workflow_ref",
        "job_workflow_sha",
        "head_ref",
        "base_ref",
        "event_name",
        "ref_type",
        "ref_protected",
        "check_run_id",
        "iss",
        "nbf",
        "iat",
        "exp",
    ];
    let gitlab = [
        "namespace_id",
        "namespace_path",
        "project_id",
        "project_path",
        "user_id",
        "user_login",
        "user_email",
        "user_access_level",
        "pipeline_id",
        "pipeline_source",
        "job_id",
        "ref",
        "ref_type",
        "ref_path",
        "ref_protected",
        "environment",
        "environment_protected",
        "deployment_tier",
        "environment_action",
        "runner_id",
        "runner_environment",
        "sha",
        "project_visibility",
        "ci_config_ref_uri",
        "ci_config_sha",
        "jti",
        "iss",
        "iat",
        "nbf",
        "exp",
        "sub",
        "aud",
    ];
    let buildkite = [
        "iss",
        "sub",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "organization_slug",
        "pipeline_slug",
        "build_number",
        "build_branch",
        "build_tag",
        "build_commit",
        "step_key",
        "job_id",
        "agent_id",
        "build_source",
        "runner_environment",
    ];
    let circleci = [
        "iss",
        "sub",
        "aud",
        "iat",
        "exp",
        "oidc.circleci.com/project-id",
        "oidc.circleci.com/vcs-origin",
        "oidc.circleci.com/vcs-ref",
        "oidc.circleci.com/context-ids",
        "oidc.circleci.com/ssh-rerun",
    ];
    for (issuer, claims) in [
        (GITHUB, &github[..]),
        (GITLAB, &gitlab[..]),
        (BUILDKITE, &buildkite[..]),
        ("https://oidc.circleci.com/org/0123", &circleci[..]),
    ] {
        let platform = PlatformClaims::of_issuer(issuer).unwrap_or_else(|| unreachable!());
        for claim in claims {
            assert!(platform.carries(claim), "{issuer}: {claim}");
        }
    }
}

/// The warnings of a one-file set whose role `r` has one grant `name` of `kind` (`token`,
/// `x509`), under an issuer that is no known platform.
fn lint_grant(name: &str, kind: &str) -> Vec<LintWarning> {
    let body = match kind {
        "x509" => "kind = \"x509\"\ncommon_name = \"ci\"",
        _ => "kind = \"token\"\nsecrets = [\"x/*\"]",
    };
    let text = format!(
        "[environment]\nname = \"e\"\nissuers = [\"https://ci.example.com\"]\naudience = \"a\"\n\
         max_ttl = \"1h\"\n\n[[role]]\nname = \"r\"\n[role.match]\nsub = \"s\"\n\
         [[role.grant]]\nname = \"{name}\"\n{body}\n"
    );
    match PolicySet::from_files(&[("e.toml".to_owned(), text)], &AnyCapabilities) {
        Ok(set) => warnings(&set),
        Err(e) => unreachable!("policy should be valid:\n{e}"),
    }
}

#[test]
fn a_grant_exported_in_a_variable_jobpass_reads_warns() {
    for (name, kind, variable) in [
        ("server", "token", "JOBPASS_SERVER"),
        ("config", "token", "JOBPASS_CONFIG"),
        ("store", "token", "JOBPASS_STORE"),
        ("lease-id", "token", "JOBPASS_LEASE_ID"),
        ("tls", "x509", "JOBPASS_TLS_CERTIFICATE"),
    ] {
        let w = lint_grant(name, kind);
        assert_eq!(w.len(), 1, "{name}: {w:?}");
        assert_eq!((w[0].kind, w[0].line), (LintKind::ExportedVariable, 8));
        assert!(
            w[0].message
                .contains(&format!("grant `{name}` would be exported as {variable}")),
            "{}",
            w[0].message
        );
    }
    for name in ["deploy", "app-config", "s", "test-api"] {
        assert_eq!(lint_grant(name, "token"), [], "{name}");
    }
}
