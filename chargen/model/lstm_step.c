/* One LSTM layer's step for sampled streams, AVX2 and FMA: the recurrent product, the cell
 * and (for the last layer) the output logits in one call.
 *
 * Sampling one stream is a 1 x H by H x 4H product per token with a weight that is read whole
 * every time. In float32 that weight (3.2 MB at 448 units) is read from L3; here it is kept in
 * bf16, half the bytes, split by hidden unit across the threads, so that each thread's share (0.8
 * MB for two threads) stays in its own core's L2 from one token to the next where the L2 is big
 * enough. The state, the sums and the output layer stay float32.
 *
 * Weights are packed by ``pack`` (python side, chargen/model/compiled.py): for each block of 8
 * hidden units and each input index k, the 32 values of the block's four gates (i, f, g, o, 8
 * units each) as bf16 in one 64-byte line: i and f of unit 0, i and f of unit 1, ..., then g and
 * o of each unit. The cell gate's weights and bias arrive doubled, so one sigmoid serves all
 * four gates: tanh(x) = 2 sigmoid(2x) - 1.
 *
 * Every output value is summed in one fixed order (its start value, then k = 0, 1, ... in turn,
 * one fused multiply-add each), whatever the number of rows or threads: a stream's numbers do not
 * depend on how many streams run beside it or on which thread computed them.
 *
 * The thread team is torch's own libgomp (already loaded when this library is), as in
 * lstm_amx.c.
 */
#include <immintrin.h>
#include <stdint.h>
#include <omp.h>

#include "avx2_math.h"

#define BLOCK 8 /* hidden units per block: one ymm register per gate */

/* ``x`` times one k's line of weights (32 bf16, see ``pack``) added into a0..a3, the gates i, f,
 * g, o. Each 32-bit word of the line holds a unit's value of two gates, the first gate's in its
 * low half; a bf16 is the top half of a float32, so one shift or one mask widens eight of them.
 * A macro on plain local variables: sums kept in an array were stored to memory every k. */
#define LINE(p, x, a0, a1, a2, a3)                                                            \
    do {                                                                                       \
        __m256i lo_ = _mm256_loadu_si256((const __m256i *)(p));                                \
        __m256i hi_ = _mm256_loadu_si256((const __m256i *)((p) + 16));                         \
        a0 = _mm256_fmadd_ps(x, _mm256_castsi256_ps(_mm256_slli_epi32(lo_, 16)), a0);          \
        a1 = _mm256_fmadd_ps(x, _mm256_and_ps(_mm256_castsi256_ps(lo_), top), a1);             \
        a2 = _mm256_fmadd_ps(x, _mm256_castsi256_ps(_mm256_slli_epi32(hi_, 16)), a2);          \
        a3 = _mm256_fmadd_ps(x, _mm256_and_ps(_mm256_castsi256_ps(hi_), top), a3);             \
    } while (0)

#define TOP_HALF _mm256_castsi256_ps(_mm256_set1_epi32((int)0xFFFF0000u))

/* acc[g] += sum over k of v[k] * W[k][g] for one unit block, k in turn: ``w`` points at the
 * block's first line (32 bf16 a k). */
static inline void product_one(int K, const float *v, const uint16_t *w, __m256 acc[4])
{
    const __m256 top = TOP_HALF;
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    for (int k = 0; k < K; k++, w += 4 * BLOCK)
        LINE(w, _mm256_broadcast_ss(v + k), a0, a1, a2, a3);
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
}

/* The same for one row and two unit blocks at once (``w`` and ``u``): eight independent sums
 * keep both FMA units busy where four would wait on each other. */
static inline void product_one_two_blocks(int K, const float *v, const uint16_t *w,
                                          const uint16_t *u, __m256 acc[8])
{
    const __m256 top = TOP_HALF;
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    __m256 b0 = acc[4], b1 = acc[5], b2 = acc[6], b3 = acc[7];
    for (int k = 0; k < K; k++, w += 4 * BLOCK, u += 4 * BLOCK) {
        __m256 x = _mm256_broadcast_ss(v + k);
        LINE(w, x, a0, a1, a2, a3);
        LINE(u, x, b0, b1, b2, b3);
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    acc[4] = b0, acc[5] = b1, acc[6] = b2, acc[7] = b3;
}

/* Two rows (``v0``, ``v1``) and one unit block: sums acc[0..3] and acc[4..7]. */
static inline void product_two(int K, const float *v0, const float *v1, const uint16_t *w,
                               __m256 acc[8])
{
    const __m256 top = TOP_HALF;
    __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
    __m256 b0 = acc[4], b1 = acc[5], b2 = acc[6], b3 = acc[7];
    for (int k = 0; k < K; k++, w += 4 * BLOCK) {
        LINE(w, _mm256_broadcast_ss(v0 + k), a0, a1, a2, a3);
        LINE(w, _mm256_broadcast_ss(v1 + k), b0, b1, b2, b3);
    }
    acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
    acc[4] = b0, acc[5] = b1, acc[6] = b2, acc[7] = b3;
}

/* The cell for 8 units of one row: gates a[4] (i, f, g doubled, o) and the old c at ``c``. */
static inline void cell(const __m256 a[4], const float *c, float *h_out, float *c_out)
{
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    __m256 i = sigmoid8(a[0]), f = sigmoid8(a[1]), g = sigmoid8(a[2]), o = sigmoid8(a[3]);
    g = _mm256_fmsub_ps(two, g, one); /* tanh of the cell gate */
    __m256 cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(c), _mm256_mul_ps(i, g));
    __m256 t = _mm256_fmsub_ps(two, sigmoid8(_mm256_mul_ps(two, cn)), one); /* tanh(c) */
    _mm256_storeu_ps(c_out, cn);
    _mm256_storeu_ps(h_out, _mm256_mul_ps(o, t));
}

/* Start values of one row's gates for one unit block: ``start`` (4H floats: the row's input
 * gates, or the biases) at the block's units. */
static inline void load_start(const float *start, int H, int unit, __m256 a[4])
{
    for (int g = 0; g < 4; g++)
        a[g] = _mm256_loadu_ps(start + g * H + unit);
}

static inline const float *row_start(const float *start, const int64_t *ids, int row, int H)
{
    return ids ? start + (size_t)ids[row] * 4 * H : start;
}

/* The logits ``h @ w_out + b_out`` of ``rows`` rows (see lstm_step), this thread's share. */
static void output_layer(int me, int team, int rows, int H, int V_pad, const float *h_out,
                         const float *w_out, const float *b_out, float *logits)
{
    /* jobs of one row and up to 8 vectors of 8 logits: 8 independent sums */
    const int chunks = (V_pad / 8 + 7) / 8;
    for (int job = me; job < rows * chunks; job += team) {
        const int r = job / chunks, v0 = 64 * (job % chunks);
        const int n = (V_pad - v0) / 8 < 8 ? (V_pad - v0) / 8 : 8;
        const float *hr = h_out + (size_t)r * H;
        __m256 acc[8];
        for (int j = 0; j < n; j++)
            acc[j] = _mm256_loadu_ps(b_out + v0 + 8 * j);
        if (n == 8) { /* the usual case, kept in registers */
            __m256 a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3];
            __m256 a4 = acc[4], a5 = acc[5], a6 = acc[6], a7 = acc[7];
            for (int k = 0; k < H; k++) {
                const float *wk = w_out + (size_t)k * V_pad + v0;
                __m256 x = _mm256_broadcast_ss(hr + k);
                a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk), a0);
                a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 8), a1);
                a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 16), a2);
                a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 24), a3);
                a4 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 32), a4);
                a5 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 40), a5);
                a6 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 48), a6);
                a7 = _mm256_fmadd_ps(x, _mm256_loadu_ps(wk + 56), a7);
            }
            acc[0] = a0, acc[1] = a1, acc[2] = a2, acc[3] = a3;
            acc[4] = a4, acc[5] = a5, acc[6] = a6, acc[7] = a7;
        } else {
            for (int k = 0; k < H; k++) {
                __m256 x = _mm256_broadcast_ss(hr + k);
                for (int j = 0; j < n; j++)
                    acc[j] = _mm256_fmadd_ps(
                        x, _mm256_loadu_ps(w_out + (size_t)k * V_pad + v0 + 8 * j), acc[j]);
            }
        }
        for (int j = 0; j < n; j++)
            _mm256_storeu_ps(logits + (size_t)r * V_pad + v0 + 8 * j, acc[j]);
    }
}

/* One layer's step for ``rows`` streams of H units.
 *
 * Each row's gates start from 4H floats at ``start``, moved on by ``ids[row]`` rows of 4H when
 * ``ids`` is given (the first layer: a table of every token's input gates), then add
 * ``x @ W_ih`` when ``x`` is given (rows x K_in, packed ``w_ih``), then ``h @ W_hh`` (rows x H,
 * packed ``w_hh``). New
 * states go to ``h_out`` and ``c_out`` (rows x H). When ``w_out`` is given (H x V_pad float32,
 * V_pad a multiple of 8), the logits ``h_out @ w_out + b_out`` go to ``logits`` (rows x V_pad).
 * Returns 1, having done nothing, when an id is not below ``tokens`` (the table's rows); else 0. */
int lstm_step(int rows, int H, int K_in, int V_pad, int threads, const float *start,
              const int64_t *ids, int64_t tokens, const float *x, const uint16_t *w_ih,
              const uint16_t *w_hh, const float *h, const float *c, float *h_out, float *c_out,
              const float *w_out, const float *b_out, float *logits)
{
    const int blocks = H / BLOCK;
    if (ids)
        for (int r = 0; r < rows; r++)
            if (ids[r] < 0 || ids[r] >= tokens)
                return 1;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
        const int first = blocks * me / team, last = blocks * (me + 1) / team;
        const int pairs = rows / 2;
        for (int b = first; b < last; b++) { /* rows two at a time */
            const int unit = b * BLOCK;
            const uint16_t *wh = w_hh + (size_t)b * H * 4 * BLOCK;
            const uint16_t *wi = w_ih ? w_ih + (size_t)b * K_in * 4 * BLOCK : 0;
            for (int r = 0; r < 2 * pairs; r += 2) {
                __m256 a[8];
                load_start(row_start(start, ids, r, H), H, unit, a);
                load_start(row_start(start, ids, r + 1, H), H, unit, a + 4);
                if (wi)
                    product_two(K_in, x + (size_t)r * K_in, x + (size_t)(r + 1) * K_in, wi, a);
                product_two(H, h + (size_t)r * H, h + (size_t)(r + 1) * H, wh, a);
                for (int s = 0; s < 2; s++) {
                    size_t at = (size_t)(r + s) * H + unit;
                    cell(a + 4 * s, c + at, h_out + at, c_out + at);
                }
            }
        }
        if (rows % 2) { /* the last row alone, unit blocks two at a time */
            const int r = rows - 1;
            for (int b = first; b < last; b += 2) {
                const int both = b + 1 < last, unit = b * BLOCK;
                const uint16_t *wh = w_hh + (size_t)b * H * 4 * BLOCK;
                const uint16_t *wi = w_ih ? w_ih + (size_t)b * K_in * 4 * BLOCK : 0;
                __m256 a[8];
                load_start(row_start(start, ids, r, H), H, unit, a);
                if (both) {
                    load_start(row_start(start, ids, r, H), H, unit + BLOCK, a + 4);
                    if (wi)
                        product_one_two_blocks(K_in, x + (size_t)r * K_in, wi,
                                               wi + (size_t)K_in * 4 * BLOCK, a);
                    product_one_two_blocks(H, h + (size_t)r * H, wh, wh + (size_t)H * 4 * BLOCK, a);
                } else {
                    if (wi)
                        product_one(K_in, x + (size_t)r * K_in, wi, a);
                    product_one(H, h + (size_t)r * H, wh, a);
                }
                for (int s = 0; s <= both; s++) {
                    size_t at = (size_t)r * H + unit + s * BLOCK;
                    cell(a + 4 * s, c + at, h_out + at, c_out + at);
                }
            }
        }
        if (w_out) {
#pragma omp barrier
            output_layer(me, team, rows, H, V_pad, h_out, w_out, b_out, logits);
        }
    }
    return 0;
}

/* ---- The layer-normalised LSTM's step (chargen/model/lnlstm.py has the equations)
 *
 * Each row's four recurrent sums and then its cell are normalised over all H units, so the
 * threads meet twice more than lstm_step's: after the products, and after the cells. Each block
 * of 8 units gives its sum and its sum of squares about its own mean; every thread combines all
 * blocks in block order in double precision, so a row's statistics do not depend on the threads
 * or on the rows beside it. The cell gate's weights are not doubled here: tanh is tanh8. */
#define LN_EPS 1e-5

static inline float sum8(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/* 8 floats' sum and sum of squares about their mean, to ``out``. */
static inline void moments8(__m256 v, float *out)
{
    const float sum = sum8(v);
    const __m256 d = _mm256_sub_ps(v, _mm256_set1_ps(sum / BLOCK));
    out[0] = sum;
    out[1] = sum8(_mm256_mul_ps(d, d));
}

/* The mean and 1 / sqrt(variance + LN_EPS), as vectors, of ``blocks`` blocks' moments. */
static inline void normaliser(const float *moments, int blocks, __m256 *mean, __m256 *rstd)
{
    double sum = 0, squares = 0;
    for (int p = 0; p < blocks; p++)
        sum += moments[2 * p];
    const double mu = sum / (blocks * BLOCK);
    for (int p = 0; p < blocks; p++) {
        const double off = moments[2 * p] / BLOCK - mu;
        squares += moments[2 * p + 1] + BLOCK * off * off;
    }
    const __m128d variance = _mm_set_sd(squares / (blocks * BLOCK) + LN_EPS);
    *mean = _mm256_set1_ps((float)mu);
    *rstd = _mm256_set1_ps((float)(1.0 / _mm_cvtsd_f64(_mm_sqrt_sd(variance, variance))));
}

/* One layer-normalised layer's step for ``rows`` streams of H units, with lstm_step's inputs
 * (``start``, ``ids``, ``x`` and packed ``w_ih`` give each row's input gates; ``w_hh`` packed
 * the same way, none of them doubled) and the normalisations' ``gain_hh`` (4H), ``gain_c`` and
 * ``shift_c`` (H). ``scratch`` holds rows * (8H + 5H / 4) floats. Returns as lstm_step. */
int lnlstm_step(int rows, int H, int K_in, int V_pad, int threads, const float *start,
                const int64_t *ids, int64_t tokens, const float *x, const uint16_t *w_ih,
                const uint16_t *w_hh, const float *gain_hh, const float *gain_c,
                const float *shift_c, const float *h, const float *c, float *h_out, float *c_out,
                const float *w_out, const float *b_out, float *logits, float *scratch)
{
    const int blocks = H / BLOCK;
    float *sums = scratch;                            /* rows x 4H recurrent sums */
    float *inputs = sums + (size_t)rows * 4 * H;      /* rows x 4H input gates */
    float *gate_stats = inputs + (size_t)rows * 4 * H; /* rows x 4 x blocks x 2 */
    float *cell_stats = gate_stats + (size_t)rows * 8 * blocks; /* rows x blocks x 2 */
    if (ids)
        for (int r = 0; r < rows; r++)
            if (ids[r] < 0 || ids[r] >= tokens)
                return 1;
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
        const int team = omp_get_num_threads(), me = omp_get_thread_num();
        const int first = blocks * me / team, last = blocks * (me + 1) / team;
        const __m256 zero = _mm256_setzero_ps();
        /* the input gates and the recurrent sums of this thread's units, rows two at a time,
         * and the sums' moments */
        for (int b = first; b < last; b++) {
            const int unit = b * BLOCK;
            const uint16_t *wh = w_hh + (size_t)b * H * 4 * BLOCK;
            const uint16_t *wi = w_ih ? w_ih + (size_t)b * K_in * 4 * BLOCK : 0;
            for (int r = 0; r < rows; r += 2) {
                __m256 a[8];
                load_start(row_start(start, ids, r, H), H, unit, a);
                if (r + 1 < rows)
                    load_start(row_start(start, ids, r + 1, H), H, unit, a + 4);
                if (wi && r + 1 < rows)
                    product_two(K_in, x + (size_t)r * K_in, x + (size_t)(r + 1) * K_in, wi, a);
                else if (wi)
                    product_one(K_in, x + (size_t)r * K_in, wi, a);
                for (int s = 0; s < 2 && r + s < rows; s++)
                    for (int g = 0; g < 4; g++) {
                        _mm256_storeu_ps(inputs + (size_t)(r + s) * 4 * H + g * H + unit, a[4 * s + g]);
                        a[4 * s + g] = zero;
                    }
                if (r + 1 < rows)
                    product_two(H, h + (size_t)r * H, h + (size_t)(r + 1) * H, wh, a);
                else
                    product_one(H, h + (size_t)r * H, wh, a);
                for (int s = 0; s < 2 && r + s < rows; s++)
                    for (int g = 0; g < 4; g++) {
                        _mm256_storeu_ps(sums + (size_t)(r + s) * 4 * H + g * H + unit, a[4 * s + g]);
                        moments8(a[4 * s + g], gate_stats + (((size_t)(r + s) * 4 + g) * blocks + b) * 2);
                    }
            }
        }
#pragma omp barrier
        /* the gates from the normalised sums, and the cells with their moments */
        for (int r = 0; r < rows; r++) {
            const float *in = inputs + (size_t)r * 4 * H;
            __m256 mean[4], rstd[4];
            for (int g = 0; g < 4; g++)
                normaliser(gate_stats + ((size_t)r * 4 + g) * blocks * 2, blocks, mean + g, rstd + g);
            for (int b = first; b < last; b++) {
                const int unit = b * BLOCK;
                __m256 pre[4];
                for (int g = 0; g < 4; g++) {
                    __m256 centred = _mm256_sub_ps(
                        _mm256_loadu_ps(sums + (size_t)r * 4 * H + g * H + unit), mean[g]);
                    pre[g] = _mm256_fmadd_ps(_mm256_loadu_ps(gain_hh + g * H + unit),
                                             _mm256_mul_ps(centred, rstd[g]),
                                             _mm256_loadu_ps(in + g * H + unit));
                }
                __m256 i = sigmoid8(pre[0]), f = sigmoid8(pre[1]), g = tanh8(pre[2]);
                const size_t at = (size_t)r * H + unit;
                __m256 cn = _mm256_fmadd_ps(f, _mm256_loadu_ps(c + at), _mm256_mul_ps(i, g));
                _mm256_storeu_ps(c_out + at, cn);
                _mm256_storeu_ps(h_out + at, sigmoid8(pre[3])); /* the output gate, for now */
                moments8(cn, cell_stats + ((size_t)r * blocks + b) * 2);
            }
        }
#pragma omp barrier
        /* the states from the normalised cells */
        for (int r = 0; r < rows; r++) {
            __m256 mean, rstd;
            normaliser(cell_stats + (size_t)r * blocks * 2, blocks, &mean, &rstd);
            for (int b = first; b < last; b++) {
                const size_t at = (size_t)r * H + b * BLOCK;
                __m256 cn = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(c_out + at), mean), rstd);
                __m256 shown = _mm256_fmadd_ps(_mm256_loadu_ps(gain_c + b * BLOCK), cn,
                                               _mm256_loadu_ps(shift_c + b * BLOCK));
                _mm256_storeu_ps(h_out + at, _mm256_mul_ps(_mm256_loadu_ps(h_out + at), tanh8(shown)));
            }
        }
        if (w_out) {
#pragma omp barrier
            output_layer(me, team, rows, H, V_pad, h_out, w_out, b_out, logits);
        }
    }
    return 0;
}
