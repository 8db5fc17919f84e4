-- Webhooks: a finished job with a webhook_url owes one delivery, kept on the job row so it
-- is owed in the same transaction that finishes the job. The SQLite migration of the same
-- name adds the same columns and index.

-- NULL: nothing owed (no webhook_url, or not finished); 'pending', 'delivered', 'failed'.
ALTER TABLE jobs ADD COLUMN webhook_state TEXT;
ALTER TABLE jobs ADD COLUMN webhook_attempts INT NOT NULL DEFAULT 0;
-- Why the last attempt was not delivered (NULL after a delivery).
ALTER TABLE jobs ADD COLUMN webhook_error TEXT;
-- When the next attempt is due; a replica that claims the delivery moves it past its
-- timeout, so a crash mid-delivery lets another replica try again later.
ALTER TABLE jobs ADD COLUMN webhook_due_at TIMESTAMPTZ;
CREATE INDEX jobs_webhook_due_idx ON jobs (webhook_due_at) WHERE webhook_state = 'pending';
