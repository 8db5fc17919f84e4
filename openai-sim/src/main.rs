//! `openai-sim` binary: flags for every knob, then serve until Ctrl-C.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use openai_sim::{
    FaultRule, ImageSize, OutputOrder, RateLimiterKind, SchemaTokens, SimConfig, SimServer,
    WebhookTiming,
};

/// A faithful simulator of OpenAI's Files, Batches and Chat Completions endpoints.
/// Every flag is a knob of /_sim/config (see openai-sim/README.md); unset flags keep defaults.
#[derive(Parser, Debug)]
#[command(name = "openai-sim", version)]
struct Args {
    #[arg(long, default_value = "127.0.0.1", env = "OPENAI_SIM_HOST")]
    host: IpAddr,
    #[arg(long, default_value_t = 8089, env = "OPENAI_SIM_PORT")]
    port: u16,
    /// A whole config as JSON (as GET /_sim/config prints it); flags below override it.
    #[arg(long)]
    config_json: Option<String>,

    /// Require exactly this bearer key (default: any non-empty key)
    #[arg(long)]
    api_key: Option<String>,
    /// Organization id quoted in limit messages [default: org-sim]
    #[arg(long)]
    organization: Option<String>,
    /// Time in `validating` [default: 1000]
    #[arg(long)]
    validating_ms: Option<u64>,
    /// Time `in_progress` takes to run every line [default: 5000]
    #[arg(long)]
    in_progress_ms: Option<u64>,
    /// Time in `finalizing` [default: 1000]
    #[arg(long)]
    finalizing_ms: Option<u64>,
    /// Time in `cancelling` [default: 1000]
    #[arg(long)]
    cancel_ms: Option<u64>,
    /// Completion window [default: 86400000, 24 h]
    #[arg(long)]
    expire_after_ms: Option<u64>,
    /// Most lines per batch input [default: 50000]
    #[arg(long)]
    max_lines: Option<usize>,
    /// Largest batch input file [default: 200000000]
    #[arg(long)]
    max_file_bytes: Option<u64>,
    /// Largest upload [default: 512000000]
    #[arg(long)]
    max_upload_bytes: Option<u64>,
    /// Enqueued-token limit, MODEL=TOKENS; repeatable.
    #[arg(long = "token-limit", value_parser = parse_limit)]
    token_limits: Vec<(String, u64)>,
    /// Seed for shuffles, injected line failures, generated content [default: 0]
    #[arg(long)]
    seed: Option<u64>,
    /// Probability a batch line fails [default: 0]
    #[arg(long)]
    line_failure_rate: Option<f64>,
    /// Status of injected failed lines [default: 400]
    #[arg(long)]
    line_failure_status: Option<u16>,
    /// WIDTHxHEIGHT assumed for https image URLs.
    #[arg(long)]
    default_image_size: Option<ImageSize>,
    /// Reasoning tokens per reply of gpt-5*/o* models [default: 0]
    #[arg(long)]
    reasoning_tokens: Option<u64>,
    /// Share of prompt tokens reported as cached [default: 0]
    #[arg(long)]
    cached_tokens_fraction: Option<f64>,
    /// Cut replies at max_completion_tokens [default: true]
    #[arg(long)]
    truncate_at_max_tokens: Option<bool>,
    /// Chat requests per minute per model, 0 = unlimited [default: 0]
    #[arg(long)]
    rpm: Option<u64>,
    /// Chat tokens per minute per model, 0 = unlimited [default: 0]
    #[arg(long)]
    tpm: Option<u64>,
    /// How RPM/TPM are kept: token_bucket, sliding_window, fixed_window [default: token_bucket]
    #[arg(long, value_enum)]
    rate_limiter: Option<RateLimiterKind>,
    /// token_bucket only: what a bucket holds, in ms of refill [default: 60000]
    #[arg(long)]
    bucket_capacity_ms: Option<u64>,
    /// Text tokens each message adds on top of its content [default: 3]
    #[arg(long)]
    tokens_per_message: Option<u64>,
    /// Text tokens added once for the reply's priming [default: 3]
    #[arg(long)]
    tokens_per_reply: Option<u64>,
    /// How a json_schema counts: none, compact, pretty, fixed [default: compact]
    #[arg(long, value_enum)]
    schema_tokens: Option<SchemaTokens>,
    /// Tokens a schema counts with --schema-tokens fixed [default: 0]
    #[arg(long)]
    schema_fixed_tokens: Option<u64>,
    /// Factor on the prompt's text tokens [default: 1.0]
    #[arg(long)]
    text_token_factor: Option<f64>,
    /// Offset added to the prompt's text tokens, may be negative [default: 0]
    #[arg(long, allow_hyphen_values = true)]
    text_token_offset: Option<i64>,
    /// Factor on each image's tokens [default: 1.0]
    #[arg(long)]
    image_token_factor: Option<f64>,
    /// A model offering service_tier=flex; repeatable, replaces the default list.
    #[arg(long = "flex-model")]
    flex_models: Vec<String>,
    /// Extra delay before each flex chat answer [default: 0]
    #[arg(long)]
    flex_latency_ms: Option<u64>,
    /// Probability of a 429 resource_unavailable on a flex chat call [default: 0]
    #[arg(long)]
    flex_unavailable_rate: Option<f64>,
    /// Batch output line order: shuffled, input, reversed [default: shuffled]
    #[arg(long, value_enum)]
    batch_output_order: Option<OutputOrder>,
    /// Delay before each chat answer [default: 0]
    #[arg(long)]
    chat_latency_ms: Option<u64>,
    /// Delay before every /v1 answer [default: 0]
    #[arg(long)]
    latency_ms: Option<u64>,
    /// Probability of a 500 on any /v1 request [default: 0]
    #[arg(long)]
    fault_5xx_rate: Option<f64>,
    /// Probability of a 429 on any /v1 request [default: 0]
    #[arg(long)]
    fault_429_rate: Option<f64>,
    /// Answer every /v1 request with 429 insufficient_quota [default: false]
    #[arg(long)]
    insufficient_quota: Option<bool>,
    /// A fault rule as JSON, e.g. '{"path_prefix":"/v1/batches","fault_5xx_rate":0.5}'; repeatable.
    #[arg(long = "fault-rule", value_parser = parse_rule)]
    faults: Vec<FaultRule>,
    /// Journal entries kept [default: 100000]
    #[arg(long)]
    journal_limit: Option<usize>,
    /// POST batch events here
    #[arg(long)]
    webhook_url: Option<String>,
    /// whsec_… secret signing webhooks
    #[arg(long)]
    webhook_secret: Option<String>,
    /// When webhooks go out: at_completion, delayed, duplicate [default: at_completion]
    #[arg(long, value_enum)]
    webhook_timing: Option<WebhookTiming>,
    /// Delay of delayed webhooks, gap between duplicate copies [default: 0]
    #[arg(long)]
    webhook_delay_ms: Option<u64>,
}

fn parse_limit(s: &str) -> Result<(String, u64), String> {
    let (m, n) = s
        .split_once('=')
        .ok_or_else(|| format!("expected MODEL=TOKENS, got {s:?}"))?;
    let n = n
        .trim()
        .parse()
        .map_err(|e| format!("bad token count in {s:?}: {e}"))?;
    Ok((m.trim().to_string(), n))
}

fn parse_rule(s: &str) -> Result<FaultRule, String> {
    serde_json::from_str(s).map_err(|e| format!("bad fault rule {s:?}: {e}"))
}

macro_rules! apply {
    ($cfg:ident, $args:ident, $($field:ident),* $(,)?) => {
        $( if let Some(v) = $args.$field.clone() { $cfg.$field = v; } )*
    };
}

fn config_from(args: &Args) -> Result<SimConfig, String> {
    let mut cfg = match &args.config_json {
        Some(j) => serde_json::from_str(j).map_err(|e| format!("--config-json: {e}"))?,
        None => SimConfig::default(),
    };
    apply!(
        cfg,
        args,
        organization,
        validating_ms,
        in_progress_ms,
        finalizing_ms,
        cancel_ms,
        expire_after_ms,
        max_lines,
        max_file_bytes,
        max_upload_bytes,
        seed,
        line_failure_rate,
        line_failure_status,
        default_image_size,
        reasoning_tokens,
        cached_tokens_fraction,
        truncate_at_max_tokens,
        rpm,
        tpm,
        rate_limiter,
        bucket_capacity_ms,
        tokens_per_message,
        tokens_per_reply,
        schema_tokens,
        schema_fixed_tokens,
        text_token_factor,
        text_token_offset,
        image_token_factor,
        flex_latency_ms,
        flex_unavailable_rate,
        batch_output_order,
        webhook_timing,
        webhook_delay_ms,
        chat_latency_ms,
        latency_ms,
        fault_5xx_rate,
        fault_429_rate,
        insufficient_quota,
        journal_limit,
    );
    if args.api_key.is_some() {
        cfg.api_key = args.api_key.clone();
    }
    if args.webhook_url.is_some() {
        cfg.webhook_url = args.webhook_url.clone();
    }
    if args.webhook_secret.is_some() {
        cfg.webhook_secret = args.webhook_secret.clone();
    }
    if !args.token_limits.is_empty() {
        let limits: BTreeMap<String, u64> = args.token_limits.iter().cloned().collect();
        cfg.enqueued_token_limits.extend(limits);
    }
    cfg.faults.extend(args.faults.iter().cloned());
    if !args.flex_models.is_empty() {
        cfg.flex_models = args.flex_models.clone();
    }
    Ok(cfg)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let cfg = config_from(&args)?;
    let server = SimServer::spawn_on(SocketAddr::new(args.host, args.port), cfg).await?;
    tracing::info!(
        base_url = %server.base_url(),
        control = %format!("http://{}/_sim/config", server.addr()),
        "openai-sim listening"
    );
    println!("openai-sim listening on {}", server.base_url());
    tokio::signal::ctrl_c().await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
