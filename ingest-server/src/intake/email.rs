//! Email opens and clicks: a pixel fetch or a tracked link's click becomes a `$email_open` or
//! `$email_click` event of the recipient, classified (people, machines, scanners) and admitted
//! like any other event.
//!
//! The token is verified against the keys of the site it names (each site has its own signing
//! keys); a token that fails, or has expired, is counted by reason and never redirects to the
//! target it claims: the click goes to the site's `home_url`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use waymark_protocol::email::{self as wire, Claims, Hit, Kind, TokenError};
use waymark_protocol::{Event, EventType};

use super::enrich::{to_row, RequestFacts};
use super::error::ApiError;
use super::Intake;
use crate::config::SiteConfig;

/// The event names.
pub const OPEN_EVENT: &str = "$email_open";
pub const CLICK_EVENT: &str = "$email_click";

/// One pixel fetch or link click, as the HTTP layer saw it.
pub struct EmailHit<'a> {
    pub kind: Kind,
    pub token: &'a str,
    pub method: &'a str,
    pub user_agent: &'a str,
    pub peer_ip: Option<String>,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The token holds: the event is recorded; a click redirects to its target.
    Recorded {
        target: Option<String>,
        class: &'static str,
    },
    /// The token was refused (the reason's label); a click goes to this home page, if any site
    /// could be told.
    Refused {
        reason: &'static str,
        home: Option<String>,
    },
}

/// Recent clicks per message, to tell a scanner following every link of a message within a
/// second from a person following one. Bounded: entries older than a second are dropped as
/// the map is used, and the map is emptied whole past `MAX_MESSAGES` (a burst of that many
/// messages within a second only costs their burst verdicts).
#[derive(Default)]
pub struct ClickBursts(Mutex<HashMap<(String, String), RecentClicks>>);

/// When each recent click of one message happened, and on which link.
type RecentClicks = Vec<(Instant, String)>;

const MAX_MESSAGES: usize = 100_000;
const BURST_WINDOW: Duration = Duration::from_secs(1);

impl ClickBursts {
    /// Records a click on `target` of message `send_id`; returns the different links of that
    /// message followed within the last second, this one included.
    pub fn click(&self, site: &str, send_id: &str, target: &str, now: Instant) -> u32 {
        let mut map = self.0.lock().expect("click bursts");
        if map.len() >= MAX_MESSAGES {
            map.retain(|_, v| v.iter().any(|(t, _)| now.duration_since(*t) < BURST_WINDOW));
            if map.len() >= MAX_MESSAGES {
                map.clear();
            }
        }
        let recent = map
            .entry((site.to_string(), send_id.to_string()))
            .or_default();
        recent.retain(|(t, _)| now.duration_since(*t) < BURST_WINDOW);
        recent.push((now, target.to_string()));
        let mut links: Vec<&str> = recent.iter().map(|(_, l)| l.as_str()).collect();
        links.sort_unstable();
        links.dedup();
        links.len() as u32
    }
}

fn reason(e: &TokenError) -> &'static str {
    match e {
        TokenError::Malformed(_) => "malformed",
        TokenError::UnknownKey(_) => "unknown_key",
        TokenError::BadSignature => "bad_signature",
        TokenError::Expired { .. } => "expired",
        TokenError::FromTheFuture { .. } => "from_the_future",
        TokenError::Invalid { .. } => "invalid",
    }
}

/// Finds the site whose keys verify `token`, and its claims; else why not, with the home page
/// of the site the token names (read without trusting it: only to pick a configured URL).
fn verify<'s>(
    sites: &'s [SiteConfig],
    token: &str,
    now_secs: u64,
) -> Result<(&'s SiteConfig, Claims), (&'static str, Option<String>)> {
    let claimed = wire::token::claimed_site(token);
    let home = claimed
        .as_deref()
        .and_then(|c| sites.iter().find(|s| s.id == c))
        .and_then(|s| s.email.as_ref())
        .map(|e| e.home_url.clone());
    let Some(site) = claimed
        .as_deref()
        .and_then(|c| sites.iter().find(|s| s.id == c && s.email.is_some()))
    else {
        return Err(("unknown_site", home));
    };
    let email = site.email.as_ref().expect("filtered on email");
    match wire::verify(
        token,
        &email.signing_keys(),
        now_secs,
        email.max_age.0.as_secs(),
    ) {
        Ok(c) if c.site == site.id => Ok((site, c)),
        Ok(_) => Err(("bad_signature", home)),
        Err(e) => Err((reason(&e), home)),
    }
}

/// Verifies, classifies and admits one hit. The caller answers at once and runs this in the
/// background for the pixel; the click waits for the verdict (it needs the target).
pub fn judge(intake: &Intake, hit: &EmailHit<'_>) -> (Answer, Option<Event>, Option<String>) {
    let now_ms = crate::clock::now_ms();
    let now_secs = (now_ms / 1000).max(0) as u64;
    let (site, claims) = match verify(&intake.config.sites, hit.token, now_secs) {
        Ok(v) => v,
        Err((reason, home)) => {
            intake.metrics.email_refused(reason);
            return (Answer::Refused { reason, home }, None, None);
        }
    };
    if claims.kind() != hit.kind {
        intake.metrics.email_refused("wrong_kind");
        let home = site.email.as_ref().map(|e| e.home_url.clone());
        return (
            Answer::Refused {
                reason: "wrong_kind",
                home,
            },
            None,
            None,
        );
    }
    let mut h = Hit {
        method: hit.method,
        user_agent: hit.user_agent,
        asn: None,
        secs_since_send: now_secs.saturating_sub(claims.issued_at),
        links_within_second: 1,
    };
    let (name, class, why) = match hit.kind {
        Kind::Open => {
            let v = wire::classify_open(&h);
            (OPEN_EVENT, v.class.as_str(), v.reason)
        }
        Kind::Click => {
            h.links_within_second = intake.email_bursts.click(
                &site.id,
                &claims.send_id,
                claims.target.as_deref().unwrap_or_default(),
                Instant::now(),
            );
            let v = wire::classify_click(&h);
            (CLICK_EVENT, v.class.as_str(), v.reason)
        }
    };
    intake.metrics.email_hit(name, class);
    let ev = event(name, &claims, class, &why, hit.user_agent);
    (
        Answer::Recorded {
            target: claims.target.clone(),
            class,
        },
        Some(ev),
        Some(site.id.clone()),
    )
}

/// The recipient's id on the site: the user id, else the email address.
pub fn recipient_id(c: &Claims) -> &str {
    if c.user_id.is_empty() {
        &c.email
    } else {
        &c.user_id
    }
}

fn event(name: &str, c: &Claims, class: &str, why: &str, user_agent: &str) -> Event {
    let mut ev = Event::new(EventType::Track, uuid::Uuid::new_v4().to_string());
    ev.event = Some(name.to_string());
    ev.user_id = Some(recipient_id(c).to_string());
    let mut props = Map::new();
    for (k, v) in [
        ("campaign", &c.campaign),
        ("send_id", &c.send_id),
        ("email", &c.email),
    ] {
        if !v.is_empty() {
            props.insert(k.into(), Value::String(v.clone()));
        }
    }
    props.insert("class".into(), json!(class));
    props.insert("reason".into(), json!(why));
    if let Some(t) = &c.target {
        props.insert("url".into(), json!(t));
    }
    props.insert("sent_at".into(), json!(c.issued_at));
    ev.properties = props;
    if !user_agent.is_empty() {
        ev.context
            .insert("userAgent".into(), Value::String(user_agent.to_string()));
    }
    ev
}

/// Enriches and admits the event of a recorded hit (durably, like any event).
pub async fn admit(
    intake: &Intake,
    site_id: &str,
    ev: Event,
    peer_ip: Option<String>,
) -> Result<(), ApiError> {
    let site = intake
        .config
        .sites
        .iter()
        .find(|s| s.id == site_id)
        .expect("judged against this config");
    let facts = RequestFacts {
        site: &site.id,
        ip_mode: site.ip,
        received_at_ms: crate::clock::now_ms(),
        batch_sent_at: None,
        source: "email",
        peer_ip,
        geo: None,
        client: None,
        urls: site.url_policy(),
        gpc: false,
    };
    let row = to_row(&ev, &facts, &intake.ua);
    intake
        .admit_unsuppressed(vec![row], "email")
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_count_different_links_within_a_second() {
        let b = ClickBursts::default();
        let t0 = Instant::now();
        assert_eq!(b.click("s", "m1", "https://a", t0), 1);
        assert_eq!(b.click("s", "m1", "https://a", t0), 1, "same link twice");
        assert_eq!(b.click("s", "m1", "https://b", t0), 2);
        assert_eq!(b.click("s", "m2", "https://c", t0), 1, "another message");
        assert_eq!(
            b.click("s", "m1", "https://c", t0 + Duration::from_millis(500)),
            3
        );
        assert_eq!(
            b.click("s", "m1", "https://d", t0 + Duration::from_millis(1600)),
            1,
            "the earlier clicks are over a second old"
        );
    }
}
