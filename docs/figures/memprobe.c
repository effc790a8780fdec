// What this machine's memory system alone charges for visiting one cold connection: N slots of
// SLOT bytes, visited 16 at a time at random (as `dsperf conns --batch 16` picks them), each
// visit first asking for LINES of the slot's cache lines (prefetch, all 16 slots), then reading
// and writing one word in each. Prints ns per visit at each N, the table in 4 KiB pages or with
// MADV_HUGEPAGE. With "chained", a slot's other lines are asked for only once its first line
// has been read (as the stack must: whether a slot holds a connection is in one of its lines).
// A floor for `dsperf conns`: what a stack that overlapped every miss of a batch would still pay.
//
//   gcc -O2 -o /tmp/memprobe docs/figures/memprobe.c && taskset -c 1 /tmp/memprobe [huge] [chained]
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

static uint64_t rng = 88172645463325252ull;
static inline uint64_t next(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng; }
static double now_ns(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }

int main(int argc, char **argv) {
    size_t slot = 704, lines = 9, batch = 16, visits = 2000000;
    int huge = 0, chained = 0;
    for (int a = 1; a < argc; a++) {
        huge |= strcmp(argv[a], "huge") == 0;
        chained |= strcmp(argv[a], "chained") == 0;
    }
    size_t counts[] = {1000, 10000, 100000};
    for (int c = 0; c < 3; c++) {
        size_t n = counts[c], len = n * slot + (2 << 20);
        uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 1;
        if (huge) madvise(m, len, MADV_HUGEPAGE);
        memset(m, 1, len);
        volatile uint64_t sink = 0;
        size_t idx[64];
        for (int pass = 0; pass < 2; pass++) {  // the first pass warms what can be warm
            double t0 = now_ns();
            uint64_t acc = 0;
            for (size_t v = 0; v < visits; v += batch) {
                for (size_t b = 0; b < batch; b++) {
                    idx[b] = next() % n;
                    for (size_t l = 0; l < (chained ? 1 : lines); l++)
                        __builtin_prefetch(m + idx[b] * slot + l * 64);
                }
                if (chained)
                    for (size_t b = 0; b < batch; b++) {
                        // The first line read (a wait), the others asked for if it says so.
                        if (*(volatile uint8_t *)(m + idx[b] * slot))
                            for (size_t l = 1; l < lines; l++)
                                __builtin_prefetch(m + idx[b] * slot + l * 64);
                    }
                for (size_t b = 0; b < batch; b++)
                    for (size_t l = 0; l < lines; l++) {
                        uint64_t *p = (uint64_t *)(m + idx[b] * slot + l * 64);
                        acc += *p; *p = acc;
                    }
            }
            sink += acc;
            if (pass == 1)
                printf("{\"pages\":\"%s\",\"chained\":%s,\"connections\":%zu,"
                       "\"ns_per_visit\":%.1f}\n", huge ? "huge" : "4k",
                       chained ? "true" : "false", n, (now_ns() - t0) / visits);
        }
        munmap(m, len);
    }
    return 0;
}
