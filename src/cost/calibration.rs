//! Estimates that learn: from the billed `usage` of an analyzer's finished items, the output
//! length and the input overhead beyond the image formula (billed input − the formula's
//! image tokens), per model and detail. What OpenAI counts for the prompt, the schema and
//! the chat framing is not known in advance exactly; it is measured here. Pure: the samples
//! come from the store.

use std::collections::HashMap;

use serde::Serialize;

use super::image_tokens::image_tokens;
use crate::domain::Detail;

/// Where an estimate's per-image text tokens came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The o200k count of the prompt and schema, and the configured output length.
    #[default]
    Formula,
    /// Averages of this analyzer's billed usage on the model.
    Observed,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Formula => "formula",
            Basis::Observed => "observed",
        }
    }
}

/// One finished item's billed usage, with what is needed to take its image out of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageSample {
    /// The job's model (as requested, e.g. `gpt-4o-mini`).
    pub model: String,
    pub detail: Detail,
    /// The image's stored dimensions; `None` for an `image_url` OpenAI fetched itself, whose
    /// size is unknown: it teaches the output length only.
    pub dims: Option<(u32, u32)>,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Sums over the samples of one (model, detail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    output_items: u64,
    output_tokens: u64,
    overhead_items: u64,
    overhead_tokens: i64,
}

impl Sums {
    fn add(&mut self, o: &Sums) {
        self.output_items += o.output_items;
        self.output_tokens += o.output_tokens;
        self.overhead_items += o.overhead_items;
        self.overhead_tokens += o.overhead_tokens;
    }
}

/// What one image's request is assumed to cost beside its image, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerItem {
    /// Input tokens of the request other than the image's formula tokens (may be negative
    /// when OpenAI bills less than the formula says).
    pub overhead_tokens: i64,
    pub output_tokens: u32,
    /// `Observed` when both figures come from history.
    pub basis: Basis,
    /// Finished items the observed input overhead was averaged over (0 on the formula).
    pub observed_items: u64,
}

/// An analyzer's history, by model and detail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Calibration {
    sums: HashMap<(String, Detail), Sums>,
    min_items: u64,
}

impl Calibration {
    /// Learns from `samples`; a figure is used once at least `min_items` items back it.
    pub fn from_samples(samples: &[UsageSample], min_items: u64) -> Self {
        let mut sums: HashMap<(String, Detail), Sums> = HashMap::new();
        for s in samples {
            if s.input_tokens < 0 || s.output_tokens < 0 {
                continue;
            }
            let e = sums.entry((s.model.clone(), s.detail)).or_default();
            e.output_items += 1;
            e.output_tokens += s.output_tokens as u64;
            if let Some((w, h)) = s.dims.filter(|&(w, h)| w > 0 && h > 0) {
                e.overhead_items += 1;
                e.overhead_tokens +=
                    s.input_tokens - i64::from(image_tokens(&s.model, w, h, s.detail));
            }
        }
        Self {
            sums,
            min_items: min_items.max(1),
        }
    }

    /// The sums for `model` at `detail` when they are enough, else over every detail.
    fn sums_for(
        &self,
        model: &str,
        detail: Detail,
        enough: impl Fn(&Sums) -> bool,
    ) -> Option<Sums> {
        if let Some(s) = self
            .sums
            .get(&(model.to_string(), detail))
            .filter(|s| enough(s))
        {
            return Some(*s);
        }
        let mut all = Sums::default();
        for (_, s) in self.sums.iter().filter(|((m, _), _)| m == model) {
            all.add(s);
        }
        enough(&all).then_some(all)
    }

    /// Average output tokens of the analyzer's answers on `model`, once enough exist.
    pub fn output_tokens(&self, model: &str, detail: Detail) -> Option<u32> {
        let s = self.sums_for(model, detail, |s| s.output_items >= self.min_items)?;
        Some((s.output_tokens as f64 / s.output_items as f64).round() as u32)
    }

    /// Average input overhead beyond the image formula on `model`, once enough items with
    /// known dimensions exist.
    pub fn overhead_tokens(&self, model: &str, detail: Detail) -> Option<(i64, u64)> {
        let s = self.sums_for(model, detail, |s| s.overhead_items >= self.min_items)?;
        let mean = (s.overhead_tokens as f64 / s.overhead_items as f64).round() as i64;
        Some((mean, s.overhead_items))
    }

    /// What to assume per image for `model` at `detail`: observed figures where the history
    /// has them, else the formula's overhead and `fallback_output` tokens.
    pub fn per_item(
        &self,
        model: &str,
        detail: Detail,
        formula_overhead: u32,
        fallback_output: u32,
    ) -> PerItem {
        let output = self.output_tokens(model, detail);
        let overhead = self.overhead_tokens(model, detail);
        match (overhead, output) {
            (Some((overhead_tokens, n)), Some(output_tokens)) => PerItem {
                overhead_tokens,
                output_tokens,
                basis: Basis::Observed,
                observed_items: n,
            },
            _ => PerItem {
                overhead_tokens: i64::from(formula_overhead),
                output_tokens: output.unwrap_or(fallback_output),
                basis: Basis::Formula,
                observed_items: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(model: &str, detail: Detail, dims: Option<(u32, u32)>, extra: i64) -> UsageSample {
        let image = dims.map_or(0, |(w, h)| i64::from(image_tokens(model, w, h, detail)));
        UsageSample {
            model: model.into(),
            detail,
            dims,
            input_tokens: image + extra,
            output_tokens: 60,
        }
    }

    #[test]
    fn formula_until_enough_items_then_observed() {
        let few: Vec<_> = (0..4)
            .map(|_| sample("gpt-4o-mini", Detail::Low, Some((640, 480)), 300))
            .collect();
        let cal = Calibration::from_samples(&few, 5);
        let p = cal.per_item("gpt-4o-mini", Detail::Low, 720, 80);
        assert_eq!(p.basis, Basis::Formula);
        assert_eq!((p.overhead_tokens, p.output_tokens), (720, 80));

        let enough: Vec<_> = (0..5)
            .map(|i| {
                sample(
                    "gpt-4o-mini",
                    Detail::Low,
                    Some((640 + i, 480)),
                    300 + i as i64,
                )
            })
            .collect();
        let cal = Calibration::from_samples(&enough, 5);
        let p = cal.per_item("gpt-4o-mini", Detail::Low, 720, 80);
        assert_eq!(p.basis, Basis::Observed);
        assert_eq!(
            (p.overhead_tokens, p.output_tokens, p.observed_items),
            (302, 60, 5)
        );
        // Another model learns nothing from it.
        assert_eq!(
            cal.per_item("gpt-4o", Detail::Low, 720, 80).basis,
            Basis::Formula
        );
    }

    #[test]
    fn the_image_formula_is_taken_out_at_each_detail_and_model() {
        let samples = [
            sample("gpt-4o-mini", Detail::High, Some((2048, 1024)), 250),
            sample("gpt-4.1-mini", Detail::Low, Some((1500, 900)), 250),
        ];
        let cal = Calibration::from_samples(&samples, 1);
        assert_eq!(
            cal.overhead_tokens("gpt-4o-mini", Detail::High),
            Some((250, 1))
        );
        assert_eq!(
            cal.overhead_tokens("gpt-4.1-mini", Detail::Low),
            Some((250, 1))
        );
        // A detail with no history of its own borrows the model's other details.
        assert_eq!(
            cal.overhead_tokens("gpt-4o-mini", Detail::Low),
            Some((250, 1))
        );
    }

    #[test]
    fn urls_teach_output_length_but_not_overhead() {
        let samples: Vec<_> = (0..3)
            .map(|_| sample("gpt-4o", Detail::Low, None, 0))
            .collect();
        let cal = Calibration::from_samples(&samples, 3);
        assert_eq!(cal.output_tokens("gpt-4o", Detail::Low), Some(60));
        assert_eq!(cal.overhead_tokens("gpt-4o", Detail::Low), None);
        let p = cal.per_item("gpt-4o", Detail::Low, 700, 80);
        assert_eq!(
            (p.basis, p.overhead_tokens, p.output_tokens),
            (Basis::Formula, 700, 60)
        );
    }

    #[test]
    fn output_length_is_borrowed_from_the_models_other_details() {
        let samples = [
            UsageSample {
                output_tokens: 40,
                ..sample("gpt-4o", Detail::High, None, 0)
            },
            UsageSample {
                output_tokens: 80,
                ..sample("gpt-4o", Detail::Auto, Some((512, 512)), 100)
            },
        ];
        let cal = Calibration::from_samples(&samples, 2);
        // Neither detail has two items of its own; together they do: (40 + 80) / 2.
        assert_eq!(cal.output_tokens("gpt-4o", Detail::Low), Some(60));
        assert_eq!(cal.output_tokens("gpt-4o", Detail::High), Some(60));
        // Only one of them knows its image's size: not enough for an overhead.
        assert_eq!(cal.overhead_tokens("gpt-4o", Detail::Low), None);
        let p = cal.per_item("gpt-4o", Detail::Low, 700, 90);
        assert_eq!(
            (
                p.basis,
                p.overhead_tokens,
                p.output_tokens,
                p.observed_items
            ),
            (Basis::Formula, 700, 60, 0)
        );
    }

    #[test]
    fn negative_usage_is_ignored_and_zero_usage_counts() {
        let mut samples = vec![
            UsageSample {
                output_tokens: -1,
                ..sample("gpt-4o", Detail::Low, Some((512, 512)), 500)
            },
            UsageSample {
                input_tokens: -1,
                ..sample("gpt-4o", Detail::Low, Some((512, 512)), 500)
            },
        ];
        assert_eq!(
            Calibration::from_samples(&samples, 1).output_tokens("gpt-4o", Detail::Low),
            None
        );
        // An answer of zero tokens and an input billed at exactly zero are data.
        samples.push(UsageSample {
            input_tokens: 0,
            output_tokens: 0,
            ..sample("gpt-4o", Detail::Low, Some((512, 512)), 0)
        });
        samples.push(sample("gpt-4o", Detail::Low, Some((512, 512)), 10));
        let cal = Calibration::from_samples(&samples, 2);
        assert_eq!(cal.output_tokens("gpt-4o", Detail::Low), Some(30));
        // Low detail on gpt-4o is 85 tokens: overheads of -85 and 10.
        assert_eq!(cal.overhead_tokens("gpt-4o", Detail::Low), Some((-38, 2)));
    }

    #[test]
    fn an_image_of_unknown_or_zero_size_teaches_the_output_only() {
        let samples = [
            sample("gpt-4o", Detail::Low, Some((0, 512)), 0),
            sample("gpt-4o", Detail::Low, Some((512, 0)), 0),
            sample("gpt-4o", Detail::Low, None, 0),
        ];
        let cal = Calibration::from_samples(&samples, 1);
        assert_eq!(cal.output_tokens("gpt-4o", Detail::Low), Some(60));
        assert_eq!(cal.overhead_tokens("gpt-4o", Detail::Low), None);
    }

    #[test]
    fn bases_have_their_wire_names() {
        assert_eq!(Basis::Formula.as_str(), "formula");
        assert_eq!(Basis::Observed.as_str(), "observed");
    }

    #[test]
    fn a_lower_billing_than_the_formula_is_a_negative_overhead() {
        let samples = [sample("gpt-4o", Detail::Low, Some((512, 512)), -20)];
        let cal = Calibration::from_samples(&samples, 1);
        assert_eq!(cal.overhead_tokens("gpt-4o", Detail::Low), Some((-20, 1)));
    }
}
