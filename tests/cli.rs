//! The command-line client as a user runs it: the real binary against the real service and
//! openai-sim.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{b64, fast_sim, png, Db, Service, TestApp, TestDb};
use batchlens::cli::{upload, walk};
use openai_sim::SimServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Runs `batchlens args…` in `cwd` with no BATCHLENS_* variables from the test's own
/// environment; answers (exit code, stdout, stderr).
async fn batchlens(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchlens"))
        .args(args)
        .current_dir(cwd)
        .env_remove("BATCHLENS_URL")
        .env_remove("BATCHLENS_API_KEY")
        .env_remove("BATCHLENS_CONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("batchlens finishes")
        .expect("batchlens runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn help_and_version_exit_0_and_start_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let (code, out, _) = batchlens(cwd.path(), &["--help"]).await;
    assert_eq!(code, 0);
    for command in [
        "serve",
        "healthcheck",
        "submit",
        "status",
        "results",
        "estimate",
    ] {
        assert!(out.contains(command), "{command} in --help: {out}");
    }
    let (code, out, _) = batchlens(cwd.path(), &["--version"]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("batchlens {}", env!("CARGO_PKG_VERSION"))
    );
    let (code, out, _) = batchlens(cwd.path(), &["submit", "--help"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("--chunk-bytes") && out.contains("BATCHLENS_URL"),
        "{out}"
    );
    let left: Vec<_> = std::fs::read_dir(cwd.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "--help/--version left {left:?} (no ./data)"
    );
}

#[tokio::test]
async fn an_unknown_argument_is_an_error_not_a_start() {
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, err) = batchlens(cwd.path(), &["--port", "9000"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unexpected argument '--port'"), "{err}");
    let (code, _, err) = batchlens(cwd.path(), &["sumbit", "photos/"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = batchlens(cwd.path(), &["submit"]).await;
    assert_eq!(code, 2, "submit needs a folder or files");
    assert!(std::fs::read_dir(cwd.path()).unwrap().next().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthcheck_is_0_for_a_running_service_and_1_otherwise() {
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, err) = batchlens(cwd.path(), &["healthcheck", "--url", &app.base]).await;
    assert_eq!(code, 0, "{err}");

    // A port held by a listener that never answers: connected, no 200 within 2 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (code, _, _) = batchlens(cwd.path(), &["healthcheck", "--url", &url]).await;
    assert_eq!(code, 1);
    // A closed port: refused.
    let (_held, port) = crate::common::refused_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = batchlens(cwd.path(), &["healthcheck", "--url", &url]).await;
    assert_eq!(code, 1, "{err}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_and_results_of_a_finished_job() {
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let image = b64(&png(64, 48));
    let items: Vec<Value> = (0..3)
        .map(|i| {
            json!({"custom_id": format!("p{i}:look"), "post_id": format!("p{i}"),
                        "image_base64": image, "mime_type": "image/png"})
        })
        .collect();
    let (status, job) = app
        .post(
            "/v1/jobs",
            &json!({"name": "cli", "mode": "batch", "items": items}),
        )
        .await;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");

    let cwd = tempfile::tempdir().unwrap();
    let (code, out, err) = batchlens(cwd.path(), &["status", &id, "--url", &app.base]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("(cli)"), "{out}");
    assert!(
        out.contains("completed") && out.contains("3/3 (100.0%) · 3 succeeded · 0 failed"),
        "{out}"
    );

    let (code, csv, err) = batchlens(
        cwd.path(),
        &["results", &id, "--format", "csv", "--url", &app.base],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "a header and a row per image: {csv}");
    assert!(
        lines[0].starts_with("custom_id,post_id,status,"),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with(",input_tokens,output_tokens,cost_usd,error"),
        "{}",
        lines[0]
    );
    for (i, row) in lines[1..].iter().enumerate() {
        assert!(
            row.starts_with(&format!("p{i}:look,p{i},succeeded,")),
            "{row}"
        );
    }

    // NDJSON into a file: the service's own lines, one per image.
    let (code, _, err) = batchlens(
        cwd.path(),
        &["results", &id, "--out", "r.ndjson", "--url", &app.base],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let text = std::fs::read_to_string(cwd.path().join("r.ndjson")).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows, app.all_results(&id).await);

    // A problem from the server: `batchlens: <title>: <detail>`, exit 1.
    let missing = "00000000-0000-4000-8000-000000000000";
    let (code, _, err) = batchlens(cwd.path(), &["status", missing, "--url", &app.base]).await;
    assert_eq!(code, 1);
    assert!(err.starts_with("batchlens: Not found: "), "{err}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn estimate_prints_a_table_with_the_cheapest_marked() {
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("p1")).unwrap();
    std::fs::write(dir.path().join("p1/a.png"), png(64, 48)).unwrap();
    std::fs::write(dir.path().join("p1/b.png"), png(640, 480)).unwrap();
    std::fs::write(dir.path().join("c.png"), png(32, 32)).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let folder = dir.path().display().to_string();
    let (code, out, err) = batchlens(
        dir.path(),
        &[
            "estimate",
            &folder,
            "--url",
            &app.base,
            "--model",
            "gpt-4o-mini",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 files skipped"), "{err}");
    assert!(!err.contains("rejected"), "{err}");
    assert!(out.starts_with("3 images · model gpt-4o-mini"), "{out}");
    assert!(out.contains("per image") && out.contains("total"), "{out}");
    let marked: Vec<&str> = out.lines().filter(|l| l.contains("◀ cheapest")).collect();
    assert!(!marked.is_empty(), "{out}");
    assert!(
        marked
            .iter()
            .all(|l| l.contains("batch") || l.contains("flex")),
        "{out}"
    );
    assert!(out.contains("individual"), "{out}");
    let stats = app.sim.sim().stats();
    assert_eq!(
        (stats.chat_calls, stats.batches_created),
        (0, 0),
        "nothing sent to OpenAI"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn submit_uploads_a_folder_in_multipart_chunks_and_writes_the_results() {
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let photos = cwd.path().join("photos");
    for (rel, bytes) in [
        ("cover.png", png(30, 20)),
        ("p1/look1.png", png(31, 20)),
        ("p1/look2.jpg", testkit::jpeg_photo(32, 20)),
        ("p2/look1.png", png(33, 20)),
        ("p2/notes.txt", b"not an image".to_vec()),
    ] {
        let path = photos.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    // Chunks of about two images each: several multipart requests to /items.
    let (code, out, err) = batchlens(
        cwd.path(),
        &[
            "submit",
            "photos",
            "--url",
            &app.base,
            "--chunk-bytes",
            "2500",
            "--out",
            "results.csv",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("1 files skipped"), "{err}");
    assert!(
        err.contains("uploading 4 images in 2 chunks")
            || err.contains("uploading 4 images in 3 chunks")
            || err.contains("uploading 4 images in 4 chunks"),
        "{err}"
    );
    assert!(out.contains("4 images: 4 succeeded, 0 failed"), "{out}");
    let csv = std::fs::read_to_string(cwd.path().join("results.csv")).unwrap();
    let mut rows: Vec<String> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').take(3).collect::<Vec<_>>().join(","))
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "cover,,succeeded",
            "p1:look1,p1,succeeded",
            "p1:look2,p1,succeeded",
            "p2:look1,p2,succeeded"
        ]
    );
    app.shutdown().await;
}

/// The address the CLI is given, in front of whichever service runs: it passes bytes both
/// ways, refuses connections (accepts and closes them) while no service is behind it, and
/// once, on the connection that carries the first `POST …/items`, drops the answer and
/// closes the connection: the chunk is stored, its answer lost, as when the service dies
/// between the two.
struct Front {
    addr: SocketAddr,
    backend: Arc<Mutex<Option<SocketAddr>>>,
}

/// The line that starts a request to append items (`POST /v1/jobs/{id}/items`).
const ITEMS_REQUEST: &[u8] = b"/items HTTP/1.1\r\n";

impl Front {
    /// Starts the front; `cut` is told when the first items answer has been dropped.
    async fn start(cut: oneshot::Sender<()>) -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let backend: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let armed = Arc::new(Mutex::new(Some(cut)));
        let current = backend.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = *current.lock().unwrap();
                match target {
                    Some(target) => {
                        tokio::spawn(relay(client, target, armed.clone()));
                    }
                    None => drop(client),
                }
            }
        });
        Front { addr, backend }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn point_at(&self, service: Option<&Service>) {
        *self.backend.lock().unwrap() =
            service.map(|s| s.base.trim_start_matches("http://").parse().unwrap());
    }
}

/// Relays one connection; see [`Front`].
async fn relay(
    client: TcpStream,
    target: SocketAddr,
    armed: Arc<Mutex<Option<oneshot::Sender<()>>>>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let withhold = Arc::new(AtomicBool::new(false));
    let (seen, hold) = (withhold.clone(), armed.clone());
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        // The last bytes of the previous read: a request line may straddle two reads.
        let mut tail = Vec::new();
        loop {
            let n = match from_client.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            if hold.lock().unwrap().is_some()
                && tail
                    .windows(ITEMS_REQUEST.len())
                    .any(|w| w == ITEMS_REQUEST)
            {
                seen.store(true, Ordering::SeqCst);
            }
            tail.drain(..tail.len().saturating_sub(ITEMS_REQUEST.len()));
            if to_server.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match from_server.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // HTTP/1.1 answers in order: the first bytes after the items request are its
            // answer.
            if withhold.load(Ordering::SeqCst) {
                if let Some(cut) = armed.lock().unwrap().take() {
                    let _ = cut.send(());
                }
                break;
            }
            if to_client.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_client.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A folder of `n` small images, ten to a sub-folder (`p<k>/look<j>.png|jpg`), every third a
/// JPEG; answers the custom_ids the CLI gives them.
fn photo_folder(root: &Path, n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            let (post, look) = (format!("p{:02}", i / 10), i % 10);
            let (w, h) = (16 + i % 17, 12 + i / 17);
            let (name, bytes) = if i % 3 == 0 {
                (format!("look{look}.jpg"), testkit::jpeg_photo(w, h))
            } else {
                (format!("look{look}.png"), png(w, h))
            };
            let dir = root.join(&post);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
            format!("{post}:look{look}")
        })
        .collect()
}

/// A chunk size that makes exactly `chunks` uploads of these images.
fn chunk_bytes_for(root: &Path, chunks: usize) -> u64 {
    let found = walk::find_images(&[root.to_path_buf()]).unwrap();
    let costs: Vec<u64> = found.images.iter().map(upload::multipart_cost).collect();
    let total: u64 = costs.iter().sum();
    let largest = costs.iter().copied().max().unwrap();
    let limit = upload::REQUEST_OVERHEAD + total.div_ceil(chunks as u64) + largest;
    assert_eq!(
        upload::plan_chunks(costs.iter().copied(), limit)
            .chunks
            .len(),
        chunks
    );
    limit
}

/// The end to end run: `batchlens submit` of 300 images in 3 chunks through a front
/// that loses the first chunk's answer while the service is killed (SIGKILL) and started
/// again on the same database; the CLI sends the chunk again (the same Idempotency-Key)
/// once the service is back, and the job holds each image once. Without the retry the CLI
/// fails; without idempotency the resent chunk's custom_ids are taken and it is refused.
async fn submit_survives_a_restart_mid_upload_without_duplicates(db: Db) {
    let Some(db) = TestDb::new(db).await else {
        return;
    };
    let sim = Arc::new(SimServer::spawn(fast_sim()).await.unwrap());
    let data = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let photos = cwd.path().join("photos");
    let mut expected = photo_folder(&photos, 300);
    expected.sort();
    let chunk_bytes = chunk_bytes_for(&photos, 3).to_string();

    let (cut_tx, cut_rx) = oneshot::channel();
    let front = Front::start(cut_tx).await;
    let first = Service::start(&db.url, &sim, data.path(), &[]).await;
    front.point_at(Some(&first));
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchlens"))
        .args(["submit", "photos", "--mode", "batch", "--wait"])
        .args(["--url", &front.url(), "--chunk-bytes", &chunk_bytes])
        .args(["--out", "results.csv"])
        .current_dir(cwd.path())
        .env_remove("BATCHLENS_API_KEY")
        .env_remove("BATCHLENS_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("batchlens runs");
    let output = cli.wait_with_output();
    tokio::pin!(output);
    tokio::select! {
        cut = cut_rx => cut.expect("the front reports the cut"),
        out = &mut output => panic!("the CLI ended before the first chunk was answered: {out:?}"),
        _ = tokio::time::sleep(Duration::from_secs(120)) => panic!("no items chunk within 120 s"),
    }
    // The chunk is stored and its answer lost: the service dies, and while it is down the
    // CLI's attempts are refused.
    front.point_at(None);
    first.kill();
    let second = Service::start(&db.url, &sim, data.path(), &[]).await;
    second.wait_ready(&reqwest::Client::new()).await;
    front.point_at(Some(&second));

    let out = tokio::time::timeout(Duration::from_secs(240), output)
        .await
        .expect("the CLI finishes within 240 s")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("uploading 300 images in 3 chunks"),
        "{stderr}"
    );
    assert!(
        stdout.contains("300 images: 300 succeeded, 0 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("individual calls would have cost") && stdout.contains("saved"),
        "the summary line: {stdout}"
    );
    let csv = std::fs::read_to_string(cwd.path().join("results.csv")).unwrap();
    let mut ids: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|row| row.split(',').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 300, "one row per image: {csv}");
    ids.sort();
    assert_eq!(ids, expected, "each image once");
    for row in csv.lines().skip(1) {
        let (id, rest) = row.split_once(',').unwrap();
        let post = id.split(':').next().unwrap();
        assert!(rest.starts_with(&format!("{post},succeeded,")), "{row}");
    }
    // Stored once: the job holds 300 items, not 400.
    let job_id = stdout.lines().next().unwrap().trim();
    let http = reqwest::Client::new();
    let job: Value =
        crate::common::get_json(&http, &format!("{}/v1/jobs/{job_id}", second.base)).await;
    assert_eq!(job["progress"]["total"], 300, "{job}");
    assert_eq!(job["progress"]["rejected"], 0, "{job}");
    second.kill();
}

on_both!(submit_survives_a_restart_mid_upload_without_duplicates);
