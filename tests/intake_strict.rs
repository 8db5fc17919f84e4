//! Intake strictness through the API: truncated PNG, JPEG, WEBP and GIF images are rejected
//! with their reasons while the rest of the set goes on, `mime_type` may be left out, and a
//! `mime_type` (or data URL type) the bytes contradict is accepted with a `note` in the
//! item's result.

use std::time::Duration;

use crate::common::{b64, fast_sim, png, Db, TestApp};
use serde_json::{json, Value};

on_both!(truncated_images_are_rejected_and_a_lying_mime_type_is_noted);

async fn truncated_images_are_rejected_and_a_lying_mime_type_is_noted(db: Db) {
    let Some(app) = TestApp::spawn(db, fast_sim(), &[]).await else {
        return;
    };
    let png64 = png(64, 64);
    let small = testkit::jpeg_photo(64, 64);
    let large = testkit::jpeg_photo(1200, 900);
    let webp = testkit::webp(5, 7);
    let gif = testkit::gif(4, 4, 1);
    let data = |mime: &str, bytes: &[u8]| format!("data:{mime};base64,{}", b64(bytes));
    let items = json!([
        {"custom_id": "png-half", "image_base64": b64(&png64[..png64.len() / 2]),
         "mime_type": "image/png"},
        {"custom_id": "jpeg-64-half", "image_base64": b64(&small[..small.len() / 2])},
        {"custom_id": "jpeg-1200-half", "data_url": data("image/jpeg", &large[..large.len() / 2])},
        {"custom_id": "jpeg-no-eoi", "image_base64": b64(&large[..large.len() - 2]),
         "mime_type": "image/jpeg"},
        {"custom_id": "webp-cut", "data_url": data("image/webp", &webp[..webp.len() - 2])},
        {"custom_id": "gif-cut", "image_base64": b64(&gif[..gif.len() - 1]),
         "mime_type": "image/gif"},
        {"custom_id": "liar", "post_id": "p1", "image_base64": b64(&png64),
         "mime_type": "image/jpeg"},
        {"custom_id": "liar-data-url", "post_id": "p1", "data_url": data("image/gif", &small)},
        {"custom_id": "no-mime", "post_id": "p1", "image_base64": b64(&small)},
    ]);
    let (status, job) = app
        .post("/v1/jobs", &json!({"mode": "batch", "items": items}))
        .await;
    assert_eq!(status, 202, "{job}");
    let reasons: Vec<(&str, &str)> = job["rejected"]
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
    let png_reason = format!(
        "image_base64: the PNG is truncated (its IDAT chunk at byte 33 runs past the end of \
         the {} bytes; there is no IEND chunk)",
        png64.len() / 2
    );
    let webp_reason = format!(
        "data_url: the WEBP is truncated ({} bytes; its RIFF header says {})",
        webp.len() - 2,
        webp.len()
    );
    assert_eq!(
        reasons,
        [
            ("png-half", png_reason.as_str()),
            (
                "jpeg-64-half",
                "image_base64: the JPEG is truncated (its scan data has no EOI marker)"
            ),
            (
                "jpeg-1200-half",
                "data_url: the JPEG is truncated (its scan data has no EOI marker)"
            ),
            (
                "jpeg-no-eoi",
                "image_base64: the JPEG is truncated (its scan data has no EOI marker)"
            ),
            ("webp-cut", webp_reason.as_str()),
            (
                "gif-cut",
                "image_base64: the GIF is truncated (it ends before its trailer)"
            ),
        ]
    );
    assert_eq!(job["progress"]["rejected"], 6, "{job}");
    assert_eq!(job["progress"]["total"], 9, "{job}");

    let id = job["id"].as_str().unwrap().to_string();
    let done = app.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (status, page) = app.get(&format!("/v1/jobs/{id}/results")).await;
    assert_eq!(status, 200, "{page}");
    let by_id = |cid: &str| -> Value {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["custom_id"] == cid)
            .cloned()
            .unwrap_or_else(|| panic!("{cid} in {page}"))
    };
    for cid in ["png-half", "jpeg-1200-half", "webp-cut", "gif-cut"] {
        let row = by_id(cid);
        assert_eq!(row["status"], "rejected", "{row}");
        assert_eq!(row["error"]["code"], "invalid_image", "{row}");
        assert_eq!(row["note"], Value::Null, "{row}");
    }
    let liar = by_id("liar");
    assert_eq!(liar["status"], "succeeded", "{liar}");
    assert_eq!(
        liar["note"],
        "mime_type \"image/jpeg\" disagrees with the bytes, which are a PNG (image/png); the \
         bytes decide"
    );
    let liar = by_id("liar-data-url");
    assert_eq!(liar["status"], "succeeded", "{liar}");
    assert_eq!(
        liar["note"],
        "data_url \"image/gif\" disagrees with the bytes, which are a JPEG (image/jpeg); the \
         bytes decide"
    );
    let honest = by_id("no-mime");
    assert_eq!(honest["status"], "succeeded", "{honest}");
    assert!(
        honest.as_object().unwrap().contains_key("note") && honest["note"].is_null(),
        "{honest}"
    );

    // The image sent is what the bytes are, whatever was declared.
    let r = app
        .http
        .get(app.url(&format!("/v1/jobs/{id}/results/liar/image")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.bytes().await.unwrap().as_ref(), png64.as_slice());
    app.shutdown().await;
}
