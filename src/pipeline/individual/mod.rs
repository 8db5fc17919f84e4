//! Individual mode: one Chat Completions call per item, at the account's rate limits and
//! not over them. Same result records as the batch path.

use std::collections::HashMap;

use crate::config::Settings;

pub mod executor;
pub mod governor;

pub use executor::Executor;
pub use governor::{Governor, Limits};

/// The governor the configuration describes.
pub fn governor(settings: &Settings) -> Governor {
    if !settings.individual.governor {
        return Governor::disabled();
    }
    let default = Limits {
        rpm: settings.individual.rpm,
        tpm: settings.individual.tpm,
    };
    let per_model: HashMap<String, Limits> = settings
        .individual
        .models
        .iter()
        .map(|(model, l)| {
            (
                model.clone(),
                Limits {
                    rpm: l.rpm.unwrap_or(default.rpm),
                    tpm: l.tpm.unwrap_or(default.tpm),
                },
            )
        })
        .collect();
    Governor::new(default, per_model)
}
