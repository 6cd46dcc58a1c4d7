//! The sweeper: expired leases (and their credential rows) are deleted once they have been
//! expired for `lease_retention`, and replay records once their source token has expired, so
//! the store does not grow without bound. Expired credentials are refused by expiry checks on
//! every request, whether or not the sweeper has run.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::app::App;

/// Runs one sweep; returns (leases, replay records) deleted.
pub async fn sweep(app: &App) -> Result<(u64, u64), crate::store::StoreError> {
    let now = app.clock.unix();
    let retention = i64::try_from(app.config.lease_retention.as_secs()).unwrap_or(i64::MAX);
    let done = app.store.sweep(now, now.saturating_sub(retention)).await?;
    // Expired leases holding database roles were marked pending: drop them now.
    app.revocations.notify_one();
    if done != (0, 0) {
        tracing::info!(
            leases = done.0,
            replay_records = done.1,
            "swept expired records"
        );
    }
    Ok(done)
}

/// Sweeps every `sweep_interval` until the process ends.
pub fn spawn(app: Arc<App>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(
            app.config
                .sweep_interval
                .max(std::time::Duration::from_secs(1)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if !app.lead().await {
                continue;
            }
            if let Err(e) = sweep(&app).await {
                tracing::warn!(error = %e, "sweep failed; will retry");
            }
        }
    })
}
