//! The soak's measurements over time: memory (to show it stays flat) and replica lag.
//!
//! Samples are folded in as they are taken (peaks per tenth of the run, a count per lag value),
//! so that the soak's own bookkeeping stays the same size however long it runs: a list of every
//! sample would itself be memory growing with the run.

use std::collections::BTreeMap;
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
    pub(crate) lag_ms: [u64; 3],
    /// Whether a fault was being injected or recovered from.
    pub(crate) in_fault: bool,
}

impl Sample {
    fn rss_less_page_cache_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.page_cache_kb)
    }
}

/// The peaks of one quantity: over the run and per tenth of it.
#[derive(Default)]
struct Peaks {
    tenths: [Option<u64>; 10],
}

impl Peaks {
    fn add(&mut self, tenth: usize, value: u64) {
        let peak = &mut self.tenths[tenth];
        *peak = Some(peak.map_or(value, |p| p.max(value)));
    }

    /// The peak of each tenth that had a sample.
    fn per_tenth(&self) -> Vec<u64> {
        self.tenths.iter().flatten().copied().collect()
    }

    fn max(&self) -> u64 {
        self.tenths.iter().flatten().copied().max().unwrap_or(0)
    }
}

/// How many samples had each lag value, in milliseconds.
#[derive(Default)]
struct Histogram(BTreeMap<u64, u64>);

impl Histogram {
    fn add(&mut self, ms: u64) {
        *self.0.entry(ms).or_default() += 1;
    }

    fn merged(&self, other: &Histogram) -> Histogram {
        let mut sum = Histogram(self.0.clone());
        for (&ms, &n) in &other.0 {
            *sum.0.entry(ms).or_default() += n;
        }
        sum
    }

    /// The `p`th percentile (nearest rank), 0 with no values.
    fn percentile(&self, p: u64) -> u64 {
        let total: u64 = self.0.values().sum();
        if total == 0 {
            return 0;
        }
        let rank = (total * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (&ms, &n) in &self.0 {
            seen += n;
            if seen >= rank {
                return ms;
            }
        }
        0
    }

    fn max(&self) -> u64 {
        self.0.keys().next_back().copied().unwrap_or(0)
    }
}

/// Every sample of a run, folded in.
pub(crate) struct Samples {
    duration: Duration,
    count: u64,
    last_at: Duration,
    rss: Peaks,
    sqlite: Peaks,
    page_cache: Peaks,
    rest: Peaks,
    followers: Peaks,
    /// Lags outside faults (steady state), and during them.
    steady: Histogram,
    faulty: Histogram,
}

impl Samples {
    /// Samples of a run of `duration` (a sample taken later counts in the last tenth).
    pub(crate) fn new(duration: Duration) -> Samples {
        Samples {
            duration,
            count: 0,
            last_at: Duration::ZERO,
            rss: Peaks::default(),
            sqlite: Peaks::default(),
            page_cache: Peaks::default(),
            rest: Peaks::default(),
            followers: Peaks::default(),
            steady: Histogram::default(),
            faulty: Histogram::default(),
        }
    }

    pub(crate) fn push(&mut self, sample: Sample) {
        let tenth = if self.duration.is_zero() {
            9
        } else {
            usize::try_from(sample.at.as_nanos() * 10 / self.duration.as_nanos())
                .unwrap_or(9)
                .min(9)
        };
        self.count += 1;
        self.last_at = sample.at;
        self.rss.add(tenth, sample.rss_kb);
        self.sqlite.add(tenth, sample.sqlite_kb);
        self.page_cache.add(tenth, sample.page_cache_kb);
        self.rest.add(tenth, sample.rss_less_page_cache_kb());
        self.followers.add(tenth, sample.followers_rss_kb);
        let lags = if sample.in_fault {
            &mut self.faulty
        } else {
            &mut self.steady
        };
        for ms in sample.lag_ms {
            lags.add(ms);
        }
    }

    /// Peak memory, and the peak of each tenth of the run: flat means no growth from the first
    /// tenths to the last. The same for SQLite's heap, its page caches, and the rest of the
    /// process (RSS less the page caches): the page caches fill up to their limit as the files
    /// grow, so growth that stops there is a plateau, not a leak; the rest must not grow.
    pub(crate) fn rss(&self) -> Json {
        let rss = self.rss.per_tenth();
        let rest = self.rest.per_tenth();
        json!({
            "peak_kb": self.rss.max(),
            "followers_peak_kb": self.followers.max(),
            "peak_kb_per_tenth": rss,
            "growth_second_to_last_tenth_pct": growth(rss.get(1), rss.last()),
            "growth_second_half_pct": growth(rss.get(4), rss.last()),
            "sqlite_heap_kb_per_tenth": self.sqlite.per_tenth(),
            "sqlite_page_cache_kb_per_tenth": self.page_cache.per_tenth(),
            "rss_less_page_cache_kb_per_tenth": rest,
            "rss_less_page_cache_growth_pct": growth(rest.get(1), rest.last()),
            "rss_less_page_cache_growth_second_half_pct": growth(rest.get(4), rest.last()),
            "followers_peak_kb_per_tenth": self.followers.per_tenth(),
            "samples": self.count,
        })
    }

    /// Why memory counts as growing, if it does: RSS less the page caches more than
    /// [`MAX_SECOND_HALF_GROWTH_PCT`] higher at the end than at the middle of the run. Only
    /// judged on runs of at least [`LEAK_CHECK_MIN`]: a shorter one is mostly start-up.
    pub(crate) fn growing(&self) -> Option<String> {
        if self.duration < LEAK_CHECK_MIN {
            return None;
        }
        let rest = self.rest.per_tenth();
        let grew = growth(rest.get(4), rest.last());
        (grew > MAX_SECOND_HALF_GROWTH_PCT).then(|| {
            format!(
                "memory grows: RSS less SQLite's page caches rose {grew} % over the second half \
                 of the run (peaks per tenth, KiB: {rest:?})"
            )
        })
    }

    /// Lag percentiles, over the samples outside faults (steady state) and over all of them.
    pub(crate) fn lag(&self) -> Json {
        let all = self.steady.merged(&self.faulty);
        json!({
            "p50_ms": self.steady.percentile(50),
            "p99_ms": self.steady.percentile(99),
            "max_ms": self.steady.max(),
            "p99_ms_including_faults": all.percentile(99),
            "max_ms_including_faults": all.max(),
            "last_sample_s": self.last_at.as_secs_f64().round(),
        })
    }
}

/// Runs at least this long are checked for memory growth.
pub(crate) const LEAK_CHECK_MIN: Duration = Duration::from_secs(10 * 60);

/// The most RSS less the page caches may grow from the middle of a run to its end, in percent.
/// The soak records about 50 transactions a second: a leak of 100 bytes per transaction adds
/// about 4 MB over the second half of a 30-minute run, a quarter of the process; the allocator's
/// own settling is a few percent.
const MAX_SECOND_HALF_GROWTH_PCT: f64 = 10.0;

/// Growth from `early` to `late` in percent, to one decimal; 0 when either is missing or 0.
fn growth(early: Option<&u64>, late: Option<&u64>) -> f64 {
    match (early, late) {
        (Some(&early), Some(&late)) if early > 0 => {
            ((late as f64 / early as f64 - 1.0) * 1000.0).round() / 10.0
        }
        _ => 0.0,
    }
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

    use super::{Histogram, LEAK_CHECK_MIN, Sample, Samples};

    /// `n` samples, one a second over a run of `n` seconds (at least [`LEAK_CHECK_MIN`] when
    /// `long`), whose RSS less page cache is `rest(i)` and whose page cache grows all along.
    fn run(n: u64, long: bool, rest: impl Fn(u64) -> u64) -> Samples {
        let duration = if long {
            LEAK_CHECK_MIN.max(Duration::from_secs(n))
        } else {
            LEAK_CHECK_MIN - Duration::from_secs(1)
        };
        let step = duration / u32::try_from(n).unwrap();
        let mut samples = Samples::new(duration);
        for i in 0..n {
            let page_cache_kb = 100 * i;
            samples.push(Sample {
                at: step * u32::try_from(i).unwrap(),
                rss_kb: rest(i) + page_cache_kb,
                sqlite_kb: page_cache_kb + 500,
                page_cache_kb,
                followers_rss_kb: 0,
                lag_ms: [i, 0, 0],
                in_fault: i % 10 == 9,
            });
        }
        samples
    }

    #[test]
    fn a_filling_page_cache_is_not_growth_but_the_rest_growing_is() {
        let plateau = run(100, true, |i| 10_000 + 30 * i.min(30));
        assert_eq!(plateau.growing(), None);
        let leaking = run(100, true, |i| 10_000 + 30 * i);
        let why = leaking.growing().expect("a leak is found");
        assert!(why.contains("rose 13.1 %"), "{why}");
        // Too short a run to judge.
        assert_eq!(run(100, false, |i| 10_000 + 30 * i).growing(), None);
        let figures = leaking.rss();
        assert_eq!(figures["rss_less_page_cache_growth_second_half_pct"], 13.1);
        assert_eq!(figures["sqlite_page_cache_kb_per_tenth"][9], 9900);
        assert_eq!(figures["peak_kb"], 10_000 + 30 * 99 + 9900);
        assert_eq!(figures["samples"], 100);
    }

    #[test]
    fn tenths_are_ten_whatever_the_number_of_samples() {
        let tenths = |n| run(n, true, |_| 1000).page_cache.per_tenth();
        let eighty_one = tenths(81);
        assert_eq!(eighty_one.len(), 10);
        assert_eq!(eighty_one[0], 800, "samples 0..=8");
        assert_eq!(eighty_one[9], 8000, "samples 73..=80");
        assert_eq!(
            tenths(3),
            [0, 100, 200],
            "tenths without a sample are left out"
        );
    }

    #[test]
    fn lag_percentiles_apart_for_faults() {
        // Lags 0..100 (one sample each), the ones ending in 9 during faults, plus 200 zeros.
        let lag = run(100, true, |_| 1000).lag();
        assert_eq!(lag["p50_ms"], 0, "90 steady lags of 0..99 and 180 zeros");
        assert_eq!(lag["max_ms"], 98);
        assert_eq!(lag["max_ms_including_faults"], 99);
        assert_eq!(lag["p99_ms_including_faults"], 96);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut values = Histogram::default();
        for ms in 1..=100 {
            values.add(ms);
        }
        assert_eq!(values.percentile(50), 50);
        assert_eq!(values.percentile(99), 99);
        let mut one = Histogram::default();
        one.add(7);
        assert_eq!(one.percentile(99), 7);
        assert_eq!(Histogram::default().percentile(99), 0);
    }
}
