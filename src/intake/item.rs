//! The checks on one submitted item: which image source it gives, its ids, and the
//! decoding of inline images into a normalized data URL. Uniqueness across items is
//! the caller's (mod.rs) job.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{DecodeError, Engine as _};
use sha2::{Digest, Sha256};

use super::image::{sniff_image, ImageFormat};
use super::resize::downscale_for;
use super::{IntakeLimits, ItemInput};

pub(super) const INVALID_ITEM: &str = "invalid_item";
pub(super) const INVALID_IMAGE: &str = "invalid_image";
const MAX_POST_ID_LEN: usize = 256;

/// Why one item cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reject {
    pub code: &'static str,
    pub reason: String,
}

impl Reject {
    fn item(reason: impl Into<String>) -> Self {
        Self {
            code: INVALID_ITEM,
            reason: reason.into(),
        }
    }

    fn image(reason: impl Into<String>) -> Self {
        Self {
            code: INVALID_IMAGE,
            reason: reason.into(),
        }
    }
}

/// The one image source an item gives, before its content is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Url(String),
    /// The payload and the `mime_type` given with it, if any.
    Base64(String, Option<String>),
    DataUrl(String),
    /// An uploaded file's bytes (multipart); rejections read `image_base64: …` as for
    /// decoded base64, and the caller names the part instead.
    Bytes(bytes::Bytes),
    /// An `image_url` batchlens downloaded (`fetch: "inline"`), already checked.
    Fetched(FetchedImage),
}

/// What became of an `image_url` batchlens downloaded itself: the bytes checked, normalized
/// and downscaled exactly as an inline image is, or why there is no image. Made by the
/// fetcher (`FetchedImage::check` on a blocking thread, right after the download, so only
/// the stored form is kept) and put on the item; intake then takes it as the item's image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedImage(Result<CheckedImage, String>);

impl FetchedImage {
    /// Checks downloaded bytes as `image_base64` bytes are checked. CPU work when the
    /// image is downscaled: call it from `spawn_blocking`.
    pub fn check(bytes: &[u8], limits: &IntakeLimits) -> Self {
        FetchedImage(check_bytes(bytes, None, limits, ("image_url", None)))
    }

    /// A download that failed; `reason` follows `image_url: ` in the rejection.
    pub fn failed(reason: impl Into<String>) -> Self {
        FetchedImage(Err(reason.into()))
    }

    pub fn is_ok(&self) -> bool {
        self.0.is_ok()
    }
}

/// What an accepted item stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CheckedImage {
    pub image: String,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// A remark for the item's result, e.g. a declared type the bytes contradict.
    pub note: Option<String>,
    /// SHA-256 (hex) of the bytes as received, before any downscaling; `None` for a URL.
    pub sha256: Option<String>,
}

/// Takes the item's single image source out of `input`.
pub(super) fn take_source(input: &mut ItemInput) -> Result<Source, Reject> {
    let url = input.image_url.take();
    let b64 = input.image_base64.take();
    let data = input.data_url.take();
    let raw = input.image_bytes.take();
    match (url, b64, data, raw) {
        (Some(u), None, None, None) => Ok(match input.fetched.take() {
            Some(fetched) => Source::Fetched(fetched),
            None => Source::Url(u),
        }),
        (None, Some(b), None, None) => Ok(Source::Base64(b, input.mime_type.take())),
        (None, None, Some(d), None) => Ok(Source::DataUrl(d)),
        (None, None, None, Some(bytes)) => Ok(Source::Bytes(bytes)),
        _ => Err(Reject::item(
            "give exactly one of image_url, image_base64 or data_url",
        )),
    }
}

pub(super) fn check_image(source: &Source, limits: &IntakeLimits) -> Result<CheckedImage, Reject> {
    match source {
        Source::Url(u) => check_url(u, limits.max_url_len)
            .map(|image| CheckedImage {
                image,
                width: None,
                height: None,
                note: None,
                sha256: None,
            })
            .map_err(|r| Reject::image(format!("image_url: {r}"))),
        Source::Base64(b, mime) => check_inline(b, limits, ("mime_type", mime.as_deref()))
            .map_err(|r| Reject::image(format!("image_base64: {r}"))),
        Source::Bytes(bytes) => check_bytes(bytes, None, limits, ("image_base64", None))
            .map_err(|r| Reject::image(format!("image_base64: {r}"))),
        Source::DataUrl(d) => data_url_payload(d)
            .and_then(|(mime, payload)| check_inline(payload, limits, ("data_url", Some(mime))))
            .map_err(|r| Reject::image(format!("data_url: {r}"))),
        Source::Fetched(FetchedImage(checked)) => checked
            .clone()
            .map_err(|r| Reject::image(format!("image_url: {r}"))),
    }
}

/// Returns the URL to store (as given, minus surrounding whitespace).
fn check_url(raw: &str, max_len: usize) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("empty; give an https:// URL".to_string());
    }
    let len = raw.chars().count();
    if len > max_len {
        return Err(format!("{len} characters, over the {max_len} limit"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid absolute URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "data" => return Err("scheme must be https (send data: URLs in data_url)".to_string()),
        _ => return Err("scheme must be https".to_string()),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("a host is required".to_string());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".to_string());
    }
    Ok(raw.to_string())
}

/// The declared mime and the base64 payload of `data:<mime>;base64,<payload>`. The
/// declared mime is not trusted: the bytes decide.
fn data_url_payload(raw: &str) -> Result<(&str, &str), String> {
    let s = raw.trim_start();
    let has_scheme = s.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("data:"));
    if !has_scheme {
        let hint = if s.starts_with("http://") || s.starts_with("https://") {
            "; send URLs in image_url"
        } else {
            ""
        };
        return Err(format!(
            "must look like data:image/png;base64,<payload>{hint}"
        ));
    }
    let Some((header, payload)) = s[5..].split_once(',') else {
        return Err("no ',' before the payload (data:image/png;base64,<payload>)".to_string());
    };
    let is_base64 = header
        .rsplit(';')
        .next()
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("base64"));
    if !is_base64 {
        return Err(
            "only base64 data URLs are supported (data:<mime>;base64,<payload>)".to_string(),
        );
    }
    let mime = header.split(';').next().unwrap_or_default();
    Ok((mime, payload))
}

/// The note for an image whose declared type (`mime_type`, or a data URL's) names another
/// format than its bytes: accepted, since the bytes decide, but the client should know.
/// Parameters, case and the common aliases (`image/jpg`, `image/pjpeg`, `image/x-png`)
/// are not disagreements; an empty declaration is no declaration.
fn mime_note(field: &str, declared: Option<&str>, real: ImageFormat) -> Option<String> {
    let declared = declared?.trim();
    let essence = declared.split(';').next().unwrap_or_default().trim();
    if essence.is_empty() {
        return None;
    }
    let agrees = match essence.to_ascii_lowercase().as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" => real == ImageFormat::Jpeg,
        "image/png" | "image/x-png" => real == ImageFormat::Png,
        "image/webp" => real == ImageFormat::Webp,
        "image/gif" => real == ImageFormat::Gif,
        _ => false,
    };
    (!agrees).then(|| {
        format!(
            "{field} {} disagrees with the bytes, which are a {} ({}); the bytes decide",
            quoted(declared),
            real.name(),
            real.mime()
        )
    })
}

/// Decodes and sniffs an inline image; the stored form is a data URL with the real mime.
/// With a downscale target, an image larger than the model will look at is stored at the
/// size it will be looked at.
/// `declared` is the field that declared a type and the type it declared, if any.
fn check_inline(
    text: &str,
    limits: &IntakeLimits,
    (field, declared): (&str, Option<&str>),
) -> Result<CheckedImage, String> {
    let (bytes, payload) = decode_base64(text, limits.max_image_bytes)?;
    check_bytes(&bytes, Some(payload), limits, (field, declared))
}

/// Sniffs (and downscales) an image's bytes; `payload` is their base64 when the caller has
/// it already, `declared` the field that declared a type and that type, if any.
fn check_bytes(
    bytes: &[u8],
    payload: Option<String>,
    limits: &IntakeLimits,
    (field, declared): (&str, Option<&str>),
) -> Result<CheckedImage, String> {
    let info = sniff_image(bytes)?;
    let note = mime_note(field, declared, info.format);
    let sha256 = Some(hex::encode(Sha256::digest(bytes)));
    if let Some(target) = &limits.downscale {
        if let Some(small) = downscale_for(bytes, target)? {
            return Ok(CheckedImage {
                image: format!(
                    "data:{};base64,{}",
                    small.mime,
                    STANDARD.encode(&small.bytes)
                ),
                width: Some(small.width as i32),
                height: Some(small.height as i32),
                note,
                sha256,
            });
        }
    }
    let payload = payload.unwrap_or_else(|| STANDARD.encode(bytes));
    Ok(CheckedImage {
        image: format!("data:{};base64,{payload}", info.mime),
        width: Some(info.width as i32),
        height: Some(info.height as i32),
        note,
        sha256,
    })
}

fn lenient(alphabet: &alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alphabet,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    )
}

/// Decodes standard or URL-safe base64, whitespace anywhere, padding optional. Returns
/// the bytes and the payload to store: standard alphabet, padded, no whitespace.
fn decode_base64(text: &str, max_bytes: usize) -> Result<(Vec<u8>, String), String> {
    // Size first, from the text alone, so an oversized payload is never decoded.
    let significant = text.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    if significant == 0 {
        return Err("empty".to_string());
    }
    let padding = text
        .bytes()
        .rev()
        .filter(|b| !b.is_ascii_whitespace())
        .take_while(|&b| b == b'=')
        .count();
    let decoded_len = (significant - padding.min(significant)) / 4 * 3
        + ((significant - padding.min(significant)) % 4).saturating_sub(1);
    if decoded_len > max_bytes {
        return Err(over_limit(decoded_len, max_bytes));
    }

    let mut clean = String::with_capacity(significant);
    clean.extend(text.chars().filter(|c| !c.is_ascii_whitespace()));
    let url_safe = clean.contains(['-', '_']);
    if url_safe && clean.contains(['+', '/']) {
        return Err(
            "not valid base64 (it mixes the standard + / and URL-safe - _ alphabets)".to_string(),
        );
    }
    let engine = lenient(if url_safe {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    });
    let bytes = engine.decode(&clean).map_err(|e| base64_reason(e, text))?;
    if bytes.len() > max_bytes {
        return Err(over_limit(bytes.len(), max_bytes));
    }
    let payload = if !url_safe && clean.len().is_multiple_of(4) {
        clean
    } else {
        STANDARD.encode(&bytes)
    };
    Ok((bytes, payload))
}

fn base64_reason(e: DecodeError, original: &str) -> String {
    match e {
        DecodeError::InvalidByte(at, byte) => {
            // The decoder saw the text without whitespace; point into what the person sent.
            let pos = original
                .char_indices()
                .filter(|(_, c)| !c.is_ascii_whitespace())
                .nth(at)
                .map_or(at, |(i, _)| i);
            let shown = if byte.is_ascii_graphic() {
                format!("'{}'", byte as char)
            } else {
                format!("byte 0x{byte:02x}")
            };
            if byte == b'=' {
                format!("not valid base64 ('=' padding in the middle, at position {pos})")
            } else {
                format!("not valid base64 (unexpected {shown} at position {pos})")
            }
        }
        DecodeError::InvalidLength(_) | DecodeError::InvalidLastSymbol(..) => {
            "not valid base64 (its length or last character is wrong: was it cut short?)"
                .to_string()
        }
        DecodeError::InvalidPadding => "not valid base64 (wrong '=' padding)".to_string(),
    }
}

fn over_limit(size: usize, limit: usize) -> String {
    let (s, l) = (human_size(size), human_size(limit));
    if s == l {
        // Rounding hid the difference: exact bytes say it.
        format!("{size} bytes decoded, over the {limit}-byte limit")
    } else {
        format!("{s} decoded, over the {l} limit")
    }
}

/// "23.4 MiB", "20 MiB", "512 KiB", "900 bytes".
pub(super) fn human_size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    let (value, unit) = if b >= MIB {
        (b / MIB, "MiB")
    } else if b >= KIB {
        (b / KIB, "KiB")
    } else {
        return format!("{bytes} bytes");
    };
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {unit}")
}

pub(super) fn check_custom_id(id: &str, max_len: usize) -> Result<(), String> {
    if id.is_empty() {
        return Err("custom_id is empty; leave it out to get a generated one".to_string());
    }
    let len = id.chars().count();
    if len > max_len {
        return Err(format!(
            "custom_id is {len} characters, over the {max_len} limit"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(format!(
            "custom_id {} has the character {c:?}; use only A-Z a-z 0-9 _ . : -",
            quoted(id)
        ));
    }
    Ok(())
}

pub(super) fn check_post_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("post_id is empty; leave it out for an item without a post".to_string());
    }
    let len = id.chars().count();
    if len > MAX_POST_ID_LEN {
        return Err(format!(
            "post_id is {len} characters, over the {MAX_POST_ID_LEN} limit"
        ));
    }
    Ok(())
}

/// A user string for a message: quoted, cut short so a huge value can't flood it.
pub(super) fn quoted(s: &str) -> String {
    const MAX: usize = 48;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_length_is_computed_exactly_from_the_text() {
        for n in 0..40usize {
            let bytes = vec![7u8; n];
            let padded = STANDARD.encode(&bytes);
            let (got, _) = decode_base64(&padded, usize::MAX).unwrap_or_default();
            assert_eq!(got.len(), n);
            // The pre-decode estimate must equal the real size, padded or not.
            assert!(decode_base64(&padded, n).is_ok() || n == 0);
            if n > 0 {
                assert!(decode_base64(&padded, n - 1)
                    .unwrap_err()
                    .contains("over the"));
                let bare = padded.trim_end_matches('=');
                assert!(decode_base64(bare, n - 1).unwrap_err().contains("over the"));
                assert!(decode_base64(bare, n).is_ok());
            }
        }
    }

    #[test]
    fn human_sizes_read_naturally() {
        assert_eq!(human_size(20 * 1024 * 1024), "20 MiB");
        assert_eq!(human_size(24_536_678), "23.4 MiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(900), "900 bytes");
    }

    #[test]
    fn sizes_that_round_alike_fall_back_to_bytes() {
        let limit = 20 * 1024 * 1024;
        assert_eq!(
            over_limit(limit + 1, limit),
            "20971521 bytes decoded, over the 20971520-byte limit"
        );
    }

    #[test]
    fn invalid_byte_position_counts_the_whitespace_sent() {
        let err = decode_base64("QUJD\nRE!G", 100).unwrap_err();
        assert_eq!(err, "not valid base64 (unexpected '!' at position 7)");
    }

    #[test]
    fn mixed_alphabets_are_rejected() {
        assert!(decode_base64("ab+_", 100).unwrap_err().contains("mixes"));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let q = quoted(&"x".repeat(500));
        assert!(q.len() < 60 && q.ends_with('…'));
    }
}
