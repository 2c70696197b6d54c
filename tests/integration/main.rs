//! Integration tests: churnd against real redis-server processes (one per test, on a free
//! port), the daemon running in-process or as the built binary.

mod batch_scoring;
mod budgets;
mod cluster;
mod cluster_failover;
mod cluster_harness;
mod configuration;
mod crash;
mod dead_letters;
mod deploy_lint;
mod docs;
mod follow_up;
mod fuzz_input;
mod helpers;
mod http_api;
mod http_limits;
mod learning;
mod lift;
mod model_cli;
mod observability;
mod output_backlog;
mod oversized;
mod ownership;
mod partitions;
mod pipeline;
mod process;
mod profiles_feedback;
mod record_schemas;
mod redis_snapshots;
mod resilience;
mod secrets;
mod simulate_lockstep;
mod simulate_respond;
mod sink;
mod task_kinds;
mod tls;
