//! Recorded targets (DESIGN.md §10): what a recorded session wrote, as
//! asciicast v2 (`cast`), stored in the database (`store`).

pub mod cast;
pub mod store;

pub use store::{
    Content, ContentError, Filter, Kind, Meta, Recorder, RecordingRow, Settings, Summary,
};
