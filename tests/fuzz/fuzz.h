/*
 * fuzz.h -- what the libFuzzer targets (tests/fuzz/fuzz_*.c) and the replay driver
 * (tests/fuzz/driver.c) share.
 *
 * A target defines LLVMFuzzerTestOneInput and, when it needs a set-up, LLVMFuzzerInitialize.
 * Linked with -fsanitize=fuzzer it is a libFuzzer binary (make fuzz); linked with driver.c it
 * is a replay test that runs the seeds and the saved regressions (make unit). Paths to files
 * of the source tree come in as -D defines (fuzz.mk).
 */
#ifndef FUZZ_H
#define FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* An invariant of the code under test: when it does not hold, the input is a finding. abort()
 * makes libFuzzer save the input; the replay driver fails. */
#define FUZZ_CHECK(cond)                                                                  \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: invariant does not hold: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                               \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

#endif
