//! The simulator's whole memory (files, batches, journal, counters, limiter) behind one lock,
//! and `Sim`, the cheap handle tests and handlers share.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::batch::Batch;
use crate::config::SimConfig;
use crate::files::FileRecord;
use crate::ratelimit::Limiter;

/// Counters since start (or the last reset).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Every `/v1` request.
    pub requests: u64,
    /// 401s for a missing or wrong key.
    pub unauthorized: u64,
    pub files_uploaded: u64,
    pub bytes_uploaded: u64,
    pub files_deleted: u64,
    pub file_downloads: u64,
    /// Batches accepted by `POST /v1/batches`.
    pub batches_created: u64,
    /// `POST /v1/batches` answered with 400.
    pub batches_rejected: u64,
    pub batches_completed: u64,
    pub batches_failed: u64,
    pub batches_expired: u64,
    pub batches_cancelled: u64,
    /// Successful cancel calls (409s not counted).
    pub cancel_requests: u64,
    pub batch_lines_succeeded: u64,
    pub batch_lines_failed: u64,
    /// Lines written as `batch_expired` or `batch_cancelled`.
    pub batch_lines_unexecuted: u64,
    /// Chat completions answered with 200.
    pub chat_calls: u64,
    /// Chat completions answered with 400.
    pub chat_rejected: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// 429s from the `rpm`/`tpm` limits.
    pub rate_limited: u64,
    /// 429 `rate_limit_exceeded` from fault injection.
    pub injected_429: u64,
    /// 5xx from fault injection.
    pub injected_5xx: u64,
    /// 429 `insufficient_quota` answers.
    pub insufficient_quota: u64,
    pub webhooks_sent: u64,
    pub webhooks_failed: u64,
    /// 429 `resource_unavailable` answers to flex calls.
    pub flex_unavailable: u64,
    /// Chat calls that passed validation, by model as requested.
    pub chat_by_model: BTreeMap<String, ModelCounts>,
}

/// Per-model chat counters: what a utilisation check needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCounts {
    /// Answered 200.
    pub accepted: u64,
    /// 429 from the `rpm`/`tpm` limits (including "Request too large").
    pub rate_limited: u64,
    /// 429 `resource_unavailable` (flex).
    pub flex_unavailable: u64,
    /// Tokens the accepted calls counted against `tpm`.
    pub tokens: u64,
}

/// One chat call that passed validation and met the limiter, in arrival order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatCall {
    /// The simulator's clock (Unix ms, with any `advance_clock` offset) the limiter used.
    pub at_ms: u64,
    /// As requested.
    pub model: String,
    /// `accepted`, `rate_limited`, `too_large` or `flex_unavailable`.
    pub outcome: String,
    pub status: u16,
    /// What the call counts (or would have counted) against `tpm`.
    pub tokens: u64,
    pub flex: bool,
    /// The `x-client-request-id` the call carried: batchlens sends its replica's id in it,
    /// so a test of several replicas sees which of them made each call.
    pub client_request_id: Option<String>,
}

/// One answered request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    /// Unix milliseconds when the request arrived.
    pub at_ms: u64,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub status: u16,
    /// The `x-request-id` sent back.
    pub request_id: String,
    /// The batch created, read or cancelled.
    pub batch_id: Option<String>,
    /// The file uploaded, read or deleted.
    pub file_id: Option<String>,
    /// Metadata of a batch being created.
    pub metadata: Option<Value>,
    /// Model of a chat completion.
    pub model: Option<String>,
    /// `5xx`, `429`, `insufficient_quota` or `rate_limit` when the answer was a fault.
    pub fault: Option<String>,
    /// The bearer key the request carried: tests give each replica a key of its own to see
    /// which of them did the work.
    pub api_key: Option<String>,
}

/// A terminal batch event waiting to be POSTed to `webhook_url`.
#[derive(Clone, Debug, PartialEq)]
pub struct PendingWebhook {
    /// `evt_…`, also the `webhook-id`; the same for both copies of a `duplicate` event.
    pub event_id: String,
    pub event_type: String,
    pub batch_id: String,
    /// When the batch reached its terminal status (simulator clock).
    pub at_ms: u64,
    /// When the event may be sent (simulator clock).
    pub due_ms: u64,
}

pub struct State {
    pub config: SimConfig,
    pub files: HashMap<String, FileRecord>,
    pub file_seq: u64,
    pub batches: Vec<Batch>,
    pub batch_index: HashMap<String, usize>,
    pub journal: VecDeque<JournalEntry>,
    pub journal_seq: u64,
    pub stats: Stats,
    pub limiter: Limiter,
    /// Drives faults and chat content; reseeded when the `seed` knob changes.
    pub rng: StdRng,
    pub rng_seed: u64,
    pub clock_offset_ms: u64,
    /// Wall time the clock stands still at (`Sim::pause_clock`); `advance_clock` still moves it.
    pub clock_paused_at: Option<u64>,
    pub webhooks: Vec<PendingWebhook>,
    pub chat_log: VecDeque<ChatCall>,
}

impl State {
    pub fn new(config: SimConfig) -> Self {
        let seed = config.seed;
        State {
            config,
            files: HashMap::new(),
            file_seq: 0,
            batches: Vec::new(),
            batch_index: HashMap::new(),
            journal: VecDeque::new(),
            journal_seq: 0,
            stats: Stats::default(),
            limiter: Limiter::default(),
            rng: StdRng::seed_from_u64(seed),
            rng_seed: seed,
            clock_offset_ms: 0,
            clock_paused_at: None,
            webhooks: Vec::new(),
            chat_log: VecDeque::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        let wall = self.clock_paused_at.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        });
        wall + self.clock_offset_ms
    }

    pub fn set_config(&mut self, config: SimConfig) {
        if config.seed != self.rng_seed {
            self.rng = StdRng::seed_from_u64(config.seed);
            self.rng_seed = config.seed;
        }
        self.config = config;
    }

    pub fn record(&mut self, mut entry: JournalEntry) {
        self.journal_seq += 1;
        entry.seq = self.journal_seq;
        self.journal.push_back(entry);
        while self.journal.len() > self.config.journal_limit.max(1) {
            self.journal.pop_front();
        }
    }

    /// Logs a chat call that met the limiter and counts it per model.
    pub fn record_chat(&mut self, call: ChatCall) {
        let counts = self
            .stats
            .chat_by_model
            .entry(call.model.clone())
            .or_default();
        match call.outcome.as_str() {
            "accepted" => {
                counts.accepted += 1;
                counts.tokens += call.tokens;
            }
            "flex_unavailable" => counts.flex_unavailable += 1,
            _ => counts.rate_limited += 1,
        }
        self.chat_log.push_back(call);
        while self.chat_log.len() > self.config.journal_limit.max(1) {
            self.chat_log.pop_front();
        }
    }

    /// Forgets everything but the config.
    pub fn reset(&mut self) {
        let config = self.config.clone();
        *self = State::new(config);
    }
}

/// Handle on one simulator; clones share it.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Mutex<State>>,
}

impl Sim {
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            inner: Arc::new(Mutex::new(State::new(config))),
        }
    }

    /// The lock; a panic elsewhere must not wedge the simulator, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks, brings every batch up to now, and hands over the state and the time.
    pub fn advanced(&self) -> (MutexGuard<'_, State>, u64) {
        let mut st = self.lock();
        let now = st.now_ms();
        st.advance(now);
        (st, now)
    }

    pub fn config(&self) -> SimConfig {
        self.lock().config.clone()
    }

    pub fn set_config(&self, c: SimConfig) {
        self.lock().set_config(c);
    }

    /// Chat calls that met the rate limiter, oldest first (up to `journal_limit`).
    pub fn chat_calls(&self) -> Vec<ChatCall> {
        self.lock().chat_log.iter().cloned().collect()
    }

    /// Every answered `/v1` request, oldest first (up to `journal_limit`).
    pub fn journal(&self) -> Vec<JournalEntry> {
        self.lock().journal.iter().cloned().collect()
    }

    /// Every batch ever created, oldest first, as Batch JSON.
    pub fn batches(&self) -> Vec<Value> {
        let (st, now) = self.advanced();
        st.batches.iter().map(|b| b.to_json(now)).collect()
    }

    /// One batch as Batch JSON.
    pub fn batch(&self, id: &str) -> Option<Value> {
        let (st, now) = self.advanced();
        st.batch_index.get(id).map(|&i| st.batches[i].to_json(now))
    }

    pub fn count_batches_with_metadata(&self, key: &str, value: &str) -> usize {
        self.lock()
            .batches
            .iter()
            .filter(|b| {
                b.metadata
                    .as_ref()
                    .and_then(|m| m.get(key))
                    .and_then(Value::as_str)
                    == Some(value)
            })
            .count()
    }

    /// Makes the completion window pass now; false when the batch is unknown or already over.
    pub fn expire_batch(&self, id: &str) -> bool {
        let (mut st, now) = self.advanced();
        st.force_expiry(id, now)
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Raw bytes of a file (uploaded or produced), if it exists.
    pub fn file_content(&self, id: &str) -> Option<bytes::Bytes> {
        let (st, now) = self.advanced();
        st.file(id, now).ok().map(|f| f.data.clone())
    }

    /// Moves the simulator's clock forward (it never goes back).
    pub fn advance_clock(&self, by: std::time::Duration) {
        let mut st = self.lock();
        st.clock_offset_ms += by.as_millis() as u64;
        let now = st.now_ms();
        st.advance(now);
    }

    /// Stops the clock where it is (only `advance_clock` moves it), so tests can read exact
    /// `x-ratelimit-reset-*` and `retry-after` values.
    pub fn pause_clock(&self) {
        let mut st = self.lock();
        if st.clock_paused_at.is_none() {
            st.clock_paused_at = Some(st.now_ms() - st.clock_offset_ms);
        }
    }

    /// Lets the clock run again; it jumps forward to wall time plus the offset.
    pub fn resume_clock(&self) {
        self.lock().clock_paused_at = None;
    }

    /// Forgets files, batches, journal, counters and rate-limit windows; keeps the config.
    pub fn reset(&self) {
        self.lock().reset();
    }
}
