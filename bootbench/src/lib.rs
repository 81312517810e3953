//! What bootbench and `cargo xtask bench` share: the statistics of a series of timed
//! runs and the stop rule of the density bench (a series whose median passes a limit
//! ends its toolstack's climb), so dom0 and the host judge a series the same way.

/// Nearest-rank percentile of `values` (`pct` in 0..=100); `None` for no values.
pub fn percentile(values: &[f64], pct: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    // Rank 1..=len; the casts are of small, non-negative values.
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// The median (nearest rank: of an even count, the lower middle value).
pub fn median(values: &[f64]) -> Option<f64> {
    percentile(values, 50.0)
}

/// The density bench's stop rule: a toolstack adds no more guests once the median of
/// a series it timed is above `limit_ms` (with 5 s per create, 100 more guests would
/// take longer than the rest of the run). An empty series passes nothing.
pub fn passes_limit(millis: &[f64], limit_ms: f64) -> bool {
    median(millis).is_some_and(|median| median > limit_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(5.0));
        assert_eq!(percentile(&values, 90.0), Some(9.0));
        assert_eq!(percentile(&values, 100.0), Some(10.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(1.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn the_stop_rule_judges_the_median() {
        // One slow run among fast ones does not stop a toolstack; a slow median does.
        assert!(!passes_limit(&[900.0, 950.0, 9000.0], 5000.0));
        assert!(passes_limit(&[5200.0, 4000.0, 6000.0], 5000.0));
        // At the limit is not past it.
        assert!(!passes_limit(&[5000.0], 5000.0));
        assert!(!passes_limit(&[], 0.0));
    }
}
