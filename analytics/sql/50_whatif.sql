-- What if external prices change by pct % (e.g. 20 = +20 %)? Per operation: external spend now
-- and after, and the avoided spend of own-model traffic re-priced at the new shadow price.
CREATE OR REPLACE MACRO whatif_external_price(pct) AS TABLE
WITH op AS (
    SELECT operation,
        coalesce(sum(loaded_cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost,
        coalesce(sum(loaded_cost) FILTER (WHERE provider_kind = 'internal'), 0) AS own_cost,
        coalesce(sum(shadow_cost) FILTER (WHERE provider_kind = 'internal'), 0) AS shadow_cost
    FROM cost_per_operation GROUP BY operation
)
SELECT operation,
    CAST(external_cost AS DOUBLE) AS external_cost,
    CAST(external_cost AS DOUBLE) * (1 + pct / 100) AS new_external_cost,
    CAST(shadow_cost - own_cost AS DOUBLE) AS avoided_spend,
    CAST(shadow_cost AS DOUBLE) * (1 + pct / 100) - CAST(own_cost AS DOUBLE) AS new_avoided_spend,
    CAST(external_cost + own_cost AS DOUBLE) AS total_cost,
    CAST(external_cost AS DOUBLE) * (1 + pct / 100) + CAST(own_cost AS DOUBLE) AS new_total_cost
FROM op;

-- What if pct % of each listed operation's external requests move in-house (negative pct: that
-- share of its own requests moves out)? Capacity-aware (docs/planning.md): moved requests take
-- their operation's measured GPU-seconds per request in the hours they were made; they fill
-- idle capacity first (marginal cost = energy), and only an hour whose load would pass the
-- target utilisation of the GPUs observed in it needs whole GPUs added, paid for the whole
-- lake's period. A shortfall the fleet already has is not charged to the move. GPUs freed by
-- moving work out are reported (gpus_spare), not assumed given back.
-- avg_new_total_cost is the naive answer beside it: moved requests at the operation's average
-- fully loaded own cost per request. Money over the lake's period and per month
-- (planning.gpu_hours_per_month / observed hours).
CREATE OR REPLACE MACRO whatif_moves(ops, pcts) AS TABLE
WITH moves AS (
    -- one row per operation (a repeated one adds up), clamped to what exists to move
    SELECT operation, greatest(least(sum(pct), 100), -100) AS pct
    FROM (SELECT unnest(ops) AS operation, CAST(unnest(pcts) AS DOUBLE) AS pct)
    WHERE operation IS NOT NULL AND pct IS NOT NULL
    GROUP BY operation
),
op AS (
    SELECT c.*, coalesce(m.pct, 0) AS pct,
        CASE WHEN coalesce(m.pct, 0) >= 0 THEN c.external_requests * coalesce(m.pct, 0) / 100
             ELSE c.own_requests * m.pct / 100 END AS moved
    FROM capacity_by_operation c LEFT JOIN moves m USING (operation)
),
hourly_moved AS (
    SELECT r.hour, sum(
        CASE WHEN op.pct >= 0 THEN r.external_requests ELSE r.own_requests END
        * op.pct / 100 * coalesce(op.gpu_seconds_per_request, 0)) AS moved_gpu_seconds
    FROM hourly_requests r JOIN op USING (operation)
    WHERE op.pct <> 0
    GROUP BY r.hour
),
fleet_size AS (SELECT max(gpus) AS gpus FROM hourly_load),
hours AS (
    -- an hour with moved load but no GPU samples counts the fleet for the whole hour
    SELECT coalesce(l.gpus, f.gpus) AS gpus,
        coalesce(l.gpu_seconds_observed, 3600.0 * f.gpus) AS gpu_seconds_observed,
        coalesce(l.busy_gpu_seconds, 0) AS busy,
        coalesce(l.busy_gpu_seconds, 0) + coalesce(h.moved_gpu_seconds, 0) AS new_load
    FROM hourly_load l FULL JOIN hourly_moved h USING (hour) CROSS JOIN fleet_size f
),
need AS (
    -- GPUs short in the worst hour, after the move and before it (a shortfall the fleet
    -- already has is not the move's)
    SELECT
        coalesce(max(ceil(new_load / usable - gpus)), 0) AS after,
        coalesce(max(ceil(busy / usable - gpus)), 0) AS before
    FROM (SELECT *, {{planning_target_utilization}} * gpu_seconds_observed / gpus AS usable
          FROM hours WHERE gpus > 0)
),
span AS (
    -- the lake's period (money below is summed over it): the GPU-observed hours, or the
    -- span of the cost records when traffic ran outside them
    SELECT greatest(
        (SELECT coalesce(sum(gpu_seconds_observed / gpus), 0) FROM hourly_load WHERE gpus > 0),
        coalesce(epoch(max("timestamp")) - epoch(min("timestamp")), 0),
        {{gpu_bucket_seconds}}) / 3600 AS period_hours
    FROM costs
),
fleet AS (
    SELECT
        sum(greatest(moved, 0)) AS moved_in, sum(greatest(-moved, 0)) AS moved_out,
        sum(external_requests + own_requests) AS requests,
        sum(own_requests) AS own_requests,
        sum(greatest(moved, 0) * coalesce(external_cost_per_request, 0)) AS external_saved,
        sum(greatest(-moved, 0) * coalesce(external_cost_per_request,
                                           own_average_cost_per_request, 0)) AS external_added,
        sum(moved * coalesce(own_marginal_cost_per_request, 0)) AS energy_delta,
        sum(moved * coalesce(own_average_cost_per_request, external_cost_per_request, 0))
            AS average_delta,
        bool_or(moved > 0 AND gpu_seconds_per_request IS NULL) AS unmeasured
    FROM op
),
total AS (SELECT coalesce(CAST(sum(cost) AS DOUBLE), 0) AS total_cost FROM costs),
answer AS (
    SELECT
        fleet.*, span.period_hours,
        CASE WHEN fleet.moved_in > 0
             THEN greatest(need.after - greatest(need.before, 0), 0) ELSE 0 END AS gpus_to_add,
        greatest(-need.after, 0) AS gpus_spare,
        total.total_cost, p.idle_power_w, p.dollars_per_joule
    FROM fleet CROSS JOIN need CROSS JOIN span CROSS JOIN total CROSS JOIN gpu_power_model p
),
priced AS (
    SELECT *, gpus_to_add * period_hours
        * ({{gpu_dollars_per_gpu_hour}} + idle_power_w * dollars_per_joule * 3600)
        AS added_gpu_cost
    FROM answer
)
SELECT
    moved_in AS requests_moved_in, moved_out AS requests_moved_out,
    CAST(gpus_to_add AS BIGINT) AS gpus_to_add, CAST(gpus_spare AS BIGINT) AS gpus_spare,
    period_hours,
    total_cost,
    total_cost - external_saved + external_added + energy_delta + added_gpu_cost
        AS new_total_cost,
    external_saved + greatest(-energy_delta, 0) - external_added
        - greatest(energy_delta, 0) - added_gpu_cost AS saving,
    total_cost - external_saved + external_added + average_delta AS avg_new_total_cost,
    own_requests / nullif(requests, 0) AS internal_share_requests,
    (own_requests + moved_in - moved_out) / nullif(requests, 0) AS new_internal_share_requests,
    (external_added + energy_delta + added_gpu_cost - external_saved)
        * {{planning_gpu_hours_per_month}} / nullif(period_hours, 0) AS monthly_cost_delta,
    (external_added + average_delta - external_saved)
        * {{planning_gpu_hours_per_month}} / nullif(period_hours, 0) AS avg_monthly_cost_delta,
    unmeasured AS own_model_unmeasured
FROM priced;

-- One operation's move: whatif_shift('voice', 30) moves 30 % of voice's external requests.
CREATE OR REPLACE MACRO whatif_shift(target_op, pct) AS TABLE
SELECT * FROM whatif_moves([target_op], [pct]);

-- plan_to_target(0.5): the greedy plan in SQL. Needed requests = target x requests - own
-- requests, filled from movable operations with a measured own model, economic ones first
-- (own cost on new GPUs below the external price), by saving per busy GPU-second; each row
-- is one operation's move with the whole plan's what-if beside it. No rows: nothing to move
-- (target met, or nothing movable). `costpipe plan` also prices other candidates and keeps the
-- cheapest (docs/planning.md).
CREATE OR REPLACE MACRO plan_to_target(target) AS TABLE
WITH totals AS (
    SELECT sum(external_requests + own_requests) AS requests, sum(own_requests) AS own
    FROM capacity_by_operation
),
candidates AS (
    SELECT operation, external_requests, economic, saving_per_gpu_second
    FROM move_ranking
    WHERE movable AND gpu_seconds_per_request IS NOT NULL AND external_requests > 0
),
ordered AS (
    SELECT c.*, greatest(t.requests * target - t.own, 0) AS needed,
        coalesce(sum(external_requests) OVER (
            ORDER BY economic DESC, saving_per_gpu_second DESC, operation
            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM candidates c CROSS JOIN totals t
),
moves AS (
    SELECT operation, economic,
        CAST(least(greatest(needed - before, 0), external_requests) AS DOUBLE)
            AS requests_moved,
        100.0 * least(greatest(needed - before, 0), external_requests) / external_requests
            AS pct
    FROM ordered
    WHERE needed - before > 0
)
SELECT m.operation, m.pct, m.requests_moved, m.economic, w.*
FROM moves m
CROSS JOIN whatif_moves(
    coalesce((SELECT list(operation ORDER BY operation) FROM moves), []::VARCHAR[]),
    coalesce((SELECT list(pct ORDER BY operation) FROM moves), []::DOUBLE[])) w;
