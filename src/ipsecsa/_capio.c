/*
 * ipsecsa._capio: the per-record loops of the offline capture tools, in C.
 *
 * `ipsecsa pcap unprotect` spends, in pure Python, about a microsecond per record just splitting
 * a classic pcap file into records and another writing them back: more than the native data path
 * needs to decrypt the packet (issue 14's target is at least half its rate). This module does
 * those two loops and nothing else; ipsecsa.io.pcapbatch holds the Python reference of both
 * functions (same arguments, same results; tests/io/test_pcapbatch.py holds them equal), and
 * every decision about a packet (which SA, what to do with a drop) stays in Python.
 *
 *   scan(buf, pos, big_endian, linktype) -> (end, status, meta, ips, runs)
 *       Splits the classic pcap records of `buf` from `pos`. `meta` is a bytes object of
 *       native-endian uint32 pairs per record (its start in `buf`, and the offset of its IP
 *       packet in the frame, or 0xFFFFFFFF when the record is not "fast"). A fast record carries
 *       a whole (unfragmented) IPv4 or IPv6 packet whose first protocol is ESP, on a link type
 *       unwrapped here (Ethernet with VLAN tags, Linux SLL/SLL2, RAW, IPv4, IPv6), not cut by
 *       the snap length; its IP packet is in `ips`. `runs` groups consecutive records as
 *       (first record, count, key, first index in ips): key is SPI (4 bytes) || destination
 *       for a run of fast records of one SA, None for a run of other records. `end` is where
 *       scanning stopped; `status` 0 = at an incomplete record or the end of `buf`, 1 = at a
 *       record whose captured length exceeds MAX_RECORD (the caller reports the corruption).
 *
 *   assemble(buf, meta, first, count, results, only_matched, big_endian, frac, linktype)
 *       -> (data, written, ok, ok_bytes)
 *       The output records (little-endian pcap) of `count` fast records from `first`:
 *       for each, results[i][0] (a Result: packet or None) replaces the IP packet after the
 *       record's link header (whose protocol field follows the IP version), or the record is
 *       copied as it was (left out with only_matched). `results` None: all copied as they were.
 *
 * Every offset read from `buf` is bounded by its length and by the lengths checked before it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ specification constants */
#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW 101
#define LINKTYPE_LINUX_SLL 113
#define LINKTYPE_IPV4 228
#define LINKTYPE_IPV6 229
#define LINKTYPE_LINUX_SLL2 276
#define ETHERTYPE_IPV4 0x0800
#define ETHERTYPE_IPV6 0x86DD
#define PROTO_ESP 50
#define RECORD_HEADER 16

/* ------------------------------------------------------------------ implementation constants */
/* Must equal ipsecsa.io.pcap.MAX_RECORD_BYTES (libpcap's MAXIMUM_SNAPLEN). */
#define MAX_RECORD 262144u
#define NOT_FAST 0xFFFFFFFFu

static inline uint32_t rd32(const uint8_t *p, int big)
{
    if (big)
        return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

static inline void wr32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline unsigned rd16be(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static int ethertype_ok(unsigned ethertype, const uint8_t *frame, size_t len, size_t off)
{
    if (off >= len)
        return 0;
    unsigned version = frame[off] >> 4;
    return (ethertype == ETHERTYPE_IPV4 && version == 4)
        || (ethertype == ETHERTYPE_IPV6 && version == 6);
}

/* Offset of the IP packet in a frame of `linktype`, or -1 (not unwrapped here / not IP). */
static long ip_offset(int linktype, const uint8_t *frame, size_t len)
{
    size_t off;
    unsigned et;
    switch (linktype) {
    case LINKTYPE_ETHERNET:
        if (len < 14)
            return -1;
        et = rd16be(frame + 12);
        off = 14;
        while (et == 0x8100 || et == 0x88A8 || et == 0x9100) {
            if (len < off + 4)
                return -1;
            et = rd16be(frame + off + 2);
            off += 4;
        }
        return ethertype_ok(et, frame, len, off) ? (long)off : -1;
    case LINKTYPE_LINUX_SLL:
        if (len < 16)
            return -1;
        return ethertype_ok(rd16be(frame + 14), frame, len, 16) ? 16 : -1;
    case LINKTYPE_LINUX_SLL2:
        if (len < 20)
            return -1;
        return ethertype_ok(rd16be(frame), frame, len, 20) ? 20 : -1;
    case LINKTYPE_RAW:
        return (len > 0 && (frame[0] >> 4 == 4 || frame[0] >> 4 == 6)) ? 0 : -1;
    case LINKTYPE_IPV4:
        return (len > 0 && frame[0] >> 4 == 4) ? 0 : -1;
    case LINKTYPE_IPV6:
        return (len > 0 && frame[0] >> 4 == 6) ? 0 : -1;
    default:
        return -1;
    }
}

/* Classify one frame: 1 and the IP bounds and key when it is fast (see the header comment). */
static int classify(int linktype, const uint8_t *frame, size_t caplen, uint32_t origlen,
                    size_t *ip_off, size_t *ip_end, const uint8_t **spi,
                    const uint8_t **dst, size_t *dst_len)
{
    if (caplen < origlen)
        return 0; /* cut by the snap length */
    long o = ip_offset(linktype, frame, caplen);
    if (o < 0)
        return 0;
    size_t off = (size_t)o, avail = caplen - off, total;
    const uint8_t *ip = frame + off;
    if (ip[0] >> 4 == 4) {
        if (avail < 20)
            return 0;
        total = rd16be(ip + 2);
        size_t ihl = (size_t)(ip[0] & 15) * 4;
        if (!(total > 0 && total <= avail))
            total = avail;
        if (ihl < 20 || ip[9] != PROTO_ESP || (ip[6] & 0x3F) || ip[7] || total < ihl + 8)
            return 0;
        *spi = ip + ihl;
        *dst = ip + 16;
        *dst_len = 4;
    } else {
        if (avail < 40)
            return 0;
        size_t payload = rd16be(ip + 4);
        total = payload ? 40 + payload : avail;
        if (!(total > 0 && total <= avail))
            total = avail;
        if (ip[6] != PROTO_ESP || total < 48)
            return 0;
        *spi = ip + 40;
        *dst = ip + 24;
        *dst_len = 16;
    }
    *ip_off = off;
    *ip_end = off + total;
    return 1;
}

static PyObject *capio_scan(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    int big, linktype;
    if (!PyArg_ParseTuple(args, "y*npi", &view, &pos, &big, &linktype))
        return NULL;
    const uint8_t *buf = view.buf;
    size_t len = (size_t)view.len;
    PyObject *ips = NULL, *runs = NULL, *meta = NULL, *result = NULL;
    uint32_t *m = NULL;
    size_t mcap = 0, nrec = 0;
    int status = 0;
    if (pos < 0 || (size_t)pos > len) {
        PyErr_SetString(PyExc_ValueError, "pos outside the buffer");
        goto done;
    }
    if (len > 0xFFFFFFF0u) {
        PyErr_SetString(PyExc_ValueError, "buffer too large for 32-bit record offsets");
        goto done;
    }
    ips = PyList_New(0);
    runs = PyList_New(0);
    if (!ips || !runs)
        goto done;
    size_t p = (size_t)pos;
    /* The run being built: kind 0 none, 1 fast (key), 2 other. */
    int run_kind = 0;
    size_t run_first = 0, run_ip = 0;
    const uint8_t *run_spi = NULL, *run_dst = NULL;
    size_t run_dst_len = 0;
    for (;;) {
        if (len - p < RECORD_HEADER)
            break;
        uint32_t caplen = rd32(buf + p + 8, big), origlen = rd32(buf + p + 12, big);
        if (caplen > MAX_RECORD) {
            status = 1;
            break;
        }
        if (len - p - RECORD_HEADER < caplen)
            break;
        const uint8_t *frame = buf + p + RECORD_HEADER;
        size_t ip_off = 0, ip_end = 0, dst_len = 0;
        const uint8_t *spi = NULL, *dst = NULL;
        int fast = classify(linktype, frame, caplen, origlen, &ip_off, &ip_end, &spi, &dst,
                            &dst_len);
        int kind = fast ? 1 : 2;
        int same = run_kind == kind
            && (kind == 2 || (dst_len == run_dst_len && memcmp(spi, run_spi, 4) == 0
                              && memcmp(dst, run_dst, dst_len) == 0));
        if (!same && run_kind != 0) {
            PyObject *key;
            if (run_kind == 1) {
                key = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 + run_dst_len));
                if (!key)
                    goto done;
                memcpy(PyBytes_AS_STRING(key), run_spi, 4);
                memcpy(PyBytes_AS_STRING(key) + 4, run_dst, run_dst_len);
            } else {
                key = Py_NewRef(Py_None);
            }
            PyObject *t = Py_BuildValue("(nnNn)", (Py_ssize_t)run_first,
                                        (Py_ssize_t)(nrec - run_first), key,
                                        (Py_ssize_t)run_ip);
            if (!t || PyList_Append(runs, t) < 0) {
                Py_XDECREF(t);
                goto done;
            }
            Py_DECREF(t);
        }
        if (!same) {
            run_kind = kind;
            run_first = nrec;
            run_ip = (size_t)PyList_GET_SIZE(ips);
            run_spi = spi;
            run_dst = dst;
            run_dst_len = dst_len;
        }
        if (nrec * 2 + 2 > mcap) {
            size_t ncap = mcap ? mcap * 2 : 1024;
            uint32_t *nm = PyMem_Realloc(m, ncap * sizeof(uint32_t));
            if (!nm) {
                PyErr_NoMemory();
                goto done;
            }
            m = nm;
            mcap = ncap;
        }
        m[nrec * 2] = (uint32_t)p;
        m[nrec * 2 + 1] = fast ? (uint32_t)ip_off : NOT_FAST;
        nrec++;
        if (fast) {
            PyObject *ip = PyBytes_FromStringAndSize((const char *)frame + ip_off,
                                                     (Py_ssize_t)(ip_end - ip_off));
            if (!ip || PyList_Append(ips, ip) < 0) {
                Py_XDECREF(ip);
                goto done;
            }
            Py_DECREF(ip);
        }
        p += RECORD_HEADER + caplen;
    }
    if (run_kind != 0) {
        PyObject *key;
        if (run_kind == 1) {
            key = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 + run_dst_len));
            if (!key)
                goto done;
            memcpy(PyBytes_AS_STRING(key), run_spi, 4);
            memcpy(PyBytes_AS_STRING(key) + 4, run_dst, run_dst_len);
        } else {
            key = Py_NewRef(Py_None);
        }
        PyObject *t = Py_BuildValue("(nnNn)", (Py_ssize_t)run_first,
                                    (Py_ssize_t)(nrec - run_first), key, (Py_ssize_t)run_ip);
        if (!t || PyList_Append(runs, t) < 0) {
            Py_XDECREF(t);
            goto done;
        }
        Py_DECREF(t);
    }
    meta = PyBytes_FromStringAndSize((const char *)m, (Py_ssize_t)(nrec * 2 * sizeof(uint32_t)));
    if (!meta)
        goto done;
    result = Py_BuildValue("(niOOO)", (Py_ssize_t)p, status, meta, ips, runs);
done:
    PyMem_Free(m);
    Py_XDECREF(meta);
    Py_XDECREF(ips);
    Py_XDECREF(runs);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *capio_assemble(PyObject *self, PyObject *args)
{
    Py_buffer view, mview;
    Py_ssize_t first, count;
    PyObject *results;
    int only_matched, big, linktype;
    unsigned long frac;
    if (!PyArg_ParseTuple(args, "y*y*nnOppki", &view, &mview, &first, &count, &results,
                          &only_matched, &big, &frac, &linktype))
        return NULL;
    const uint8_t *buf = view.buf;
    size_t len = (size_t)view.len;
    const uint32_t *m = mview.buf;
    size_t nrec = (size_t)mview.len / (2 * sizeof(uint32_t));
    PyObject *out = NULL, *ret = NULL, *seq = NULL;
    Py_ssize_t written = 0, ok = 0;
    unsigned long long ok_bytes = 0;
    if (first < 0 || count < 0 || (size_t)first > nrec || (size_t)count > nrec - (size_t)first
        || frac == 0) {
        PyErr_SetString(PyExc_ValueError, "record range outside meta, or frac 0");
        goto done;
    }
    if (results != Py_None) {
        seq = PySequence_Fast(results, "results must be a sequence");
        if (!seq)
            goto done;
        if (PySequence_Fast_GET_SIZE(seq) != count) {
            PyErr_SetString(PyExc_ValueError, "one result per record is needed");
            goto done;
        }
    }
    /* Pass 1: validate and size the output. */
    size_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        size_t r = (size_t)first + (size_t)i;
        uint32_t start = m[r * 2], ip_off = m[r * 2 + 1];
        if (len < RECORD_HEADER || start > len - RECORD_HEADER) {
            PyErr_SetString(PyExc_ValueError, "record start outside the buffer");
            goto done;
        }
        uint32_t caplen = rd32(buf + start + 8, big);
        if (caplen > len - start - RECORD_HEADER || ip_off == NOT_FAST || ip_off >= caplen) {
            PyErr_SetString(PyExc_ValueError, "record is not a fast record of this buffer");
            goto done;
        }
        PyObject *pkt = Py_None;
        if (seq) {
            PyObject *res = PySequence_Fast_GET_ITEM(seq, i);
            if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) < 1) {
                PyErr_SetString(PyExc_TypeError, "results must hold Result tuples");
                goto done;
            }
            pkt = PyTuple_GET_ITEM(res, 0);
        }
        if (pkt != Py_None) {
            if (!PyBytes_Check(pkt)) {
                PyErr_SetString(PyExc_TypeError, "a result packet must be bytes");
                goto done;
            }
            size_t n = ip_off + (size_t)PyBytes_GET_SIZE(pkt);
            total += RECORD_HEADER + (n > MAX_RECORD ? MAX_RECORD : n);
        } else if (!only_matched) {
            total += RECORD_HEADER + caplen;
        }
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!out)
        goto done;
    uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
    /* Pass 2: write. */
    for (Py_ssize_t i = 0; i < count; i++) {
        size_t r = (size_t)first + (size_t)i;
        uint32_t start = m[r * 2], ip_off = m[r * 2 + 1];
        const uint8_t *rec = buf + start;
        uint32_t sec = rd32(rec, big), fr = rd32(rec + 4, big);
        uint32_t caplen = rd32(rec + 8, big), origlen = rd32(rec + 12, big);
        /* Stored as the frame writer stores the raw tick count (io/pcap.py record_time):
         * (raw / frac, raw % frac), the seconds capped at 2^32 - 1 and the fraction taking
         * the rest (capped too), so a broken record's ticks are kept, never wrapped. */
        unsigned long long raw = (unsigned long long)sec * frac + fr;
        unsigned long long qs = raw / frac;
        if (qs > 0xFFFFFFFFull)
            qs = 0xFFFFFFFFull;
        unsigned long long qf = raw - qs * frac;
        uint32_t wsec = (uint32_t)qs, wfrac = qf > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)qf;
        PyObject *pkt = seq ? PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(seq, i), 0) : Py_None;
        if (pkt != Py_None) {
            const uint8_t *ip = (const uint8_t *)PyBytes_AS_STRING(pkt);
            size_t iplen = (size_t)PyBytes_GET_SIZE(pkt);
            size_t n = ip_off + iplen;
            if (n > MAX_RECORD)
                n = MAX_RECORD;
            wr32le(o, wsec);
            wr32le(o + 4, wfrac);
            wr32le(o + 8, (uint32_t)n);
            wr32le(o + 12, (uint32_t)n);
            uint8_t *head = o + RECORD_HEADER;
            size_t hlen = ip_off < n ? ip_off : n;
            memcpy(head, rec + RECORD_HEADER, hlen);
            if (n > hlen)
                memcpy(head + hlen, ip, n - hlen);
            unsigned oldv = rec[RECORD_HEADER + ip_off] >> 4;
            unsigned newv = iplen ? ip[0] >> 4 : 0;
            if (oldv != newv && hlen == ip_off && ip_off > 0) {
                unsigned et = newv == 6 ? ETHERTYPE_IPV6 : ETHERTYPE_IPV4;
                uint8_t *f = NULL;
                if (linktype == LINKTYPE_ETHERNET || linktype == LINKTYPE_LINUX_SLL)
                    f = head + ip_off - 2;
                else if (linktype == LINKTYPE_LINUX_SLL2)
                    f = head;
                if (f) {
                    f[0] = (uint8_t)(et >> 8);
                    f[1] = (uint8_t)et;
                }
            }
            o += RECORD_HEADER + n;
            ok++;
            ok_bytes += iplen;
            written++;
        } else if (!only_matched) {
            wr32le(o, wsec);
            wr32le(o + 4, wfrac);
            wr32le(o + 8, caplen);
            wr32le(o + 12, origlen);
            memcpy(o + RECORD_HEADER, rec + RECORD_HEADER, caplen);
            o += RECORD_HEADER + caplen;
            written++;
        }
    }
    ret = Py_BuildValue("(OnnK)", out, written, ok, ok_bytes);
done:
    Py_XDECREF(out);
    Py_XDECREF(seq);
    PyBuffer_Release(&view);
    PyBuffer_Release(&mview);
    return ret;
}

static PyMethodDef methods[] = {
    {"scan", capio_scan, METH_VARARGS,
     "scan(buf, pos, big_endian, linktype) -> (end, status, meta, ips, runs)"},
    {"assemble", capio_assemble, METH_VARARGS,
     "assemble(buf, meta, first, count, results, only_matched, big_endian, frac, linktype)"
     " -> (data, written, ok, ok_bytes)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "ipsecsa._capio",
    "Record loops of the offline capture tools (see ipsecsa.io.pcapbatch).", -1, methods,
};

PyMODINIT_FUNC PyInit__capio(void)
{
    PyObject *mod = PyModule_Create(&moddef);
    if (!mod)
        return NULL;
    if (PyModule_AddIntConstant(mod, "MAX_RECORD", MAX_RECORD) < 0) {
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
