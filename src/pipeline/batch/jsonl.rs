//! The batch input file: one Chat Completions request per item, written line by line to
//! `<data_dir>/batches/<job>/<shard>.jsonl` while items are read in pages, so memory stays
//! flat however large the file.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::analyzer::{chat_request_body, RequestOptions};
use crate::domain::{Analyzer, Detail, Job, Shard};
use crate::pipeline::WorkerContext;
use crate::store::{DynStore, LinePage};

pub const ENDPOINT: &str = "/v1/chat/completions";

/// Items read from the store per page while writing. The next page is read while one is
/// written and one waits between them: about three pages are in memory at once (of
/// 60 KB images: 3 × 100 × 80 KB of data URL, 24 MB).
const PAGE: i64 = 100;

/// Bytes of lines formatted before one `write(2)`: few, large writes from a buffer that
/// stays in the cache.
const WRITE_CHUNK: usize = 2 << 20;

/// What every line of one job shares.
pub struct LineTemplate<'a> {
    pub analyzer: &'a Analyzer,
    pub model: &'a str,
    pub detail: Detail,
    pub max_completion_tokens: u32,
}

impl LineTemplate<'_> {
    /// Appends one JSONL line (with its newline) for `item` to `buf`. Compiles the
    /// template each call: a file of many lines uses [`LineTemplate::compile`] once.
    pub fn write_line(&self, buf: &mut Vec<u8>, custom_id: &str, image: &str) {
        self.compile().write_line(buf, custom_id, image);
    }

    /// The line's fixed JSON, serialized once: what comes before the image reference and
    /// what comes after it. Every line is then `{"custom_id":…` + the prefix + the image +
    /// the suffix, written without building a `serde_json::Value` per line (which copied
    /// each 80 KB data URL into the value and escaped it byte by byte: most of the time
    /// the writer took, see the README's Benchmarks).
    pub fn compile(&self) -> CompiledLine {
        let opts = RequestOptions {
            model: self.model,
            detail: self.detail,
            max_completion_tokens: self.max_completion_tokens,
        };
        // A placeholder image that cannot occur in the prompt or schema, found by trying.
        let (body, marker) = (0u32..)
            .map(|n| {
                let marker = format!("\u{1}batchlens-image-{n}\u{1}");
                let body = chat_request_body(self.analyzer, &marker, &opts);
                let body = serde_json::to_string(&body).expect("a JSON value always serializes");
                (
                    body,
                    serde_json::to_string(&marker).expect("a string serializes"),
                )
            })
            .find(|(body, marker)| body.matches(marker.as_str()).count() == 1)
            .expect("some placeholder is unused");
        let at = body.find(&marker).expect("the placeholder is in the body");
        CompiledLine {
            prefix: format!(
                ",\"method\":\"POST\",\"url\":{},\"body\":{}",
                serde_json::to_string(ENDPOINT).expect("a string serializes"),
                &body[..at]
            ),
            suffix: format!("{}}}\n", &body[at + marker.len()..]),
        }
    }
}

/// A [`LineTemplate`] serialized around the two things that differ per line.
pub struct CompiledLine {
    /// From after the custom_id to before the image's opening quote.
    prefix: String,
    /// From after the image's closing quote to the newline, included.
    suffix: String,
}

impl CompiledLine {
    /// Appends one JSONL line (with its newline) to `buf`.
    pub fn write_line(&self, buf: &mut Vec<u8>, custom_id: &str, image: &str) {
        buf.reserve(custom_id.len() + image.len() + self.prefix.len() + self.suffix.len() + 16);
        buf.extend_from_slice(b"{\"custom_id\":");
        push_json_string(buf, custom_id);
        buf.extend_from_slice(self.prefix.as_bytes());
        push_json_string(buf, image);
        buf.extend_from_slice(self.suffix.as_bytes());
    }
}

/// Appends `s` as a JSON string. A data URL or an http(s) URL needs no escaping, which a
/// whole-slice check finds far faster than escaping byte by byte; anything else goes
/// through serde_json's escaper.
fn push_json_string(buf: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *buf, s).expect("a string always serializes");
    } else {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    }
}

/// Whether any byte of `s` must be escaped in a JSON string (a quote, a backslash, a
/// control character). Checked 64 bytes at a time without an early exit inside a block,
/// which the compiler turns into vector compares; a byte-by-byte `all` it cannot.
fn needs_escape(s: &[u8]) -> bool {
    fn escaped(b: u8) -> bool {
        b < 0x20 || b == b'"' || b == b'\\'
    }
    let mut blocks = s.chunks_exact(64);
    blocks
        .by_ref()
        .any(|block| block.iter().fold(false, |any, &b| any | escaped(b)))
        || blocks.remainder().iter().any(|&b| escaped(b))
}

pub fn template<'a>(ctx: &WorkerContext, job: &'a Job) -> LineTemplate<'a> {
    LineTemplate {
        analyzer: &job.analyzer,
        model: &job.model,
        detail: job.detail,
        max_completion_tokens: ctx.settings.openai.max_completion_tokens,
    }
}

/// Bytes of a line apart from its image reference (custom_id budgeted at 64).
pub fn line_overhead(ctx: &WorkerContext, job: &Job) -> u64 {
    let mut buf = Vec::new();
    template(ctx, job).write_line(&mut buf, &"x".repeat(64), "");
    buf.len() as u64
}

pub fn shard_dir(data_dir: &Path, job_id: Uuid) -> PathBuf {
    data_dir.join("batches").join(job_id.to_string())
}

/// Writes the shard's input file and returns its path and size. Written to a temporary
/// name of this lease's own and renamed, so a file under the final name is always
/// complete, even if another worker writes the same shard after taking its lease over.
///
/// Pages are read here while one blocking thread formats the page before into a buffer
/// and writes it with `std::fs::File` (a tokio `File` copies each write into a buffer of
/// its own and hands it to a blocking thread per 2 MB); each line's custom_id and image
/// are read in place from the store's rows.
pub async fn write_shard_file(
    store: &DynStore,
    data_dir: &Path,
    shard: &Shard,
    template: &LineTemplate<'_>,
) -> io::Result<(PathBuf, u64)> {
    let dir = shard_dir(data_dir, shard.job_id);
    crate::files::create_dir_all_async(&dir).await?;
    let path = dir.join(format!("{}.jsonl", shard.id));
    let tmp = dir.join(format!("{}.jsonl.{}.tmp", shard.id, shard.lease_token));
    let file = crate::files::create_file(&tmp).await?.into_std().await;
    let line = template.compile();
    let (pages, mut next) = mpsc::channel::<io::Result<LinePage>>(1);
    let writer = tokio::task::spawn_blocking(move || {
        write_pages(file, &line, || next.blocking_recv().transpose())
    });
    let mut after = None;
    loop {
        let page = store
            .shard_lines(shard.id, after, PAGE)
            .await
            .map_err(io::Error::other);
        // Where the next page starts, when this one is full. A page that failed, or
        // whose last row does not decode, ends the reading: the writer meets the error.
        let more = match &page {
            Ok(p) if p.len() as i64 == PAGE => p.line(p.len() - 1).ok().map(|l| l.position),
            _ => None,
        };
        // A closed channel is a writer that stopped: its result says why.
        if pages.send(page).await.is_err() {
            break;
        }
        match more {
            Some(position) => after = Some(position),
            None => break,
        }
    }
    drop(pages);
    let bytes = writer.await.map_err(io::Error::other)??;
    tokio::fs::rename(&tmp, &path).await?;
    Ok((path, bytes))
}

/// Asks the kernel to start writing these bytes of the file to disk now, without waiting
/// for it, so the disk works while the next chunks are formatted and the final `sync_all`
/// finds most of the file written. Left alone, the kernel writes nothing of a file below
/// its dirty-page threshold (10% of memory: gigabytes) until that sync, which then waits
/// for all of it. A hint: a failed write shows again at the sync.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (offset, len) = (offset as libc::off64_t, len as libc::off64_t);
    // SAFETY: a system call on a descriptor `file` keeps open; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File, _: u64, _: u64) {}

/// Formats the lines of each page `next` yields into one reused buffer, writing it out
/// whenever it holds [`WRITE_CHUNK`] bytes, and syncs the file at the end. Returns the
/// bytes written; stops at the first error, the pages' own included.
fn write_pages(
    mut file: std::fs::File,
    line: &CompiledLine,
    mut next: impl FnMut() -> io::Result<Option<LinePage>>,
) -> io::Result<u64> {
    let mut buf = Vec::with_capacity(WRITE_CHUNK + (1 << 20));
    let mut bytes = 0u64;
    let mut flush = |buf: &mut Vec<u8>| -> io::Result<()> {
        file.write_all(buf)?;
        start_writeback(&file, bytes, buf.len() as u64);
        bytes += buf.len() as u64;
        // Cleared, or the next chunk would write this one again.
        buf.clear();
        Ok(())
    };
    while let Some(page) = next()? {
        for item in page.lines() {
            let item = item.map_err(io::Error::other)?;
            line.write_line(&mut buf, item.custom_id, item.image);
            if buf.len() >= WRITE_CHUNK {
                flush(&mut buf)?;
            }
        }
    }
    flush(&mut buf)?;
    file.sync_all()?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_post_to_chat_completions_with_the_prompt_first() {
        let analyzer = crate::analyzer::fashion();
        let t = LineTemplate {
            analyzer: &analyzer,
            model: "gpt-4o-mini",
            detail: Detail::Low,
            max_completion_tokens: 500,
        };
        let mut buf = Vec::new();
        t.write_line(&mut buf, "p1-0", "https://cdn.example.com/a.jpg");
        assert_eq!(buf.last(), Some(&b'\n'));
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        let line: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(line["custom_id"], "p1-0");
        assert_eq!(line["method"], "POST");
        assert_eq!(line["url"], "/v1/chat/completions");
        assert_eq!(line["body"]["model"], "gpt-4o-mini");
        assert_eq!(line["body"]["max_completion_tokens"], 500);
        assert!(line["body"].get("max_tokens").is_none());
        let parts = line["body"]["messages"][0]["content"].as_array().unwrap();
        assert_eq!(parts[0]["type"], "text");
        assert_eq!(
            parts[1]["image_url"]["url"],
            "https://cdn.example.com/a.jpg"
        );
        assert_eq!(parts[1]["image_url"]["detail"], "low");
    }

    /// The line as serde_json writes it from a `Value`: what the fast writer must equal.
    fn reference_line(t: &LineTemplate<'_>, custom_id: &str, image: &str) -> serde_json::Value {
        let opts = RequestOptions {
            model: t.model,
            detail: t.detail,
            max_completion_tokens: t.max_completion_tokens,
        };
        serde_json::json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": chat_request_body(t.analyzer, image, &opts),
        })
    }

    #[test]
    fn the_fast_writer_writes_what_serde_json_would_for_tricky_text() {
        let tricky = "say \"hi\"\n\tback\\slash \u{1}\u{1f}\u{7f} caf\u{e9} \u{1f600} \u{2028}\r";
        let analyzer = Analyzer {
            prompt: format!("{tricky} {{\"json\": [1]}} \\u{{1}}batchlens-image-0\\u{{1}}"),
            schema: serde_json::json!({
                "type": "object",
                "properties": {tricky: {"type": "string", "description": "\u{1}batchlens-image-0\u{1}"}},
            }),
        };
        let t = LineTemplate {
            analyzer: &analyzer,
            model: "gpt-4o-\"mini\"",
            detail: Detail::High,
            max_completion_tokens: 7,
        };
        let compiled = t.compile();
        let cases = [
            ("p1-0", "data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ+/=="),
            (
                "p\"1\n-\u{1}",
                "https://cdn.example.com/a b\\\"c\".jpg?x=\u{e9}",
            ),
            (tricky, tricky),
            ("", ""),
        ];
        let mut buf = Vec::new();
        for (custom_id, image) in cases {
            compiled.write_line(&mut buf, custom_id, image);
        }
        let lines: Vec<&[u8]> = buf
            .strip_suffix(b"\n")
            .unwrap()
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(
            lines.len(),
            cases.len(),
            "one line per item, no raw newline inside"
        );
        for ((custom_id, image), line) in cases.iter().zip(lines) {
            let got: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(got, reference_line(&t, custom_id, image));
        }
        let mut one = Vec::new();
        t.write_line(&mut one, "p1-0", cases[0].1);
        assert!(buf.starts_with(&one));
    }

    #[test]
    fn the_escape_check_finds_a_byte_anywhere_in_a_block_or_the_tail() {
        let clean = vec![b'A'; 200];
        assert!(!needs_escape(&clean));
        assert!(!needs_escape(b""));
        for at in [0, 1, 63, 64, 127, 128, 191, 192, 199] {
            for bad in [b'"', b'\\', b'\n', 0, 0x1f] {
                let mut s = clean.clone();
                s[at] = bad;
                assert!(needs_escape(&s), "{bad:#x} at {at}");
            }
        }
        assert!(!needs_escape("caf\u{e9} \u{1f600} \u{7f}".as_bytes()));
    }

    /// Several pages from a real store, with text to escape in custom_ids and images:
    /// every line parses back to what serde_json writes for its item, in order, and the
    /// size returned is the file's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_of_several_pages_parses_back_line_by_line() {
        use crate::domain::{JobStatus, Mode, NewItem};
        use crate::store::conformance::{at, item, new_job, new_shard};

        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = crate::store::connect(&url).await.unwrap();
        let n = 2 * PAGE as usize + 37;
        let items: Vec<NewItem> = (0..n)
            .map(|i| {
                let (custom_id, image) = match i % 4 {
                    0 => (
                        format!("img-{i}"),
                        format!("data:image/png;base64,{}", "QUJD".repeat(i)),
                    ),
                    1 => (
                        format!("say \"{i}\"\n\\"),
                        format!("https://cdn.example.com/{i}.jpg"),
                    ),
                    2 => (
                        format!("caf\u{e9}-\u{1}-{i}"),
                        format!("https://cdn.example.com/a\\\"{i}\".jpg"),
                    ),
                    _ => (
                        format!("p{i}"),
                        "data:image/jpeg;base64,/9j/+A==".repeat(1 + i % 7),
                    ),
                };
                NewItem {
                    image,
                    ..item(&custom_id, None)
                }
            })
            .collect();
        let job = new_job("acme", JobStatus::Queued, Mode::Batch, at(0));
        store.create_job(&job, &items).await.unwrap();
        let (_, lease) = store
            .claim_jobs_to_plan("test", std::time::Duration::from_secs(60), 1)
            .await
            .unwrap()
            .pop()
            .unwrap();
        let positions = (0..n as i64).collect();
        let planned = [new_shard(positions, at(0))];
        assert!(store.create_shards(&lease, &planned).await.unwrap());
        let shard = store.list_shards(job.id).await.unwrap().pop().unwrap();
        let t = LineTemplate {
            analyzer: &job.analyzer,
            model: &job.model,
            detail: job.detail,
            max_completion_tokens: 300,
        };

        let (path, bytes) = write_shard_file(&store, dir.path(), &shard, &t)
            .await
            .unwrap();
        let file = std::fs::read(&path).unwrap();
        assert_eq!(file.len() as u64, bytes);
        let lines: Vec<&[u8]> = file
            .strip_suffix(b"\n")
            .unwrap()
            .split(|&b| b == b'\n')
            .collect();
        assert_eq!(lines.len(), n, "one line per item, no raw newline inside");
        for (item, line) in items.iter().zip(lines) {
            let got: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(got, reference_line(&t, &item.custom_id, &item.image));
        }
    }
}
