//! Settings: the embedded defaults (`batchlens.example.toml`) < `batchlens.toml` or the
//! file in `BATCHLENS_CONFIG` < `DATABASE_URL`, `OPENAI_API_KEY`, `OPENAI_BASE_URL` <
//! `BATCHLENS__SECTION__KEY`. Checked once at start; errors name the setting.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::cost::pricing::ModelPrice;

/// The oldest an analysis may be to be reused, in days.
const MAX_REUSE_AGE_DAYS: u32 = 3650;

/// The embedded defaults: the documented example file itself, so the two cannot drift.
pub const DEFAULTS_TOML: &str = include_str!("../batchlens.example.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub openai: OpenAiSettings,
    pub batch: BatchSettings,
    pub individual: IndividualSettings,
    pub intake: IntakeSettings,
    pub estimate: EstimateSettings,
    pub log: LogSettings,
    pub webhooks: WebhookSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    /// Limits per tenant (`[tenants.<name>]`), the unset ones from `[tenants.default]`.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLimitSettings>,
    #[serde(default)]
    pub pricing: BTreeMap<String, ModelPrice>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub shutdown_timeout_secs: u64,
    /// Quiet time after which `/v1/jobs/{id}/events` sends a `: keep-alive` comment.
    pub events_heartbeat_ms: u64,
    /// How long an `Idempotency-Key`'s first request holds the key without renewing it.
    pub idempotency_lease_secs: u64,
    /// Bytes of rendered job views kept per replica, by version (0: none kept).
    pub job_view_cache_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// Holds a password for PostgreSQL, hence secret.
    pub url: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpenAiSettings {
    pub base_url: String,
    pub api_key: SecretString,
    pub default_model: String,
    pub max_completion_tokens: u32,
    pub request_timeout_secs: u64,
    pub transfer_timeout_secs: u64,
    pub max_retries: u32,
    /// Verifies OpenAI's webhooks at `POST /v1/openai/webhooks` (Standard Webhooks,
    /// `whsec_<base64>`); empty refuses them all.
    pub webhook_secret: SecretString,
}

impl OpenAiSettings {
    /// The HMAC key of `webhook_secret` (checked when the settings load); None when empty.
    pub fn webhook_key(&self) -> Option<Vec<u8>> {
        crate::signing::signing_key(self.webhook_secret.expose_secret()).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BatchSettings {
    pub poll_min_ms: u64,
    pub poll_max_ms: u64,
    pub max_file_bytes: u64,
    pub max_lines: u64,
    pub max_attempts: u32,
    pub retention_hours: u64,
    pub delete_remote_files: bool,
    pub lease_secs: u64,
    pub tick_ms: u64,
    /// OpenAI's enqueued-token limit for any model without an entry in `token_limits`
    /// (0 = unknown: no cap).
    #[serde(default)]
    pub enqueued_token_limit: u64,
    /// Enqueued-token limit per model name, as written in jobs (e.g. `gpt-4o-mini`).
    #[serde(default)]
    pub token_limits: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndividualSettings {
    pub max_items: usize,
    pub governor: bool,
    pub rpm: u32,
    pub tpm: u32,
    pub concurrency: usize,
    /// Where the governor keeps its budget: `auto` (in the database on PostgreSQL, shared
    /// by every replica; in memory on SQLite), `on` (the database) or `off` (memory:
    /// each replica paces alone at the full limits).
    #[serde(default = "default_shared_budget")]
    pub shared_budget: String,
    #[serde(default)]
    pub models: BTreeMap<String, ModelLimits>,
    /// Models offering `service_tier: "flex"` (a name matches its dated snapshots too).
    pub flex_models: Vec<String>,
    /// Client timeout of one flex call.
    pub flex_timeout_secs: u64,
    /// First wait after a flex 429 "resource unavailable"; doubles per answer.
    pub flex_backoff_ms: u64,
    pub flex_backoff_max_ms: u64,
    /// How long an item may go without flex capacity before it falls back.
    pub flex_fallback_after_secs: u64,
    /// Where it falls back to: `batch` or `standard`.
    pub flex_fallback: FlexFallback,
}

/// Where a flex item goes when flex capacity stays unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlexFallback {
    /// Into a Batch API job of the same job: the same prices, hours instead of minutes.
    Batch,
    /// An individual call at standard prices, at once.
    Standard,
}

impl IndividualSettings {
    /// Whether `model`, a name or its dated snapshot (`gpt-5-mini-2025-08-07`), is in
    /// `flex_models`.
    pub fn offers_flex(&self, model: &str) -> bool {
        let base = crate::cost::strip_snapshot_date(model);
        self.flex_models.iter().any(|m| m == model || m == base)
    }
}

fn default_shared_budget() -> String {
    "auto".into()
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelLimits {
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IntakeSettings {
    pub max_image_bytes: usize,
    pub downscale: bool,
    pub default_image_width: u32,
    pub default_image_height: u32,
    /// A job's `fetch` when its body gives none.
    pub fetch: crate::domain::Fetch,
    /// Each `image_url` download with `fetch: "inline"`, redirects and body included.
    pub fetch_timeout_secs: u64,
    /// Fetch from loopback and private addresses, over http too (development only;
    /// logged at start).
    pub fetch_allow_private: bool,
    /// Downloads at once, over all requests.
    pub fetch_concurrency: usize,
    /// Bytes the downloads at once may hold: each may hold `max_image_bytes`, so at most
    /// this / `max_image_bytes` run at once (and at most `fetch_concurrency`).
    pub fetch_max_bytes_in_flight: usize,
    /// Reuse at all: off, every image of every job is sent (as `reuse: false` on each).
    pub reuse: bool,
    /// How old (days since it finished) an analysis may be to answer the same image again;
    /// 0 reuses none (duplicates inside one job are still sent once).
    pub reuse_max_age_days: u32,
}

impl IntakeSettings {
    /// Downloads that may run at once: `fetch_concurrency`, fewer when
    /// `fetch_max_bytes_in_flight` cannot hold that many images of `max_image_bytes`.
    pub fn fetch_slots(&self) -> usize {
        let by_bytes = self.fetch_max_bytes_in_flight / self.max_image_bytes.max(1);
        self.fetch_concurrency.min(by_bytes).max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EstimateSettings {
    pub default_output_tokens: u32,
    /// Finished items of an analyzer on a model before its observed usage replaces the
    /// formula.
    pub min_observed_items: u64,
    /// Recent jobs of the analyzer the observation reads.
    pub history_jobs: usize,
    /// Items read of each of those jobs (the latest first).
    pub history_items_per_job: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Signs deliveries (Standard Webhooks, `whsec_<base64>`); empty sends them unsigned.
    pub secret: SecretString,
    pub timeout_secs: u64,
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles after each (at most an hour).
    pub retry_min_ms: u64,
    /// Accept `http://` webhook URLs (development only).
    pub allow_http: bool,
    /// Deliver to any address, loopback and private ones too, over http or https
    /// (development only; logged at start).
    #[serde(default)]
    pub allow_private: bool,
}

impl WebhookSettings {
    /// The URL policy webhook URLs are judged by, at submit and on delivery.
    pub fn url_policy(&self) -> crate::outbound::UrlPolicy {
        let mut policy = crate::outbound::UrlPolicy::new(self.allow_private);
        policy.allow_http |= self.allow_http;
        policy
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    #[serde(default)]
    pub keys: Vec<ApiKeySetting>,
    /// How long a replica trusts its copy of the database's keys (`batchlens keys`), in
    /// seconds: a created or revoked key takes effect within this time.
    #[serde(default = "default_key_cache_secs")]
    pub key_cache_secs: u64,
    /// Refuse callers without a key even when no key exists yet (keys only in the
    /// database): the API is never open, and may listen on any address.
    #[serde(default)]
    pub require_key: bool,
}

fn default_key_cache_secs() -> u64 {
    10
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            key_cache_secs: default_key_cache_secs(),
            require_key: false,
        }
    }
}

/// One tenant's limits; an unset one is the `[tenants.default]` value, else no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantLimitSettings {
    /// API requests per second (a token bucket of this rate holding at least 1 request).
    pub requests_per_second: Option<f64>,
    /// Images accepted and not finished yet, over all the tenant's jobs.
    pub max_open_items: Option<u64>,
    /// What the tenant's jobs created in a calendar month (UTC) may cost.
    pub monthly_budget_usd: Option<f64>,
}

impl TenantLimitSettings {
    /// Each limit of `self`, else of `defaults`.
    pub fn or(self, defaults: TenantLimitSettings) -> Self {
        Self {
            requests_per_second: self.requests_per_second.or(defaults.requests_per_second),
            max_open_items: self.max_open_items.or(defaults.max_open_items),
            monthly_budget_usd: self.monthly_budget_usd.or(defaults.monthly_budget_usd),
        }
    }
}

/// The `[tenants]` table name whose limits apply to every tenant without its own.
pub const DEFAULT_TENANT_LIMITS: &str = "default";

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeySetting {
    pub tenant: String,
    /// Lower-case hex SHA-256 of the key; the key itself is never configured or stored.
    pub sha256: String,
}

/// A setting that is missing, malformed or out of range.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration: {setting}: {problem}")]
    Invalid { setting: String, problem: String },
}

fn invalid(setting: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        problem: problem.into(),
    }
}

impl Settings {
    /// Loads from the process: the config file and the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        let (file, required) = match env.get("BATCHLENS_CONFIG") {
            Some(path) => (PathBuf::from(path), true),
            None => (PathBuf::from("batchlens.toml"), false),
        };
        Self::load_from(Some((&file, required)), &env)
    }

    /// Loads from an optional file and an explicit environment (tests pass their own).
    pub fn load_from(
        file: Option<(&Path, bool)>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULTS_TOML,
            config::FileFormat::Toml,
        ));
        if let Some((path, required)) = file {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(required),
            );
        }
        for (var, key) in [
            ("DATABASE_URL", "database.url"),
            ("OPENAI_API_KEY", "openai.api_key"),
            ("OPENAI_BASE_URL", "openai.base_url"),
        ] {
            builder = builder.set_override_option(key, env.get(var).cloned())?;
        }
        let prefixed: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with("BATCHLENS__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("BATCHLENS")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("individual.flex_models")
                .source(Some(prefixed)),
        );
        let mut settings: Settings = builder.build()?.try_deserialize()?;
        settings.normalize();
        settings.validate()?;
        Ok(settings)
    }

    fn normalize(&mut self) {
        if self.database.url.expose_secret().trim().is_empty() {
            let path = self.data_dir.join("batchlens.db");
            self.database.url = format!("sqlite://{}", path.display()).into();
        }
        let trimmed = self.openai.base_url.trim_end_matches('/').to_string();
        self.openai.base_url = trimmed;
        for key in &mut self.auth.keys {
            key.sha256 = key.sha256.trim().to_ascii_lowercase();
        }
    }

    /// Every rule a value must meet, each error naming its setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_openai()?;
        self.validate_workers()?;
        self.validate_tenants()?;
        self.validate_rest()
    }

    /// `server`, `webhooks` and `database`.
    fn validate_server(&self) -> Result<(), ConfigError> {
        let host: IpAddr = self
            .server
            .host
            .parse()
            .map_err(|_| invalid("server.host", "must be an IP address such as 127.0.0.1"))?;
        if self.auth.keys.is_empty() && !self.auth.require_key && !host.is_loopback() {
            return Err(invalid(
                "server.host",
                format!(
                    "{host} is not a loopback address: with no [[auth.keys]] configured (and \
                     auth.require_key off) the service is open and only listens on 127.0.0.1 \
                     or ::1"
                ),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        if self.server.idempotency_lease_secs == 0 {
            return Err(invalid(
                "server.idempotency_lease_secs",
                "must be at least 1",
            ));
        }
        if self.server.events_heartbeat_ms < 10 {
            return Err(invalid("server.events_heartbeat_ms", "must be at least 10"));
        }
        if self.webhooks.max_attempts == 0 {
            return Err(invalid("webhooks.max_attempts", "must be at least 1"));
        }
        if self.webhooks.timeout_secs == 0 {
            return Err(invalid("webhooks.timeout_secs", "must be at least 1"));
        }
        if let Err(why) = crate::signing::signing_key(self.webhooks.secret.expose_secret()) {
            return Err(invalid("webhooks.secret", why));
        }
        let db = self.database.url.expose_secret();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        Ok(())
    }

    fn validate_openai(&self) -> Result<(), ConfigError> {
        let base = url::Url::parse(&self.openai.base_url)
            .map_err(|e| invalid("openai.base_url", format!("not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("openai.base_url", "must be http:// or https://"));
        }
        if self.openai.default_model.trim().is_empty() {
            return Err(invalid("openai.default_model", "must not be empty"));
        }
        if let Err(why) = crate::signing::signing_key(self.openai.webhook_secret.expose_secret()) {
            return Err(invalid("openai.webhook_secret", why));
        }
        if self.openai.max_completion_tokens == 0 {
            return Err(invalid(
                "openai.max_completion_tokens",
                "must be at least 1",
            ));
        }
        if self.openai.request_timeout_secs == 0 || self.openai.transfer_timeout_secs == 0 {
            return Err(invalid(
                "openai.request_timeout_secs",
                "timeouts must be at least 1 second",
            ));
        }
        Ok(())
    }

    /// `batch` and `individual`.
    fn validate_workers(&self) -> Result<(), ConfigError> {
        let b = &self.batch;
        if b.poll_min_ms == 0 || b.poll_max_ms < b.poll_min_ms {
            return Err(invalid(
                "batch.poll_max_ms",
                "needs 0 < batch.poll_min_ms <= batch.poll_max_ms",
            ));
        }
        if b.max_file_bytes < 1024 || b.max_file_bytes > 200_000_000 {
            return Err(invalid(
                "batch.max_file_bytes",
                "must be between 1024 and 200000000 (OpenAI's 200 MB limit)",
            ));
        }
        if b.max_lines == 0 || b.max_lines > 50_000 {
            return Err(invalid(
                "batch.max_lines",
                "must be between 1 and 50000 (OpenAI's limit)",
            ));
        }
        if b.max_attempts == 0 {
            return Err(invalid("batch.max_attempts", "must be at least 1"));
        }
        if b.lease_secs < 5 {
            return Err(invalid("batch.lease_secs", "must be at least 5"));
        }
        if b.tick_ms == 0 {
            return Err(invalid("batch.tick_ms", "must be at least 1"));
        }
        let i = &self.individual;
        if i.rpm == 0 || i.tpm == 0 || i.concurrency == 0 {
            return Err(invalid(
                "individual.rpm",
                "individual.rpm, individual.tpm and individual.concurrency must be at least 1",
            ));
        }
        if i.flex_timeout_secs == 0 || i.flex_backoff_ms == 0 {
            return Err(invalid(
                "individual.flex_timeout_secs",
                "individual.flex_timeout_secs and individual.flex_backoff_ms must be at least 1",
            ));
        }
        if i.flex_backoff_max_ms < i.flex_backoff_ms {
            return Err(invalid(
                "individual.flex_backoff_max_ms",
                "must be at least individual.flex_backoff_ms",
            ));
        }
        match i.shared_budget.as_str() {
            "auto" | "off" | "false" => {}
            "on" | "true" if self.database.url.expose_secret().starts_with("sqlite:") => {
                return Err(invalid(
                    "individual.shared_budget",
                    "\"on\" shares the budget through PostgreSQL; SQLite serves one replica, \
                     whose budget stays in memory (use \"auto\" or \"off\")",
                ))
            }
            "on" | "true" => {}
            other => {
                return Err(invalid(
                    "individual.shared_budget",
                    format!("must be \"auto\", \"on\" or \"off\", not {other:?}"),
                ))
            }
        }
        Ok(())
    }

    /// Whether the governor's budget is kept in the database, shared by every replica
    /// (`individual.shared_budget`: `auto` is PostgreSQL's yes and SQLite's no).
    pub fn shared_budget(&self) -> bool {
        match self.individual.shared_budget.as_str() {
            "on" | "true" => true,
            "off" | "false" => false,
            _ => !self.database.url.expose_secret().starts_with("sqlite:"),
        }
    }

    /// `auth` and `tenants`.
    fn validate_tenants(&self) -> Result<(), ConfigError> {
        if !(1..=10).contains(&self.auth.key_cache_secs) {
            return Err(invalid(
                "auth.key_cache_secs",
                "must be between 1 and 10 (a created or revoked key takes effect within it)",
            ));
        }
        for (name, limits) in &self.tenants {
            if name.trim().is_empty() {
                return Err(invalid("tenants", "a tenant name must not be empty"));
            }
            if let Some(rps) = limits.requests_per_second {
                if !(rps.is_finite() && rps > 0.0) {
                    return Err(invalid(
                        format!("tenants.{name}.requests_per_second"),
                        format!("must be a number above 0, not {rps}"),
                    ));
                }
            }
            if limits.max_open_items == Some(0) {
                return Err(invalid(
                    format!("tenants.{name}.max_open_items"),
                    "must be at least 1",
                ));
            }
            if let Some(usd) = limits.monthly_budget_usd {
                if !(usd.is_finite() && (0.0..=1e6).contains(&usd)) {
                    return Err(invalid(
                        format!("tenants.{name}.monthly_budget_usd"),
                        format!("must be between 0 and 1000000 USD, not {usd}"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The limits of `tenant`: its own `[tenants.<name>]`, the rest from
    /// `[tenants.default]`.
    pub fn tenant_limits(&self, tenant: &str) -> TenantLimitSettings {
        let defaults = self
            .tenants
            .get(DEFAULT_TENANT_LIMITS)
            .copied()
            .unwrap_or_default();
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or_default()
            .or(defaults)
    }

    /// `intake`, `log`, `auth.keys` and `pricing`.
    fn validate_rest(&self) -> Result<(), ConfigError> {
        if self.intake.max_image_bytes == 0 {
            return Err(invalid("intake.max_image_bytes", "must be at least 1"));
        }
        if self.intake.default_image_width == 0 || self.intake.default_image_height == 0 {
            return Err(invalid(
                "intake.default_image_width",
                "default image sizes must be at least 1 pixel",
            ));
        }
        if self.intake.fetch_timeout_secs == 0 {
            return Err(invalid("intake.fetch_timeout_secs", "must be at least 1"));
        }
        if self.intake.fetch_concurrency == 0 {
            return Err(invalid("intake.fetch_concurrency", "must be at least 1"));
        }
        if self.intake.fetch_max_bytes_in_flight < self.intake.max_image_bytes {
            return Err(invalid(
                "intake.fetch_max_bytes_in_flight",
                format!(
                    "must be at least intake.max_image_bytes ({}): one download may hold that much",
                    self.intake.max_image_bytes
                ),
            ));
        }
        if self.intake.reuse_max_age_days > MAX_REUSE_AGE_DAYS {
            return Err(invalid(
                "intake.reuse_max_age_days",
                format!("must be at most {MAX_REUSE_AGE_DAYS} (ten years); 0 reuses nothing"),
            ));
        }
        if self.estimate.min_observed_items == 0 {
            return Err(invalid("estimate.min_observed_items", "must be at least 1"));
        }
        if self.estimate.history_jobs == 0 {
            return Err(invalid("estimate.history_jobs", "must be at least 1"));
        }
        if self.estimate.history_items_per_job < 1 {
            return Err(invalid(
                "estimate.history_items_per_job",
                "must be at least 1",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", format!("not a tracing filter: {e}")))?;
        for key in &self.auth.keys {
            if key.tenant.trim().is_empty() {
                return Err(invalid("auth.keys.tenant", "must not be empty"));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "auth.keys.sha256",
                    format!(
                        "tenant {:?}: must be 64 hex characters (printf %s \"$KEY\" | sha256sum)",
                        key.tenant
                    ),
                ));
            }
        }
        crate::cost::pricing::PriceTable::defaults()
            .with_overrides(&self.pricing)
            .validate()
            .map_err(|e| invalid("pricing", e))?;
        Ok(())
    }

    pub fn database_url(&self) -> &str {
        self.database.url.expose_secret()
    }

    /// The database as the start-up log names it: see [`redacted_database_url`].
    pub fn database_for_log(&self) -> String {
        redacted_database_url(self.database_url())
    }

    /// The data directory as an absolute path (made from the working directory when the
    /// configured one is relative).
    pub fn data_dir_absolute(&self) -> PathBuf {
        std::path::absolute(&self.data_dir).unwrap_or_else(|_| self.data_dir.clone())
    }

    /// No key configured and none required: every caller is the tenant `default` unless
    /// the database holds keys (see `api::auth::KeyRing`).
    pub fn is_open(&self) -> bool {
        self.auth.keys.is_empty() && !self.auth.require_key
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.batch.lease_secs)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.batch.tick_ms)
    }

    pub fn batches_dir(&self) -> PathBuf {
        self.data_dir.join("batches")
    }
}

/// A database URL fit for a log: a PostgreSQL password, in the URL or in a `password`
/// parameter, becomes `***`; a SQLite path is made absolute (`sqlite:///srv/data/batchlens.db`).
/// A URL that does not parse is not shown at all, since it may hold a password.
pub fn redacted_database_url(url: &str) -> String {
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        if path.is_empty() || path == ":memory:" {
            return url.to_string();
        }
        let path = std::path::absolute(path)
            .map_or_else(|_| path.to_string(), |abs| abs.display().to_string());
        return match query {
            Some(query) => format!("sqlite://{path}?{query}"),
            None => format!("sqlite://{path}"),
        };
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "(a database URL that does not parse)".to_string();
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    }
    let is_password = |k: &str| k.eq_ignore_ascii_case("password");
    if parsed.query_pairs().any(|(k, _)| is_password(&k)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_password(&k) { "***".into() } else { v };
                (k.into_owned(), v.into_owned())
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_logged_without_passwords() {
        assert_eq!(
            redacted_database_url("postgres://postgres:hunter2@db.internal:5432/batchlens"),
            "postgres://postgres:***@db.internal:5432/batchlens"
        );
        assert_eq!(
            redacted_database_url("postgresql://app@db/batchlens?sslmode=require"),
            "postgresql://app@db/batchlens?sslmode=require"
        );
        let q = redacted_database_url("postgres://db/x?user=app&password=hunter2&sslmode=disable");
        assert_eq!(q, "postgres://db/x?user=app&password=***&sslmode=disable");
        assert!(!redacted_database_url("postgres://a:hunter2@[::1/x").contains("hunter2"));
    }

    #[test]
    fn sqlite_paths_are_logged_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            redacted_database_url("sqlite://data/batchlens.db"),
            format!("sqlite://{}", cwd.join("data/batchlens.db").display())
        );
        assert_eq!(
            redacted_database_url("sqlite:///srv/b.db?mode=rwc"),
            "sqlite:///srv/b.db?mode=rwc"
        );
        assert_eq!(redacted_database_url("sqlite::memory:"), "sqlite::memory:");
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_point_sqlite_into_the_data_dir() {
        let s = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.server.host, "127.0.0.1");
        assert_eq!(s.batch.poll_max_ms, 30_000);
        assert_eq!(s.batch.max_file_bytes, 190_000_000);
        assert_eq!(s.individual.max_items, 50);
        assert!(s.individual.offers_flex("gpt-5-mini"));
        assert!(s.individual.offers_flex("o4-mini-2025-04-16"));
        assert!(!s.individual.offers_flex("gpt-4o-mini"));
        assert_eq!(s.individual.flex_fallback, FlexFallback::Batch);
        let s = Settings::load_from(
            None,
            &env(&[("BATCHLENS__INDIVIDUAL__FLEX_MODELS", "gpt-4o,gpt-4.1")]),
        )
        .unwrap();
        assert_eq!(s.individual.flex_models, ["gpt-4o", "gpt-4.1"]);
        assert_eq!(s.database_url(), "sqlite://./data/batchlens.db");
        assert!(s.is_open());
    }

    #[test]
    fn the_shared_budget_defaults_to_the_database_on_postgresql_only() {
        let on = |pairs: &[(&str, &str)]| {
            Settings::load_from(None, &env(pairs))
                .unwrap()
                .shared_budget()
        };
        assert!(!on(&[]));
        let pg = ("DATABASE_URL", "postgres://u@localhost/db");
        assert!(on(&[pg]));
        assert!(!on(&[pg, ("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", "off")]));
        assert!(!on(&[
            pg,
            ("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", "false")
        ]));
        assert!(on(&[pg, ("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", "on")]));
        assert!(!on(&[("BATCHLENS__INDIVIDUAL__SHARED_BUDGET", "off")]));
    }

    #[test]
    fn file_then_conventional_then_prefixed_variables() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "[server]\nport = 9000\n[openai]\ndefault_model = \"gpt-4o\"\n",
        )
        .unwrap();
        let s = Settings::load_from(
            Some((&file, true)),
            &env(&[
                ("DATABASE_URL", "postgres://u:p@localhost/db"),
                ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
                ("BATCHLENS__OPENAI__DEFAULT_MODEL", "gpt-4.1"),
                ("BATCHLENS__BATCH__MAX_LINES", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.openai.default_model, "gpt-4.1");
        assert_eq!(s.batch.max_lines, 10);
        assert_eq!(s.database_url(), "postgres://u:p@localhost/db");
        assert_eq!(s.openai.base_url, "http://127.0.0.1:9/v1");
    }

    #[test]
    fn bad_values_name_their_setting() {
        let cases = [
            ("BATCHLENS__SERVER__HOST", "0.0.0.0", "server.host"),
            ("BATCHLENS__SERVER__HOST", "localhost-ish", "server.host"),
            ("BATCHLENS__BATCH__MAX_LINES", "60000", "batch.max_lines"),
            ("BATCHLENS__BATCH__POLL_MIN_MS", "0", "batch.poll_max_ms"),
            (
                "BATCHLENS__OPENAI__WEBHOOK_SECRET",
                "hunter2",
                "openai.webhook_secret",
            ),
            ("DATABASE_URL", "mysql://x", "database.url"),
            ("BATCHLENS__LOG__FORMAT", "xml", "format"),
            ("BATCHLENS__SERVER__PORT", "eighty", "port"),
        ];
        for (var, value, setting) in cases {
            let err = Settings::load_from(None, &env(&[(var, value)])).unwrap_err();
            assert!(
                err.to_string().contains(setting),
                "{var}={value}: {err} should name {setting}"
            );
        }
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let s = Settings::load_from(
            None,
            &env(&[
                ("OPENAI_API_KEY", "sk-very-secret"),
                ("DATABASE_URL", "postgres://u:hunter2@h/db"),
            ]),
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("sk-very-secret"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn keys_allow_any_host_and_must_be_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "[server]\nhost = \"0.0.0.0\"\n[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\"\n",
        )
        .unwrap();
        let s = Settings::load_from(Some((&file, true)), &env(&[])).unwrap();
        assert_eq!(
            s.auth.keys[0].sha256,
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
        std::fs::write(
            &file,
            "[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"plain-key\"\n",
        )
        .unwrap();
        let err = Settings::load_from(Some((&file, true)), &env(&[])).unwrap_err();
        assert!(err.to_string().contains("auth.keys.sha256"), "{err}");
    }

    #[test]
    fn tenant_limits_fall_back_to_the_default_table() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "[tenants.default]\nrequests_per_second = 5\nmonthly_budget_usd = 100\n\
             [tenants.acme]\nrequests_per_second = 0.5\nmax_open_items = 1000\n",
        )
        .unwrap();
        let s = Settings::load_from(Some((&file, true)), &env(&[])).unwrap();
        let acme = s.tenant_limits("acme");
        assert_eq!(acme.requests_per_second, Some(0.5));
        assert_eq!(acme.max_open_items, Some(1000));
        assert_eq!(acme.monthly_budget_usd, Some(100.0));
        let other = s.tenant_limits("globex");
        assert_eq!(other.requests_per_second, Some(5.0));
        assert_eq!(other.max_open_items, None);
        assert_eq!(s.auth.key_cache_secs, 10);
        let none = Settings::load_from(None, &env(&[])).unwrap();
        assert_eq!(none.tenant_limits("acme"), TenantLimitSettings::default());
    }

    #[test]
    fn bad_tenant_limits_name_their_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        for (toml, setting) in [
            (
                "[tenants.acme]\nrequests_per_second = 0\n",
                "tenants.acme.requests_per_second",
            ),
            (
                "[tenants.default]\nrequests_per_second = -1\n",
                "tenants.default.requests_per_second",
            ),
            (
                "[tenants.acme]\nmax_open_items = 0\n",
                "tenants.acme.max_open_items",
            ),
            (
                "[tenants.acme]\nmonthly_budget_usd = -5\n",
                "tenants.acme.monthly_budget_usd",
            ),
            ("[tenants.acme]\nmax_open_items = -3\n", "max_open_items"),
            ("[tenants.acme]\nrequests_per_sec = 3\n", "requests_per_sec"),
            ("[auth]\nkey_cache_secs = 60\n", "auth.key_cache_secs"),
            ("[auth]\nkey_cache_secs = 0\n", "auth.key_cache_secs"),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Settings::load_from(Some((&file, true)), &env(&[])).unwrap_err();
            assert!(err.to_string().contains(setting), "{toml}: {err}");
        }
    }
}
