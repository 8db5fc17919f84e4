//! Outcomes: how a vendor's answer becomes an item's result, the same for a batch line
//! and an individual call. Owns filling an outcome from a chat completion (usage, cost,
//! output checked against the analyzer's schema) and the item error of a non-200 answer.

use crate::analyzer::{parse_model_content, OutputValidator};
use crate::cost::pricing::PriceTable;
use crate::domain::{ItemError, ItemOutcome, ItemStatus, Mode};
use crate::providers::ChatCompletion;

/// The outcome of an item before its answer is read: failed, with nothing known yet.
pub fn unfinished(custom_id: String, run_mode: Mode) -> ItemOutcome {
    ItemOutcome {
        custom_id,
        status: ItemStatus::Failed,
        output: None,
        error: None,
        usage: None,
        cost_pico_usd: None,
        individual_pico_usd: None,
        run_mode,
        resolved_model: None,
    }
}

/// Fills an outcome from a chat completion: usage and cost always (the tokens were
/// billed), output when it parses and fits the schema.
pub fn apply_completion(
    prices: &PriceTable,
    outcome: &mut ItemOutcome,
    completion: &ChatCompletion,
    job_model: &str,
    validator: &OutputValidator,
) {
    let model = if completion.model.is_empty() {
        job_model.to_string()
    } else {
        completion.model.clone()
    };
    if let Some(usage) = completion.usage.as_ref().map(|u| u.to_usage()) {
        if let Some(cost) = prices
            .cost(&model, &usage, outcome.run_mode)
            .or_else(|| prices.cost(job_model, &usage, outcome.run_mode))
        {
            outcome.cost_pico_usd = Some(cost.actual);
            outcome.individual_pico_usd = Some(cost.individual);
        }
        outcome.usage = Some(usage);
    }
    outcome.resolved_model = Some(model);
    let message = completion.choices.first().map(|c| &c.message);
    let parsed = parse_model_content(
        message.and_then(|m| m.content.as_deref()),
        message.and_then(|m| m.refusal.as_deref()),
    );
    match parsed {
        Err(error) => outcome.error = Some(error),
        Ok(value) => match validator.validate(&value) {
            Ok(()) => {
                outcome.status = ItemStatus::Succeeded;
                outcome.output = Some(value);
            }
            Err(why) => {
                outcome.error = Some(ItemError {
                    code: "invalid_output".into(),
                    message: format!("the answer does not fit the analyzer's schema: {why}"),
                })
            }
        },
    }
}

/// The item error for a non-200 answer, from OpenAI's error envelope when there is one.
pub fn api_error(status: u16, body: &serde_json::Value) -> ItemError {
    let error = &body["error"];
    ItemError {
        code: error["code"]
            .as_str()
            .or_else(|| error["type"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("http_{status}")),
        message: error["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("OpenAI answered HTTP {status}")),
    }
}
