//! End-to-end benchmarks against a real redis-server that the program starts itself.
//!
//! `churnd-bench throughput`: pre-loads a stream, then measures how fast a bare consumer that
//! only reads and acknowledges drains it (the Redis limit on this machine) and how fast the
//! daemon does the whole job on the same stream, and prints both with their ratio.
//!
//! `churnd-bench memory`: resident memory per tracked customer.
//!
//! `churnd-bench latency`: at a steady offered load, the time from an XADD to the engine
//! having applied the entry, and from a probe event to its win-back task in Redis; first the
//! same for a bare consumer (the Redis floor).
//!
//! `churnd-bench recovery`: the time from start to ready with a snapshot of many customers.
//!
//! `churnd-bench sweep`: the CPU cost of re-scoring the silent customers that fall due.
//!
//! `churnd-bench cluster`: the daemon on a Redis Cluster with partitioned input streams and
//! the one task stream in one slot, against one server with the same partitions.
//!
//! `churnd-bench replicas`: events per CPU-second of 1 to N replicas owning partitions by
//! leases, each a `churnd run` process, on the same input.
//!
//! `churnd-bench takeover`: from a SIGKILL of one replica to its partitions restored and
//! caught up on the survivors, split into lease wait, hand-over, restore and replay.
//!
//! `churnd-bench closed-loop`: incremental conversions per 1,000 win-back tasks of each
//! targeting policy under the same budget, simulated customers answering churnd's tasks.

mod bare;
mod closed_loop;
mod cluster;
mod engine;
mod http_probe;
mod latency;
mod machine;
mod recovery;
mod redis_server;
mod replicas;
mod scaling;
mod takeover;
mod throughput;
mod workload;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
        /// Then give every customer a profile (region, age band, gender, channel from a few
        /// values each, and a birthday) and measure again.
        #[arg(long)]
        profiles: bool,
    },
    /// Events per second: the daemon against a bare read-and-acknowledge consumer.
    Throughput(throughput::Args),
    /// The daemon on a Redis Cluster with P partition streams and one task stream (one
    /// slot): events per second against one server, and the Redis time per node.
    Cluster(cluster::Args),
    /// CPU cost of re-scoring silent customers: the wall clock moves on in steps over a
    /// table of `customers`, and each step's tick re-scores those whose check fell due.
    Sweep {
        #[arg(long, default_value_t = 10_000_000)]
        customers: usize,
    },
    /// Latency at a steady offered load: XADD to state updated, and XADD of a probe (a new
    /// customer's single purchase long ago) to its win-back task.
    Latency(latency::Args),
    /// Events per CPU-second of 1 to N replicas (`churnd run` processes) owning P partitions
    /// by leases, on the same pre-loaded input, and the ratio to one replica.
    Replicas(scaling::Args),
    /// From a SIGKILL of one replica to its partitions restored and caught up on the
    /// survivors, against the lease time.
    Takeover(takeover::Args),
    /// Incremental conversions per 1,000 win-back tasks per targeting policy, same budget:
    /// churnd and a lockstep simulation whose customers answer its tasks.
    ClosedLoop(closed_loop::Args),
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
        Bench::Memory {
            customers,
            profiles,
        } => engine::memory(customers, profiles),
        Bench::Sweep { customers } => engine::sweep(customers),
        Bench::Throughput(args) => throughput::throughput(args).await,
        Bench::Cluster(args) => cluster::cluster(args).await,
        Bench::Latency(args) => latency::latency(args).await,
        Bench::Replicas(args) => scaling::replicas(args).await,
        Bench::Takeover(args) => takeover::takeover(args).await,
        Bench::ClosedLoop(args) => closed_loop::closed_loop(args).await,
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
