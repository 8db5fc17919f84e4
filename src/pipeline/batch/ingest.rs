//! Ingestion: downloads a finished batch's output and error files (streamed to disk),
//! matches every line to its item by `custom_id`, validates the model's JSON against the
//! analyzer's schema, prices the usage, and writes results in bulk. Every failure is judged
//! by `retry::classify`: a retryable one (a 5xx or 429 line, a line the batch expired or
//! cancelled before running) goes back to pending for a new shard while attempts remain;
//! items in neither file count as `not_executed`, also retryable. For a cancelling job
//! the store turns those into `cancelled`. Running it twice changes nothing: only items
//! still `submitted` are written. A file is downloaded to a temporary name and renamed
//! when complete, so a crash mid-download leaves nothing that is mistaken for the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::jsonl;
use crate::analyzer::OutputValidator;
use crate::cost::pricing::PriceTable;
use crate::domain::{ItemError, ItemOutcome, ItemStatus, Mode};
use crate::pipeline::outcomes::{api_error, apply_completion, unfinished};
use crate::pipeline::retry::{self, NOT_EXECUTED};
use crate::pipeline::{StepError, WorkerContext};
use crate::providers::{Batch, BatchOutputLine, ChatCompletion};
use crate::store::{LeasedShard, Leftover, Settled, Verdict};

/// Outcomes written per statement (and per progress event). A few chunks at most are in
/// memory at once: one being judged, up to two waiting, one being written.
pub const CHUNK: usize = 5000;

/// What one ingestion changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IngestReport {
    pub succeeded: u64,
    pub failed: u64,
    /// Items in neither file (settled like other retryable failures).
    pub not_executed: u64,
    /// Sent back to pending for another attempt.
    pub requeued: u64,
    pub cancelled: u64,
}

impl IngestReport {
    fn add(&mut self, s: Settled) {
        self.succeeded += s.succeeded;
        self.failed += s.failed;
        self.requeued += s.requeued;
        self.cancelled += s.cancelled;
    }
}

pub async fn ingest(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    batch: &Batch,
) -> Result<IngestReport, StepError> {
    let job = ctx.job(shard.job_id).await?;
    let validator =
        Arc::new(OutputValidator::new(&job.analyzer.schema).map_err(StepError::Invalid)?);
    let dir = jsonl::shard_dir(&ctx.settings.data_dir, shard.job_id);
    let mut report = IngestReport::default();
    let files = [
        (batch.output_file_id.as_deref(), "output"),
        (batch.error_file_id.as_deref(), "errors"),
    ];
    for (file_id, kind) in files {
        let Some(file_id) = file_id else { continue };
        let path = dir.join(format!("{}.{kind}.jsonl", shard.id));
        download(ctx, file_id, &path, shard.lease_token).await?;
        let settled = ingest_file(ctx, shard, &path, &job.model, &validator).await?;
        report.add(settled);
    }
    let missing = ItemError {
        code: NOT_EXECUTED.into(),
        message: "OpenAI returned no result for this request".into(),
    };
    let leftover = if retry::retryable(NOT_EXECUTED, None) {
        Leftover::Retry {
            max_attempts: ctx.max_attempts(),
        }
    } else {
        Leftover::Fail
    };
    let settled = ctx
        .store
        .settle_shard_items(&shard.lease, &missing, leftover)
        .await?;
    report.not_executed = settled.total();
    report.add(settled);
    if ctx.settings.batch.delete_remote_files {
        let ids = [
            shard.input_file_id.as_deref(),
            batch.output_file_id.as_deref(),
            batch.error_file_id.as_deref(),
        ];
        for id in ids.into_iter().flatten() {
            if let Err(err) = ctx.provider.delete_file(id).await {
                tracing::warn!(shard = %shard.id, file = id, error = %err, "could not delete the file at OpenAI");
            }
        }
    }
    Ok(report)
}

/// Downloads unless a complete copy is already on disk (a re-run after a crash). The
/// client writes to a temporary name and renames when complete; that name is this lease's
/// own, so two workers (one whose lease ran out) never write into one file, and only a
/// complete download is ever renamed to `path`.
async fn download(
    ctx: &WorkerContext,
    file_id: &str,
    path: &Path,
    token: i64,
) -> Result<(), StepError> {
    if tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        crate::files::create_dir_all_async(parent).await?;
    }
    let mut part = path.as_os_str().to_owned();
    part.push(format!(".{token}.part"));
    let part = PathBuf::from(part);
    let bytes = ctx.provider.download_file(file_id, &part).await?;
    tokio::fs::rename(&part, path).await?;
    tracing::debug!(file = file_id, bytes, path = %path.display(), "batch file downloaded");
    Ok(())
}

/// Reads, parses, validates and prices the file on a blocking thread while this task
/// writes the chunks it hands over, so the CPU work and the database writes overlap.
/// At most two chunks wait between them, which bounds memory whatever the file's size.
async fn ingest_file(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    path: &Path,
    job_model: &str,
    validator: &Arc<OutputValidator>,
) -> Result<Settled, StepError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Verdict>>(2);
    let judge = {
        let file = std::fs::File::open(path)?;
        let prices = ctx.prices.clone();
        let job_model = job_model.to_string();
        let validator = validator.clone();
        let shard_id = shard.id;
        tokio::task::spawn_blocking(move || {
            let reader = std::io::BufReader::with_capacity(1 << 20, file);
            judge_lines(
                reader,
                shard_id,
                CHUNK,
                |line| verdict_of(&prices, line, &job_model, &validator),
                |chunk| tx.blocking_send(chunk).is_ok(),
            )
        })
    };
    let mut report = Settled::default();
    while let Some(chunk) = rx.recv().await {
        report += write(ctx, shard, &chunk).await?;
    }
    judge.await??;
    Ok(report)
}

/// Judges every line of `reader` and hands the verdicts to `send` `chunk_size` at a time;
/// stops early when `send` says the receiver is gone. Unreadable lines are logged and
/// skipped: their items end as `not_executed` with the rest of the leftovers.
fn judge_lines(
    reader: impl std::io::BufRead,
    shard_id: uuid::Uuid,
    chunk_size: usize,
    mut judge: impl FnMut(BatchOutputLine) -> Verdict,
    mut send: impl FnMut(Vec<Verdict>) -> bool,
) -> std::io::Result<()> {
    let mut chunk = Vec::with_capacity(chunk_size);
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<BatchOutputLine>(&line) {
            Ok(parsed) => chunk.push(judge(parsed)),
            Err(err) => {
                tracing::warn!(shard = %shard_id, line = index + 1, error = %err, "unreadable line in a batch file");
                continue;
            }
        }
        if chunk.len() == chunk_size {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(chunk_size));
            if !send(full) {
                return Ok(());
            }
        }
    }
    if !chunk.is_empty() {
        send(chunk);
    }
    Ok(())
}

async fn write(
    ctx: &WorkerContext,
    shard: &LeasedShard,
    chunk: &[Verdict],
) -> Result<Settled, StepError> {
    if chunk.is_empty() {
        return Ok(Settled::default());
    }
    Ok(ctx
        .store
        .settle_shard_outcomes(&shard.lease, chunk, ctx.max_attempts())
        .await?)
}

/// One line judged: its outcome, and whether a failure is worth another attempt (by its
/// error code and the HTTP status of the line's response, when it has one).
pub fn verdict_of(
    prices: &PriceTable,
    line: BatchOutputLine,
    job_model: &str,
    validator: &OutputValidator,
) -> Verdict {
    let http_status = line.response.as_ref().map(|r| r.status_code);
    let outcome = outcome_of(prices, line, job_model, validator);
    let retry = outcome.status == ItemStatus::Failed
        && outcome
            .error
            .as_ref()
            .is_some_and(|e| retry::retryable(&e.code, http_status));
    Verdict { outcome, retry }
}

/// One line of an output or error file as the result of its item.
pub fn outcome_of(
    prices: &PriceTable,
    line: BatchOutputLine,
    job_model: &str,
    validator: &OutputValidator,
) -> ItemOutcome {
    let mut outcome = unfinished(line.custom_id, Mode::Batch);
    let Some(response) = line.response else {
        let error = line.error.unwrap_or_default();
        outcome.error = Some(ItemError {
            code: error.code.unwrap_or_else(|| "batch_line_failed".into()),
            message: error
                .message
                .unwrap_or_else(|| "OpenAI could not run this request".into()),
        });
        return outcome;
    };
    if response.status_code != 200 {
        outcome.error = Some(api_error(response.status_code, &response.body));
        return outcome;
    }
    let completion: ChatCompletion = match serde_json::from_value(response.body) {
        Ok(c) => c,
        Err(err) => {
            outcome.error = Some(ItemError {
                code: "invalid_response".into(),
                message: format!("OpenAI's answer could not be read: {err}"),
            });
            return outcome;
        }
    };
    apply_completion(prices, &mut outcome, &completion, job_model, validator);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyzer::fashion;

    fn validator() -> OutputValidator {
        OutputValidator::new(&fashion().schema).unwrap()
    }

    fn sample_output() -> serde_json::Value {
        let schema = fashion().schema;
        let mut out = serde_json::Map::new();
        for (name, prop) in schema["properties"].as_object().unwrap() {
            let value = if let Some(choices) = prop["enum"].as_array() {
                choices[0].clone()
            } else if prop["type"] == "array" {
                serde_json::json!(["black"])
            } else {
                serde_json::json!("text")
            };
            out.insert(name.clone(), value);
        }
        serde_json::Value::Object(out)
    }

    fn success_json(custom_id: &str, content: &str) -> serde_json::Value {
        serde_json::json!({
            "id": "batch_req_1", "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": "req_1", "body": {
                "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": null}, "finish_reason": "stop", "logprobs": null}],
                "usage": {"prompt_tokens": 2900, "completion_tokens": 61, "total_tokens": 2961,
                          "prompt_tokens_details": {"cached_tokens": 0}}}},
            "error": null})
    }

    fn success_line(custom_id: &str, content: &str) -> BatchOutputLine {
        serde_json::from_value(success_json(custom_id, content)).unwrap()
    }

    /// A JSONL file of `n` successful lines `c0`, `c1`, …
    fn success_file(n: usize) -> String {
        let answer = sample_output().to_string();
        (0..n)
            .map(|i| format!("{}\n", success_json(&format!("c{i}"), &answer)))
            .collect()
    }

    #[test]
    fn a_valid_answer_succeeds_with_usage_and_batch_cost() {
        let prices = PriceTable::defaults();
        let line = success_line("p1-0", &sample_output().to_string());
        let o = outcome_of(&prices, line, "gpt-4o-mini", &validator());
        assert_eq!(o.status, ItemStatus::Succeeded, "{:?}", o.error);
        assert_eq!(o.custom_id, "p1-0");
        assert_eq!(o.resolved_model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        assert_eq!(o.usage.unwrap().input_tokens, 2900);
        // 2900 × 0.075 + 61 × 0.30 USD per 1M, in pico-dollars.
        assert_eq!(o.cost_pico_usd, Some(2900 * 75_000 + 61 * 300_000));
        assert_eq!(
            o.individual_pico_usd,
            Some(2 * (2900 * 75_000 + 61 * 300_000))
        );
    }

    #[test]
    fn an_answer_that_breaks_the_schema_is_invalid_output_but_still_costs() {
        let prices = PriceTable::defaults();
        let line = success_line("p1-1", r#"{"category": "dress"}"#);
        let o = outcome_of(&prices, line, "gpt-4o-mini", &validator());
        assert_eq!(o.status, ItemStatus::Failed);
        assert_eq!(o.error.unwrap().code, "invalid_output");
        assert!(o.cost_pico_usd.is_some());
    }

    #[test]
    fn lines_are_judged_in_chunks_skipping_blank_and_unreadable_ones() {
        let prices = PriceTable::defaults();
        let validator = validator();
        let mut text = success_file(7);
        text.insert_str(
            text.match_indices('\n').nth(3).unwrap().0 + 1,
            "\n{not json\n",
        );
        let mut sent: Vec<Vec<String>> = Vec::new();
        judge_lines(
            text.as_bytes(),
            uuid::Uuid::nil(),
            3,
            |line| verdict_of(&prices, line, "gpt-4o-mini", &validator),
            |chunk| {
                assert!(chunk
                    .iter()
                    .all(|v| v.outcome.status == ItemStatus::Succeeded));
                sent.push(chunk.into_iter().map(|v| v.outcome.custom_id).collect());
                true
            },
        )
        .unwrap();
        assert_eq!(
            sent,
            vec![vec!["c0", "c1", "c2"], vec!["c3", "c4", "c5"], vec!["c6"]]
        );
    }

    #[test]
    fn judging_stops_when_the_writer_is_gone() {
        let prices = PriceTable::defaults();
        let validator = validator();
        let (mut judged, mut calls) = (0, 0);
        judge_lines(
            success_file(10).as_bytes(),
            uuid::Uuid::nil(),
            2,
            |line| {
                judged += 1;
                verdict_of(&prices, line, "gpt-4o-mini", &validator)
            },
            |_| {
                calls += 1;
                false
            },
        )
        .unwrap();
        assert_eq!((judged, calls), (2, 1));
    }

    #[test]
    fn error_lines_keep_openai_codes() {
        let prices = PriceTable::defaults();
        let expired: BatchOutputLine = serde_json::from_value(serde_json::json!({
            "id": "batch_req_2", "custom_id": "a", "response": null,
            "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}))
        .unwrap();
        let o = outcome_of(&prices, expired, "gpt-4o-mini", &validator());
        assert_eq!(o.status, ItemStatus::Failed);
        assert_eq!(o.error.unwrap().code, "batch_expired");

        let rejected: BatchOutputLine = serde_json::from_value(serde_json::json!({
            "id": "batch_req_3", "custom_id": "b",
            "response": {"status_code": 400, "request_id": "req_3",
                "body": {"error": {"message": "Invalid image.", "type": "invalid_request_error", "param": null, "code": "invalid_image"}}},
            "error": null}))
        .unwrap();
        let o = outcome_of(&prices, rejected, "gpt-4o-mini", &validator());
        assert_eq!(
            o.error,
            Some(ItemError {
                code: "invalid_image".into(),
                message: "Invalid image.".into()
            })
        );
    }
}
