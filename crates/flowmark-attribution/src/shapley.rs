//! The simplified Shapley value (Zhao, Mahboobi and Bagheri, 2018): with the worth of a
//! coalition S of channels taken as the conversions of the journeys whose channel set lies
//! within S, each channel's Shapley value is `Σ_{T ∋ i} R(T) / |T|`, where R(T) is what the
//! journeys whose channel set is exactly T brought. Exact, and linear in the number of
//! distinct channel sets (never `2^n` coalitions); order and repetition within a path do not
//! matter.
//!
//! Invariant: the values sum to the total conversions and value (efficiency), and a channel
//! on no converting path gets nothing.

use std::collections::HashMap;

use crate::{Credit, Paths};

pub fn simplified(paths: &Paths) -> Vec<Credit> {
    let mut by_set: HashMap<Vec<u16>, Credit> = HashMap::new();
    for row in &paths.rows {
        if row.conversions == 0.0 && row.value == 0.0 {
            continue;
        }
        let mut set = row.touches.clone();
        set.sort_unstable();
        set.dedup();
        by_set.entry(set).or_default().add(1.0, row);
    }
    let mut credit = vec![Credit::default(); paths.channels.len()];
    // In a fixed order, so the sums are the same on every run.
    let mut sets: Vec<(Vec<u16>, Credit)> = by_set.into_iter().collect();
    sets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (set, worth) in sets {
        let share = 1.0 / set.len() as f64;
        for channel in set {
            let credit = &mut credit[usize::from(channel)];
            credit.conversions += worth.conversions * share;
            credit.value += worth.value * share;
        }
    }
    credit
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapley's definition, over every coalition: `Σ_S |S|!(n−|S|−1)!/n! (v(S ∪ {i}) − v(S))`
    /// with `v(S)` the conversions of the paths whose channel set lies within `S`.
    fn brute_force(paths: &Paths) -> Vec<f64> {
        let n = paths.channels.len();
        let sets: Vec<(u32, f64)> = paths
            .rows
            .iter()
            .map(|row| (row.touches.iter().fold(0u32, |m, &c| m | (1 << c)), row.conversions))
            .collect();
        let worth = |coalition: u32| -> f64 {
            sets.iter().filter(|(set, _)| set & !coalition == 0).map(|(_, conversions)| conversions).sum()
        };
        let factorial = |k: usize| (1..=k).map(|x| x as f64).product::<f64>();
        (0..n)
            .map(|i| {
                (0u32..1 << n)
                    .filter(|s| s & (1 << i) == 0)
                    .map(|s| {
                        let size = s.count_ones() as usize;
                        factorial(size) * factorial(n - size - 1) / factorial(n) * (worth(s | (1 << i)) - worth(s))
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn equals_the_shapley_value_over_every_coalition() {
        let mut paths = Paths::new(false);
        paths.push(&["a", "b"], 1.0, 0.0, 0.0);
        paths.push(&["a"], 0.0, 0.0, 0.0);
        paths.push(&["b", "c", "b"], 2.0, 0.0, 0.0);
        paths.push(&["c", "a", "b"], 1.0, 0.0, 0.0);
        let simplified: Vec<f64> = simplified(&paths).iter().map(|c| c.conversions).collect();
        let expected = [0.8333333333333334, 1.8333333333333335, 1.3333333333333333];
        for ((ours, brute), reference) in simplified.iter().zip(brute_force(&paths)).zip(expected) {
            assert!((ours - brute).abs() < 1e-12 && (ours - reference).abs() < 1e-12, "{simplified:?}");
        }
    }

    proptest::proptest! {
        // Each case sums over 4 096 coalitions per channel: a few dozen cases cover it.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]
        #[test]
        fn equals_brute_force_on_random_paths_of_up_to_12_channels(
            rows in proptest::collection::vec(
                (proptest::collection::vec(0u16..12, 1..6), 0u32..5), 1..40,
            ),
        ) {
            let mut paths = Paths::new(false);
            let names: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
            for (touches, conversions) in &rows {
                let touches: Vec<&str> = touches.iter().map(|&t| names[usize::from(t)].as_str()).collect();
                paths.push(&touches, f64::from(*conversions), 0.0, 0.0);
            }
            let ours: Vec<f64> = simplified(&paths).iter().map(|c| c.conversions).collect();
            let total: f64 = paths.rows.iter().map(|r| r.conversions).sum();
            proptest::prop_assert!((ours.iter().sum::<f64>() - total).abs() < 1e-9, "efficiency");
            for (a, b) in ours.iter().zip(brute_force(&paths)) {
                proptest::prop_assert!((a - b).abs() < 1e-9, "{ours:?}");
            }
        }
    }
}
