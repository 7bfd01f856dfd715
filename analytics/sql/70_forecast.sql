-- Inputs of the month-end forecast (analytics/forecast.py, docs/forecast.md), usable on their
-- own: `SELECT * FROM daily_spend WHERE day >= DATE '2026-11-01'`.
-- daily_spend: one row per UTC day x provider_kind x provider x operation with what was paid
-- (every record type: idle GPU time is own cost too) and how many requests were served.
-- A day with no records has no row; the forecast counts such a day as 0 spend.
CREATE OR REPLACE VIEW daily_spend AS
SELECT
    "date" AS day, provider_kind, provider, operation,
    sum(cost) AS cost,
    count(*) FILTER (WHERE record_type = 'request') AS requests
FROM costs
GROUP BY ALL;

-- daily_internal_share: share of requests served by own models per UTC day (idle rows are not
-- requests), next to the configured goal; days without requests are left out.
CREATE OR REPLACE VIEW daily_internal_share AS
SELECT
    day,
    CAST(sum(requests) AS BIGINT) AS requests,
    CAST(coalesce(sum(requests) FILTER (WHERE provider_kind = 'internal'), 0) AS BIGINT)
        AS internal_requests,
    coalesce(sum(requests) FILTER (WHERE provider_kind = 'internal'), 0)
        / sum(requests) AS internal_share,
    {{target_internal_share}} AS target_internal_share
FROM daily_spend
GROUP BY day
HAVING sum(requests) > 0;
