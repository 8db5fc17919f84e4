-- Who downloads a job's image_urls (issue 11, item 2): 'pass' (OpenAI, when it runs the
-- item) or 'inline' (batchlens, at intake). Kept on the job so the chunks appended to an
-- open job are fetched as its first request said. The other backend's migration of the
-- same name adds the same column.
ALTER TABLE jobs ADD COLUMN fetch_mode TEXT NOT NULL DEFAULT 'pass';
