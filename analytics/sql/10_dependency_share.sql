-- External share of requests, tokens (input + output) and cost, by day x operation x team,
-- and progress toward the configured internal-share target (1.0 = target reached).
-- Idle rows carry no team or request; they are excluded here (see cost_per_operation).
-- cost_daily: the lake's rollups per day; the day-level views derive from it.
CREATE OR REPLACE VIEW cost_daily AS
SELECT
    "date" AS day, operation, coalesce(team, '(none)') AS team, provider_kind, provider, model,
    record_type,
    sum(requests)::BIGINT AS requests,
    sum(input_tokens + output_tokens) AS tokens,
    sum(cost) AS cost,
    coalesce(sum(shadow_cost), 0) AS shadow_cost
FROM cost_rollup
GROUP BY ALL;

CREATE OR REPLACE VIEW dependency_share AS
WITH base AS (
    SELECT
        day, operation, team,
        sum(requests) AS requests,
        coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)
            AS external_requests,
        sum(tokens) AS tokens,
        coalesce(sum(tokens) FILTER (WHERE provider_kind = 'external'), 0) AS external_tokens,
        sum(cost) AS cost,
        coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost
    FROM cost_daily
    WHERE record_type <> 'idle'
    GROUP BY ALL
)
SELECT
    *,
    external_requests / nullif(requests, 0) AS external_share_requests,
    external_tokens / nullif(tokens, 0) AS external_share_tokens,
    CAST(external_cost AS DOUBLE) / nullif(CAST(cost AS DOUBLE), 0) AS external_share_cost,
    {{target_internal_share}} AS target_internal_share,
    (1 - external_requests / nullif(requests, 0)) / nullif({{target_internal_share}}, 0)
        AS target_progress
FROM base;
