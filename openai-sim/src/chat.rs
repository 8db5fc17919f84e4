//! Chat Completions as a pure function: validate a request body, count its prompt tokens,
//! and build the `chat.completion` answer. Shared by the HTTP endpoint and batch lines.

use rand::Rng;
use serde_json::{json, Value};

use crate::config::{SchemaTokens, SimConfig};
use crate::error::ApiError;
use crate::models;
use crate::schema_gen;
use crate::tokens;
use crate::vision::{self, Detail, ImageUrlError};

const ROLES: &[&str] = &[
    "system",
    "assistant",
    "user",
    "function",
    "tool",
    "developer",
];
const PART_TYPES: &[&str] = &[
    "text",
    "image_url",
    "input_audio",
    "refusal",
    "audio",
    "file",
];

/// What the reply must look like.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplyFormat {
    Text,
    JsonObject,
    /// The `json_schema.schema` (`true` when the request gave none).
    JsonSchema(Value),
}

/// A validated request: what the answer and the rate limiter need from it.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    /// As requested (an alias like `gpt-4o-mini` or a snapshot).
    pub model: String,
    pub reasoning: bool,
    pub text_tokens: u64,
    pub image_tokens: u64,
    pub format: ReplyFormat,
    pub max_completion_tokens: Option<u64>,
    pub n: u64,
    /// `service_tier: "flex"` on a model that offers it.
    pub flex: bool,
}

impl Prepared {
    pub fn prompt_tokens(&self) -> u64 {
        self.text_tokens + self.image_tokens
    }

    /// What the request counts against a tokens-per-minute limit.
    pub fn rate_limit_cost(&self) -> u64 {
        self.prompt_tokens() + self.max_completion_tokens.unwrap_or(0)
    }
}

/// Token usage of one answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub image_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total(),
            "prompt_tokens_details": {
                "cached_tokens": self.cached_tokens,
                "audio_tokens": 0,
                "text_tokens": self.prompt_tokens - self.image_tokens,
                "image_tokens": self.image_tokens,
            },
            "completion_tokens_details": {
                "reasoning_tokens": self.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        })
    }
}

/// Validates a `CreateChatCompletionRequest` body and counts its prompt tokens.
pub fn prepare(body: &Value, cfg: &SimConfig) -> Result<Prepared, ApiError> {
    let obj = body.as_object().ok_or_else(|| {
        ApiError::invalid("Invalid type for request body: expected an object.").code("invalid_type")
    })?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => return Err(ApiError::invalid("you must provide a model parameter")),
    };
    let reasoning = models::is_reasoning(&model);

    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(ApiError::invalid(
            "Unsupported value: 'stream' is not supported by openai-sim; send stream=false.",
        )
        .param("stream")
        .code("unsupported_value"));
    }
    if reasoning && obj.get("max_tokens").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::invalid(
            "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
        )
        .param("max_tokens")
        .code("unsupported_parameter"));
    }
    if let Some(t) = obj.get("temperature").filter(|v| !v.is_null()) {
        let t = t
            .as_f64()
            .ok_or_else(|| invalid_type("temperature", "a number"))?;
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(format!(
                "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got {t} instead."
            ))
            .param("temperature")
            .code("decimal_above_max_value"));
        }
        if reasoning && t != 1.0 {
            return Err(ApiError::invalid(format!(
                "Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."
            ))
            .param("temperature")
            .code("unsupported_value"));
        }
    }
    let max_completion_tokens =
        positive_int(obj, "max_completion_tokens")?.or(positive_int(obj, "max_tokens")?);
    let n = positive_int(obj, "n")?.unwrap_or(1);
    if n > 128 {
        return Err(ApiError::invalid(format!(
            "Invalid 'n': integer above maximum value. Expected a value <= 128, but got {n} instead."
        ))
        .param("n")
        .code("integer_above_max_value"));
    }

    let flex = match obj.get("service_tier").and_then(Value::as_str) {
        Some("flex") if cfg.offers_flex(&model) => true,
        Some("flex") => {
            return Err(
                ApiError::invalid("Flex is not available for this model.").param("service_tier")
            )
        }
        _ => false,
    };

    let (mut text_tokens, image_tokens, all_text) =
        count_messages(obj.get("messages"), &model, cfg)?;
    text_tokens += cfg.tokens_per_reply;

    let format = reply_format(obj.get("response_format"))?;
    match &format {
        ReplyFormat::JsonSchema(schema) if obj_has_schema(obj) => {
            text_tokens += schema_tokens(schema, cfg);
        }
        ReplyFormat::JsonObject if !all_text.to_lowercase().contains("json") => {
            return Err(ApiError::invalid(
                "'messages' must contain the word 'json' in some form, to use 'response_format' of type 'json_object'.",
            )
            .param("messages"));
        }
        _ => {}
    }

    Ok(Prepared {
        model,
        reasoning,
        text_tokens: scale_text_tokens(text_tokens, cfg),
        image_tokens,
        format,
        max_completion_tokens,
        n,
        flex,
    })
}

/// What a `response_format` schema adds to the prompt, by the `schema_tokens` knob.
fn schema_tokens(schema: &Value, cfg: &SimConfig) -> u64 {
    match cfg.schema_tokens {
        SchemaTokens::None => 0,
        SchemaTokens::Compact => {
            tokens::count_memo(&serde_json::to_string(schema).unwrap_or_default())
        }
        SchemaTokens::Pretty => {
            tokens::count_memo(&serde_json::to_string_pretty(schema).unwrap_or_default())
        }
        SchemaTokens::Fixed => cfg.schema_fixed_tokens,
    }
}

/// `round(text × text_token_factor) + text_token_offset`, never below 0.
fn scale_text_tokens(text: u64, cfg: &SimConfig) -> u64 {
    let scaled = if cfg.text_token_factor == 1.0 {
        text as i64
    } else {
        (text as f64 * cfg.text_token_factor.max(0.0)).round() as i64
    };
    scaled.saturating_add(cfg.text_token_offset).max(0) as u64
}

fn obj_has_schema(obj: &serde_json::Map<String, Value>) -> bool {
    obj.get("response_format")
        .and_then(|f| f.get("json_schema"))
        .and_then(|j| j.get("schema"))
        .is_some_and(|s| !s.is_null())
}

fn invalid_type(param: &str, expected: &str) -> ApiError {
    ApiError::invalid(format!("Invalid type for '{param}': expected {expected}."))
        .param(param)
        .code("invalid_type")
}

fn positive_int(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid(format!(
                "Invalid '{key}': expected an integer >= 1, but got {v} instead."
            ))
            .param(key)
            .code("invalid_value")),
        },
    }
}

/// Text tokens (content + per-message overhead), image tokens, and all text (for the `json` check).
fn count_messages(
    messages: Option<&Value>,
    model: &str,
    cfg: &SimConfig,
) -> Result<(u64, u64, String), ApiError> {
    let messages = match messages {
        None | Some(Value::Null) => return Err(ApiError::missing("messages")),
        Some(Value::Array(m)) => m,
        Some(_) => return Err(invalid_type("messages", "an array of objects")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .param("messages")
        .code("empty_array"));
    }
    let (mut text, mut images, mut all_text) = (0u64, 0u64, String::new());
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = m
            .as_object()
            .ok_or_else(|| invalid_type(&at, "an object"))?;
        let role = match m.get("role") {
            Some(Value::String(r)) => r.as_str(),
            None => return Err(ApiError::missing(&format!("{at}.role"))),
            Some(_) => return Err(invalid_type(&format!("{at}.role"), "a string")),
        };
        if !ROLES.contains(&role) {
            return Err(ApiError::invalid_value(&format!("{at}.role"), role, ROLES));
        }
        text += cfg.tokens_per_message;
        match m.get("content") {
            Some(Value::String(s)) => {
                text += tokens::count_memo(s);
                all_text.push_str(s);
                all_text.push('\n');
            }
            Some(Value::Array(parts)) => {
                for (j, part) in parts.iter().enumerate() {
                    let pat = format!("{at}.content[{j}]");
                    let part = part
                        .as_object()
                        .ok_or_else(|| invalid_type(&pat, "an object"))?;
                    let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
                    match ty {
                        "text" => {
                            let s = part
                                .get("text")
                                .and_then(Value::as_str)
                                .ok_or_else(|| ApiError::missing(&format!("{pat}.text")))?;
                            text += tokens::count_memo(s);
                            all_text.push_str(s);
                            all_text.push('\n');
                        }
                        "image_url" => {
                            if role != "user" {
                                return Err(ApiError::invalid(format!(
                                    "Invalid '{pat}': Image URLs are only allowed for messages with role 'user', but this message with role '{role}' contains an image URL."
                                ))
                                .param(pat)
                                .code("invalid_value"));
                            }
                            images += image_part_tokens(part.get("image_url"), &pat, model, cfg)?;
                        }
                        t if PART_TYPES.contains(&t) => {}
                        t => {
                            return Err(ApiError::invalid_value(
                                &format!("{pat}.type"),
                                t,
                                PART_TYPES,
                            ))
                        }
                    }
                }
            }
            None | Some(Value::Null) if role == "assistant" => {}
            None | Some(Value::Null) => return Err(ApiError::missing(&format!("{at}.content"))),
            Some(_) => {
                return Err(invalid_type(
                    &format!("{at}.content"),
                    "a string or an array of objects",
                ))
            }
        }
    }
    Ok((text, images, all_text))
}

fn image_part_tokens(
    image_url: Option<&Value>,
    pat: &str,
    model: &str,
    cfg: &SimConfig,
) -> Result<u64, ApiError> {
    let url = image_url
        .and_then(|u| u.get("url"))
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing(&format!("{pat}.image_url.url")))?;
    let detail_raw = image_url
        .and_then(|u| u.get("detail"))
        .and_then(Value::as_str);
    let detail = Detail::parse(detail_raw).ok_or_else(|| {
        ApiError::invalid_value(
            &format!("{pat}.image_url.detail"),
            detail_raw.unwrap_or(""),
            &["auto", "low", "high"],
        )
    })?;
    let (w, h) = match vision::data_url_dimensions(url) {
        Ok(dims) => dims,
        Err(ImageUrlError::NotDataUrl)
            if url.starts_with("https://") || url.starts_with("http://") =>
        {
            (cfg.default_image_size.width, cfg.default_image_size.height)
        }
        Err(ImageUrlError::NotDataUrl) | Err(ImageUrlError::BadDataUrl) => {
            return Err(ApiError::invalid(format!(
                "Invalid '{pat}.image_url.url'. Expected a base64-encoded data URL with an image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an invalid value."
            ))
            .param(format!("{pat}.image_url.url"))
            .code("invalid_image_url"));
        }
        Err(ImageUrlError::UnreadableImage) => {
            return Err(ApiError::invalid(
                "You uploaded an unsupported image. Please make sure your image has of one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
            )
            .code("invalid_image_format"));
        }
    };
    let tokens = vision::image_tokens(model, w, h, detail);
    if cfg.image_token_factor == 1.0 {
        return Ok(tokens);
    }
    Ok((tokens as f64 * cfg.image_token_factor.max(0.0) - 1e-9)
        .ceil()
        .max(0.0) as u64)
}

fn reply_format(rf: Option<&Value>) -> Result<ReplyFormat, ApiError> {
    let rf = match rf {
        None | Some(Value::Null) => return Ok(ReplyFormat::Text),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(invalid_type("response_format", "an object")),
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(ReplyFormat::Text),
        Some("json_object") => Ok(ReplyFormat::JsonObject),
        Some("json_schema") => {
            let js = rf
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| ApiError::missing("response_format.json_schema"))?;
            let name = js
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::missing("response_format.json_schema.name"))?;
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !name_ok {
                return Err(ApiError::invalid(format!(
                    "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$' of at most 64 characters, but got '{name}' instead."
                ))
                .param("response_format.json_schema.name")
                .code("invalid_value"));
            }
            match js.get("schema") {
                None | Some(Value::Null) => Ok(ReplyFormat::JsonSchema(Value::Bool(true))),
                Some(s @ Value::Object(_)) => Ok(ReplyFormat::JsonSchema(s.clone())),
                Some(_) => Err(invalid_type(
                    "response_format.json_schema.schema",
                    "an object",
                )),
            }
        }
        Some(other) => Err(ApiError::invalid_value(
            "response_format.type",
            other,
            &["text", "json_object", "json_schema"],
        )),
        None => Err(ApiError::missing("response_format.type")),
    }
}

/// The reply text for one choice, before any truncation.
pub fn reply_content<R: Rng>(format: &ReplyFormat, rng: &mut R) -> String {
    match format {
        ReplyFormat::JsonSchema(Value::Bool(true)) | ReplyFormat::JsonObject => {
            json!({"result": schema_gen::words(rng, 2, 6)}).to_string()
        }
        ReplyFormat::JsonSchema(schema) => schema_gen::generate(schema, rng).to_string(),
        ReplyFormat::Text => {
            let mut s = schema_gen::words(rng, 6, 14);
            if let Some(first) = s.get_mut(0..1) {
                first.make_ascii_uppercase();
            }
            s.push('.');
            s
        }
    }
}

/// The full `chat.completion` object and its usage.
pub fn complete<R: Rng>(
    p: &Prepared,
    cfg: &SimConfig,
    rng: &mut R,
    created: u64,
) -> (Value, Usage) {
    let reasoning_per_choice = if p.reasoning { cfg.reasoning_tokens } else { 0 };
    let mut usage = Usage {
        prompt_tokens: p.prompt_tokens(),
        image_tokens: p.image_tokens,
        cached_tokens: (p.prompt_tokens() as f64 * cfg.cached_tokens_fraction.clamp(0.0, 1.0))
            .floor() as u64,
        ..Usage::default()
    };
    let mut choices = Vec::with_capacity(p.n as usize);
    for index in 0..p.n {
        let mut content = reply_content(&p.format, rng);
        let mut content_tokens = tokens::count(&content);
        let mut reasoning = reasoning_per_choice;
        let mut finish = "stop";
        if let (true, Some(max)) = (cfg.truncate_at_max_tokens, p.max_completion_tokens) {
            if reasoning >= max {
                // Reasoning used the whole budget: OpenAI answers with empty content.
                reasoning = max;
                content.clear();
                content_tokens = 0;
                finish = "length";
            } else if content_tokens > max - reasoning {
                content = tokens::truncate(&content, max - reasoning);
                content_tokens = tokens::count(&content);
                finish = "length";
            }
        }
        usage.completion_tokens += content_tokens + reasoning;
        usage.reasoning_tokens += reasoning;
        choices.push(json!({
            "index": index,
            "message": {
                "role": "assistant",
                "content": content,
                "refusal": null,
                "annotations": [],
            },
            "logprobs": null,
            "finish_reason": finish,
        }));
    }
    let body = json!({
        "id": crate::ids::chat_id(),
        "object": "chat.completion",
        "created": created,
        "model": models::snapshot(&p.model),
        "choices": choices,
        "usage": usage.to_json(),
        "service_tier": if p.flex { "flex" } else { "default" },
        "system_fingerprint": "fp_5im0pen4i1",
    });
    (body, usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn cfg() -> SimConfig {
        SimConfig::default()
    }

    #[test]
    fn counts_text_per_message_and_reply() {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "hello world"},
            {"role": "user", "content": [{"type": "text", "text": "hello world"}]}
        ]});
        let p = prepare(&body, &cfg()).unwrap();
        assert_eq!(p.text_tokens, 2 + 2 + 3 * 2 + 3);
        assert_eq!(p.image_tokens, 0);
    }

    #[test]
    fn schema_tokens_are_counted() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}});
        let p = prepare(&body, &cfg()).unwrap();
        let expected =
            tokens::count("x") + 3 + 3 + tokens::count(&serde_json::to_string(&schema).unwrap());
        assert_eq!(p.text_tokens, expected);
    }

    #[test]
    fn https_images_use_default_size() {
        let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg", "detail": "high"}}
        ]}]});
        assert_eq!(prepare(&body, &cfg()).unwrap().image_tokens, 765);
    }

    #[test]
    fn max_tokens_rejected_for_reasoning_models() {
        let body = json!({"model": "gpt-5-mini", "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}]});
        let e = prepare(&body, &cfg()).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        assert_eq!(e.code.as_deref(), Some("unsupported_parameter"));
        let ok = json!({"model": "gpt-4o", "max_tokens": 10,
            "messages": [{"role": "user", "content": "x"}]});
        assert!(prepare(&ok, &cfg()).is_ok());
    }

    #[test]
    fn reasoning_eats_the_budget() {
        let c = SimConfig {
            reasoning_tokens: 50,
            ..cfg()
        };
        let body = json!({"model": "gpt-5", "max_completion_tokens": 20,
            "messages": [{"role": "user", "content": "x"}]});
        let p = prepare(&body, &c).unwrap();
        let (v, u) = complete(&p, &c, &mut StdRng::seed_from_u64(0), 0);
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(u.completion_tokens, 20);
        assert_eq!(u.reasoning_tokens, 20);
    }
}
