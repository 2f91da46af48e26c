//! all-MiniLM-L6-v2 run in-process: BERT (6 layers, hidden 384, 12 heads), mean pooling
//! over the real tokens, L2 normalization, at most 256 tokens per text.
//!
//! Why a hand-written forward pass instead of `candle_transformers::models::bert::BertModel`:
//! measured on this 2-core machine, BertModel took 13.6 ms for one short query and managed
//! 3.0 SciFact abstracts/s at batch 32 (the sentence-transformers reference: 7.5 ms and
//! 38.7/s). Its costs are structural, not tunable from outside: every op allocates a fresh
//! tensor (page faults were a tenth of the profile), the batch is padded to its longest text
//! and attention runs on the padding, GELU calls a scalar `erf` per element, and the
//! matrix products go through candle's batched-broadcast path.
//!
//! What this file does instead:
//! - no padding at all: the tokens of every text in a batch are stacked into one
//!   `[tokens, hidden]` matrix for the dense layers, and attention runs per text and per
//!   head on strided views of the fused QKV matrix, so no work is spent on padding and a
//!   text's vector does not depend on what it was batched with;
//! - every matrix product goes to the `gemm` crate (the kernels candle itself uses), with
//!   bias and residual folded into the product's accumulator, into buffers that are reused
//!   across batches and calls;
//! - the remaining element-wise work (GELU, softmax, layer norm) is small hand-written
//!   loops compiled for AVX2+FMA when the CPU has it, with a polynomial `exp` and `erf`
//!   the compiler can vectorize; they are a few percent of the run time in release and
//!   stay tolerable in unoptimized test builds because the products dominate.
//!
//! Weights come from `model.safetensors` through candle's loader, the tokenizer from
//! `tokenizer.json` through the `tokenizers` crate, the shape from `config.json`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use tokenizers::{Tokenizer, TruncationParams};

use crate::embed::{EmbedRequest, Embedder, EmbeddingProvider, EmbeddingSpace, Purpose};
use crate::error::{Error, Result};

/// Where `scripts/fetch-model.sh` puts the model, relative to the working directory.
pub const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";
/// Environment variable that overrides [`DEFAULT_MODEL_DIR`] (tests, deployments).
pub const MODEL_DIR_ENV: &str = "SKYFUSE_MODEL_DIR";
/// sentence-transformers' `max_seq_length` for all-MiniLM-L6-v2, special tokens included.
pub const MAX_SEQUENCE_TOKENS: usize = 256;

/// Tokens per forward pass: 16 full-length texts. Large enough that the matrix products run
/// at full speed (measured: no gain from 8192), small enough that a workspace stays near 37 MB.
const TOKENS_PER_FORWARD: usize = 16 * MAX_SEQUENCE_TOKENS;
/// Texts tokenized at a time, so a huge request does not hold every encoding at once.
const TEXTS_PER_TOKENIZER_CALL: usize = 256;
/// Work buffers kept for reuse; more concurrent callers than this allocate their own.
const POOLED_WORKSPACES: usize = 2;

/// The directory the model is loaded from: `SKYFUSE_MODEL_DIR` if set, else the default.
pub fn model_dir_from_env() -> PathBuf {
    match std::env::var_os(MODEL_DIR_ENV) {
        Some(directory) if !directory.is_empty() => PathBuf::from(directory),
        _ => PathBuf::from(DEFAULT_MODEL_DIR),
    }
}

/// all-MiniLM-L6-v2 in-process. Cheap to clone: everything lives behind one `Arc`.
#[derive(Clone)]
pub struct LocalEmbedder {
    inner: Arc<LocalEmbedderInner>,
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
    /// Loads weights + tokenizer; clear `Error::config` if the dir or a file is missing or malformed.
    pub fn load(space: EmbeddingSpace, model_dir: &Path) -> Result<Self> {
        if !model_dir.is_dir() {
            return Err(Error::config(format!(
                "embedding model directory {} does not exist; run scripts/fetch-model.sh",
                model_dir.display()
            )));
        }
        let config_path = model_dir.join("config.json");
        let weights_path = model_dir.join("model.safetensors");
        let tokenizer_path = model_dir.join("tokenizer.json");
        for required in [&config_path, &weights_path, &tokenizer_path] {
            if !required.is_file() {
                return Err(Error::config(format!(
                    "embedding model file {} is missing; run scripts/fetch-model.sh",
                    required.display()
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
        let model = BertWeights::read(&weights_path, shape)?;
        let tokenizer = load_tokenizer(&tokenizer_path, model.max_sequence_tokens)?;

        Ok(Self {
            inner: Arc::new(LocalEmbedderInner {
                space,
                tokenizer,
                model,
                workspaces: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Loads the model in `model_dir` as space `id` at the dimension the model produces.
    pub fn load_native(id: &str, model_dir: &Path) -> Result<Self> {
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
        Self::load(space, model_dir)
    }

    /// Blocking: one L2-normalized vector per text, in order. Empty input -> empty output.
    pub fn embed_blocking(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
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
            vectors.extend(self.inner.model.embed_sequences(batch, workspace));
            batch_start = batch_end;
        }
        Ok(())
    }

    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        let encodings = self
            .inner
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|error| Error::invalid(format!("could not tokenize text: {error}")))?;
        let vocabulary_size = self.inner.model.shape.vocab_size;
        let mut token_ids = Vec::with_capacity(encodings.len());
        for encoding in encodings {
            let mut ids = encoding.get_ids().to_vec();
            // The tokenizer truncates already; this guards a tokenizer.json whose
            // truncation we could not configure from indexing past the position table.
            ids.truncate(self.inner.model.max_sequence_tokens);
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
            .inner
            .workspaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.pop().unwrap_or_default()
    }

    fn return_workspace(&self, workspace: Workspace) {
        let mut pool = self
            .inner
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
    /// are embedded the same way.
    async fn embed(&self, texts: &[String], _purpose: Purpose) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
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
    // Padding would only add work: sequences are stacked without it (see the top of the file).
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

/// The parts of `config.json` the forward pass depends on.
#[derive(Debug, Clone, Copy)]
struct ModelShape {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    layer_norm_eps: f32,
}

#[derive(serde::Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_layer_norm_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_position_embedding_type")]
    position_embedding_type: String,
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

fn default_hidden_act() -> String {
    "gelu".to_owned()
}

fn default_position_embedding_type() -> String {
    "absolute".to_owned()
}

impl ModelShape {
    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Error::config(format!(
                "could not read {}: {error}; run scripts/fetch-model.sh",
                path.display()
            ))
        })?;
        let raw: RawConfig = serde_json::from_str(&text).map_err(|error| {
            Error::config(format!(
                "{} is not a bert config: {error}; run scripts/fetch-model.sh",
                path.display()
            ))
        })?;
        let invalid = |why: String| Error::config(format!("{}: {why}", path.display()));
        if raw.hidden_act != "gelu" {
            return Err(invalid(format!(
                "hidden_act {} is not supported, only gelu",
                raw.hidden_act
            )));
        }
        if raw.position_embedding_type != "absolute" {
            return Err(invalid(format!(
                "position_embedding_type {} is not supported, only absolute",
                raw.position_embedding_type
            )));
        }
        if raw.num_attention_heads == 0 || !raw.hidden_size.is_multiple_of(raw.num_attention_heads)
        {
            return Err(invalid(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        if raw.vocab_size == 0
            || raw.hidden_size == 0
            || raw.intermediate_size == 0
            || raw.max_position_embeddings < 2
        {
            return Err(invalid(
                "vocab_size, hidden_size, intermediate_size and max_position_embeddings must be positive".to_owned(),
            ));
        }
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            max_position_embeddings: raw.max_position_embeddings,
            layer_norm_eps: raw.layer_norm_eps as f32,
        })
    }

    fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// Layer norm scale and shift.
struct LayerNormWeights {
    gamma: Vec<f32>,
    beta: Vec<f32>,
}

/// One encoder layer.
struct EncoderLayer {
    /// Query, key and value projections side by side: `[hidden, 3 * hidden]`.
    qkv_weight: LinearWeight,
    qkv_bias: Vec<f32>,
    attention_output_weight: LinearWeight,
    attention_output_bias: Vec<f32>,
    attention_norm: LayerNormWeights,
    intermediate_weight: LinearWeight,
    intermediate_bias: Vec<f32>,
    output_weight: LinearWeight,
    output_bias: Vec<f32>,
    output_norm: LayerNormWeights,
}

/// Output columns per panel of [`LinearWeight::panels`]: the row count of gemm's AVX-512
/// f32 microkernel once it has transposed our row-major product.
const PANEL_WIDTH: usize = 64;
/// Up to this many tokens in a forward pass (a search query, a few short texts), products
/// use the panel layout.
const FEW_TOKENS: usize = 48;

/// A linear layer's weight, transposed from PyTorch's `[out, in]` and kept in two layouts
/// (the dense weights twice: 42 MB more memory for 2.6x faster short queries):
/// - `row_major` `[in, out]`: for many tokens, one multi-threaded gemm call that packs
///   the operands itself;
/// - `panels`: the same values cut into column panels of [`PANEL_WIDTH`], each stored
///   contiguously `[in, width]`. With few tokens the product is bound by streaming the
///   weights, and gemm reads a row-major `[in, out]` weight at a stride of `out` floats
///   per row; contiguous panels turned that into sequential reads (measured for 12 tokens
///   and a 384x1536 weight: 550 us -> 210 us per product).
struct LinearWeight {
    input_features: usize,
    output_features: usize,
    row_major: Vec<f32>,
    panels: Vec<f32>,
}

impl LinearWeight {
    fn from_row_major(row_major: Vec<f32>, input_features: usize, output_features: usize) -> Self {
        let mut panels = Vec::with_capacity(row_major.len());
        for panel_start in (0..output_features).step_by(PANEL_WIDTH) {
            let width = PANEL_WIDTH.min(output_features - panel_start);
            for input in 0..input_features {
                let row_start = input * output_features + panel_start;
                panels.extend_from_slice(&row_major[row_start..row_start + width]);
            }
        }
        Self {
            input_features,
            output_features,
            row_major,
            panels,
        }
    }

    /// `output[rows, out] += input[rows, in] · weight`, all row-major.
    fn accumulate(&self, rows: usize, input: &[f32], output: &mut [f32]) {
        let (k, n) = (self.input_features, self.output_features);
        assert!(input.len() >= rows * k && output.len() >= rows * n);
        if rows > FEW_TOKENS {
            // SAFETY: the assert above and `row_major.len() == k * n` bound every access.
            unsafe {
                gemm_accumulate(
                    rows,
                    k,
                    n,
                    input.as_ptr(),
                    self.row_major.as_ptr(),
                    n,
                    output.as_mut_ptr(),
                    n,
                    gemm::Parallelism::Rayon(0),
                );
            }
            return;
        }
        let output_pointer = SharedMutPointer(output.as_mut_ptr());
        let panel_count = n.div_ceil(PANEL_WIDTH);
        (0..panel_count).into_par_iter().for_each(|panel| {
            let panel_start = panel * PANEL_WIDTH;
            let width = PANEL_WIDTH.min(n - panel_start);
            let weights = &self.panels[panel_start * k..panel_start * k + width * k];
            let output_pointer = &output_pointer;
            // SAFETY: the input and output bounds are asserted above, the panel slice is
            // bounds-checked, and each task writes only its own columns of `output`.
            unsafe {
                gemm_accumulate(
                    rows,
                    k,
                    width,
                    input.as_ptr(),
                    weights.as_ptr(),
                    width,
                    output_pointer.0.add(panel_start),
                    n,
                    gemm::Parallelism::None,
                );
            }
        });
    }
}

struct BertWeights {
    shape: ModelShape,
    max_sequence_tokens: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Row 0 of the token type table: every text is a single segment.
    token_type_embedding: Vec<f32>,
    embedding_norm: LayerNormWeights,
    layers: Vec<EncoderLayer>,
}

/// Reads named tensors out of a safetensors file with clear errors.
struct TensorSource {
    path: PathBuf,
    tensors: std::collections::HashMap<String, Tensor>,
    /// `""` or `"bert."`, whichever the file uses.
    prefix: String,
}

impl TensorSource {
    fn open(path: &Path) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|error| {
            Error::config(format!(
                "could not read model weights {}: {error}; run scripts/fetch-model.sh",
                path.display()
            ))
        })?;
        let prefix = if tensors.contains_key("embeddings.word_embeddings.weight") {
            String::new()
        } else {
            "bert.".to_owned()
        };
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            prefix,
        })
    }

    fn tensor(&self, name: &str, expected_dims: &[usize]) -> Result<Tensor> {
        let full_name = format!("{}{name}", self.prefix);
        let Some(tensor) = self.tensors.get(&full_name) else {
            return Err(Error::config(format!(
                "model weights {} have no tensor {full_name}; run scripts/fetch-model.sh",
                self.path.display()
            )));
        };
        if tensor.dims() != expected_dims {
            return Err(Error::config(format!(
                "model weights {}: tensor {full_name} has shape {:?}, config.json implies {expected_dims:?}",
                self.path.display(),
                tensor.dims()
            )));
        }
        tensor
            .to_dtype(DType::F32)
            .map_err(|error| self.malformed(&full_name, error))
    }

    /// A tensor flattened row-major as it is stored.
    fn vector(&self, name: &str, expected_dims: &[usize]) -> Result<Vec<f32>> {
        let tensor = self.tensor(name, expected_dims)?;
        self.flatten(name, &tensor)
    }

    /// Row 0 of a `[rows, width]` table with any positive number of rows.
    fn first_row(&self, name: &str, width: usize) -> Result<Vec<f32>> {
        let rows = self
            .tensors
            .get(&format!("{}{name}", self.prefix))
            .and_then(|tensor| tensor.dims().first().copied())
            .unwrap_or(1)
            .max(1);
        let table = self.tensor(name, &[rows, width])?;
        let row = table.get(0).map_err(|error| self.malformed(name, error))?;
        self.flatten(name, &row)
    }

    /// A PyTorch linear weight `[out, in]`, returned transposed as `[in, out]` row-major.
    fn linear_weight_transposed(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
    ) -> Result<Vec<f32>> {
        let tensor = self.tensor(name, &[out_features, in_features])?;
        let transposed = tensor.t().map_err(|error| self.malformed(name, error))?;
        self.flatten(name, &transposed)
    }

    fn flatten(&self, name: &str, tensor: &Tensor) -> Result<Vec<f32>> {
        tensor
            .contiguous()
            .and_then(|tensor| tensor.flatten_all())
            .and_then(|tensor| tensor.to_vec1::<f32>())
            .map_err(|error| self.malformed(name, error))
    }

    fn malformed(&self, name: &str, error: candle_core::Error) -> Error {
        Error::config(format!(
            "model weights {}: tensor {name} is unusable: {error}",
            self.path.display()
        ))
    }
}

impl BertWeights {
    fn read(path: &Path, shape: ModelShape) -> Result<Self> {
        let source = TensorSource::open(path)?;
        let hidden = shape.hidden_size;
        let intermediate = shape.intermediate_size;
        let layer_norm = |name: &str| -> Result<LayerNormWeights> {
            Ok(LayerNormWeights {
                gamma: source.vector(&format!("{name}.weight"), &[hidden])?,
                beta: source.vector(&format!("{name}.bias"), &[hidden])?,
            })
        };

        // Every text is one segment, so only row 0 of the token type table is used.
        let token_type_embedding =
            source.first_row("embeddings.token_type_embeddings.weight", hidden)?;

        let mut layers = Vec::with_capacity(shape.num_hidden_layers);
        for layer_index in 0..shape.num_hidden_layers {
            let prefix = format!("encoder.layer.{layer_index}");
            let query = source.linear_weight_transposed(
                &format!("{prefix}.attention.self.query.weight"),
                hidden,
                hidden,
            )?;
            let key = source.linear_weight_transposed(
                &format!("{prefix}.attention.self.key.weight"),
                hidden,
                hidden,
            )?;
            let value = source.linear_weight_transposed(
                &format!("{prefix}.attention.self.value.weight"),
                hidden,
                hidden,
            )?;
            // Interleave row by row so row r of the fused matrix is [q_r | k_r | v_r].
            let mut qkv_weight = Vec::with_capacity(hidden * 3 * hidden);
            for row in 0..hidden {
                let row_range = row * hidden..(row + 1) * hidden;
                qkv_weight.extend_from_slice(&query[row_range.clone()]);
                qkv_weight.extend_from_slice(&key[row_range.clone()]);
                qkv_weight.extend_from_slice(&value[row_range]);
            }
            let mut qkv_bias =
                source.vector(&format!("{prefix}.attention.self.query.bias"), &[hidden])?;
            qkv_bias
                .extend(source.vector(&format!("{prefix}.attention.self.key.bias"), &[hidden])?);
            qkv_bias
                .extend(source.vector(&format!("{prefix}.attention.self.value.bias"), &[hidden])?);

            layers.push(EncoderLayer {
                qkv_weight: LinearWeight::from_row_major(qkv_weight, hidden, 3 * hidden),
                qkv_bias,
                attention_output_weight: LinearWeight::from_row_major(
                    source.linear_weight_transposed(
                        &format!("{prefix}.attention.output.dense.weight"),
                        hidden,
                        hidden,
                    )?,
                    hidden,
                    hidden,
                ),
                attention_output_bias: source
                    .vector(&format!("{prefix}.attention.output.dense.bias"), &[hidden])?,
                attention_norm: layer_norm(&format!("{prefix}.attention.output.LayerNorm"))?,
                intermediate_weight: LinearWeight::from_row_major(
                    source.linear_weight_transposed(
                        &format!("{prefix}.intermediate.dense.weight"),
                        intermediate,
                        hidden,
                    )?,
                    hidden,
                    intermediate,
                ),
                intermediate_bias: source.vector(
                    &format!("{prefix}.intermediate.dense.bias"),
                    &[intermediate],
                )?,
                output_weight: LinearWeight::from_row_major(
                    source.linear_weight_transposed(
                        &format!("{prefix}.output.dense.weight"),
                        hidden,
                        intermediate,
                    )?,
                    intermediate,
                    hidden,
                ),
                output_bias: source.vector(&format!("{prefix}.output.dense.bias"), &[hidden])?,
                output_norm: layer_norm(&format!("{prefix}.output.LayerNorm"))?,
            });
        }

        Ok(Self {
            shape,
            max_sequence_tokens: MAX_SEQUENCE_TOKENS.min(shape.max_position_embeddings),
            word_embeddings: source.vector(
                "embeddings.word_embeddings.weight",
                &[shape.vocab_size, hidden],
            )?,
            position_embeddings: source.vector(
                "embeddings.position_embeddings.weight",
                &[shape.max_position_embeddings, hidden],
            )?,
            token_type_embedding,
            embedding_norm: layer_norm("embeddings.LayerNorm")?,
            layers,
        })
    }

    /// Runs one batch of token sequences (each non-empty, within the position table) and
    /// returns one normalized vector per sequence.
    fn embed_sequences(&self, sequences: &[Vec<u32>], workspace: &mut Workspace) -> Vec<Vec<f32>> {
        let hidden = self.shape.hidden_size;
        let intermediate = self.shape.intermediate_size;
        let total_tokens: usize = sequences.iter().map(Vec::len).sum();
        workspace.prepare(total_tokens, hidden, intermediate);

        let mut sequence_starts = Vec::with_capacity(sequences.len() + 1);
        sequence_starts.push(0);
        for sequence in sequences {
            sequence_starts.push(sequence_starts.last().copied().unwrap_or(0) + sequence.len());
        }

        self.embed_tokens(sequences, &mut workspace.hidden);
        for layer in &self.layers {
            self.run_layer(layer, &sequence_starts, total_tokens, workspace);
        }

        sequences
            .iter()
            .enumerate()
            .map(|(sequence_index, _)| {
                let start = sequence_starts[sequence_index];
                let end = sequence_starts[sequence_index + 1];
                mean_pool_and_normalize(&workspace.hidden[start * hidden..end * hidden], hidden)
            })
            .collect()
    }

    /// word + position + token type embeddings, then layer norm, into `output`.
    fn embed_tokens(&self, sequences: &[Vec<u32>], output: &mut [f32]) {
        let hidden = self.shape.hidden_size;
        let mut rows = output.chunks_exact_mut(hidden);
        for sequence in sequences {
            for (position, &token_id) in sequence.iter().enumerate() {
                let Some(row) = rows.next() else { return };
                let word = &self.word_embeddings[token_id as usize * hidden..][..hidden];
                let position_row = &self.position_embeddings[position * hidden..][..hidden];
                for (((value, &word), &position), &token_type) in row
                    .iter_mut()
                    .zip(word)
                    .zip(position_row)
                    .zip(&self.token_type_embedding)
                {
                    *value = word + position + token_type;
                }
            }
        }
        let rows = sequences.iter().map(Vec::len).sum::<usize>();
        layer_norm_rows(
            &mut output[..rows * hidden],
            None,
            &self.embedding_norm,
            hidden,
            self.shape.layer_norm_eps,
        );
    }

    fn run_layer(
        &self,
        layer: &EncoderLayer,
        sequence_starts: &[usize],
        total_tokens: usize,
        workspace: &mut Workspace,
    ) {
        let hidden = self.shape.hidden_size;
        let intermediate = self.shape.intermediate_size;
        let epsilon = self.shape.layer_norm_eps;
        let Workspace {
            hidden: hidden_states,
            qkv,
            context,
            attention_output,
            intermediate: intermediate_states,
        } = workspace;
        let hidden_states = &mut hidden_states[..total_tokens * hidden];
        let qkv = &mut qkv[..total_tokens * 3 * hidden];
        let context = &mut context[..total_tokens * hidden];
        let attention_output = &mut attention_output[..total_tokens * hidden];
        let intermediate_states = &mut intermediate_states[..total_tokens * intermediate];

        // qkv = hidden · Wqkv + bqkv
        fill_rows_with(qkv, &layer.qkv_bias);
        layer
            .qkv_weight
            .accumulate(total_tokens, hidden_states, qkv);

        self.attention(qkv, sequence_starts, context);

        // attention_output = LayerNorm(hidden + context · Wo + bo)
        attention_output.copy_from_slice(hidden_states);
        layer
            .attention_output_weight
            .accumulate(total_tokens, context, attention_output);
        layer_norm_rows(
            attention_output,
            Some(&layer.attention_output_bias),
            &layer.attention_norm,
            hidden,
            epsilon,
        );

        // intermediate = gelu(attention_output · Wi + bi)
        fill_rows_with(intermediate_states, &layer.intermediate_bias);
        layer
            .intermediate_weight
            .accumulate(total_tokens, attention_output, intermediate_states);
        gelu_in_place(intermediate_states);

        // hidden = LayerNorm(attention_output + intermediate · Wout + bout)
        hidden_states.copy_from_slice(attention_output);
        layer
            .output_weight
            .accumulate(total_tokens, intermediate_states, hidden_states);
        layer_norm_rows(
            hidden_states,
            Some(&layer.output_bias),
            &layer.output_norm,
            hidden,
            epsilon,
        );
    }

    /// Scaled dot-product attention per sequence and head, reading strided views of the
    /// fused `[tokens, 3 * hidden]` QKV matrix and writing `[tokens, hidden]` context.
    fn attention(&self, qkv: &[f32], sequence_starts: &[usize], context: &mut [f32]) {
        let hidden = self.shape.hidden_size;
        let heads = self.shape.num_attention_heads;
        let head_size = self.shape.head_size();
        let scale = 1.0 / (head_size as f32).sqrt();
        let qkv_row_stride = 3 * hidden;
        let sequence_count = sequence_starts.len() - 1;
        let context_pointer = SharedMutPointer(context.as_mut_ptr());
        let context_len = context.len();

        (0..sequence_count * heads)
            .into_par_iter()
            .for_each(|task| {
                let sequence_index = task / heads;
                let head = task % heads;
                let start = sequence_starts[sequence_index];
                let length = sequence_starts[sequence_index + 1] - start;
                if length == 0 {
                    return;
                }
                SCORES.with(|scores| {
                    let mut scores = scores.borrow_mut();
                    if scores.len() < length * length {
                        scores.resize(length * length, 0.0);
                    }
                    let scores = &mut scores[..length * length];
                    let query = &qkv[start * qkv_row_stride + head * head_size..];
                    let key = &qkv[start * qkv_row_stride + hidden + head * head_size..];
                    let value = &qkv[start * qkv_row_stride + 2 * hidden + head * head_size..];
                    // The slices above run to the end of the matrix; the strides below keep every
                    // read inside the rows of this sequence: (length - 1) * stride + head_size.
                    debug_assert!(query.len() >= (length - 1) * qkv_row_stride + head_size);
                    debug_assert!(value.len() >= (length - 1) * qkv_row_stride + head_size);
                    debug_assert!(
                        start * hidden + (length - 1) * hidden + (head + 1) * head_size
                            <= context_len
                    );
                    // SAFETY: all pointers stay within the slices checked above; the
                    // destination block (rows of this sequence, columns of this head) is
                    // written by this task only.
                    unsafe {
                        // scores = scale · Q_h · K_hᵀ
                        gemm::gemm(
                            length,
                            length,
                            head_size,
                            scores.as_mut_ptr(),
                            1,
                            length as isize,
                            false,
                            query.as_ptr(),
                            1,
                            qkv_row_stride as isize,
                            key.as_ptr(),
                            qkv_row_stride as isize,
                            1,
                            0.0,
                            scale,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                    softmax_rows(scores, length);
                    let context_pointer = &context_pointer;
                    // SAFETY: as above.
                    unsafe {
                        // context_h = softmax(scores) · V_h
                        gemm::gemm(
                            length,
                            head_size,
                            length,
                            context_pointer.0.add(start * hidden + head * head_size),
                            1,
                            hidden as isize,
                            false,
                            scores.as_ptr(),
                            1,
                            length as isize,
                            value.as_ptr(),
                            1,
                            qkv_row_stride as isize,
                            0.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                });
            });
    }
}

thread_local! {
    /// Attention scores of one (sequence, head), reused by each rayon worker.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A raw pointer parallel tasks share; each task writes a disjoint block.
struct SharedMutPointer(*mut f32);
// SAFETY: only used for disjoint writes (attention heads, weight panels).
unsafe impl Send for SharedMutPointer {}
// SAFETY: as above.
unsafe impl Sync for SharedMutPointer {}

/// Activation buffers, grown to the largest batch seen and reused.
#[derive(Default)]
struct Workspace {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    context: Vec<f32>,
    attention_output: Vec<f32>,
    intermediate: Vec<f32>,
}

impl Workspace {
    fn prepare(&mut self, tokens: usize, hidden: usize, intermediate: usize) {
        grow(&mut self.hidden, tokens * hidden);
        grow(&mut self.qkv, tokens * 3 * hidden);
        grow(&mut self.context, tokens * hidden);
        grow(&mut self.attention_output, tokens * hidden);
        grow(&mut self.intermediate, tokens * intermediate);
    }
}

fn grow(buffer: &mut Vec<f32>, length: usize) {
    if buffer.len() < length {
        buffer.resize(length, 0.0);
    }
}

/// `output[rows, n] += input[rows, k] · weight[k, n]`; `input` is row-major with `k`
/// columns, `weight` and `output` row-major with the given row strides.
///
/// # Safety
/// Every row and column named by the sizes and strides must lie inside the allocations.
#[expect(clippy::too_many_arguments, reason = "mirrors gemm's own signature")]
unsafe fn gemm_accumulate(
    rows: usize,
    k: usize,
    n: usize,
    input: *const f32,
    weight: *const f32,
    weight_row_stride: usize,
    output: *mut f32,
    output_row_stride: usize,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            output,
            1,
            output_row_stride as isize,
            true,
            input,
            1,
            k as isize,
            weight,
            1,
            weight_row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Copies `row` into every row of `matrix` (bias before an accumulating product).
fn fill_rows_with(matrix: &mut [f32], row: &[f32]) {
    for destination in matrix.chunks_exact_mut(row.len()) {
        destination.copy_from_slice(row);
    }
}

/// Rows per rayon task for the element-wise kernels: big enough to amortize scheduling.
const ROWS_PER_TASK: usize = 64;
/// Values per rayon task for GELU.
const ELEMENTS_PER_TASK: usize = 64 * 1024;

/// In place, per row: `LayerNorm(x + bias)`.
fn layer_norm_rows(
    matrix: &mut [f32],
    bias: Option<&[f32]>,
    norm: &LayerNormWeights,
    width: usize,
    epsilon: f32,
) {
    matrix
        .par_chunks_mut(width * ROWS_PER_TASK)
        .for_each(|block| {
            for row in block.chunks_exact_mut(width) {
                kernels::layer_norm_row(row, bias, &norm.gamma, &norm.beta, epsilon);
            }
        });
}

fn gelu_in_place(values: &mut [f32]) {
    values
        .par_chunks_mut(ELEMENTS_PER_TASK)
        .for_each(kernels::gelu);
}

fn softmax_rows(matrix: &mut [f32], width: usize) {
    for row in matrix.chunks_exact_mut(width) {
        kernels::softmax(row);
    }
}

fn mean_pool_and_normalize(rows: &[f32], width: usize) -> Vec<f32> {
    let mut pooled = vec![0.0_f32; width];
    let row_count = rows.len() / width;
    for row in rows.chunks_exact(width) {
        for (sum, &value) in pooled.iter_mut().zip(row) {
            *sum += value;
        }
    }
    let inverse_count = 1.0 / row_count.max(1) as f32;
    for value in &mut pooled {
        *value *= inverse_count;
    }
    // sentence-transformers' Normalize: x / max(‖x‖, 1e-12).
    let norm = pooled
        .iter()
        .map(|value| value * value)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    for value in &mut pooled {
        *value /= norm;
    }
    pooled
}

/// Element-wise kernels, compiled twice: for AVX2+FMA (picked at run time when the CPU has
/// it) and for the baseline target. The bodies are plain loops the compiler vectorizes;
/// reductions use 16 independent lanes because float addition may not be reordered.
mod kernels {
    const LANES: usize = 16;

    macro_rules! dispatch {
        ($name:ident ( $($argument:ident : $type:ty),* ) $(-> $output:ty)?) => {
            pub fn $name($($argument: $type),*) $(-> $output)? {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                        // SAFETY: the CPU supports the features the variant was compiled for.
                        return unsafe { avx2::$name($($argument),*) };
                    }
                }
                portable::$name($($argument),*)
            }
        };
    }

    dispatch!(gelu(values: &mut [f32]));
    dispatch!(softmax(row: &mut [f32]));
    dispatch!(layer_norm_row(row: &mut [f32], bias: Option<&[f32]>, gamma: &[f32], beta: &[f32], epsilon: f32));

    macro_rules! bodies {
        ($($attribute:meta)?) => {
            /// GELU with the exact erf form BERT was trained with: x/2 · (1 + erf(x/√2)).
            $(#[$attribute])?
            pub fn gelu(values: &mut [f32]) {
                for value in values.iter_mut() {
                    let x = *value;
                    *value = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                }
            }

            $(#[$attribute])?
            pub fn softmax(row: &mut [f32]) {
                let mut lane_max = [f32::NEG_INFINITY; LANES];
                let mut chunks = row.chunks_exact(LANES);
                for chunk in &mut chunks {
                    for (maximum, &value) in lane_max.iter_mut().zip(chunk) {
                        *maximum = maximum.max(value);
                    }
                }
                let mut maximum = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                for &lane in &lane_max {
                    maximum = maximum.max(lane);
                }
                let mut lane_sum = [0.0_f32; LANES];
                let mut chunks = row.chunks_exact_mut(LANES);
                for chunk in &mut chunks {
                    for (sum, value) in lane_sum.iter_mut().zip(chunk.iter_mut()) {
                        *value = exp(*value - maximum);
                        *sum += *value;
                    }
                }
                let mut sum = 0.0_f32;
                for value in chunks.into_remainder() {
                    *value = exp(*value - maximum);
                    sum += *value;
                }
                sum += lane_sum.iter().sum::<f32>();
                let inverse = 1.0 / sum;
                for value in row.iter_mut() {
                    *value *= inverse;
                }
            }

            $(#[$attribute])?
            pub fn layer_norm_row(row: &mut [f32], bias: Option<&[f32]>, gamma: &[f32], beta: &[f32], epsilon: f32) {
                if let Some(bias) = bias {
                    for (value, &bias) in row.iter_mut().zip(bias) {
                        *value += bias;
                    }
                }
                let width = row.len() as f32;
                let mean = lane_sum(row) / width;
                let mut lane_squares = [0.0_f32; LANES];
                let mut chunks = row.chunks_exact(LANES);
                for chunk in &mut chunks {
                    for (sum, &value) in lane_squares.iter_mut().zip(chunk) {
                        let centered = value - mean;
                        *sum += centered * centered;
                    }
                }
                let mut squares: f32 = chunks.remainder().iter().map(|&value| (value - mean) * (value - mean)).sum();
                squares += lane_squares.iter().sum::<f32>();
                let inverse_deviation = 1.0 / (squares / width + epsilon).sqrt();
                for ((value, &gamma), &beta) in row.iter_mut().zip(gamma).zip(beta) {
                    *value = (*value - mean) * inverse_deviation * gamma + beta;
                }
            }
        };
    }

    #[inline(always)]
    fn lane_sum(values: &[f32]) -> f32 {
        let mut lanes = [0.0_f32; LANES];
        let mut chunks = values.chunks_exact(LANES);
        for chunk in &mut chunks {
            for (sum, &value) in lanes.iter_mut().zip(chunk) {
                *sum += value;
            }
        }
        let mut sum: f32 = chunks.remainder().iter().sum();
        sum += lanes.iter().sum::<f32>();
        sum
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        use super::{LANES, erf, exp, lane_sum};
        bodies!(target_feature(enable = "avx2,fma"));
    }

    pub(super) mod portable {
        use super::{LANES, erf, exp, lane_sum};
        bodies!();
    }

    /// `exp` for f32 without branches so loops over it vectorize (Cephes `expf`: range
    /// reduction by ln 2, degree-5 polynomial, exponent bits; about 1 ulp on [-87, 88]).
    #[inline(always)]
    pub(super) fn exp(x: f32) -> f32 {
        let x = x.clamp(-87.0, 88.0);
        let power = (x * std::f32::consts::LOG2_E + 0.5).floor();
        let reduced = x - power * 0.693_359_4 + power * 2.121_944_4e-4;
        let squared = reduced * reduced;
        let polynomial = ((((1.987_569_1e-4 * reduced + 1.398_199_9e-3) * reduced + 8.333_452e-3)
            * reduced
            + 4.166_579_6e-2)
            * reduced
            + 1.666_666_5e-1)
            * reduced
            + 0.5;
        let mantissa = polynomial * squared + reduced + 1.0;
        // 2^power built from its bits. Adding 2^23 puts the integer `power + 127` (in 2..=255
        // after the clamp) in the low mantissa bits; unlike an `as i32` cast this vectorizes.
        let biased_bits = (power + 127.0 + 8_388_608.0)
            .to_bits()
            .wrapping_sub(0x4B00_0000);
        let exponent = f32::from_bits(biased_bits << 23);
        mantissa * exponent
    }

    /// `erf` for f32 as a rational function (the approximation Eigen and XLA use), accurate to
    /// a few ulp and branch-free. Beyond ±4 erf is ±1 in f32.
    #[inline(always)]
    pub(super) fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let squared = x * x;
        let mut numerator = squared * -2.726_142_3e-10 + 2.770_681_4e-8;
        numerator = squared * numerator - 2.101_024e-6;
        numerator = squared * numerator - 5.692_506_4e-5;
        numerator = squared * numerator - 7.349_906_3e-4;
        numerator = squared * numerator - 2.954_600_1e-3;
        numerator = squared * numerator - 1.609_603_3e-2;
        numerator *= x;
        let mut denominator = squared * -1.456_607_2e-5 - 2.133_740_6e-4;
        denominator = squared * denominator - 1.682_827e-3;
        denominator = squared * denominator - 7.373_329e-3;
        denominator = squared * denominator - 1.426_474e-2;
        numerator / denominator
    }
}

#[cfg(test)]
mod tests {
    use super::kernels;

    /// erf by its Maclaurin series in f64: exact enough on [-4, 4] to judge an f32 kernel.
    fn reference_erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn erf_kernel_matches_the_series() {
        let mut worst = 0.0_f64;
        for step in -600..=600 {
            let x = step as f32 / 100.0;
            let wanted = if x.abs() > 4.0 {
                x.signum() as f64
            } else {
                reference_erf(x as f64)
            };
            worst = worst.max((kernels::erf(x) as f64 - wanted).abs());
        }
        assert!(worst < 1e-6, "largest erf error {worst}");
    }

    #[test]
    fn exp_kernel_matches_std_within_a_few_ulp() {
        for step in -8700..=0 {
            let x = step as f32 / 100.0;
            let wanted = (x as f64).exp();
            let relative = ((kernels::exp(x) as f64 - wanted) / wanted).abs();
            assert!(relative < 4e-7, "exp({x}): relative error {relative}");
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        // 37 values: the 16-lane part and the remainder both run.
        let mut row: Vec<f32> = (0..37)
            .map(|index| (index as f32 * 0.37).sin() * 9.0)
            .collect();
        let original = row.clone();
        kernels::softmax(&mut row);
        let sum: f32 = row.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5, "sum {sum}");
        let largest = original
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, _)| index);
        let largest_after = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(index, _)| index);
        assert_eq!(largest, largest_after);
    }

    /// The dispatched kernels (AVX2 on this machine) and the baseline build agree.
    #[test]
    fn portable_kernels_agree_with_the_dispatched_ones() {
        let values: Vec<f32> = (0..1000)
            .map(|index| (index as f32 * 0.013).cos() * 5.0)
            .collect();
        let mut dispatched = values.clone();
        let mut portable = values.clone();
        kernels::gelu(&mut dispatched);
        kernels::portable::gelu(&mut portable);
        for (a, b) in dispatched.iter().zip(&portable) {
            assert!((a - b).abs() < 1e-6, "gelu {a} vs {b}");
        }
        let mut dispatched = values[..300].to_vec();
        let mut portable = values[..300].to_vec();
        kernels::softmax(&mut dispatched);
        kernels::portable::softmax(&mut portable);
        for (a, b) in dispatched.iter().zip(&portable) {
            assert!((a - b).abs() < 1e-7, "softmax {a} vs {b}");
        }
    }

    #[test]
    fn layer_norm_centers_and_scales() {
        let width = 40;
        let mut row: Vec<f32> = (0..width).map(|index| index as f32 * 0.5 - 3.0).collect();
        let bias = vec![1.0_f32; width];
        let gamma = vec![2.0_f32; width];
        let beta = vec![0.25_f32; width];
        kernels::layer_norm_row(&mut row, Some(&bias), &gamma, &beta, 1e-12);
        let mean: f32 = row.iter().sum::<f32>() / width as f32;
        let variance: f32 = row
            .iter()
            .map(|value| (value - mean) * (value - mean))
            .sum::<f32>()
            / width as f32;
        assert!((mean - 0.25).abs() < 1e-5, "mean {mean}");
        assert!((variance - 4.0).abs() < 1e-3, "variance {variance}");
    }
}
