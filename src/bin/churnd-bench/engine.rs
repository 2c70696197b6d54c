//! Benchmarks of the engine alone, in process: memory per tracked customer, and the cost of
//! re-scoring the silent customers that fall due.
//!
//! Memory (`churnd-bench memory`):
//!
//! Builds an engine in-process (event-time clock, shipped model) and feeds it one purchase per
//! customer (IDs of 12–24 bytes, event times over the past year, in batches of 1,000), then
//! prints the growth of the process's resident memory (`/proc/self/statm`) divided by the
//! customers tracked: the customer table, the ID arena, the hash index, the timer heap and the
//! allocator's slack, everything the engine holds per customer.
//!
//! After learning the customers it writes a snapshot of them the daemon's way
//! (`state::write_snapshot`: the capture, the encoder, the file) and reports the peak of
//! resident memory above the resting size while it did (VmHWM, reset through
//! `/proc/self/clear_refs` before); then it drops the engine, loads the snapshot and restores
//! it, and reports the peak and final growth above the process without the engine. (That
//! process keeps some of the memory it freed, and the restore reuses it, so these two are lower
//! bounds; they show that nothing on top of the table is held.) It also prints the daemon's own
//! estimate, `churnd_customer_store_bytes`, beside the measured growth. `--profiles` then gives
//! every customer a profile (region, age band, gender, channel from 3 to 5 values each, and a
//! birthday: a few thousand distinct profiles) through `profile` events before the snapshot.
//!
//! Silence sweep (`churnd-bench sweep`):
//!
//! Builds an engine in-process under the wall clock as `memory` does (one purchase per customer
//! over the past year, so every customer is scored and has its next check scheduled), then
//! moves the wall clock on in steps (+1 h, +2 h, … +720 h from the build) and calls
//! `Engine::tick` at each: the tick re-scores every customer whose check fell due, raising
//! their win-back tasks. Per step it prints how many were due, the CPU time of the tick
//! (`CLOCK_THREAD_CPUTIME_ID`, so other processes do not count) and per due customer, and the
//! CPU time of a second tick at the same moment, with nobody due.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use churnd::config::{ClockMode, Settings};
use churnd::engine::{Engine, EngineSettings};
use churnd::metrics::Metrics;
use churnd::model::Model;
use churnd::source::batch::Batch;

use churnd::state::{self, SnapshotDir, SLICE_CUSTOMERS};

use crate::machine::{peak_resident_bytes, reset_peak_resident, resident_bytes, thread_cpu_time};
use crate::redis_server::tempfile_dir;
use crate::workload::{customer_id, entry, learn_customers, max_customers, model_path};

/// Resident memory per customer at rest (with a profile each if `profiles`), then the peak
/// while a snapshot of them is written the way the daemon writes it (a slice at a time
/// through the capture), and while it is restored.
pub fn memory(customers: usize, profiles: bool) -> Result<()> {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    settings.state.max_customers = max_customers(customers);
    let model = Arc::new(Model::load(&model_path())?);
    let now_ms = churnd::time::wall_millis();
    let before = resident_bytes()?;
    let (mut engine, metrics) = learn_customers(&settings, model.clone(), customers, now_ms);
    let resting = resident_bytes()?;
    let grown = resting.saturating_sub(before);
    let tracked = engine.customers().max(1) as f64;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{} customers tracked: resident memory grew by {:.1} MiB, {:.1} bytes per customer (table, IDs, index, timers and allocator slack included)",
        engine.customers(),
        mib(grown),
        grown as f64 / tracked
    );
    let gauge = u64::try_from(metrics.store_bytes.get()).unwrap_or(0);
    println!(
        "churnd_customer_store_bytes says {:.1} MiB ({:.1} bytes per customer); the whole process is resident at {:.1} MiB",
        mib(gauge),
        gauge as f64 / tracked,
        mib(resting)
    );
    let resting = if profiles {
        give_profiles(&mut engine, customers, now_ms);
        let with = resident_bytes()?;
        let grown = with.saturating_sub(before);
        let gauge = u64::try_from(metrics.store_bytes.get()).unwrap_or(0);
        println!(
            "with a profile each (4 attributes of a few values, a birthday): resident memory grew by {:.1} MiB in all, {:.1} bytes per customer; churnd_customer_store_bytes says {:.1} MiB",
            mib(grown),
            grown as f64 / tracked,
            mib(gauge)
        );
        with
    } else {
        resting
    };

    let dir = tempfile_dir::TempDir::new("memory")?;
    let snapshots = SnapshotDir::open(dir.path(), 1)?;
    reset_peak_resident()?;
    let (_, size) = state::write_snapshot(&mut engine, &snapshots, &[], now_ms)?;
    let peak = peak_resident_bytes()?.saturating_sub(resting);
    println!(
        "while a snapshot of them was written ({size} bytes, slices of {SLICE_CUSTOMERS} customers): resident memory peaked {:.1} MiB above that, {:.2} bytes per customer",
        mib(peak),
        peak as f64 / tracked
    );

    // A restart: the engine gone, the snapshot loaded and restored.
    drop(engine);
    let empty = resident_bytes()?;
    reset_peak_resident()?;
    let (loaded, _) = snapshots.load_newest(&[])?;
    let state = loaded
        .context("the snapshot just written loads")?
        .snapshot
        .state;
    let restored = Engine::restore(
        EngineSettings::from(&settings),
        model,
        Metrics::new().engine,
        state,
    );
    let peak = peak_resident_bytes()?.saturating_sub(empty);
    let after = resident_bytes()?.saturating_sub(empty);
    println!(
        "restoring them from that snapshot: resident memory peaked {:.1} MiB above the process without them ({:.1} bytes per customer) and settled {:.1} MiB above it ({:.1} bytes per customer)",
        mib(peak),
        peak as f64 / tracked,
        mib(after),
        after as f64 / restored.customers().max(1) as f64
    );
    Ok(())
}

/// One profile event per customer, through the engine as the daemon applies them.
fn give_profiles(engine: &mut Engine, customers: usize, now_ms: u64) {
    for start in (0..customers).step_by(1_000) {
        let entries = (start..(start + 1_000).min(customers))
            .map(|n| {
                let id = customer_id(n);
                let birthday = format!("{:02}-{:02}", 1 + n % 12, 1 + n % 28);
                entry(
                    now_ms + 1,
                    n as u64,
                    &[
                        ("customer_id", &id),
                        ("type", "profile"),
                        ("region", ["eu", "us", "apac", "latam"][n % 4]),
                        (
                            "age_band",
                            ["18-24", "25-34", "35-44", "45-54", "55+"][n % 5],
                        ),
                        ("gender", ["f", "m", "x"][n % 3]),
                        ("channel", ["web", "app", "store"][n % 3]),
                        ("birthday", &birthday),
                    ],
                )
            })
            .collect();
        engine.apply_batch(Batch::new(entries), now_ms + 1);
    }
}

/// The wall clock moves on in steps; each tick re-scores the customers whose check fell due.
/// Prints, per step, how many were due and the CPU time the tick took, and the cost of a
/// tick with nobody due.
pub fn sweep(customers: usize) -> Result<()> {
    let mut settings = Settings::default();
    settings.state.max_customers = max_customers(customers);
    let model = Arc::new(Model::load(&model_path())?);
    let now_ms = churnd::time::wall_millis();
    let learning = Instant::now();
    let (mut engine, metrics) = learn_customers(&settings, model, customers, now_ms);
    println!(
        "{} customers tracked (one purchase each over the past year, wall clock) in {:.1} s",
        engine.customers(),
        learning.elapsed().as_secs_f64()
    );
    println!(
        "{:>16} {:>10} {:>12} {:>14} {:>14}",
        "clock moved to", "due", "tick CPU", "per due", "idle tick CPU"
    );
    const HOUR_MS: u64 = 3_600_000;
    let mut tasks = 0;
    for hours in [1, 2, 4, 8, 16, 24, 48, 96, 192, 384, 720] {
        let at = now_ms + hours * HOUR_MS;
        let rescores = metrics.rescores.get();
        let cpu = thread_cpu_time();
        tasks += engine.tick(at).tasks.len();
        let spent = thread_cpu_time() - cpu;
        let due = metrics.rescores.get() - rescores;
        let cpu = thread_cpu_time();
        engine.tick(at);
        let idle = thread_cpu_time() - cpu;
        println!(
            "{:>16} {due:>10} {:>9.3} ms {:>11.0} ns {:>11.1} µs",
            format!("+{hours} h"),
            spent.as_secs_f64() * 1e3,
            spent.as_nanos() as f64 / due.max(1) as f64,
            idle.as_secs_f64() * 1e6,
        );
    }
    println!("{tasks} win-back tasks raised by the sweeps");
    Ok(())
}
