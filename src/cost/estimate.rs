//! Cost estimates before anything is submitted: image and prompt tokens by formula, priced in
//! batch and individual mode, for one model or every priced one.

use serde::Serialize;

use super::calibration::{Basis, PerItem};
use super::image_tokens::image_tokens;
use super::pricing::PriceTable;
use crate::domain::{Detail, Mode, PicoUsd, Usage};

/// What a job would send.
#[derive(Debug, Clone, Copy)]
pub struct EstimateInput<'a> {
    pub model: &'a str,
    pub detail: Detail,
    /// Per image: the request's tokens beyond the image formula (messages, prompt, schema),
    /// the output length, and where both come from.
    pub per_item: PerItem,
    /// Width and height of each image; one item per image.
    pub images: &'a [(u32, u32)],
}

/// Expected tokens and cost of a job. No prompt caching is assumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub model: String,
    pub items: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// `None` when the model has no price.
    pub batch: Option<PicoUsd>,
    pub individual: Option<PicoUsd>,
    /// Observed history or the formula.
    pub basis: Basis,
}

/// The estimate for `input.model`.
pub fn estimate(prices: &PriceTable, input: &EstimateInput) -> Estimate {
    let model = input.model;
    let items = input.images.len() as u64;
    let input_tokens: u64 = input
        .images
        .iter()
        .map(|&(w, h)| {
            let image = i64::from(image_tokens(model, w, h, input.detail));
            (input.per_item.overhead_tokens + image).max(0) as u64
        })
        .sum();
    let output_tokens = items * u64::from(input.per_item.output_tokens);
    // Cost is linear in tokens, so pricing the totals equals summing per-item costs.
    let usage = Usage {
        input_tokens: i64::try_from(input_tokens).unwrap_or(i64::MAX),
        cached_input_tokens: 0,
        output_tokens: i64::try_from(output_tokens).unwrap_or(i64::MAX),
        reasoning_tokens: 0,
    };
    let cost = prices.cost(model, &usage, Mode::Batch);
    Estimate {
        model: model.to_string(),
        items,
        input_tokens,
        output_tokens,
        batch: cost.map(|c| c.actual),
        individual: cost.map(|c| c.individual),
        basis: input.per_item.basis,
    }
}

/// The estimate for every priced model (each with its own image formula and what
/// `per_item` says of it), cheapest batch first, ties by name.
pub fn estimate_all_models(
    prices: &PriceTable,
    input: &EstimateInput,
    per_item: impl Fn(&str) -> PerItem,
) -> Vec<Estimate> {
    let mut all: Vec<Estimate> = prices
        .models()
        .map(|(model, _)| {
            let per_item = per_item(model);
            estimate(
                prices,
                &EstimateInput {
                    model,
                    per_item,
                    ..*input
                },
            )
        })
        .collect();
    all.sort_by(|a, b| a.batch.cmp(&b.batch).then_with(|| a.model.cmp(&b.model)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input<'a>(model: &'a str, detail: Detail, images: &'a [(u32, u32)]) -> EstimateInput<'a> {
        EstimateInput {
            model,
            detail,
            per_item: PerItem {
                overhead_tokens: 100,
                output_tokens: 50,
                basis: Basis::Formula,
                observed_items: 0,
            },
            images,
        }
    }

    #[test]
    fn tokens_and_cost_add_up() {
        let prices = PriceTable::defaults();
        let images = [(1024, 1024), (2048, 4096), (100, 100)];
        let e = estimate(&prices, &input("gpt-4o", Detail::High, &images));
        assert_eq!(e.model, "gpt-4o");
        assert_eq!(e.items, 3);
        assert_eq!(e.input_tokens, 3 * 100 + 765 + 1105 + 255);
        assert_eq!(e.output_tokens, 150);
        // gpt-4o: 2.50 / 10.00 standard = 2_500_000 / 10_000_000 pico per token.
        let individual = 2425 * 2_500_000 + 150 * 10_000_000;
        assert_eq!(e.individual, Some(individual));
        assert_eq!(e.batch, Some(individual / 2));
    }

    #[test]
    fn unknown_model_is_unpriced_but_counted() {
        let prices = PriceTable::defaults();
        let e = estimate(&prices, &input("mystery", Detail::Low, &[(10, 10)]));
        assert_eq!((e.items, e.input_tokens, e.output_tokens), (1, 185, 50));
        assert_eq!((e.batch, e.individual), (None, None));
    }

    #[test]
    fn empty_job_costs_zero() {
        let prices = PriceTable::defaults();
        let e = estimate(&prices, &input("gpt-5", Detail::Auto, &[]));
        assert_eq!((e.items, e.input_tokens, e.batch), (0, 0, Some(0)));
    }

    #[test]
    fn gpt_4o_is_cheaper_per_image_than_mini_at_high_detail() {
        let prices = PriceTable::defaults();
        let images = [(1024, 1024)];
        let big = estimate(&prices, &input("gpt-4o", Detail::High, &images));
        let mini = estimate(&prices, &input("gpt-4o-mini", Detail::High, &images));
        assert!(
            big.batch.unwrap() < mini.batch.unwrap(),
            "{big:?} vs {mini:?}"
        );
        assert!(big.individual.unwrap() < mini.individual.unwrap());
        // At low detail the mini model's far lower price wins.
        let big = estimate(&prices, &input("gpt-4o", Detail::Low, &images));
        let mini = estimate(&prices, &input("gpt-4o-mini", Detail::Low, &images));
        assert!(mini.batch.unwrap() < big.batch.unwrap());
    }

    #[test]
    fn all_models_are_sorted_cheapest_batch_first() {
        let prices = PriceTable::defaults();
        let images = [(1024, 1024); 10];
        let base = input("ignored", Detail::High, &images);
        let all = estimate_all_models(&prices, &base, |_| base.per_item);
        assert_eq!(all.len(), prices.models().count());
        assert!(all.windows(2).all(|w| w[0].batch <= w[1].batch));
        assert!(all.iter().all(|e| e.batch.is_some() && e.items == 10));
        // Each model counts images by its own formula.
        let mini = all.iter().find(|e| e.model == "gpt-4o-mini").unwrap();
        assert_eq!(mini.input_tokens, 10 * (100 + 2833 + 4 * 5667));
        let nano = all.iter().find(|e| e.model == "gpt-4.1-nano").unwrap();
        assert_eq!(nano.input_tokens, 10 * (100 + 2520));
    }

    #[test]
    fn every_model_gets_its_own_per_item_figures() {
        let prices = PriceTable::defaults();
        let images = [(512, 512); 2];
        let base = input("ignored", Detail::Low, &images);
        // Each model's history says something else: 10 tokens of overhead per letter of
        // its name, an observed output of 7.
        let all = estimate_all_models(&prices, &base, |model| PerItem {
            overhead_tokens: 10 * model.len() as i64,
            output_tokens: 7,
            basis: Basis::Observed,
            observed_items: 3,
        });
        let gpt_5 = all.iter().find(|e| e.model == "gpt-5").unwrap();
        assert_eq!(gpt_5.input_tokens, 2 * (50 + 70));
        assert_eq!(gpt_5.output_tokens, 2 * 7);
        assert_eq!(gpt_5.basis, Basis::Observed);
        let mini = all.iter().find(|e| e.model == "gpt-4o-mini").unwrap();
        assert_eq!(mini.input_tokens, 2 * (110 + 2833));
    }
}
