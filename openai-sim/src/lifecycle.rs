//! The Batches API over the store and the lazy clock that moves batches through
//! validating → in_progress → finalizing → completed (or failed, expired, cancelled).

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::batch::{self, Batch, BatchError, Stamps, Status, Timing};
use crate::config::WebhookTiming;
use crate::error::ApiError;
use crate::files::{self, BATCH_FILE_TTL_S};
use crate::ids;
use crate::state::{PendingWebhook, State};

const METADATA_MAX_PAIRS: usize = 16;
const METADATA_MAX_KEY: usize = 64;
const METADATA_MAX_VALUE: usize = 512;

fn no_such_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("No batch found with id '{id}'."))
}

impl State {
    pub fn create_batch(&mut self, body: &Value, now: u64) -> Result<Value, ApiError> {
        let obj = body.as_object().ok_or_else(|| {
            ApiError::invalid("Invalid type for request body: expected an object.")
        })?;
        let file_id = match obj.get("input_file_id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ApiError::missing("input_file_id")),
        };
        let endpoint = match obj.get("endpoint") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ApiError::missing("endpoint")),
        };
        if !batch::ENDPOINTS.contains(&endpoint.as_str()) {
            return Err(ApiError::invalid_value(
                "endpoint",
                &endpoint,
                batch::ENDPOINTS,
            ));
        }
        let window = match obj.get("completion_window") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(ApiError::missing("completion_window")),
        };
        if window != "24h" {
            return Err(ApiError::invalid_value(
                "completion_window",
                &window,
                &["24h"],
            ));
        }
        let metadata = check_metadata(obj.get("metadata"))?;
        let output_expires_after_s = match obj.get("output_expires_after") {
            None | Some(Value::Null) => None,
            Some(Value::Object(o)) => {
                if o.get("anchor").and_then(Value::as_str) != Some("created_at") {
                    return Err(ApiError::invalid_value(
                        "output_expires_after.anchor",
                        &o.get("anchor").map(|a| a.to_string()).unwrap_or_default(),
                        &["created_at"],
                    ));
                }
                let s = o
                    .get("seconds")
                    .ok_or_else(|| ApiError::missing("output_expires_after.seconds"))?;
                Some(files::check_expiry_seconds(
                    s,
                    "output_expires_after.seconds",
                )?)
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "Invalid type for 'output_expires_after': expected an object.",
                )
                .param("output_expires_after")
                .code("invalid_type"))
            }
        };
        let file = self.file(&file_id, now).map_err(|_| {
            ApiError::invalid(format!(
                "Invalid 'input_file_id': '{file_id}'. No such File object."
            ))
            .param("input_file_id")
        })?;
        if file.purpose != "batch" {
            return Err(ApiError::invalid(format!(
                "Invalid 'input_file_id': '{file_id}' has purpose '{}'. Batch input files must be uploaded with purpose 'batch'.",
                file.purpose
            ))
            .param("input_file_id"));
        }
        let input: Bytes = file.data.clone();

        let seq = self.batches.len() as u64 + 1;
        let b = Batch {
            id: ids::batch_id(),
            endpoint,
            input_file_id: file_id,
            completion_window: window,
            metadata,
            output_expires_after_s,
            input,
            created_ms: now,
            expires_ms: now + self.config.expire_after_ms,
            timing: Timing::from_config(&self.config),
            status: Status::Validating,
            stamps: Stamps::default(),
            forced_expiry_ms: None,
            errors: Vec::new(),
            request_model: None,
            lines: Vec::new(),
            done_frozen: None,
            output_file_id: None,
            error_file_id: None,
            enqueued_tokens: 0,
            rng_seed: self.config.seed ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let json = b.to_json(now);
        self.batch_index.insert(b.id.clone(), self.batches.len());
        self.batches.push(b);
        self.stats.batches_created += 1;
        Ok(json)
    }

    pub fn batch_json(&self, id: &str, now: u64) -> Result<Value, ApiError> {
        self.batch_index
            .get(id)
            .map(|&i| self.batches[i].to_json(now))
            .ok_or_else(|| no_such_batch(id))
    }

    /// Newest first, `after` a batch id, `limit` 1–100 (default 20).
    pub fn list_batches(
        &self,
        after: Option<&str>,
        limit: Option<&str>,
        now: u64,
    ) -> Result<Value, ApiError> {
        let limit = files::parse_limit(limit, 20, 100)?;
        let newest_first = self.batches.iter().rev();
        let mut items: Vec<&Batch> = match after {
            Some(a) => newest_first.skip_while(|b| b.id != a).skip(1).collect(),
            None => newest_first.collect(),
        };
        let has_more = items.len() > limit;
        items.truncate(limit);
        Ok(json!({
            "object": "list",
            "data": items.iter().map(|b| b.to_json(now)).collect::<Vec<_>>(),
            "first_id": items.first().map(|b| b.id.clone()),
            "last_id": items.last().map(|b| b.id.clone()),
            "has_more": has_more,
        }))
    }

    pub fn cancel_batch(&mut self, id: &str, now: u64) -> Result<Value, ApiError> {
        let i = *self.batch_index.get(id).ok_or_else(|| no_such_batch(id))?;
        let b = &mut self.batches[i];
        if b.status.is_terminal() {
            return Err(ApiError::new(
                409,
                "invalid_request_error",
                format!("Cannot cancel a batch with status '{}'.", b.status.as_str()),
            ));
        }
        if b.status != Status::Cancelling {
            let done = b.done_at(now);
            b.done_frozen = Some(done);
            b.status = Status::Cancelling;
            b.stamps.cancelling = Some(now);
            self.stats.cancel_requests += 1;
        }
        // A zero cancel_ms finishes right here.
        self.advance(now);
        Ok(self.batches[i].to_json(now))
    }

    /// Moves the batch's deadline to `now`; false when unknown, terminal or cancelling.
    pub fn force_expiry(&mut self, id: &str, now: u64) -> bool {
        let Some(&i) = self.batch_index.get(id) else {
            return false;
        };
        let b = &mut self.batches[i];
        if b.status.is_terminal() || b.status == Status::Cancelling {
            return false;
        }
        b.forced_expiry_ms = Some(now);
        self.advance(now);
        true
    }

    /// Applies every status change due by `now`, earliest first across all batches, so a
    /// validation sees exactly the batches that were enqueued at its moment.
    pub fn advance(&mut self, now: u64) {
        loop {
            let due = self
                .batches
                .iter()
                .enumerate()
                .filter_map(|(i, b)| b.next_event().filter(|t| *t <= now).map(|t| (t, i)))
                .min();
            match due {
                Some((t, i)) => self.step(i, t),
                None => break,
            }
        }
    }

    fn step(&mut self, i: usize, t: u64) {
        let b = &self.batches[i];
        let deadline = b.deadline();
        match b.status {
            Status::Validating => self.validate(i, t),
            Status::InProgress => {
                let end = b.stamps.in_progress.unwrap_or(t) + b.timing.in_progress_ms;
                if end <= deadline {
                    let b = &mut self.batches[i];
                    b.status = Status::Finalizing;
                    b.stamps.finalizing = Some(end);
                } else {
                    self.expire(i, deadline);
                }
            }
            Status::Finalizing => {
                let end = b.stamps.finalizing.unwrap_or(t) + b.timing.finalizing_ms;
                if end <= deadline {
                    self.finish(i, end, Status::Completed);
                } else {
                    self.expire(i, deadline);
                }
            }
            Status::Cancelling => self.finish(i, t, Status::Cancelled),
            _ => {}
        }
    }

    fn validate(&mut self, i: usize, t: u64) {
        let (input, endpoint) = {
            let b = &self.batches[i];
            (b.input.clone(), b.endpoint.clone())
        };
        let cfg = self.config.clone();
        let (parsed, model) = match batch::validate_input(&input, &endpoint, &cfg) {
            Ok(ok) => ok,
            Err(errors) => return self.fail(i, t, errors),
        };
        let tokens: u64 = parsed
            .iter()
            .filter_map(|l| l.prepared.as_ref().ok())
            .map(|p| p.prompt_tokens())
            .sum();
        if let Some(model) = &model {
            if let Some(&limit) = cfg.enqueued_token_limits.get(model) {
                let enqueued: u64 = self
                    .batches
                    .iter()
                    .enumerate()
                    .filter(|(j, b)| {
                        *j != i
                            && b.request_model.as_deref() == Some(model)
                            && matches!(
                                b.status,
                                Status::InProgress | Status::Finalizing | Status::Cancelling
                            )
                    })
                    .map(|(_, b)| b.enqueued_tokens)
                    .sum();
                if enqueued + tokens > limit {
                    let message = format!(
                        "Enqueued token limit reached for {model} in organization {}. Limit: {} enqueued tokens. Please try again once some in_progress batches have been completed.",
                        cfg.organization,
                        thousands(limit)
                    );
                    return self.fail(
                        i,
                        t,
                        vec![BatchError::file("token_limit_exceeded", message)],
                    );
                }
            }
        }
        let mut rng = StdRng::seed_from_u64(self.batches[i].rng_seed);
        let lines = batch::run_lines(parsed, &cfg, &mut rng, t / 1000);
        let b = &mut self.batches[i];
        b.lines = lines;
        b.request_model = model;
        b.enqueued_tokens = tokens;
        b.status = Status::InProgress;
        b.stamps.in_progress = Some(t);
    }

    fn fail(&mut self, i: usize, t: u64, errors: Vec<BatchError>) {
        let b = &mut self.batches[i];
        b.status = Status::Failed;
        b.stamps.failed = Some(t);
        b.errors = errors;
        self.stats.batches_failed += 1;
        self.queue_webhook(i, "batch.failed", t);
    }

    fn expire(&mut self, i: usize, t: u64) {
        let done = self.batches[i].done_at(t);
        self.batches[i].done_frozen = Some(done);
        self.finish(i, t, Status::Expired);
    }

    /// Writes the output and error files and enters a terminal status.
    fn finish(&mut self, i: usize, t: u64, status: Status) {
        let unexecuted = match status {
            Status::Cancelled => ("batch_cancelled", batch::CANCELLED_MESSAGE),
            _ => ("batch_expired", batch::EXPIRED_MESSAGE),
        };
        let done = match status {
            Status::Completed => self.batches[i].lines.len(),
            _ => self.batches[i].done_frozen.unwrap_or(0),
        };
        let (out, err) = self.batches[i].render_files(done, unexecuted);
        let (completed, failed) = self.batches[i].counts(done);
        let total = self.batches[i].lines.len() as u64;
        let id = self.batches[i].id.clone();
        let ttl = self.batches[i]
            .output_expires_after_s
            .unwrap_or(BATCH_FILE_TTL_S);
        let mut file = |name: &str, data: Vec<u8>| {
            (!data.is_empty()).then(|| {
                let v = self.add_file(
                    format!("{id}_{name}.jsonl"),
                    "batch_output".into(),
                    Bytes::from(data),
                    t,
                    Some(ttl),
                );
                v["id"].as_str().unwrap_or_default().to_string()
            })
        };
        let output_file_id = file("output", out);
        let error_file_id = file("error", err);

        self.stats.batch_lines_succeeded += completed;
        self.stats.batch_lines_failed += failed;
        self.stats.batch_lines_unexecuted += total - completed - failed;
        let b = &mut self.batches[i];
        b.output_file_id = output_file_id;
        b.error_file_id = error_file_id;
        b.status = status;
        let event = match status {
            Status::Completed => {
                b.stamps.completed = Some(t);
                self.stats.batches_completed += 1;
                "batch.completed"
            }
            Status::Cancelled => {
                b.stamps.cancelled = Some(t);
                self.stats.batches_cancelled += 1;
                "batch.cancelled"
            }
            _ => {
                b.stamps.expired = Some(t);
                self.stats.batches_expired += 1;
                "batch.expired"
            }
        };
        self.queue_webhook(i, event, t);
    }

    /// Queues the event for the webhook loop, when and as often as `webhook_timing` says.
    fn queue_webhook(&mut self, i: usize, event: &str, t: u64) {
        if self.config.webhook_url.is_none() {
            return;
        }
        let ev = PendingWebhook {
            event_id: ids::event_id(),
            event_type: event.to_string(),
            batch_id: self.batches[i].id.clone(),
            at_ms: t,
            due_ms: t,
        };
        let delay = self.config.webhook_delay_ms;
        match self.config.webhook_timing {
            WebhookTiming::AtCompletion => self.webhooks.push(ev),
            WebhookTiming::Delayed => self.webhooks.push(PendingWebhook {
                due_ms: t + delay,
                ..ev
            }),
            WebhookTiming::Duplicate => {
                self.webhooks.push(ev.clone());
                self.webhooks.push(PendingWebhook {
                    due_ms: t + delay,
                    ..ev
                });
            }
        }
    }
}

fn check_metadata(m: Option<&Value>) -> Result<Option<serde_json::Map<String, Value>>, ApiError> {
    let map =
        match m {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Object(map)) => map,
            Some(_) => return Err(ApiError::invalid(
                "Invalid type for 'metadata': expected an object, but got something else instead.",
            )
            .param("metadata")
            .code("invalid_type")),
        };
    if map.len() > METADATA_MAX_PAIRS {
        return Err(ApiError::invalid(format!(
            "Invalid 'metadata': too many properties. Expected an object with at most {METADATA_MAX_PAIRS} properties, but got an object with {} properties instead.",
            map.len()
        ))
        .param("metadata")
        .code("object_above_max_properties"));
    }
    for (k, v) in map {
        if k.chars().count() > METADATA_MAX_KEY {
            return Err(ApiError::invalid(format!(
                "Invalid 'metadata': key too long. Expected a key with maximum length {METADATA_MAX_KEY}, but got a key with length {} instead.",
                k.chars().count()
            ))
            .param("metadata")
            .code("string_above_max_length"));
        }
        let s = v.as_str().ok_or_else(|| {
            ApiError::invalid(format!(
                "Invalid type for 'metadata.{k}': expected a string, but got {} instead.",
                v
            ))
            .param(format!("metadata.{k}"))
            .code("invalid_type")
        })?;
        if s.chars().count() > METADATA_MAX_VALUE {
            return Err(ApiError::invalid(format!(
                "Invalid 'metadata.{k}': string too long. Expected a string with maximum length {METADATA_MAX_VALUE}, but got a string with length {} instead.",
                s.chars().count()
            ))
            .param(format!("metadata.{k}"))
            .code("string_above_max_length"));
        }
    }
    Ok(Some(map.clone()))
}

/// `90000` → `90,000`, as OpenAI writes limits in this message.
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(5), "5");
        assert_eq!(thousands(90_000), "90,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
