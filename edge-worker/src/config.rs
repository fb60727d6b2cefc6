//! The worker's settings, read from its environment variables (`[vars]` in `wrangler.toml`).
//!
//! Every variable has a default that works, so an empty `[vars]` is a valid configuration; a
//! value that cannot be understood is an error naming the variable, and the worker answers 500
//! with that message instead of guessing.

use waymark_protocol::edge::IpMode;
use waymark_protocol::email::token::valid_target;
use waymark_protocol::email::SigningKey;
use waymark_protocol::privacy::check_param_pattern;
pub use waymark_protocol::privacy::GpcMode;

/// The variable names, as written in `wrangler.toml`.
pub mod vars {
    /// Path prefix every route lives under, e.g. `/wm`.
    pub const PREFIX: &str = "WAYMARK_PREFIX";
    /// Base URL of the ingest server; the worker POSTs to `{INGEST_URL}/v1/edge`.
    pub const INGEST_URL: &str = "INGEST_URL";
    /// Several ingest servers instead of one: base URLs separated by commas, tried in order
    /// (see [`crate::failover`]). Set this or `INGEST_URL`, not both.
    pub const INGEST_URLS: &str = "INGEST_URLS";
    /// `truncate` (IPv4 /24, IPv6 /48; the default) or `drop`.
    pub const IP_MODE: &str = "IP_MODE";
    /// What `Sec-GPC: 1` does: `drop-ids` (default), `drop-events` or `keep`.
    pub const GPC_MODE: &str = "GPC_MODE";
    /// `*` (default) or a comma-separated list of origins allowed to send batches.
    pub const ALLOWED_ORIGINS: &str = "ALLOWED_ORIGINS";
    /// Cloudflare bot scores below this flag the request as a bot (default 30).
    pub const BOT_SCORE_THRESHOLD: &str = "BOT_SCORE_THRESHOLD";
    /// The Worker secret holding the HMAC key shared with the ingest server.
    pub const EDGE_SECRET: &str = "EDGE_SECRET";
    /// The Queue producer binding; when absent the worker forwards directly.
    pub const QUEUE: &str = "WAYMARK_QUEUE";
    /// Comma-separated query parameters whose values are kept in URLs besides `utm_*`,
    /// `gclid` and `fbclid` (product and category parameters; `*` at the end matches a prefix).
    /// Every other parameter's value becomes `REDACTED` before the event leaves the worker.
    pub const ALLOWED_QUERY_PARAMS: &str = "ALLOWED_QUERY_PARAMS";
    /// The Worker secret with the site's email signing keys, `id:secret` pairs separated by
    /// commas (the ingest server's `[sites.email] keys`); setting it turns the email
    /// endpoints on.
    pub const EMAIL_KEYS: &str = "EMAIL_KEYS";
    /// The site id the email tokens name (`[[sites]] id` on the ingest server).
    pub const EMAIL_SITE: &str = "EMAIL_SITE";
    /// The write key the site's tag sends with: the email events are forwarded under it, and a
    /// stitch marker links only a batch carrying it (how the worker knows the batch is the
    /// site's).
    pub const EMAIL_WRITE_KEY: &str = "EMAIL_WRITE_KEY";
    /// Where a click with a refused token goes (`[sites.email] home_url`).
    pub const EMAIL_HOME_URL: &str = "EMAIL_HOME_URL";
    /// How long a link or pixel stays valid (`[sites.email] max_age`; default 400 days).
    pub const EMAIL_MAX_AGE: &str = "EMAIL_MAX_AGE";
}

/// The site's email settings: the pixel and click endpoints are on when these are set.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailSettings {
    pub site: String,
    pub write_key: String,
    pub home_url: String,
    /// Newest first, as listed.
    pub keys: Vec<SigningKey>,
    pub max_age_secs: u64,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys' Debug redacts their secrets.
        f.debug_struct("EmailSettings")
            .field("site", &self.site)
            .field("home_url", &self.home_url)
            .field("keys", &self.keys)
            .field("max_age_secs", &self.max_age_secs)
            .finish_non_exhaustive()
    }
}

/// The ingest server's default `[sites.email] max_age`.
pub const DEFAULT_EMAIL_MAX_AGE_SECS: u64 = 400 * 86_400;

/// Which origins may send batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    Any,
    List(Vec<String>),
}

impl AllowedOrigins {
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::List(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Normalised: empty, or `/segment[/segment...]` without a trailing slash.
    pub prefix: String,
    /// The ingest servers' base URLs, without a trailing slash, in the order they are tried
    /// (`INGEST_URLS`, or the one `INGEST_URL`). Empty when neither is set; only the forwarding
    /// path needs them.
    pub ingest_urls: Vec<String>,
    pub ip_mode: IpMode,
    pub gpc: GpcMode,
    pub allowed_origins: AllowedOrigins,
    pub bot_score_threshold: u8,
    /// Extra query parameters kept in URLs (see `waymark_protocol::privacy`).
    pub allowed_query_params: Vec<String>,
    /// `None`: no `EMAIL_KEYS`, the email endpoints answer 404.
    pub email: Option<EmailSettings>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            prefix: "/wm".into(),
            ingest_urls: Vec::new(),
            ip_mode: IpMode::Truncate,
            gpc: GpcMode::DropIds,
            allowed_origins: AllowedOrigins::Any,
            bot_score_threshold: 30,
            allowed_query_params: Vec::new(),
            email: None,
        }
    }
}

/// A variable whose value the worker cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.var, self.reason)
    }
}

impl std::error::Error for ConfigError {}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        reason: reason.into(),
    }
}

impl Config {
    /// Reads the settings through `get` (the Worker's `env.var`, or a map in tests). Unset and
    /// empty variables take their defaults.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mut c = Config::default();
        if let Some(p) = get(vars::PREFIX) {
            c.prefix = normalise_prefix(&p)?;
        }
        c.ingest_urls = match (get(vars::INGEST_URL), get(vars::INGEST_URLS)) {
            (Some(_), Some(_)) => {
                return Err(err(
                    vars::INGEST_URLS,
                    format!("set either {} or INGEST_URLS, not both", vars::INGEST_URL),
                ))
            }
            (Some(one), None) => vec![ingest_url(vars::INGEST_URL, &one)?],
            (None, Some(list)) => parse_ingest_urls(&list)?,
            (None, None) => Vec::new(),
        };
        if let Some(m) = get(vars::IP_MODE) {
            c.ip_mode = match m.to_ascii_lowercase().as_str() {
                "truncate" => IpMode::Truncate,
                "drop" => IpMode::Drop,
                _ => {
                    return Err(err(
                        vars::IP_MODE,
                        format!("must be \"truncate\" or \"drop\", got {m:?}"),
                    ))
                }
            };
        }
        if let Some(m) = get(vars::GPC_MODE) {
            c.gpc = GpcMode::parse(&m).ok_or_else(|| {
                err(
                    vars::GPC_MODE,
                    format!("must be \"drop-ids\", \"drop-events\" or \"keep\", got {m:?}"),
                )
            })?;
        }
        if let Some(list) = get(vars::ALLOWED_QUERY_PARAMS) {
            for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                check_param_pattern(p)
                    .map_err(|why| err(vars::ALLOWED_QUERY_PARAMS, format!("{p:?}: {why}")))?;
                c.allowed_query_params.push(p.to_string());
            }
        }
        if let Some(o) = get(vars::ALLOWED_ORIGINS) {
            c.allowed_origins = parse_origins(&o)?;
        }
        if let Some(t) = get(vars::BOT_SCORE_THRESHOLD) {
            c.bot_score_threshold =
                t.parse::<u8>().ok().filter(|t| *t <= 100).ok_or_else(|| {
                    err(
                        vars::BOT_SCORE_THRESHOLD,
                        format!("must be a whole number from 0 to 100, got {t:?}"),
                    )
                })?;
        }
        if let Some(keys) = get(vars::EMAIL_KEYS) {
            c.email = Some(email_settings(&keys, &get)?);
        }
        Ok(c)
    }
}

fn email_settings(
    keys: &str,
    get: &impl Fn(&str) -> Option<String>,
) -> Result<EmailSettings, ConfigError> {
    let required = |var: &'static str| {
        get(var).ok_or_else(|| err(var, format!("must be set when {} is", vars::EMAIL_KEYS)))
    };
    let mut parsed = Vec::new();
    for pair in keys.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, secret) = pair
            .split_once(':')
            .map(|(i, s)| (i.trim(), s.trim()))
            .filter(|(i, s)| !i.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                err(
                    vars::EMAIL_KEYS,
                    "must list id:secret pairs separated by commas (\"k2:...,k1:...\")",
                )
            })?;
        if secret.len() < 16 {
            return Err(err(
                vars::EMAIL_KEYS,
                format!("the secret of key {id:?} is shorter than 16 bytes"),
            ));
        }
        parsed.push(SigningKey {
            id: id.to_string(),
            secret: secret.as_bytes().to_vec(),
        });
    }
    if parsed.is_empty() {
        return Err(err(vars::EMAIL_KEYS, "lists no key"));
    }
    let home_url = required(vars::EMAIL_HOME_URL)?;
    if !valid_target(&home_url) {
        return Err(err(
            vars::EMAIL_HOME_URL,
            format!("must be an absolute http(s) URL, got {home_url:?}"),
        ));
    }
    let max_age_secs = match get(vars::EMAIL_MAX_AGE) {
        None => DEFAULT_EMAIL_MAX_AGE_SECS,
        Some(v) => humantime::parse_duration(&v)
            .map(|d| d.as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                err(
                    vars::EMAIL_MAX_AGE,
                    format!("must be a duration like \"30days\" or \"400d\", got {v:?}"),
                )
            })?,
    };
    Ok(EmailSettings {
        site: required(vars::EMAIL_SITE)?,
        write_key: required(vars::EMAIL_WRITE_KEY)?,
        home_url,
        keys: parsed,
        max_age_secs,
    })
}

fn ingest_url(var: &'static str, u: &str) -> Result<String, ConfigError> {
    if !(u.starts_with("http://") || u.starts_with("https://")) {
        return Err(err(
            var,
            format!("must start with http:// or https://, got {u:?}"),
        ));
    }
    Ok(u.trim_end_matches('/').to_string())
}

fn parse_ingest_urls(list: &str) -> Result<Vec<String>, ConfigError> {
    let mut urls: Vec<String> = Vec::new();
    for u in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let u = ingest_url(vars::INGEST_URLS, u)?;
        if urls.contains(&u) {
            return Err(err(vars::INGEST_URLS, format!("lists {u:?} twice")));
        }
        urls.push(u);
    }
    if urls.is_empty() {
        return Err(err(vars::INGEST_URLS, "lists no URL"));
    }
    Ok(urls)
}

fn normalise_prefix(p: &str) -> Result<String, ConfigError> {
    let trimmed = p.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    let ok = trimmed.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~'))
    });
    if !ok {
        return Err(err(
            vars::PREFIX,
            format!("must be a path like \"/wm\" (letters, digits, - _ . ~ and /), got {p:?}"),
        ));
    }
    Ok(format!("/{trimmed}"))
}

fn parse_origins(s: &str) -> Result<AllowedOrigins, ConfigError> {
    if s == "*" {
        return Ok(AllowedOrigins::Any);
    }
    let mut list = Vec::new();
    for o in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let valid = (o.starts_with("https://") || o.starts_with("http://"))
            && !o.ends_with('/')
            && !o["https://".len().min(o.len())..].contains('/');
        if !valid {
            return Err(err(
                vars::ALLOWED_ORIGINS,
                format!("{o:?} is not an origin like \"https://shop.example.com\" (scheme and host, no path)"),
            ));
        }
        list.push(o.to_string());
    }
    if list.is_empty() {
        return Err(err(
            vars::ALLOWED_ORIGINS,
            "lists no origin (use \"*\" to allow any)",
        ));
    }
    Ok(AllowedOrigins::List(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn empty_environment_gives_the_defaults() {
        assert_eq!(read(&[]).unwrap(), Config::default());
    }

    #[test]
    fn values_are_read_and_normalised() {
        let c = read(&[
            ("WAYMARK_PREFIX", "collect/v/"),
            ("INGEST_URL", "https://ingest.example.com/"),
            ("IP_MODE", "drop"),
            ("GPC_MODE", "keep"),
            (
                "ALLOWED_ORIGINS",
                "https://a.example, http://localhost:8080",
            ),
            ("BOT_SCORE_THRESHOLD", "10"),
            ("ALLOWED_QUERY_PARAMS", "sku, cat_*"),
        ])
        .unwrap();
        assert_eq!(c.allowed_query_params, ["sku", "cat_*"]);
        assert_eq!(c.prefix, "/collect/v");
        assert_eq!(c.ingest_urls, ["https://ingest.example.com"]);
        assert_eq!(c.ip_mode, IpMode::Drop);
        assert_eq!(c.gpc, GpcMode::Keep);
        assert!(c.allowed_origins.allows("https://a.example"));
        assert!(c.allowed_origins.allows("http://localhost:8080"));
        assert!(!c.allowed_origins.allows("https://evil.example"));
        assert_eq!(c.bot_score_threshold, 10);
        assert_eq!(read(&[("WAYMARK_PREFIX", "/")]).unwrap().prefix, "");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("WAYMARK_PREFIX", "/a b"),
            ("WAYMARK_PREFIX", "/../x"),
            ("INGEST_URL", "ftp://x"),
            ("INGEST_URLS", "https://a.example, ftp://x"),
            ("INGEST_URLS", "https://a.example,https://a.example/"),
            ("INGEST_URLS", " , "),
            ("IP_MODE", "keep"),
            ("GPC_MODE", "yes"),
            ("ALLOWED_ORIGINS", "https://a.example/path"),
            ("ALLOWED_ORIGINS", ","),
            ("BOT_SCORE_THRESHOLD", "101"),
            ("BOT_SCORE_THRESHOLD", "high"),
            ("ALLOWED_QUERY_PARAMS", "sku,*"),
        ] {
            let e = read(&[(k, v)]).unwrap_err();
            assert_eq!(e.var, k, "{v}");
            assert!(e.to_string().starts_with(&format!("{k}: ")), "{e}");
        }
    }

    #[test]
    fn a_list_of_ingest_servers_keeps_its_order() {
        let c = read(&[(
            "INGEST_URLS",
            "https://ingest-b.example/, http://10.0.0.7:8080 ,https://ingest-a.example",
        )])
        .unwrap();
        assert_eq!(
            c.ingest_urls,
            [
                "https://ingest-b.example",
                "http://10.0.0.7:8080",
                "https://ingest-a.example"
            ]
        );
        assert!(read(&[]).unwrap().ingest_urls.is_empty());
        let both = read(&[
            ("INGEST_URL", "https://a.example"),
            ("INGEST_URLS", "https://b.example"),
        ])
        .unwrap_err();
        assert_eq!(both.var, "INGEST_URLS");
        assert!(both.reason.contains("not both"), "{both}");
    }

    const EMAIL: [(&str, &str); 4] = [
        (
            "EMAIL_KEYS",
            "k2:a-new-secret-0123456789, k1:an-old-secret-0123456789",
        ),
        ("EMAIL_SITE", "shop"),
        ("EMAIL_WRITE_KEY", "wk_shop"),
        ("EMAIL_HOME_URL", "https://shop.example/"),
    ];

    #[test]
    fn email_settings_are_read_when_keys_are_set() {
        assert_eq!(read(&[]).unwrap().email, None);
        let e = read(&EMAIL).unwrap().email.unwrap();
        assert_eq!(e.site, "shop");
        assert_eq!(e.write_key, "wk_shop");
        assert_eq!(e.keys.len(), 2);
        assert_eq!(e.keys[0].id, "k2");
        assert_eq!(e.keys[1].secret, b"an-old-secret-0123456789");
        assert_eq!(e.max_age_secs, DEFAULT_EMAIL_MAX_AGE_SECS);
        let mut with_age = EMAIL.to_vec();
        with_age.push(("EMAIL_MAX_AGE", "30days"));
        assert_eq!(
            read(&with_age).unwrap().email.unwrap().max_age_secs,
            30 * 86_400
        );
        assert!(
            !format!("{e:?}").contains("an-old-secret"),
            "secrets redacted"
        );
    }

    #[test]
    fn bad_email_settings_name_the_variable() {
        for (k, v, var) in [
            ("EMAIL_KEYS", "k1", "EMAIL_KEYS"),
            ("EMAIL_KEYS", "k1:short", "EMAIL_KEYS"),
            ("EMAIL_HOME_URL", "/home", "EMAIL_HOME_URL"),
            ("EMAIL_MAX_AGE", "soon", "EMAIL_MAX_AGE"),
            ("EMAIL_SITE", "", "EMAIL_SITE"),
        ] {
            let mut vars: Vec<(&str, &str)> =
                EMAIL.iter().filter(|(n, _)| *n != k).copied().collect();
            vars.push((k, v));
            let e = read(&vars).unwrap_err();
            assert_eq!(e.var, var, "{k}={v}: {e}");
        }
    }
}
