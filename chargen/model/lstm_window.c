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
                    __m256 i = sigmoid8(_mm256_load_ps(sums[r]));
                    __m256 f = sigmoid8(_mm256_load_ps(sums[r] + 8));
                    __m256 g = tanh8(_mm256_load_ps(sums[r] + 16));
                    __m256 o = sigmoid8(_mm256_load_ps(sums[r] + 24));
                    const float *c_prev = t ? j->cs + (at - 1) * H + u : j->c0 + m * H + u;
                    __m256 c = _mm256_fmadd_ps(f, _mm256_loadu_ps(c_prev), _mm256_mul_ps(i, g));
                    float *act = j->acts + at * G + u;
                    _mm256_storeu_ps(act, i);
                    _mm256_storeu_ps(act + H, f);
                    _mm256_storeu_ps(act + 2 * H, g);
                    _mm256_storeu_ps(act + 3 * H, o);
                    _mm256_storeu_ps(j->cs + at * H + u, c);
                    _mm256_storeu_ps(j->hs + at * H + u, _mm256_mul_ps(o, tanh8(c)));
                }
            }
        }
        barrier_wait(&j->barrier);
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
        /* dh at step t - 1 for this thread's units: all of step t's gate gradients times W_hh */
        for (int p = first; p < end; p++) {
            const float *w = j->wb + (size_t)p * G * 16;
            for (int m0 = 0; m0 < B; m0 += ROWS) {
                const int R = min_int(ROWS, B - m0);
                const float *a[ROWS];
                __m256 acc[ROWS][2];
                for (int r = 0; r < R; r++) {
                    a[r] = j->dg + ((size_t)(m0 + r) * T + t) * G;
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
