//! Flowmark's attribution models: which channels (or campaigns) earned the conversions and
//! their value, from the paths of touches that led to them.
//!
//! Everything here is a pure function of the paths it is given (no store, no clock, no
//! randomness), so the CLI, the server and the reference tests call the same code and get
//! the same numbers:
//!
//! - [`heuristic`]: first touch, last touch, linear (occurrence-weighted, as ChannelAttribution
//!   defines it), position-based (40 / 20 / 40) and time decay (half-life, on timed paths);
//! - [`markov`]: the removal effect of each channel in an absorbing Markov chain of order 1
//!   to 3, solved exactly (no Monte Carlo);
//! - [`shapley`]: the simplified Shapley value of Zhao et al. (2018), exact and linear in the
//!   number of distinct channel sets.
//!
//! [`channels`] names the channel of a touch from its UTM tags or referrer (close to GA4's
//! default channel grouping), for the ledger. [`paths`] reads ChannelAttribution's path format (one row per distinct path with its
//! conversions, value and non-converting journeys); [`attribute`] runs the chosen models.
//!
//! Invariant: every model credits exactly the conversions and value it is given (credit sums
//! to the totals, to rounding), and a channel is credited only for paths it is on.

pub mod channels;
mod fast_hash;
pub mod heuristic;
pub mod markov;
pub mod paths;
pub mod shapley;

use std::collections::BTreeMap;

pub use paths::{PathError, PathRow, Paths};

/// Credit given to one channel by one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Credit {
    pub conversions: f64,
    pub value: f64,
}

impl Credit {
    fn add(&mut self, share: f64, row: &PathRow) {
        self.conversions += share * row.conversions;
        self.value += share * row.value;
    }
}

/// An attribution model, as the CLI and the API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Model {
    FirstTouch,
    LastTouch,
    Linear,
    PositionBased,
    Markov,
    Shapley,
}

impl Model {
    /// Every model that works on paths alone, in the order reports show them.
    pub const ALL: [Model; 6] =
        [Model::FirstTouch, Model::LastTouch, Model::Linear, Model::PositionBased, Model::Markov, Model::Shapley];

    pub fn name(self) -> &'static str {
        match self {
            Model::FirstTouch => "first_touch",
            Model::LastTouch => "last_touch",
            Model::Linear => "linear",
            Model::PositionBased => "position_based",
            Model::Markov => "markov",
            Model::Shapley => "shapley",
        }
    }

    pub fn parse(text: &str) -> Option<Model> {
        Model::ALL.into_iter().find(|model| model.name() == text)
    }
}

/// What `attribute` found: the totals, each model's credit by channel, and (when the Markov
/// model ran) each channel's removal effect.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Attribution {
    pub total_conversions: f64,
    pub total_value: f64,
    /// Model name → channel → credit.
    pub models: BTreeMap<&'static str, BTreeMap<String, Credit>>,
    /// Channel → removal effect (Markov only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removal_effects: Option<BTreeMap<String, f64>>,
}

/// Why the models cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AttributionError {
    #[error("there are no conversions to attribute (the paths convert 0 times)")]
    NoConversions,
    #[error("Markov order {0} is not supported: use 1, 2 or 3")]
    Order(usize),
    #[error(transparent)]
    Markov(#[from] markov::MarkovError),
}

/// Runs `models` over `paths` (Markov of `order`).
pub fn attribute(paths: &Paths, models: &[Model], order: usize) -> Result<Attribution, AttributionError> {
    if !(1..=markov::ORDER_MAX).contains(&order) {
        return Err(AttributionError::Order(order));
    }
    let (total_conversions, total_value) = paths.totals();
    if total_conversions <= 0.0 {
        return Err(AttributionError::NoConversions);
    }
    let mut result = Attribution { total_conversions, total_value, models: BTreeMap::new(), removal_effects: None };
    for &model in models {
        let credit = match model {
            Model::FirstTouch => heuristic::first_touch(paths),
            Model::LastTouch => heuristic::last_touch(paths),
            Model::Linear => heuristic::linear(paths),
            Model::PositionBased => heuristic::position_based(paths),
            Model::Shapley => shapley::simplified(paths),
            Model::Markov => {
                let markov = markov::removal_effects(paths, order)?;
                let credit = markov.credit(paths);
                result.removal_effects = Some(paths.by_name(&markov.removal_effects));
                credit
            }
        };
        result.models.insert(model.name(), paths.by_name(&credit));
    }
    Ok(result)
}
