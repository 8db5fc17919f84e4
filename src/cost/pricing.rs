//! The price table: USD per 1M tokens for each model family, dated defaults, config overrides,
//! and the exact integer cost of a reported usage. No I/O.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::resolve_family;
use crate::domain::{Mode, PicoUsd, Usage};

/// The date the default prices were checked against OpenAI's pricing page.
pub const DEFAULTS_AS_OF: &str = "2026-11-01";

/// Above this a price loses integer exactness in f64 once scaled to pico-USD, and no real
/// model comes near it (USD per 1M tokens).
const MAX_PRICE: f64 = 1_000_000.0;

/// Prices of one model family, USD per 1M tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelPrice {
    pub input: f64,
    pub cached_input: f64,
    pub output: f64,
    pub batch_input: f64,
    pub batch_cached_input: f64,
    pub batch_output: f64,
}

impl ModelPrice {
    fn fields(&self) -> [(&'static str, f64); 6] {
        [
            ("input", self.input),
            ("cached_input", self.cached_input),
            ("output", self.output),
            ("batch_input", self.batch_input),
            ("batch_cached_input", self.batch_cached_input),
            ("batch_output", self.batch_output),
        ]
    }

    fn standard_rates(&self) -> Rates {
        Rates {
            input: pico_per_token(self.input),
            cached_input: pico_per_token(self.cached_input),
            output: pico_per_token(self.output),
        }
    }

    fn batch_rates(&self) -> Rates {
        Rates {
            input: pico_per_token(self.batch_input),
            cached_input: pico_per_token(self.batch_cached_input),
            output: pico_per_token(self.batch_output),
        }
    }
}

/// A price of P USD per 1M tokens is P×1e6 pico-USD per token, an integer when P has at most
/// six decimals; rounding only removes the float's representation error.
fn pico_per_token(usd_per_million: f64) -> i64 {
    (usd_per_million * 1e6).round() as i64
}

/// Integer pico-USD per token, so sums over millions of items never drift.
#[derive(Debug, Clone, Copy)]
struct Rates {
    input: i64,
    cached_input: i64,
    output: i64,
}

impl Rates {
    fn price(&self, usage: &Usage) -> PicoUsd {
        // Malformed usage (negative, or more cached than input) must not produce negative money.
        let input = i128::from(usage.input_tokens.max(0));
        let cached = i128::from(usage.cached_input_tokens).clamp(0, input);
        // reasoning_tokens is already inside output_tokens: never add it again.
        let output = i128::from(usage.output_tokens.max(0));
        let total = (input - cached) * i128::from(self.input)
            + cached * i128::from(self.cached_input)
            + output * i128::from(self.output);
        PicoUsd::try_from(total).unwrap_or(PicoUsd::MAX)
    }
}

/// The cost of one item's usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemCost {
    /// At the prices of the mode that ran it (batch prices for `Batch`).
    pub actual: PicoUsd,
    /// The same usage at standard prices: what an individual call would have cost.
    pub individual: PicoUsd,
}

/// Prices per model family, sorted by name.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    as_of: String,
    models: BTreeMap<String, ModelPrice>,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self::defaults()
    }
}

impl PriceTable {
    /// OpenAI's published prices as of [`DEFAULTS_AS_OF`].
    pub fn defaults() -> Self {
        #[rustfmt::skip]
        let rows: [(&str, [f64; 6]); 8] = [
            ("gpt-4o",       [2.50, 1.25,  10.00, 1.25,  0.625,  5.00]),
            ("gpt-4o-mini",  [0.15, 0.075, 0.60,  0.075, 0.0375, 0.30]),
            ("gpt-4.1",      [2.00, 0.50,  8.00,  1.00,  0.25,   4.00]),
            ("gpt-4.1-mini", [0.40, 0.10,  1.60,  0.20,  0.05,   0.80]),
            ("gpt-4.1-nano", [0.10, 0.025, 0.40,  0.05,  0.0125, 0.20]),
            ("gpt-5",        [1.25, 0.125, 10.00, 0.625, 0.0625, 5.00]),
            ("gpt-5-mini",   [0.25, 0.025, 2.00,  0.125, 0.0125, 1.00]),
            ("gpt-5-nano",   [0.05, 0.005, 0.40,  0.025, 0.0025, 0.20]),
        ];
        let models = rows
            .into_iter()
            .map(|(name, p)| {
                let price = ModelPrice {
                    input: p[0],
                    cached_input: p[1],
                    output: p[2],
                    batch_input: p[3],
                    batch_cached_input: p[4],
                    batch_output: p[5],
                };
                (name.to_string(), price)
            })
            .collect();
        Self {
            as_of: DEFAULTS_AS_OF.to_string(),
            models,
        }
    }

    /// The date the default prices were checked.
    pub fn as_of(&self) -> &str {
        &self.as_of
    }

    /// Replaces or adds models from config. Call [`PriceTable::validate`] afterwards.
    pub fn with_overrides(mut self, overrides: &BTreeMap<String, ModelPrice>) -> Self {
        for (name, price) in overrides {
            self.models.insert(name.clone(), price.clone());
        }
        self
    }

    /// Every price must be finite, non-negative and have at most six decimals, so it converts
    /// exactly to integer pico-USD per token. The error names the model and the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, price) in &self.models {
            if name.trim().is_empty() {
                return Err("pricing: a model name is empty".to_string());
            }
            for (field, value) in price.fields() {
                let problem = if !value.is_finite() {
                    Some("must be a finite number")
                } else if value < 0.0 {
                    Some("must not be negative")
                } else if value > MAX_PRICE {
                    Some("must be at most 1000000 USD per 1M tokens")
                } else {
                    let scaled = value * 1e6;
                    let noise = 1e-9 * scaled.abs().max(1.0);
                    ((scaled - scaled.round()).abs() > noise)
                        .then_some("must have at most 6 decimals (USD per 1M tokens)")
                };
                if let Some(problem) = problem {
                    return Err(format!("pricing.{name}.{field} {problem}, got {value}"));
                }
            }
        }
        Ok(())
    }

    /// The family `model` is priced as, and its prices: the exact name, else a dated snapshot's
    /// family ("gpt-4o-mini-2024-07-18" → "gpt-4o-mini"), else the longest family it extends.
    pub fn lookup(&self, model: &str) -> Option<(&str, &ModelPrice)> {
        let family = resolve_family(model, self.models.keys().map(String::as_str))?;
        self.models
            .get_key_value(family)
            .map(|(k, p)| (k.as_str(), p))
    }

    /// Every priced model, sorted by name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &ModelPrice)> {
        self.models.iter().map(|(k, p)| (k.as_str(), p))
    }

    /// What `usage` cost in `mode` (batch prices for `Batch` and `Flex`, standard otherwise) and at
    /// standard prices. `None` when the model has no price: unknown, never zero.
    pub fn cost(&self, model: &str, usage: &Usage, mode: Mode) -> Option<ItemCost> {
        let (_, price) = self.lookup(model)?;
        let individual = price.standard_rates().price(usage);
        // Flex processing bills the Batch API's prices.
        let actual = if mode.batch_prices() {
            price.batch_rates().price(usage)
        } else {
            individual
        };
        Some(ItemCost { actual, individual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(input: i64, cached: i64, output: i64, reasoning: i64) -> Usage {
        Usage {
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
            reasoning_tokens: reasoning,
        }
    }

    fn price(p: [f64; 6]) -> ModelPrice {
        ModelPrice {
            input: p[0],
            cached_input: p[1],
            output: p[2],
            batch_input: p[3],
            batch_cached_input: p[4],
            batch_output: p[5],
        }
    }

    #[test]
    fn defaults_are_dated_and_valid() {
        let table = PriceTable::defaults();
        assert_eq!(table.as_of(), "2026-11-01");
        table.validate().unwrap();
        let names: Vec<&str> = table.models().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "gpt-4.1",
                "gpt-4.1-mini",
                "gpt-4.1-nano",
                "gpt-4o",
                "gpt-4o-mini",
                "gpt-5",
                "gpt-5-mini",
                "gpt-5-nano"
            ]
        );
    }

    /// 1M uncached input + 1M output tokens cost exactly input + output USD, in pico-USD.
    #[test]
    fn every_default_model_standard_and_batch_arithmetic() {
        // (model, standard input+output USD, batch input+output USD) per 1M + 1M tokens,
        // written as pico-USD literals so a wrong price table fails here.
        let expected: [(&str, i64, i64); 8] = [
            ("gpt-4o", 12_500_000_000_000, 6_250_000_000_000),
            ("gpt-4o-mini", 750_000_000_000, 375_000_000_000),
            ("gpt-4.1", 10_000_000_000_000, 5_000_000_000_000),
            ("gpt-4.1-mini", 2_000_000_000_000, 1_000_000_000_000),
            ("gpt-4.1-nano", 500_000_000_000, 250_000_000_000),
            ("gpt-5", 11_250_000_000_000, 5_625_000_000_000),
            ("gpt-5-mini", 2_250_000_000_000, 1_125_000_000_000),
            ("gpt-5-nano", 450_000_000_000, 225_000_000_000),
        ];
        let table = PriceTable::defaults();
        let u = usage(1_000_000, 0, 1_000_000, 0);
        for (model, standard, batch) in expected {
            let c = table.cost(model, &u, Mode::Batch).unwrap();
            assert_eq!(c.actual, batch, "{model} batch");
            assert_eq!(c.individual, standard, "{model} individual");
            let c = table.cost(model, &u, Mode::Individual).unwrap();
            assert_eq!((c.actual, c.individual), (standard, standard), "{model}");
            let c = table.cost(model, &u, Mode::Auto).unwrap();
            assert_eq!((c.actual, c.individual), (standard, standard), "{model}");
            let c = table.cost(model, &u, Mode::Flex).unwrap();
            assert_eq!((c.actual, c.individual), (batch, standard), "{model} flex");
        }
    }

    #[test]
    fn small_usage_is_exact() {
        // gpt-4o-mini: 2900 in at 0.15/1M = 435e6 pico, 61 out at 0.60/1M = 36.6e6 pico.
        let c = PriceTable::defaults()
            .cost("gpt-4o-mini", &usage(2900, 0, 61, 0), Mode::Individual)
            .unwrap();
        assert_eq!(c.actual, 435_000_000 + 36_600_000);
        // gpt-4o-mini batch cached input is 0.0375/1M = 37_500 pico per token.
        let c = PriceTable::defaults()
            .cost("gpt-4o-mini", &usage(3, 3, 0, 0), Mode::Batch)
            .unwrap();
        assert_eq!(c.actual, 3 * 37_500);
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let table = PriceTable::defaults();
        // gpt-5: input 1.25, cached 0.125, output 10; batch 0.625, 0.0625, 5.
        let c = table
            .cost("gpt-5", &usage(10_000, 4_000, 100, 0), Mode::Batch)
            .unwrap();
        assert_eq!(
            c.individual,
            6_000 * 1_250_000 + 4_000 * 125_000 + 100 * 10_000_000
        );
        assert_eq!(c.actual, 6_000 * 625_000 + 4_000 * 62_500 + 100 * 5_000_000);
    }

    #[test]
    fn reasoning_tokens_are_not_counted_twice() {
        let table = PriceTable::defaults();
        let with = table
            .cost("gpt-5-mini", &usage(1_000, 0, 500, 400), Mode::Individual)
            .unwrap();
        let without = table
            .cost("gpt-5-mini", &usage(1_000, 0, 500, 0), Mode::Individual)
            .unwrap();
        assert_eq!(with, without);
        assert_eq!(with.actual, 1_000 * 250_000 + 500 * 2_000_000);
    }

    #[test]
    fn malformed_usage_never_costs_negative() {
        let table = PriceTable::defaults();
        let c = table
            .cost("gpt-4o", &usage(10, 20, -5, 0), Mode::Individual)
            .unwrap();
        assert_eq!(c.actual, 10 * 1_250_000);
    }

    #[test]
    fn unknown_model_has_no_cost() {
        let table = PriceTable::defaults();
        assert_eq!(
            table.cost("davinci-002", &usage(1, 0, 1, 0), Mode::Batch),
            None
        );
        assert_eq!(
            table.cost("gpt-5-pro", &usage(1, 0, 1, 0), Mode::Batch),
            None
        );
        assert!(table.lookup("gpt-4").is_none());
    }

    #[test]
    fn dated_snapshots_price_as_their_family() {
        let table = PriceTable::defaults();
        assert_eq!(
            table.lookup("gpt-4o-mini-2024-07-18").unwrap().0,
            "gpt-4o-mini"
        );
        assert_eq!(table.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
        assert_eq!(
            table.lookup("gpt-4.1-mini-2025-04-14").unwrap().0,
            "gpt-4.1-mini"
        );
        assert_eq!(
            table.lookup("gpt-5-nano-2025-08-07").unwrap().0,
            "gpt-5-nano"
        );
        let u = usage(1_000, 0, 100, 0);
        assert_eq!(
            table.cost("gpt-4o-mini-2024-07-18", &u, Mode::Batch),
            table.cost("gpt-4o-mini", &u, Mode::Batch)
        );
        assert_ne!(
            table.cost("gpt-4o-mini-2024-07-18", &u, Mode::Batch),
            table.cost("gpt-4o", &u, Mode::Batch)
        );
    }

    #[test]
    fn mini_never_resolves_to_its_big_sibling() {
        let mut only_big = BTreeMap::new();
        only_big.insert("gpt-4o".to_string(), price([1.0; 6]));
        let table = PriceTable {
            as_of: DEFAULTS_AS_OF.to_string(),
            models: only_big,
        };
        assert!(table.lookup("gpt-4o-mini-2024-07-18").is_none());
        assert!(table.lookup("gpt-4o-mini").is_none());
        assert_eq!(table.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
    }

    #[test]
    fn overrides_add_and_replace() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "gpt-4o".to_string(),
            price([5.0, 2.5, 15.0, 2.5, 1.25, 7.5]),
        );
        overrides.insert(
            "my-model".to_string(),
            price([1.0, 0.5, 2.0, 0.5, 0.25, 1.0]),
        );
        let table = PriceTable::defaults().with_overrides(&overrides);
        table.validate().unwrap();
        assert_eq!(table.models().count(), 9);
        let u = usage(1_000_000, 0, 0, 0);
        assert_eq!(
            table.cost("gpt-4o", &u, Mode::Individual).unwrap().actual,
            5_000_000_000_000
        );
        assert_eq!(
            table.cost("my-model-2026-01-01", &u, Mode::Batch).unwrap(),
            ItemCost {
                actual: 500_000_000_000,
                individual: 1_000_000_000_000
            }
        );
        // An exact dated override wins over its family.
        let mut dated = BTreeMap::new();
        dated.insert("gpt-4o-2024-05-13".to_string(), price([5.0; 6]));
        let table = PriceTable::defaults().with_overrides(&dated);
        assert_eq!(
            table.lookup("gpt-4o-2024-05-13").unwrap().0,
            "gpt-4o-2024-05-13"
        );
        assert_eq!(table.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
    }

    #[test]
    fn validation_names_model_and_field() {
        let cases = [
            (
                price([1.0, 0.5, -2.0, 0.5, 0.25, 1.0]),
                "pricing.bad.output ",
            ),
            (
                price([f64::NAN, 0.5, 2.0, 0.5, 0.25, 1.0]),
                "pricing.bad.input ",
            ),
            (
                price([1.0, 0.5, 2.0, f64::INFINITY, 0.25, 1.0]),
                "pricing.bad.batch_input ",
            ),
            (
                price([1.0, 0.5, 2.0, 0.5, 0.1234567, 1.0]),
                "pricing.bad.batch_cached_input ",
            ),
            (
                price([1.0, 0.5, 2.0, 0.5, 0.25, 2e6]),
                "pricing.bad.batch_output ",
            ),
        ];
        for (p, want) in cases {
            let mut o = BTreeMap::new();
            o.insert("bad".to_string(), p);
            let err = PriceTable::defaults()
                .with_overrides(&o)
                .validate()
                .unwrap_err();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
        let mut o = BTreeMap::new();
        o.insert(
            "six-decimals".to_string(),
            price([0.123456, 0.0, 0.000001, 0.0, 0.0, 0.0]),
        );
        // Six decimals whose product with 1e6 is not a whole float (16.69063 × 1e6 =
        // 16690629.999999998): the allowance scales with the value, so they pass.
        o.insert(
            "float-noise".to_string(),
            price([16.69063, 520.938418, 1.000001, 0.0, 0.0, 0.0]),
        );
        // The bounds themselves are allowed: free, and at most 1000000 USD per 1M tokens.
        o.insert(
            "bounds".to_string(),
            price([MAX_PRICE, 0.0, 0.0, 0.0, 0.0, 0.0]),
        );
        PriceTable::defaults()
            .with_overrides(&o)
            .validate()
            .unwrap();
    }

    #[test]
    fn individual_is_twice_batch_for_every_default_model() {
        let table = PriceTable::defaults();
        let u = usage(123_457, 10_001, 9_876, 1_234);
        for (model, _) in table.models() {
            let c = table.cost(model, &u, Mode::Batch).unwrap();
            assert!(c.actual > 0, "{model}");
            assert_eq!(c.individual, 2 * c.actual, "{model}");
        }
    }
}
