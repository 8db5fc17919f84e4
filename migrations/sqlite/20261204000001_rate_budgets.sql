-- The individual-mode rate budget shared by every replica (issue 14, item 2). The PostgreSQL
-- migration of the same name creates the same table.
--
-- One row per (OpenAI account, model): a pair of token buckets (requests and tokens) that
-- every replica's governor takes from with one UPDATE … RETURNING. The refill is computed in
-- that UPDATE from the time the process binds (SQLite serves one replica).
-- `account` is a hash of the base URL and API key (never the key), so two configured
-- accounts never share a row. Times are seconds since the Unix epoch (float), the unit the
-- refill arithmetic works in.
CREATE TABLE rate_budgets (
    account      TEXT NOT NULL,
    model        TEXT NOT NULL,
    -- Levels; below zero is debt (a call counted more tokens than were taken for it).
    requests     REAL NOT NULL,
    tokens       REAL NOT NULL,
    -- When the levels were last refilled.
    refilled_at  REAL NOT NULL,
    -- A 429's retry-after: no replica takes from the row before this.
    paused_until REAL NOT NULL DEFAULT 0,
    -- Whether the last take on the row took (what its RETURNING reports).
    granted      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (account, model)
);
