//! The dashboard page at `/`: how it is served, and the page itself in headless Chromium
//! (`--dump-dom` at two moments of a job's life, asserting on the `data-*` attributes the
//! page writes, so the test reads numbers, not pixels).
//!
//! The browser test needs `/usr/bin/chromium` (Debian's `chromium`; `.ci/run` installs it):
//! under `CI=true` a missing browser fails, elsewhere the test prints why and skips.
//! `DASHBOARD_SCREENSHOT=/path.png` also saves a screenshot of the page with its jobs.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::{fast_sim, mixed_items, Db, TestApp};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    for (path, kind, needle) in [
        ("/", "text/html; charset=utf-8", "<title>batchlens</title>"),
        (
            "/dashboard/app.js",
            "text/javascript; charset=utf-8",
            "readEvents",
        ),
        ("/dashboard/app.css", "text/css; charset=utf-8", ".bar"),
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], kind, "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        assert!(h["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'"));
        let etag = h["etag"].to_str().unwrap().to_string();
        assert!(r.text().await.unwrap().contains(needle), "{path}");
        // Revalidation: the same ETag is a 304 with no body.
        let again = app
            .http
            .get(app.url(path))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path}");
        assert!(again.bytes().await.unwrap().is_empty());
    }
    // Not API: the document does not list it.
    let (_, doc) = app.get("/openapi.json").await;
    assert!(doc["paths"].get("/").is_none());
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_keys_the_page_loads_without_one_and_the_api_asks_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    std::fs::write(
        &file,
        format!(
            "[[auth.keys]]\ntenant = \"acme\"\nsha256 = \"{}\"\n",
            batchlens::api::auth::sha256_hex("key-a")
        ),
    )
    .unwrap();
    let app = TestApp::spawn_with_config(Db::Sqlite, fast_sim(), &[], Some(&file))
        .await
        .unwrap();
    let page = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains(r#"id="key-form""#));
    let (status, _) = app.get("/v1/jobs").await;
    assert_eq!(status, 401, "what makes the page ask for a key");
    app.shutdown().await;
}

fn have_chromium() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true but {CHROMIUM} is missing (.ci/run installs Debian's chromium)");
    }
    eprintln!(
        "skipping the dashboard browser test: {CHROMIUM} is missing (apt-get install chromium)"
    );
    false
}

/// Runs headless Chromium with a fresh profile on `url`; its stdout. Killed after `limit`.
async fn chromium(args: &[&str], url: &str, limit: Duration) -> String {
    let profile = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("chromium did not finish within {limit:?}"))
        .expect("chromium starts");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page's DOM after it had `budget_ms` of (virtual) time.
async fn dump(url: &str, budget_ms: u32) -> String {
    let budget = format!("--virtual-time-budget={budget_ms}");
    // Tall enough that every thumbnail of the open job is in view (they load when seen).
    let dom = chromium(
        &["--dump-dom", "--window-size=1280,3000", &budget],
        url,
        Duration::from_secs(60),
    )
    .await;
    assert!(dom.contains("<html"), "no DOM dumped: {dom}");
    dom
}

/// What the page shows for one job: its status badge and its bar's `data-percent`.
fn row(dom: &str, id: &str) -> Option<(String, f64)> {
    let start = dom.find(&format!(r#"data-job-id="{id}""#))?;
    let rest = &dom[start..];
    let tr = &rest[..rest.find("</tr>")?];
    let attr = |prefix: &str| {
        let at = tr.find(prefix)? + prefix.len();
        Some(tr[at..at + tr[at..].find('"')?].to_string())
    };
    let status = attr(r#"class="status "#)?;
    let percent = attr(r#"data-percent=""#)?.parse().ok()?;
    assert!(tr.contains(r#"class="bar""#), "no bar in {tr}");
    Some((status, percent))
}

/// The job row's bar attribute `name` (`data-live`: figures the page took from `/events`).
fn bar_attr(dom: &str, id: &str, name: &str) -> Option<String> {
    let start = dom.find(&format!(r#"data-job-id="{id}""#))?;
    let tr = &dom[start..start + dom[start..].find("</tr>")?];
    let prefix = format!(r#"{name}=""#);
    let at = tr.find(&prefix)? + prefix.len();
    Some(tr[at..at + tr[at..].find('"')?].to_string())
}

/// The markup of the result card of `custom_id` (up to the next card).
fn card<'a>(dom: &'a str, custom_id: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"data-custom-id="{custom_id}""#))
        .unwrap_or_else(|| panic!("no card {custom_id} in {dom}"));
    let rest = &dom[start + 1..];
    &dom[start..start + 1 + rest.find("data-custom-id=").unwrap_or(rest.len())]
}

/// The number in the first `prefix…"` of the DOM.
fn attr_number(dom: &str, prefix: &str) -> f64 {
    let at = dom
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix} in {dom}"))
        + prefix.len();
    dom[at..at + dom[at..].find('"').unwrap()].parse().unwrap()
}

async fn job(app: &TestApp, id: &str) -> Value {
    let (status, job) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(status, 200, "{job}");
    job
}

fn percent(job: &Value) -> f64 {
    job["progress"]["percent"].as_f64().unwrap()
}

/// [`mixed_items`]; for a screenshot, with a photo-like picture in its inline images.
fn looks(n: usize, photos: bool) -> Vec<Value> {
    let mut items = mixed_items(n, 0);
    if photos {
        let photo = crate::common::b64(&testkit::jpeg_photo(320, 240));
        for item in &mut items {
            if item.get("image_url").is_none() {
                item.as_object_mut().unwrap().remove("data_url");
                item["image_base64"] = json!(photo);
                item["mime_type"] = json!("image/jpeg");
            }
        }
    }
    items
}

async fn create(app: &TestApp, body: Value) -> String {
    let (status, job) = app.post("/v1/jobs", &body).await;
    assert_eq!(status, 202, "{job}");
    job["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_lists_jobs_and_follows_a_running_one_to_the_end() {
    if !have_chromium() {
        return;
    }
    let started = Instant::now();
    let app = TestApp::spawn(Db::Sqlite, fast_sim(), &[]).await.unwrap();
    let shot = std::env::var("DASHBOARD_SCREENSHOT").ok();

    let done = create(
        &app,
        json!({"name": "finished-lookbook", "mode": "batch", "items": looks(8, shot.is_some())}),
    )
    .await;
    if shot.is_some() {
        // More to look at: an individual job and one with a rejected image.
        for body in [
            json!({"name": "autumn-quick-check", "mode": "individual", "items": mixed_items(3, 0)}),
            json!({"name": "press-kit <b>&amp;</b>", "mode": "batch", "items": mixed_items(12, 5)}),
        ] {
            let id = create(&app, body).await;
            app.wait_terminal(&id, Duration::from_secs(60)).await;
        }
    }
    let finished = app.wait_terminal(&done, Duration::from_secs(60)).await;
    assert_eq!(finished["status"], "completed", "{finished}");

    // The next batch stays in progress for a while (knobs are copied per batch).
    app.sim.sim().set_config(openai_sim::SimConfig {
        in_progress_ms: 20_000,
        ..fast_sim()
    });
    let running = create(
        &app,
        json!({"name": "running-lookbook", "mode": "batch", "items": mixed_items(10, 0)}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while job(&app, &running).await["status"] != "running" {
        assert!(Instant::now() < deadline, "the job never started running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // First look, with the finished job's results open (the page deep-links by hash). The
    // simulator's clock stands still from here to the second look (it moves only when the
    // test pushes it), so the batch is still in progress however long a loaded machine
    // takes to run the browser.
    app.sim.sim().pause_clock();
    let url = app.url(&format!("/#job={done}"));
    let before = percent(&job(&app, &running).await);
    let t = Instant::now();
    let dom1 = dump(&url, 3_000).await;
    let dump_secs = t.elapsed().as_secs_f64();
    let now = job(&app, &running).await;
    assert_eq!(
        now["status"], "running",
        "finished during the first look: {now}"
    );
    let after = percent(&now);

    assert_eq!(
        row(&dom1, &done),
        Some(("completed".to_string(), 100.0)),
        "{dom1}"
    );
    let (status1, p1) = row(&dom1, &running).unwrap_or_else(|| panic!("{dom1}"));
    assert!(
        ["queued", "running"].contains(&status1.as_str()),
        "{status1}"
    );
    // The bar shows what the API said while the page was open.
    assert!(
        before - 0.05 <= p1 && p1 <= after + 0.05,
        "bar at {p1}, API from {before} to {after}"
    );
    // Newest first.
    assert!(dom1.find(&running).unwrap() < dom1.find(&done).unwrap());
    // The open job: results by post, each image with its status, and its cost.
    assert!(dom1.contains(r#"data-post-id="post-0""#), "{dom1}");
    assert!(dom1.contains(r#"data-post-id="post-1""#), "{dom1}");
    assert!(dom1.contains(r#"data-custom-id="img-0" data-status="succeeded""#));
    let cost = job(&app, &done).await["cost"].clone();
    for (attr, field) in [("actual", "actual_usd"), ("individual", "individual_usd")] {
        let shown = attr_number(&dom1, &format!(r#"data-{attr}=""#));
        let want = cost[field].as_f64().unwrap();
        assert!((shown - want).abs() < 1e-12, "{attr}: {shown} vs {cost}");
    }
    assert!(cost["individual_usd"].as_f64() > cost["actual_usd"].as_f64());
    // Thumbnails: inline images fetched with the key into blob: URLs (no key in a URL);
    // an image_url item has no stored bytes.
    for inline in ["img-1", "img-2"] {
        let c = card(&dom1, inline);
        assert!(
            c.contains(r#"<img loading="lazy" alt="" src="blob:"#),
            "{c}"
        );
    }
    assert!(card(&dom1, "img-0").contains("no stored image"), "{dom1}");
    assert!(!dom1.contains("key="), "{dom1}");
    // The running job's bar was fed by its event stream.
    let live: u32 = bar_attr(&dom1, &running, "data-live")
        .unwrap_or_else(|| panic!("no figure from /events in {dom1}"))
        .parse()
        .unwrap();
    assert!(live >= 1);
    // The spend chart is drawn (one group per day).
    assert_eq!(dom1.matches(r#"<g class="day""#).count(), 30, "{dom1}");
    // The batch moves on (its clock, still held, pushed 6 s of its 20): a new look while
    // it runs shows the bar further along, fed by the stream. (A resumed clock would jump
    // by the time it was held.)
    app.sim.sim().advance_clock(Duration::from_millis(6_000));
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved = loop {
        let now = job(&app, &running).await;
        if percent(&now) > after {
            break now;
        }
        assert!(Instant::now() < deadline, "the batch did not move: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved["status"], "running", "{moved}");
    let dom_mid = dump(&app.url("/"), 3_000).await;
    let still = job(&app, &running).await;
    // The screenshot: the running job part way, the finished one open with its thumbnails.
    if let Some(path) = &shot {
        let out = format!("--screenshot={path}");
        chromium(
            &[
                &out,
                "--window-size=1280,1500",
                "--virtual-time-budget=3000",
            ],
            &url,
            Duration::from_secs(60),
        )
        .await;
    }
    app.sim.sim().resume_clock();
    assert_eq!(still["status"], "running", "{still}");
    let (status_mid, p_mid) = row(&dom_mid, &running).unwrap_or_else(|| panic!("{dom_mid}"));
    assert_eq!(status_mid, "running");
    assert!(p_mid > p1, "the bar did not advance: {p1} then {p_mid}");
    assert!(
        percent(&moved) - 0.05 <= p_mid && p_mid <= percent(&still) + 0.05 && p_mid < 100.0,
        "bar at {p_mid}, API from {moved} to {still}"
    );
    assert!(
        bar_attr(&dom_mid, &running, "data-live").is_some(),
        "{dom_mid}"
    );

    // Second look, once the batch is done.
    let end = app.wait_terminal(&running, Duration::from_secs(60)).await;
    assert_eq!(end["status"], "completed", "{end}");
    let dom2 = dump(&app.url("/"), 3_000).await;
    let (status2, p2) = row(&dom2, &running).unwrap_or_else(|| panic!("{dom2}"));
    assert_eq!(status2, "completed");
    assert!(p2 >= p_mid, "the bar went back from {p_mid} to {p2}");
    assert_eq!(p2, 100.0);
    assert_eq!(row(&dom2, &done), Some(("completed".to_string(), 100.0)));
    eprintln!(
        "dashboard browser test: one dump {dump_secs:.1} s, whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
    app.shutdown().await;
}
