-- A shard's items in position order, read in pages while its batch file is written: with
-- only (shard_id, status) each page sorted every remaining item of the shard, images
-- included, so writing a file took time quadratic in its lines.
CREATE INDEX items_shard_position_idx ON items (shard_id, position);
