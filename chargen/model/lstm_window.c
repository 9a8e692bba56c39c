/* One LSTM layer's recurrence over a training window in float32, AVX2 and FMA: forward and
 * backward, for CPUs that train in float32 (no bf16 products).
 *
 * torch's fused LSTM (oneDNN) runs each time step's 16 x H by H x 4H product as its own call,
 * at about 60% of the cores' float32 peak on a 2-core AVX2 CPU. Here the whole window is one
 * call: each thread of torch's OpenMP team owns a slice of the hidden units, packs its slice of
 * W_hh once a window for the forward and once for the backward, and the threads meet at a
 * spinning barrier once a time step. The input's gates, the recurrent weight's gradient and the
 * output layer stay with torch as large matrix products.
 *
 * Layouts (row m of the batch, step t; torch's batch-first order, gates i, f, g, o):
 *   xg   (B, T, 4H)  the input's gates plus both biases, from the caller (a product, or for the
 *                    first layer rows of a table of every token's gates)
 *   hs   (B, T, H)   hidden states; cs (B, T, H) cell states
 *   acts (B, T, 4H)  the gates after their squashing, kept for the backward
 *   dhs  (B, T, H)   the loss's gradient at each hidden state
 *   dg   (B, T, 4H)  the gradient at the gates before squashing, for the caller's products
 *   wf   forward panels: for each block of 8 units and each pair of gates (i f, then g o),
 *        H rows k of 16 floats: W_hh[gate][unit][k] for the block's 8 units of both gates
 *   wb   backward panels: for each block of 16 units, 4H rows g of 16 floats W_hh[g][unit]
 *
 * Every sum runs in one fixed order (k = 0, 1, ... in turn, one fused multiply-add each, from
 * its start value), and each thread owns whole units: results do not depend on the number of
 * threads.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "avx2_math.h"
#include "spin_barrier.h"

#define UNITS 16 /* hidden units a thread's block: one backward panel */
#define ROWS 6   /* rows a product kernel takes at once: 12 sums, two weight vectors, a row's value */

struct job {
    int T, B, H;
    const float *w, *xg, *h0, *c0, *dhs, *dc_last;
    float *wf, *wb, *hs, *cs, *acts, *dg, *dh_rec, *dc_next;
    /* the layer-normalised cell's: its parameters, what the forward keeps for the backward, the
     * blocks' statistics of a step, and the backward's gradients */
    const float *gain_hh, *gain_c, *shift_c;
    float *rhat, *chat, *rstd, *gate_stats, *cell_stats, *drh, *dch, *dgain, *dshift;
    struct barrier barrier;
};

static inline int min_int(int a, int b) { return a < b ? a : b; }

/* acc[r] += sum over k < K of a[r][k] * w[k][0..15] for rows r < R, ``w`` a panel of K rows of
 * 16 floats. R is a constant where this is called, so the sums stay in registers: in a local
 * array, as __m256 may alias the floats read (sums reached through ``acc`` were stored every k). */
static inline __attribute__((always_inline)) void panel(const int R, int K, const float *const *a,
                                                        const float *w, __m256 acc[ROWS][2])
{
    __m256 sum[ROWS][2];
    const float *row[ROWS];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        sum[r][0] = acc[r][0], sum[r][1] = acc[r][1];
        row[r] = a[r];
    }
    for (int k = 0; k < K; k++, w += 16) {
        __m256 w0 = _mm256_loadu_ps(w), w1 = _mm256_loadu_ps(w + 8);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m256 x = _mm256_broadcast_ss(row[r] + k);
            sum[r][0] = _mm256_fmadd_ps(x, w0, sum[r][0]);
            sum[r][1] = _mm256_fmadd_ps(x, w1, sum[r][1]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
        acc[r][0] = sum[r][0], acc[r][1] = sum[r][1];
}

static void panel_rows(int R, int K, const float *const *a, const float *w, __m256 acc[ROWS][2])
{
    switch (R) {
    case 6: panel(6, K, a, w, acc); break;
    case 5: panel(5, K, a, w, acc); break;
    case 4: panel(4, K, a, w, acc); break;
    case 3: panel(3, K, a, w, acc); break;
    case 2: panel(2, K, a, w, acc); break;
    default: panel(1, K, a, w, acc); break;
    }
}

/* Writes the 8 x 8 block at ``from`` (rows ``stride`` floats apart) transposed to ``to``: row k
 * of the result, 8 floats, at to + k * 16. */
static inline void transpose8(const float *from, size_t stride, float *to)
{
    __m256 r[8], t[8];
    for (int n = 0; n < 8; n++)
        r[n] = _mm256_loadu_ps(from + n * stride);
    for (int n = 0; n < 8; n += 2) {
        t[n] = _mm256_unpacklo_ps(r[n], r[n + 1]);
        t[n + 1] = _mm256_unpackhi_ps(r[n], r[n + 1]);
    }
    for (int n = 0; n < 8; n += 4) {
        r[n] = _mm256_shuffle_ps(t[n], t[n + 2], 0x44);
        r[n + 1] = _mm256_shuffle_ps(t[n], t[n + 2], 0xEE);
        r[n + 2] = _mm256_shuffle_ps(t[n + 1], t[n + 3], 0x44);
        r[n + 3] = _mm256_shuffle_ps(t[n + 1], t[n + 3], 0xEE);
    }
    for (int n = 0; n < 4; n++) {
        _mm256_storeu_ps(to + n * 16, _mm256_permute2f128_ps(r[n], r[n + 4], 0x20));
        _mm256_storeu_ps(to + (n + 4) * 16, _mm256_permute2f128_ps(r[n], r[n + 4], 0x31));
    }
}

/* Packs this thread's units of W_hh into both panel layouts. */
static void pack(const struct job *j, int first, int end)
{
    const int H = j->H;
    for (int b = 2 * first; b < 2 * end; b++) /* blocks of 8 */
        for (int s = 0; s < 2; s++) {
            float *to = j->wf + (size_t)(2 * b + s) * H * 16;
            for (int half = 0; half < 2; half++) { /* gate 2s, then gate 2s + 1 */
                const float *from = j->w + ((size_t)(2 * s + half) * H + b * 8) * H;
                for (int k = 0; k < H; k += 8)
                    transpose8(from + k, H, to + (size_t)k * 16 + half * 8);
            }
        }
    for (int p = first; p < end; p++)
        for (int g = 0; g < 4 * H; g++)
            memcpy(j->wb + ((size_t)p * 4 * H + g) * 16, j->w + (size_t)g * H + p * UNITS,
                   UNITS * sizeof(float));
}

/* Row m's 8 units from u at step t: the gates squashed from their sums ``pre`` (i, f, g, o) and
 * kept in ``acts``, the new cell kept in ``cs`` and returned, the output gate in ``o``. */
static inline __attribute__((always_inline)) __m256 gates_and_cell(struct job *j,
                                                                   const __m256 pre[4], int m,
                                                                   int t, int u, __m256 *o)
{
    const int T = j->T, H = j->H;
    const size_t at = (size_t)m * T + t;
    __m256 i = sigmoid8(pre[0]), f = sigmoid8(pre[1]), g = tanh8(pre[2]);
    *o = sigmoid8(pre[3]);
    const float *c_prev = t ? j->cs + (at - 1) * H + u : j->c0 + (size_t)m * H + u;
    __m256 c = _mm256_fmadd_ps(f, _mm256_loadu_ps(c_prev), _mm256_mul_ps(i, g));
    float *act = j->acts + at * 4 * H + u;
    _mm256_storeu_ps(act, i);
    _mm256_storeu_ps(act + H, f);
    _mm256_storeu_ps(act + 2 * H, g);
    _mm256_storeu_ps(act + 3 * H, *o);
    _mm256_storeu_ps(j->cs + at * H + u, c);
    return c;
}

static void forward_part(struct job *j, int first, int end)
{
    const int T = j->T, B = j->B, H = j->H, G = 4 * H;
    pack(j, first, end);
    for (int t = 0; t < T; t++) {
        for (int b = 2 * first; b < 2 * end; b++) {
            const int u = b * 8;
            for (int m0 = 0; m0 < B; m0 += ROWS) {
                const int R = min_int(ROWS, B - m0);
                const float *a[ROWS];
                float sums[ROWS][32] __attribute__((aligned(32)));
                for (int r = 0; r < R; r++)
                    a[r] = t ? j->hs + ((size_t)(m0 + r) * T + t - 1) * H : j->h0 + (size_t)(m0 + r) * H;
                for (int s = 0; s < 2; s++) {
                    __m256 acc[ROWS][2];
                    for (int r = 0; r < R; r++) {
                        const float *x = j->xg + ((size_t)(m0 + r) * T + t) * G + u;
                        acc[r][0] = _mm256_loadu_ps(x + 2 * s * H);
                        acc[r][1] = _mm256_loadu_ps(x + (2 * s + 1) * H);
                    }
                    panel_rows(R, H, a, j->wf + (size_t)(2 * b + s) * H * 16, acc);
                    for (int r = 0; r < R; r++) {
                        _mm256_store_ps(sums[r] + 16 * s, acc[r][0]);
                        _mm256_store_ps(sums[r] + 16 * s + 8, acc[r][1]);
                    }
                }
                for (int r = 0; r < R; r++) {
                    const size_t at = ((size_t)(m0 + r) * T + t), m = m0 + r;
                    const __m256 pre[4] = {_mm256_load_ps(sums[r]), _mm256_load_ps(sums[r] + 8),
                                           _mm256_load_ps(sums[r] + 16),
                                           _mm256_load_ps(sums[r] + 24)};
                    __m256 o, c = gates_and_cell(j, pre, m, t, u, &o);
                    _mm256_storeu_ps(j->hs + at * H + u, _mm256_mul_ps(o, tanh8(c)));
                }
            }
        }
        barrier_wait(&j->barrier);
    }
}

/* dh at step t - 1 for this thread's units, into ``dh_rec``: step t's gradients at the
 * recurrent sums (``grad``, B x T x 4H) times W_hh, through the backward panels. */
static void recurrent_gradient(struct job *j, int first, int end, int t, const float *grad)
{
    const int T = j->T, B = j->B, H = j->H, G = 4 * H;
    for (int p = first; p < end; p++) {
        const float *w = j->wb + (size_t)p * G * 16;
        for (int m0 = 0; m0 < B; m0 += ROWS) {
            const int R = min_int(ROWS, B - m0);
            const float *a[ROWS];
            __m256 acc[ROWS][2];
            for (int r = 0; r < R; r++) {
                a[r] = grad + ((size_t)(m0 + r) * T + t) * G;
                acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            }
            panel_rows(R, G, a, w, acc);
            for (int r = 0; r < R; r++) {
                float *to = j->dh_rec + (size_t)(m0 + r) * H + p * UNITS;
                _mm256_storeu_ps(to, acc[r][0]);
                _mm256_storeu_ps(to + 8, acc[r][1]);
            }
        }
    }
}

static void backward_part(struct job *j, int first, int end)
{
    const int T = j->T, B = j->B, H = j->H, G = 4 * H;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int t = T - 1; t >= 0; t--) {
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            for (int u = first * UNITS; u < end * UNITS; u += 8) {
                const float *act = j->acts + at * G + u;
                __m256 i = _mm256_loadu_ps(act), f = _mm256_loadu_ps(act + H);
                __m256 g = _mm256_loadu_ps(act + 2 * H), o = _mm256_loadu_ps(act + 3 * H);
                __m256 tc = tanh8(_mm256_loadu_ps(j->cs + at * H + u));
                const float *c_prev = t ? j->cs + (at - 1) * H + u : j->c0 + (size_t)m * H + u;
                float *dh_rec = j->dh_rec + (size_t)m * H + u, *dc_next = j->dc_next + (size_t)m * H + u;
                __m256 dh = _mm256_add_ps(_mm256_loadu_ps(j->dhs + at * H + u), _mm256_loadu_ps(dh_rec));
                __m256 dc = _mm256_fmadd_ps(_mm256_mul_ps(dh, o), _mm256_fnmadd_ps(tc, tc, one),
                                            _mm256_loadu_ps(dc_next));
                _mm256_storeu_ps(dc_next, _mm256_mul_ps(dc, f));
                __m256 d[4] = {
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dc, g), i), _mm256_sub_ps(one, i)),
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dc, _mm256_loadu_ps(c_prev)), f),
                                  _mm256_sub_ps(one, f)),
                    _mm256_mul_ps(_mm256_mul_ps(dc, i), _mm256_fnmadd_ps(g, g, one)),
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dh, tc), o), _mm256_sub_ps(one, o)),
                };
                for (int q = 0; q < 4; q++)
                    _mm256_storeu_ps(j->dg + at * G + q * H + u, d[q]);
            }
        }
        barrier_wait(&j->barrier);
        recurrent_gradient(j, first, end, t, j->dg);
    }
}


/* ---- The layer-normalised LSTM (chargen/model/lnlstm.py has the equations and the reference)
 *
 * Per step, each row's four recurrent sums W_hh h and then its cell are normalised over all H
 * units, so the threads meet three times a step: after the products (each thread has its units'
 * sums and their statistics), after the gates and the cell, and after the hidden state. Each
 * block of 16 units gives its sum and its sum of squares about its own mean (floats, one fixed
 * order); every thread then combines all blocks in block order in double precision, so the
 * statistics are the same whichever thread owns a block and however many threads there are.
 *
 * More layouts (beside the plain kernel's):
 *   rhat  (B, T, 4H)  each gate's normalised recurrent sums
 *   chat  (B, T, H)   the normalised cell
 *   rstd  (B, T, 5)   1 / sqrt(variance + EPS) of each gate's sums, then of the cell
 *   drh   (B, 4H)     a step's gradient at the normalised sums (the backward's scratch)
 *   dgain (5H)        gain_hh's gradient, then gain_c's; dshift (H) shift_c's */
#define EPS 1e-5

/* The sum of a vector's 8 floats, in one fixed order. */
static inline float sum8(__m256 v)
{
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}

/* A block's statistics go to a group of 2 * blocks floats, one group a row and gate: the first
 * ``blocks`` floats hold each block's first figure, the next ``blocks`` its second. */

/* Block ``p``'s 16 floats at ``x``: their sum and their sum of squares about their mean. */
static inline void block_moments(const float *x, float *group, int p, int blocks)
{
    __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
    const float sum = sum8(_mm256_add_ps(a, b));
    const __m256 mean = _mm256_set1_ps(sum / UNITS);
    a = _mm256_sub_ps(a, mean), b = _mm256_sub_ps(b, mean);
    group[p] = sum;
    group[blocks + p] = sum8(_mm256_fmadd_ps(a, a, _mm256_mul_ps(b, b)));
}

/* Block ``p``'s sums of the 16 floats at ``x`` and of their products with those at ``y``. */
static inline void block_sums(const float *x, const float *y, float *group, int p, int blocks)
{
    __m256 a = _mm256_loadu_ps(x), b = _mm256_loadu_ps(x + 8);
    group[p] = sum8(_mm256_add_ps(a, b));
    group[blocks + p] =
        sum8(_mm256_fmadd_ps(a, _mm256_loadu_ps(y), _mm256_mul_ps(b, _mm256_loadu_ps(y + 8))));
}

/* Four double lanes added in one fixed order. */
static inline double sum4d(__m256d v)
{
    __m128d x = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
}

/* The mean and 1 / sqrt(variance + EPS) of a group of blocks' moments, in double precision:
 * four blocks at a time in lanes, then any left one by one (the same order on every thread). */
static inline void combine_moments(const float *group, int blocks, float *mean, float *rstd)
{
    const float *squares = group + blocks;
    __m256d acc = _mm256_setzero_pd();
    int p = 0;
    for (; p + 4 <= blocks; p += 4)
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm_loadu_ps(group + p)));
    double sum = sum4d(acc);
    for (int q = p; q < blocks; q++)
        sum += group[q];
    const double mu = sum / (blocks * UNITS);
    const __m256d mu4 = _mm256_set1_pd(mu), per = _mm256_set1_pd(1.0 / UNITS);
    const __m256d units = _mm256_set1_pd(UNITS);
    acc = _mm256_setzero_pd();
    for (p = 0; p + 4 <= blocks; p += 4) {
        __m256d off = _mm256_fmsub_pd(_mm256_cvtps_pd(_mm_loadu_ps(group + p)), per, mu4);
        acc = _mm256_add_pd(acc, _mm256_fmadd_pd(_mm256_mul_pd(units, off), off,
                                                 _mm256_cvtps_pd(_mm_loadu_ps(squares + p))));
    }
    double m2 = sum4d(acc);
    for (int q = p; q < blocks; q++) {
        const double off = group[q] * (1.0 / UNITS) - mu;
        m2 += UNITS * off * off + squares[q];
    }
    const __m128d variance = _mm_set_sd(m2 / (blocks * UNITS) + EPS);
    *mean = (float)mu;
    *rstd = (float)(1.0 / _mm_cvtsd_f64(_mm_sqrt_sd(variance, variance)));
}

/* The means over all units of a group of blocks' sums (block_sums), in double precision. */
static inline void combine_sums(const float *group, int blocks, float *mean_x, float *mean_xy)
{
    __m256d x = _mm256_setzero_pd(), xy = _mm256_setzero_pd();
    int p = 0;
    for (; p + 4 <= blocks; p += 4) {
        x = _mm256_add_pd(x, _mm256_cvtps_pd(_mm_loadu_ps(group + p)));
        xy = _mm256_add_pd(xy, _mm256_cvtps_pd(_mm_loadu_ps(group + blocks + p)));
    }
    double sx = sum4d(x), sxy = sum4d(xy);
    for (; p < blocks; p++)
        sx += group[p], sxy += group[blocks + p];
    *mean_x = (float)(sx / (blocks * UNITS));
    *mean_xy = (float)(sxy / (blocks * UNITS));
}

static void ln_forward_part(struct job *j, int first, int end)
{
    const int T = j->T, B = j->B, H = j->H, G = 4 * H, NB = H / UNITS;
    pack(j, first, end);
    for (int t = 0; t < T; t++) {
        /* the recurrent sums of this thread's units, and their blocks' moments */
        for (int b = 2 * first; b < 2 * end; b++) {
            const int u = b * 8;
            for (int m0 = 0; m0 < B; m0 += ROWS) {
                const int R = min_int(ROWS, B - m0);
                const float *a[ROWS];
                for (int r = 0; r < R; r++)
                    a[r] = t ? j->hs + ((size_t)(m0 + r) * T + t - 1) * H : j->h0 + (size_t)(m0 + r) * H;
                for (int s = 0; s < 2; s++) {
                    __m256 acc[ROWS][2];
                    for (int r = 0; r < R; r++)
                        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
                    panel_rows(R, H, a, j->wf + (size_t)(2 * b + s) * H * 16, acc);
                    for (int r = 0; r < R; r++) {
                        float *to = j->rhat + ((size_t)(m0 + r) * T + t) * G + u;
                        _mm256_storeu_ps(to + 2 * s * H, acc[r][0]);
                        _mm256_storeu_ps(to + (2 * s + 1) * H, acc[r][1]);
                    }
                }
            }
        }
        for (int m = 0; m < B; m++)
            for (int q = 0; q < 4; q++)
                for (int p = first; p < end; p++)
                    block_moments(j->rhat + ((size_t)m * T + t) * G + q * H + p * UNITS,
                                  j->gate_stats + ((size_t)m * 4 + q) * NB * 2, p, NB);
        barrier_wait(&j->barrier);
        /* the gates from the normalised sums, the cell, and the cell's blocks' moments */
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            __m256 mean[4], rstd[4];
            for (int q = 0; q < 4; q++) {
                float mu, rs;
                combine_moments(j->gate_stats + ((size_t)m * 4 + q) * NB * 2, NB, &mu, &rs);
                mean[q] = _mm256_set1_ps(mu), rstd[q] = _mm256_set1_ps(rs);
                if (first == 0)
                    j->rstd[at * 5 + q] = rs;
            }
            for (int u = first * UNITS; u < end * UNITS; u += 8) {
                __m256 pre[4];
                for (int q = 0; q < 4; q++) {
                    float *rh = j->rhat + at * G + q * H + u;
                    __m256 x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(rh), mean[q]), rstd[q]);
                    _mm256_storeu_ps(rh, x);
                    pre[q] = _mm256_fmadd_ps(_mm256_loadu_ps(j->gain_hh + q * H + u), x,
                                             _mm256_loadu_ps(j->xg + at * G + q * H + u));
                }
                __m256 o;
                gates_and_cell(j, pre, m, t, u, &o);
            }
            for (int p = first; p < end; p++)
                block_moments(j->cs + at * H + p * UNITS, j->cell_stats + (size_t)m * NB * 2, p, NB);
        }
        barrier_wait(&j->barrier);
        /* the hidden state from the normalised cell */
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            float mu, rs;
            combine_moments(j->cell_stats + (size_t)m * NB * 2, NB, &mu, &rs);
            if (first == 0)
                j->rstd[at * 5 + 4] = rs;
            const __m256 mean = _mm256_set1_ps(mu), rstd = _mm256_set1_ps(rs);
            for (int u = first * UNITS; u < end * UNITS; u += 8) {
                __m256 x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(j->cs + at * H + u), mean), rstd);
                _mm256_storeu_ps(j->chat + at * H + u, x);
                __m256 shown = _mm256_fmadd_ps(_mm256_loadu_ps(j->gain_c + u), x,
                                               _mm256_loadu_ps(j->shift_c + u));
                __m256 o = _mm256_loadu_ps(j->acts + at * G + 3 * H + u);
                _mm256_storeu_ps(j->hs + at * H + u, _mm256_mul_ps(o, tanh8(shown)));
            }
        }
        barrier_wait(&j->barrier);
    }
}

static void ln_backward_part(struct job *j, int first, int end)
{
    const int T = j->T, B = j->B, H = j->H, G = 4 * H, NB = H / UNITS;
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int t = T - 1; t >= 0; t--) {
        /* back through h = o tanh(gain_c chat + shift_c): the output gate's gradient, the
         * normalised cell's, and the blocks' sums for the normalisation's gradient */
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            for (int u = first * UNITS; u < end * UNITS; u += 8) {
                __m256 ch = _mm256_loadu_ps(j->chat + at * H + u);
                __m256 gain = _mm256_loadu_ps(j->gain_c + u);
                __m256 tc = tanh8(_mm256_fmadd_ps(gain, ch, _mm256_loadu_ps(j->shift_c + u)));
                __m256 o = _mm256_loadu_ps(j->acts + at * G + 3 * H + u);
                __m256 dh = _mm256_add_ps(_mm256_loadu_ps(j->dhs + at * H + u),
                                          _mm256_loadu_ps(j->dh_rec + (size_t)m * H + u));
                __m256 dshown = _mm256_mul_ps(_mm256_mul_ps(dh, o), _mm256_fnmadd_ps(tc, tc, one));
                float *dshift = j->dshift + u, *dgain = j->dgain + 4 * H + u;
                _mm256_storeu_ps(dshift, _mm256_add_ps(_mm256_loadu_ps(dshift), dshown));
                _mm256_storeu_ps(dgain, _mm256_fmadd_ps(dshown, ch, _mm256_loadu_ps(dgain)));
                _mm256_storeu_ps(j->dch + (size_t)m * H + u, _mm256_mul_ps(dshown, gain));
                _mm256_storeu_ps(j->dg + at * G + 3 * H + u,
                                 _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dh, tc), o), _mm256_sub_ps(one, o)));
            }
            for (int p = first; p < end; p++)
                block_sums(j->dch + (size_t)m * H + p * UNITS, j->chat + at * H + p * UNITS,
                           j->cell_stats + (size_t)m * NB * 2, p, NB);
        }
        barrier_wait(&j->barrier);
        /* the cell's gradient, the other gates', and the blocks' sums for the recurrent sums' */
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            float mean_d, mean_dx;
            combine_sums(j->cell_stats + (size_t)m * NB * 2, NB, &mean_d, &mean_dx);
            const __m256 a = _mm256_set1_ps(mean_d), b = _mm256_set1_ps(mean_dx);
            const __m256 rstd = _mm256_set1_ps(j->rstd[at * 5 + 4]);
            for (int u = first * UNITS; u < end * UNITS; u += 8) {
                const float *act = j->acts + at * G + u;
                __m256 i = _mm256_loadu_ps(act), f = _mm256_loadu_ps(act + H);
                __m256 g = _mm256_loadu_ps(act + 2 * H);
                __m256 ch = _mm256_loadu_ps(j->chat + at * H + u);
                __m256 dch = _mm256_sub_ps(_mm256_loadu_ps(j->dch + (size_t)m * H + u), a);
                const float *c_prev = t ? j->cs + (at - 1) * H + u : j->c0 + (size_t)m * H + u;
                float *dc_next = j->dc_next + (size_t)m * H + u;
                __m256 dc = _mm256_fmadd_ps(rstd, _mm256_fnmadd_ps(ch, b, dch), _mm256_loadu_ps(dc_next));
                _mm256_storeu_ps(dc_next, _mm256_mul_ps(dc, f));
                __m256 d[3] = {
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dc, g), i), _mm256_sub_ps(one, i)),
                    _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(dc, _mm256_loadu_ps(c_prev)), f),
                                  _mm256_sub_ps(one, f)),
                    _mm256_mul_ps(_mm256_mul_ps(dc, i), _mm256_fnmadd_ps(g, g, one)),
                };
                for (int q = 0; q < 3; q++)
                    _mm256_storeu_ps(j->dg + at * G + q * H + u, d[q]);
                for (int q = 0; q < 4; q++) {
                    __m256 dq = q < 3 ? d[q] : _mm256_loadu_ps(j->dg + at * G + 3 * H + u);
                    __m256 rh = _mm256_loadu_ps(j->rhat + at * G + q * H + u);
                    float *dgain = j->dgain + q * H + u;
                    _mm256_storeu_ps(dgain, _mm256_fmadd_ps(dq, rh, _mm256_loadu_ps(dgain)));
                    _mm256_storeu_ps(j->drh + (size_t)m * G + q * H + u,
                                     _mm256_mul_ps(dq, _mm256_loadu_ps(j->gain_hh + q * H + u)));
                }
            }
            for (int q = 0; q < 4; q++)
                for (int p = first; p < end; p++)
                    block_sums(j->drh + (size_t)m * G + q * H + p * UNITS,
                               j->rhat + at * G + q * H + p * UNITS,
                               j->gate_stats + ((size_t)m * 4 + q) * NB * 2, p, NB);
        }
        barrier_wait(&j->barrier);
        /* the recurrent sums' gradient, over their normalised values (no longer needed) */
        for (int m = 0; m < B; m++) {
            const size_t at = (size_t)m * T + t;
            for (int q = 0; q < 4; q++) {
                float mean_d, mean_dx;
                combine_sums(j->gate_stats + ((size_t)m * 4 + q) * NB * 2, NB, &mean_d, &mean_dx);
                const __m256 a = _mm256_set1_ps(mean_d), b = _mm256_set1_ps(mean_dx);
                const __m256 rstd = _mm256_set1_ps(j->rstd[at * 5 + q]);
                for (int u = first * UNITS; u < end * UNITS; u += 8) {
                    float *dr = j->rhat + at * G + q * H + u;
                    __m256 drh = _mm256_loadu_ps(j->drh + (size_t)m * G + q * H + u);
                    __m256 x = _mm256_fnmadd_ps(_mm256_loadu_ps(dr), b, _mm256_sub_ps(drh, a));
                    _mm256_storeu_ps(dr, _mm256_mul_ps(rstd, x));
                }
            }
        }
        barrier_wait(&j->barrier);
        recurrent_gradient(j, first, end, t, j->rhat); /* over rhat: dr */
    }
}

/* Runs ``work`` on a team of torch's OpenMP threads (its libgomp, already loaded), each on its
 * share of the blocks of 16 units. */
static void run(struct job *j, int threads, void (*work)(struct job *, int, int))
{
    const int blocks = j->H / UNITS, n = threads < 1 ? 1 : threads > blocks ? blocks : threads;
    j->barrier.count = 0;
    j->barrier.generation = 0;
    j->barrier.threads = n;
#pragma omp parallel num_threads(n)
    {
        const int team = omp_get_num_threads(), k = omp_get_thread_num();
        if (team == n) /* the barrier counts on n threads */
            work(j, k * blocks / team, (k + 1) * blocks / team);
        else if (k == 0)
            j->barrier.threads = -1; /* refused below */
    }
}

/* The forward over T steps of B rows of H units (H a multiple of 16). ``w`` is W_hh (4H, H);
 * ``wf`` and ``wb`` receive its packed forms (4H * H floats each; ``wb`` serves the backward).
 * Returns 0, or -1 when OpenMP gave fewer threads than asked. */
int lstm_window_forward(int T, int B, int H, int threads, const float *w, float *wf, float *wb,
                        const float *xg, const float *h0, const float *c0, float *hs, float *cs,
                        float *acts)
{
    struct job j = {.T = T, .B = B, .H = H, .w = w, .wf = wf, .wb = wb, .xg = xg, .h0 = h0,
                    .c0 = c0, .hs = hs, .cs = cs, .acts = acts};
    run(&j, threads, forward_part);
    return j.barrier.threads < 0 ? -1 : 0;
}

/* The backward: from ``dhs`` and the last cell state's gradient ``dc_last`` (B, H), the gates'
 * gradient ``dg`` (the gradient of ``xg``) and the first states' gradients ``dh0``, ``dc0`` (B,
 * H). ``wb``, ``acts`` and ``cs`` are the forward's. Returns 0, or -1 as the forward. */
int lstm_window_backward(int T, int B, int H, int threads, const float *wb, const float *acts,
                         const float *cs, const float *c0, const float *dhs, const float *dc_last,
                         float *dg, float *dh0, float *dc0)
{
    struct job j = {.T = T, .B = B, .H = H, .wb = (float *)wb, .acts = (float *)acts,
                    .cs = (float *)cs, .c0 = c0, .dhs = dhs, .dg = dg, .dh_rec = dh0,
                    .dc_next = dc0};
    memset(dh0, 0, (size_t)B * H * sizeof(float)); /* the last state's gradient is in dhs */
    memcpy(dc0, dc_last, (size_t)B * H * sizeof(float));
    run(&j, threads, backward_part);
    return j.barrier.threads < 0 ? -1 : 0;
}

/* The layer-normalised forward: as lstm_window_forward, with ``xg`` the input's gates and bias
 * only, the gains and shift (4H, H, H), and what the backward needs: ``rhat``, ``chat`` and
 * ``rstd``. Returns 0, -1 as lstm_window_forward, or -2 where memory ran out. */
int lnlstm_window_forward(int T, int B, int H, int threads, const float *w, float *wf, float *wb,
                          const float *xg, const float *gain_hh, const float *gain_c,
                          const float *shift_c, const float *h0, const float *c0, float *hs,
                          float *cs, float *acts, float *rhat, float *chat, float *rstd)
{
    float *stats = malloc((size_t)B * 5 * (H / UNITS) * 2 * sizeof(float));
    if (!stats)
        return -2;
    struct job j = {.T = T, .B = B, .H = H, .w = w, .wf = wf, .wb = wb, .xg = xg, .h0 = h0,
                    .c0 = c0, .hs = hs, .cs = cs, .acts = acts, .gain_hh = gain_hh,
                    .gain_c = gain_c, .shift_c = shift_c, .rhat = rhat, .chat = chat, .rstd = rstd,
                    .gate_stats = stats, .cell_stats = stats + (size_t)B * 4 * (H / UNITS) * 2};
    run(&j, threads, ln_forward_part);
    free(stats);
    return j.barrier.threads < 0 ? -1 : 0;
}

/* The layer-normalised backward: ``dg`` the gradient of ``xg``, ``dgain`` that of gain_hh and
 * then gain_c (5H), ``dshift`` that of shift_c (H), and the first states' ``dh0``, ``dc0``;
 * the gradient of the recurrent sums W_hh h (B, T, 4H), for W_hh's, is written over ``rhat``.
 * Returns as the forward. */
int lnlstm_window_backward(int T, int B, int H, int threads, const float *wb, const float *gain_hh,
                           const float *gain_c, const float *shift_c, const float *acts,
                           const float *cs, const float *c0, float *rhat, const float *chat,
                           const float *rstd, const float *dhs, const float *dc_last, float *dg,
                           float *dgain, float *dshift, float *dh0, float *dc0)
{
    const size_t stats_size = (size_t)B * 5 * (H / UNITS) * 2;
    float *scratch = malloc((stats_size + (size_t)B * H + (size_t)B * 4 * H) * sizeof(float));
    if (!scratch)
        return -2;
    struct job j = {.T = T, .B = B, .H = H, .wb = (float *)wb, .acts = (float *)acts,
                    .cs = (float *)cs, .c0 = c0, .dhs = dhs, .dg = dg, .dh_rec = dh0,
                    .dc_next = dc0, .gain_hh = gain_hh, .gain_c = gain_c, .shift_c = shift_c,
                    .rhat = rhat, .chat = (float *)chat, .rstd = (float *)rstd,
                    .gate_stats = scratch, .cell_stats = scratch + (size_t)B * 4 * (H / UNITS) * 2,
                    .dch = scratch + stats_size, .drh = scratch + stats_size + (size_t)B * H,
                    .dgain = dgain, .dshift = dshift};
    memset(dh0, 0, (size_t)B * H * sizeof(float));
    memcpy(dc0, dc_last, (size_t)B * H * sizeof(float));
    memset(dgain, 0, (size_t)5 * H * sizeof(float));
    memset(dshift, 0, (size_t)H * sizeof(float));
    run(&j, threads, ln_backward_part);
    free(scratch);
    return j.barrier.threads < 0 ? -1 : 0;
}
