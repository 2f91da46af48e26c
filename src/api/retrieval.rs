use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, retrieval_service_server::RetrievalService};
use crate::auth::Credentials;
use crate::service::{SearchParams, Service};

/// Response metadata: the milliseconds of a call spent in skyfuse rather than waiting
/// on its slowest source.
pub const OVERHEAD_HEADER: &str = "x-skyfuse-overhead-ms";

pub struct RetrievalApi {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl RetrievalService for RetrievalApi {
    async fn search(
        &self,
        request: Request<proto::SearchRequest>,
    ) -> Result<Response<proto::SearchResponse>, Status> {
        let started = std::time::Instant::now();
        let deadline = convert::deadline(&request);
        let principal = self
            .service
            .authenticate(&Credentials::from_grpc(&request))
            .await
            .map_err(convert::status)?;
        let request = request.into_inner();
        let params = SearchParams {
            query: request.query,
            top_k: convert::optional(request.top_k),
            sources: request.sources,
            fusion: convert::fusion_method(request.fusion)?,
            deadline,
            adapter_from: (!request.adapter_from.is_empty()).then_some(request.adapter_from),
        };
        let result = self
            .service
            .search(&principal, params)
            .await
            .map_err(convert::status)?;
        let waited = result.longest_source();
        let mut response = Response::new(convert::search_response(result, request.include_text));
        // skyfuse's own share of the call, for clients that track gateway overhead.
        let overhead = started.elapsed().saturating_sub(waited);
        if let Ok(value) = format!("{:.3}", overhead.as_secs_f64() * 1000.0).parse() {
            response.metadata_mut().insert(OVERHEAD_HEADER, value);
        }
        Ok(response)
    }
}
