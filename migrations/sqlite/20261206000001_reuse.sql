-- Reuse (issue 13, item 2): an image already analysed for the same tenant with the same
-- bytes, analyzer, model and detail is answered from that analysis instead of being sent
-- again, and the same image twice in one job is sent once. The PostgreSQL migration of the
-- same name adds the same columns and indexes.

-- `reuse: false` on the body: this job takes nothing from earlier analyses (its own
-- results can still be reused later).
ALTER TABLE jobs ADD COLUMN reuse INTEGER NOT NULL DEFAULT 1;
-- Items answered from another analysis (an earlier job's, or a duplicate's in this job),
-- and what they would have cost at Batch API and at standard prices (pico-USD).
ALTER TABLE jobs ADD COLUMN reused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reused_batch_pico_usd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reused_individual_pico_usd INTEGER NOT NULL DEFAULT 0;

-- SHA-256 (hex) of the image bytes as received; NULL for an image_url OpenAI fetches.
ALTER TABLE items ADD COLUMN content_sha256 TEXT;
-- SHA-256 of (tenant, analyzer, model, detail, content_sha256): what a lookup matches.
ALTER TABLE items ADD COLUMN reuse_key TEXT;
-- The position of the item of the same job with the same image that runs for this one;
-- this item waits (pending, in no shard) and gets its outcome.
ALTER TABLE items ADD COLUMN copy_of INTEGER;
-- The analysis this item's result was taken from.
ALTER TABLE items ADD COLUMN reused_from_job TEXT;
ALTER TABLE items ADD COLUMN reused_from_custom_id TEXT;

-- One lookup per chunk of keys: `reuse_key IN (…)` with status and age checked in the
-- index.
CREATE INDEX items_reuse_key_idx ON items (reuse_key, status, finished_at)
    WHERE reuse_key IS NOT NULL;
-- The copies of a job waiting for their original's outcome.
CREATE INDEX items_copies_idx ON items (job_id, copy_of) WHERE copy_of IS NOT NULL;
