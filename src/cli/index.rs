//! `skyfuse index`: one run with its progress, or `--watch` to keep syncing.

use std::time::Duration;

use super::Connection as Channel;
use anyhow::{Result, bail};
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use skyfuse::api::proto;
use skyfuse::api::proto::ingestion_service_client::IngestionServiceClient;

pub async fn run_index(channel: Channel, request: proto::IndexRequest) -> Result<()> {
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
            progress.indexed
                + progress.unchanged
                + progress.skipped
                + progress.failed
                + progress.known_bad,
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
        "indexed {url}: {} listed, {} excluded, {} fetched, {} indexed, {} unchanged, {} deleted, {} pruned, {} kept (not pruned), {} skipped, {} failed, {} known bad, {} chunks, {} bytes in {:.1}s",
        last.listed,
        last.excluded,
        last.fetched,
        last.indexed,
        last.unchanged,
        last.deleted,
        last.pruned,
        last.kept_not_pruned,
        last.skipped,
        last.failed,
        last.known_bad,
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
            Ok(proto::IssueKind::KnownBad) => "known bad",
            Ok(proto::IssueKind::Pruned) => "pruned",
            Ok(proto::IssueKind::NotPruned) => "kept (not pruned)",
            Ok(proto::IssueKind::Unspecified) | Err(_) => "issue",
        };
        println!("  {kind}: {}: {}", failure.key, failure.reason);
    }
    for (left_out, what) in [
        (last.listing_errors_left_out, "listing errors"),
        (last.failures_left_out, "failed objects"),
        (last.known_bad_left_out, "known-bad objects"),
        (last.skips_left_out, "skipped objects"),
        (last.record_problems_left_out, "bad records"),
    ] {
        if left_out > 0 {
            println!("  ... and {left_out} more {what} not listed");
        }
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
pub async fn watch_index(
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

/// A connection to `--server`, or to an in-process service whose `[ingest] roots` also
/// hold the folder `url` names (or a file's folder): the CLI's user is the operator, and
/// may index what they point at. A running server only reads under its own roots.
pub async fn channel_for(
    server: Option<String>,
    config_path: Option<std::path::PathBuf>,
    url: &str,
    token: Option<&str>,
) -> Result<Channel> {
    if server.is_some() {
        return super::channel(server, config_path, token).await;
    }
    let mut config = skyfuse::client::load_config(config_path.as_deref())?;
    if let Some(root) = local_root_for(url) {
        config.ingest.roots.push(root);
    } else if url.contains("://") && config.bucket_for(url).is_none() {
        // A bucket the user names with their own credentials (the standard variables):
        // an entry with no settings of its own lets the in-process service read it.
        let entry = toml::from_str(&format!("url = {url:?}"));
        if let Ok(entry) = entry {
            config.buckets.push(entry);
        }
    }
    super::with_token(skyfuse::client::connect(None, config).await?, token)
}

/// The folder a local `url` names, or a file's folder; `None` for bucket URLs and paths
/// that do not exist (the service then reports them).
fn local_root_for(url: &str) -> Option<std::path::PathBuf> {
    let path = match url.strip_prefix("file://") {
        Some(_) => url::Url::parse(url).ok()?.to_file_path().ok()?,
        None if url.contains("://") => return None,
        None => std::path::PathBuf::from(url),
    };
    let canonical = std::fs::canonicalize(path).ok()?;
    if canonical.is_dir() {
        Some(canonical)
    } else {
        canonical.parent().map(std::path::Path::to_path_buf)
    }
}

/// Relative paths mean the caller's current directory.
pub fn absolute_if_local(url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    std::path::absolute(url).map_or_else(|_| url.to_string(), |path| path.display().to_string())
}
