/* The batched `price_change` frame read from its bytes (_scan.c), and the token
 * table the store looks its asset ids up in. See _scan.c for why and for what the
 * reader takes. */
#ifndef RISKD_POLYMARKET_SCAN_H
#define RISKD_POLYMARKET_SCAN_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Room for at least one more item in a growing array (*v, holding *cap items of
 * `size` bytes; `first` items when empty, then twice as many): 0, or -1 when out of
 * memory (exception set). */
static inline int grow_items(void **v, Py_ssize_t *cap, size_t size, Py_ssize_t first) {
    Py_ssize_t n = *cap ? 2 * *cap : first;
    void *grown = PyMem_RawRealloc(*v, (size_t)n * size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *v = grown;
    *cap = n;
    return 0;
}

/* A string's text inside the frame (no quotes, no escapes); n < 0: not sent. */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Text;

/* A text known in advance (a key, a side), with its length. */
typedef struct {
    const char *s;
    Py_ssize_t n;
} Name;
#define NAME(s) {s, sizeof s - 1}

static inline int text_is(const Text *t, const Name *name) {
    Py_ssize_t n = name->n;
    if (t->n != n) return 0;
    /* Keys and sides are 4 to 16 bytes: two overlapping loads, no call. */
    if (n >= 8 && n <= 16) {
        uint64_t a, b, c, d;
        memcpy(&a, t->s, 8), memcpy(&b, name->s, 8);
        memcpy(&c, t->s + n - 8, 8), memcpy(&d, name->s + n - 8, 8);
        return a == b && c == d;
    }
    if (n >= 4 && n < 8) {
        uint32_t a, b, c, d;
        memcpy(&a, t->s, 4), memcpy(&b, name->s, 4);
        memcpy(&c, t->s + n - 4, 4), memcpy(&d, name->s + n - 4, 4);
        return a == b && c == d;
    }
    return memcmp(t->s, name->s, (size_t)n) == 0;
}

/* One entry of `price_changes[]` as sent, with its event's timestamp text. */
typedef struct {
    Text asset_id, price, size, side, best_bid, best_ask, timestamp;
    uint64_t hash; /* of asset_id, where the store computed it ahead (`tokens_hash`) */
} RawEntry;

/* Entries read so far (grown by scan_frame). */
typedef struct {
    RawEntry *v;
    Py_ssize_t n, cap;
} RawEntries;

/* 1: the frame is batched price_change events in the plain form, its entries in
 * `out` (replacing what was there); 0: it is not (the caller decodes it the general
 * way); -1: out of memory (exception set). */
int scan_frame(const char *s, Py_ssize_t n, RawEntries *out);

/* Token ids -> token index: open addressing over slots of one 16-byte line each, so
 * that a lookup reads its slot, then its key: two places in memory, not four. */
typedef struct {
    uint32_t tag;  /* the high half of the key's hash */
    int32_t tok;   /* token index, or -1 (empty) */
    PyObject *key; /* its id (a str of ASCII, held) */
} Slot;

typedef struct {
    Slot *slot;
    Py_ssize_t slots;
    uint64_t seed;
} TokenTable;

/* Built from the codec's index (str -> int in [0, n_tokens)); -1: out of memory or
 * an index the table cannot stand for (exception set). */
int tokens_init(TokenTable *t, PyObject *index, Py_ssize_t n_tokens, uint64_t seed);
void tokens_free(TokenTable *t);
/* The hash of these bytes in `t` (for tokens_find_hashed and tokens_prefetch). */
uint64_t tokens_hash(const TokenTable *t, const char *s, Py_ssize_t n);
/* The token index of these bytes, or -1 when the index has no such token. */
int32_t tokens_find_hashed(const TokenTable *t, const char *s, Py_ssize_t n, uint64_t h);
/* Ask the CPU for the slot a lookup of this hash starts at, ahead of the lookup. */
static inline void tokens_prefetch(const TokenTable *t, uint64_t h) {
    if (t->slots) __builtin_prefetch(&t->slot[h & (uint64_t)(t->slots - 1)]);
}

#endif
