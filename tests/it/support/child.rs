//! `jobpass serve --dev` as a child process, awaited on its own "listening" log line: the
//! test waits on that event, never on a polling loop with sleeps.

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bound on start-up (a guard against a hung child, not a synchronisation).
const START_LIMIT: Duration = Duration::from_secs(120);

/// A running child broker; killed (and reaped) when dropped.
pub struct DevServer {
    pub child: std::process::Child,
    /// Everything the child wrote so far, stdout and stderr (its JSON log).
    pub log: Arc<Mutex<String>>,
    /// Woken after every line the child writes.
    line: Arc<tokio::sync::Notify>,
    drains: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for DevServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl DevServer {
    /// Kills the child (SIGKILL) and returns everything it wrote.
    pub fn kill(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for d in self.drains.drain(..) {
            let _ = d.join();
        }
        self.log.lock().unwrap().clone()
    }

    /// Waits (on the child's writes, not by polling) until it has written a line containing
    /// `needle`, and returns that line.
    pub async fn wait_for_line(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + START_LIMIT;
        loop {
            let written = self.line.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            if let Some(line) = self
                .log
                .lock()
                .unwrap()
                .lines()
                .find(|l| l.contains(needle))
            {
                return line.to_owned();
            }
            if tokio::time::timeout_at(deadline, written).await.is_err() {
                panic!(
                    "the server wrote no line with {needle:?} within {START_LIMIT:?}:\n{}",
                    self.log.lock().unwrap()
                );
            }
        }
    }

    /// Starts `jobpass serve --dev --listen <listen>` in `dir` and returns once it logged that
    /// it listens (its dev CA is then written and its listener bound).
    pub async fn start(dir: &Path, listen: &str) -> DevServer {
        let mut child = Command::new(super::binary())
            .current_dir(dir)
            .args(["serve", "--dev", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let line_written = Arc::new(tokio::sync::Notify::new());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Arc::new(Mutex::new(Some(tx)));
        // Both pipes are drained for the child's whole life (a full pipe would block it).
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        let drains = [stdout, stderr]
            .into_iter()
            .map(|pipe| {
                let (sink, tx, written) = (log.clone(), tx.clone(), line_written.clone());
                std::thread::spawn(move || {
                    for line in std::io::BufReader::new(pipe).lines() {
                        let Ok(line) = line else { break };
                        let listening = line.contains("jobpass listening");
                        {
                            let mut sink = sink.lock().unwrap();
                            sink.push_str(&line);
                            sink.push('\n');
                        }
                        written.notify_waiters();
                        if listening && let Some(tx) = tx.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let server = DevServer {
            child,
            log,
            line: line_written,
            drains,
        };
        match tokio::time::timeout(START_LIMIT, rx).await {
            Ok(Ok(())) => server,
            Ok(Err(_)) => panic!(
                "the server exited before listening:\n{}",
                server.log.lock().unwrap()
            ),
            Err(_) => panic!(
                "the server did not listen within {START_LIMIT:?}:\n{}",
                server.log.lock().unwrap()
            ),
        }
    }
}
