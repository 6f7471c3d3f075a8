//! Markov attribution, solved exactly: the paths become an absorbing Markov chain from
//! `(start)` through channel states to `(conversion)` or `(null)`, and each channel is
//! credited in proportion to its removal effect — how much the chance of converting falls
//! when every journey reaching that channel ends there without converting (Anderl et al.,
//! 2014; the quantity ChannelAttribution estimates by simulating walks).
//!
//! The chain, as ChannelAttribution builds it: consecutive repeats of a channel are collapsed
//! (`a > a > b` is `a > b`); with order k a state is the last k channels up to a touch (the
//! first touches of a path have shorter states: `(a)`, `(a, b)`, `(a, b, c)`, `(b, c, d)`…);
//! every path weighs its conversions plus its non-converting journeys on each transition it
//! makes, and its last state goes to `(conversion)` with its conversions and to `(null)` with
//! its non-conversions. Transition counts are normalised per state.
//!
//! The chance of converting from each state solves `(I − Q) x = r` (Q: transitions between
//! channel states, r: into conversion): by Gaussian elimination with partial pivoting up to
//! `DENSE_STATES_MAX` states, by Gauss–Seidel sweeps to `TOLERANCE` beyond. Removing a
//! channel makes every state that contains it convert with chance 0.
//!
//! Invariant: a removal effect lies in [0, 1], and the credit sums to the totals given.

use crate::fast_hash::FxMap;
use crate::{Credit, Paths};

/// The highest order supported.
pub const ORDER_MAX: usize = 3;
/// Up to this many states the chain is solved by elimination (exact to rounding).
pub const DENSE_STATES_MAX: usize = 1024;
/// Beyond `DENSE_STATES_MAX`, sweeps stop once no state's chance moves by more than this.
pub const TOLERANCE: f64 = 1e-14;
/// Most sweeps, beyond `DENSE_STATES_MAX`.
pub const SWEEPS_MAX: usize = 100_000;
/// Most states a chain may have.
pub const STATES_MAX: usize = 200_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MarkovError {
    #[error("the chain has more than {STATES_MAX} states; use a lower order")]
    TooManyStates,
    #[error("the chain did not settle within {SWEEPS_MAX} sweeps")]
    NoConvergence,
}

/// The chain's answer: each channel's removal effect (indexed like `Paths::channels`), and
/// the chance of converting from the start.
#[derive(Debug, Clone, PartialEq)]
pub struct Markov {
    pub removal_effects: Vec<f64>,
    pub conversion_probability: f64,
    /// How many channel states the chain has.
    pub states: usize,
}

impl Markov {
    /// Each channel's share of the removal effects, times the totals of `paths`.
    pub fn credit(&self, paths: &Paths) -> Vec<Credit> {
        let (conversions, value) = paths.totals();
        let sum: f64 = self.removal_effects.iter().sum();
        self.removal_effects
            .iter()
            .map(|effect| {
                let share = if sum > 0.0 { effect / sum } else { 0.0 };
                Credit { conversions: share * conversions, value: share * value }
            })
            .collect()
    }
}

/// Where a transition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum To {
    State(u32),
    Conversion,
    Null,
}

/// The chain: for each state, its channels and its transitions with their probabilities.
struct Chain {
    /// The distinct channels of each state.
    channels: Vec<Vec<u16>>,
    /// Each state's transitions, normalised.
    out: Vec<Vec<(To, f64)>>,
    /// Where journeys start, normalised.
    start: Vec<(u32, f64)>,
}

/// A state's key: its channels (at most `ORDER_MAX`, each below `CHANNELS_MAX` < 2^16),
/// each plus one, in 16 bits apiece.
fn state_key(state: &[u16]) -> u64 {
    state.iter().fold(0u64, |key, &c| (key << 16) | (u64::from(c) + 1))
}

fn build(paths: &Paths, order: usize) -> Result<Chain, MarkovError> {
    let mut ids: FxMap<u64, u32> = FxMap::default();
    let mut channels: Vec<Vec<u16>> = Vec::new();
    let mut counts: Vec<FxMap<To, f64>> = Vec::new();
    let mut start: FxMap<u32, f64> = FxMap::default();
    let mut seq: Vec<u16> = Vec::new();
    for row in &paths.rows {
        let nulls = if paths.has_nulls { row.nulls } else { 0.0 };
        let weight = row.conversions + nulls;
        if weight <= 0.0 || row.touches.is_empty() {
            continue;
        }
        seq.clear();
        for &touch in &row.touches {
            if seq.last() != Some(&touch) {
                seq.push(touch);
            }
        }
        let mut previous: Option<u32> = None;
        for end in 0..seq.len() {
            let state = &seq[end.saturating_sub(order - 1)..=end];
            let key = state_key(state);
            let id = match ids.get(&key) {
                Some(&id) => id,
                None => {
                    if channels.len() >= STATES_MAX {
                        return Err(MarkovError::TooManyStates);
                    }
                    let id = channels.len() as u32;
                    let mut distinct = state.to_vec();
                    distinct.sort_unstable();
                    distinct.dedup();
                    channels.push(distinct);
                    counts.push(FxMap::default());
                    ids.insert(key, id);
                    id
                }
            };
            match previous {
                None => *start.entry(id).or_default() += weight,
                Some(from) => *counts[from as usize].entry(To::State(id)).or_default() += weight,
            }
            previous = Some(id);
        }
        let last = previous.expect("the path has a touch") as usize;
        if row.conversions > 0.0 {
            *counts[last].entry(To::Conversion).or_default() += row.conversions;
        }
        if nulls > 0.0 {
            *counts[last].entry(To::Null).or_default() += nulls;
        }
    }
    let normalise = |pairs: Vec<(To, f64)>| {
        let total: f64 = pairs.iter().map(|(_, w)| w).sum();
        let mut pairs: Vec<(To, f64)> = pairs.into_iter().map(|(to, w)| (to, w / total)).collect();
        // A fixed order, so every run sums the same way.
        pairs.sort_unstable_by_key(|(to, _)| match to {
            To::State(s) => (0, *s),
            To::Conversion => (1, 0),
            To::Null => (2, 0),
        });
        pairs
    };
    let out = counts.into_iter().map(|row| normalise(row.into_iter().collect())).collect();
    let start = normalise(start.into_iter().map(|(s, w)| (To::State(s), w)).collect())
        .into_iter()
        .filter_map(|(to, p)| match to {
            To::State(s) => Some((s, p)),
            _ => None,
        })
        .collect();
    Ok(Chain { channels, out, start })
}

impl Chain {
    /// The chance of converting from the start with the states `removed` converting never.
    fn conversion_probability(&self, removed: &[bool]) -> Result<f64, MarkovError> {
        let x =
            if self.out.len() <= DENSE_STATES_MAX { self.solve_dense(removed) } else { self.solve_sweeps(removed)? };
        Ok(self.start.iter().map(|(s, p)| p * x[*s as usize]).sum())
    }

    /// `(I − Q) x = r` over the states kept, by elimination with partial pivoting.
    fn solve_dense(&self, removed: &[bool]) -> Vec<f64> {
        let n = self.out.len();
        let mut a = vec![0.0; n * n];
        let mut b = vec![0.0; n];
        for (s, transitions) in self.out.iter().enumerate() {
            a[s * n + s] = 1.0;
            if removed[s] {
                continue;
            }
            for &(to, p) in transitions {
                match to {
                    To::State(t) if !removed[t as usize] => a[s * n + t as usize] -= p,
                    To::Conversion => b[s] += p,
                    _ => {}
                }
            }
        }
        for col in 0..n {
            let pivot = (col..n).max_by(|&i, &j| a[i * n + col].abs().total_cmp(&a[j * n + col].abs())).unwrap_or(col);
            if pivot != col {
                for k in 0..n {
                    a.swap(col * n + k, pivot * n + k);
                }
                b.swap(col, pivot);
            }
            let diagonal = a[col * n + col];
            for row in col + 1..n {
                let factor = a[row * n + col] / diagonal;
                if factor == 0.0 {
                    continue;
                }
                for k in col..n {
                    a[row * n + k] -= factor * a[col * n + k];
                }
                b[row] -= factor * b[col];
            }
        }
        let mut x = vec![0.0; n];
        for row in (0..n).rev() {
            let tail: f64 = (row + 1..n).map(|k| a[row * n + k] * x[k]).sum();
            x[row] = (b[row] - tail) / a[row * n + row];
        }
        x
    }

    /// The same system by Gauss–Seidel sweeps (each state's chance from its transitions).
    fn solve_sweeps(&self, removed: &[bool]) -> Result<Vec<f64>, MarkovError> {
        let mut x = vec![0.0; self.out.len()];
        for _ in 0..SWEEPS_MAX {
            let mut moved: f64 = 0.0;
            for (s, transitions) in self.out.iter().enumerate() {
                if removed[s] {
                    continue;
                }
                let next: f64 = transitions
                    .iter()
                    .map(|&(to, p)| match to {
                        To::State(t) => p * x[t as usize],
                        To::Conversion => p,
                        To::Null => 0.0,
                    })
                    .sum();
                moved = moved.max((next - x[s]).abs());
                x[s] = next;
            }
            if moved <= TOLERANCE {
                return Ok(x);
            }
        }
        Err(MarkovError::NoConvergence)
    }
}

/// The removal effect of every channel of `paths` in the chain of `order` (1 to `ORDER_MAX`).
pub fn removal_effects(paths: &Paths, order: usize) -> Result<Markov, MarkovError> {
    let chain = build(paths, order.clamp(1, ORDER_MAX))?;
    let none = vec![false; chain.out.len()];
    let base = chain.conversion_probability(&none)?;
    let mut effects = vec![0.0; paths.channels.len()];
    if base > 0.0 {
        for (channel, effect) in effects.iter_mut().enumerate() {
            let removed: Vec<bool> =
                chain.channels.iter().map(|c| c.binary_search(&(channel as u16)).is_ok()).collect();
            if !removed.contains(&true) {
                continue;
            }
            let without = chain.conversion_probability(&removed)?;
            *effect = ((base - without) / base).clamp(0.0, 1.0);
        }
    }
    Ok(Markov { removal_effects: effects, conversion_probability: base, states: chain.out.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Paths {
        let mut paths = Paths::new(true);
        paths.push(&["a", "a", "b"], 1.0, 0.0, 1.0);
        paths.push(&["a"], 0.0, 0.0, 3.0);
        paths.push(&["b", "c"], 2.0, 0.0, 2.0);
        paths.push(&["c", "a", "b"], 1.0, 0.0, 1.0);
        paths
    }

    #[test]
    fn the_toy_chain_has_its_exact_removal_effects() {
        let markov = removal_effects(&toy(), 1).unwrap();
        // First order: the chance of converting is the share of converting journeys.
        assert!((markov.conversion_probability - 4.0 / 11.0).abs() < 1e-12);
        for (got, want) in markov.removal_effects.iter().zip([5.0 / 12.0, 5.0 / 6.0, 4.0 / 7.0]) {
            assert!((got - want).abs() < 1e-12, "{:?}", markov.removal_effects);
        }
        let credit: Vec<f64> = markov.credit(&toy()).iter().map(|c| c.conversions).collect();
        for (got, want) in credit.iter().zip([0.9150, 1.8301, 1.2549]) {
            assert!((got - want).abs() < 1e-4, "{credit:?}");
        }
    }

    #[test]
    fn sweeps_agree_with_elimination() {
        let chain = build(&toy(), 2).unwrap();
        let removed = vec![false; chain.out.len()];
        let (dense, sweeps) = (chain.solve_dense(&removed), chain.solve_sweeps(&removed).unwrap());
        for (d, s) in dense.iter().zip(&sweeps) {
            assert!((d - s).abs() < 1e-12, "{dense:?} {sweeps:?}");
        }
    }
}
