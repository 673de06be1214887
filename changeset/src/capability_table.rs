//! The one table of session-extension capabilities: each one's `cfg`, the first SQLite release
//! that has it and what an `Error::Unsupported` calls it. Read by `build.rs` (a `cfg` per row the
//! SQLite built against has) and by `capability.rs` (versions, run-time checks, messages).

/// Calls `$then!` with one `Variant, cfg, "version", VERSION_NUMBER, "what";` row per
/// capability, oldest first, in `Capability` order.
macro_rules! capability_table {
    ($then:ident) => {
        $then! {
            // sqlite3session_changeset_size, SQLITE_SESSION_OBJCONFIG_SIZE.
            ChangesetSize, sqlite_has_changeset_size, "3.36.0", 3_036_000,
                "the changeset size estimate";
            // SQLITE_CHANGESETAPPLY_IGNORENOOP.
            IgnoreNoop, sqlite_has_ignorenoop, "3.42.0", 3_042_000,
                "the IGNORENOOP apply flag";
            // SQLITE_SESSION_OBJCONFIG_ROWID, and apply's implicit `_rowid_` key for tables
            // without one.
            ImplicitPrimaryKey, sqlite_has_implicit_pk, "3.42.0", 3_042_000,
                "recording tables without a PRIMARY KEY";
            // SQLITE_CHANGESETAPPLY_FKNOACTION.
            FkNoAction, sqlite_has_fknoaction, "3.44.0", 3_044_000,
                "the FKNOACTION apply flag";
            // sqlite3changegroup_schema.
            ChangegroupSchema, sqlite_has_changegroup_schema, "3.44.0", 3_044_000,
                "changegroup schemas";
            // sqlite3changegroup_add_change.
            ChangegroupAddChange, sqlite_has_changegroup_add_change, "3.46.0", 3_046_000,
                "adding single changes to a changegroup";
            // sqlite3changeset_apply_v3 (a filter per change instead of per table).
            ChangeFilter, sqlite_has_apply_v3, "3.51.0", 3_051_000,
                "SQLite's own per-change apply filter";
        }
    };
}
