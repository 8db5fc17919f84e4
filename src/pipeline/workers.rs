//! Background workers: each is a loop around one step (`run_once`) that looks for work
//! every `batch.tick_ms`, goes again at once while it finds some, and stops taking new
//! work when the token is cancelled.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::AppState;
use crate::pipeline::batch::{self, BatchContext};
use crate::pipeline::individual;

pub fn spawn_all(state: &AppState, replica: &str, stop: &CancellationToken, tracker: &TaskTracker) {
    let ctx = BatchContext {
        store: state.store.clone(),
        openai: state.openai.clone(),
        settings: state.settings.clone(),
        prices: state.prices.clone(),
        replica: replica.to_string(),
    };
    let tick = state.settings.tick();
    let c = ctx.clone();
    spawn_loop("planner", tick, stop, tracker, move || {
        let c = c.clone();
        async move {
            batch::planner::run_once(&c)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let c = ctx.clone();
    spawn_loop("submitter", tick, stop, tracker, move || {
        let c = c.clone();
        async move {
            batch::submitter::run_once(&c)
                .await
                .map_err(|e| e.to_string())
        }
    });
    let c = ctx.clone();
    spawn_loop("poller", tick, stop, tracker, move || {
        let c = c.clone();
        async move { batch::poller::run_once(&c).await.map_err(|e| e.to_string()) }
    });
    let c = ctx.clone();
    spawn_loop(
        "janitor",
        Duration::from_secs(600),
        stop,
        tracker,
        move || {
            let c = c.clone();
            // Reports 0 so the loop waits its ten minutes between sweeps.
            async move {
                batch::janitor::run_once(&c)
                    .await
                    .map(|_| 0)
                    .map_err(|e| e.to_string())
            }
        },
    );
    if let Some(handle) = state.metrics.clone() {
        // Drains histogram samples into their buckets between scrapes.
        spawn_loop(
            "metrics",
            Duration::from_secs(5),
            stop,
            tracker,
            move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    Ok::<_, String>(0)
                }
            },
        );
    }
    let webhooks = crate::pipeline::webhooks::Webhooks::new(state);
    spawn_loop("webhooks", tick, stop, tracker, move || {
        let w = webhooks.clone();
        async move { w.run_once().await }
    });
    let executor = individual::Executor::new(ctx.clone(), individual::governor(&state.settings));
    spawn_loop("individual", tick, stop, tracker, move || {
        let e = executor.clone();
        async move { e.run_once().await.map_err(|e| e.to_string()) }
    });
}

/// Runs `step` until `stop`: again at once after a step that found work, after `tick`
/// otherwise, after a longer pause when it failed (the database may be down).
pub fn spawn_loop<F, Fut>(
    name: &'static str,
    tick: Duration,
    stop: &CancellationToken,
    tracker: &TaskTracker,
    step: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, String>> + Send + 'static,
{
    let stop = stop.clone();
    tracker.spawn(async move {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let pause = match step().await {
                Ok(0) => {
                    failures = 0;
                    tick
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(worker = name, error = %err, "worker step failed");
                    tick * 2u32.saturating_pow(failures.min(6))
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        tracing::debug!(worker = name, "worker stopped");
    });
}
