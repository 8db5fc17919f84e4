-- Keys at run time (`batchlens keys create|list|revoke`): a short display prefix to name a
-- key by, and when it was revoked (INTEGER microseconds). The PostgreSQL migration of the
-- same name matches.

ALTER TABLE api_keys ADD COLUMN prefix TEXT;
ALTER TABLE api_keys ADD COLUMN revoked_at INTEGER;
CREATE UNIQUE INDEX api_keys_prefix_idx ON api_keys (prefix);
