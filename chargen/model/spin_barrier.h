/* A barrier for the threads of one OpenMP team that spin rather than sleep: the LSTM kernels
 * meet once a time step, a few microseconds apart, too often to hand the core back to the OS.
 * One counter and a generation number; set count and generation to 0 and threads to the team's
 * size before the first wait. Shared by lstm_amx.c and lstm_window.c. */
#ifndef CHARGEN_SPIN_BARRIER_H
#define CHARGEN_SPIN_BARRIER_H
#include <immintrin.h>

struct barrier {
    int count __attribute__((aligned(64)));
    int generation __attribute__((aligned(64)));
    int threads;
};

static void barrier_wait(struct barrier *b)
{
    int generation = __atomic_load_n(&b->generation, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == b->threads) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->generation, generation + 1, __ATOMIC_RELEASE);
        return;
    }
    while (__atomic_load_n(&b->generation, __ATOMIC_ACQUIRE) == generation)
        _mm_pause();
}

#endif
