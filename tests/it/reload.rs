//! Policy hot reload (SPEC §1): a valid change goes live atomically, an invalid one is refused
//! (the last good set stays) and both are audited.

use jobpass::policy::reload::{Reload, reload};

use crate::support::Broker;
use crate::support::child::DevServer;

async fn invalid_reload_keeps_the_old_policy_and_is_audited() {
    let b = Broker::start().await;
    let v1 = b.app.policies().version().to_string();
    let prod = b.policy_dir().join("prod.toml");
    let good = std::fs::read_to_string(&prod).unwrap();
    std::fs::write(
        &prod,
        format!("{good}\n[[role]]\nname = \"x\"\nbogus_key = 1\n"),
    )
    .unwrap();
    match reload(&b.app, "test").await {
        Reload::Rejected(e) => assert!(e.contains("prod.toml") && e.contains("bogus_key"), "{e}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(b.app.policies().version(), v1, "last good set stays");
    assert_eq!(
        b.exchange(&b.github_token(), "prod", Some("deploy-web"))
            .await
            .0,
        200
    );
    let rec = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "policy_reload")
        .unwrap();
    assert_eq!(rec["outcome"], "failure");
    assert!(
        rec["details"]["errors"].to_string().contains("bogus_key"),
        "{rec}"
    );
}

async fn valid_reload_changes_decisions_and_names_the_new_version() {
    let b = Broker::start().await;
    let v1 = b.app.policies().version().to_string();
    let prod = b.policy_dir().join("prod.toml");
    let text = std::fs::read_to_string(&prod)
        .unwrap()
        .replace("repository = \"acme/web\"", "repository = \"acme/api\"");
    std::fs::write(&prod, text).unwrap();
    let v2 = match reload(&b.app, "test").await {
        Reload::Changed(v) => v,
        other => panic!("expected a change, got {other:?}"),
    };
    assert_ne!(v1, v2);
    let (s, _) = b
        .exchange(&b.github_token(), "prod", Some("deploy-web"))
        .await;
    assert_eq!(s, 403, "the new policy denies acme/web");
    let rec = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "policy_reload")
        .unwrap();
    assert_eq!(rec["outcome"], "success");
    assert_eq!(rec["policy_version"], v2.as_str());
    assert_eq!(reload(&b.app, "test").await, Reload::Unchanged);
}

async fn a_file_change_is_picked_up_by_the_watcher() {
    let b = Broker::start().await;
    jobpass::policy::reload::spawn(b.app.clone());
    let v1 = b.app.policies().version().to_string();
    let prod = b.policy_dir().join("prod.toml");
    let text = std::fs::read_to_string(&prod)
        .unwrap()
        .replace("ttl = \"10m\"", "ttl = \"11m\"");
    // The watcher is registered once `spawn` returns: one write, then wait for the reload.
    let mut version = b.app.watch_policy_version();
    std::fs::write(&prod, &text).unwrap();
    let changed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        version.wait_for(|v| *v != v1),
    )
    .await;
    assert!(
        matches!(changed, Ok(Ok(_))),
        "the watcher reloaded the changed file"
    );
    assert_ne!(b.app.policies().version(), v1);
}

async fn a_reload_with_an_unpinned_multi_tenant_role_goes_live_with_its_warning_on_record() {
    let b = Broker::start().await;
    let open = "[environment]\nname = \"open\"\n\
        issuers = [\"https://token.actions.githubusercontent.com\"]\n\
        audience = \"https://jobpass.example.com\"\nmax_ttl = \"10m\"\n\n\
        [[role]]\nname = \"any-main\"\n[role.match]\nref = \"refs/heads/main\"\n\n\
        [[role.grant]]\nname = \"api\"\nkind = \"token\"\nsecrets = [\"x/*\"]\n";
    std::fs::write(b.policy_dir().join("open.toml"), open).unwrap();
    let v2 = match reload(&b.app, "test").await {
        Reload::Changed(v) => v,
        other => panic!("a warning never refuses a reload, got {other:?}"),
    };
    assert!(b.app.policies().environment("open").is_some());
    let rec = b
        .audit_records()
        .into_iter()
        .find(|r| r["event"] == "policy_reload")
        .unwrap();
    assert_eq!(
        (rec["outcome"].as_str(), rec["policy_version"].as_str()),
        (Some("success"), Some(v2.as_str()))
    );
    let warnings = rec["details"]["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 1, "{rec}");
    let w = warnings[0].as_str().unwrap();
    assert!(
        w.starts_with(
            "open.toml:8: warning: environment `open`, role `any-main`: issuer \
             `https://token.actions.githubusercontent.com`"
        ) && w.contains("repository_owner_id"),
        "{w}"
    );
    // The lint only warns about new sets; the test's own policies pin their tenants.
    std::fs::remove_file(b.policy_dir().join("open.toml")).unwrap();
    assert!(matches!(reload(&b.app, "test").await, Reload::Changed(_)));
    let last = b
        .audit_records()
        .into_iter()
        .rfind(|r| r["event"] == "policy_reload")
        .unwrap();
    assert!(last["details"].get("warnings").is_none(), "{last}");
}

async fn sighup_with_nothing_changed_logs_policies_unchanged_with_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    for e in std::fs::read_dir(repo).unwrap().flatten() {
        std::fs::copy(e.path(), policies.join(e.file_name())).unwrap();
    }
    let version =
        jobpass::policy::PolicySet::load_dir(&policies, &jobpass::policy::AnyCapabilities)
            .unwrap()
            .version()
            .to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = DevServer::start(dir.path(), &format!("127.0.0.1:{port}")).await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let line = server.wait_for_line("policies unchanged").await;
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &line["fields"];
    assert_eq!(
        (
            fields["message"].as_str(),
            fields["version"].as_str(),
            fields["trigger"].as_str()
        ),
        (
            Some(format!("policies unchanged, version {version}").as_str()),
            Some(version.as_str()),
            Some("SIGHUP")
        ),
        "{line}"
    );
}

crate::support::harness::cases! {
    EachStore: [
        invalid_reload_keeps_the_old_policy_and_is_audited,
        valid_reload_changes_decisions_and_names_the_new_version,
        a_file_change_is_picked_up_by_the_watcher,
        a_reload_with_an_unpinned_multi_tenant_role_goes_live_with_its_warning_on_record,
    ],
    Once: [sighup_with_nothing_changed_logs_policies_unchanged_with_the_version],
}
