//! The tensors of `model.safetensors`, checked against the model's shape and laid out the
//! way the forward pass multiplies them: PyTorch's `[out, in]` linear weights transposed,
//! query, key and value fused into one product, and the dense weights also cut into
//! contiguous column panels for products over few tokens.

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::MAX_SEQUENCE_TOKENS;
use super::config::ModelShape;
use super::kernels::{self, Bf16Weight};
use crate::error::{Error, Result};

/// Layer norm scale and shift.
pub(super) struct LayerNormWeights {
    pub(super) gamma: Vec<f32>,
    pub(super) beta: Vec<f32>,
}

/// One encoder layer.
pub(super) struct EncoderLayer {
    /// Query, key and value projections side by side: `[hidden, 3 * hidden]`.
    pub(super) qkv_weight: LinearWeight,
    pub(super) qkv_bias: Vec<f32>,
    pub(super) attention_output_weight: LinearWeight,
    pub(super) attention_output_bias: Vec<f32>,
    pub(super) attention_norm: LayerNormWeights,
    pub(super) intermediate_weight: LinearWeight,
    pub(super) intermediate_bias: Vec<f32>,
    pub(super) output_weight: LinearWeight,
    pub(super) output_bias: Vec<f32>,
    pub(super) output_norm: LayerNormWeights,
}

/// Output columns per panel of [`LinearWeight::panels`]: the row count of gemm's AVX-512
/// f32 microkernel once it has transposed our row-major product.
const PANEL_WIDTH: usize = 64;
/// Up to this many tokens in a forward pass (a search query, a few short texts), products
/// use the panel layout.
const FEW_TOKENS: usize = 48;

/// A linear layer's weight, transposed from PyTorch's `[out, in]`, in the layout its
/// products want:
/// - [`Arithmetic::Bf16`]: rounded to bf16 and packed for `vdpbf16ps` (see
///   `kernels/bf16.rs`), the f32 copies dropped;
/// - [`Arithmetic::F32`]: kept twice (42 MB more memory for 2.6x faster short queries):
///   `row_major` `[in, out]` for many tokens, one multi-threaded gemm call that packs the
///   operands itself; and `panels`, the same values cut into column panels of
///   [`PANEL_WIDTH`], each stored contiguously `[in, width]`. With few tokens the product
///   is bound by streaming the weights, and gemm reads a row-major `[in, out]` weight at a
///   stride of `out` floats per row; contiguous panels turned that into sequential reads
///   (measured for 12 tokens and a 384x1536 weight: 550 us -> 210 us per product).
pub(super) struct LinearWeight {
    input_features: usize,
    output_features: usize,
    arithmetic: Arithmetic,
}

enum Arithmetic {
    F32 {
        row_major: Vec<f32>,
        panels: Vec<f32>,
    },
    Bf16(Bf16Weight),
}

impl LinearWeight {
    fn from_row_major(
        row_major: Vec<f32>,
        input_features: usize,
        output_features: usize,
        bf16: bool,
    ) -> Self {
        let packed = bf16
            .then(|| Bf16Weight::pack(&row_major, input_features, output_features))
            .flatten();
        let arithmetic = match packed {
            Some(packed) => Arithmetic::Bf16(packed),
            None => {
                let mut panels = Vec::with_capacity(row_major.len());
                for panel_start in (0..output_features).step_by(PANEL_WIDTH) {
                    let width = PANEL_WIDTH.min(output_features - panel_start);
                    for input in 0..input_features {
                        let row_start = input * output_features + panel_start;
                        panels.extend_from_slice(&row_major[row_start..row_start + width]);
                    }
                }
                Arithmetic::F32 { row_major, panels }
            }
        };
        Self {
            input_features,
            output_features,
            arithmetic,
        }
    }

    /// `output[rows, out] += input[rows, in] · weight`, all row-major.
    pub(super) fn accumulate(&self, rows: usize, input: &[f32], output: &mut [f32]) {
        let (k, n) = (self.input_features, self.output_features);
        match &self.arithmetic {
            Arithmetic::Bf16(packed) => packed.accumulate(rows, input, output),
            Arithmetic::F32 { row_major, .. } if rows > FEW_TOKENS => {
                kernels::matmul_accumulate(rows, k, n, input, row_major, output);
            }
            Arithmetic::F32 { panels, .. } => {
                kernels::panel_matmul_accumulate(rows, k, n, input, panels, PANEL_WIDTH, output);
            }
        }
    }

    /// Whether this weight's products run in bf16.
    pub(super) fn is_bf16(&self) -> bool {
        matches!(self.arithmetic, Arithmetic::Bf16(_))
    }
}

/// Every weight of the model, read once at load and shared by all calls.
pub(super) struct BertWeights {
    pub(super) shape: ModelShape,
    /// [`MAX_SEQUENCE_TOKENS`], or fewer if the position table is shorter.
    pub(super) max_sequence_tokens: usize,
    /// `[vocab, hidden]`.
    pub(super) word_embeddings: Vec<f32>,
    /// `[max_position_embeddings, hidden]`.
    pub(super) position_embeddings: Vec<f32>,
    /// Row 0 of the token type table: every text is a single segment.
    pub(super) token_type_embedding: Vec<f32>,
    pub(super) embedding_norm: LayerNormWeights,
    pub(super) layers: Vec<EncoderLayer>,
}

/// Reads named tensors out of a safetensors file with clear errors.
struct TensorSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
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
    /// Reads the weights; `bf16`: pack the linear weights for bf16 products (the caller
    /// checked the CPU has them; a weight whose shape does not fit stays f32).
    pub(super) fn read(path: &Path, shape: ModelShape, bf16: bool) -> Result<Self> {
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
                qkv_weight: LinearWeight::from_row_major(qkv_weight, hidden, 3 * hidden, bf16),
                qkv_bias,
                attention_output_weight: LinearWeight::from_row_major(
                    source.linear_weight_transposed(
                        &format!("{prefix}.attention.output.dense.weight"),
                        hidden,
                        hidden,
                    )?,
                    hidden,
                    hidden,
                    bf16,
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
                    bf16,
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
                    bf16,
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
}
