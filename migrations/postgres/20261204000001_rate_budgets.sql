-- The individual-mode rate budget shared by every replica (issue 14, item 2). The SQLite
-- migration of the same name creates the same table.
--
-- One row per (OpenAI account, model): a pair of token buckets (requests and tokens) that
-- every replica's governor takes from with one UPDATE … RETURNING. The refill is computed in
-- that UPDATE from the database clock, so replicas agree on it whatever their own clocks say.
-- `account` is a hash of the base URL and API key (never the key), so two configured
-- accounts never share a row. Times are seconds since the Unix epoch (float), the unit the
-- refill arithmetic works in.
CREATE TABLE rate_budgets (
    account      TEXT NOT NULL,
    model        TEXT NOT NULL,
    -- Levels; below zero is debt (a call counted more tokens than were taken for it).
    requests     DOUBLE PRECISION NOT NULL,
    tokens       DOUBLE PRECISION NOT NULL,
    -- When the levels were last refilled.
    refilled_at  DOUBLE PRECISION NOT NULL,
    -- A 429's retry-after: no replica takes from the row before this.
    paused_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    -- Whether the last take on the row took (what its RETURNING reports).
    granted      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (account, model)
);
