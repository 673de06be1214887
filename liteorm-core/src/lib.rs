//! The dialect-neutral core of liteorm: the async [`Session`] trait that every dialect implements,
//! the [`Value`] and [`Row`] types it speaks, and the [`Error`] it returns.
//!
//! Capability crates (such as `liteorm-changeset`) take a `&dyn Session`, ask it which
//! [`Dialect`] it is, and downcast through [`Session::as_any`] to the concrete dialect type they
//! know how to drive; any other dialect gets [`Error::Unsupported`].
#![forbid(unsafe_code)]

mod error;
mod row;
mod session;
mod value;

pub use error::{Error, Result, SqliteCode};
pub use row::{ColumnIndex, FromValue, Row};
pub use session::{BoxFuture, Dialect, Session, Transaction, transaction};
pub use value::{Value, ValueRef};
