//! Model names: the dated snapshot a request is answered with, and which models reason.

/// Alias → dated snapshot, as `model` comes back in a chat completion.
const SNAPSHOTS: &[(&str, &str)] = &[
    ("gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("gpt-4o", "gpt-4o-2024-08-06"),
    ("gpt-4.1", "gpt-4.1-2025-04-14"),
    ("gpt-4.1-mini", "gpt-4.1-mini-2025-04-14"),
    ("gpt-4.1-nano", "gpt-4.1-nano-2025-04-14"),
    ("gpt-5", "gpt-5-2025-08-07"),
    ("gpt-5-mini", "gpt-5-mini-2025-08-07"),
    ("gpt-5-nano", "gpt-5-nano-2025-08-07"),
    ("o4-mini", "o4-mini-2025-04-16"),
    ("o3", "o3-2025-04-16"),
];

/// The snapshot an alias resolves to; snapshots and unknown names are echoed.
pub fn snapshot(model: &str) -> String {
    SNAPSHOTS
        .iter()
        .find(|(alias, _)| *alias == model)
        .map(|(_, snap)| (*snap).to_string())
        .unwrap_or_else(|| model.to_string())
}

/// Reasoning models (gpt-5 family, o-series) reject `max_tokens` and non-default temperature.
pub fn is_reasoning(model: &str) -> bool {
    if model.starts_with("gpt-5") {
        return true;
    }
    let mut chars = model.chars();
    chars.next() == Some('o') && chars.next().is_some_and(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_echo() {
        assert_eq!(snapshot("gpt-4o-mini"), "gpt-4o-mini-2024-07-18");
        assert_eq!(snapshot("gpt-4.1-nano"), "gpt-4.1-nano-2025-04-14");
        assert_eq!(snapshot("gpt-5"), "gpt-5-2025-08-07");
        assert_eq!(snapshot("my-model"), "my-model");
        assert_eq!(
            snapshot("gpt-4o-2024-11-20"),
            "gpt-4o-2024-11-20",
            "snapshots are echoed"
        );
    }

    #[test]
    fn reasoning_detection() {
        assert!(is_reasoning("gpt-5-mini"));
        assert!(is_reasoning("o4-mini"));
        assert!(is_reasoning("o1"));
        assert!(!is_reasoning("gpt-4o"));
        assert!(!is_reasoning("omni-moderation-latest"));
    }
}
