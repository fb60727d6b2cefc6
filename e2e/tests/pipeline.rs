//! The whole pipeline: real Chromium visits the demo shop through the edge worker in workerd
//! (with injected geo), the ingest server spools and stores in a real ClickHouse, and the query
//! API answers. See `e2e/browser/shoppers.mjs` for what the two visitors do.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use waymark_e2e::{wait_for, Stack, SITE};

/// The query API's cart-abandonment delay for this test.
const ABANDON_AFTER_SECS: u64 = 4;

fn sent_ids(v: &Value) -> BTreeMap<String, u64> {
    v["sent"]
        .as_object()
        .expect("shoppers.mjs prints {sent: {...}}")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

/// Rows `message_id\tcount` for every event of the site, duplicates not collapsed.
fn stored(stack: &Stack) -> BTreeMap<String, u64> {
    stack
        .sql(&format!(
            "SELECT message_id, count() FROM {{db}}.events WHERE site = '{SITE}' GROUP BY message_id"
        ))
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, n)| (id.to_string(), n.parse().unwrap_or(0)))
        .collect()
}

fn wait_stored(stack: &Stack, ids: &BTreeMap<String, u64>) {
    wait_for(
        "every event the browser sent to reach ClickHouse",
        60,
        || {
            let have = stored(stack);
            ids.keys().all(|id| have.contains_key(id)).then_some(())
        },
    );
}

fn product_ids(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["product_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_shopper_abandons_a_cart_another_buys_then_the_first_logs_in() {
    let stack = Stack::start(&format!("{ABANDON_AFTER_SECS}s"));

    // Phase 1: A (Lyon) views p-100 for ~7 s and p-102 for ~2 s, adds p-102, leaves.
    // B (Hamburg) views p-101, adds it and buys it.
    let browse = stack.browser("browse");
    let mut sent = sent_ids(&browse);
    assert!(
        sent.len() >= 8,
        "the browser sent too few events: {browse}\nshop log:\n{}",
        stack.shop_log(40)
    );
    wait_stored(&stack, &sent);

    let anon_a = stack
        .sql("SELECT DISTINCT anonymous_id FROM {db}.events WHERE city = 'Lyon'")
        .trim()
        .to_string();
    let anon_b = stack
        .sql("SELECT DISTINCT anonymous_id FROM {db}.events WHERE city = 'Hamburg'")
        .trim()
        .to_string();
    assert!(
        !anon_a.is_empty() && !anon_a.contains('\n'),
        "one anonymous id for A: {anon_a:?}"
    );
    assert!(
        !anon_b.is_empty() && !anon_b.contains('\n') && anon_b != anon_a,
        "one other id for B: {anon_b:?}"
    );

    // The edge's work is in the rows: geo from the injected cf data, a truncated address.
    let ips = stack.sql(&format!(
        "SELECT DISTINCT ip FROM {{db}}.events WHERE anonymous_id = '{anon_a}'"
    ));
    assert_eq!(
        ips.trim(),
        "127.0.0.0",
        "the client IP is stored truncated to /24"
    );

    // A's engagement reaches the server (beacons on leave), so wait for both products' time.
    let profile = wait_for("A's profile with engaged time on both products", 60, || {
        let (status, p) = stack.api_get(&format!("/v1/profiles/{anon_a}?site={SITE}"));
        let ranked = product_ids(&p["recently_viewed"]);
        let engaged = |id: &str| {
            p["recently_viewed"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["product_id"] == id))
                .and_then(|x| x["engaged_ms"].as_u64())
                .unwrap_or(0)
        };
        (status == 200
            && ranked.contains(&"p-100".to_string())
            && ranked.contains(&"p-102".to_string())
            && engaged("p-100") > 0
            && engaged("p-102") > 0)
            .then_some(p)
    });
    let viewed = profile["recently_viewed"].as_array().unwrap();
    let engaged: BTreeMap<String, u64> = viewed
        .iter()
        .map(|p| {
            (
                p["product_id"].as_str().unwrap().to_string(),
                p["engaged_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    println!(
        "A's engaged time per product: {engaged:?}; sent {} events",
        sent.len()
    );
    assert!(
        engaged["p-100"] > engaged["p-102"],
        "the longer-viewed product has more engaged time: {engaged:?}"
    );
    // Ranked by attention: the longer-viewed product comes first.
    assert_eq!(
        product_ids(&profile["products_by_attention"]),
        vec!["p-100", "p-102"],
        "{profile}"
    );
    assert_eq!(profile["geo"]["country"], "FR", "{profile}");
    assert_eq!(profile["geo"]["city"], "Lyon", "{profile}");
    assert_eq!(product_ids(&profile["cart"]["products"]), vec!["p-102"]);

    // After the configured delay, A's cart is abandoned; B's is not (B ordered).
    let a = wait_for(
        "A's cart to count as abandoned",
        ABANDON_AFTER_SECS + 30,
        || {
            let (status, a) = stack.api_get(&format!("/v1/profiles/{anon_a}?site={SITE}"));
            assert_eq!(status, 200, "{a}");
            (a["cart"]["abandoned"] == true).then_some(a)
        },
    );
    assert_eq!(product_ids(&a["cart"]["products"]), vec!["p-102"], "{a}");
    // B added to the cart after A did: B's answer says something only once B's add is older
    // than the delay too (a missed order would then show as an abandoned cart).
    let b_added_ms: u128 = stack
        .sql(&format!(
            "SELECT max(timestamp_ms) FROM {{db}}.events WHERE anonymous_id = '{anon_b}' AND event = 'Product Added'"
        ))
        .trim()
        .parse()
        .expect("B's Product Added time");
    assert!(b_added_ms > 0, "B's Product Added is stored");
    wait_for(
        "B's add to be older than the delay",
        ABANDON_AFTER_SECS + 30,
        || {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()?
                .as_millis();
            (now_ms > b_added_ms + u128::from(ABANDON_AFTER_SECS) * 1000).then_some(())
        },
    );
    let (status, b) = stack.api_get(&format!("/v1/profiles/{anon_b}?site={SITE}"));
    assert_eq!(status, 200);
    assert_eq!(b["cart"]["abandoned"], false, "{b}");
    assert_eq!(b["orders"]["count"], 1, "{b}");
    assert_eq!(b["geo"]["city"], "Hamburg");

    let audience = json!({"conditions": [
        {"type": "did", "event": "Product Added", "within": "24h"},
        {"type": "did_not", "event": "Order Completed", "within": "24h"}
    ]});
    let (status, members) = stack.api_post(&format!("/v1/audiences/query?site={SITE}"), &audience);
    assert_eq!(status, 200, "{members}");
    let ids: Vec<&str> = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    println!("cart-abandonment audience: {ids:?} (A = {anon_a}, B = {anon_b})");
    assert!(
        ids.contains(&anon_a.as_str()),
        "A is in the cart-abandonment audience: {members}"
    );
    assert!(
        !ids.contains(&anon_b.as_str()),
        "B bought, so is not: {members}"
    );

    // Phase 2: A logs in; their anonymous history now counts for the user id.
    let login = stack.browser("login");
    let login_ids = sent_ids(&login);
    wait_stored(&stack, &login_ids);
    sent.extend(login_ids);
    // ClickHouse makes an inserted row visible in `events` before it has pushed it through the
    // views (one after another, in name order): `q_ident_by_anon` can link A's visitor to the
    // user id while `q_visitor` does not hold the identify's traits yet. So the profile is
    // polled until it shows the login's traits, and what ClickHouse holds is printed if it
    // never does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let user = loop {
        let (status, p) = stack.api_get(&format!("/v1/profiles/ada@example.com?site={SITE}"));
        let linked = status == 200 && p["anonymous_ids"].as_array().is_some_and(|a| !a.is_empty());
        if linked && p["traits"]["email"] == "ada@example.com" {
            break p;
        }
        if Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let identifies = stack.sql(
            "SELECT message_id, visitor_id, anonymous_id, user_id, timestamp_ms, traits FROM {db}.events WHERE type = 'identify' FORMAT TSV",
        );
        let visitor = stack.sql(&format!(
            "SELECT visitor_id, argMaxIfMerge(traits), argMaxIfMerge(user_id) FROM {{db}}.q_visitor WHERE visitor_id IN ('{anon_a}', 'ada@example.com') GROUP BY visitor_id FORMAT TSV"
        ));
        panic!(
            "after 30 s the profile under the user id does not show the login (status {status}, traits.email {})\nidentify rows:\n{identifies}\nq_visitor:\n{visitor}\nprofile: {p:#}",
            p["traits"]["email"]
        );
    };
    assert_eq!(user["user_id"], "ada@example.com");
    assert!(
        user["anonymous_ids"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == anon_a.as_str()),
        "{user}"
    );
    let mut products = product_ids(&user["recently_viewed"]);
    products.sort();
    assert_eq!(
        products,
        vec!["p-100", "p-102"],
        "events from before login count: {user}"
    );
    assert_eq!(user["cart"]["abandoned"], true, "{user}");

    println!("A after login: {user:#}");
    // Every event the browser sent is in ClickHouse exactly once.
    let have = stored(&stack);
    for (id, times_sent) in &sent {
        assert_eq!(
            have.get(id),
            Some(&1),
            "event {id} (sent {times_sent} time(s)) is stored {:?} times",
            have.get(id)
        );
    }
    let dups: Vec<_> = have.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicates in ClickHouse: {dups:?}");
}
