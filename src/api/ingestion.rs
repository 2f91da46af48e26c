use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, ingestion_service_server::IngestionService};
use crate::error::{Error, ErrorKind};
use crate::ingest::{IndexProgress, IndexReport, ObjectIssue};
use crate::service::{IndexFilters, Service};

pub struct IngestionApi {
    pub service: Arc<Service>,
}

type ProgressStream = ReceiverStream<Result<proto::IndexProgress, Status>>;

#[tonic::async_trait]
impl IngestionService for IngestionApi {
    type IndexStream = ProgressStream;

    /// A run belongs to its call: it stops when the caller cancels (the stream is dropped)
    /// or its `grpc-timeout` passes, and dropping it commits nothing the manifest would
    /// hide (see `ingest::pipeline`). A `detached` run goes on alone under a run id.
    async fn index(
        &self,
        request: Request<proto::IndexRequest>,
    ) -> Result<Response<Self::IndexStream>, Status> {
        let deadline = grpc_timeout(request.metadata()).map(|timeout| Instant::now() + timeout);
        let proto::IndexRequest {
            url,
            index,
            include,
            exclude,
            prune,
            detached,
        } = request.into_inner();
        // Refuse an unknown index before the stream starts, as a plain status.
        self.service.index_config(&index).map_err(convert::status)?;
        let (sender, receiver) = mpsc::channel(32);
        let service = self.service.clone();
        // Bucket prefixes the caller's role grants: the identity layer sets them.
        let filters = IndexFilters {
            include,
            exclude,
            prune,
            granted_bucket_prefixes: Vec::new(),
        };
        if detached {
            let runs = Arc::clone(service.index_runs());
            let run_id = runs.start(&url, &index);
            let first = proto::IndexProgress {
                run_id: run_id.clone(),
                ..proto::IndexProgress::default()
            };
            let _ = sender.try_send(Ok(first));
            tokio::spawn(async move {
                let progress_sender = sender.clone();
                let progress_runs = Arc::clone(&runs);
                let progress_id = run_id.clone();
                let report = service
                    .index(&url, &index, &filters, move |progress| {
                        progress_runs.progress(&progress_id, progress);
                        let _ = progress_sender.try_send(Ok(progress_message(progress)));
                    })
                    .await;
                runs.finish(&run_id, report.clone());
                let _ = sender.send(last_message(report)).await;
            });
            return Ok(Response::new(ReceiverStream::new(receiver)));
        }
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let run = service.index(&url, &index, &filters, move |progress| {
                // Intermediate progress may be dropped when the client reads slowly;
                // the final event is always delivered.
                let _ = progress_sender.try_send(Ok(progress_message(progress)));
            });
            let run = async {
                match deadline {
                    Some(deadline) => tokio::time::timeout_at(deadline, run)
                        .await
                        .unwrap_or_else(|_| Err(deadline_passed())),
                    None => run.await,
                }
            };
            tokio::select! {
                report = run => {
                    let _ = sender.send(last_message(report)).await;
                }
                () = sender.closed() => {
                    // The caller went away: dropping the run stops it and frees the index.
                    tracing::info!(url, "index run cancelled by its caller");
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn deadline_passed() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "the Index call's deadline passed and the run was stopped; what it committed stays, \
         and the next run goes on from there (set detached to run longer than a call)",
    )
}

fn last_message(report: crate::error::Result<IndexReport>) -> Result<proto::IndexProgress, Status> {
    match report {
        Ok(report) => Ok(final_message(report)),
        Err(error) => Err(convert::status(error)),
    }
}

/// The `grpc-timeout` a client set (`<digits><H|M|S|m|u|n>`), if any.
fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

pub(super) fn progress_message(progress: &IndexProgress) -> proto::IndexProgress {
    proto::IndexProgress {
        listed: progress.listed,
        excluded: progress.excluded,
        fetched: progress.fetched,
        indexed: progress.indexed,
        unchanged: progress.unchanged,
        deleted: progress.deleted,
        pruned: progress.pruned,
        kept_not_pruned: progress.kept_not_pruned,
        run_id: String::new(),
        skipped: progress.skipped,
        failed: progress.failed,
        chunks: progress.chunks_written,
        bytes: progress.bytes_read,
        elapsed_millis: progress.elapsed.as_millis() as u64,
        chunks_per_second: progress.chunks_per_second(),
        done: false,
        failures: Vec::new(),
    }
}

pub(super) fn final_message(report: IndexReport) -> proto::IndexProgress {
    let mut message = progress_message(&report.progress);
    message.done = true;
    let listing = report
        .listing_errors
        .into_iter()
        .map(|reason| proto::ObjectFailure {
            key: String::new(),
            reason: format!("listing: {reason}"),
            kind: proto::IssueKind::Listing as i32,
        });
    let issues = |issues: Vec<ObjectIssue>, kind: proto::IssueKind| {
        issues.into_iter().map(move |issue| proto::ObjectFailure {
            key: issue.object_key,
            reason: issue.reason,
            kind: kind as i32,
        })
    };
    let not_pruned = report
        .not_pruned
        .into_iter()
        .map(|reason| proto::ObjectFailure {
            key: String::new(),
            reason,
            kind: proto::IssueKind::NotPruned as i32,
        });
    message.failures = listing
        .chain(not_pruned)
        .chain(issues(report.pruned, proto::IssueKind::Pruned))
        .chain(issues(report.failures, proto::IssueKind::Failed))
        .chain(issues(report.skips, proto::IssueKind::Skipped))
        .chain(issues(report.record_problems, proto::IssueKind::Record))
        .collect();
    message
}
