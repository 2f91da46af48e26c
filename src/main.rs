//! The skyfuse command line: serve | index | search | ask | sources | eval.
//!
//! Without `--server`, `index`, `search`, `ask` and `eval` start the service from
//! the config (or the embedded default) inside this process and talk to it over
//! the same gRPC API a remote client uses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use tonic::transport::Channel;

use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::generation_service_client::GenerationServiceClient;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use skyfuse::api::{Listeners, serve};
use skyfuse::client::{connect, load_config};
use skyfuse::config::process_env;
use skyfuse::embed::adapter::FitMethod;
use skyfuse::eval::{Benchmark, score_run};
use skyfuse::service::Service;

#[derive(Parser)]
#[command(
    name = "skyfuse",
    version,
    about = "Federated RAG retrieval: index buckets, search every store at once, answer."
)]
struct Cli {
    /// Config file (TOML); without it, the embedded default: ./indexes/local, tantivy + MiniLM.
    #[arg(long, global = true, env = "SKYFUSE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gRPC API (and the OpenAI-compatible facade when facade.listen is set)
    /// until Ctrl-C or SIGTERM; calls in flight get server.shutdown_grace_ms to finish.
    Serve {
        /// Overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Index a folder or bucket URL (incremental: unchanged objects are skipped).
    ///
    /// s3://bucket/prefix, az://container/prefix, abfs://..., gs://bucket/prefix or a path.
    /// Credentials come from a matching [[bucket]] in the config, else from the cloud's
    /// standard environment variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AZURE_STORAGE_*,
    /// GOOGLE_SERVICE_ACCOUNT...).
    Index {
        /// A path or URL; with --server, as the server sees it.
        url: String,
        /// Index id; default: the first [[index]] in the config.
        #[arg(long, default_value = "")]
        index: String,
        /// Only keys matching this glob, relative to the URL's prefix (repeatable): '**/*.md'.
        #[arg(long)]
        include: Vec<String>,
        /// Leave out keys matching this glob (repeatable): 'drafts/**'.
        #[arg(long)]
        exclude: Vec<String>,
        /// Keep syncing: start a new run this many seconds after each one ends (Ctrl-C stops).
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
        #[arg(long)]
        server: Option<String>,
    },
    /// Search every source and print the fused hits.
    Search {
        query: String,
        #[arg(long, short = 'k', default_value_t = 10)]
        top_k: u32,
        /// Only these sources (repeatable).
        #[arg(long = "source")]
        sources: Vec<String>,
        #[arg(long, value_enum)]
        fusion: Option<Fusion>,
        /// Print each hit's per-source ranks and scores.
        #[arg(long)]
        explain: bool,
        #[arg(long)]
        server: Option<String>,
    },
    /// Answer a question from the indexed documents, with citations.
    Ask {
        question: String,
        #[arg(long, short = 'k')]
        top_k: Option<u32>,
        /// Model to answer with; `extractive` for the no-LLM answer.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        server: Option<String>,
    },
    /// List the sources and their chunk counts.
    Sources {
        #[arg(long)]
        server: Option<String>,
    },
    /// Index a BEIR dataset and report nDCG@10 and recall@100 per source and fused.
    Eval {
        /// Folder with corpus.jsonl, queries.jsonl and qrels/test.tsv.
        #[arg(long)]
        dataset: PathBuf,
        /// Where the evaluation index lives; default indexes/eval-<dataset name>.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, value_enum)]
        fusion: Option<Fusion>,
        /// Searches in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Also score the dense sources of other spaces reached from this space through
        /// the adapters `calibrate` fitted, beside their native scores.
        #[arg(long)]
        adapter_from: Option<String>,
    },
    /// Fit an adapter between two embedding spaces on a sample of indexed chunks.
    /// A server picks it up when it starts.
    Calibrate {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
        /// Chunks to embed in both spaces (a tenth is held out to measure the fit).
        #[arg(long, default_value_t = 2000)]
        sample: usize,
        #[arg(long, value_enum, default_value_t = Fit::LeastSquares)]
        method: Fit,
    },
    /// Show where a chat request would go: candidates in order, why each is there,
    /// and why other deployments were skipped. Reads the config; sends nothing.
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
}

#[derive(Subcommand)]
enum RouteAction {
    Explain {
        /// A model; without it, --tier, else routing.default_model.
        #[arg(long)]
        model: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        /// Clouds the prompt may go to, comma-separated.
        #[arg(long, value_delimiter = ',')]
        clouds: Vec<String>,
        /// Regions the prompt may go to, comma-separated globs (eu-*,europe-*).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<String>,
        /// Estimated prompt tokens.
        #[arg(long, default_value_t = 2_000)]
        prompt_tokens: u64,
        #[arg(long, default_value_t = 512)]
        max_output_tokens: u64,
        /// Explain as this [[caller]] (its permissions apply).
        #[arg(long)]
        caller: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Fit {
    LeastSquares,
    Procrustes,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fusion {
    Rrf,
    Dbsf,
}

impl Fusion {
    fn to_proto(option: Option<Self>) -> i32 {
        match option {
            None => proto::FusionMethod::Unspecified as i32,
            Some(Self::Rrf) => proto::FusionMethod::Rrf as i32,
            Some(Self::Dbsf) => proto::FusionMethod::Dbsf as i32,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let log_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    skyfuse::telemetry::init(log_level);
    match cli.command {
        Command::Serve { listen } => run_serve(cli.config, listen).await,
        Command::Index {
            url,
            index,
            include,
            exclude,
            watch,
            server,
        } => {
            let channel = channel(server, cli.config).await?;
            let request = proto::IndexRequest {
                url: absolute_if_local(&url),
                index,
                include,
                exclude,
            };
            match watch {
                None => run_index(channel, request).await,
                Some(seconds) => watch_index(channel, request, Duration::from_secs(seconds)).await,
            }
        }
        Command::Search {
            query,
            top_k,
            sources,
            fusion,
            explain,
            server,
        } => {
            let channel = channel(server, cli.config).await?;
            let request = proto::SearchRequest {
                query,
                top_k,
                sources,
                fusion: Fusion::to_proto(fusion),
                include_text: false,
                adapter_from: String::new(),
            };
            run_search(channel, request, explain).await
        }
        Command::Ask {
            question,
            top_k,
            model,
            server,
        } => {
            let channel = channel(server, cli.config).await?;
            run_ask(channel, question, top_k, model).await
        }
        Command::Sources { server } => {
            let channel = channel(server, cli.config).await?;
            run_sources(channel).await
        }
        Command::Eval {
            dataset,
            data_dir,
            fusion,
            concurrency,
            adapter_from,
        } => {
            let options = EvalOptions {
                fusion,
                concurrency,
                adapter_from,
            };
            run_eval(cli.config, dataset, data_dir, options).await
        }
        Command::Calibrate {
            from,
            to,
            sample,
            method,
        } => run_calibrate(cli.config, &from, &to, sample, method).await,
        Command::Route {
            action:
                RouteAction::Explain {
                    model,
                    tier,
                    clouds,
                    regions,
                    prompt_tokens,
                    max_output_tokens,
                    caller,
                },
        } => {
            let request = skyfuse::route::RouteRequest {
                model,
                tier,
                clouds,
                regions,
                input_tokens: prompt_tokens,
                max_output_tokens,
            };
            route_explain(cli.config, request, caller.as_deref())
        }
    }
}

fn route_explain(
    config: Option<PathBuf>,
    request: skyfuse::route::RouteRequest,
    caller: Option<&str>,
) -> Result<()> {
    let config = load_config(config.as_deref())?;
    let Some(router) = Service::planning_router(&config)? else {
        bail!("no chat model is configured: add [[deployment]]s or answer.provider");
    };
    let caller = match caller {
        None => skyfuse::route::Caller::anonymous(),
        Some(id) => match config.callers.iter().find(|known| known.id == id) {
            Some(known) => skyfuse::route::Caller::from_config(known),
            None => bail!("no [[caller]] has id {id:?}"),
        },
    };
    let plan = router.plan(&caller, &request)?;
    let asked = match (&request.model, &plan.tier) {
        (Some(model), _) => format!("model {model}"),
        (None, Some(tier)) => format!("tier {tier}"),
        (None, None) => "the default model".to_string(),
    };
    println!(
        "{asked}, ~{} prompt + {} output tokens, caller {}:",
        request.input_tokens, request.max_output_tokens, caller.id
    );
    if plan.candidates.is_empty() {
        println!("  no candidate");
    }
    for (rank, candidate) in plan.candidates.iter().enumerate() {
        let info = candidate.deployment.info();
        let cost = candidate
            .max_cost_usd
            .map_or("price unknown".to_string(), |cost| {
                format!("at most ${cost:.5}")
            });
        println!(
            "  {}. {:<40} {:<8} {:<14} {cost:<18} {}",
            rank + 1,
            candidate.deployment.label(),
            info.cloud,
            info.region,
            candidate.why
        );
    }
    if !plan.skipped.is_empty() {
        println!("skipped:");
        for skip in &plan.skipped {
            println!("  {:<40} {}", skip.deployment, skip.reason);
        }
    }
    Ok(())
}

async fn channel(server: Option<String>, config: Option<PathBuf>) -> Result<Channel> {
    let config = if server.is_some() {
        skyfuse::config::Config::embedded_default()
    } else {
        load_config(config.as_deref())?
    };
    Ok(connect(server.as_deref(), config).await?)
}

async fn run_calibrate(
    config: Option<PathBuf>,
    from: &str,
    to: &str,
    sample: usize,
    method: Fit,
) -> Result<()> {
    let config = load_config(config.as_deref())?;
    let service = Service::build(config, &process_env()).await?;
    let method = match method {
        Fit::LeastSquares => FitMethod::LeastSquares,
        Fit::Procrustes => FitMethod::Procrustes,
    };
    let report = service.calibrate(from, to, sample, method).await?;
    println!(
        "adapter {from} -> {to}: fitted on {} chunks in {:.1}s; mean cosine to the native vectors of {} held-out chunks {:.4}\nsaved to {}",
        report.fitted_on,
        report.took.as_secs_f64(),
        report.held_out,
        report.held_out_cosine,
        report.path.display()
    );
    Ok(())
}

async fn run_serve(config: Option<PathBuf>, listen: Option<String>) -> Result<()> {
    let mut config = load_config(config.as_deref())?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    let started = Instant::now();
    let service = Arc::new(Service::build(config, &process_env()).await?);
    let listeners = Listeners::bind(&service).await?;
    let sources: Vec<String> = service
        .list_sources()
        .await
        .into_iter()
        .map(|source| format!("{} ({} chunks)", source.info.id, source.chunks.unwrap_or(0)))
        .collect();
    tracing::info!(
        address = %listeners.grpc.local_addr()?,
        sources = %sources.join(", "),
        startup_ms = started.elapsed().as_millis() as u64,
        "skyfuse listening (gRPC, health, reflection)"
    );
    if let Some(listener) = &listeners.openai {
        tracing::info!(address = %listener.local_addr()?, models = %service.chat_models().join(", "), "OpenAI-compatible facade listening");
    }
    serve(service, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM (how container runtimes and systemd stop a process).
async fn shutdown_signal() {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

async fn run_index(channel: Channel, request: proto::IndexRequest) -> Result<()> {
    let mut client = IngestionServiceClient::new(channel);
    let url = request.url.clone();
    let mut stream = client.index(request).await?.into_inner();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} listed  {msg}",
        )
        .expect("static progress template"),
    );
    let mut last = proto::IndexProgress::default();
    while let Some(progress) = stream.message().await? {
        bar.set_length(progress.listed);
        bar.set_position(
            progress.indexed + progress.unchanged + progress.skipped + progress.failed,
        );
        bar.set_message(format!(
            "{} fetched ({}), {} indexed, {} unchanged, {} skipped, {} failed, {} chunks ({:.0}/s)",
            progress.fetched,
            HumanBytes(progress.bytes),
            progress.indexed,
            progress.unchanged,
            progress.skipped,
            progress.failed,
            progress.chunks,
            progress.chunks_per_second,
        ));
        last = progress;
    }
    bar.finish();
    if !last.done {
        bail!("indexing stream ended before the run finished");
    }
    println!(
        "indexed {url}: {} listed, {} excluded, {} fetched, {} indexed, {} unchanged, {} deleted, {} skipped, {} failed, {} chunks, {} bytes in {:.1}s",
        last.listed,
        last.excluded,
        last.fetched,
        last.indexed,
        last.unchanged,
        last.deleted,
        last.skipped,
        last.failed,
        last.chunks,
        last.bytes,
        last.elapsed_millis as f64 / 1000.0
    );
    for failure in &last.failures {
        let kind = match proto::IssueKind::try_from(failure.kind) {
            Ok(proto::IssueKind::Failed) => "failed",
            Ok(proto::IssueKind::Skipped) => "skipped",
            Ok(proto::IssueKind::Record) => "bad record",
            Ok(proto::IssueKind::Listing) => "listing failed",
            Ok(proto::IssueKind::Unspecified) | Err(_) => "issue",
        };
        println!("  {kind}: {}: {}", failure.key, failure.reason);
    }
    // An incomplete listing is an incomplete sync: say so in the exit status. Failed
    // objects do not change it: they are reported, and retried by the next run.
    if last
        .failures
        .iter()
        .any(|failure| failure.kind == proto::IssueKind::Listing as i32)
    {
        bail!(
            "the listing of {url} failed, so objects missing from it were not deleted; see above"
        );
    }
    Ok(())
}

/// Re-syncs `request` every `interval` until Ctrl-C. A failed run (an unreachable bucket, a
/// busy index) is reported and retried at the next tick, as a sync daemon should.
async fn watch_index(
    channel: Channel,
    request: proto::IndexRequest,
    interval: Duration,
) -> Result<()> {
    loop {
        if let Err(error) = run_index(channel.clone(), request.clone()).await {
            eprintln!("sync failed: {error:#}");
        }
        println!("next sync in {}s (Ctrl-C stops)", interval.as_secs());
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// Relative paths mean the caller's current directory.
fn absolute_if_local(url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    std::path::absolute(url).map_or_else(|_| url.to_string(), |path| path.display().to_string())
}

async fn run_search(channel: Channel, request: proto::SearchRequest, explain: bool) -> Result<()> {
    let response = RetrievalServiceClient::new(channel)
        .search(request)
        .await?
        .into_inner();
    for hit in &response.hits {
        let sources: Vec<String> = hit
            .explain
            .iter()
            .map(|source| format!("{}#{}", source.source, source.rank))
            .collect();
        let title = if hit.title.is_empty() {
            String::new()
        } else {
            format!("  {}", hit.title)
        };
        println!(
            "{:>3}. {}  [{}]  {}{}",
            hit.rank,
            hit.doc_id,
            sources.join(" "),
            hit.object_key,
            title
        );
        if explain {
            if !hit.cloud.is_empty() {
                println!("       stored in {} / {}", hit.cloud, hit.region);
            }
            for source in &hit.explain {
                println!(
                    "       {}: rank {} score {:.4} -> +{:.5} ({})",
                    source.source, source.rank, source.score, source.contribution, source.chunk_id
                );
            }
        }
    }
    if response.hits.is_empty() {
        println!("no hits");
    }
    print_outcomes(&response.sources, response.degraded);
    println!("took {:.1} ms", response.took_micros as f64 / 1000.0);
    Ok(())
}

fn print_outcomes(outcomes: &[proto::SourceOutcome], degraded: bool) {
    if !degraded {
        return;
    }
    eprintln!("degraded: some sources did not answer");
    for outcome in outcomes {
        if outcome.status != proto::SourceStatus::Ok as i32 {
            let status = proto::SourceStatus::try_from(outcome.status)
                .map_or("unknown", |status| status.as_str_name());
            eprintln!("  {}: {} {}", outcome.source, status, outcome.message);
        }
    }
}

async fn run_ask(
    channel: Channel,
    question: String,
    top_k: Option<u32>,
    model: Option<String>,
) -> Result<()> {
    let request = proto::AnswerRequest {
        question,
        top_k: top_k.unwrap_or(0),
        model: model.unwrap_or_default(),
        ..Default::default()
    };
    let mut stream = GenerationServiceClient::new(channel)
        .answer(request)
        .await?
        .into_inner();
    use std::io::Write;
    while let Some(event) = stream.message().await? {
        match event.event {
            Some(proto::answer_event::Event::Token(text)) => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            Some(proto::answer_event::Event::Done(done)) => {
                println!();
                let route = done.route.unwrap_or_default();
                let label = if route.extractive {
                    " (extractive: no LLM, sentences quoted from the passages)"
                } else {
                    ""
                };
                println!("\nanswered by {}/{}{label}", route.provider, route.model);
                for attempt in route
                    .attempts
                    .iter()
                    .filter(|attempt| attempt.outcome != "ok")
                {
                    println!("  failed attempt {}: {}", attempt.provider, attempt.message);
                }
                for citation in &done.citations {
                    println!(
                        "[{}] {}  {}  {}",
                        citation.number, citation.doc_id, citation.object_key, citation.title
                    );
                }
                let usage = done.usage.unwrap_or_default();
                println!(
                    "usage: {} in, {} out{}; cost ${:.6}",
                    usage.input_tokens,
                    usage.output_tokens,
                    if usage.estimated { " (estimated)" } else { "" },
                    done.cost.unwrap_or_default().usd
                );
                print_outcomes(&done.sources, done.degraded);
            }
            Some(proto::answer_event::Event::Error(error)) => {
                println!();
                bail!("answer broke off: {} {}", error.code, error.message);
            }
            None => {}
        }
    }
    Ok(())
}

async fn run_sources(channel: Channel) -> Result<()> {
    let response = AdminServiceClient::new(channel)
        .list_sources(proto::ListSourcesRequest {})
        .await?
        .into_inner();
    for source in response.sources {
        let chunks = source
            .chunks
            .map_or("?".to_string(), |chunks| chunks.to_string());
        let space = if source.space.is_empty() {
            String::new()
        } else {
            format!(" space={} dims={}", source.space, source.dims)
        };
        println!(
            "{}  {} ({}){space} cloud={} region={} weight={} chunks={chunks}",
            source.id, source.backend, source.kind, source.cloud, source.region, source.weight
        );
    }
    Ok(())
}

struct EvalOptions {
    fusion: Option<Fusion>,
    concurrency: usize,
    adapter_from: Option<String>,
}

/// One evaluated run: a source alone, the fused list, or a source reached by an adapter.
struct EvalRun {
    name: String,
    sources: Vec<String>,
    adapter_from: String,
}

async fn run_eval(
    config_path: Option<PathBuf>,
    dataset: PathBuf,
    data_dir: Option<PathBuf>,
    options: EvalOptions,
) -> Result<()> {
    let benchmark = Benchmark::load(&dataset)?;
    let corpus = dataset.join("corpus.jsonl");
    if !corpus.is_file() {
        bail!("{} is missing", corpus.display());
    }
    let mut config = load_config(config_path.as_deref())?;
    let dataset_name = dataset
        .canonicalize()?
        .file_name()
        .map_or("dataset".to_string(), |name| {
            name.to_string_lossy().into_owned()
        });
    config.server.data_dir = std::path::absolute(
        data_dir.unwrap_or_else(|| PathBuf::from("indexes").join(format!("eval-{dataset_name}"))),
    )?;
    // Every query asks for 100 hits per source and fused.
    config.search.candidates_per_source = config.search.candidates_per_source.max(100);
    let indexes: Vec<String> = config
        .indexes
        .iter()
        .map(|index| index.id.clone())
        .collect();
    let channel = connect(None, config).await?;

    // Every index of the config, so that sources of several spaces are all compared.
    for index in indexes {
        let index_started = Instant::now();
        let request = proto::IndexRequest {
            url: corpus.display().to_string(),
            index: index.clone(),
            ..Default::default()
        };
        run_index(channel.clone(), request).await?;
        println!(
            "indexing {index} took {:.1}s",
            index_started.elapsed().as_secs_f64()
        );
    }

    let sources = AdminServiceClient::new(channel.clone())
        .list_sources(proto::ListSourcesRequest {})
        .await?
        .into_inner()
        .sources;
    let run = |name: String, sources: Vec<String>, adapter_from: &str| EvalRun {
        name,
        sources,
        adapter_from: adapter_from.to_string(),
    };
    let mut runs: Vec<EvalRun> = sources
        .iter()
        .map(|source| run(source.id.clone(), vec![source.id.clone()], ""))
        .collect();
    runs.push(run("fused".to_string(), Vec::new(), ""));
    if let Some(from) = &options.adapter_from {
        for source in &sources {
            if !source.space.is_empty() && &source.space != from {
                let name = format!("{} via {from}", source.id);
                runs.push(run(name, vec![source.id.clone()], from));
            }
        }
    }

    println!(
        "\n{} queries from {}",
        benchmark.queries.len(),
        dataset.display()
    );
    println!(
        "{:<24} {:>9} {:>10} {:>11} {:>10} {:>10}",
        "run", "nDCG@10", "recall@10", "recall@100", "p50 ms", "p99 ms"
    );
    for EvalRun {
        name,
        sources: run_sources,
        adapter_from,
    } in runs
    {
        let (ranked, mut latencies) = search_all(
            &channel,
            &benchmark,
            &run_sources,
            Fusion::to_proto(options.fusion),
            options.concurrency,
            &adapter_from,
        )
        .await?;
        let scores = score_run(&benchmark, &ranked);
        latencies.sort_unstable();
        let percentile = |share: f64| {
            latencies
                .get(((latencies.len() as f64 * share).ceil() as usize).saturating_sub(1))
                .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
        };
        println!(
            "{name:<24} {:>9.4} {:>10.4} {:>11.4} {:>10.1} {:>10.1}",
            scores.ndcg_at_10,
            scores.recall_at_10,
            scores.recall_at_100,
            percentile(0.50),
            percentile(0.99)
        );
    }
    Ok(())
}

/// Runs every benchmark query through gRPC `Search`; returns ranked doc ids per
/// query id and each call's latency.
async fn search_all(
    channel: &Channel,
    benchmark: &Benchmark,
    sources: &[String],
    fusion: i32,
    concurrency: usize,
    adapter_from: &str,
) -> Result<(HashMap<String, Vec<String>>, Vec<Duration>)> {
    let results = futures::stream::iter(benchmark.queries.iter().cloned())
        .map(|(query_id, text)| {
            let mut client = RetrievalServiceClient::new(channel.clone());
            let request = proto::SearchRequest {
                query: text,
                top_k: 100,
                sources: sources.to_vec(),
                fusion,
                include_text: false,
                adapter_from: adapter_from.to_string(),
            };
            async move {
                let started = Instant::now();
                let response = client.search(request).await?.into_inner();
                let took = started.elapsed();
                if response.degraded {
                    bail!(
                        "query {query_id}: search was degraded: {:?}",
                        response.sources
                    );
                }
                let ranked = response.hits.into_iter().map(|hit| hit.doc_id).collect();
                Ok::<_, anyhow::Error>((query_id, ranked, took))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let mut ranked = HashMap::new();
    let mut latencies = Vec::new();
    for result in results {
        let (query_id, docs, took) = result?;
        ranked.insert(query_id, docs);
        latencies.push(took);
    }
    Ok((ranked, latencies))
}
