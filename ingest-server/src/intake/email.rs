//! Email opens and clicks: a pixel fetch or a tracked link's click becomes a `$email_open` or
//! `$email_click` event of the recipient, classified (people, machines, scanners) and admitted
//! like any other event.
//!
//! The token is verified against the keys of the site it names (each site has its own signing
//! keys); a token that fails, or has expired, is counted by reason and never redirects to the
//! target it claims: the click goes to the site's `home_url`.

use waymark_protocol::edge::EmailLink;
use waymark_protocol::email::{self as wire, stitch, Claims, Hit, Kind};
use waymark_protocol::Event;

use super::enrich::{to_row, RequestFacts};
use super::error::ApiError;
use super::Intake;
use crate::config::SiteConfig;
use crate::store::row::{EventRow, LINK_ROW};

pub use wire::classify::ClickBursts;
/// The event names.
pub use wire::{CLICK_EVENT, OPEN_EVENT};

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
        /// A person's click: the `Set-Cookie` of its stitch marker.
        marker: Option<String>,
    },
    /// The token was refused (the reason's label); a click goes to this home page, if any site
    /// could be told.
    Refused {
        reason: &'static str,
        home: Option<String>,
    },
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
        Err(e) => Err((e.label(), home)),
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
                now_ms.max(0) as u64,
            );
            let v = wire::classify_click(&h);
            (CLICK_EVENT, v.class.as_str(), v.reason)
        }
    };
    intake.metrics.email_hit(name, class);
    let ev = event(&claims, class, &why, hit.user_agent);
    let marker = (hit.kind == Kind::Click && class == "human")
        .then(|| marker_cookie(site, &claims, now_secs))
        .flatten();
    (
        Answer::Recorded {
            target: claims.target.clone(),
            class,
            marker,
        },
        Some(ev),
        Some(site.id.clone()),
    )
}

fn event(c: &Claims, class: &str, why: &str, user_agent: &str) -> Event {
    wire::hit_event(uuid::Uuid::new_v4().to_string(), c, class, why, user_agent)
}

/// The `Set-Cookie` of a person's click: the recipient, signed with the site's newest key,
/// `Secure` when the site's email `base_url` is HTTPS.
fn marker_cookie(site: &SiteConfig, click: &Claims, now_secs: u64) -> Option<String> {
    let email = site.email.as_ref()?;
    let key = email.signing_keys().into_iter().next()?;
    let marker = wire::sign_marker(&stitch::marker_claims(click, now_secs), &key).ok()?;
    Some(stitch::set_cookie(
        &marker,
        email.base_url.starts_with("https://"),
    ))
}

/// The identity link a batch's stitch marker (its `Cookie` header) makes: when the marker
/// verifies with the site's keys, names this site, and the request carries no `Sec-GPC: 1`
/// (a link ties a browser to a person, which GPC opts out of), for the batch's anonymous id.
pub fn marker_link(
    site: &SiteConfig,
    cookie: Option<&str>,
    gpc: bool,
    events: &[Event],
    now_ms: i64,
) -> Option<EmailLink> {
    let email = site.email.as_ref()?;
    let marker = cookie.and_then(stitch::from_cookie_header)?;
    if gpc {
        return None;
    }
    let now_secs = (now_ms / 1000).max(0) as u64;
    let c = wire::verify_marker(
        marker,
        &email.signing_keys(),
        now_secs,
        stitch::MAX_AGE_SECS,
    )
    .ok()
    .filter(|c| c.site == site.id)?;
    let anon = stitch::batch_anonymous_id(events)?;
    Some(EmailLink {
        user_id: wire::recipient_id(&c).to_string(),
        anonymous_id: anon.to_string(),
        campaign: c.campaign,
        send_id: c.send_id,
        clicked_at: c.issued_at,
    })
}

/// The row of a stitch: only an identity link (`identities.source_type = "email_click"`),
/// through the spool and the writer like an `identify` call's, never an event.
pub fn link_row(site_id: &str, link: &EmailLink, received_at_ms: i64) -> EventRow {
    let secs = (received_at_ms / 1000).clamp(0, u32::MAX as i64) as u32;
    EventRow {
        site: site_id.to_string(),
        visitor_id: link.anonymous_id.clone(),
        message_id: stitch::link_message_id(site_id, &link.anonymous_id, link.clicked_at),
        kind: LINK_ROW.to_string(),
        anonymous_id: link.anonymous_id.clone(),
        user_id: link.user_id.clone(),
        timestamp: secs,
        timestamp_ms: received_at_ms,
        client_time: secs,
        received_at_ms,
        sent_at_ms: received_at_ms,
        source: stitch::LINK_SOURCE.to_string(),
        ..EventRow::default()
    }
}

/// The metric label of a refusal reason the edge reports (`EdgeEmail::refused`); one this
/// server does not know is counted as `other`.
pub fn refused_label(why: &str) -> &'static str {
    [
        "malformed",
        "unknown_site",
        "unknown_key",
        "bad_signature",
        "expired",
        "from_the_future",
        "wrong_kind",
        "invalid",
    ]
    .into_iter()
    .find(|r| *r == why)
    .unwrap_or("other")
}

/// One `$email_open` / `$email_click` event the edge made (it verified the token and
/// classified the hit): read, checked to be one, and counted like this server's own.
pub fn edge_hit(raw: &str) -> Result<Event, String> {
    let ev: Event = serde_json::from_str(raw).map_err(|e| format!("not an email event: {e}"))?;
    let name = ev.event.as_deref().unwrap_or_default();
    let class = ev
        .properties
        .get("class")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let known = match name {
        OPEN_EVENT => ["human", "machine", "unknown"].contains(&class),
        CLICK_EVENT => ["human", "scanner"].contains(&class),
        _ => false,
    };
    if !known || ev.user_id.as_deref().unwrap_or_default().is_empty() {
        return Err(format!(
            "not an email event: {name:?} with class {class:?} and a recipient"
        ));
    }
    Ok(ev)
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
        request_ip: Default::default(),
    };
    let row = to_row(&ev, &facts, &intake.ua);
    intake
        .admit_unsuppressed(vec![row], "email")
        .await
        .map(|_| ())
}
