//! The `sluice` command.

#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use sluice::config::Config;
use sluice_client::consumer::InitialPosition;
use sluice_telemetry::LogFormat;

/// mimalloc, as in the Lambda function: the collector allocates and frees a
/// few small buffers per event; under single-event requests the system
/// allocator took 12% of the process's samples (perf), mimalloc 8%.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Collect website events, route them by header, read them back."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (default: ./sluice.toml if present, else the built-in example).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default: backend.data_dir, else ./sluice-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (default: collector.listen, else 127.0.0.1:8080).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
    /// Backend: `local` (embedded) or `aws` (Kinesis and DynamoDB);
    /// overrides backend.kind. `aws` without an [backend] aws table in the
    /// configuration uses the SDK's defaults and creates what is missing.
    #[arg(long, value_parser = ["local", "aws"])]
    backend: Option<String>,
}

/// A consumer application on a stream, and where they are.
#[derive(clap::Args)]
struct AppArgs {
    /// The application: its lease table carries this name.
    #[arg(long)]
    app: String,
    #[arg(long)]
    stream: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// Where streams and tables are, for commands that open them.
#[derive(clap::Args)]
struct StoreArgs {
    /// Configuration file (default: ./sluice.toml if present).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory of embedded storage.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Backend: `local` or `aws`; overrides backend.kind.
    #[arg(long, value_parser = ["local", "aws"])]
    backend: Option<String>,
}

impl StoreArgs {
    async fn open(self) -> anyhow::Result<sluice::server::Store> {
        let config = Config::load(find_config(self.config).as_deref())?;
        let backend =
            sluice::server::resolve_backend(backend_kind(self.backend.as_deref()), &config.backend);
        sluice::server::Store::open(&backend, self.data_dir).await
    }
}

fn backend_kind(text: Option<&str>) -> Option<sluice::server::BackendKind> {
    text.map(|kind| match kind {
        "aws" => sluice::server::BackendKind::Aws,
        _ => sluice::server::BackendKind::Local,
    })
}

#[derive(Subcommand)]
enum Command {
    /// Run collector, router and read API in one process (on embedded storage
    /// unless the configuration or --backend says aws).
    Up(RunArgs),
    /// Run only the collector and read API (no routing).
    Collector(RunArgs),
    /// Post NDJSON events from a file, or from stdin with `-`.
    Send {
        /// The file of events, one JSON object per line; `-` reads stdin.
        file: String,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Events per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Bearer token for a collector that requires one.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print a stream's records as NDJSON.
    Tail {
        stream: String,
        /// trim_horizon, latest, or an RFC 3339 time.
        #[arg(long, default_value = "trim_horizon")]
        from: String,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// Keep waiting for new records.
        #[arg(long, short)]
        follow: bool,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Bearer token for a Sluice that requires one.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run one worker of a consumer application on a stream: each record's
    /// envelope as one NDJSON line on stdout. Workers of one application
    /// share the shards through leases; run as many as you like (on AWS).
    Consume {
        #[command(flatten)]
        target: AppArgs,
        /// This worker's name (default: host, process id and a random part).
        #[arg(long)]
        worker_id: Option<String>,
        /// A worker silent this long loses its shards to the others (at least 300).
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(sluice::config::MIN_FAILOVER_MS..))]
        failover_ms: u64,
        /// Where a new application starts: trim_horizon, latest, or an RFC 3339 time.
        #[arg(long, default_value = "trim_horizon")]
        from: String,
        /// Serve this worker's metrics at http://ADDRESS/metrics (Prometheus).
        #[arg(long, value_name = "ADDRESS")]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Show a consumer application's lease table: owner, checkpoint, lag.
    Leases {
        #[command(flatten)]
        target: AppArgs,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a deterministic sample of a shop's website events as NDJSON,
    /// ready for `sluice send -` (the demo's, tests' and benchmarks' data).
    Sample {
        /// How many events.
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        /// The same seed gives the same events.
        #[arg(long, default_value_t = sluice_core::sample::DEFAULT_SEED)]
        seed: u64,
        /// The first event's time: an RFC 3339 time or `now`
        /// (default 2026-11-28T14:00:00Z); events are ~20 ms apart.
        #[arg(long)]
        start: Option<String>,
    },
    /// Print views: all of them, or one view's latest windows (or keys).
    Views {
        /// The view to print; all views' names and kinds without it.
        name: Option<String>,
        /// Windows from this RFC 3339 time (default: the latest 60 with data).
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        /// Print the API's JSON answer as it is.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Bearer token for a Sluice that requires one.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Measure a running Sluice.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Check a configuration file and exit.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Post events at a steady rate and time them to a live feed's
    /// subscribers: delivery p50, p99 and max.
    Live(sluice::bench::LiveBench),
}

fn find_config(explicit: Option<PathBuf>) -> Option<PathBuf> {
    explicit.or_else(|| {
        let local = PathBuf::from("sluice.toml");
        local.exists().then_some(local)
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let json_logs =
        matches!(&cli.command, Command::Up(args) | Command::Collector(args) if args.json_logs);
    sluice_telemetry::init_logging(if json_logs {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    // OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set; off otherwise.
    let telemetry = tokio::task::spawn_blocking(|| sluice_telemetry::Telemetry::start("sluice"))
        .await
        .expect("telemetry start");
    let code = match run(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    };
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

async fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Up(args) => run_pipeline(args, true).await?,
        Command::Collector(args) => run_pipeline(args, false).await?,
        Command::Send {
            file,
            url,
            batch,
            token,
        } => {
            let input: Box<dyn BufRead> = if file == "-" {
                Box::new(std::io::stdin().lock())
            } else {
                let f = std::fs::File::open(&file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
                Box::new(std::io::BufReader::new(f))
            };
            let (accepted, rejected) =
                sluice::cli::send(&url, input, batch.clamp(1, 10_000), token.as_deref()).await?;
            eprintln!("{accepted} events accepted, {rejected} rejected");
            if rejected > 0 {
                return Ok(std::process::ExitCode::from(2));
            }
        }
        Command::Tail {
            stream,
            from,
            limit,
            follow,
            url,
            token,
        } => {
            sluice::cli::tail(&url, &stream, &from, limit, follow, token.as_deref()).await?;
        }
        Command::Consume {
            target: AppArgs { app, stream, store },
            worker_id,
            failover_ms,
            from,
            metrics_listen,
        } => {
            let initial_position = match from.as_str() {
                "trim_horizon" => InitialPosition::TrimHorizon,
                "latest" => InitialPosition::Latest,
                text => InitialPosition::AtTimestamp(
                    chrono::DateTime::parse_from_rfc3339(text)
                        .map_err(|_| anyhow::anyhow!("--from {text:?}: expected trim_horizon, latest or an RFC 3339 time"))?
                        .timestamp_millis(),
                ),
            };
            let store = store.open().await?;
            sluice::consume::consume(
                store.streams.clone(),
                store.table.clone(),
                sluice::consume::ConsumeOptions {
                    application: app,
                    stream,
                    worker_id: worker_id.unwrap_or_else(sluice::server::process_worker_id),
                    failover: std::time::Duration::from_millis(failover_ms),
                    initial_position,
                    metrics_listen,
                },
            )
            .await?;
        }
        Command::Leases {
            target: AppArgs { app, stream, store },
            json,
        } => {
            let store = store.open().await?;
            let rows =
                sluice::consume::leases(store.streams.clone(), store.table.clone(), &app, &stream)
                    .await?;
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                println!(
                    "{:<24} {:<40} {:>8} {:>10}  CHECKPOINT",
                    "SHARD", "OWNER", "COUNTER", "LAG_MS"
                );
                for row in &rows {
                    println!(
                        "{:<24} {:<40} {:>8} {:>10}  {}",
                        row.shard,
                        row.owner.as_deref().unwrap_or("-"),
                        row.counter,
                        row.lag_ms.map_or("?".into(), |l| l.to_string()),
                        row.checkpoint
                    );
                }
            }
        }
        Command::Sample {
            events,
            seed,
            start,
        } => {
            let start_ms = match start.as_deref() {
                None => sluice_core::sample::DEFAULT_START_MS,
                Some("now") => chrono::Utc::now().timestamp_millis(),
                Some(text) => chrono::DateTime::parse_from_rfc3339(text)
                    .map_err(|_| {
                        anyhow::anyhow!("--start {text:?}: expected `now` or an RFC 3339 time")
                    })?
                    .timestamp_millis(),
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for event in sluice_core::sample::Sample::starting_at(seed, start_ms).take(events) {
                if let Err(e) = writeln!(out, "{}", event.to_json()) {
                    // A reader that stops early (`| head`) is not an error.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(std::process::ExitCode::SUCCESS);
                    }
                    return Err(e.into());
                }
            }
            if let Err(e) = out.flush() {
                if e.kind() != std::io::ErrorKind::BrokenPipe {
                    return Err(e.into());
                }
            }
        }
        Command::Views {
            name,
            from,
            to,
            json,
            url,
            token,
        } => {
            let text = sluice::cli::views(
                &url,
                name.as_deref(),
                from.as_deref(),
                to.as_deref(),
                json,
                token.as_deref(),
            )
            .await?;
            print!("{text}");
        }
        Command::Bench(BenchCommand::Live(bench)) => {
            let (rate, subscribers) = (bench.rate, bench.subscribers);
            let report = sluice::bench::live(bench).await?;
            println!(
                "{} events at {rate}/s to {subscribers} subscribers: the fewest delivered to one {}; POST to SSE p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                report.sent,
                report.least_delivered,
                report.p50.as_secs_f64() * 1e3,
                report.p99.as_secs_f64() * 1e3,
                report.max.as_secs_f64() * 1e3,
            );
            if report.least_delivered < report.sent {
                return Ok(std::process::ExitCode::from(2));
            }
        }
        Command::CheckConfig { config } => {
            let path = find_config(config);
            let parsed = Config::load(path.as_deref())?;
            println!(
                "{}: ok ({} routes, streams: {})",
                path.map_or("built-in default".into(), |p| p.display().to_string()),
                parsed.routes.len(),
                parsed.rules().streams().join(", ")
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn run_pipeline(args: RunArgs, router: bool) -> anyhow::Result<()> {
    let config = Config::load(find_config(args.config).as_deref())?;
    sluice::server::up(sluice::server::UpOptions {
        config,
        data_dir: args.data_dir,
        listen: args.listen,
        router,
        backend: backend_kind(args.backend.as_deref()),
    })
    .await
}
