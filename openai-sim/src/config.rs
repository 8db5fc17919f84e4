//! Every knob of the simulator: one serde struct, patched as JSON by the control endpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// All behaviour knobs. Every field has a default, so a JSON patch may name any subset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// When set, `Authorization: Bearer <this>` is required exactly; otherwise any non-empty key.
    pub api_key: Option<String>,
    /// Organization id quoted in rate-limit and token-limit messages.
    pub organization: String,

    /// Time a new batch spends in `validating`.
    pub validating_ms: u64,
    /// Time `in_progress` takes to run every line; request counts advance linearly over it.
    pub in_progress_ms: u64,
    /// Time a batch spends in `finalizing`.
    pub finalizing_ms: u64,
    /// Time a batch spends in `cancelling` before it becomes `cancelled`.
    pub cancel_ms: u64,
    /// The completion window: a batch not done this long after creation expires.
    pub expire_after_ms: u64,

    /// Most lines a batch input file may have.
    pub max_lines: usize,
    /// Largest batch input file, in bytes.
    pub max_file_bytes: u64,
    /// Largest upload accepted by `POST /v1/files`, in bytes.
    pub max_upload_bytes: u64,
    /// Enqueued-token limit per model name (as written in the request, e.g. `gpt-4o-mini`).
    pub enqueued_token_limits: BTreeMap<String, u64>,

    /// Seed for shuffling output lines, injected line failures and generated content.
    pub seed: u64,
    /// Probability that a valid batch line fails with `line_failure_status`.
    pub line_failure_rate: f64,
    /// HTTP status written into injected failed lines.
    pub line_failure_status: u16,

    /// Size assumed for images given by `http(s)` URL, which the simulator never fetches.
    pub default_image_size: ImageSize,
    /// Hidden reasoning tokens added to each reply of a reasoning model (gpt-5*, o*).
    pub reasoning_tokens: u64,
    /// Share of prompt tokens reported as `cached_tokens` (0.0 to 1.0).
    pub cached_tokens_fraction: f64,
    /// Cut replies at `max_completion_tokens` with `finish_reason: "length"`, as OpenAI does.
    pub truncate_at_max_tokens: bool,

    /// Text tokens every message adds on top of its content.
    pub tokens_per_message: u64,
    /// Text tokens added once per request for priming the reply.
    pub tokens_per_reply: u64,
    /// How a `response_format.json_schema.schema` counts: `none`, `compact`, `pretty`, `fixed`.
    pub schema_tokens: SchemaTokens,
    /// Tokens a schema counts when `schema_tokens` is `fixed`.
    pub schema_fixed_tokens: u64,
    /// Multiplies the prompt's text tokens (content, framing and schema); rounded.
    pub text_token_factor: f64,
    /// Added to the prompt's text tokens after `text_token_factor` (never below 0).
    pub text_token_offset: i64,
    /// Multiplies each image's tokens from the table in `vision.rs`; rounded up.
    pub image_token_factor: f64,

    /// Models that accept `service_tier: "flex"` (the name or its `-YYYY-MM-DD` snapshot).
    pub flex_models: Vec<String>,
    /// Extra delay before each flex chat answer.
    pub flex_latency_ms: u64,
    /// Probability a flex chat call is answered 429 `resource_unavailable`.
    pub flex_unavailable_rate: f64,

    /// Order of lines in batch output/error files: `shuffled`, `input`, `reversed`.
    pub batch_output_order: OutputOrder,

    /// Requests per minute per model on chat completions (0 = unlimited).
    pub rpm: u64,
    /// Tokens per minute per model on chat completions (0 = unlimited).
    pub tpm: u64,
    /// How `rpm`/`tpm` are enforced and reported: `token_bucket`, `sliding_window`, `fixed_window`.
    pub rate_limiter: RateLimiterKind,
    /// `token_bucket` only: how much each bucket holds, as milliseconds of its refill
    /// (60,000: a minute's limit). Lower makes a client's bursts show within seconds.
    pub bucket_capacity_ms: u64,
    /// Extra delay before every chat completion answer.
    pub chat_latency_ms: u64,
    /// While true, chat completions are received, limited and recorded (in arrival order)
    /// but not answered until it turns false: a test holds calls in flight to step the
    /// client's scheduler by the call, not by the clock.
    pub chat_hold: bool,

    /// Delay added to every `/v1` request.
    pub latency_ms: u64,
    /// Probability that a `/v1` request is answered with a 500.
    pub fault_5xx_rate: f64,
    /// Probability that a `/v1` request is answered with a 429 `rate_limit_exceeded`.
    pub fault_429_rate: f64,
    /// Answer every `/v1` request with 429 `insufficient_quota`.
    pub insufficient_quota: bool,
    /// Faults limited to a path prefix (and optionally a method or a number of firings).
    pub faults: Vec<FaultRule>,

    /// Journal entries kept (oldest dropped first).
    pub journal_limit: usize,

    /// Where batch webhooks are POSTed (`batch.completed`, …); none when unset.
    pub webhook_url: Option<String>,
    /// `whsec_…` secret signing webhooks the Standard Webhooks way.
    pub webhook_secret: Option<String>,
    /// When events are sent: `at_completion`, `delayed` (by `webhook_delay_ms`), `duplicate`.
    pub webhook_timing: WebhookTiming,
    /// Delay of `delayed` events after the terminal status; gap between `duplicate` copies.
    pub webhook_delay_ms: u64,
}

/// How the RPM/TPM limits are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum RateLimiterKind {
    /// Continuous refill: the whole limit comes back evenly over 60 s.
    #[default]
    TokenBucket,
    /// A request (and its tokens) counts for 60 s after it was accepted.
    SlidingWindow,
    /// The budget resets on every minute boundary of the simulator's clock.
    FixedWindow,
}

/// How a response-format JSON schema adds to the prompt's text tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum SchemaTokens {
    /// Not counted.
    None,
    /// o200k tokens of `serde_json::to_string(schema)`.
    #[default]
    Compact,
    /// o200k tokens of `serde_json::to_string_pretty(schema)`.
    Pretty,
    /// `schema_fixed_tokens`, whatever the schema.
    Fixed,
}

/// Order of the lines in a batch's output and error files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum OutputOrder {
    /// Seeded shuffle (by `seed` and the batch's creation order).
    #[default]
    Shuffled,
    /// The input file's order.
    Input,
    /// The input file's order, last line first.
    Reversed,
}

/// When batch webhooks go out relative to the batch's terminal status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum WebhookTiming {
    /// As soon as the status is reached (the next 50 ms tick).
    #[default]
    AtCompletion,
    /// `webhook_delay_ms` after the status is reached.
    Delayed,
    /// Twice with the same `webhook-id`, the second `webhook_delay_ms` after the first.
    Duplicate,
}

/// Models offering flex processing: o3 and o4-mini from OpenAI's flex processing guide
/// (April 2025: "currently only available for o3 and o4-mini"), and the gpt-5 family, which
/// the later guide defers to the pricing page for ("Supported models are listed on the
/// pricing page"), where gpt-5, gpt-5-mini and gpt-5-nano have a Flex price.
pub const DEFAULT_FLEX_MODELS: &[&str] = &["o3", "o4-mini", "gpt-5", "gpt-5-mini", "gpt-5-nano"];

impl SimConfig {
    /// Whether `model` (a name or its dated snapshot) is in `flex_models`.
    pub fn offers_flex(&self, model: &str) -> bool {
        self.flex_models.iter().any(|m| {
            model == m
                || model.strip_prefix(m.as_str()).is_some_and(|rest| {
                    let b = rest.as_bytes();
                    b.len() == 11
                        && b[0] == b'-'
                        && b[5] == b'-'
                        && b[8] == b'-'
                        && [1, 2, 3, 4, 6, 7, 9, 10]
                            .iter()
                            .all(|&i| b[i].is_ascii_digit())
                })
        })
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_key: None,
            organization: "org-sim".into(),
            validating_ms: 1_000,
            in_progress_ms: 5_000,
            finalizing_ms: 1_000,
            cancel_ms: 1_000,
            expire_after_ms: 24 * 60 * 60 * 1_000,
            max_lines: 50_000,
            max_file_bytes: 200_000_000,
            max_upload_bytes: 512_000_000,
            enqueued_token_limits: BTreeMap::new(),
            seed: 0,
            line_failure_rate: 0.0,
            line_failure_status: 400,
            default_image_size: ImageSize {
                width: 1024,
                height: 1024,
            },
            reasoning_tokens: 0,
            cached_tokens_fraction: 0.0,
            truncate_at_max_tokens: true,
            tokens_per_message: 3,
            tokens_per_reply: 3,
            schema_tokens: SchemaTokens::Compact,
            schema_fixed_tokens: 0,
            text_token_factor: 1.0,
            text_token_offset: 0,
            image_token_factor: 1.0,
            flex_models: DEFAULT_FLEX_MODELS.iter().map(|m| m.to_string()).collect(),
            flex_latency_ms: 0,
            flex_unavailable_rate: 0.0,
            batch_output_order: OutputOrder::Shuffled,
            rpm: 0,
            tpm: 0,
            rate_limiter: RateLimiterKind::TokenBucket,
            bucket_capacity_ms: 60_000,
            chat_latency_ms: 0,
            chat_hold: false,
            latency_ms: 0,
            fault_5xx_rate: 0.0,
            fault_429_rate: 0.0,
            insufficient_quota: false,
            faults: Vec::new(),
            journal_limit: 100_000,
            webhook_url: None,
            webhook_secret: None,
            webhook_timing: WebhookTiming::AtCompletion,
            webhook_delay_ms: 0,
        }
    }
}

impl SimConfig {
    /// A config whose batches run through every state within a few tens of milliseconds.
    pub fn fast() -> Self {
        SimConfig {
            validating_ms: 20,
            in_progress_ms: 60,
            finalizing_ms: 20,
            cancel_ms: 20,
            ..SimConfig::default()
        }
    }
}

/// A fault limited to requests whose path starts with `path_prefix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultRule {
    /// e.g. `/v1/batches`; matched against the request path.
    pub path_prefix: String,
    /// Only this HTTP method (e.g. `POST`) when set.
    pub method: Option<String>,
    /// Probability of a 5xx answer.
    pub fault_5xx_rate: f64,
    /// Status of the 5xx answer (500, 502, 503…).
    pub status_5xx: u16,
    /// Probability of a 429 `rate_limit_exceeded` answer.
    pub fault_429_rate: f64,
    /// `retry-after-ms` of injected 429s (`retry-after` is its ceiling in seconds, at least 1).
    pub retry_after_ms: u64,
    /// Answer with 429 `insufficient_quota`.
    pub insufficient_quota: bool,
    /// Delay before the request is handled.
    pub latency_ms: u64,
    /// Fire (inject a fault) at most this many more times; decremented on each firing.
    pub remaining: Option<u64>,
    /// Let this many matching requests through untouched before the rule may fire
    /// (decremented on each): a fault for the fourth call, say, with `skip: 3`.
    pub skip: u64,
}

impl Default for FaultRule {
    fn default() -> Self {
        FaultRule {
            path_prefix: "/v1/".into(),
            method: None,
            fault_5xx_rate: 0.0,
            status_5xx: 500,
            fault_429_rate: 0.0,
            retry_after_ms: 1_000,
            insufficient_quota: false,
            latency_ms: 0,
            remaining: None,
            skip: 0,
        }
    }
}

/// Image dimensions, written `WIDTHxHEIGHT` in JSON and on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for ImageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for ImageSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (w, h) = s
            .split_once(['x', 'X'])
            .ok_or_else(|| format!("expected WIDTHxHEIGHT, got {s:?}"))?;
        let parse = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("expected WIDTHxHEIGHT with positive integers, got {s:?}"))
        };
        Ok(ImageSize {
            width: parse(w)?,
            height: parse(h)?,
        })
    }
}

impl TryFrom<String> for ImageSize {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<ImageSize> for String {
    fn from(s: ImageSize) -> String {
        s.to_string()
    }
}

/// RFC 7396 JSON merge patch, applied to the serialized config by `PATCH /_sim/config`.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_keeps_other_knobs_and_null_restores_default() {
        let mut cfg = SimConfig {
            rpm: 7,
            api_key: Some("k".into()),
            ..SimConfig::default()
        };
        let mut v = serde_json::to_value(&cfg).unwrap();
        merge_patch(
            &mut v,
            &serde_json::json!({"tpm": 100, "api_key": null, "default_image_size": "10x20"}),
        );
        cfg = serde_json::from_value(v).unwrap();
        assert_eq!(cfg.rpm, 7);
        assert_eq!(cfg.tpm, 100);
        assert_eq!(cfg.api_key, None);
        assert_eq!(
            cfg.default_image_size,
            ImageSize {
                width: 10,
                height: 20
            }
        );
    }

    #[test]
    fn image_size_rejects_garbage() {
        assert!("10".parse::<ImageSize>().is_err());
        assert!("0x5".parse::<ImageSize>().is_err());
        assert_eq!("3X4".parse::<ImageSize>().unwrap().to_string(), "3x4");
    }
}
