//! Matrix products of the forward pass.
//!
//! Quantized weights (Q4_1, Q8_0) are multiplied the way llama.cpp does it:
//! each row of activations is first rounded to 8-bit blocks (one f16 scale
//! per 32 values), then every 32-value block contributes exact integer sums
//! over eight lanes of four products, which are scaled and accumulated in f32
//! block after block and reduced at the end. Following that arithmetic to the
//! bit matters: this small model is sensitive enough that exact f32
//! activations move its log-probs by about 0.1 from llama.cpp's.
//!
//! Weights and activations are stored in groups of four rows, block by block,
//! and multiplied in 4 × 4 tiles, so a weight block is unpacked once for
//! several tokens. Every output still sees exactly the same operations in the
//! same order, whatever the tile, the kernel (AVX-512 VNNI, AVX2 or portable)
//! or the batch, so a sequence's numbers never depend on how it was served.
//!
//! Other weight types are dequantized to f32 at load and use an f32 GEMM.

use std::cell::OnceCell;

use gemm::Parallelism;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod portable;

/// Values per quantization block (Q4_1, Q8_0 and the activations' Q8 form).
pub const BLOCK: usize = 32;

/// Weight rows, and activation rows, are stored in groups of this many,
/// block by block, so a kernel reads a group's block with one load.
pub const GROUP: usize = 4;

/// Weight storage, in the layout the kernels read. Quantized rows are padded
/// to a whole group with zero rows; (row r of group g, block b) sits at slot
/// `(g · nb + b) · GROUP + r`.
pub enum Weights {
    /// value = d · q + m, q a 4-bit nibble: byte j of a row's block holds
    /// elements j (low nibble) and j + 16 (high nibble).
    Q4_1 {
        d: Vec<f32>,
        m: Vec<f32>,
        qs: Vec<u8>,
    },
    /// value = d · q, q a signed byte.
    Q8_0 { d: Vec<f32>, qs: Vec<i8> },
    /// Row-major f32 (any other GGUF type, dequantized at load).
    Dense(Vec<f32>),
}

fn f16_at(bytes: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

/// Slot of (row, block) in the grouped layout.
#[inline]
fn slot(row: usize, block: usize, nb: usize) -> usize {
    ((row / GROUP) * nb + block) * GROUP + row % GROUP
}

impl Weights {
    /// Reads the GGUF Q4_1 blocks (f16 d, f16 m, 16 bytes of nibbles) of an
    /// n × k matrix.
    pub fn from_q4_1(bytes: &[u8], n: usize, k: usize) -> Self {
        let nb = k / BLOCK;
        let slots = n.div_ceil(GROUP) * GROUP * nb;
        let (mut d, mut m, mut qs) = (vec![0f32; slots], vec![0f32; slots], vec![0u8; slots * 16]);
        for row in 0..n {
            for b in 0..nb {
                let src = &bytes[(row * nb + b) * 20..(row * nb + b + 1) * 20];
                let at = slot(row, b, nb);
                d[at] = f16_at(src, 0);
                m[at] = f16_at(src, 2);
                qs[at * 16..(at + 1) * 16].copy_from_slice(&src[4..20]);
            }
        }
        Weights::Q4_1 { d, m, qs }
    }

    /// Reads the GGUF Q8_0 blocks (f16 d, 32 signed bytes) of an n × k matrix.
    pub fn from_q8_0(bytes: &[u8], n: usize, k: usize) -> Self {
        let nb = k / BLOCK;
        let slots = n.div_ceil(GROUP) * GROUP * nb;
        let (mut d, mut qs) = (vec![0f32; slots], vec![0i8; slots * BLOCK]);
        for row in 0..n {
            for b in 0..nb {
                let src = &bytes[(row * nb + b) * 34..(row * nb + b + 1) * 34];
                let at = slot(row, b, nb);
                d[at] = f16_at(src, 0);
                for (q, &v) in qs[at * BLOCK..(at + 1) * BLOCK].iter_mut().zip(&src[2..34]) {
                    *q = v as i8;
                }
            }
        }
        Weights::Q8_0 { d, qs }
    }
}

/// How many block slots ahead the kernels prefetch the weight stream (16
/// blocks of a row group): a group's rows run on into the next group's, so
/// this reaches past the current one.
pub(crate) const PREFETCH_AHEAD: usize = 16 * GROUP;

/// Asks the CPU to bring the cache line holding `p` close, ahead of a read
/// the hardware prefetcher would see too late (weights streamed block by
/// block, cached keys and values read a head's slice at a time). Any address
/// will do: a prefetch has no effect on the program and never faults.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 (SSE, part of x86-64's baseline) reads nothing
    // architecturally and cannot fault, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Activations rounded to 8-bit blocks as llama.cpp's `quantize_row_q8_1`
/// does: d = max|x| / 127 kept as f16, q = round-half-even(x · 127 / max|x|),
/// and s = f16(d · Σq) for Q4_1's offset term. Rows are grouped like the
/// weights (padded with zero rows).
pub struct QuantizedRows {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub qs: Vec<i8>,
}

/// Below this many values, activations are quantized on the calling thread.
const PARALLEL_QUANTIZE_VALUES: usize = 1 << 15;

pub fn quantize_rows(x: &[f32], k: usize) -> QuantizedRows {
    let t = x.len() / k;
    let nb = k / BLOCK;
    let per_group = nb * GROUP;
    let slots = t.div_ceil(GROUP) * per_group;
    let mut out = QuantizedRows {
        d: vec![0f32; slots],
        s: vec![0f32; slots],
        qs: vec![0i8; slots * BLOCK],
    };
    let quantize_group = |h: usize, ((d, s), qs): ((&mut [f32], &mut [f32]), &mut [i8])| {
        let rows = (t - h * GROUP).min(GROUP);
        for c in 0..rows {
            let xr = &x[(h * GROUP + c) * k..(h * GROUP + c + 1) * k];
            for (b, block) in xr.chunks_exact(BLOCK).enumerate() {
                let at = b * GROUP + c;
                (d[at], s[at]) = quantize_block(block, &mut qs[at * BLOCK..(at + 1) * BLOCK]);
            }
        }
    };
    // Groups of rows are independent: one task each, when there are enough
    // values to pay for waking the other threads (a decode step's few rows
    // take microseconds; handing them out took longer than the work).
    if x.len() < PARALLEL_QUANTIZE_VALUES {
        out.d
            .chunks_mut(per_group)
            .zip(out.s.chunks_mut(per_group))
            .zip(out.qs.chunks_mut(per_group * BLOCK))
            .enumerate()
            .for_each(|(h, parts)| quantize_group(h, parts));
    } else {
        out.d
            .par_chunks_mut(per_group)
            .zip(out.s.par_chunks_mut(per_group))
            .zip(out.qs.par_chunks_mut(per_group * BLOCK))
            .enumerate()
            .for_each(|(h, parts)| quantize_group(h, parts));
    }
    out
}

/// One block: the 8-bit values into `q`, and (d, s) as f16-rounded f32.
///
/// Written so that the compiler vectorizes it (a decode step quantizes about
/// a million values): the maximum of |x| over eight independent lanes (max is
/// exact, so the order does not matter), and the rounding as an add of
/// 1.5 · 2²³, which rounds half to even for |v| < 2²², exactly as
/// `round_ties_even` does (|x · 127 / max| ≤ 127 here; a NaN or infinite
/// activation has no meaningful rounding on either path).
#[inline]
fn quantize_block(block: &[f32], q: &mut [i8]) -> (f32, f32) {
    let block: &[f32; BLOCK] = block.try_into().expect("a whole block");
    let q: &mut [i8; BLOCK] = q.try_into().expect("a whole block");
    let mut lanes = [0f32; 8];
    for chunk in block.chunks_exact(8) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            // Not f32::max: its NaN rule keeps the loop scalar. A NaN
            // activation is already a broken model; it rounds to 0 either way.
            let a = v.abs();
            *m = if a > *m { a } else { *m };
        }
    }
    let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let d = amax / 127.0;
    let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    // v + 1.5 · 2²³ has unit spacing, so the addition rounds v to an
    // integer n (half to even), held in the sum's low mantissa bits: its bit
    // pattern is MAGIC's plus n. Reading n from the bits avoids a float to
    // integer conversion, whose saturation checks would not vectorize.
    const MAGIC: f32 = 12_582_912.0;
    let mut rounded = [0i32; BLOCK];
    for (r, v) in rounded.iter_mut().zip(block) {
        *r = (v * inv + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
    }
    let mut sum = 0i32;
    for (q, r) in q.iter_mut().zip(&rounded) {
        sum += r;
        *q = *r as i8;
    }
    (
        half::f16::from_f32(d).to_f32(),
        half::f16::from_f32(d * sum as f32).to_f32(),
    )
}

/// The input of one or more products: f32 rows, and their 8-bit form made
/// on first use and shared by every matrix that reads the same input.
pub struct Activations<'a> {
    pub x: &'a [f32],
    pub t: usize,
    quantized: OnceCell<QuantizedRows>,
}

impl<'a> Activations<'a> {
    pub fn new(x: &'a [f32], t: usize) -> Self {
        Activations {
            x,
            t,
            quantized: OnceCell::new(),
        }
    }

    fn quantized(&self, k: usize) -> &QuantizedRows {
        self.quantized.get_or_init(|| quantize_rows(self.x, k))
    }
}

/// Which implementation of the tile products runs on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
}

impl Kernel {
    /// The kernel's name in reports: "avx512vnni", "avx2" or "portable".
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => "avx512vnni",
        }
    }

    /// The kernel every product of the engine runs (`Linear::forward`): the
    /// fastest one the CPU supports, checked once, then cached.
    pub fn detect() -> Kernel {
        use std::sync::OnceLock;
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            // QSTAR_KERNEL=avx2 (or portable) runs a lesser kernel on a
            // CPU that has a better one, so one machine can measure both;
            // a kernel the CPU lacks is never chosen.
            if let Some(wanted) = std::env::var("QSTAR_KERNEL").ok().filter(|v| !v.is_empty()) {
                let fallback = Self::best_supported();
                return Self::by_name(&wanted)
                    .filter(|k| k.runs_under(fallback))
                    .unwrap_or(fallback);
            }
            Self::best_supported()
        })
    }

    /// The kernel called `name` ("avx512vnni", "avx2", "portable").
    pub fn by_name(name: &str) -> Option<Kernel> {
        [
            Kernel::Portable,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }

    /// Whether a CPU whose best kernel is `best` has this kernel's
    /// instructions (each kernel's set contains the ones below it).
    fn runs_under(self, best: Kernel) -> bool {
        let rank = |k: Kernel| match k {
            Kernel::Portable => 0,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => 1,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => 2,
        };
        rank(self) <= rank(best)
    }

    /// The fastest kernel this CPU's features allow.
    fn best_supported() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("fma") {
                return Kernel::Avx512Vnni;
            }
            if has!("avx2") && has!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }

    /// Whether this CPU can run the kernel.
    pub fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni => Kernel::best_supported() == Kernel::Avx512Vnni,
        }
    }

    /// Every kernel this CPU can run (for tests that compare them).
    pub fn available() -> Vec<Kernel> {
        let all = [
            Kernel::Portable,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Vnni,
        ];
        all.into_iter().filter(|k| k.supported()).collect()
    }
}

/// A weight matrix of `n` output rows by `k` inputs: y = x · Wᵀ.
pub struct Linear {
    pub n: usize,
    pub k: usize,
    weights: Weights,
}

impl Linear {
    pub fn new(n: usize, k: usize, weights: Weights) -> Self {
        Linear { n, k, weights }
    }

    /// Row `i` as f32 (an embedding lookup when W is the embedding).
    pub fn row(&self, i: usize, out: &mut Vec<f32>) {
        let (k, nb) = (self.k, self.k / BLOCK);
        match &self.weights {
            Weights::Dense(w) => out.extend_from_slice(&w[i * k..(i + 1) * k]),
            Weights::Q8_0 { d, qs } => {
                for b in 0..nb {
                    let at = slot(i, b, nb);
                    let q = &qs[at * BLOCK..(at + 1) * BLOCK];
                    out.extend(q.iter().map(|&v| v as f32 * d[at]));
                }
            }
            Weights::Q4_1 { d, m, qs } => {
                for b in 0..nb {
                    let at = slot(i, b, nb);
                    let q = &qs[at * 16..(at + 1) * 16];
                    out.extend(q.iter().map(|&v| (v & 0x0f) as f32 * d[at] + m[at]));
                    out.extend(q.iter().map(|&v| (v >> 4) as f32 * d[at] + m[at]));
                }
            }
        }
    }

    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Q4_1 { d, m, qs } => (d.len() + m.len()) * 4 + qs.len(),
            Weights::Q8_0 { d, qs } => d.len() * 4 + qs.len(),
            Weights::Dense(w) => w.len() * 4,
        }
    }

    /// y (t × n) = x (t × k) · Wᵀ, or y += … when `accumulate`.
    pub fn forward(&self, x: &Activations<'_>, y: &mut [f32], accumulate: bool) {
        self.forward_with(Kernel::detect(), x, y, accumulate)
    }

    pub fn forward_with(
        &self,
        kernel: Kernel,
        x: &Activations<'_>,
        y: &mut [f32],
        accumulate: bool,
    ) {
        // A SIMD kernel on a CPU without its instructions would not run.
        assert!(kernel.supported(), "{kernel:?} is not supported here");
        let t = x.t;
        assert_eq!(x.x.len(), t * self.k);
        assert_eq!(y.len(), t * self.n);
        if let Weights::Dense(w) = &self.weights {
            return dense_forward(w, self.n, self.k, x.x, t, y, accumulate);
        }
        let q = x.quantized(self.k);
        // Threads split the weight row groups; each writes its own columns.
        let groups = self.n.div_ceil(GROUP);
        let threads = rayon::current_num_threads();
        let per_task = groups.div_ceil(threads * 8).clamp(1, 32);
        let tasks = groups.div_ceil(per_task);
        let out = OutputColumns(y.as_mut_ptr(), y.len());
        (0..tasks).into_par_iter().for_each(|task| {
            let first = task * per_task;
            for g in first..(first + per_task).min(groups) {
                self.group_product(kernel, q, t, g, &out, accumulate);
            }
        });
    }

    /// Weight row group `g` against all `t` input rows, written (or added)
    /// into those columns of y.
    fn group_product(
        &self,
        kernel: Kernel,
        q: &QuantizedRows,
        t: usize,
        g: usize,
        y: &OutputColumns,
        accumulate: bool,
    ) {
        let nb = self.k / BLOCK;
        let n = self.n;
        let rows = GROUP.min(n - g * GROUP);
        for h in 0..t.div_ceil(GROUP) {
            let cols = GROUP.min(t - h * GROUP);
            let mut tile = [[0f32; GROUP]; GROUP];
            tile_product(kernel, &self.weights, g, q, h, cols, nb, &mut tile);
            for i in 0..rows {
                for j in 0..cols {
                    y.put((h * GROUP + j) * n + g * GROUP + i, tile[i][j], accumulate);
                }
            }
        }
    }
}

/// y shared by the threads of one product; each writes only the columns of
/// its own weight rows, so no element is touched by two threads.
struct OutputColumns(*mut f32, usize);

// SAFETY: see the type's comment: writes from different threads go to
// disjoint elements, and the product returns only after every task ends.
unsafe impl Sync for OutputColumns {}

impl OutputColumns {
    #[inline]
    fn put(&self, at: usize, value: f32, accumulate: bool) {
        assert!(at < self.1);
        // SAFETY: in bounds (checked above) and written by one thread only.
        unsafe {
            let slot = self.0.add(at);
            *slot = if accumulate { *slot + value } else { value };
        }
    }
}

fn dense_forward(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    t: usize,
    y: &mut [f32],
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 && t * n * k > 1 << 16 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: x is t×k row-major, Wᵀ is read as k×n from the n×k row-major
    // W, and y is t×n row-major; the callers' lengths match these shapes.
    unsafe {
        gemm::gemm(
            t,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// out[i][j] = row i of weight group g · row j of activation group h, for
/// the first `cols` rows of the activation group.
#[allow(clippy::too_many_arguments)]
fn tile_product(
    kernel: Kernel,
    w: &Weights,
    g: usize,
    q: &QuantizedRows,
    h: usize,
    cols: usize,
    nb: usize,
    out: &mut [[f32; GROUP]; GROUP],
) {
    let span = |group: usize| group * nb * GROUP..(group + 1) * nb * GROUP;
    let (ws, xs) = (span(g), span(h));
    let bytes = |r: &std::ops::Range<usize>, per: usize| r.start * per..r.end * per;
    // The same call into whichever SIMD module the CPU supports. SAFETY (for
    // both uses): `Kernel::detect` checked the module's CPU features, and
    // every slice holds the whole group (nb blocks × 4 rows) the kernels read.
    #[cfg(target_arch = "x86_64")]
    macro_rules! simd_tile {
        ($module:ident) => {
            unsafe {
                match w {
                    Weights::Q4_1 { d, m, qs } => $module::q4_1_tile(
                        &d[ws.clone()],
                        &m[ws.clone()],
                        &qs[bytes(&ws, 16)],
                        &q.d[xs.clone()],
                        &q.s[xs.clone()],
                        &q.qs[bytes(&xs, BLOCK)],
                        cols,
                        nb,
                        out,
                    ),
                    Weights::Q8_0 { d, qs } => $module::q8_0_tile(
                        &d[ws.clone()],
                        &qs[bytes(&ws, BLOCK)],
                        &q.d[xs.clone()],
                        &q.qs[bytes(&xs, BLOCK)],
                        cols,
                        nb,
                        out,
                    ),
                    Weights::Dense(_) => {}
                }
            }
        };
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => simd_tile!(avx512),
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => simd_tile!(avx2),
        Kernel::Portable => portable::tile(w, g, q, h, cols, nb, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_bytes(rows: usize, k: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut seed = 7u32;
        for b in 0..rows * k / BLOCK {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // d and m vary per block: 2^-(b%5) and -(b%3)/4 in f16.
            let d = half::f16::from_f32(1.0 / (1 << (b % 5)) as f32).to_le_bytes();
            let m = half::f16::from_f32(-((b % 3) as f32) / 4.0).to_le_bytes();
            out.extend_from_slice(&d);
            out.extend_from_slice(&m);
            for i in 0..16 {
                out.push(((seed >> (i % 24)) & 0xff) as u8);
            }
        }
        out
    }

    fn q8_0_bytes(rows: usize, k: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for b in 0..rows * k / BLOCK {
            out.extend_from_slice(&half::f16::from_f32(0.1 + (b % 7) as f32 / 50.0).to_le_bytes());
            for i in 0..32 {
                out.push(((b * 31 + i * 17) % 256) as u8);
            }
        }
        out
    }

    fn check(lin: &Linear, n: usize, k: usize) {
        let rows: Vec<Vec<f32>> = (0..n)
            .map(|r| {
                let mut v = Vec::new();
                lin.row(r, &mut v);
                v
            })
            .collect();
        for t in [1, 2, 3, 4, 5, 7, 8, 9, 16] {
            let x: Vec<f32> = (0..t * k)
                .map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0)
                .collect();
            let q = quantize_rows(&x, k);
            let mut results = Vec::new();
            for kernel in Kernel::available() {
                let acts = Activations::new(&x, t);
                let mut y = vec![0f32; t * n];
                lin.forward_with(kernel, &acts, &mut y, false);
                for r in 0..t {
                    for c in 0..n {
                        // Close to exact f32 maths on the rounded activations…
                        let want: f32 = (0..k)
                            .map(|i| {
                                let at = slot(r, i / BLOCK, k / BLOCK);
                                q.qs[at * BLOCK + i % BLOCK] as f32 * q.d[at] * rows[c][i]
                            })
                            .sum();
                        let got = y[r * n + c];
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "{kernel:?} t={t}: {got} vs {want}"
                        );
                    }
                }
                let before = y.clone();
                lin.forward_with(kernel, &acts, &mut y, true);
                assert!(y.iter().zip(&before).all(|(a, b)| *a == b + b));
                results.push((kernel, before));
            }
            // …and bit for bit the same whatever the kernel.
            for (kernel, y) in &results[1..] {
                assert_eq!(
                    y, &results[0].1,
                    "{kernel:?} differs from the portable kernel, t={t}"
                );
            }
        }
    }

    #[test]
    fn q4_1_products_agree_across_kernels() {
        let (n, k) = (10, 96);
        check(
            &Linear::new(n, k, Weights::from_q4_1(&q4_1_bytes(n, k), n, k)),
            n,
            k,
        );
    }

    #[test]
    fn q8_0_products_agree_across_kernels() {
        let (n, k) = (9, 96);
        check(
            &Linear::new(n, k, Weights::from_q8_0(&q8_0_bytes(n, k), n, k)),
            n,
            k,
        );
    }

    /// The block rounding written the plain way: f32::max, round_ties_even
    /// and a checked conversion.
    fn reference_block(block: &[f32]) -> (Vec<i8>, f32, f32) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let inv = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let q: Vec<i32> = block
            .iter()
            .map(|v| (v * inv).round_ties_even() as i32)
            .collect();
        let sum: i32 = q.iter().sum();
        (
            q.iter().map(|&v| i8::try_from(v).unwrap()).collect(),
            half::f16::from_f32(d).to_f32(),
            half::f16::from_f32(d * sum as f32).to_f32(),
        )
    }

    #[test]
    fn vectorized_rounding_equals_the_plain_rounding() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut blocks: Vec<Vec<f32>> = Vec::new();
        // Exact halves: with max |x| = 127, x · 127 / 127 = x, so every
        // x.5 is a tie, both signs, and -0.0 and 0.0.
        blocks.push(
            (0..32)
                .map(|i| match i {
                    0 => 127.0,
                    1 => -0.0,
                    _ => (i as f32 - 16.0) + 0.5,
                })
                .collect(),
        );
        blocks.push(vec![0.0; 32]);
        blocks.push((0..32).map(|i| if i == 5 { -3.0 } else { 1.5 }).collect());
        for _ in 0..20_000 {
            let scale = f32::from_bits(0x3000_0000 + (next() % 0x1800_0000) as u32);
            blocks.push(
                (0..32)
                    .map(|_| ((next() % 20001) as f32 - 10000.0) / 10000.0 * scale)
                    .collect(),
            );
        }
        for block in &blocks {
            let (want_q, want_d, want_s) = reference_block(block);
            let mut q = [0i8; BLOCK];
            let (d, s) = quantize_block(block, &mut q);
            assert_eq!(q.as_slice(), want_q.as_slice(), "{block:?}");
            assert_eq!(
                (d.to_bits(), s.to_bits()),
                (want_d.to_bits(), want_s.to_bits())
            );
        }
    }

    #[test]
    fn quantizing_serially_or_in_parallel_gives_the_same_rows() {
        let k = 64;
        // Above the parallel threshold, then cut to below it: same rows.
        let t = PARALLEL_QUANTIZE_VALUES / k + 3;
        let x: Vec<f32> = (0..t * k)
            .map(|i| ((i * 7919 % 1013) as f32 - 506.0) / 97.0)
            .collect();
        let big = quantize_rows(&x, k);
        let few = 9;
        let small = quantize_rows(&x[..few * k], k);
        let slots = few.div_ceil(GROUP) * GROUP * (k / BLOCK);
        // Group 2 holds row 8 only in the small call; compare whole groups.
        let whole = (few / GROUP) * GROUP * (k / BLOCK);
        assert_eq!(small.d.len(), slots);
        assert_eq!(&small.d[..whole], &big.d[..whole]);
        assert_eq!(&small.s[..whole], &big.s[..whole]);
        assert_eq!(&small.qs[..whole * BLOCK], &big.qs[..whole * BLOCK]);
    }

    #[test]
    fn activation_rounding_follows_llama_cpp() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 20.0) / 3.0).collect();
        let q = quantize_rows(&x, 32);
        assert_eq!(q.qs[0], -127);
        assert_eq!(q.qs[20], 0);
        let sum: i32 = q.qs[..32].iter().map(|&v| v as i32).sum();
        let d = 20.0f32 / 3.0 / 127.0;
        assert_eq!(q.s[0], half::f16::from_f32(d * sum as f32).to_f32());
    }
}
