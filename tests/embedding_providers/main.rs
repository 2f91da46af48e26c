//! Every embedding provider against an in-process server on 127.0.0.1 that speaks
//! its documented protocol and checks what arrives (path, query, headers, body,
//! and the credentials: SigV4 recomputed, OCI signatures verified, Google tokens
//! from a local token endpoint), with faults injected. Live tests run only when
//! their environment variables name a real endpoint.

mod azure_openai;
mod bedrock;
mod oci;
mod openai_compat;
mod spaces;
mod support;
mod vertex;

use skyfuse::embed::{EmbedRequest, EmbeddingProvider, Purpose};

/// What a live endpoint must do: a vector per text, all of one size (`dims` when
/// asked), a query and a document embedded differently enough to differ.
async fn live_check(provider: &dyn EmbeddingProvider, model: &str, dims: Option<usize>) {
    let texts = vec![
        "cold archives are replicated to the paired region".to_string(),
        "object lock retention keeps versions immutable".to_string(),
    ];
    let vectors = provider
        .embed(EmbedRequest {
            model,
            texts: &texts,
            purpose: Purpose::Document,
            dims,
        })
        .await
        .unwrap();
    assert_eq!(vectors.len(), 2);
    assert!(!vectors[0].is_empty());
    assert_eq!(vectors[0].len(), vectors[1].len());
    if let Some(dims) = dims {
        assert_eq!(vectors[0].len(), dims);
    }
    assert_ne!(vectors[0], vectors[1]);
    let query = vec!["where are cold archives replicated".to_string()];
    let query_vectors = provider
        .embed(EmbedRequest {
            model,
            texts: &query,
            purpose: Purpose::Query,
            dims,
        })
        .await
        .unwrap();
    assert_eq!(query_vectors[0].len(), vectors[0].len());
}
