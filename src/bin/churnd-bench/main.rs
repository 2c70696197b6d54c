//! End-to-end benchmarks against a real redis-server that the program starts itself.
//!
//! `churnd-bench throughput`: pre-loads a stream, then measures how fast a bare consumer that
//! only reads and acknowledges drains it (the Redis limit on this machine) and how fast the
//! daemon does the whole job on the same stream, and prints both with their ratio.
//!
//! `churnd-bench memory`: resident memory per tracked customer.
//!
//! `churnd-bench latency`: at a steady offered load, the time from an XADD to the engine
//! having applied the entry, and from a probe event to its win-back task in Redis.
//!
//! `churnd-bench recovery`: the time from start to ready with a snapshot of many customers.
//!
//! `churnd-bench sweep`: the CPU cost of re-scoring the silent customers that fall due.

mod engine;
mod http_probe;
mod latency;
mod machine;
mod recovery;
mod redis_server;
mod throughput;
mod workload;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use churnd::config::ClockMode;

#[derive(Parser)]
#[command(
    name = "churnd-bench",
    about = "End-to-end benchmarks of churnd against a real Redis"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Resident memory per tracked customer: the growth of the process's RSS while the
    /// engine learns `customers` customers (one purchase each, IDs of 12 to 24 bytes).
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
    },
    /// Events per second: the daemon against a bare read-and-acknowledge consumer.
    Throughput {
        /// Events pre-loaded into the stream.
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        /// Distinct customers among them.
        #[arg(long, default_value_t = 1_000_000)]
        customers: usize,
        /// Entries per read (XREADGROUP COUNT), for both consumers.
        #[arg(long, default_value_t = 1_000)]
        batch_size: usize,
        /// Event times are spread over this many days before now. 0 (the default): live
        /// traffic, every event happens now. 365: a backfill of a year of history, in which
        /// most customers lapse, so many win-back tasks are written (and under
        /// `--clock event` every silence check of the year is made).
        #[arg(long, default_value_t = 0)]
        history_days: u64,
        /// The daemon's clock: `wall` (the default, as in production: silence is checked as
        /// real time passes, so hardly during the run) or `event` (a replay: the event time
        /// the stream covers passes during the run, with every silence check it implies).
        #[arg(long, value_enum, default_value = "wall")]
        clock: ClockArg,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
    /// CPU cost of re-scoring silent customers: the wall clock moves on in steps over a
    /// table of `customers`, and each step's tick re-scores those whose check fell due.
    Sweep {
        #[arg(long, default_value_t = 10_000_000)]
        customers: usize,
    },
    /// Latency at a steady offered load: XADD to state updated, and XADD of a probe (a new
    /// customer's single purchase long ago) to its win-back task.
    Latency {
        /// Events offered per second.
        #[arg(long, default_value_t = 50_000)]
        rate: u64,
        /// Seconds of measurement, after the warm-up.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds of load before measuring (not counted).
        #[arg(long, default_value_t = 3)]
        warmup_seconds: u64,
        /// Distinct customers in the ordinary traffic.
        #[arg(long, default_value_t = 100_000)]
        customers: usize,
        /// One event in this many is a probe.
        #[arg(long, default_value_t = 500)]
        probe_every: u64,
        /// How long ago a probe's purchase lies, in days: old enough for the shipped model
        /// to score a one-time buyer at or above the win-back threshold (checked at start).
        #[arg(long, default_value_t = 300)]
        probe_age_days: u64,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
    /// Start-to-ready time of the daemon with a snapshot of `customers` customers.
    Recovery {
        #[arg(long, default_value_t = 10_000_000)]
        customers: usize,
        /// The redis-server binary to start.
        #[arg(long, default_value = "redis-server")]
        redis_server: PathBuf,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::Memory { customers } => engine::memory(customers),
        Bench::Sweep { customers } => engine::sweep(customers),
        Bench::Throughput {
            events,
            customers,
            batch_size,
            history_days,
            clock,
            redis_server,
        } => {
            throughput::throughput(
                events,
                customers,
                batch_size,
                history_days,
                clock.into(),
                &redis_server,
            )
            .await
        }
        Bench::Latency {
            rate,
            seconds,
            warmup_seconds,
            customers,
            probe_every,
            probe_age_days,
            redis_server,
        } => {
            latency::latency(
                rate,
                seconds,
                warmup_seconds,
                customers,
                probe_every,
                probe_age_days,
                &redis_server,
            )
            .await
        }
        Bench::Recovery {
            customers,
            redis_server,
        } => {
            // The daemon's own log gives its breakdown: snapshot loaded (read and decode),
            // state recovered (start to caught up). RUST_LOG overrides.
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "churnd=info".into()),
                )
                .init();
            recovery::recovery(customers, &redis_server).await
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ClockArg {
    Wall,
    Event,
}

impl From<ClockArg> for ClockMode {
    fn from(clock: ClockArg) -> Self {
        match clock {
            ClockArg::Wall => ClockMode::Wall,
            ClockArg::Event => ClockMode::Event,
        }
    }
}
