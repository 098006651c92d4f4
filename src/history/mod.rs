//! The run history: the SQLite store (schema, queries) and its one writer.

mod recorder;
mod spill;
mod store;

pub use recorder::{Recorder, RecorderHealth, StartRow};
pub use store::*;
