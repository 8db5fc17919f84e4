-- Read path: a job's view costs its row and its shards, never its items. The SQLite
-- migration of the same name adds the same columns and triggers.

-- The first 100 items refused at intake ({"index", "custom_id", "reason"}, in position
-- order), written in the transaction that stores them; the rest are read through
-- `/results?status=rejected`.
ALTER TABLE jobs ADD COLUMN rejections JSONB NOT NULL DEFAULT '[]';
UPDATE jobs SET rejections = r.list
FROM (
    SELECT job_id,
           jsonb_agg(jsonb_build_object('index', position, 'custom_id', custom_id,
                                        'reason', COALESCE(error_message, ''))
                     ORDER BY position) AS list
    FROM (SELECT job_id, position, custom_id, error_message,
                 row_number() OVER (PARTITION BY job_id ORDER BY position) AS n
          FROM items WHERE status = 'rejected') ranked
    WHERE n <= 100
    GROUP BY job_id
) r
WHERE r.job_id = jobs.id;

-- Moves whenever anything the job, results, posts or cost views show changes: the store
-- statements that change the job row bump it, and so do the triggers below for shard
-- changes that do not otherwise touch the job row. The ETag is "v<version>".
ALTER TABLE jobs ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

CREATE FUNCTION shard_bumps_job_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE jobs SET version = version + 1 WHERE id = NEW.job_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER shards_insert_bump_job_version AFTER INSERT ON shards
    FOR EACH ROW EXECUTE FUNCTION shard_bumps_job_version();

-- Only what a job's `batches[]` and `progress.processing` show: leases, poll times and
-- estimates change nothing a reader sees.
CREATE TRIGGER shards_update_bump_job_version AFTER UPDATE ON shards
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status
        OR OLD.batch_status IS DISTINCT FROM NEW.batch_status
        OR OLD.openai_batch_id IS DISTINCT FROM NEW.openai_batch_id
        OR OLD.item_count IS DISTINCT FROM NEW.item_count
        OR OLD.request_total IS DISTINCT FROM NEW.request_total
        OR OLD.request_completed IS DISTINCT FROM NEW.request_completed
        OR OLD.request_failed IS DISTINCT FROM NEW.request_failed
        OR OLD.error_code IS DISTINCT FROM NEW.error_code
        OR OLD.error_message IS DISTINCT FROM NEW.error_message)
    EXECUTE FUNCTION shard_bumps_job_version();
