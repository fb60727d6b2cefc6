//! The payload of a spool record: the enriched rows of one request, ready for the writer.
//!
//! The first byte says the format:
//! - `0x02`: binary v2, written by this version: v1's layout with each row followed by its
//!   `violations` and `missing` lists (`count: u32 LE`, then each string).
//! - `0x01`: binary v1: `count: u32 LE`, then each [`EventRow`] field in declaration order up
//!   to `context`: strings as `len: u32 LE | UTF-8 bytes`, integers little-endian at their
//!   width, `f64` as its IEEE bits (LE), `Option<T>` as `0` or `1 | T`; still read, the newer
//!   fields empty.
//! - `[` (or JSON whitespace): the JSON array of rows written by earlier versions; still read, so
//!   a spool left by an older server replays after an upgrade.
//!
//! The record's CRC already covers the payload; decoding still checks lengths and UTF-8, and a
//! payload it cannot read is an error (the writer quarantines it), never a panic.
//!
//! The writer does not decode rows to insert them: [`transcode`] rewrites a payload's rows as
//! ClickHouse RowBinary field by field (the layouts differ only in length prefixes and the
//! `Nullable` flag), reading out just the few fields the writer checks.
//!
//! Adding a field to [`EventRow`] means a new tag whose decoder reads the new layout; the older
//! tags keep decoding theirs with the new field defaulted. The `row_codec!` lists below must
//! name every field: a missing one is a compile error in the decoders.

use crate::store::row::EventRow;

/// The format tag of binary v1 payloads (read only).
pub const TAG_BINARY_V1: u8 = 0x01;
/// The format tag of binary v2 payloads (written).
pub const TAG_BINARY_V2: u8 = 0x02;

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty payload")]
    Empty,
    #[error("unknown payload format tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("payload ends inside row {row}")]
    Truncated { row: usize },
    #[error("row {row}: a string is not UTF-8")]
    NotUtf8 { row: usize },
    #[error("row {row}: an option tag is {tag}, not 0 or 1")]
    BadOption { row: usize, tag: u8 },
    #[error("{0} trailing bytes after the last row")]
    Trailing(usize),
    #[error("not a JSON array of rows: {0}")]
    Json(String),
}

/// Encodes rows as a binary v2 payload.
pub fn encode(rows: &[EventRow]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + rows.len() * 640);
    out.push(TAG_BINARY_V2);
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    for r in rows {
        encode_row(r, &mut out);
    }
    out
}

/// Decodes a payload in any format this version reads.
pub fn decode(payload: &[u8]) -> Result<Vec<EventRow>, DecodeError> {
    let mut rows = Vec::new();
    decode_into(payload, &mut rows)?;
    Ok(rows)
}

/// Decodes a payload onto the end of `rows`; the number of rows added. On an error `rows` is
/// as it was. The writer gathers a batch this way into one buffer it reuses, instead of a
/// `Vec` per record appended to the batch's (issue 20: growing and copying the batch was 9 %
/// of the server's CPU under load).
pub fn decode_into(payload: &[u8], rows: &mut Vec<EventRow>) -> Result<usize, DecodeError> {
    let before = rows.len();
    let result = decode_onto(payload, rows);
    if result.is_err() {
        rows.truncate(before);
    }
    result.map(|()| rows.len() - before)
}

fn decode_onto(payload: &[u8], rows: &mut Vec<EventRow>) -> Result<(), DecodeError> {
    let mut reader = RowReader::new(payload)?;
    // Every row takes more than a byte: a count beyond the length is corruption, and must not
    // become a huge allocation (`left` is bounded by the payload's length).
    rows.reserve(reader.left());
    let mut row = EventRow::default();
    while reader.next_into(&mut row)? {
        rows.push(std::mem::take(&mut row));
    }
    Ok(())
}

/// Reads a payload's rows one at a time, in any format this version reads ([`decode_into`]).
struct RowReader<'a>(Rows<'a>);

enum Rows<'a> {
    Binary {
        c: Cursor<'a>,
        left: usize,
        v1: bool,
    },
    Json(std::vec::IntoIter<EventRow>),
}

impl<'a> RowReader<'a> {
    /// Reads the payload's format tag and row count (a JSON payload of an earlier version is
    /// parsed whole here).
    fn new(payload: &'a [u8]) -> Result<Self, DecodeError> {
        match payload.first() {
            None => Err(DecodeError::Empty),
            Some(&tag @ (TAG_BINARY_V1 | TAG_BINARY_V2)) => {
                let mut c = Cursor {
                    buf: &payload[1..],
                    row: 0,
                };
                let n = c.u32()? as usize;
                Ok(RowReader(Rows::Binary {
                    // Every row takes more than a byte: a larger count ends in `Truncated`
                    // all the same.
                    left: n.min(c.buf.len() + 1),
                    c,
                    v1: tag == TAG_BINARY_V1,
                }))
            }
            Some(b'[' | b' ' | b'\n' | b'\r' | b'\t') => {
                let v: Vec<EventRow> = serde_json::from_slice(payload)
                    .map_err(|e| DecodeError::Json(e.to_string()))?;
                Ok(RowReader(Rows::Json(v.into_iter())))
            }
            Some(&t) => Err(DecodeError::UnknownTag(t)),
        }
    }

    /// Rows not yet read (an upper bound for a damaged payload).
    fn left(&self) -> usize {
        match &self.0 {
            Rows::Binary { left, .. } => *left,
            Rows::Json(it) => it.len(),
        }
    }

    /// Reads the next row into `row`: `Ok(false)` after the last one. On an error `row` may
    /// hold part of a row.
    fn next_into(&mut self, row: &mut EventRow) -> Result<bool, DecodeError> {
        match &mut self.0 {
            Rows::Binary { c, left, v1 } => {
                if *left == 0 {
                    return match c.buf.len() {
                        0 => Ok(false),
                        n => Err(DecodeError::Trailing(n)),
                    };
                }
                if *v1 {
                    decode_row_v1_into(c, row)?;
                } else {
                    decode_row_v2_into(c, row)?;
                }
                *left -= 1;
                c.row += 1;
                Ok(true)
            }
            Rows::Json(it) => Ok(it.next().map(|r| *row = r).is_some()),
        }
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    row: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated { row: self.row });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
}

/// How a spooled field is written in ClickHouse's RowBinary ([`transcode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `len: u32 LE | bytes`, in RowBinary `len: LEB128 | bytes`.
    Str,
    /// Little-endian at this width, the same in both.
    Fixed(usize),
    /// `0`, or `1 | value` of this width; in RowBinary (Nullable) `1`, or `0 | value`.
    Opt(usize),
    /// `count: u32 LE | strings`, in RowBinary `count: LEB128 | strings`.
    Strs,
}

const fn optional(k: Kind) -> Kind {
    match k {
        Kind::Fixed(n) => Kind::Opt(n),
        _ => panic!("an optional EventRow field must be of a fixed width"),
    }
}

/// One field's binary form.
trait Field: Sized {
    const KIND: Kind;
    fn put(&self, out: &mut Vec<u8>);
    fn get(c: &mut Cursor<'_>) -> Result<Self, DecodeError>;
    /// Reads the field over `self`, reusing what it holds where it can.
    fn get_into(&mut self, c: &mut Cursor<'_>) -> Result<(), DecodeError> {
        *self = Self::get(c)?;
        Ok(())
    }
}

impl Field for String {
    const KIND: Kind = Kind::Str;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        out.extend_from_slice(self.as_bytes());
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        let n = c.u32()? as usize;
        let bytes = c.take(n)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::NotUtf8 { row: c.row })
    }
    fn get_into(&mut self, c: &mut Cursor<'_>) -> Result<(), DecodeError> {
        let n = c.u32()? as usize;
        let bytes = c.take(n)?;
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { row: c.row })?;
        self.clear();
        self.push_str(s);
        Ok(())
    }
}

macro_rules! le_field {
    ($($t:ty),*) => {$(
        impl Field for $t {
            const KIND: Kind = Kind::Fixed(std::mem::size_of::<$t>());
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(c: &mut Cursor<'_>) -> Result<Self, DecodeError> {
                Ok(<$t>::from_le_bytes(c.array()?))
            }
        }
    )*};
}
le_field!(u8, u32, u64, i64, f64);

impl Field for Vec<String> {
    const KIND: Kind = Kind::Strs;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        for s in self {
            s.put(out);
        }
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        let n = c.u32()? as usize;
        // Each string takes at least its 4-byte length: bound the allocation by what is left.
        let mut v = Vec::with_capacity(n.min(c.buf.len() / 4));
        for _ in 0..n {
            v.push(String::get(c)?);
        }
        Ok(v)
    }
}

impl<T: Field> Field for Option<T> {
    const KIND: Kind = optional(T::KIND);
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.put(out);
            }
        }
    }
    fn get(c: &mut Cursor<'_>) -> Result<Self, DecodeError> {
        match c.array::<1>()?[0] {
            0 => Ok(None),
            1 => Ok(Some(T::get(c)?)),
            tag => Err(DecodeError::BadOption { row: c.row, tag }),
        }
    }
}

macro_rules! row_codec {
    (v1: [$($f:ident),* $(,)?], v2: [$($g:ident),* $(,)?]) => {
        /// The fields of v1 rows, the first of v2's.
        const V1_FIELDS: usize = [$(stringify!($f)),*].len();

        /// Every field of a v2 row, in order: its name and kind, and which of [`Keys`] it is.
        fn layout() -> &'static [(&'static str, Kind, Option<Key>)] {
            static LAYOUT: std::sync::LazyLock<Vec<(&'static str, Kind, Option<Key>)>> =
                std::sync::LazyLock::new(|| {
                    fn kind<T: Field>(_: &T) -> Kind {
                        T::KIND
                    }
                    let d = EventRow::default();
                    vec![
                        $( (stringify!($f), kind(&d.$f), Key::of(stringify!($f))), )*
                        $( (stringify!($g), kind(&d.$g), Key::of(stringify!($g))), )*
                    ]
                });
            &LAYOUT
        }

        fn encode_row(r: &EventRow, out: &mut Vec<u8>) {
            $( Field::put(&r.$f, out); )*
            $( Field::put(&r.$g, out); )*
        }
        fn decode_row_v1_into(c: &mut Cursor<'_>, r: &mut EventRow) -> Result<(), DecodeError> {
            // Destructured, so a field missing from the lists is a compile error.
            let EventRow { $( $f, )* $( $g, )* } = r;
            $( Field::get_into($f, c)?; )*
            $( *$g = Default::default(); )*
            Ok(())
        }
        fn decode_row_v2_into(c: &mut Cursor<'_>, r: &mut EventRow) -> Result<(), DecodeError> {
            let EventRow { $( $f, )* $( $g, )* } = r;
            $( Field::get_into($f, c)?; )*
            $( Field::get_into($g, c)?; )*
            Ok(())
        }
    };
}

// v1: the fields of `EventRow` up to `context`, in this order; v2 adds the second list after
// them. Never reorder; add a new tag instead.
row_codec!(v1: [
    site,
    visitor_id,
    message_id,
    kind,
    event,
    name,
    anonymous_id,
    user_id,
    previous_id,
    group_id,
    timestamp,
    timestamp_ms,
    skew_rule,
    client_time,
    received_at_ms,
    sent_at_ms,
    source,
    session_id,
    page_url,
    page_path,
    page_title,
    page_referrer,
    page_search,
    utm_source,
    utm_medium,
    utm_campaign,
    utm_term,
    utm_content,
    user_agent,
    browser,
    browser_version,
    os,
    os_version,
    device_type,
    is_bot,
    bot_score,
    ip,
    locale,
    library_name,
    library_version,
    country,
    region,
    region_code,
    city,
    postal_code,
    geo_timezone,
    continent,
    colo,
    latitude,
    longitude,
    asn,
    gpc,
    product_id,
    product_name,
    price,
    quantity,
    currency,
    order_id,
    revenue,
    engaged_ms,
    scroll_depth,
    properties,
    traits,
    context,
], v2: [violations, missing]);

/// The fields of a row that the writer looks at before it inserts it ([`transcode`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys<'a> {
    pub site: &'a str,
    pub visitor_id: &'a str,
    pub message_id: &'a str,
    pub kind: &'a str,
    pub anonymous_id: &'a str,
    pub user_id: &'a str,
    pub previous_id: &'a str,
    pub source: &'a str,
    pub timestamp: u32,
}

/// Which of [`Keys`] a field is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Site,
    VisitorId,
    MessageId,
    Kind,
    AnonymousId,
    UserId,
    PreviousId,
    Source,
    Timestamp,
}

impl Key {
    fn of(field: &str) -> Option<Key> {
        Some(match field {
            "site" => Key::Site,
            "visitor_id" => Key::VisitorId,
            "message_id" => Key::MessageId,
            "kind" => Key::Kind,
            "anonymous_id" => Key::AnonymousId,
            "user_id" => Key::UserId,
            "previous_id" => Key::PreviousId,
            "source" => Key::Source,
            "timestamp" => Key::Timestamp,
            _ => return None,
        })
    }
}

impl<'a> Keys<'a> {
    fn set(&mut self, key: Key, bytes: &'a [u8], row: usize) -> Result<(), DecodeError> {
        if key == Key::Timestamp {
            self.timestamp = u32::from_le_bytes(bytes.try_into().expect("a u32 field"));
            return Ok(());
        }
        let s = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8 { row })?;
        *match key {
            Key::Site => &mut self.site,
            Key::VisitorId => &mut self.visitor_id,
            Key::MessageId => &mut self.message_id,
            Key::Kind => &mut self.kind,
            Key::AnonymousId => &mut self.anonymous_id,
            Key::UserId => &mut self.user_id,
            Key::PreviousId => &mut self.previous_id,
            Key::Source => &mut self.source,
            Key::Timestamp => unreachable!("handled above"),
        } = s;
        Ok(())
    }
}

/// The `events` columns in the order [`transcode`] writes them: `EventRow`'s fields, `kind` as
/// `type`.
pub fn columns() -> impl Iterator<Item = &'static str> {
    layout()
        .iter()
        .map(|(name, _, _)| if *name == "kind" { "type" } else { name })
}

fn put_leb128(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Writes the rows of a payload to `out` in ClickHouse's RowBinary, for the [`columns`], straight
/// from the spooled bytes: no `EventRow`, no `String` per field, no serde (issue 20: decoding
/// rows and serialising them again was most of the writer's CPU). `keep` sees each row's
/// [`Keys`] and says whether it goes in; a row it turns down is taken back out of `out`. The
/// number of rows kept. On an error `out` is as it was.
///
/// Only the key fields are checked to be UTF-8 here: the writer [`check`]ed every field as it
/// gathered the batch, and ClickHouse's `String` takes bytes.
pub fn transcode(
    payload: &[u8],
    out: &mut Vec<u8>,
    keep: impl FnMut(&Keys<'_>) -> bool,
) -> Result<usize, DecodeError> {
    let start = out.len();
    let result = walk(payload, out, keep);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// What the writer needs to know of a payload before it inserts it ([`check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub rows: usize,
    /// Every row came from `POST /v1/import`.
    pub import_only: bool,
}

/// Checks that a payload reads as rows, every string UTF-8, without copying anything: the
/// writer's check of each record as it gathers a batch (so that a record that would fail the
/// insert, or the per-row fallback's decoding, is quarantined beforehand). The same walk as
/// [`transcode`] (issue 20: decoding each row into a scratch `EventRow` instead was 5 % of the
/// server's CPU).
pub fn check(payload: &[u8]) -> Result<Checked, DecodeError> {
    let mut import_only = true;
    let rows = walk(payload, &mut Validate, |k| {
        import_only &= k.source == "import";
        true
    })?;
    Ok(Checked { rows, import_only })
}

/// The one walk over a payload's rows behind [`transcode`] and [`check`].
fn walk(
    payload: &[u8],
    out: &mut impl Emit,
    mut keep: impl FnMut(&Keys<'_>) -> bool,
) -> Result<usize, DecodeError> {
    match payload.first() {
        Some(&tag @ (TAG_BINARY_V1 | TAG_BINARY_V2)) => {
            let all = layout();
            let fields = if tag == TAG_BINARY_V1 {
                &all[..V1_FIELDS]
            } else {
                all
            };
            let mut c = Cursor {
                buf: &payload[1..],
                row: 0,
            };
            walk_rows(&mut c, fields, &all[fields.len()..], out, &mut keep)
        }
        // The JSON of earlier versions: decoded, then the same from its v2 bytes.
        _ => decode(payload).and_then(|rows| walk(&encode(&rows), out, keep)),
    }
}

/// Where [`walk_rows`] puts each field it reads: RowBinary in a `Vec<u8>` ([`transcode`]), or
/// nowhere once checked ([`Validate`], for [`check`]).
trait Emit {
    /// A string field, or one string of a list.
    fn string(&mut self, bytes: &[u8], row: usize) -> Result<(), DecodeError>;
    /// The length of a list of strings.
    fn count(&mut self, n: usize);
    /// Bytes written as they are (fixed-width fields, `Nullable` flags, defaults).
    fn raw(&mut self, bytes: &[u8]);
    /// Where the current row starts, to [`Emit::truncate`] back to when it is not kept.
    fn mark(&self) -> usize;
    fn truncate(&mut self, at: usize);
}

impl Emit for Vec<u8> {
    fn string(&mut self, bytes: &[u8], _: usize) -> Result<(), DecodeError> {
        put_leb128(self, bytes.len());
        self.extend_from_slice(bytes);
        Ok(())
    }
    fn count(&mut self, n: usize) {
        put_leb128(self, n);
    }
    fn raw(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
    fn mark(&self) -> usize {
        self.len()
    }
    fn truncate(&mut self, at: usize) {
        Vec::truncate(self, at);
    }
}

/// Checks each string is UTF-8 and writes nothing.
struct Validate;

impl Emit for Validate {
    fn string(&mut self, bytes: &[u8], row: usize) -> Result<(), DecodeError> {
        std::str::from_utf8(bytes)
            .map(drop)
            .map_err(|_| DecodeError::NotUtf8 { row })
    }
    fn count(&mut self, _: usize) {}
    fn raw(&mut self, _: &[u8]) {}
    fn mark(&self) -> usize {
        0
    }
    fn truncate(&mut self, _: usize) {}
}

fn walk_rows<'a>(
    c: &mut Cursor<'a>,
    fields: &[(&'static str, Kind, Option<Key>)],
    missing: &[(&'static str, Kind, Option<Key>)],
    out: &mut impl Emit,
    keep: &mut impl FnMut(&Keys<'_>) -> bool,
) -> Result<usize, DecodeError> {
    let n = c.u32()? as usize;
    let mut kept = 0;
    for row in 0..n {
        c.row = row;
        let row_start = out.mark();
        let mut keys = Keys::default();
        for &(_, kind, key) in fields {
            match kind {
                Kind::Str => {
                    let len = c.u32()? as usize;
                    let bytes = c.take(len)?;
                    out.string(bytes, row)?;
                    if let Some(k) = key {
                        keys.set(k, bytes, row)?;
                    }
                }
                Kind::Fixed(w) => {
                    let bytes = c.take(w)?;
                    out.raw(bytes);
                    if let Some(k) = key {
                        keys.set(k, bytes, row)?;
                    }
                }
                Kind::Opt(w) => match c.array::<1>()?[0] {
                    0 => out.raw(&[1]),
                    1 => {
                        out.raw(&[0]);
                        out.raw(c.take(w)?);
                    }
                    tag => return Err(DecodeError::BadOption { row, tag }),
                },
                Kind::Strs => {
                    let count = c.u32()? as usize;
                    out.count(count);
                    for _ in 0..count {
                        let len = c.u32()? as usize;
                        out.string(c.take(len)?, row)?;
                    }
                }
            }
        }
        // Fields an older format lacks, at their defaults.
        for &(_, kind, _) in missing {
            match kind {
                Kind::Str | Kind::Strs => out.raw(&[0]),
                Kind::Fixed(w) => (0..w).for_each(|_| out.raw(&[0])),
                Kind::Opt(_) => out.raw(&[1]),
            }
        }
        if keep(&keys) {
            kept += 1;
        } else {
            out.truncate(row_start);
        }
    }
    if !c.buf.is_empty() {
        return Err(DecodeError::Trailing(c.buf.len()));
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn row_strategy() -> impl Strategy<Value = EventRow> {
        (
            (
                ".{0,12}",
                ".{0,40}",
                "\\PC{0,30}",
                any::<u32>(),
                any::<i64>(),
            ),
            (
                any::<Option<u8>>(),
                any::<Option<f64>>(),
                any::<Option<u32>>(),
                any::<u64>(),
                any::<u8>(),
            ),
        )
            .prop_map(
                |(
                    (site, message_id, properties, timestamp, timestamp_ms),
                    (bs, price, asn, e, s),
                )| {
                    EventRow {
                        site,
                        message_id,
                        properties,
                        timestamp,
                        timestamp_ms,
                        bot_score: bs,
                        price,
                        latitude: price.map(|p| -p),
                        asn,
                        engaged_ms: e,
                        scroll_depth: s,
                        context: "{\"ü\":\"✓\"}".into(),
                        violations: if e % 3 == 0 {
                            vec![]
                        } else {
                            vec!["format:properties.ü".into(); (e % 3) as usize]
                        },
                        missing: if s % 2 == 0 {
                            vec!["traits.email".into()]
                        } else {
                            vec![]
                        },
                        ..EventRow::default()
                    }
                },
            )
    }

    /// Equality that compares floats by their bits (NaN round-trips too).
    fn same(a: &[EventRow], b: &[EventRow]) -> bool {
        let bits = |f: Option<f64>| f.map(f64::to_bits);
        let strip = |r: &EventRow| EventRow {
            price: None,
            latitude: None,
            ..r.clone()
        };
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                strip(x) == strip(y)
                    && bits(x.price) == bits(y.price)
                    && bits(x.latitude) == bits(y.latitude)
            })
    }

    proptest! {
        #[test]
        fn binary_round_trips(rows in proptest::collection::vec(row_strategy(), 0..8)) {
            let bytes = encode(&rows);
            prop_assert_eq!(bytes[0], TAG_BINARY_V2);
            let back = decode(&bytes).unwrap();
            prop_assert!(same(&rows, &back));
        }

        #[test]
        fn damaged_binary_is_an_error_not_a_panic(
            rows in proptest::collection::vec(row_strategy(), 1..4),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
        ) {
            let bytes = encode(&rows);
            let cut = 1 + cut.index(bytes.len() - 1);
            prop_assert!(decode(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            let i = 1 + flip.index(bytes.len() - 1);
            flipped[i] ^= 0xff;
            let _ = decode(&flipped);
        }

        /// The writer's way: payloads decoded one after another onto one buffer; a payload
        /// that fails leaves the rows before it as they were.
        #[test]
        fn decoding_onto_a_buffer_appends_or_leaves_it(
            first in proptest::collection::vec(row_strategy(), 0..4),
            second in proptest::collection::vec(row_strategy(), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            prop_assert_eq!(decode_into(&encode(&first), &mut buf), Ok(first.len()));
            let bytes = encode(&second);
            let cut = 1 + cut.index(bytes.len() - 1);
            prop_assert!(decode_into(&bytes[..cut], &mut buf).is_err());
            prop_assert!(same(&first, &buf));
            prop_assert_eq!(decode_into(&bytes, &mut buf), Ok(second.len()));
            let both: Vec<EventRow> = first.iter().chain(&second).cloned().collect();
            prop_assert!(same(&both, &buf));
        }

        /// `check` passes exactly the payloads `decode` reads, whole or damaged (cut short
        /// or with a byte changed), and counts their rows.
        #[test]
        fn check_agrees_with_decode(
            rows in proptest::collection::vec(row_strategy(), 0..4),
            imports in any::<bool>(),
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let rows: Vec<EventRow> = rows
                .into_iter()
                .map(|r| EventRow { source: if imports { "import".into() } else { r.source }, ..r })
                .collect();
            let bytes = encode(&rows);
            prop_assert_eq!(
                check(&bytes),
                Ok(Checked {
                    rows: rows.len(),
                    import_only: rows.iter().all(|r| r.source == "import"),
                })
            );
            let mut changed = bytes.clone();
            let i = at.index(changed.len());
            changed[i] = byte;
            for damaged in [&bytes[..cut.index(bytes.len())], &changed[..]] {
                match (check(damaged), decode(damaged)) {
                    (Ok(c), Ok(d)) => prop_assert_eq!(c.rows, d.len()),
                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                    (c, d) => prop_assert!(false, "check {:?} but decode {:?}", c, d.map(|d| d.len())),
                }
            }
        }
    }

    #[test]
    fn the_transcoded_columns_are_the_rows_columns() {
        let ours: Vec<&str> = columns().collect();
        assert_eq!(ours, <EventRow as clickhouse::Row>::COLUMN_NAMES);
    }

    /// `transcode` against the `clickhouse` crate's own RowBinary decoder (its mock server):
    /// v2, v1 and JSON payloads, a `keep` that turns rows down, read back as the rows sent.
    #[tokio::test]
    async fn transcoded_rows_read_back_as_the_rows() {
        use proptest::strategy::ValueTree;
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let rows: Vec<EventRow> = proptest::collection::vec(row_strategy(), 60)
            .new_tree(&mut runner)
            .unwrap()
            .current()
            .into_iter()
            .enumerate()
            .map(|(i, r)| EventRow {
                kind: if i % 7 == 3 {
                    "$link".into()
                } else {
                    "track".into()
                },
                user_id: format!("u{i}"),
                ..r
            })
            .collect();
        let (a, b) = rows.split_at(30);
        // v1 rows carry no lists: write them without.
        let b: Vec<EventRow> = b
            .iter()
            .map(|r| EventRow {
                violations: vec![],
                missing: vec![],
                ..r.clone()
            })
            .collect();
        let mut v1 = vec![TAG_BINARY_V1];
        v1.extend_from_slice(&20u32.to_le_bytes());
        for r in &b[..20] {
            let mut one = Vec::new();
            encode_row(r, &mut one);
            // v2's two empty lists are its last 8 bytes.
            v1.extend_from_slice(&one[..one.len() - 8]);
        }
        let json = serde_json::to_vec(&b[20..]).unwrap();
        let mut out = Vec::new();
        let mut seen = Vec::new();
        let mut kept = 0;
        for payload in [encode(a), v1, json] {
            kept += transcode(&payload, &mut out, |k| {
                seen.push((k.user_id.to_string(), k.kind.to_string()));
                k.kind != "$link"
            })
            .unwrap();
        }
        let want: Vec<EventRow> = a
            .iter()
            .chain(&b)
            .filter(|r| r.kind != "$link")
            .cloned()
            .collect();
        assert_eq!(kept, want.len());
        assert_eq!(seen.len(), rows.len());
        assert_eq!(seen[0], ("u0".to_string(), "track".to_string()));

        let mock = clickhouse::test::Mock::new();
        let client = clickhouse::Client::default()
            .with_url(mock.url())
            .with_compression(clickhouse::Compression::None);
        let recording = mock.add(clickhouse::test::handlers::record());
        let mut insert = client.insert_formatted_with("INSERT INTO events FORMAT RowBinary");
        insert.send(out.into()).await.unwrap();
        insert.end().await.unwrap();
        let back: Vec<EventRow> = recording.collect().await;
        assert!(same(&want, &back), "{want:#?}\n{back:#?}");
    }

    #[test]
    fn binary_v1_payloads_still_read() {
        let row = EventRow {
            site: "s".into(),
            context: "{}".into(),
            ..EventRow::default()
        };
        // v2 of one row with empty lists is v1's bytes plus two zero counts.
        let v2 = encode(std::slice::from_ref(&row));
        let mut v1 = v2[..v2.len() - 8].to_vec();
        v1[0] = TAG_BINARY_V1;
        assert_eq!(decode(&v1).unwrap(), vec![row.clone()]);
        assert_eq!(
            check(&v1),
            Ok(Checked {
                rows: 1,
                import_only: false
            })
        );
    }

    #[test]
    fn json_payloads_of_earlier_versions_still_read() {
        let json = br#"[{"site":"s","message_id":"m","type":"track","price":1.5}]"#;
        let rows = decode(json).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].kind, "track");
        assert_eq!(rows[0].price, Some(1.5));
        let full = EventRow {
            site: "x".into(),
            bot_score: Some(3),
            ..EventRow::default()
        };
        let json = serde_json::to_vec(&vec![full.clone()]).unwrap();
        assert_eq!(decode(&json).unwrap(), vec![full]);
    }

    #[test]
    fn unknown_tags_and_bad_bytes_are_named() {
        assert_eq!(decode(b""), Err(DecodeError::Empty));
        assert_eq!(decode(b"\x07abc"), Err(DecodeError::UnknownTag(7)));
        let mut b = encode(&[EventRow::default()]);
        b.push(0);
        assert_eq!(decode(&b), Err(DecodeError::Trailing(1)));
        // A count far beyond the bytes: an error, not a huge allocation.
        assert_eq!(
            decode(&[TAG_BINARY_V2, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated { row: 0 })
        );
        let mut b = encode(&[EventRow {
            site: "ab".into(),
            ..EventRow::default()
        }]);
        b[5 + 4] = 0xff; // first byte of "ab"
        assert_eq!(decode(&b), Err(DecodeError::NotUtf8 { row: 0 }));
    }
}
