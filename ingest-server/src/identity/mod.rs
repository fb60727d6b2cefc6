//! One person per customer, however their ids are spelled: merging user ids that share an
//! identifier, undoing a merge, and suggesting near matches.
//!
//! # Merging ([`merge_site`], run by [`run`] every [`MERGE_EVERY`])
//!
//! Identifiers are identity links from `$email:...` / `$phone:...` to a user id
//! (`crate::intake::identifiers`). For each site, the kinds its `[sites.identity] merge_on`
//! lists are grouped by identifier; user ids sharing one are joined (union-find), except ids an
//! unmerge set apart (`merges` rows with `undone = 1`). Each group's person is a user id
//! already holding merges, else the smallest; every other member gets a link in `identities`
//! (`source_type = merge`: the merged user id as `anonymous_id`, the person as `user_id`) and
//! a `merges` row naming the identifier. The merged users' devices (anonymous ids whose latest
//! link is to a merged user) get a link to the person too (`merge_device`), so resolution,
//! which follows one link (`query::identity`), reaches every device.
//!
//! Because merges are ordinary links, everything that resolves people counts a merged person
//! once with no code of its own: the profile (`query::profile`, the in-memory index and the SQL
//! lookup), audiences (`query::audience` groups visitors by their latest link) and triggers
//! (`triggers::eval` uses the audience compiler), and deleting a person follows the links
//! (`privacy`).
//!
//! The pass is idempotent and reads only what changed since: it is skipped while
//! `identities` has the same parts as at the last pass. Merges appear within
//! [`MERGE_EVERY`] of the identifiers' insert; `POST /v1/import` nudges a pass when it ends.
//!
//! # Unmerging ([`unmerge`], `POST /v1/persons/{id}/unmerge?site=S`, admin key)
//!
//! `id` is a merged user id (it alone leaves its person) or a person's user id (every user
//! merged into it leaves). The merge links are deleted (`ALTER TABLE .. DELETE` on
//! `identities` and `q_ident_by_anon`, waited for), `merges` records the undo (the id is never
//! merged automatically again), and the identity index is reloaded.
//!
//! # Suggestions ([`suggestions`], `GET /v1/identity/suggestions?site=S`, read key)
//!
//! Near matches are never merged: people with the same name and postcode (latest identify
//! traits `name` or `first_name` + `last_name`, and `postcode` / `postal_code` / `zip`,
//! compared lower-cased) but different identifiers are listed in pairs with the Jaro-Winkler
//! similarity (`strsim`) of their emails as the score, best first, for a person to confirm.
//!
//! Layer: above `privacy` (its admin keys) and `query`; below `http`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::identity::MergeKey;
use crate::config::SiteConfig;
use crate::privacy::PrivacyState;
use crate::query::sql::{lit, lit_list};
use crate::query::{QueryError, QueryState};
use crate::store::row::{
    is_identifier, EMAIL_PREFIX, IDENTIFIER_SOURCE, MERGE_DEVICE_SOURCE, MERGE_SOURCE, PHONE_PREFIX,
};

/// How often the merge pass looks for new shared identifiers.
pub const MERGE_EVERY: Duration = Duration::from_secs(2);
/// Ids per `IN (...)` list and rows per `INSERT`: well under ClickHouse's 256 KiB query limit.
const BATCH: usize = 500;
/// Suggestions listed at most.
const MAX_SUGGESTIONS: usize = 500;
/// How long an unmerge waits for ClickHouse to finish deleting the merge links.
const MUTATION_WAIT: Duration = Duration::from_secs(60);

/// What the identity endpoints and the merge pass share.
#[derive(Clone)]
pub struct IdentityState(Arc<Inner>);

struct Inner {
    query: QueryState,
    privacy: PrivacyState,
    sites: Vec<SiteConfig>,
    /// Wakes the merge pass early (an import ended).
    nudge: tokio::sync::Notify,
    /// `identities`' parts at the last pass (sum of rows, max block), per site pass.
    seen: std::sync::Mutex<Option<(u64, i64)>>,
}

impl IdentityState {
    pub fn new(query: QueryState, privacy: PrivacyState, sites: Vec<SiteConfig>) -> Self {
        IdentityState(Arc::new(Inner {
            query,
            privacy,
            sites,
            nudge: tokio::sync::Notify::new(),
            seen: std::sync::Mutex::new(None),
        }))
    }

    /// Runs a merge pass soon (after an import).
    pub fn nudge(&self) {
        self.0.nudge.notify_one();
    }

    fn site(&self, id: &str) -> Option<&SiteConfig> {
        self.0.sites.iter().find(|s| s.id == id)
    }
}

/// The routes.
pub fn router<S: Clone + Send + Sync + 'static>(state: IdentityState) -> Router<S> {
    Router::new()
        .route("/v1/persons/{id}/unmerge", post(unmerge_handler))
        .route("/v1/identity/suggestions", get(suggestions_handler))
        .with_state(state)
}

/// The merge pass, every [`MERGE_EVERY`] (or when nudged) once the schema is ready, until the
/// process ends. Failures are logged once until a pass succeeds again.
pub async fn run(state: IdentityState) {
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(MERGE_EVERY) => {}
            _ = state.0.nudge.notified() => {}
        }
        if !state.0.query.schema_ready() {
            continue;
        }
        match merge_all(&state).await {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(merged = n, "merged user ids that share an identifier");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "identity merge pass failed (retried every pass)");
                }
                failing = true;
            }
        }
    }
}

/// One pass over every site, skipped when `identities` did not change since the last one.
/// Returns how many user ids were merged.
pub async fn merge_all(state: &IdentityState) -> Result<usize, QueryError> {
    let st = &state.0.query;
    #[derive(Deserialize)]
    struct Parts {
        rows: u64,
        block: i64,
    }
    // On a cluster, every shard's parts (block numbers are per shard, so a new part on one
    // shard changes the rows if not the greatest block).
    let parts: Vec<Parts> = st
        .fetch(&format!(
            "SELECT sum(rows) AS rows, max(max_block_number) AS block FROM {}
WHERE database = {} AND table = {} AND active",
            st.layout().every_shard("parts"),
            lit(st.db()),
            lit(&st.layout().local_name("identities"))
        ))
        .await?;
    let now = parts.first().map(|p| (p.rows, p.block));
    if now.is_some() && *state.0.seen.lock().expect("seen lock") == now {
        return Ok(0);
    }
    let mut merged = 0;
    for site in &state.0.sites {
        merged += merge_site(st, site).await?;
    }
    // Parts as they were before this pass's own inserts: the next pass looks once more and
    // finds nothing new (cheap), rather than missing links inserted meanwhile.
    *state.0.seen.lock().expect("seen lock") = now;
    Ok(merged)
}

/// A tiny union-find over user ids.
#[derive(Default)]
struct Groups {
    parent: HashMap<String, String>,
}

impl Groups {
    fn find(&mut self, x: &str) -> String {
        let mut root = x.to_string();
        while let Some(p) = self.parent.get(&root) {
            if *p == root {
                break;
            }
            root = p.clone();
        }
        // Path compression.
        let mut cur = x.to_string();
        while let Some(p) = self.parent.get(&cur).cloned() {
            if p == root {
                break;
            }
            self.parent.insert(cur, root.clone());
            cur = p;
        }
        self.parent
            .entry(root.clone())
            .or_insert_with(|| root.clone());
        root
    }

    fn join(&mut self, a: &str, b: &str) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            // The smaller id becomes the root: deterministic.
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent.insert(hi, lo);
        }
    }
}

/// The `LIKE` condition on `anonymous_id` for the identifier kinds `site` merges on (none:
/// the site merges on user ids only).
fn merging_prefixes(site: &SiteConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    if site.identity.merges_on(MergeKey::Email) {
        out.push(EMAIL_PREFIX);
    }
    if site.identity.merges_on(MergeKey::Phone) {
        out.push(PHONE_PREFIX);
    }
    out
}

/// A new merge: `merged` joins `into` because both have `identifier`.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    pub merged: String,
    pub into: String,
    pub identifier: String,
}

/// The merges to make: groups of user ids sharing an identifier (`shared`: identifier -> user
/// ids), without the `apart` ids, each group merged into a current person (`persons`: user ids
/// that already hold merges) or else its smallest id; `current` maps a merged id to where it
/// is merged now. Pure, for the unit tests.
pub fn plan_merges(
    shared: &[(String, Vec<String>)],
    apart: &BTreeSet<String>,
    current: &HashMap<String, String>,
) -> Vec<Merge> {
    let mut groups = Groups::default();
    let mut via: BTreeMap<String, String> = BTreeMap::new();
    for (ident, users) in shared {
        let users: Vec<&String> = users.iter().filter(|u| !apart.contains(*u)).collect();
        for w in users.windows(2) {
            groups.join(w[0], w[1]);
        }
        if users.len() > 1 {
            for u in users {
                via.entry(u.clone()).or_insert_with(|| ident.clone());
            }
        }
    }
    // Merges made earlier join their users too (an identifier may have been deleted since).
    for (m, p) in current {
        if !apart.contains(m) && groups.parent.contains_key(m) {
            groups.join(m, p);
        }
    }
    let members: Vec<String> = groups.parent.keys().cloned().collect();
    let mut by_root: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in members {
        let r = groups.find(&m);
        by_root.entry(r).or_default().push(m);
    }
    let persons: BTreeSet<&String> = current.values().collect();
    let mut out = Vec::new();
    for (_, mut group) in by_root {
        if group.len() < 2 {
            continue;
        }
        group.sort();
        let into = group
            .iter()
            .find(|u| persons.contains(u) && !current.contains_key(*u))
            .unwrap_or(&group[0])
            .clone();
        for m in &group {
            if *m != into && current.get(m) != Some(&into) {
                out.push(Merge {
                    merged: m.clone(),
                    into: into.clone(),
                    identifier: via
                        .get(m)
                        .or_else(|| via.get(&into))
                        .cloned()
                        .unwrap_or_default(),
                });
            }
        }
    }
    out
}

/// Merges `site`'s user ids that share a merging identifier, and moves merged users' devices
/// to their person. Returns how many user ids were merged.
pub async fn merge_site(st: &QueryState, site: &SiteConfig) -> Result<usize, QueryError> {
    let prefixes = merging_prefixes(site);
    if prefixes.is_empty() {
        return Ok(0);
    }
    let db = st.db();
    let s = lit(&site.id);
    let like = prefixes
        .iter()
        .map(|p| format!("anonymous_id LIKE {}", lit(&format!("{p}%"))))
        .collect::<Vec<_>>()
        .join(" OR ");
    #[derive(Deserialize)]
    struct Shared {
        ident: String,
        users: Vec<String>,
    }
    let shared: Vec<Shared> = st
        .fetch(&format!(
            "SELECT anonymous_id AS ident, groupUniqArray(user_id) AS users FROM {db}.identities
WHERE site = {s} AND source_type LIKE {} AND ({like})
GROUP BY anonymous_id HAVING length(users) > 1",
            lit(&format!("{IDENTIFIER_SOURCE}%"))
        ))
        .await?;
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let apart: BTreeSet<String> = st
        .fetch::<Id>(&format!(
            "SELECT merged_id AS id FROM {db}.merges WHERE site = {s}
GROUP BY merged_id, into_id HAVING argMax(undone, version) = 1"
        ))
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    // (`uid`, not `user_id`: an alias named like the column it aggregates is cyclic.)
    #[derive(Deserialize)]
    struct Link {
        anonymous_id: String,
        uid: String,
    }
    let current: HashMap<String, String> = st
        .fetch::<Link>(&format!(
            "SELECT anonymous_id, argMax(user_id, linked_at) AS uid FROM {db}.identities
WHERE site = {s} AND source_type = {} GROUP BY anonymous_id",
            lit(MERGE_SOURCE)
        ))
        .await?
        .into_iter()
        .map(|l| (l.anonymous_id, l.uid))
        .collect();
    let shared: Vec<(String, Vec<String>)> = shared
        .into_iter()
        .map(|r| {
            let mut u = r.users;
            u.sort();
            (r.ident, u)
        })
        .collect();
    let merges = plan_merges(&shared, &apart, &current);
    let now_ms = crate::clock::now_ms();
    let now = (now_ms / 1000) as u32;
    let mut links: Vec<(String, String, &'static str, String)> = merges
        .iter()
        .map(|m| {
            (
                m.merged.clone(),
                m.into.clone(),
                MERGE_SOURCE,
                format!("merge:{}", m.identifier),
            )
        })
        .collect();
    // Devices of merged users (now and earlier merges) whose latest link is to the merged
    // user: linked to the person.
    let mut person_of: HashMap<String, String> = current
        .iter()
        .filter(|(m, _)| !apart.contains(*m))
        .map(|(m, p)| (m.clone(), p.clone()))
        .collect();
    for m in &merges {
        person_of.insert(m.merged.clone(), m.into.clone());
    }
    let merged_ids: Vec<&str> = person_of.keys().map(String::as_str).collect();
    for chunk in merged_ids.chunks(BATCH) {
        let list = lit_list(chunk.iter().copied());
        let devices: Vec<Link> = st
            .fetch(&format!(
                "SELECT anonymous_id, argMax(user_id, linked_at) AS uid FROM {db}.q_ident_by_anon
WHERE site = {s} AND anonymous_id IN (SELECT anonymous_id FROM {db}.identities
    WHERE site = {s} AND user_id IN {list})
GROUP BY anonymous_id HAVING uid IN {list}"
            ))
            .await?;
        for d in devices {
            if is_identifier(&d.anonymous_id) || person_of.contains_key(&d.anonymous_id) {
                continue;
            }
            if let Some(p) = person_of.get(&d.uid) {
                links.push((
                    d.anonymous_id,
                    p.clone(),
                    MERGE_DEVICE_SOURCE,
                    format!("merge:{}", d.uid),
                ));
            }
        }
    }
    for chunk in links.chunks(BATCH) {
        let values: Vec<String> = chunk
            .iter()
            .map(|(anon, user, source, mid)| {
                format!(
                    "({s}, {}, {}, toDateTime({now}), {}, {})",
                    lit(user),
                    lit(anon),
                    lit(mid),
                    lit(source)
                )
            })
            .collect();
        st.execute(&format!(
            "INSERT INTO {db}.identities (site, user_id, anonymous_id, linked_at, message_id, source_type) VALUES {}",
            values.join(", ")
        ))
        .await?;
        if let Some(ix) = st.identities() {
            ix.add_all(
                chunk
                    .iter()
                    .map(|(a, u, _, _)| (site.id.as_str(), a.as_str(), u.as_str(), now)),
                [],
            );
        }
    }
    for chunk in merges.chunks(BATCH) {
        let values: Vec<String> = chunk
            .iter()
            .map(|m| {
                format!(
                    "({s}, {}, {}, {}, toDateTime({now}), 0, {now_ms})",
                    lit(&m.merged),
                    lit(&m.into),
                    lit(&m.identifier)
                )
            })
            .collect();
        st.execute(&format!(
            "INSERT INTO {db}.merges (site, merged_id, into_id, identifier, at, undone, version) VALUES {}",
            values.join(", ")
        ))
        .await?;
    }
    if !links.is_empty() {
        st.forget_cached();
    }
    Ok(merges.len())
}

#[derive(Debug, Deserialize)]
struct SiteParam {
    site: Option<String>,
}

async fn unmerge_handler(
    State(state): State<IdentityState>,
    Path(id): Path<String>,
    Query(q): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let (_, site) = state.0.privacy.authorize(&headers, q.site.as_deref())?;
        crate::query::profile::check_id(&id)?;
        unmerge(&state, &site, &id).await
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Undoes the merges of `id` (see the module documentation); the answer lists them.
pub async fn unmerge(state: &IdentityState, site: &str, id: &str) -> Result<Value, QueryError> {
    let st = &state.0.query;
    let db = st.db();
    let s = lit(site);
    let x = lit(id);
    #[derive(Deserialize)]
    struct Row {
        merged_id: String,
        into_id: String,
        #[serde(rename = "ident")]
        identifier: String,
    }
    let rows: Vec<Row> = st
        .fetch(&format!(
            "SELECT merged_id, into_id, argMax(identifier, version) AS ident FROM {db}.merges
WHERE site = {s} AND (merged_id = {x} OR into_id = {x})
GROUP BY merged_id, into_id HAVING argMax(undone, version) = 0"
        ))
        .await?;
    if rows.is_empty() {
        return Err(QueryError::NotFound(format!(
            "id: {id:?} is not merged with anyone on site {site:?}"
        )));
    }
    let now_ms = crate::clock::now_ms();
    let now = now_ms / 1000;
    // First the record, so the merge pass does not merge them again meanwhile.
    let values: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "({s}, {}, {}, {}, toDateTime({now}), 1, {now_ms})",
                lit(&r.merged_id),
                lit(&r.into_id),
                lit(&r.identifier)
            )
        })
        .collect();
    st.execute(&format!(
        "INSERT INTO {db}.merges (site, merged_id, into_id, identifier, at, undone, version) VALUES {}",
        values.join(", ")
    ))
    .await?;
    // The merge links to delete: each merged id, and the devices moved with it.
    let mut pairs: Vec<(String, Vec<String>)> = Vec::new();
    for r in &rows {
        #[derive(Deserialize)]
        struct A {
            anonymous_id: String,
        }
        let devices: Vec<A> = st
            .fetch(&format!(
                "SELECT DISTINCT anonymous_id FROM {db}.identities
WHERE site = {s} AND user_id = {} AND source_type NOT IN ({}, {})",
                lit(&r.merged_id),
                lit(MERGE_SOURCE),
                lit(MERGE_DEVICE_SOURCE)
            ))
            .await?;
        let mut ids = vec![r.merged_id.clone()];
        ids.extend(
            devices
                .into_iter()
                .map(|d| d.anonymous_id)
                .filter(|a| !is_identifier(a)),
        );
        pairs.push((r.into_id.clone(), ids));
    }
    let job = uuid::Uuid::new_v4().to_string();
    let marker = format!("notEmpty({})", lit(&format!("waymark unmerge {job}")));
    for (into, ids) in &pairs {
        for chunk in ids.chunks(BATCH) {
            let list = lit_list(chunk.iter().map(String::as_str));
            st.execute(&format!(
                "ALTER TABLE {db}.identities DELETE WHERE {marker} AND site = {s} AND user_id = {}
AND source_type IN ({}, {}) AND anonymous_id IN {list}",
                lit(into),
                lit(MERGE_SOURCE),
                lit(MERGE_DEVICE_SOURCE)
            ))
            .await?;
            // The reverse index has no source: a device linked to the person on its own as
            // well keeps that link in `identities` (and the index); here its row goes, and
            // the next pass over the merged user's devices cannot bring it back (set apart).
            st.execute(&format!(
                "ALTER TABLE {db}.q_ident_by_anon DELETE WHERE {marker} AND site = {s} AND user_id = {}
AND anonymous_id IN {list}",
                lit(into)
            ))
            .await?;
        }
    }
    wait_for_mutations(st, &job).await?;
    if let Some(ix) = st.identities() {
        ix.reload(st).await?;
    }
    st.forget_cached();
    Ok(json!({
        "site": site,
        "unmerged": rows.iter().map(|r| json!({
            "id": r.merged_id, "from": r.into_id, "identifier": r.identifier,
        })).collect::<Vec<_>>(),
    }))
}

/// Waits (bounded) until ClickHouse finished the mutations carrying `job`'s marker.
async fn wait_for_mutations(st: &QueryState, job: &str) -> Result<(), QueryError> {
    #[derive(Deserialize)]
    struct N {
        pending: u64,
    }
    let deadline = std::time::Instant::now() + MUTATION_WAIT;
    loop {
        let n: Vec<N> = st
            .fetch(&format!(
                "SELECT count() AS pending FROM {}
WHERE database = {} AND is_done = 0 AND position(command, {}) > 0",
                st.layout().every_shard("mutations"),
                lit(st.db()),
                lit(&format!("waymark unmerge {job}"))
            ))
            .await?;
        if n.first().map_or(0, |n| n.pending) == 0 {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(QueryError::Unavailable(format!(
                "unmerge: ClickHouse has not finished deleting the merge links within {} s; they go when it does",
                MUTATION_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn suggestions_handler(
    State(state): State<IdentityState>,
    Query(q): Query<SiteParam>,
    headers: HeaderMap,
) -> Response {
    let run = async {
        let site = state.0.query.authorize(&headers, q.site.as_deref())?;
        if state.site(&site).is_none() {
            return Err(QueryError::bad("site", "not a configured site"));
        }
        suggestions(&state.0.query, &site).await
    };
    match run.await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A user's name, postcode and email from their latest identify traits.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub user_id: String,
    pub person: String,
    pub name: String,
    pub postcode: String,
    pub email: String,
}

/// Pairs of different persons with the same name and postcode, scored by the Jaro-Winkler
/// similarity of their emails (1.0 when neither has one), best first. Pure, for the tests.
pub fn near_matches(cands: &[Candidate]) -> Vec<(f64, &Candidate, &Candidate)> {
    let mut blocks: BTreeMap<(&str, &str), Vec<&Candidate>> = BTreeMap::new();
    for c in cands {
        if !c.name.is_empty() && !c.postcode.is_empty() {
            blocks.entry((&c.name, &c.postcode)).or_default().push(c);
        }
    }
    let mut out = Vec::new();
    for block in blocks.values() {
        for (i, a) in block.iter().enumerate() {
            for b in &block[i + 1..] {
                if a.person == b.person {
                    continue;
                }
                let score = if a.email.is_empty() && b.email.is_empty() {
                    1.0
                } else {
                    strsim::jaro_winkler(&a.email, &b.email)
                };
                out.push((score, *a, *b));
            }
        }
    }
    out.sort_by(|x, y| {
        y.0.total_cmp(&x.0)
            .then_with(|| x.1.user_id.cmp(&y.1.user_id))
            .then_with(|| x.2.user_id.cmp(&y.2.user_id))
    });
    out.truncate(MAX_SUGGESTIONS);
    out
}

fn trait_text(t: &serde_json::Map<String, Value>, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| match t.get(*k) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_lowercase()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `GET /v1/identity/suggestions`: see the module documentation.
pub async fn suggestions(st: &QueryState, site: &str) -> Result<Value, QueryError> {
    let db = st.db();
    let s = lit(site);
    #[derive(Deserialize)]
    struct Row {
        user_id: String,
        person: String,
        traits: String,
    }
    // Each user's latest identify traits, and the person they belong to now.
    let rows: Vec<Row> = st
        .fetch(&format!(
            "SELECT u.user_id AS user_id, if(p.person = '', u.user_id, p.person) AS person, u.traits AS traits
FROM (SELECT user_id, argMax(traits, timestamp_ms) AS traits FROM {db}.events
    WHERE site = {s} AND type = 'identify' AND user_id != '' GROUP BY user_id) AS u
ANY LEFT JOIN (SELECT anon AS user_id, person FROM (
    SELECT anonymous_id AS anon, argMax(user_id, linked_at) AS person
    FROM {db}.q_ident_by_anon WHERE site = {s} GROUP BY anonymous_id)) AS p USING user_id"
        ))
        .await?;
    let cands: Vec<Candidate> = rows
        .into_iter()
        .map(|r| {
            let t: serde_json::Map<String, Value> =
                serde_json::from_str(&r.traits).unwrap_or_default();
            let mut name = trait_text(&t, &["name"]);
            if name.is_empty() {
                let (f, l) = (
                    trait_text(&t, &["first_name", "firstName"]),
                    trait_text(&t, &["last_name", "lastName"]),
                );
                name = format!("{f} {l}").trim().to_string();
            }
            let postcode =
                trait_text(&t, &["postcode", "postal_code", "postalCode", "zip"]).replace(' ', "");
            Candidate {
                user_id: r.user_id,
                person: r.person,
                name,
                postcode,
                email: trait_text(&t, &["email"]),
            }
        })
        .collect();
    let pairs = near_matches(&cands);
    Ok(json!({
        "site": site,
        "suggestions": pairs.iter().map(|(score, a, b)| json!({
            "score": (score * 1000.0).round() / 1000.0,
            "reason": "same name and postcode",
            "a": {"user_id": a.user_id, "person": a.person, "email": a.email},
            "b": {"user_id": b.user_id, "person": b.person, "email": b.email},
        })).collect::<Vec<_>>(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(ident: &str, users: &[&str]) -> (String, Vec<String>) {
        (
            ident.to_string(),
            users.iter().map(|u| u.to_string()).collect(),
        )
    }

    #[test]
    fn users_sharing_an_identifier_merge_into_the_smallest() {
        let s = vec![
            shared("$email:a@x.com", &["c2", "c1"]),
            shared("$email:b@x.com", &["c3", "c4"]),
            shared("$phone:+491", &["c4", "c5"]),
        ];
        let mut got = plan_merges(&s, &BTreeSet::new(), &HashMap::new());
        got.sort_by(|a, b| a.merged.cmp(&b.merged));
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|m| (m.merged.as_str(), m.into.as_str()))
            .collect();
        assert_eq!(pairs, vec![("c2", "c1"), ("c4", "c3"), ("c5", "c3")]);
        assert_eq!(got[0].identifier, "$email:a@x.com");
    }

    #[test]
    fn merges_are_made_once_and_set_apart_ids_stay_apart() {
        let s = vec![shared("$email:a@x.com", &["c1", "c2", "c3"])];
        let current: HashMap<String, String> = [("c2".to_string(), "c1".to_string())].into();
        let got = plan_merges(&s, &BTreeSet::new(), &current);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].merged.as_str(), got[0].into.as_str()), ("c3", "c1"));
        let apart: BTreeSet<String> = ["c3".to_string()].into();
        assert!(plan_merges(&s, &apart, &current).is_empty());
        // An existing person keeps its id even when a smaller one joins.
        let current: HashMap<String, String> = [("c3".to_string(), "c2".to_string())].into();
        let s = vec![shared("$email:a@x.com", &["c1", "c2", "c3"])];
        let got = plan_merges(&s, &BTreeSet::new(), &current);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].merged.as_str(), got[0].into.as_str()), ("c1", "c2"));
    }

    #[test]
    fn near_matches_pair_different_people_by_name_and_postcode() {
        let c = |u: &str, p: &str, name: &str, pc: &str, email: &str| Candidate {
            user_id: u.into(),
            person: p.into(),
            name: name.into(),
            postcode: pc.into(),
            email: email.into(),
        };
        let cands = vec![
            c("c1", "c1", "ada lovelace", "10115", "ada@example.com"),
            c("c2", "c2", "ada lovelace", "10115", "ada.l@example.com"),
            c("c3", "c1", "ada lovelace", "10115", "ada@example.com"),
            c("c4", "c4", "ada lovelace", "20095", "ada@example.com"),
            c("c5", "c5", "bob", "10115", "zzz@q.org"),
        ];
        let got = near_matches(&cands);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|(_, a, b)| (a.user_id.as_str(), b.user_id.as_str()))
            .collect();
        assert_eq!(pairs.len(), 2, "{pairs:?}");
        assert!(pairs.contains(&("c1", "c2")) && pairs.contains(&("c2", "c3")));
        assert!(got[0].0 > 0.8 && got[0].0 < 1.0);
    }
}
