-- Base views over the lake. {{source:<table>}} is replaced by a read_parquet over the table's
-- Hive tree, or by an empty typed relation while the table has no files yet.
-- `date` (DATE) and `hour` (INTEGER) are the Hive partition columns, in UTC.
CREATE OR REPLACE VIEW costs AS SELECT * FROM {{source:costs}};
CREATE OR REPLACE VIEW gpu_samples AS SELECT * FROM {{source:gpu_samples}};
CREATE OR REPLACE VIEW windows AS SELECT * FROM {{source:windows}};
CREATE OR REPLACE VIEW alerts AS SELECT * FROM {{source:alerts}};
-- Idle GPU cost lives in costs with record_type = 'idle' (reservation-based, not busy time).
CREATE OR REPLACE VIEW idle_cost AS SELECT * FROM costs WHERE record_type = 'idle';
