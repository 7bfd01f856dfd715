-- The dashboard's figures (costpipe dashboard, docs/dashboard.md), as macros over the same
-- views, so every number on the page is one SQL statement anyone can run. Filter arguments:
-- from_day, to_day (DATE, inclusive; NULL = open), team, app, operation, provider (NULL = all).
-- A filter keeps the cost rows that match it, as a WHERE would: idle rows have no team or app,
-- so a team or app filter leaves idle cost out; an operation filter keeps '(idle)' only when
-- asked for it. Unfiltered, dashboard_totals equals analytics.summary() and the sums of the
-- dependency_share and avoided_spend views.
-- dashboard_costs: the matching rows of cost_rollup (hourly/daily sums from the lake's rollups
-- plus the raw tail), so a filtered figure reads a few thousand rows, not every cost record.
CREATE OR REPLACE MACRO dashboard_costs(from_day, to_day, f_team, f_app, f_operation,
                                         f_provider) AS TABLE
SELECT * FROM cost_rollup
WHERE "date" >= coalesce(from_day, DATE '0001-01-01')
  AND "date" <= coalesce(to_day, DATE '9999-12-31')
  AND (f_team IS NULL OR coalesce(team, '(none)') = f_team)
  AND (f_app IS NULL OR coalesce(app, '(none)') = f_app)
  AND (f_operation IS NULL OR operation = f_operation)
  AND (f_provider IS NULL OR provider = f_provider);

-- Headline numbers: requests, costs (USD), internal shares of requests / tokens / cost (idle
-- rows excluded from the shares, as in dependency_share), progress to the target, avoided
-- spend (shadow price of own-model traffic minus its fully loaded cost, idle included).
CREATE OR REPLACE MACRO dashboard_totals(from_day, to_day, f_team, f_app, f_operation,
                                          f_provider) AS TABLE
WITH c AS (
    SELECT * FROM dashboard_costs(from_day, to_day, f_team, f_app, f_operation, f_provider)
),
t AS (
    SELECT
        coalesce(sum(requests), 0)::BIGINT AS requests,
        coalesce(sum(cost), 0) AS total_cost,
        coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS external_cost,
        coalesce(sum(cost) FILTER (WHERE provider_kind = 'internal'
                                   AND record_type <> 'idle'), 0) AS own_direct_cost,
        coalesce(sum(cost) FILTER (WHERE record_type = 'idle'), 0) AS idle_cost,
        coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)::BIGINT
            AS external_requests,
        sum(input_tokens + output_tokens) FILTER (WHERE record_type <> 'idle') AS tokens,
        coalesce(sum(input_tokens + output_tokens) FILTER (
            WHERE record_type <> 'idle' AND provider_kind = 'external'), 0) AS external_tokens,
        sum(cost) FILTER (WHERE record_type <> 'idle') AS share_cost,
        coalesce(sum(shadow_cost) FILTER (WHERE provider_kind = 'internal'), 0) AS shadow_cost,
        coalesce(sum(cost) FILTER (WHERE provider_kind = 'internal'), 0) AS own_loaded_cost,
        min("date") AS first_day, max("date") AS last_day
    FROM c
)
SELECT
    requests, total_cost, external_cost, own_direct_cost, idle_cost,
    own_direct_cost + idle_cost AS own_cost,
    shadow_cost - own_loaded_cost AS avoided_spend,
    1 - external_requests / nullif(requests, 0) AS internal_share_requests,
    1 - external_tokens / nullif(tokens, 0) AS internal_share_tokens,
    1 - CAST(external_cost AS DOUBLE) / nullif(CAST(share_cost AS DOUBLE), 0)
        AS internal_share_cost,
    {{target_internal_share}} AS target_internal_share,
    (1 - external_requests / nullif(requests, 0)) / nullif({{target_internal_share}}, 0)
        AS target_progress,
    first_day, last_day
FROM t;

-- Internal share per day (requests, tokens, cost) against the target, as dependency_share.
CREATE OR REPLACE MACRO dashboard_daily_share(from_day, to_day, f_team, f_app, f_operation,
                                               f_provider) AS TABLE
SELECT
    "date" AS day,
    sum(requests)::BIGINT AS requests,
    1 - coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)
        / nullif(sum(requests), 0) AS internal_share_requests,
    1 - coalesce(sum(input_tokens + output_tokens) FILTER (WHERE provider_kind = 'external'), 0)
        / nullif(sum(input_tokens + output_tokens), 0) AS internal_share_tokens,
    1 - CAST(coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS DOUBLE)
        / nullif(CAST(sum(cost) AS DOUBLE), 0) AS internal_share_cost,
    {{target_internal_share}} AS target_internal_share
FROM dashboard_costs(from_day, to_day, f_team, f_app, f_operation, f_provider)
WHERE record_type <> 'idle'
GROUP BY ALL;

-- Each closed window's internal share of requests, tokens and cost over all its keys (every
-- revision summed; window rows carry no team or app, so only time, operation and provider
-- filter them). The live feed computes the same from the windows topic.
CREATE OR REPLACE MACRO dashboard_window_share(from_day, to_day, f_operation, f_provider)
AS TABLE
SELECT
    window_start, max(window_end) AS window_end,
    sum(requests) AS requests,
    sum(input_tokens + output_tokens) AS tokens,
    sum(cost) AS cost,
    1 - coalesce(sum(requests) FILTER (WHERE provider_kind = 'external'), 0)
        / nullif(sum(requests), 0) AS internal_share_requests,
    1 - coalesce(sum(input_tokens + output_tokens) FILTER (WHERE provider_kind = 'external'), 0)
        / nullif(sum(input_tokens + output_tokens), 0) AS internal_share_tokens,
    1 - CAST(coalesce(sum(cost) FILTER (WHERE provider_kind = 'external'), 0) AS DOUBLE)
        / nullif(CAST(sum(cost) AS DOUBLE), 0) AS internal_share_cost
FROM windows
WHERE CAST(window_start AS DATE) >= coalesce(from_day, DATE '0001-01-01')
  AND CAST(window_start AS DATE) <= coalesce(to_day, DATE '9999-12-31')
  AND (f_operation IS NULL OR operation = f_operation)
  AND (f_provider IS NULL OR provider = f_provider)
GROUP BY window_start;
