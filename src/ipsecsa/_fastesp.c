/*
 * ipsecsa._fastesp: the native ESP fast path (RFC 4303) over OpenSSL EVP (libcrypto >= 3.0).
 *
 * This file mirrors the Python data path of ipsecsa.datapath.esp, which stays the readable
 * reference: every verdict, byte and counter here must equal what the Python path produces for
 * the same SA state and packets (tests/native/ hold the two equal with hypothesis). What it does
 * not handle it hands to the Python path of the same SA, before it has changed any state for
 * that packet: fragments, IPv6 extension headers, packets that are not `bytes`, an SA whose
 * crypto a NIC does (`_nic`), an SA that is not usable or past a deadline (the Python `_gate`),
 * and the next outbound sequence number passing `_seq_limit` (the reservation hook).
 *
 * State. The SA's counters stay Python attributes of the SA object (`_seq`, `packets`, `bytes`,
 * `_ident`, `_drops`); this module reads and writes those slots in place (their offsets are
 * taken once from the class's member descriptors), so both paths share one state and switching
 * between them mid-stream is invisible. The inbound anti-replay window is the `Replay` type
 * below, the C twin of ipsecsa.datapath.replay.ReplayWindow (same API and semantics); an SA
 * built with the native path keeps its window in one, which the Python path uses through the
 * same `check`/`commit` methods.
 *
 * Batches (RFC 4303 framing with the GIL held, crypto with it released):
 *   protect:   phase 1 walks the packets in order: checks, sequence number, headers, padding,
 *              counters and lifetime marks, writing each output packet with its plaintext in
 *              place; phase 2 seals all of them in place (GIL released for large batches).
 *   unprotect: phase 1 parses and runs the replay *check* (no state change); phase 2 opens
 *              (GIL released); phase 3 walks the packets in order: re-checks the window as it is
 *              by then (a sequential receiver's view), commits, checks padding and the inner
 *              packet, counts. A packet whose view changed (the ESN high half inferred
 *              differently, a window or lifetime change) is re-run by the Python path, so a
 *              batch gives exactly the verdicts of the same packets one by one.
 * Drop counts are only ever added in phase order = packet order.
 *
 * Threads: each SA has a mutex around its EVP contexts (taken without the GIL); state is only
 * touched with the GIL held, so two threads on one SA never share a sequence number.
 *
 * Memory safety: every read of a packet byte is bounded by the buffer length and by the lengths
 * checked before it; tests and a fuzz run under ASan/UBSan (scripts/sanitize.sh).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/opensslv.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if OPENSSL_VERSION_MAJOR < 3
#error "ipsecsa._fastesp needs OpenSSL libcrypto >= 3.0"
#endif

/* ------------------------------------------------------------------ specification constants */
#define PROTO_IPIP 4
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_IPV6 41
#define PROTO_ESP 50
#define PROTO_NONE 59
#define V6_HOPOPTS 0
#define V6_ROUTING 43
#define V6_FRAGMENT 44
#define V6_AH 51
#define V6_DSTOPTS 60
#define ESP_HDR 8
#define MAX_IPV4_LEN 65535

/* ------------------------------------------------------------------ implementation constants */
/* Release the GIL around the crypto of a segment of at least this many packets or bytes. */
#define GIL_MIN_PACKETS 4
#define GIL_MIN_BYTES 8192

/* Drop reasons this module can produce; names match ipsecsa.errors.DropReason members. */
enum {
    R_TRUNCATED, R_MALFORMED, R_WRONG_PROTOCOL, R_BAD_SPI, R_REPLAY, R_ICV_FAILURE,
    R_BAD_LENGTH, R_BAD_PADDING, R_BAD_INNER, R_DUMMY_PACKET, R_ECN_DROP, R_NATT_KEEPALIVE,
    R_NON_ESP_MARKER, R_BAD_UDP, R_BAD_CHECKSUM, R_TOO_BIG, R_SELECTOR_MISMATCH, NREASONS
};
static const char *REASON_NAMES[NREASONS] = {
    "TRUNCATED", "MALFORMED", "WRONG_PROTOCOL", "BAD_SPI", "REPLAY", "ICV_FAILURE",
    "BAD_LENGTH", "BAD_PADDING", "BAD_INNER", "DUMMY_PACKET", "ECN_DROP", "NATT_KEEPALIVE",
    "NON_ESP_MARKER", "BAD_UDP", "BAD_CHECKSUM", "TOO_BIG", "SELECTOR_MISMATCH",
};

/* Algorithms. */
enum { ALG_GCM = 1, ALG_CHACHA = 2, ALG_GMAC = 3, ALG_CBC_HMAC = 4 };

/* ------------------------------------------------------------------ module globals (setup()) */
static PyTypeObject *ResultType;        /* ipsecsa.datapath.result.Result */
static PyObject *reason_obj[NREASONS];  /* DropReason members */
static PyObject *dropped_map;           /* DropReason -> interned Result (DROPPED) */
static PyObject *state_mature, *state_dying;
static int ready;
/* Offsets of the SA's slots (from the member descriptors of the SA class). */
static Py_ssize_t off_seq, off_packets, off_bytes, off_ident, off_pmark, off_bmark, off_seq_max,
    off_seq_limit, off_timed, off_state, off_tmark, off_nic, off_drops, off_selectors;
static PyObject *s_gate, *s_post_send, *s_lifetime_crossed, *s_selectors_ok, *s_inner_policy,
    *s_transport_checks, *s_py_out, *s_py_in, *s_last_used;
static EVP_CIPHER *c_gcm[3], *c_cbc[3], *c_chacha;
static EVP_MAC *m_hmac;

/* ------------------------------------------------------------------ byte helpers */
static inline uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)(v >> 32)); put32(p + 4, (uint32_t)v); }

/* Sum of 16-bit big-endian words (an odd last byte padded with zero), unfolded. */
static uint64_t sum16(const uint8_t *p, size_t n)
{
    uint64_t s = 0;
    size_t i = 0;
    for (; i + 1 < n; i += 2) s += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (i < n) s += (uint32_t)p[i] << 8;
    return s;
}
static inline uint32_t fold(uint64_t s)
{
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}
/* RFC 768 / RFC 8200 §8.1 UDP checksum over src/dst (4 or 16 bytes) and the segment, whose
 * checksum field is treated as zero; a computed 0 is sent as 0xFFFF. */
static uint32_t udp_csum(const uint8_t *src, const uint8_t *dst, size_t alen, const uint8_t *seg,
                         size_t len)
{
    uint64_t s = sum16(src, alen) + sum16(dst, alen) + PROTO_UDP + (uint64_t)len;
    s += sum16(seg, 6);
    if (len > 8) s += sum16(seg + 8, len - 8);
    uint32_t c = ~fold(s) & 0xFFFF;
    return c ? c : 0xFFFF;
}

/* RFC 6040 §4.2: outgoing inner ECN for (inner, outer); -1 = drop. */
static const int8_t ECN_DECAP[4][4] = {
    /* inner Not-ECT */ {0, 0, 0, -1},
    /* inner ECT(1)  */ {1, 1, 1, 3},
    /* inner ECT(0)  */ {2, 1, 2, 3},
    /* inner CE      */ {3, 3, 3, 3},
};

static double monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* ================================================================== Replay */
typedef struct {
    PyObject_VAR_HEAD
    uint64_t top;
    uint64_t max;
    uint64_t infer_w;
    uint32_t size;
    uint32_t nmask;
    int esn;
    uint64_t ring[1];
} ReplayObject;

static PyTypeObject Replay_Type;

static uint32_t ring_words(uint32_t size)
{
    if (!size) return 1;
    uint32_t need = (size + 63) / 64 + 1, w = 1;
    while (w < need) w <<= 1;
    return w;
}

/* RFC 4303 §3.4.3 check with Appendix A2.2 inference; 0 = drop as replay. No state change. */
static uint64_t replay_check(const ReplayObject *r, uint32_t lo)
{
    uint64_t top = r->top, seq;
    if (r->esn) {
        uint64_t tl = top & 0xFFFFFFFFu, th = top >> 32, w = r->infer_w;
        if (tl + 1 >= w) {                                  /* Case A */
            if ((uint64_t)lo >= tl + 1 - w) seq = th << 32 | lo;
            else if (th == 0xFFFFFFFFu) return 0;
            else seq = (th + 1) << 32 | lo;
        } else if ((uint64_t)lo >= (1ULL << 32) - (w - 1 - tl)) {  /* Case B, left part */
            if (!th) return 0;
            seq = (th - 1) << 32 | lo;
        } else {
            seq = th << 32 | lo;
        }
        if (seq > top) return seq;
        if (!seq) return 0;
    } else {
        if ((uint64_t)lo > top) return lo;
        if (!lo) return 0;
        seq = lo;
    }
    if (!r->size) return seq;
    if (top - seq >= r->size) return 0;
    if (r->ring[(seq >> 6) & r->nmask] >> (seq & 63) & 1) return 0;
    return seq;
}

/* Record seq after its ICV verified; 0 (and no change) if it is a replay by now. */
static int replay_commit(ReplayObject *r, uint64_t seq)
{
    if (!seq || seq > r->max) return 0;
    uint64_t top = r->top;
    if (seq > top) {
        if (r->size) {
            uint64_t old = top >> 6, new = seq >> 6, gap = new - old, nm = r->nmask;
            if (gap == 1) {
                r->ring[new & nm] = 0;
            } else if (gap > nm) {
                memset(r->ring, 0, (size_t)(nm + 1) * 8);
            } else {
                for (uint64_t k = old + 1; k <= new; k++) r->ring[k & nm] = 0;
            }
            r->ring[new & nm] |= 1ULL << (seq & 63);
        }
        r->top = seq;
        return 1;
    }
    if (!r->size) return 1;
    if (top - seq >= r->size) return 0;
    uint64_t *w = &r->ring[(seq >> 6) & r->nmask], bit = 1ULL << (seq & 63);
    if (*w & bit) return 0;
    *w |= bit;
    return 1;
}

static PyObject *Replay_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"size", "esn", "top", NULL};
    unsigned long size;
    int esn;
    unsigned long long top = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "kp|K:Replay", kwlist, &size, &esn, &top))
        return NULL;
    uint64_t max = esn ? UINT64_MAX : 0xFFFFFFFFu;
    /* Validation with the field names is ipsecsa.datapath.replay's (new_window); these are
     * the module's own invariants. */
    if (!(size == 0 || (size >= 32 && size <= 65536)) || top > max) {
        PyErr_SetString(PyExc_ValueError, "Replay: size must be 0 or 32..65536, top in range");
        return NULL;
    }
    uint32_t words = ring_words((uint32_t)size);
    ReplayObject *r = (ReplayObject *)type->tp_alloc(type, words);
    if (!r) return NULL;
    r->size = (uint32_t)size;
    r->esn = esn;
    r->top = top;
    r->max = max;
    r->infer_w = size ? size : (1ULL << 31);
    r->nmask = words - 1;
    for (uint32_t i = 0; i < words; i++) r->ring[i] = UINT64_MAX;
    r->ring[(top >> 6) & r->nmask] = (top & 63) == 63 ? UINT64_MAX : (2ULL << (top & 63)) - 1;
    return (PyObject *)r;
}

static PyObject *Replay_check(ReplayObject *r, PyObject *arg)
{
    unsigned long long lo = PyLong_AsUnsignedLongLong(arg);
    if (lo == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (lo > 0xFFFFFFFFu) {
        PyErr_SetString(PyExc_ValueError, "seq_low must be a 32-bit value");
        return NULL;
    }
    uint64_t seq = replay_check(r, (uint32_t)lo);
    if (!seq) Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *Replay_commit(ReplayObject *r, PyObject *arg)
{
    /* Python's ReplayWindow.commit answers False for anything outside 1..max, negative or huge
     * included; so does this. */
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (v == -1 && PyErr_Occurred()) return NULL;
    if (overflow < 0 || (!overflow && v <= 0)) Py_RETURN_FALSE;
    unsigned long long seq = overflow ? PyLong_AsUnsignedLongLong(arg) : (unsigned long long)v;
    if (seq == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(replay_commit(r, seq));
}

static PyObject *Replay_get_top(ReplayObject *r, void *c) { return PyLong_FromUnsignedLongLong(r->top); }
static PyObject *Replay_get_size(ReplayObject *r, void *c) { return PyLong_FromUnsignedLong(r->size); }
static PyObject *Replay_get_esn(ReplayObject *r, void *c) { return PyBool_FromLong(r->esn); }
static PyObject *Replay_repr(ReplayObject *r)
{
    return PyUnicode_FromFormat("ReplayWindow(size=%u, esn=%s, top=%llu)", r->size,
                                r->esn ? "True" : "False", (unsigned long long)r->top);
}

static PyMethodDef Replay_methods[] = {
    {"check", (PyCFunction)Replay_check, METH_O,
     "check(seq_low) -> full sequence number or None (replay); changes nothing."},
    {"commit", (PyCFunction)Replay_commit, METH_O,
     "commit(seq) -> bool: record seq after its ICV verified."},
    {NULL}
};
static PyGetSetDef Replay_getset[] = {
    {"top", (getter)Replay_get_top, NULL, "highest sequence number committed", NULL},
    {"size", (getter)Replay_get_size, NULL, "window size in packets (0: off)", NULL},
    {"esn", (getter)Replay_get_esn, NULL, "extended sequence numbers", NULL},
    {NULL}
};
static PyTypeObject Replay_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._fastesp.Replay",
    .tp_doc = "The anti-replay window of ipsecsa.datapath.replay.ReplayWindow, in C.",
    .tp_basicsize = offsetof(ReplayObject, ring),
    .tp_itemsize = sizeof(uint64_t),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Replay_new,
    .tp_methods = Replay_methods,
    .tp_getset = Replay_getset,
    .tp_repr = (reprfunc)Replay_repr,
};

/* ================================================================== Esp */
/* The crypto state of an SA that has carried traffic: its lock and EVP contexts, allocated
 * (with the GIL held) before its first crypto, so an idle SA costs neither these bytes nor any
 * OpenSSL memory. */
typedef struct {
    pthread_mutex_t lock; /* around the EVP contexts */
    EVP_CIPHER_CTX *ectx, *dctx;
    EVP_MAC_CTX *emac, *dmac;
} Crypto;

/* One per installed SA, so kept small (the SA database holds millions): narrow fields, the
 * crypto state created on first use, keys kept until then (the HMAC key, on its own
 * allocation, only for AES-CBC + HMAC). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc call;  /* calling the engine: protect (outbound SA) or unprotect */
    PyObject *sa;         /* the SecurityAssociation (strong; GC-traversed) */
    ReplayObject *replay; /* its window, or NULL on an outbound-only SA */
    PyObject *iv_source;  /* deterministic IV source for known-answer tests, or NULL */
    Crypto *cx;           /* NULL until the first packet's crypto */
    uint8_t *ikey;        /* HMAC key (PyMem), AES-CBC + HMAC only */
    uint64_t iv_mask;
    uint32_t spi, o4sum, tfc;
    uint16_t sport, dport, min_esp, overhead;
    int16_t dscp, df_fixed;
    uint8_t alg, keylen, ikeylen, icvlen, ivlen, bmask, block, check_blocks;
    uint8_t tunnel, v6, encap, esn, ttl, alen, md;
    uint8_t src[16], dst[16];
    uint8_t salt[4];
    uint8_t key[32];
} EspObject;

static const char *DIGESTS[] = {"SHA1", "SHA256", "SHA384", "SHA512"};
#define NDIGESTS (sizeof DIGESTS / sizeof DIGESTS[0])

/* The cipher of the SA (fetched once per process at import). */
static const EVP_CIPHER *cipher_of(const EspObject *self)
{
    int ix = self->keylen == 16 ? 0 : self->keylen == 24 ? 1 : 2;
    switch (self->alg) {
    case ALG_GCM: case ALG_GMAC: return c_gcm[ix];
    case ALG_CHACHA: return c_chacha;
    default: return c_cbc[ix];
    }
}

/* Create the crypto state if the SA has none yet; called with the GIL held (so two threads
 * never both create it). 0 with MemoryError set on failure. */
static int ensure_crypto(EspObject *self)
{
    if (self->cx) return 1;
    Crypto *cx = PyMem_RawCalloc(1, sizeof *cx);
    if (!cx) {
        PyErr_NoMemory();
        return 0;
    }
    pthread_mutex_init(&cx->lock, NULL);
    self->cx = cx;
    return 1;
}

static PyTypeObject Esp_Type;

/* ---- slots of the SA ---- */
#define SLOT(self, off) (*(PyObject **)((char *)(self)->sa + (off)))

static int slot_u64(EspObject *self, Py_ssize_t off, uint64_t *out)
{
    PyObject *v = SLOT(self, off);
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "SA slot unset");
        return -1;
    }
    if (PyFloat_Check(v)) {
        double d = PyFloat_AS_DOUBLE(v);
        *out = d >= 18446744073709551615.0 ? UINT64_MAX : (d <= 0 ? 0 : (uint64_t)ceil(d));
        return 0;
    }
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        /* a mark beyond 2^64 (or negative): treat as never reached / already reached */
        PyErr_Clear();
        int neg = PyObject_RichCompareBool(v, Py_False, Py_LT);
        if (neg < 0) return -1;
        *out = neg ? 0 : UINT64_MAX;
        return 0;
    }
    *out = x;
    return 0;
}

static int set_slot_u64(EspObject *self, Py_ssize_t off, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong(v);
    if (!o) return -1;
    Py_XSETREF(SLOT(self, off), o);
    return 0;
}

typedef struct {
    uint64_t seq, packets, bytes, ident, pmark, bmark, seq_max, seq_limit;
    double tmark;
    int timed, fast;
    PyObject *now;  /* borrowed: the caller's `now` or the batch clock value */
} View;

/* Whether the Python `_gate` would let a packet through with no side effect. */
static int compute_fast(EspObject *self, View *v)
{
    PyObject *state = SLOT(self, off_state);
    if (SLOT(self, off_nic) != Py_None) return 0;
    if (state != state_mature && state != state_dying) return 0;
    if (v->timed) {
        double now = PyFloat_AsDouble(v->now);
        if (now == -1.0 && PyErr_Occurred()) return -1;
        if (now >= v->tmark) return 0;
    }
    return 1;
}

static int load_view(EspObject *self, View *v)
{
    if (slot_u64(self, off_seq, &v->seq) || slot_u64(self, off_packets, &v->packets) ||
        slot_u64(self, off_bytes, &v->bytes) || slot_u64(self, off_pmark, &v->pmark) ||
        slot_u64(self, off_bmark, &v->bmark) || slot_u64(self, off_seq_max, &v->seq_max) ||
        slot_u64(self, off_seq_limit, &v->seq_limit))
        return -1;
    if (self->tunnel && !self->v6 && slot_u64(self, off_ident, &v->ident)) return -1;
    v->timed = SLOT(self, off_timed) == Py_True;
    if (v->timed) {
        PyObject *t = SLOT(self, off_tmark);
        v->tmark = t ? PyFloat_AsDouble(t) : INFINITY;
        if (v->tmark == -1.0 && PyErr_Occurred()) return -1;
    }
    int f = compute_fast(self, v);
    if (f < 0) return -1;
    v->fast = f;
    return 0;
}

static int store_view(EspObject *self, View *v, int outbound)
{
    if (outbound) {
        if (set_slot_u64(self, off_seq, v->seq)) return -1;
        if (self->tunnel && !self->v6 && set_slot_u64(self, off_ident, v->ident)) return -1;
    }
    if (set_slot_u64(self, off_packets, v->packets) || set_slot_u64(self, off_bytes, v->bytes))
        return -1;
    return 0;
}

/* Count a drop in the SA's `_drops` dict and return the interned Result (new reference). */
static PyObject *drop_obj(EspObject *self, PyObject *reason)
{
    PyObject *d = SLOT(self, off_drops);
    if (!d || d == Py_None) {  /* created on the SA's first drop, as SecurityAssociation._drop does */
        d = PyDict_New();
        if (!d) return NULL;
        Py_XSETREF(SLOT(self, off_drops), d);
    }
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "SA _drops is not a dict");
        return NULL;
    }
    PyObject *cur = PyDict_GetItemWithError(d, reason);
    if (!cur && PyErr_Occurred()) return NULL;
    long long c = cur ? PyLong_AsLongLong(cur) : 0;
    if (c == -1 && PyErr_Occurred()) return NULL;
    PyObject *nv = PyLong_FromLongLong(c + 1);
    if (!nv) return NULL;
    int rc = PyDict_SetItem(d, reason, nv);
    Py_DECREF(nv);
    if (rc) return NULL;
    PyObject *res = PyDict_GetItemWithError(dropped_map, reason);
    if (!res) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "no interned result for reason");
        return NULL;
    }
    Py_INCREF(res);
    return res;
}
static PyObject *drop(EspObject *self, int r) { return drop_obj(self, reason_obj[r]); }

/* A delivered Result (packet, None). Allocated directly (setup() checked that Result is a
 * tuple subclass adding no storage) and left untracked by the cycle collector, as CPython does
 * for tuples of atomic objects: a Result holds bytes and None, so it can never be part of a
 * cycle. Measured ~2 % of a 64-byte packet against tp_alloc (zeroing + tracking). */
static PyObject *make_result(PyObject *packet /* stolen */)
{
    PyObject *r = (PyObject *)PyObject_GC_NewVar(PyTupleObject, ResultType, 2);
    if (!r) {
        Py_DECREF(packet);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, packet);
    Py_INCREF(Py_None);
    PyTuple_SET_ITEM(r, 1, Py_None);
    return r;
}

/* ---- crypto (called without the GIL, under self->cx->lock) ---- */
/* AES-GCM and AES-GMAC: the AES-GCM cipher, whose nonce is salt ‖ explicit IV. */
static inline int gcm_family(const EspObject *self)
{
    return self->alg == ALG_GCM || self->alg == ALG_GMAC;
}

static int ensure_cipher(EspObject *self, int enc)
{
    Crypto *cx = self->cx;
    EVP_CIPHER_CTX **pc = enc ? &cx->ectx : &cx->dctx;
    if (!*pc) {
        EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
        if (!c) return 0;
        if (!EVP_CipherInit_ex(c, cipher_of(self), NULL, self->key, NULL, enc)) {
            EVP_CIPHER_CTX_free(c);
            return 0;
        }
        if (self->alg == ALG_CBC_HMAC) EVP_CIPHER_CTX_set_padding(c, 0);
        if (!enc && gcm_family(self)) {
            /* RFC 4106 §4: nonce = salt (fixed per SA) ‖ the packet's 8-byte IV: the salt is
             * given once as the nonce's fixed field; each packet then sets only its explicit
             * part (open_). */
            OSSL_PARAM p[2] = {
                OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED,
                                                  self->salt, 4),
                OSSL_PARAM_construct_end()};
            if (!EVP_CIPHER_CTX_set_params(c, p)) {
                EVP_CIPHER_CTX_free(c);
                return 0;
            }
        }
        *pc = c;
    }
    if (self->alg == ALG_CBC_HMAC) {
        EVP_MAC_CTX **pm = enc ? &cx->emac : &cx->dmac;
        if (!*pm) {
            EVP_MAC_CTX *m = EVP_MAC_CTX_new(m_hmac);
            if (!m) return 0;
            OSSL_PARAM p[2] = {
                OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *)DIGESTS[self->md], 0),
                OSSL_PARAM_construct_end()};
            if (!EVP_MAC_init(m, self->ikey, (size_t)self->ikeylen, p)) {
                EVP_MAC_CTX_free(m);
                return 0;
            }
            *pm = m;
        }
    }
    return 1;
}

static void make_nonce(EspObject *self, const uint8_t *iv, uint8_t nonce[12])
{
    memcpy(nonce, self->salt, 4);
    memcpy(nonce + 4, iv, 8);
}

/* AAD of the AEADs: SPI ‖ [seq-high] ‖ seq-low (RFC 4106 §5, RFC 7634 §2.3, RFC 4543 §5). */
static int aad_of(EspObject *self, const uint8_t *esph, uint64_t seq, uint8_t aad[12])
{
    if (!self->esn) {
        memcpy(aad, esph, 8);
        return 8;
    }
    memcpy(aad, esph, 4);
    put64(aad + 4, seq);
    return 12;
}

/* HMAC(esp header ‖ iv ‖ ct [‖ seq-high]) truncated (RFC 4303 §2.8, §3.3.2.1). */
static int etm_mac(EspObject *self, EVP_MAC_CTX *m, const uint8_t *esp, size_t len, uint64_t seq,
                   uint8_t *icv_out)
{
    uint8_t full[EVP_MAX_MD_SIZE], hi[4];
    size_t ol;
    if (!EVP_MAC_init(m, NULL, 0, NULL) || !EVP_MAC_update(m, esp, len)) return 0;
    if (self->esn) {
        put32(hi, (uint32_t)(seq >> 32));
        if (!EVP_MAC_update(m, hi, 4)) return 0;
    }
    if (!EVP_MAC_final(m, full, &ol, sizeof full) || ol < (size_t)self->icvlen) return 0;
    memcpy(icv_out, full, (size_t)self->icvlen);
    OPENSSL_cleanse(full, sizeof full);
    return 1;
}

/* Seal in place: esp points at SPI ‖ seq ‖ IV ‖ plaintext(ptlen) ‖ room for the ICV. */
static int seal(EspObject *self, uint8_t *esp, int ptlen, uint64_t seq)
{
    EVP_CIPHER_CTX *c = self->cx->ectx;
    uint8_t *iv = esp + ESP_HDR, *pt = iv + self->ivlen, *icv = pt + ptlen;
    int l;
    if (self->alg == ALG_CBC_HMAC) {
        if (!EVP_EncryptInit_ex(c, NULL, NULL, NULL, iv)) return 0;
        if (!EVP_EncryptUpdate(c, pt, &l, pt, ptlen) || l != ptlen) return 0;
        return etm_mac(self, self->cx->emac, esp, (size_t)(ESP_HDR + self->ivlen + ptlen), seq, icv);
    }
    uint8_t nonce[12], aad[12];
    int alen = aad_of(self, esp, seq, aad);
    make_nonce(self, iv, nonce);
    if (!EVP_EncryptInit_ex(c, NULL, NULL, NULL, nonce)) return 0;
    if (!EVP_EncryptUpdate(c, NULL, &l, aad, alen)) return 0;
    if (self->alg == ALG_GMAC) {
        /* RFC 4543 §3.2: AAD = SPI ‖ [seq-high] ‖ seq-low ‖ IV ‖ plaintext; nothing encrypted. */
        if (!EVP_EncryptUpdate(c, NULL, &l, iv, 8)) return 0;
        if (ptlen && !EVP_EncryptUpdate(c, NULL, &l, pt, ptlen)) return 0;
    } else if (ptlen) {
        if (!EVP_EncryptUpdate(c, pt, &l, pt, ptlen) || l != ptlen) return 0;
    }
    if (!EVP_EncryptFinal_ex(c, icv, &l)) return 0;
    /* The tag through the parameter call itself (what EVP_CTRL_AEAD_GET_TAG wraps): the same
     * provider call without EVP_CIPHER_CTX_ctrl's dispatch, measured at ~4 % of a 64-byte
     * packet. */
    OSSL_PARAM p[2] = {
        OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, icv, self->icvlen),
        OSSL_PARAM_construct_end()};
    return EVP_CIPHER_CTX_get_params(c, p) > 0;
}

/* Open: esp = SPI ‖ seq ‖ IV ‖ ct(ctlen) ‖ ICV (read-only); plaintext to out. 1 ok, 0 ICV
 * failure, -1 library error. */
static int open_(EspObject *self, const uint8_t *esp, int ctlen, uint64_t seq, uint8_t *out)
{
    EVP_CIPHER_CTX *c = self->cx->dctx;
    const uint8_t *iv = esp + ESP_HDR, *ct = iv + self->ivlen, *icv = ct + ctlen;
    int l;
    if (self->alg == ALG_CBC_HMAC) {
        uint8_t mine[64];
        if (!etm_mac(self, self->cx->dmac, esp, (size_t)(ESP_HDR + self->ivlen + ctlen), seq, mine))
            return -1;
        if (CRYPTO_memcmp(mine, icv, (size_t)self->icvlen)) return 0;
        if (!EVP_DecryptInit_ex(c, NULL, NULL, NULL, iv)) return -1;
        if (!EVP_DecryptUpdate(c, out, &l, ct, ctlen) || l != ctlen) return -1;
        return 1;
    }
    uint8_t nonce[12], aad[12], tag[16], eiv[8];
    int alen = aad_of(self, esp, seq, aad);
    memcpy(tag, icv, (size_t)self->icvlen);
    if (gcm_family(self)) {
        /* One parameter call per packet: the nonce's explicit part (its fixed part, the salt,
         * was set with the key) and the expected tag. EVP_DecryptInit_ex with the whole nonce
         * plus EVP_CTRL_AEAD_SET_TAG cost 30 % of a 64-byte packet in OpenSSL 3.0, mostly the
         * IV-length query the init makes and the ctrl dispatch (perf; docs/PERFORMANCE.md). */
        memcpy(eiv, iv, 8);
        OSSL_PARAM p[3] = {
            OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_SET_IV_INV, eiv, 8),
            OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, self->icvlen),
            OSSL_PARAM_construct_end()};
        if (!EVP_CIPHER_CTX_set_params(c, p)) return -1;
    } else {
        /* ChaCha20-Poly1305: the nonce and the expected tag in one init call. */
        OSSL_PARAM p[2] = {
            OSSL_PARAM_construct_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, self->icvlen),
            OSSL_PARAM_construct_end()};
        make_nonce(self, iv, nonce);
        if (!EVP_DecryptInit_ex2(c, NULL, NULL, nonce, p)) return -1;
    }
    if (!EVP_DecryptUpdate(c, NULL, &l, aad, alen)) return -1;
    if (self->alg == ALG_GMAC) {
        if (!EVP_DecryptUpdate(c, NULL, &l, iv, 8)) return -1;
        if (ctlen && !EVP_DecryptUpdate(c, NULL, &l, ct, ctlen)) return -1;
        memcpy(out, ct, (size_t)ctlen);
    } else if (ctlen) {
        if (!EVP_DecryptUpdate(c, out, &l, ct, ctlen) || l != ctlen) return -1;
    }
    return EVP_DecryptFinal_ex(c, out + ctlen, &l) > 0 ? 1 : 0;
}

/* ---- calling back into the Python path ---- */
static PyObject *call_py(EspObject *self, PyObject *name, PyObject *pkt, View *v)
{
    PyObject *fn = PyObject_GetAttr(self->sa, name);
    if (!fn) return NULL;
    PyObject *args[2] = {pkt, v->now};
    PyObject *r = PyObject_Vectorcall(fn, args, 2, NULL);
    Py_DECREF(fn);
    return r;
}

/* Run a Python method of the SA with the view stored before and reloaded after. */
static PyObject *callback(EspObject *self, View *v, int outbound, PyObject *name, PyObject **args,
                          Py_ssize_t n)
{
    if (store_view(self, v, outbound)) return NULL;
    PyObject *fn = PyObject_GetAttr(self->sa, name);
    if (!fn) return NULL;
    PyObject *r = PyObject_Vectorcall(fn, args, (size_t)n, NULL);
    Py_DECREF(fn);
    if (!r) return NULL;
    if (load_view(self, v)) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *iv_from_source(EspObject *self, uint64_t seq, uint8_t *dst)
{
    PyObject *s = PyLong_FromUnsignedLongLong(seq);
    if (!s) return NULL;
    PyObject *iv = PyObject_CallOneArg(self->iv_source, s);
    Py_DECREF(s);
    if (!iv) return NULL;
    Py_buffer b;
    if (PyObject_GetBuffer(iv, &b, PyBUF_SIMPLE)) {
        Py_DECREF(iv);
        return NULL;
    }
    if (b.len != self->ivlen) {
        PyBuffer_Release(&b);
        Py_DECREF(iv);
        return PyErr_Format(PyExc_ValueError, "iv_source: expected %d-byte IVs, got %zd",
                            self->ivlen, b.len);
    }
    memcpy(dst, b.buf, (size_t)b.len);
    PyBuffer_Release(&b);
    return iv;
}

/* ================================================================== protect */
typedef struct {
    PyObject *out;     /* the packet being built (NULL: result already in place) */
    uint32_t esp_off;  /* where SPI ‖ seq starts */
    uint32_t ptlen;
    uint32_t udp_off;  /* UDP header over IPv6 to checksum after sealing, or 0 */
    uint64_t seq;
    int rand_iv;
} OJob;

enum { P_DONE = 0, P_JOB = 1, P_PYTHON = 2 };

/* Selector check of an outbound transport packet through the SA's Python `_selectors_ok`. */
static int out_selectors(EspObject *self, View *v, int version, PyObject *pkt, const uint8_t *p,
                         Py_ssize_t l4len, int proto, int l4off)
{
    int alen = version == 4 ? 4 : 16, soff = version == 4 ? 12 : 8;
    PyObject *l4 = pkt;
    if (l4len != PyBytes_GET_SIZE(pkt)) {
        l4 = PyBytes_FromStringAndSize((const char *)p, l4len);
        if (!l4) return -1;
    } else {
        Py_INCREF(l4);
    }
    PyObject *a[6] = {PyLong_FromLong(version),
                      PyBytes_FromStringAndSize((const char *)p + soff, alen),
                      PyBytes_FromStringAndSize((const char *)p + soff + alen, alen),
                      PyLong_FromLong(proto), l4, PyLong_FromLong(l4off)};
    PyObject *r = NULL;
    if (a[0] && a[1] && a[2] && a[3] && a[5])
        r = callback(self, v, 1, s_selectors_ok, a, 6);
    for (int i = 0; i < 6; i++) Py_XDECREF(a[i]);
    if (!r) return -1;
    int ok = PyObject_IsTrue(r);
    Py_DECREF(r);
    return ok;
}

/* Reserve the next sequence number and count the packet: the common tail of every outbound
 * path, before the output exists. Returns P_PYTHON to hand back at the reservation limit. */
static int take_seq(EspObject *self, View *v, uint64_t *seq)
{
    if (v->seq >= v->seq_limit) return P_PYTHON;  /* the next one would pass seq_limit */
    *seq = ++v->seq;
    return P_JOB;
}

static int account_out(EspObject *self, View *v, uint64_t seq, uint64_t nbytes)
{
    uint64_t p = ++v->packets, b = (v->bytes += nbytes);
    if (p >= v->pmark || b >= v->bmark || seq >= v->seq_max) {
        PyObject *a[2] = {PyLong_FromUnsignedLongLong(seq), v->now};
        if (!a[0]) return -1;
        PyObject *r = callback(self, v, 1, s_post_send, a, 2);
        Py_DECREF(a[0]);
        if (!r) return -1;
        Py_DECREF(r);
    }
    return 0;
}

/* Common ESP body writer: SPI ‖ seq ‖ IV ‖ payload ‖ padding ‖ pad length ‖ next header. */
static int write_esp(EspObject *self, uint8_t *esp, uint64_t seq, const uint8_t *payload,
                     size_t plen, size_t zeros, int pad, int nh, OJob *job)
{
    put32(esp, self->spi);
    put32(esp + 4, (uint32_t)seq);
    uint8_t *iv = esp + ESP_HDR, *pt = iv + self->ivlen;
    job->rand_iv = 0;
    if (self->iv_source) {
        PyObject *ivo = iv_from_source(self, seq, iv);
        if (!ivo) return -1;
        Py_DECREF(ivo);
    } else if (self->alg == ALG_CBC_HMAC) {
        job->rand_iv = 1;  /* RFC 3602 §3: unpredictable; drawn in phase 2 */
    } else {
        put64(iv, seq ^ self->iv_mask);
    }
    memcpy(pt, payload, plen);
    if (zeros) memset(pt + plen, 0, zeros);
    uint8_t *t = pt + plen + zeros;
    for (int i = 0; i < pad; i++) t[i] = (uint8_t)(i + 1);
    t[pad] = (uint8_t)pad;
    t[pad + 1] = (uint8_t)nh;
    job->seq = seq;
    job->ptlen = (uint32_t)(plen + zeros + (size_t)pad + 2);
    return 0;
}

/* One outbound packet, phase 1. Returns P_DONE with *res set (a drop), P_JOB with job->out set,
 * P_PYTHON to hand the packet to the Python path, -1 on error. */
static int protect_one(EspObject *self, View *v, PyObject *pkt, PyObject **res, OJob *job)
{
    if (!v->fast || !PyBytes_CheckExact(pkt)) return P_PYTHON;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(pkt);
    Py_ssize_t n = PyBytes_GET_SIZE(pkt);
    job->udp_off = 0;
    if (!self->tunnel) {
        if (n < 20) goto truncated;
        int vihl = p[0];
        if (vihl >> 4 == 6) {
            /* ---- IPv6 transport (no extension headers: those go to Python) */
            if (!self->v6) goto wrong_proto;
            if (n < 40) goto truncated;
            int nh = p[6];
            uint32_t plen = get16(p + 4);
            if (plen == 0 && nh == V6_HOPOPTS) goto malformed;
            if (40 + (Py_ssize_t)plen > n) goto truncated;
            if (nh == V6_HOPOPTS || nh == V6_ROUTING || nh == V6_FRAGMENT || nh == V6_DSTOPTS ||
                nh == V6_AH)
                return P_PYTHON;
            uint32_t end = 40 + plen;
            if (PyTuple_GET_SIZE(SLOT(self, off_selectors))) {
                int ok = out_selectors(self, v, 6, pkt, p, end, nh, 40);
                if (ok < 0) return -1;
                if (!ok) goto selector;
                if (!v->fast) return P_PYTHON;
            }
            uint32_t dlen = plen;
            int pad = (int)(-(dlen + 2) & (uint32_t)self->bmask);
            uint32_t esp_len = (uint32_t)self->overhead + dlen + 2 + (uint32_t)pad;
            uint32_t udp_len = self->encap ? 8 : 0;
            if (udp_len + esp_len > 0xFFFF) goto too_big;
            uint64_t seq;
            if (take_seq(self, v, &seq) == P_PYTHON) return P_PYTHON;
            PyObject *out = PyBytes_FromStringAndSize(NULL, 40 + udp_len + esp_len);
            if (!out) return -1;
            uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
            memcpy(o, p, 40);
            o[6] = self->encap ? PROTO_UDP : PROTO_ESP;
            put16(o + 4, udp_len + esp_len);
            if (self->encap) {
                put16(o + 40, self->sport);
                put16(o + 42, self->dport);
                put16(o + 44, 8 + esp_len);
                put16(o + 46, 0);
                job->udp_off = 40;
            }
            job->out = out;
            job->esp_off = 40 + udp_len;
            if (write_esp(self, o + job->esp_off, seq, p + 40, dlen, 0, pad, nh, job)) return -1;
            if (account_out(self, v, seq, end)) return -1;
            return P_JOB;
        }
        /* ---- IPv4 transport */
        if (vihl != 0x45 && (vihl >> 4 != 4 || (vihl & 15) < 5)) goto malformed;
        if (self->v6) goto wrong_proto;
        uint32_t ihl = (uint32_t)(vihl & 15) << 2, tlen = get16(p + 2);
        if ((Py_ssize_t)tlen > n || tlen < ihl) goto malformed;
        uint32_t ff = get16(p + 6);
        if (ff & 0x3FFF) goto malformed;
        int proto = p[9];
        if (PyTuple_GET_SIZE(SLOT(self, off_selectors))) {
            int ok = out_selectors(self, v, 4, pkt, p, n, proto, (int)ihl);
            if (ok < 0) return -1;
            if (!ok) goto selector;
            if (!v->fast) return P_PYTHON;
        }
        uint32_t plen = tlen - ihl;
        int pad = (int)(-(plen + 2) & (uint32_t)self->bmask);
        uint32_t new_len = ihl + (uint32_t)self->overhead + plen + 2 + (uint32_t)pad;
        int out_proto = PROTO_ESP;
        if (self->encap) {
            new_len += 8;
            out_proto = PROTO_UDP;
        }
        if (new_len > MAX_IPV4_LEN) goto too_big;
        uint64_t seq;
        if (take_seq(self, v, &seq) == P_PYTHON) return P_PYTHON;
        PyObject *out = PyBytes_FromStringAndSize(NULL, new_len);
        if (!out) return -1;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        memcpy(o, p, ihl);
        put16(o + 2, new_len);
        o[9] = (uint8_t)out_proto;
        put16(o + 10, 0);
        put16(o + 10, ~fold(sum16(o, ihl)) & 0xFFFF);
        uint32_t esp_off = ihl;
        if (self->encap) {
            put16(o + ihl, self->sport);
            put16(o + ihl + 2, self->dport);
            put16(o + ihl + 4, new_len - ihl);
            put16(o + ihl + 6, 0);
            esp_off += 8;
        }
        job->out = out;
        job->esp_off = esp_off;
        if (write_esp(self, o + esp_off, seq, p + ihl, plen, 0, pad, proto, job)) return -1;
        if (account_out(self, v, seq, tlen)) return -1;
        return P_JOB;
    }
    /* ---- tunnel mode: the whole inner packet (ipsecsa.datapath.tunnel.inner_info's rules) */
    if (n < 20) goto truncated;
    int first = p[0], tos, nh;
    uint32_t ilen, ff, flow;
    if (first >> 4 == 4) {
        if ((first & 15) < 5) goto malformed;
        ilen = get16(p + 2);
        if ((Py_ssize_t)ilen > n || ilen < (uint32_t)(first & 15) << 2) goto malformed;
        tos = p[1];
        ff = self->df_fixed < 0 ? (uint32_t)(p[6] & 0x40) << 8 : (uint32_t)self->df_fixed;
        flow = 0;
        nh = PROTO_IPIP;
    } else if (first >> 4 == 6) {
        if (n < 40) goto truncated;
        ilen = 40 + get16(p + 4);
        if ((Py_ssize_t)ilen > n || (ilen == 40 && p[6] == 0)) goto malformed;
        tos = (first & 15) << 4 | p[1] >> 4;
        flow = (uint32_t)(p[1] & 15) << 16 | (uint32_t)p[2] << 8 | p[3];
        ff = self->df_fixed < 0 ? 0x4000 : (uint32_t)self->df_fixed;
        nh = PROTO_IPV6;
    } else {
        goto malformed;
    }
    if (PyTuple_GET_SIZE(SLOT(self, off_selectors))) {
        PyObject *inner = pkt;
        if ((Py_ssize_t)ilen != n) {
            inner = PyBytes_FromStringAndSize((const char *)p, ilen);
            if (!inner) return -1;
        } else {
            Py_INCREF(inner);
        }
        PyObject *refused = callback(self, v, 1, s_inner_policy, &inner, 1);
        Py_DECREF(inner);
        if (!refused) return -1;
        if (refused != Py_None) {
            *res = drop_obj(self, refused);
            Py_DECREF(refused);
            return *res ? P_DONE : -1;
        }
        Py_DECREF(refused);
        if (!v->fast) return P_PYTHON;
    }
    uint32_t plen = ilen, zeros = 0;
    if (plen < (uint32_t)self->tfc) {  /* RFC 4303 §2.4 TFC padding after the inner packet */
        zeros = (uint32_t)self->tfc - plen;
        plen = (uint32_t)self->tfc;
    }
    int pad = (int)(-(plen + 2) & (uint32_t)self->bmask);
    uint32_t elen = (uint32_t)self->overhead + plen + 2 + (uint32_t)pad;
    if (self->v6) {
        if (elen + (self->encap ? 8u : 0u) > 0xFFFF) goto too_big;
    } else if (elen + 20 + (self->encap ? 8u : 0u) > MAX_IPV4_LEN) {
        goto too_big;
    }
    uint64_t seq;
    if (take_seq(self, v, &seq) == P_PYTHON) return P_PYTHON;
    if (self->dscp >= 0) tos = self->dscp << 2 | (tos & 3);
    uint32_t udp = self->encap ? 8 : 0, hl = self->v6 ? 40 : 20;
    PyObject *out = PyBytes_FromStringAndSize(NULL, hl + udp + elen);
    if (!out) return -1;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    int oproto = self->encap ? PROTO_UDP : PROTO_ESP;
    if (self->v6) {
        put32(o, 6u << 28 | (uint32_t)tos << 20 | flow);
        put16(o + 4, elen + udp);
        o[6] = (uint8_t)oproto;
        o[7] = (uint8_t)self->ttl;
        memcpy(o + 8, self->src, 16);
        memcpy(o + 24, self->dst, 16);
    } else {
        uint32_t total = elen + 20 + udp;
        v->ident = (v->ident + 1) & 0xFFFF;
        uint32_t c = ~fold((uint64_t)self->o4sum + (uint32_t)tos + total + v->ident + ff) & 0xFFFF;
        o[0] = 0x45;
        o[1] = (uint8_t)tos;
        put16(o + 2, total);
        put16(o + 4, (uint32_t)v->ident);
        put16(o + 6, ff);
        o[8] = (uint8_t)self->ttl;
        o[9] = (uint8_t)oproto;
        put16(o + 10, c);
        memcpy(o + 12, self->src, 4);
        memcpy(o + 16, self->dst, 4);
    }
    if (udp) {
        put16(o + hl, self->sport);
        put16(o + hl + 2, self->dport);
        put16(o + hl + 4, elen + 8);
        put16(o + hl + 6, 0);
        if (self->v6) job->udp_off = hl;
    }
    job->out = out;
    job->esp_off = hl + udp;
    if (write_esp(self, o + job->esp_off, seq, p, ilen, zeros, pad, nh, job)) return -1;
    if (account_out(self, v, seq, ilen)) return -1;
    return P_JOB;

truncated:
    *res = drop(self, R_TRUNCATED);
    return *res ? P_DONE : -1;
malformed:
    *res = drop(self, R_MALFORMED);
    return *res ? P_DONE : -1;
wrong_proto:
    *res = drop(self, R_WRONG_PROTOCOL);
    return *res ? P_DONE : -1;
too_big:
    *res = drop(self, R_TOO_BIG);
    return *res ? P_DONE : -1;
selector:
    *res = drop(self, R_SELECTOR_MISMATCH);
    return *res ? P_DONE : -1;
}

/* Phase 2 of protect: draw CBC IVs, seal, checksum UDP over IPv6. Returns 0 or -1 (library
 * failure, reported with the GIL back). */
static int seal_jobs(EspObject *self, OJob *jobs, Py_ssize_t nj)
{
    int ok = ensure_cipher(self, 1);
    for (Py_ssize_t k = 0; ok && k < nj; k++) {
        OJob *j = &jobs[k];
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(j->out), *esp = o + j->esp_off;
        if (j->rand_iv && RAND_bytes(esp + ESP_HDR, self->ivlen) != 1) {
            ok = 0;
            break;
        }
        if (!seal(self, esp, (int)j->ptlen, j->seq)) {
            ok = 0;
            break;
        }
        if (j->udp_off) {
            uint8_t *u = o + j->udp_off;
            size_t ulen = (size_t)PyBytes_GET_SIZE(j->out) - j->udp_off;
            /* the packet's own IPv6 addresses (transport mode: the hosts'; tunnel: the SA's) */
            put16(u + 6, udp_csum(o + 8, o + 24, 16, u, ulen));
        }
    }
    return ok ? 0 : -1;
}

static int run_locked(EspObject *self, int release, int (*fn)(EspObject *, void *, Py_ssize_t),
                      void *jobs, Py_ssize_t nj)
{
    int rc;
    if (!ensure_crypto(self)) return -1;
    pthread_mutex_t *lock = &self->cx->lock;
    if (release) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(lock);
        rc = fn(self, jobs, nj);
        pthread_mutex_unlock(lock);
        Py_END_ALLOW_THREADS
    } else {
        pthread_mutex_lock(lock);
        rc = fn(self, jobs, nj);
        pthread_mutex_unlock(lock);
    }
    if (rc) PyErr_SetString(PyExc_RuntimeError, "OpenSSL EVP failure in the native ESP path");
    return rc;
}

static int seal_fn(EspObject *self, void *jobs, Py_ssize_t nj) { return seal_jobs(self, jobs, nj); }

static int parse_now(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **now)
{
    *now = Py_None;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "expected (packet(s), now=None)");
        return -1;
    }
    if (nargs == 2) *now = args[1];
    if (kwnames) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            if (nargs == 2 || !PyUnicode_Check(PyTuple_GET_ITEM(kwnames, i)) ||
                PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, i), "now")) {
                PyErr_SetString(PyExc_TypeError, "unexpected keyword argument");
                return -1;
            }
            *now = args[nargs + i];
        }
    }
    return 0;
}

/* The batch clock: the caller's `now`, or one monotonic reading when the SA has a deadline
 * (the Python path reads time.monotonic() itself in that case). */
static PyObject *batch_now(EspObject *self, PyObject *now)
{
    if (now != Py_None || SLOT(self, off_timed) != Py_True) {
        Py_INCREF(now);
        return now;
    }
    return PyFloat_FromDouble(monotonic_now());
}

/* Protect pkts[0..n) into results[0..n) (all NULL on entry: a list's fresh items or a stack
 * array). 0, or -1 with an exception and every result cleared. */
static int protect_into(EspObject *self, PyObject *const *pkts, Py_ssize_t n, PyObject *now_in,
                        PyObject **results)
{
    OJob stackjobs[1];
    Py_ssize_t stackpos[1];
    OJob *jobs = n <= 1 ? stackjobs : PyMem_Malloc(sizeof(OJob) * (size_t)n);
    Py_ssize_t *pos = n <= 1 ? stackpos : PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n);
    PyObject *now = batch_now(self, now_in);
    Py_ssize_t nj = 0, bytes = 0;
    View v;
    if (!jobs || !pos || !now) {
        PyErr_NoMemory();
        goto fail;
    }
    v.now = now;
    if (load_view(self, &v)) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *res = NULL;
        int rc = protect_one(self, &v, pkts[i], &res, &jobs[nj]);
        if (rc < 0) goto fail;
        if (rc == P_DONE) {
            results[i] = res;
        } else if (rc == P_JOB) {
            bytes += PyBytes_GET_SIZE(jobs[nj].out);
            pos[nj++] = i;
        } else {
            /* The Python path of the same SA, with the state stored first and reloaded after. */
            if (store_view(self, &v, 1)) goto fail;
            res = call_py(self, s_py_out, pkts[i], &v);
            if (!res || load_view(self, &v)) {
                Py_XDECREF(res);
                goto fail;
            }
            results[i] = res;
        }
    }
    if (store_view(self, &v, 1)) goto fail;
    if (nj && run_locked(self, nj >= GIL_MIN_PACKETS || bytes >= GIL_MIN_BYTES, seal_fn, jobs, nj))
        goto fail;
    for (Py_ssize_t k = 0; k < nj; k++) {
        PyObject *r = make_result(jobs[k].out);
        jobs[k].out = NULL;
        if (!r) {
            nj = 0;  /* outputs from k on were consumed or freed */
            goto fail;
        }
        results[pos[k]] = r;
    }
    Py_DECREF(now);
    if (jobs != stackjobs) {
        PyMem_Free(jobs);
        PyMem_Free(pos);
    }
    return 0;
fail:
    for (Py_ssize_t k = 0; k < nj; k++) Py_XDECREF(jobs[k].out);
    if (jobs && jobs != stackjobs) PyMem_Free(jobs);
    if (pos && pos != stackpos) PyMem_Free(pos);
    Py_XDECREF(now);
    for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(results[i]);
    return -1;
}

static PyObject *protect_list(EspObject *self, PyObject *const *pkts, Py_ssize_t n, PyObject *now)
{
    PyObject *results = PyList_New(n);
    if (!results) return NULL;
    if (protect_into(self, pkts, n, now, ((PyListObject *)results)->ob_item)) {
        Py_DECREF(results);
        return NULL;
    }
    return results;
}

/* ================================================================== unprotect */
enum { J_DROP = 0, J_CAND = 1 };

typedef struct {
    PyObject *pkt;     /* strong */
    PyObject *out;     /* strong: room for header + plaintext */
    uint64_t seq;
    uint32_t lo;
    int kind, reason, ok;
    uint32_t off, esp_off, ctlen, room;
    int version, outer_ecn;
} IJob;

/* Phase 1 of one inbound packet: J_DROP (job->reason), J_CAND, or P_PYTHON. Reads only. */
static int unprotect_scan(EspObject *self, PyObject *pkt, IJob *j)
{
    if (!PyBytes_CheckExact(pkt)) return P_PYTHON;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(pkt);
    Py_ssize_t n = PyBytes_GET_SIZE(pkt);
    uint32_t off, end;
    int proto, version;
    j->kind = J_DROP;
    if (n < 20) { j->reason = R_TRUNCATED; return J_DROP; }
    version = p[0] >> 4;
    if (version == 4 && !self->v6) {
        uint32_t ihl = (uint32_t)(p[0] & 15) << 2, tlen = get16(p + 2);
        if (ihl < 20 || tlen < ihl || (Py_ssize_t)tlen > n) { j->reason = R_MALFORMED; return J_DROP; }
        if (fold(sum16(p, ihl)) != 0xFFFF) { j->reason = R_BAD_CHECKSUM; return J_DROP; }
        if (get16(p + 6) & 0x3FFF) return P_PYTHON;  /* a fragment: reassembly in Python */
        j->outer_ecn = p[1] & 3;
        proto = p[9];
        off = ihl;
        end = tlen;
    } else if (version == 6 && self->v6) {
        if (n < 40) { j->reason = R_TRUNCATED; return J_DROP; }
        uint32_t plen = get16(p + 4);
        int nh = p[6];
        if (plen == 0 && nh == V6_HOPOPTS) { j->reason = R_MALFORMED; return J_DROP; }
        if (40 + (Py_ssize_t)plen > n) { j->reason = R_TRUNCATED; return J_DROP; }
        if (nh == V6_HOPOPTS || nh == V6_ROUTING || nh == V6_FRAGMENT || nh == V6_DSTOPTS)
            return P_PYTHON;  /* extension headers: the Python chain parser */
        j->outer_ecn = (int)(get32(p) >> 20) & 3;
        proto = nh;
        off = 40;
        end = 40 + plen;
    } else {
        j->reason = (version == 4 || version == 6) ? R_WRONG_PROTOCOL : R_MALFORMED;
        return J_DROP;
    }
    uint32_t esp_off = off;
    if (self->encap) {
        if (proto != PROTO_UDP) { j->reason = R_WRONG_PROTOCOL; return J_DROP; }
        if (end - off < 8) { j->reason = R_TRUNCATED; return J_DROP; }
        uint32_t ulen = get16(p + off + 4);
        if (ulen < 8 || off + ulen > end) { j->reason = R_BAD_UDP; return J_DROP; }
        end = off + ulen;
        if (version == 6) {
            uint32_t got = get16(p + off + 6);
            if (!got || udp_csum(p + 8, p + 24, 16, p + off, ulen) != got) {
                j->reason = R_BAD_UDP;  /* RFC 8200 §8.1 */
                return J_DROP;
            }
        }
        uint32_t sz = ulen - 8;
        const uint8_t *u = p + off + 8;
        if (sz == 1) { j->reason = u[0] == 0xFF ? R_NATT_KEEPALIVE : R_TRUNCATED; return J_DROP; }
        if (sz >= 4 && !u[0] && !u[1] && !u[2] && !u[3]) { j->reason = R_NON_ESP_MARKER; return J_DROP; }
        if (sz < 8) { j->reason = R_TRUNCATED; return J_DROP; }
        esp_off = off + 8;
    } else if (proto != PROTO_ESP) {
        j->reason = R_WRONG_PROTOCOL;
        return J_DROP;
    }
    if (end - esp_off < (uint32_t)self->min_esp) { j->reason = R_TRUNCATED; return J_DROP; }
    if (get32(p + esp_off) != self->spi) { j->reason = R_BAD_SPI; return J_DROP; }
    j->lo = get32(p + esp_off + 4);
    j->seq = replay_check(self->replay, j->lo);
    if (!j->seq) { j->reason = R_REPLAY; return J_DROP; }
    uint32_t ct_off = esp_off + ESP_HDR + (uint32_t)self->ivlen;
    uint32_t ctlen = end - ct_off - (uint32_t)self->icvlen;
    if (self->check_blocks && ctlen % (uint32_t)self->block) { j->reason = R_BAD_LENGTH; return J_DROP; }
    j->kind = J_CAND;
    j->version = version;
    j->off = off;
    j->esp_off = esp_off;
    j->ctlen = ctlen;
    j->room = self->tunnel ? 0 : off;
    return J_CAND;
}

static int open_jobs(EspObject *self, void *vjobs, Py_ssize_t nj)
{
    IJob *jobs = vjobs;
    if (!ensure_cipher(self, 0)) return -1;
    for (Py_ssize_t k = 0; k < nj; k++) {
        IJob *j = &jobs[k];
        if (j->kind != J_CAND) continue;
        const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(j->pkt);
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(j->out) + j->room;
        int rc = open_(self, p + j->esp_off, (int)j->ctlen, j->seq, o);
        if (rc < 0) return -1;
        j->ok = rc;
    }
    return 0;
}

/* Tunnel mode delivery (SecurityAssociation._deliver_tunnel). Consumes j->out. */
static PyObject *deliver_tunnel(EspObject *self, View *v, IJob *j, uint32_t dlen, int nh)
{
    PyObject *out = j->out;
    j->out = NULL;
    uint8_t *pl = (uint8_t *)PyBytes_AS_STRING(out);
    uint32_t ilen = 0;
    int inner_ecn = 0, r = -1;
    if (nh == PROTO_IPIP) {
        if (dlen < 20 || pl[0] >> 4 != 4 || (pl[0] & 15) < 5) r = R_BAD_INNER;
        else {
            ilen = get16(pl + 2);
            if (ilen > dlen || ilen < (uint32_t)(pl[0] & 15) << 2) r = R_BAD_INNER;
            inner_ecn = pl[1] & 3;
        }
    } else if (nh == PROTO_IPV6) {
        if (dlen < 40 || pl[0] >> 4 != 6) r = R_BAD_INNER;
        else {
            ilen = 40 + get16(pl + 4);
            if (ilen > dlen || (ilen == 40 && pl[6] == 0)) r = R_BAD_INNER;
            inner_ecn = pl[1] >> 4 & 3;
        }
    } else {
        r = R_BAD_INNER;
    }
    if (r < 0 && j->outer_ecn != inner_ecn) {
        int ecn = ECN_DECAP[inner_ecn][j->outer_ecn];
        if (ecn < 0) r = R_ECN_DROP;
        else if (ecn != inner_ecn) {
            if (nh == PROTO_IPIP) {  /* RFC 1624 incremental checksum update */
                uint32_t old = get16(pl);
                pl[1] = (uint8_t)((pl[1] & 0xFC) | ecn);
                uint32_t s = (~get16(pl + 10) & 0xFFFF) + (~old & 0xFFFF) + get16(pl);
                put16(pl + 10, ~fold(s) & 0xFFFF);
            } else {
                pl[1] = (uint8_t)((pl[1] & 0xCF) | ecn << 4);
            }
        }
    }
    if (r >= 0) {
        Py_DECREF(out);
        return drop(self, r);
    }
    if (ilen != (uint32_t)PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, ilen)) return NULL;
    if (PyTuple_GET_SIZE(SLOT(self, off_selectors))) {
        PyObject *refused = callback(self, v, 0, s_inner_policy, &out, 1);
        if (!refused) {
            Py_DECREF(out);
            return NULL;
        }
        if (refused != Py_None) {
            Py_DECREF(out);
            PyObject *d = drop_obj(self, refused);
            Py_DECREF(refused);
            return d;
        }
        Py_DECREF(refused);
    }
    uint64_t pk = ++v->packets, b = (v->bytes += ilen);
    if (pk >= v->pmark || b >= v->bmark) {
        PyObject *r2 = callback(self, v, 0, s_lifetime_crossed, &v->now, 1);
        if (!r2) {
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(r2);
    }
    return make_result(out);
}

/* Transport mode delivery: the header that carried ESP rebuilt around the payload. */
static PyObject *deliver_transport(EspObject *self, View *v, IJob *j, uint32_t dlen, int nh)
{
    PyObject *out = j->out;
    j->out = NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(j->pkt);
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    uint32_t off = j->off;
    memcpy(o, p, off);
    if (j->version == 4) {
        put16(o + 2, off + dlen);
        o[9] = (uint8_t)nh;
        put16(o + 10, 0);
        put16(o + 10, ~fold(sum16(o, off)) & 0xFFFF);
    } else {
        o[6] = (uint8_t)nh;
        put16(o + 4, off - 40 + dlen);
    }
    if (off + dlen != (uint32_t)PyBytes_GET_SIZE(out) && _PyBytes_Resize(&out, off + dlen))
        return NULL;
    if (self->encap || PyTuple_GET_SIZE(SLOT(self, off_selectors)) ||
        (j->version == 6 && (nh == V6_HOPOPTS || nh == V6_ROUTING || nh == V6_FRAGMENT ||
                             nh == V6_DSTOPTS))) {
        /* Extension headers after ESP, the NAT checksum fix-up (RFC 3948 §3.1.2) and the
         * selectors: the Python reference (EspSA._transport_checks). */
        PyObject *a[3] = {out, PyLong_FromUnsignedLong(off), PyLong_FromLong(nh)};
        if (!a[1] || !a[2]) {
            Py_XDECREF(a[1]);
            Py_XDECREF(a[2]);
            Py_DECREF(out);
            return NULL;
        }
        PyObject *r = callback(self, v, 0, s_transport_checks, a, 3);
        Py_DECREF(a[1]);
        Py_DECREF(a[2]);
        Py_DECREF(out);
        if (!r) return NULL;
        if (!PyBytes_CheckExact(r)) {  /* a DropReason */
            PyObject *d = drop_obj(self, r);
            Py_DECREF(r);
            return d;
        }
        out = r;
    }
    uint64_t pk = ++v->packets, b = (v->bytes += off + dlen);
    if (pk >= v->pmark || b >= v->bmark) {
        PyObject *r2 = callback(self, v, 0, s_lifetime_crossed, &v->now, 1);
        if (!r2) {
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(r2);
    }
    return make_result(out);
}

/* Phase 3 for one candidate whose crypto is done (window as a sequential receiver sees it). */
static PyObject *finish_one(EspObject *self, View *v, IJob *j, int *rerun)
{
    uint64_t seq = replay_check(self->replay, j->lo);
    *rerun = 0;
    if (!seq) return drop(self, R_REPLAY);
    if (seq != j->seq) {  /* the window moved across an ESN boundary: a new ICV input */
        *rerun = 1;
        return NULL;
    }
    if (!j->ok) return drop(self, R_ICV_FAILURE);
    if (!replay_commit(self->replay, seq)) return drop(self, R_REPLAY);
    uint8_t *pl = (uint8_t *)PyBytes_AS_STRING(j->out) + j->room;
    uint32_t ptlen = j->ctlen;
    int padlen = pl[ptlen - 2], nh = pl[ptlen - 1];
    if ((uint32_t)padlen + 2 > ptlen) return drop(self, R_BAD_PADDING);
    uint32_t dlen = ptlen - 2 - (uint32_t)padlen;
    for (int i = 0; i < padlen; i++)
        if (pl[dlen + (uint32_t)i] != (uint8_t)(i + 1)) return drop(self, R_BAD_PADDING);
    if (nh == PROTO_NONE) return drop(self, R_DUMMY_PACKET);
    return self->tunnel ? deliver_tunnel(self, v, j, dlen, nh) : deliver_transport(self, v, j, dlen, nh);
}

static void release_job(IJob *j)
{
    Py_CLEAR(j->pkt);
    Py_CLEAR(j->out);
}

/* Flush a segment of scanned packets: open them, then finish them in order. */
static int flush_in(EspObject *self, View *v, IJob *jobs, Py_ssize_t nj, Py_ssize_t *pos,
                    PyObject *results)
{
    Py_ssize_t ncand = 0, bytes = 0;
    for (Py_ssize_t k = 0; k < nj; k++)
        if (jobs[k].kind == J_CAND) {
            ncand++;
            bytes += jobs[k].ctlen;
        }
    if (ncand && run_locked(self, ncand >= GIL_MIN_PACKETS || bytes >= GIL_MIN_BYTES,
                            open_jobs, jobs, nj))
        return -1;
    if (load_view(self, v)) return -1;
    for (Py_ssize_t k = 0; k < nj; k++) {
        IJob *j = &jobs[k];
        PyObject *res = NULL;
        int rerun = !v->fast;
        if (!rerun) {
            if (j->kind == J_DROP) {
                /* A replay verdict was taken against the window before this segment. */
                if (j->reason == R_REPLAY) rerun = replay_check(self->replay, j->lo) != 0;
                if (!rerun) res = drop(self, j->reason);
            } else {
                res = finish_one(self, v, j, &rerun);
            }
        }
        if (rerun) {
            if (store_view(self, v, 0)) return -1;
            res = call_py(self, s_py_in, j->pkt, v);
            if (res && load_view(self, v)) Py_CLEAR(res);
        }
        if (!res) return -1;
        PyList_SET_ITEM(results, pos[k], res);
        release_job(j);
    }
    return store_view(self, v, 0);
}

static PyObject *unprotect_list(EspObject *self, PyObject *const *pkts, Py_ssize_t n, PyObject *now_in)
{
    PyObject *results = PyList_New(n);
    if (!results) return NULL;
    IJob stackjobs[1];
    Py_ssize_t stackpos[1];
    IJob *jobs = n <= 1 ? stackjobs : PyMem_Calloc((size_t)n, sizeof(IJob));
    Py_ssize_t *pos = n <= 1 ? stackpos : PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n);
    PyObject *now = batch_now(self, now_in);
    Py_ssize_t nj = 0;
    View v;
    if (!jobs || !pos || !now) {
        PyErr_NoMemory();
        goto fail;
    }
    memset(jobs, 0, sizeof(IJob) * (size_t)(n ? n : 1));
    v.now = now;
    if (load_view(self, &v)) goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        IJob *j = &jobs[nj];
        int rc = (v.fast && self->replay) ? unprotect_scan(self, pkts[i], j) : P_PYTHON;
        if (rc == P_PYTHON) {
            if (nj && flush_in(self, &v, jobs, nj, pos, results)) goto fail;
            nj = 0;
            if (store_view(self, &v, 0)) goto fail;
            PyObject *res = call_py(self, s_py_in, pkts[i], &v);
            if (!res) goto fail;
            PyList_SET_ITEM(results, i, res);
            if (load_view(self, &v)) goto fail;
            continue;
        }
        j->pkt = pkts[i];
        Py_INCREF(j->pkt);
        if (rc == J_CAND) {
            j->out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)j->room + j->ctlen + 16);
            if (!j->out) {
                nj++;
                goto fail;
            }
        }
        pos[nj++] = i;
    }
    if (nj && flush_in(self, &v, jobs, nj, pos, results)) goto fail;
    nj = 0;
    Py_DECREF(now);
    if (jobs != stackjobs) {
        PyMem_Free(jobs);
        PyMem_Free(pos);
    }
    return results;
fail:
    for (Py_ssize_t k = 0; k < nj; k++) release_job(&jobs[k]);
    if (jobs && jobs != stackjobs) PyMem_Free(jobs);
    if (pos && pos != stackpos) PyMem_Free(pos);
    Py_XDECREF(now);
    Py_DECREF(results);
    return NULL;
}

/* ================================================================== Python API of Esp */
static PyObject *one(PyObject *list)
{
    if (!list) return NULL;
    PyObject *r = PyList_GET_ITEM(list, 0);
    Py_INCREF(r);
    Py_DECREF(list);
    return r;
}

static PyObject *Esp_protect(EspObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *now;
    if (parse_now(args, nargs, kw, &now)) return NULL;
    PyObject *r = NULL;
    return protect_into(self, args, 1, now, &r) ? NULL : r;
}

static PyObject *Esp_unprotect(EspObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw)
{
    PyObject *now;
    if (parse_now(args, nargs, kw, &now)) return NULL;
    return one(unprotect_list(self, args, 1, now));
}

static PyObject *batch(EspObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kw, int out)
{
    PyObject *now;
    if (parse_now(args, nargs, kw, &now)) return NULL;
    PyObject *seq = PySequence_Fast(args[0], "packets must be an iterable of bytes");
    if (!seq) return NULL;
    PyObject *r = out ? protect_list(self, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq), now)
                      : unprotect_list(self, PySequence_Fast_ITEMS(seq), PySequence_Fast_GET_SIZE(seq), now);
    Py_DECREF(seq);
    return r;
}
static PyObject *Esp_protect_batch(EspObject *self, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{
    return batch(self, a, n, kw, 1);
}
static PyObject *Esp_unprotect_batch(EspObject *self, PyObject *const *a, Py_ssize_t n, PyObject *kw)
{
    return batch(self, a, n, kw, 0);
}

/* Calling the engine object (what the SA binds as its protect or unprotect). */
static PyObject *Esp_call_protect(PyObject *self, PyObject *const *args, size_t nargsf,
                                  PyObject *kw)
{
    return Esp_protect((EspObject *)self, args, PyVectorcall_NARGS(nargsf), kw);
}
static PyObject *Esp_call_unprotect(PyObject *self, PyObject *const *args, size_t nargsf,
                                    PyObject *kw)
{
    return Esp_unprotect((EspObject *)self, args, PyVectorcall_NARGS(nargsf), kw);
}

static int Esp_traverse(EspObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sa);
    Py_VISIT(self->replay);
    Py_VISIT(self->iv_source);
    return 0;
}
static int Esp_clear(EspObject *self)
{
    Py_CLEAR(self->sa);
    Py_CLEAR(self->replay);
    Py_CLEAR(self->iv_source);
    return 0;
}
static void Esp_dealloc(EspObject *self)
{
    PyObject_GC_UnTrack(self);
    Esp_clear(self);
    Crypto *cx = self->cx;
    if (cx) {
        EVP_CIPHER_CTX_free(cx->ectx);
        EVP_CIPHER_CTX_free(cx->dctx);
        EVP_MAC_CTX_free(cx->emac);
        EVP_MAC_CTX_free(cx->dmac);
        pthread_mutex_destroy(&cx->lock);
        PyMem_RawFree(cx);
        self->cx = NULL;
    }
    if (self->ikey) {
        OPENSSL_cleanse(self->ikey, self->ikeylen);
        PyMem_Free(self->ikey);
        self->ikey = NULL;
    }
    OPENSSL_cleanse(self->key, sizeof self->key);
    OPENSSL_cleanse(self->salt, sizeof self->salt);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int copy_bytes(PyObject *o, uint8_t *dst, int cap, int *len, const char *field)
{
    Py_buffer b;
    if (PyObject_GetBuffer(o, &b, PyBUF_SIMPLE)) return -1;
    if (b.len > cap) {
        PyBuffer_Release(&b);
        PyErr_Format(PyExc_ValueError, "%s: too long", field);
        return -1;
    }
    memcpy(dst, b.buf, (size_t)b.len);
    *len = (int)b.len;
    PyBuffer_Release(&b);
    return 0;
}

static PyObject *Esp_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sa", "alg", "key", "salt", "ikey", "md", "icv_len", "iv_len",
                             "block", "tunnel", "v6", "encap", "sport", "dport", "src", "dst",
                             "ttl", "dscp", "df", "tfc", "esn", "replay", "iv_mask", "iv_source",
                             NULL};
    PyObject *sa, *key, *salt, *ikey, *md, *src, *dst, *replay, *iv_source;
    int alg, icv, ivl, block, tunnel, v6, encap, sport, dport, ttl, dscp, df, tfc, esn;
    unsigned long long iv_mask;
    if (!ready) {
        PyErr_SetString(PyExc_RuntimeError, "ipsecsa._fastesp.setup() was not called");
        return NULL;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OiOOOOiiippiiiOOiiiipOKO:Esp", kwlist, &sa, &alg,
                                     &key, &salt, &ikey, &md, &icv, &ivl, &block, &tunnel, &v6,
                                     &encap, &sport, &dport, &src, &dst, &ttl, &dscp, &df, &tfc,
                                     &esn, &replay, &iv_mask, &iv_source))
        return NULL;
    if (replay != Py_None && !Py_IS_TYPE(replay, &Replay_Type)) {
        PyErr_SetString(PyExc_TypeError, "replay must be a _fastesp.Replay or None");
        return NULL;
    }
    EspObject *self = (EspObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    int len, saltlen, keylen, ikeylen;
    uint8_t ikeybuf[64];
    self->alg = (uint8_t)alg;
    if (copy_bytes(key, self->key, 32, &keylen, "key") ||
        copy_bytes(salt, self->salt, 4, &saltlen, "salt"))
        goto fail;
    self->keylen = (uint8_t)keylen;
    if (alg == ALG_GCM || alg == ALG_GMAC || alg == ALG_CBC_HMAC) {
        if (keylen != 16 && keylen != 24 && keylen != 32) goto badkey;
        if (alg != ALG_CBC_HMAC && saltlen != 4) goto badkey;
    } else if (alg == ALG_CHACHA) {
        if (keylen != 32 || saltlen != 4) goto badkey;
    } else {
        PyErr_SetString(PyExc_ValueError, "unknown algorithm");
        goto fail;
    }
    if (alg == ALG_CBC_HMAC) {
        if (copy_bytes(ikey, ikeybuf, 64, &ikeylen, "ikey")) goto fail;
        self->ikey = PyMem_Malloc(ikeylen ? (size_t)ikeylen : 1);
        if (!self->ikey) {
            OPENSSL_cleanse(ikeybuf, sizeof ikeybuf);
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(self->ikey, ikeybuf, (size_t)ikeylen);
        OPENSSL_cleanse(ikeybuf, sizeof ikeybuf);
        self->ikeylen = (uint8_t)ikeylen;
        const char *m = PyUnicode_AsUTF8(md);
        size_t i = 0;
        while (m && i < NDIGESTS && strcmp(m, DIGESTS[i])) i++;
        if (!m || i == NDIGESTS) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "unknown HMAC digest");
            goto fail;
        }
        self->md = (uint8_t)i;
    }
    if (!cipher_of(self)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL lacks the cipher");
        goto fail;
    }
    if (icv < 0 || icv > 32 || (alg != ALG_CBC_HMAC && icv > 16) || ivl < 0 || ivl > 16 ||
        block < 1 || block > 16 || (block & (block - 1)) || ttl < 0 || ttl > 255 ||
        dscp < -1 || dscp > 63 || (df != -1 && df != 0 && df != 0x4000) || tfc < 0 ||
        sport < 0 || sport > 65535 || dport < 0 || dport > 65535) {
        PyErr_SetString(PyExc_ValueError, "bad lengths");
        goto fail;
    }
    self->icvlen = (uint8_t)icv;
    self->ivlen = (uint8_t)ivl;
    self->block = (uint8_t)block;
    self->bmask = (uint8_t)(block - 1);
    self->check_blocks = block > 4;
    self->min_esp = (uint16_t)(ESP_HDR + ivl + (block > 4 ? block : 4) + icv);
    self->overhead = (uint16_t)(ESP_HDR + ivl + icv);
    self->tunnel = (uint8_t)tunnel;
    self->v6 = (uint8_t)v6;
    self->encap = (uint8_t)encap;
    self->sport = (uint16_t)sport;
    self->dport = (uint16_t)dport;
    self->alen = v6 ? 16 : 4;
    if (copy_bytes(src, self->src, 16, &len, "src") || len != self->alen ||
        copy_bytes(dst, self->dst, 16, &len, "dst") || len != self->alen) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "address length");
        goto fail;
    }
    self->ttl = (uint8_t)ttl;
    self->dscp = (int16_t)dscp;
    self->df_fixed = (int16_t)df;
    self->tfc = (uint32_t)tfc;
    self->esn = (uint8_t)esn;
    self->iv_mask = iv_mask;
    if (!v6)
        self->o4sum = (0x45u << 8) + ((uint32_t)ttl << 8) + (uint32_t)(encap ? PROTO_UDP : PROTO_ESP) +
                      (uint32_t)sum16(self->src, 4) + (uint32_t)sum16(self->dst, 4);
    PyObject *spi = PyObject_GetAttrString(sa, "spi");
    if (!spi) goto fail;
    self->spi = (uint32_t)PyLong_AsUnsignedLong(spi);
    Py_DECREF(spi);
    if (PyErr_Occurred()) goto fail;
    PyObject *dir = PyObject_GetAttrString(sa, "direction");
    if (!dir) goto fail;
    int outbound = PyUnicode_Check(dir) && !PyUnicode_CompareWithASCIIString(dir, "outbound");
    Py_DECREF(dir);
    self->call = outbound ? Esp_call_protect : Esp_call_unprotect;
    Py_INCREF(sa);
    self->sa = sa;
    if (replay != Py_None) {
        Py_INCREF(replay);
        self->replay = (ReplayObject *)replay;
    }
    if (iv_source != Py_None) {
        Py_INCREF(iv_source);
        self->iv_source = iv_source;
    }
    return (PyObject *)self;
badkey:
    PyErr_SetString(PyExc_ValueError, "key or salt length");
fail:
    Py_DECREF(self);
    return NULL;
}

static PyObject *Esp_repr(EspObject *self)
{
    return PyUnicode_FromFormat("<_fastesp.Esp spi=0x%08x alg=%d icv=%d (keys hidden)>", self->spi,
                                self->alg, self->icvlen);
}

static PyObject *Esp_get_iv_mask(EspObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->iv_mask);
}
static PyObject *Esp_get_iv_source(EspObject *self, void *c)
{
    PyObject *s = self->iv_source ? self->iv_source : Py_None;
    Py_INCREF(s);
    return s;
}
static PyGetSetDef Esp_getset[] = {
    {"iv_mask", (getter)Esp_get_iv_mask, NULL,
     "the counter-IV mask (IV = seq ^ mask; public, as every IV is)", NULL},
    {"iv_source", (getter)Esp_get_iv_source, NULL,
     "the known-answer tests' IV source, or None", NULL},
    {NULL}
};

static PyMethodDef Esp_methods[] = {
    {"protect", (PyCFunction)(void (*)(void))Esp_protect, METH_FASTCALL | METH_KEYWORDS,
     "protect(packet, now=None) -> Result"},
    {"unprotect", (PyCFunction)(void (*)(void))Esp_unprotect, METH_FASTCALL | METH_KEYWORDS,
     "unprotect(packet, now=None) -> Result"},
    {"protect_batch", (PyCFunction)(void (*)(void))Esp_protect_batch, METH_FASTCALL | METH_KEYWORDS,
     "protect_batch(packets, now=None) -> list[Result]"},
    {"unprotect_batch", (PyCFunction)(void (*)(void))Esp_unprotect_batch,
     METH_FASTCALL | METH_KEYWORDS, "unprotect_batch(packets, now=None) -> list[Result]"},
    {NULL}
};

static PyTypeObject Esp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._fastesp.Esp",
    .tp_doc = "The native ESP engine of one SA (state stays in the SA object). Calling it is "
              "protect(packet, now=None) on an outbound SA, unprotect(packet, now=None) on "
              "any other.",
    .tp_basicsize = sizeof(EspObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(EspObject, call),
    .tp_call = PyVectorcall_Call,
    .tp_getset = Esp_getset,
    .tp_new = Esp_new,
    .tp_dealloc = (destructor)Esp_dealloc,
    .tp_traverse = (traverseproc)Esp_traverse,
    .tp_clear = (inquiry)Esp_clear,
    .tp_methods = Esp_methods,
    .tp_repr = (reprfunc)Esp_repr,
};

/* ================================================================== Lock */
/* The lock of an SA context (ipsecsa.wfp): threading.Lock's Python API, but a lock that the
 * engine's native outbound route (Flows below) takes directly, without a Python call. Not
 * reentrant, no owner (any thread may release, as with threading.Lock).
 *
 * `locked` is the lock itself: taking it without waiting is one compare-and-swap, releasing
 * it one store (plus a signal only when someone waits). A waiter registers in `waiters` and
 * sleeps on the condition variable, with the GIL released, in slices of WAIT_SLICE_NS after
 * each of which it runs the signal handlers (so Ctrl-C interrupts a wait, as with
 * threading.Lock). No wake-up is lost: a releaser stores `locked = 0` and then reads `waiters`;
 * a waiter increments `waiters` and then tries the lock, both sequentially consistent, so one
 * of them sees the other's write; the signal is sent under the mutex the waiter holds from its
 * failed try until it sleeps. */
#define WAIT_SLICE_NS 50000000L

typedef struct {
    PyObject_HEAD
    atomic_int locked;
    atomic_int waiters;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} LockObject;

static PyTypeObject Lock_Type;

static PyObject *Lock_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    LockObject *self = (LockObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    atomic_init(&self->locked, 0);
    atomic_init(&self->waiters, 0);
    pthread_condattr_t attr;
    if (pthread_mutex_init(&self->mu, NULL) || pthread_condattr_init(&attr)) goto fail;
    if (pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) || pthread_cond_init(&self->cv, &attr)) {
        pthread_condattr_destroy(&attr);
        pthread_mutex_destroy(&self->mu);
        goto fail;
    }
    pthread_condattr_destroy(&attr);
    return (PyObject *)self;
fail:
    Py_TYPE(self)->tp_free((PyObject *)self);
    return PyErr_NoMemory();
}

static void Lock_dealloc(LockObject *self)
{
    pthread_cond_destroy(&self->cv);
    pthread_mutex_destroy(&self->mu);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Take the lock without waiting: 1 if taken. */
static inline int lock_try(LockObject *l)
{
    int expected = 0;
    return atomic_compare_exchange_strong(&l->locked, &expected, 1);
}

static inline void lock_release(LockObject *l)
{
    atomic_store(&l->locked, 0);
    if (atomic_load(&l->waiters)) {
        pthread_mutex_lock(&l->mu);
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
    }
}

/* Wait for the lock (timeout < 0: forever) with the GIL released. 1 taken, 0 timed out, -1 an
 * exception raised by a signal handler. */
static int lock_wait(LockObject *l, double timeout)
{
    if (lock_try(l)) return 1;
    if (timeout == 0) return 0;
    double deadline = timeout > 0 ? monotonic_now() + timeout : 0;
    for (;;) {
        long slice = WAIT_SLICE_NS;
        if (timeout > 0) {
            double left = deadline - monotonic_now();
            if (left <= 0) return lock_try(l);
            if (left * 1e9 < (double)slice) slice = (long)(left * 1e9) + 1;
        }
        int got;
        Py_BEGIN_ALLOW_THREADS
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += slice;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec += ts.tv_nsec / 1000000000L;
            ts.tv_nsec %= 1000000000L;
        }
        pthread_mutex_lock(&l->mu);
        atomic_fetch_add(&l->waiters, 1);
        while (!(got = lock_try(l)))
            if (pthread_cond_timedwait(&l->cv, &l->mu, &ts)) {
                got = lock_try(l);
                break;
            }
        atomic_fetch_sub(&l->waiters, 1);
        pthread_mutex_unlock(&l->mu);
        Py_END_ALLOW_THREADS
        if (got) return 1;
        if (PyErr_CheckSignals() < 0) return -1;
    }
}

static PyObject *Lock_acquire(LockObject *self, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pd:acquire", kwlist, &blocking, &timeout))
        return NULL;
    if (!blocking && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "can't specify a timeout for a non-blocking call");
        return NULL;
    }
    if (timeout < 0 && timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "timeout value must be a non-negative number");
        return NULL;
    }
    int r = lock_wait(self, blocking ? timeout : 0);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

static PyObject *Lock_release(LockObject *self, PyObject *unused)
{
    if (!atomic_load(&self->locked)) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return NULL;
    }
    lock_release(self);
    Py_RETURN_NONE;
}

static PyObject *Lock_enter(LockObject *self, PyObject *unused)
{
    int r = lock_wait(self, -1);
    if (r < 0) return NULL;
    Py_RETURN_TRUE;
}

static PyObject *Lock_exit(LockObject *self, PyObject *const *args, Py_ssize_t n)
{
    return Lock_release(self, NULL);
}

static PyObject *Lock_locked(LockObject *self, PyObject *unused)
{
    return PyBool_FromLong(atomic_load(&self->locked));
}

static PyObject *Lock_repr(LockObject *self)
{
    return PyUnicode_FromFormat("<_fastesp.Lock %s>",
                                atomic_load(&self->locked) ? "locked" : "unlocked");
}

static PyMethodDef Lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))Lock_acquire, METH_VARARGS | METH_KEYWORDS,
     "acquire(blocking=True, timeout=-1) -> bool"},
    {"release", (PyCFunction)Lock_release, METH_NOARGS, "release()"},
    {"locked", (PyCFunction)Lock_locked, METH_NOARGS, "locked() -> bool"},
    {"__enter__", (PyCFunction)Lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Lock_exit, METH_FASTCALL, NULL},
    {NULL}
};

static PyTypeObject Lock_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._fastesp.Lock",
    .tp_doc = "A mutex with threading.Lock's API that native code can take directly (the lock "
              "of an SA context).",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Lock_new,
    .tp_dealloc = (destructor)Lock_dealloc,
    .tp_methods = Lock_methods,
    .tp_repr = (reprfunc)Lock_repr,
};

/* ================================================================== Route, Flows */
/* The native outbound route of the SA-context engine (ipsecsa.wfp.Engine.outbound): a packet
 * of a flow the engine has already classified to an SA context whose outbound bundle is one
 * native ESP SA goes from the engine's entry point to the SA's protect without a Python
 * frame. The engine's Python methods stay the reference and handle everything else:
 *
 *   Route  one per SA context with such a bundle: its native ESP engine, the context, the
 *          context's Lock, whether its SAs have packet or byte limits, and `alive` (cleared,
 *          for good, when the context loses its outbound bundle).
 *   Flows  one per engine: a hash table flow key -> Route, filled by the engine's Python path
 *          (`learn`, with the generation it read before deciding) and emptied whenever the
 *          engine's generation changes (`invalidate`), plus the engine's clock and the time
 *          its next timer is due. Calling it is Engine.outbound; `batch` is outbound_batch.
 *
 * A packet takes the route when: it is `bytes`; the clock (called once per packet: the
 * injected clock is honoured) is before the next timer; its flow key (protocol, addresses and
 * ports of an unfragmented IPv4 packet without options, exactly the engine's _flow_key) is in
 * the table; the route is alive; the SA is not on a NIC; and the context's lock is free. Then,
 * all with the GIL held: lock, protect (the Esp's own C function; what it does not take it
 * hands to the SA's Python path as always, e.g. the durable engine's sequence-number
 * reservation hook), last_used = now, unlock. A drop, or an SA with limits that stopped being
 * usable, is handed to the engine's Python tail (counting, F.7's expire-on-limit). Anything
 * else goes to the engine's Python path with the same clock value, which waits for a busy
 * lock with the GIL released. Two threads can therefore never protect on one context at
 * once: both paths take the same lock. */
typedef struct {
    PyObject_HEAD
    EspObject *esp;   /* outbound native ESP engine of the context's only SA */
    PyObject *ctx;    /* the SaContext */
    LockObject *lock; /* ctx.lock */
    PyObject *sas;    /* (the SA,): the tail's argument */
    PyObject *ctxdict; /* ctx.__dict__: last_used is stored there directly */
    int limited;
    int alive;
} RouteObject;

static PyTypeObject Route_Type;

static PyObject *Route_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"esp", "ctx", "lock", "limited", NULL};
    PyObject *esp, *ctx, *lock;
    int limited;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!OO!p:Route", kwlist, &Esp_Type, &esp, &ctx,
                                     &Lock_Type, &lock, &limited))
        return NULL;
    if (((EspObject *)esp)->call != Esp_call_protect) {
        PyErr_SetString(PyExc_ValueError, "a route needs the native engine of an outbound SA");
        return NULL;
    }
    RouteObject *self = (RouteObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    self->sas = PyTuple_Pack(1, ((EspObject *)esp)->sa);
    self->ctxdict = self->sas ? PyObject_GenericGetDict(ctx, NULL) : NULL;
    if (self->ctxdict && !PyDict_CheckExact(self->ctxdict)) {
        Py_CLEAR(self->ctxdict);
        PyErr_SetString(PyExc_TypeError, "a route's context needs a plain __dict__");
    }
    if (!self->ctxdict) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(esp);
    self->esp = (EspObject *)esp;
    Py_INCREF(ctx);
    self->ctx = ctx;
    Py_INCREF(lock);
    self->lock = (LockObject *)lock;
    self->limited = limited;
    self->alive = 1;
    return (PyObject *)self;
}

static int Route_traverse(RouteObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->esp);
    Py_VISIT(self->ctx);
    Py_VISIT(self->lock);
    Py_VISIT(self->sas);
    Py_VISIT(self->ctxdict);
    return 0;
}
static int Route_clear(RouteObject *self)
{
    self->alive = 0;
    Py_CLEAR(self->esp);
    Py_CLEAR(self->ctx);
    Py_CLEAR(self->lock);
    Py_CLEAR(self->sas);
    Py_CLEAR(self->ctxdict);
    return 0;
}
static void Route_dealloc(RouteObject *self)
{
    PyObject_GC_UnTrack(self);
    Route_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Route_kill(RouteObject *self, PyObject *unused)
{
    self->alive = 0;
    Py_RETURN_NONE;
}
static PyObject *Route_get_alive(RouteObject *self, void *c) { return PyBool_FromLong(self->alive); }

static PyMethodDef Route_methods[] = {
    {"kill", (PyCFunction)Route_kill, METH_NOARGS,
     "kill(): no packet takes this route any more (the context lost its outbound bundle)"},
    {NULL}
};
static PyGetSetDef Route_getset[] = {
    {"alive", (getter)Route_get_alive, NULL, "whether packets may take this route", NULL},
    {NULL}
};

static PyTypeObject Route_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._fastesp.Route",
    .tp_doc = "Route(esp, ctx, lock, limited): an SA context's native outbound route.",
    .tp_basicsize = sizeof(RouteObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Route_new,
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_traverse = (traverseproc)Route_traverse,
    .tp_clear = (inquiry)Route_clear,
    .tp_methods = Route_methods,
    .tp_getset = Route_getset,
};

/* Flow table slots: open addressing, linear probing; `route` NULL = empty. */
typedef struct {
    uint64_t k0, k1;
    RouteObject *route; /* strong */
} FlowSlot;

#define FLOWS_MIN_SLOTS 64

typedef struct {
    PyObject_HEAD
    vectorcallfunc call;
    PyObject *clock;      /* the engine's clock */
    PyObject *slow;       /* Engine.outbound, the Python reference: (packet) */
    PyObject *at;         /* Engine._outbound_at: (packet, now) */
    PyObject *tail;       /* Engine._out_tail: (ctx, sas, results) */
    PyObject *slow_batch; /* Engine.outbound_batch, the Python reference: (packets) */
    PyObject *batch_at;   /* Engine._outbound_batch_at: (packets, now) */
    PyObject *group;      /* Engine._protect_group: (ctx, packets, now) */
    double next_due;      /* the engine's _next_due (INFINITY: none) */
    uint64_t gen;         /* the engine's generation the entries were learned at */
    FlowSlot *slots;
    uint32_t mask, count, max_entries;
    uint64_t hits, misses;
} FlowsObject;

static PyTypeObject Flows_Type;

/* The engine's _flow_key as two words: 0 when the packet has none (not IPv4 without options,
 * a fragment, shorter than 24 bytes). Layout by protocol: ported protocols (TCP, UDP, SCTP,
 * UDP-Lite: the engine's _V4_PORTED) key on both ports, ICMP on type and code, the rest on the
 * addresses alone. */
static inline int flow_key(const uint8_t *p, Py_ssize_t n, uint64_t *k0, uint64_t *k1)
{
    if (n < 24 || p[0] != 0x45 || (p[6] & 0x3F) || p[7]) return 0;
    int proto = p[9];
    uint64_t extra;
    if (proto == 6 || proto == 17 || proto == 132 || proto == 136)
        extra = get32(p + 20);
    else if (proto == 1)
        extra = (uint64_t)get16(p + 20);
    else
        extra = 0;
    *k0 = (uint64_t)get32(p + 12) << 32 | get32(p + 16);
    *k1 = (uint64_t)(proto + 1) << 32 | extra;  /* never 0: 0 marks "no key" nowhere else */
    return 1;
}

static inline uint32_t flow_hash(uint64_t k0, uint64_t k1)
{
    uint64_t h = k0 * 0x9E3779B97F4A7C15ULL ^ (k1 + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL;
    h ^= h >> 31;
    return (uint32_t)(h ^ h >> 17);
}

static FlowSlot *flows_find(FlowsObject *self, uint64_t k0, uint64_t k1)
{
    if (!self->slots) return NULL;
    uint32_t i = flow_hash(k0, k1) & self->mask;
    for (;;) {
        FlowSlot *s = &self->slots[i];
        if (!s->route || (s->k0 == k0 && s->k1 == k1)) return s;
        i = (i + 1) & self->mask;
    }
}

static RouteObject *flows_probe(FlowsObject *self, PyObject *pkt)
{
    uint64_t k0, k1;
    if (!flow_key((const uint8_t *)PyBytes_AS_STRING(pkt), PyBytes_GET_SIZE(pkt), &k0, &k1))
        return NULL;
    FlowSlot *s = flows_find(self, k0, k1);
    return s ? s->route : NULL;
}

/* Forget every entry; shrink back to the minimum size. */
static int flows_clear(FlowsObject *self)
{
    FlowSlot *old = self->slots;
    uint32_t n = old ? self->mask + 1 : 0;
    self->slots = NULL;
    self->mask = 0;
    self->count = 0;
    for (uint32_t i = 0; i < n; i++) Py_XDECREF(old[i].route);
    PyMem_Free(old);
    return 0;
}

static int flows_resize(FlowsObject *self, uint32_t nslots)
{
    FlowSlot *fresh = PyMem_Calloc(nslots, sizeof *fresh), *old = self->slots;
    if (!fresh) {
        PyErr_NoMemory();
        return -1;
    }
    uint32_t n = old ? self->mask + 1 : 0;
    self->slots = fresh;
    self->mask = nslots - 1;
    for (uint32_t i = 0; i < n; i++) {
        if (!old[i].route) continue;
        FlowSlot *s = flows_find(self, old[i].k0, old[i].k1);
        *s = old[i];
    }
    PyMem_Free(old);
    return 0;
}

static PyObject *Flows_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kw);

static PyObject *Flows_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"clock", "slow", "at", "tail", "slow_batch", "batch_at", "group",
                             "max_entries", NULL};
    PyObject *f[7];
    unsigned int max_entries;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOI:Flows", kwlist, &f[0], &f[1], &f[2],
                                     &f[3], &f[4], &f[5], &f[6], &max_entries))
        return NULL;
    for (int i = 0; i < 7; i++)
        if (!PyCallable_Check(f[i])) {
            PyErr_Format(PyExc_TypeError, "Flows: %s must be callable", kwlist[i]);
            return NULL;
        }
    if (max_entries < 1 || max_entries > (1u << 24)) {
        PyErr_SetString(PyExc_ValueError, "Flows: max_entries must be 1 .. 2^24");
        return NULL;
    }
    FlowsObject *self = (FlowsObject *)type->tp_alloc(type, 0);
    if (!self) return NULL;
    PyObject **dst[7] = {&self->clock, &self->slow, &self->at, &self->tail, &self->slow_batch,
                         &self->batch_at, &self->group};
    for (int i = 0; i < 7; i++) {
        Py_INCREF(f[i]);
        *dst[i] = f[i];
    }
    self->max_entries = max_entries;
    self->next_due = INFINITY;
    self->call = Flows_call;
    return (PyObject *)self;
}

/* Whether a routed run needs the engine's Python tail: a drop to count, or an SA with limits
 * that is no longer usable (F.7: the context expires). */
static int needs_tail(RouteObject *r, PyObject *const *results, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyTuple_GET_ITEM(results[i], 1) != Py_None) return 1;
    if (r->limited) {
        PyObject *state = SLOT(r->esp, off_state);
        if (state != state_mature && state != state_dying) return 1;
    }
    return 0;
}

/* Protect pkts[0..n) (all of route r) into out[0..n) (NULL on entry) with the context's lock
 * taken without waiting. 1 done, 0 the lock is busy (the caller hands the packets to the
 * Python path, which waits for it), -1 an exception (out[] cleared). */
static int route_run(FlowsObject *self, RouteObject *r, PyObject *const *pkts, Py_ssize_t n,
                     PyObject *now, PyObject **out)
{
    if (!lock_try(r->lock)) return 0;
    Py_INCREF(r);  /* a Python callback inside protect may drop the table's reference */
    int rc = protect_into(r->esp, pkts, n, now, out);
    /* last_used = now, straight into the context's __dict__ (see Route_new) */
    if (rc == 0 && PyDict_SetItem(r->ctxdict, s_last_used, now)) rc = -1;
    lock_release(r->lock);
    if (rc == 0 && needs_tail(r, out, n)) {
        PyObject *list = PyList_New(n);
        if (!list) {
            rc = -1;
        } else {
            for (Py_ssize_t i = 0; i < n; i++) {
                Py_INCREF(out[i]);
                PyList_SET_ITEM(list, i, out[i]);
            }
            PyObject *a[3] = {r->ctx, r->sas, list};
            PyObject *t = PyObject_Vectorcall(self->tail, a, 3, NULL);
            Py_DECREF(list);
            if (!t) rc = -1;
            Py_XDECREF(t);
        }
    }
    Py_DECREF(r);
    if (rc) {
        for (Py_ssize_t i = 0; i < n; i++) Py_CLEAR(out[i]);
        return -1;
    }
    return 1;
}

/* The clock value as a double for the timer check; 0 when it cannot be read as one (the
 * packet then takes the Python path, which compares the object itself). */
static inline int before_due(FlowsObject *self, PyObject *now)
{
    double t = PyFloat_CheckExact(now) ? PyFloat_AS_DOUBLE(now) : PyFloat_AsDouble(now);
    if (t == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return !(t >= self->next_due);  /* NaN never reaches a timer, as in Python */
}

/* The route a packet may take, or NULL (a borrowed reference). */
static inline RouteObject *usable_route(FlowsObject *self, PyObject *pkt)
{
    RouteObject *r = flows_probe(self, pkt);
    if (!r || !r->alive || SLOT(r->esp, off_nic) != Py_None) return NULL;
    return r;
}

static PyObject *Flows_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kw)
{
    FlowsObject *self = (FlowsObject *)op;
    Py_ssize_t n = PyVectorcall_NARGS(nargsf);
    if (n != 1 || kw || !PyBytes_CheckExact(args[0])) {
        self->misses++;
        return PyObject_Vectorcall(self->slow, args, nargsf, kw);  /* its checks, its errors */
    }
    PyObject *pkt = args[0];
    PyObject *now = PyObject_CallNoArgs(self->clock);
    if (!now) return NULL;
    PyObject *res = NULL;
    RouteObject *r = before_due(self, now) ? usable_route(self, pkt) : NULL;
    if (r) {
        int rc = route_run(self, r, &pkt, 1, now, &res);
        if (rc) {
            self->hits += rc > 0;
            Py_DECREF(now);
            return res;
        }
    }
    self->misses++;
    PyObject *a[2] = {pkt, now};
    res = PyObject_Vectorcall(self->at, a, 2, NULL);
    Py_DECREF(now);
    return res;
}

static PyObject *call2(PyObject *fn, PyObject *x, PyObject *y)
{
    PyObject *a[2] = {x, y};
    return PyObject_Vectorcall(fn, a, 2, NULL);
}

/* Engine.outbound_batch: runs of consecutive packets of one route are protected by one native
 * batch call under one lock acquisition; every other packet goes, in its place in the order,
 * through the Python path with the batch's clock value (so each context's packets get their
 * sequence numbers in arrival order, as in the Python batch). */
static PyObject *Flows_batch(FlowsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1 || !(PyList_CheckExact(args[0]) || PyTuple_CheckExact(args[0])))
        return PyObject_Vectorcall(self->slow_batch, args, nargs, NULL);
    /* A private tuple: Python callbacks below cannot change what is iterated. */
    PyObject *items = PySequence_Tuple(args[0]);
    if (!items) return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    PyObject *const *pk = &PyTuple_GET_ITEM(items, 0);
    for (Py_ssize_t i = 0; i < n; i++)
        if (!PyBytes_CheckExact(pk[i])) {  /* converted (or refused) by the reference */
            self->misses += (uint64_t)n;
            Py_DECREF(items);
            return PyObject_Vectorcall(self->slow_batch, args, 1, NULL);
        }
    PyObject *results = NULL, *list = NULL;
    PyObject *now = PyObject_CallNoArgs(self->clock);
    if (!now) goto fail;
    if (!before_due(self, now)) {
        self->misses += (uint64_t)n;
        list = PySequence_List(items);
        PyObject *r = list ? call2(self->batch_at, list, now) : NULL;
        Py_XDECREF(list);
        Py_DECREF(now);
        Py_DECREF(items);
        return r;
    }
    results = PyList_New(n);
    if (!results) goto fail;
    RouteObject *next = n ? usable_route(self, pk[0]) : NULL;
    for (Py_ssize_t i = 0; i < n;) {
        RouteObject *r = next;
        if (!r) {
            self->misses++;
            PyObject *res = call2(self->at, pk[i], now);
            if (!res) goto fail;
            PyList_SET_ITEM(results, i, res);
            i++;
            next = i < n ? usable_route(self, pk[i]) : NULL;
            continue;
        }
        Py_ssize_t j = i + 1;
        while (j < n && usable_route(self, pk[j]) == r) j++;
        Py_INCREF(r);  /* the probes after the run read the table as it is then */
        int rc = route_run(self, r, pk + i, j - i, now, ((PyListObject *)results)->ob_item + i);
        if (rc > 0) {
            self->hits += (uint64_t)(j - i);
        } else if (rc == 0) {
            /* lock busy: the Python group path waits for it */
            self->misses += (uint64_t)(j - i);
            PyObject *sub = PyTuple_GetSlice(items, i, j), *subl = sub ? PySequence_List(sub) : NULL;
            Py_XDECREF(sub);
            if (subl) {
                PyObject *a[3] = {r->ctx, subl, now};
                list = PyObject_Vectorcall(self->group, a, 3, NULL);
                Py_DECREF(subl);
            }
            if (list && (!PyList_Check(list) || PyList_GET_SIZE(list) != j - i)) {
                Py_CLEAR(list);
                PyErr_SetString(PyExc_SystemError, "_protect_group returned a wrong list");
            }
        }
        Py_DECREF(r);
        if (rc < 0) goto fail;
        if (rc == 0) {
            if (!list) goto fail;
            for (Py_ssize_t k = i; k < j; k++) {
                PyObject *res = PyList_GET_ITEM(list, k - i);
                Py_INCREF(res);
                PyList_SET_ITEM(results, k, res);
            }
            Py_CLEAR(list);
        }
        i = j;
        /* the table may have changed during the run's callbacks: probe again */
        next = i < n ? usable_route(self, pk[i]) : NULL;
    }
    Py_DECREF(now);
    Py_DECREF(items);
    return results;
fail:
    Py_XDECREF(now);
    Py_XDECREF(results);
    Py_DECREF(items);
    return NULL;
}

static PyObject *Flows_learn(FlowsObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyLong_Check(args[1]) || !Py_IS_TYPE(args[2], &Route_Type)) {
        PyErr_SetString(PyExc_TypeError, "learn(packet, gen, route)");
        return NULL;
    }
    RouteObject *route = (RouteObject *)args[2];
    unsigned long long gen = PyLong_AsUnsignedLongLong(args[1]);
    if (gen == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    uint64_t k0, k1;
    if (gen != self->gen || !route->alive || !PyBytes_CheckExact(args[0]) ||
        !flow_key((const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), &k0, &k1))
        Py_RETURN_FALSE;
    if (!self->slots && flows_resize(self, FLOWS_MIN_SLOTS)) return NULL;
    FlowSlot *s = flows_find(self, k0, k1);
    if (s->route) {
        Py_INCREF(route);
        Py_SETREF(s->route, route);
        Py_RETURN_TRUE;
    }
    if (self->count >= self->max_entries) {  /* full: start again, as the Python cache does */
        flows_clear(self);
        if (flows_resize(self, FLOWS_MIN_SLOTS)) return NULL;
        s = flows_find(self, k0, k1);
    } else if ((uint64_t)(self->count + 1) * 2 > (uint64_t)self->mask + 1) {
        if (flows_resize(self, (self->mask + 1) * 2)) return NULL;
        s = flows_find(self, k0, k1);
    }
    Py_INCREF(route);
    s->k0 = k0;
    s->k1 = k1;
    s->route = route;
    self->count++;
    Py_RETURN_TRUE;
}

static PyObject *Flows_invalidate(FlowsObject *self, PyObject *arg)
{
    unsigned long long gen = PyLong_AsUnsignedLongLong(arg);
    if (gen == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    self->gen = gen;
    flows_clear(self);
    Py_RETURN_NONE;
}

static PyObject *Flows_get_next_due(FlowsObject *self, void *c)
{
    if (isinf(self->next_due) && self->next_due > 0) Py_RETURN_NONE;
    return PyFloat_FromDouble(self->next_due);
}
static int Flows_set_next_due(FlowsObject *self, PyObject *v, void *c)
{
    if (!v || v == Py_None) {
        self->next_due = INFINITY;
        return 0;
    }
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    self->next_due = d;
    return 0;
}
static PyObject *Flows_get_gen(FlowsObject *self, void *c)
{
    return PyLong_FromUnsignedLongLong(self->gen);
}
static PyObject *Flows_get_stats(FlowsObject *self, void *c)
{
    return Py_BuildValue("{sKsKsI}", "routed", (unsigned long long)self->hits, "python",
                         (unsigned long long)self->misses, "flows", self->count);
}

static int Flows_traverse(FlowsObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->clock);
    Py_VISIT(self->slow);
    Py_VISIT(self->at);
    Py_VISIT(self->tail);
    Py_VISIT(self->slow_batch);
    Py_VISIT(self->batch_at);
    Py_VISIT(self->group);
    if (self->slots)
        for (uint32_t i = 0; i <= self->mask; i++) Py_VISIT(self->slots[i].route);
    return 0;
}
static int Flows_clear(FlowsObject *self)
{
    Py_CLEAR(self->clock);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->at);
    Py_CLEAR(self->tail);
    Py_CLEAR(self->slow_batch);
    Py_CLEAR(self->batch_at);
    Py_CLEAR(self->group);
    flows_clear(self);
    return 0;
}
static void Flows_dealloc(FlowsObject *self)
{
    PyObject_GC_UnTrack(self);
    Flows_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Flows_methods[] = {
    {"batch", (PyCFunction)(void (*)(void))Flows_batch, METH_FASTCALL,
     "batch(packets) -> list[Result]: Engine.outbound_batch"},
    {"learn", (PyCFunction)(void (*)(void))Flows_learn, METH_FASTCALL,
     "learn(packet, gen, route) -> bool: route the packet's flow (refused when gen is not the "
     "table's generation any more, the route is dead, or the packet has no flow key)"},
    {"invalidate", (PyCFunction)Flows_invalidate, METH_O,
     "invalidate(gen): forget every flow; only entries learned at gen are accepted from now"},
    {NULL}
};
static PyGetSetDef Flows_getset[] = {
    {"next_due", (getter)Flows_get_next_due, (setter)Flows_set_next_due,
     "the engine's next timer (None: none); packets at or after it take the Python path", NULL},
    {"gen", (getter)Flows_get_gen, NULL, "the generation the entries belong to", NULL},
    {"stats", (getter)Flows_get_stats, NULL,
     "{'routed': packets sent by the native route, 'python': packets handed to the Python "
     "path, 'flows': entries}", NULL},
    {NULL}
};

static PyTypeObject Flows_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._fastesp.Flows",
    .tp_doc = "Flows(clock, slow, at, tail, slow_batch, batch_at, group, max_entries): the "
              "SA-context engine's native outbound route table; calling it is Engine.outbound.",
    .tp_basicsize = sizeof(FlowsObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(FlowsObject, call),
    .tp_call = PyVectorcall_Call,
    .tp_new = Flows_new,
    .tp_dealloc = (destructor)Flows_dealloc,
    .tp_traverse = (traverseproc)Flows_traverse,
    .tp_clear = (inquiry)Flows_clear,
    .tp_methods = Flows_methods,
    .tp_getset = Flows_getset,
};

/* ================================================================== module */
static int slot_offset(PyObject *cls, const char *name, Py_ssize_t *off)
{
    PyObject *d = PyObject_GetAttrString(cls, name);
    if (!d) return -1;
    if (!Py_IS_TYPE(d, &PyMemberDescr_Type) ||
        ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
        Py_DECREF(d);
        PyErr_Format(PyExc_TypeError, "%s is not an object slot of the SA class", name);
        return -1;
    }
    *off = ((PyMemberDescrObject *)d)->d_member->offset;
    Py_DECREF(d);
    return 0;
}

static PyObject *mod_setup(PyObject *m, PyObject *args)
{
    PyObject *sa_cls, *result_type, *reasons, *dmap, *mature, *dying;
    if (!PyArg_ParseTuple(args, "OOOO!OO:setup", &sa_cls, &result_type, &reasons, &PyDict_Type,
                          &dmap, &mature, &dying))
        return NULL;
    if (!PyType_Check(result_type) || !PyTuple_Check(reasons) || PyTuple_GET_SIZE(reasons) != NREASONS) {
        PyErr_SetString(PyExc_TypeError, "setup(sa_class, Result, reasons, DROPPED, MATURE, DYING)");
        return NULL;
    }
    PyTypeObject *rt = (PyTypeObject *)result_type;
    if (!PyType_IsSubtype(rt, &PyTuple_Type) || rt->tp_basicsize != PyTuple_Type.tp_basicsize ||
        rt->tp_itemsize != PyTuple_Type.tp_itemsize || rt->tp_dictoffset ||
        rt->tp_weaklistoffset) {
        PyErr_SetString(PyExc_TypeError, "Result must be a tuple subclass with __slots__ = ()");
        return NULL;
    }
    struct { const char *n; Py_ssize_t *o; } slots[] = {
        {"_seq", &off_seq}, {"packets", &off_packets}, {"bytes", &off_bytes},
        {"_ident", &off_ident}, {"_pmark", &off_pmark}, {"_bmark", &off_bmark},
        {"_seq_max", &off_seq_max}, {"_seq_limit", &off_seq_limit}, {"_timed", &off_timed},
        {"_state", &off_state}, {"_tmark", &off_tmark}, {"_nic", &off_nic},
        {"_drops", &off_drops}, {"_selectors", &off_selectors}};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++)
        if (slot_offset(sa_cls, slots[i].n, slots[i].o)) return NULL;
    Py_INCREF(result_type);
    Py_XSETREF(ResultType, (PyTypeObject *)result_type);
    for (int i = 0; i < NREASONS; i++) {
        Py_INCREF(PyTuple_GET_ITEM(reasons, i));
        Py_XSETREF(reason_obj[i], PyTuple_GET_ITEM(reasons, i));
    }
    Py_INCREF(dmap);
    Py_XSETREF(dropped_map, dmap);
    Py_INCREF(mature);
    Py_XSETREF(state_mature, mature);
    Py_INCREF(dying);
    Py_XSETREF(state_dying, dying);
    ready = 1;
    Py_RETURN_NONE;
}

static PyObject *mod_openssl_version(PyObject *m, PyObject *unused)
{
    return PyUnicode_FromString(OpenSSL_version(OPENSSL_VERSION));
}

static PyMethodDef mod_methods[] = {
    {"setup", mod_setup, METH_VARARGS,
     "setup(sa_class, Result, reasons, DROPPED, MATURE, DYING): bind to the Python data path."},
    {"openssl_version", mod_openssl_version, METH_NOARGS, "the libcrypto this module runs on"},
    {NULL}
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "ipsecsa._fastesp",
    "Native ESP fast path over OpenSSL EVP; see ipsecsa.datapath.native.", -1, mod_methods,
};

PyMODINIT_FUNC PyInit__fastesp(void)
{
    if (OPENSSL_version_major() < 3) {
        PyErr_SetString(PyExc_ImportError, "libcrypto >= 3.0 required at run time");
        return NULL;
    }
    static const char *gcm[3] = {"AES-128-GCM", "AES-192-GCM", "AES-256-GCM"};
    static const char *cbc[3] = {"AES-128-CBC", "AES-192-CBC", "AES-256-CBC"};
    for (int i = 0; i < 3; i++) {
        c_gcm[i] = EVP_CIPHER_fetch(NULL, gcm[i], NULL);
        c_cbc[i] = EVP_CIPHER_fetch(NULL, cbc[i], NULL);
    }
    c_chacha = EVP_CIPHER_fetch(NULL, "ChaCha20-Poly1305", NULL);
    m_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (!m_hmac || !c_gcm[0]) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL default provider lacks AES-GCM or HMAC");
        return NULL;
    }
    if (PyType_Ready(&Replay_Type) < 0 || PyType_Ready(&Esp_Type) < 0 ||
        PyType_Ready(&Lock_Type) < 0 || PyType_Ready(&Route_Type) < 0 ||
        PyType_Ready(&Flows_Type) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&moddef);
    if (!m) return NULL;
    PyObject *names = PyTuple_New(NREASONS);
    if (!names) goto fail;
    for (int i = 0; i < NREASONS; i++) {
        PyObject *s = PyUnicode_FromString(REASON_NAMES[i]);
        if (!s) {
            Py_DECREF(names);
            goto fail;
        }
        PyTuple_SET_ITEM(names, i, s);
    }
    if (PyModule_AddObject(m, "REASONS", names)) {
        Py_DECREF(names);
        goto fail;
    }
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) goto fail
    INTERN(s_gate, "_gate");
    INTERN(s_post_send, "_post_send");
    INTERN(s_lifetime_crossed, "_lifetime_crossed");
    INTERN(s_selectors_ok, "_selectors_ok");
    INTERN(s_inner_policy, "_inner_policy");
    INTERN(s_transport_checks, "_transport_checks");
    INTERN(s_py_out, "_py_out");
    INTERN(s_py_in, "_py_in");
    INTERN(s_last_used, "last_used");
    Py_INCREF(&Replay_Type);
    Py_INCREF(&Esp_Type);
    if (PyModule_AddObject(m, "Replay", (PyObject *)&Replay_Type) ||
        PyModule_AddObject(m, "Esp", (PyObject *)&Esp_Type) ||
        PyModule_AddType(m, &Lock_Type) || PyModule_AddType(m, &Route_Type) ||
        PyModule_AddType(m, &Flows_Type) ||
        PyModule_AddIntConstant(m, "ALG_GCM", ALG_GCM) ||
        PyModule_AddIntConstant(m, "ALG_CHACHA", ALG_CHACHA) ||
        PyModule_AddIntConstant(m, "ALG_GMAC", ALG_GMAC) ||
        PyModule_AddIntConstant(m, "ALG_CBC_HMAC", ALG_CBC_HMAC))
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
