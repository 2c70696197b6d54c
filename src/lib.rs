//! churnd: a streaming churn-scoring daemon.
//!
//! Customer activity flows through the modules in this order:
//!
//! - [`source`]: reads the input streams with a Redis consumer group, in batches;
//! - [`event`]: turns a stream entry into a validated event or a dead-letter reason;
//!   [`partition`]: which partition stream a customer's events belong in;
//! - [`features`]: keeps each customer's rolling RFM state in constant space, and the
//!   timers that notice silence;
//! - [`model`]: scores churn probability with a logistic model (and trains one);
//! - [`classify`]: lifecycle stage, RFM segment and risk level;
//! - [`decide`]: the playbook: which tasks a customer gets and when (service recovery,
//!   win-back, the care kinds, under one contact cap), the task type and the tag rules;
//!   [`profiles`]: what is known of a customer beyond activity;
//! - [`outcomes`]: what follows a task written: its cancel when the customer converts while
//!   it is open, and its one outcome record when the conversion window closes or they convert;
//! - [`sink`]: writes tasks, cancels, outcomes and dead letters, each exactly once (guarded by
//!   its ID), then acknowledges their entries.
//!
//! [`state`] writes and loads snapshots of every customer's state with the stream positions
//! they reflect, so a restart continues where the last snapshot left off.
//!
//! [`lift`] reads the outcome records of the tasks and reports what each kind × action ×
//! segment adds over its control group (`churnd report lift`, `/v1/lift`, gauges).
//!
//! [`engine`] ties the pure steps together (no I/O); [`daemon`] runs it between source and
//! sink with bounded channels. Beside the flow: [`config`], [`metrics`], [`health`],
//! [`http`], [`connection`] (Redis connections that survive Redis), [`transactions`] (CSV
//! input of the batch commands), [`batch`] (scoring a whole file as of a date), [`demo`],
//! [`simulate`] (synthetic customers for demos and load tests), [`preflight`] (what
//! `churnd check-config` checks before a start).

pub mod batch;
pub mod classify;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod decide;
pub mod demo;
pub mod engine;
pub mod event;
pub mod features;
pub mod health;
pub mod http;
pub mod lift;
pub mod metrics;
pub mod model;
pub mod outcomes;
pub mod ownership;
pub mod partition;
pub mod preflight;
pub mod profiles;
pub mod simulate;
pub mod sink;
pub mod source;
pub mod state;
pub mod time;
pub mod transactions;
