//! Standard Webhooks signing (<https://www.standardwebhooks.com>): the key a
//! `webhooks.secret` (or `openai.webhook_secret`) holds, checked when the settings load,
//! the signature of one delivery we send, and the verification of one we receive (OpenAI's
//! batch events). Pure: no I/O, no settings, no worker.

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

/// How far a received `webhook-timestamp` may be from our clock, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// HMAC-SHA256 of `"{id}.{timestamp}.{body}"`, not finalized: signing and verifying share it.
fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `webhook-signature` value of one delivery.
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(key, id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Why a received webhook is not taken as genuine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    #[error("no webhook secret is configured (openai.webhook_secret)")]
    NoSecret,
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from this server's clock (at most 300 s allowed)")]
    Stale(i64),
    #[error("no v1 signature in webhook-signature matches the body")]
    NoMatch,
}

/// The headers of a received Standard Webhooks delivery (None where absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct Received<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Verifies a received delivery against `key` at `now` (Unix seconds): all three headers
/// present, the timestamp within [`TOLERANCE_SECS`], and at least one `v1,<base64>` of the
/// space-separated `webhook-signature` list equal, in constant time, to the HMAC-SHA256 of
/// `"{id}.{timestamp}.{body}"`. Other versions in the list are skipped.
pub fn verify(
    key: Option<&[u8]>,
    headers: Received<'_>,
    body: &[u8],
    now: i64,
) -> Result<(), Unverified> {
    let key = key.ok_or(Unverified::NoSecret)?;
    let id = headers.id.ok_or(Unverified::Missing("webhook-id"))?;
    let timestamp = headers
        .timestamp
        .ok_or(Unverified::Missing("webhook-timestamp"))?;
    let signatures = headers
        .signature
        .ok_or(Unverified::Missing("webhook-signature"))?;
    let seconds: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| Unverified::BadTimestamp)?;
    let skew = now.saturating_sub(seconds);
    if skew.saturating_abs() > TOLERANCE_SECS {
        return Err(Unverified::Stale(skew));
    }
    let expected = mac(key, id, timestamp, body);
    let b64 = base64::engine::general_purpose::STANDARD;
    let matches = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|s| b64.decode(s).ok())
        .any(|candidate| expected.clone().verify_slice(&candidate).is_ok());
    if matches {
        Ok(())
    } else {
        Err(Unverified::NoMatch)
    }
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

    fn received<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> Received<'a> {
        Received {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn verification_takes_any_matching_signature_of_the_list() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .unwrap();
        let body = br#"{"test": 2432232314}"#;
        let (id, ts) = ("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330);
        let good = sign(&key, id, ts, body);
        let now = ts + 299;
        let k = Some(&key[..]);
        assert_eq!(
            verify(k, received(id, "1614265330", &good), body, now),
            Ok(())
        );
        // A rotated secret: the old signature first, a v2 entry, then the good one.
        let list = format!("v1,AAAA v2,xyz {good}");
        assert_eq!(
            verify(k, received(id, "1614265330", &list), body, now),
            Ok(())
        );
        // Any change to id, timestamp or body breaks it.
        assert_eq!(
            verify(k, received("msg_other", "1614265330", &good), body, now),
            Err(Unverified::NoMatch)
        );
        assert_eq!(
            verify(k, received(id, "1614265331", &good), body, now),
            Err(Unverified::NoMatch)
        );
        assert_eq!(
            verify(k, received(id, "1614265330", &good), b"{}", now),
            Err(Unverified::NoMatch)
        );
        let other = signing_key("whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=")
            .unwrap()
            .unwrap();
        assert_eq!(
            verify(Some(&other), received(id, "1614265330", &good), body, now),
            Err(Unverified::NoMatch)
        );
        assert_eq!(
            verify(None, received(id, "1614265330", &good), body, now),
            Err(Unverified::NoSecret)
        );
    }

    #[test]
    fn verification_refuses_stale_timestamps_and_missing_headers() {
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .unwrap();
        let k = Some(&key[..]);
        let sig = sign(&key, "msg_1", 1_000_000, b"{}");
        assert_eq!(
            verify(k, received("msg_1", "1000000", &sig), b"{}", 1_000_301),
            Err(Unverified::Stale(301))
        );
        assert_eq!(
            verify(k, received("msg_1", "1000000", &sig), b"{}", 999_699),
            Err(Unverified::Stale(-301))
        );
        assert_eq!(
            verify(k, received("msg_1", "1000000", &sig), b"{}", 999_700),
            Ok(())
        );
        assert_eq!(
            verify(k, received("msg_1", "soon", &sig), b"{}", 1_000_000),
            Err(Unverified::BadTimestamp)
        );
        let no_sig = Received {
            signature: None,
            ..received("msg_1", "1000000", &sig)
        };
        assert_eq!(
            verify(k, no_sig, b"{}", 1_000_000),
            Err(Unverified::Missing("webhook-signature"))
        );
        assert_eq!(
            verify(k, Received::default(), b"{}", 1_000_000),
            Err(Unverified::Missing("webhook-id"))
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
