//! Which workers a replica runs: every step wired to the kernel's loop runner
//! (`kernel::spawn_loop`), which looks for work every `batch.tick_ms`, goes again at once
//! while a step finds some, and stops taking new work when the token is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::batch::{janitor, planner, poller, submitter};
use super::individual::{self, Executor};
use super::kernel::{spawn_loop, StepError, WorkerContext};
use super::webhooks::{RenderJob, Webhooks};
use crate::outbound::Resolver;

/// What the workers of one replica run with besides the context.
pub struct Extras {
    /// Renders a job for webhook deliveries.
    pub render_job: RenderJob,
    /// Drains histogram samples into their buckets between scrapes, when this process
    /// owns the metrics recorder.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Resolves the names outbound requests (webhook deliveries) connect to.
    pub resolver: Arc<dyn Resolver>,
}

pub fn spawn_all(
    ctx: &WorkerContext,
    extras: Extras,
    stop: &CancellationToken,
    tracker: &TaskTracker,
) {
    let tick = ctx.settings.tick();
    let c = ctx.clone();
    spawn_loop("planner", tick, stop, tracker, move || {
        let c = c.clone();
        async move { planner::run_once(&c).await }
    });
    let c = ctx.clone();
    spawn_loop("submitter", tick, stop, tracker, move || {
        let c = c.clone();
        async move { submitter::run_once(&c).await }
    });
    let c = ctx.clone();
    spawn_loop("poller", tick, stop, tracker, move || {
        let c = c.clone();
        async move { poller::run_once(&c).await }
    });
    let c = ctx.clone();
    // Reports 0 so the loop waits its ten minutes between sweeps.
    spawn_loop(
        "janitor",
        Duration::from_secs(600),
        stop,
        tracker,
        move || {
            let c = c.clone();
            async move { janitor::run_once(&c).await.map(|_| 0) }
        },
    );
    if let Some(handle) = extras.metrics {
        spawn_loop(
            "metrics",
            Duration::from_secs(5),
            stop,
            tracker,
            move || {
                let handle = handle.clone();
                async move {
                    handle.run_upkeep();
                    Ok::<_, StepError>(0)
                }
            },
        );
    }
    let webhooks = Webhooks::new(ctx, extras.render_job, extras.resolver);
    spawn_loop("webhooks", tick, stop, tracker, move || {
        let w = webhooks.clone();
        async move { w.run_once().await }
    });
    let executor = Executor::new(ctx.clone(), individual::governor(&ctx.settings, &ctx.store));
    spawn_loop("individual", tick, stop, tracker, move || {
        let e = executor.clone();
        async move { e.run_once().await }
    });
}
