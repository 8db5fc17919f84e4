//! `batchlens estimate`: the old pipeline's `npm run cost-comparison`. Posts the images as
//! base64 JSON to `POST /v1/estimates` (in chunks under the body limit; nothing is stored
//! or sent to OpenAI), adds the chunks' answers up per model and mode, and prints a table
//! with the cheapest way marked.

use base64::Engine;
use serde_json::{json, Value};

use super::results::usd;
use super::upload::{plan_chunks, DEFAULT_CHUNK_BYTES};
use super::walk::{find_images, ImageFile};
use super::{Api, CliError, EstimateArgs};

/// The modes a model's line may price, in table order, with their field in the answer.
const MODES: [(&str, &str); 3] = [
    ("batch", "batch_usd"),
    ("flex", "flex_usd"),
    ("individual", "individual_usd"),
];

/// The bytes one image adds to a JSON estimate body: base64 and its item's keys.
fn json_cost(image: &ImageFile) -> u64 {
    image.bytes.div_ceil(3) * 4 + 128 + 2 * (image.custom_id.len() as u64 + 32)
}

/// Totals over all chunks: per model, per mode, USD (None: not priced in that mode).
#[derive(Debug, Default)]
pub struct Totals {
    pub items: u64,
    pub rejected: u64,
    pub model: String,
    pub models: Vec<(String, [Option<f64>; 3])>,
    pub recommendation: Option<Value>,
}

impl Totals {
    /// Adds one `/v1/estimates` answer.
    pub fn add(&mut self, answer: &Value) {
        self.items += answer["items"].as_u64().unwrap_or(0);
        self.rejected += answer["rejected"].as_u64().unwrap_or(0);
        if let Some(model) = answer["model"].as_str() {
            self.model = model.to_string();
        }
        if answer["recommendation"].is_object() {
            self.recommendation = Some(answer["recommendation"].clone());
        }
        let lines: Vec<Value> = match answer["models"].as_array() {
            Some(lines) if !lines.is_empty() => lines.clone(),
            _ => vec![answer.clone()],
        };
        for line in lines {
            let Some(model) = line["model"].as_str() else {
                continue;
            };
            let slot = match self.models.iter().position(|(m, _)| m == model) {
                Some(i) => &mut self.models[i].1,
                None => {
                    self.models.push((model.to_string(), [None; 3]));
                    &mut self.models.last_mut().expect("just pushed").1
                }
            };
            for (i, (_, field)) in MODES.iter().enumerate() {
                if let Some(usd) = line[*field].as_f64() {
                    slot[i] = Some(slot[i].unwrap_or(0.0) + usd);
                }
            }
        }
    }

    /// The table: one block per model, a line per mode it is priced in, per image and in
    /// total, the cheapest marked.
    pub fn table(&self) -> String {
        let cheapest = self
            .models
            .iter()
            .flat_map(|(_, prices)| prices.iter().flatten())
            .copied()
            .fold(f64::INFINITY, f64::min);
        let mut out = format!(
            "{} images{} · model {} · nothing was sent to OpenAI\n\n",
            self.items,
            if self.rejected > 0 {
                format!(" ({} rejected, not counted)", self.rejected)
            } else {
                String::new()
            },
            self.model
        );
        out.push_str(&format!(
            "{:<28} {:<11} {:>12} {:>12}\n",
            "model", "mode", "per image", "total"
        ));
        for (model, prices) in &self.models {
            let mut first = true;
            for (i, (mode, _)) in MODES.iter().enumerate() {
                let Some(total) = prices[i] else { continue };
                let per_image = if self.items > 0 {
                    total / self.items as f64
                } else {
                    0.0
                };
                let mark = if total == cheapest {
                    "  ◀ cheapest"
                } else {
                    ""
                };
                out.push_str(&format!(
                    "{:<28} {:<11} {:>12} {:>12}{mark}\n",
                    if first { model.as_str() } else { "" },
                    mode,
                    usd(per_image),
                    usd(total)
                ));
                first = false;
            }
        }
        if let Some(why) = self.recommendation.as_ref().and_then(|r| r["why"].as_str()) {
            out.push_str(&format!("\nrecommendation: {why}\n"));
        }
        out
    }
}

pub async fn run(args: EstimateArgs) -> Result<(), CliError> {
    let api = Api::new(&args.conn)?;
    let found = find_images(&args.paths)?;
    if found.skipped > 0 {
        eprintln!(
            "{} files skipped: not PNG, JPEG, WEBP or GIF",
            found.skipped
        );
    }
    let images = found.images;
    let plan = plan_chunks(images.iter().map(json_cost), DEFAULT_CHUNK_BYTES);
    for &i in &plan.too_large {
        eprintln!("skipped {}: too large for one request", images[i].filename);
    }
    if plan.chunks.is_empty() {
        return Err(CliError::Usage("no images to estimate".into()));
    }
    let mut totals = Totals::default();
    for chunk in &plan.chunks {
        let mut items = Vec::with_capacity(chunk.len());
        for &i in chunk {
            let image = &images[i];
            let bytes =
                std::fs::read(&image.path).map_err(|e| CliError::io(image.path.display(), e))?;
            let mut item = json!({
                "custom_id": image.custom_id,
                "image_base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
                "mime_type": image.mime,
            });
            if let Some(post) = &image.post_id {
                item["post_id"] = json!(post);
            }
            items.push(item);
        }
        let mut body = json!({ "items": items });
        if let Some(model) = &args.model {
            body["model"] = json!(model);
        }
        if let Some(detail) = &args.detail {
            body["detail"] = json!(detail);
        }
        let answer = api.post_json("/v1/estimates", &body, None).await?;
        for r in answer["rejections"].as_array().into_iter().flatten() {
            eprintln!(
                "rejected {}: {}",
                r["custom_id"].as_str().unwrap_or("?"),
                r["reason"].as_str().unwrap_or("?")
            );
        }
        totals.add(&answer);
    }
    print!("{}", totals.table());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_answers_add_up_and_the_cheapest_is_marked() {
        let mut t = Totals::default();
        let answer = json!({"items": 2, "rejected": 1, "model": "gpt-4o-mini",
        "models": [
            {"model": "gpt-4o-mini", "batch_usd": 0.0001, "individual_usd": 0.0002},
            {"model": "gpt-4o", "batch_usd": 0.002, "flex_usd": 0.002, "individual_usd": 0.004},
        ]});
        t.add(&answer);
        t.add(&answer);
        assert_eq!(t.items, 4);
        assert_eq!(t.models[0].1, [Some(0.0002), None, Some(0.0004)]);
        let table = t.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].starts_with("4 images (2 rejected, not counted)"),
            "{table}"
        );
        let marked: Vec<&&str> = lines.iter().filter(|l| l.contains("cheapest")).collect();
        assert_eq!(marked.len(), 1, "{table}");
        assert!(marked[0].starts_with("gpt-4o-mini") && marked[0].contains("batch"));
        assert!(marked[0].contains("$0.000050") && marked[0].contains("$0.000200"));
        assert!(table.contains("flex"), "{table}");
    }
}
