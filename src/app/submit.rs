//! Turning a job's input into what gets stored: rules on the job's fields, per-item
//! intake, the mode `auto` picks, and the cost estimate. Shared by submitting and
//! estimating, so an estimate sees exactly what a submit would.

use std::collections::HashSet;

use chrono::Utc;
use uuid::Uuid;

use super::reuse::Marked;
use super::{App, AppError, FieldError};
use crate::analyzer;
use crate::config::Settings;
use crate::cost::calibration::PerItem;
use crate::cost::estimate::{estimate, estimate_all_models, Estimate, EstimateInput};
use crate::cost::image_tokens::image_tokens;
use crate::cost::pricing::PriceTable;
use crate::cost::text_tokens::chat_request_input_tokens;
use crate::domain::{Analyzer, Detail, Fetch, JobStatus, Mode, NewItem, NewJob};
use crate::intake::{check_items, DownscaleTarget, IntakeLimits, IntakeResult, ItemInput};

/// A job as a caller submits it (the HTTP body converts into this).
#[derive(Debug, Clone, Default)]
pub struct JobInput {
    pub name: Option<String>,
    pub model: Option<String>,
    pub mode: Option<Mode>,
    pub detail: Option<Detail>,
    pub analyzer: Option<Analyzer>,
    pub metadata: Option<serde_json::Value>,
    pub webhook_url: Option<String>,
    /// Who downloads `image_url`s; `intake.fetch` when None.
    pub fetch: Option<Fetch>,
    /// Create the job `open`, to be filled in chunks and submitted later.
    pub open: bool,
    /// Answer images already analysed from that analysis; `true` when None.
    pub reuse: Option<bool>,
    pub items: Vec<ItemInput>,
}

/// The job-level fields of a request, checked.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: Option<String>,
    pub model: String,
    pub requested_mode: Mode,
    pub detail: Detail,
    pub analyzer: Analyzer,
    pub metadata: Option<serde_json::Value>,
    pub webhook_url: Option<String>,
    pub fetch: Fetch,
    pub reuse: bool,
}

impl JobSpec {
    /// What reuse looks up for this job's images.
    pub fn reuse_scope<'a>(&'a self, tenant: &'a str) -> super::reuse::Scope<'a> {
        super::reuse::Scope {
            tenant,
            analyzer: &self.analyzer,
            model: &self.model,
            detail: self.detail,
            enabled: self.reuse,
        }
    }
}

/// Intake limits for a job's model and detail: inline images are downscaled to what that
/// model looks at unless `intake.downscale` is off.
pub fn intake_limits(settings: &Settings, model: &str, detail: Detail) -> IntakeLimits {
    IntakeLimits {
        max_image_bytes: settings.intake.max_image_bytes,
        downscale: settings
            .intake
            .downscale
            .then(|| DownscaleTarget::new(model, detail)),
        ..IntakeLimits::default()
    }
}

/// Checks every job-level rule, naming the field that breaks one.
pub fn check_spec(settings: &Settings, req: &JobInput) -> Result<JobSpec, AppError> {
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: String| {
        errors.push(FieldError {
            field: field.to_string(),
            message,
        })
    };
    let model = req
        .model
        .clone()
        .unwrap_or_else(|| settings.openai.default_model.clone());
    if model.is_empty()
        || model.len() > 64
        || !model
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(&c))
    {
        bad(
            "model",
            "must be 1 to 64 characters of letters, digits, '.', '_', ':' or '-'".into(),
        );
    }
    if let Some(name) = &req.name {
        if name.chars().count() > 200 {
            bad("name", "must be at most 200 characters".into());
        }
    }
    if let Some(metadata) = &req.metadata {
        if !metadata.is_object() {
            bad("metadata", "must be a JSON object".into());
        }
    }
    if let Some(hook) = &req.webhook_url {
        if let Err(why) = settings.webhooks.url_policy().check(hook) {
            bad("webhook_url", why.to_string());
        }
    }
    let analyzer = match &req.analyzer {
        None => analyzer::fashion(),
        Some(a) => {
            if a.prompt.trim().is_empty() {
                bad("analyzer.prompt", "must not be empty".into());
            } else if a.prompt.chars().count() > 20_000 {
                bad("analyzer.prompt", "must be at most 20000 characters".into());
            }
            if let Err(rule) = analyzer::check_strict_schema(&a.schema) {
                bad(
                    "analyzer.schema",
                    format!("{rule} (OpenAI strict structured outputs)"),
                );
            } else if let Err(e) = analyzer::OutputValidator::new(&a.schema) {
                bad("analyzer.schema", format!("not a usable JSON schema: {e}"));
            }
            a.clone()
        }
    };
    if req.mode == Some(Mode::Flex) && !settings.individual.offers_flex(&model) {
        bad(
            "mode",
            format!(
                "{model} does not offer flex processing (individual.flex_models: {}); use \"batch\" for Batch API prices",
                settings.individual.flex_models.join(", ")
            ),
        );
    }
    if !errors.is_empty() {
        return Err(AppError::fields(errors));
    }
    Ok(JobSpec {
        name: req.name.clone(),
        model,
        requested_mode: req.mode.unwrap_or(Mode::Auto),
        detail: req.detail.unwrap_or(Detail::Low),
        analyzer,
        metadata: req.metadata.clone(),
        webhook_url: req.webhook_url.clone(),
        fetch: req.fetch.unwrap_or(settings.intake.fetch),
        reuse: req.reuse.unwrap_or(true) && settings.intake.reuse,
    })
}

/// Intake of a chunk of items; a chunk in which nothing is usable is a 422 that names
/// every item.
///
/// CPU-heavy when images are downscaled: call it from `spawn_blocking`.
pub fn take_items(
    limits: &IntakeLimits,
    inputs: Vec<ItemInput>,
    first_index: i64,
    taken: &HashSet<String>,
    allow_empty: bool,
) -> Result<IntakeResult, AppError> {
    if inputs.is_empty() {
        if allow_empty {
            return Ok(check_items(inputs, first_index, taken, limits));
        }
        return Err(AppError::fields(vec![FieldError {
            field: "items".into(),
            message: "must hold at least one image".into(),
        }]));
    }
    let result = check_items(inputs, first_index, taken, limits);
    if result.accepted == 0 {
        let errors = result
            .rejected
            .iter()
            .map(|r| rejection_field(r.index - first_index, &r.reason))
            .collect();
        return Err(AppError::fields(errors));
    }
    Ok(result)
}

/// A rejection as a field error: `items[3].image_url` when the reason names the field.
fn rejection_field(index: i64, reason: &str) -> FieldError {
    const FIELDS: [&str; 6] = [
        "image_url",
        "image_base64",
        "data_url",
        "mime_type",
        "custom_id",
        "post_id",
    ];
    match reason.split_once(": ") {
        Some((field, message)) if FIELDS.contains(&field) => FieldError {
            field: format!("items[{index}].{field}"),
            message: message.to_string(),
        },
        _ => FieldError {
            field: format!("items[{index}]"),
            message: reason.to_string(),
        },
    }
}

/// The mode a job runs in, and why. `flex`: the job's model offers flex processing, which
/// `auto` prefers to standard individual calls (the same speed class at Batch API prices).
pub fn resolve_mode(
    requested: Mode,
    accepted: usize,
    max_items: usize,
    flex: bool,
) -> (Mode, String) {
    match requested {
        Mode::Batch => (Mode::Batch, "requested: batch".into()),
        Mode::Individual => (Mode::Individual, "requested: individual".into()),
        Mode::Flex => (Mode::Flex, "requested: flex".into()),
        Mode::Auto if accepted < max_items && flex => (
            Mode::Flex,
            format!(
                "auto: {accepted} images, under individual.max_items ({max_items}), on a model that offers flex processing: flex calls answer in seconds to minutes at Batch API prices, half of standard individual calls"
            ),
        ),
        Mode::Auto if accepted < max_items => (
            Mode::Individual,
            format!(
                "auto: {accepted} images, under individual.max_items ({max_items}): individual calls answer in seconds"
            ),
        ),
        Mode::Auto => (
            Mode::Batch,
            format!(
                "auto: {accepted} images, at least individual.max_items ({max_items}): the Batch API costs half"
            ),
        ),
    }
}

/// What the estimate of a set of accepted items needs to know.
pub fn estimate_input<'a>(
    spec: &'a JobSpec,
    dims: &'a [(u32, u32)],
    per_item: PerItem,
) -> EstimateInput<'a> {
    EstimateInput {
        model: &spec.model,
        detail: spec.detail,
        per_item,
        images: dims,
    }
}

/// Tokens of one request other than its image: prompt, schema, message framing.
pub fn request_overhead_tokens(settings: &Settings, spec: &JobSpec) -> u32 {
    let opts = analyzer::RequestOptions {
        model: &spec.model,
        detail: spec.detail,
        max_completion_tokens: settings.openai.max_completion_tokens,
    };
    let body = analyzer::chat_request_body(&spec.analyzer, "data:image/png;base64,", &opts);
    let (w, h) = (512, 512);
    let with_image = chat_request_input_tokens(&body, &|_| Some((w, h)));
    with_image.saturating_sub(image_tokens(&spec.model, w, h, spec.detail))
}

/// Dimensions of each accepted item to be sent (reused images and copies cost nothing),
/// the configured default for URLs.
pub fn item_dims(settings: &Settings, items: &[NewItem]) -> Vec<(u32, u32)> {
    items
        .iter()
        .filter(|i| i.is_sent())
        .map(|i| match (i.width, i.height) {
            (Some(w), Some(h)) if w > 0 && h > 0 => (w as u32, h as u32),
            _ => (
                settings.intake.default_image_width,
                settings.intake.default_image_height,
            ),
        })
        .collect()
}

pub struct Prepared {
    pub job: NewJob,
    pub intake: IntakeResult,
    pub estimate: Estimate,
    /// The images reuse answers (at 0, not sent).
    pub reuse: Marked,
}

/// Builds the job row a checked body would store, with the estimate and mode of the items
/// it sends (those reuse answers are not).
pub fn prepare(
    settings: &Settings,
    prices: &PriceTable,
    tenant: &str,
    spec: JobSpec,
    open: bool,
    (intake, reuse): (IntakeResult, Marked),
    per_item: PerItem,
) -> Prepared {
    let dims = item_dims(settings, &intake.items);
    let est = estimate(prices, &estimate_input(&spec, &dims, per_item));
    let (mode, mode_reason, status) = if open {
        (
            spec.requested_mode,
            "decided when the job is submitted".to_string(),
            JobStatus::Open,
        )
    } else {
        let (mode, why) = resolve_mode(
            spec.requested_mode,
            dims.len(),
            settings.individual.max_items,
            settings.individual.offers_flex(&spec.model),
        );
        (mode, why, JobStatus::Queued)
    };
    let job = NewJob {
        id: Uuid::now_v7(),
        tenant: tenant.to_string(),
        name: spec.name,
        model: spec.model,
        requested_mode: spec.requested_mode,
        mode,
        mode_reason,
        detail: spec.detail,
        analyzer: spec.analyzer,
        metadata: spec.metadata,
        webhook_url: spec.webhook_url,
        fetch: spec.fetch,
        reuse: spec.reuse,
        status,
        estimate_batch_pico_usd: est.batch,
        estimate_individual_pico_usd: est.individual,
        created_at: Utc::now(),
    };
    Prepared {
        job,
        intake,
        estimate: est,
        reuse,
    }
}

impl App {
    /// Intake on a blocking thread (image checks and downscaling are CPU work), after
    /// downloading the `image_url`s when the job fetches them; then reuse, and
    /// [`prepare`].
    pub async fn prepare(
        &self,
        tenant: &str,
        spec: JobSpec,
        mut req: JobInput,
        per_item: PerItem,
    ) -> Result<Prepared, AppError> {
        self.fetch_images(spec.fetch, &spec.model, spec.detail, &mut req.items)
            .await;
        let limits = intake_limits(&self.settings, &spec.model, spec.detail);
        let (items, open) = (std::mem::take(&mut req.items), req.open);
        let mut intake = tokio::task::spawn_blocking(move || {
            take_items(&limits, items, 0, &HashSet::new(), open)
        })
        .await
        .map_err(AppError::internal)??;
        let marked = self
            .mark_reuse(&spec.reuse_scope(tenant), &mut intake.items, 0, None)
            .await?;
        Ok(prepare(
            &self.settings,
            &self.prices,
            tenant,
            spec,
            open,
            (intake, marked),
            per_item,
        ))
    }
}

impl App {
    /// With `fetch: inline`, downloads the `image_url`s of `items` for intake to take.
    pub async fn fetch_images(
        &self,
        fetch: Fetch,
        model: &str,
        detail: Detail,
        items: &mut [ItemInput],
    ) {
        if fetch == Fetch::Inline {
            let limits = intake_limits(&self.settings, model, detail);
            self.fetcher.fetch_all(items, &limits).await;
        }
    }
}

/// Every priced model's estimate for the same items, cheapest first; `per_item` says what
/// to assume per image on each model.
pub fn compare_models(
    prices: &PriceTable,
    spec: &JobSpec,
    dims: &[(u32, u32)],
    per_item: impl Fn(&str) -> PerItem,
) -> Vec<Estimate> {
    let input = estimate_input(spec, dims, per_item(&spec.model));
    estimate_all_models(prices, &input, per_item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_name_the_item_field() {
        let e = rejection_field(3, "image_url: scheme must be https");
        assert_eq!(e.field, "items[3].image_url");
        assert_eq!(e.message, "scheme must be https");
        let e = rejection_field(0, "give exactly one of image_url, image_base64 or data_url");
        assert_eq!(e.field, "items[0]");
    }

    #[test]
    fn auto_picks_individual_below_the_threshold() {
        assert_eq!(resolve_mode(Mode::Auto, 49, 50, false).0, Mode::Individual);
        assert_eq!(resolve_mode(Mode::Auto, 50, 50, false).0, Mode::Batch);
        assert_eq!(resolve_mode(Mode::Batch, 1, 50, false).0, Mode::Batch);
        assert_eq!(
            resolve_mode(Mode::Individual, 5000, 50, true).0,
            Mode::Individual
        );
        assert!(resolve_mode(Mode::Auto, 3, 50, false)
            .1
            .contains("individual.max_items"));
    }

    #[test]
    fn auto_prefers_flex_to_standard_calls_where_the_model_offers_it() {
        let (mode, why) = resolve_mode(Mode::Auto, 3, 50, true);
        assert_eq!(mode, Mode::Flex);
        assert!(
            why.contains("flex") && why.contains("Batch API prices"),
            "{why}"
        );
        assert_eq!(resolve_mode(Mode::Auto, 50, 50, true).0, Mode::Batch);
        assert_eq!(resolve_mode(Mode::Flex, 5000, 50, true).0, Mode::Flex);
    }
}
