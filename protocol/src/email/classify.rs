//! People, machines and scanners: how an open or a click is classified.
//!
//! Every open and click is kept and flagged, never dropped; the flag decides what counts as a
//! person's engagement (profiles and audiences count people by default).
//!
//! An open is
//! - `machine` when a proxy or privacy feature fetched the pixel: a `HEAD` request, an agent of
//!   `data/email-agents.txt` (Apple Mail Privacy Protection's bare `Mozilla/5.0`, the Gmail,
//!   Yahoo and Outlook image proxies), a scanner network, or a fetch within
//!   [`MACHINE_OPEN_SECS`] of the send (nobody reads that fast: delivery-time prefetch);
//! - `human` when a mail client or browser a person uses fetched it;
//! - `unknown` otherwise (no agent, or one nobody recognises).
//!
//! A click is `scanner` for a `HEAD` request, an agent or network of the list, a click within
//! [`SCANNER_CLICK_SECS`] of the send, or when [`BURST_LINKS`] or more different links of one
//! message were followed within one second (a scanner opens every link; a person one); else
//! `human`.
//!
//! The list is data (`protocol/data/email-agents.txt`), one rule per line with the source it
//! comes from, compiled in and parsed once.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// An open this soon after the send is a delivery-time prefetch.
pub const MACHINE_OPEN_SECS: u64 = 2;
/// A click this soon after the send is a security scanner.
pub const SCANNER_CLICK_SECS: u64 = 10;
/// This many different links of one message followed within a second: a scanner.
pub const BURST_LINKS: u32 = 3;

const LIST: &str = include_str!("../../data/email-agents.txt");

/// What fetched a pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenClass {
    Human,
    Machine,
    Unknown,
}

/// What followed a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickClass {
    Human,
    Scanner,
}

impl OpenClass {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenClass::Human => "human",
            OpenClass::Machine => "machine",
            OpenClass::Unknown => "unknown",
        }
    }
}

impl ClickClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ClickClass::Human => "human",
            ClickClass::Scanner => "scanner",
        }
    }
}

/// The facts of one pixel fetch or link click.
#[derive(Debug, Clone, Copy, Default)]
pub struct Hit<'a> {
    /// `GET`, `HEAD`, ...
    pub method: &'a str,
    pub user_agent: &'a str,
    /// The network the request came from, when the edge knows it.
    pub asn: Option<u32>,
    /// Seconds since the token was issued (the send).
    pub secs_since_send: u64,
    /// Clicks only: different links of the same message followed within the last second,
    /// this one included.
    pub links_within_second: u32,
}

/// A classification and why, for the event's properties (`$email_class`, `$email_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<C> {
    pub class: C,
    pub reason: String,
}

/// Classifies a pixel fetch.
pub fn classify_open(hit: &Hit<'_>) -> Verdict<OpenClass> {
    let v = |class, reason: String| Verdict { class, reason };
    let rules = rules();
    if hit.method.eq_ignore_ascii_case("HEAD") {
        return v(OpenClass::Machine, "HEAD request".into());
    }
    if let Some(who) = rules.exact_open(hit.user_agent) {
        return v(OpenClass::Machine, who.into());
    }
    if let Some(who) = rules
        .open_machine(hit.user_agent)
        .or_else(|| rules.scanner_agent(hit.user_agent))
        .or_else(|| rules.scanner_asn(hit.asn))
    {
        return v(OpenClass::Machine, who.into());
    }
    if hit.secs_since_send < MACHINE_OPEN_SECS {
        return v(
            OpenClass::Machine,
            format!("{} s after the send", hit.secs_since_send),
        );
    }
    if looks_like_a_reader(hit.user_agent) {
        v(OpenClass::Human, "mail client or browser".into())
    } else {
        v(OpenClass::Unknown, "agent not recognised".into())
    }
}

/// Classifies a link click.
pub fn classify_click(hit: &Hit<'_>) -> Verdict<ClickClass> {
    let v = |class, reason: String| Verdict { class, reason };
    let rules = rules();
    if hit.method.eq_ignore_ascii_case("HEAD") {
        return v(ClickClass::Scanner, "HEAD request".into());
    }
    if let Some(who) = rules
        .scanner_agent(hit.user_agent)
        .or_else(|| rules.scanner_asn(hit.asn))
    {
        return v(ClickClass::Scanner, who.into());
    }
    if hit.user_agent.trim().is_empty() {
        return v(ClickClass::Scanner, "no User-Agent".into());
    }
    if hit.secs_since_send < SCANNER_CLICK_SECS {
        return v(
            ClickClass::Scanner,
            format!("{} s after the send", hit.secs_since_send),
        );
    }
    if hit.links_within_second >= BURST_LINKS {
        return v(
            ClickClass::Scanner,
            format!(
                "{} links of the message within a second",
                hit.links_within_second
            ),
        );
    }
    v(ClickClass::Human, "browser".into())
}

/// Recent clicks per message, to tell a scanner following every link of a message within a
/// second from a person following one (the [`Hit::links_within_second`] of a click). Bounded:
/// entries older than a second are dropped as the map is used, and the map is emptied whole
/// past `MAX_MESSAGES` (a burst of that many messages within a second only costs their burst
/// verdicts). The ingest server keeps one per process; the edge worker one per isolate, which
/// sees the bursts that reach the same Cloudflare location (a scanner's do: it clicks from one
/// place).
#[derive(Default)]
pub struct ClickBursts(Mutex<HashMap<(String, String), RecentClicks>>);

/// When (Unix milliseconds) each recent click of one message happened, and on which link.
type RecentClicks = Vec<(u64, String)>;

const MAX_MESSAGES: usize = 100_000;
const BURST_WINDOW_MS: u64 = 1_000;

impl ClickBursts {
    /// Records a click on `target` of message `send_id` at `now_ms`; returns the different
    /// links of that message followed within the last second, this one included.
    pub fn click(&self, site: &str, send_id: &str, target: &str, now_ms: u64) -> u32 {
        let recent_enough = |t: u64| now_ms.saturating_sub(t) < BURST_WINDOW_MS;
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_MESSAGES {
            map.retain(|_, v| v.iter().any(|(t, _)| recent_enough(*t)));
            if map.len() >= MAX_MESSAGES {
                map.clear();
            }
        }
        let recent = map
            .entry((site.to_string(), send_id.to_string()))
            .or_default();
        recent.retain(|(t, _)| recent_enough(*t));
        recent.push((now_ms, target.to_string()));
        let mut links: Vec<&str> = recent.iter().map(|(_, l)| l.as_str()).collect();
        links.sort_unstable();
        links.dedup();
        links.len() as u32
    }
}

/// A mail client or a browser a person uses: `Mozilla/5.0 (<platform>) ...` or a desktop mail
/// client's own agent.
fn looks_like_a_reader(ua: &str) -> bool {
    let lower = ua.to_ascii_lowercase();
    lower.starts_with("mozilla/5.0 (")
        || lower.starts_with("mozilla/4.0 (compatible; ms-office")
        || ["microsoft outlook", "thunderbird", "msoffice"]
            .iter()
            .any(|m| lower.contains(m))
}

#[derive(Debug, Default)]
struct Rules {
    open_exact: Vec<(String, String)>,
    open_machine: Vec<(String, String)>,
    click_scanner: Vec<(String, String)>,
    scanner_asn: Vec<(u32, String)>,
}

impl Rules {
    fn exact_open(&self, ua: &str) -> Option<&str> {
        let ua = ua.trim();
        self.open_exact
            .iter()
            .find(|(a, _)| a == ua)
            .map(|(_, w)| w.as_str())
    }

    fn open_machine(&self, ua: &str) -> Option<&str> {
        find(&self.open_machine, ua)
    }

    fn scanner_agent(&self, ua: &str) -> Option<&str> {
        find(&self.click_scanner, ua)
    }

    fn scanner_asn(&self, asn: Option<u32>) -> Option<&str> {
        let asn = asn?;
        self.scanner_asn
            .iter()
            .find(|(n, _)| *n == asn)
            .map(|(_, w)| w.as_str())
    }
}

fn find<'r>(list: &'r [(String, String)], ua: &str) -> Option<&'r str> {
    let lower = ua.to_ascii_lowercase();
    list.iter()
        .find(|(needle, _)| lower.contains(needle.as_str()))
        .map(|(_, w)| w.as_str())
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| parse(LIST).expect("data/email-agents.txt is checked by a unit test"))
}

/// Parses the list; an error names the line.
fn parse(text: &str) -> Result<Rules, String> {
    let mut r = Rules::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let [kind, what, who, source] = cols[..] else {
            return Err(format!(
                "line {}: expected 4 columns separated by |, found {}",
                i + 1,
                cols.len()
            ));
        };
        if what.is_empty() || who.is_empty() || source.is_empty() {
            return Err(format!("line {}: an empty column", i + 1));
        }
        let who = who.to_string();
        match kind {
            "open-exact" => r.open_exact.push((what.to_string(), who)),
            "open-machine" => r.open_machine.push((what.to_ascii_lowercase(), who)),
            "click-scanner" => r.click_scanner.push((what.to_ascii_lowercase(), who)),
            "scanner-asn" => r.scanner_asn.push((
                what.parse()
                    .map_err(|_| format!("line {}: {what:?} is not an AS number", i + 1))?,
                who,
            )),
            other => return Err(format!("line {}: unknown rule kind {other:?}", i + 1)),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_count_different_links_within_a_second() {
        let b = ClickBursts::default();
        let t0 = 1_800_000_000_000;
        assert_eq!(b.click("s", "m1", "https://a", t0), 1);
        assert_eq!(b.click("s", "m1", "https://a", t0), 1, "same link twice");
        assert_eq!(b.click("s", "m1", "https://b", t0), 2);
        assert_eq!(b.click("s", "m2", "https://c", t0), 1, "another message");
        assert_eq!(b.click("s", "m1", "https://c", t0 + 500), 3);
        assert_eq!(
            b.click("s", "m1", "https://d", t0 + 1_600),
            1,
            "the earlier clicks are over a second old"
        );
    }

    /// Real agents, as these readers and proxies send them.
    const CHROME_WIN: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
    const APPLE_MAIL_MAC: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    const OUTLOOK_DESKTOP: &str = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)";
    const THUNDERBIRD: &str =
        "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.3.0";
    const GMAIL_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const YAHOO_PROXY: &str =
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";
    const APPLE_MPP: &str = "Mozilla/5.0";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const CURL: &str = "curl/8.5.0";
    const CUBOT_PHONE: &str = "Mozilla/5.0 (Linux; Android 13; CUBOT X70) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36";

    fn hit(ua: &str) -> Hit<'_> {
        Hit {
            method: "GET",
            user_agent: ua,
            asn: Some(3320),
            secs_since_send: 3600,
            links_within_second: 1,
        }
    }

    #[test]
    fn the_list_parses_and_names_a_source_for_every_rule() {
        let r = parse(LIST).unwrap();
        assert!(r.open_exact.len() + r.open_machine.len() >= 5);
        assert!(r.click_scanner.len() >= 5 && r.scanner_asn.len() >= 4);
        assert!(parse("open-machine | x | y")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse("scanner-asn | AS1 | y | z")
            .unwrap_err()
            .contains("not an AS number"));
        assert!(parse("nope | x | y | z")
            .unwrap_err()
            .contains("unknown rule kind"));
    }

    #[test]
    fn opens_by_people() {
        for ua in [
            CHROME_WIN,
            SAFARI_IPHONE,
            APPLE_MAIL_MAC,
            OUTLOOK_DESKTOP,
            THUNDERBIRD,
        ] {
            assert_eq!(classify_open(&hit(ua)).class, OpenClass::Human, "{ua}");
        }
    }

    #[test]
    fn opens_by_machines() {
        for (ua, why) in [
            (APPLE_MPP, "Apple Mail Privacy Protection"),
            (GMAIL_PROXY, "Gmail image proxy"),
            (YAHOO_PROXY, "Yahoo Mail image proxy"),
        ] {
            let v = classify_open(&hit(ua));
            assert_eq!(v.class, OpenClass::Machine, "{ua}");
            assert!(v.reason.starts_with(why), "{ua}: {}", v.reason);
        }
        let head = Hit {
            method: "HEAD",
            ..hit(CHROME_WIN)
        };
        assert_eq!(classify_open(&head).class, OpenClass::Machine);
        let prefetch = Hit {
            secs_since_send: 1,
            ..hit(APPLE_MAIL_MAC)
        };
        assert_eq!(classify_open(&prefetch).reason, "1 s after the send");
        let mimecast_net = Hit {
            asn: Some(30031),
            ..hit(CHROME_WIN)
        };
        assert_eq!(classify_open(&mimecast_net).class, OpenClass::Machine);
    }

    #[test]
    fn opens_nobody_recognises() {
        for ua in ["", "Java/17.0.2", "okhttp/4.12.0"] {
            assert_eq!(classify_open(&hit(ua)).class, OpenClass::Unknown, "{ua:?}");
        }
    }

    #[test]
    fn clicks_by_people() {
        for ua in [CHROME_WIN, SAFARI_IPHONE, CUBOT_PHONE, THUNDERBIRD] {
            assert_eq!(classify_click(&hit(ua)).class, ClickClass::Human, "{ua}");
        }
        // Two links of a message within a second: a person can do that.
        let two = Hit {
            links_within_second: 2,
            ..hit(CHROME_WIN)
        };
        assert_eq!(classify_click(&two).class, ClickClass::Human);
    }

    #[test]
    fn clicks_by_scanners() {
        for ua in [GOOGLEBOT, CURL, "", "python-requests/2.32.3"] {
            assert_eq!(
                classify_click(&hit(ua)).class,
                ClickClass::Scanner,
                "{ua:?}"
            );
        }
        for (h, why) in [
            (
                Hit {
                    method: "HEAD",
                    ..hit(CHROME_WIN)
                },
                "HEAD request",
            ),
            (
                Hit {
                    asn: Some(8075),
                    ..hit(CHROME_WIN)
                },
                "Microsoft",
            ),
            (
                Hit {
                    asn: Some(22843),
                    ..hit(CHROME_WIN)
                },
                "Proofpoint",
            ),
            (
                Hit {
                    secs_since_send: 4,
                    ..hit(CHROME_WIN)
                },
                "4 s after the send",
            ),
            (
                Hit {
                    links_within_second: 5,
                    ..hit(CHROME_WIN)
                },
                "5 links of the message within a second",
            ),
        ] {
            let v = classify_click(&h);
            assert_eq!(v.class, ClickClass::Scanner, "{h:?}");
            assert!(v.reason.starts_with(why), "{h:?}: {}", v.reason);
        }
    }
}
