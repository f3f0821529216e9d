/* ids.c: the journal's ids in memory -- exact with colliding hashes, removals that keep every
 * other id findable, growth. */
#include <stdlib.h>
#include <string.h>

#include "journal/store.h"
#include "tap.h"

#define N 20000

/* the "journal": the id of each seq */
static char ids_of[N + 1][32];

static int same(void *cls, int64_t seq)
{
    return seq >= 1 && seq <= N && strcmp(ids_of[seq], cls) == 0;
}

int main(void)
{
    struct ids *s = ids_new();
    ok(s != NULL, "a table is made");

    /* forced collisions: every id gets the same hash; each is still told apart */
    for (int i = 1; i <= 50; i++) {
        snprintf(ids_of[i], sizeof ids_of[i], "collide-%d", i);
        ids_add(s, 42, i);
    }
    int exact = 1;
    for (int i = 1; i <= 50; i++)
        exact &= ids_find(s, 42, same, ids_of[i]) == i;
    ok(exact, "50 ids with one hash: each found under its own seq");
    ok(ids_find(s, 42, same, "collide-51") == 0, "an id with the same hash not journaled: new");
    for (int i = 1; i <= 50; i += 2)
        ids_remove(s, 42, i);
    int kept = 1;
    for (int i = 1; i <= 50; i++)
        kept &= ids_find(s, 42, same, ids_of[i]) == (i % 2 ? 0 : i);
    ok(kept, "removing half of them leaves the other half findable");
    ids_free(s);

    /* real hashes, growth past the first table, removals in random order */
    s = ids_new();
    for (int i = 1; i <= N; i++) {
        snprintf(ids_of[i], sizeof ids_of[i], "cloudflare:%08x-%d", (unsigned)rand(), i);
        if (ids_add(s, ids_hash(ids_of[i]), i) != 0)
            break;
    }
    ok(ids_count(s) == N, "%d ids added (the table grew)", N);
    int all = 1;
    for (int i = 1; i <= N; i++)
        all &= ids_find(s, ids_hash(ids_of[i]), same, ids_of[i]) == i;
    ok(all, "every id found under its seq");
    char removed[N + 1] = {0};
    srand(7);
    for (int k = 0; k < N / 2; k++) {
        int i = 1 + rand() % N;
        ids_remove(s, ids_hash(ids_of[i]), i);
        removed[i] = 1;
    }
    int right = 1;
    size_t left = 0;
    for (int i = 1; i <= N; i++) {
        right &= ids_find(s, ids_hash(ids_of[i]), same, ids_of[i]) == (removed[i] ? 0 : i);
        left += !removed[i];
    }
    ok(right, "after random removals: removed ids are new again, the others found");
    ok(ids_count(s) == left, "the count follows (%zu)", left);
    ok(ids_hash("a") != ids_hash("b"), "different ids, different hashes");
    ids_free(s);
    return done();
}
