//! The forward pass: token embeddings, the encoder layers, mean pooling and L2
//! normalization, over the token sequences of one batch stacked without padding into one
//! `[tokens, hidden]` matrix. The arithmetic itself is in [`kernels`].

#![forbid(unsafe_code)]

use super::kernels::{self, AttentionShape};
use super::weights::{BertWeights, EncoderLayer};

impl BertWeights {
    /// Runs one batch of token sequences (each non-empty, within the position table) and
    /// returns one normalized vector per sequence.
    pub(super) fn embed_sequences(
        &self,
        sequences: &[Vec<u32>],
        workspace: &mut Workspace,
    ) -> Vec<Vec<f32>> {
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
        kernels::layer_norm_rows(
            &mut output[..rows * hidden],
            None,
            &self.embedding_norm.gamma,
            &self.embedding_norm.beta,
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

        // context = softmax(Q_h · K_hᵀ / √head_size) · V_h, per sequence and head
        let shape = AttentionShape {
            hidden,
            heads: self.shape.num_attention_heads,
            head_size: self.shape.head_size(),
        };
        kernels::attention(qkv, sequence_starts, context, shape);

        // attention_output = LayerNorm(hidden + context · Wo + bo)
        attention_output.copy_from_slice(hidden_states);
        layer
            .attention_output_weight
            .accumulate(total_tokens, context, attention_output);
        kernels::layer_norm_rows(
            attention_output,
            Some(&layer.attention_output_bias),
            &layer.attention_norm.gamma,
            &layer.attention_norm.beta,
            epsilon,
        );

        // intermediate = gelu(attention_output · Wi + bi)
        fill_rows_with(intermediate_states, &layer.intermediate_bias);
        layer
            .intermediate_weight
            .accumulate(total_tokens, attention_output, intermediate_states);
        kernels::gelu_in_place(intermediate_states);

        // hidden = LayerNorm(attention_output + intermediate · Wout + bout)
        hidden_states.copy_from_slice(attention_output);
        layer
            .output_weight
            .accumulate(total_tokens, intermediate_states, hidden_states);
        kernels::layer_norm_rows(
            hidden_states,
            Some(&layer.output_bias),
            &layer.output_norm.gamma,
            &layer.output_norm.beta,
            epsilon,
        );
    }
}

/// Activation buffers, grown to the largest batch seen and reused.
#[derive(Default)]
pub(super) struct Workspace {
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

/// Copies `row` into every row of `matrix` (bias before an accumulating product).
fn fill_rows_with(matrix: &mut [f32], row: &[f32]) {
    for destination in matrix.chunks_exact_mut(row.len()) {
        destination.copy_from_slice(row);
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
