use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, ingestion_service_server::IngestionService};
use crate::auth::Credentials;
use crate::ingest::{IndexProgress, IndexReport, ObjectIssue};
use crate::service::{IndexFilters, Service};

pub struct IngestionApi {
    pub service: Arc<Service>,
}

type ProgressStream = ReceiverStream<Result<proto::IndexProgress, Status>>;

#[tonic::async_trait]
impl IngestionService for IngestionApi {
    type IndexStream = ProgressStream;

    async fn index(
        &self,
        request: Request<proto::IndexRequest>,
    ) -> Result<Response<Self::IndexStream>, Status> {
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let proto::IndexRequest {
            url,
            index,
            include,
            exclude,
        } = request.into_inner();
        // Refuse an unknown or forbidden index before the stream starts, as a plain status.
        self.service
            .index_config_for(&principal, &index, &url)
            .map_err(convert::status)?;
        let (sender, receiver) = mpsc::channel(32);
        let service = self.service.clone();
        let filters = IndexFilters { include, exclude };
        tokio::spawn(async move {
            let progress_sender = sender.clone();
            let report = service
                .index(&principal, &url, &index, &filters, move |progress| {
                    // Intermediate progress may be dropped when the client reads slowly;
                    // the final event is always delivered.
                    let _ = progress_sender.try_send(Ok(progress_message(progress)));
                })
                .await;
            let last = match report {
                Ok(report) => Ok(final_message(report)),
                Err(error) => Err(convert::status(error)),
            };
            let _ = sender.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

fn progress_message(progress: &IndexProgress) -> proto::IndexProgress {
    proto::IndexProgress {
        listed: progress.listed,
        excluded: progress.excluded,
        fetched: progress.fetched,
        indexed: progress.indexed,
        unchanged: progress.unchanged,
        deleted: progress.deleted,
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

fn final_message(report: IndexReport) -> proto::IndexProgress {
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
    message.failures = listing
        .chain(issues(report.failures, proto::IssueKind::Failed))
        .chain(issues(report.skips, proto::IssueKind::Skipped))
        .chain(issues(report.record_problems, proto::IssueKind::Record))
        .collect();
    message
}
