//! The percentiles of a bench's samples: one definition for every bench and example.
//!
//! A percentile is interpolated linearly between the two samples of nearest rank, so the 50th is
//! the median (the middle sample, or the mean of the two middle ones), the 0th the smallest and
//! the 100th the largest.

/// What a bench reports of one set of samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// How many samples.
    pub count: usize,
    /// The smallest.
    pub min: f64,
    /// The median.
    pub p50: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Summary {
    /// The summary of `samples` (in any order). Panics when there are none, or one is NaN: a
    /// bench that measured nothing has nothing to report.
    pub fn of(samples: &[f64]) -> Summary {
        let sorted = sorted(samples);
        Summary {
            count: sorted.len(),
            min: sorted[0],
            p50: of_sorted(&sorted, 0.5),
            p99: of_sorted(&sorted, 0.99),
            max: sorted[sorted.len() - 1],
        }
    }
}

/// The `q`-th quantile (`q` from 0 to 1; 0.99 is the 99th percentile) of `samples`, in any
/// order. Panics when there are none, one is NaN, or `q` is outside 0..=1.
pub fn percentile(samples: &[f64], q: f64) -> f64 {
    of_sorted(&sorted(samples), q)
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    assert!(!samples.is_empty(), "no samples to take a percentile of");
    assert!(
        samples.iter().all(|s| !s.is_nan()),
        "a sample is NaN: {samples:?}"
    );
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

fn of_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!((0.0..=1.0).contains(&q), "the quantile {q} is not in 0..=1");
    let rank = q * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_sample() {
        assert_eq!(
            percentile(&[9.0, 1.0, 5.0], 0.5),
            5.0,
            "the median of 1, 5, 9 is not 5"
        );
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_two_middle_samples() {
        assert_eq!(
            percentile(&[4.0, 1.0, 2.0, 3.0], 0.5),
            2.5,
            "the median of 1, 2, 3, 4 is not 2.5"
        );
    }

    #[test]
    fn the_extreme_quantiles_are_the_smallest_and_the_largest_sample() {
        let samples = [3.0, 7.0, 1.0, 8.0];
        assert_eq!(percentile(&samples, 0.0), 1.0, "the 0th is not the minimum");
        assert_eq!(
            percentile(&samples, 1.0),
            8.0,
            "the 100th is not the maximum"
        );
    }

    #[test]
    fn the_99th_percentile_lies_between_the_two_samples_of_nearest_rank() {
        let samples: Vec<f64> = (1..=101).map(f64::from).collect();
        assert_eq!(
            percentile(&samples, 0.99),
            100.0,
            "the 99th percentile of 1..=101 is not 100"
        );
        let p99 = percentile(&[0.0, 10.0], 0.99);
        assert!(
            (p99 - 9.9).abs() < 1e-9,
            "the 99th percentile of 0 and 10 is {p99}, not 9.9"
        );
    }

    #[test]
    fn a_summary_reports_the_count_the_extremes_and_the_percentiles() {
        let summary = Summary::of(&[2.0, 1.0, 3.0]);
        assert_eq!(
            summary,
            Summary {
                count: 3,
                min: 1.0,
                p50: 2.0,
                p99: percentile(&[1.0, 2.0, 3.0], 0.99),
                max: 3.0,
            },
            "the summary of 1, 2, 3 is wrong"
        );
    }

    #[test]
    #[should_panic(expected = "no samples")]
    fn a_percentile_of_no_samples_is_refused() {
        percentile(&[], 0.5);
    }
}
