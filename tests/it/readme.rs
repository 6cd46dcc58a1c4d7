//! README's five-minute walk-through, run as written: its shell blocks are read from README.md
//! itself, so the document and the product cannot drift apart.
//!
//! The commands run in one `bash` (`set -euo pipefail`) in a fresh directory holding a copy of
//! `policies/` and the `.jobpass-dev/` of a dev broker that the test starts (`serve --dev`, as
//! README's Set up does) on a free port: the one change made to the commands is that port in
//! place of 8443, so a developer's own dev broker on 8443 does not disturb the test. A command
//! whose comment says `# fails: TEXT` must exit non-zero and print TEXT. Standard input holds
//! the value that step 2 asks the reader to type.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::binary;
use crate::support::child::DevServer;

/// The value step 2 asks the reader to type.
const TYPED_SECRET: &str = "hunter2-dev";

/// The README's section `heading`, up to the next second-level heading.
fn section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let rest = &readme[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

/// The commands of the ```sh blocks of `text`, continuation lines joined, in order.
fn shell_commands(text: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_block = trimmed == "```sh";
            continue;
        }
        if !in_block || trimmed.is_empty() {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(trimmed);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(pending.is_empty(), "a block ends in a continuation line");
    commands
}

/// Single-quotes `s` for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One bash script of `commands`: each runs as written, except that a command with a
/// `# fails: TEXT` comment must fail and print TEXT.
fn script(commands: &[String]) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for command in commands {
        s.push_str(&format!("echo {} >&2\n", quote(&format!("+ {command}"))));
        match command.rsplit_once("# fails: ") {
            Some((run, expected)) => {
                let (run, expected) = (run.trim(), expected.trim());
                s.push_str(&format!(
                    "if out=$({run} 2>&1); then echo \"expected a failure: $out\" >&2; exit 90; fi\n\
                     echo \"$out\" >&2\n\
                     case \"$out\" in *{}*) ;; *) echo {} >&2; exit 91;; esac\n",
                    quote(expected),
                    quote(&format!("the failure does not say {expected:?}")),
                ));
            }
            None => {
                s.push_str(command);
                s.push('\n');
            }
        }
    }
    s
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

async fn the_walk_through_runs_as_written() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let setup = section(&readme, "\n## Set up\n");
    assert!(
        shell_commands(setup)
            .iter()
            .any(|c| c.starts_with("cargo run -- serve --dev")),
        "Set up starts the broker with `cargo run -- serve --dev`, as this test does"
    );
    let walk = section(&readme, "\n## Five-minute walk-through\n");
    let commands = shell_commands(walk);
    assert!(
        commands.len() >= 10,
        "the walk-through's commands were found: {commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.contains("serve")),
        "the walk-through does not start a second broker: {commands:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo.join("policies"), &dir.path().join("policies"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut server = DevServer::start(dir.path(), &listen).await;
    let commands: Vec<String> = commands
        .iter()
        .map(|c| c.replace("127.0.0.1:8443", &listen))
        .collect();

    let bin_dir = binary().parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script(&commands))
        .current_dir(dir.path())
        .env("PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The reader's shell has none of the CLI's variables set.
    for (name, _) in std::env::vars() {
        if name.starts_with("JOBPASS_") {
            cmd.env_remove(name);
        }
    }
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{TYPED_SECRET}\n").as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walk-through stopped ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status.code()
    );

    // What each step promises, seen in what the reader would see.
    assert!(
        stdout.contains("lease lse_"),
        "step 3 names the lease: {stdout}"
    );
    assert!(
        stdout.contains(&format!("\"password\":\"{TYPED_SECRET}\"")),
        "step 4 reads the typed secret with the broker token: {stdout}"
    );
    let lease = stdout
        .split("lease ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    assert!(
        stdout.matches(lease).count() >= 2,
        "step 5 lists the lease: {stdout}"
    );
    assert!(
        stdout.contains("allow: environment `dev`, role `ci`"),
        "step 6 allows the claims of the role: {stdout}"
    );
    // The typed secret never reached the broker's log.
    let logs = server.kill();
    assert!(
        !logs.contains(TYPED_SECRET),
        "the secret in the service log"
    );
}

crate::support::harness::cases! {
    Once: [the_walk_through_runs_as_written],
}
