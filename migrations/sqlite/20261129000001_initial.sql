-- batchlens schema, SQLite dialect. The PostgreSQL migration of the same name has the same
-- tables and columns; keep them in step. Ids are hyphenated lowercase UUID text, JSON is
-- text, timestamps are INTEGER microseconds since the Unix epoch (UTC) so they order and
-- round-trip exactly.

CREATE TABLE api_keys (
    sha256     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    name           TEXT,
    model          TEXT NOT NULL,
    requested_mode TEXT NOT NULL,
    mode           TEXT NOT NULL,
    mode_reason    TEXT NOT NULL,
    detail         TEXT NOT NULL,
    analyzer       TEXT NOT NULL,
    metadata       TEXT,
    webhook_url    TEXT,
    status         TEXT NOT NULL,
    -- progress counters: changed in the same transaction as the items they count
    total     INTEGER NOT NULL DEFAULT 0,
    pending   INTEGER NOT NULL DEFAULT 0,
    submitted INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0,
    rejected  INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    -- cost sums (money in pico-USD)
    input_tokens             INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens      INTEGER NOT NULL DEFAULT 0,
    output_tokens            INTEGER NOT NULL DEFAULT 0,
    actual_pico_usd          INTEGER NOT NULL DEFAULT 0,
    individual_pico_usd      INTEGER NOT NULL DEFAULT 0,
    unpriced_items           INTEGER NOT NULL DEFAULT 0,
    batch_items              INTEGER NOT NULL DEFAULT 0,
    batch_pico_usd           INTEGER NOT NULL DEFAULT 0,
    individual_items         INTEGER NOT NULL DEFAULT 0,
    individual_mode_pico_usd INTEGER NOT NULL DEFAULT 0,
    estimate_batch_pico_usd      INTEGER,
    estimate_individual_pico_usd INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    completed_at INTEGER,
    lease_owner  TEXT,
    lease_until  INTEGER,
    lease_token  INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX jobs_tenant_created_idx ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_status_idx ON jobs (status);

CREATE TABLE shards (
    id                TEXT PRIMARY KEY,
    job_id            TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL DEFAULT 'batch',
    attempt           INTEGER NOT NULL,
    model             TEXT NOT NULL,
    status            TEXT NOT NULL,
    item_count        INTEGER NOT NULL,
    input_file_id     TEXT,
    openai_batch_id   TEXT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    batch_status      TEXT,
    request_total     INTEGER NOT NULL DEFAULT 0,
    request_completed INTEGER NOT NULL DEFAULT 0,
    request_failed    INTEGER NOT NULL DEFAULT 0,
    error_code        TEXT,
    error_message     TEXT,
    poll_interval_ms  INTEGER NOT NULL,
    next_poll_at      INTEGER NOT NULL,
    lease_owner       TEXT,
    lease_until       INTEGER,
    lease_token       INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
) STRICT;
CREATE INDEX shards_status_next_poll_idx ON shards (kind, status, next_poll_at);
CREATE INDEX shards_job_idx ON shards (job_id);

CREATE TABLE items (
    job_id              TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position            INTEGER NOT NULL,
    custom_id           TEXT NOT NULL,
    post_id             TEXT,
    image               TEXT NOT NULL,
    image_bytes         INTEGER NOT NULL,
    width               INTEGER,
    height              INTEGER,
    status              TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    shard_id            TEXT REFERENCES shards (id),
    output              TEXT,
    error_code          TEXT,
    error_message       TEXT,
    input_tokens        INTEGER,
    cached_input_tokens INTEGER,
    output_tokens       INTEGER,
    reasoning_tokens    INTEGER,
    cost_pico_usd       INTEGER,
    individual_pico_usd INTEGER,
    run_mode            TEXT,
    resolved_model      TEXT,
    finished_at         INTEGER,
    updated_at          INTEGER NOT NULL,
    PRIMARY KEY (job_id, position)
) STRICT;
-- Outcomes are matched to items by custom_id (bulk UPDATE joins through this index).
CREATE UNIQUE INDEX items_job_custom_id_idx ON items (job_id, custom_id);
CREATE INDEX items_shard_status_idx ON items (shard_id, status);
CREATE INDEX items_job_status_position_idx ON items (job_id, status, position);
CREATE INDEX items_job_post_position_idx ON items (job_id, post_id, position);

CREATE TABLE idempotency_keys (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       TEXT,
    response     TEXT,
    status       TEXT NOT NULL CHECK (status IN ('in_flight', 'completed')),
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, key)
) STRICT;

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX events_job_id_idx ON events (job_id, id);
