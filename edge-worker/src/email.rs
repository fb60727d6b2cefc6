//! The email endpoints under the prefix: `GET {prefix}/e/o/{token}.gif` (the open pixel) and
//! `GET|HEAD {prefix}/e/c/{token}` (the click redirect), as one pure function, [`hit`], and the
//! click's stitch marker turned into an identity link on the next batch ([`link`]).
//!
//! A token is verified with the site's keys (`EMAIL_KEYS`) and age limit (`EMAIL_MAX_AGE`),
//! then classified with the protocol crate's rules, which here also see the request's network
//! (`request.cf.asn`: the scanner networks of `protocol/data/email-agents.txt`). The event
//! (`$email_open`, `$email_click`) travels in an envelope under the site's write key
//! (`EMAIL_WRITE_KEY`), marked as made by the edge (`email.hits`), through the queue like every
//! batch; the runtime sends it after the answer (`ctx.wait_until`), so neither the pixel nor
//! the redirect waits for it. A refused token (bad signature, expired, another site's, ...)
//! answers the same pixel, or a redirect to `EMAIL_HOME_URL`, never to the target it claims,
//! and its reason goes on alone (`email.refused`) to be counted by the ingest server.
//!
//! A person's click (`human`) also leaves the stitch marker cookie
//! (`waymark_protocol::email::stitch`); the tag's next batch to this prefix brings it back.

use std::sync::OnceLock;

use serde_json::Value;
use waymark_protocol::edge::{truncate_ip, Client, EdgeEmail, EdgeEnvelope, EmailLink};
use waymark_protocol::email::classify::ClickBursts;
use waymark_protocol::email::{
    self as wire, classify_click, classify_open, hit_event, hit_message_id, recipient_id, stitch,
    Hit, Kind,
};
use waymark_protocol::time::format_rfc3339;
use waymark_protocol::Event;

use crate::bot::is_bot;
use crate::cf::read_cf;
use crate::config::{Config, EmailSettings, GpcMode};
use crate::http::{Body, Reply};

/// The parts of a pixel or click request [`hit`] reads.
#[derive(Debug, Clone, Copy)]
pub struct EmailRequest<'a> {
    pub kind: Kind,
    pub token: &'a str,
    /// `GET` or `HEAD`.
    pub method: &'a str,
    pub user_agent: Option<&'a str>,
    /// `CF-Connecting-IP`.
    pub client_ip: Option<&'a str>,
    /// The request came over HTTPS (the marker cookie is then `Secure`).
    pub secure: bool,
}

/// What to answer, and what to send on after answering.
#[derive(Debug, Clone, PartialEq)]
pub struct EmailOutcome {
    pub reply: Reply,
    pub envelope: Option<EdgeEnvelope>,
    /// `human`, `machine`, ... or, for a refused token, why (`refused: expired`).
    pub verdict: String,
}

/// The clicks of this isolate, for the burst rule (see [`ClickBursts`]).
pub fn bursts() -> &'static ClickBursts {
    static BURSTS: OnceLock<ClickBursts> = OnceLock::new();
    BURSTS.get_or_init(ClickBursts::default)
}

fn pixel() -> Reply {
    Reply {
        status: 200,
        headers: vec![
            ("content-type", "image/gif".into()),
            (
                "cache-control",
                "no-store, no-cache, must-revalidate, max-age=0".into(),
            ),
            ("pragma", "no-cache".into()),
            ("expires", "0".into()),
        ],
        body: Body::Static(wire::PIXEL_GIF),
    }
}

fn redirect(to: &str) -> Reply {
    Reply {
        status: 302,
        headers: vec![
            ("location", to.to_string()),
            ("cache-control", "no-store".into()),
            ("referrer-policy", "no-referrer".into()),
        ],
        body: Body::Empty,
    }
}

/// Answers a pixel fetch or a click. `None` when the email endpoints are off (no
/// `EMAIL_KEYS`): the route is then a 404 like any unknown path.
pub fn hit(
    req: &EmailRequest<'_>,
    cf: &Value,
    cfg: &Config,
    bursts: &ClickBursts,
    now_ms: i64,
) -> Option<EmailOutcome> {
    let site = cfg.email.as_ref()?;
    let now_secs = (now_ms / 1000).max(0) as u64;
    let facts = read_cf(cf);
    let user_agent = req.user_agent.map(str::trim).unwrap_or_default();
    let envelope = |events: Vec<Event>, email: EdgeEmail| EdgeEnvelope {
        write_key: site.write_key.clone(),
        received_at: format_rfc3339(now_ms),
        sent_at: None,
        geo: facts.geo.clone(),
        client: Client {
            ip: req.client_ip.and_then(|ip| truncate_ip(ip, cfg.ip_mode)),
            user_agent: (!user_agent.is_empty()).then(|| user_agent.to_string()),
            gpc: false,
            bot_score: facts.bot_score,
            bot: is_bot(
                facts.bot_score,
                facts.verified_bot,
                (!user_agent.is_empty()).then_some(user_agent),
                cfg.bot_score_threshold,
            ),
        },
        events,
        email: Some(email),
    };
    let refuse = |why: &'static str| EmailOutcome {
        reply: match req.kind {
            Kind::Open => pixel(),
            Kind::Click => redirect(&site.home_url),
        },
        envelope: Some(envelope(
            Vec::new(),
            EdgeEmail {
                refused: Some(why.to_string()),
                ..EdgeEmail::default()
            },
        )),
        verdict: format!("refused: {why}"),
    };
    let claims = match wire::verify(req.token, &site.keys, now_secs, site.max_age_secs) {
        Ok(c) if c.site != site.site => return Some(refuse("unknown_site")),
        Ok(c) if c.kind() != req.kind => return Some(refuse("wrong_kind")),
        Ok(c) => c,
        Err(e) => return Some(refuse(e.label())),
    };
    let mut h = Hit {
        method: req.method,
        user_agent,
        asn: facts.geo.asn,
        secs_since_send: now_secs.saturating_sub(claims.issued_at),
        links_within_second: 1,
    };
    let (class, why, reply) = match req.kind {
        Kind::Open => {
            let v = classify_open(&h);
            (v.class.as_str(), v.reason, pixel())
        }
        Kind::Click => {
            let target = claims.target.as_deref().unwrap_or_default();
            h.links_within_second =
                bursts.click(&site.site, &claims.send_id, target, now_ms.max(0) as u64);
            let v = classify_click(&h);
            let mut reply = redirect(target);
            if v.class == wire::ClickClass::Human {
                if let Some(cookie) = marker_cookie(site, &claims, now_secs, req.secure) {
                    reply.headers.push(("set-cookie", cookie));
                }
            }
            (v.class.as_str(), v.reason, reply)
        }
    };
    let ev = hit_event(
        hit_message_id(req.token, now_ms),
        &claims,
        class,
        &why,
        user_agent,
    );
    Some(EmailOutcome {
        reply,
        envelope: Some(envelope(
            vec![ev],
            EdgeEmail {
                hits: true,
                ..EdgeEmail::default()
            },
        )),
        verdict: class.to_string(),
    })
}

/// The `Set-Cookie` of a person's click: the recipient, signed with the newest key.
fn marker_cookie(
    site: &EmailSettings,
    click: &wire::Claims,
    now_secs: u64,
    secure: bool,
) -> Option<String> {
    let marker = wire::sign_marker(&stitch::marker_claims(click, now_secs), &site.keys[0]).ok()?;
    Some(stitch::set_cookie(&marker, secure))
}

/// What a batch's `Cookie` header says about a stitch.
#[derive(Debug, Clone, PartialEq)]
pub enum Stitch {
    /// No marker cookie (or the email endpoints are off).
    None,
    /// A marker came: clear the cookie in the answer, and link when `Some`.
    Marker(Option<EmailLink>),
}

/// Turns the marker in a batch's `cookie` header into the identity link for the batch's
/// anonymous id, when the marker verifies, names this site, came with this site's write key,
/// and the batch keeps its ids: under `Sec-GPC: 1` with `GPC_MODE` `drop-ids` or `drop-events`
/// there is no link, exactly as the batch's own ids are not kept.
pub fn link(
    cookie: Option<&str>,
    write_key: &str,
    gpc: bool,
    events: &[Event],
    cfg: &Config,
    now_ms: i64,
) -> Stitch {
    let (Some(site), Some(marker)) = (
        cfg.email.as_ref(),
        cookie.and_then(stitch::from_cookie_header),
    ) else {
        return Stitch::None;
    };
    if gpc && cfg.gpc != GpcMode::Keep {
        return Stitch::Marker(None);
    }
    let now_secs = (now_ms / 1000).max(0) as u64;
    let link = wire::verify_marker(marker, &site.keys, now_secs, stitch::MAX_AGE_SECS)
        .ok()
        .filter(|c| c.site == site.site && write_key == site.write_key)
        .and_then(|c| {
            let anon = stitch::batch_anonymous_id(events)?;
            Some(EmailLink {
                user_id: recipient_id(&c).to_string(),
                anonymous_id: anon.to_string(),
                campaign: c.campaign,
                send_id: c.send_id,
                clicked_at: c.issued_at,
            })
        });
    Stitch::Marker(link)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use waymark_protocol::email::{Claims, SigningKey};
    use waymark_protocol::EventType;

    const NOW_MS: i64 = 1_800_000_000_000;
    const NOW: u64 = 1_800_000_000;
    const CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

    fn key() -> SigningKey {
        SigningKey {
            id: "k1".into(),
            secret: b"an-email-secret-0123456789".to_vec(),
        }
    }

    fn cfg() -> Config {
        Config {
            email: Some(EmailSettings {
                site: "shop".into(),
                write_key: "wk_shop".into(),
                home_url: "https://shop.example/".into(),
                keys: vec![key()],
                max_age_secs: 30 * 86_400,
            }),
            ..Config::default()
        }
    }

    fn claims(target: Option<&str>, sent_secs_ago: u64) -> Claims {
        Claims {
            site: "shop".into(),
            user_id: "u-1".into(),
            email: "ada@example.com".into(),
            campaign: "nov".into(),
            send_id: "snd-1".into(),
            issued_at: NOW - sent_secs_ago,
            target: target.map(str::to_string),
        }
    }

    fn token(target: Option<&str>, sent_secs_ago: u64) -> String {
        wire::sign(&claims(target, sent_secs_ago), &key()).unwrap()
    }

    fn req<'a>(kind: Kind, token: &'a str, method: &'a str, ua: &'a str) -> EmailRequest<'a> {
        EmailRequest {
            kind,
            token,
            method,
            user_agent: Some(ua),
            client_ip: Some("203.0.113.77"),
            secure: true,
        }
    }

    const TARGET: &str = "https://shop.example/p/42";

    #[test]
    fn a_person_clicks_is_redirected_marked_and_recorded() {
        let t = token(Some(TARGET), 3600);
        let cf = json!({"asn": 3320, "colo": "FRA", "country": "DE"});
        let o = hit(
            &req(Kind::Click, &t, "GET", CHROME),
            &cf,
            &cfg(),
            &ClickBursts::default(),
            NOW_MS,
        )
        .unwrap();
        assert_eq!(o.reply.status, 302);
        assert_eq!(o.reply.get("location"), Some(TARGET));
        assert_eq!(o.verdict, "human");
        let cookie = o.reply.get("set-cookie").expect("a marker");
        assert!(cookie.starts_with("wm_email=") && cookie.contains("HttpOnly"));
        let env = o.envelope.unwrap();
        assert_eq!(env.write_key, "wk_shop");
        assert!(env.email.unwrap().hits);
        assert_eq!(env.client.ip.as_deref(), Some("203.0.113.0"));
        assert_eq!(env.geo.asn, Some(3320));
        let ev = &env.events[0];
        assert_eq!(ev.event.as_deref(), Some("$email_click"));
        assert_eq!(ev.user_id.as_deref(), Some("u-1"));
        assert_eq!(ev.properties["class"], "human");
        assert_eq!(ev.properties["url"], TARGET);
        // The marker it left links the next batch's browser to the recipient.
        let marker_cookie = cookie.split(';').next().unwrap();
        let mut page = Event::new(EventType::Page, "m1");
        page.anonymous_id = Some("anon-9".into());
        let later = NOW_MS + 20_000;
        let s = link(
            Some(marker_cookie),
            "wk_shop",
            false,
            &[page.clone()],
            &cfg(),
            later,
        );
        let Stitch::Marker(Some(l)) = s else {
            panic!("{s:?}")
        };
        assert_eq!(
            (l.user_id.as_str(), l.anonymous_id.as_str()),
            ("u-1", "anon-9")
        );
        assert_eq!(l.clicked_at, NOW);
        // Under GPC (drop-ids), with another site's write key, or too late: cleared, no link.
        for (wk, gpc, at) in [
            ("wk_shop", true, later),
            ("wk_other", false, later),
            ("wk_shop", false, NOW_MS + 301_000),
        ] {
            assert_eq!(
                link(Some(marker_cookie), wk, gpc, &[page.clone()], &cfg(), at),
                Stitch::Marker(None),
                "{wk} {gpc} {at}"
            );
        }
        let keep = Config {
            gpc: GpcMode::Keep,
            ..cfg()
        };
        assert!(matches!(
            link(
                Some(marker_cookie),
                "wk_shop",
                true,
                &[page.clone()],
                &keep,
                later
            ),
            Stitch::Marker(Some(_))
        ));
        assert_eq!(
            link(Some("a=b"), "wk_shop", false, &[page], &cfg(), later),
            Stitch::None
        );
    }

    #[test]
    fn scanners_are_recorded_without_a_marker() {
        let t = token(Some(TARGET), 3600);
        let b = ClickBursts::default();
        // HEAD, a scanner's network (Mimecast's AS, from the list), no agent.
        for (method, ua, cf) in [
            ("HEAD", CHROME, json!({})),
            ("GET", CHROME, json!({"asn": 30031})),
            ("GET", "", json!({})),
        ] {
            let o = hit(&req(Kind::Click, &t, method, ua), &cf, &cfg(), &b, NOW_MS).unwrap();
            assert_eq!(o.verdict, "scanner", "{method} {ua:?}");
            assert_eq!(o.reply.status, 302);
            assert_eq!(o.reply.get("set-cookie"), None);
        }
        // Seconds after the send.
        let fresh = token(Some(TARGET), 2);
        let o = hit(
            &req(Kind::Click, &fresh, "GET", CHROME),
            &json!({}),
            &cfg(),
            &b,
            NOW_MS,
        )
        .unwrap();
        assert_eq!(o.verdict, "scanner");
    }

    #[test]
    fn a_pixel_is_the_gif_and_an_open() {
        let t = token(None, 3600);
        let o = hit(
            &req(Kind::Open, &t, "GET", CHROME),
            &json!({}),
            &cfg(),
            &ClickBursts::default(),
            NOW_MS,
        )
        .unwrap();
        assert_eq!(o.reply.body, Body::Static(wire::PIXEL_GIF));
        assert_eq!(o.reply.get("content-type"), Some("image/gif"));
        assert_eq!(o.verdict, "human");
        let env = o.envelope.unwrap();
        assert_eq!(env.events[0].event.as_deref(), Some("$email_open"));
        // Apple Mail Privacy Protection's proxy.
        let o = hit(
            &req(Kind::Open, &t, "GET", "Mozilla/5.0"),
            &json!({}),
            &cfg(),
            &ClickBursts::default(),
            NOW_MS,
        )
        .unwrap();
        assert_eq!(o.verdict, "machine");
    }

    #[test]
    fn refused_tokens_go_home_and_are_counted() {
        let good = token(Some(TARGET), 3600);
        let mut tampered = good.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        let old = token(Some(TARGET), 31 * 86_400);
        let other_site = wire::sign(
            &Claims {
                site: "elsewhere".into(),
                ..claims(Some(TARGET), 3600)
            },
            &key(),
        )
        .unwrap();
        let open = token(None, 3600);
        for (t, why) in [
            (tampered.as_str(), "bad_signature"),
            (old.as_str(), "expired"),
            (other_site.as_str(), "unknown_site"),
            (open.as_str(), "wrong_kind"),
            ("garbage!", "malformed"),
        ] {
            let o = hit(
                &req(Kind::Click, t, "GET", CHROME),
                &json!({}),
                &cfg(),
                &ClickBursts::default(),
                NOW_MS,
            )
            .unwrap();
            assert_eq!(o.reply.status, 302, "{why}");
            assert_eq!(
                o.reply.get("location"),
                Some("https://shop.example/"),
                "{why}"
            );
            assert_eq!(o.reply.get("set-cookie"), None);
            let env = o.envelope.unwrap();
            assert!(env.events.is_empty());
            assert_eq!(env.email.unwrap().refused.as_deref(), Some(why));
        }
        // Off without EMAIL_KEYS.
        assert_eq!(
            hit(
                &req(Kind::Click, &good, "GET", CHROME),
                &json!({}),
                &Config::default(),
                &ClickBursts::default(),
                NOW_MS
            ),
            None
        );
    }
}
