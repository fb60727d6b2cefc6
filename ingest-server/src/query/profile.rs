//! `GET /v1/profiles/{id}?site=`: who this person is and what they recently did.
//!
//! Identity is resolved first (by the in-memory index of [`super::identity`], else
//! [`resolve_in_clickhouse`]): an anonymous id linked to a user becomes that user
//! (the latest link wins when a device was shared), and the user's profile covers every anonymous
//! id ever linked to it, so what a visitor did before identifying counts for the user. The figures
//! then come from the pre-aggregated tables of [`crate::store::schema::query`], read in four concurrent queries
//! keyed by `(site, visitor_id)`: a few aggregate rows per visitor, whatever the history's size.
//!
//! Windows: "7 days" and "30 days" are whole days (the ClickHouse server's time zone), today
//! included. RFM scores are 1 to 5 against the site's quintiles of its customers (people with an
//! order in the RFM lookback); recency is scored on its negation so 5 is always best.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sql::{int, lit, lit_list};
use super::{now_ms, time_or_null, QueryError, QueryState};

#[derive(Debug, Deserialize)]
pub struct SiteParam {
    pub site: Option<String>,
}

pub async fn handler(
    State(st): State<QueryState>,
    Path(id): Path<String>,
    Query(q): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let site = st.authorize(&headers, q.site.as_deref())?;
        check_id(&id)?;
        let key = format!("profile\n{site}\n{id}");
        if let Some(hit) = st.cached(&key) {
            return Ok(hit);
        }
        let v = Arc::new(profile(&st, &site, &id).await?);
        st.remember(key, v.clone());
        Ok::<_, QueryError>(v)
    };
    match run.await {
        Ok(v) => super::json_response(v),
        Err(e) => e.into_response(),
    }
}

/// Ids are bounded like the protocol's.
pub(crate) fn check_id(id: &str) -> Result<(), QueryError> {
    if id.is_empty() || id.len() > waymark_protocol::limits::MAX_ID_LEN {
        return Err(QueryError::bad(
            "id",
            format!(
                "must be 1 to {} bytes",
                waymark_protocol::limits::MAX_ID_LEN
            ),
        ));
    }
    Ok(())
}

/// A resolved person: the user id when known, the anonymous ids linked to it, and every
/// `visitor_id` whose events are theirs.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub user_id: Option<String>,
    pub anonymous_ids: Vec<String>,
    pub visitors: Vec<String>,
}

/// Answers for the person `id` (a user id or an anonymous id) names on `site`: resolves the id
/// (the in-memory index when it is loaded, else ClickHouse), then runs `answer`.
///
/// A link written by another ingest server, or loaded into ClickHouse directly, reaches the
/// index at its next refresh (`query.identity_refresh`). Until then the index takes a user id
/// for a visitor on its own, and a user whose events all carry anonymous ids would get a 404.
/// So a `NotFound` answered for an identity from the index is checked against the ClickHouse
/// lookup, and answered again when that finds more: an existing person never gets a 404 from
/// a stale index. Only ids with nothing stored pay the second lookup.
pub async fn for_person<'a, T>(
    st: &'a QueryState,
    site: &'a str,
    id: &'a str,
    answer: impl Fn(Identity) -> BoxFuture<'a, Result<T, QueryError>>,
) -> Result<T, QueryError> {
    let Some(indexed) = st.identities().and_then(|ix| ix.resolve(site, id)) else {
        return answer(resolve_in_clickhouse(st, site, id).await?).await;
    };
    match answer(indexed.clone()).await {
        Err(QueryError::NotFound(why)) => {
            let looked_up = resolve_in_clickhouse(st, site, id).await?;
            if looked_up
                .visitors
                .iter()
                .all(|v| indexed.visitors.contains(v))
            {
                return Err(QueryError::NotFound(why));
            }
            tracing::debug!(
                site,
                id,
                "the identity index had not seen this person's links yet"
            );
            answer(looked_up).await
        }
        other => other,
    }
}

/// Resolves `id` with the ClickHouse lookup (what the identity index stands in for).
pub async fn resolve_in_clickhouse(
    st: &QueryState,
    site: &str,
    id: &str,
) -> Result<Identity, QueryError> {
    let db = st.db();
    let (s, x) = (lit(site), lit(id));
    // The scalar subquery turns an anonymous id into its latest user (or leaves the id as is);
    // the outer query lists that user's anonymous ids through the identities primary key.
    let sql = format!(
        "SELECT user_id, groupUniqArray(anonymous_id) AS anons FROM {db}.identities
WHERE site = {s} AND user_id = (SELECT if(count() = 0, {x}, argMax(user_id, linked_at))
    FROM {db}.q_ident_by_anon WHERE site = {s} AND anonymous_id = {x})
GROUP BY user_id"
    );
    #[derive(Deserialize)]
    struct Row {
        user_id: String,
        anons: Vec<String>,
    }
    let rows: Vec<Row> = st.lookup(&sql).await?;
    Ok(match rows.into_iter().next() {
        Some(r) => {
            let mut anons = r.anons;
            // Identifier links (`$email:`...) are not devices: no events to read.
            anons.retain(|a| !crate::store::row::is_identifier(a));
            anons.sort();
            let mut visitors = vec![r.user_id.clone()];
            visitors.extend(anons.iter().cloned());
            Identity {
                user_id: Some(r.user_id),
                anonymous_ids: anons,
                visitors,
            }
        }
        None => Identity {
            user_id: None,
            anonymous_ids: Vec::new(),
            visitors: vec![id.to_string()],
        },
    })
}

#[derive(Debug, Deserialize)]
struct VisitorRow {
    n: u64,
    first_seen: i64,
    last_seen: i64,
    last_page: (String, String, i64),
    geo: (String, String, String, String, i64),
    device: (String, String, String, i64),
    traits: (String, i64),
    user_id: String,
}

#[derive(Debug, Deserialize)]
struct Counts {
    events_7: u64,
    page_views_7: u64,
    sessions_7: u64,
    events_30: u64,
    page_views_30: u64,
    sessions_30: u64,
    engaged_ms_30: u64,
}

#[derive(Debug, Deserialize)]
struct ProductRow {
    product_id: String,
    name: String,
    last_viewed: i64,
    views: u64,
    engaged_ms: u64,
    last_added: i64,
    last_removed: i64,
    cart_line: (f64, f64, String),
}

/// One campaign's email engagement of a person (from `q_history`, where the `$email_open` and
/// `$email_click` events of `crate::intake::email` land like any other event).
#[derive(Debug, Deserialize)]
struct EmailRow {
    campaign: String,
    human_opens: u64,
    machine_opens: u64,
    human_clicks: u64,
    scanner_clicks: u64,
    last_open: i64,
    last_click: i64,
}

/// The person's email engagement per campaign; one campaign's message ids are its own, so the
/// totals are sums of the rows. The event name is the PREWHERE (lookups run with ClickHouse's
/// own PREWHERE choice off): only email rows have their `properties` read.
fn email_sql(db: &str, filter: &str) -> String {
    const CLASS: &str = "visitParamExtractString(properties, 'class')";
    format!(
        "SELECT visitParamExtractString(properties, 'campaign') AS campaign,
    uniqExactIf(message_id, event = '$email_open' AND {CLASS} = 'human') AS human_opens,
    uniqExactIf(message_id, event = '$email_open' AND {CLASS} = 'machine') AS machine_opens,
    uniqExactIf(message_id, event = '$email_click' AND {CLASS} = 'human') AS human_clicks,
    uniqExactIf(message_id, event = '$email_click' AND {CLASS} = 'scanner') AS scanner_clicks,
    maxIf(timestamp_ms, event = '$email_open' AND {CLASS} = 'human') AS last_open,
    maxIf(timestamp_ms, event = '$email_click' AND {CLASS} = 'human') AS last_click
FROM {db}.q_history PREWHERE event IN ('$email_open', '$email_click') WHERE {filter}
GROUP BY campaign"
    )
}

/// The profile's `email` object: people's opens and clicks, the machines' and scanners' beside
/// them, and the last 10 campaigns a person opened or clicked (most recent first).
fn email_json(mut rows: Vec<EmailRow>) -> Value {
    let sum = |f: fn(&EmailRow) -> u64| rows.iter().map(f).sum::<u64>();
    let (human_opens, machine_opens) = (sum(|r| r.human_opens), sum(|r| r.machine_opens));
    let (human_clicks, scanner_clicks) = (sum(|r| r.human_clicks), sum(|r| r.scanner_clicks));
    let last_open = rows.iter().map(|r| r.last_open).max().unwrap_or(0);
    let last_click = rows.iter().map(|r| r.last_click).max().unwrap_or(0);
    rows.retain(|r| !r.campaign.is_empty() && r.last_open.max(r.last_click) > 0);
    rows.sort_by_key(|r| std::cmp::Reverse(r.last_open.max(r.last_click)));
    rows.truncate(10);
    json!({
        "human_opens": human_opens,
        "machine_opens": machine_opens,
        "human_clicks": human_clicks,
        "scanner_clicks": scanner_clicks,
        "last_open_at": time_or_null(last_open),
        "last_click_at": time_or_null(last_click),
        "campaigns": rows.iter().map(|r| json!({
            "campaign": r.campaign,
            "opened_at": time_or_null(r.last_open),
            "clicked_at": time_or_null(r.last_click),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize)]
struct OrderRow {
    ts: i64,
    revenue: f64,
    currency: String,
}

/// The site's RFM quintile boundaries, cached per site.
#[derive(Default)]
pub struct RfmCache {
    map: Mutex<HashMap<String, (Instant, Arc<RfmBounds>)>>,
}

/// Quintile boundaries (20/40/60/80 %) of the site's customers. Recency is negated days.
#[derive(Debug, Clone, Deserialize)]
pub struct RfmBounds {
    pub r: Vec<f64>,
    pub f: Vec<f64>,
    pub m: Vec<f64>,
    pub customers: u64,
}

/// 1 + the number of boundaries at or below `x`: 1..=5, higher is better.
pub fn score(x: f64, bounds: &[f64]) -> u8 {
    1 + bounds.iter().filter(|b| **b <= x).count().min(4) as u8
}

/// `site = .. AND visitor_id IN (..)` for a resolved person, with the ids as literals (measured
/// about twice as fast as resolving them in a subquery of every statement); `visitor_id = ..`
/// for a single id, which ClickHouse analyses faster than a one-element set.
pub(crate) fn visitor_filter(site: &str, ident: &Identity) -> String {
    match ident.visitors.as_slice() {
        [one] => format!("site = {} AND visitor_id = {}", lit(site), lit(one)),
        many => format!(
            "site = {} AND visitor_id IN {}",
            lit(site),
            lit_list(many.iter().map(String::as_str))
        ),
    }
}

/// The first day of a window of `days` whole days ending today: a literal date when
/// ClickHouse counts days in UTC (cheaper to analyse), else `today() - (days - 1)`.
fn window_start(utc: bool, now: i64, days: i64) -> String {
    if utc {
        let first = waymark_protocol::time::format_rfc3339(now - (days - 1) * 86_400_000);
        lit(&first[..10])
    } else {
        format!("today() - {}", days - 1)
    }
}

/// The site's bounds: computed on first use, then served from memory and refreshed in the
/// background once older than `rfm.refresh` (requests never wait for a refresh).
async fn rfm_bounds(st: &QueryState, site: &str, now: i64) -> Result<Arc<RfmBounds>, QueryError> {
    let refresh = st.config().rfm.refresh.0;
    let stale = {
        let mut map = st.rfm().map.lock().expect("rfm lock");
        match map.get_mut(site) {
            Some((at, b)) if at.elapsed() < refresh => return Ok(b.clone()),
            Some((at, b)) => {
                // Claim the refresh so concurrent requests keep using the old bounds.
                *at = Instant::now();
                Some(b.clone())
            }
            None => None,
        }
    };
    match stale {
        Some(old) => {
            let (st, site) = (st.clone(), site.to_string());
            tokio::spawn(async move {
                match compute_rfm_bounds(&st, &site, now).await {
                    Ok(b) => {
                        st.rfm()
                            .map
                            .lock()
                            .expect("rfm lock")
                            .insert(site, (Instant::now(), Arc::new(b)));
                    }
                    Err(e) => tracing::warn!(error = %e, site, "refreshing RFM quintiles failed"),
                }
            });
            Ok(old)
        }
        None => {
            let b = Arc::new(compute_rfm_bounds(st, site, now).await?);
            st.rfm()
                .map
                .lock()
                .expect("rfm lock")
                .insert(site.to_string(), (Instant::now(), b.clone()));
            Ok(b)
        }
    }
}

async fn compute_rfm_bounds(
    st: &QueryState,
    site: &str,
    now: i64,
) -> Result<RfmBounds, QueryError> {
    let db = st.db();
    let s = lit(site);
    let since = now - st.config().rfm.lookback.0.as_millis() as i64;
    // Per person (anonymous ids mapped to their user), per order key (an order seen under two
    // visitor ids counts once), then quintiles over people. Both sides of the join are aliased:
    // current ClickHouse refuses an unaliased subquery there (code 206; 18.16 takes both).
    let sql = format!(
        "SELECT quantilesExact(0.2, 0.4, 0.6, 0.8)(-toFloat64(recency)) AS r,
    quantilesExact(0.2, 0.4, 0.6, 0.8)(toFloat64(frequency)) AS f,
    quantilesExact(0.2, 0.4, 0.6, 0.8)(monetary) AS m,
    count() AS customers
FROM (
    SELECT person, intDiv({now} - max(ts), 86400000) AS recency, count() AS frequency, sum(revenue) AS monetary
    FROM (
        SELECT person, order_key, max(timestamp_ms) AS ts, any(revenue) AS revenue
        FROM (
            SELECT if(uid = '', visitor_id, uid) AS person, order_key, timestamp_ms, revenue
            FROM (SELECT visitor_id, order_key, timestamp_ms, revenue FROM {db}.q_orders FINAL
                  WHERE site = {s} AND timestamp_ms >= {since}) AS o
            ANY LEFT JOIN (SELECT anonymous_id AS visitor_id, argMax(user_id, linked_at) AS uid
                  FROM {db}.q_ident_by_anon WHERE site = {s} GROUP BY anonymous_id) AS i USING visitor_id
        )
        GROUP BY person, order_key
    )
    GROUP BY person
)",
        now = int(now),
        since = int(since)
    );
    let b: Vec<RfmBounds> = st.fetch(&sql).await?;
    Ok(b.into_iter().next().unwrap_or(RfmBounds {
        r: vec![],
        f: vec![],
        m: vec![],
        customers: 0,
    }))
}

/// Builds the profile JSON, or `NotFound`.
pub async fn profile(st: &QueryState, site: &str, id: &str) -> Result<Value, QueryError> {
    for_person(st, site, id, |ident| {
        Box::pin(async move { profile_of(st, site, id, &ident).await })
    })
    .await
}

async fn profile_of(
    st: &QueryState,
    site: &str,
    id: &str,
    ident: &Identity,
) -> Result<Value, QueryError> {
    let now = now_ms();
    let db = st.db();
    let filter = visitor_filter(site, ident);

    let visitor_sql = format!(
        "SELECT count() AS n, minMerge(first_seen) AS first_seen, maxMerge(last_seen) AS last_seen,
    argMaxIfMerge(last_page) AS last_page, argMaxIfMerge(geo) AS geo, argMaxIfMerge(device) AS device,
    argMaxIfMerge(traits) AS traits, argMaxIfMerge(user_id) AS user_id
FROM {db}.q_visitor WHERE {filter}"
    );
    // Both windows merge their day rows into one state each, so an event seen on two days (a
    // retry with another corrected time) still counts once.
    let utc = st.utc_days().await?;
    let (d7, d30) = (window_start(utc, now, 7), window_start(utc, now, 30));
    let daily_sql = format!(
        "SELECT uniqExactMergeIf(events, day >= {d7}) AS events_7,
    uniqExactIfMergeIf(page_views, day >= {d7}) AS page_views_7,
    uniqExactIfMergeIf(sessions, day >= {d7}) AS sessions_7,
    uniqExactMerge(events) AS events_30,
    uniqExactIfMerge(page_views) AS page_views_30,
    uniqExactIfMerge(sessions) AS sessions_30,
    arraySum(arrayMap(x -> x.2, groupUniqArrayIfMerge(engaged))) AS engaged_ms_30
FROM {db}.q_visitor_days WHERE {filter} AND day >= {d30}"
    );
    let products_sql = format!(
        "SELECT product_id, argMaxIfMerge(name) AS name, maxIfMerge(last_viewed) AS last_viewed,
    uniqExactIfMerge(views) AS views,
    arraySum(arrayMap(x -> x.2, groupUniqArrayIfMerge(engaged))) AS engaged_ms,
    maxIfMerge(last_added) AS last_added, maxIfMerge(last_removed) AS last_removed,
    argMaxIfMerge(cart_line) AS cart_line
FROM {db}.q_visitor_products WHERE {filter} GROUP BY product_id"
    );
    // FINAL collapses a re-inserted order row; grouping by the order key collapses the same
    // order seen under two of the person's visitor ids.
    let orders_sql = format!(
        "SELECT order_key, max(timestamp_ms) AS ts, any(revenue) AS revenue, any(currency) AS currency
FROM {db}.q_orders FINAL WHERE {filter} GROUP BY order_key"
    );
    let email_sql = email_sql(db, &filter);
    let ids_sql = ids_sql(db, site, ident, id);
    let (visitor, counts, products, orders, email, bounds, links) = tokio::try_join!(
        st.lookup::<VisitorRow>(&visitor_sql),
        st.lookup::<Counts>(&daily_sql),
        st.lookup::<ProductRow>(&products_sql),
        st.lookup::<OrderRow>(&orders_sql),
        st.lookup::<EmailRow>(&email_sql),
        rfm_bounds(st, site, now),
        st.lookup::<LinkRow>(&ids_sql),
    )?;
    let visitor = visitor
        .into_iter()
        .next()
        .filter(|v| v.n > 0)
        .ok_or_else(|| {
            QueryError::NotFound(format!("id: no visitor or user {id:?} on site {site:?}"))
        })?;
    let counts = counts.into_iter().next().ok_or_else(|| {
        QueryError::Unavailable("ClickHouse returned no row for an aggregate".into())
    })?;
    let cfg = st.config();

    let user_id = ident
        .user_id
        .clone()
        .or_else(|| (!visitor.user_id.is_empty()).then(|| visitor.user_id.clone()));

    // A user's linked anonymous ids; an anonymous visitor is its own; a user id without
    // links has none.
    let anonymous_ids: Vec<String> = if ident.user_id.is_some() || user_id.is_some() {
        ident.anonymous_ids.clone()
    } else {
        vec![id.to_string()]
    };

    // Orders.
    let order_count = orders.len() as u64;
    let revenue: f64 = orders.iter().map(|o| o.revenue).sum();
    let last_order = orders.iter().map(|o| o.ts).max().unwrap_or(0);
    let currency = orders
        .iter()
        .max_by_key(|o| o.ts)
        .map(|o| o.currency.clone())
        .filter(|c| !c.is_empty());

    // RFM over the lookback.
    let since = now - cfg.rfm.lookback.0.as_millis() as i64;
    let mut keys: Vec<&OrderRow> = orders.iter().filter(|o| o.ts >= since).collect();
    keys.sort_by_key(|o| o.ts);
    let rfm = if let Some(last) = keys.last() {
        let recency = (now - last.ts).div_euclid(86_400_000);
        let frequency = keys.len() as u64;
        let monetary: f64 = keys.iter().map(|o| o.revenue).sum();
        json!({
            "recency_days": recency,
            "frequency": frequency,
            "monetary": round2(monetary),
            "r_score": score(-(recency as f64), &bounds.r),
            "f_score": score(frequency as f64, &bounds.f),
            "m_score": score(monetary, &bounds.m),
            "site_customers": bounds.customers,
        })
    } else {
        json!({
            "recency_days": null, "frequency": 0, "monetary": 0.0,
            "r_score": null, "f_score": null, "m_score": null,
            "site_customers": bounds.customers,
        })
    };

    // Recently viewed products, most recent first.
    let mut viewed: Vec<&ProductRow> = products.iter().filter(|p| p.last_viewed > 0).collect();
    viewed.sort_by(|a, b| {
        b.last_viewed
            .cmp(&a.last_viewed)
            .then(a.product_id.cmp(&b.product_id))
    });
    let product_list = |list: &[&ProductRow]| -> Vec<Value> {
        list.iter()
            .take(cfg.recent_products)
            .map(|p| {
                json!({
                    "product_id": p.product_id,
                    "name": non_empty(&p.name),
                    "last_viewed": time_or_null(p.last_viewed),
                    "views": p.views,
                    "engaged_ms": p.engaged_ms,
                })
            })
            .collect()
    };
    let recently_viewed = product_list(&viewed);

    // The same products ranked by attention: most engaged time first, then most views.
    let mut by_attention: Vec<&ProductRow> = viewed
        .iter()
        .copied()
        .filter(|p| p.engaged_ms > 0)
        .collect();
    by_attention.sort_by(|a, b| {
        b.engaged_ms
            .cmp(&a.engaged_ms)
            .then(b.views.cmp(&a.views))
            .then(b.last_viewed.cmp(&a.last_viewed))
            .then(a.product_id.cmp(&b.product_id))
    });
    let products_by_attention = product_list(&by_attention);

    // Cart: products whose last add is after the last order and after their last removal.
    let mut cart: Vec<&ProductRow> = products
        .iter()
        .filter(|p| p.last_added > 0 && p.last_added > last_order && p.last_added > p.last_removed)
        .collect();
    cart.sort_by(|a, b| {
        b.last_added
            .cmp(&a.last_added)
            .then(a.product_id.cmp(&b.product_id))
    });
    let last_add = cart.first().map(|p| p.last_added).unwrap_or(0);
    let abandoned = last_add > 0 && now - last_add > cfg.cart_abandon_after.0.as_millis() as i64;
    let cart_products: Vec<Value> = cart
        .iter()
        .map(|p| {
            json!({
                "product_id": p.product_id,
                "name": non_empty(&p.name),
                "price": p.cart_line.0,
                "quantity": p.cart_line.1,
                "currency": non_empty(&p.cart_line.2),
                "added_at": time_or_null(p.last_added),
            })
        })
        .collect();

    let engaged = counts.engaged_ms_30;
    let bucket = if (engaged as u128) < cfg.engagement.medium.0.as_millis() {
        "short"
    } else if (engaged as u128) < cfg.engagement.long.0.as_millis() {
        "medium"
    } else {
        "long"
    };

    let traits: Value = if visitor.traits.1 > 0 {
        serde_json::from_str(&visitor.traits.0).unwrap_or_else(|_| json!({}))
    } else {
        json!({})
    };

    Ok(json!({
        "id": user_id.clone().unwrap_or_else(|| id.to_string()),
        "site": site,
        "user_id": user_id,
        "anonymous_ids": anonymous_ids,
        "ids": ids_json(user_id.as_deref().unwrap_or(id), &links),
        "identifiers": identifiers_json(&links),
        "first_seen": time_or_null(visitor.first_seen),
        "last_seen": time_or_null(visitor.last_seen),
        "last_page": if visitor.last_page.2 > 0 {
            json!({"url": visitor.last_page.0, "title": visitor.last_page.1, "time": time_or_null(visitor.last_page.2)})
        } else { Value::Null },
        "counts": {
            "last_7_days": {"sessions": counts.sessions_7, "page_views": counts.page_views_7, "events": counts.events_7},
            "last_30_days": {"sessions": counts.sessions_30, "page_views": counts.page_views_30, "events": counts.events_30},
        },
        "engagement": {"engaged_ms_30_days": engaged, "bucket": bucket},
        "recently_viewed": recently_viewed,
        "products_by_attention": products_by_attention,
        "cart": {
            "products": cart_products,
            "last_added_at": time_or_null(last_add),
            "abandoned": abandoned,
        },
        "orders": {
            "count": order_count,
            "revenue": round2(revenue),
            "currency": currency,
            "last_order_at": time_or_null(last_order),
            "average_order_value": if order_count > 0 { round2(revenue / order_count as f64) } else { 0.0 },
        },
        "rfm": rfm,
        "geo": if visitor.geo.4 > 0 {
            json!({"country": visitor.geo.0, "region": non_empty(&visitor.geo.1), "city": non_empty(&visitor.geo.2),
                   "timezone": non_empty(&visitor.geo.3), "time": time_or_null(visitor.geo.4)})
        } else { Value::Null },
        "device": if visitor.device.3 > 0 {
            json!({"type": visitor.device.0, "browser": non_empty(&visitor.device.1), "os": non_empty(&visitor.device.2),
                   "time": time_or_null(visitor.device.3)})
        } else { Value::Null },
        "traits": traits,
        "traits_at": time_or_null(visitor.traits.1),
        "email": email_json(email),
    }))
}

/// One identity link of a person, for the profile's `ids` and `identifiers`.
#[derive(Debug, Deserialize)]
struct LinkRow {
    anonymous_id: String,
    user_id: String,
    source_type: String,
    at: i64,
}

/// The person's links: every link to one of its ids (user ids, merged user ids). `FINAL`:
/// the row a merge keeps of a link sent several times (its source and time), before the merge
/// as after it, so the answer does not change when parts merge.
fn ids_sql(db: &str, site: &str, ident: &Identity, id: &str) -> String {
    let mut users: Vec<&str> = ident.visitors.iter().map(String::as_str).collect();
    users.extend(ident.user_id.as_deref());
    users.push(id);
    users.sort_unstable();
    users.dedup();
    format!(
        "SELECT anonymous_id, user_id, source_type, toInt64(linked_at) * 1000 AS at
FROM {db}.identities FINAL WHERE site = {} AND user_id IN {}
ORDER BY at, anonymous_id",
        lit(site),
        lit_list(users)
    )
}

/// Every id of the person with where it came from: the user id, user ids merged into it
/// (`source: merge`), and anonymous ids with the call that linked them (`identify`, `track`,
/// `email_click`, `merge_device` for a merged user's device).
fn ids_json(person: &str, links: &[LinkRow]) -> Value {
    use crate::store::row::{is_identifier, MERGE_SOURCE};
    let mut out = vec![json!({"id": person, "type": "user_id", "source": "user"})];
    let mut seen: std::collections::HashSet<&str> = [person].into();
    // Merged user ids first, so a merged user is listed as a user and not as a device.
    let (merged, other): (Vec<&LinkRow>, Vec<&LinkRow>) = links
        .iter()
        .filter(|l| !is_identifier(&l.anonymous_id))
        .partition(|l| l.source_type == MERGE_SOURCE);
    for l in merged {
        if seen.insert(&l.anonymous_id) {
            out.push(
                json!({"id": l.anonymous_id, "type": "user_id", "source": "merge",
                "merged_into": l.user_id, "linked_at": time_or_null(l.at)}),
            );
        }
    }
    for l in other {
        if seen.insert(&l.anonymous_id) {
            out.push(
                json!({"id": l.anonymous_id, "type": "anonymous_id", "source": l.source_type,
                "user_id": l.user_id, "linked_at": time_or_null(l.at)}),
            );
        }
    }
    Value::Array(out)
}

/// The person's identifiers (normalised email, E.164 phone), each with the user id it came
/// with and its source (`api`, `edge`, `import`).
fn identifiers_json(links: &[LinkRow]) -> Value {
    use crate::store::row::{EMAIL_PREFIX, IDENTIFIER_SOURCE, PHONE_PREFIX};
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in links {
        let Some(source) = l.source_type.strip_prefix(IDENTIFIER_SOURCE) else {
            continue;
        };
        let (kind, value) = if let Some(v) = l.anonymous_id.strip_prefix(EMAIL_PREFIX) {
            ("email", v)
        } else if let Some(v) = l.anonymous_id.strip_prefix(PHONE_PREFIX) {
            ("phone", v)
        } else {
            continue;
        };
        if seen.insert((value, l.user_id.as_str(), source)) {
            out.push(json!({"type": kind, "value": value, "user_id": l.user_id,
                "source": source, "seen_at": time_or_null(l.at)}));
        }
    }
    Value::Array(out)
}

/// Money and averages to cents (binary floats would otherwise print 59.980000000000004).
fn round2(v: f64) -> f64 {
    // `+ 0.0` turns the -0.0 that summing nothing gives into 0.0.
    (v * 100.0).round() / 100.0 + 0.0
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_run_one_to_five() {
        let b = [2.0, 3.0, 4.0, 5.0];
        assert_eq!(score(1.0, &b), 1);
        assert_eq!(score(2.0, &b), 2);
        assert_eq!(score(4.5, &b), 4);
        assert_eq!(score(5.0, &b), 5);
        assert_eq!(score(99.0, &b), 5);
        assert_eq!(score(1.0, &[]), 1);
        // Ties: every boundary equal.
        assert_eq!(score(1.0, &[1.0; 4]), 5);
        assert_eq!(score(0.5, &[1.0; 4]), 1);
    }
}
