//! The soak's measurements over time: memory (to show it stays flat) and replica lag.

use std::time::Duration;

use serde_json::{Value as Json, json};

/// One sample, taken every 500 ms.
pub(crate) struct Sample {
    /// Since the writers started.
    pub(crate) at: Duration,
    /// Resident memory of the soak process (writers, publisher, local replica).
    pub(crate) rss_kb: u64,
    /// Of which SQLite's heap (page caches, schemas, statements of every connection), which
    /// grows with the files up to each connection's cache size.
    pub(crate) sqlite_kb: u64,
    /// Resident memory of the follower processes, summed.
    pub(crate) followers_rss_kb: u64,
    /// Per replica (local, follower-a, follower-b): how old the oldest entry it has not yet
    /// applied is, in milliseconds (0 when it has everything).
    pub(crate) lag_ms: Vec<u64>,
    /// Whether a fault was being injected or recovered from.
    pub(crate) in_fault: bool,
}

/// Every sample of a run.
#[derive(Default)]
pub(crate) struct Samples(Vec<Sample>);

impl Samples {
    pub(crate) fn push(&mut self, sample: Sample) {
        self.0.push(sample);
    }

    /// Peak memory, and the peak of each tenth of the run: flat means no growth from the first
    /// tenths to the last. The same for SQLite's heap and for the rest of the process (RSS
    /// less SQLite's heap): SQLite's page caches fill up to their limit as the files grow, so
    /// growth that stops there is a plateau, not a leak.
    pub(crate) fn rss(&self) -> Json {
        let peak = |f: fn(&Sample) -> u64| self.0.iter().map(f).max().unwrap_or(0);
        let tenths = |f: fn(&Sample) -> u64| -> Vec<u64> {
            self.0
                .chunks(self.0.len().div_ceil(10).max(1))
                .map(|chunk| chunk.iter().map(f).max().unwrap_or(0))
                .collect()
        };
        // Growth: the last tenth's peak over the second tenth's (the first includes start-up).
        let growth = |tenths: &[u64]| match (tenths.get(1), tenths.last()) {
            (Some(&early), Some(&late)) if early > 0 => {
                ((late as f64 / early as f64 - 1.0) * 1000.0).round() / 10.0
            }
            _ => 0.0,
        };
        let rss = tenths(|s| s.rss_kb);
        let sqlite = tenths(|s| s.sqlite_kb);
        let rest = tenths(|s| s.rss_kb.saturating_sub(s.sqlite_kb));
        json!({
            "peak_kb": peak(|s| s.rss_kb),
            "followers_peak_kb": peak(|s| s.followers_rss_kb),
            "peak_kb_per_tenth": rss,
            "growth_second_to_last_tenth_pct": growth(&rss),
            "sqlite_heap_kb_per_tenth": sqlite,
            "rss_less_sqlite_heap_kb_per_tenth": rest,
            "rss_less_sqlite_heap_growth_pct": growth(&rest),
            "followers_peak_kb_per_tenth": tenths(|s| s.followers_rss_kb),
            "samples": self.0.len(),
        })
    }

    /// Lag percentiles, over the samples outside faults (steady state) and over all of them.
    pub(crate) fn lag(&self) -> Json {
        let lags = |steady: bool| -> Vec<u64> {
            let mut all: Vec<u64> = self
                .0
                .iter()
                .filter(|s| !(steady && s.in_fault))
                .flat_map(|s| s.lag_ms.iter().copied())
                .collect();
            all.sort_unstable();
            all
        };
        let (steady, all) = (lags(true), lags(false));
        json!({
            "p50_ms": percentile(&steady, 50),
            "p99_ms": percentile(&steady, 99),
            "max_ms": steady.last().copied().unwrap_or(0),
            "p99_ms_including_faults": percentile(&all, 99),
            "max_ms_including_faults": all.last().copied().unwrap_or(0),
            "last_sample_s": self.0.last().map_or(0.0, |s| s.at.as_secs_f64().round()),
        })
    }
}

/// The `p`th percentile (nearest rank) of sorted values.
fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// The resident set size of process `pid` in KiB (Linux), or `None`.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 99), 0);
    }
}
