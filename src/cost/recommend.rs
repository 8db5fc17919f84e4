//! The estimate's recommendation: the cheapest (model, detail, mode) for a body among the
//! priced models, with the reason in words. Pure: the estimates come from
//! `estimate_all_models`, one list per detail.
//!
//! A mode is one more entry in [`RunMode`]: batch and flex bill Batch API prices, individual
//! calls standard prices. Flex is offered only for the models the caller says offer it, so a
//! branch without flex passes an empty list and the recommendation is among batch and
//! individual.

use super::estimate::Estimate;
use crate::domain::{pico_to_usd, Detail, Mode, PicoUsd};

/// A way to run one image set, as priced by an estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunMode {
    /// The mode's name on the wire (`batch`, `flex`, `individual`).
    pub name: &'static str,
    /// Billed at Batch API prices (batch, flex) rather than standard ones.
    pub batch_prices: bool,
    /// Offered only for the models in `Modes::flex_models` (flex), not for every model.
    pub flex_models_only: bool,
}

/// The modes to choose among, in order of preference on equal cost, and the flex model list.
#[derive(Debug, Clone, Default)]
pub struct Modes {
    pub run: Vec<RunMode>,
    /// Models that offer flex processing (empty: no flex).
    pub flex_models: Vec<String>,
}

impl Modes {
    /// Batch, then individual calls: what a service without flex offers.
    pub fn batch_and_individual() -> Self {
        Self {
            run: vec![BATCH, INDIVIDUAL],
            flex_models: Vec::new(),
        }
    }

    /// Batch, flex (for `flex_models`), individual. Flex bills batch prices too; batch is
    /// preferred on a tie because it has no "resource unavailable" answers to wait out.
    pub fn with_flex(flex_models: Vec<String>) -> Self {
        Self {
            run: vec![BATCH, FLEX, INDIVIDUAL],
            flex_models,
        }
    }

    fn offers(&self, mode: &RunMode, model: &str) -> bool {
        !mode.flex_models_only || self.flex_models.iter().any(|m| m == model)
    }
}

pub const BATCH: RunMode = RunMode {
    name: "batch",
    batch_prices: true,
    flex_models_only: false,
};
pub const INDIVIDUAL: RunMode = RunMode {
    name: "individual",
    batch_prices: false,
    flex_models_only: false,
};
pub const FLEX: RunMode = RunMode {
    name: "flex",
    batch_prices: true,
    flex_models_only: true,
};

impl From<Mode> for RunMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Batch | Mode::Auto => BATCH,
            Mode::Individual => INDIVIDUAL,
            Mode::Flex => FLEX,
        }
    }
}

/// The cheapest way found, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    pub model: String,
    pub detail: Detail,
    /// `batch`, `flex` or `individual`.
    pub mode: &'static str,
    /// What the recommended run costs (in its mode's prices).
    pub cost: PicoUsd,
    /// The same images on the same model and detail at Batch API prices.
    pub batch: PicoUsd,
    /// At standard prices (individual calls).
    pub individual: PicoUsd,
    pub why: String,
}

/// What the body asked for, to say how the recommendation differs from it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub model: &'a str,
    pub detail: Detail,
    /// The mode the body would run in (after `auto` resolves).
    pub mode: Mode,
    /// Images that would be sent (after reuse).
    pub images: u64,
    /// Images answered from earlier analyses, at 0.
    pub reused: u64,
}

/// The cheapest (model, detail, mode) among `by_detail` (each detail's estimates of every
/// model; unpriced ones are skipped). On equal cost: the asked detail, then the asked model,
/// then the asked mode (a body asking for flex keeps flex over batch at the same price),
/// then the earlier mode in `modes.run`, then the model name, so the answer is stable.
/// `None` when no model is priced.
pub fn recommend(
    by_detail: &[(Detail, Vec<Estimate>)],
    modes: &Modes,
    asked: Asked,
) -> Option<Recommendation> {
    struct Cand<'a> {
        e: &'a Estimate,
        detail: Detail,
        mode_rank: usize,
        mode: RunMode,
        cost: PicoUsd,
    }
    let mut cands = Vec::new();
    for (detail, estimates) in by_detail {
        for e in estimates {
            let (Some(batch), Some(individual)) = (e.batch, e.individual) else {
                continue;
            };
            for (rank, mode) in modes.run.iter().enumerate() {
                if !modes.offers(mode, &e.model) {
                    continue;
                }
                let cost = if mode.batch_prices { batch } else { individual };
                cands.push(Cand {
                    e,
                    detail: *detail,
                    mode_rank: rank,
                    mode: *mode,
                    cost,
                });
            }
        }
    }
    let asked_mode = RunMode::from(asked.mode).name;
    let key = |c: &Cand| {
        (
            c.cost,
            c.detail != asked.detail,
            c.e.model != asked.model,
            c.mode.name != asked_mode,
            c.mode_rank,
            c.e.model.clone(),
        )
    };
    let best = cands.iter().min_by_key(|c| key(c))?;
    let models = by_detail
        .iter()
        .flat_map(|(_, es)| es.iter().filter(|e| e.batch.is_some()))
        .map(|e| e.model.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let (batch, individual) = (best.e.batch.unwrap_or(0), best.e.individual.unwrap_or(0));
    let why = explain(
        best.e,
        best.detail,
        best.mode,
        best.cost,
        individual,
        models,
        &asked,
        by_detail,
        modes,
    );
    Some(Recommendation {
        model: best.e.model.clone(),
        detail: best.detail,
        mode: best.mode.name,
        cost: best.cost,
        batch,
        individual,
        why,
    })
}

fn usd(p: PicoUsd) -> String {
    format!("${:.6}", pico_to_usd(p))
}

#[allow(clippy::too_many_arguments)]
fn explain(
    e: &Estimate,
    detail: Detail,
    mode: RunMode,
    cost: PicoUsd,
    individual: PicoUsd,
    models: usize,
    asked: &Asked,
    by_detail: &[(Detail, Vec<Estimate>)],
    modes: &Modes,
) -> String {
    let mut why = format!(
        "{} at detail {} in {} mode costs {} for {} images: the cheapest of {} priced models, {} details and the modes {}",
        e.model,
        detail,
        mode.name,
        usd(cost),
        asked.images,
        models,
        by_detail.len(),
        modes.run.iter().map(|m| m.name).collect::<Vec<_>>().join(", "),
    );
    if mode.batch_prices && individual > cost {
        why.push_str(&format!(
            "; individual calls would cost {} ({} more)",
            usd(individual),
            usd(individual - cost)
        ));
    }
    let asked_cost = by_detail
        .iter()
        .find(|(d, _)| *d == asked.detail)
        .and_then(|(_, es)| es.iter().find(|x| x.model == asked.model))
        .and_then(|x| {
            if RunMode::from(asked.mode).batch_prices {
                x.batch
            } else {
                x.individual
            }
        });
    let same = e.model == asked.model
        && detail == asked.detail
        && mode.name == RunMode::from(asked.mode).name;
    match asked_cost {
        Some(c) if !same => why.push_str(&format!(
            "; the body as sent ({} at detail {} in {} mode) would cost {}",
            asked.model,
            asked.detail,
            RunMode::from(asked.mode).name,
            usd(c)
        )),
        None if !same => why.push_str(&format!("; {} has no price", asked.model)),
        _ => why.push_str("; that is how the body would run"),
    }
    if detail != asked.detail {
        why.push_str(&format!(
            "; detail {detail} sees the image differently from {}: check the answers are still good enough",
            asked.detail
        ));
    }
    if asked.reused > 0 {
        why.push_str(&format!(
            "; {} more images are answered from earlier analyses at $0",
            asked.reused
        ));
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cost::Basis;

    fn est(model: &str, batch: Option<PicoUsd>) -> Estimate {
        Estimate {
            model: model.into(),
            items: 10,
            input_tokens: 0,
            output_tokens: 0,
            batch,
            individual: batch.map(|b| b * 2),
            basis: Basis::Formula,
        }
    }

    fn asked(model: &str, detail: Detail, mode: Mode) -> Asked<'_> {
        Asked {
            model,
            detail,
            mode,
            images: 10,
            reused: 0,
        }
    }

    #[test]
    fn picks_the_cheapest_model_detail_and_batch() {
        let by_detail = vec![
            (Detail::Low, vec![est("a", Some(300)), est("b", Some(200))]),
            (Detail::High, vec![est("a", Some(900)), est("b", Some(100))]),
        ];
        let r = among_batch_and_individual(&by_detail, asked("a", Detail::Low, Mode::Individual));
        assert_eq!(
            (r.model.as_str(), r.detail, r.mode),
            ("b", Detail::High, "batch")
        );
        assert_eq!((r.cost, r.batch, r.individual), (100, 100, 200));
        assert!(
            r.why.contains("b at detail high in batch mode"),
            "{}",
            r.why
        );
        assert!(
            r.why
                .contains("a at detail low in individual mode) would cost $0.000000"),
            "{}",
            r.why
        );
        assert!(r.why.contains("check the answers"), "{}", r.why);
    }

    #[test]
    fn ties_keep_what_was_asked_and_skip_unpriced_models() {
        let by_detail = vec![
            (Detail::Low, vec![est("a", Some(100)), est("z", None)]),
            (Detail::High, vec![est("a", Some(100)), est("b", Some(100))]),
        ];
        let r = among_batch_and_individual(&by_detail, asked("b", Detail::High, Mode::Batch));
        assert_eq!(
            (r.model.as_str(), r.detail, r.mode),
            ("b", Detail::High, "batch")
        );
        assert!(
            r.why.ends_with("that is how the body would run"),
            "{}",
            r.why
        );
        let none = recommend(
            &[(Detail::Low, vec![est("z", None)])],
            &Modes::batch_and_individual(),
            asked("z", Detail::Low, Mode::Batch),
        );
        assert_eq!(none, None);
    }

    #[test]
    fn flex_is_one_more_mode_only_for_the_models_offering_it() {
        // Only individual calls and flex: flex wins at batch prices where offered.
        let modes = Modes {
            run: vec![FLEX, INDIVIDUAL],
            flex_models: vec!["b".into()],
        };
        let by_detail = vec![(Detail::Low, vec![est("a", Some(100)), est("b", Some(150))])];
        let r = recommend(
            &by_detail,
            &modes,
            asked("a", Detail::Low, Mode::Individual),
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.mode, r.cost), ("b", "flex", 150));
        // With batch too, batch is preferred over flex at the same price.
        let r = recommend(
            &by_detail,
            &Modes::with_flex(vec!["a".into()]),
            asked("a", Detail::Low, Mode::Batch),
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.mode), ("a", "batch"));
        // A body asking for flex keeps it at the same price, where the model offers it.
        let r = recommend(
            &by_detail,
            &Modes::with_flex(vec!["a".into()]),
            asked("a", Detail::Low, Mode::Flex),
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.mode, r.cost), ("a", "flex", 100));
        assert!(
            r.why.ends_with("that is how the body would run"),
            "{}",
            r.why
        );
        // Not where it does not: b is dearer and a offers no flex.
        let r = recommend(
            &by_detail,
            &Modes::with_flex(vec!["b".into()]),
            asked("b", Detail::Low, Mode::Flex),
        )
        .unwrap();
        assert_eq!((r.model.as_str(), r.mode), ("a", "batch"));
    }

    /// The recommendation among batch and individual calls.
    fn among_batch_and_individual(
        by_detail: &[(Detail, Vec<Estimate>)],
        asked: Asked,
    ) -> Recommendation {
        recommend(by_detail, &Modes::batch_and_individual(), asked).unwrap()
    }

    /// Prices of whole micro-dollars, so that the amounts in the reason tell them apart.
    fn priced(model: &str, batch: PicoUsd, individual: PicoUsd) -> Estimate {
        Estimate {
            individual: Some(individual),
            ..est(model, Some(batch))
        }
    }

    #[test]
    fn the_reason_prices_the_alternatives() {
        let by_detail = vec![
            (
                Detail::Low,
                vec![
                    priced("a", 3_000_000, 6_000_000),
                    priced("b", 1_000_000, 2_000_000),
                ],
            ),
            (
                Detail::High,
                vec![
                    priced("a", 5_000_000, 9_000_000),
                    priced("b", 7_000_000, 8_000_000),
                ],
            ),
        ];
        let r = among_batch_and_individual(&by_detail, asked("a", Detail::Low, Mode::Individual));
        assert_eq!(
            r.why,
            "b at detail low in batch mode costs $0.000001 for 10 images: the cheapest of 2 \
             priced models, 2 details and the modes batch, individual; individual calls would \
             cost $0.000002 ($0.000001 more); the body as sent (a at detail low in individual \
             mode) would cost $0.000006"
        );
        // Asked at high detail in batch: that body's own price, and the change of detail.
        let r = among_batch_and_individual(&by_detail, asked("a", Detail::High, Mode::Batch));
        assert!(
            r.why.contains(
                "; the body as sent (a at detail high in batch mode) would cost $0.000005; \
                 detail low sees the image differently from high"
            ),
            "{}",
            r.why
        );
    }

    #[test]
    fn individual_calls_are_compared_only_when_they_cost_more() {
        // A price table where standard prices equal batch ones: nothing to compare.
        let by_detail = vec![(Detail::Low, vec![priced("a", 1_000_000, 1_000_000)])];
        let r = among_batch_and_individual(&by_detail, asked("a", Detail::Low, Mode::Batch));
        assert_eq!(r.mode, "batch");
        assert!(!r.why.contains("individual calls would cost"), "{}", r.why);
        // Individual calls recommended: they are not compared with themselves.
        let modes = Modes {
            run: vec![INDIVIDUAL],
            flex_models: Vec::new(),
        };
        let by_detail = vec![(Detail::Low, vec![priced("a", 1_000_000, 2_000_000)])];
        let r = recommend(
            &by_detail,
            &modes,
            asked("a", Detail::Low, Mode::Individual),
        )
        .unwrap();
        assert_eq!((r.mode, r.cost), ("individual", 2_000_000));
        assert!(!r.why.contains("individual calls would cost"), "{}", r.why);
        assert!(!r.why.contains("earlier analyses"), "{}", r.why);
    }

    #[test]
    fn an_unpriced_model_asked_for_is_said_to_have_no_price() {
        let by_detail = vec![(Detail::Low, vec![est("z", None), est("a", Some(100))])];
        let r = among_batch_and_individual(&by_detail, asked("z", Detail::Low, Mode::Batch));
        assert_eq!(r.model, "a");
        assert!(r.why.ends_with("; z has no price"), "{}", r.why);
    }

    #[test]
    fn says_how_many_images_were_reused() {
        let by_detail = vec![(Detail::Low, vec![est("a", Some(100))])];
        let mut a = asked("a", Detail::Low, Mode::Batch);
        a.reused = 7;
        let r = recommend(&by_detail, &Modes::batch_and_individual(), a).unwrap();
        assert!(
            r.why
                .contains("7 more images are answered from earlier analyses at $0"),
            "{}",
            r.why
        );
    }
}
