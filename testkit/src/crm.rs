//! A generated CRM export, for the import test (`ingest-server/tests/import.rs`) and the import
//! benchmark (`cargo xtask bench import`): two CSV files as a shop's CRM and order system
//! would write them, and the truth about them (who the people are, which rows are bad).
//!
//! - **Customers** (`customer_id,email,name,postcode,created_at`): each person has one to three
//!   customer records (`c{i}-0`, `c{i}-1`, `c{i}-2`), the email written as it is, with another
//!   case and surrounding spaces, or with a `+shop` tag. With the site's plus-addressing folded
//!   they are one person; `created_at` is within the last 1,000 days.
//! - **Near matches** ([`Crm::near_matches`]): people (`x{j}`) sharing a name and postcode with
//!   person `j` but not an email: suggested, never merged.
//! - **Orders** (`order_id,customer_id,total,currency,ordered_at`): none to three per customer
//!   record, spread over three years.
//! - **Bad rows** ([`Crm::bad_rows`]): a customer row without an id and an order whose total is
//!   not a number, at lines [`CrmExport::bad_customer_line`] and
//!   [`CrmExport::bad_order_line`].
//!
//! The RNG is `rand`'s `SmallRng` from [`Crm::seed`]: the same export for the same seed and
//! `now` (with the locked `rand` version).

use std::fmt::Write as _;

use rand::{Rng as _, SeedableRng as _};
use waymark_protocol::time::format_rfc3339;

const DAY_MS: i64 = 86_400_000;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Crm {
    /// People with customer records (one to three records each).
    pub people: usize,
    /// People added who share a name and postcode with one of the first ones, not an email.
    pub near_matches: usize,
    /// Add one bad customer row and one bad order row at the end of each file.
    pub bad_rows: bool,
    pub seed: u64,
}

impl Default for Crm {
    fn default() -> Self {
        Crm {
            people: 100,
            near_matches: 0,
            bad_rows: false,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// One true person of the export.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    /// Their customer ids; the first is the one the others merge into.
    pub records: Vec<String>,
    /// Their email, normalised (what the profile lists).
    pub email: String,
    /// Their orders, over all their records.
    pub orders: usize,
}

/// The generated files and the truth about them.
#[derive(Debug, Clone)]
pub struct CrmExport {
    pub customers_csv: String,
    pub orders_csv: String,
    /// Every person, near matches included: `persons.len()` is the true people count.
    pub persons: Vec<Person>,
    /// Valid customer rows (one per customer record).
    pub customer_rows: usize,
    /// Valid order rows.
    pub order_rows: usize,
    /// 1-based line (the header is line 1) of the customer row without an id.
    pub bad_customer_line: Option<u64>,
    /// 1-based line of the order whose total is not a number.
    pub bad_order_line: Option<u64>,
}

impl CrmExport {
    /// Every valid customer id, in file order.
    pub fn customer_ids(&self) -> impl Iterator<Item = &str> {
        self.persons
            .iter()
            .flat_map(|p| p.records.iter().map(String::as_str))
    }
}

impl Crm {
    /// The export, with times relative to `now_ms`.
    pub fn generate(&self, now_ms: i64) -> CrmExport {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(self.seed);
        let mut customers = String::from("customer_id,email,name,postcode,created_at\n");
        let mut orders = String::from("order_id,customer_id,total,currency,ordered_at\n");
        let mut persons = Vec::with_capacity(self.people + self.near_matches);
        let mut customer_rows = 0;
        for i in 0..self.people {
            let n = rng.random_range(1..=3);
            let mut records = Vec::with_capacity(n);
            for k in 0..n {
                let email = match k {
                    0 => format!("user{i}@example.com"),
                    1 => format!("  User{i}@Example.COM "),
                    _ => format!("user{i}+shop@example.com"),
                };
                let id = format!("c{i}-{k}");
                let created = now_ms - rng.random_range(0..1000) * DAY_MS;
                let _ = writeln!(
                    customers,
                    "{id},\"{email}\",Person {i},{:05},{}",
                    postcode(i),
                    &format_rfc3339(created)[..10]
                );
                customer_rows += 1;
                records.push(id);
            }
            persons.push(Person {
                records,
                email: format!("user{i}@example.com"),
                orders: 0,
            });
        }
        for j in 0..self.near_matches {
            let id = format!("x{j}");
            let email = format!("user{j}x@example.com");
            let _ = writeln!(
                customers,
                "{id},{email},Person {j},{:05},2024-01-01",
                postcode(j)
            );
            customer_rows += 1;
            persons.push(Person {
                records: vec![id],
                email,
                orders: 0,
            });
        }
        let mut bad_customer_line = None;
        if self.bad_rows {
            customers.push_str(",nobody@example.com,No Id,99999,2024-01-01\n");
            bad_customer_line = Some(customer_rows as u64 + 2);
        }
        let mut order_rows = 0;
        for person in &mut persons {
            for id in &person.records {
                for _ in 0..rng.random_range(0..4) {
                    let at =
                        format_rfc3339(now_ms - rng.random_range(0..1095) * DAY_MS - 3_600_000);
                    let _ = writeln!(
                        orders,
                        "o{order_rows},{id},{}.{:02},EUR,{} {}",
                        rng.random_range(10..210),
                        rng.random_range(0..100),
                        &at[..10],
                        &at[11..19]
                    );
                    order_rows += 1;
                    person.orders += 1;
                }
            }
        }
        let mut bad_order_line = None;
        if self.bad_rows {
            orders.push_str("o-bad,c0-0,abc,EUR,2024-01-01\n");
            bad_order_line = Some(order_rows as u64 + 2);
        }
        CrmExport {
            customers_csv: customers,
            orders_csv: orders,
            persons,
            customer_rows,
            order_rows,
            bad_customer_line,
            bad_order_line,
        }
    }
}

/// Person `i`'s postcode (five digits).
fn postcode(i: usize) -> usize {
    10000 + i % 90000
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn the_truth_matches_the_files() {
        let crm = Crm {
            people: 200,
            near_matches: 10,
            bad_rows: true,
            ..Crm::default()
        };
        let ex = crm.generate(NOW);
        assert_eq!(ex.persons.len(), 210);
        let customer_lines: Vec<&str> = ex.customers_csv.lines().skip(1).collect();
        assert_eq!(customer_lines.len(), ex.customer_rows + 1);
        assert_eq!(ex.customer_ids().count(), ex.customer_rows);
        let order_lines: Vec<&str> = ex.orders_csv.lines().skip(1).collect();
        assert_eq!(order_lines.len(), ex.order_rows + 1);
        assert_eq!(
            ex.persons.iter().map(|p| p.orders).sum::<usize>(),
            ex.order_rows
        );
        // The bad rows are where the export says.
        fn line(csv: &str, n: Option<u64>) -> &str {
            csv.lines().nth(n.unwrap() as usize - 1).unwrap()
        }
        assert!(line(&ex.customers_csv, ex.bad_customer_line).starts_with(",nobody@"));
        assert!(line(&ex.orders_csv, ex.bad_order_line).starts_with("o-bad,"));
        // Every record of a person carries a spelling of the person's email.
        for p in ex.persons.iter().take(200) {
            for (k, id) in p.records.iter().enumerate() {
                let row = customer_lines
                    .iter()
                    .find(|l| l.starts_with(&format!("{id},")))
                    .unwrap();
                let email = row.split('"').nth(1).unwrap().trim().to_lowercase();
                let folded = email.replace("+shop", "");
                assert_eq!(folded, p.email, "record {k} of {p:?}: {row}");
            }
        }
        // Some people have three records, and some of those have orders.
        assert!(ex
            .persons
            .iter()
            .any(|p| p.records.len() == 3 && p.orders > 0));
    }

    #[test]
    fn the_same_seed_makes_the_same_export() {
        let a = Crm::default().generate(NOW);
        let b = Crm::default().generate(NOW);
        assert_eq!(a.customers_csv, b.customers_csv);
        assert_eq!(a.orders_csv, b.orders_csv);
        let c = Crm {
            seed: 7,
            ..Crm::default()
        }
        .generate(NOW);
        assert_ne!(a.orders_csv, c.orders_csv);
        assert!(a.bad_customer_line.is_none() && a.bad_order_line.is_none());
    }
}
