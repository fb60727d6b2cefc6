//! The identity links (`identities`: anonymous id <-> user id) held in memory, so that turning a
//! requested id into the person's visitor ids costs no ClickHouse round trip. On the query bench
//! (10M events, 100k visitors, 30k links) the lookup query it replaces was about 5 ms of a
//! profile's 14 ms (p50): one sequential round trip before the figures can be read.
//!
//! # Where the links come from
//!
//! The index holds the links of `identities` and the user ids of `q_user_visitors` (users with
//! events under their own id, see `store::schema::query`), both read the same way:
//!
//! - At start, every active part of both tables is read (the index answers nothing until that
//!   load is done: until then, and whenever it is off, resolution is the SQL lookup).
//! - Then every `identity_refresh` the active parts are listed again and any part holding a
//!   block not read yet is read. Parts never change, a merge only combines parts whose blocks
//!   are already known, and a part is counted as read only when as many rows arrived as the part
//!   holds (a part merged away between listing and reading is read again in its merged form).
//!   This is how links written by other ingest servers on the same database arrive, within one
//!   refresh.
//! - On a cluster (`[clickhouse] cluster`) a server's `system.parts` lists one shard's parts,
//!   so the refresh goes by insert time instead: `identities` has `inserted_at` (migration 145,
//!   ClickHouse's `now()` at the insert), and every `identity_refresh` the links inserted since
//!   the previous refresh's ClickHouse time less [`OVERLAP_SECS`] are read through the
//!   `Distributed` table, from every shard. The overlap covers an insert still running when the
//!   previous refresh read, and clocks of ClickHouse servers a little apart; replicas further
//!   behind than it are not read (`max_replica_delay_for_distributed_queries`), so a lagging
//!   replica cannot hide a link for good. The cost: every refresh reads the `inserted_at`
//!   column (4 bytes a link) and the links of the last overlap. `q_user_visitors` is not read
//!   on a cluster (a view fills it, and 18.16 cannot give a view's rows an insert time): a
//!   user with links is taken to have events of their own, so a lookup reads the user id's
//!   key range as the SQL lookup does (same answers; a little slower for identified people).
//! - This server's writer adds its links and users before it inserts their events
//!   ([`IdentityIndex::add_all`]), so neither shows up later than the events it came with.
//!
//! Links are only ever added: a link removed from ClickHouse (`ALTER TABLE ... DELETE`) stays
//! here until the server restarts, and so does everything after the two tables are dropped and
//! created again (their block numbers start over, so new parts look read). Above `identity_max_links` links the index turns itself off
//! (logged) and resolution goes back to SQL, so memory stays bounded (about 200 bytes a link).
//!
//! # Resolution (the same as the SQL lookup in `profile::resolve_in_clickhouse`)
//!
//! An anonymous id resolves to the user of its latest link (by `linked_at`; on a tie the greater
//! user id); any other id is taken as a user id. A user with links is every anonymous id ever
//! linked to them, plus the user id itself when it has events of its own; an id without links is
//! a visitor on its own. The SQL lookup always includes the user id: the answers are the same,
//! the index only skips reading a key range that holds nothing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::profile::Identity;
use super::sql::lit;
use super::{QueryError, QueryState};

/// On a cluster, how far before the previous refresh's ClickHouse time rows are read again
/// (see the module documentation).
pub const OVERLAP_SECS: i64 = 10;

/// Which table's read ranges.
const LINKS: usize = 0;
const USERS: usize = 1;

const LOADING: u8 = 0;
const READY: u8 = 1;
const OFF: u8 = 2;

/// See the module documentation.
pub struct IdentityIndex {
    links: RwLock<HashMap<String, SiteLinks>>,
    /// Block ranges already read, sorted and disjoint: of `identities`, of `q_user_visitors`.
    read: [Mutex<Vec<(i64, i64)>>; 2],
    state: AtomicU8,
    max_links: usize,
    /// On a cluster: ClickHouse's time at the start of the last successful refresh (`None`:
    /// everything is still to be read).
    since: Mutex<Option<i64>>,
    /// On a cluster, where `q_user_visitors` is not read: every user with links is taken to
    /// have events of their own.
    users_unknown: std::sync::atomic::AtomicBool,
}

/// A part's block range and row count.
#[derive(Debug, Clone, Copy)]
struct Part {
    lo: i64,
    hi: i64,
    rows: u64,
}

#[derive(Default)]
struct SiteLinks {
    /// Anonymous id -> (linked_at, user id) of its latest link.
    latest: HashMap<String, (u32, String)>,
    /// User id -> every anonymous id linked to it.
    anons: HashMap<String, Vec<String>>,
    /// User ids with events under their own id.
    own: HashSet<String>,
    /// Links and users held (what `identity_max_links` bounds).
    count: usize,
}

impl IdentityIndex {
    pub fn new(max_links: usize) -> Self {
        IdentityIndex {
            links: RwLock::new(HashMap::new()),
            read: Default::default(),
            state: AtomicU8::new(LOADING),
            max_links,
            since: Mutex::new(None),
            users_unknown: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// How many links the index holds; `None` while loading or when off.
    pub fn links(&self) -> Option<usize> {
        (self.state.load(Ordering::Acquire) == READY).then(|| {
            self.links
                .read()
                .expect("identity index lock")
                .values()
                .map(|s| s.count)
                .sum()
        })
    }

    /// Adds links `(site, anonymous id, user id, linked_at)` and users with events of their own
    /// `(site, user id)` under one lock (the writer's path: no allocation for what is known),
    /// idempotently. Turns the index off when it would hold too many.
    pub fn add_all<'a>(
        &self,
        links: impl IntoIterator<Item = (&'a str, &'a str, &'a str, u32)>,
        users: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        if self.state.load(Ordering::Acquire) == OFF {
            return;
        }
        let mut all = self.links.write().expect("identity index lock");
        let mut grew = false;
        for (site, anonymous_id, user_id, linked_at) in links {
            let s = site_entry(&mut all, site);
            match s.latest.get_mut(anonymous_id) {
                Some(cur) => {
                    if (linked_at, user_id) > (cur.0, cur.1.as_str()) {
                        *cur = (linked_at, user_id.to_string());
                    }
                }
                None => {
                    s.latest
                        .insert(anonymous_id.to_string(), (linked_at, user_id.to_string()));
                }
            }
            if !s.anons.contains_key(user_id) {
                s.anons.insert(user_id.to_string(), Vec::new());
            }
            let list = s.anons.get_mut(user_id).expect("inserted above");
            if !list.iter().any(|a| a == anonymous_id) {
                list.push(anonymous_id.to_string());
                s.count += 1;
                grew = true;
            }
        }
        for (site, user_id) in users {
            let s = site_entry(&mut all, site);
            if !s.own.contains(user_id) {
                s.own.insert(user_id.to_string());
                s.count += 1;
                grew = true;
            }
        }
        if grew {
            self.check_size(&mut all);
        }
    }

    fn check_size(&self, all: &mut HashMap<String, SiteLinks>) {
        let total: usize = all.values().map(|s| s.count).sum();
        if total > self.max_links {
            self.turn_off(all);
        }
    }

    fn turn_off(&self, all: &mut HashMap<String, SiteLinks>) {
        if self.state.swap(OFF, Ordering::AcqRel) != OFF {
            all.clear();
            all.shrink_to_fit();
            tracing::warn!(
                max_links = self.max_links,
                "more identity links than query.identity_max_links: the in-memory identity \
                 index is off, ids are resolved in ClickHouse"
            );
        }
    }

    /// Forgets every link and user of `ids` on `site` (a person was deleted): the parts the
    /// deletion rewrites keep their block ranges, so the refresh does not read them again.
    pub fn forget<'a>(&self, site: &str, ids: impl IntoIterator<Item = &'a str>) {
        let mut all = self.links.write().expect("identity index lock");
        let Some(s) = all.get_mut(site) else {
            return;
        };
        for id in ids {
            s.latest.remove(id);
            if s.own.remove(id) {
                s.count = s.count.saturating_sub(1);
            }
            if let Some(list) = s.anons.remove(id) {
                s.count = s.count.saturating_sub(list.len());
            }
            for list in s.anons.values_mut() {
                let before = list.len();
                list.retain(|a| a != id);
                s.count = s.count.saturating_sub(before - list.len());
            }
        }
    }

    /// The person behind `id`, or `None` when the index cannot answer (loading or off).
    pub fn resolve(&self, site: &str, id: &str) -> Option<Identity> {
        if self.state.load(Ordering::Acquire) != READY {
            return None;
        }
        let all = self.links.read().expect("identity index lock");
        let alone = || Identity {
            user_id: None,
            anonymous_ids: Vec::new(),
            visitors: vec![id.to_string()],
        };
        let Some(s) = all.get(site) else {
            return Some(alone());
        };
        let user = s.latest.get(id).map_or(id, |(_, u)| u.as_str());
        Some(match s.anons.get(user) {
            Some(list) => {
                // Identifier links (`$email:`...) are not devices: no events to read.
                let mut anons: Vec<String> = list
                    .iter()
                    .filter(|a| !crate::store::row::is_identifier(a))
                    .cloned()
                    .collect();
                anons.sort();
                let mut visitors = Vec::with_capacity(anons.len() + 1);
                if s.own.contains(user) || self.users_unknown.load(Ordering::Acquire) {
                    visitors.push(user.to_string());
                }
                visitors.extend(anons.iter().cloned());
                Identity {
                    user_id: Some(user.to_string()),
                    anonymous_ids: anons,
                    visitors,
                }
            }
            None => alone(),
        })
    }

    /// Forgets everything and reads both tables again (an unmerge deleted links: parts
    /// rewritten by a mutation keep their block ranges, so a refresh would not read them).
    /// Until the read is done, resolution goes to ClickHouse.
    pub async fn reload(&self, st: &QueryState) -> Result<usize, QueryError> {
        if self.state.load(Ordering::Acquire) == OFF {
            return Ok(0);
        }
        {
            let mut all = self.links.write().expect("identity index lock");
            all.clear();
            for r in &self.read {
                r.lock().expect("identity index lock").clear();
            }
            *self.since.lock().expect("identity index lock") = None;
            self.state.store(LOADING, Ordering::Release);
        }
        self.refresh(st).await
    }

    /// Reads the parts of `identities` and `q_user_visitors` not read yet; the first success
    /// makes the index ready. Returns how many rows were read.
    pub async fn refresh(&self, st: &QueryState) -> Result<usize, QueryError> {
        if self.state.load(Ordering::Acquire) == OFF {
            return Ok(0);
        }
        #[derive(Deserialize)]
        struct Link {
            site: String,
            anonymous_id: String,
            user_id: String,
            at: u32,
        }
        #[derive(Deserialize)]
        struct User {
            site: String,
            user_id: String,
        }
        if st.layout().cluster().is_some() {
            return self.refresh_by_insert_time(st).await;
        }
        let mut read = 0;
        let [links_parts, users_parts] = self.unread(st).await?;
        for (name, part) in links_parts {
            let links: Vec<Link> = st
                .fetch(&format!(
                    "SELECT site, anonymous_id, user_id, toUInt32(linked_at) AS at
FROM {}.identities WHERE _part = {}",
                    st.db(),
                    lit(&name)
                ))
                .await?;
            self.add_all(
                links.iter().map(|l| {
                    (
                        l.site.as_str(),
                        l.anonymous_id.as_str(),
                        l.user_id.as_str(),
                        l.at,
                    )
                }),
                [],
            );
            read += self.done(LINKS, part, links.len());
        }
        for (name, part) in users_parts {
            let users: Vec<User> = st
                .fetch(&format!(
                    "SELECT site, user_id FROM {}.q_user_visitors WHERE _part = {}",
                    st.db(),
                    lit(&name)
                ))
                .await?;
            self.add_all(
                [],
                users.iter().map(|u| (u.site.as_str(), u.user_id.as_str())),
            );
            read += self.done(USERS, part, users.len());
        }
        let _ = self
            .state
            .compare_exchange(LOADING, READY, Ordering::AcqRel, Ordering::Acquire);
        Ok(read)
    }

    /// [`refresh`](Self::refresh) on a cluster: the links inserted since the previous refresh
    /// (less [`OVERLAP_SECS`]), from every shard.
    async fn refresh_by_insert_time(&self, st: &QueryState) -> Result<usize, QueryError> {
        #[derive(Deserialize)]
        struct Now {
            now: i64,
        }
        #[derive(Deserialize)]
        struct Count {
            n: u64,
        }
        #[derive(Deserialize)]
        struct Row {
            site: String,
            anonymous_id: String,
            user_id: String,
            at: u32,
        }
        let db = st.db();
        let now = st
            .fetch::<Now>("SELECT toInt64(now()) AS now")
            .await?
            .first()
            .map(|r| r.now)
            .ok_or_else(|| QueryError::Unavailable("SELECT now() answered nothing".into()))?;
        let since = *self.since.lock().expect("identity index lock");
        let filter = match since {
            Some(t) => format!("WHERE inserted_at >= toDateTime({})", t - OVERLAP_SECS),
            None => {
                // The first load: off before reading, as in `unread`, above twice the cap.
                let n = st
                    .fetch::<Count>(&format!("SELECT count() AS n FROM {db}.identities"))
                    .await?
                    .first()
                    .map_or(0, |c| c.n);
                if n > 2 * self.max_links as u64 {
                    self.turn_off(&mut self.links.write().expect("identity index lock"));
                    return Ok(0);
                }
                String::new()
            }
        };
        self.users_unknown.store(true, Ordering::Release);
        // Replicas further behind than the overlap are not asked.
        let rows: Vec<Row> = st
            .fetch_with(
                &format!(
                    "SELECT site, anonymous_id, user_id, toUInt32(linked_at) AS at
FROM {db}.identities {filter}"
                ),
                &[(
                    "max_replica_delay_for_distributed_queries",
                    &OVERLAP_SECS.to_string(),
                )],
            )
            .await?;
        self.add_all(
            rows.iter().map(|r| {
                (
                    r.site.as_str(),
                    r.anonymous_id.as_str(),
                    r.user_id.as_str(),
                    r.at,
                )
            }),
            [],
        );
        *self.since.lock().expect("identity index lock") = Some(now);
        let _ = self
            .state
            .compare_exchange(LOADING, READY, Ordering::AcqRel, Ordering::Acquire);
        Ok(rows.len())
    }

    /// The active parts of `identities` and of `q_user_visitors` (indexed by `LINKS` and
    /// `USERS`) holding a block not read yet, and what each holds: one listing for both.
    async fn unread(&self, st: &QueryState) -> Result<[Vec<(String, Part)>; 2], QueryError> {
        #[derive(Deserialize)]
        struct Row {
            table: String,
            name: String,
            lo: i64,
            hi: i64,
            rows: u64,
        }
        let parts: Vec<Row> = st
            .fetch(&format!(
                "SELECT table, name, min_block_number AS lo, max_block_number AS hi, rows
FROM system.parts
WHERE database = {} AND table IN ('identities', 'q_user_visitors') AND active",
                lit(st.db()),
            ))
            .await?;
        // Twice the cap in rows (duplicates wait for merges): off before reading, rather than
        // holding a huge part's rows in memory only to find out.
        let rows: u64 = parts.iter().map(|p| p.rows).sum();
        if rows > 2 * self.max_links as u64 {
            self.turn_off(&mut self.links.write().expect("identity index lock"));
            return Ok(Default::default());
        }
        let mut out: [Vec<(String, Part)>; 2] = Default::default();
        for p in parts {
            let which = if p.table == "identities" {
                LINKS
            } else {
                USERS
            };
            if !self.covered(which, p.lo, p.hi) {
                let part = Part {
                    lo: p.lo,
                    hi: p.hi,
                    rows: p.rows,
                };
                out[which].push((p.name, part));
            }
        }
        Ok(out)
    }

    /// Marks a part read when as many rows arrived as it holds. A part merged away since the
    /// listing reads as fewer rows: not marked, so its blocks are read again from the merged
    /// part. Returns `rows`.
    fn done(&self, which: usize, part: Part, rows: usize) -> usize {
        if part.rows == rows as u64 {
            self.mark(which, part.lo, part.hi);
        }
        rows
    }

    fn covered(&self, which: usize, lo: i64, hi: i64) -> bool {
        let read = self.read[which].lock().expect("identity index lock");
        read.iter().any(|&(a, b)| a <= lo && hi <= b)
    }

    fn mark(&self, which: usize, lo: i64, hi: i64) {
        let mut read = self.read[which].lock().expect("identity index lock");
        read.push((lo, hi));
        read.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(read.len());
        for &(a, b) in read.iter() {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        *read = merged;
    }

    /// Keeps the index current: a first load, then a refresh every `every`, until the process
    /// ends. Waits for the schema; a failure is retried at the next tick and logged once until
    /// a refresh succeeds again (ClickHouse down would otherwise log every tick).
    pub async fn run(self: std::sync::Arc<Self>, st: QueryState, every: Duration) {
        let mut logged_ready = false;
        let mut failing = false;
        loop {
            if st.schema_ready() {
                let t = Instant::now();
                match self.refresh(&st).await {
                    Ok(n) => {
                        if !logged_ready {
                            logged_ready = true;
                            tracing::info!(
                                rows = n,
                                ms = t.elapsed().as_millis() as u64,
                                "identity index loaded"
                            );
                        } else if failing {
                            tracing::info!(rows = n, "identity index refreshed again");
                        }
                        failing = false;
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(
                                error = %e,
                                "identity index refresh failed (retried every tick; links \
                                 written by other servers arrive when it succeeds)"
                            );
                        }
                        failing = true;
                    }
                }
                if self.state.load(Ordering::Acquire) == OFF {
                    return;
                }
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// The site's links, created empty on first use (no allocation when it exists).
fn site_entry<'m>(all: &'m mut HashMap<String, SiteLinks>, site: &str) -> &'m mut SiteLinks {
    if !all.contains_key(site) {
        all.insert(site.to_string(), SiteLinks::default());
    }
    all.get_mut(site).expect("inserted above")
}

impl crate::store::IdentityFeed for IdentityIndex {
    fn add_links<'a>(
        &self,
        links: &mut dyn Iterator<Item = (&'a str, &'a str, &'a str, u32)>,
        users: &mut dyn Iterator<Item = (&'a str, &'a str)>,
    ) {
        self.add_all(links, users);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl IdentityIndex {
        fn add(&self, site: &str, anonymous_id: &str, user_id: &str, linked_at: u32) {
            self.add_all([(site, anonymous_id, user_id, linked_at)], []);
        }

        fn add_user_visitor(&self, site: &str, user_id: &str) {
            self.add_all([], [(site, user_id)]);
        }
    }

    fn ready(max: usize) -> IdentityIndex {
        let ix = IdentityIndex::new(max);
        ix.state.store(READY, Ordering::Release);
        ix
    }

    #[test]
    fn answers_nothing_until_loaded() {
        let ix = IdentityIndex::new(10);
        ix.add("s", "a1", "u1", 1);
        assert_eq!(ix.resolve("s", "a1"), None);
    }

    #[test]
    fn resolves_like_the_sql_lookup() {
        let ix = ready(100);
        ix.add("s", "a2", "u1", 10);
        ix.add("s", "a1", "u1", 20);
        ix.add("s", "a1", "u1", 20); // a duplicate changes nothing
        ix.add("other", "a9", "u1", 5);
        let mut u1 = Identity {
            user_id: Some("u1".into()),
            anonymous_ids: vec!["a1".into(), "a2".into()],
            visitors: vec!["a1".into(), "a2".into()],
        };
        assert_eq!(ix.resolve("s", "u1"), Some(u1.clone()));
        assert_eq!(ix.resolve("s", "a2"), Some(u1.clone()));
        // Once u1 has events under its own id, lookups read that id too.
        ix.add_user_visitor("s", "u1");
        u1.visitors.insert(0, "u1".into());
        assert_eq!(ix.resolve("s", "a2"), Some(u1));
        let alone = |id: &str| Identity {
            user_id: None,
            anonymous_ids: vec![],
            visitors: vec![id.into()],
        };
        assert_eq!(ix.resolve("s", "a3"), Some(alone("a3")));
        assert_eq!(ix.resolve("nosite", "a1"), Some(alone("a1")));
        // Sites never mix.
        assert_eq!(
            ix.resolve("other", "u1").unwrap().anonymous_ids,
            vec!["a9".to_string()]
        );
    }

    #[test]
    fn on_a_cluster_a_linked_user_is_read_under_its_own_id_too() {
        // `q_user_visitors` is not read there: every linked user's own id is a visitor, as in
        // the SQL lookup.
        let ix = ready(100);
        ix.users_unknown.store(true, Ordering::Release);
        ix.add("s", "a1", "u1", 10);
        let u1 = ix.resolve("s", "a1").unwrap();
        assert_eq!(u1.visitors, vec!["u1".to_string(), "a1".to_string()]);
        assert_eq!(u1.anonymous_ids, vec!["a1".to_string()]);
        // An id without links is still a visitor on its own.
        assert_eq!(
            ix.resolve("s", "a2").unwrap().visitors,
            vec!["a2".to_string()]
        );
    }

    #[test]
    fn an_anonymous_id_follows_its_latest_link() {
        let ix = ready(100);
        ix.add("s", "a1", "u1", 10);
        ix.add("s", "a1", "u2", 30);
        ix.add("s", "a1", "u1", 20); // older than the link to u2, arriving later
        assert_eq!(
            ix.resolve("s", "a1").unwrap().user_id.as_deref(),
            Some("u2")
        );
        // u1 still lists a1: it was linked to u1 once (as the SQL lookup lists it).
        assert_eq!(ix.resolve("s", "u1").unwrap().anonymous_ids, vec!["a1"]);
    }

    #[test]
    fn too_many_links_turn_it_off() {
        let ix = ready(2);
        ix.add("s", "a1", "u1", 1);
        ix.add("s", "a2", "u1", 1);
        assert!(ix.resolve("s", "u1").is_some());
        ix.add("s", "a3", "u1", 1);
        assert_eq!(ix.resolve("s", "u1"), None);
        assert_eq!(ix.links(), None);
    }

    #[test]
    fn read_ranges_merge_and_cover() {
        let ix = IdentityIndex::new(10);
        ix.mark(LINKS, 1, 1);
        ix.mark(LINKS, 3, 4);
        assert!(ix.covered(LINKS, 1, 1) && ix.covered(LINKS, 3, 4));
        assert!(!ix.covered(LINKS, 1, 4), "block 2 was not read");
        ix.mark(LINKS, 2, 2);
        assert!(ix.covered(LINKS, 1, 4));
        assert!(!ix.covered(LINKS, 4, 5));
        assert!(!ix.covered(USERS, 1, 1), "each table has its own ranges");
        assert_eq!(*ix.read[LINKS].lock().unwrap(), vec![(1, 4)]);
        // A part that arrived short (merged away meanwhile) is not marked.
        let part = Part {
            lo: 7,
            hi: 7,
            rows: 3,
        };
        ix.done(USERS, part, 2);
        assert!(!ix.covered(USERS, 7, 7));
        ix.done(USERS, part, 3);
        assert!(ix.covered(USERS, 7, 7));
    }
}
