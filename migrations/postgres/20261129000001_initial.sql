-- batchlens schema, PostgreSQL dialect. The SQLite migration of the same name has the same
-- tables and columns; keep them in step.

CREATE TABLE api_keys (
    sha256     TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id             UUID PRIMARY KEY,
    tenant         TEXT NOT NULL,
    name           TEXT,
    model          TEXT NOT NULL,
    requested_mode TEXT NOT NULL,
    mode           TEXT NOT NULL,
    mode_reason    TEXT NOT NULL,
    detail         TEXT NOT NULL,
    analyzer       JSONB NOT NULL,
    metadata       JSONB,
    webhook_url    TEXT,
    status         TEXT NOT NULL,
    -- progress counters: changed in the same transaction as the items they count
    total     BIGINT NOT NULL DEFAULT 0,
    pending   BIGINT NOT NULL DEFAULT 0,
    submitted BIGINT NOT NULL DEFAULT 0,
    succeeded BIGINT NOT NULL DEFAULT 0,
    failed    BIGINT NOT NULL DEFAULT 0,
    rejected  BIGINT NOT NULL DEFAULT 0,
    cancelled BIGINT NOT NULL DEFAULT 0,
    -- cost sums (money in pico-USD)
    input_tokens             BIGINT NOT NULL DEFAULT 0,
    cached_input_tokens      BIGINT NOT NULL DEFAULT 0,
    output_tokens            BIGINT NOT NULL DEFAULT 0,
    actual_pico_usd          BIGINT NOT NULL DEFAULT 0,
    individual_pico_usd      BIGINT NOT NULL DEFAULT 0,
    unpriced_items           BIGINT NOT NULL DEFAULT 0,
    batch_items              BIGINT NOT NULL DEFAULT 0,
    batch_pico_usd           BIGINT NOT NULL DEFAULT 0,
    individual_items         BIGINT NOT NULL DEFAULT 0,
    individual_mode_pico_usd BIGINT NOT NULL DEFAULT 0,
    estimate_batch_pico_usd      BIGINT,
    estimate_individual_pico_usd BIGINT,
    created_at   TIMESTAMPTZ NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ,
    lease_owner  TEXT,
    lease_until  TIMESTAMPTZ,
    lease_token  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_tenant_created_idx ON jobs (tenant, created_at DESC, id DESC);
CREATE INDEX jobs_status_idx ON jobs (status);

CREATE TABLE shards (
    id                UUID PRIMARY KEY,
    job_id            UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL DEFAULT 'batch',
    attempt           INT NOT NULL,
    model             TEXT NOT NULL,
    status            TEXT NOT NULL,
    item_count        BIGINT NOT NULL,
    input_file_id     TEXT,
    openai_batch_id   TEXT,
    output_file_id    TEXT,
    error_file_id     TEXT,
    batch_status      TEXT,
    request_total     BIGINT NOT NULL DEFAULT 0,
    request_completed BIGINT NOT NULL DEFAULT 0,
    request_failed    BIGINT NOT NULL DEFAULT 0,
    error_code        TEXT,
    error_message     TEXT,
    poll_interval_ms  BIGINT NOT NULL,
    next_poll_at      TIMESTAMPTZ NOT NULL,
    lease_owner       TEXT,
    lease_until       TIMESTAMPTZ,
    lease_token       BIGINT NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX shards_status_next_poll_idx ON shards (kind, status, next_poll_at);
CREATE INDEX shards_job_idx ON shards (job_id);

CREATE TABLE items (
    job_id              UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    position            BIGINT NOT NULL,
    custom_id           TEXT NOT NULL,
    -- byte order, as in SQLite, so both backends group posts in the same order
    post_id             TEXT COLLATE "C",
    image               TEXT NOT NULL,
    image_bytes         BIGINT NOT NULL,
    width               INT,
    height              INT,
    status              TEXT NOT NULL,
    attempts            INT NOT NULL DEFAULT 0,
    shard_id            UUID REFERENCES shards (id),
    output              JSONB,
    error_code          TEXT,
    error_message       TEXT,
    input_tokens        BIGINT,
    cached_input_tokens BIGINT,
    output_tokens       BIGINT,
    reasoning_tokens    BIGINT,
    cost_pico_usd       BIGINT,
    individual_pico_usd BIGINT,
    run_mode            TEXT,
    resolved_model      TEXT,
    finished_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (job_id, position)
);
-- Outcomes are matched to items by custom_id (bulk UPDATE joins through this index).
CREATE UNIQUE INDEX items_job_custom_id_idx ON items (job_id, custom_id);
CREATE INDEX items_shard_status_idx ON items (shard_id, status);
CREATE INDEX items_job_status_position_idx ON items (job_id, status, position);
CREATE INDEX items_job_post_position_idx ON items (job_id, post_id, position);

CREATE TABLE idempotency_keys (
    tenant       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       UUID,
    response     JSONB,
    status       TEXT NOT NULL CHECK (status IN ('in_flight', 'completed')),
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant, key)
);

CREATE TABLE events (
    id         BIGSERIAL PRIMARY KEY,
    job_id     UUID NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    data       JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX events_job_id_idx ON events (job_id, id);
