//! openai-sim: an in-memory simulator of OpenAI's Files, Batches and Chat Completions
//! endpoints, faithful enough for batchlens' tests, its demo and the official SDKs.

mod batch;
mod chat;
pub mod config;
mod error;
mod files;
mod http;
mod ids;
mod lifecycle;
mod models;
mod ratelimit;
mod schema_gen;
mod state;
mod tokens;
pub mod vision;
pub mod webhooks;

use std::net::SocketAddr;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use config::{
    FaultRule, ImageSize, OutputOrder, RateLimiterKind, SchemaTokens, SimConfig, WebhookTiming,
};
pub use http::router;
pub use state::{ChatCall, JournalEntry, ModelCounts, Sim, Stats};

/// A running simulator on a local port; dropping it (or `shutdown`) stops it.
pub struct SimServer {
    addr: SocketAddr,
    sim: Sim,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    webhooks: JoinHandle<()>,
}

impl SimServer {
    /// Serves on 127.0.0.1 at a free port.
    pub async fn spawn(config: SimConfig) -> std::io::Result<SimServer> {
        Self::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    pub async fn spawn_on(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let sim = Sim::new(config);
        let app = router(sim.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "openai-sim server stopped with an error");
            }
        });
        let webhooks = tokio::spawn(webhooks::run(sim.clone()));
        Ok(SimServer {
            addr,
            sim,
            stop: Some(stop),
            task: Some(task),
            webhooks,
        })
    }

    /// `http://127.0.0.1:PORT/v1`, what an OpenAI client takes as its base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn sim(&self) -> Sim {
        self.sim.clone()
    }

    /// Stops accepting, lets open requests finish (for up to 5 s), then stops.
    pub async fn shutdown(mut self) {
        self.webhooks.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.webhooks.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
