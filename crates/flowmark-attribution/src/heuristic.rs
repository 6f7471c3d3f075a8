//! The rule-based models: each path's conversions and value are shared among its touches by
//! a fixed rule.
//!
//! - first touch: all to the first; last touch: all to the last;
//! - linear: equally per touch, so a channel earns its share of the touches
//!   (`a > a > b`: a 2/3, b 1/3 — ChannelAttribution's definition);
//! - position-based (U-shaped): 40 % to the first touch, 40 % to the last, 20 % spread evenly
//!   over those between; one touch takes everything, two take half each;
//! - time decay: each touch weighs `2^(−Δt / half-life)` (Δt: from the touch to the
//!   conversion), normalised per conversion; on timed paths only ([`TimedPath`]).
//!
//! Invariant: each path's shares sum to 1, so each model credits exactly the totals.

use flowmark_core::{Duration, Timestamp};

use crate::{Credit, PathRow, Paths};

/// Credit per channel (indexed like `Paths::channels`) from each row's shares.
fn shared(paths: &Paths, mut shares: impl FnMut(&PathRow, &mut dyn FnMut(u16, f64))) -> Vec<Credit> {
    let mut credit = vec![Credit::default(); paths.channels.len()];
    for row in &paths.rows {
        if row.conversions == 0.0 && row.value == 0.0 {
            continue;
        }
        shares(row, &mut |channel, share| credit[usize::from(channel)].add(share, row));
    }
    credit
}

pub fn first_touch(paths: &Paths) -> Vec<Credit> {
    shared(paths, |row, give| {
        if let Some(&first) = row.touches.first() {
            give(first, 1.0);
        }
    })
}

pub fn last_touch(paths: &Paths) -> Vec<Credit> {
    shared(paths, |row, give| {
        if let Some(&last) = row.touches.last() {
            give(last, 1.0);
        }
    })
}

pub fn linear(paths: &Paths) -> Vec<Credit> {
    shared(paths, |row, give| {
        let share = 1.0 / row.touches.len() as f64;
        for &touch in &row.touches {
            give(touch, share);
        }
    })
}

/// The share of the first and of the last touch under the position-based model.
pub const POSITION_END_SHARE: f64 = 0.4;

pub fn position_based(paths: &Paths) -> Vec<Credit> {
    shared(paths, |row, give| match row.touches.as_slice() {
        [] => {}
        [only] => give(*only, 1.0),
        [first, last] => {
            give(*first, 0.5);
            give(*last, 0.5);
        }
        [first, middle @ .., last] => {
            give(*first, POSITION_END_SHARE);
            give(*last, POSITION_END_SHARE);
            let each = (1.0 - 2.0 * POSITION_END_SHARE) / middle.len() as f64;
            for &touch in middle {
                give(touch, each);
            }
        }
    })
}

/// The default half-life of the time-decay model: a week, as Google Ads defines it.
pub const TIME_DECAY_HALF_LIFE: Duration = Duration(7 * 24 * 60 * 60 * 1000);

/// A path whose touches have times, ending in one conversion of `value` at `converted_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedPath {
    /// `(channel, when)`, in order.
    pub touches: Vec<(u16, Timestamp)>,
    pub converted_at: Timestamp,
    pub value: f64,
}

/// Time decay over timed paths (one conversion each), for `channels` channels.
pub fn time_decay(channels: usize, paths: &[TimedPath], half_life: Duration) -> Vec<Credit> {
    let mut credit = vec![Credit::default(); channels];
    let half_life_ms = half_life.0.max(1) as f64;
    for path in paths {
        let weights: Vec<f64> = path
            .touches
            .iter()
            .map(|(_, at)| {
                let age_ms = (path.converted_at.ms() - at.ms()).max(0) as f64;
                (-age_ms / half_life_ms).exp2()
            })
            .collect();
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            continue;
        }
        for ((channel, _), weight) in path.touches.iter().zip(weights) {
            let share = weight / total;
            let credit = &mut credit[usize::from(*channel)];
            credit.conversions += share;
            credit.value += share * path.value;
        }
    }
    credit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Paths {
        // ChannelAttribution's toy: a > a > b (1 conversion), a (0), b > c (2), c > a > b (1).
        let mut paths = Paths::new(true);
        paths.push(&["a", "a", "b"], 1.0, 10.0, 1.0);
        paths.push(&["a"], 0.0, 0.0, 3.0);
        paths.push(&["b", "c"], 2.0, 20.0, 2.0);
        paths.push(&["c", "a", "b"], 1.0, 5.0, 1.0);
        paths
    }

    #[test]
    fn linear_is_occurrence_weighted_as_channel_attribution_defines_it() {
        let credit = linear(&toy());
        let conversions: Vec<f64> = credit.iter().map(|c| c.conversions).collect();
        for (got, want) in conversions.iter().zip([1.0, 5.0 / 3.0, 4.0 / 3.0]) {
            assert!((got - want).abs() < 1e-12, "{conversions:?}");
        }
    }

    #[test]
    fn position_based_splits_40_20_40_and_handles_short_paths() {
        let mut paths = Paths::new(false);
        paths.push(&["a"], 1.0, 0.0, 0.0);
        paths.push(&["a", "b"], 1.0, 0.0, 0.0);
        paths.push(&["a", "b", "c", "d", "e"], 1.0, 0.0, 0.0);
        let credit = position_based(&paths);
        let got: Vec<f64> = credit.iter().map(|c| c.conversions).collect();
        let want = [1.0 + 0.5 + 0.4, 0.5 + 0.2 / 3.0, 0.2 / 3.0, 0.2 / 3.0, 0.4];
        for (got, want) in got.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
        let total: f64 = got.iter().sum();
        assert!((total - 3.0).abs() < 1e-12);
    }

    #[test]
    fn time_decay_halves_a_touch_per_half_life() {
        let day = 24 * 60 * 60 * 1000;
        let path = TimedPath {
            touches: vec![(0, Timestamp(0)), (1, Timestamp(7 * day))],
            converted_at: Timestamp(7 * day),
            value: 30.0,
        };
        let credit = time_decay(2, &[path], TIME_DECAY_HALF_LIFE);
        assert!((credit[0].conversions - 1.0 / 3.0).abs() < 1e-12);
        assert!((credit[1].conversions - 2.0 / 3.0).abs() < 1e-12);
        assert!((credit[1].value - 20.0).abs() < 1e-9);
    }
}
