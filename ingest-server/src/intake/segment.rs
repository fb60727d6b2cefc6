//! Segment-shaped requests (`/v1/batch`, `/v1/track` ..., analytics.js's short paths,
//! RudderStack's beacon): the write key and origin checks, validation by the protocol crate,
//! enrichment, admission.

use waymark_protocol::intake::IntakePath;
use waymark_protocol::privacy::{apply_gpc, gpc_keeps};
use waymark_protocol::{parse_batch, parse_single, BatchError};

use super::auth::{origin_allowed, unknown_key};
use super::enrich::{to_row, RequestFacts};
use super::error::ApiError;
use super::{Accepted, Intake};

/// One Segment-shaped request, as the HTTP layer read it.
pub struct Delivery<'a> {
    pub kind: IntakePath,
    /// The decoded body.
    pub body: &'a [u8],
    /// The write key carried outside the body (Basic user name, `?writeKey=`), if any.
    pub write_key: Option<String>,
    /// The browser's `Origin`, if any.
    pub origin: Option<&'a str>,
    /// The peer's address (the site's `ip` setting decides what is kept of it).
    pub peer_ip: Option<String>,
    /// The `Cookie` header: an email click's stitch marker is read from it.
    pub cookie: Option<&'a str>,
    /// The request carried `Sec-GPC: 1`: the site's `gpc` setting decides what it does, and no
    /// stitch link is made.
    pub gpc: bool,
}

/// Refuses a write key outside the body that no site has, before the body is read.
pub fn check_key(intake: &Intake, key: Option<&str>) -> Result<(), ApiError> {
    match key {
        Some(k) if intake.site_for_key(k).is_none() => Err(unknown_key()),
        _ => Ok(()),
    }
}

/// The 400 or 413 for a batch the protocol crate refused whole.
pub fn batch_error(e: BatchError) -> ApiError {
    if e.is_too_large() {
        ApiError::TooLarge {
            code: e.code(),
            field: e.field(),
            message: e.to_string(),
        }
    } else {
        ApiError::bad(e.code(), e.field(), e.to_string())
    }
}

/// Collects rows, each given its quality verdict (none when the site has no checks).
pub fn with_verdicts(
    rows: impl Iterator<Item = crate::store::row::EventRow>,
    verdicts: Vec<super::quality::Verdict>,
) -> Vec<crate::store::row::EventRow> {
    let mut verdicts = verdicts.into_iter();
    rows.map(|mut r| {
        if let Some(v) = verdicts.next() {
            r.violations = v.violations;
            r.missing = v.missing;
        }
        r
    })
    .collect()
}

/// Validates the body, finds the site by its write key (outside the body, else the body's
/// `writeKey`), checks the origin, enriches every valid event and admits them.
pub async fn accept(intake: &Intake, d: Delivery<'_>) -> Result<Accepted, ApiError> {
    let received_at_ms = crate::clock::now_ms();
    let mut validated = match d.kind {
        IntakePath::Batch => parse_batch(d.body, received_at_ms),
        IntakePath::Single(k) => parse_single(d.body, k, received_at_ms),
    }
    .map_err(batch_error)?;
    let key = d
        .write_key
        .or_else(|| validated.write_key.clone())
        .ok_or(ApiError::Unauthorized {
        code: "missing_write_key",
        field: "writeKey",
        message:
            "writeKey: missing (send it as the HTTP Basic username or as \"writeKey\" in the body)"
                .into(),
    })?;
    let site = intake.site_for_key(&key).ok_or_else(unknown_key)?;
    if let Some(o) = d.origin {
        if !origin_allowed(site, o) {
            return Err(ApiError::Forbidden {
                code: "origin_not_allowed",
                field: "origin",
                message: format!("origin: {o:?} may not send events for this site"),
            });
        }
    }
    let mut events = validated.events;
    // Under GPC some events leave before the plan sees them: follow the batch positions of those
    // that stay, so a plan's rejections still name the right events.
    let mut positions = None;
    let gpc_dropped = if d.gpc {
        let mut kept = super::quality::batch_positions(events.len(), &validated.rejections);
        let mut i = 0;
        kept.retain(|_| {
            i += 1;
            gpc_keeps(&events[i - 1], site.gpc)
        });
        positions = Some(kept);
        apply_gpc(&mut events, site.gpc)
    } else {
        0
    };
    let facts = RequestFacts {
        site: &site.id,
        ip_mode: site.ip,
        received_at_ms,
        batch_sent_at: validated.sent_at.as_deref(),
        source: "api",
        peer_ip: d.peer_ip,
        geo: None,
        client: None,
        urls: site.url_policy(),
        gpc: d.gpc,
        request_ip: Default::default(),
    };
    let verdicts =
        intake.check_quality(&site.id, positions, &mut events, &mut validated.rejections);
    intake.count_rejections(&site.id, &validated.rejections);
    let mut rows = with_verdicts(
        events.iter().map(|ev| to_row(ev, &facts, &intake.ua)),
        verdicts,
    );
    let total = rows.len();
    let links = super::identifiers::links_of(&rows, &events, &site.identity);
    rows.extend(links);
    if let Some(link) = super::email::marker_link(site, d.cookie, d.gpc, &events, received_at_ms) {
        rows.push(super::email::link_row(&site.id, &link, received_at_ms));
    }
    // Link rows (identifiers, an email click's stitch) are not events: not counted.
    let suppressed = intake.admit_unsuppressed(rows, "api").await?;
    // A suppressed link row is counted as a suppressed event: close enough for a reply.
    let accepted = total.saturating_sub(suppressed);
    Ok(Accepted {
        accepted,
        rejected: validated.rejections,
        suppressed,
        gpc_dropped,
    })
}
