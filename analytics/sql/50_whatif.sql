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

-- What if pct % of `target_op`'s external requests move in-house (negative pct: the other way)?
-- Moved requests are costed at the operation's current fully loaded own cost per request (or
-- its external cost per request when moving out). Other operations are unchanged.
CREATE OR REPLACE MACRO whatif_shift(target_op, pct) AS TABLE
WITH op AS (
    SELECT operation,
        coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0) AS ext_requests,
        coalesce(sum(requests) FILTER (WHERE provider_kind = 'internal'), 0) AS own_requests,
        coalesce(CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'external') AS DOUBLE), 0)
            AS ext_cost,
        coalesce(CAST(sum(loaded_cost) FILTER (WHERE provider_kind = 'internal') AS DOUBLE), 0)
            AS own_cost
    FROM cost_per_operation GROUP BY operation
),
moved AS (
    SELECT *,
        CASE WHEN operation = target_op THEN
            CASE WHEN pct >= 0 THEN ext_requests * pct / 100 ELSE own_requests * pct / 100 END
        ELSE 0 END AS moved_requests,
        ext_cost / nullif(ext_requests, 0) AS ext_per_request,
        own_cost / nullif(own_requests, 0) AS own_per_request
    FROM op
)
SELECT operation, moved_requests,
    ext_requests / nullif(ext_requests + own_requests, 0) AS external_share_requests,
    (ext_requests - moved_requests) / nullif(ext_requests + own_requests, 0)
        AS new_external_share_requests,
    ext_cost + own_cost AS total_cost,
    ext_cost + own_cost
        - moved_requests * coalesce(ext_per_request, 0)
        + moved_requests * coalesce(own_per_request, ext_per_request, 0) AS new_total_cost
FROM moved;
