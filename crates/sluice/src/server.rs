//! `sluice up`: the whole pipeline in one process on the embedded backend —
//! collector, router worker and read API on one listen address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;

use sluice_backends::fault::{Faults, FaultyStreams};
use sluice_backends::local::{LocalBackend, LocalStreamOptions};
use sluice_client::consumer::WorkerHandle;
use sluice_client::{Producer, ProducerConfig};
use sluice_core::{StreamBackend, StreamError, TableBackend, TableError};

use crate::auth::{require_token, Tokens};
use crate::collector::recent::RecentEvents;
use crate::collector::sites::Sites;
use crate::collector::{ingest::IngestRules, Collector};
use crate::config::{AwsBackendConfig, BackendConfig, Config};
use crate::health::{BackendProbe, Health};
use crate::http::HttpLimits;
use crate::router::worker::{RouterWorker, WorkerSettings};
use crate::router::RouteAndDeliver;

/// What `sluice up` runs with.
pub struct UpOptions {
    pub config: Config,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    /// Run the router too (`sluice up`), or only the collector and read API
    /// (`sluice collector`).
    pub router: bool,
    /// Overrides `backend.kind` of the configuration.
    pub backend: Option<BackendKind>,
}

/// Which backend to run on, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Local,
    Aws,
}

/// The router worker running in this process, with its output producers.
struct RunningRouter {
    worker: WorkerHandle,
    producers: Vec<Producer>,
}

impl RunningRouter {
    async fn start(
        config: &Config,
        streams: Arc<dyn StreamBackend>,
        table: Arc<dyn TableBackend>,
        worker_id: &str,
    ) -> anyhow::Result<Self> {
        let rules = Arc::new(config.rules());
        let mut producers = Vec::new();
        for name in rules.streams() {
            let producer_config = crate::router::output_producer_config(config, name);
            producers.push(Producer::start(streams.clone(), name, producer_config).await?);
        }
        let deliver = Arc::new(RouteAndDeliver {
            rules,
            options: crate::router::router_options(config),
            producers: producers.clone(),
        });
        let worker = RouterWorker {
            streams,
            table,
            deliver,
            settings: Arc::new(WorkerSettings {
                inbound: config.inbound.clone(),
                checkpoint_table: config.router.checkpoint_table.clone(),
                worker_id: worker_id.to_owned(),
                failover: Duration::from_millis(config.router.failover_ms),
                batch_records: config.router.batch_records,
                idle_poll: Duration::from_millis(config.router.idle_poll_ms),
                backoff: config.router.retry.clone(),
            }),
        };
        Ok(Self {
            worker: worker.start().await?,
            producers,
        })
    }

    /// Lets every shard reader finish its batch, then drains the outputs.
    async fn stop(self) {
        self.worker.shutdown().await;
        for producer in self.producers {
            producer.close().await;
        }
    }
}

/// Where streams and tables live for this run.
pub struct Store {
    pub streams: Arc<dyn StreamBackend>,
    pub table: Arc<dyn TableBackend>,
    pub create_missing: bool,
    pub description: String,
    /// Holds the embedded store (and its lock) open.
    _local: Option<LocalBackend>,
}

/// The backend to run on: the configuration's, unless the command line says
/// otherwise.
pub fn resolve_backend(choice: Option<BackendKind>, configured: &BackendConfig) -> BackendConfig {
    match (choice, configured) {
        (Some(BackendKind::Aws), BackendConfig::Local { .. }) => {
            BackendConfig::Aws(AwsBackendConfig {
                create_missing: true,
                ..AwsBackendConfig::default()
            })
        }
        (Some(BackendKind::Local), BackendConfig::Aws(_)) => BackendConfig::default(),
        (_, configured) => configured.clone(),
    }
}

impl Store {
    /// Opens the backend. Embedded storage belongs to one process: a second
    /// one is refused with the name of the directory.
    pub async fn open(backend: &BackendConfig, data_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        match backend {
            BackendConfig::Local {
                data_dir: configured,
                retention_hours,
            } => {
                let dir = data_dir
                    .or_else(|| configured.clone())
                    .unwrap_or_else(|| PathBuf::from("sluice-data"));
                let local = LocalBackend::open(
                    &dir,
                    LocalStreamOptions {
                        retention_hours: *retention_hours,
                        ..LocalStreamOptions::default()
                    },
                )?;
                let _housekeeping = local.spawn_housekeeping(Duration::from_secs(60));
                Ok(Self {
                    streams: local.streams.clone(),
                    table: local.table.clone(),
                    create_missing: true,
                    description: format!("data in {}", dir.display()),
                    _local: Some(local),
                })
            }
            BackendConfig::Aws(aws) => {
                let settings = aws.settings();
                let (streams, table) = sluice_backends::aws::connect(&settings).await;
                Ok(Self {
                    streams: Arc::new(streams),
                    table: Arc::new(table),
                    create_missing: aws.create_missing,
                    description: format!(
                        "streams on Kinesis{}, tables on DynamoDB{}",
                        aws.kinesis_endpoint
                            .as_ref()
                            .map_or(String::new(), |u| format!(" at {u}")),
                        aws.dynamodb_endpoint
                            .as_ref()
                            .map_or(String::new(), |u| format!(" at {u}")),
                    ),
                    _local: None,
                })
            }
        }
    }
}

/// Creates the inbound stream and every stream the rules name when they are
/// missing and `create_missing` allows it; otherwise a missing stream is an
/// error naming it.
pub async fn ensure_streams(
    streams: &dyn StreamBackend,
    config: &Config,
    create_missing: bool,
) -> anyhow::Result<()> {
    let existing = streams.list_streams().await?;
    let mut wanted = vec![(config.inbound.clone(), config.streams.inbound_shards)];
    for name in config.rules().streams() {
        wanted.push((name.clone(), config.streams.output_shards));
    }
    for (name, shards) in wanted {
        if existing.contains(&name) {
            continue;
        }
        if !create_missing {
            bail!("stream {name} does not exist; create it, or set backend.create_missing = true");
        }
        match streams.create_stream(&name, shards).await {
            Ok(()) | Err(StreamError::AlreadyExists(_)) => {
                tracing::info!(stream = %name, shards, "created stream");
            }
            Err(e) => return Err(e).with_context(|| format!("creating stream {name}")),
        }
    }
    Ok(())
}

/// A name for this process among the workers of a consumer application:
/// host, process id and a random part.
pub fn process_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &random[random.len() - 8..]
    )
}

/// The stream backend behind the configured fault injection, if any.
pub fn with_faults(streams: Arc<dyn StreamBackend>, config: &Config) -> Arc<dyn StreamBackend> {
    let Some(f) = &config.faults else {
        return streams;
    };
    tracing::warn!(
        ?f,
        "fault injection is on: calls will fail, time out and slow down on purpose"
    );
    Arc::new(FaultyStreams::new(
        streams,
        Faults {
            entry_failure_rate: f.entry_failure_rate,
            call_failure_rate: f.call_failure_rate,
            timeout_rate: f.timeout_rate,
            read_throttle_rate: f.read_throttle_rate,
            expired_iterator_rate: f.expired_iterator_rate,
            empty_page_rate: f.empty_page_rate,
            delay_rate: f.delay_rate,
            max_delay: Duration::from_millis(f.max_delay_ms),
            seed: f.seed,
            stall: None,
        },
    ))
}

fn read_tokens(config: &Config) -> anyhow::Result<Vec<String>> {
    let Some(var) = &config.collector.tokens_env else {
        return Ok(Vec::new());
    };
    let value = std::env::var(var)
        .with_context(|| format!("collector.tokens_env names {var}, which is not set"))?;
    let tokens: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        bail!("{var} holds no tokens");
    }
    Ok(tokens)
}

/// What the read side serves: streams' records, live feeds and views.
pub struct ReadApi {
    /// The stream the collector writes: the dashboard's live panel follows it.
    pub inbound: String,
    pub streams: Arc<dyn StreamBackend>,
    pub live: Arc<crate::live::Live>,
    pub views: Arc<crate::views::Views>,
}

impl ReadApi {
    /// Streams' records and live feeds, without views.
    pub fn without_views(streams: Arc<dyn StreamBackend>, tables: Arc<dyn TableBackend>) -> Self {
        Self {
            inbound: "inbound".into(),
            live: crate::live::Live::new(streams.clone(), Default::default()),
            views: Arc::new(crate::views::Views {
                specs: Vec::new(),
                tables,
                table: VIEWS_TABLE.into(),
            }),
            streams,
        }
    }
}

/// The table holding every view's cells.
pub const VIEWS_TABLE: &str = "sluice-views";

/// The HTTP routes: collector (sites by write key, servers by bearer
/// token) and its CORS preflight, the read API (behind the token check when
/// tokens are set), the dashboard and tracker, metrics, liveness and
/// readiness.
pub fn http_routes(
    collector: Arc<Collector>,
    read: ReadApi,
    tokens: Tokens,
    health: Health,
) -> Router {
    let ReadApi {
        inbound,
        streams,
        live,
        views,
    } = read;
    let collector_routes = Router::new()
        .route(
            "/v1/events",
            post(crate::collector::endpoint).options(crate::collector::preflight),
        )
        .with_state((collector.clone(), tokens.clone()));
    let reader = (tokens, collector);
    let streams_for_views = streams.clone();
    let api_routes = Router::new()
        .route("/v1/streams", get(crate::api::list_streams))
        .route("/v1/streams/{name}/records", get(crate::api::read_records))
        .route_layer(middleware::from_fn_with_state(
            reader.clone(),
            require_token,
        ))
        .with_state(streams);
    let live_routes = Router::new()
        .route("/v1/streams/{name}/live", get(crate::live::subscribe))
        .route_layer(middleware::from_fn_with_state(
            reader.clone(),
            require_token,
        ))
        .with_state(live);
    let view_routes = Router::new()
        .route("/v1/views", get(crate::views::query::list))
        .route("/v1/views/{name}", get(crate::views::query::read))
        .route_layer(middleware::from_fn_with_state(reader, require_token))
        .with_state(Arc::new(crate::views::query::ViewsState {
            views,
            streams: streams_for_views,
        }));
    collector_routes
        .merge(api_routes)
        .merge(live_routes)
        .merge(view_routes)
        .route(
            "/metrics",
            get(|| async { sluice_telemetry::registry::render_prometheus() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(crate::health::ready).with_state(Arc::new(health)),
        )
        .route(
            "/",
            get(move || {
                let inbound = inbound.clone();
                async move { crate::dashboard::page(&inbound) }
            }),
        )
        .route(
            "/dashboard.js",
            get(|| async { crate::dashboard::script() }),
        )
        .route("/sdk/v1/sluice.js", get(crate::collector::tracker::script))
        .route("/sdk/v1/sluice.mjs", get(crate::collector::tracker::module))
        .fallback(crate::error::not_found)
        .method_not_allowed_fallback(crate::error::method_not_allowed)
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Runs the pipeline until SIGTERM or Ctrl-C, then drains and returns.
pub async fn up(options: UpOptions) -> anyhow::Result<()> {
    let config = options.config;
    let listen = options.listen.unwrap_or(config.collector.listen);
    let tokens = Tokens::new(read_tokens(&config)?);
    if tokens.is_empty() && !listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {listen} without authentication: set collector.tokens_env to a variable holding bearer tokens, or listen on 127.0.0.1"
        );
    }
    let backend = resolve_backend(options.backend, &config.backend);
    let store = Store::open(&backend, options.data_dir).await?;
    let (mut streams, table) = (store.streams.clone(), store.table.clone());
    if config.faults.is_some() {
        streams = with_faults(streams, &config);
    }
    ensure_streams(streams.as_ref(), &config, store.create_missing).await?;
    if !store.create_missing {
        // The router's checkpoint table must be there too.
        if let Err(TableError::TableNotFound(name)) =
            table.get(&config.router.checkpoint_table, "-").await
        {
            bail!("table {name} does not exist; create it, or set backend.create_missing = true");
        }
    }

    let collector_producer = Producer::start(
        streams.clone(),
        &config.inbound,
        ProducerConfig {
            linger: Duration::from_millis(config.collector.linger_ms),
            aggregate_max_bytes: config
                .collector
                .aggregate
                .then_some(config.collector.aggregate_max_bytes),
            backoff: config.collector.retry.clone(),
            ..ProducerConfig::default()
        },
    )
    .await?;
    let collector = Arc::new(
        Collector::new(
            collector_producer.clone(),
            IngestRules {
                max_event_bytes: config.collector.max_event_bytes,
                max_events: config.collector.max_events_per_request,
                partition_key_header: config.collector.partition_key_header.clone(),
                source: config.collector.source.clone(),
            },
            config.collector.queue_events,
        )
        .with_max_body_bytes(config.collector.max_body_bytes)
        .with_sites(
            Sites::new(
                &config.sites,
                config.collector.trusted_proxies.clone(),
                config.collector.rate_limit_max_clients,
            ),
            RecentEvents::new(
                Duration::from_secs(config.collector.dedup_window_secs),
                config.collector.dedup_max_events,
            ),
        ),
    );

    let router = if options.router {
        // Embedded storage belongs to one process, so its router keeps one
        // name and takes its own leases back at once after a restart; on AWS
        // every process is a worker of its own.
        let worker_id = match &backend {
            BackendConfig::Local { .. } => "sluice-up".to_owned(),
            BackendConfig::Aws(_) => process_worker_id(),
        };
        Some(RunningRouter::start(&config, streams.clone(), table, &worker_id).await?)
    } else {
        None
    };

    let views = Arc::new(crate::views::Views {
        specs: config
            .view_specs()
            .map_err(|e| anyhow::anyhow!(e))?
            .into_iter()
            .map(Arc::new)
            .collect(),
        tables: store.table.clone(),
        table: config.views_table.clone(),
    });
    // Views are kept wherever the read API runs; on AWS the processes
    // share each view's shards through its lease table.
    let view_worker = match &backend {
        BackendConfig::Local { .. } => "sluice-up".to_owned(),
        BackendConfig::Aws(_) => process_worker_id(),
    };
    let running_views = views
        .start(
            streams.clone(),
            &view_worker,
            Duration::from_millis(config.router.failover_ms),
            config.router.retry.clone(),
        )
        .await
        .with_context(|| format!("the views' table {}", config.views_table))?;
    let live = crate::live::Live::new(store.streams.clone(), config.live.clone());
    let mut health = Health::new(collector.clone()).with_backend(
        BackendProbe::start(
            streams.clone(),
            config.inbound.clone(),
            store.table.clone(),
            config.router.checkpoint_table.clone(),
            crate::health::PROBE_EVERY,
        )
        .await,
    );
    if let Some(router) = &router {
        health = health.with_router(router.worker.standing());
    }
    let app = http_routes(
        collector,
        ReadApi {
            inbound: config.inbound.clone(),
            streams: store.streams.clone(),
            live: live.clone(),
            views,
        },
        tokens,
        health,
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let address = listener.local_addr()?;
    let mode = if router.is_some() {
        "collector, router and read API"
    } else {
        "collector and read API; routing is off"
    };
    println!("sluice is up ({mode}): listening on http://{address}");
    println!("  {}", store.description);
    println!("  send events:  curl -H 'content-type: application/json' -d '{{\"type\":\"page_view\",\"payload\":{{}}}}' http://{address}/v1/events");
    println!("  read streams: curl http://{address}/v1/streams");
    println!("  dashboard:    http://{address}/");
    crate::http::serve(
        listener,
        app,
        HttpLimits::from_config(&config.collector),
        async {
            shutdown_signal().await;
            // Live feeds never end by themselves: end them, so their
            // connections close with the rest.
            live.close();
        },
    )
    .await?;

    // Requests in flight have had their answers; now drain the rest.
    collector_producer.close().await;
    if let Some(router) = router {
        router.stop().await;
    }
    running_views.stop().await;
    tracing::info!("stopped");
    Ok(())
}
