-- OpenAI webhooks in (POST /v1/openai/webhooks). The SQLite migration of the same name
-- creates the same table, column and indexes.

-- The webhook-id of every verified delivery, so a replay (on any replica) changes nothing.
-- Kept 15 minutes (three times the 5-minute timestamp tolerance), removed by the janitor.
CREATE TABLE openai_webhooks (
    id          TEXT PRIMARY KEY,
    received_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX openai_webhooks_received_idx ON openai_webhooks (received_at);

-- A verified batch event finds its shards by batch id.
CREATE INDEX shards_openai_batch_idx ON shards (openai_batch_id);
-- When an event last made the shard due; a poll already in flight when it came polls again
-- at once instead of waiting out its interval. Cleared by the next poll.
ALTER TABLE shards ADD COLUMN poll_hinted_at TIMESTAMPTZ;
