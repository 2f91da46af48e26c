//! The arithmetic of the forward pass. This folder is the only part of the runtime that may
//! hold `unsafe` code (`mod.rs` denies it everywhere else, the other files forbid it).
//!
//! What is unsafe here, and what each use rests on:
//! - the `gemm` crate's entry point takes raw pointers, sizes and strides. Each call below
//!   is wrapped in a safe function that first checks, with `assert!` or checked slicing
//!   (kept in release builds, once per call or per task, never per element), that every
//!   element the sizes and strides name lies inside the slices it was given.
//! - two parallel loops write disjoint blocks of one output through a shared raw pointer
//!   ([`SharedMutPointer`]): column panels of a product ([`panel_matmul_accumulate`]) and
//!   (sequence, head) blocks of the attention context ([`attention`]). Each checks the
//!   facts disjointness follows from before it forks.
//! - the element-wise kernels (GELU, softmax, layer norm) are compiled a second time with
//!   `#[target_feature(enable = "avx2,fma")]`, and `dispatch!` calls that variant only after
//!   `is_x86_feature_detected!` confirmed the CPU has both features.
//! - [`bf16`]: the bfloat16 products on AVX512_BF16 (its own docs say what they rest on).

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod bf16;
#[cfg(target_arch = "x86_64")]
pub(super) use bf16::Bf16Weight;

/// Elsewhere there is no bf16 product: every weight stays f32.
#[cfg(not(target_arch = "x86_64"))]
pub(super) enum Bf16Weight {}

#[cfg(not(target_arch = "x86_64"))]
impl Bf16Weight {
    pub(super) fn pack(_row_major: &[f32], _k: usize, _n: usize) -> Option<Self> {
        None
    }

    pub(super) fn accumulate(&self, _rows: usize, _input: &[f32], _output: &mut [f32]) {
        match *self {}
    }
}

/// Whether this CPU multiplies in bf16 ([`Bf16Weight`]).
pub(super) fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bf16::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rows per rayon task for layer norm: big enough to amortize scheduling.
const ROWS_PER_TASK: usize = 64;
/// Values per rayon task for GELU.
const ELEMENTS_PER_TASK: usize = 64 * 1024;

/// `output[rows, n] += input[rows, k] · weight[k, n]`, all row-major and contiguous: one
/// multi-threaded gemm call that packs the operands itself (many tokens).
pub(super) fn matmul_accumulate(
    rows: usize,
    k: usize,
    n: usize,
    input: &[f32],
    weight: &[f32],
    output: &mut [f32],
) {
    let input = &input[..rows * k];
    let weight = &weight[..k * n];
    let output = &mut output[..rows * n];
    // SAFETY: gemm reads input[r * k + i], weight[i * n + c] and reads and writes
    // output[r * n + c] for r < rows, i < k, c < n: below rows * k, k * n and rows * n,
    // the lengths the three slices were just cut to (a panic if they were shorter).
    // `output` is a unique borrow, so it overlaps neither operand.
    unsafe {
        gemm::gemm(
            rows,
            n,
            k,
            output.as_mut_ptr(),
            1,
            n as isize,
            true,
            input.as_ptr(),
            1,
            k as isize,
            weight.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(0),
        );
    }
}

/// The same product with the weight cut into column panels of `panel_width`, each stored
/// contiguously `[k, width]` one after the other (the last may be narrower): one
/// single-threaded gemm per panel, the panels in parallel (few tokens, where streaming the
/// weight dominates and contiguous panels read it sequentially).
pub(super) fn panel_matmul_accumulate(
    rows: usize,
    k: usize,
    n: usize,
    input: &[f32],
    panels: &[f32],
    panel_width: usize,
    output: &mut [f32],
) {
    assert!(panel_width > 0, "a panel is at least one column wide");
    if rows == 0 {
        return;
    }
    let input = &input[..rows * k];
    let output = &mut output[..rows * n];
    let output_pointer = SharedMutPointer(output.as_mut_ptr());
    let panel_count = n.div_ceil(panel_width);
    (0..panel_count).into_par_iter().for_each(|panel| {
        let panel_start = panel * panel_width;
        let width = panel_width.min(n - panel_start);
        let weights = &panels[panel_start * k..][..k * width];
        // SAFETY: gemm reads input[r * k + i] (below rows * k, the length `input` was cut
        // to) and weights[i * width + c] (below k * width, the length of `weights`), and
        // reads and writes output[r * n + panel_start + c] for r < rows, i < k, c < width.
        // `panel_start + width <= n`, so that is below rows * n, the length `output` was
        // cut to (and `panel_start < n <= output.len()`, since rows >= 1, keeps the offset
        // pointer inside the allocation). The panels' column ranges
        // [panel_start, panel_start + width) are disjoint, so no two tasks touch the same
        // element, and `output` is borrowed mutably for the whole call, so no one else
        // reads or writes it meanwhile; it overlaps neither operand.
        unsafe {
            gemm::gemm(
                rows,
                width,
                k,
                output_pointer.get().add(panel_start),
                1,
                n as isize,
                true,
                input.as_ptr(),
                1,
                k as isize,
                weights.as_ptr(),
                1,
                width as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

/// The head layout of a fused `[tokens, 3 * hidden]` QKV matrix: row `t` is
/// `[q_t | k_t | v_t]`, and head `h` owns columns `h * head_size .. (h + 1) * head_size` of
/// each third.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttentionShape {
    pub(super) hidden: usize,
    pub(super) heads: usize,
    pub(super) head_size: usize,
}

thread_local! {
    /// Attention scores of one (sequence, head), reused by each rayon worker.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Scaled dot-product attention per sequence and head: for the rows
/// `sequence_starts[s] .. sequence_starts[s + 1]` of `qkv` and each head `h`,
/// `context_h = softmax(Q_h · K_hᵀ / √head_size) · V_h`, written into the same rows and the
/// head's columns of the `[tokens, hidden]` `context`. Sequences never attend to each
/// other, which is what lets a batch go without padding.
pub(super) fn attention(
    qkv: &[f32],
    sequence_starts: &[usize],
    context: &mut [f32],
    shape: AttentionShape,
) {
    let AttentionShape {
        hidden,
        heads,
        head_size,
    } = shape;
    // Checked once per call; the SAFETY comments below rest on these three.
    assert!(
        heads * head_size <= hidden,
        "{heads} heads of {head_size} columns do not fit in {hidden}"
    );
    assert!(
        sequence_starts.windows(2).all(|pair| pair[0] <= pair[1]),
        "sequence starts must not decrease"
    );
    let total_tokens = sequence_starts.last().copied().unwrap_or(0);
    let qkv_row_stride = 3 * hidden;
    assert!(
        qkv.len() >= total_tokens * qkv_row_stride && context.len() >= total_tokens * hidden,
        "qkv or context is shorter than {total_tokens} tokens"
    );
    let scale = 1.0 / (head_size as f32).sqrt();
    let sequence_count = sequence_starts.len().saturating_sub(1);
    let context_pointer = SharedMutPointer(context.as_mut_ptr());

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
            let column = head * head_size;
            // Q_h, K_h and V_h cut to exactly the elements gemm reads: `length` rows of
            // `head_size` at a stride of `qkv_row_stride`.
            let span = (length - 1) * qkv_row_stride + head_size;
            let row_offset = start * qkv_row_stride + column;
            let query = &qkv[row_offset..][..span];
            let key = &qkv[row_offset + hidden..][..span];
            let value = &qkv[row_offset + 2 * hidden..][..span];
            SCORES.with(|scores| {
                let mut scores = scores.borrow_mut();
                if scores.len() < length * length {
                    scores.resize(length * length, 0.0);
                }
                let scores = &mut scores[..length * length];
                // scores = scale · Q_h · K_hᵀ
                // SAFETY: gemm reads query[i * qkv_row_stride + d] and
                // key[j * qkv_row_stride + d] for i, j < length and d < head_size: at most
                // (length - 1) * qkv_row_stride + head_size - 1 = span - 1, inside both
                // slices (cut to `span` above). It writes scores[i * length + j], below
                // length * length, the length `scores` was cut to; `scores` is a unique
                // borrow of this thread's buffer, so it overlaps neither operand.
                unsafe {
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
                // context_h = softmax(scores) · V_h
                let context_offset = start * hidden + column;
                // SAFETY: gemm reads all of `scores` (length × length) and
                // value[j * qkv_row_stride + d] for j < length, d < head_size (below `span`,
                // the slice's length). It writes context[context_offset + i * hidden + d]
                // for i < length, d < head_size; the largest is
                // (start + length - 1) * hidden + column + head_size - 1, and since
                // column + head_size <= heads * head_size <= hidden (asserted) and
                // start + length = sequence_starts[sequence_index + 1] <= total_tokens (the
                // starts do not decrease, asserted), it is below total_tokens * hidden <=
                // context.len() (asserted). Disjointness: this task writes only the rows of
                // its sequence (the sequences' row ranges do not overlap because the starts
                // do not decrease) and only its head's columns (the heads' column ranges do
                // not overlap and stay inside a row because heads * head_size <= hidden), so
                // no other task touches these elements; `context` is borrowed mutably for
                // the whole call, so no one else reads or writes it, and it does not
                // overlap `qkv` or `scores`.
                unsafe {
                    gemm::gemm(
                        length,
                        head_size,
                        length,
                        context_pointer.get().add(context_offset),
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

/// A raw pointer to an output that parallel tasks share, each writing its own block.
/// Private to this file: its only uses are [`panel_matmul_accumulate`] and [`attention`].
struct SharedMutPointer(*mut f32);

impl SharedMutPointer {
    /// Through a method, so closures capture the wrapper (which is `Sync`), not the field.
    fn get(&self) -> *mut f32 {
        self.0
    }
}

// SAFETY: moving or sharing the address between threads is harmless by itself; what needs
// care is writing through it, and each of the two uses (above) writes disjoint blocks from
// its tasks, as argued at its `unsafe` block.
unsafe impl Send for SharedMutPointer {}
// SAFETY: as for `Send`.
unsafe impl Sync for SharedMutPointer {}

/// In place, per row of `gamma.len()` values: `LayerNorm(x + bias)`.
pub(super) fn layer_norm_rows(
    matrix: &mut [f32],
    bias: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
) {
    let width = gamma.len();
    matrix
        .par_chunks_mut(width * ROWS_PER_TASK)
        .for_each(|block| {
            for row in block.chunks_exact_mut(width) {
                layer_norm_row(row, bias, gamma, beta, epsilon);
            }
        });
}

pub(super) fn gelu_in_place(values: &mut [f32]) {
    values.par_chunks_mut(ELEMENTS_PER_TASK).for_each(gelu);
}

fn softmax_rows(matrix: &mut [f32], width: usize) {
    for row in matrix.chunks_exact_mut(width) {
        softmax(row);
    }
}

// Element-wise kernels, compiled twice: for AVX2+FMA (picked at run time when the CPU has
// it) and for the baseline target. The bodies are plain loops the compiler vectorizes;
// reductions use 16 independent lanes because float addition may not be reordered.

const LANES: usize = 16;

macro_rules! dispatch {
    ($name:ident ( $($argument:ident : $type:ty),* ) $(-> $output:ty)?) => {
        fn $name($($argument: $type),*) $(-> $output)? {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the avx2 variant differs from the portable one only by
                    // `#[target_feature(enable = "avx2,fma")]`, and the run-time detection
                    // just above (in every build) found both features on this CPU.
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

mod portable {
    use super::{LANES, erf, exp, lane_sum};
    bodies!();
}

/// `exp` for f32 without branches so loops over it vectorize (Cephes `expf`: range
/// reduction by ln 2, degree-5 polynomial, exponent bits; about 1 ulp on [-87, 88]).
#[inline(always)]
fn exp(x: f32) -> f32 {
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
fn erf(x: f32) -> f32 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            worst = worst.max((erf(x) as f64 - wanted).abs());
        }
        assert!(worst < 1e-6, "largest erf error {worst}");
    }

    #[test]
    fn exp_kernel_matches_std_within_a_few_ulp() {
        for step in -8700..=0 {
            let x = step as f32 / 100.0;
            let wanted = (x as f64).exp();
            let relative = ((exp(x) as f64 - wanted) / wanted).abs();
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
        softmax(&mut row);
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
        gelu(&mut dispatched);
        portable::gelu(&mut portable);
        for (a, b) in dispatched.iter().zip(&portable) {
            assert!((a - b).abs() < 1e-6, "gelu {a} vs {b}");
        }
        let mut dispatched = values[..300].to_vec();
        let mut portable = values[..300].to_vec();
        softmax(&mut dispatched);
        portable::softmax(&mut portable);
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
        layer_norm_row(&mut row, Some(&bias), &gamma, &beta, 1e-12);
        let mean: f32 = row.iter().sum::<f32>() / width as f32;
        let variance: f32 = row
            .iter()
            .map(|value| (value - mean) * (value - mean))
            .sum::<f32>()
            / width as f32;
        assert!((mean - 0.25).abs() < 1e-5, "mean {mean}");
        assert!((variance - 4.0).abs() < 1e-3, "variance {variance}");
    }

    /// `output[rows, n] += input · weight`, one element at a time.
    fn reference_product(
        rows: usize,
        k: usize,
        n: usize,
        input: &[f32],
        weight: &[f32],
    ) -> Vec<f32> {
        let mut output = vec![0.5_f32; rows * n];
        for row in 0..rows {
            for column in 0..n {
                for inner in 0..k {
                    output[row * n + column] += input[row * k + inner] * weight[inner * n + column];
                }
            }
        }
        output
    }

    fn panels_of(weight: &[f32], k: usize, n: usize, panel_width: usize) -> Vec<f32> {
        let mut panels = Vec::with_capacity(weight.len());
        for panel_start in (0..n).step_by(panel_width) {
            let width = panel_width.min(n - panel_start);
            for inner in 0..k {
                panels.extend_from_slice(&weight[inner * n + panel_start..][..width]);
            }
        }
        panels
    }

    /// Both product layouts, with a narrower last panel, against the plain loop.
    #[test]
    fn both_products_match_the_reference() {
        let (rows, k, n, panel_width) = (5, 7, 11, 4);
        let input: Vec<f32> = (0..rows * k)
            .map(|index| (index as f32 * 0.3).sin())
            .collect();
        let weight: Vec<f32> = (0..k * n).map(|index| (index as f32 * 0.7).cos()).collect();
        let wanted = reference_product(rows, k, n, &input, &weight);

        let mut row_major = vec![0.5_f32; rows * n];
        matmul_accumulate(rows, k, n, &input, &weight, &mut row_major);
        let mut panelled = vec![0.5_f32; rows * n];
        let panels = panels_of(&weight, k, n, panel_width);
        panel_matmul_accumulate(rows, k, n, &input, &panels, panel_width, &mut panelled);

        for ((wanted, row_major), panelled) in wanted.iter().zip(&row_major).zip(&panelled) {
            assert!((wanted - row_major).abs() < 1e-5, "{wanted} vs {row_major}");
            assert!((wanted - panelled).abs() < 1e-5, "{wanted} vs {panelled}");
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_product_into_a_short_output_is_refused() {
        let (rows, k, n) = (3, 4, 5);
        let mut output = vec![0.0_f32; rows * n - 1];
        matmul_accumulate(rows, k, n, &[1.0; 12], &[1.0; 20], &mut output);
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn a_panel_product_into_a_short_output_is_refused() {
        let (rows, k, n) = (3, 4, 5);
        let mut output = vec![0.0_f32; rows * n - 1];
        panel_matmul_accumulate(rows, k, n, &[1.0; 12], &[1.0; 20], 2, &mut output);
    }

    /// Attention of one (sequence, head) computed element by element in f64.
    fn reference_attention(
        qkv: &[f32],
        start: usize,
        length: usize,
        head: usize,
        shape: AttentionShape,
    ) -> Vec<f64> {
        let AttentionShape {
            hidden, head_size, ..
        } = shape;
        let element = |token: usize, third: usize, dimension: usize| {
            qkv[(start + token) * 3 * hidden + third * hidden + head * head_size + dimension] as f64
        };
        let scale = 1.0 / (head_size as f64).sqrt();
        let mut context = vec![0.0_f64; length * head_size];
        for query in 0..length {
            let scores: Vec<f64> = (0..length)
                .map(|key| {
                    (0..head_size)
                        .map(|dimension| element(query, 0, dimension) * element(key, 1, dimension))
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let maximum = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|score| (score - maximum).exp()).collect();
            let total: f64 = weights.iter().sum();
            for dimension in 0..head_size {
                context[query * head_size + dimension] = (0..length)
                    .map(|key| weights[key] / total * element(key, 2, dimension))
                    .sum();
            }
        }
        context
    }

    /// Two sequences (3 and 5 tokens) and two heads: each block lands in its own rows
    /// and columns, and sequences do not see each other.
    #[test]
    fn attention_matches_the_reference_per_sequence_and_head() {
        let shape = AttentionShape {
            hidden: 8,
            heads: 2,
            head_size: 4,
        };
        let sequence_starts = [0, 3, 8];
        let tokens = 8;
        let qkv: Vec<f32> = (0..tokens * 3 * shape.hidden)
            .map(|index| (index as f32 * 0.37).sin())
            .collect();
        let mut context = vec![f32::NAN; tokens * shape.hidden];
        attention(&qkv, &sequence_starts, &mut context, shape);

        for (start, end) in [(0, 3), (3, 8)] {
            for head in 0..shape.heads {
                let wanted = reference_attention(&qkv, start, end - start, head, shape);
                for token in 0..end - start {
                    for dimension in 0..shape.head_size {
                        let got = context
                            [(start + token) * shape.hidden + head * shape.head_size + dimension];
                        let wanted = wanted[token * shape.head_size + dimension];
                        assert!(
                            (got as f64 - wanted).abs() < 1e-5,
                            "token {token} of {start}..{end}, head {head}: {got} vs {wanted}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "sequence starts must not decrease")]
    fn attention_refuses_overlapping_sequences() {
        let shape = AttentionShape {
            hidden: 8,
            heads: 2,
            head_size: 4,
        };
        let qkv = vec![0.0_f32; 8 * 3 * 8];
        let mut context = vec![0.0_f32; 8 * 8];
        attention(&qkv, &[0, 5, 3, 8], &mut context, shape);
    }

    #[test]
    #[should_panic(expected = "do not fit in")]
    fn attention_refuses_heads_wider_than_the_row() {
        let shape = AttentionShape {
            hidden: 8,
            heads: 3,
            head_size: 4,
        };
        let qkv = vec![0.0_f32; 4 * 3 * 8];
        let mut context = vec![0.0_f32; 4 * 8];
        attention(&qkv, &[0, 4], &mut context, shape);
    }
}
