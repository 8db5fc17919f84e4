//! The batch input file: one Chat Completions request per item, written line by line to
//! `<data_dir>/batches/<job>/<shard>.jsonl` while items are read in pages, so memory stays
//! flat however large the file.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufWriter};
use uuid::Uuid;

use crate::analyzer::{chat_request_body, RequestOptions};
use crate::domain::{Analyzer, Detail, Item, Job, Shard};
use crate::pipeline::WorkerContext;
use crate::store::DynStore;

pub const ENDPOINT: &str = "/v1/chat/completions";

/// Items read from the store per page while writing.
const PAGE: i64 = 200;

#[derive(Serialize)]
struct Line<'a> {
    custom_id: &'a str,
    method: &'static str,
    url: &'static str,
    body: serde_json::Value,
}

/// What every line of one job shares.
pub struct LineTemplate<'a> {
    pub analyzer: &'a Analyzer,
    pub model: &'a str,
    pub detail: Detail,
    pub max_completion_tokens: u32,
}

impl LineTemplate<'_> {
    /// Appends one JSONL line (with its newline) for `item` to `buf`.
    pub fn write_line(&self, buf: &mut Vec<u8>, custom_id: &str, image: &str) {
        let opts = RequestOptions {
            model: self.model,
            detail: self.detail,
            max_completion_tokens: self.max_completion_tokens,
        };
        let line = Line {
            custom_id,
            method: "POST",
            url: ENDPOINT,
            body: chat_request_body(self.analyzer, image, &opts),
        };
        serde_json::to_writer(&mut *buf, &line).expect("a JSON value always serializes");
        buf.push(b'\n');
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
    loop {
        let page: Vec<Item> = store
            .shard_items(shard.id, after, PAGE)
            .await
            .map_err(std::io::Error::other)?;
        let Some(last) = page.last() else { break };
        after = Some(last.position);
        buf.clear();
        for item in &page {
            template.write_line(&mut buf, &item.custom_id, &item.image);
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
}
