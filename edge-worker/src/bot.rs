//! The bot verdict: Cloudflare's bot score when the zone has one, plus user-agent heuristics.
//! A bot is flagged (`client.bot`), never dropped: the ingest server and the queries decide.

/// Lower-case fragments of user agents that announce automation: crawlers, monitors, HTTP
/// libraries, headless browsers and link-preview fetchers.
const AUTOMATED: &[&str] = &[
    "bot",
    "crawl",
    "spider",
    "slurp",
    "archiver",
    "headless",
    "phantomjs",
    "selenium",
    "webdriver",
    "puppeteer",
    "playwright",
    "lighthouse",
    "pagespeed",
    "gtmetrix",
    "pingdom",
    "uptime",
    "monitor",
    "curl/",
    "wget/",
    "python-requests",
    "python-urllib",
    "aiohttp",
    "httpx",
    "go-http-client",
    "java/",
    "okhttp",
    "apache-httpclient",
    "axios/",
    "node-fetch",
    "undici",
    "libwww",
    "scrapy",
    "httpclient",
    "facebookexternalhit",
    "embedly",
    "preview",
    "whatsapp",
    "feedfetcher",
    "mediapartners",
    "ahrefs",
    "semrush",
    "baiduspider",
];

/// True when the user agent is absent, implausibly short, or announces automation.
pub fn user_agent_looks_automated(ua: Option<&str>) -> bool {
    let Some(ua) = ua.map(str::trim) else {
        return true;
    };
    // Every real browser sends a long "Mozilla/5.0 (...)" string.
    if ua.len() < 20 {
        return true;
    }
    let lower = ua.to_ascii_lowercase();
    AUTOMATED.iter().any(|frag| lower.contains(frag))
}

/// The verdict for one request.
///
/// - A Cloudflare score below `threshold` (scores run 1 = automated to 99 = human), or a bot
///   Cloudflare verified (search engines, monitors), is a bot.
/// - Otherwise the user agent decides, also when there is a high score: a self-declared crawler
///   with a human-looking score is still a crawler.
pub fn is_bot(
    score: Option<u8>,
    verified_bot: bool,
    user_agent: Option<&str>,
    threshold: u8,
) -> bool {
    verified_bot || score.is_some_and(|s| s < threshold) || user_agent_looks_automated(user_agent)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
    const SAFARI_IOS: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

    #[test]
    fn browsers_are_not_bots() {
        assert!(!user_agent_looks_automated(Some(CHROME)));
        assert!(!user_agent_looks_automated(Some(SAFARI_IOS)));
        assert!(!is_bot(None, false, Some(CHROME), 30));
        assert!(!is_bot(Some(95), false, Some(SAFARI_IOS), 30));
    }

    #[test]
    fn automation_is_recognised_from_the_user_agent() {
        for ua in [
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 Safari/537.36",
            "curl/8.5.0",
            "python-requests/2.32.3",
            "Go-http-client/1.1",
            "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
            "",
        ] {
            assert!(user_agent_looks_automated(Some(ua)), "{ua}");
            assert!(is_bot(Some(99), false, Some(ua), 30), "{ua}");
        }
        assert!(user_agent_looks_automated(None));
    }

    #[test]
    fn the_cloudflare_score_decides_below_the_threshold() {
        assert!(is_bot(Some(5), false, Some(CHROME), 30));
        assert!(is_bot(Some(29), false, Some(CHROME), 30));
        assert!(!is_bot(Some(30), false, Some(CHROME), 30));
        assert!(
            !is_bot(Some(5), false, Some(CHROME), 0),
            "threshold 0 ignores the score"
        );
        assert!(
            is_bot(Some(90), true, Some(CHROME), 30),
            "verified bots are bots"
        );
    }
}
