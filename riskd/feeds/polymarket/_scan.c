/* The batched `price_change` frame read straight from its bytes.
 *
 * Nearly every frame the venue sends is one shape: an event (or a list of them) of
 * string fields, with a list of entries of string fields. msgspec decodes it into
 * structs, but it must make a Python str for each of ~25 values (77-digit token ids,
 * 40-digit hashes) that the store then reads back, hashes and drops: half of the
 * frame's decoding time (docs/performance.md, sixth round). This reader takes that
 * shape only, in the form the venue writes it, and gives the store the values' text
 * in place:
 * - objects with the known keys only, each at most once, in any order, between JSON
 *   whitespace;
 * - every value a string of printable ASCII without escapes;
 * - `event_type` exactly "price_change", at least one entry, at least one event.
 * Anything else (an escape, a number, null, another key, a repeated key, non-ASCII,
 * an empty list, trailing bytes) returns 0 and the frame goes to msgspec as before:
 * this reader never decides what a frame means, it only declines what it does not
 * know. Every frame it takes is valid JSON that msgspec's structs decode to the same
 * strings (tests/test_polymarket_scan.py checks both on the same frames). */
#include "_scan.h"

#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

typedef struct {
    const char *p, *end;
} Cur;

static void skip_ws(Cur *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
        c->p++;
}

/* The next byte (after whitespace) is `ch`: taken. */
static int eat(Cur *c, char ch) {
    if (c->p < c->end && *c->p == ch) { /* the venue's compact form: no whitespace */
        c->p++;
        return 1;
    }
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
/* Per byte of w, its high bit set where the byte is zero, or below n for n <= 128.
 * Exact at the lowest byte flagged (a borrow only reaches the bytes above it), and
 * exact throughout where no byte has its high bit set. */
#define HAS_ZERO(w) (((w) - ONES) & ~(w) & HIGHS)
#define HAS_LESS(w, n) (((w) - ONES * (n)) & ~(w) & HIGHS)

/* The first byte at or after q that is not in a plain string (a quote, a backslash,
 * or outside 0x20..0x7e), or `end`. Sixteen bytes at a time with SSE2 (every x86-64
 * CPU has it), eight elsewhere, then byte by byte. */
static const char *string_stop(const char *q, const char *end) {
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i space = _mm_set1_epi8(0x20), del = _mm_set1_epi8(0x7f);
    for (; end - q >= 16; q += 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)q);
        /* signed: below 0x20 is a control byte or one with its high bit set */
        __m128i odd = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                   _mm_or_si128(_mm_cmplt_epi8(v, space), _mm_cmpeq_epi8(v, del)));
        unsigned mask = (unsigned)_mm_movemask_epi8(odd);
        if (mask) return q + __builtin_ctz(mask);
    }
#endif
    for (; end - q >= 8; q += 8) {
        uint64_t w;
        memcpy(&w, q, 8);
        uint64_t odd = (w & HIGHS) | HAS_LESS(w, 0x20) | HAS_ZERO(w ^ (ONES * 0x7f)) |
                       HAS_ZERO(w ^ (ONES * '"')) | HAS_ZERO(w ^ (ONES * '\\'));
        if (odd) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return q + __builtin_ctzll(odd) / 8; /* the lowest flag: the first such byte */
#else
            break;
#endif
        }
    }
    for (; q < end; q++) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch > 0x7e) return q;
    }
    return end;
}

/* A string of printable ASCII without escapes: its text. */
static int plain_string(Cur *c, Text *t) {
    if (c->p >= c->end || *c->p != '"') {
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"') return 0;
    }
    const char *s = ++c->p, *q = string_stop(s, c->end);
    if (q == c->end || *q != '"') return 0;
    t->s = s;
    t->n = q - s;
    c->p = q + 1;
    return 1;
}

/* `"key":` with the key among `names`: its position (the bit of `seen` it takes),
 * -1 for any other key or a repeated one. */
static int field(Cur *c, const Name *names, int count, unsigned *seen) {
    Text key;
    if (!plain_string(c, &key) || !eat(c, ':')) return -1;
    for (int i = 0; i < count; i++)
        if (text_is(&key, &names[i])) {
            if (*seen & (1u << i)) return -1;
            *seen |= 1u << i;
            return i;
        }
    return -1;
}

static const Name ENTRY_KEYS[] = {NAME("asset_id"), NAME("price"),    NAME("size"),
                                  NAME("side"),     NAME("hash"),     NAME("best_bid"),
                                  NAME("best_ask")};
enum { E_ASSET, E_PRICE, E_SIZE, E_SIDE, E_HASH, E_BID, E_ASK };
#define ENTRY_NEEDS ((1u << E_ASSET) | (1u << E_PRICE) | (1u << E_SIZE) | (1u << E_SIDE))

static int entry(Cur *c, RawEntry *e) {
    if (!eat(c, '{')) return 0;
    unsigned seen = 0;
    e->best_bid.n = e->best_ask.n = -1;
    do {
        Text v;
        int k = field(c, ENTRY_KEYS, 7, &seen);
        if (k < 0 || !plain_string(c, &v)) return 0;
        Text *slot[] = {&e->asset_id, &e->price, &e->size, &e->side, NULL, &e->best_bid,
                        &e->best_ask};
        if (slot[k] != NULL) *slot[k] = v;
    } while (eat(c, ','));
    return eat(c, '}') && (seen & ENTRY_NEEDS) == ENTRY_NEEDS;
}

static const Name EVENT_KEYS[] = {NAME("event_type"), NAME("timestamp"), NAME("price_changes"),
                                  NAME("market")};
static const Name PRICE_CHANGE = NAME("price_change");
enum { V_TYPE, V_TS, V_CHANGES, V_MARKET };
#define EVENT_NEEDS ((1u << V_TYPE) | (1u << V_TS) | (1u << V_CHANGES))

/* One event: its entries appended to `out`. */
static int event(Cur *c, RawEntries *out) {
    if (!eat(c, '{')) return 0;
    unsigned seen = 0;
    Py_ssize_t first = out->n;
    Text ts = {NULL, -1};
    do {
        Text v;
        int k = field(c, EVENT_KEYS, 4, &seen);
        if (k < 0) return 0;
        if (k == V_CHANGES) {
            if (!eat(c, '[')) return 0;
            do {
                if (out->n == out->cap &&
                    grow_items((void **)&out->v, &out->cap, sizeof(RawEntry), 16) < 0)
                    return -1;
                if (!entry(c, &out->v[out->n])) return 0;
                out->n++;
            } while (eat(c, ','));
            if (!eat(c, ']')) return 0;
            continue;
        }
        if (!plain_string(c, &v)) return 0;
        if (k == V_TYPE && !text_is(&v, &PRICE_CHANGE)) return 0;
        if (k == V_TS) ts = v;
    } while (eat(c, ','));
    if (!eat(c, '}') || (seen & EVENT_NEEDS) != EVENT_NEEDS) return 0;
    for (Py_ssize_t i = first; i < out->n; i++) out->v[i].timestamp = ts;
    return 1;
}

int scan_frame(const char *s, Py_ssize_t n, RawEntries *out) {
    Cur c = {s, s + n};
    int r;
    out->n = 0;
    if (eat(&c, '[')) {
        do
            if ((r = event(&c, out)) <= 0) return r;
        while (eat(&c, ','));
        if (!eat(&c, ']')) return 0;
    } else if ((r = event(&c, out)) <= 0) {
        return r;
    }
    skip_ws(&c);
    return c.p == c.end;
}

/* --- token ids ------------------------------------------------------------------ */

/* A 64-bit mix of the bytes, eight at a time, keyed by a per-process seed (a venue
 * that names tokens cannot aim them at one slot). */
static uint64_t hash_bytes(const char *s, Py_ssize_t n, uint64_t seed) {
    uint64_t h = seed ^ ((uint64_t)n * 0x9e3779b97f4a7c15ull);
    for (; n >= 8; s += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
    }
    if (n > 0) {
        uint64_t w = 0;
        memcpy(&w, s, (size_t)n);
        h = (h ^ w) * 0x94d049bb133111ebull;
    }
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    return h ^ (h >> 32);
}

void tokens_free(TokenTable *t) {
    if (t->slot != NULL)
        for (Py_ssize_t i = 0; i < t->slots; i++) Py_XDECREF(t->slot[i].key);
    PyMem_RawFree(t->slot);
    t->slot = NULL;
    t->slots = 0;
}

uint64_t tokens_hash(const TokenTable *t, const char *s, Py_ssize_t n) {
    return hash_bytes(s, n, t->seed);
}

int32_t tokens_find_hashed(const TokenTable *t, const char *s, Py_ssize_t n, uint64_t h) {
    if (t->slots == 0) return -1;
    uint32_t tag = (uint32_t)(h >> 32);
    for (Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)(t->slots - 1));; i = (i + 1) & (t->slots - 1)) {
        const Slot *slot = &t->slot[i];
        if (slot->tok < 0) return -1;
        if (slot->tag == tag) {
            PyObject *key = slot->key;
            if (PyUnicode_GET_LENGTH(key) == n && memcmp(PyUnicode_DATA(key), s, (size_t)n) == 0)
                return slot->tok;
        }
    }
}

int tokens_init(TokenTable *t, PyObject *index, Py_ssize_t n_tokens, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->seed = seed;
    Py_ssize_t slots = 16;
    /* At most 4/5 full: 20-40 bytes a token, and a lookup that finds its token (nearly
     * all do) probes about three slots, next to each other. */
    while (slots * 4 < 5 * PyDict_GET_SIZE(index)) slots *= 2;
    if (!(t->slot = PyMem_RawMalloc((size_t)slots * sizeof(Slot)))) {
        PyErr_NoMemory();
        return -1;
    }
    t->slots = slots;
    for (Py_ssize_t i = 0; i < slots; i++) t->slot[i] = (Slot){0, -1, NULL};
    char *seen = PyMem_RawCalloc((size_t)(n_tokens ? n_tokens : 1), 1);
    if (seen == NULL) {
        tokens_free(t);
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(index, &pos, &key, &value)) {
        Py_ssize_t k = PyLong_Check(value) ? PyLong_AsSsize_t(value) : -1;
        if (!PyUnicode_CheckExact(key) || k < 0 || k >= n_tokens || seen[k]) {
            PyErr_Clear();
            PyMem_RawFree(seen);
            tokens_free(t);
            PyErr_SetString(PyExc_ValueError, "the token index must map distinct str to 0..n-1");
            return -1;
        }
        seen[k] = 1;
        /* Only plain ASCII text is looked up: any other id cannot equal it. */
        if (!PyUnicode_IS_ASCII(key)) continue;
        Py_ssize_t n = PyUnicode_GET_LENGTH(key);
        uint64_t h = hash_bytes(PyUnicode_DATA(key), n, seed);
        Py_ssize_t i = (Py_ssize_t)(h & (uint64_t)(slots - 1));
        while (t->slot[i].tok >= 0) i = (i + 1) & (slots - 1);
        t->slot[i] = (Slot){(uint32_t)(h >> 32), (int32_t)k, Py_NewRef(key)};
    }
    PyMem_RawFree(seen);
    return 0;
}
