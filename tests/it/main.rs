//! The liteorm integration suite: one binary, one module per area.
