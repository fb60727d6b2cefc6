//! Limits on clients (`[http]`): a connection over the cap is told 503 with Retry-After, a body
//! that does not arrive in time gets 408, and a request still open at shutdown does not hold up
//! the spool flush for longer than `shutdown_grace`.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use common::*;
use waymark_ingest::config::HumanDuration;

/// Reads whatever the server answers on `s` until it closes or `within` passes.
async fn read_answer(s: &mut TcpStream, within: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(within, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Reads one HTTP/1.1 response with a content-length body (bounded to 10 s).
async fn read_one_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "no whole response: {text:?}");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A request whose headers promise `len` body bytes, with only `sent` of them sent.
fn partial_request(len: usize, sent: usize) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/batch HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nauthorization: Basic d2tfc2hvcDo=\r\ncontent-length: {len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b' ', sent));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_told_to_retry() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, |c| c.http.max_connections = 2).await;
    // Two idle connections take the two places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(srv.addr).await.unwrap();
        held.push(s);
    }
    // The server counts a connection once it accepted it: poll until the third is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let a = read_answer(&mut s, Duration::from_millis(500)).await;
        if a.starts_with("HTTP/1.1 503") || Instant::now() > deadline {
            break a;
        }
    };
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(
        answer.contains(r#""error":"too_many_connections""#),
        "{answer}"
    );
    assert!(answer.contains("http.max_connections"), "{answer}");
    // A place that frees up is taken again.
    held.clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http().get(srv.url("/healthz")).send().await;
        if r.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no place after the held connections closed: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_gets_408() {
    let ch = clickhouse();
    let mut srv = Server::start_with(ch, |c| {
        c.http.body_timeout = HumanDuration(Duration::from_millis(300))
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&partial_request(100, 10)).await.unwrap();
    let answer = read_answer(&mut s, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
    assert!(answer.contains(r#""field":"body""#), "{answer}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_open_at_shutdown_is_cut_after_the_grace() {
    let ch = clickhouse();
    // Without the grace, this request would hold the shutdown for its body timeout (10 min),
    // and `stop` fails after 60 s.
    let mut srv = Server::start_with(ch, |c| {
        c.http.body_timeout = HumanDuration(Duration::from_secs(600));
        c.http.request_timeout = HumanDuration(Duration::from_secs(600));
        c.http.shutdown_grace = HumanDuration(Duration::from_millis(300));
    })
    .await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    // One whole request first, so the connection is known to be served, then one whose body
    // never ends on the same connection.
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_one_response(&mut s).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    s.write_all(&partial_request(100, 10)).await.unwrap();
    let stopping = Instant::now();
    srv.stop().await;
    println!("stopped {:?} after the shutdown signal", stopping.elapsed());
    let answer = read_answer(&mut s, Duration::from_secs(5)).await;
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}
