//! Subscriptions: parsing a registration, and storing, listing and removing them in
//! `trigger_subscriptions` (see `crate::store::schema::triggers`), where every ingest server
//! reads the same list.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::query::audience::{self, AudienceQuery};
use crate::query::sql::lit;
use crate::query::{QueryError, QueryState};

const MAX_NAME: usize = 200;
const MAX_URL: usize = 2048;
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 256;

/// A stored subscription.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub site: String,
    pub id: String,
    pub name: String,
    /// The audience as registered (`{"conditions": [...]}`).
    pub audience: Value,
    pub query: AudienceQuery,
    pub url: String,
    pub secret: String,
    pub created_at_ms: i64,
}

impl Subscription {
    /// The subscription as the API lists it: never its secret.
    pub fn public(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "audience": self.audience,
            "url": self.url,
            "created_at": waymark_protocol::time::format_rfc3339(self.created_at_ms),
        })
    }
}

/// A registration's checked fields.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub name: String,
    pub audience: Value,
    pub url: String,
    pub secret: String,
}

fn string(o: &Map<String, Value>, key: &str, min: usize, max: usize) -> Result<String, QueryError> {
    let s = o
        .get(key)
        .ok_or_else(|| QueryError::bad(key, "missing"))?
        .as_str()
        .ok_or_else(|| QueryError::bad(key, "must be a string"))?;
    if s.len() < min || s.len() > max {
        return Err(QueryError::bad(
            key,
            format!("must be {min} to {max} bytes"),
        ));
    }
    Ok(s.to_string())
}

/// Checks that `url` is an absolute http(s) URL with a host, without credentials.
fn check_url(url: &str) -> Result<(), QueryError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| QueryError::bad("url", "must start with https:// (or http://)"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(QueryError::bad("url", "has no host"));
    }
    if authority.contains('@') {
        return Err(QueryError::bad(
            "url",
            "must not carry credentials; the signature authenticates the request",
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(QueryError::bad("url", "must not contain spaces"));
    }
    Ok(())
}

/// Parses `{"name", "audience": {"conditions": [...]}, "url", "secret"}`; every error names
/// its field (`audience.conditions[0].event`...).
pub fn parse(body: &[u8]) -> Result<NewSubscription, QueryError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| QueryError::bad("body", format!("not JSON: {e}")))?;
    let o = v
        .as_object()
        .ok_or_else(|| QueryError::bad("body", "must be a JSON object"))?;
    for k in o.keys() {
        if !["name", "audience", "url", "secret"].contains(&k.as_str()) {
            return Err(QueryError::bad(
                k,
                "unknown field; expected one of name, audience, url, secret",
            ));
        }
    }
    let name = string(o, "name", 1, MAX_NAME)?;
    let url = string(o, "url", 1, MAX_URL)?;
    check_url(&url)?;
    let secret = string(o, "secret", MIN_SECRET, MAX_SECRET)?;
    let audience = o
        .get("audience")
        .ok_or_else(|| QueryError::bad("audience", "missing"))?;
    let ao = audience
        .as_object()
        .ok_or_else(|| QueryError::bad("audience", "must be a JSON object"))?;
    if let Some(k) = ao.keys().find(|k| k.as_str() != "conditions") {
        return Err(QueryError::bad(
            format!("audience.{k}"),
            "unknown field; an audience takes only conditions",
        ));
    }
    query_of(audience)?;
    Ok(NewSubscription {
        name,
        audience: audience.clone(),
        url,
        secret,
    })
}

/// The audience query of a stored or posted audience, errors prefixed with `audience.`.
fn query_of(audience: &Value) -> Result<AudienceQuery, QueryError> {
    audience::parse(audience.to_string().as_bytes()).map_err(|e| match e {
        QueryError::BadRequest { field, message } => {
            QueryError::bad(format!("audience.{field}"), message)
        }
        other => other,
    })
}

#[derive(Deserialize)]
struct Row {
    site: String,
    id: String,
    name: String,
    audience: String,
    url: String,
    secret: String,
    created_at_ms: i64,
}

/// The live subscriptions of `site`, or of every site; oldest first.
pub async fn list(st: &QueryState, site: Option<&str>) -> Result<Vec<Subscription>, QueryError> {
    // On a cluster: the ones registered through other servers too.
    super::sync(st, &["trigger_subscriptions"]).await;
    let filter = site
        .map(|s| format!("WHERE site = {}", lit(s)))
        .unwrap_or_default();
    let rows: Vec<Row> = st
        .fetch(&format!(
            "SELECT site, id, argMax(name, version) AS name, argMax(audience, version) AS audience,
    argMax(url, version) AS url, argMax(secret, version) AS secret,
    argMax(created_at_ms, version) AS created_at_ms
FROM {db}.trigger_subscriptions {filter}
GROUP BY site, id
HAVING argMax(deleted, version) = 0
ORDER BY created_at_ms, id",
            db = st.db()
        ))
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let audience: Value = serde_json::from_str(&r.audience)
            .map_err(|e| QueryError::Unavailable(format!("subscription {}: {e}", r.id)))?;
        let query = match query_of(&audience) {
            Ok(q) => q,
            Err(e) => {
                // Stored by an older server that accepted something this one does not.
                tracing::warn!(subscription = %r.id, error = %e, "skipping a subscription this server cannot read");
                continue;
            }
        };
        out.push(Subscription {
            site: r.site,
            id: r.id,
            name: r.name,
            audience,
            query,
            url: r.url,
            secret: r.secret,
            created_at_ms: r.created_at_ms,
        });
    }
    Ok(out)
}

/// Stores a new subscription on `site` (at most `max` per site).
pub async fn create(
    st: &QueryState,
    site: &str,
    new: NewSubscription,
    max: usize,
    now_ms: i64,
) -> Result<Subscription, QueryError> {
    if list(st, Some(site)).await?.len() >= max {
        return Err(QueryError::bad(
            "site",
            format!(
                "already has {max} subscriptions (triggers.max_subscriptions); remove one first"
            ),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let row = json!({
        "site": site, "id": id, "name": new.name, "audience": new.audience.to_string(),
        "url": new.url, "secret": new.secret, "created_at_ms": now_ms, "deleted": 0,
        "version": now_ms,
    });
    st.execute(&format!(
        "INSERT INTO {}.trigger_subscriptions FORMAT JSONEachRow\n{row}\n",
        st.db()
    ))
    .await?;
    Ok(Subscription {
        site: site.to_string(),
        id,
        name: new.name,
        query: query_of(&new.audience)?,
        audience: new.audience,
        url: new.url,
        secret: new.secret,
        created_at_ms: now_ms,
    })
}

/// Removes a subscription; `NotFound` if `site` has no live one with this id. Its pending
/// deliveries are cancelled by the deliverer when it next looks at them.
pub async fn remove(st: &QueryState, site: &str, id: &str, now_ms: i64) -> Result<(), QueryError> {
    let Some(sub) = list(st, Some(site)).await?.into_iter().find(|s| s.id == id) else {
        return Err(QueryError::NotFound(format!(
            "id: no subscription {id:?} on site {site:?}"
        )));
    };
    let row = json!({
        "site": site, "id": id, "name": sub.name, "audience": sub.audience.to_string(),
        "url": sub.url, "secret": "", "created_at_ms": sub.created_at_ms, "deleted": 1,
        "version": now_ms.max(sub.created_at_ms + 1),
    });
    st.execute(&format!(
        "INSERT INTO {}.trigger_subscriptions FORMAT JSONEachRow\n{row}\n",
        st.db()
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked_field_by_field() {
        let ok = br#"{"name": "cart", "url": "https://platform.example/hook", "secret": "0123456789abcdef",
            "audience": {"conditions": [{"type": "did", "event": "Product Added", "within": "24h"}]}}"#;
        let s = parse(ok).unwrap();
        assert_eq!(s.name, "cart");
        let cases: &[(&[u8], &str)] = &[
            (b"[]", "body"),
            (br#"{"name": "x", "url": "ftp://a", "secret": "0123456789abcdef", "audience": {"conditions": []}}"#, "url"),
            (br#"{"name": "x", "url": "https://u:p@a/", "secret": "0123456789abcdef", "audience": {"conditions": []}}"#, "url"),
            (br#"{"name": "x", "url": "https:///", "secret": "0123456789abcdef", "audience": {"conditions": []}}"#, "url"),
            (br#"{"name": "x", "url": "https://a/", "secret": "short", "audience": {"conditions": []}}"#, "secret"),
            (br#"{"name": "", "url": "https://a/", "secret": "0123456789abcdef", "audience": {}}"#, "name"),
            (br#"{"name": "x", "url": "https://a/", "secret": "0123456789abcdef", "audience": {"conditions": []}}"#, "audience.conditions"),
            (br#"{"name": "x", "url": "https://a/", "secret": "0123456789abcdef", "audience": {"conditions": [{"type": "did"}]}}"#, "audience.conditions[0].event"),
            (br#"{"name": "x", "url": "https://a/", "secret": "0123456789abcdef", "audience": {"conditions": [{"type": "did", "event": "e"}], "limit": 5}}"#, "audience.limit"),
            (br#"{"name": "x", "url": "https://a/", "secret": "0123456789abcdef", "audience": {"conditions": [{"type": "did", "event": "e"}]}, "extra": 1}"#, "extra"),
        ];
        for (body, field) in cases {
            match parse(body) {
                Err(QueryError::BadRequest { field: f, .. }) => {
                    assert_eq!(&f, field, "{}", String::from_utf8_lossy(body))
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }
}
