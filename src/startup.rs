//! Building and running the application: store, provider, the API's state and the
//! workers' context (each built here, neither from the other), router, background
//! workers, graceful shutdown.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::auth::KeyRing;
use crate::api::view_cache::ViewCache;
use crate::api::{self, AppState};
use crate::app::fetch::Fetcher;
use crate::app::App;
use crate::config::Settings;
use crate::cost::pricing::PriceTable;
use crate::outbound::{Resolver, SystemResolver, UrlPolicy};
use crate::pipeline::{workers, WorkerContext};
use crate::providers::openai::{OpenAiClient, OpenAiConfig};
use crate::store::{self, DynStore};

/// A built application, listening, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    workers: WorkerContext,
    /// Resolves the names of outbound requests: the system's unless a test sets another.
    resolver: Arc<dyn Resolver>,
    /// Replaces the configured URL policy of image fetches (tests only).
    fetch_policy: Option<UrlPolicy>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("openai client: {0}")]
    OpenAi(String),
}

impl Application {
    /// Connects the store (running migrations), prepares the data directory and binds the
    /// listener (`server.port = 0` picks a free port; see [`Application::port`]).
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        prepare_data_dir(&settings)?;
        tracing::info!(
            database = %settings.database_for_log(),
            data_dir = %settings.data_dir_absolute().display(),
            "batchlens starting"
        );
        let store = store::connect(settings.database_url()).await?;
        let keys: Vec<(String, String)> = settings
            .auth
            .keys
            .iter()
            .map(|k| (k.tenant.clone(), k.sha256.clone()))
            .collect();
        if settings.is_open() {
            tracing::warn!(
                "no [[auth.keys]] configured: until `batchlens keys create` stores one, the \
                 API is open to anyone who can reach it, so it only listens on loopback ({})",
                settings.server.host
            );
        }
        let replica = format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple());
        let openai = OpenAiClient::new(openai_config(&settings, &replica))
            .map_err(|e| StartupError::OpenAi(e.to_string()))?;
        if settings.openai.api_key.expose_secret().is_empty() {
            tracing::warn!(
                "openai.api_key (OPENAI_API_KEY) is empty: OpenAI calls will be refused"
            );
        }
        if settings.intake.fetch_allow_private {
            tracing::warn!(
                "intake.fetch_allow_private is on: image_urls may be fetched from loopback \
                 and private addresses, over plain http (development only)"
            );
        }
        if settings.webhooks.allow_private {
            tracing::warn!(
                "webhooks.allow_private is on: webhooks may be delivered to loopback and \
                 private addresses (development only)"
            );
        }
        let prices = PriceTable::defaults().with_overrides(&settings.pricing);
        let addr = format!("{}:{}", settings.server.host, settings.server.port);
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let (settings, prices) = (Arc::new(settings), Arc::new(prices));
        let state = AppState {
            app: App {
                store: store.clone(),
                settings: settings.clone(),
                prices: prices.clone(),
                gate: Default::default(),
                fetcher: Arc::new(Fetcher::new(
                    &settings.intake,
                    Arc::new(SystemResolver),
                    None,
                )),
            },
            keys: Arc::new(KeyRing::new(
                &keys,
                settings.auth.require_key,
                Some(store.clone()),
                Duration::from_secs(settings.auth.key_cache_secs),
            )),
            metrics: crate::metrics::install(),
            views: Arc::new(ViewCache::new(settings.server.job_view_cache_bytes)),
        };
        let workers = WorkerContext {
            store,
            provider: Arc::new(openai),
            settings,
            prices,
            replica,
        };
        Ok(Application {
            listener,
            state,
            workers,
            resolver: Arc::new(SystemResolver),
            fetch_policy: None,
        })
    }

    /// Outbound requests (webhook deliveries, image fetches) resolve names through
    /// `resolver` instead of the system's: tests point names at loopback without touching
    /// the network.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolver>) -> Self {
        self.resolver = resolver;
        self.rebuild_fetcher();
        self
    }

    /// Image fetches follow `policy` instead of the configured one: for tests that need
    /// one exempt loopback address (`UrlPolicy::exempt`) next to refused ones.
    pub fn with_fetch_policy(mut self, policy: UrlPolicy) -> Self {
        self.fetch_policy = Some(policy);
        self.rebuild_fetcher();
        self
    }

    fn rebuild_fetcher(&mut self) {
        self.state.app.fetcher = Arc::new(Fetcher::new(
            &self.workers.settings.intake,
            self.resolver.clone(),
            self.fetch_policy.clone(),
        ));
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn store(&self) -> DynStore {
        self.workers.store.clone()
    }

    /// Serves and runs the workers until `shutdown` resolves (or [`Application::stopper`]
    /// is cancelled); then stops accepting, lets
    /// in-flight requests and worker steps finish within `server.shutdown_timeout_secs`,
    /// and closes the pool.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let grace = Duration::from_secs(self.workers.settings.server.shutdown_timeout_secs);
        let extras = workers::Extras {
            render_job: api::dto::render_job,
            metrics: self.state.metrics.clone(),
            resolver: self.resolver.clone(),
        };
        workers::spawn_all(&self.workers, extras, &stop, &tracker);
        tracker.close();

        let app = api::router(self.state.clone());
        tracing::info!(addr = %self.local_addr(), replica = %self.workers.replica, "batchlens listening");
        let signalled = stop.clone();
        let server = tokio::spawn(
            axum::serve(self.listener, app)
                .with_graceful_shutdown(async move {
                    tokio::select! {
                        _ = shutdown => {}
                        _ = signalled.cancelled() => {}
                    }
                    signalled.cancel();
                })
                .into_future(),
        );
        stop.cancelled().await;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, finishing in-flight work"
        );
        // Open event streams never end on their own: the grace period bounds them.
        let served = match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined.map_err(std::io::Error::other)?,
            Err(_) => {
                tracing::warn!("requests still open after the grace period; closing them");
                Ok(())
            }
        };
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("workers did not finish in time; their leases will expire");
        }
        self.workers.store.close().await;
        tracing::info!("stopped");
        served
    }
}

/// Creates the data directory and its `batches` folder owner-only (0700), and makes an
/// existing one owner-only too: they hold every tenant's images.
pub fn prepare_data_dir(settings: &Settings) -> Result<(), StartupError> {
    let fail = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| StartupError::DataDir { path, source }
    };
    let (data, batches) = (&settings.data_dir, settings.batches_dir());
    crate::files::create_dir_all(&batches).map_err(fail(&batches))?;
    for dir in [data, &batches] {
        crate::files::restrict_dir(dir).map_err(fail(dir))?;
    }
    Ok(())
}

fn openai_config(settings: &Settings, replica: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: settings.openai.base_url.clone(),
        api_key: settings.openai.api_key.clone(),
        request_timeout: Duration::from_secs(settings.openai.request_timeout_secs),
        transfer_timeout: Duration::from_secs(settings.openai.transfer_timeout_secs),
        max_retries: settings.openai.max_retries,
        backoff_base: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
        request_id_prefix: Some(replica.to_string()),
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "batchlens".into())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
