//! The in-process BERT runtime: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 12 heads)
//! run without Python or a network, then mean pooling over the real tokens and L2
//! normalization, at most 256 tokens per text.
//!
//! Why a hand-written forward pass instead of `candle_transformers::models::bert::BertModel`:
//! measured on this 2-core machine, BertModel took 13.6 ms for one short query and managed
//! 3.0 SciFact abstracts/s at batch 32 (the sentence-transformers reference: 7.5 ms and
//! 38.7/s). Its costs are structural, not tunable from outside: every op allocates a fresh
//! tensor (page faults were a tenth of the profile), the batch is padded to its longest text
//! and attention runs on the padding, GELU calls a scalar `erf` per element, and the
//! matrix products go through candle's batched-broadcast path.
//!
//! What this runtime does instead:
//! - no padding at all: the tokens of every text in a batch are stacked into one
//!   `[tokens, hidden]` matrix for the dense layers, and attention runs per text and per
//!   head on strided views of the fused QKV matrix, so no work is spent on padding and a
//!   text's vector does not depend on what it was batched with;
//! - every matrix product goes to the `gemm` crate (the kernels candle itself uses), or to
//!   bf16 products on CPUs that have them (`[[space]] precision`), with
//!   bias and residual folded into the product's accumulator, into buffers that are reused
//!   across batches and calls;
//! - the remaining element-wise work (GELU, softmax, layer norm) is small hand-written
//!   loops compiled for AVX2+FMA when the CPU has it, with a polynomial `exp` and `erf`
//!   the compiler can vectorize; they are a few percent of the run time in release and
//!   stay tolerable in unoptimized test builds because the products dominate.
//!
//! Weights come from `model.safetensors` through candle's loader, the tokenizer from
//! `tokenizer.json` through the `tokenizers` crate, the shape from `config.json`.
//!
//! The files, in the order a text goes through them:
//! - `mod.rs` (this file): [`LocalEmbedder`]: loading, tokenizing, cutting a request into
//!   token-bounded batches, the pool of work buffers, the [`Embedder`] and
//!   [`EmbeddingProvider`] impls;
//! - `config.rs`: the model's shape, read and checked from `config.json`;
//! - `weights.rs`: the tensors of `model.safetensors` in the layouts the products want;
//! - `forward.rs`: the forward pass: embeddings, encoder layers, pooling;
//! - `kernels/`: the matrix products (f32 over `gemm`, and bf16 on AVX512_BF16 in
//!   `kernels/bf16.rs`), attention and the SIMD element-wise kernels. It is the only place
//!   allowed `unsafe` code (every other file here fails to compile with it), and every
//!   `unsafe` block in it rests on bounds checked at run time in release builds.

#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokenizers::{Tokenizer, TruncationParams};

use crate::config::LocalPrecision;
use crate::config::home::fetch_model_command;
use crate::embed::{EmbedRequest, Embedder, EmbeddingProvider, EmbeddingSpace, Purpose};
use crate::error::{Error, Result};

use batcher::QueryBatcher;
use config::ModelShape;
use forward::Workspace;
use weights::BertWeights;

mod batcher;
mod config;
mod forward;
// The one place `unsafe` is allowed: the `deny` at the top of this file holds for every
// other module here (and they `forbid` it themselves).
#[expect(
    unsafe_code,
    reason = "gemm calls, parallel disjoint writes and target_feature kernels, audited in one file"
)]
mod kernels;
mod weights;

/// Where `scripts/fetch-model.sh` puts the model, relative to the skyfuse home
/// ([`crate::config::home`]); `SKYFUSE_MODEL_DIR` ([`MODEL_DIR_ENV`]) overrides it.
pub use crate::config::home::{DEFAULT_MODEL_DIR, MODEL_DIR_ENV};
/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2, special tokens included.
pub const MAX_SEQUENCE_TOKENS: usize = 256;

/// Tokens per forward pass: 16 full-length texts. Large enough that the matrix products run
/// at full speed (measured: no gain from 8192), small enough that a workspace stays near 37 MB.
const TOKENS_PER_FORWARD: usize = 16 * MAX_SEQUENCE_TOKENS;
/// Texts tokenized at a time, so a huge request does not hold every encoding at once.
const TEXTS_PER_TOKENIZER_CALL: usize = 256;
/// Work buffers kept for reuse; more concurrent callers than this allocate their own.
const POOLED_WORKSPACES: usize = 2;

/// The directory the model is loaded from: `SKYFUSE_MODEL_DIR` if set, else the one in
/// the skyfuse home.
pub fn model_dir_from_env() -> PathBuf {
    crate::config::home::default_model_dir(&crate::config::process_env())
}

/// all-MiniLM-L6-v2 in-process. Cheap to clone: everything lives behind one `Arc`.
#[derive(Clone)]
pub struct LocalEmbedder {
    inner: Arc<LocalEmbedderInner>,
    queries: Arc<QueryBatcher>,
}

struct LocalEmbedderInner {
    space: EmbeddingSpace,
    tokenizer: Tokenizer,
    model: BertWeights,
    workspaces: Mutex<Vec<Workspace>>,
}

impl std::fmt::Debug for LocalEmbedder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("LocalEmbedder")
            .field("space", &self.inner.space)
            .field("layers", &self.inner.model.layers.len())
            .field("hidden_size", &self.inner.model.shape.hidden_size)
            .finish()
    }
}

impl LocalEmbedder {
    /// Loads weights + tokenizer; clear `Error::config` if the dir or a file is missing or
    /// malformed, or `precision` is bf16 on a CPU without it.
    pub fn load(
        space: EmbeddingSpace,
        model_dir: &Path,
        precision: LocalPrecision,
    ) -> Result<Self> {
        let bf16 = match precision {
            LocalPrecision::F32 => false,
            LocalPrecision::Auto => kernels::bf16_supported(),
            LocalPrecision::Bf16 if kernels::bf16_supported() => true,
            LocalPrecision::Bf16 => {
                return Err(Error::config(format!(
                    "embedding space {}: precision = \"bf16\" needs a CPU with AVX512_BF16, which this one lacks; use \"auto\" or \"f32\"",
                    space.id
                )));
            }
        };
        if !model_dir.is_dir() {
            return Err(Error::config(format!(
                "embedding model directory {} does not exist; fetch the model with: {}",
                model_dir.display(),
                fetch_model_command(model_dir)
            )));
        }
        let config_path = model_dir.join("config.json");
        let weights_path = model_dir.join("model.safetensors");
        let tokenizer_path = model_dir.join("tokenizer.json");
        for required in [&config_path, &weights_path, &tokenizer_path] {
            if !required.is_file() {
                return Err(Error::config(format!(
                    "embedding model file {} is missing; fetch the model with: {}",
                    required.display(),
                    fetch_model_command(model_dir)
                )));
            }
        }

        let shape = ModelShape::read(&config_path)?;
        if space.dims != shape.hidden_size {
            return Err(Error::config(format!(
                "embedding space {} declares {} dims but the model in {} produces {}",
                space.id,
                space.dims,
                model_dir.display(),
                shape.hidden_size
            )));
        }
        let model = BertWeights::read(&weights_path, shape, bf16)?;
        let tokenizer = load_tokenizer(&tokenizer_path, model.max_sequence_tokens)?;

        Ok(Self {
            inner: Arc::new(LocalEmbedderInner {
                space,
                tokenizer,
                model,
                workspaces: Mutex::new(Vec::new()),
            }),
            queries: Arc::default(),
        })
    }

    /// Loads the model in `model_dir` as space `id` at the dimension the model produces.
    pub fn load_native(id: &str, model_dir: &Path, precision: LocalPrecision) -> Result<Self> {
        let config_path = model_dir.join("config.json");
        let dims = if config_path.is_file() {
            ModelShape::read(&config_path)?.hidden_size
        } else {
            0 // `load` reports the missing directory or file
        };
        let space = EmbeddingSpace {
            id: id.to_string(),
            model: model_dir.display().to_string(),
            dims,
        };
        Self::load(space, model_dir, precision)
    }

    /// Whether this model's products run in bf16 (`precision` `auto` on a CPU with
    /// AVX512_BF16, or `bf16`).
    pub fn is_bf16(&self) -> bool {
        self.inner
            .model
            .layers
            .first()
            .is_some_and(|layer| layer.qkv_weight.is_bf16())
    }

    /// Blocking: one L2-normalized vector per text, in order. Empty input -> empty output.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        self.inner.embed_blocking(texts)
    }
}

impl LocalEmbedderInner {
    fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        // Run on a rayon worker: a forward pass starts dozens of small parallel loops, and
        // each one started from outside the pool (a tokio blocking thread, a test thread)
        // is a cross-thread hand-off and wake-up; from inside it forks in place.
        rayon::scope(|_| self.embed_on_worker(texts))
    }

    fn embed_on_worker(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut workspace = self.take_workspace();
        let mut vectors = Vec::with_capacity(texts.len());
        let mut outcome = Ok(());
        for text_group in texts.chunks(TEXTS_PER_TOKENIZER_CALL) {
            outcome = self.embed_group(text_group, &mut workspace, &mut vectors);
            if outcome.is_err() {
                break;
            }
        }
        self.return_workspace(workspace);
        outcome?;
        Ok(vectors)
    }

    /// Tokenizes a group of texts and runs it through the model in token-bounded batches.
    fn embed_group(
        &self,
        texts: &[&str],
        workspace: &mut Workspace,
        vectors: &mut Vec<Vec<f32>>,
    ) -> Result<()> {
        let token_ids = self.tokenize(texts)?;
        let mut batch_start = 0;
        while batch_start < token_ids.len() {
            // Greedily take texts until the token budget is used; always at least one.
            let mut batch_end = batch_start + 1;
            let mut batch_tokens = token_ids[batch_start].len();
            while batch_end < token_ids.len()
                && batch_tokens + token_ids[batch_end].len() <= TOKENS_PER_FORWARD
            {
                batch_tokens += token_ids[batch_end].len();
                batch_end += 1;
            }
            let batch = &token_ids[batch_start..batch_end];
            vectors.extend(self.model.embed_sequences(batch, workspace));
            batch_start = batch_end;
        }
        Ok(())
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| Error::invalid(format!("could not tokenize text: {error}")))?;
        let vocabulary_size = self.model.shape.vocab_size;
        let mut token_ids = Vec::with_capacity(encodings.len());
        for encoding in encodings {
            let mut ids = encoding.get_ids().to_vec();
            // The tokenizer truncates already; this guards a tokenizer.json whose
            // truncation we could not configure from indexing past the position table.
            ids.truncate(self.model.max_sequence_tokens);
            if let Some(bad_id) = ids.iter().find(|&&id| id as usize >= vocabulary_size) {
                return Err(Error::config(format!(
                    "tokenizer produced token id {bad_id} but the model vocabulary has {vocabulary_size} entries; tokenizer.json and model.safetensors do not match"
                )));
            }
            token_ids.push(ids);
        }
        Ok(token_ids)
    }

    fn take_workspace(&self) -> Workspace {
        let mut pool = self
            .workspaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_workspace(&self, workspace: Workspace) {
        let mut pool = self
            .workspaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pool.len() < POOLED_WORKSPACES {
            pool.push(workspace);
        }
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn space(&self) -> &EmbeddingSpace {
        &self.inner.space
    }

    /// all-MiniLM-L6-v2 was trained without instruction prefixes: queries and documents
    /// are embedded the same way. A single query joins the batch of concurrent queries
    /// (`batcher.rs`); anything else runs as its own batch.
    async fn embed(&self, texts: &[String], purpose: Purpose) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        if let (Purpose::Query, [query]) = (purpose, texts) {
            return Ok(vec![self.queries.embed(&self.inner, query).await?]);
        }
        let embedder = self.clone();
        let owned_texts = texts.to_vec();
        tokio::task::spawn_blocking(move || {
            let borrowed: Vec<&str> = owned_texts.iter().map(String::as_str).collect();
            embedder.embed_blocking(&borrowed)
        })
        .await
        .map_err(|error| Error::internal(format!("embedding task failed: {error}")))?
    }
}

/// The in-process model as the provider of its space: the model is the one loaded, so
/// the request's model id is not consulted; its native dimension is what comes back.
#[async_trait]
impl EmbeddingProvider for LocalEmbedder {
    fn id(&self) -> &str {
        crate::config::LOCAL_PROVIDER
    }

    fn location(&self) -> (&str, &str) {
        ("local", "local")
    }

    /// The forward pass splits its input itself; this only bounds one call's memory.
    fn max_batch(&self) -> usize {
        1024
    }

    async fn embed(&self, request: EmbedRequest<'_>) -> Result<Vec<Vec<f32>>> {
        Embedder::embed(self, request.texts, request.purpose).await
    }
}

fn load_tokenizer(path: &Path, max_sequence_tokens: usize) -> Result<Tokenizer> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|error| {
        Error::config(format!(
            "could not read tokenizer {}: {error}; run scripts/fetch-model.sh",
            path.display()
        ))
    })?;
    // Padding would only add work: sequences are stacked without it (see the module docs).
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(Some(TruncationParams {
            max_length: max_sequence_tokens,
            ..TruncationParams::default()
        }))
        .map_err(|error| {
            Error::config(format!(
                "could not configure truncation for {}: {error}",
                path.display()
            ))
        })?;
    Ok(tokenizer)
}
