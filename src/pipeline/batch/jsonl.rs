//! The batch input file: one Chat Completions request per item, written line by line to
//! `<data_dir>/batches/<job>/<shard>.jsonl` while items are read in pages, so memory stays
//! flat however large the file.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncWriteExt, BufWriter};
use uuid::Uuid;

use crate::analyzer::{chat_request_body, RequestOptions};
use crate::domain::{Analyzer, Detail, Item, Job, Shard};
use crate::pipeline::WorkerContext;
use crate::store::DynStore;

pub const ENDPOINT: &str = "/v1/chat/completions";

/// Items read from the store per page while writing.
const PAGE: i64 = 200;

/// What every line of one job shares.
pub struct LineTemplate<'a> {
    pub analyzer: &'a Analyzer,
    pub model: &'a str,
    pub detail: Detail,
    pub max_completion_tokens: u32,
}

impl LineTemplate<'_> {
    /// Appends one JSONL line (with its newline) for `item` to `buf`. Compiles the
    /// template each call: a file of many lines uses [`LineTemplate::compile`] once.
    pub fn write_line(&self, buf: &mut Vec<u8>, custom_id: &str, image: &str) {
        self.compile().write_line(buf, custom_id, image);
    }

    /// The line's fixed JSON, serialized once: what comes before the image reference and
    /// what comes after it. Every line is then `{"custom_id":…` + the prefix + the image +
    /// the suffix, written without building a `serde_json::Value` per line (which copied
    /// each 80 KB data URL into the value and escaped it byte by byte: most of the time
    /// the writer took, see the README's Benchmarks).
    pub fn compile(&self) -> CompiledLine {
        let opts = RequestOptions {
            model: self.model,
            detail: self.detail,
            max_completion_tokens: self.max_completion_tokens,
        };
        // A placeholder image that cannot occur in the prompt or schema, found by trying.
        let (body, marker) = (0u32..)
            .map(|n| {
                let marker = format!("\u{1}batchlens-image-{n}\u{1}");
                let body = chat_request_body(self.analyzer, &marker, &opts);
                let body = serde_json::to_string(&body).expect("a JSON value always serializes");
                (
                    body,
                    serde_json::to_string(&marker).expect("a string serializes"),
                )
            })
            .find(|(body, marker)| body.matches(marker.as_str()).count() == 1)
            .expect("some placeholder is unused");
        let at = body.find(&marker).expect("the placeholder is in the body");
        CompiledLine {
            prefix: format!(
                ",\"method\":\"POST\",\"url\":{},\"body\":{}",
                serde_json::to_string(ENDPOINT).expect("a string serializes"),
                &body[..at]
            ),
            suffix: format!("{}}}\n", &body[at + marker.len()..]),
        }
    }
}

/// A [`LineTemplate`] serialized around the two things that differ per line.
pub struct CompiledLine {
    /// From after the custom_id to before the image's opening quote.
    prefix: String,
    /// From after the image's closing quote to the newline, included.
    suffix: String,
}

impl CompiledLine {
    /// Appends one JSONL line (with its newline) to `buf`.
    pub fn write_line(&self, buf: &mut Vec<u8>, custom_id: &str, image: &str) {
        buf.reserve(custom_id.len() + image.len() + self.prefix.len() + self.suffix.len() + 16);
        buf.extend_from_slice(b"{\"custom_id\":");
        push_json_string(buf, custom_id);
        buf.extend_from_slice(self.prefix.as_bytes());
        push_json_string(buf, image);
        buf.extend_from_slice(self.suffix.as_bytes());
    }
}

/// Appends `s` as a JSON string. A data URL or an http(s) URL needs no escaping, which a
/// whole-slice check finds far faster than escaping byte by byte; anything else goes
/// through serde_json's escaper.
fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        serde_json::to_writer(&mut *buf, s).expect("a string always serializes");
    }
}

pub fn template<'a>(ctx: &WorkerContext, job: &'a Job) -> LineTemplate<'a> {
    LineTemplate {
        analyzer: &job.analyzer,
        model: &job.model,
        detail: job.detail,
        max_completion_tokens: ctx.settings.openai.max_completion_tokens,
    }
}

/// Bytes of a line apart from its image reference (custom_id budgeted at 64).
pub fn line_overhead(ctx: &WorkerContext, job: &Job) -> u64 {
    let mut buf = Vec::new();
    template(ctx, job).write_line(&mut buf, &"x".repeat(64), "");
    buf.len() as u64
}

pub fn shard_dir(data_dir: &Path, job_id: Uuid) -> PathBuf {
    data_dir.join("batches").join(job_id.to_string())
}

/// Writes the shard's input file and returns its path and size. Written to a temporary
/// name of this lease's own and renamed, so a file under the final name is always
/// complete, even if another worker writes the same shard after taking its lease over.
pub async fn write_shard_file(
    store: &DynStore,
    data_dir: &Path,
    shard: &Shard,
    template: &LineTemplate<'_>,
) -> std::io::Result<(PathBuf, u64)> {
    let dir = shard_dir(data_dir, shard.job_id);
    crate::files::create_dir_all_async(&dir).await?;
    let path = dir.join(format!("{}.jsonl", shard.id));
    let tmp = dir.join(format!("{}.jsonl.{}.tmp", shard.id, shard.lease_token));
    let mut out = BufWriter::with_capacity(1 << 20, crate::files::create_file(&tmp).await?);
    let mut after = None;
    let mut bytes = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let line = template.compile();
    loop {
        let page: Vec<Item> = store
            .shard_items(shard.id, after, PAGE)
            .await
            .map_err(std::io::Error::other)?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        buf.clear();
        for item in &page {
            line.write_line(&mut buf, &item.custom_id, &item.image);
        }
        out.write_all(&buf).await?;
        bytes += buf.len() as u64;
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    out.flush().await?;
    out.into_inner().sync_all().await?;
    tokio::fs::rename(&tmp, &path).await?;
    Ok((path, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_post_to_chat_completions_with_the_prompt_first() {
        let analyzer = crate::analyzer::fashion();
        let t = LineTemplate {
            analyzer: &analyzer,
            model: "gpt-4o-mini",
            detail: Detail::Low,
            max_completion_tokens: 500,
        };
        let mut buf = Vec::new();
        t.write_line(&mut buf, "p1-0", "https://cdn.example.com/a.jpg");
        assert_eq!(buf.last(), Some(&b'\n'));
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let line: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(line["custom_id"], "p1-0");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["url"], "/v1/chat/completions");
        assert_eq!(line["body"]["model"], "gpt-4o-mini");
        assert_eq!(line["body"]["max_completion_tokens"], 500);
        assert!(line["body"].get("max_tokens").is_none());
        let parts = line["body"]["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(
            parts[1]["image_url"]["url"],
            "https://cdn.example.com/a.jpg"
        );
        assert_eq!(parts[1]["image_url"]["detail"], "low");
    }

    /// The line as serde_json writes it from a `Value`: what the fast writer must equal.
    fn reference_line(t: &LineTemplate<'_>, custom_id: &str, image: &str) -> serde_json::Value {
        let opts = RequestOptions {
            model: t.model,
            detail: t.detail,
            max_completion_tokens: t.max_completion_tokens,
        };
        serde_json::json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": chat_request_body(t.analyzer, image, &opts),
        })
    }

    #[test]
    fn the_fast_writer_writes_what_serde_json_would_for_tricky_text() {
        let tricky = "say \"hi\"\n\tback\\slash \u{1}\u{1f}\u{7f} caf\u{e9} \u{1f600} \u{2028}\r";
        let analyzer = Analyzer {
            prompt: format!("{tricky} {{\"json\": [1]}} \\u{{1}}batchlens-image-0\\u{{1}}"),
            schema: serde_json::json!({
                "type": "object",
                "properties": {tricky: {"type": "string", "description": "\u{1}batchlens-image-0\u{1}"}},
            }),
        };
        let t = LineTemplate {
            analyzer: &analyzer,
            model: "gpt-4o-\"mini\"",
            detail: Detail::High,
            max_completion_tokens: 7,
        };
        let compiled = t.compile();
        let cases = [
            ("p1-0", "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ+/=="),
            (
                "p\"1\n-\u{1}",
                "https://cdn.example.com/a b\\\"c\".jpg?x=\u{e9}",
            ),
            (tricky, tricky),
            ("", ""),
        ];
        let mut buf = Vec::new();
        for (custom_id, image) in cases {
            compiled.write_line(&mut buf, custom_id, image);
        }
        let lines: Vec<&[u8]> = buf
            .strip_suffix(b"\n")
            .unwrap()
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(
            lines.len(),
            cases.len(),
            "one line per item, no raw newline inside"
        );
        for ((custom_id, image), line) in cases.iter().zip(lines) {
            let got: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(got, reference_line(&t, custom_id, image));
        }
        let mut one = Vec::new();
        t.write_line(&mut one, "p1-0", cases[0].1);
        assert!(buf.starts_with(&one));
    }
}
