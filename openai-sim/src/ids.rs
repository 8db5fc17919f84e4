//! Random identifiers in OpenAI's shapes (`file-…`, `batch_…`, `chatcmpl-…`, `req_…`).

use rand::distributions::Alphanumeric;
use rand::Rng;

pub fn alnum(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

pub fn hex(n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| char::from_digit(rng.gen_range(0..16), 16).expect("digit below 16"))
        .collect()
}

pub fn file_id() -> String {
    format!("file-{}", alnum(22))
}

pub fn batch_id() -> String {
    format!("batch_{}", hex(32))
}

pub fn batch_request_id() -> String {
    format!("batch_req_{}", hex(32))
}

pub fn chat_id() -> String {
    format!("chatcmpl-{}", alnum(29))
}

pub fn request_id() -> String {
    format!("req_{}", hex(32))
}

pub fn event_id() -> String {
    format!("evt_{}", hex(32))
}
