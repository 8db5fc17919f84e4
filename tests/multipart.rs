//! Multipart upload (API.md "Multipart upload"): `image` parts with ids from their
//! filenames and folders or from `job.items` entries, bad parts rejected alone, `/items`
//! chunks as multipart, idempotent across retries whose boundary changes.

use serde_json::{json, Value};

use crate::api::{expect_problem, problem};
use crate::common::{fast_sim, png, Db, TestApp};

/// One part of a hand-built multipart body.
struct Part {
    name: &'static str,
    filename: Option<String>,
    content_type: Option<&'static str>,
    bytes: Vec<u8>,
}

fn image(filename: &str, bytes: Vec<u8>) -> Part {
    Part {
        name: "image",
        filename: Some(filename.to_string()),
        // What a client may claim: the bytes decide, never this.
        content_type: Some("application/octet-stream"),
        bytes,
    }
}

fn job(body: Value) -> Part {
    Part {
        name: "job",
        filename: None,
        content_type: Some("application/json"),
        bytes: body.to_string().into_bytes(),
    }
}

/// The body of `parts` with `boundary`, as curl or a browser would send it.
fn body(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let mut disposition = format!("Content-Disposition: form-data; name=\"{}\"", part.name);
        if let Some(f) = &part.filename {
            disposition.push_str(&format!("; filename=\"{f}\""));
        }
        out.extend_from_slice(disposition.as_bytes());
        out.extend_from_slice(b"\r\n");
        if let Some(t) = part.content_type {
            out.extend_from_slice(format!("Content-Type: {t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&part.bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

async fn send(
    app: &TestApp,
    path: &str,
    boundary: &str,
    parts: &[Part],
    key: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(path))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body(boundary, parts));
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    request.send().await.unwrap()
}

async fn json_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// (custom_id, post_id, status) of every item of the job, in order.
async fn ids(app: &TestApp, id: &str) -> Vec<(String, Option<String>, String)> {
    app.all_results(id)
        .await
        .iter()
        .map(|r| {
            (
                r["custom_id"].as_str().unwrap().to_string(),
                r["post_id"].as_str().map(str::to_string),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A distinct small image for `n`: PNG or a real JPEG, alternately.
fn picture(n: u32) -> Vec<u8> {
    if n.is_multiple_of(2) {
        png(20 + n, 12)
    } else {
        testkit::jpeg_photo(16 + n, 10)
    }
}

async fn a_job_from_folders_takes_its_ids_from_the_filenames(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    // 20 files in 4 folders, the folder in the filename as curl sends it with
    // `;filename=p7/look3.jpg`.
    let mut parts = vec![job(json!({"name": "folders", "open": true}))];
    let mut expected = Vec::new();
    for n in 0..20u32 {
        let folder = format!("p{}", n % 4);
        let ext = if n % 2 == 0 { "png" } else { "jpg" };
        parts.push(image(&format!("{folder}/look {n}.{ext}"), picture(n)));
        expected.push((
            format!("{folder}:look_{n}"),
            Some(folder),
            "pending".to_string(),
        ));
    }
    let (status, answer) = json_of(send(&app, "/v1/jobs", "XyZ-1", &parts, None).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["progress"]["total"], 20, "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    assert_eq!(answer["status"], "open");
    let id = answer["id"].as_str().unwrap().to_string();
    assert_eq!(ids(&app, &id).await, expected);

    // Base names only, and the same name twice: unique in the job, also across chunks.
    let chunk = [image("look.png", png(31, 7)), image("look.png", png(32, 7))];
    let path = format!("/v1/jobs/{id}/items");
    let (status, answer) = json_of(send(&app, &path, "b2", &chunk, None).await).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = json_of(send(&app, &path, "b3", &chunk[..1], None).await).await;
    assert_eq!(status, 200, "{answer}");
    let got = ids(&app, &id).await;
    let tail: Vec<(&str, Option<&str>)> = got[20..]
        .iter()
        .map(|(c, p, _)| (c.as_str(), p.as_deref()))
        .collect();
    assert_eq!(tail, [("look", None), ("look-2", None), ("look-3", None)]);
    app.shutdown().await;
}

async fn entries_in_the_job_part_give_file_parts_their_ids(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let parts = [
        image("p1/a.png", png(21, 9)),
        job(json!({"open": true, "items": [
            {"file": "p1/a.png", "custom_id": "first", "post_id": "P"},
            // Named by its base name: a client that sent the folder, an entry without it.
            {"file": "b.jpg", "custom_id": "second"},
            {"custom_id": "by-url", "post_id": "U", "image_url": "https://cdn.example.com/x.jpg"},
        ]})),
        image("p2/b.jpg", testkit::jpeg_photo(30, 20)),
        image("c.png", png(22, 9)),
    ];
    let (status, answer) = json_of(send(&app, "/v1/jobs", "e1", &parts, None).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["rejected"], json!([]), "{answer}");
    let id = answer["id"].as_str().unwrap();
    let got = ids(&app, id).await;
    let got: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|(c, p, _)| (c.as_str(), p.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("first", Some("P")),
            ("second", Some("p2")),
            ("by-url", Some("U")),
            ("c", None),
        ]
    );
    app.shutdown().await;
}

async fn bad_parts_are_rejected_alone(db: Db) {
    let Some(app) = TestApp::spawn(
        db,
        fast_sim(),
        &[("BATCHLENS__INTAKE__MAX_IMAGE_BYTES", "50000")],
    )
    .await
    else {
        return;
    };
    let parts = [
        job(json!({"open": true, "items": [{"file": "gone.png", "custom_id": "gone"}]})),
        image("good.png", png(24, 24)),
        image("notes.txt", b"just some text, not an image".to_vec()),
        Part {
            name: "photo",
            filename: Some("other.png".into()),
            content_type: Some("image/png"),
            bytes: png(25, 25),
        },
        image("huge.png", png(300, 300)),
        image("fine.jpg", testkit::jpeg_photo(40, 30)),
    ];
    let (status, answer) = json_of(send(&app, "/v1/jobs", "bad", &parts, None).await).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["progress"]["total"], 6, "{answer}");
    assert_eq!(answer["progress"]["rejected"], 4, "{answer}");
    let rejected: Vec<(&str, &str)> = answer["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["custom_id"].as_str().unwrap(),
                r["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(rejected.len(), 4, "{answer}");
    assert_eq!(
        rejected[0],
        (
            "gone",
            "job.items[0].file: no image part has the filename \"gone.png\""
        )
    );
    assert_eq!(rejected[1].0, "notes");
    assert!(
        rejected[1]
            .1
            .starts_with("image part \"notes.txt\": not a PNG, JPEG, WEBP or GIF image"),
        "{}",
        rejected[1].1
    );
    assert_eq!(rejected[2].0, "other");
    assert!(
        rejected[2].1.starts_with("part \"photo\": not a part"),
        "{}",
        rejected[2].1
    );
    assert_eq!(rejected[3].0, "huge");
    assert!(
        rejected[3]
            .1
            .contains("bytes, over the 50000-byte limit of an image"),
        "{}",
        rejected[3].1
    );
    let id = answer["id"].as_str().unwrap();
    let stored: Vec<(String, String)> = ids(&app, id)
        .await
        .into_iter()
        .map(|(c, _, s)| (c, s))
        .collect();
    let stored: Vec<(&str, &str)> = stored
        .iter()
        .map(|(c, s)| (c.as_str(), s.as_str()))
        .collect();
    assert_eq!(
        stored,
        [
            ("gone", "rejected"),
            ("good", "pending"),
            ("notes", "rejected"),
            ("other", "rejected"),
            ("huge", "rejected"),
            ("fine", "pending"),
        ]
    );

    // A job part that is not JSON is a 400 naming `job`; a body of another type a 415.
    let broken = [
        Part {
            bytes: b"{\"name\": ".to_vec(),
            ..job(json!({}))
        },
        image("good.png", png(24, 24)),
    ];
    let (status, p) = problem(send(&app, "/v1/jobs", "j", &broken, None).await).await;
    assert_eq!(status, 400);
    assert_eq!(p["errors"][0]["field"], "job", "{p}");
    let bad_field = [job(json!({"mode": "fast"})), image("good.png", png(24, 24))];
    let (status, p) = problem(send(&app, "/v1/jobs", "j", &bad_field, None).await).await;
    assert_eq!(status, 400);
    assert_eq!(p["errors"][0]["field"], "job.mode", "{p}");
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 415);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("multipart/form-data"),
        "{p}"
    );
    // Nothing usable at all: the 422 of a JSON body with no usable item.
    let reply = send(
        &app,
        "/v1/jobs",
        "n",
        &[image("notes.txt", b"text".to_vec())],
        None,
    )
    .await;
    expect_problem(reply, 422, "validation").await;
    app.shutdown().await;
}

async fn a_multipart_chunk_sent_twice_with_one_key_stores_once(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let (status, created) = app
        .post("/v1/jobs", &json!({"open": true, "mode": "batch"}))
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let path = format!("/v1/jobs/{id}/items");
    // No custom_ids: without the key a resent chunk would be stored a second time (as
    // look-2, look-3, …).
    let chunk = || {
        [
            image("p1/look.png", png(40, 30)),
            image("p1/look2.jpg", testkit::jpeg_photo(40, 30)),
            image("p2/look.png", png(41, 30)),
        ]
    };
    let (status, first) =
        json_of(send(&app, &path, "first-boundary", &chunk(), Some("chunk-0")).await).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["progress"]["total"], 3, "{first}");
    // The retry of a client that lost the answer: another boundary, the same parts.
    let (status, again) =
        json_of(send(&app, &path, "----retry-7d1e0a", &chunk(), Some("chunk-0")).await).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first, "the first answer, replayed");
    let (_, now) = app.get(&format!("/v1/jobs/{id}")).await;
    assert_eq!(now["progress"]["total"], 3, "stored once: {now}");

    // Other bytes under the same key are another body: refused.
    let mut other = chunk();
    other[2].bytes = png(42, 30);
    let (status, p) = problem(send(&app, &path, "x", &other, Some("chunk-0")).await).await;
    assert_eq!(status, 422);
    assert_eq!(p["errors"][0]["field"], "Idempotency-Key", "{p}");
    // Another key is another chunk, appended with the job part's entries.
    let next = [
        job(json!({"items": [{"file": "p3/x.png", "custom_id": "x1"}]})),
        image("p3/x.png", png(43, 30)),
    ];
    let (status, answer) = json_of(send(&app, &path, "y", &next, Some("chunk-1")).await).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["progress"]["total"], 4, "{answer}");
    let got: Vec<(String, Option<String>)> = ids(&app, &id)
        .await
        .into_iter()
        .map(|(c, p, _)| (c, p))
        .collect();
    let got: Vec<(&str, Option<&str>)> = got
        .iter()
        .map(|(c, p)| (c.as_str(), p.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("p1:look", Some("p1")),
            ("p1:look2", Some("p1")),
            ("p2:look", Some("p2")),
            ("x1", Some("p3")),
        ]
    );
    let (status, submitted) = app.post(&format!("/v1/jobs/{id}/submit"), &json!({})).await;
    assert_eq!(status, 202, "{submitted}");
    app.shutdown().await;
}

async fn a_multipart_body_over_the_limit_is_a_413_naming_it(db: Db) {
    let Some(app) = crate::api::with_body_limit_100000(db).await else {
        return;
    };
    // Streamed without a Content-Length, so only reading the parts finds the limit.
    let whole = body("big", &[image("big.png", vec![7u8; 101_000])]);
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        whole.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .header("content-type", "multipart/form-data; boundary=big")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    let (status, p) = problem(r).await;
    assert_eq!(status, 413);
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("limit of 100000 bytes"),
        "{p}"
    );
    app.shutdown().await;
}

on_both!(
    a_job_from_folders_takes_its_ids_from_the_filenames,
    entries_in_the_job_part_give_file_parts_their_ids,
    bad_parts_are_rejected_alone,
    a_multipart_chunk_sent_twice_with_one_key_stores_once,
    a_multipart_body_over_the_limit_is_a_413_naming_it,
);
