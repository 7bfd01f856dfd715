-- Price-shift exposure: if one external provider raises its prices by pct % (e.g. 10 = +10 %),
-- how much does our bill move, and how much more is keeping the own models worth?
-- Per external provider over the last `days` UTC days of the lake (ending at its last day):
--   external_cost        what we paid that provider (the recorded, contract-priced cost)
--   external_delta       external_cost x pct / 100: the bill moves by this
--   shadow_cost          own-model traffic priced at this provider's reference models
--   avoided_spend_delta  shadow_cost x pct / 100: avoided spend grows by this
-- Own models are shadow-priced at one provider, providers.shadow_provider in the settings (the
-- macro's default; `costpipe exposure` passes it too).
-- Deltas are exact: DECIMAL(38, 20) (pct with up to 6 decimals).
CREATE OR REPLACE MACRO price_exposure(pct, days := 30, shadow_provider := {{shadow_provider}}) AS TABLE
WITH bounds AS (
    SELECT last_day - CAST(days AS INTEGER) + 1 AS first_day, last_day
    FROM (SELECT max("date") AS last_day FROM costs)
),
recent AS (
    SELECT c.provider, c.provider_kind, c.record_type, c.cost, c.shadow_cost
    FROM costs c, bounds b
    WHERE c."date" BETWEEN b.first_day AND b.last_day
),
ext AS (
    SELECT provider,
           count(*) FILTER (WHERE record_type = 'request') AS requests,
           sum(cost) AS external_cost
    FROM recent WHERE provider_kind = 'external'
    GROUP BY provider
),
own AS (
    SELECT shadow_provider AS provider,
           count(*) FILTER (WHERE record_type = 'request') AS own_requests,
           coalesce(sum(shadow_cost), 0) AS shadow_cost
    FROM recent WHERE provider_kind = 'internal' AND record_type <> 'idle'
    HAVING count(*) > 0
),
factor AS (SELECT CAST(pct / 100 AS DECIMAL(18, 8)) AS f)
SELECT
    provider, b.first_day, b.last_day,
    coalesce(ext.requests, 0) AS requests,
    CAST(coalesce(ext.external_cost, 0) AS DECIMAL(38, 12)) AS external_cost,
    CAST(coalesce(ext.external_cost, 0) * factor.f AS DECIMAL(38, 20)) AS external_delta,
    coalesce(own.own_requests, 0) AS own_requests,
    CAST(coalesce(own.shadow_cost, 0) AS DECIMAL(38, 12)) AS shadow_cost,
    CAST(coalesce(own.shadow_cost, 0) * factor.f AS DECIMAL(38, 20)) AS avoided_spend_delta
FROM ext
FULL OUTER JOIN own USING (provider)
CROSS JOIN bounds b
CROSS JOIN factor;
