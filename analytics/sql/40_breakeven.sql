-- Break-even GPU utilisation per operation.
-- Own cost per request scales with 1 / utilisation (a GPU-hour costs the same busy or idle;
-- at utilisation u it serves u x capacity requests). With measured utilisation U, fully loaded
-- own cost L and shadow (external) price S for the same requests:
--     own_cost_per_request(u) = (L / requests) * U / u
--     breakeven_utilization   = U * L / S        (own beats external above it)
-- A value > 1 means no utilisation makes this operation cheaper in-house at current prices.
-- U is the mean utilisation of the GPUs that served the operation (fleet mean if unknown).
CREATE OR REPLACE VIEW breakeven AS
WITH op_gpus AS (
    SELECT DISTINCT operation, gpu_uuid FROM costs
    WHERE provider_kind = 'internal' AND record_type = 'request' AND gpu_uuid IS NOT NULL
),
gpu_util AS (
    SELECT gpu_uuid, avg(utilization_pct) / 100 AS util FROM gpu_samples GROUP BY gpu_uuid
),
fleet AS (SELECT avg(utilization_pct) / 100 AS util FROM gpu_samples),
op_util AS (
    SELECT operation, avg(util) AS util FROM op_gpus JOIN gpu_util USING (gpu_uuid)
    GROUP BY operation
),
own AS (
    SELECT operation, sum(requests) AS requests, sum(loaded_cost) AS loaded_cost,
           sum(shadow_cost) AS shadow_cost
    FROM cost_per_operation WHERE provider_kind = 'internal' AND requests > 0
    GROUP BY operation
)
SELECT
    own.operation, own.requests,
    CAST(own.loaded_cost AS DOUBLE) / own.requests AS own_cost_per_request,
    CAST(own.shadow_cost AS DOUBLE) / own.requests AS external_cost_per_request,
    coalesce(op_util.util, fleet.util) AS measured_utilization,
    coalesce(op_util.util, fleet.util) * CAST(own.loaded_cost AS DOUBLE)
        / nullif(CAST(own.shadow_cost AS DOUBLE), 0) AS breakeven_utilization,
    own.loaded_cost < own.shadow_cost AS own_cheaper_now
FROM own
LEFT JOIN op_util USING (operation)
CROSS JOIN fleet;
