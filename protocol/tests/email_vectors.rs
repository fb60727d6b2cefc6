//! The shared email token vectors (`data/email-token-vectors.json`): signing each vector's
//! claims with its key gives its token, and the token verifies back to the claims. The npm
//! package's signing function checks the same file (`js/test/email.test.mjs`), so the two
//! implementations cannot drift apart.

use serde_json::Value;
use waymark_protocol::email::{sign, verify, Claims, SigningKey};

#[test]
fn every_vector_signs_and_verifies() {
    let text = include_str!("../data/email-token-vectors.json");
    let file: Value = serde_json::from_str(text).expect("the vector file is JSON");
    let vectors = file["vectors"].as_array().expect("vectors");
    assert!(vectors.len() >= 4, "{} vectors", vectors.len());
    for v in vectors {
        let name = v["name"].as_str().unwrap();
        let s = |k: &str| v["claims"][k].as_str().unwrap_or_default().to_string();
        let claims = Claims {
            site: s("site"),
            user_id: s("userId"),
            email: s("email"),
            campaign: s("campaign"),
            send_id: s("sendId"),
            issued_at: v["claims"]["issuedAt"].as_u64().unwrap(),
            target: v["claims"]["target"].as_str().map(str::to_string),
        };
        let key = SigningKey {
            id: v["key"]["id"].as_str().unwrap().into(),
            secret: v["key"]["secret"].as_str().unwrap().as_bytes().to_vec(),
        };
        let token = v["token"].as_str().unwrap();
        assert_eq!(sign(&claims, &key).unwrap(), token, "{name}");
        assert_eq!(
            verify(token, &[key], claims.issued_at, 86_400),
            Ok(claims),
            "{name}"
        );
    }
}
