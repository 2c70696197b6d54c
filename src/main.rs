//! The `churnd` binary: parses the command line, sets up logging, and hands over to the
//! library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use churnd::config::{self, LogFormat, Settings};
use churnd::model::train::{self, TrainOptions};
use churnd::transactions::Transactions;
use churnd::{daemon, demo, time};

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
    /// Print the effective configuration (secrets redacted) and exit.
    CheckConfig,
    /// Replay the bundled CDNOW sample through a running daemon and show what happened.
    Demo {
        /// Transactions CSV to replay.
        #[arg(long, default_value = demo::DEFAULT_TRANSACTIONS)]
        transactions: PathBuf,
    },
    /// Train a churn model from a transactions CSV.
    Train {
        /// CSV with customer_id,date,amount (optional type, quantity).
        #[arg(long)]
        transactions: PathBuf,
        /// Where to write the model JSON.
        #[arg(long)]
        out: PathBuf,
        /// The model predicts "no purchase within this many days".
        #[arg(long, default_value_t = 90)]
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
    },
}

/// Exit code for unusable configuration or arguments.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train {
            transactions,
            out,
            horizon_days,
            cutoffs,
            l2,
            version,
        } => train_model(&transactions, &out, horizon_days, cutoffs, l2, version),
        command => {
            let settings =
                match Settings::load(Path::new(config::DEFAULT_FILE), cli.config.as_deref()) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("churnd: {e}");
                        return ExitCode::from(USAGE_ERROR);
                    }
                };
            match command {
                Command::CheckConfig => {
                    print!("{}", settings.to_redacted_toml());
                    Ok(())
                }
                Command::Run => serve(settings),
                Command::Demo { transactions } => run_demo(settings, &transactions),
                Command::Train { .. } => unreachable!("handled above"),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("churnd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(settings: &Settings) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match settings.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    init_tracing(&settings);
    runtime()?.block_on(async {
        let shutdown = CancellationToken::new();
        cancel_on_signal(shutdown.clone())?;
        let listener = daemon::bind(&settings)
            .await
            .with_context(|| format!("failed to listen on http.addr {}", settings.http.addr))?;
        daemon::run(settings, listener, shutdown).await?;
        Ok(())
    })
}

fn run_demo(mut settings: Settings, transactions: &Path) -> anyhow::Result<()> {
    // The demo's own output is the report; keep the daemon's logs to warnings.
    if std::env::var_os("RUST_LOG").is_none() {
        settings.log.level = "warn".into();
    }
    init_tracing(&settings);
    runtime()?.block_on(demo::run(settings, transactions))?;
    Ok(())
}

fn train_model(
    transactions: &Path,
    out: &Path,
    horizon_days: u32,
    cutoffs: Option<Vec<String>>,
    l2: f64,
    version: Option<String>,
) -> anyhow::Result<()> {
    let cutoffs = cutoffs
        .map(|list| {
            list.iter()
                .map(|d| {
                    time::parse_date_or_datetime(d)
                        .with_context(|| format!("--cutoffs: {d:?} is not a date (YYYY-MM-DD)"))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .transpose()?;
    let data = Transactions::read(transactions)?;
    for bad in data.bad_rows.iter().take(10) {
        eprintln!(
            "{}:{}: skipped: {}",
            transactions.display(),
            bad.line,
            bad.reason
        );
    }
    if !data.bad_rows.is_empty() {
        eprintln!(
            "{} bad rows skipped, {} rows read",
            data.bad_rows.len(),
            data.rows.len()
        );
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
        ..TrainOptions::default()
    };
    let started = std::time::Instant::now();
    let model = train::train(&data, &options)?;
    let report: train::TrainingReport =
        serde_json::from_value(model.training.clone()).context("training report is malformed")?;
    let json = serde_json::to_string_pretty(&model)? + "\n";
    std::fs::write(out, json).with_context(|| format!("failed to write {}", out.display()))?;
    let m = &report.validation.metrics;
    println!(
        "model {} written to {} in {:.1} s",
        model.version,
        out.display(),
        started.elapsed().as_secs_f64()
    );
    println!(
        "  data: {} rows, {} customers, {} to {}; {} examples over {} cutoffs, churn rate {:.3}",
        report.rows,
        report.customers,
        report.first_event,
        report.last_event,
        report.examples,
        report.cutoffs.len(),
        report.churn_rate
    );
    println!(
        "  validation at {} (trained on {} examples from {}): ROC AUC {:.4}, average precision {:.4}, log loss {:.4}, Brier {:.4}, top-decile lift {:.2}",
        report.validation.cutoff,
        report.validation.training_examples,
        report.validation.trained_on.join(", "),
        m.roc_auc,
        m.average_precision,
        m.log_loss,
        m.brier_score,
        m.top_decile_lift
    );
    Ok(())
}
