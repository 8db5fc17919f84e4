//! Text tokens with tiktoken's o200k_base: counting, and cutting a reply at a token budget.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

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

/// Distinct prompt strings remembered before the memo starts over.
const MEMO_LIMIT: usize = 4_096;

/// `count`, remembered: batch lines repeat the same system prompt and schema thousands of
/// times, and o200k_base runs at roughly a million tokens a second.
pub fn count_memo(text: &str) -> u64 {
    static MEMO: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    if text.len() < 64 {
        return count(text);
    }
    let memo = MEMO.get_or_init(Default::default);
    if let Some(n) = memo.lock().unwrap_or_else(|e| e.into_inner()).get(text) {
        return *n;
    }
    let n = count(text);
    let mut m = memo.lock().unwrap_or_else(|e| e.into_inner());
    if m.len() >= MEMO_LIMIT {
        m.clear();
    }
    m.insert(text.to_string(), n);
    n
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
        let long =
            "a sentence long enough to be remembered by the memo, surely over sixty-four bytes";
        assert_eq!(count_memo(long), count(long));
        assert_eq!(count_memo(long), count(long));
    }
}
