"""`costpipe dashboard`: the live web dashboard (aiohttp), over the lake views and the topics.

Why its own package: it is the one part that serves HTTP to people. It reads history through
`costpipe.analytics` (DuckDB, the views in analytics/sql/, read-only), live windows and alerts
from Kafka with its own consumer group, and draws the charts of `costpipe.analytics.charts`
with the Vega JavaScript served from the installed package (no CDN: it works offline).
"""
