//! SQLite changesets and patchsets for liteorm sessions.
