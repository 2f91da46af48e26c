//! skyfuse: a federated RAG retrieval service.
//!
//! Backends call it over gRPC to index cloud buckets, search every per-cloud
//! store at once and answer with an LLM. The map, outside in:
//!
//! - [`api`]: the edges: the tonic adapter (proto <-> domain, one error mapping, the
//!   server) and the OpenAI-compatible HTTP facade ([`api::openai`]).
//! - [`service`]: the domain seam the API, the CLI and tests call.
//! - [`retrieve`]: plan the sources, embed the query once per space, fan out under
//!   one deadline, fuse by rank ([`retrieve::fusion`]).
//! - [`stores`]: the [`stores::SearchBackend`] trait and the stores behind it.
//! - [`embed`]: embedding spaces and models; [`llm`]: chat providers and prompts.
//! - [`cloud`]: credentials, request signing and error mapping the providers share.
//! - [`ingest`]: list, fetch, extract, chunk, embed, write, remember (manifest).
//! - [`config`]: typed config, pure validation; [`error`]: one error type.
//!
//! A search: `api::retrieval` converts the request -> `Service::search` checks
//! limits -> `Retriever::search` plans and fans out (lexical sources at once,
//! dense sources after their space's query embedding) -> each source answers or
//! becomes a failed outcome -> `fusion::fuse` merges by document id -> the API
//! converts hits, per-source explain and outcomes back to proto.

pub mod api;
pub mod breaker;
pub mod client;
pub mod cloud;
pub mod config;
pub mod document;
pub mod embed;
pub mod error;
pub mod eval;
pub mod ingest;
pub mod llm;
pub mod retrieve;
pub mod route;
pub mod service;
pub mod stores;
pub mod telemetry;
