/*
 * ipsecsa._storejson: the durable store's JSON writer for WFP structures, in C.
 *
 * A durable engine writes every structure it is handed (each filter, each SA bundle, each
 * traffic description) as JSON into SQLite. ipsecsa.store.codec holds the format and its Python
 * reference (`to_jsonable` then orjson's `dumps`): a structure is {"$":"NAME",field:value,...}
 * with the fields still at their declared default left out, a GUID {"$g":"text"}, bytes
 * {"$b":"hex"}, an enum its value. That reference spends ~15 us on a filter, most of it in the
 * per-field Python tests; this module walks the same tree and writes the same bytes directly.
 *
 *   Encoder(describe, cycle_error, float_text)
 *       describe(cls) -> tuple: how to write values of type `cls` (asked once per type, then
 *       compiled and kept; codec._native_kind is the one describe):
 *         (PYTHON,)    not written here: a value holding one goes to the Python path whole
 *         (STRUCT, head, access, fields)   a dataclass: head = b'{"$":"NAME"'; fields a tuple
 *                      of (name, key, default) in declared order, key = b',"name":', default
 *                      any non-plain sentinel when the field has none; access BY_DICT (the
 *                      instance dict), BY_DICT_ATTR (getattr(value, "__dict__")) or BY_ATTR
 *                      (getattr per field, for __slots__)
 *         (UUID,) (BYTES,) (ENUM,) (LIST,) (PLAIN,)  see write_value
 *       float_text(x) -> bytes: the text of an exact float (orjson.dumps: its shortest round-trip
 *       form and its exponent notation are its own; floats are rare in WFP structures)
 *   journal_body(lsn, ops) -> bytes, or None: see the journal section below.
 *   Encoder.dumps(value) -> str, or None when the Python path must write `value` (an integer
 *       beyond 64 bits, a string with a lone surrogate, a type described PYTHON, nesting
 *       deeper than MAX_DEPTH): the reference then writes it, so the text is always the
 *       reference's, byte for byte (tests/store/test_codec_native.py compares the two).
 *
 * The rules mirror codec._struct_encoder exactly: a field missing from the instance, or holding
 * its default object itself, is left out; a plain int/str/bool/float of the default's own type
 * is left out when equal to it; anything else is written. Only exact built-in types are compared
 * here (no user __eq__ runs). Python code runs only in `describe`, str() of a UUID not yet
 * cached, reading __dict__/a slot/an enum's _value_: every object taken from a container is held
 * (a new reference) while it is used, so what such code does cannot free it under us.
 * A structure or list that contains itself raises `cycle_error`; nesting beyond MAX_DEPTH goes
 * to the Python path (which then succeeds, or raises RecursionError): the C stack never grows
 * with the input.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------ implementation constants */
/* Deepest structure/list nesting written here (the WFP types nest about 10 deep; orjson stops at
 * 255, so every depth handed back is one orjson would still write: the output does not change). */
#define MAX_DEPTH 64
/* The GUID text cache is emptied when it holds this many (layer, callout, condition GUIDs recur;
 * filter keys and the like do not). */
#define GUID_CACHE_MAX 4096
#define STACK_BUF 2048

/* The kinds describe() answers (codec._native_kind uses the same numbers). */
enum { K_PYTHON = 0, K_STRUCT = 1, K_UUID = 2, K_BYTES = 3, K_ENUM = 4, K_LIST = 5, K_PLAIN = 6 };

/* write_* results: OK, ERR (a Python exception is set), BACK (hand the value to Python). */
enum { OK = 0, ERR = -1, BACK = 1 };

typedef struct {
    PyObject_HEAD
    PyObject *describe;    /* callable(cls) -> kind tuple */
    PyObject *cycle_error; /* exception class raised for a reference cycle */
    PyObject *float_text;  /* callable(float) -> bytes */
    PyObject *kinds;       /* dict: type -> capsule of its compiled Kind */
    PyObject *guids;       /* dict: UUID.int -> its text (str) */
} Encoder;

typedef struct {
    char *p;
    size_t len, cap;
    int ascii;
    Encoder *enc;
    int depth;
    PyObject *path[MAX_DEPTH + 1]; /* the containers being written, outermost first (borrowed:
                                     * each is held by the caller's frame while it is here) */
    char stack[STACK_BUF];
} Out;

static PyObject *str_dict, *str_int, *str_value_; /* interned "__dict__", "int", "_value_" */

static int write_value(Out *o, PyObject *v);

/* ------------------------------------------------------------------ output buffer */
static int reserve(Out *o, size_t more)
{
    if (o->cap - o->len >= more)
        return OK;
    if (more > (size_t)PY_SSIZE_T_MAX / 2 - o->len) {
        PyErr_NoMemory();
        return ERR;
    }
    size_t cap = o->cap * 2;
    while (cap - o->len < more)
        cap *= 2;
    char *p;
    if (o->p == o->stack) {
        p = PyMem_Malloc(cap);
        if (p)
            memcpy(p, o->p, o->len);
    } else {
        p = PyMem_Realloc(o->p, cap);
    }
    if (!p) {
        PyErr_NoMemory();
        return ERR;
    }
    o->p = p;
    o->cap = cap;
    return OK;
}

static int put(Out *o, const char *s, size_t n)
{
    if (reserve(o, n) != OK)
        return ERR;
    memcpy(o->p + o->len, s, n);
    o->len += n;
    return OK;
}

#define PUT_LIT(o, s) put((o), (s), sizeof(s) - 1)

/* ------------------------------------------------------------------ scalars */
static int put_u64(Out *o, unsigned long long v, int negative)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    if (negative)
        tmp[--i] = '-';
    return put(o, tmp + i, sizeof(tmp) - (size_t)i);
}

/* An int (or int subclass: its value, as orjson writes it) in orjson's range, i64 and u64. */
static int write_int(Out *o, PyObject *v)
{
    int overflow = 0;
    long long s = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (s == -1 && PyErr_Occurred())
        return ERR;
    if (overflow == 0) {
        if (s < 0)
            return put_u64(o, (unsigned long long)(-(s + 1)) + 1u, 1);
        return put_u64(o, (unsigned long long)s, 0);
    }
    if (overflow < 0)
        return BACK;
    unsigned long long u = PyLong_AsUnsignedLongLong(v);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return ERR;
        PyErr_Clear();
        return BACK; /* wider than 64 bits: the reference goes to the standard library */
    }
    return put_u64(o, u, 0);
}

static const char HEX[] = "0123456789abcdef";

/* A str (or str subclass: its text) as orjson escapes it: '"', '\\', and the C0 controls
 * (\b \t \n \f \r by name, the rest \u00xx); everything else as UTF-8. */
static int write_str(Out *o, PyObject *v)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (!s) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError))
            return ERR;
        PyErr_Clear();
        return BACK; /* a lone surrogate: orjson refuses it, the standard library writes it */
    }
    if ((size_t)n > (size_t)PY_SSIZE_T_MAX / 8) {
        PyErr_NoMemory();
        return ERR;
    }
    if (reserve(o, (size_t)n * 6 + 2) != OK)
        return ERR;
    char *w = o->p + o->len;
    *w++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            if (c >= 0x80)
                o->ascii = 0;
            *w++ = (char)c;
            continue;
        }
        *w++ = '\\';
        switch (c) {
        case '"': *w++ = '"'; break;
        case '\\': *w++ = '\\'; break;
        case '\b': *w++ = 'b'; break;
        case '\t': *w++ = 't'; break;
        case '\n': *w++ = 'n'; break;
        case '\f': *w++ = 'f'; break;
        case '\r': *w++ = 'r'; break;
        default:
            *w++ = 'u';
            *w++ = '0';
            *w++ = '0';
            *w++ = HEX[c >> 4];
            *w++ = HEX[c & 15];
        }
    }
    *w++ = '"';
    o->len = (size_t)(w - o->p);
    return OK;
}

static int write_float(Out *o, PyObject *v)
{
    PyObject *text = PyObject_CallOneArg(o->enc->float_text, v);
    if (!text)
        return ERR;
    int r;
    if (PyBytes_CheckExact(text)) {
        r = put(o, PyBytes_AS_STRING(text), (size_t)PyBytes_GET_SIZE(text));
    } else {
        PyErr_SetString(PyExc_TypeError, "_storejson: float_text() must return bytes");
        r = ERR;
    }
    Py_DECREF(text);
    return r;
}

/* An exact None/bool/int/str/float; BACK for anything else. */
static int write_plain(Out *o, PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    if (v == Py_None)
        return PUT_LIT(o, "null");
    if (t == &PyBool_Type)
        return v == Py_True ? PUT_LIT(o, "true") : PUT_LIT(o, "false");
    if (t == &PyLong_Type)
        return write_int(o, v);
    if (t == &PyUnicode_Type)
        return write_str(o, v);
    if (t == &PyFloat_Type)
        return write_float(o, v);
    return BACK;
}

static int write_bytes(Out *o, PyObject *v)
{
    const char *s;
    Py_ssize_t n;
    if (PyBytes_CheckExact(v)) {
        s = PyBytes_AS_STRING(v);
        n = PyBytes_GET_SIZE(v);
    } else { /* exact bytearray (describe says BYTES for nothing else) */
        s = PyByteArray_AS_STRING(v);
        n = PyByteArray_GET_SIZE(v);
    }
    if ((size_t)n > (size_t)PY_SSIZE_T_MAX / 4 || reserve(o, (size_t)n * 2 + 10) != OK) {
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return ERR;
    }
    char *w = o->p + o->len;
    memcpy(w, "{\"$b\":\"", 7);
    w += 7;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        *w++ = HEX[c >> 4];
        *w++ = HEX[c & 15];
    }
    *w++ = '"';
    *w++ = '}';
    o->len = (size_t)(w - o->p);
    return OK;
}

/* {"$g":"text"}: the text cached by the GUID's integer (str(UUID) formats in Python). */
static int write_uuid(Out *o, PyObject *v)
{
    Encoder *e = o->enc;
    PyObject *key = PyObject_GetAttr(v, str_int);
    if (!key)
        return ERR;
    if (!PyLong_CheckExact(key)) {
        Py_DECREF(key);
        return BACK;
    }
    PyObject *text = PyDict_GetItemWithError(e->guids, key);
    if (text) {
        Py_INCREF(text);
    } else if (PyErr_Occurred()) {
        Py_DECREF(key);
        return ERR;
    } else {
        text = PyObject_Str(v);
        if (!text) {
            Py_DECREF(key);
            return ERR;
        }
        if (!PyUnicode_CheckExact(text)) {
            Py_DECREF(key);
            Py_DECREF(text);
            return BACK;
        }
        if (PyDict_GET_SIZE(e->guids) >= GUID_CACHE_MAX)
            PyDict_Clear(e->guids);
        if (PyDict_SetItem(e->guids, key, text) < 0) {
            Py_DECREF(key);
            Py_DECREF(text);
            return ERR;
        }
    }
    Py_DECREF(key);
    int r = PUT_LIT(o, "{\"$g\":");
    if (r == OK)
        r = write_str(o, text);
    if (r == OK)
        r = PUT_LIT(o, "}");
    Py_DECREF(text);
    return r;
}

/* ------------------------------------------------------------------ containers */
/* Enter a container: refuse one already being written (a cycle), hand back beyond MAX_DEPTH. */
static int enter(Out *o, PyObject *v)
{
    for (int i = 0; i < o->depth; i++) {
        if (o->path[i] == v) {
            PyErr_Format(o->enc->cycle_error,
                         "cannot store a reference cycle: a %.100s contains itself",
                         Py_TYPE(v)->tp_name);
            return ERR;
        }
    }
    if (o->depth >= MAX_DEPTH)
        return BACK;
    o->path[o->depth++] = v;
    return OK;
}

static int write_list(Out *o, PyObject *v)
{
    int r = enter(o, v);
    if (r != OK)
        return r;
    r = PUT_LIT(o, "[");
    /* The length is read again each time: the list is exact, but Python code run for an item
     * (an attribute read) could change it. */
    for (Py_ssize_t i = 0; r == OK; i++) {
        PyObject *item;
        if (PyList_CheckExact(v)) {
            if (i >= PyList_GET_SIZE(v))
                break;
            item = PyList_GET_ITEM(v, i);
        } else {
            if (i >= PyTuple_GET_SIZE(v))
                break;
            item = PyTuple_GET_ITEM(v, i);
        }
        Py_INCREF(item);
        if (i > 0)
            r = PUT_LIT(o, ",");
        if (r == OK)
            r = write_value(o, item);
        Py_DECREF(item);
    }
    if (r == OK)
        r = PUT_LIT(o, "]");
    o->depth--;
    return r;
}

/* What describe() said about one type, compiled once (kept in Encoder.kinds in a capsule). */
typedef struct {
    PyObject *name;  /* the field's name (str) */
    const char *key; /* ,"name": */
    Py_ssize_t key_len;
    PyObject *dflt;  /* its declared default (any non-plain object when it has none) */
} Field;

/* How a structure's fields are read: its instance dict (the standard __dict__ and
 * __getattribute__, checked by describe), getattr(value, "__dict__"), or getattr per field
 * (a class with __slots__: getattr(value, name, default)). */
enum { A_DICT = 0, A_DICT_ATTR = 1, A_ATTR = 2 };

typedef struct {
    int kind;
    int access;
    PyObject *desc; /* describe()'s tuple: owns every object pointed to here */
    const char *head; /* {"$":"NAME" */
    Py_ssize_t head_len;
    Py_ssize_t n;
    Field f[];
} Kind;

/* The capsules are unnamed: only this module makes them and only Encoder.kinds holds them,
 * and PyCapsule_GetPointer then checks the name without a strcmp per value written. */
#define CAPSULE NULL

static void kind_free(PyObject *capsule)
{
    Kind *k = PyCapsule_GetPointer(capsule, CAPSULE);
    if (k) {
        Py_XDECREF(k->desc);
        PyMem_Free(k);
    }
}

static PyObject *malformed(void)
{
    PyErr_SetString(PyExc_TypeError,
                    "_storejson: describe() must return (kind,) or "
                    "(STRUCT, head: bytes, access: int, ((name: str, key: bytes, default), ...))");
    return NULL;
}

/* Validate and compile describe()'s answer; a capsule owning it. */
static PyObject *compile_kind(PyObject *desc)
{
    if (!PyTuple_CheckExact(desc) || PyTuple_GET_SIZE(desc) < 1
        || !PyLong_CheckExact(PyTuple_GET_ITEM(desc, 0)))
        return malformed();
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(desc, 0));
    if (kind == -1 && PyErr_Occurred())
        return NULL;
    if (kind < K_PYTHON || kind > K_PLAIN)
        return malformed();
    Py_ssize_t n = 0;
    PyObject *fields = NULL;
    long access = 0;
    if (kind == K_STRUCT) {
        if (PyTuple_GET_SIZE(desc) != 4 || !PyBytes_CheckExact(PyTuple_GET_ITEM(desc, 1))
            || !PyLong_CheckExact(PyTuple_GET_ITEM(desc, 2))
            || !PyTuple_CheckExact(PyTuple_GET_ITEM(desc, 3)))
            return malformed();
        access = PyLong_AsLong(PyTuple_GET_ITEM(desc, 2));
        if (access == -1 && PyErr_Occurred())
            return NULL;
        if (access < A_DICT || access > A_ATTR)
            return malformed();
        fields = PyTuple_GET_ITEM(desc, 3);
        n = PyTuple_GET_SIZE(fields);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *f = PyTuple_GET_ITEM(fields, i);
            if (!PyTuple_CheckExact(f) || PyTuple_GET_SIZE(f) != 3
                || !PyUnicode_CheckExact(PyTuple_GET_ITEM(f, 0))
                || !PyBytes_CheckExact(PyTuple_GET_ITEM(f, 1)))
                return malformed();
        }
    }
    Kind *k = PyMem_Malloc(sizeof(Kind) + (size_t)n * sizeof(Field));
    if (!k)
        return PyErr_NoMemory();
    k->kind = (int)kind;
    k->access = (int)access;
    k->desc = Py_NewRef(desc);
    k->n = n;
    k->head = NULL;
    k->head_len = 0;
    if (kind == K_STRUCT) {
        PyObject *head = PyTuple_GET_ITEM(desc, 1);
        k->head = PyBytes_AS_STRING(head);
        k->head_len = PyBytes_GET_SIZE(head);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *f = PyTuple_GET_ITEM(fields, i);
            PyObject *key = PyTuple_GET_ITEM(f, 1);
            k->f[i].name = PyTuple_GET_ITEM(f, 0);
            k->f[i].key = PyBytes_AS_STRING(key);
            k->f[i].key_len = PyBytes_GET_SIZE(key);
            k->f[i].dflt = PyTuple_GET_ITEM(f, 2);
        }
    }
    PyObject *capsule = PyCapsule_New(k, CAPSULE, kind_free);
    if (!capsule) {
        Py_DECREF(k->desc);
        PyMem_Free(k);
    }
    return capsule;
}

/* The compiled kind of `t` (a new reference to its capsule, *out its contents), asking
 * describe() the first time. */
static PyObject *kind_of(Encoder *e, PyTypeObject *t, Kind **out)
{
    PyObject *capsule = PyDict_GetItemWithError(e->kinds, (PyObject *)t);
    if (capsule) {
        Py_INCREF(capsule);
    } else {
        if (PyErr_Occurred())
            return NULL;
        PyObject *desc = PyObject_CallOneArg(e->describe, (PyObject *)t);
        if (!desc)
            return NULL;
        capsule = compile_kind(desc);
        Py_DECREF(desc);
        if (!capsule)
            return NULL;
        if (PyDict_SetItem(e->kinds, (PyObject *)t, capsule) < 0) {
            Py_DECREF(capsule);
            return NULL;
        }
    }
    *out = PyCapsule_GetPointer(capsule, CAPSULE);
    if (!*out) {
        Py_DECREF(capsule);
        return NULL;
    }
    return capsule;
}

/* One field's value (a new reference), or NULL: missing (left out), or an exception is set.
 * `pos` walks the instance dict alongside the fields: a dataclass's __init__ assigns them in
 * declared order, so the next entry is usually the field, its key the very same interned name,
 * and no hash lookup is needed; for any other entry the name is looked up. */
static PyObject *field_value(PyObject *obj, PyObject *dict, PyObject *name, Py_ssize_t *pos)
{
    PyObject *v;
    if (dict) {
        Py_ssize_t next = *pos;
        PyObject *key;
        if (PyDict_Next(dict, &next, &key, &v) && key == name) {
            *pos = next;
            return Py_NewRef(v);
        }
        v = PyDict_GetItemWithError(dict, name);
        return v ? Py_NewRef(v) : NULL;
    }
    v = PyObject_GetAttr(obj, name);
    if (!v && PyErr_ExceptionMatches(PyExc_AttributeError))
        PyErr_Clear(); /* getattr(value, name, default): left out */
    return v;
}

static int is_plain_type(PyTypeObject *t)
{
    return t == &PyLong_Type || t == &PyUnicode_Type || t == &PyBool_Type || t == &PyFloat_Type;
}

static int write_struct(Out *o, PyObject *v, const Kind *k)
{
    int r = enter(o, v);
    if (r != OK)
        return r;
    PyObject *dict = NULL;
    if (k->access != A_ATTR) {
        dict = k->access == A_DICT ? PyObject_GenericGetDict(v, NULL)
                                   : PyObject_GetAttr(v, str_dict);
        if (!dict) {
            o->depth--;
            return ERR;
        }
        if (!PyDict_CheckExact(dict)) {
            Py_DECREF(dict);
            o->depth--;
            return BACK;
        }
    }
    r = put(o, k->head, (size_t)k->head_len);
    Py_ssize_t pos = 0;
    for (Py_ssize_t i = 0; i < k->n && r == OK; i++) {
        const Field *f = &k->f[i];
        PyObject *fv = field_value(v, dict, f->name, &pos);
        if (!fv) {
            if (PyErr_Occurred())
                r = ERR;
            continue;
        }
        if (fv == f->dflt) {
            Py_DECREF(fv);
            continue;
        }
        PyTypeObject *t = Py_TYPE(fv);
        if (is_plain_type(t)) {
            if (t == Py_TYPE(f->dflt)) {
                int ne = PyObject_RichCompareBool(fv, f->dflt, Py_NE);
                if (ne <= 0) {
                    Py_DECREF(fv);
                    if (ne < 0)
                        r = ERR;
                    continue;
                }
            }
            r = put(o, f->key, (size_t)f->key_len);
            if (r == OK)
                r = write_plain(o, fv);
        } else {
            r = put(o, f->key, (size_t)f->key_len);
            if (r == OK)
                r = write_value(o, fv);
        }
        Py_DECREF(fv);
    }
    if (r == OK)
        r = PUT_LIT(o, "}");
    Py_XDECREF(dict);
    o->depth--;
    return r;
}

static int write_value(Out *o, PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    if (v == Py_None || t == &PyBool_Type || t == &PyLong_Type || t == &PyUnicode_Type
        || t == &PyFloat_Type)
        return write_plain(o, v);
    Kind *k;
    PyObject *capsule = kind_of(o->enc, t, &k);
    if (!capsule)
        return ERR;
    int r;
    switch (k->kind) {
    case K_STRUCT:
        r = write_struct(o, v, k);
        break;
    case K_UUID:
        r = write_uuid(o, v);
        break;
    case K_BYTES:
        r = (PyBytes_CheckExact(v) || PyByteArray_CheckExact(v)) ? write_bytes(o, v) : BACK;
        break;
    case K_LIST:
        r = (PyList_CheckExact(v) || PyTuple_CheckExact(v)) ? write_list(o, v) : BACK;
        break;
    case K_ENUM: { /* its value, written as it is (codec: `lambda v: v.value`) */
        PyObject *value = PyObject_GetAttr(v, str_value_);
        if (!value) {
            r = ERR;
            break;
        }
        r = write_plain(o, value);
        Py_DECREF(value);
        break;
    }
    case K_PLAIN: /* a subclass of int or str: its value */
        if (PyLong_Check(v))
            r = write_int(o, v);
        else if (PyUnicode_Check(v))
            r = write_str(o, v);
        else
            r = BACK;
        break;
    default:
        r = BACK;
    }
    Py_DECREF(capsule);
    return r;
}

/* ------------------------------------------------------------------ the Encoder type */
static PyObject *Encoder_dumps(Encoder *self, PyObject *value)
{
    Out o;
    o.p = o.stack;
    o.len = 0;
    o.cap = STACK_BUF;
    o.ascii = 1;
    o.enc = self;
    o.depth = 0;
    Py_INCREF(self); /* describe() could drop the last other reference */
    int r = write_value(&o, value);
    PyObject *result = NULL;
    if (r == OK) {
        if (o.ascii) {
            result = PyUnicode_New((Py_ssize_t)o.len, 127);
            if (result)
                memcpy(PyUnicode_DATA(result), o.p, o.len);
        } else {
            result = PyUnicode_DecodeUTF8(o.p, (Py_ssize_t)o.len, "strict");
        }
    } else if (r == BACK) {
        result = Py_NewRef(Py_None);
    }
    if (o.p != o.stack)
        PyMem_Free(o.p);
    Py_DECREF(self);
    return result;
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"describe", "cycle_error", "float_text", NULL};
    PyObject *describe, *cycle_error, *float_text;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Encoder", names, &describe, &cycle_error,
                                     &float_text))
        return -1;
    if (!PyCallable_Check(describe) || !PyCallable_Check(float_text)) {
        PyErr_SetString(PyExc_TypeError, "describe and float_text must be callable");
        return -1;
    }
    if (!PyExceptionClass_Check(cycle_error)) {
        PyErr_SetString(PyExc_TypeError, "cycle_error must be an exception class");
        return -1;
    }
    PyObject *kinds = PyDict_New(), *guids = PyDict_New();
    if (!kinds || !guids) {
        Py_XDECREF(kinds);
        Py_XDECREF(guids);
        return -1;
    }
    Py_XSETREF(self->describe, Py_NewRef(describe));
    Py_XSETREF(self->cycle_error, Py_NewRef(cycle_error));
    Py_XSETREF(self->float_text, Py_NewRef(float_text));
    Py_XSETREF(self->kinds, kinds);
    Py_XSETREF(self->guids, guids);
    return 0;
}

static PyObject *Encoder_dumps_checked(Encoder *self, PyObject *value)
{
    if (!self->kinds) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder was not initialised");
        return NULL;
    }
    return Encoder_dumps(self, value);
}

static int Encoder_traverse(Encoder *self, visitproc visit, void *arg)
{
    Py_VISIT(self->describe);
    Py_VISIT(self->cycle_error);
    Py_VISIT(self->float_text);
    Py_VISIT(self->kinds);
    Py_VISIT(self->guids);
    return 0;
}

static int Encoder_tp_clear(Encoder *self)
{
    Py_CLEAR(self->describe);
    Py_CLEAR(self->cycle_error);
    Py_CLEAR(self->float_text);
    Py_CLEAR(self->kinds);
    Py_CLEAR(self->guids);
    return 0;
}

static void Encoder_dealloc(Encoder *self)
{
    PyObject_GC_UnTrack(self);
    Encoder_tp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Encoder_methods[] = {
    {"dumps", (PyCFunction)Encoder_dumps_checked, METH_O,
     "dumps(value) -> str | None: the stored JSON of value, or None (the Python path writes it)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._storejson.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Encoder(describe, cycle_error, float_text): the store's JSON writer "
              "(see ipsecsa.store.codec)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Encoder_init,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_traverse = (traverseproc)Encoder_traverse,
    .tp_clear = (inquiry)Encoder_tp_clear,
    .tp_methods = Encoder_methods,
};

/* ------------------------------------------------------------------ journal records */
/* journal_body(lsn, ops) -> bytes, or None: the body of one journal record exactly as
 * ipsecsa.store.journal.encode lays it out (that module adds the length and CRC-32 and is the
 * reference): lsn u64 LE, the number of operations u32 LE, then per operation its statement code
 * and parameter count (u8 each) and each parameter tagged: "s" u32 length and UTF-8, "i" i64 LE,
 * "b" u32 length and bytes, "n" None. None is returned (no exception) for anything the reference
 * treats otherwise (a type it refuses, an int beyond 64 bits, a code or count beyond a byte, a
 * string that is not valid UTF-8, more than 2^32-1 operations): the reference then raises as it
 * always did. */
static void put_le(unsigned char *p, unsigned long long v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static PyObject *journal_body(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "journal_body(lsn, ops)");
        return NULL;
    }
    unsigned long long lsn = PyLong_AsUnsignedLongLong(args[0]);
    if (lsn == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!PyList_CheckExact(args[1]) && !PyTuple_CheckExact(args[1]))
        Py_RETURN_NONE; /* the reference decides what else it takes */
    /* A tuple of the operations (not the list itself: nothing may change it under us). */
    PyObject *ops = PySequence_Tuple(args[1]);
    if (ops == NULL)
        return NULL;
    PyObject *result = NULL, *out = NULL;
    Py_ssize_t nops = PyTuple_GET_SIZE(ops);
    if ((unsigned long long)nops > 0xFFFFFFFFull)
        goto back;
    /* First pass: check every value and add up the size. */
    size_t size = 12;
    for (Py_ssize_t i = 0; i < nops; i++) {
        PyObject *op = PyTuple_GET_ITEM(ops, i);
        if (!PyTuple_CheckExact(op) || PyTuple_GET_SIZE(op) != 2)
            goto back;
        PyObject *code = PyTuple_GET_ITEM(op, 0), *params = PyTuple_GET_ITEM(op, 1);
        if (!PyLong_CheckExact(code) || !PyTuple_CheckExact(params))
            goto back;
        long c = PyLong_AsLong(code);
        if (c < 0 || c > 255 || PyTuple_GET_SIZE(params) > 255) {
            PyErr_Clear();
            goto back;
        }
        size += 2;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(params); j++) {
            PyObject *p = PyTuple_GET_ITEM(params, j);
            if (p == Py_None) {
                size += 1;
            } else if (PyLong_CheckExact(p)) {
                int overflow = 0;
                (void)PyLong_AsLongLongAndOverflow(p, &overflow);
                if (overflow)
                    goto back;
                size += 9;
            } else if (PyUnicode_CheckExact(p)) {
                Py_ssize_t n;
                if (PyUnicode_AsUTF8AndSize(p, &n) == NULL) {
                    PyErr_Clear();
                    goto back;
                }
                if ((unsigned long long)n > 0xFFFFFFFFull)
                    goto back;
                size += 5 + (size_t)n;
            } else if (PyBytes_CheckExact(p)) {
                if ((unsigned long long)PyBytes_GET_SIZE(p) > 0xFFFFFFFFull)
                    goto back;
                size += 5 + (size_t)PyBytes_GET_SIZE(p);
            } else {
                goto back;
            }
        }
    }
    /* Second pass: write. Everything read is immutable and held by `ops`, and nothing here runs
     * Python code: the values are those the first pass checked. */
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)size);
    if (out == NULL)
        goto done;
    unsigned char *w = (unsigned char *)PyBytes_AS_STRING(out);
    put_le(w, lsn, 8);
    put_le(w + 8, (unsigned long long)nops, 4);
    w += 12;
    for (Py_ssize_t i = 0; i < nops; i++) {
        PyObject *op = PyTuple_GET_ITEM(ops, i);
        PyObject *params = PyTuple_GET_ITEM(op, 1);
        *w++ = (unsigned char)PyLong_AsLong(PyTuple_GET_ITEM(op, 0));
        *w++ = (unsigned char)PyTuple_GET_SIZE(params);
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(params); j++) {
            PyObject *p = PyTuple_GET_ITEM(params, j);
            if (p == Py_None) {
                *w++ = 'n';
            } else if (PyLong_CheckExact(p)) {
                long long v = PyLong_AsLongLong(p);
                *w++ = 'i';
                put_le(w, (unsigned long long)v, 8);
                w += 8;
            } else if (PyUnicode_CheckExact(p)) {
                Py_ssize_t n;
                const char *s = PyUnicode_AsUTF8AndSize(p, &n); /* cached by the first pass */
                *w++ = 's';
                put_le(w, (unsigned long long)n, 4);
                memcpy(w + 4, s, (size_t)n);
                w += 4 + n;
            } else {
                Py_ssize_t n = PyBytes_GET_SIZE(p);
                *w++ = 'b';
                put_le(w, (unsigned long long)n, 4);
                memcpy(w + 4, PyBytes_AS_STRING(p), (size_t)n);
                w += 4 + n;
            }
        }
    }
    result = out;
    out = NULL;
    goto done;
back:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(out);
    Py_DECREF(ops);
    return result;
}

static PyMethodDef module_methods[] = {
    {"journal_body", (PyCFunction)(void (*)(void))journal_body, METH_FASTCALL,
     "journal_body(lsn, ops) -> bytes | None: a journal record's body (see "
     "ipsecsa.store.journal.encode), or None (the Python path writes it)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "ipsecsa._storejson",
    "The durable store's JSON writer for WFP structures (see ipsecsa.store.codec), and its "
    "journal's record writer (see ipsecsa.store.journal).", -1, module_methods, NULL, NULL, NULL,
    NULL,
};

PyMODINIT_FUNC PyInit__storejson(void)
{
    str_dict = PyUnicode_InternFromString("__dict__");
    str_int = PyUnicode_InternFromString("int");
    str_value_ = PyUnicode_InternFromString("_value_");
    if (!str_dict || !str_int || !str_value_)
        return NULL;
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moddef);
    if (!mod)
        return NULL;
    static const struct { const char *name; int value; } consts[] = {
        {"PYTHON", K_PYTHON}, {"STRUCT", K_STRUCT}, {"UUID", K_UUID}, {"BYTES", K_BYTES},
        {"ENUM", K_ENUM}, {"LIST", K_LIST}, {"PLAIN", K_PLAIN}, {"MAX_DEPTH", MAX_DEPTH},
        {"BY_DICT", A_DICT}, {"BY_DICT_ATTR", A_DICT_ATTR}, {"BY_ATTR", A_ATTR},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++) {
        if (PyModule_AddIntConstant(mod, consts[i].name, consts[i].value) < 0) {
            Py_DECREF(mod);
            return NULL;
        }
    }
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(mod, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
