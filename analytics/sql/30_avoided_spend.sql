-- What own-model traffic would have cost at the reference external model's price (shadow),
-- minus what it cost us fully loaded (direct GPU cost + allocated idle), per day x operation.
CREATE OR REPLACE VIEW avoided_spend AS
SELECT
    day, operation, sum(requests) AS requests, sum(shadow_cost) AS shadow_cost,
    sum(direct_cost) AS own_direct_cost, sum(idle_allocated) AS idle_allocated,
    sum(direct_cost) + sum(idle_allocated) AS own_loaded_cost,
    sum(shadow_cost) - sum(direct_cost) - sum(idle_allocated) AS avoided_spend
FROM idle_allocation
GROUP BY ALL;
