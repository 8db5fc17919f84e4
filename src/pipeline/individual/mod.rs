//! Individual mode: one Chat Completions call per item, at the account's rate limits and
//! not over them. Same result records as the batch path.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::config::Settings;
use crate::store::DynStore;

pub mod budget;
pub mod executor;
pub mod governor;

pub use budget::StoreBudget;
pub use executor::Executor;
pub use governor::{Governor, Limits, LocalBudget};

/// The governor the configuration describes: its budget in `store`, shared by every
/// replica, when `individual.shared_budget` says so; else in memory.
pub fn governor(settings: &Settings, store: &DynStore) -> Governor {
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
    if !settings.shared_budget() {
        return Governor::new(default, per_model);
    }
    let budget = StoreBudget::new(
        store.clone(),
        &settings.openai.base_url,
        settings.openai.api_key.expose_secret(),
    );
    tracing::info!(account = %budget.account(), "individual mode: the rate budget is shared through the database");
    Governor::with_budget(default, per_model, Arc::new(budget))
}
