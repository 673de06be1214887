//! What the linked SQLite library is and whether it has the session extension.

use liteorm_core::{Error, Result};

/// Facts about the SQLite library a session runs on, read once when the session is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteInfo {
    /// `sqlite_version()`, e.g. `"3.51.3"`.
    pub version: String,
    /// The version as a number, e.g. `3051003`.
    pub version_number: i64,
    /// Whether SQLite was compiled with `SQLITE_ENABLE_SESSION`.
    pub session_extension: bool,
    /// Whether SQLite was compiled with `SQLITE_ENABLE_PREUPDATE_HOOK` (sessions need it).
    pub preupdate_hook: bool,
}

/// How to get a SQLite with the session extension, for error messages.
pub const HOW_TO_ENABLE_SESSIONS: &str = "build the bundled SQLite with \
    LIBSQLITE3_FLAGS=\"-DSQLITE_ENABLE_SESSION -DSQLITE_ENABLE_PREUPDATE_HOOK\" (e.g. in \
    .cargo/config.toml [env]), or link a system libsqlite3 that has them with the \
    `system-sqlite` feature and LIBSQLITE3_SYS_USE_PKG_CONFIG=1";

impl SqliteInfo {
    /// The query that reads these facts; its columns are in field order.
    pub(crate) const QUERY: &'static str = "SELECT sqlite_version(), \
        sqlite_compileoption_used('ENABLE_SESSION'), \
        sqlite_compileoption_used('ENABLE_PREUPDATE_HOOK')";

    /// Builds the facts from the version text and the two compile-option flags.
    pub(crate) fn new(version: String, session_extension: bool, preupdate_hook: bool) -> Self {
        let version_number = version
            .split('.')
            .map(|part| part.parse::<i64>().unwrap_or(0))
            .chain(std::iter::repeat(0))
            .take(3)
            .fold(0, |acc, part| acc * 1000 + part);
        SqliteInfo {
            version,
            version_number,
            session_extension,
            preupdate_hook,
        }
    }

    /// `Ok` if changesets can be captured on this SQLite, otherwise an error that says how to
    /// enable them.
    pub fn require_session_extension(&self) -> Result<()> {
        if self.session_extension && self.preupdate_hook {
            return Ok(());
        }
        Err(Error::Unsupported {
            capability: "the session extension (SQLite was built without \
                SQLITE_ENABLE_SESSION / SQLITE_ENABLE_PREUPDATE_HOOK; to fix it, see \
                liteorm_sqlite::HOW_TO_ENABLE_SESSIONS)",
            dialect: crate::DIALECT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_number_matches_sqlite_encoding() {
        assert_eq!(
            SqliteInfo::new("3.51.3".into(), true, true).version_number,
            3_051_003
        );
        assert_eq!(
            SqliteInfo::new("3.40.1".into(), true, true).version_number,
            3_040_001
        );
    }

    #[test]
    fn missing_session_extension_is_a_typed_error_naming_the_fix() {
        let info = SqliteInfo::new("3.40.1".into(), false, true);
        let err = info.require_session_extension().unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }));
        assert!(err.to_string().contains("SQLITE_ENABLE_SESSION"), "{err}");
        assert!(
            SqliteInfo::new("3.40.1".into(), true, true)
                .require_session_extension()
                .is_ok()
        );
    }
}
