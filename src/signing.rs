//! Standard Webhooks signing (<https://www.standardwebhooks.com>): the key a
//! `webhooks.secret` holds, checked when the settings load, and the signature of one
//! delivery. Pure: no I/O, no settings, no worker.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The HMAC key of a `webhooks.secret`: None when empty, the bytes after `whsec_`
/// (base64) otherwise.
pub fn signing_key(secret: &str) -> Result<Option<Vec<u8>>, String> {
    let secret = secret.trim();
    if secret.is_empty() {
        return Ok(None);
    }
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("must look like whsec_<base64> (Standard Webhooks)".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| format!("the part after whsec_ is not base64: {e}"))?;
    if key.len() < 16 {
        return Err("the key must be at least 16 bytes (24 to 64 recommended)".into());
    }
    Ok(Some(key))
}

/// The `webhook-signature` value of one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_example() {
        // The Standard Webhooks specification's example, checked with Python's hmac.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked() {
        assert_eq!(signing_key("").unwrap(), None);
        assert!(signing_key("hunter2").unwrap_err().contains("whsec_"));
        assert!(signing_key("whsec_%%%").unwrap_err().contains("base64"));
        assert!(signing_key("whsec_c2hvcnQ=")
            .unwrap_err()
            .contains("16 bytes"));
    }
}
