use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::proto::{self, ingestion_service_server::IngestionService};
use super::{convert, documents};
use crate::auth::Credentials;
use crate::error::{Error, ErrorKind};
use crate::ingest::{IndexProgress, IndexReport, IssueList, ObjectIssue};

/// The issues of a final message take at most about this many bytes of keys and reasons,
/// so the message fits the 4 MiB limit whatever the keys look like.
const MAX_ISSUE_BYTES: usize = 1024 * 1024;
/// A reason longer than this is cut (at a char boundary).
const MAX_REASON_BYTES: usize = 1024;
use crate::service::{IndexFilters, Service};
use crate::telemetry::trace::{self, CallTrace};

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
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let deadline = grpc_timeout(request.metadata()).map(|timeout| Instant::now() + timeout);
        // One trace per run, held by the task that runs it: it ends with the run.
        let trace = self
            .service
            .traces()
            .grpc_call("skyfuse.v1.IngestionService/Index", &request);
        let proto::IndexRequest {
            url,
            index,
            include,
            exclude,
            prune,
            detached,
        } = request.into_inner();
        // Refuse an unknown or forbidden index before the stream starts, as a plain status.
        self.service
            .index_config_for(&principal, &index)
            .map_err(convert::status)?;
        let (sender, receiver) = mpsc::channel(32);
        let service = self.service.clone();
        let filters = IndexFilters {
            include,
            exclude,
            prune,
        };
        if detached {
            let runs = Arc::clone(service.index_runs());
            let run_id = runs.start(principal.id(), &url, &index);
            let first = proto::IndexProgress {
                run_id: run_id.clone(),
                ..proto::IndexProgress::default()
            };
            let _ = sender.try_send(Ok(first));
            tokio::spawn(async move {
                let progress_sender = sender.clone();
                let progress_runs = Arc::clone(&runs);
                let progress_id = run_id.clone();
                let run = service.index(&principal, &url, &index, &filters, move |progress| {
                    progress_runs.progress(&progress_id, progress);
                    let _ = progress_sender.try_send(Ok(progress_message(progress)));
                });
                let report = trace::within(trace.as_ref(), run).await;
                fail_trace(trace.as_ref(), &report);
                runs.finish(&run_id, report.clone());
                let _ = sender.send(last_message(report)).await;
            });
            return Ok(Response::new(ReceiverStream::new(receiver)));
        }
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let run = service.index(&principal, &url, &index, &filters, move |progress| {
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
            let run = trace::within(trace.as_ref(), run);
            tokio::select! {
                report = run => {
                    fail_trace(trace.as_ref(), &report);
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

    /// Unary: the call returns once the stores committed. A cancelled call stops where it
    /// is, and the manifest never lists what was not committed (see `ingest::pipeline`).
    async fn upsert_documents(
        &self,
        request: Request<proto::UpsertDocumentsRequest>,
    ) -> Result<Response<proto::UpsertDocumentsResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let proto::UpsertDocumentsRequest {
            index,
            documents,
            namespace,
        } = request.into_inner();
        let documents = documents.into_iter().map(documents::new_document).collect();
        let report = self
            .service
            .upsert_documents(&principal, &index, &namespace, documents)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(documents::upsert_response(&report)))
    }

    async fn delete_documents(
        &self,
        request: Request<proto::DeleteDocumentsRequest>,
    ) -> Result<Response<proto::DeleteDocumentsResponse>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let proto::DeleteDocumentsRequest {
            index,
            selection,
            namespace,
        } = request.into_inner();
        let selection = documents::delete_selection(selection).map_err(convert::status)?;
        let report = self
            .service
            .delete_documents(&principal, &index, &namespace, selection)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(documents::delete_response(&report)))
    }
}

fn deadline_passed() -> Error {
    Error::new(
        ErrorKind::Timeout,
        "the Index call's deadline passed and the run was stopped; what it committed stays, \
         and the next run goes on from there (set detached to run longer than a call)",
    )
}

/// Marks a run's trace failed with the status its caller gets.
fn fail_trace(trace: Option<&CallTrace>, report: &crate::error::Result<IndexReport>) {
    if let (Some(trace), Err(error)) = (trace, report) {
        let status = convert::status(error.clone());
        trace.fail(convert::code_name(status.code()), status.message());
    }
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
        known_bad: progress.known_bad,
        ..Default::default()
    }
}

pub(super) fn final_message(report: IndexReport) -> proto::IndexProgress {
    let mut message = progress_message(&report.progress);
    message.done = true;
    let mut budget = IssueBudget {
        bytes_left: MAX_ISSUE_BYTES,
        issues: Vec::new(),
    };
    let listing = IssueList {
        entries: report
            .listing_errors
            .entries
            .into_iter()
            .map(|reason| ObjectIssue {
                object_key: String::new(),
                reason: format!("listing: {reason}"),
            })
            .collect(),
        left_out: report.listing_errors.left_out,
    };
    let not_pruned = IssueList {
        entries: report
            .not_pruned
            .entries
            .into_iter()
            .map(|reason| ObjectIssue {
                object_key: String::new(),
                reason,
            })
            .collect(),
        left_out: report.not_pruned.left_out,
    };
    message.listing_errors_left_out = budget.add(listing, proto::IssueKind::Listing);
    message.not_pruned_left_out = budget.add(not_pruned, proto::IssueKind::NotPruned);
    message.pruned_left_out = budget.add(report.pruned, proto::IssueKind::Pruned);
    message.failures_left_out = budget.add(report.failures, proto::IssueKind::Failed);
    message.known_bad_left_out = budget.add(report.known_bad, proto::IssueKind::KnownBad);
    message.skips_left_out = budget.add(report.skips, proto::IssueKind::Skipped);
    message.record_problems_left_out = budget.add(report.record_problems, proto::IssueKind::Record);
    message.failures = budget.issues;
    message
}

/// The issues of a final message, within [`MAX_ISSUE_BYTES`].
struct IssueBudget {
    bytes_left: usize,
    issues: Vec<proto::ObjectFailure>,
}

impl IssueBudget {
    /// Adds what fits of `list`; returns how many of its issues are left out.
    fn add(&mut self, list: IssueList<ObjectIssue>, kind: proto::IssueKind) -> u64 {
        let mut left_out = list.left_out;
        for issue in list.entries {
            let reason = cut_at_char_boundary(issue.reason, MAX_REASON_BYTES);
            let size = issue.object_key.len() + reason.len();
            if size > self.bytes_left {
                left_out += 1;
                continue;
            }
            self.bytes_left -= size;
            self.issues.push(proto::ObjectFailure {
                key: issue.object_key,
                reason,
                kind: kind as i32,
            });
        }
        left_out
    }
}

fn cut_at_char_boundary(mut text: String, max_bytes: usize) -> String {
    if text.len() > max_bytes {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_final_message_with_huge_issue_lists_fits_and_counts_what_it_left_out() {
        let mut report = IndexReport::default();
        for index in 0..5_000 {
            let issue = ObjectIssue {
                object_key: format!("{}/{index}.txt", "k".repeat(2_000)),
                reason: "r".repeat(10_000),
            };
            report.failures.push(issue.clone());
            report.skips.push(issue);
        }
        report.listing_errors.push("denied".to_owned());
        let message = final_message(report);
        assert!(
            message.encoded_len() < 2 * MAX_ISSUE_BYTES,
            "{}",
            message.encoded_len()
        );
        let listed = message.failures.len() as u64;
        let left_out = message.failures_left_out
            + message.skips_left_out
            + message.listing_errors_left_out
            + message.record_problems_left_out
            + message.known_bad_left_out;
        assert_eq!(listed + left_out, 10_001);
        assert_eq!(message.failures[0].kind, proto::IssueKind::Listing as i32);
        assert!(message.failures[1].reason.len() <= MAX_REASON_BYTES);
        assert!(message.skips_left_out > 0);
    }
}
