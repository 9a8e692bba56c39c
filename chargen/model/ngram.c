/* The n-gram model's distributions and their mixture with a network's logits, row by row: the
 * generation engine's per-token work for a model with counts in one call instead of some
 * thirty small array operations (chargen/model/ngram.py computes the same in numpy where this
 * is not built, and says what the tables hold).
 *
 * The tables are every order's contexts in one sorted array of hashes; beside each context the
 * first of its entries, how many there are and its back-off weight; beside each entry its token
 * and its discounted share of the context's count.
 */
#include <math.h>
#include <stdint.h>

#define MULTIPLIER 0x9E3779B97F4A7C15ull /* ngram.py's _MULTIPLIER */

typedef struct {
    const uint64_t *contexts;
    int64_t size;
    const int64_t *buckets; /* where the contexts of each value of a hash's top bits begin */
    int64_t bits;
    const int64_t *starts;
    const int64_t *lengths;
    const double *backoff;
    const int64_t *tokens;
    const double *discounted;
} tables;

/* The index of ``hash`` among the contexts, or -1 where it was never counted. Hashes are
 * spread evenly, so a bucket holds about one context: two reads from memory, where a binary
 * search over megabytes of hashes would miss the cache a dozen times. */
static int64_t find(const tables *t, uint64_t hash)
{
    uint64_t bucket = hash >> (64 - t->bits);
    for (int64_t i = t->buckets[bucket]; i < t->buckets[bucket + 1]; i++)
        if (t->contexts[i] >= hash)
            return t->contexts[i] == hash ? i : -1;
    return -1;
}

#define MAX_ORDER 64 /* above config.MAX_NGRAM */

/* p (V values): the counts' distribution after a context state of ``order`` hashes, from the
 * lowest order up: each order found scales what the orders below gave by its back-off weight
 * and adds its own discounted counts. Every order is looked up before any is used, so that
 * the reads from memory (tables of many megabytes: most miss the cache) overlap instead of
 * waiting for one another. */
static void counted(const tables *t, const uint64_t *state, int order, int V, double *p)
{
    int64_t found[MAX_ORDER];
    for (int k = 0; k < order; k++) {
        __builtin_prefetch(t->buckets + (state[k] >> (64 - t->bits)));
    }
    for (int k = 0; k < order; k++) {
        found[k] = find(t, state[k]);
        if (found[k] >= 0) {
            __builtin_prefetch(t->starts + found[k]);
            __builtin_prefetch(t->lengths + found[k]);
            __builtin_prefetch(t->backoff + found[k]);
        }
    }
    for (int k = 0; k < order; k++)
        if (found[k] >= 0) {
            __builtin_prefetch(t->tokens + t->starts[found[k]]);
            __builtin_prefetch(t->discounted + t->starts[found[k]]);
        }
    for (int v = 0; v < V; v++)
        p[v] = 1.0 / V;
    for (int k = 0; k < order; k++) {
        int64_t i = found[k];
        if (i < 0)
            continue;
        double b = t->backoff[i];
        for (int v = 0; v < V; v++)
            p[v] *= b;
        for (int64_t e = t->starts[i]; e < t->starts[i] + t->lengths[i]; e++)
            p[t->tokens[e]] += t->discounted[e];
    }
}

void ngram_distribution(const tables *t, int rows, int order, const uint64_t *states, int V,
                        double *out)
{
    for (int r = 0; r < rows; r++)
        counted(t, states + (int64_t)r * order, order, V, out + (int64_t)r * V);
}

/* Where ``tokens`` is not NULL, each row's context state first reads its token (in place; the
 * hash ngram.py's ``advance`` computes). Then out[r] = log(weight * q + (1 - weight) *
 * counts[r]), where counts[r] is the counts' distribution with token ``never`` taken out and
 * the rest scaled up to sum to one, and q = softmax(network * logits[r] + exponent *
 * log(counts[r])), the network's distribution reweighted by the counts' (ngram.py's
 * ``Mixing``). ``work`` holds V doubles. Rows are ``stride`` floats apart, in ``logits`` and
 * ``out`` alike; ``out`` may be ``logits``. */
void ngram_mix(const tables *t, int rows, int order, uint64_t *states, const int64_t *tokens,
               int V, int64_t stride, const float *logits, double weight, double network,
               double exponent, int never, double *work, float *out)
{
    float a = (float)network, b = (float)exponent;
    for (int r = 0; r < rows; r++) {
        const float *row = logits + (int64_t)r * stride;
        uint64_t *state = states + (int64_t)r * order;
        if (tokens)
            for (int m = order - 1; m > 0; m--) {
                uint64_t h = (state[m - 1] ^ (uint64_t)(tokens[r] + 2)) * MULTIPLIER;
                state[m] = h ^ (h >> 29);
            }
        counted(t, state, order, V, work);
        double kept = 1.0 - work[never];
        work[never] = 0.0;
        /* the reweighted network goes where the mixture will be (row may be out) */
        float *mixed = out + (int64_t)r * stride;
        float most = -INFINITY;
        for (int v = 0; v < V; v++) {
            mixed[v] = a * row[v];
            if (b != 0.0f) /* log(0) for ``never``: minus infinity, as its logit is */
                mixed[v] += b * logf((float)work[v]);
            most = fmaxf(most, mixed[v]);
        }
        double sum = 0.0;
        for (int v = 0; v < V; v++) {
            mixed[v] = expf(mixed[v] - most);
            sum += mixed[v];
        }
        float share = (float)(weight / sum), counts = (float)((1.0 - weight) / kept);
        for (int v = 0; v < V; v++)
            mixed[v] = logf(share * mixed[v] + counts * (float)work[v]);
    }
}
