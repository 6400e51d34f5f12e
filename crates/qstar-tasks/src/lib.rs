//! Data sets qstar reads. For now: preference pairs for AI labeling.

pub mod preference;

pub use preference::{read_pairs, PreferencePair, ReadReport, TaskError};
