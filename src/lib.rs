//! skyfuse: a federated RAG retrieval service.

pub mod document;
pub mod embed;
pub mod error;
pub mod ingest;
pub mod stores;
