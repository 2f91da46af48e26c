//! Ingestion: list a bucket, fetch, extract, chunk, embed, write, remember.
//!
//! [`pipeline::run_index`] drives the whole flow; [`extract`], [`chunk`] and [`manifest`] are
//! its pure parts, usable on their own.

pub mod bucket;
pub mod canonical;
pub mod chunk;
pub mod doc_ids;
pub mod extract;
pub mod filter;
pub mod gzip;
pub mod isolate;
pub mod listing;
pub mod manifest;
pub mod pdf;
pub mod pipeline;

pub use bucket::{BucketCredentials, BucketLocation, BucketOptions};
pub use chunk::ChunkingConfig;
pub use extract::{ExtractError, ExtractedDoc, extract};
pub use isolate::Extractor;
pub use pipeline::documents::{
    DeleteReport, DocumentSelection, NewDocument, UpsertReport, delete_documents, upsert_documents,
};
pub use pipeline::{IndexJob, IndexProgress, IndexReport, IssueList, ObjectIssue, run_index};
