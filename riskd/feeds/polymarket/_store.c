/* The Polymarket codec's state in compact storage, and its hot path compiled.
 *
 * `riskd/feeds/polymarket/store.py` (`PyStore`) is the reference: the same methods
 * on the codec's Book and TickMaker objects. This file keeps the same state in C
 * arrays (one Book struct per token, levels in insertion order, the tick maker's
 * last quote, time and depth per market) and reads the batched `price_change`
 * event, typed by msgspec, without a Python object per entry. Every rule is the
 * reference's, in its order; anything the fast path cannot settle (a price never
 * seen, a bad field) returns False and the codec reads the event in Python, where
 * the checks name the rejection. tests/test_polymarket_store.py runs both stores
 * on the same frames. Memory comes from malloc (PyMem_Raw*), not Python's small-object
 * pools: books that live for days must not pin pools that short-lived objects (a
 * start-up's hundred thousand published sets) used to fill.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_scan.h"

#define HAIR 1e-9          /* codec.HAIR */
#define DEPTH_CHANGE 0.05  /* codec.DEPTH_CHANGE */
#define TS_TOLERANCE 1.0   /* codec.TS_TOLERANCE_S */
#define MAX_DEPTH 1e12     /* base.MAX_DEPTH */
#define NONE NAN           /* a missing price: real prices are never NaN */
#define CACHE 4096         /* complements remembered (a power of two) */

typedef struct {
    double price, qty;
} Level;

/* One side's levels, in insertion order. Narrow (the venue's prices: multiples of
 * 0.0001, as nearly all are) keeps sizes as doubles, then prices as ticks of 0.0001
 * (uint16): 10 bytes a level, not 16; the books' levels are most of the store's
 * memory. A price off that grid, or -0.0, turns the side wide: Level[cap]. A tick
 * reads back as the very double it came from (`on_grid`). */
typedef struct {
    void *v;
    int32_t n;
    uint32_t cap : 31, wide : 1;
} Side;

#define TICKS 10000.0

/* The price's tick, or -1 when `tick / TICKS` would not give back this very double. */
static int32_t on_grid(double price) {
    if (!(price >= 0.0 && price <= 65535.0 / TICKS) || signbit(price)) return -1;
    int32_t k = (int32_t)lrint(price * TICKS);
    return k >= 0 && k <= 65535 && (double)k / TICKS == price ? k : -1;
}

static inline double *side_qty(const Side *s) { return (double *)s->v; }
static inline uint16_t *side_ticks(const Side *s) {
    return (uint16_t *)((double *)s->v + s->cap);
}
static inline double level_price(const Side *s, int32_t i) {
    return s->wide ? ((Level *)s->v)[i].price : (double)side_ticks(s)[i] / TICKS;
}
static inline double level_qty(const Side *s, int32_t i) {
    return s->wide ? ((Level *)s->v)[i].qty : side_qty(s)[i];
}
static inline void set_qty(Side *s, int32_t i, double qty) {
    if (s->wide)
        ((Level *)s->v)[i].qty = qty;
    else
        side_qty(s)[i] = qty;
}

typedef struct {
    Side bids, asks;
    double top_bid, top_ask;
    uint8_t exists, has_top, complete;
} Book;

/* One tick of a batch handed over as columns (riskd/ticks.py ROW: the same layout). */
typedef struct {
    int32_t market, unused;
    double ts, price, bid, ask, depth; /* NONE: not sent */
} Row;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n_tokens, n_markets, max_levels;
    Book *books;
    int32_t *tok_market;
    uint8_t *tok_no;
    int32_t *mkt_first; /* market k's tokens: mkt_toks[mkt_first[k] .. mkt_first[k+1]) */
    int32_t *mkt_toks;
    double *band;
    /* the tick maker, per market (NONE: not known) */
    uint8_t *has_quote;
    double *last_bid, *last_ask, *last_ts, *last_depth, *last_trade;
    /* the markets touched by the frame being decoded, in first-touch order */
    int32_t *touch_at; /* per market: its entry, or -1 */
    int32_t *t_mkt, *t_tok;
    double *t_ts;
    Py_ssize_t t_n, t_cap;
    Row *rows; /* ticks of the batch being decoded, when they are taken as columns */
    Py_ssize_t r_n, r_cap;
    int32_t *heard; /* markets heard in that batch, by row, when heard is taken so */
    Py_ssize_t h_n, h_cap;
    double received, max_future_s;
    PyObject *ids, *index, *prices, *unset, *make_tick, *complement;
    double c_key[CACHE], c_val[CACHE];
    uint8_t c_set[CACHE];
    /* frames read from their bytes (_scan.c): the token ids, the entries as sent and
     * as read; `scan` off: msgspec's structs only */
    TokenTable tokens;
    RawEntries raw, ahead; /* the frame being applied, and the next one read ahead */
    struct Entry *entries;
    Py_ssize_t e_cap;
    char scan;
} Store;

static PyObject *s_asset_id, *s_price, *s_size, *s_side, *s_best_bid, *s_best_ask,
    *s_timestamp, *s_price_changes, *s_crossed, *s_bad_ts, *s_future, *s_bad_size,
    *s_out_of_order;

/* --- one side of a book: levels in insertion order, as a dict keeps them ---------- */

static int side_find(const Side *s, double price) {
    if (s->wide) {
        const Level *v = s->v;
        for (int32_t i = 0; i < s->n; i++)
            if (v[i].price == price) return i;
        return -1;
    }
    /* -0.0 equals 0.0, as a dict's key and the wide side compare them */
    int32_t k = on_grid(price == 0.0 ? 0.0 : price);
    if (k < 0) return -1; /* off the grid: not among a narrow side's prices */
    const uint16_t *ticks = side_ticks(s);
    for (int32_t i = 0; i < s->n; i++)
        if (ticks[i] == k) return i;
    return -1;
}

static void side_del(Side *s, int32_t i) {
    size_t after = (size_t)(s->n - i - 1);
    if (s->wide) {
        Level *v = s->v;
        memmove(&v[i], &v[i + 1], after * sizeof(Level));
    } else {
        memmove(&side_qty(s)[i], &side_qty(s)[i + 1], after * sizeof(double));
        memmove(&side_ticks(s)[i], &side_ticks(s)[i + 1], after * sizeof(uint16_t));
    }
    s->n--;
}

/* Room for `cap` levels, wide or not, the levels kept in order; 0, or -1 when out of
 * memory (the side unchanged). */
static int side_resize(Side *s, uint32_t cap, int wide) {
    if (wide && !s->wide) { /* every level into a new array of Level */
        Level *v = PyMem_RawMalloc((size_t)cap * sizeof(Level));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (int32_t i = 0; i < s->n; i++) v[i] = (Level){level_price(s, i), level_qty(s, i)};
        PyMem_RawFree(s->v);
        s->v = v;
        s->wide = 1;
    } else if (s->wide) {
        Level *v = PyMem_RawRealloc(s->v, (size_t)cap * sizeof(Level));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        s->v = v;
    } else { /* narrow: the ticks move up behind the sizes' new room */
        void *v = PyMem_RawRealloc(s->v, (size_t)cap * (sizeof(double) + sizeof(uint16_t)));
        if (v == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memmove((double *)v + cap, (double *)v + s->cap, (size_t)s->n * sizeof(uint16_t));
        s->v = v;
    }
    s->cap = cap;
    return 0;
}

static int side_append(Side *s, double price, double qty) {
    int32_t k = s->wide ? -1 : on_grid(price);
    int wide = s->wide || k < 0;
    if ((uint32_t)s->n == s->cap || wide != s->wide) {
        /* By half, not double: the books' levels are most of the store's memory, and
         * the slack of a side that stopped growing is at most a third, not a half. */
        uint32_t cap = s->cap;
        if ((uint32_t)s->n == cap) cap = cap ? cap + (cap + 1) / 2 : 2;
        if (side_resize(s, cap, wide) < 0) return -1;
    }
    if (s->wide) {
        ((Level *)s->v)[s->n] = (Level){price, qty};
    } else {
        side_qty(s)[s->n] = qty;
        side_ticks(s)[s->n] = (uint16_t)k;
    }
    s->n++;
    return 0;
}

static void side_free(Side *s) {
    PyMem_RawFree(s->v);
    s->v = NULL;
    s->n = 0;
    s->cap = 0;
    s->wide = 0;
}

/* codec.put_level: qty <= 0 removes; when full, a better level replaces the worst. */
static int put_level(Side *s, double price, double qty, int bids, Py_ssize_t max_levels) {
    int32_t i = side_find(s, price);
    if (qty <= 0) {
        if (i >= 0) side_del(s, i);
        return 0;
    }
    if (i >= 0) {
        set_qty(s, i, qty);
        return 0;
    }
    if (s->n >= max_levels && s->n > 0) {
        int32_t w = 0;
        for (int32_t k = 1; k < s->n; k++)
            if (bids ? level_price(s, k) < level_price(s, w) : level_price(s, k) > level_price(s, w))
                w = k;
        double worst = level_price(s, w);
        if (bids ? price <= worst : price >= worst) return 0;
        side_del(s, w);
    }
    return side_append(s, price, qty);
}

/* codec.band_depth: sum() of the levels at or inside `edge`, in insertion order. */
static double band_depth(const Side *s, double edge, int bids) {
    double total = 0.0;
#if PY_VERSION_HEX >= 0x030C0000
    double c = 0.0; /* sum() of floats is compensated (Neumaier) since 3.12 */
#endif
    for (int32_t i = 0; i < s->n; i++) {
        double p = level_price(s, i), x = level_qty(s, i);
        if (bids ? !(p >= edge) : !(p <= edge)) continue;
#if PY_VERSION_HEX >= 0x030C0000
        double t = total + x;
        if (fabs(total) >= fabs(x))
            c += (total - t) + x;
        else
            c += (x - t) + total;
        total = t;
#else
        total += x;
#endif
    }
#if PY_VERSION_HEX >= 0x030C0000
    if (c && isfinite(c)) total += c;
#endif
    return total;
}

/* Book.quote: 0 with no quote, else 1 with bid/ask (NONE when absent) and depth. */
static int book_quote(const Book *b, double band, double *bid, double *ask, double *depth) {
    if (!b->exists) return 0;
    if (b->has_top) {
        *bid = b->top_bid;
        *ask = b->top_ask;
    } else if (b->complete) {
        *bid = NONE;
        for (int32_t i = 0; i < b->bids.n; i++)
            if (isnan(*bid) || level_price(&b->bids, i) > *bid) *bid = level_price(&b->bids, i);
        *ask = NONE;
        for (int32_t i = 0; i < b->asks.n; i++)
            if (isnan(*ask) || level_price(&b->asks, i) < *ask) *ask = level_price(&b->asks, i);
    } else {
        return 0;
    }
    if (isnan(*bid) && isnan(*ask)) {
        *depth = NONE;
    } else if (isnan(*bid) || isnan(*ask)) {
        *depth = 0.0;
    } else {
        double mid = 0.5 * (*bid + *ask);
        double lo = band_depth(&b->bids, mid - band - HAIR, 1);
        double hi = band_depth(&b->asks, mid + band + HAIR, 0);
        *depth = hi < lo ? hi : lo;
    }
    return 1;
}

static void book_clear(Book *b) {
    side_free(&b->bids);
    side_free(&b->asks);
    b->exists = b->has_top = b->complete = 0;
    b->top_bid = b->top_ask = NONE;
}

/* --- helpers ------------------------------------------------------------------- */

static PyObject *opt(double x) { /* NONE -> None */
    if (isnan(x)) Py_RETURN_NONE;
    return PyFloat_FromDouble(x);
}

static int opt_arg(PyObject *o, double *x) { /* None -> NONE */
    if (o == Py_None) {
        *x = NONE;
        return 0;
    }
    *x = PyFloat_AsDouble(o);
    return (*x == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

/* codec.complement (round(1 - p, 10), which only Python's round gives exactly),
 * remembered per value. */
static int complement(Store *st, double p, double *out) {
    uint64_t bits;
    memcpy(&bits, &p, sizeof bits);
    size_t slot = (size_t)((bits ^ (bits >> 29)) * 0x9E3779B97F4A7C15ull >> 52) & (CACHE - 1);
    if (st->c_set[slot] && memcmp(&st->c_key[slot], &p, sizeof p) == 0) {
        *out = st->c_val[slot];
        return 0;
    }
    PyObject *arg = PyFloat_FromDouble(p);
    if (arg == NULL) return -1;
    PyObject *r = PyObject_CallOneArg(st->complement, arg);
    Py_DECREF(arg);
    if (r == NULL) return -1;
    *out = PyFloat_AsDouble(r);
    Py_DECREF(r);
    if (*out == -1.0 && PyErr_Occurred()) return -1;
    st->c_set[slot] = 1;
    st->c_key[slot] = p;
    st->c_val[slot] = *out;
    return 0;
}

/* codec._quote: the market's YES quote from this token's book, else its siblings'. */
static int yes_quote(Store *st, int32_t tok, double *bid, double *ask, double *depth) {
    int32_t m = st->tok_market[tok];
    int32_t t = tok, k = st->mkt_first[m];
    for (;;) {
        if (book_quote(&st->books[t], st->band[m], bid, ask, depth)) break;
        if (k >= st->mkt_first[m + 1]) return 0;
        t = st->mkt_toks[k++];
    }
    if (st->tok_no[t]) {
        double b = *bid, a = *ask;
        *bid = NONE;
        *ask = NONE;
        if (!isnan(a) && complement(st, a, bid) < 0) return -1;
        if (!isnan(b) && complement(st, b, ask) < 0) return -1;
    }
    return 1;
}

static int check_token(Store *st, Py_ssize_t tok) {
    if (tok < 0 || tok >= st->n_tokens) {
        PyErr_SetString(PyExc_IndexError, "token index out of range");
        return -1;
    }
    return 0;
}

static int check_market(Store *st, Py_ssize_t m) {
    if (m < 0 || m >= st->n_markets) {
        PyErr_SetString(PyExc_IndexError, "market index out of range");
        return -1;
    }
    return 0;
}

/* --- the tick maker (codec.TickMaker), per market index ------------------------- */

typedef struct {
    PyObject *ticks, *rejected, *depths;
} Out;

static int reject(Out *out, PyObject *reason) { return PyList_Append(out->rejected, reason); }

/* TickMaker.depth */
static int maker_depth(Store *st, int32_t m, double depth, Out *out) {
    if (isnan(depth) || !(0.0 <= depth && depth <= MAX_DEPTH)) return 0;
    double prev = st->last_depth[m];
    if (!isnan(prev) && fabs(depth - prev) <= DEPTH_CHANGE * prev &&
        (depth > 0.0) == (prev > 0.0))
        return 0;
    if (isnan(prev) && !st->has_quote[m]) return 0;
    st->last_depth[m] = depth;
    PyObject *d = PyFloat_FromDouble(depth);
    if (d == NULL) return -1;
    int r = PyDict_SetItem(out->depths, PyList_GET_ITEM(st->ids, m), d);
    Py_DECREF(d);
    return r;
}

static int add_row(Store *st, int32_t m, double ts, double price, double bid, double ask,
                   double depth) {
    if (st->r_n == st->r_cap && grow_items((void **)&st->rows, &st->r_cap, sizeof(Row), 256) < 0)
        return -1;
    Row *r = &st->rows[st->r_n++];
    r->market = m;
    r->unused = 0;
    r->ts = ts;
    r->price = price;
    r->bid = bid;
    r->ask = ask;
    r->depth = depth;
    return 0;
}

/* TickMaker._emit: the tick into `out->ticks`, or a row when that is None */
static int maker_emit(Store *st, int32_t m, double ts, double bid, double ask, double depth,
                      double last, Out *out) {
    double price;
    if (!isnan(bid) && !isnan(ask) && bid > ask) return reject(out, s_crossed);
    if (!isnan(bid) && !isnan(ask)) {
        price = 0.5 * (bid + ask);
    } else if (!isnan(last)) {
        price = !isnan(bid) ? (bid > last ? bid : last) : last;
        if (!isnan(ask)) price = ask < price ? ask : price;
    } else if (!isnan(bid) || !isnan(ask)) {
        price = !isnan(bid) ? bid : ask;
    } else {
        return 0;
    }
    if (!(ts > 0.0)) return reject(out, s_bad_ts);
    if (ts > st->received + st->max_future_s) return reject(out, s_future);
    if (!isnan(depth) && !(0.0 <= depth && depth <= MAX_DEPTH)) return reject(out, s_bad_size);
    double prev = st->last_ts[m];
    if (!isnan(prev) && ts < prev) {
        if (ts < prev - TS_TOLERANCE) return reject(out, s_out_of_order);
        ts = prev;
    }
    st->last_ts[m] = ts;
    st->has_quote[m] = 1;
    st->last_bid[m] = bid;
    st->last_ask[m] = ask;
    if (!isnan(depth)) st->last_depth[m] = depth;
    if (out->ticks == Py_None) return add_row(st, m, ts, price, bid, ask, depth);
    PyObject *args[6] = {PyList_GET_ITEM(st->ids, m), PyFloat_FromDouble(ts),
                         PyFloat_FromDouble(price), opt(bid), opt(ask), opt(depth)};
    PyObject *tick = NULL;
    if (args[1] && args[2] && args[3] && args[4] && args[5])
        tick = PyObject_Vectorcall(st->make_tick, args, 6, NULL);
    for (int i = 1; i < 6; i++) Py_XDECREF(args[i]);
    if (tick == NULL) return -1;
    int r = PyList_Append(out->ticks, tick);
    Py_DECREF(tick);
    return r;
}

static int same(double a, double b) { return a == b || (isnan(a) && isnan(b)); }

/* TickMaker.quote: a tick if the top moved, else perhaps a depth change. */
static int maker_quote(Store *st, int32_t m, double ts, double bid, double ask, double depth,
                       Out *out) {
    if (st->has_quote[m] && same(st->last_bid[m], bid) && same(st->last_ask[m], ask))
        return maker_depth(st, m, depth, out);
    return maker_emit(st, m, ts, bid, ask, depth, st->last_trade[m], out);
}

/* --- the frame's touched markets ----------------------------------------------- */

static int touch(Store *st, int32_t m, double ts, int32_t tok) {
    int32_t at = st->touch_at[m];
    if (at >= 0) {
        st->t_ts[at] = ts;
        st->t_tok[at] = tok;
        return 0;
    }
    if (st->t_n == st->t_cap) {
        Py_ssize_t cap = st->t_cap ? 2 * st->t_cap : 64;
        int32_t *a = PyMem_RawRealloc(st->t_mkt, (size_t)cap * sizeof(int32_t));
        if (a) st->t_mkt = a;
        int32_t *b = PyMem_RawRealloc(st->t_tok, (size_t)cap * sizeof(int32_t));
        if (b) st->t_tok = b;
        double *c = PyMem_RawRealloc(st->t_ts, (size_t)cap * sizeof(double));
        if (c) st->t_ts = c;
        if (!a || !b || !c) {
            PyErr_NoMemory();
            return -1;
        }
        st->t_cap = cap;
    }
    st->touch_at[m] = (int32_t)st->t_n;
    st->t_mkt[st->t_n] = m;
    st->t_ts[st->t_n] = ts;
    st->t_tok[st->t_n] = tok;
    st->t_n++;
    return 0;
}

/* A market heard in a batch whose heard markets are taken as rows (`take_heard`). */
static int hear(Store *st, int32_t m) {
    if (st->h_n == st->h_cap && grow_items((void **)&st->heard, &st->h_cap, sizeof(int32_t), 256) < 0)
        return -1;
    st->heard[st->h_n++] = m;
    return 0;
}

static void untouch(Store *st, int32_t m) {
    int32_t at = st->touch_at[m];
    if (at >= 0) {
        st->t_mkt[at] = -1;
        st->touch_at[m] = -1;
    }
}

/* --- the batched price_change, typed ------------------------------------------- */

typedef struct Entry {
    int32_t tok;
    uint8_t buy, top;
    double price, qty, bid, ask;
    double ts; /* its event's time in seconds (read from bytes only) */
} Entry;

/* Digits alone, 1 to 15 of them: exactly as float() reads them (the text of
 * `str_float`'s own case and of a scanned timestamp). */
static int text_digits(const Text *t, double *x) {
    if (t->n < 1 || t->n > 15) return 0;
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        if (t->s[i] < '0' || t->s[i] > '9') return 0;
        v = 10 * v + (t->s[i] - '0');
    }
    *x = (double)v;
    return 1;
}

/* A float from a str the way float() reads it; 0 when it is not one. Digits alone
 * (a timestamp in ms, a whole size), at most 15 of them, are read here: their value
 * is an integer below 2^53, which float() gives exactly too; anything else goes to
 * float() itself (its parser costs ~100 ns a call, most of it saving and restoring
 * the FPU's control word). */
static int str_float(PyObject *s, double *x) {
    if (!PyUnicode_CheckExact(s)) return 0;
    if (PyUnicode_IS_ASCII(s)) {
        Text t = {(const char *)PyUnicode_DATA(s), PyUnicode_GET_LENGTH(s)};
        if (text_digits(&t, x)) return 1;
    }
    PyObject *f = PyFloat_FromString(s);
    if (f == NULL) {
        PyErr_Clear();
        return 0;
    }
    *x = PyFloat_AS_DOUBLE(f);
    Py_DECREF(f);
    return 1;
}

/* A price seen before (codec.PRICES); 0 for any other: the codec parses it. */
static int known_price(Store *st, PyObject *s, double *x) {
    if (!PyUnicode_CheckExact(s)) return 0;
    PyObject *f = PyDict_GetItemWithError(st->prices, s);
    if (f == NULL || !PyFloat_CheckExact(f)) {
        PyErr_Clear();
        return 0;
    }
    *x = PyFloat_AS_DOUBLE(f);
    return 1;
}

static int attr(PyObject *o, PyObject *name, PyObject **v) {
    *v = PyObject_GetAttr(o, name);
    if (*v == NULL) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* One entry, checked as PolymarketCodec._price_changes checks it: 1 if it passed,
 * 0 if the codec must read the event itself. */
static int read_entry(Store *st, PyObject *change, Entry *e) {
    PyObject *token = NULL, *side = NULL, *price = NULL, *size = NULL, *bid = NULL,
             *ask = NULL;
    int ok = 0;
    if (!attr(change, s_asset_id, &token) || !PyUnicode_CheckExact(token) ||
        PyUnicode_GET_LENGTH(token) == 0)
        goto done;
    if (!attr(change, s_side, &side) || !PyUnicode_CheckExact(side)) goto done;
    if (PyUnicode_CompareWithASCIIString(side, "BUY") == 0)
        e->buy = 1;
    else if (PyUnicode_CompareWithASCIIString(side, "SELL") == 0)
        e->buy = 0;
    else
        goto done;
    if (!attr(change, s_price, &price) || !known_price(st, price, &e->price)) goto done;
    if (!attr(change, s_size, &size) || !str_float(size, &e->qty)) goto done;
    if (!isfinite(e->qty) || fabs(e->qty) > MAX_DEPTH) goto done;
    if (!attr(change, s_best_bid, &bid) || !attr(change, s_best_ask, &ask)) goto done;
    e->top = !(bid == st->unset && ask == st->unset);
    e->bid = e->ask = NONE;
    if (bid != st->unset && !(PyUnicode_CheckExact(bid) && PyUnicode_GET_LENGTH(bid) == 0)) {
        double x;
        if (!known_price(st, bid, &x)) goto done;
        if (x != 0.0) e->bid = x; /* 0: no bid */
    }
    if (ask != st->unset && !(PyUnicode_CheckExact(ask) && PyUnicode_GET_LENGTH(ask) == 0)) {
        double x;
        if (!known_price(st, ask, &x)) goto done;
        if (x < 1.0 && x != 0.0) e->ask = x; /* 1 (or 0): no ask */
    }
    PyObject *idx = PyDict_GetItemWithError(st->index, token);
    if (idx == NULL) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            goto done;
        }
        e->tok = -1; /* the other token of a market followed by one token only */
    } else {
        Py_ssize_t k = PyLong_AsSsize_t(idx);
        if (k < 0 || k >= st->n_tokens) {
            PyErr_Clear();
            goto done;
        }
        e->tok = (int32_t)k;
    }
    ok = 1;
done:
    Py_XDECREF(token);
    Py_XDECREF(side);
    Py_XDECREF(price);
    Py_XDECREF(size);
    Py_XDECREF(bid);
    Py_XDECREF(ask);
    return ok;
}

static int apply_entry(Store *st, const Entry *e, double ts) {
    if (e->tok < 0) return 0;
    Book *b = &st->books[e->tok];
    if (!b->exists) {
        book_clear(b);
        b->exists = 1;
    }
    if (put_level(e->buy ? &b->bids : &b->asks, e->price, e->qty, e->buy, st->max_levels) < 0)
        return -1;
    b->has_top = e->top;
    b->top_bid = e->top ? e->bid : NONE;
    b->top_ask = e->top ? e->ask : NONE;
    return touch(st, st->tok_market[e->tok], ts, e->tok);
}

static PyObject *Store_price_changes(Store *st, PyObject *event) {
    PyObject *stamp = NULL, *changes = NULL, *result = Py_False;
    Entry small[8], *entries = small;
    double ts;
    if (!attr(event, s_timestamp, &stamp) || !str_float(stamp, &ts)) goto done;
    if (!isfinite(ts) || !(ts > 0)) goto done;
    ts /= 1000.0;
    if (!attr(event, s_price_changes, &changes) || !PyList_CheckExact(changes)) goto done;
    Py_ssize_t n = PyList_GET_SIZE(changes);
    if (n > 8 && (entries = PyMem_RawMalloc((size_t)n * sizeof(Entry))) == NULL) {
        entries = small;
        PyErr_NoMemory();
        result = NULL;
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (!read_entry(st, PyList_GET_ITEM(changes, i), &entries[i])) goto done;
    for (Py_ssize_t i = 0; i < n; i++)  /* all or nothing: every entry passed */
        if (apply_entry(st, &entries[i], ts) < 0) {
            result = NULL;
            goto done;
        }
    result = Py_True;
done:
    if (entries != small) PyMem_RawFree(entries);
    Py_XDECREF(stamp);
    Py_XDECREF(changes);
    Py_XINCREF(result);
    return result;
}

/* --- the same entries, read from the frame's bytes (_scan.c) ----------------------- */

static const double POW10[16] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};

/* Digits with at most one '.', 1 to 15 digits in all: float() of the text, exactly.
 * The digits' integer (below 2^53) and the power of ten (at most 1e15) are both exact
 * doubles, and IEEE division rounds their quotient correctly, as float() rounds the
 * decimal. Signs, exponents and longer texts are left to float(). */
static int text_decimal(const Text *t, double *x) {
    int64_t v = 0;
    int digits = 0, frac = -1;
    for (Py_ssize_t i = 0; i < t->n; i++) {
        char ch = t->s[i];
        if (ch >= '0' && ch <= '9') {
            if (++digits > 15) return 0;
            v = 10 * v + (ch - '0');
            if (frac >= 0) frac++;
        } else if (ch == '.' && frac < 0) {
            frac = 0;
        } else {
            return 0;
        }
    }
    if (digits == 0) return 0;
    *x = (double)v / POW10[frac < 0 ? 0 : frac];
    return 1;
}

/* A price: what `probability` gives for the text (known_price's table holds exactly
 * those), when it is a plain decimal in [0, 1]. */
static int text_price(const Text *t, double *x) {
    return text_decimal(t, x) && *x >= 0.0 && *x <= 1.0;
}

static const Name BUY = NAME("BUY"), SELL = NAME("SELL");

/* One entry as sent, checked as read_entry checks the typed one: 1 if it passed, 0 if
 * the frame must take the typed path (which may hand it on to the codec). */
static int scan_entry(Store *st, const RawEntry *r, Entry *e) {
    double ts;
    if (!text_digits(&r->timestamp, &ts) || !(ts > 0)) return 0;
    e->ts = ts / 1000.0;
    if (r->asset_id.n == 0) return 0;
    if (text_is(&r->side, &BUY))
        e->buy = 1;
    else if (text_is(&r->side, &SELL))
        e->buy = 0;
    else
        return 0;
    if (!text_price(&r->price, &e->price)) return 0;
    if (!text_decimal(&r->size, &e->qty) || fabs(e->qty) > MAX_DEPTH) return 0;
    e->top = r->best_bid.n >= 0 || r->best_ask.n >= 0;
    e->bid = e->ask = NONE;
    double x;
    if (r->best_bid.n > 0) {
        if (!text_price(&r->best_bid, &x)) return 0;
        if (x != 0.0) e->bid = x; /* 0: no bid */
    }
    if (r->best_ask.n > 0) {
        if (!text_price(&r->best_ask, &x)) return 0;
        if (x < 1.0 && x != 0.0) e->ask = x; /* 1 (or 0): no ask */
    }
    e->tok = tokens_find_hashed(&st->tokens, r->asset_id.s, r->asset_id.n, r->hash);
    return 1;
}

/* A frame's entries read from its bytes into `raw` (scan_frame's result), each
 * token's slot asked of the memory at once: a batch reads the next frame while it
 * applies this one, so the slots arrive meanwhile. */
static int scan_read(Store *st, PyObject *frame, RawEntries *raw) {
    int r = scan_frame(PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame), raw);
    if (r > 0)
        for (Py_ssize_t i = 0; i < raw->n; i++) {
            RawEntry *e = &raw->v[i];
            e->hash = tokens_hash(&st->tokens, e->asset_id.s, e->asset_id.n);
            tokens_prefetch(&st->tokens, e->hash);
        }
    return r;
}

/* The frame read into st->raw (`scan_read`) applied, all or nothing: 1 taken, 0 not
 * (nothing changed: the typed path reads it), -1 out of memory. */
static int scan_apply(Store *st) {
    if (st->raw.n > st->e_cap) {
        Entry *e = PyMem_RawRealloc(st->entries, (size_t)st->raw.cap * sizeof(Entry));
        if (e == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        st->entries = e;
        st->e_cap = st->raw.cap;
    }
    for (Py_ssize_t i = 0; i < st->raw.n; i++)
        if (!scan_entry(st, &st->raw.v[i], &st->entries[i])) return 0;
    for (Py_ssize_t i = 0; i < st->raw.n; i++)
        if (apply_entry(st, &st->entries[i], st->entries[i].ts) < 0) return -1;
    return 1;
}

static int finish(Store *st, Out *out, PyObject *heard);
static int out_args(PyObject *const *args, Out *out);

/* The `heard` argument of frames() and finish(): a list, or None for rows (NULL);
 * 0, or -1 for anything else (no exception set). */
static int heard_arg(PyObject *arg, PyObject **heard) {
    *heard = arg == Py_None ? NULL : arg;
    return arg == Py_None || PyList_Check(arg) ? 0 : -1;
}

/* frames(frames, start, decode, rejected, depths, heard): frames[start:] read
 * together, ticks as rows (heard too when heard is None: `take_heard`), while each
 * is a batched price_change the compiled path takes whole. Returns (k, events, at): frames before k are done; frame k (if k <
 * len(frames)) is the codec's from its event `at` on, with `events` its decoded
 * events (None: msgspec did not take it, or a short frame that may be a PONG). */
static PyObject *Store_frames(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    Out out;
    PyObject *heard;
    if (nargs != 6 || !PyList_CheckExact(args[0]) || heard_arg(args[5], &heard) < 0) {
        PyErr_SetString(PyExc_TypeError, "frames(frames, start, decode, rejected, depths, heard)");
        return NULL;
    }
    PyObject *frames = args[0], *decode = args[2];
    PyObject *none_ticks[3] = {Py_None, args[3], args[4]};
    if (out_args(none_ticks, &out) < 0) return NULL;
    Py_ssize_t k = PyLong_AsSsize_t(args[1]), n = PyList_GET_SIZE(frames);
    if (k == -1 && PyErr_Occurred()) return NULL;
    enum { NOT_READ = -2 };
    int ahead = NOT_READ; /* frames[k] read ahead (scan_read's result) */
    for (; k < n; k++) {
        PyObject *frame = PyList_GET_ITEM(frames, k);
        if (!PyBytes_CheckExact(frame) || PyBytes_GET_SIZE(frame) < 16)
            return Py_BuildValue("(nOn)", k, Py_None, (Py_ssize_t)0);
        if (st->scan) {
            int r = ahead;
            if (r == NOT_READ)
                r = scan_read(st, frame, &st->raw);
            else { /* read ahead: its entries are in st->ahead */
                RawEntries swap = st->raw;
                st->raw = st->ahead;
                st->ahead = swap;
            }
            ahead = NOT_READ;
            if (r < 0) return NULL;
            if (r > 0 && k + 1 < n) {
                PyObject *next = PyList_GET_ITEM(frames, k + 1);
                if (PyBytes_CheckExact(next) && PyBytes_GET_SIZE(next) >= 16) {
                    ahead = scan_read(st, next, &st->ahead);
                    if (ahead < 0) { /* out of memory: read again in its turn */
                        PyErr_Clear();
                        ahead = NOT_READ;
                    }
                }
            }
            if (r > 0 && (r = scan_apply(st)) < 0) return NULL;
            if (r > 0) {
                if (finish(st, &out, heard) < 0) return NULL;
                continue;
            }
        }
        PyObject *batch = PyObject_CallOneArg(decode, frame);
        if (batch == NULL) { /* not typed: the codec parses it again its own way */
            PyErr_Clear();
            return Py_BuildValue("(nOn)", k, Py_None, (Py_ssize_t)0);
        }
        PyObject *events = batch;
        Py_ssize_t m = 1;
        if (PyList_CheckExact(batch)) m = PyList_GET_SIZE(batch);
        for (Py_ssize_t i = 0; i < m; i++) {
            PyObject *event = PyList_CheckExact(batch) ? PyList_GET_ITEM(batch, i) : batch;
            PyObject *r = Store_price_changes(st, event);
            if (r == NULL) {
                Py_DECREF(batch);
                return NULL;
            }
            Py_DECREF(r);
            if (r != Py_True) {
                if (!PyList_CheckExact(batch)) { /* the codec wants a sequence */
                    events = PyList_New(1);
                    if (events == NULL) {
                        Py_DECREF(batch);
                        return NULL;
                    }
                    PyList_SET_ITEM(events, 0, batch);
                }
                return Py_BuildValue("(nNn)", k, events, i);
            }
        }
        Py_DECREF(batch);
        if (finish(st, &out, heard) < 0) return NULL;
    }
    return Py_BuildValue("(nOn)", k, Py_None, (Py_ssize_t)0);
}

/* --- methods ------------------------------------------------------------------- */

static int out_args(PyObject *const *args, Out *out) {
    out->ticks = args[0];
    out->rejected = args[1];
    out->depths = args[2];
    if (!(PyList_Check(out->ticks) || out->ticks == Py_None) || !PyList_Check(out->rejected) ||
        !PyDict_Check(out->depths)) {
        PyErr_SetString(PyExc_TypeError,
                        "expected (ticks: list or None, rejected: list, depths: dict)");
        return -1;
    }
    return 0;
}

/* The touched markets' ticks, then heard (NULL: their rows, for `take_heard`); the
 * touched are forgotten. */
static int finish(Store *st, Out *out, PyObject *heard) {
    int failed = 0;
    for (Py_ssize_t i = 0; i < st->t_n && !failed; i++) {
        int32_t m = st->t_mkt[i];
        if (m < 0) continue;
        double bid, ask, depth;
        int q = yes_quote(st, st->t_tok[i], &bid, &ask, &depth);
        if (q < 0 || (q > 0 && maker_quote(st, m, st->t_ts[i], bid, ask, depth, out) < 0))
            failed = 1;
    }
    for (Py_ssize_t i = 0; i < st->t_n; i++) {
        int32_t m = st->t_mkt[i];
        if (m < 0) continue;
        st->touch_at[m] = -1;
        if (failed)
            continue;
        if (heard != NULL) {
            if (PyList_Append(heard, PyList_GET_ITEM(st->ids, m)) < 0) failed = 1;
        } else if (hear(st, m) < 0) {
            failed = 1;
        }
    }
    st->t_n = 0;
    return failed ? -1 : 0;
}

/* finish(ticks, rejected, depths, heard): `finish`, ticks into `ticks`, heard into
 * `heard` (None: rows, for take_rows and take_heard) */
static PyObject *Store_finish(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    Out out;
    PyObject *heard;
    if (nargs != 4 || out_args(args, &out) < 0 || heard_arg(args[3], &heard) < 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "finish(ticks, rejected, depths, heard)");
        return NULL;
    }
    if (finish(st, &out, heard) < 0) return NULL;
    Py_RETURN_NONE;
}

/* trade(market, ts, price, quote, ticks, rejected, depths): TickMaker.trade */
static PyObject *Store_trade(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    Out out;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "trade(market, ts, price, quote, ticks, rejected, depths)");
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[0]);
    double ts = PyFloat_AsDouble(args[1]), price = PyFloat_AsDouble(args[2]);
    double bid = NONE, ask = NONE, depth = NONE;
    if (PyErr_Occurred() || check_market(st, m) < 0 || out_args(args + 4, &out) < 0) return NULL;
    if (args[3] != Py_None) {
        if (!PyTuple_Check(args[3]) || PyTuple_GET_SIZE(args[3]) != 3) {
            PyErr_SetString(PyExc_TypeError, "quote: (bid, ask, depth) or None");
            return NULL;
        }
        if (opt_arg(PyTuple_GET_ITEM(args[3], 0), &bid) < 0 ||
            opt_arg(PyTuple_GET_ITEM(args[3], 1), &ask) < 0 ||
            opt_arg(PyTuple_GET_ITEM(args[3], 2), &depth) < 0)
            return NULL;
    }
    if (maker_emit(st, (int32_t)m, ts, bid, ask, depth, price, &out) < 0) return NULL;
    Py_RETURN_NONE;
}

/* quote(token): the market's YES (bid, ask, depth) as codec._quote gives it, or None */
static PyObject *Store_quote(Store *st, PyObject *arg) {
    Py_ssize_t tok = PyLong_AsSsize_t(arg);
    if ((tok == -1 && PyErr_Occurred()) || check_token(st, tok) < 0) return NULL;
    double bid, ask, depth;
    int q = yes_quote(st, (int32_t)tok, &bid, &ask, &depth);
    if (q < 0) return NULL;
    if (q == 0) Py_RETURN_NONE;
    return Py_BuildValue("(NNN)", opt(bid), opt(ask), opt(depth));
}

static PyObject *Store_touch(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "touch(token, ts)");
        return NULL;
    }
    Py_ssize_t tok = PyLong_AsSsize_t(args[0]);
    double ts = PyFloat_AsDouble(args[1]);
    if (PyErr_Occurred() || check_token(st, tok) < 0) return NULL;
    if (touch(st, st->tok_market[tok], ts, (int32_t)tok) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *Store_untouch(Store *st, PyObject *arg) {
    Py_ssize_t m = PyLong_AsSsize_t(arg);
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0) return NULL;
    untouch(st, (int32_t)m);
    Py_RETURN_NONE;
}

static Book *book_arg(Store *st, PyObject *arg) {
    Py_ssize_t tok = PyLong_AsSsize_t(arg);
    if ((tok == -1 && PyErr_Occurred()) || check_token(st, tok) < 0) return NULL;
    return &st->books[tok];
}

/* new_book(token, complete): an empty book (a snapshot's start) */
static PyObject *Store_new_book(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "new_book(token, complete)");
        return NULL;
    }
    Book *b = book_arg(st, args[0]);
    int complete = PyObject_IsTrue(args[1]);
    if (b == NULL || complete < 0) return NULL;
    book_clear(b);
    b->exists = 1;
    b->complete = (uint8_t)complete;
    Py_RETURN_NONE;
}

/* set_level(token, buy, price, qty): Book.set_level, the book made if missing */
static PyObject *Store_set_level(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "set_level(token, buy, price, qty)");
        return NULL;
    }
    Book *b = book_arg(st, args[0]);
    int buy = PyObject_IsTrue(args[1]);
    double price = PyFloat_AsDouble(args[2]), qty = PyFloat_AsDouble(args[3]);
    if (b == NULL || buy < 0 || PyErr_Occurred()) return NULL;
    if (!b->exists) {
        book_clear(b);
        b->exists = 1;
    }
    if (put_level(buy ? &b->bids : &b->asks, price, qty, buy, st->max_levels) < 0) return NULL;
    Py_RETURN_NONE;
}

/* set_top(token, top): Book.set_top with top (bid, ask) or None, the book made if missing */
static PyObject *Store_set_top(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_top(token, top)");
        return NULL;
    }
    Book *b = book_arg(st, args[0]);
    if (b == NULL) return NULL;
    double bid = NONE, ask = NONE;
    if (args[1] != Py_None) {
        if (!PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 2) {
            PyErr_SetString(PyExc_TypeError, "top: (bid, ask) or None");
            return NULL;
        }
        if (opt_arg(PyTuple_GET_ITEM(args[1], 0), &bid) < 0 ||
            opt_arg(PyTuple_GET_ITEM(args[1], 1), &ask) < 0)
            return NULL;
    }
    if (!b->exists) {
        book_clear(b);
        b->exists = 1;
    }
    b->has_top = args[1] != Py_None;
    b->top_bid = bid;
    b->top_ask = ask;
    Py_RETURN_NONE;
}

static PyObject *levels_dict(const Side *s) {
    PyObject *d = PyDict_New();
    for (int32_t i = 0; d && i < s->n; i++) {
        PyObject *p = PyFloat_FromDouble(level_price(s, i)), *q = PyFloat_FromDouble(level_qty(s, i));
        if (!p || !q || PyDict_SetItem(d, p, q) < 0) Py_CLEAR(d);
        Py_XDECREF(p);
        Py_XDECREF(q);
    }
    return d;
}

/* book(token): (bids, asks, has_top, top_bid, top_ask, complete) or None: a copy */
static PyObject *Store_book(Store *st, PyObject *arg) {
    Book *b = book_arg(st, arg);
    if (b == NULL) return NULL;
    if (!b->exists) Py_RETURN_NONE;
    return Py_BuildValue("(NNNNNN)", levels_dict(&b->bids), levels_dict(&b->asks),
                         PyBool_FromLong(b->has_top), opt(b->top_bid), opt(b->top_ask),
                         PyBool_FromLong(b->complete));
}

static PyObject *Store_has_book(Store *st, PyObject *arg) {
    Book *b = book_arg(st, arg);
    if (b == NULL) return NULL;
    return PyBool_FromLong(b->exists);
}

/* clear(): a new connection: no books, and each market's first quote is news again */
static PyObject *Store_clear(Store *st, PyObject *Py_UNUSED(ignored)) {
    for (Py_ssize_t t = 0; t < st->n_tokens; t++) book_clear(&st->books[t]);
    for (Py_ssize_t m = 0; m < st->n_markets; m++) {
        st->has_quote[m] = 0;
        st->last_bid[m] = st->last_ask[m] = st->last_depth[m] = NONE;
    }
    Py_RETURN_NONE;
}

static PyObject *get_market_value(Store *st, PyObject *arg, double *values) {
    Py_ssize_t m = PyLong_AsSsize_t(arg);
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0) return NULL;
    return opt(values[m]);
}

static PyObject *set_market_value(Store *st, PyObject *const *args, Py_ssize_t nargs,
                                  double *values) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "expected (market, value or None)");
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[0]);
    double x;
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0 || opt_arg(args[1], &x) < 0)
        return NULL;
    values[m] = x;
    Py_RETURN_NONE;
}

static PyObject *Store_last_trade(Store *st, PyObject *arg) {
    return get_market_value(st, arg, st->last_trade);
}
static PyObject *Store_set_last_trade(Store *st, PyObject *const *a, Py_ssize_t n) {
    return set_market_value(st, a, n, st->last_trade);
}
/* drop(): forget the markets touched by a frame whose decoding failed */
static PyObject *Store_drop(Store *st, PyObject *Py_UNUSED(ignored)) {
    for (Py_ssize_t i = 0; i < st->t_n; i++)
        if (st->t_mkt[i] >= 0) st->touch_at[st->t_mkt[i]] = -1;
    st->t_n = 0;
    Py_RETURN_NONE;
}

/* The first `*n` items of `size` bytes at `v` as bytes, and `*n` back to 0. */
static PyObject *take_bytes(const void *v, Py_ssize_t *n, size_t size) {
    PyObject *b = PyBytes_FromStringAndSize((const char *)v, *n * (Py_ssize_t)size);
    if (b != NULL) *n = 0;
    return b;
}

/* take_rows(): the rows made since the last call (ticks given as None), as bytes */
static PyObject *Store_take_rows(Store *st, PyObject *Py_UNUSED(ignored)) {
    return take_bytes(st->rows, &st->r_n, sizeof(Row));
}

/* hear(market): a market heard, named by its row (`take_heard`), as `finish` names
 * them when given heard=None */
static PyObject *Store_hear(Store *st, PyObject *arg) {
    Py_ssize_t m = PyLong_AsSsize_t(arg);
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0 || hear(st, (int32_t)m) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* take_heard(): the rows of the markets heard since the last call (heard given as
 * None), in order, as bytes of int32 */
static PyObject *Store_take_heard(Store *st, PyObject *Py_UNUSED(ignored)) {
    return take_bytes(st->heard, &st->h_n, sizeof(int32_t));
}

/* maker_state(market): (has_quote, bid, ask, depth, ts, last_trade), to carry a
 * market's tick-maker state into a store of new bindings */
static PyObject *Store_maker_state(Store *st, PyObject *arg) {
    Py_ssize_t m = PyLong_AsSsize_t(arg);
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0) return NULL;
    return Py_BuildValue("(NNNNNN)", PyBool_FromLong(st->has_quote[m]), opt(st->last_bid[m]),
                         opt(st->last_ask[m]), opt(st->last_depth[m]), opt(st->last_ts[m]),
                         opt(st->last_trade[m]));
}

static PyObject *Store_set_maker_state(Store *st, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 6) {
        PyErr_SetString(PyExc_TypeError, "set_maker_state(market, state)");
        return NULL;
    }
    Py_ssize_t m = PyLong_AsSsize_t(args[0]);
    if ((m == -1 && PyErr_Occurred()) || check_market(st, m) < 0) return NULL;
    PyObject *t = args[1];
    int has = PyObject_IsTrue(PyTuple_GET_ITEM(t, 0));
    double v[5];
    for (int i = 0; i < 5; i++)
        if (opt_arg(PyTuple_GET_ITEM(t, i + 1), &v[i]) < 0) return NULL;
    if (has < 0) return NULL;
    st->has_quote[m] = (uint8_t)has;
    st->last_bid[m] = v[0];
    st->last_ask[m] = v[1];
    st->last_depth[m] = v[2];
    st->last_ts[m] = v[3];
    st->last_trade[m] = v[4];
    Py_RETURN_NONE;
}

/* --- construction -------------------------------------------------------------- */

static int int_list(PyObject *list, int32_t *out, Py_ssize_t n, Py_ssize_t bound) {
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t v = PyLong_AsSsize_t(PyList_GET_ITEM(list, i));
        if (v == -1 && PyErr_Occurred()) return -1;
        if (v < 0 || v >= bound) {
            PyErr_SetString(PyExc_ValueError, "index out of range");
            return -1;
        }
        out[i] = (int32_t)v;
    }
    return 0;
}

static void *zalloc(size_t n, size_t size) {
    void *p = PyMem_RawCalloc(n ? n : 1, size);
    if (p == NULL) PyErr_NoMemory();
    return p;
}

static void fill(double *v, Py_ssize_t n, double x) {
    for (Py_ssize_t i = 0; i < n; i++) v[i] = x;
}

/* Store(ids, tok_market, tok_no, mkt_first, mkt_toks, bands, index, helpers, max_levels,
 *       max_future_s); helpers: (make_tick, complement, UNSET, PRICES) */
static int Store_init(Store *st, PyObject *args, PyObject *kwds) {
    PyObject *ids, *tok_market, *tok_no, *mkt_first, *mkt_toks, *bands, *index, *helpers;
    Py_ssize_t max_levels;
    double max_future_s;
    if (st->books != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Store is initialised once");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!nd", &PyList_Type, &ids, &PyList_Type,
                          &tok_market, &PyList_Type, &tok_no, &PyList_Type, &mkt_first,
                          &PyList_Type, &mkt_toks, &PyList_Type, &bands, &PyDict_Type, &index,
                          &PyTuple_Type, &helpers, &max_levels, &max_future_s))
        return -1;
    Py_ssize_t nm = PyList_GET_SIZE(ids), nt = PyList_GET_SIZE(tok_market);
    if (PyList_GET_SIZE(tok_no) != nt || PyList_GET_SIZE(mkt_first) != nm + 1 ||
        PyList_GET_SIZE(bands) != nm || PyList_GET_SIZE(mkt_toks) != nt ||
        PyTuple_GET_SIZE(helpers) != 4 || max_levels < 1 || nt > INT32_MAX || nm > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "inconsistent Store arguments");
        return -1;
    }
    st->n_tokens = nt;
    st->n_markets = nm;
    st->max_levels = max_levels;
    st->max_future_s = max_future_s;
    st->received = INFINITY;
    if (!(st->books = zalloc((size_t)nt, sizeof(Book))) ||
        !(st->tok_market = zalloc((size_t)nt, sizeof(int32_t))) ||
        !(st->tok_no = zalloc((size_t)nt, 1)) ||
        !(st->mkt_first = zalloc((size_t)nm + 1, sizeof(int32_t))) ||
        !(st->mkt_toks = zalloc((size_t)nt, sizeof(int32_t))) ||
        !(st->band = zalloc((size_t)nm, sizeof(double))) ||
        !(st->has_quote = zalloc((size_t)nm, 1)) ||
        !(st->last_bid = zalloc((size_t)nm, sizeof(double))) ||
        !(st->last_ask = zalloc((size_t)nm, sizeof(double))) ||
        !(st->last_ts = zalloc((size_t)nm, sizeof(double))) ||
        !(st->last_depth = zalloc((size_t)nm, sizeof(double))) ||
        !(st->last_trade = zalloc((size_t)nm, sizeof(double))) ||
        !(st->touch_at = zalloc((size_t)nm, sizeof(int32_t))))
        return -1;
    if (int_list(tok_market, st->tok_market, nt, nm) < 0 ||
        int_list(mkt_first, st->mkt_first, nm + 1, nt + 1) < 0 ||
        int_list(mkt_toks, st->mkt_toks, nt, nt) < 0)
        return -1;
    for (Py_ssize_t i = 0; i < nt; i++) {
        int no = PyObject_IsTrue(PyList_GET_ITEM(tok_no, i));
        if (no < 0) return -1;
        st->tok_no[i] = (uint8_t)no;
        st->books[i].top_bid = st->books[i].top_ask = NONE;
    }
    for (Py_ssize_t m = 0; m < nm; m++) {
        st->band[m] = PyFloat_AsDouble(PyList_GET_ITEM(bands, m));
        if (st->band[m] == -1.0 && PyErr_Occurred()) return -1;
        if (!PyUnicode_CheckExact(PyList_GET_ITEM(ids, m))) {
            PyErr_SetString(PyExc_TypeError, "market ids must be str");
            return -1;
        }
        st->touch_at[m] = -1;
    }
    fill(st->last_bid, nm, NONE);
    fill(st->last_ask, nm, NONE);
    fill(st->last_ts, nm, NONE);
    fill(st->last_depth, nm, NONE);
    fill(st->last_trade, nm, NONE);
    st->ids = Py_NewRef(ids);
    st->index = Py_NewRef(index);
    st->make_tick = Py_NewRef(PyTuple_GET_ITEM(helpers, 0));
    st->complement = Py_NewRef(PyTuple_GET_ITEM(helpers, 1));
    st->unset = Py_NewRef(PyTuple_GET_ITEM(helpers, 2));
    st->prices = Py_NewRef(PyTuple_GET_ITEM(helpers, 3));
    if (!PyDict_Check(st->prices)) {
        PyErr_SetString(PyExc_TypeError, "PRICES must be a dict");
        return -1;
    }
    /* str hashes are salted per process (PYTHONHASHSEED): so is the token table. */
    Py_hash_t salt = PyObject_Hash(s_asset_id);
    if (salt == -1) return -1;
    if (tokens_init(&st->tokens, index, nt, (uint64_t)salt ^ (uint64_t)(uintptr_t)st) < 0)
        return -1;
    st->scan = 1;
    return 0;
}

static void Store_dealloc(Store *st) {
    PyObject_GC_UnTrack(st);
    if (st->books)
        for (Py_ssize_t t = 0; t < st->n_tokens; t++) book_clear(&st->books[t]);
    void *arrays[] = {st->books, st->tok_market, st->tok_no, st->mkt_first, st->mkt_toks,
                      st->band, st->has_quote, st->last_bid, st->last_ask, st->last_ts,
                      st->last_depth, st->last_trade, st->touch_at, st->t_mkt, st->t_tok,
                      st->t_ts, st->rows, st->heard};
    for (size_t i = 0; i < sizeof arrays / sizeof arrays[0]; i++) PyMem_RawFree(arrays[i]);
    tokens_free(&st->tokens);
    PyMem_RawFree(st->raw.v);
    PyMem_RawFree(st->ahead.v);
    PyMem_RawFree(st->entries);
    Py_CLEAR(st->ids);
    Py_CLEAR(st->index);
    Py_CLEAR(st->prices);
    Py_CLEAR(st->unset);
    Py_CLEAR(st->make_tick);
    Py_CLEAR(st->complement);
    Py_TYPE(st)->tp_free((PyObject *)st);
}

static int Store_traverse(Store *st, visitproc visit, void *arg) {
    Py_VISIT(st->ids);
    Py_VISIT(st->index);
    Py_VISIT(st->prices);
    Py_VISIT(st->unset);
    Py_VISIT(st->make_tick);
    Py_VISIT(st->complement);
    return 0;
}

static PyMethodDef Store_methods[] = {
    {"price_changes", (PyCFunction)Store_price_changes, METH_O,
     "Apply a typed batched price_change event; False: read it in Python."},
    {"frames", (PyCFunction)(void (*)(void))Store_frames, METH_FASTCALL,
     "Frames read together, as far as the compiled path takes them whole."},
    {"finish", (PyCFunction)(void (*)(void))Store_finish, METH_FASTCALL,
     "finish(ticks, rejected, depths, heard): the frame's ticks."},
    {"trade", (PyCFunction)(void (*)(void))Store_trade, METH_FASTCALL, "TickMaker.trade"},
    {"quote", (PyCFunction)Store_quote, METH_O, "The market's YES quote via this token."},
    {"touch", (PyCFunction)(void (*)(void))Store_touch, METH_FASTCALL, "touch(token, ts)"},
    {"untouch", (PyCFunction)Store_untouch, METH_O, "untouch(market)"},
    {"new_book", (PyCFunction)(void (*)(void))Store_new_book, METH_FASTCALL, NULL},
    {"set_level", (PyCFunction)(void (*)(void))Store_set_level, METH_FASTCALL, NULL},
    {"set_top", (PyCFunction)(void (*)(void))Store_set_top, METH_FASTCALL, NULL},
    {"book", (PyCFunction)Store_book, METH_O, "A copy of a token's book, or None."},
    {"has_book", (PyCFunction)Store_has_book, METH_O, NULL},
    {"clear", (PyCFunction)Store_clear, METH_NOARGS, "A new connection."},
    {"last_trade", (PyCFunction)Store_last_trade, METH_O, NULL},
    {"set_last_trade", (PyCFunction)(void (*)(void))Store_set_last_trade, METH_FASTCALL, NULL},
    {"drop", (PyCFunction)Store_drop, METH_NOARGS, "Forget the markets touched."},
    {"take_rows", (PyCFunction)Store_take_rows, METH_NOARGS,
     "The ticks made with ticks=None since the last call, packed as riskd.ticks.ROW."},
    {"hear", (PyCFunction)Store_hear, METH_O, "A market heard, as a row for take_heard."},
    {"take_heard", (PyCFunction)Store_take_heard, METH_NOARGS,
     "The rows of the markets heard with heard=None since the last call (int32)."},
    {"maker_state", (PyCFunction)Store_maker_state, METH_O, NULL},
    {"set_maker_state", (PyCFunction)(void (*)(void))Store_set_maker_state, METH_FASTCALL,
     NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Store_members[] = {
    {"received", T_DOUBLE, offsetof(Store, received), 0, "the frame's arrival (wall) time"},
    {"max_future_s", T_DOUBLE, offsetof(Store, max_future_s), 0, NULL},
    {"n_markets", T_PYSSIZET, offsetof(Store, n_markets), READONLY, NULL},
    {"n_tokens", T_PYSSIZET, offsetof(Store, n_tokens), READONLY, NULL},
    {"scan", T_BOOL, offsetof(Store, scan), 0,
     "read plain batched price_change frames from their bytes (False: typed path only)"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject StoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "riskd.feeds.polymarket._store.Store",
    .tp_basicsize = sizeof(Store),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Books and tick-maker state of one Polymarket codec, in C arrays.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Store_init,
    .tp_dealloc = (destructor)Store_dealloc,
    .tp_traverse = (traverseproc)Store_traverse,
    .tp_methods = Store_methods,
    .tp_members = Store_members,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_store", NULL, -1, NULL};

PyMODINIT_FUNC PyInit__store(void) {
    struct {
        PyObject **s;
        const char *v;
    } names[] = {{&s_asset_id, "asset_id"},     {&s_price, "price"},
                 {&s_size, "size"},             {&s_side, "side"},
                 {&s_best_bid, "best_bid"},     {&s_best_ask, "best_ask"},
                 {&s_timestamp, "timestamp"},   {&s_price_changes, "price_changes"},
                 {&s_crossed, "crossed_book"},  {&s_bad_ts, "bad_timestamp"},
                 {&s_future, "future_ts"},      {&s_bad_size, "bad_size"},
                 {&s_out_of_order, "out_of_order"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].s = PyUnicode_InternFromString(names[i].v)) == NULL) return NULL;
    if (PyType_Ready(&StoreType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Store", (PyObject *)&StoreType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
