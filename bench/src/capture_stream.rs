//! The `capture_stream` workload: the memory a capture needs to hand over its changes, kept in
//! memory (`Capture::changeset`) against written to a writer as SQLite generates them
//! (`Capture::changeset_to`), on one capture of about `--mb` megabytes (default 200) of
//! inserts.
//!
//! The figure is the process's peak resident memory while the capture finishes, above what it
//! held when the closure's writes were done (`extra_peak_mb`): the peak is reset then (Linux
//! `/proc/self/clear_refs`) and read back after the capture returns, with its result still
//! alive. Both variants run in this process, one after the other, on fresh databases; the
//! session object's own record of the changed rows is in the baseline of both.

use std::io::Write;

use liteorm_changeset::{Capture, Error};
use liteorm_core::Session;
use liteorm_sqlite::SqliteSession;

use crate::common::{BenchResult, CREATE_TABLE, Common, Line};
use crate::lite::LiteDb;

/// Bytes of one inserted row in the changeset, about (a 200-byte text and four small fields).
const ROW_BYTES: i64 = 250;

/// A writer that only counts.
struct Counting(u64);

impl Write for Counting {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `VmRSS` or `VmHWM` of this process, in bytes.
fn status_kb(field: &str) -> BenchResult<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| format!("no {field} in /proc/self/status"))?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed status line")?
        .parse()?;
    Ok(kb * 1024)
}

/// Resets the peak resident memory to the current one; returns the current one.
fn reset_peak() -> BenchResult<u64> {
    std::fs::write("/proc/self/clear_refs", "5")?;
    status_kb("VmRSS:")
}

/// The writes: `rows` inserts with a 200-byte text each, in one statement.
fn inserts(rows: i64) -> String {
    format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows}) \
         INSERT INTO t SELECT i, printf('%.200c', 'x'), i, i * 0.5, randomblob(16) FROM n"
    )
}

/// One capture; returns the changeset's size and the extra peak while it finished.
async fn once(common: &Common, rows: i64, stream: bool) -> BenchResult<(u64, u64)> {
    let db = LiteDb::open(common.db).await?;
    db.session.execute_batch(CREATE_TABLE).await?;
    let baseline = std::sync::Arc::new(std::sync::Mutex::new(0u64));
    let mark = std::sync::Arc::clone(&baseline);
    let work = move |s: SqliteSession| async move {
        s.execute_batch(&inserts(rows)).await?;
        *mark.lock().unwrap_or_else(|p| p.into_inner()) =
            reset_peak().map_err(|e| Error::Misuse(Box::leak(e.to_string().into_boxed_str())))?;
        Ok::<_, Error>(())
    };
    let capture = Capture::new(&db.session).tables(["t"]);
    let (bytes, peak) = if stream {
        let written = capture.changeset_to(Counting(0), work).await?;
        (written.0, status_kb("VmHWM:")?)
    } else {
        let changes = capture.changeset(work).await?;
        let peak = status_kb("VmHWM:")?;
        (changes.len() as u64, peak)
    };
    let baseline = *baseline.lock().unwrap_or_else(|p| p.into_inner());
    db.close().await;
    Ok((bytes, peak.saturating_sub(baseline)))
}

pub(crate) fn run(rt: &tokio::runtime::Runtime, common: &Common, mb: i64) -> BenchResult<()> {
    let rows = mb * 1024 * 1024 / ROW_BYTES;
    let mut extra = Vec::new();
    for (name, stream) in [("in_memory", false), ("stream", true)] {
        let (bytes, peak) = rt.block_on(once(common, rows, stream))?;
        let mut line = Line::new("capture_stream", name, common);
        line.int("rows", rows as u64)
            .num("changeset_mb", bytes as f64 / 1048576.0, 1)
            .num("extra_peak_mb", peak as f64 / 1048576.0, 1);
        line.print();
        extra.push(peak as f64);
    }
    let mut line = Line::new("capture_stream", "ratio", common);
    line.ratio("extra_peak_stream_over_in_memory", extra[1] / extra[0]);
    line.print();
    Ok(())
}
