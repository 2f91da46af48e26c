//! skyfuse: a federated RAG retrieval service.
//!
//! Backends call it over gRPC to index cloud buckets, search every per-cloud
//! store at once and answer with an LLM. The map, outside in (each arrow points
//! down; nothing below [`api`] sees tonic, axum or generated types):
//!
//! - [`api`]: the edges. The tonic adapter (proto <-> domain, one error mapping),
//!   the OpenAI-compatible HTTP facade ([`api::openai`]) and their shared lifecycle
//!   ([`api::serve`]: one shutdown signal, one bounded drain).
//! - [`service`]: the domain seam the API, the CLI and tests call; one entrance per
//!   capability: search, chat (plain and RAG answer share `Service::chat`), index,
//!   documents (upsert and delete over the API), admin. `service::build` turns a valid config into the running parts by calling
//!   each module's registry.
//! - [`retrieve`]: plan the sources, embed the query once per space, fan out under
//!   one deadline, fuse by rank ([`retrieve::fusion`]).
//! - [`route`]: chat routing: callers, plans (rules, tiers, cost, capacity,
//!   regions), the failover loop with budgets and an active probe.
//! - [`stores`]: the [`stores::SearchBackend`] trait, the registry that opens each
//!   kind (`stores::open`), the local and remote stores, the resilience wrapper.
//! - [`embed`]: embedding spaces, query embedding, the in-process BERT runtime
//!   (`embed::local`, all `unsafe` in its `kernels`) and cloud providers.
//! - [`llm`]: the chat provider trait, prompts, the extractive answerer, providers.
//! - [`policy`]: rules over the data a request moves (residency: which passages may
//!   reach which regions' models).
//! - [`ingest`]: list, fetch, extract, chunk, embed, write, remember (manifest); documents
//!   sent over the API go through the same chunk, embed and write steps
//!   (`ingest::pipeline::documents`).
//! - [`cloud`]: credentials, request signing and error mapping the providers share.
//! - [`config`]: one file per TOML table, per-kind tagged enums, index definitions
//!   (`include`), pure validation.
//! - [`error`]: one error type and the one failure policy (retry, fail over, stop);
//!   [`breaker`]: the circuit breaker every remote endpoint shares, with permits.
//! - [`telemetry`]: logging setup, the Prometheus metrics and OpenTelemetry traces;
//!   [`ids`]: unguessable
//!   ids. [`client`], [`document`], [`eval`]: the CLI's
//!   gRPC client, the document model, the BEIR evaluation.
//!
//! A search: `api::retrieval` converts the request -> `Service::search` checks
//! limits -> `Retriever::search` plans and fans out (lexical sources at once,
//! dense sources after their space's query embedding) -> each source answers or
//! becomes a failed outcome -> `fusion::fuse` merges by document id -> the API
//! converts hits, per-source explain and outcomes back to proto.
//!
//! An answer: `api::generation` (or `api::openai` for the facade) -> `Service::answer`
//! retrieves as above and builds the prompt -> `Service::chat` authenticates the
//! caller, plans the route and starts it -> `route` fails over until a first token ->
//! the stream pump sends tokens, then citations, usage, cost and the route taken.

pub mod api;
pub mod auth;
pub mod breaker;
pub mod client;
pub mod cloud;
pub mod config;
pub mod document;
pub mod embed;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod ingest;
pub mod limits;
pub mod llm;
pub mod policy;
pub mod retrieve;
pub mod route;
pub mod service;
pub mod state;
pub mod stores;
pub mod telemetry;
pub mod time_caps;
