//! Text tokens with tiktoken's o200k_base: counting, and cutting a reply at a token budget.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

fn bpe() -> &'static CoreBPE {
    static BPE: OnceLock<CoreBPE> = OnceLock::new();
    BPE.get_or_init(|| tiktoken_rs::o200k_base().expect("o200k_base ships inside tiktoken-rs"))
}

/// Tokens of `text`, special-token text counted as ordinary text.
pub fn count(text: &str) -> u64 {
    if text.is_empty() {
        return 0;
    }
    bpe().encode_ordinary(text).len() as u64
}

/// The first `max` tokens of `text` (the whole text when it is shorter).
pub fn truncate(text: &str, max: u64) -> String {
    let tokens = bpe().encode_ordinary(text);
    if tokens.len() as u64 <= max {
        return text.to_string();
    }
    let mut keep = tokens[..max as usize].to_vec();
    // A cut inside a multi-byte character does not decode; drop tokens until it does.
    loop {
        if let Ok(s) = bpe().decode(keep.clone()) {
            return s;
        }
        if keep.pop().is_none() {
            return String::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_truncates() {
        assert_eq!(count(""), 0);
        assert_eq!(count("hello world"), 2);
        let t = truncate("one two three four five", 2);
        assert_eq!(count(&t), 2);
        assert!("one two three four five".starts_with(&t));
        assert_eq!(truncate("short", 10), "short");
    }
}
