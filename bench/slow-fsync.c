/*
 * slow-fsync.c: a preloaded library that makes every fsync and fdatasync of the process
 * (and of the processes it starts) take at least FLOWMARK_SLOW_FSYNC_MS longer, one at a
 * time, as on a disk whose synced write takes that long.
 *
 * It exists to measure Flowmark's durable paths on a disk like the one the runtime's speed
 * targets were written for (6.5 ms per synced write) on a machine whose disk is far faster.
 * The real call is made first, so durability is unchanged; the wait comes after it, under a
 * process-wide lock, because a disk flushes one request at a time.
 *
 * Built and preloaded by bench/slow-disk.sh; never linked into Flowmark.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

static pthread_mutex_t disk = PTHREAD_MUTEX_INITIALIZER;
static long delay_ns = -1;

static void wait_like_the_disk(void) {
    if (delay_ns < 0) {
        const char *ms = getenv("FLOWMARK_SLOW_FSYNC_MS");
        delay_ns = (long)((ms ? atof(ms) : 6.5) * 1e6);
        if (delay_ns < 0) delay_ns = 0;
    }
    struct timespec left = { delay_ns / 1000000000L, delay_ns % 1000000000L };
    while (nanosleep(&left, &left) != 0) {
    }
}

#define SLOW(name)                                                   \
    int name(int fd) {                                               \
        static int (*real)(int);                                     \
        if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, #name);     \
        pthread_mutex_lock(&disk);                                   \
        int result = real(fd);                                       \
        wait_like_the_disk();                                        \
        pthread_mutex_unlock(&disk);                                 \
        return result;                                               \
    }

SLOW(fsync)
SLOW(fdatasync)
