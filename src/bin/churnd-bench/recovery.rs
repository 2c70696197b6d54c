//! `churnd-bench recovery`: the time from start to ready with a snapshot of many customers.
//!
//! Builds the state in-process as `memory` does (one purchase per customer, IDs of 12–24 bytes,
//! event times over the past year) but under the wall clock, as the daemon runs by default;
//! writes it with the daemon's code path (`state::write_snapshot`: the capture, the encoder and
//! the file the daemon's writer uses) into a fresh `state.dir`; drops the engine; starts its
//! own `redis-server` with the input stream and the group at the snapshot's position (one
//! entry, the last applied; nothing to replay); then times from calling `daemon::run` (default
//! settings except Redis, `state.dir`, the model, HTTP on a free port, and
//! `state.max_customers` raised to the count if above the default of 10,000,000) until `GET
//! /readyz` answers 200, polled every 10 ms. It prints the daemon's log (its own timing of
//! "snapshot loaded", which is reading and decoding, and of "state recovered", start to caught
//! up), then times reading and decoding (one step, as the daemon reads the file as a stream)
//! and restoring alone on the same file. **The file was written seconds before it is read, so
//! it is in the page cache: a cold start reads it from disk in addition (920 MB at 10,000,000
//! customers in format 4).**

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use churnd::daemon;
use churnd::engine::{Engine, EngineSettings};
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::state::codec;

use crate::http_probe::wait_ready;
use crate::machine::load_average;
use crate::redis_server::{tempfile_dir, RedisServer};
use crate::workload::{daemon_settings, max_customers, model_path, restart_with_snapshot};

pub async fn recovery(customers: usize, binary: &PathBuf) -> Result<()> {
    let redis = RedisServer::start(binary)?;
    let state = tempfile_dir::TempDir::new("state")?;
    let mut settings = daemon_settings(&redis, state.path());
    settings.state.max_customers = settings.state.max_customers.max(max_customers(customers));
    let settings = settings.validated()?;
    let streams = settings.source.streams.clone();
    let model = Arc::new(Model::load(&model_path())?);
    let secs = |d: Duration| d.as_secs_f64();

    let restart = restart_with_snapshot(&redis, &settings, model.clone(), customers).await?;
    let (path, size) = (restart.path, restart.bytes);
    println!(
        "built an engine of {customers} customers in {:.1} s (wall clock, one purchase each)",
        secs(restart.build)
    );
    println!(
        "snapshot written: {size} bytes ({:.1} bytes per customer), copied out, encoded and written with fsync in {:.3} s; the file was just written, so it is in the page cache",
        size as f64 / customers.max(1) as f64,
        secs(restart.write)
    );

    println!(
        "starting the daemon (its log follows); load average {}",
        load_average()
    );
    let listener = daemon::bind(&settings).await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let daemon = tokio::spawn(daemon::run(settings.clone(), listener, shutdown.clone()));
    let ready = wait_ready(addr, &daemon, started, Duration::from_secs(600)).await?;
    println!(
        "start to ready (GET /readyz 200, polled every 10 ms): {:.3} s with {customers} customers, {size}-byte snapshot; load average {}",
        secs(ready),
        load_average()
    );
    shutdown.cancel();
    daemon.await??;

    // The same steps, one at a time, on the snapshot written above (still in the page cache):
    // reading and decoding are one streaming step, as in the daemon.
    let t = Instant::now();
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let decoded = codec::decode_from(file, len, &streams)?;
    let load = t.elapsed();
    let t = Instant::now();
    let engine = Engine::restore(
        EngineSettings::from(&settings),
        model,
        Metrics::new().engine,
        decoded.state,
    );
    let restore = t.elapsed();
    println!(
        "the same steps timed alone: read and decode {:.3} s, restore {:.3} s ({} customers)",
        secs(load),
        secs(restore),
        engine.customers()
    );
    Ok(())
}
