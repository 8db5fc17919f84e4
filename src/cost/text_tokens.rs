//! Counting the input tokens of text and of a whole Chat Completions request (o200k_base), the
//! way our simulator charges them and OpenAI approximately does.

use std::str::FromStr;
use std::sync::OnceLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;

use super::image_tokens::image_tokens;
use crate::domain::Detail;

/// Tokens each message costs beyond its content, and the reply's priming.
const PER_MESSAGE: u32 = 3;
const REPLY_PRIMING: u32 = 3;

/// Size assumed for an image whose dimensions are unknown.
const DEFAULT_IMAGE_SIDE: u32 = 1024;

fn o200k() -> &'static CoreBPE {
    // Building the encoder parses ~200k ranks: do it once per process.
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().expect("tiktoken-rs ships o200k_base"))
}

/// Tokens of `text` in o200k_base. Special-token markers in the text count as plain text.
pub fn count_text(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    u32::try_from(o200k().encode_ordinary(text).len()).unwrap_or(u32::MAX)
}

/// Input tokens of a Chat Completions request body: per message 3 plus its string content or
/// its text parts, plus each `image_url` part by the model's vision formula (dimensions from
/// `image_dims`, 1024×1024 when it does not know; `detail` defaults to auto); plus 3 for the
/// reply; plus the `response_format.json_schema.schema` serialized as compact JSON.
pub fn chat_request_input_tokens(
    body: &Value,
    image_dims: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> u32 {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    let mut total = REPLY_PRIMING;
    let messages = body.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        total = total.saturating_add(PER_MESSAGE);
        let tokens = match message.get("content") {
            Some(Value::String(text)) => count_text(text),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(|part| part_tokens(model, part, image_dims))
                .fold(0u32, u32::saturating_add),
            _ => 0,
        };
        total = total.saturating_add(tokens);
    }
    let schema = body.pointer("/response_format/json_schema/schema");
    if let Some(schema) = schema {
        let text = serde_json::to_string(schema).unwrap_or_default();
        total = total.saturating_add(count_text(&text));
    }
    total
}

fn part_tokens(model: &str, part: &Value, image_dims: &dyn Fn(&str) -> Option<(u32, u32)>) -> u32 {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => part
            .get("text")
            .and_then(Value::as_str)
            .map_or(0, count_text),
        Some("image_url") => {
            let image = part.get("image_url");
            let url = image
                .and_then(|i| i.get("url"))
                .and_then(Value::as_str)
                .unwrap_or("");
            let detail = image
                .and_then(|i| i.get("detail"))
                .and_then(Value::as_str)
                .and_then(|d| Detail::from_str(d).ok())
                .unwrap_or(Detail::Auto);
            let (w, h) = image_dims(url).unwrap_or((DEFAULT_IMAGE_SIDE, DEFAULT_IMAGE_SIDE));
            image_tokens(model, w, h, detail)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_dims(_: &str) -> Option<(u32, u32)> {
        None
    }

    #[test]
    fn text_counting_sanity() {
        assert_eq!(count_text(""), 0);
        assert_eq!(count_text("hello world"), 2);
        assert_eq!(count_text("hello"), 1);
        // Special-token markers are plain text, not a panic or a single token.
        assert!(count_text("<|endoftext|>") > 1);
        let long = " word".repeat(1000);
        assert_eq!(count_text(&long), 1000);
    }

    #[test]
    fn string_content_and_reply_priming() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "hello world"},
                {"role": "user", "content": "hello"}
            ]
        });
        assert_eq!(
            chat_request_input_tokens(&body, &no_dims),
            3 + 2 + 3 + 1 + 3
        );
        let empty = json!({"model": "gpt-4o", "messages": []});
        assert_eq!(chat_request_input_tokens(&empty, &no_dims), 3);
    }

    #[test]
    fn image_parts_use_the_model_formula_dims_and_detail() {
        let body = |model: &str, detail: Option<&str>| {
            let mut image = json!({"url": "https://example.com/a.png"});
            if let Some(d) = detail {
                image["detail"] = json!(d);
            }
            json!({
                "model": model,
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "hello world"},
                    {"type": "image_url", "image_url": image}
                ]}]
            })
        };
        let dims = |url: &str| (url == "https://example.com/a.png").then_some((2048, 4096));
        // 3 (message) + 2 (text) + image + 3 (reply)
        assert_eq!(
            chat_request_input_tokens(&body("gpt-4o", None), &dims),
            3 + 2 + 1105 + 3
        );
        assert_eq!(
            chat_request_input_tokens(&body("gpt-4o", Some("low")), &dims),
            3 + 2 + 85 + 3
        );
        assert_eq!(
            chat_request_input_tokens(&body("gpt-4o-mini-2024-07-18", Some("high")), &no_dims),
            3 + 2 + 2833 + 4 * 5667 + 3
        );
        assert_eq!(
            chat_request_input_tokens(&body("gpt-4.1-mini", Some("low")), &no_dims),
            3 + 2 + 1659 + 3
        );
    }

    #[test]
    fn response_schema_is_counted_as_compact_json() {
        let schema = json!({"type": "object", "properties": {"label": {"type": "string"}}});
        let body = json!({
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hello"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}
        });
        let schema_tokens = count_text(&serde_json::to_string(&schema).unwrap());
        assert!(schema_tokens > 5);
        assert_eq!(
            chat_request_input_tokens(&body, &no_dims),
            3 + 1 + 3 + schema_tokens
        );
    }
}
