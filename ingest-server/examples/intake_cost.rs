//! The CPU each stage of the intake path costs per event, in release mode, in one process:
//! `cargo xtask bench ingest` writes its batches to a file (one JSON body per line) and runs
//! `cargo run --release -p waymark-ingest --example intake_cost -- BATCHES`.
//!
//! The server's CPU per event in the end-to-end run moves by a third between runs on a shared
//! machine; these stages, timed alone over many passes and printed beside `parse_batch` (the
//! reference, measured in the same run), show where a change to one of them moved it.
//!
//! Stages, in the order an event meets them: validation (`parse_batch`), enrichment (`to_row`),
//! the dedup window (keys, look-up, remembering), the spool payload (`rows::encode`), the
//! writer's check of each record as it gathers a batch (`rows::check`), its RowBinary
//! (`rows::transcode`), and freeing the request's events and rows. Not here: HTTP, the spool's
//! compression and writes, ClickHouse's client.
//!
//! Last, a floor for the parse: [`floor::pass`] reads each body once into borrowed, typed views
//! with `RawValue` for `context`, `properties` and `traits`, walks those three for the size
//! limits without allocating, reads the fields enrichment needs from `context`, and copies the
//! three objects' text as a row would store it. It makes no rejections and no rows: it is the
//! least a serde_json-based intake must do with these bodies, printed so that a rewrite of
//! validation and enrichment onto such views (#20) knows what it can save against
//! `parse_batch`, re-serialising the objects and freeing them. It is not used by the server.

use std::hint::black_box;
use std::time::Duration;

use cpu_time::ProcessTime;
use waymark_ingest::intake::dedup::Dedup;
use waymark_ingest::intake::enrich::{to_row, RequestFacts, UaParser};
use waymark_ingest::spool::rows;
use waymark_protocol::edge::IpMode;
use waymark_protocol::privacy::UrlPolicy;

const PASSES: usize = 4;

/// The server's allocator (`src/main.rs`): allocating and freeing are a good part of these
/// stages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [batches] = args.as_slice() else {
        return Err("usage: intake_cost BATCHES.ndjson".into());
    };
    let text = std::fs::read_to_string(batches).map_err(|e| format!("{batches}: {e}"))?;
    let bodies: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let now = waymark_ingest::clock::now_ms();
    let ua = UaParser::default();
    let dedup = Dedup::new(1_000_000);
    let mut stages = [Duration::ZERO; 7];
    let mut floor_cpu = Duration::ZERO;
    let mut events = 0;
    let mut out = Vec::new();
    for _ in 0..PASSES {
        for body in &bodies {
            let t = ProcessTime::now();
            let v =
                waymark_protocol::parse_batch(body.as_bytes(), now).map_err(|e| e.to_string())?;
            stages[0] += t.elapsed();
            events += v.events.len();

            let t = ProcessTime::now();
            let facts = RequestFacts {
                site: "bench",
                ip_mode: IpMode::Truncate,
                received_at_ms: now,
                batch_sent_at: v.sent_at.as_deref(),
                source: "api",
                peer_ip: Some("198.51.100.23".into()),
                geo: None,
                client: None,
                urls: UrlPolicy::default(),
                gpc: false,
                request_ip: Default::default(),
            };
            let rows: Vec<_> = v.events.iter().map(|ev| to_row(ev, &facts, &ua)).collect();
            stages[1] += t.elapsed();

            let t = ProcessTime::now();
            let keys = dedup.keys(
                rows.iter()
                    .map(|r| (r.site.as_str(), r.message_id.as_str())),
            );
            let seen = dedup.seen(&keys);
            dedup.remember(&keys, &seen);
            stages[2] += t.elapsed();

            let t = ProcessTime::now();
            let payload = rows::encode(&rows);
            stages[3] += t.elapsed();

            let t = ProcessTime::now();
            black_box(rows::check(&payload).map_err(|e| e.to_string())?);
            stages[4] += t.elapsed();

            let t = ProcessTime::now();
            out.clear();
            black_box(rows::transcode(&payload, &mut out, |_| true).map_err(|e| e.to_string())?);
            stages[5] += t.elapsed();

            let t = ProcessTime::now();
            drop((v, rows, payload));
            stages[6] += t.elapsed();

            let t = ProcessTime::now();
            black_box(floor::pass(body).ok_or("a bench body did not read as views")?);
            floor_cpu += t.elapsed();
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
    let names = [
        "parse_batch (reference)",
        "to_row",
        "dedup window",
        "encode",
        "writer check",
        "transcode",
        "freeing events and rows",
    ];
    println!(
        "intake stages (release, {} events x {PASSES} passes, one thread), CPU per event:",
        events / PASSES
    );
    for (name, d) in names.iter().zip(stages) {
        println!(
            "  {name:<24} {:>6.2} us  ({:.2} x parse_batch)",
            per(d),
            d.as_secs_f64() / stages[0].as_secs_f64()
        );
    }
    let total: Duration = stages.iter().sum();
    println!("  {:<24} {:>6.2} us", "all stages", per(total));
    println!(
        "  floor: one borrowed pass {:>6.2} us  ({:.2} x parse_batch; it would replace parse_batch, \
         to_row's re-serialised objects and freeing the events)",
        per(floor_cpu),
        floor_cpu.as_secs_f64() / stages[0].as_secs_f64()
    );
    Ok(())
}

/// The floor of the parse (see the module doc): serde_json's borrowed, typed reading of a body.
mod floor {
    use std::borrow::Cow;

    use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;
    use serde_json::value::RawValue;
    use waymark_protocol::limits::{MAX_DEPTH, MAX_NAME_LEN, MAX_PROPERTIES, MAX_STRING_LEN};

    type Text<'a> = Option<Cow<'a, str>>;

    #[derive(Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        batch: Vec<View<'a>>,
        #[serde(rename = "sentAt", borrow, default)]
        _sent_at: Text<'a>,
        #[serde(rename = "writeKey", borrow, default)]
        _write_key: Text<'a>,
    }

    /// An event's top level, strings borrowed unless escaped, objects left as text.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct View<'a> {
        #[serde(rename = "type", borrow, default)]
        _kind: Text<'a>,
        #[serde(borrow, default)]
        _message_id: Text<'a>,
        #[serde(borrow, default)]
        _anonymous_id: Text<'a>,
        #[serde(borrow, default)]
        _user_id: Text<'a>,
        #[serde(borrow, default)]
        _previous_id: Text<'a>,
        #[serde(borrow, default)]
        _group_id: Text<'a>,
        #[serde(borrow, default)]
        _event: Text<'a>,
        #[serde(borrow, default)]
        _name: Text<'a>,
        #[serde(borrow, default)]
        _timestamp: Text<'a>,
        #[serde(borrow, default)]
        _original_timestamp: Text<'a>,
        #[serde(borrow, default)]
        _sent_at: Text<'a>,
        #[serde(borrow, default)]
        context: Option<&'a RawValue>,
        #[serde(borrow, default)]
        properties: Option<&'a RawValue>,
        #[serde(borrow, default)]
        traits: Option<&'a RawValue>,
    }

    /// The `context` fields enrichment reads.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Context<'a> {
        #[serde(borrow, default)]
        _page: Option<Page<'a>>,
        #[serde(borrow, default)]
        _campaign: Option<&'a RawValue>,
        #[serde(borrow, default)]
        _library: Option<Library<'a>>,
        #[serde(borrow, default)]
        _user_agent: Text<'a>,
        #[serde(borrow, default)]
        _ip: Text<'a>,
        #[serde(borrow, default)]
        _locale: Text<'a>,
        #[serde(borrow, default)]
        _session_id: Text<'a>,
    }

    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(rename = "url", borrow, default)]
        _url: Text<'a>,
        #[serde(rename = "path", borrow, default)]
        _path: Text<'a>,
        #[serde(rename = "title", borrow, default)]
        _title: Text<'a>,
        #[serde(rename = "referrer", borrow, default)]
        _referrer: Text<'a>,
        #[serde(rename = "search", borrow, default)]
        _search: Text<'a>,
    }

    #[derive(Deserialize)]
    struct Library<'a> {
        #[serde(rename = "name", borrow, default)]
        _name: Text<'a>,
        #[serde(rename = "version", borrow, default)]
        _version: Text<'a>,
    }

    /// Reads one body into what its rows would hold beyond their strings: each event's three
    /// objects as text. `None` when it is not a well-formed batch within the limits.
    pub fn pass(body: &str) -> Option<Vec<[String; 3]>> {
        let body: Body<'_> = serde_json::from_str(body).ok()?;
        let mut out = Vec::with_capacity(body.batch.len());
        for v in &body.batch {
            let objects = [v.context, v.properties, v.traits];
            for o in objects.iter().flatten() {
                let mut keys = 0;
                let mut de = serde_json::Deserializer::from_str(o.get());
                Walk {
                    depth: 0,
                    keys: &mut keys,
                }
                .deserialize(&mut de)
                .ok()?;
            }
            if let Some(c) = v.context {
                let _: Context<'_> = serde_json::from_str(c.get()).ok()?;
            }
            out.push(objects.map(|o| o.map(|o| o.get().to_owned()).unwrap_or_default()));
        }
        Some(out)
    }

    /// The limits `check_tree` applies, walked over the text without building values. `depth`
    /// is that of the object or array the value is in (0 for the top object itself).
    struct Walk<'k> {
        depth: usize,
        keys: &'k mut usize,
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    /// A key's length, borrowed when unescaped.
    struct KeyLen;

    impl<'de> DeserializeSeed<'de> for KeyLen {
        type Value = usize;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
            d.deserialize_str(self)
        }
    }

    impl<'de> Visitor<'de> for KeyLen {
        type Value = usize;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a key")
        }
        fn visit_str<E>(self, v: &str) -> Result<usize, E> {
            Ok(v.len())
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
            match v.len() > MAX_STRING_LEN {
                true => Err(E::custom("string too long")),
                false => Ok(()),
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let depth = self.depth + 1;
            if depth > MAX_DEPTH {
                return Err(A::Error::custom("too deep"));
            }
            while let Some(len) = m.next_key_seed(KeyLen)? {
                *self.keys += 1;
                if len > MAX_NAME_LEN || *self.keys > MAX_PROPERTIES {
                    return Err(A::Error::custom("key too long, or too many"));
                }
                m.next_value_seed(Walk {
                    depth,
                    keys: self.keys,
                })?;
            }
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<(), A::Error> {
            if self.depth + 1 > MAX_DEPTH {
                return Err(A::Error::custom("too deep"));
            }
            while s
                .next_element_seed(Walk {
                    depth: self.depth + 1,
                    keys: self.keys,
                })?
                .is_some()
            {}
            Ok(())
        }
    }
}
