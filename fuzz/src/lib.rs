//! Shared code of liteorm's fuzz targets: the check each target runs on one input, the schema the
//! committed corpus was captured on, and the real in-memory database that `apply` applies to.
//!
//! A check panics when it finds something wrong, which libFuzzer reports as a crash. Inputs that
//! the library rejects are fine, as long as rejecting them neither hangs nor crashes; inputs that
//! it accepts must then behave: decode, invert, concatenate and apply without hanging, crashing or
//! producing bytes that would not pass validation themselves.

#![forbid(unsafe_code)]

pub mod log_row;
pub mod nats_message;

use std::io::Read;

use liteorm_changeset::{
    Apply, Change, ChangeOp, Changegroup, Changeset, ConflictAction, ConflictKind, Patchset,
    RebaseBuffer, Rebaser, apply, stream,
};
use liteorm_core::{Session, Value};
use liteorm_sqlite::{PinnedConnection, SqliteSession};

/// The schema of the seed changesets and of the `apply` target's database: rowid and WITHOUT
/// ROWID tables, single and composite keys (one declared out of column order), every affinity,
/// NOT NULL / UNIQUE / CHECK constraints, a cascading foreign key (whose deletes are recorded
/// as indirect changes), and a table without a primary key (which captures skip, but a blob
/// can name).
pub const SCHEMA: &str = "
    CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, data BLOB);
    CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
    CREATE TABLE pair(a INTEGER, b TEXT, note, PRIMARY KEY(b, a));
    CREATE TABLE wide(x BLOB, y REAL, z, w INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(y, x))
        WITHOUT ROWID;
    CREATE TABLE many(c0 INTEGER PRIMARY KEY, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12,
        c13, c14, c15, c16, c17, c18, c19);
    CREATE TABLE parent(id INTEGER PRIMARY KEY, label TEXT NOT NULL UNIQUE);
    CREATE TABLE child(id INTEGER PRIMARY KEY,
        parent_id INTEGER REFERENCES parent(id) ON DELETE CASCADE,
        qty INTEGER CHECK (qty >= 0), note TEXT NOT NULL);
    CREATE TABLE nopk(a, b);
";

/// The rows every seed capture starts from, and that the `apply` target applies onto.
pub const BASE_ROWS: &str = "
    INSERT INTO t VALUES (1, 'one', 1.5, x'01'), (2, 'two', NULL, x''), (3, '', -0.0, NULL),
        (4, 'four', 1e308, x'00ff');
    INSERT INTO kv VALUES ('a', 1), ('b', 'text'), ('c', x'beef'), ('', NULL), ('é', 2.5);
    INSERT INTO pair VALUES (1, 'x', 'n1'), (2, 'x', NULL), (1, 'y', 3);
    INSERT INTO wide VALUES (x'00', 0.5, 'z', 9223372036854775807),
        (x'', -1.0, NULL, -9223372036854775808);
    INSERT INTO many(c0, c1, c19) VALUES (1, 'first', 'last'), (2, 2, 2.0);
    INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
    INSERT INTO child VALUES (1, 1, 5, 'c1'), (2, 2, 0, 'c2');
    INSERT INTO nopk VALUES (1, 'x');
";

/// Values compare equal when they are the same value of the same type (reals by their bits, so
/// that a NaN equals itself and -0.0 differs from 0.0).
pub fn same_value(a: &Option<Value>, b: &Option<Value>) -> bool {
    match (a, b) {
        (Some(Value::Real(x)), Some(Value::Real(y))) => x.to_bits() == y.to_bits(),
        _ => a == b,
    }
}

fn same_values(a: &[Option<Value>], b: &[Option<Value>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y))
}

/// What the `Change` API promises about every decoded change, whatever the input.
fn check_shape(change: &Change) {
    let n = change.column_count();
    assert!(n > 0, "a change of a table without columns: {change:?}");
    assert!(!change.table.is_empty(), "a change without a table name");
    let expected = match change.op {
        ChangeOp::Insert => (0, n),
        ChangeOp::Delete => (n, 0),
        ChangeOp::Update => (n, n),
    };
    assert_eq!(
        (change.old.len(), change.new.len()),
        expected,
        "old/new lengths do not match the op: {change:?}"
    );
    let keys = change.pk.iter().filter(|&&p| p != 0).count();
    assert_eq!(change.primary_key().len(), keys, "{change:?}");
}

/// `validate`: both kinds of `from_bytes`, `validate` and `changes()` on one input.
pub fn check_validate(data: &[u8]) {
    let as_changeset = Changeset::from_bytes(data);
    let as_patchset = Patchset::from_bytes(data);
    if !data.is_empty() {
        assert!(
            as_changeset.is_err() || as_patchset.is_err(),
            "non-empty bytes are both a changeset and a patchset"
        );
    }
    match as_changeset {
        Ok(cs) => {
            assert_eq!(cs.as_bytes(), data);
            let count = Changeset::validate(data).expect("validate agrees with from_bytes");
            let changes = cs.changes().expect("a validated changeset decodes");
            assert_eq!(changes.len(), count);
            changes.iter().for_each(check_shape);
        }
        Err(err) => {
            // The message is built from the input (offsets, reasons): render it.
            assert!(!err.to_string().is_empty());
            assert!(Changeset::validate(data).is_err());
        }
    }
    match as_patchset {
        Ok(ps) => {
            let count = Patchset::validate(data).expect("validate agrees with from_bytes");
            let changes = ps.changes().expect("a validated patchset decodes");
            assert_eq!(changes.len(), count);
            changes.iter().for_each(check_shape);
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            assert!(Patchset::validate(data).is_err());
        }
    }
}

/// `invert`: a validated changeset inverts; the inverse is well-formed, has the same changes with
/// swapped ops and sides, and inverting SQLite's own output is an involution, byte for byte.
pub fn check_invert(data: &[u8]) {
    let Ok(cs) = Changeset::from_bytes(data) else {
        return;
    };
    let changes = cs.changes().expect("a validated changeset decodes");
    let inverse = cs
        .invert()
        .unwrap_or_else(|err| panic!("a validated changeset does not invert: {err}"));
    let count = Changeset::validate(inverse.as_bytes())
        .unwrap_or_else(|err| panic!("SQLite's inverse is not a valid changeset: {err}"));
    assert_eq!(
        count,
        changes.len(),
        "inverting changed the number of changes"
    );
    let inverted = inverse.changes().expect("a validated changeset decodes");
    for (orig, inv) in changes.iter().zip(&inverted) {
        check_shape(inv);
        assert_eq!(
            (&orig.table, &orig.pk, orig.indirect),
            (&inv.table, &inv.pk, inv.indirect)
        );
        match orig.op {
            ChangeOp::Insert => {
                assert_eq!(inv.op, ChangeOp::Delete);
                assert!(same_values(&inv.old, &orig.new), "{orig:?} -> {inv:?}");
            }
            ChangeOp::Delete => {
                assert_eq!(inv.op, ChangeOp::Insert);
                assert!(same_values(&inv.new, &orig.old), "{orig:?} -> {inv:?}");
            }
            ChangeOp::Update => {
                assert_eq!(inv.op, ChangeOp::Update);
                for (i, &pk) in orig.pk.iter().enumerate() {
                    if pk != 0 {
                        // Key columns: the same old values, no new ones.
                        assert!(same_value(&inv.old[i], &orig.old[i]), "{orig:?} -> {inv:?}");
                        assert!(inv.new[i].is_none(), "{orig:?} -> {inv:?}");
                    } else if orig.new[i].is_some() {
                        // Changed columns swap sides.
                        assert!(same_value(&inv.new[i], &orig.old[i]), "{orig:?} -> {inv:?}");
                        if inv.new[i].is_some() {
                            assert!(same_value(&inv.old[i], &orig.new[i]), "{orig:?} -> {inv:?}");
                        }
                    }
                }
            }
        }
    }
    let twice = inverse.invert().expect("an inverse inverts");
    let thrice = twice.invert().expect("an inverse inverts");
    assert_eq!(
        thrice.as_bytes(),
        inverse.as_bytes(),
        "inverting SQLite's own output is not an involution"
    );
}

/// The `concat` input format: byte 0's low bit picks patchsets (1) or changesets (0); bytes 1..3
/// are a little-endian `u16` that, modulo the length of the rest plus one, is where the rest is
/// split into the two halves.
pub fn split_pair(data: &[u8]) -> Option<(bool, &[u8], &[u8])> {
    let (&flags, rest) = data.split_first()?;
    let (at, rest) = rest.split_first_chunk::<2>()?;
    let at = usize::from(u16::from_le_bytes(*at)) % (rest.len() + 1);
    let (a, b) = rest.split_at(at);
    Some((flags & 1 == 1, a, b))
}

/// Builds a `concat` input from two halves (the inverse of [`split_pair`]).
pub fn join_pair(patchset: bool, a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let at = u16::try_from(a.len()).ok()?;
    let mut out = vec![u8::from(patchset)];
    out.extend_from_slice(&at.to_le_bytes());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    Some(out)
}

/// `concat`: two validated changesets (or patchsets) concatenate into a well-formed one with no
/// more changes than both, or fail with an error.
pub fn check_concat(data: &[u8]) {
    let Some((patchset, a, b)) = split_pair(data) else {
        return;
    };
    if patchset {
        let (Ok(a), Ok(b)) = (Patchset::from_bytes(a), Patchset::from_bytes(b)) else {
            return;
        };
        let most = a.changes().map_or(0, |c| c.len()) + b.changes().map_or(0, |c| c.len());
        match a.concat(&b) {
            Ok(both) => {
                let count = Patchset::validate(both.as_bytes())
                    .unwrap_or_else(|err| panic!("concat made an invalid patchset: {err}"));
                assert!(count <= most, "concat made {count} changes out of {most}");
                both.changes()
                    .expect("a validated patchset decodes")
                    .iter()
                    .for_each(check_shape);
            }
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    } else {
        let (Ok(a), Ok(b)) = (Changeset::from_bytes(a), Changeset::from_bytes(b)) else {
            return;
        };
        let most = a.changes().map_or(0, |c| c.len()) + b.changes().map_or(0, |c| c.len());
        match a.concat(&b) {
            Ok(both) => {
                let count = Changeset::validate(both.as_bytes())
                    .unwrap_or_else(|err| panic!("concat made an invalid changeset: {err}"));
                assert!(count <= most, "concat made {count} changes out of {most}");
                both.changes()
                    .expect("a validated changeset decodes")
                    .iter()
                    .for_each(check_shape);
                both.invert()
                    .unwrap_or_else(|err| panic!("a concatenation does not invert: {err}"));
            }
            Err(err) => assert!(!err.to_string().is_empty()),
        }
    }
}

/// `changegroup`: the two halves of a [`split_pair`] input (byte 0's bit 1 set: the second is
/// added with `add_filtered`, keeping the changes whose index has the parity of bit 2) merge
/// into a well-formed changeset (or patchset) with no more changes than both, or fail with an
/// error, after which the group refuses further use.
pub fn check_changegroup(data: &[u8]) {
    let Some((patchset, a, b)) = split_pair(data) else {
        return;
    };
    let filtered = data[0] & 2 != 0;
    let parity = usize::from(data[0] >> 2 & 1);
    if patchset {
        let (Ok(a), Ok(b)) = (Patchset::from_bytes(a), Patchset::from_bytes(b)) else {
            return;
        };
        group_of(&a, &b, filtered, parity, Patchset::validate);
    } else {
        let (Ok(a), Ok(b)) = (Changeset::from_bytes(a), Changeset::from_bytes(b)) else {
            return;
        };
        group_of(&a, &b, filtered, parity, Changeset::validate);
    }
}

fn group_of<C>(
    a: &C,
    b: &C,
    filtered: bool,
    parity: usize,
    validate: fn(&[u8]) -> liteorm_changeset::Result<usize>,
) where
    C: Counted,
    Changegroup<C>: Grouping<C>,
{
    let most = a.count() + b.count();
    let Ok(mut group) = <Changegroup<C> as Grouping<C>>::new_group() else {
        return;
    };
    let mut index = 0_usize;
    let added = group.add_one(a).and_then(|group| {
        if filtered {
            group.add_some(b, &mut |_| {
                index += 1;
                index % 2 == parity
            })
        } else {
            group.add_one(b)
        }
    });
    match added {
        Ok(group) => {
            let out = group
                .output_bytes()
                .expect("a group that took its inputs has output");
            let count = validate(&out)
                .unwrap_or_else(|err| panic!("the changegroup made invalid bytes: {err}"));
            assert!(
                count <= most,
                "the changegroup made {count} changes out of {most}"
            );
        }
        Err(err) => {
            assert!(!err.to_string().is_empty());
            assert!(
                group.output_bytes().is_err(),
                "a group is unusable after a failed add"
            );
        }
    }
}

/// Changesets and patchsets, for [`group_of`].
pub trait Counted {
    /// How many changes (0 if they do not decode).
    fn count(&self) -> usize;
}

impl Counted for Changeset {
    fn count(&self) -> usize {
        self.changes().map_or(0, |c| c.len())
    }
}

impl Counted for Patchset {
    fn count(&self) -> usize {
        self.changes().map_or(0, |c| c.len())
    }
}

/// The calls of [`Changegroup`] that [`group_of`] makes, for both kinds.
pub trait Grouping<C>: Sized {
    /// `new`.
    fn new_group() -> liteorm_changeset::Result<Self>;
    /// `add`.
    fn add_one(&mut self, changes: &C) -> liteorm_changeset::Result<&mut Self>;
    /// `add_filtered`.
    fn add_some(
        &mut self,
        changes: &C,
        keep: &mut dyn FnMut(&Change) -> bool,
    ) -> liteorm_changeset::Result<&mut Self>;
    /// `output`, as bytes.
    fn output_bytes(&self) -> liteorm_changeset::Result<Vec<u8>>;
}

impl Grouping<Changeset> for Changegroup<Changeset> {
    fn new_group() -> liteorm_changeset::Result<Self> {
        Changegroup::new()
    }
    fn add_one(&mut self, changes: &Changeset) -> liteorm_changeset::Result<&mut Self> {
        self.add(changes)
    }
    fn add_some(
        &mut self,
        changes: &Changeset,
        keep: &mut dyn FnMut(&Change) -> bool,
    ) -> liteorm_changeset::Result<&mut Self> {
        self.add_filtered(changes, keep)
    }
    fn output_bytes(&self) -> liteorm_changeset::Result<Vec<u8>> {
        self.output().map(|c| c.as_bytes().to_vec())
    }
}

impl Grouping<Patchset> for Changegroup<Patchset> {
    fn new_group() -> liteorm_changeset::Result<Self> {
        Changegroup::new()
    }
    fn add_one(&mut self, changes: &Patchset) -> liteorm_changeset::Result<&mut Self> {
        self.add(changes)
    }
    fn add_some(
        &mut self,
        changes: &Patchset,
        keep: &mut dyn FnMut(&Change) -> bool,
    ) -> liteorm_changeset::Result<&mut Self> {
        self.add_filtered(changes, keep)
    }
    fn output_bytes(&self) -> liteorm_changeset::Result<Vec<u8>> {
        self.output().map(|c| c.as_bytes().to_vec())
    }
}

/// `rebase`: the two halves of a [`split_pair`] input are a rebase buffer and a local
/// changeset; if the buffer validates and configures a rebaser, rebasing the local changeset
/// either fails with an error or gives a valid changeset with no more changes. The same bytes,
/// valid or not, are also rebased as a stream read in chunks of `flags >> 1` bytes (0: 256):
/// untrusted stream input must fail cleanly, and a changeset that rebases must rebase over a
/// stream to the same bytes.
pub fn check_rebase(data: &[u8]) {
    let Some((_, buffer, local)) = split_pair(data) else {
        return;
    };
    let chunk = match data[0] >> 1 {
        0 => 256,
        n => usize::from(n),
    };
    let Ok(buffer) = RebaseBuffer::from_bytes(buffer) else {
        return;
    };
    let Ok(mut rebaser) = Rebaser::new() else {
        return;
    };
    if let Err(err) = rebaser.configure(&buffer) {
        assert!(!err.to_string().is_empty());
        return;
    }
    let blob = Changeset::from_bytes(local).map(|local| (rebaser.rebase(&local), local.count()));
    let streamed = rebaser.rebase_stream(Chunked::new(local, chunk), Vec::new());
    match (blob, streamed) {
        (Ok((Ok(rebased), count)), Ok(out)) => {
            let rebased_count = Changeset::validate(rebased.as_bytes())
                .unwrap_or_else(|err| panic!("rebase made an invalid changeset: {err}"));
            assert!(rebased_count <= count, "rebase added changes");
            assert_eq!(out, rebased.as_bytes(), "stream and blob rebase differ");
        }
        (Ok((Ok(_), _)), Err(err)) => panic!("a changeset that rebases does not over a stream: {err}"),
        (Ok((Err(err), _)), Ok(_)) => panic!("a stream rebases where its blob does not: {err}"),
        (Err(_), Ok(out)) => panic!("an invalid changeset rebased over a stream to {out:?}"),
        (Ok((Err(a), _)), Err(b)) => assert!(!a.to_string().is_empty() && !b.to_string().is_empty()),
        (Err(_), Err(err)) => assert!(!err.to_string().is_empty()),
    }
}

/// A reader that hands out at most `chunk` bytes per `read`, as a socket might.
pub struct Chunked {
    data: Vec<u8>,
    at: usize,
    chunk: usize,
}

impl Chunked {
    /// Reads `data` in pieces of at most `chunk` (at least 1) bytes.
    pub fn new(data: &[u8], chunk: usize) -> Self {
        Chunked {
            data: data.to_vec(),
            at: 0,
            chunk: chunk.max(1),
        }
    }
}

impl Read for Chunked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The `apply` target: a real in-memory database with [`SCHEMA`] and [`BASE_ROWS`], kept for the
/// whole fuzzing run with one current-thread runtime and one pinned connection. Each input is
/// applied inside a transaction that is rolled back afterwards, so every input sees the same
/// database.
pub struct ApplyTarget {
    runtime: tokio::runtime::Runtime,
    /// Holds the one connection every input runs on (skipping the pool's per-acquire ping).
    /// `None` only while dropping.
    pinned: Option<PinnedConnection>,
    session: SqliteSession,
}

impl ApplyTarget {
    /// Opens the database.
    ///
    /// # Panics
    /// If the runtime or the database cannot be set up (the fuzzer cannot run then).
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let (pinned, session) = runtime.block_on(async {
            let db = SqliteSession::open_in_memory()
                .await
                .expect("an in-memory database");
            db.execute_batch(SCHEMA).await.expect("the schema");
            db.execute_batch(BASE_ROWS).await.expect("the base rows");
            let pinned = db.pin().await.expect("a connection");
            let session = pinned.session();
            (pinned, session)
        });
        ApplyTarget {
            runtime,
            pinned: Some(pinned),
            session,
        }
    }

    /// Applies `data` if it is a valid changeset or patchset.
    pub fn check(&self, data: &[u8]) {
        if let Ok(cs) = Changeset::from_bytes(data) {
            let count = cs.changes().expect("a validated changeset decodes").len();
            self.apply_in_rolled_back_transaction(Some(count), |s| apply(s, &cs));
        } else if let Ok(ps) = Patchset::from_bytes(data) {
            let count = ps.changes().expect("a validated patchset decodes").len();
            self.apply_in_rolled_back_transaction(Some(count), |s| apply(s, &ps));
        }
    }

    /// The `stream` target: byte 0 picks the operation (0: apply, 1: invert, 2: concat of a
    /// [`split_pair`] input), byte 1 the most bytes each `read` returns (0: 256), the rest is
    /// the input, read through [`Chunked`]. Whatever the bytes, the streaming call ends in an
    /// error or a result; for input that `from_bytes` accepts, it agrees with the in-memory
    /// call.
    pub fn check_stream(&self, data: &[u8]) {
        let [op, chunk, rest @ ..] = data else {
            return;
        };
        let chunk = if *chunk == 0 {
            256
        } else {
            usize::from(*chunk)
        };
        match op % 3 {
            0 => {
                let count = Changeset::from_bytes(rest)
                    .ok()
                    .map(|cs| cs.count())
                    .or_else(|| Patchset::from_bytes(rest).ok().map(|ps| ps.count()));
                let input = Chunked::new(rest, chunk);
                self.apply_in_rolled_back_transaction(count, move |s| stream::apply(s, input));
            }
            1 => {
                let streamed = self
                    .runtime
                    .block_on(stream::invert(Chunked::new(rest, chunk), Vec::new()));
                match (Changeset::from_bytes(rest), streamed) {
                    (Ok(cs), Ok(out)) => {
                        let inverse = cs.invert().expect("a validated changeset inverts");
                        assert_eq!(out, inverse.as_bytes(), "stream and memory invert differ");
                    }
                    (Ok(_), Err(err)) => panic!("a valid changeset does not stream-invert: {err}"),
                    (Err(_), Ok(out)) => {
                        Changeset::validate(&out).unwrap_or_else(|err| {
                            panic!("stream invert made an invalid changeset: {err}")
                        });
                    }
                    (Err(_), Err(err)) => assert!(!err.to_string().is_empty()),
                }
            }
            _ => {
                let Some((_, a, b)) = split_pair(rest) else {
                    return;
                };
                let streamed = self.runtime.block_on(stream::concat(
                    Chunked::new(a, chunk),
                    Chunked::new(b, chunk),
                    Vec::new(),
                ));
                match streamed {
                    Ok(out) => assert!(
                        Changeset::validate(&out).is_ok() || Patchset::validate(&out).is_ok(),
                        "stream concat made invalid bytes"
                    ),
                    Err(err) => assert!(!err.to_string().is_empty()),
                }
            }
        }
    }

    /// Applies with a handler that replaces every other DATA/CONFLICT conflict (the retry path)
    /// and omits the rest, checks the report, and rolls back: the caller's transaction must
    /// survive whatever the apply did.
    fn apply_in_rolled_back_transaction(
        &self,
        count: Option<usize>,
        start: impl for<'s> FnOnce(&'s dyn Session) -> Apply<'s>,
    ) {
        self.runtime.block_on(async {
            let tx = self.session.begin().await.expect("begin");
            let mut seen = 0_usize;
            let result = start(tx.as_session())
                .on_conflict(move |conflict| {
                    seen += 1;
                    match conflict.kind {
                        ConflictKind::Data | ConflictKind::Conflict if seen.is_multiple_of(2) => {
                            ConflictAction::Replace
                        }
                        _ => ConflictAction::Omit,
                    }
                })
                .filter(|_table| true)
                .await;
            match result {
                Ok(report) => {
                    if let Some(count) = count {
                        assert_eq!(report.changes, count, "{report:?}");
                    }
                    assert!(
                        report.attempted <= report.changes,
                        "more changes attempted than the blob holds: {report:?}"
                    );
                    assert!(report.applied <= report.attempted, "{report:?}");
                }
                Err(err) => assert!(!err.to_string().is_empty()),
            }
            tx.rollback()
                .await
                .expect("the caller's transaction survives the apply");
        });
    }
}

impl Drop for ApplyTarget {
    fn drop(&mut self) {
        // Giving the connection back to its pool needs the runtime's context.
        let _context = self.runtime.enter();
        drop(self.pinned.take());
    }
}

impl Default for ApplyTarget {
    fn default() -> Self {
        Self::new()
    }
}
