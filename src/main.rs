//! The skyfuse command line: serve | index | search | ask | sources | eval | calibrate | route | keys
//! | config.
//!
//! Without `--server`, `index`, `search`, `ask` and `eval` start the service from
//! the config (or the embedded default) inside this process and talk to it over
//! the same gRPC API a remote client uses. One file per command under `cli/`.

mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

use skyfuse::api::proto;

/// See Cargo.toml: the allocator is a measured part of the hot path (built
/// without transparent huge pages, which doubled the resident heap).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Sent as `authorization: Bearer <token>` to a protected server: an API key or a JWT.
    #[arg(long, global = true, env = "SKYFUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
        /// Delete the chunks of indexed objects that --include/--exclude leave out (each is
        /// reported), and let an empty listing delete what was indexed from the URL.
        #[arg(long)]
        prune: bool,
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
        /// Only chunks that match: a filter as JSON, in the shape of `/v1/search`'s
        /// (`{"condition": {"field": "metadata.team", "eq": "search"}}`).
        #[arg(long)]
        filter: Option<String>,
        /// Only chunks of this tenant.
        #[arg(long)]
        namespace: Option<String>,
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
        /// Only passages that match: a filter as JSON, as for `search --filter`.
        #[arg(long)]
        filter: Option<String>,
        /// Only passages of this tenant.
        #[arg(long)]
        namespace: Option<String>,
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
    /// Where a workload should run and why: the seed's capability tables (which cloud
    /// offers which model family, private deployment, reserved capacity, fine-tuning,
    /// embedding sizes) weighed with this config's deployments, residency rules and
    /// egress prices. Reads the config; sends nothing.
    Placement {
        /// A model (gpt-4o, claude-3-5-sonnet) or family (claude, llama, gemini).
        #[arg(long)]
        model: Option<String>,
        /// The data must be processed on private, dedicated hardware.
        #[arg(long)]
        sovereignty: bool,
        /// Reserved capacity at a flat rate (Azure PTU, OCI DAC).
        #[arg(long)]
        predictable_cost: bool,
        #[arg(long)]
        fine_tuning: bool,
        /// As close to the data as possible.
        #[arg(long)]
        lowest_latency: bool,
        /// Many model families behind one API.
        #[arg(long)]
        multi_model: bool,
        /// microsoft, oracle, google or aws.
        #[arg(long)]
        ecosystem: Option<String>,
        /// The embedding dimension the vectors need.
        #[arg(long)]
        embedding_dims: Option<u32>,
        /// The cloud the workload's data lives in.
        #[arg(long)]
        data_cloud: Option<String>,
        /// The region the workload's data lives in (with --data-cloud).
        #[arg(long)]
        data_region: Option<String>,
    },
    /// The extraction worker `serve` starts itself (frames on stdin/stdout).
    #[command(hide = true)]
    ExtractWorker {
        /// CPU seconds per object.
        #[arg(long, default_value_t = 30)]
        cpu_seconds: u64,
    },
    /// API keys for [[caller]]s: the config holds only their SHA-256.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Work with a config file without serving it.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Load and validate the config (--config, else the embedded default) as `serve`
    /// does, without opening a store, loading a model, resolving a secret or contacting
    /// anything; print what it would serve, or the problem naming the key (exit 1).
    Check,
}

#[derive(Subcommand)]
enum KeysAction {
    /// Read a key from stdin and print its sha256 hex (for `api_key_sha256`).
    Hash,
    /// Print a fresh random key and its sha256 hex.
    New,
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
        /// A passage the answer would carry: cloud/region[:class,...][@bytes]
        /// (azure/westeurope:pii@4000); repeat for several. Adds each candidate's
        /// residency verdicts and the cost of moving them.
        #[arg(long = "passage")]
        passages: Vec<String>,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::ExtractWorker { cpu_seconds } = cli.command {
        return cli::extract_worker::run(cpu_seconds);
    }
    tokio::runtime::Runtime::new()?.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let log_level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    skyfuse::telemetry::init(log_level);
    match cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => cli::config::run_check(cli.config),
        Command::Keys { action } => match action {
            KeysAction::Hash => cli::keys::run_hash(),
            KeysAction::New => cli::keys::run_new(),
        },
        Command::Serve { listen } => cli::serve::run_serve(cli.config, listen).await,
        Command::Index {
            url,
            index,
            include,
            exclude,
            watch,
            prune,
            server,
        } => {
            let url = cli::index::absolute_if_local(&url);
            let channel =
                cli::index::channel_for(server, cli.config, &url, cli.token.as_deref()).await?;
            let request = proto::IndexRequest {
                url,
                index,
                include,
                exclude,
                prune,
                detached: false,
            };
            match watch {
                None => cli::index::run_index(channel, request).await,
                Some(seconds) => {
                    cli::index::watch_index(channel, request, Duration::from_secs(seconds)).await
                }
            }
        }
        Command::Search {
            query,
            top_k,
            sources,
            fusion,
            explain,
            filter,
            namespace,
            server,
        } => {
            // Checked before connecting: a typo fails fast, naming the problem.
            let filter = cli::query::filter_arg(filter.as_deref())?;
            let channel = cli::channel(server, cli.config, cli.token.as_deref()).await?;
            let request = proto::SearchRequest {
                query,
                top_k,
                sources,
                fusion: Fusion::to_proto(fusion),
                include_text: false,
                adapter_from: String::new(),
                filter,
                namespace: namespace.unwrap_or_default(),
                ..Default::default()
            };
            cli::query::run_search(channel, request, explain).await
        }
        Command::Ask {
            question,
            top_k,
            model,
            filter,
            namespace,
            server,
        } => {
            let request = proto::AnswerRequest {
                question,
                top_k: top_k.unwrap_or(0),
                model: model.unwrap_or_default(),
                filter: cli::query::filter_arg(filter.as_deref())?,
                namespace: namespace.unwrap_or_default(),
                ..Default::default()
            };
            let channel = cli::channel(server, cli.config, cli.token.as_deref()).await?;
            cli::query::run_ask(channel, request).await
        }
        Command::Sources { server } => {
            let channel = cli::channel(server, cli.config, cli.token.as_deref()).await?;
            cli::query::run_sources(channel).await
        }
        Command::Eval {
            dataset,
            data_dir,
            fusion,
            concurrency,
            adapter_from,
        } => {
            let options = cli::eval::EvalOptions {
                fusion,
                concurrency,
                adapter_from,
            };
            cli::eval::run_eval(cli.config, dataset, data_dir, options).await
        }
        Command::Calibrate {
            from,
            to,
            sample,
            method,
        } => cli::calibrate::run_calibrate(cli.config, &from, &to, sample, method).await,
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
                    passages,
                },
        } => {
            let request = skyfuse::route::RouteRequest {
                model,
                tier,
                clouds,
                regions,
                input_tokens: prompt_tokens,
                max_output_tokens,
                egress_usd_by_cloud: Vec::new(),
            };
            cli::route::route_explain(cli.config, request, caller.as_deref(), &passages)
        }
        Command::Placement {
            model,
            sovereignty,
            predictable_cost,
            fine_tuning,
            lowest_latency,
            multi_model,
            ecosystem,
            embedding_dims,
            data_cloud,
            data_region,
        } => {
            let requirements = skyfuse::policy::placement::Requirements {
                model,
                sovereignty,
                predictable_cost,
                fine_tuning,
                lowest_latency,
                multi_model,
                ecosystem,
                embedding_dims,
                data_cloud,
                data_region,
            };
            cli::placement::placement(cli.config, requirements)
        }
        Command::ExtractWorker { .. } => {
            anyhow::bail!("extract-worker runs without the async runtime, from main")
        }
    }
}
