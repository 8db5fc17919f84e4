//! `batchlens submit`: walk → plan chunks → create an open job → upload each chunk as
//! multipart (same Idempotency-Key on every attempt) → submit → with `--wait`/`--out`
//! follow the events, write the results and print the summary line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};

use super::client::read_json;
use super::progress::Progress;
use super::results::{save, summary, ResultFormat};
use super::upload::{chunk_form, chunk_key, multipart_cost, plan_chunks};
use super::walk::{find_images, ImageFile};
use super::{events, Api, CliError, SubmitArgs};

pub async fn run(args: SubmitArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let found = find_images(&args.paths)?;
    if found.skipped > 0 {
        eprintln!(
            "{} files skipped: not PNG, JPEG, WEBP or GIF",
            found.skipped
        );
    }
    let images = found.images;
    let plan = plan_chunks(images.iter().map(multipart_cost), args.chunk_bytes);
    for &i in &plan.too_large {
        eprintln!(
            "skipped {}: {} bytes, more than a request may carry (--chunk-bytes {})",
            images[i].filename, images[i].bytes, args.chunk_bytes
        );
    }
    let sending: usize = plan.chunks.iter().map(Vec::len).sum();
    if sending == 0 {
        return Err(CliError::Usage("no images to send".into()));
    }

    let mut body = json!({"open": true});
    for (key, value) in [
        ("name", &args.name),
        ("model", &args.model),
        ("mode", &args.mode),
        ("detail", &args.detail),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    // One key for this run: a create whose answer was lost is not a second job.
    let create_key = format!("batchlens-cli:create:{}", uuid::Uuid::new_v4());
    let job = api.post_json("/v1/jobs", &body, Some(&create_key)).await?;
    let id = job["id"]
        .as_str()
        .ok_or_else(|| CliError::Http(format!("the service answered no job id: {job}")))?
        .to_string();
    eprintln!(
        "job {id}: uploading {sending} images in {} chunks",
        plan.chunks.len()
    );

    let total_bytes: u64 = plan.chunks.iter().flatten().map(|&i| images[i].bytes).sum();
    let bar = Progress::new(
        total_bytes,
        "{spinner} upload [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
    );
    let mut uploaded = 0;
    let mut rejected = 0;
    // A few chunks in flight: the service checks and downscales one while the next one's
    // bytes arrive. Answers are taken in chunk order.
    let mut answers = futures::stream::iter(plan.chunks.iter().enumerate())
        .map(|(index, chunk)| {
            let chunk: Vec<&ImageFile> = chunk.iter().map(|&i| &images[i]).collect();
            let (api, id, bar) = (&api, &id, bar.bar());
            async move {
                let answer = upload_chunk(api, id, index, &chunk, bar).await;
                answer.map(|a| (index, chunk.len(), a))
            }
        })
        .buffered(args.parallel.max(1));
    while let Some(done) = answers.next().await {
        let (index, sent, answer) = done?;
        uploaded += sent;
        for r in answer["rejected"].as_array().into_iter().flatten() {
            rejected += 1;
            bar.println(format!(
                "rejected {}: {}",
                r["custom_id"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            ));
        }
        bar.status(
            format!(
                "chunk {}/{}: {uploaded}/{sending} images",
                index + 1,
                plan.chunks.len()
            ),
            true,
        );
    }
    bar.finish();
    submit_job(&api, &id).await?;
    eprintln!(
        "job {id} submitted: {uploaded} images uploaded{}",
        if rejected > 0 {
            format!(", {rejected} rejected")
        } else {
            String::new()
        }
    );
    println!("{id}");

    if !(args.wait || args.out.is_some()) {
        eprintln!("follow it with: batchlens status {id}");
        return Ok(());
    }
    let job = events::follow(&api, &id).await?;
    if let Some(path) = &args.out {
        let rows = save(&api, &id, path, ResultFormat::for_path(path)).await?;
        eprintln!("{rows} results written to {}", path.display());
    }
    let cost = api.get_json(&format!("/v1/jobs/{id}/cost")).await?;
    println!("{}", summary(&job, &cost));
    if job["status"] != "completed" {
        return Err(CliError::Http(format!(
            "job {id} ended {}",
            job["status"].as_str().unwrap_or("?")
        )));
    }
    Ok(())
}

/// Sends one chunk to `POST /v1/jobs/{id}/items`, as often as the retry policy allows, with
/// the chunk's own Idempotency-Key; answers the chunk answer. The bar counts the chunk's
/// bytes once, however many attempts it takes (other chunks may be counting beside it).
pub async fn upload_chunk(
    api: &Api,
    job_id: &str,
    index: usize,
    images: &[&ImageFile],
    bar: &indicatif::ProgressBar,
) -> Result<Value, CliError> {
    let path = format!("/v1/jobs/{job_id}/items");
    let key = chunk_key(job_id, index);
    // This chunk's bytes on the bar from the attempt under way.
    let counted = Arc::new(AtomicU64::new(0));
    let resp = api
        .send(&path, |attempt| {
            if attempt > 0 {
                bar.dec(counted.swap(0, Ordering::Relaxed));
            }
            let (bar, counted) = (bar.clone(), counted.clone());
            let form = chunk_form(images, move |n| {
                counted.fetch_add(n, Ordering::Relaxed);
                bar.inc(n);
            });
            let (path, key) = (&path, &key);
            async move {
                Ok(api
                    .request(reqwest::Method::POST, path)
                    .header("idempotency-key", key.as_str())
                    .multipart(form?))
            }
        })
        .await?;
    read_json(resp).await
}

/// `POST /v1/jobs/{id}/submit`; a 409 after a retry is our own earlier submit, if the job
/// has left `open`.
async fn submit_job(api: &Api, id: &str) -> Result<(), CliError> {
    let path = format!("/v1/jobs/{id}/submit");
    let sent = api
        .send(&path, |_| async {
            Ok(api.request(reqwest::Method::POST, &path))
        })
        .await;
    match sent {
        Ok(_) => Ok(()),
        Err(err @ CliError::Problem { status: 409, .. }) => {
            let job = api.get_json(&format!("/v1/jobs/{id}")).await?;
            if job["status"] == "open" {
                Err(err)
            } else {
                Ok(())
            }
        }
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::cli::{walk, Connection, RetryPolicy, SubmitArgs};

    /// Each request the stub server saw: its head and body.
    type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    /// Reads a request's head (through the blank line) and what of the body came with it.
    async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        loop {
            let mut piece = [0u8; 4096];
            let read = conn.read(&mut piece).await.unwrap_or(0);
            if read == 0 {
                return None;
            }
            buf.extend_from_slice(&piece[..read]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i + 4]).to_string();
                return Some((head, buf[i + 4..].to_vec()));
            }
        }
    }

    /// Reads the rest of a body of the head's content-length (none: no body).
    async fn read_body(conn: &mut tokio::net::TcpStream, head: &str, mut body: Vec<u8>) -> Vec<u8> {
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while body.len() < length {
            let mut piece = vec![0u8; 65536];
            let read = conn.read(&mut piece).await.unwrap();
            assert!(read > 0, "body cut short");
            body.extend_from_slice(&piece[..read]);
        }
        body
    }

    async fn answer(conn: &mut tokio::net::TcpStream, answer: &Value) {
        let text = answer.to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
            text.len()
        );
        let _ = conn.write_all(reply.as_bytes()).await;
    }

    /// A server that reads each request's head; the first connection is dropped after a
    /// few bytes of body, the later ones read the whole body and answer `answer`.
    async fn flaky_server(answer: Value) -> (String, Seen) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let Some((head, start)) = read_head(&mut conn).await else {
                    continue;
                };
                if n == 0 {
                    log.lock().unwrap().push((head, Vec::new()));
                    drop(conn);
                    continue;
                }
                let body = read_body(&mut conn, &head, start).await;
                log.lock().unwrap().push((head, body));
                self::answer(&mut conn, &answer).await;
            }
        });
        (base, seen)
    }

    #[tokio::test]
    async fn a_dropped_chunk_is_sent_again_with_the_same_key_as_multipart() {
        let dir = tempfile::tempdir().unwrap();
        let jpeg: Vec<u8> = [0xff, 0xd8, 0xff, 0xe0]
            .into_iter()
            .chain((0..200_000u32).map(|i| (i % 251) as u8))
            .collect();
        std::fs::create_dir_all(dir.path().join("p7")).unwrap();
        std::fs::write(dir.path().join("p7/look3.jpg"), &jpeg).unwrap();
        std::fs::write(dir.path().join("cover.png"), b"\x89PNG\r\n\x1a\n rest").unwrap();
        let found = walk::find_images(&[dir.path().to_path_buf()]).unwrap();
        let images: Vec<&ImageFile> = found.images.iter().collect();

        let answer = json!({"id": "j1", "status": "open", "rejected": []});
        let (base, seen) = flaky_server(answer.clone()).await;
        let mut api = Api::new(&Connection {
            url: base,
            key: Some("sk-cli".into()),
        })
        .unwrap();
        api.retry = RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        };
        let bar = indicatif::ProgressBar::hidden();
        let got = upload_chunk(&api, "j1", 2, &images, &bar).await.unwrap();
        assert_eq!(got, answer);

        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2, "one dropped attempt, one answered");
        let key = format!("idempotency-key: {}", chunk_key("j1", 2));
        for (head, _) in seen.iter() {
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("post /v1/jobs/j1/items "), "{head}");
            assert!(head.contains(&key), "{head}");
            assert!(head.contains("authorization: bearer sk-cli"), "{head}");
            assert!(head.contains("content-type: multipart/form-data; boundary="));
            assert!(
                head.contains("content-length: "),
                "every part's length is known: {head}"
            );
        }
        let body = &seen[1].1;
        let text = String::from_utf8_lossy(body);
        let job_at = text.find("name=\"job\"").expect("a job part");
        let cover_at = text
            .find("name=\"image\"; filename=\"cover.png\"\r\nContent-Type: image/png")
            .expect("cover.png's part");
        let look_at = text
            .find("name=\"image\"; filename=\"p7/look3.jpg\"\r\nContent-Type: image/jpeg")
            .expect("p7/look3.jpg's part");
        assert!(job_at < cover_at && cover_at < look_at);
        let items = json!({"items": [
            {"file": "cover.png", "custom_id": "cover"},
            {"file": "p7/look3.jpg", "custom_id": "p7:look3", "post_id": "p7"},
        ]});
        assert!(
            text.contains(&format!("application/json\r\n\r\n{items}\r\n")),
            "{}",
            &text[..400]
        );
        assert!(
            body.windows(jpeg.len()).any(|w| w == jpeg.as_slice()),
            "the file's bytes, whole"
        );
        assert_eq!(
            bar.position(),
            jpeg.len() as u64 + 13,
            "bytes counted once across attempts"
        );
    }

    /// A service that answers items chunks in groups of `parallel`: a chunk is answered
    /// once its group has all arrived (or after 10 s, so a client that sends one at a time
    /// still ends). Answers the most chunks it saw in flight at once.
    async fn chunks_in_flight(parallel: usize, chunks: usize) -> usize {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        // Chunks arrived so far (only grows), and chunks read but not answered.
        let arrived = Arc::new(tokio::sync::watch::channel(0usize).0);
        let flight = Arc::new(Mutex::new((0usize, 0usize)));
        let (seen, count) = (flight.clone(), arrived.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (seen, count) = (seen.clone(), count.clone());
                tokio::spawn(async move {
                    let Some((head, start)) = read_head(&mut conn).await else {
                        return;
                    };
                    read_body(&mut conn, &head, start).await;
                    let line = head.lines().next().unwrap_or_default().to_string();
                    if !line.contains("/items ") {
                        let reply = json!({"id": "j1", "status": "open"});
                        return answer(&mut conn, &reply).await;
                    }
                    {
                        let mut f = seen.lock().unwrap();
                        f.0 += 1;
                        f.1 = f.1.max(f.0);
                    }
                    let mut mine = 0;
                    count.send_modify(|n| {
                        mine = *n;
                        *n += 1;
                    });
                    let group_full = (mine / parallel + 1) * parallel;
                    let mut rx = count.subscribe();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        rx.wait_for(|&n| n >= group_full),
                    )
                    .await;
                    // Out of flight before the client can send its next chunk.
                    seen.lock().unwrap().0 -= 1;
                    answer(&mut conn, &json!({"rejected": []})).await;
                });
            }
        });
        let dir = tempfile::tempdir().unwrap();
        for i in 0..chunks {
            let jpeg: Vec<u8> = [0xff, 0xd8, 0xff, 0xe0]
                .into_iter()
                .chain([0; 2000])
                .collect();
            std::fs::write(dir.path().join(format!("{i}.jpg")), jpeg).unwrap();
        }
        let args = SubmitArgs {
            paths: vec![dir.path().to_path_buf()],
            conn: Connection {
                url: base,
                key: None,
            },
            name: None,
            model: None,
            detail: None,
            mode: None,
            wait: false,
            out: None,
            // One image per chunk.
            chunk_bytes: 4000,
            parallel,
        };
        tokio::time::timeout(Duration::from_secs(60), run(args))
            .await
            .expect("the upload ends")
            .unwrap();
        let most = flight.lock().unwrap().1;
        most
    }

    #[tokio::test]
    async fn chunks_go_up_side_by_side_as_many_as_asked() {
        assert_eq!(chunks_in_flight(2, 4).await, 2);
        assert_eq!(chunks_in_flight(3, 6).await, 3);
    }

    #[tokio::test]
    async fn a_service_that_stays_down_is_an_error_after_the_retries() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut api = Api::new(&Connection {
            url: format!("http://127.0.0.1:{port}"),
            key: None,
        })
        .unwrap();
        api.retry = RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(5),
        };
        let err = api.get_json("/v1/jobs/x").await.unwrap_err();
        assert!(matches!(err, CliError::Http(_)), "{err:?}");
        assert!(err.to_string().contains("/v1/jobs/x"), "{err}");
    }
}
