//! Which session-extension features the linked SQLite has: decided at build time by `build.rs`
//! (`cfg(sqlite_has_*)`) and checked again against the library loaded at run time.

use liteorm_sqlite::DIALECT;

use crate::{Error, ffi};

/// The SQLite version this crate was compiled against (its `sqlite3.h`), e.g. `"3.51.3"`.
pub const SQLITE_BUILD_VERSION: &str = env!("LITEORM_CHANGESET_SQLITE_VERSION");

/// A session-extension feature that only newer SQLite versions have.
///
/// Every API that needs one returns [`Error::Unsupported`] (naming the version it needs) when the
/// SQLite this crate is built against, or the library loaded at run time, is older; check
/// [`Capability::is_available`] first to pick another path instead.
///
/// ```
/// use liteorm_changeset::Capability;
///
/// for capability in Capability::ALL {
///     println!(
///         "{capability:?}: needs SQLite {}, available: {}",
///         capability.min_version(),
///         capability.is_available(),
///     );
/// }
/// // The size estimate has been in SQLite since 3.36, older than anything liteorm links.
/// assert!(Capability::ChangesetSize.is_available());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Capability {
    /// [`Capture::track_size`](crate::Capture::track_size) and
    /// [`Recorder::changeset_size`](crate::Recorder::changeset_size) (SQLite 3.36).
    ChangesetSize,
    /// [`Apply::ignore_noop`](crate::Apply::ignore_noop) (SQLite 3.42).
    IgnoreNoop,
    /// [`Capture::implicit_primary_key`](crate::Capture::implicit_primary_key): record tables
    /// without a PRIMARY KEY, keyed by rowid (SQLite 3.42).
    ImplicitPrimaryKey,
    /// [`Apply::fk_no_action`](crate::Apply::fk_no_action) (SQLite 3.44).
    FkNoAction,
    /// [`Changegroup::merge_with_schema`](crate::Changegroup::merge_with_schema) (SQLite 3.44).
    ChangegroupSchema,
    /// [`Changegroup::add_filtered`](crate::Changegroup::add_filtered) (SQLite 3.46).
    ChangegroupAddChange,
    /// SQLite's own per-change apply filter, `sqlite3changeset_apply_v3` (SQLite 3.51), which
    /// [`Apply::filter_change`](crate::Apply::filter_change) runs in. Nothing requires it: on an
    /// older SQLite, liteorm filters the changes before SQLite applies them, to the same effect.
    ChangeFilter,
}

impl Capability {
    /// Every capability, oldest first.
    pub const ALL: [Capability; 7] = [
        Capability::ChangesetSize,
        Capability::IgnoreNoop,
        Capability::ImplicitPrimaryKey,
        Capability::FkNoAction,
        Capability::ChangegroupSchema,
        Capability::ChangegroupAddChange,
        Capability::ChangeFilter,
    ];

    /// The first SQLite release that has it.
    pub fn min_version(self) -> &'static str {
        macro_rules! version {
            ($($variant:ident, $cfg:ident, $version:literal, $number:literal, $what:literal;)*) => {
                match self {
                    $(Capability::$variant => $version,)*
                }
            };
        }
        capability_table!(version)
    }

    fn min_version_number(self) -> i32 {
        macro_rules! number {
            ($($variant:ident, $cfg:ident, $version:literal, $number:literal, $what:literal;)*) => {
                match self {
                    $(Capability::$variant => $number,)*
                }
            };
        }
        capability_table!(number)
    }

    /// Whether this build has it: compiled in (the headers declare it) and the SQLite library
    /// loaded at run time is recent enough (a dynamically linked one can be older than its
    /// headers, and would silently ignore an unknown flag).
    pub fn is_available(self) -> bool {
        macro_rules! compiled {
            ($($variant:ident, $cfg:ident, $version:literal, $number:literal, $what:literal;)*) => {
                match self {
                    $(Capability::$variant => cfg!($cfg),)*
                }
            };
        }
        let compiled = capability_table!(compiled);
        compiled && ffi::libversion_number() >= self.min_version_number()
    }

    /// What [`Error::Unsupported`] says is missing.
    fn description(self) -> &'static str {
        macro_rules! needs {
            ($($variant:ident, $cfg:ident, $version:literal, $number:literal, $what:literal;)*) => {
                match self {
                    $(Capability::$variant => concat!(
                        $what,
                        " (needs SQLite >= ",
                        $version,
                        "; this build has ",
                        env!("LITEORM_CHANGESET_SQLITE_VERSION"),
                        ")"
                    ),)*
                }
            };
        }
        capability_table!(needs)
    }

    /// `Ok` if available, else the typed error.
    pub(crate) fn require(self) -> Result<(), Error> {
        if self.is_available() {
            Ok(())
        } else {
            Err(Error::Unsupported {
                capability: self.description(),
                dialect: DIALECT,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_names_the_version_needed_and_the_one_built_against() {
        let text = Capability::FkNoAction.description();
        assert!(text.contains(">= 3.44.0"), "{text}");
        assert!(text.contains(SQLITE_BUILD_VERSION), "{text}");
    }

    #[test]
    fn availability_follows_the_build_version() {
        let build: Vec<i32> = SQLITE_BUILD_VERSION
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        let build = build[0] * 1_000_000 + build[1] * 1_000 + build.get(2).copied().unwrap_or(0);
        for capability in Capability::ALL {
            assert_eq!(
                capability.is_available(),
                build >= capability.min_version_number(),
                "{capability:?} in a build against {SQLITE_BUILD_VERSION}"
            );
            assert_eq!(capability.require().is_ok(), capability.is_available());
        }
    }
}
