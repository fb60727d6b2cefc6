//! The settings help printed by `ingest-server --help`.

/// Every setting, with its default, as printed by `ingest-server --help`.
pub const SETTINGS_HELP: &str = r#"Settings (TOML file given with --config; every key is optional):

  listen = "127.0.0.1:8080"        address to serve HTTP on (port 0 = any free port)  [WAYMARK_LISTEN]

  [clickhouse]
  url = "http://127.0.0.1:8123"    ClickHouse HTTP interface                           [WAYMARK_CLICKHOUSE_URL]
  database = "waymark"             database (created if missing; migrations applied)   [WAYMARK_CLICKHOUSE_DATABASE]
  user = "default"                                                                     [WAYMARK_CLICKHOUSE_USER]
  password = ""                                                                        [WAYMARK_CLICKHOUSE_PASSWORD]
  cluster = "name"                 absent = one server; a cluster of remote_servers: migrations
                                   run ON CLUSTER, tables are Replicated*MergeTree ({shard},
                                   {replica} macros) under Distributed tables sharded by
                                   (site, visitor id)                                  [WAYMARK_CLICKHOUSE_CLUSTER]
  compression = "lz4"              "lz4" or "none": how inserts and answers travel; "none"
                                   saves CPU on both ends for a ClickHouse on the same
                                   host or a fast network                              [WAYMARK_CLICKHOUSE_COMPRESSION]

  [spool]
  dir = ".waymark/spool"           durable on-disk buffer (acknowledged events live here
                                   until ClickHouse confirms them)                     [WAYMARK_SPOOL_DIR]
  max_bytes = "1GiB"               cap; beyond it requests get 503 + Retry-After       [WAYMARK_SPOOL_MAX_BYTES]

  [writer]                         a ClickHouse insert happens when any threshold is hit
  max_rows = 100000                rows per insert                                     [WAYMARK_WRITER_MAX_ROWS]
  max_bytes = "32MiB"              spooled bytes per insert (bounds the writer's memory) [WAYMARK_WRITER_MAX_BYTES]
  max_age = "1s"                   oldest waiting event                                [WAYMARK_WRITER_MAX_AGE]
  max_backoff = "5s"               longest pause between retries while ClickHouse cannot take
                                   rows (down, auth, disk, missing column...): they stay in
                                   the spool and are retried for as long as it takes   [WAYMARK_WRITER_MAX_BACKOFF]
  max_attempts = 3                 refusals of a single row, each while a known-good probe
                                   row went in, before it goes to the quarantine table
                                   (replay: `ingest-server quarantine replay`)         [WAYMARK_WRITER_MAX_ATTEMPTS]

  [edge]                           absent (or no secret) = POST /v1/edge answers 404
  secret = "..."                   HMAC-SHA256 secret shared with the edge worker      [WAYMARK_EDGE_SECRET]
  replay_window = "5m"             accepted clock difference; a signature is accepted once
  max_body = "8MiB"                body limit for one forwarded request

  [dedup]
  capacity = 200000                recent message ids remembered per process (0 = off)

  [http]                           limits on clients
  max_connections = 10000          open connections; one more gets 503 + Retry-After, closed
  body_timeout = "10s"             a request body must arrive within this (else 408)
  request_timeout = "30s"          a request must be answered within this (else 408)
  shutdown_grace = "10s"           at SIGTERM, open requests and streams get this long, then
                                   are cut and the spool is flushed

  [[sites]]                        one per site; write keys map requests to the site
  id = "shop"
  write_keys = ["wk_shop"]
  allowed_origins = ["http://127.0.0.1:8000"]   CORS for browsers sending directly ("*" = any)
  ip = "truncate"                  "truncate" (IPv4 /24, IPv6 /48) or "drop"; the raw IP is never stored
  rate_limit = { events_per_second = 5000, burst = 20000 }
                                   (servers = N: the limit is the site's across N ingest
                                   servers; each enforces 1/N of the rate and the burst)
                                   optional token bucket on events (absent = unlimited: the
                                   spool cap is the server's own overload guard); a request
                                   the bucket cannot cover gets 429 + Retry-After and nothing
                                   is stored; a request larger than burst passes only when
                                   the bucket is full
  send_keys = ["sk_..."]           secret keys of the email platform for POST /v1/email/links and
                                   /v1/email/rewrite (Bearer; at least 16 characters, never a
                                   write key); need [sites.email]
  allowed_query_params = []        query parameters whose values stored URLs keep besides
                                   utm_*, gclid and fbclid (e.g. ["sku", "cat_*"]); every other
                                   value in page_url, page_search, page_referrer and $click.href
                                   becomes REDACTED, and so do values that look like emails or
                                   long tokens even when allowed; mailto:/tel: keep the scheme
  gpc = "drop-ids"                 Sec-GPC: 1 on direct requests: "drop-ids" (ids become the
                                   session-scoped gpc-<sessionId>; identify/alias left out),
                                   "drop-events" or "keep" (the gpc column records the signal)
  retention = "400d"               how long the site's events are kept (absent = until deleted);
                                   removed by the retention check (partitions, or mutations)
  tracking_plan = "plans/shop.json"   a tracking plan (JSON Schemas per event; relative to this
                                   file; ingest-server/plans/segment-ecommerce.json is a
                                   starter): violations are stored in `violations`, or the
                                   event is refused if the plan says on_violation = "reject"

  [[sites.completeness]]           a critical field; events lacking it list it in `missing`
  event = "Order Completed"        a track event's name, or identify, page, screen, group, alias
  field = "properties.revenue"     a path under properties., traits. or context.
  min = 1.0                        the share of events that must carry it (for alerts)

  [sites.identity]                 identifiers from identify traits, and merging people
  merge_on = ["user_id", "email"]  identifiers that make user ids one person (also "phone")
  email_plus = false               fold plus-addressing (ada+news@x.com is ada@x.com)
  email_gmail_dots = false         fold dots in Gmail addresses (a.d.a@gmail.com is ada@...)
  phone_region = "DE"              region of phone numbers without +country (absent = such
                                   numbers are no identifier); numbers are stored as E.164

  [sites.email]                    tracked email links and open pixels (absent = off)
  base_url = "https://shop.example.com/wm"   the first-party base /e/o/.. and /e/c/.. are served
                                   under (the edge worker's prefix, or this server's public URL)
  home_url = "https://shop.example.com/"     where a click with a refused or expired token goes
  keys = [{ id = "k1", secret = "..." }]     signing keys, newest first: the first signs, all
                                   verify (secrets at least 32 characters)
  max_age = "400d"                 how long a tracked link or pixel stays valid

  [query]                          the read API (profiles, event history, audiences)
  cart_abandon_after = "1h"        a cart is abandoned when its last add is older, with no order after
  cache_ttl = "5s"                 in-process cache of profile / event answers ("0s" = off)
  cache_entries = 10000            answers the cache holds at most
  cache_max_bytes = "64MiB"        bytes of answers the cache holds at most
  recent_products = 10             recently viewed products listed in a profile
  identity_refresh = "1s"          how often the in-memory identity index (anonymous id <-> user
                                   id) reads links other servers wrote; "0s" = no index, ids
                                   are resolved in ClickHouse on every request
  identity_max_links = 1000000     links the index holds at most (about 200 bytes each); beyond,
                                   it turns itself off and ids are resolved in ClickHouse
  [query.engagement]               30-day engaged time: below medium = "short", below long = "medium"
  medium = "1m"
  long = "10m"
  [query.rfm]                      RFM scores 1-5 from the site's own quintiles
  refresh = "5m"                   how often the site's quintiles are recomputed (in the background)
  lookback = "8760h"               orders older than this do not count for RFM
  [[query.read_keys]]              one per key; `Authorization: Bearer <key>`
  key = "rk_shop"
  sites = ["shop"]                 the only sites this key can read
  subscribe = false                true: the key may also manage /v1/subscriptions on its sites

  [triggers]                       audience subscriptions pushed to webhooks
  evaluate = false                 true: this server may evaluate and deliver; of several,
                                   the holder of a lease in ClickHouse does, the rest stand by
  tick = "10s"                     how often touched persons and closed windows are evaluated
  lease = "30s"                    how soon a standby takes over from a holder that stopped
                                   (at least 3 ticks)
  max_attempts = 12                attempts per delivery before it is a dead letter
  backoff = "2s"                   wait after the first failure; doubles up to max_backoff
  max_backoff = "10m"
  timeout = "10s"                  one webhook POST at most
  concurrency = 128                webhook POSTs in flight at once
  batch = 1                        deliveries per POST: 1 = the body is one delivery; up to
                                   1000 = {"deliveries": [...]} of one subscription
  max_subscriptions = 1000         per site

  [privacy]                        deleting and exporting a person, retention
  suppress_for = "30d"             how long a deleted person's late events (spool, edge queue,
                                   browser retry queue) are dropped
  retention_check = "24h"          how often old data is removed (sites with retention)
  [[privacy.admin_keys]]           one per key; `Authorization: Bearer <key>` on
  name = "dpo"                     DELETE /v1/persons/{id}, GET /v1/persons/{id}/export and
  key = "ak_..."                   GET /v1/deletions/{job}; at least 16 characters, no other
  sites = ["shop"]                 key's value; the name goes to the audit table

  [quality]                        the data quality report (GET /v1/quality, GET /quality)
  anomaly_factor = 2.0             an event name's hourly volume over this many times, or under
                                   1/this of, the same hour's 7-day average is an anomaly
  anomaly_min_events = 20          hours whose 7-day average is under this are not judged
  flush = "10s"                    how often rejects and dropped duplicates per site and hour
                                   are added to ClickHouse (quality_hourly)
  check_interval = "5m"            how often the report refreshes its Prometheus gauges for
                                   every site; "0s" = never

Sizes accept B, KB, MB, GB, KiB, MiB, GiB (e.g. "64MiB"); durations accept ms, s, m, h, d
(e.g. "5s", "30d"; "1h 30m" too).
"#;
