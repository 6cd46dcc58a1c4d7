//! Policy hot reload (SPEC §1): a valid change goes live atomically, an invalid one is refused
//! (the last good set stays) and both are audited.

use jobpass::policy::reload::{Reload, reload};

use crate::support::Broker;

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

crate::support::harness::cases! {
    EachStore: [
        invalid_reload_keeps_the_old_policy_and_is_audited,
        valid_reload_changes_decisions_and_names_the_new_version,
        a_file_change_is_picked_up_by_the_watcher,
    ],
}
