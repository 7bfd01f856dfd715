-- Own-model cost per day x operation x provider x model, with the idle GPU cost of a day
-- allocated to that day's own-model (operation, provider, model)
-- pro rata to their direct (busy-time) cost. A day with idle cost but no own-model traffic
-- keeps it on an '(unallocated idle)' line so totals still reconcile. The allocated amounts are
-- rounded to the pico-dollar; sum(idle_allocated) can differ from sum(idle_cost) by < 1e-9 $
-- per line.
CREATE OR REPLACE VIEW idle_allocation AS
-- (Reads the rollups directly, not cost_daily: only own-model rows and no team to decode.)
WITH daily AS MATERIALIZED (
    SELECT "date" AS day, operation, provider, model, record_type,
           sum(requests)::BIGINT AS requests, sum(cost) AS cost,
           coalesce(sum(shadow_cost), 0) AS shadow_cost
    FROM cost_rollup
    WHERE provider_kind = 'internal'
    GROUP BY ALL
),
own AS (
    SELECT day, operation, provider, model, sum(requests) AS requests,
           sum(cost) AS direct_cost, sum(shadow_cost) AS shadow_cost
    FROM daily WHERE record_type <> 'idle' GROUP BY ALL
),
idle AS (SELECT day, sum(cost) AS idle_cost FROM daily WHERE record_type = 'idle' GROUP BY ALL),
day_total AS (SELECT day, sum(direct_cost) AS day_cost FROM own GROUP BY day)
SELECT
    own.day, own.operation, own.provider, own.model, own.requests, own.direct_cost,
    own.shadow_cost,
    CAST(coalesce(
        CAST(idle.idle_cost AS DOUBLE) * CAST(own.direct_cost AS DOUBLE)
            / nullif(CAST(day_total.day_cost AS DOUBLE), 0),
        0) AS DECIMAL(38, 12)) AS idle_allocated
FROM own
JOIN day_total USING (day)
LEFT JOIN idle USING (day)
UNION ALL
SELECT idle.day, '(unallocated idle)', '(own GPUs)', '', 0, 0, 0, idle.idle_cost
FROM idle
LEFT JOIN day_total USING (day)
WHERE coalesce(day_total.day_cost, 0) = 0;

-- Per operation x provider_kind x provider x model: cost per request and per 1k tokens,
-- latency percentiles. Own models are fully loaded: direct GPU cost + allocated idle cost.
-- Latency percentiles come from the mergeable sketch in latency_rollup: quantile_cont's
-- interpolation between the two ranks around q x (n - 1), each rank's value read as its
-- bucket's midpoint (within 1 % of that value).
CREATE OR REPLACE VIEW cost_per_operation AS
WITH sums AS (
    SELECT
        operation, provider_kind, provider, model,
        sum(requests)::BIGINT AS requests,
        sum(input_tokens + output_tokens) AS tokens,
        sum(cost) AS direct_cost,
        coalesce(sum(shadow_cost), 0) AS shadow_cost
    FROM cost_rollup
    WHERE record_type <> 'idle'
    GROUP BY ALL
),
sketch AS (
    SELECT operation, provider_kind, provider, model, bucket, sum(n) AS n
    FROM latency_rollup GROUP BY ALL
),
ranked AS (
    SELECT *,
        sum(n) OVER (PARTITION BY operation, provider_kind, provider, model ORDER BY bucket)
            AS seen,
        sum(n) OVER (PARTITION BY operation, provider_kind, provider, model) - 1 AS last_rank
    FROM sketch
),
-- as quantile_cont: the values at the ranks either side of q x (n - 1), interpolated
picked AS (
    SELECT operation, provider_kind, provider, model, q, any_value(q * last_rank) AS pos,
        min(bucket) FILTER (WHERE seen > floor(q * last_rank)) AS below,
        min(bucket) FILTER (WHERE seen > ceil(q * last_rank)) AS above
    FROM ranked CROSS JOIN (SELECT unnest([0.5, 0.95, 0.99]) AS q)
    GROUP BY ALL
),
quantiles AS (
    SELECT operation, provider_kind, provider, model,
        list(latency_bucket_value(below) + (pos - floor(pos))
             * (latency_bucket_value(above) - latency_bucket_value(below)) ORDER BY q)
            AS latency_q
    FROM picked GROUP BY ALL
),
base AS (
    SELECT s.*, q.latency_q
    FROM sums s
    LEFT JOIN quantiles q USING (operation, provider_kind, provider, model)
),
idle AS (
    SELECT operation, provider, model, sum(idle_allocated) AS idle_allocated
    FROM idle_allocation GROUP BY ALL
),
joined AS (
    SELECT
        coalesce(b.operation, i.operation) AS operation,
        coalesce(b.provider_kind, 'internal') AS provider_kind,
        coalesce(b.provider, i.provider) AS provider,
        coalesce(b.model, i.model) AS model,
        coalesce(b.requests, 0) AS requests,
        coalesce(b.tokens, 0) AS tokens,
        coalesce(b.direct_cost, 0) AS direct_cost,
        coalesce(i.idle_allocated, 0) AS idle_allocated,
        coalesce(b.shadow_cost, 0) AS shadow_cost,
        b.latency_q[1] AS latency_p50_ms, b.latency_q[2] AS latency_p95_ms,
        b.latency_q[3] AS latency_p99_ms
    FROM base b
    FULL OUTER JOIN idle i
        ON b.provider_kind = 'internal' AND b.operation = i.operation
        AND b.provider = i.provider AND b.model = i.model
)
SELECT
    operation, provider_kind, provider, model, requests, tokens,
    direct_cost, idle_allocated,
    direct_cost + idle_allocated AS loaded_cost,
    CAST(direct_cost + idle_allocated AS DOUBLE) / nullif(requests, 0) AS cost_per_request,
    CAST(direct_cost + idle_allocated AS DOUBLE) * 1000 / nullif(tokens, 0) AS cost_per_1k_tokens,
    shadow_cost,
    CAST(shadow_cost AS DOUBLE) / nullif(requests, 0) AS shadow_cost_per_request,
    latency_p50_ms, latency_p95_ms, latency_p99_ms
FROM joined;
