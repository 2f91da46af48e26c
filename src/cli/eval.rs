//! `skyfuse eval`: index a BEIR dataset and score every source and the fused list.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::Connection as Channel;
use anyhow::{Result, bail};
use futures::StreamExt;

use skyfuse::api::proto;
use skyfuse::api::proto::admin_service_client::AdminServiceClient;
use skyfuse::api::proto::retrieval_service_client::RetrievalServiceClient;
use skyfuse::client::{connect, load_config};
use skyfuse::config::home::skyfuse_home;
use skyfuse::config::{RecordIdScope, process_env};
use skyfuse::eval::{Benchmark, score_run};

use super::index::run_index;
use crate::Fusion;

pub struct EvalOptions {
    pub fusion: Option<Fusion>,
    pub concurrency: usize,
    pub adapter_from: Option<String>,
}

/// One evaluated run: a source alone, the fused list, or a source reached by an adapter.
struct EvalRun {
    name: String,
    sources: Vec<String>,
    adapter_from: String,
}

pub async fn run_eval(
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
    // By default beside the embedded default's data, in the skyfuse home: the same index
    // whatever folder eval runs from.
    config.server.data_dir = std::path::absolute(data_dir.unwrap_or_else(|| {
        skyfuse_home(&process_env())
            .join("indexes")
            .join(format!("eval-{dataset_name}"))
    }))?;
    // Every query asks for 100 hits per source and fused.
    config.search.candidates_per_source = config.search.candidates_per_source.max(100);
    // BEIR ids are corpus-wide and the judgements name them as they are.
    for index in &mut config.indexes {
        index.record_ids = RecordIdScope::Global;
    }
    // The in-process service may read the dataset: its user is the operator.
    config.ingest.roots.push(dataset.canonicalize()?);
    let indexes: Vec<String> = config
        .indexes
        .iter()
        .map(|index| index.id.clone())
        .collect();
    let channel = super::with_token(connect(None, config).await?, None)?;

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
                ..Default::default()
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
