//! `POST /v1/estimates`' `recommendation` over HTTP: the cheapest (model, detail, mode)
//! for the body with the reason in words; on a tie the body's own choice stays; flex is
//! offered only for the models in `individual.flex_models`.

use serde_json::{json, Value};

use crate::common::{b64, fast_sim, png, Db, TestApp};

/// gpt-4.1 made far cheaper than any other model, so the cheapest way is known: gpt-4.1
/// at detail low (a tile model: 85 tokens an image) through the Batch API.
const CHEAP_GPT41: &str = r#"
[pricing."gpt-4.1"]
input = 0.002
cached_input = 0.001
output = 0.008
batch_input = 0.001
batch_cached_input = 0.0005
batch_output = 0.004
"#;

async fn spawn(db: Db, extra: &[(&str, &str)]) -> Option<(TestApp, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batchlens.toml");
    std::fs::write(&file, CHEAP_GPT41).unwrap();
    let app = TestApp::spawn_with_config(db, fast_sim(), extra, Some(&file)).await?;
    Some((app, dir))
}

fn body(model: &str, detail: &str, mode: &str) -> Value {
    let img = b64(&png(640, 480));
    let items: Vec<Value> = (0..3)
        .map(|i| json!({"custom_id": format!("r{i}"), "image_base64": img, "mime_type": "image/png"}))
        .collect();
    json!({"model": model, "detail": detail, "mode": mode, "items": items})
}

async fn recommend(app: &TestApp, body: &Value) -> Value {
    let (status, estimate) = app.post("/v1/estimates", body).await;
    assert_eq!(status, 200, "{estimate}");
    let r = estimate["recommendation"].clone();
    assert!(r.is_object(), "{estimate}");
    r
}

fn why(r: &Value) -> &str {
    r["why"].as_str().unwrap()
}

async fn the_recommendation_is_the_cheapest_way_and_says_why(db: Db) {
    let Some((app, _dir)) = spawn(db, &[]).await else {
        return;
    };
    let r = recommend(&app, &body("gpt-4o", "high", "batch")).await;
    assert_eq!(
        (&r["model"], &r["detail"], &r["mode"]),
        (&json!("gpt-4.1"), &json!("low"), &json!("batch")),
        "{r}"
    );
    assert_eq!(r["usd"], r["batch_usd"], "{r}");
    let text = why(&r);
    assert!(
        text.starts_with("gpt-4.1 at detail low in batch mode costs $"),
        "{text}"
    );
    assert!(
        text.contains("the modes batch, flex, individual"),
        "flex is one of the modes weighed: {text}"
    );
    assert!(
        text.contains("the body as sent (gpt-4o at detail high in batch mode) would cost $"),
        "{text}"
    );
    assert!(
        text.contains("detail low sees the image differently from high"),
        "{text}"
    );

    // Asked for individual calls on the cheapest model: batch, and by how much.
    let r = recommend(&app, &body("gpt-4.1", "low", "individual")).await;
    assert_eq!(
        (&r["model"], &r["mode"]),
        (&json!("gpt-4.1"), &json!("batch")),
        "{r}"
    );
    assert!(why(&r).contains("individual calls would cost $"), "{r}");
    assert!(
        why(&r).contains("(gpt-4.1 at detail low in individual mode) would cost $"),
        "{r}"
    );
    app.shutdown().await;
}

async fn ties_keep_the_body_and_flex_is_offered_only_for_flex_models(db: Db) {
    // The default flex list (o3, o4-mini, the gpt-5 family) has no gpt-4.1.
    let Some((app, _dir)) = spawn(db, &[]).await else {
        return;
    };
    let r = recommend(&app, &body("gpt-4.1", "low", "batch")).await;
    assert_eq!(
        (&r["model"], &r["detail"], &r["mode"]),
        (&json!("gpt-4.1"), &json!("low"), &json!("batch")),
        "{r}"
    );
    assert!(why(&r).ends_with("that is how the body would run"), "{r}");
    // A body asking for flex on a flex model is pointed to gpt-4.1 in batch mode: at the
    // same Batch API prices flex would be as cheap, but gpt-4.1 does not offer it.
    let r = recommend(&app, &body("gpt-5-nano", "low", "flex")).await;
    assert_eq!(
        (&r["model"], &r["mode"]),
        (&json!("gpt-4.1"), &json!("batch")),
        "{r}"
    );
    assert!(
        why(&r).contains("the body as sent (gpt-5-nano at detail low in flex mode)"),
        "{r}"
    );
    let (status, problem) = app
        .post("/v1/estimates", &body("gpt-4.1", "low", "flex"))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "mode", "{problem}");
    app.shutdown().await;

    // Where gpt-4.1 offers flex, a body asking for it keeps flex: the same price as batch.
    let Some((app, _dir)) = spawn(db, &[("BATCHLENS__INDIVIDUAL__FLEX_MODELS", "gpt-4.1")]).await
    else {
        return;
    };
    let r = recommend(&app, &body("gpt-4.1", "low", "flex")).await;
    assert_eq!(
        (&r["model"], &r["detail"], &r["mode"]),
        (&json!("gpt-4.1"), &json!("low"), &json!("flex")),
        "{r}"
    );
    assert_eq!(r["usd"], r["batch_usd"], "flex bills Batch API prices: {r}");
    assert!(why(&r).ends_with("that is how the body would run"), "{r}");
    // And a body asking for batch keeps batch.
    let r = recommend(&app, &body("gpt-4.1", "low", "batch")).await;
    assert_eq!(r["mode"], "batch", "{r}");
    app.shutdown().await;
}

on_both!(
    the_recommendation_is_the_cheapest_way_and_says_why,
    ties_keep_the_body_and_flex_is_offered_only_for_flex_models,
);
