//! How long and how big each scenario of one form (full or `--short`) runs.

use std::time::Duration;

/// Durations and sizes of one form.
pub struct Plan {
    pub rate: u32,
    /// (a): how long the load runs, and when the two kills come.
    pub a_load: Duration,
    pub a_kills: [Duration; 2],
    /// (b), (c): load before the outage, the outage, load after it. (d): the outage too (at
    /// least; until the spool has refused appends).
    pub outage_before: Duration,
    pub outage: Duration,
    pub outage_after: Duration,
    /// (d): the load after ClickHouse is back (clients wait out Retry-After first).
    pub d_after: Duration,
    /// (e): the spool's cap, and how much it must hold before the kill.
    pub e_spool_max: &'static str,
    pub e_fill_bytes: u64,
    /// (f): batches sent through the edge during the outage, how long the outage lasts on the
    /// queue's clock and at least in real time.
    pub f_batches: u64,
    pub f_fake_outage: Duration,
    pub f_real_outage: Duration,
    /// How long a client retrying a batch when the load stops may go on.
    pub grace: Duration,
    /// The same in (d), where each retry waits Retry-After.
    pub grace_overloaded: Duration,
    /// How long to wait for the spool to drain after the load.
    pub drain_timeout: Duration,
}

impl Plan {
    pub fn full() -> Plan {
        let s = Duration::from_secs;
        Plan {
            rate: 100,
            a_load: s(60),
            a_kills: [s(20), s(40)],
            outage_before: s(15),
            outage: s(30),
            outage_after: s(20),
            d_after: s(30),
            e_spool_max: "16MiB",
            e_fill_bytes: 6 << 20,
            f_batches: 40,
            f_fake_outage: s(6 * 3600),
            f_real_outage: s(30),
            grace: s(15),
            grace_overloaded: s(20),
            drain_timeout: s(180),
        }
    }

    pub fn short() -> Plan {
        let s = Duration::from_secs;
        Plan {
            rate: 60,
            a_load: s(12),
            a_kills: [s(4), s(8)],
            outage_before: s(3),
            outage: s(5),
            outage_after: s(5),
            d_after: s(14),
            e_spool_max: "4MiB",
            e_fill_bytes: 1200 << 10,
            f_batches: 8,
            f_fake_outage: s(2 * 3600),
            f_real_outage: s(2),
            grace: s(8),
            grace_overloaded: s(12),
            drain_timeout: s(60),
        }
    }
}
