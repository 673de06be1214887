//! The soak's measurements over time: memory (to show it stays flat) and replica lag.

use std::time::Duration;

use serde_json::{Value as Json, json};

/// One sample, taken every 500 ms.
pub(crate) struct Sample {
    /// Since the writers started.
    pub(crate) at: Duration,
    /// Resident memory of the soak process (writers, publisher, local replica).
    pub(crate) rss_kb: u64,
    /// Of which SQLite's heap (page caches, schemas, statements of every connection).
    pub(crate) sqlite_kb: u64,
    /// Of which the page caches (beyond each one's first pages), which grow with the files up
    /// to each connection's `cache_size` and then stay there.
    pub(crate) page_cache_kb: u64,
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
    /// tenths to the last. The same for SQLite's heap, its page caches, and the rest of the
    /// process (RSS less the page caches): the page caches fill up to their limit as the files
    /// grow, so growth that stops there is a plateau, not a leak; the rest must not grow.
    pub(crate) fn rss(&self) -> Json {
        let peak = |f: fn(&Sample) -> u64| self.0.iter().map(f).max().unwrap_or(0);
        let rss = self.tenths(|s| s.rss_kb);
        let rest = self.tenths(Sample::rss_less_page_cache_kb);
        json!({
            "peak_kb": peak(|s| s.rss_kb),
            "followers_peak_kb": peak(|s| s.followers_rss_kb),
            "peak_kb_per_tenth": rss,
            "growth_second_to_last_tenth_pct": growth(rss.get(1), rss.last()),
            "growth_second_half_pct": growth(rss.get(4), rss.last()),
            "sqlite_heap_kb_per_tenth": self.tenths(|s| s.sqlite_kb),
            "sqlite_page_cache_kb_per_tenth": self.tenths(|s| s.page_cache_kb),
            "rss_less_page_cache_kb_per_tenth": rest,
            "rss_less_page_cache_growth_pct": growth(rest.get(1), rest.last()),
            "rss_less_page_cache_growth_second_half_pct": growth(rest.get(4), rest.last()),
            "followers_peak_kb_per_tenth": self.tenths(|s| s.followers_rss_kb),
            "samples": self.0.len(),
        })
    }

    /// Why memory counts as growing, if it does: RSS less the page caches more than
    /// [`MAX_SECOND_HALF_GROWTH_PCT`] higher at the end than at the middle of the run. Only
    /// judged on runs of at least [`LEAK_CHECK_MIN`]: a shorter one is mostly start-up.
    pub(crate) fn growing(&self, duration: Duration) -> Option<String> {
        if duration < LEAK_CHECK_MIN {
            return None;
        }
        let rest = self.tenths(Sample::rss_less_page_cache_kb);
        let grew = growth(rest.get(4), rest.last());
        (grew > MAX_SECOND_HALF_GROWTH_PCT).then(|| {
            format!(
                "memory grows: RSS less SQLite's page caches rose {grew} % over the second half \
                 of the run (peaks per tenth, KiB: {rest:?})"
            )
        })
    }

    /// The peak of `f` in each tenth of the run (fewer values with fewer than ten samples).
    fn tenths(&self, f: fn(&Sample) -> u64) -> Vec<u64> {
        let n = self.0.len();
        (0..10)
            .filter_map(|tenth| {
                self.0[tenth * n / 10..(tenth + 1) * n / 10]
                    .iter()
                    .map(f)
                    .max()
            })
            .collect()
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

/// Runs at least this long are checked for memory growth.
pub(crate) const LEAK_CHECK_MIN: Duration = Duration::from_secs(10 * 60);

/// The most RSS less the page caches may grow from the middle of a run to its end, in percent.
/// A leak of even 100 bytes per transaction grows it by megabytes over a half hour of the soak's
/// tens of transactions per second; the allocator's own settling is well under this.
const MAX_SECOND_HALF_GROWTH_PCT: f64 = 10.0;

impl Sample {
    fn rss_less_page_cache_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.page_cache_kb)
    }
}

/// Growth from `early` to `late` in percent, to one decimal; 0 when either is missing or 0.
fn growth(early: Option<&u64>, late: Option<&u64>) -> f64 {
    match (early, late) {
        (Some(&early), Some(&late)) if early > 0 => {
            ((late as f64 / early as f64 - 1.0) * 1000.0).round() / 10.0
        }
        _ => 0.0,
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
    use std::time::Duration;

    use super::{LEAK_CHECK_MIN, Sample, Samples, percentile};

    /// A run of 100 samples whose RSS less page cache is `rest(i)` and whose page cache grows
    /// all along.
    fn run(rest: impl Fn(u64) -> u64) -> Samples {
        let mut samples = Samples::default();
        for i in 0..100 {
            let page_cache_kb = 100 * i;
            samples.push(Sample {
                at: Duration::from_secs(i),
                rss_kb: rest(i) + page_cache_kb,
                sqlite_kb: page_cache_kb + 500,
                page_cache_kb,
                followers_rss_kb: 0,
                lag_ms: Vec::new(),
                in_fault: false,
            });
        }
        samples
    }

    #[test]
    fn a_filling_page_cache_is_not_growth_but_the_rest_growing_is() {
        let plateau = run(|i| 10_000 + 30 * i.min(30));
        assert_eq!(plateau.growing(LEAK_CHECK_MIN), None);
        let leaking = run(|i| 10_000 + 30 * i);
        let why = leaking.growing(LEAK_CHECK_MIN).expect("a leak is found");
        assert!(why.contains("rose 13.1 %"), "{why}");
        // Too short a run to judge.
        assert_eq!(
            leaking.growing(LEAK_CHECK_MIN - Duration::from_secs(1)),
            None
        );
        let figures = leaking.rss();
        assert_eq!(figures["rss_less_page_cache_growth_second_half_pct"], 13.1);
        assert_eq!(figures["sqlite_page_cache_kb_per_tenth"][9], 9900);
    }

    #[test]
    fn tenths_are_ten_whatever_the_number_of_samples() {
        let mut samples = run(|_| 1000);
        samples.0.truncate(81);
        let tenths = samples.tenths(|s| s.page_cache_kb);
        assert_eq!(tenths.len(), 10);
        assert_eq!(tenths[0], 700, "samples 0..8");
        assert_eq!(tenths[9], 8000, "samples 72..81");
        samples.0.truncate(3);
        assert_eq!(samples.tenths(|s| s.page_cache_kb), [0, 100, 200]);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&values, 50), 50);
        assert_eq!(percentile(&values, 99), 99);
        assert_eq!(percentile(&[7], 99), 7);
        assert_eq!(percentile(&[], 99), 0);
    }
}
