//! `[sites.identity]`: how a site's people are recognised across ids (`waymark_ingest`'s
//! `intake::identifiers` normalises, its `identity` module merges).

use serde::{Deserialize, Serialize};

/// An identifier that can make two user ids one person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergeKey {
    /// The same user id is the same person (always true; listed for clarity).
    UserId,
    /// The normalised email of an identify's `traits.email`.
    Email,
    /// The E.164 phone number of an identify's `traits.phone`.
    Phone,
}

/// A site's identity settings; the defaults merge on user id and normalised email only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Which identifiers merge people: any of `user_id`, `email`, `phone`.
    pub merge_on: Vec<MergeKey>,
    /// Fold plus-addressing: `ada+news@example.com` is `ada@example.com`.
    pub email_plus: bool,
    /// Fold dots in Gmail addresses: `a.d.a@gmail.com` is `ada@gmail.com` (gmail.com and
    /// googlemail.com only).
    pub email_gmail_dots: bool,
    /// The region (ISO 3166 alpha-2, `"DE"`) a phone number without a `+` country code is read
    /// in; absent = such numbers are not identifiers.
    pub phone_region: Option<String>,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            merge_on: vec![MergeKey::UserId, MergeKey::Email],
            email_plus: false,
            email_gmail_dots: false,
            phone_region: None,
        }
    }
}

impl IdentityConfig {
    /// Whether `key` merges people on this site.
    pub fn merges_on(&self, key: MergeKey) -> bool {
        self.merge_on.contains(&key)
    }
}
