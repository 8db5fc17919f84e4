//! `openai-sim` binary: flags for every knob, then serve until Ctrl-C.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use clap::Parser;
use openai_sim::{FaultRule, ImageSize, SimConfig, SimServer};

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

    #[arg(long)]
    api_key: Option<String>,
    #[arg(long)]
    organization: Option<String>,
    #[arg(long)]
    validating_ms: Option<u64>,
    #[arg(long)]
    in_progress_ms: Option<u64>,
    #[arg(long)]
    finalizing_ms: Option<u64>,
    #[arg(long)]
    cancel_ms: Option<u64>,
    #[arg(long)]
    expire_after_ms: Option<u64>,
    #[arg(long)]
    max_lines: Option<usize>,
    #[arg(long)]
    max_file_bytes: Option<u64>,
    #[arg(long)]
    max_upload_bytes: Option<u64>,
    /// Enqueued-token limit, MODEL=TOKENS; repeatable.
    #[arg(long = "token-limit", value_parser = parse_limit)]
    token_limits: Vec<(String, u64)>,
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long)]
    line_failure_rate: Option<f64>,
    #[arg(long)]
    line_failure_status: Option<u16>,
    /// WIDTHxHEIGHT assumed for https image URLs.
    #[arg(long)]
    default_image_size: Option<ImageSize>,
    #[arg(long)]
    reasoning_tokens: Option<u64>,
    #[arg(long)]
    cached_tokens_fraction: Option<f64>,
    #[arg(long)]
    truncate_at_max_tokens: Option<bool>,
    #[arg(long)]
    rpm: Option<u64>,
    #[arg(long)]
    tpm: Option<u64>,
    #[arg(long)]
    chat_latency_ms: Option<u64>,
    #[arg(long)]
    latency_ms: Option<u64>,
    #[arg(long)]
    fault_5xx_rate: Option<f64>,
    #[arg(long)]
    fault_429_rate: Option<f64>,
    #[arg(long)]
    insufficient_quota: Option<bool>,
    /// A fault rule as JSON, e.g. '{"path_prefix":"/v1/batches","fault_5xx_rate":0.5}'; repeatable.
    #[arg(long = "fault-rule", value_parser = parse_rule)]
    faults: Vec<FaultRule>,
    #[arg(long)]
    journal_limit: Option<usize>,
    #[arg(long)]
    webhook_url: Option<String>,
    #[arg(long)]
    webhook_secret: Option<String>,
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
