-- Flex mode (issue 13, item 3): items run as chat completions with service_tier "flex",
-- billed at Batch API prices, summed apart for the cost view's by_mode.flex.
ALTER TABLE jobs ADD COLUMN flex_items INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN flex_pico_usd INTEGER NOT NULL DEFAULT 0;
