//! Test support for the liteorm integration suite.
