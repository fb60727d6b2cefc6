//! `GET /quality?site=S`: the quality report as one page a marketer reads at a glance, the
//! worst problems first, then a plot per check, drawn by the server as inline SVG with
//! `plotters` (no script, nothing fetched from anywhere: the page's Content-Security-Policy
//! allows none).
//!
//! **How the page authenticates.** With `Authorization: Bearer <read key>` (curl, a proxy that
//! adds it) `GET` answers the page. A browser has no such header, so `GET` without it answers a
//! small form and the read key is sent back in a `POST` body (`key=...&since=...`), never in the
//! URL: it stays out of access logs, browser history and `Referer` headers, and the server
//! logs neither the body nor the key. The answer is `Cache-Control: no-store`.
//!
//! Every figure on the page carries `data-q` (the JSON pointer of the same figure in
//! `GET /v1/quality`'s answer) and `data-v` (its value), so a test can check that the page says
//! what the JSON says.

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use plotters::prelude::*;
use serde::Deserialize;
use serde_json::Value;

use super::{parse_since, report, Params, QualityState};
use crate::query::QueryError;

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

#[derive(Deserialize)]
pub struct KeyForm {
    key: String,
    #[serde(default)]
    since: Option<String>,
}

pub async fn get_page(
    State(st): State<QualityState>,
    Query(p): Query<Params>,
    headers: HeaderMap,
) -> Response {
    if headers.get(header::AUTHORIZATION).is_none() {
        return html(
            StatusCode::OK,
            &form(p.site.as_deref(), p.since.as_deref(), None),
        );
    }
    let r = async {
        let site = st.query.authorize(&headers, p.site.as_deref())?;
        render_for(&st, &site, p.since.as_deref()).await
    }
    .await;
    answer(r, p.site.as_deref(), p.since.as_deref())
}

pub async fn post_page(
    State(st): State<QualityState>,
    Query(p): Query<Params>,
    Form(f): Form<KeyForm>,
) -> Response {
    let since = f.since.as_deref().or(p.since.as_deref());
    let r = async {
        let (site, _) = st
            .query
            .authorize_read_key(f.key.trim(), p.site.as_deref())?;
        render_for(&st, &site, since).await
    }
    .await;
    answer(r, p.site.as_deref(), since)
}

async fn render_for(
    st: &QualityState,
    site: &str,
    since: Option<&str>,
) -> Result<String, QueryError> {
    let now = crate::clock::now_ms();
    let since_ms = parse_since(since, now)?;
    let r = report(st, site, since_ms, now).await?;
    Ok(render(&r, since.unwrap_or("24h")))
}

fn answer(r: Result<String, QueryError>, site: Option<&str>, since: Option<&str>) -> Response {
    match r {
        Ok(body) => html(StatusCode::OK, &body),
        Err(e @ (QueryError::Unauthorized(_) | QueryError::Forbidden(_))) => html(
            StatusCode::UNAUTHORIZED,
            &form(site, since, Some(&e.to_string())),
        ),
        Err(e @ QueryError::BadRequest { .. }) => html(
            StatusCode::BAD_REQUEST,
            &form(site, since, Some(&e.to_string())),
        ),
        Err(e) => e.into_response(),
    }
}

fn html(status: StatusCode, body: &str) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Text between tags.
fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// A double-quoted attribute's value.
fn attr(s: &str) -> String {
    html_escape::encode_double_quoted_attribute(s).into_owned()
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
main{padding:16px 24px;display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
section.wide{grid-column:1/-1}h2{font-size:16px;margin:4px 0 8px}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top}
.n{font-variant-numeric:tabular-nums;text-align:right}.bad{color:#b3261e;font-weight:600}.ok{color:#1b7f3b}
.ex{font:12px ui-monospace,monospace;color:#555;word-break:break-all}.kpi{display:flex;gap:24px;flex-wrap:wrap}
.kpi div{min-width:120px}.kpi b{display:block;font-size:22px}svg{max-width:100%;height:auto}
form{background:#fff;max-width:420px;margin:40px auto;padding:20px;border-radius:8px}input,select{width:100%;padding:6px;margin:4px 0 12px}";

/// The key form (GET without a key, or a refused key).
fn form(site: Option<&str>, since: Option<&str>, error: Option<&str>) -> String {
    let site = site.unwrap_or("");
    let since = since.unwrap_or("24h");
    let err = error
        .map(|e| format!("<p class=\"bad\">{}</p>", esc(e)))
        .unwrap_or_default();
    let options: String = ["6h", "24h", "7d", "31d"]
        .iter()
        .map(|o| {
            let sel = if *o == since { " selected" } else { "" };
            format!("<option{sel}>{o}</option>")
        })
        .collect();
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Data quality: {s}</title><style>{STYLE}</style></head><body>\
<form method=\"post\" action=\"/quality?site={q}\"><h1>Data quality: {s}</h1>{err}\
<label>Read key<input type=\"password\" name=\"key\" autocomplete=\"current-password\" required autofocus></label>\
<label>Window<select name=\"since\">{options}</select></label><button type=\"submit\">Show</button></form></body></html>",
        s = esc(site),
        q = attr(&form_urlencoded::byte_serialize(site.as_bytes()).collect::<String>()),
    )
}

/// A figure of the report: its JSON pointer and value in `data-q`/`data-v`, shown as a number,
/// a percentage or milliseconds.
fn fig(r: &Value, pointer: &str, fmt: Fmt) -> String {
    let v = r.pointer(pointer).cloned().unwrap_or(Value::Null);
    let shown = match (fmt, v.as_f64()) {
        (Fmt::Pct, Some(x)) => format!("{:.1}%", x * 100.0),
        (Fmt::Ms, Some(x)) => format!("{x} ms"),
        (_, Some(_)) => v.to_string(),
        (_, None) => v.as_str().map(str::to_string).unwrap_or_default(),
    };
    format!(
        "<span data-q=\"{}\" data-v=\"{}\" data-fmt=\"{}\">{}</span>",
        attr(pointer),
        attr(&v.to_string()),
        fmt.name(),
        esc(&shown)
    )
}

#[derive(Clone, Copy)]
enum Fmt {
    Int,
    Pct,
    Ms,
}

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Int => "int",
            Fmt::Pct => "pct",
            Fmt::Ms => "ms",
        }
    }
}

fn arr<'a>(r: &'a Value, pointer: &str) -> &'a [Value] {
    r.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The whole page for a report.
pub fn render(r: &Value, since: &str) -> String {
    let site = r["site"].as_str().unwrap_or("");
    let mut out = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Data quality: {s}</title><style>{STYLE}</style></head><body>\
<header><h1>Data quality: {s}</h1><div>{} to {} (since {})</div></header><main>",
        fig(r, "/since", Fmt::Int),
        fig(r, "/until", Fmt::Int),
        esc(since),
        s = esc(site),
    );

    // Headline figures.
    out.push_str("<section class=\"wide\"><div class=\"kpi\">");
    for (label, p, f) in [
        ("events", "/events", Fmt::Int),
        ("with violations", "/violations/share", Fmt::Pct),
        (
            "orders one side only",
            "/consistency/one_side_share",
            Fmt::Pct,
        ),
        ("refused", "/intake/rejected_share", Fmt::Pct),
        ("duplicates dropped", "/intake/duplicates_dropped", Fmt::Int),
        ("quarantined", "/intake/quarantined", Fmt::Int),
        ("bots", "/bots/share", Fmt::Pct),
        ("clock corrected", "/clock/corrected_share", Fmt::Pct),
        ("ack to visible", "/freshness/mean_delay_ms", Fmt::Ms),
    ] {
        out.push_str(&format!("<div>{label}<b>{}</b></div>", fig(r, p, f)));
    }
    out.push_str("</div></section>");

    // Problems, worst first.
    out.push_str("<section class=\"wide\" id=\"problems\"><h2>Problems, worst first</h2>");
    let problems = arr(r, "/problems");
    if problems.is_empty() {
        out.push_str("<p class=\"ok\">No problems found in this window.</p>");
    } else {
        out.push_str("<table><tr><th>check</th><th>problem</th><th class=\"n\">share</th><th class=\"n\">events</th><th>example</th></tr>");
        for (k, p) in problems.iter().enumerate() {
            let ex = &p["example"];
            let example = if ex.is_null() {
                String::new()
            } else {
                let id = ex["message_id"]
                    .as_str()
                    .or(ex["order_id"].as_str())
                    .unwrap_or("");
                let data = ex["data"].as_str().unwrap_or("");
                format!(
                    "<div class=\"ex\">{}</div><div class=\"ex\">{}</div>",
                    esc(id),
                    esc(data)
                )
            };
            out.push_str(&format!(
                "<tr><td>{}</td><td class=\"bad\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{example}</td></tr>",
                esc(p["check"].as_str().unwrap_or("")),
                esc(p["title"].as_str().unwrap_or("")),
                fig(r, &format!("/problems/{k}/score"), Fmt::Pct),
                fig(r, &format!("/problems/{k}/count"), Fmt::Int),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");

    // Volume over time.
    let hours = arr(r, "/volume/hours");
    let labels: Vec<String> = hours.iter().map(|h| hour_label(&h["hour"])).collect();
    let col = |key: &str| -> Vec<f64> {
        hours
            .iter()
            .map(|h| h[key].as_f64().unwrap_or(0.0))
            .collect()
    };
    out.push_str("<section class=\"wide\" id=\"volume\"><h2>Volume per hour</h2>");
    out.push_str(&chart(
        "events per hour",
        &labels,
        &[
            ("events", RGBColor(52, 101, 164), col("events")),
            ("with violations", RGBColor(204, 0, 0), col("violating")),
            ("bots", RGBColor(136, 138, 133), col("bots")),
        ],
        Kind::Bars,
        None,
    ));
    let anomalies = arr(r, "/volume/anomalies");
    out.push_str(&format!(
        "<p>Anomalies (an hour over {}x or under 1/{} of the same hour's 7-day average): {}</p>",
        fig(r, "/volume/factor", Fmt::Int),
        fig(r, "/volume/factor", Fmt::Int),
        if anomalies.is_empty() {
            "none".to_string()
        } else {
            format!("{}", anomalies.len())
        }
    ));
    if !anomalies.is_empty() {
        out.push_str("<table><tr><th>event</th><th>hour</th><th class=\"n\">events</th><th class=\"n\">7-day average</th><th>kind</th></tr>");
        for (k, a) in anomalies.iter().enumerate() {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"bad\">{}</td></tr>",
                esc(a["event"].as_str().unwrap_or("")),
                esc(a["hour"].as_str().unwrap_or("")),
                fig(r, &format!("/volume/anomalies/{k}/events"), Fmt::Int),
                fig(r, &format!("/volume/anomalies/{k}/baseline"), Fmt::Int),
                esc(a["kind"].as_str().unwrap_or("")),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");

    // Violations by kind and event.
    out.push_str("<section id=\"violations\"><h2>Tracking plan violations</h2>");
    let kinds = arr(r, "/violations/by_kind");
    out.push_str(&chart(
        "violations by kind",
        &kinds
            .iter()
            .map(|k| k["kind"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>(),
        &[(
            "events",
            RGBColor(204, 0, 0),
            kinds
                .iter()
                .map(|k| k["count"].as_f64().unwrap_or(0.0))
                .collect(),
        )],
        Kind::Bars,
        None,
    ));
    out.push_str("<table><tr><th>event</th><th>kind</th><th>field</th><th class=\"n\">events</th><th class=\"n\">share</th></tr>");
    for (k, v) in arr(r, "/violations/by_event").iter().enumerate() {
        out.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(v["event"].as_str().unwrap_or("")),
            esc(v["kind"].as_str().unwrap_or("")),
            esc(v["field"].as_str().unwrap_or("")),
            fig(r, &format!("/violations/by_event/{k}/count"), Fmt::Int),
            fig(r, &format!("/violations/by_event/{k}/share"), Fmt::Pct),
        ));
    }
    out.push_str("</table></section>");

    // Completeness against thresholds.
    out.push_str("<section id=\"completeness\"><h2>Critical fields against their thresholds</h2>");
    let comp = arr(r, "/completeness");
    if comp.is_empty() {
        out.push_str("<p>No critical fields configured ([[sites.completeness]]).</p>");
    } else {
        let labels: Vec<String> = comp
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    c["event"].as_str().unwrap_or(""),
                    c["field"].as_str().unwrap_or("")
                )
            })
            .collect();
        let present: Vec<f64> = comp
            .iter()
            .map(|c| c["present"].as_f64().unwrap_or(0.0) * 100.0)
            .collect();
        let min: Vec<f64> = comp
            .iter()
            .map(|c| c["min"].as_f64().unwrap_or(0.0) * 100.0)
            .collect();
        out.push_str(&chart(
            "% of events carrying the field (dots: threshold)",
            &labels,
            &[("present %", RGBColor(78, 154, 6), present)],
            Kind::Bars,
            Some(min),
        ));
        out.push_str("<table><tr><th>event</th><th>field</th><th class=\"n\">present</th><th class=\"n\">threshold</th><th class=\"n\">missing</th></tr>");
        for (k, c) in comp.iter().enumerate() {
            let cls = if c["below"].as_bool() == Some(true) {
                "bad"
            } else {
                "ok"
            };
            out.push_str(&format!(
                "<tr class=\"{cls}\"><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(c["event"].as_str().unwrap_or("")),
                esc(c["field"].as_str().unwrap_or("")),
                fig(r, &format!("/completeness/{k}/present"), Fmt::Pct),
                fig(r, &format!("/completeness/{k}/min"), Fmt::Pct),
                fig(r, &format!("/completeness/{k}/missing"), Fmt::Int),
            ));
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");

    // Browser / backend consistency.
    out.push_str("<section id=\"consistency\"><h2>Orders: browser and backend</h2>");
    let days = arr(r, "/consistency/days");
    let dl: Vec<String> = days
        .iter()
        .map(|d| d["day"].as_str().unwrap_or("").to_string())
        .collect();
    let dcol = |key: &str| -> Vec<f64> {
        days.iter()
            .map(|d| d[key].as_f64().unwrap_or(0.0))
            .collect()
    };
    out.push_str(&chart(
        "orders per day by who saw them",
        &dl,
        &[
            ("both", RGBColor(78, 154, 6), dcol("both")),
            ("browser only", RGBColor(245, 121, 0), dcol("browser_only")),
            ("backend only", RGBColor(117, 80, 123), dcol("backend_only")),
            (
                "revenue differs",
                RGBColor(204, 0, 0),
                dcol("revenue_mismatches"),
            ),
        ],
        Kind::Bars,
        None,
    ));
    out.push_str(&format!(
        "<p>{} orders: {} seen by both, {} by the browser only, {} by the backend only; {} with a different revenue.</p>",
        fig(r, "/consistency/orders", Fmt::Int),
        fig(r, "/consistency/both", Fmt::Int),
        fig(r, "/consistency/browser_only", Fmt::Int),
        fig(r, "/consistency/backend_only", Fmt::Int),
        fig(r, "/consistency/revenue_mismatches", Fmt::Int),
    ));
    out.push_str("</section>");

    // Freshness and clock skew.
    out.push_str("<section id=\"freshness\"><h2>Freshness and clock skew</h2>");
    let fh = arr(r, "/freshness/hours");
    out.push_str(&chart(
        "ack to visible, mean ms per hour",
        &fh.iter()
            .map(|h| hour_label(&h["hour"]))
            .collect::<Vec<_>>(),
        &[(
            "mean ms",
            RGBColor(52, 101, 164),
            fh.iter()
                .map(|h| h["mean_delay_ms"].as_f64().unwrap_or(0.0))
                .collect(),
        )],
        Kind::Lines,
        None,
    ));
    let ch = arr(r, "/clock/hours");
    out.push_str(&chart(
        "clock correction, mean ms per hour",
        &ch.iter()
            .map(|h| hour_label(&h["hour"]))
            .collect::<Vec<_>>(),
        &[(
            "mean correction ms",
            RGBColor(117, 80, 123),
            ch.iter()
                .map(|h| h["mean_correction_ms"].as_f64().unwrap_or(0.0))
                .collect(),
        )],
        Kind::Lines,
        None,
    ));
    out.push_str(&format!(
        "<p>Mean ack to visible {}; {} events took over a minute. Clock-skew rule moved {} timestamps (mean {}, max {}).</p></section>",
        fig(r, "/freshness/mean_delay_ms", Fmt::Ms),
        fig(r, "/freshness/late_60s", Fmt::Int),
        fig(r, "/clock/corrected", Fmt::Int),
        fig(r, "/clock/mean_correction_ms", Fmt::Ms),
        fig(r, "/clock/max_correction_ms", Fmt::Ms),
    ));

    // Intake: rejects, duplicates, quarantine.
    out.push_str("<section id=\"intake\"><h2>Refused, duplicates, quarantine</h2><table>");
    for (label, p) in [
        ("received", "/intake/received"),
        ("refused", "/intake/rejected"),
        (
            "duplicates dropped (same message id)",
            "/intake/duplicates_dropped",
        ),
        ("duplicate rows not yet merged", "/intake/duplicates_stored"),
        ("over the rate limit", "/intake/rate_limited"),
        ("quarantined", "/intake/quarantined"),
        ("bot events", "/bots/bots"),
    ] {
        out.push_str(&format!(
            "<tr><td>{label}</td><td class=\"n\">{}</td></tr>",
            fig(r, p, Fmt::Int)
        ));
    }
    out.push_str("</table><h2>Refused by reason</h2><table>");
    for (k, x) in arr(r, "/intake/rejected_by_reason").iter().enumerate() {
        out.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(x["reason"].as_str().unwrap_or("")),
            fig(
                r,
                &format!("/intake/rejected_by_reason/{k}/count"),
                Fmt::Int
            )
        ));
    }
    out.push_str("</table><h2>Quarantine by reason</h2><table>");
    for (k, x) in arr(r, "/intake/quarantine_by_reason").iter().enumerate() {
        out.push_str(&format!(
            "<tr><td>{}</td><td class=\"n\">{}</td></tr>",
            esc(x["reason"].as_str().unwrap_or("")),
            fig(
                r,
                &format!("/intake/quarantine_by_reason/{k}/count"),
                Fmt::Int
            )
        ));
    }
    out.push_str("</table></section></main></body></html>");
    out
}

/// `"2026-11-30T08:00:00Z"` -> `"11-30 08h"`.
fn hour_label(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    match (s.get(5..10), s.get(11..13)) {
        (Some(d), Some(h)) => format!("{d} {h}h"),
        _ => s.to_string(),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Bars,
    Lines,
}

/// One plot as an SVG string: categories along x, one colour per series (bars side by side,
/// or lines), and `marks` drawn as dots over the first series (thresholds).
fn chart(
    caption: &str,
    labels: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
    kind: Kind,
    marks: Option<Vec<f64>>,
) -> String {
    let mut svg = String::new();
    if labels.is_empty() {
        return format!("<p>{}: no data in this window.</p>", esc(caption));
    }
    let drawn = draw(&mut svg, caption, labels, series, kind, marks.as_deref());
    match drawn {
        Ok(()) => svg,
        Err(e) => format!(
            "<p class=\"bad\">{}: the plot failed: {}</p>",
            esc(caption),
            esc(&e)
        ),
    }
}

fn draw(
    svg: &mut String,
    caption: &str,
    labels: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
    kind: Kind,
    marks: Option<&[f64]>,
) -> Result<(), String> {
    let n = labels.len();
    let top = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .chain(marks.unwrap_or(&[]).iter().copied())
        .fold(0.0f64, f64::max);
    let top = if top <= 0.0 { 1.0 } else { top * 1.1 };
    let root = SVGBackend::with_string(svg, (760, 300)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut c = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..n as f64, 0f64..top)
        .map_err(|e| err(&e))?;
    // Category labels sit under the middle of their category (every `step`-th one when there
    // are many), drawn here rather than as the mesh's tick labels: those sit on the category's
    // left edge, and the first was cut in half by the plot's edge.
    let step = n.div_ceil(12).max(1);
    let label_style =
        TextStyle::from(("sans-serif", 12)).pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
    for (i, label) in labels.iter().enumerate().step_by(step) {
        let (x, y) = c.backend_coord(&(i as f64 + 0.5, 0.0));
        root.draw(&Text::new(label.clone(), (x, y + 6), label_style.clone()))
            .map_err(|e| err(&e))?;
    }
    c.configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_label_formatter(&|y| {
            if *y >= 10.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .draw()
        .map_err(|e| err(&e))?;
    let k = series.len().max(1) as f64;
    for (si, (name, color, values)) in series.iter().enumerate() {
        let color = *color;
        match kind {
            Kind::Bars => {
                let w = 0.8 / k;
                c.draw_series(values.iter().enumerate().map(|(i, v)| {
                    let x0 = i as f64 + 0.1 + si as f64 * w;
                    Rectangle::new([(x0, 0.0), (x0 + w, *v)], color.filled())
                }))
                .map_err(|e| err(&e))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            }
            Kind::Lines => {
                c.draw_series(LineSeries::new(
                    values.iter().enumerate().map(|(i, v)| (i as f64 + 0.5, *v)),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 12, y)], color));
                c.draw_series(
                    values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| Circle::new((i as f64 + 0.5, *v), 3, color.filled())),
                )
                .map_err(|e| err(&e))?;
            }
        }
    }
    if let Some(marks) = marks {
        c.draw_series(
            marks
                .iter()
                .enumerate()
                .map(|(i, v)| Circle::new((i as f64 + 0.5, *v), 5, BLACK.filled())),
        )
        .map_err(|e| err(&e))?;
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_figure_carries_its_json_pointer_and_value_and_text_is_escaped() {
        let r = json!({
            "site": "<shop>", "since": "2026-11-30T07:00:00Z", "until": "2026-11-30T09:00:00Z",
            "events": 12,
            "problems": [{"check": "violations", "title": "Order Completed: <i>", "score": 0.25, "count": 3,
                          "example": {"message_id": "m1", "data": "{\"x\":\"<script>\"}"}}],
            "volume": {"factor": 2.0, "hours": [{"hour": "2026-11-30T08:00:00Z", "events": 12, "violating": 3, "bots": 0}], "anomalies": []},
            "violations": {"share": 0.25, "by_kind": [{"kind": "required_missing", "count": 3}], "by_event": []},
            "completeness": [], "consistency": {"days": []}, "intake": {}, "bots": {}, "clock": {}, "freshness": {}
        });
        let page = render(&r, "24h");
        assert!(
            page.contains("data-q=\"/problems/0/score\" data-v=\"0.25\" data-fmt=\"pct\">25.0%<")
        );
        assert!(page.contains("data-q=\"/events\" data-v=\"12\" data-fmt=\"int\">12<"));
        assert!(!page.contains("<script>") && !page.contains("<i>") && !page.contains("<shop>"));
        assert!(page.contains("<svg"), "the plots are inline SVG");
        // The SVG namespace is the only URL on the page: nothing is fetched from anywhere.
        for (i, _) in page.match_indices("http") {
            assert!(
                page[i..].starts_with("http://www.w3.org/"),
                "{}",
                &page[i..(i + 40).min(page.len())]
            );
        }
    }

    #[test]
    fn the_key_form_posts_the_key_in_the_body() {
        let f = form(Some("a b"), None, Some("authorization: unknown read key"));
        assert!(f.contains("method=\"post\" action=\"/quality?site=a+b\""));
        assert!(f.contains("type=\"password\" name=\"key\""));
        assert!(f.contains("unknown read key"));
    }
}
