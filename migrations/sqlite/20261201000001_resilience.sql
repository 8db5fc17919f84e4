-- Resilience: what the submitter needs to keep a model's enqueued tokens under its limit.
-- The PostgreSQL migration of the same name adds the same column and index.

-- Estimated input tokens of the shard's requests, set when the submitter admits it.
ALTER TABLE shards ADD COLUMN estimated_tokens INTEGER NOT NULL DEFAULT 0;
-- In-flight batches and token-limit refusals of one model, across jobs.
CREATE INDEX shards_model_status_idx ON shards (kind, model, status);
