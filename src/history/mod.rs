//! The run history: the SQLite store (schema, queries) and its one writer.

mod queue;
mod read;
mod recorder;
mod rows;
mod schema;
mod spill;
mod store;
mod writer;

pub use queue::{RecorderHealth, StartRow};
pub use recorder::Recorder;
pub use rows::*;
pub use schema::SCHEMA_VERSION;
pub use store::*;
