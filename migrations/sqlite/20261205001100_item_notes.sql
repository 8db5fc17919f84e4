-- Intake's remark on an accepted item (e.g. a mime_type its bytes contradict); shown as
-- the result's `note`.
ALTER TABLE items ADD COLUMN note TEXT;
