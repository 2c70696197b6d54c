//! The `churnd` binary: parses the command line, sets up logging, and hands over to the
//! library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use churnd::batch::{self, Classification};
use churnd::config::{self, Layers, LogFormat, Resolved, Settings};
use churnd::connection::{self, Connector};
use churnd::metrics::{Metrics, RedisRole};
use churnd::model::train::{self, TrainOptions};
use churnd::model::{evaluate, Model};
use churnd::partition::PartitionCount;
use churnd::simulate::{self, SimulateOptions};
use churnd::transactions::Transactions;
use churnd::{daemon, demo, lift, preflight, time};

#[derive(Parser)]
#[command(name = "churnd", version, about = "Streaming churn-scoring daemon")]
struct Cli {
    /// Settings file layered over config/default.toml (environment variables CHURND__... override both).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// Check the configuration as a start would and print the effective settings (secrets
    /// redacted), with the files and variables they came from. Exit code 2: settings that
    /// cannot be used; 1: a model file (or, with --connect, a Redis) that would stop or
    /// hinder a start.
    CheckConfig(CheckConfigArgs),
    /// Replay the bundled CDNOW sample through a running daemon and show what happened.
    Demo {
        /// Transactions CSV to replay.
        #[arg(long, default_value = demo::DEFAULT_TRANSACTIONS)]
        transactions: PathBuf,
    },
    /// Train a churn model from a transactions CSV.
    Train(TrainArgs),
    /// Score every customer of a transactions CSV as of a date, with the daemon's model and
    /// classification (backfills, audits, CRM imports).
    Score(ScoreArgs),
    /// Measure a model on labelled history: features before a date, churn = no purchase
    /// within the horizon after it.
    Evaluate(EvaluateArgs),
    /// Write synthetic customer activity (buy-till-you-die customers) to the input stream, for
    /// demos and load tests: first a history, then live traffic.
    Simulate(SimulateArgs),
    /// Reports for marketing: what the tasks achieved.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Print the partition a customer's events belong in (0 to partitions.count - 1):
    /// xxh3_64 of the customer ID's UTF-8 bytes, seed 0, mod the count.
    Partition(PartitionArgs),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// The lift of every kind x action x segment of task over its control group, from the
    /// outcome stream: conversion rates, the lift with its 95 % interval, incremental
    /// conversions and revenue.
    Lift(LiftArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Text,
    Json,
}

#[derive(Args)]
struct LiftArgs {
    /// The outcome stream; default: outcomes.stream of the configuration.
    #[arg(long)]
    stream: Option<String>,
    /// The Redis to read from; default: redis.url of the configuration (its password and
    /// TLS settings apply either way).
    #[arg(long)]
    redis_url: Option<String>,
    /// Only outcomes closed at or after this date (YYYY-MM-DD, midnight UTC) or RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only outcomes closed before this date (YYYY-MM-DD, midnight UTC) or RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// text: a table for people; json: the same JSON as the daemon's /v1/lift.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
}

#[derive(Args)]
struct PartitionArgs {
    /// The customer ID, as producers write it in the customer_id field.
    customer_id: String,
    /// The number of partitions; default: partitions.count of the configuration.
    #[arg(long, value_parser = parse_partition_count)]
    count: Option<PartitionCount>,
}

fn parse_partition_count(text: &str) -> Result<PartitionCount, String> {
    text.parse()
        .ok()
        .and_then(PartitionCount::new)
        .ok_or_else(|| format!("must be a whole number from 1 to {}", PartitionCount::MAX))
}

#[derive(Args)]
struct CheckConfigArgs {
    /// Also connect to Redis with the configured password and TLS, and check its version,
    /// eviction policy, Lua scripting, and the input streams and consumer group.
    #[arg(long)]
    connect: bool,
}

#[derive(Args)]
struct SimulateArgs {
    /// Customers arriving over the history (over a year when --history-days is 0); new ones
    /// keep arriving at that pace.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Days of past activity written first, with their own event times.
    #[arg(long, default_value_t = 365)]
    history_days: u32,
    /// At most this many events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// After the history, simulated time runs this many times as fast as the wall clock (1:
    /// the customers' natural pace; 0: as fast as --rate allows).
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Random seed: the same seed writes the same customers and events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop after this many events (0: run until SIGTERM or SIGINT).
    #[arg(long, default_value_t = 0)]
    events: u64,
    /// Events in a thousand written malformed, for the dead-letter path.
    #[arg(long, default_value_t = 1)]
    invalid_per_mille: u32,
    /// The stream to write; default: the first of source.streams. With partitions.count > 1
    /// each event goes to its customer's partition stream of it (`<stream>:{p}`).
    #[arg(long)]
    stream: Option<String>,
    /// Trim the stream to about this many entries (0: never). Entries churnd has not read
    /// yet are lost when it falls this far behind.
    #[arg(long, default_value_t = 1_000_000)]
    max_len: u64,
    /// Task streams whose tasks the simulated customers answer (comma-separated, e.g.
    /// churn:winback,crm:tasks): an action that works on a customer's hidden persona brings
    /// a purchase a few days later. Control-group tasks are read, not answered.
    #[arg(long, value_delimiter = ',')]
    respond_to: Vec<String>,
    /// Advance in lockstep with churnd (which must run with clock.mode = event): one
    /// simulated day at a time over --history-days, each day's events written, then waited
    /// for until churnd has applied them and written their effects (the group
    /// <source.group>:written has reached them), then the tasks so far
    /// answered. For closed-loop measurements; needs --respond-to.
    #[arg(long, requires = "respond_to")]
    lockstep: bool,
    /// With --lockstep: the longest wait, in seconds, for churnd to consume one day's events.
    #[arg(long, default_value_t = 60)]
    day_timeout_secs: u64,
}

#[derive(Args)]
struct TrainArgs {
    /// CSV with customer_id,date,amount (optional type, quantity).
    #[arg(long)]
    transactions: PathBuf,
    /// Where to write the model JSON.
    #[arg(long)]
    out: PathBuf,
    /// The model predicts "no purchase within this many days".
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..))]
    horizon_days: u32,
    /// Cutoff dates (YYYY-MM-DD, comma-separated); default: every 30 days back from the latest that fits.
    #[arg(long, value_delimiter = ',')]
    cutoffs: Option<Vec<String>>,
    /// L2 regularisation per example (on standardised features).
    #[arg(long, default_value_t = TrainOptions::default().l2)]
    l2: f64,
    /// Model version; default: derived from the output name and the coefficients.
    #[arg(long)]
    version: Option<String>,
    /// Use only the transactions before this date (YYYY-MM-DD), as if it were today: for
    /// out-of-time comparisons with `churnd evaluate --as-of` the same date.
    #[arg(long)]
    until: Option<String>,
    /// Discount rate per year of the value model's clv_365d (0.1 = 10 %; 0: undiscounted).
    #[arg(long, default_value_t = 0.0)]
    annual_discount_rate: f64,
}

#[derive(Args)]
struct ScoreArgs {
    /// CSV with customer_id,date,amount (optional type, quantity).
    #[arg(long)]
    transactions: PathBuf,
    /// Date (YYYY-MM-DD, midnight UTC) or RFC 3339 time: events before it count.
    #[arg(long)]
    as_of: String,
    /// Model file; default: model.path of the configuration.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where to write the scores CSV; `-` for standard output.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvaluateArgs {
    /// CSV with customer_id,date,amount (optional type, quantity).
    #[arg(long)]
    transactions: PathBuf,
    /// Model file; default: model.path of the configuration.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Date (YYYY-MM-DD, midnight UTC) or RFC 3339 time to evaluate at.
    #[arg(long)]
    as_of: String,
    /// Days after the date in which a purchase means "not churned"; default: the model's horizon.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    horizon_days: Option<u32>,
    /// Also fit the BG/NBD baseline on the same customers and compare.
    #[arg(long)]
    baseline: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The error and its causes, skipping causes whose text a message already includes.
fn describe(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// Exit code for unusable configuration or arguments.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train_model(args),
        Command::Partition(PartitionArgs {
            customer_id,
            count: Some(count),
        }) => print_partition(&customer_id, count),
        command => {
            let defaults = Path::new(config::DEFAULT_FILE);
            let (settings, layers) =
                match Settings::load_with_layers(defaults, cli.config.as_deref()) {
                    Ok(loaded) => loaded,
                    Err(e) => {
                        print_err(format_args!("churnd: {e}"));
                        return ExitCode::from(USAGE_ERROR);
                    }
                };
            match command {
                // What the settings name (certificates, the token) is read once, here: a
                // file that cannot be used is a configuration error like any other.
                Command::Run => match resolve(settings) {
                    Ok(resolved) => serve(resolved),
                    Err(code) => return code,
                },
                Command::CheckConfig(args) => {
                    return match resolve(settings) {
                        Ok(resolved) => check_config(&resolved, &layers, args.connect),
                        Err(code) => code,
                    }
                }
                Command::Demo { transactions } => run_demo(settings, &transactions),
                Command::Score(args) => score(&settings, args),
                Command::Evaluate(args) => evaluate(&settings, args),
                Command::Simulate(args) => simulate(settings, args),
                Command::Report(ReportCommand::Lift(args)) => lift_report(settings, args),
                Command::Partition(args) => {
                    print_partition(&args.customer_id, settings.partitions.count)
                }
                Command::Train(_) => unreachable!("handled above"),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_err(format_args!("churnd: {}", describe(&e)));
            ExitCode::FAILURE
        }
    }
}

/// `churnd partition`: the customer's partition alone on a line, for scripts.
fn print_partition(customer_id: &str, count: PartitionCount) -> anyhow::Result<()> {
    println!("{}", count.of(customer_id));
    Ok(())
}

/// The settings resolved ([`Settings::resolve`]), or the exit code after saying why not.
fn resolve(settings: Settings) -> Result<Resolved, ExitCode> {
    settings.resolve().map_err(|e| {
        print_err(format_args!("churnd: {e}"));
        ExitCode::from(USAGE_ERROR)
    })
}

/// `churnd check-config`: the findings and where the settings came from as comments, then
/// the effective settings, on standard output (still TOML); failures on standard error too.
fn check_config(resolved: &Resolved, layers: &Layers, connect: bool) -> ExitCode {
    let settings = &resolved.settings;
    let mut findings = vec![preflight::model(settings)];
    if connect {
        match runtime() {
            Ok(runtime) => findings.extend(runtime.block_on(preflight::redis(resolved))),
            Err(e) => findings.push(preflight::Finding {
                status: preflight::Status::Failed,
                text: describe(&e),
            }),
        }
    }
    let mut out = String::from("# churnd check-config\n");
    out += &layers_comment(layers);
    for finding in &findings {
        out += &format!("# {finding}\n");
    }
    if !connect {
        out += "# Redis not contacted: --connect checks the connection, version, eviction \
                policy, scripting and streams\n";
    }
    out += "# The effective settings (secrets as ***):\n\n";
    out += &settings.to_redacted_toml();
    if let Err(e) = print_out(&out) {
        print_err(format_args!("churnd: {}", describe(&e)));
        return ExitCode::FAILURE;
    }
    let failed: Vec<_> = findings
        .iter()
        .filter(|f| f.status == preflight::Status::Failed)
        .collect();
    for finding in &failed {
        print_err(format_args!("churnd: check-config: {}", finding.text));
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Where the settings came from, as TOML comments: the files read (a relative one with the
/// directory it is relative to) and the variables applied, by name only.
fn layers_comment(layers: &Layers) -> String {
    let cwd = std::env::current_dir()
        .map_or_else(|_| "(unknown)".to_string(), |d| d.display().to_string());
    let named = |file: &Path| {
        if file.is_relative() {
            format!("{} (in the working directory {cwd})", file.display())
        } else {
            file.display().to_string()
        }
    };
    let mut text =
        String::from("# Settings read, later ones over earlier ones:\n#   built-in defaults\n");
    for file in &layers.files {
        text += &format!("#   {}\n", named(file));
    }
    if let Some(file) = &layers.defaults_not_found {
        text += &format!(
            "# {} not found: the built-in defaults (the same values) stand in\n",
            named(file)
        );
    }
    if layers.variables.is_empty() {
        text += "# Environment: no CHURND__ variables\n";
    } else {
        text += &format!(
            "# Environment, over the files: {}\n",
            layers.variables.join(", ")
        );
    }
    text
}

/// Standard error for logs and messages, never failing: what cannot be written (the reader
/// went away, as in `churnd run 2>&1 | head`) is dropped. A failed write must not panic
/// (`eprintln!` does, and tracing-subscriber reports a failed write with `eprintln!`), which
/// killed the task that logged (the signal handler, so SIGTERM was ignored; the source, so
/// work stopped) or the whole process (exit 101).
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One call per log line: the standard library locks stderr for it, so lines from
        // several threads do not interleave.
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// `eprintln!` that cannot panic, the line written in one piece.
fn print_err(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = Stderr.write_all(format!("{text}\n").as_bytes());
}

fn init_tracing(settings: &Settings) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    // An empty RUST_LOG counts as unset: EnvFilter would read it as "errors only".
    let filter = rust_log()
        .and_then(|directives| tracing_subscriber::EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.log.level));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| Stderr)
        .with_ansi(colour_logs())
        .log_internal_errors(false);
    let fmt = match settings.log.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt.with_filter(churnd::connection::client_log::filter()))
        .init();
}

/// Colours in text logs only for a person at a terminal: tracing-subscriber writes them
/// wherever stderr goes, and in files, pipes and log collectors they are noise (`\x1b[2m`).
/// `NO_COLOR` (no-color.org) turns them off at a terminal too.
fn colour_logs() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `RUST_LOG`, unless unset or empty.
fn rust_log() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|directives| !directives.trim().is_empty())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
}

/// Cancels the token on SIGTERM or SIGINT.
fn cancel_on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // First the shutdown, then the log line: nothing may stand between the two.
        token.cancel();
        tracing::info!("{signal} received");
    });
    Ok(())
}

fn serve(resolved: Resolved) -> anyhow::Result<()> {
    init_tracing(&resolved.settings);
    let model_path = resolved.settings.model.path.clone();
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone())?;
        let addr = resolved.settings.http.addr;
        let listener = daemon::bind(&resolved.settings)
            .await
            .with_context(|| format!("failed to listen on http.addr {addr}"))?;
        daemon::run_resolved(resolved, listener, shutdown, daemon::Observers::default())
            .await
            .map_err(|e| match e {
                // With where churnd looked for it.
                daemon::DaemonError::Model(e) => {
                    anyhow::anyhow!(preflight::model_error(&e, &model_path))
                }
                e => e.into(),
            })?;
        Ok(())
    })
}

/// `churnd report lift`: reads the outcome stream once and prints the report.
fn lift_report(mut settings: Settings, args: LiftArgs) -> anyhow::Result<()> {
    let millis = |flag: &str, value: Option<String>| {
        value
            .map(|v| parse_date(flag, &v).map(|s| u64::from(s) * 1000))
            .transpose()
    };
    let window = lift::Window {
        since_ms: millis("--since", args.since)?,
        until_ms: millis("--until", args.until)?,
    };
    if let (Some(since), Some(until)) = (window.since_ms, window.until_ms) {
        anyhow::ensure!(since < until, "--since must be before --until");
    }
    let given_url = args.redis_url.is_some();
    if let Some(url) = args.redis_url {
        settings.redis.url = url;
    }
    let stream = args
        .stream
        .unwrap_or_else(|| settings.outcomes.stream.clone());
    let client = connection::client(&settings.redis);
    let client = if given_url {
        client.context("--redis-url (it replaces redis.url)")?
    } else {
        client?
    };
    let connector = Connector::new(
        client,
        &settings.redis,
        settings.redis.response_timeout.get(),
        RedisRole::Lift,
        &Metrics::new().redis,
    );
    let mut shown = 0;
    let report = runtime()?.block_on(lift::stream::report_from(
        &connector,
        &stream,
        window,
        |id, e| {
            if shown < 10 {
                shown += 1;
                print_err(format_args!("{stream} entry {id}: not counted: {e}"));
            }
        },
    ))?;
    match args.format {
        Format::Json => print_out(&(serde_json::to_string_pretty(&report)? + "\n")),
        Format::Text => print_out(&lift::report::render_text(&report)),
    }
}

fn simulate(settings: Settings, args: SimulateArgs) -> anyhow::Result<()> {
    init_tracing(&settings);
    let responding = !args.respond_to.is_empty();
    let options = SimulateOptions {
        stream: args
            .stream
            .unwrap_or_else(|| settings.source.streams[0].clone()),
        partitions: settings.partitions.count,
        customers: args.customers,
        history_days: args.history_days,
        rate: args.rate,
        speedup: args.speedup,
        seed: args.seed,
        events: args.events,
        invalid_per_mille: args.invalid_per_mille,
        max_len: args.max_len,
        respond_to: args.respond_to,
        lockstep: args.lockstep.then(|| simulate::Lockstep {
            group: settings.source.group.clone(),
            day_timeout: std::time::Duration::from_secs(args.day_timeout_secs),
        }),
    };
    let connector = Connector::new(
        connection::client(&settings.redis)?,
        &settings.redis,
        settings.redis.response_timeout.get(),
        RedisRole::Simulate,
        &Metrics::new().redis,
    );
    let report = runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone())?;
        anyhow::Ok(simulate::run(options, connector, shutdown).await?)
    })?;
    print_out(&format!(
        "wrote {} events ({} of history, {} live): {} purchases, {} refunds, {} visits, {} complaints, {} feedback, {} profiles, {} malformed; {} customers arrived, {} still active\n",
        report.written(),
        report.history,
        report.live,
        report.purchases,
        report.refunds,
        report.visits,
        report.complaints,
        report.feedback,
        report.profiles,
        report.invalid,
        report.customers_arrived,
        report.customers_active,
    ))?;
    if responding {
        print_out(&format!(
            "read {} tasks back ({} of the control group); the others' actions brought {} purchases\n",
            report.tasks_read, report.control_tasks_read, report.tasks_answered,
        ))?;
    }
    Ok(())
}

fn run_demo(mut settings: Settings, transactions: &Path) -> anyhow::Result<()> {
    // The demo's own output is the report; keep the daemon's logs to warnings.
    if rust_log().is_none() {
        settings.log.level = "warn".into();
    }
    init_tracing(&settings);
    runtime()?.block_on(demo::run(settings, transactions))?;
    Ok(())
}

fn train_model(args: TrainArgs) -> anyhow::Result<()> {
    let TrainArgs {
        transactions,
        out,
        horizon_days,
        cutoffs,
        l2,
        version,
        until,
        annual_discount_rate,
    } = args;
    if !(0.0..=churnd::model::value::MAX_ANNUAL_DISCOUNT_RATE).contains(&annual_discount_rate) {
        anyhow::bail!(
            "--annual-discount-rate {annual_discount_rate} must be between 0 and {} (a fraction per year: 0.1 is 10 %)",
            churnd::model::value::MAX_ANNUAL_DISCOUNT_RATE
        );
    }
    let (transactions, out) = (transactions.as_path(), out.as_path());
    let until = until.map(|d| parse_date("--until", &d)).transpose()?;
    let cutoffs = cutoffs
        .map(|list| {
            list.iter()
                .map(|d| parse_date("--cutoffs", d))
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let mut data = read_transactions(transactions)?;
    if let Some(until) = until {
        data.truncate_at(until);
    }
    let name = out
        .file_stem()
        .map_or("churn".into(), |s| s.to_string_lossy().into_owned());
    let options = TrainOptions {
        horizon_days,
        cutoffs,
        l2,
        version,
        source: transactions
            .file_name()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned()),
        name,
        annual_discount_rate,
        ..TrainOptions::default()
    };
    let started = std::time::Instant::now();
    let model = train::train(&data, &options)?;
    let report: train::TrainingReport =
        serde_json::from_value(model.training.clone()).context("training report is malformed")?;
    let json = serde_json::to_string_pretty(&model)? + "\n";
    write_replacing(out, json.as_bytes())
        .with_context(|| format!("failed to write {}", out.display()))?;
    let mut text = format!(
        "model {} written to {} in {:.1} s\n",
        model.version,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    text += &format!(
        "  data: {} rows, {} customers, {} to {}; {} examples over {} cutoffs, churn rate {:.3}\n",
        report.rows,
        report.customers,
        report.first_event,
        report.last_event,
        report.examples,
        report.cutoffs.len(),
        report.churn_rate
    );
    match &report.validation {
        None => text += "  no validation: no cutoff has its horizon's labels known by the latest cutoff (too little data, or cutoffs closer together than the horizon); measure the model with `churnd evaluate` on later data\n",
        Some(v) => {
            text += &format!(
                "  validation at {} (trained on {} examples from {}):\n    model:  {}\n",
                v.cutoff,
                v.training_examples,
                v.trained_on.join(", "),
                metrics_line(&v.metrics)
            );
            if let Some(b) = &v.baseline {
                text += &format!(
                    "    BG/NBD: {} (the baseline, on the same customers)\n",
                    metrics_line(&b.metrics)
                );
            }
        }
    }
    match (&model.value, &report.value) {
        (Some(v), Some(fit)) => {
            let (b, g) = (&v.bgnbd, &v.gamma_gamma);
            text += &format!(
                "  value model on {} customers as of {} ({} repeat buyers, {} with positive spend):\n    BG/NBD r {:.4}, alpha {:.4} days, a {:.4}, b {:.4}; Gamma-Gamma p {:.4}, q {:.4}, gamma {:.4} (mean order value {:.2}); annual discount rate {}\n",
                fit.customers,
                fit.as_of,
                fit.repeat_buyers,
                fit.spend_customers,
                b.r,
                b.alpha,
                b.a,
                b.b,
                g.p,
                g.q,
                g.gamma,
                fit.population_mean_order_value,
                v.annual_discount_rate
            );
        }
        _ => {
            text += &format!(
                "  no value model: {}; the file is a churn model without value estimates (format {})\n",
                report.value_error.as_deref().unwrap_or("not fitted"),
                model.format
            );
        }
    }
    print_out(&text)
}

/// Writes a command's report to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if !is_broken_pipe(&e) => Err(e).context("failed to write to standard output"),
        _ => Ok(()),
    }
}

fn is_broken_pipe(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::BrokenPipe
}

fn metrics_line(m: &churnd::model::metrics::Evaluation) -> String {
    format!(
        "ROC AUC {:.4}, average precision {:.4}, log loss {:.4}, Brier {:.4}, top-decile lift {:.2}",
        m.roc_auc, m.average_precision, m.log_loss, m.brier_score, m.top_decile_lift
    )
}

/// Reads a transactions file, reporting the first bad rows and their count on stderr.
fn read_transactions(path: &Path) -> anyhow::Result<Transactions> {
    let data = Transactions::read(path)?;
    for bad in data.bad_rows.iter().take(10) {
        print_err(format_args!(
            "{}:{}: skipped: {}",
            path.display(),
            bad.line,
            bad.reason
        ));
    }
    if !data.bad_rows.is_empty() {
        print_err(format_args!(
            "{} bad rows skipped, {} rows read",
            data.bad_rows.len(),
            data.rows.len()
        ));
    }
    Ok(data)
}

fn parse_date(flag: &str, value: &str) -> anyhow::Result<time::UnixSeconds> {
    time::parse_date_or_datetime(value).with_context(|| {
        format!("{flag}: {value:?} is not a date (YYYY-MM-DD) or RFC 3339 time after 1970")
    })
}

fn load_model(settings: &Settings, model: Option<PathBuf>) -> anyhow::Result<Model> {
    let path = model.unwrap_or_else(|| settings.model.path.clone());
    Ok(Model::load(&path)?)
}

fn score(settings: &Settings, args: ScoreArgs) -> anyhow::Result<()> {
    let as_of = parse_date("--as-of", &args.as_of)?;
    let model = load_model(settings, args.model)?;
    let data = read_transactions(&args.transactions)?;
    let out = args.out.as_path();
    let started = std::time::Instant::now();
    let scores = batch::score(&data, as_of, &model, &Classification::from(settings));
    let elapsed = started.elapsed();
    if scores.is_empty() {
        let first = data
            .rows
            .first()
            .map_or("none".to_string(), |t| time::rfc3339(t.time));
        anyhow::bail!(
            "no transaction in {} is before --as-of {} (the first is at {first}): nothing to score; pick a later date",
            args.transactions.display(),
            time::rfc3339(as_of)
        );
    }
    if out == Path::new("-") {
        // As print_out: a reader that went away (`--out - | head`) is not an error.
        match batch::write_csv(std::io::stdout().lock(), &scores) {
            Err(e) if matches!(e.kind(), csv::ErrorKind::Io(io) if is_broken_pipe(io)) => {}
            written => written.context("failed to write to standard output")?,
        }
    } else {
        let file = std::fs::File::create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        batch::write_csv(std::io::BufWriter::new(file), &scores)
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    print_err(format_args!(
        "scored {} customers as of {} with model {} in {:.2} s",
        scores.len(),
        time::rfc3339(as_of),
        model.version(),
        elapsed.as_secs_f64()
    ));
    if model.value().is_none() {
        print_err(format_args!(
            "model {} has no value parameters (an older format): the columns p_alive, expected_purchases_90d, expected_spend_90d, clv_365d and next_purchase_at are empty; retrain with `churnd train` to fill them",
            model.version()
        ));
    }
    Ok(())
}

fn evaluate(settings: &Settings, args: EvaluateArgs) -> anyhow::Result<()> {
    let as_of = parse_date("--as-of", &args.as_of)?;
    let model = load_model(settings, args.model)?;
    let data = read_transactions(&args.transactions)?;
    let horizon_days = args.horizon_days.unwrap_or(model.horizon_days());
    let report = evaluate::evaluate_model(&data, &model, as_of, horizon_days, args.baseline)?;
    if args.json {
        print_out(&(serde_json::to_string_pretty(&report)? + "\n"))
    } else {
        print_out(&evaluate::render_text(&report))
    }
}

/// Writes `bytes` to `path` by a rename from a file beside it, so that a daemon watching
/// `path` sees the old file or the new one, never one half written.
fn write_replacing(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let temp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}
