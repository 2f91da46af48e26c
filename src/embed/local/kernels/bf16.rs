//! Matrix products in bfloat16 with f32 accumulation, on AVX512_BF16's `vdpbf16ps`: one
//! instruction multiplies 16 pairs of bf16 values and adds both products of each pair into
//! an f32 lane, twice the multiply-adds of an f32 FMA, over operands half the size.
//!
//! The weight is rounded to bf16 once, at load, and packed the way the instruction reads
//! it: column panels of [`PANEL_COLUMNS`], each `[k / 2][PANEL_COLUMNS]` of 32-bit words
//! that hold the weights of two consecutive inputs `(2p, 2p + 1)` for one column (even
//! input in the low half, as the instruction pairs them). The input rows are rounded the
//! same way per product, each word holding two consecutive inputs of one row, so one
//! broadcast word times one panel word is a row's two multiply-adds into 16 columns.
//!
//! Only what the instruction needs is unsafe here: [`product_tile`] is compiled for
//! AVX-512F + BF16 and reached only through [`Bf16Weight::accumulate`], which exists only
//! if [`supported`] found both features, and which checks every length the tile's pointer
//! arithmetic rests on before it forks.

use std::arch::x86_64::{
    __m512, __m512bh, __m512i, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_ps,
    _mm512_loadu_si512, _mm512_set1_epi32, _mm512_setzero_ps, _mm512_storeu_ps,
};
use std::cell::Cell;

use rayon::prelude::*;

use super::SharedMutPointer;

/// f32 lanes of one 512-bit register: output columns per accumulator.
const LANES: usize = 16;
/// Output columns per weight panel: four accumulators per row.
const PANEL_COLUMNS: usize = 4 * LANES;
/// Rows per register tile: 6 rows x 4 accumulators + 4 weight registers + 1 broadcast
/// fit in the 32 vector registers.
const TILE_ROWS: usize = 6;
/// Rows per parallel task (a multiple of [`TILE_ROWS`]): enough work to amortize a fork,
/// few enough that the rows and one weight panel stay in the core's L2.
const ROWS_PER_TASK: usize = 16 * TILE_ROWS;

/// Whether this CPU runs [`Bf16Weight`]'s products.
pub(super) fn supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// f32 to bf16, rounding to nearest even (the rounding `vcvtneps2bf16` does); NaN stays NaN.
fn to_bf16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

fn pair(even: f32, odd: f32) -> u32 {
    u32::from(to_bf16(even)) | (u32::from(to_bf16(odd)) << 16)
}

/// A `[k, n]` linear weight rounded to bf16 and packed in panels (see the module docs).
pub(in crate::embed::local) struct Bf16Weight {
    k: usize,
    n: usize,
    /// `k.div_ceil(2)`: an odd last input is paired with a zero.
    pairs: usize,
    panels: Vec<u32>,
}

impl Bf16Weight {
    /// Packs a row-major `[k, n]` weight, or `None` when this CPU cannot multiply it in
    /// bf16 or `n` is not a whole number of registers.
    pub(in crate::embed::local) fn pack(row_major: &[f32], k: usize, n: usize) -> Option<Self> {
        if !supported() || n == 0 || !n.is_multiple_of(LANES) || row_major.len() != k * n {
            return None;
        }
        let pairs = k.div_ceil(2);
        let panel_count = n.div_ceil(PANEL_COLUMNS);
        let mut panels = vec![0_u32; panel_count * pairs * PANEL_COLUMNS];
        let weight = |input: usize, column: usize| {
            if input < k {
                row_major[input * n + column]
            } else {
                0.0
            }
        };
        for (panel, words) in panels.chunks_exact_mut(pairs * PANEL_COLUMNS).enumerate() {
            for (pair_index, row) in words.chunks_exact_mut(PANEL_COLUMNS).enumerate() {
                for (offset, word) in row.iter_mut().enumerate() {
                    let column = panel * PANEL_COLUMNS + offset;
                    if column < n {
                        *word = pair(
                            weight(2 * pair_index, column),
                            weight(2 * pair_index + 1, column),
                        );
                    }
                }
            }
        }
        Some(Self {
            k,
            n,
            pairs,
            panels,
        })
    }

    /// `output[rows, n] += input[rows, k] · weight`, all row-major, the input rounded to
    /// bf16 and every sum kept in f32.
    pub(in crate::embed::local) fn accumulate(
        &self,
        rows: usize,
        input: &[f32],
        output: &mut [f32],
    ) {
        let (k, n, pairs) = (self.k, self.n, self.pairs);
        if rows == 0 {
            return;
        }
        let input = &input[..rows * k];
        let output = &mut output[..rows * n];
        // The buffer is taken out of the thread-local for the call, not borrowed: while
        // this thread waits in the parallel loops below, rayon may run another product on
        // it (work stealing), which then finds an empty buffer and brings its own.
        let mut buffer = PACKED_INPUT.with(|cell| cell.take());
        if buffer.len() < rows * pairs {
            buffer.resize(rows * pairs, 0);
        }
        let packed = &mut buffer[..rows * pairs];
        packed
            .par_chunks_mut(pairs * ROWS_PER_TASK)
            .zip(input.par_chunks(k * ROWS_PER_TASK))
            .for_each(|(words, values)| {
                for (row_words, row_values) in
                    words.chunks_exact_mut(pairs).zip(values.chunks_exact(k))
                {
                    let mut values = row_values.chunks_exact(2);
                    for (word, two) in row_words.iter_mut().zip(&mut values) {
                        *word = pair(two[0], two[1]);
                    }
                    if let [last] = values.remainder() {
                        row_words[pairs - 1] = pair(*last, 0.0);
                    }
                }
            });
        self.multiply(rows, packed, output);
        PACKED_INPUT.with(|cell| cell.replace(buffer));
    }

    fn multiply(&self, rows: usize, packed: &[u32], output: &mut [f32]) {
        let (n, pairs) = (self.n, self.pairs);
        // Checked once per call; the SAFETY argument below rests on these.
        assert!(
            packed.len() >= rows * pairs,
            "packed input shorter than {rows} rows"
        );
        assert!(output.len() >= rows * n, "output shorter than {rows} rows");
        let panel_count = n.div_ceil(PANEL_COLUMNS);
        assert!(
            self.panels.len() >= panel_count * pairs * PANEL_COLUMNS,
            "weight panels shorter than their shape"
        );
        let row_chunks = rows.div_ceil(ROWS_PER_TASK);
        let output_pointer = SharedMutPointer(output.as_mut_ptr());
        (0..row_chunks * panel_count)
            .into_par_iter()
            .for_each(|task| {
                let (row_chunk, panel) = (task / panel_count, task % panel_count);
                let first_column = panel * PANEL_COLUMNS;
                let registers = (n - first_column).min(PANEL_COLUMNS) / LANES;
                let weights =
                    &self.panels[panel * pairs * PANEL_COLUMNS..][..pairs * PANEL_COLUMNS];
                let chunk_end = ((row_chunk + 1) * ROWS_PER_TASK).min(rows);
                let mut row = row_chunk * ROWS_PER_TASK;
                while row < chunk_end {
                    let tile_rows = (chunk_end - row).min(TILE_ROWS);
                    let inputs = &packed[row * pairs..][..tile_rows * pairs];
                    // SAFETY: `supported()` was true when this weight was packed (`pack`
                    // returns None otherwise), so the CPU has AVX-512F and BF16. The tile
                    // checks its slices itself. It reads and writes
                    // output[(row + r) * n + first_column + c] for r < tile_rows and
                    // c < registers * LANES <= n - first_column: below rows * n (asserted
                    // above). Tasks own disjoint (row range, column range) blocks: row
                    // chunks and panels do not overlap, and `output` is borrowed mutably for
                    // the whole call and overlaps neither operand.
                    unsafe {
                        let destination = output_pointer.get().add(row * n + first_column);
                        match tile_rows {
                            6 => {
                                product_tile::<6>(inputs, weights, pairs, destination, n, registers)
                            }
                            5 => {
                                product_tile::<5>(inputs, weights, pairs, destination, n, registers)
                            }
                            4 => {
                                product_tile::<4>(inputs, weights, pairs, destination, n, registers)
                            }
                            3 => {
                                product_tile::<3>(inputs, weights, pairs, destination, n, registers)
                            }
                            2 => {
                                product_tile::<2>(inputs, weights, pairs, destination, n, registers)
                            }
                            _ => {
                                product_tile::<1>(inputs, weights, pairs, destination, n, registers)
                            }
                        }
                    }
                    row += tile_rows;
                }
            });
    }
}

thread_local! {
    /// The bf16 input rows of the current product, reused by each calling thread.
    static PACKED_INPUT: Cell<Vec<u32>> = const { Cell::new(Vec::new()) };
}

/// `ROWS` rows times one panel: `destination[r * row_stride + c] += Σ_p inputs[r][p] ·
/// weights[p][c]` for the first `registers * 16` columns. The 24 sums stay in registers
/// for the whole loop over `pairs` (raw reads, so no bounds check splits the loop).
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16, and `destination` is valid for reads and writes
/// of `(ROWS - 1) * row_stride + registers * LANES` floats. The slice lengths are checked
/// here.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn product_tile<const ROWS: usize>(
    inputs: &[u32],
    weights: &[u32],
    pairs: usize,
    destination: *mut f32,
    row_stride: usize,
    registers: usize,
) {
    assert!(
        inputs.len() >= ROWS * pairs && weights.len() >= pairs * PANEL_COLUMNS && registers <= 4,
        "a product tile's operands are shorter than its shape"
    );
    let mut sums: [[__m512; 4]; ROWS] = [[_mm512_setzero_ps(); 4]; ROWS];
    let input = inputs.as_ptr();
    let mut panel_row = weights.as_ptr().cast::<__m512i>();
    for pair_index in 0..pairs {
        // SAFETY: panel row `pair_index` is the 64 words (four registers) at
        // pair_index * PANEL_COLUMNS, inside `weights` (asserted above).
        let columns: [__m512bh; 4] = unsafe {
            [
                as_bf16(_mm512_loadu_si512(panel_row)),
                as_bf16(_mm512_loadu_si512(panel_row.add(1))),
                as_bf16(_mm512_loadu_si512(panel_row.add(2))),
                as_bf16(_mm512_loadu_si512(panel_row.add(3))),
            ]
        };
        // SAFETY: one past the row just read, at most the end of `weights`.
        panel_row = unsafe { panel_row.add(4) };
        for (row, row_sums) in sums.iter_mut().enumerate() {
            // SAFETY: row < ROWS and pair_index < pairs, so the index is below
            // ROWS * pairs <= inputs.len() (asserted above).
            let word = unsafe { *input.add(row * pairs + pair_index) };
            let broadcast = as_bf16(_mm512_set1_epi32(word as i32));
            for (sum, &column) in row_sums.iter_mut().zip(&columns) {
                *sum = _mm512_dpbf16_ps(*sum, broadcast, column);
            }
        }
    }
    for (row, row_sums) in sums.iter().enumerate() {
        for (register, &sum) in row_sums.iter().enumerate().take(registers) {
            // SAFETY: row < ROWS and register < registers, so the 16 floats start at
            // row * row_stride + register * 16 and end within the range the caller
            // guarantees.
            unsafe {
                let place = destination.add(row * row_stride + register * LANES);
                _mm512_storeu_ps(place, _mm512_add_ps(_mm512_loadu_ps(place), sum));
            }
        }
    }
}

/// The same 512 bits seen as 32 bf16 values.
#[inline(always)]
fn as_bf16(bits: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors with no invalid bit patterns.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(bits) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bf16(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    #[test]
    fn rounding_to_bf16_is_to_nearest_even() {
        assert_eq!(from_bf16(to_bf16(1.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        let relative = (from_bf16(to_bf16(0.123_456)) - 0.123_456).abs() / 0.123_456;
        assert!(relative <= 2f32.powi(-9), "relative error {relative}");
    }

    /// In f64 from the bf16-rounded operands: what the kernel must reproduce up to the
    /// order of its f32 additions.
    fn reference(rows: usize, k: usize, n: usize, input: &[f32], weight: &[f32]) -> Vec<f64> {
        let rounded = |value: f32| f64::from(from_bf16(to_bf16(value)));
        let mut output = vec![0.0_f64; rows * n];
        for row in 0..rows {
            for column in 0..n {
                output[row * n + column] = (0..k)
                    .map(|i| rounded(input[row * k + i]) * rounded(weight[i * n + column]))
                    .sum::<f64>()
                    + 0.5;
            }
        }
        output
    }

    fn pseudo_random(count: usize, seed: u32) -> Vec<f32> {
        let mut state = seed;
        (0..count)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn products_match_the_rounded_reference_for_every_tile_and_panel_shape() {
        if !supported() {
            assert!(Bf16Weight::pack(&[0.0; 32], 2, 16).is_none());
            return;
        }
        // rows: one tile, partial tiles, several tasks; k odd and even; n ending in a
        // partial panel.
        for (rows, k, n) in [(1, 4, 16), (7, 9, 80), (20, 384, 384), (200, 33, 144)] {
            let input = pseudo_random(rows * k, 7);
            let weight = pseudo_random(k * n, 11);
            let packed = Bf16Weight::pack(&weight, k, n).expect("the CPU has BF16");
            let mut output = vec![0.5_f32; rows * n];
            packed.accumulate(rows, &input, &mut output);
            let wanted = reference(rows, k, n, &input, &weight);
            for (index, (&got, &wanted)) in output.iter().zip(&wanted).enumerate() {
                assert!(
                    (f64::from(got) - wanted).abs() <= 1e-4 * (1.0 + wanted.abs()),
                    "({rows}, {k}, {n}) element {index}: {got} vs {wanted}"
                );
            }
        }
    }

    /// Products running at once on the rayon pool, which steals one product's tasks
    /// onto a thread waiting inside another: each must still get its own input buffer.
    #[test]
    fn concurrent_products_on_one_pool_each_get_their_own_result() {
        if !supported() {
            return;
        }
        let (rows, k, n) = (1200, 64, 128);
        let weight = pseudo_random(k * n, 3);
        let packed = Bf16Weight::pack(&weight, k, n).expect("the CPU has BF16");
        let inputs: Vec<Vec<f32>> = (0..16).map(|seed| pseudo_random(rows * k, seed)).collect();
        let alone: Vec<Vec<f32>> = inputs
            .iter()
            .map(|input| {
                let mut output = vec![0.0_f32; rows * n];
                packed.accumulate(rows, input, &mut output);
                output
            })
            .collect();
        // As the service calls it: forward passes started from several threads outside
        // the pool at once, so a pool thread waiting inside one picks up another.
        let together: Vec<Vec<f32>> = std::thread::scope(|scope| {
            let calls: Vec<_> = inputs
                .iter()
                .map(|input| {
                    let packed = &packed;
                    scope.spawn(move || {
                        rayon::scope(|_| {
                            let mut output = vec![0.0_f32; rows * n];
                            packed.accumulate(rows, input, &mut output);
                            output
                        })
                    })
                })
                .collect();
            calls
                .into_iter()
                .map(|call| call.join().expect("a product thread"))
                .collect()
        });
        assert_eq!(together, alone);
    }

    #[test]
    fn widths_that_are_not_whole_registers_are_left_to_f32() {
        assert!(Bf16Weight::pack(&[0.0; 40], 4, 10).is_none());
        assert!(
            Bf16Weight::pack(&[0.0; 10], 4, 16).is_none(),
            "wrong length"
        );
    }
}
