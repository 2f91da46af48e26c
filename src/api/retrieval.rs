use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::convert;
use super::proto::{self, retrieval_service_server::RetrievalService};
use crate::auth::Credentials;
use crate::service::Service;
use crate::telemetry::trace;

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
        let trace = self
            .service
            .traces()
            .grpc_call("skyfuse.v1.RetrievalService/Search", &request);
        let response = trace::within(trace.as_ref(), self.search_call(request)).await;
        if let (Some(trace), Err(status)) = (&trace, &response) {
            trace.fail(convert::code_name(status.code()), status.message());
        }
        response
    }
}

impl RetrievalApi {
    async fn search_call(
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
        let params = convert::search_params(&request, deadline).map_err(convert::status)?;
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
