//! What follows a task once it is written: its cancel when the customer converts while it is
//! open (exit criteria), and its one outcome record when its conversion window closes or the
//! customer converts (treatment and control alike, so that lift can be measured per kind,
//! action and segment).
//!
//! The open tasks live in a table of their own ([`OpenTasks`]), keyed by customer ID and
//! apart from the customer table: a customer evicted from memory while a task of theirs is
//! open still gets the outcome (and the cancel, should they come back and buy), and the
//! customers without an open task pay nothing for the feature. The table is part of every
//! snapshot, and every record's ID derives from its task's, so records are written exactly
//! once across restarts (the sink's guard drops what a replay raises again).

mod expiry;
mod open;
mod records;
mod settings;

pub use expiry::{expire, Dropped};
pub use open::{OpenTask, OpenTasks};
pub use records::{Cancel, CancelReason, Converted, OutcomeRecord, SCHEMA_VERSION};
pub use settings::{OutcomeSettings, TaskLife};
