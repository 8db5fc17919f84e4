//! Money and tokens: the price table, image- and text-token formulas, estimates and the exact
//! cost of a reported usage. Pure domain logic: no I/O, no axum, no sqlx.

pub mod calibration;
pub mod estimate;
pub mod image_tokens;
pub mod pricing;
pub mod recommend;
pub mod text_tokens;

pub use calibration::{Basis, Calibration, PerItem, UsageSample};
pub use estimate::{estimate, estimate_all_models, Estimate, EstimateInput};
pub use image_tokens::{formula_for, image_tokens, VisionFormula};
pub use pricing::{ItemCost, ModelPrice, PriceTable, DEFAULTS_AS_OF};
pub use text_tokens::{chat_request_input_tokens, count_text};

/// Size tiers that are their own family with their own prices and formulas: a name that
/// continues a known family with one of these ("gpt-4o" + "-mini") must not fall back to it.
const TIER_WORDS: &[&str] = &["mini", "nano", "pro"];

/// `model` without a trailing `-YYYY-MM-DD` snapshot date, if it has one.
pub(crate) fn strip_snapshot_date(model: &str) -> &str {
    let bytes = model.as_bytes();
    if bytes.len() < 11 {
        return model;
    }
    let tail = &bytes[bytes.len() - 11..];
    let shape_ok = tail.iter().enumerate().all(|(i, b)| match i {
        0 | 5 | 8 => *b == b'-',
        _ => b.is_ascii_digit(),
    });
    if shape_ok {
        &model[..model.len() - 11]
    } else {
        model
    }
}

/// The family in `known` that `model` belongs to: the exact name, else the name without its
/// snapshot date, else the longest known name it extends at a `-` boundary (but never across a
/// size tier, so an unknown "gpt-5-pro" is unknown rather than priced as "gpt-5").
pub(crate) fn resolve_family<'a>(
    model: &str,
    known: impl IntoIterator<Item = &'a str> + Clone,
) -> Option<&'a str> {
    if let Some(k) = known.clone().into_iter().find(|k| *k == model) {
        return Some(k);
    }
    let base = strip_snapshot_date(model);
    if let Some(k) = known.clone().into_iter().find(|k| *k == base) {
        return Some(k);
    }
    known
        .into_iter()
        .filter(|k| !k.is_empty() && extends_family(base, k))
        .max_by_key(|k| k.len())
}

fn extends_family(name: &str, family: &str) -> bool {
    let Some(rest) = name.strip_prefix(family) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix('-') else {
        return false;
    };
    let next = rest.split('-').next().unwrap_or("");
    !next.is_empty() && !TIER_WORDS.contains(&next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KNOWN: &[&str] = &["gpt-4o", "gpt-4o-mini", "gpt-5", "o1"];

    fn resolve(model: &str) -> Option<&'static str> {
        resolve_family(model, KNOWN.iter().copied())
    }

    #[test]
    fn strips_only_a_well_formed_date() {
        assert_eq!(strip_snapshot_date("gpt-4o-mini-2024-07-18"), "gpt-4o-mini");
        assert_eq!(strip_snapshot_date("gpt-4o-2024-08-06"), "gpt-4o");
        assert_eq!(strip_snapshot_date("gpt-4o"), "gpt-4o");
        assert_eq!(
            strip_snapshot_date("gpt-4o-mini-2024-7-18x"),
            "gpt-4o-mini-2024-7-18x"
        );
        assert_eq!(strip_snapshot_date("2024-07-18"), "2024-07-18");
        // The suffix is the last 11 bytes: a name that is nothing else has no family left.
        assert_eq!(strip_snapshot_date("-2024-07-18"), "");
    }

    #[test]
    fn resolves_exact_dated_and_prefixed_names() {
        assert_eq!(resolve("gpt-4o"), Some("gpt-4o"));
        assert_eq!(resolve("gpt-4o-mini-2024-07-18"), Some("gpt-4o-mini"));
        assert_eq!(resolve("gpt-4o-2024-08-06"), Some("gpt-4o"));
        assert_eq!(resolve("gpt-5-chat-latest"), Some("gpt-5"));
        assert_eq!(resolve("o1-2024-12-17"), Some("o1"));
    }

    #[test]
    fn never_crosses_a_size_tier_or_a_version_dot() {
        assert_eq!(resolve("gpt-5-mini"), None);
        assert_eq!(resolve("gpt-5-nano-2025-08-07"), None);
        assert_eq!(resolve("gpt-5-pro"), None);
        assert_eq!(resolve("gpt-5.1"), None);
        assert_eq!(resolve("gpt-4"), None);
        assert_eq!(resolve(""), None);
    }
}
