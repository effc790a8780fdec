// What this machine's memory system alone charges for visiting one cold connection: N slots of
// SLOT bytes, visited 16 at a time at random (as `dsperf conns --batch 16` picks them), each
// visit first asking for LINES of the slot's cache lines (prefetch, all 16 slots), then reading
// and writing one word in each. Prints ns per visit at each N, the table in 4 KiB pages or with
// MADV_HUGEPAGE. With "chained", a slot's other lines are asked for only once its first line
// has been read (as the stack must: whether a slot holds a connection is in one of its lines);
// "tables" and "client" are described where they act. A floor for `dsperf conns`: what a stack
// that overlapped every miss of a batch would still pay.
//
//   gcc -O2 -o /tmp/memprobe docs/figures/memprobe.c && taskset -c 1 /tmp/memprobe [huge] [chained] [tables] [client] [slot=BYTES] [lines=N]
//
// slot= and lines= (default 704 and 9) size a slot and the lines a visit touches: e.g. the hot
// part of a control block split from its cold part into an array of its own.
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
    int huge = 0, chained = 0, client = 0, tables = 0;
    for (int a = 1; a < argc; a++) {
        huge |= strcmp(argv[a], "huge") == 0;
        chained |= strcmp(argv[a], "chained") == 0;
        client |= strcmp(argv[a], "client") == 0;
        tables |= strcmp(argv[a], "tables") == 0;
        sscanf(argv[a], "slot=%zu", &slot);
        sscanf(argv[a], "lines=%zu", &lines);
    }
    if (slot < 64 || lines < 1 || lines > slot / 64) return 2;
    size_t counts[] = {1000, 10000, 100000};
    for (int c = 0; c < 3; c++) {
        size_t n = counts[c], len = n * slot + (2 << 20);
        uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 1;
        if (huge) madvise(m, len, MADV_HUGEPAGE);
        memset(m, 1, len);
        // With "client", a second table as large, whose 16 slots a batch are visited (untimed)
        // between the timed batches, as `dsperf conns`' client stack does on the same core.
        uint8_t *cm = client ? mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) : NULL;
        if (cm == MAP_FAILED) return 1;
        if (cm) memset(cm, 1, len);
        double untimed = 0;
        // With "tables", each visit also goes through an index of 4-byte slot numbers (1.3 per
        // slot, at a random place, as the demultiplexer's) and a 16-byte timer entry per slot
        // (the `armed` array), found before the slot is, as `Interface::receive_batch` does.
        size_t nidx = n + n / 3;
        uint32_t *index = tables ? malloc(nidx * 4) : NULL;
        uint8_t *armed = tables ? malloc(n * 16) : NULL;
        if (tables) {
            for (size_t i = 0; i < nidx; i++) index[i] = (uint32_t)(i % n);
            memset(armed, 1, n * 16);
        }
        size_t at[64];
        volatile uint64_t sink = 0;
        size_t idx[64];
        for (int pass = 0; pass < 2; pass++) {  // the first pass warms what can be warm
            double t0 = now_ns();
            uint64_t acc = 0;
            for (size_t v = 0; v < visits; v += batch) {
                if (cm) {
                    double c0 = now_ns();
                    for (size_t b = 0; b < batch; b++) {
                        size_t i = next() % n;
                        for (size_t l = 0; l < lines + 2; l++) {
                            uint64_t *p = (uint64_t *)(cm + i * slot + (l % (slot / 64)) * 64);
                            *p += 1;
                        }
                    }
                    untimed += now_ns() - c0;
                }
                if (tables) {
                    for (size_t b = 0; b < batch; b++) {
                        at[b] = next() % nidx;
                        __builtin_prefetch(&index[at[b]]);
                    }
                    for (size_t b = 0; b < batch; b++) {
                        idx[b] = index[at[b]];  // a wait
                        __builtin_prefetch(armed + idx[b] * 16);
                    }
                }
                for (size_t b = 0; b < batch; b++) {
                    if (!tables) idx[b] = next() % n;
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
                if (tables)
                    for (size_t b = 0; b < batch; b++) armed[idx[b] * 16] += 1;
            }
            sink += acc;
            if (pass == 1)
                printf("{\"pages\":\"%s\",\"chained\":%s,\"client\":%s,\"tables\":%s,\"slot\":%zu,\"lines\":%zu,"
                       "\"connections\":%zu,\"ns_per_visit\":%.1f}\n", huge ? "huge" : "4k",
                       chained ? "true" : "false", client ? "true" : "false", tables ? "true" : "false", slot, lines, n,
                       (now_ns() - t0 - untimed) / visits);
            untimed = 0;
        }
        munmap(m, len);
        if (cm) munmap(cm, len);
        free(index);
        free(armed);
    }
    return 0;
}
