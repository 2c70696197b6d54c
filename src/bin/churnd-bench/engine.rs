//! Benchmarks of the engine alone, in process: memory per tracked customer, and the cost of
//! re-scoring the silent customers that fall due.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use churnd::config::{ClockMode, Settings};
use churnd::model::Model;

use crate::machine::{resident_bytes, thread_cpu_time};
use crate::workload::{learn_customers, model_path};

pub fn memory(customers: usize) -> Result<()> {
    let mut settings = Settings::default();
    settings.clock.mode = ClockMode::Event;
    settings.state.max_customers = customers.max(1);
    let model = Arc::new(Model::load(&model_path())?);
    let now_ms = churnd::time::wall_millis();
    let before = resident_bytes()?;
    let (engine, _) = learn_customers(&settings, model, customers, now_ms);
    let grown = resident_bytes()?.saturating_sub(before);
    println!(
        "{} customers tracked: resident memory grew by {:.1} MiB, {:.1} bytes per customer (table, IDs, index, timers and allocator slack included)",
        engine.customers(),
        grown as f64 / (1024.0 * 1024.0),
        grown as f64 / engine.customers().max(1) as f64
    );
    Ok(())
}

/// The wall clock moves on in steps; each tick re-scores the customers whose check fell due.
/// Prints, per step, how many were due and the CPU time the tick took, and the cost of a
/// tick with nobody due.
pub fn sweep(customers: usize) -> Result<()> {
    let mut settings = Settings::default();
    settings.state.max_customers = customers.max(1);
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
