//! Several ingest servers (`INGEST_URLS`): which one a forward goes to, and when it moves on to
//! the next. Pure, so the rules are tested on the host; `runtime.rs` does the fetches.
//!
//! # Which step fails over
//!
//! The forward: one signed request of the queue consumer (one per write key of a delivery, see
//! [`crate::consume`]), or the direct path's single request when no queue is bound. Enqueueing
//! is Cloudflare's and has nothing to fail over to. A request goes to the current server; when
//! the answer says that *server* cannot take requests now, the same body is sent at once to the
//! next server in the list, until one answers otherwise or every server has been tried once:
//!
//! | answer | fail over? | why |
//! |---|---|---|
//! | no answer (refused, reset, DNS, TLS, timeout) | yes | the server is down or unreachable |
//! | 408, 500, 502, 504, any other 5xx | yes | the server (or its proxy) is failing |
//! | 503, with or without `Retry-After` | yes | *this* server's spool is full or its ClickHouse is away; another may have room. Its `Retry-After` speaks for it alone |
//! | 429 | no | the site is over its rate limit; the limit is the site's, so another server would refuse it too (or, with per-server limits, let the site past its share). Retried after `Retry-After` |
//! | 401, 403, 404, 405 | no | the edge's configuration is wrong (secret, clock, `[edge]`, URL): logged as such and retried, as with one server |
//! | other 4xx | no | the request itself was refused: split and retried as with one server |
//!
//! The consumer then treats the request's verdict as before: a 2xx acknowledges its messages;
//! anything else has Queues deliver them again on the growing schedule. When every server failed
//! the delivery's remaining requests are not sent (all servers are down), and the wait is the
//! schedule's, lengthened by `Retry-After` only when every server sent one (the shortest): a
//! server that just did not answer may be back at any moment.
//!
//! Within one delivery the next request starts at the server that answered the last one, so a
//! dead first server costs one failed attempt per delivery, not one per write key. Each delivery
//! starts again at the first URL: the list is an order of preference (spreading load is a load
//! balancer's job), and a message's retries go to the same server while it is up, where the
//! server's own recent-id memory drops repeats.
//!
//! # Never lost; duplicates collapse
//!
//! A message is acknowledged only after a 2xx from some server, so nothing is lost whichever
//! servers are down. A request that got no answer may still have been stored by the server that
//! did not answer (it was cut after the server's spool took it); sending it to the next server
//! then stores the same events twice, on two servers. The same happens with one server when an
//! answer is lost and Queues delivers again, and it is absorbed the same way: every copy carries
//! the same message id, `events` is a ReplacingMergeTree ordered by (site, visitor, message id)
//! whose duplicates collapse when parts merge, and every figure the API computes counts or sums
//! by message id until then (`ingest-server/src/store/schema/mod.rs`, "Duplicates and exact
//! queries"). The ingest server answers 2xx only once its spool holds the batch and answers 503
//! when it cannot take it, so failing over on an answer adds no copy; a 5xx from something between
//! (a proxy that lost the server's answer) may, and that copy collapses the same way.

use crate::consume::{Failure, Verdict};

impl Failure {
    /// Whether the next ingest server should be tried at once (see the table above).
    pub fn fails_over(self) -> bool {
        matches!(self, Failure::Unreachable | Failure::Unavailable(_))
    }
}

/// One delivery's walk over the ingest servers: [`Failover::server`] says where the next request
/// goes; [`Failover::record`] takes its verdict and says whether the request is done.
#[derive(Debug, Clone)]
pub struct Failover {
    servers: usize,
    current: usize,
    /// Servers the request in flight has failed on so far.
    failed: usize,
    /// The shortest `Retry-After` among those failures; `None` inside once one had none.
    retry_after: Option<Option<u32>>,
}

impl Failover {
    /// A walk over `servers` servers (at least one), starting at the first.
    pub fn new(servers: usize) -> Self {
        Failover {
            servers: servers.max(1),
            current: 0,
            failed: 0,
            retry_after: None,
        }
    }

    /// The position in the list of the server the next request goes to.
    pub fn server(&self) -> usize {
        self.current
    }

    /// Records the verdict of the request just sent to [`Failover::server`]. `Some(verdict)`:
    /// the request is done with that verdict (the next request starts where this one ended).
    /// `None`: send the same request again, to the server [`Failover::server`] now names.
    pub fn record(&mut self, verdict: Verdict) -> Option<Verdict> {
        let (failure, retry_after_secs) = match verdict {
            Verdict::Failed {
                failure,
                retry_after_secs,
            } if failure.fails_over() => (failure, retry_after_secs),
            done => return Some(self.finish(done)),
        };
        self.failed += 1;
        self.retry_after = Some(match (self.retry_after, retry_after_secs) {
            (None, r) => r,
            (Some(Some(a)), Some(b)) => Some(a.min(b)),
            _ => None,
        });
        if self.failed < self.servers {
            self.current = (self.current + 1) % self.servers;
            return None;
        }
        // Every server failed: the next request (of a later delivery) starts over anyway.
        let retry_after_secs = self.retry_after.flatten();
        Some(self.finish(Verdict::Failed {
            failure,
            retry_after_secs,
        }))
    }

    fn finish(&mut self, verdict: Verdict) -> Verdict {
        self.failed = 0;
        self.retry_after = None;
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consume::{judge, Answer};

    fn status(status: u16, retry_after_secs: Option<u32>) -> Verdict {
        judge(Answer::Status {
            status,
            retry_after_secs,
        })
    }

    fn down() -> Verdict {
        judge(Answer::NoAnswer)
    }

    /// Sends one request through `f`, answering with `answers[server]`; the servers tried and
    /// the final verdict.
    fn send(f: &mut Failover, answers: &[Verdict]) -> (Vec<usize>, Verdict) {
        let mut tried = Vec::new();
        loop {
            let s = f.server();
            tried.push(s);
            assert!(
                tried.len() <= answers.len(),
                "tried a server twice: {tried:?}"
            );
            if let Some(v) = f.record(answers[s]) {
                return (tried, v);
            }
        }
    }

    #[test]
    fn server_failures_fail_over_and_request_failures_do_not() {
        for v in [
            down(),
            status(500, None),
            status(502, None),
            status(503, Some(5)),
            status(408, None),
        ] {
            let Verdict::Failed { failure, .. } = v else {
                panic!()
            };
            assert!(failure.fails_over(), "{v:?}");
        }
        for s in [429, 400, 401, 403, 404, 405, 413] {
            let Verdict::Failed { failure, .. } = status(s, Some(5)) else {
                panic!()
            };
            assert!(!failure.fails_over(), "{s}");
        }
    }

    #[test]
    fn a_down_first_server_sends_the_request_to_the_second() {
        let mut f = Failover::new(3);
        let ok = status(200, None);
        let (tried, v) = send(&mut f, &[down(), ok, ok]);
        assert_eq!((tried, v), (vec![0, 1], Verdict::Delivered));
        // The next request of the same delivery starts at the server that answered.
        let (tried, v) = send(&mut f, &[down(), ok, ok]);
        assert_eq!((tried, v), (vec![1], Verdict::Delivered));
        // A later delivery starts at the first server again.
        assert_eq!(Failover::new(3).server(), 0);
    }

    #[test]
    fn a_refusal_or_a_rate_limit_is_the_answer_and_no_other_server_is_asked() {
        for s in [429, 400, 401, 404] {
            let mut f = Failover::new(2);
            let (tried, v) = send(&mut f, &[status(s, Some(9)), status(200, None)]);
            assert_eq!(tried, [0], "{s}");
            assert_eq!(v, status(s, Some(9)), "{s}");
        }
        // ... also after a failover: 503 on the first, 429 on the second.
        let mut f = Failover::new(2);
        let (tried, v) = send(&mut f, &[status(503, Some(1)), status(429, Some(9))]);
        assert_eq!((tried, v), (vec![0, 1], status(429, Some(9))));
    }

    #[test]
    fn when_every_server_fails_each_was_tried_once() {
        let mut f = Failover::new(3);
        let (tried, v) = send(&mut f, &[down(), status(500, None), down()]);
        assert_eq!(tried, [0, 1, 2]);
        let Verdict::Failed {
            failure,
            retry_after_secs,
        } = v
        else {
            panic!("{v:?}")
        };
        assert!(failure.server_wide() && failure.fails_over());
        assert_eq!(retry_after_secs, None);
        // One server: its own answer, as before there was a list.
        let mut one = Failover::new(1);
        assert_eq!(
            send(&mut one, &[status(503, Some(7))]),
            (vec![0], status(503, Some(7)))
        );
    }

    #[test]
    fn retry_after_counts_only_when_every_server_asked_to_wait() {
        let mut f = Failover::new(2);
        let (_, v) = send(&mut f, &[status(503, Some(60)), status(503, Some(20))]);
        assert_eq!(
            v,
            Verdict::Failed {
                failure: Failure::Unavailable(503),
                retry_after_secs: Some(20)
            }
        );
        let (_, v) = send(&mut f, &[status(503, Some(60)), down()]);
        let Verdict::Failed {
            retry_after_secs, ..
        } = v
        else {
            panic!("{v:?}")
        };
        assert_eq!(
            retry_after_secs, None,
            "a server that did not answer may be back any time"
        );
    }
}
