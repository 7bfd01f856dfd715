-- Capacity model of the own GPU fleet, from measured data (docs/planning.md).
-- own_gpu_seconds: busy GPU-seconds of each own-model request. The allocator gives a request
-- (bucket busy share) x (its token weight share) of its GPU bucket's cost, so its cost over
-- the bucket's whole GPU cost (requests + idle line) times the bucket length is its busy time.
CREATE OR REPLACE VIEW own_gpu_seconds AS
WITH share AS (
    -- a MIG instance (or the parent's unpartitioned rest) is gpu_fraction of a physical GPU
    SELECT gpu_uuid, coalesce(any_value(gpu_fraction), 1.0) AS fraction
    FROM gpu_samples GROUP BY gpu_uuid
),
bucket AS (
    SELECT gpu_uuid, bucket_start, sum(cost) AS gpu_cost
    FROM costs
    WHERE provider_kind = 'internal' AND gpu_uuid IS NOT NULL AND bucket_start IS NOT NULL
    GROUP BY ALL
)
SELECT c.timestamp, date_trunc('hour', c.timestamp) AS hour, c.operation, c.provider, c.model,
       c.gpu_uuid, c.input_tokens + c.output_tokens AS tokens,
       CAST(c.cost AS DOUBLE) / nullif(CAST(b.gpu_cost AS DOUBLE), 0)
           * {{gpu_bucket_seconds}} * coalesce(share.fraction, 1.0) AS gpu_seconds
FROM costs c
JOIN bucket b USING (gpu_uuid, bucket_start)
LEFT JOIN share USING (gpu_uuid)
WHERE c.provider_kind = 'internal' AND c.record_type = 'request';

-- gpu_power_model: power = idle + busy x utilisation, fitted over every GPU sample; the energy
-- price per joule includes the PUE. Marginal cost of a busy GPU-second = busy_power_w x $/J.
CREATE OR REPLACE VIEW gpu_power_model AS
SELECT
    count(DISTINCT gpu_uuid) AS gpus,
    coalesce(regr_intercept(power_w, utilization_pct), avg(power_w), 0) AS idle_power_w,
    greatest(coalesce(regr_slope(power_w, utilization_pct) * 100, 0), 0) AS busy_power_w,
    {{gpu_dollars_per_kwh}} * {{gpu_pue}} / 3600000.0 AS dollars_per_joule
FROM gpu_samples;

-- hourly_load: per UTC hour, the physical GPUs that reported (MIG instances by their
-- gpu_fraction), the GPU-seconds they were observed for (a partial hour counts only its
-- observed seconds) and the busy GPU-seconds own requests took (own_gpu_seconds, physical).
CREATE OR REPLACE VIEW hourly_load AS
WITH per_gpu AS (
    SELECT date_trunc('hour', timestamp) AS hour, gpu_uuid,
           coalesce(any_value(gpu_fraction), 1.0) AS fraction, sum(interval_s) AS seconds
    FROM gpu_samples GROUP BY 1, 2
),
cap AS (
    SELECT hour, sum(fraction) AS gpus, sum(seconds * fraction) AS gpu_seconds_observed
    FROM per_gpu GROUP BY 1
),
busy AS (SELECT hour, sum(gpu_seconds) AS busy_gpu_seconds FROM own_gpu_seconds GROUP BY 1)
SELECT cap.hour, cap.gpus, cap.gpu_seconds_observed,
       coalesce(busy.busy_gpu_seconds, 0) AS busy_gpu_seconds
FROM cap LEFT JOIN busy USING (hour);

CREATE OR REPLACE VIEW hourly_requests AS
SELECT date_trunc('hour', timestamp) AS hour, operation,
       count(*) FILTER (WHERE provider_kind = 'external') AS external_requests,
       count(*) FILTER (WHERE provider_kind = 'internal') AS own_requests
FROM costs WHERE record_type = 'request'
GROUP BY ALL;

-- capacity_by_operation: what moving one request of an operation in-house (or out) costs.
-- own_marginal: energy of its busy time only (idle capacity is already paid for);
-- own_on_new_capacity: on a GPU added for it, run at the target utilisation (its GPU-hour and
-- idle power spread over the busy time it can sell) plus the energy.
CREATE OR REPLACE VIEW capacity_by_operation AS
WITH req AS (
    SELECT operation,
        count(*) FILTER (WHERE provider_kind = 'external') AS external_requests,
        count(*) FILTER (WHERE provider_kind = 'internal') AS own_requests,
        coalesce(CAST(sum(cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE), 0)
            AS external_cost,
        count(*) FILTER (WHERE provider_kind = 'external' AND pricing_status = 'priced')
            AS external_priced
    FROM costs WHERE record_type = 'request'
    GROUP BY operation
),
own AS (
    -- only requests that got GPU time (gpu_unattributed ones have no bucket cost to share)
    SELECT operation, count(gpu_seconds) AS n, sum(gpu_seconds) AS gpu_seconds,
           sum(tokens) FILTER (WHERE gpu_seconds IS NOT NULL) AS tokens
    FROM own_gpu_seconds GROUP BY operation
),
loaded AS (
    SELECT operation, CAST(sum(loaded_cost) AS DOUBLE) AS own_loaded_cost
    FROM cost_per_operation WHERE provider_kind = 'internal' GROUP BY operation
)
SELECT
    req.operation,
    list_contains({{planning_movable_operations}}, req.operation) AS movable,
    req.external_requests, req.own_requests, req.external_cost,
    req.external_cost / nullif(req.external_priced, 0) AS external_cost_per_request,
    own.gpu_seconds / nullif(own.n, 0) AS gpu_seconds_per_request,
    own.gpu_seconds * 1000 / nullif(own.tokens, 0) AS gpu_seconds_per_1k_tokens,
    loaded.own_loaded_cost / nullif(req.own_requests, 0) AS own_average_cost_per_request,
    own.gpu_seconds / nullif(own.n, 0) * p.busy_power_w * p.dollars_per_joule
        AS own_marginal_cost_per_request,
    own.gpu_seconds / nullif(own.n, 0) * (
        ({{gpu_dollars_per_gpu_hour}} / 3600.0 + p.idle_power_w * p.dollars_per_joule)
            / {{planning_target_utilization}}
        + p.busy_power_w * p.dollars_per_joule) AS own_on_new_capacity_cost_per_request
FROM req
LEFT JOIN own USING (operation)
LEFT JOIN loaded USING (operation)
CROSS JOIN gpu_power_model p;

-- move_ranking: what the plan orders moves by. economic = own cost on new GPUs at or below
-- the external price; saving = external price - own marginal cost, per request and per busy
-- GPU-second.
CREATE OR REPLACE VIEW move_ranking AS
SELECT *,
    own_on_new_capacity_cost_per_request <= external_cost_per_request AS economic,
    external_cost_per_request - own_marginal_cost_per_request AS saving_per_request,
    (external_cost_per_request - own_marginal_cost_per_request)
        / gpu_seconds_per_request AS saving_per_gpu_second
FROM capacity_by_operation;
