-- What own-model traffic would have cost at the reference external model's price (shadow),
-- minus what it cost us fully loaded (direct GPU cost + allocated idle), per day x operation.
CREATE OR REPLACE VIEW avoided_spend AS
WITH own AS (
    SELECT "date" AS day, operation,
           count(*) FILTER (WHERE record_type = 'request') AS requests,
           coalesce(sum(shadow_cost), 0) AS shadow_cost,
           sum(cost) AS own_direct_cost
    FROM costs
    WHERE provider_kind = 'internal' AND record_type <> 'idle'
    GROUP BY ALL
),
idle AS (SELECT day, operation, sum(idle_allocated) AS idle_allocated
         FROM idle_allocation GROUP BY ALL)
SELECT
    own.day, own.operation, own.requests, own.shadow_cost, own.own_direct_cost,
    coalesce(idle.idle_allocated, 0) AS idle_allocated,
    own.own_direct_cost + coalesce(idle.idle_allocated, 0) AS own_loaded_cost,
    own.shadow_cost - own.own_direct_cost - coalesce(idle.idle_allocated, 0) AS avoided_spend
FROM own
LEFT JOIN idle USING (day, operation);
