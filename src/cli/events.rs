//! Following a job to its end through `GET /v1/jobs/{id}/events` (Server-Sent Events):
//! `progress` events move the bar, a terminal `status` event ends it; a dropped stream is
//! opened again after a look at the job (which may have finished meanwhile).

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use super::progress::Progress;
use super::{Api, CliError};

pub const TERMINAL: [&str; 3] = ["completed", "failed", "cancelled"];

pub fn is_terminal(job: &Value) -> bool {
    TERMINAL.contains(&job["status"].as_str().unwrap_or(""))
}

/// The work done and to do, as API.md's `progress.percent` counts it.
pub fn work(progress: &Value) -> (u64, u64) {
    let n = |k: &str| progress[k].as_u64().unwrap_or(0);
    let todo = n("total").saturating_sub(n("rejected"));
    let done = n("succeeded") + n("failed") + n("cancelled") + n("processing");
    (done.min(todo), todo)
}

/// One line for a progress object: `120/300 (40.0%) · 118 succeeded · 2 failed`.
pub fn describe(progress: &Value) -> String {
    let (done, todo) = work(progress);
    let n = |k: &str| progress[k].as_u64().unwrap_or(0);
    let mut line = format!(
        "{done}/{todo} ({:.1}%) · {} succeeded · {} failed",
        progress["percent"].as_f64().unwrap_or(0.0),
        n("succeeded"),
        n("failed")
    );
    for key in ["rejected", "cancelled", "reused"] {
        if n(key) > 0 {
            line.push_str(&format!(" · {} {key}", n(key)));
        }
    }
    line
}

/// Follows the job until it is terminal; answers the job as it ended.
pub async fn follow(api: &Api, job_id: &str) -> Result<Value, CliError> {
    let job_path = format!("/v1/jobs/{job_id}");
    let events_path = format!("{job_path}/events");
    let bar = Progress::new(0, "{spinner} job [{bar:30}] {pos}/{len} {wide_msg}");
    let show = |progress: &Value, status: &str, force: bool| {
        let (done, todo) = work(progress);
        bar.bar().set_length(todo);
        bar.bar().set_position(done);
        bar.status(format!("{status}: {}", describe(progress)), force);
    };
    let mut status = String::new();
    loop {
        let job = api.get_json(&job_path).await?;
        status = job["status"].as_str().unwrap_or(&status).to_string();
        show(&job["progress"], &status, true);
        if is_terminal(&job) {
            bar.finish();
            return Ok(job);
        }
        let resp = api
            .send(&events_path, |_| async {
                Ok(api
                    .request(reqwest::Method::GET, &events_path)
                    .header("accept", "text/event-stream"))
            })
            .await?;
        let mut stream = resp.bytes_stream();
        let mut parser = SseParser::default();
        'stream: while let Some(chunk) = stream.next().await {
            let Ok(chunk) = chunk else { break };
            for (event, data) in parser.feed(&chunk) {
                let data: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                match event.as_str() {
                    "progress" => show(&data, &status, false),
                    // A retry sent items back: the next figure may be lower.
                    "reopened" => bar.status(
                        format!("{} items re-opened for a retry", data["items"]),
                        true,
                    ),
                    "status" => {
                        if let Some(s) = data["status"].as_str() {
                            status = s.to_string();
                            bar.status(format!("status: {status}"), true);
                        }
                        if TERMINAL.contains(&status.as_str()) {
                            break 'stream;
                        }
                    }
                    _ => {}
                }
            }
        }
        if !TERMINAL.contains(&status.as_str()) {
            // Dropped before the end: look again, then reconnect.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Server-Sent Events framing: `event:` and `data:` lines, an empty line ends an event.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: String,
}

impl SseParser {
    /// Feeds bytes; answers the events they complete, as (event name, data).
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || !self.event.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    let name = if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    };
                    out.push((name, std::mem::take(&mut self.data)));
                }
            } else if let Some(value) = field(line, "event") {
                self.event = value.to_string();
            } else if let Some(value) = field(line, "data") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value);
            }
        }
        out
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_split_across_reads_are_put_together() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: progress\ndata: {\"total\"").is_empty());
        let got = p.feed(
            b": 3}\n\n: keep-alive\n\nevent: status\r\ndata: {\"status\":\"completed\"}\r\n\r\n",
        );
        assert_eq!(
            got,
            vec![
                ("progress".to_string(), "{\"total\": 3}".to_string()),
                (
                    "status".to_string(),
                    "{\"status\":\"completed\"}".to_string()
                ),
            ]
        );
    }

    #[test]
    fn work_leaves_rejected_images_out() {
        let p = json!({"total": 34, "rejected": 3, "succeeded": 10, "failed": 1,
                       "cancelled": 0, "processing": 4, "percent": 48.4});
        assert_eq!(work(&p), (15, 31));
        assert_eq!(
            describe(&p),
            "15/31 (48.4%) · 10 succeeded · 1 failed · 3 rejected"
        );
    }
}
