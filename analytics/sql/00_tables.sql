-- Base views over the lake. {{source:<table>}} is replaced by a read_parquet over the table's
-- Hive tree (a local lake) or by a pyarrow dataset of its files (object storage: no httpfs),
-- or by an empty typed relation while the table has no files yet.
-- `date` (DATE) and `hour` (INTEGER) are the Hive partition columns, in UTC.
-- Each relation reads the table's live files (lake/files.py: files a compaction replaced are
-- never read twice), listed when the connection is made.
-- costs: one row per (record_id, record_type). The streams are at-least-once (a worker killed
-- after emitting cost records but before committing its input re-emits them), but the sink
-- writes a key at most once (lake/dedup.py), so the views are plain scans: de-duplicating here
-- cost 4.5 s per query over 10M rows on 2 cores.
CREATE OR REPLACE VIEW costs AS SELECT * FROM {{source:costs}};
-- cost_rollup: one row per hour (or day, hour NULL) x operation x team x app x provider_kind x
-- provider x model x record_type with exact sums (rows, requests, errors, tokens by kind,
-- cost, list_cost, shadow_cost): the lake's rollup files for the periods that have one, the
-- raw rows of the rest aggregated the same way (lake/rollup.py). Same sums as a raw scan.
CREATE OR REPLACE VIEW cost_rollup AS SELECT * FROM {{rollup:costs}};
-- latency_rollup: the latency sketch (bucket -> n) per hour x operation x provider_kind x
-- provider x model; latency_bucket_value(bucket) is a bucket's value in ms (1 % error).
CREATE OR REPLACE VIEW latency_rollup AS SELECT * FROM {{rollup:latency}};
CREATE OR REPLACE MACRO latency_bucket_value(bucket) AS {{sketch_value}};
CREATE OR REPLACE VIEW gpu_samples AS SELECT * FROM {{source:gpu_samples}};
-- windows: a closed window is (window_start, key, revision); revision 0 is on time, higher
-- revisions hold only late deltas. A restart may re-emit the same triple; the sink keeps one.
CREATE OR REPLACE VIEW windows AS SELECT * FROM {{source:windows}};
CREATE OR REPLACE VIEW alerts AS SELECT * FROM {{source:alerts}};
-- Idle GPU cost lives in costs with record_type = 'idle' (reservation-based, not busy time).
CREATE OR REPLACE VIEW idle_cost AS SELECT * FROM costs WHERE record_type = 'idle';
-- window_share: each window's external share over all its keys (every revision summed).
-- Window rows hold one key each, merged on several partitions, so the share lives here.
CREATE OR REPLACE VIEW window_share AS
SELECT
    window_start, any_value(window_end) AS window_end,
    sum(requests) AS requests,
    coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0) AS external_requests,
    sum(cost) AS cost,
    coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost,
    coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)
        / nullif(sum(requests), 0) AS external_share_requests,
    CAST(coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS DOUBLE)
        / nullif(CAST(sum(cost) AS DOUBLE), 0) AS external_share_cost
FROM windows
GROUP BY window_start;
