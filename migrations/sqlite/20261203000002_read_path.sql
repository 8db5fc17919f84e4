-- Read path: a job's view costs its row and its shards, never its items. The PostgreSQL
-- migration of the same name adds the same columns and triggers.

-- The first 100 items refused at intake ({"index", "custom_id", "reason"}, in position
-- order), written in the transaction that stores them; the rest are read through
-- `/results?status=rejected`.
ALTER TABLE jobs ADD COLUMN rejections TEXT NOT NULL DEFAULT '[]';
UPDATE jobs SET rejections = (
    SELECT json_group_array(json_object('index', position, 'custom_id', custom_id,
                                        'reason', COALESCE(error_message, '')))
    FROM (SELECT position, custom_id, error_message FROM items
          WHERE items.job_id = jobs.id AND status = 'rejected'
          ORDER BY position LIMIT 100)
)
WHERE rejected > 0;

-- Moves whenever anything the job, results, posts or cost views show changes: the store
-- statements that change the job row bump it, and so do the triggers below for shard
-- changes that do not otherwise touch the job row. The ETag is "v<version>".
ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 1;

CREATE TRIGGER shards_insert_bump_job_version AFTER INSERT ON shards
BEGIN
    UPDATE jobs SET version = version + 1 WHERE id = NEW.job_id;
END;

-- Only what a job's `batches[]` and `progress.processing` show: leases, poll times and
-- estimates change nothing a reader sees.
CREATE TRIGGER shards_update_bump_job_version AFTER UPDATE ON shards
    WHEN OLD.status IS NOT NEW.status
        OR OLD.batch_status IS NOT NEW.batch_status
        OR OLD.openai_batch_id IS NOT NEW.openai_batch_id
        OR OLD.item_count IS NOT NEW.item_count
        OR OLD.request_total IS NOT NEW.request_total
        OR OLD.request_completed IS NOT NEW.request_completed
        OR OLD.request_failed IS NOT NEW.request_failed
        OR OLD.error_code IS NOT NEW.error_code
        OR OLD.error_message IS NOT NEW.error_message
BEGIN
    UPDATE jobs SET version = version + 1 WHERE id = NEW.job_id;
END;
