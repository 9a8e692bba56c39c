/* The LSTM recurrence on Intel AMX tiles: one call runs a whole window forward or backward.
 *
 * Why: a training step spends most of its time in the 64 small products h_{t-1} W_hh^T of a
 * window and their mirror in the backward pass. Through a library each is a call of its own
 * that reads the 2 MB bf16 recurrent weight again from wherever it was evicted to. Here each
 * thread owns a fixed slice of the hidden units, keeps its 1 MB slice of the weight in its
 * core's L2 for the whole window, and the threads meet once a time step.
 *
 * Layouts, row-major (B streams, T steps, H units, G = 4H gates in torch's order i, f, g, o):
 *   xg  [B, T, G] bf16  the input's share of the gates, x W_ih^T + b_ih + b_hh
 *   hs  [B, T, H] bf16  the hidden state after each step (the layer's output)
 *   dhs [B, T, H] bf16  the loss's gradient with respect to hs
 *   dg  [B, T, G] bf16  the loss's gradient with respect to the gates before squashing
 *   db  [G] f32         its sum over B and T: the biases' gradient
 *   cs  [T, H/16, B, 16] f32, acts [T, H/16, B, 4, 16] f32: the cell state and the squashed
 *       gates, kept for the backward pass, each thread's units together (strided rows would
 *       all fall in the same few sets of the L1 cache)
 *   w   [G, H] f32      W_hh as torch holds it; the forward pass packs it, in bf16, into
 *   wf  [H/16 unit blocks][4 gates][H/32][16][32] (W_hh^T) and
 *   wb  [H/16 unit blocks][G/32][16][32] (W_hh) for AMX's B operand, which takes each two
 *       neighbouring values of K side by side.
 * H must be a multiple of 32 and E of 16; B is any, rows are taken 16 at a time, the last block padded.
 *
 * Built and loaded by chargen/model/amx.py, which checks the CPU and falls back to torch's LSTM
 * when anything is missing.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spin_barrier.h"

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef uint16_t bf16;

/* Asks Linux (5.16 or later) for the use of AMX's tile registers. 0 on success. */
int amx_request(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

/* Eight tiles of 16 rows of 64 bytes: 0-3 accumulate float32, 4 holds A, 5-7 hold B. */
static void tiles_on(void) {
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int k = 0; k < 8; k++) {
        config.bytes_per_row[k] = 64;
        config.rows[k] = 16;
    }
    _tile_loadconfig(&config);
}

/* e^x to about 2 ulp (Cephes' polynomial on [-ln2/2, ln2/2]); inputs clamped to +-88. */
static inline __m512 exp16(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-88.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static inline __m512 sigmoid16(__m512 x) {
    /* 1 / d from the 14-bit reciprocal and one Newton step */
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
    __m512 r = _mm512_rcp14_ps(d);
    return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
}

static inline __m512 tanh16(__m512 x) { /* 2 sigmoid(2x) - 1 */
    __m512 s = sigmoid16(_mm512_add_ps(x, x));
    return _mm512_sub_ps(_mm512_add_ps(s, s), _mm512_set1_ps(1.0f));
}

static inline __m512 load_bf16(const bf16 *from) {
    __m256i half = _mm256_loadu_si256((const __m256i *)from);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

static inline void store_bf16(bf16 *to, __m512 x) {
    _mm256_storeu_si256((__m256i *)to, (__m256i)_mm512_cvtneps_pbh(x));
}

struct job {
    int T, B, H, padded;
    const float *w, *h0, *c0, *dh_last, *dc_last;
    const bf16 *xg, *dhs;
    bf16 *wf, *wb, *dg;
    bf16 *hs;
    float *cs, *acts, *db, *dh_first, *dc_first;
    bf16 *h_bf[2], *dg_bf[2]; /* [padded, H] and [padded, G]: the A operand, shared */
    float *dh_rec, *dc_next;  /* [padded, H]: each thread writes its own columns */
    struct barrier barrier;
};

struct part {
    struct job *job;
    int first_block, end_block; /* unit blocks of 16 */
};

/* Where step t, row m, unit block ub of the cell state and of the squashed gates lie. */
static inline size_t cell_at(const struct job *j, int t, int m, int ub) {
    return (((size_t)t * (j->H / 16) + ub) * j->B + m) * 16;
}

static inline size_t acts_at(const struct job *j, int t, int m, int ub) { return 4 * cell_at(j, t, m, ub); }

/* Packs this thread's unit blocks of W_hh into both AMX layouts. */
static void pack(const struct job *j, const struct part *part) {
    int H = j->H, kb_f = H / 32, kb_b = 4 * H / 32;
    __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                     23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                      _mm512_set1_epi32(16));
    for (int ub = part->first_block; ub < part->end_block; ub++) {
        /* W_hh^T: each row of W (a gate's unit) gives column n of every tile of its block */
        for (int q = 0; q < 4; q++)
            for (int n = 0; n < 16; n++) {
                const float *from = j->w + ((size_t)q * H + ub * 16 + n) * H;
                for (int kb = 0; kb < kb_f; kb++) {
                    __m512i packed = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(from + kb * 32 + 16),
                                                                  _mm512_loadu_ps(from + kb * 32));
                    uint32_t *to = (uint32_t *)(j->wf + ((size_t)(ub * 4 + q) * kb_f + kb) * 512) + n;
                    _mm512_i32scatter_epi32(to, rows, packed, 4);
                }
            }
        /* W_hh: rows 2r and 2r + 1 of a block of K, this block's 16 units, interleaved */
        for (int kb = 0; kb < kb_b; kb++)
            for (int r = 0; r < 16; r++) {
                const float *from = j->w + (size_t)(kb * 32 + 2 * r) * H + ub * 16;
                __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(from + H), _mm512_loadu_ps(from));
                bf16 *to = j->wb + (((size_t)ub * kb_b + kb) * 16 + r) * 32;
                _mm512_storeu_si512(to, _mm512_permutexvar_epi16(pairs, both));
            }
    }
}

/* out[16 rows][n blocks of 16] = a[16 rows][32 kb_n] times n packed blocks of B (each kb_n tiles
 * of 16 x 32, ``apart`` elements from one block to the next), for n of 1 to 4. */
static void tile_product(const bf16 *a, size_t a_row_bytes, int kb_n, const bf16 *w, size_t apart, int n,
                         float *out, size_t out_row_bytes) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int kb = 0; kb < kb_n; kb++, a += 32, w += 512) {
        _tile_loadd(4, a, a_row_bytes);
        _tile_loadd(5, w, 64);
        _tile_dpbf16ps(0, 4, 5);
        if (n > 1) {
            _tile_loadd(6, w + apart, 64);
            _tile_dpbf16ps(1, 4, 6);
        }
        if (n > 2) {
            _tile_loadd(7, w + 2 * apart, 64);
            _tile_dpbf16ps(2, 4, 7);
        }
        if (n > 3) {
            _tile_loadd(5, w + 3 * apart, 64);
            _tile_dpbf16ps(3, 4, 5);
        }
    }
    _tile_stored(0, out, out_row_bytes);
    if (n > 1) _tile_stored(1, out + 16, out_row_bytes);
    if (n > 2) _tile_stored(2, out + 32, out_row_bytes);
    if (n > 3) _tile_stored(3, out + 48, out_row_bytes);
}

/* The cell's element-wise step for row m of a block of 16 units: ``sums`` holds the product's
 * four gates of those units, as the tiles left them. */
static inline void cell_row(struct job *j, int t, int m, int ub, const float *sums, bf16 *h_next) {
    int H = j->H, u = ub * 16;
    size_t mine = (size_t)m * j->T + t;
    const bf16 *x = j->xg + mine * 4 * H + u;
    __m512 i = sigmoid16(_mm512_add_ps(_mm512_load_ps(sums), load_bf16(x)));
    __m512 f = sigmoid16(_mm512_add_ps(_mm512_load_ps(sums + 16), load_bf16(x + H)));
    __m512 g = tanh16(_mm512_add_ps(_mm512_load_ps(sums + 32), load_bf16(x + 2 * H)));
    __m512 o = sigmoid16(_mm512_add_ps(_mm512_load_ps(sums + 48), load_bf16(x + 3 * H)));
    const float *c_prev = t ? j->cs + cell_at(j, t - 1, m, ub) : j->c0 + (size_t)m * H + u;
    __m512 c = _mm512_fmadd_ps(f, _mm512_loadu_ps(c_prev), _mm512_mul_ps(i, g));
    __m512 h = _mm512_mul_ps(o, tanh16(c));
    float *act = j->acts + acts_at(j, t, m, ub);
    _mm512_store_ps(act, i);
    _mm512_store_ps(act + 16, f);
    _mm512_store_ps(act + 32, g);
    _mm512_store_ps(act + 48, o);
    _mm512_store_ps(j->cs + cell_at(j, t, m, ub), c);
    store_bf16(j->hs + mine * H + u, h);
    store_bf16(h_next + (size_t)m * H + u, h);
}

/* Each time step, for each of this thread's (row block, unit block) pairs in turn: the four
 * gates' product on the tiles, then the cell's element-wise step. The two are interleaved,
 * the product of one pair with the element-wise rows of the one before, so that the tile unit
 * and the vector unit work at the same time. */
static void forward_part(struct part *part) {
    struct job *j = part->job;
    int H = j->H, kb_n = H / 32, blocks = part->end_block - part->first_block;
    int pairs = j->padded / 16 * blocks, rounds = kb_n > 16 ? kb_n : 16;
    size_t gate = (size_t)kb_n * 512;
    float sums[2][16][64] __attribute__((aligned(64))); /* row r: gates i, f, g, o of 16 units */
    pack(j, part);
    tiles_on();
    barrier_wait(&j->barrier);
    for (int t = 0; t < j->T; t++) {
        const bf16 *h_prev = j->h_bf[t & 1];
        bf16 *h_next = j->h_bf[(t + 1) & 1];
        for (int k = 0; k <= pairs; k++) {
            int mb = k / blocks, ub = part->first_block + k % blocks;
            int mb_done = (k - 1) / blocks, ub_done = part->first_block + (k - 1) % blocks;
            const bf16 *a = h_prev + (size_t)mb * 16 * H;
            const bf16 *w = j->wf + (size_t)ub * 4 * gate;
            if (k < pairs) {
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
            }
            for (int s = 0; s < rounds; s++) {
                if (k < pairs && s < kb_n) {
                    _tile_loadd(4, a + s * 32, H * 2);
                    _tile_loadd(5, w + s * 512, 64);
                    _tile_dpbf16ps(0, 4, 5);
                    _tile_loadd(6, w + gate + s * 512, 64);
                    _tile_dpbf16ps(1, 4, 6);
                    _tile_loadd(7, w + 2 * gate + s * 512, 64);
                    _tile_dpbf16ps(2, 4, 7);
                    _tile_loadd(5, w + 3 * gate + s * 512, 64);
                    _tile_dpbf16ps(3, 4, 5);
                }
                if (k > 0 && s < 16 && mb_done * 16 + s < j->B)
                    cell_row(j, t, mb_done * 16 + s, ub_done, sums[(k - 1) & 1][s], h_next);
            }
            if (k < pairs) {
                float *to = sums[k & 1][0];
                _tile_stored(0, to, sizeof sums[0][0]);
                _tile_stored(1, to + 16, sizeof sums[0][0]);
                _tile_stored(2, to + 32, sizeof sums[0][0]);
                _tile_stored(3, to + 48, sizeof sums[0][0]);
            }
        }
        barrier_wait(&j->barrier);
    }
    _tile_release();
}

static void backward_part(struct part *part) {
    struct job *j = part->job;
    int H = j->H, G = 4 * H, kb_n = G / 32;
    size_t block = (size_t)kb_n * 512;
    __m512 one = _mm512_set1_ps(1.0f);
    tiles_on();
    for (int t = j->T - 1; t >= 0; t--) {
        bf16 *dg_bf = j->dg_bf[t & 1];
        for (int m = 0; m < j->B; m++) {
            size_t mine = (size_t)m * j->T + t;
            for (int ub = part->first_block; ub < part->end_block; ub++) {
                int u = ub * 16;
                const float *act = j->acts + acts_at(j, t, m, ub);
                __m512 i = _mm512_load_ps(act), f = _mm512_load_ps(act + 16);
                __m512 g = _mm512_load_ps(act + 32), o = _mm512_load_ps(act + 48);
                __m512 tc = tanh16(_mm512_load_ps(j->cs + cell_at(j, t, m, ub)));
                const float *c_prev = t ? j->cs + cell_at(j, t - 1, m, ub) : j->c0 + (size_t)m * H + u;
                float *dh_rec = j->dh_rec + (size_t)m * H + u, *dc_next = j->dc_next + (size_t)m * H + u;
                __m512 dh = _mm512_add_ps(load_bf16(j->dhs + mine * H + u), _mm512_loadu_ps(dh_rec));
                __m512 dc = _mm512_fmadd_ps(_mm512_mul_ps(dh, o), _mm512_fnmadd_ps(tc, tc, one),
                                            _mm512_loadu_ps(dc_next));
                _mm512_storeu_ps(dc_next, _mm512_mul_ps(dc, f));
                __m512 d[4] = {
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dc, g), i), _mm512_sub_ps(one, i)),
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dc, _mm512_loadu_ps(c_prev)), f),
                                  _mm512_sub_ps(one, f)),
                    _mm512_mul_ps(_mm512_mul_ps(dc, i), _mm512_fnmadd_ps(g, g, one)),
                    _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dh, tc), o), _mm512_sub_ps(one, o)),
                };
                for (int q = 0; q < 4; q++) {
                    store_bf16(dg_bf + (size_t)m * G + q * H + u, d[q]);
                    store_bf16(j->dg + mine * G + q * H + u, d[q]);
                    float *db = j->db + q * H + u;
                    _mm512_storeu_ps(db, _mm512_add_ps(_mm512_loadu_ps(db), d[q]));
                }
            }
        }
        barrier_wait(&j->barrier);
        /* dh_{t-1} for this thread's units: all of the gates' gradient times W_hh */
        for (int mb = 0; mb < j->padded / 16; mb++) {
            for (int ub = part->first_block; ub < part->end_block; ub += 4) {
                int n = part->end_block - ub < 4 ? part->end_block - ub : 4;
                tile_product(dg_bf + (size_t)mb * 16 * G, G * 2, kb_n, j->wb + (size_t)ub * block, block, n,
                             j->dh_rec + (size_t)mb * 16 * H + ub * 16, H * 4);
            }
        }
    }
    _tile_release();
}

/* Runs ``work`` on a team of OpenMP threads, each on its share of the unit blocks. OpenMP
 * rather than threads of our own: the runtime is torch's libgomp, already loaded, so the team
 * is made of torch's own threads and none of them spins on a core the kernel needs. */
static void run(struct job *j, int threads, void (*work)(struct part *)) {
    int blocks = j->H / 16, n = threads < 1 ? 1 : threads > blocks ? blocks : threads;
#pragma omp parallel num_threads(n)
    {
        int team = omp_get_num_threads(), k = omp_get_thread_num();
#pragma omp single
        {
            j->barrier.count = 0;
            j->barrier.generation = 0;
            j->barrier.threads = team;
        }
        struct part part = {j, k * blocks / team, (k + 1) * blocks / team};
        work(&part);
    }
}

/* Two zeroed bf16 buffers of ``padded`` rows of ``width``, in one allocation. */
static bf16 *two_buffers(struct job *j, int width, bf16 *pair[2]) {
    size_t each = ((size_t)j->padded * width * sizeof(bf16) + 63) / 64 * 64;
    bf16 *both = aligned_alloc(64, 2 * each);
    if (both) memset(both, 0, 2 * each);
    pair[0] = both;
    pair[1] = both ? both + each / sizeof(bf16) : NULL;
    return both;
}

int lstm_forward(int T, int B, int H, int threads, const bf16 *xg, const float *w, bf16 *wf, bf16 *wb,
                 const float *h0, const float *c0, bf16 *hs, float *cs, float *acts) {
    struct job j = {.T = T, .B = B, .H = H, .padded = (B + 15) / 16 * 16, .xg = xg, .w = w, .wf = wf,
                    .wb = wb, .h0 = h0, .c0 = c0, .hs = hs, .cs = cs, .acts = acts};
    bf16 *buffers = two_buffers(&j, H, j.h_bf);
    if (!buffers) return -1;
    for (size_t k = 0; k < (size_t)B * H; k += 16) store_bf16(j.h_bf[0] + k, _mm512_loadu_ps(h0 + k));
    run(&j, threads, forward_part);
    free(buffers);
    return 0;
}

int lstm_backward(int T, int B, int H, int threads, const bf16 *wb, const float *acts, const float *cs,
                  const float *c0, const bf16 *dhs, const float *dh_last, const float *dc_last, bf16 *dg,
                  float *db, float *dh_first, float *dc_first) {
    struct job j = {.T = T, .B = B, .H = H, .padded = (B + 15) / 16 * 16, .wb = (bf16 *)wb,
                    .acts = (float *)acts, .cs = (float *)cs, .c0 = c0, .dhs = dhs, .dg = dg, .db = db};
    size_t state = (size_t)j.padded * H;
    float *states = aligned_alloc(64, 2 * state * sizeof(float));
    bf16 *buffers = states ? two_buffers(&j, 4 * H, j.dg_bf) : NULL;
    if (!buffers) {
        free(states);
        return -1;
    }
    memset(states, 0, 2 * state * sizeof(float));
    j.dh_rec = states;
    j.dc_next = states + state;
    memcpy(j.dh_rec, dh_last, (size_t)B * H * sizeof(float));
    memcpy(j.dc_next, dc_last, (size_t)B * H * sizeof(float));
    memset(db, 0, (size_t)4 * H * sizeof(float));
    run(&j, threads, backward_part);
    memcpy(dh_first, j.dh_rec, (size_t)B * H * sizeof(float));
    memcpy(dc_first, j.dc_next, (size_t)B * H * sizeof(float));
    free(buffers);
    free(states);
    return 0;
}

/* c [M, N] f32 = a [M, K] bf16 times b [K, N] bf16, b packed like wb ([N/16][K/32][16][32]);
 * K a multiple of 32, N of 16, M any. For the gradients of the input (dg W_ih) and of the
 * weights (dg^T h and dg^T x) with sums in float32: torch's product of two bf16 matrices
 * rounds its result to bf16. Each thread takes whole blocks of 16 rows, so each sum is taken
 * in the same order whatever the number of threads. */
int matmul_bf16(int M, int K, int N, int threads, const bf16 *a, const bf16 *b, float *c) {
    int kb_n = K / 32, nb_n = N / 16, row_blocks = (M + 15) / 16, left = M % 16;
    size_t block = (size_t)kb_n * 512;
    bf16 *last = NULL; /* the last, partial block of rows, padded with zeros */
    float *spill = NULL;
    if (left) {
        last = aligned_alloc(64, (size_t)16 * K * sizeof(bf16));
        spill = aligned_alloc(64, (size_t)16 * N * sizeof(float));
        if (!last || !spill) {
            free(last);
            free(spill);
            return -1;
        }
        memset(last, 0, (size_t)16 * K * sizeof(bf16));
        memcpy(last, a + (size_t)(M - left) * K, (size_t)left * K * sizeof(bf16));
    }
#pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    {
        tiles_on();
#pragma omp for schedule(static)
        for (int rb = 0; rb < row_blocks; rb++) {
            int partial = left && rb == row_blocks - 1;
            const bf16 *rows = partial ? last : a + (size_t)rb * 16 * K;
            float *out = partial ? spill : c + (size_t)rb * 16 * N;
            for (int nb = 0; nb < nb_n; nb += 4)
                tile_product(rows, K * 2, kb_n, b + nb * block, block, nb_n - nb < 4 ? nb_n - nb : 4, out + nb * 16,
                             N * 4);
        }
        _tile_release();
    }
    if (left) memcpy(c + (size_t)(M - left) * N, spill, (size_t)left * N * sizeof(float));
    free(last);
    free(spill);
    return 0;
}
