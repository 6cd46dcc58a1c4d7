//! The limits' background work on every replica: the aggregate refusal records are written
//! every `refusal_audit_interval` (and at shutdown, by the caller of
//! [`crate::app::App::flush_refusals`]); rate-limit buckets that are full again are dropped
//! every few seconds, which bounds their memory by the callers of those seconds.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::app::App;

/// How often quiet rate-limit buckets are dropped.
const RETAIN_EVERY: Duration = Duration::from_secs(5);

/// Runs until the process ends.
pub fn spawn(app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = app
            .config
            .limits
            .refusal_audit_interval
            .max(Duration::from_millis(100));
        let mut flush = tokio::time::interval(every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retain = tokio::time::interval(RETAIN_EVERY);
        retain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = flush.tick() => {
                    // A failure is logged by flush_refusals; the next interval tries again.
                    drop(app.flush_refusals().await);
                }
                _ = retain.tick() => {
                    let kept = app.limits.rates.retain_recent();
                    tracing::trace!(kept, "rate-limit buckets kept");
                }
            }
        }
    })
}
