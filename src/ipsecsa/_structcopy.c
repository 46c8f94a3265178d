/*
 * ipsecsa._structcopy: the RPC boundary's private copies of WFP structures, in C.
 *
 * The engine copies every structure a caller hands it and every one it hands back
 * (ipsecsa.wfp._structbase.clone / clone_but). The Python copiers there are the reference and
 * the fallback; this module walks the same trees by the same rules, without a Python frame per
 * structure, list and field:
 *
 *   Copier(describe, clone_py, clone_but_py)
 *       describe(cls) -> 0 (SHARED: values of cls are shared), 1 (STRUCT: a mutable structure
 *       whose instances keep their attributes in a plain instance dict, copied here), 2 (LIST:
 *       exactly `list`, copied here) or a callable (Python's copier for cls, called with the
 *       value). Asked once per type (_structbase._native_kind; it records the decision in
 *       _structbase's own caches as the Python path would), kept in a dict that holds the type.
 *       clone_py(value) is _structbase's _clone_value, clone_but_py its Python clone_but: what
 *       this module hands a value back to.
 *   Copier.clone(value)                       the copy _clone_value makes
 *   Copier.clone_but(obj, field, value[, field2, value2])   the copy clone_but makes
 *
 * The rules (those of _structbase._copied, which the generated per-class copiers agree with):
 * a structure's copy is a new instance made by object.__new__ (no __init__ runs) whose dict is a
 * copy of the original's (same keys, same order), each value whose type is not shared replaced by
 * its copy; with clone_but, `field` set to `value` and `field2` to `value2` where the dict has
 * them (never added). A list's copy is a plain list of copies of its items. Anything described by
 * a callable is copied by that callable (copy.deepcopy, a class's own __deepcopy__, a list
 * subclass's _copy_list). An instance dict that is not exactly a dict goes to Python whole.
 *
 * Every object taken from a container is held (a new reference) while it is used, so Python code
 * run meanwhile (a describe, a callable copier) cannot free it under us. Nesting deeper than
 * MAX_DEPTH is handed to Python (clone_py), so the C stack never grows with the input: a
 * structure or list that contains itself ends in Python's RecursionError, as on the Python path.
 * Each level here also counts against the interpreter's recursion limit (Py_EnterRecursiveCall),
 * since a callable copier may call clone again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Deepest structure/list nesting copied here (the WFP types nest about 10 deep). */
#define MAX_DEPTH 48

enum { K_SHARED = 0, K_STRUCT = 1, K_LIST = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *describe;     /* callable(cls) -> kind */
    PyObject *clone_py;     /* _structbase._clone_value */
    PyObject *clone_but_py; /* _structbase's Python clone_but */
    PyObject *kinds;        /* dict: type -> small int kind or callable */
} Copier;

static PyObject *empty_tuple;

static PyObject *copy_value(Copier *self, PyObject *v, int depth);

/* The kind of type t: K_SHARED/K_STRUCT/K_LIST, or -2 with *fn a new reference to the callable,
 * or -1 with an exception set. */
static int kind_of(Copier *self, PyTypeObject *t, PyObject **fn)
{
    PyObject *k = PyDict_GetItemWithError(self->kinds, (PyObject *)t);
    if (k == NULL) {
        if (PyErr_Occurred())
            return -1;
        k = PyObject_CallOneArg(self->describe, (PyObject *)t);
        if (k == NULL)
            return -1;
        if (!PyLong_CheckExact(k) && !PyCallable_Check(k)) {
            Py_DECREF(k);
            PyErr_SetString(PyExc_TypeError, "describe() must return 0, 1, 2 or a callable");
            return -1;
        }
        if (PyDict_SetItem(self->kinds, (PyObject *)t, k) < 0) {
            Py_DECREF(k);
            return -1;
        }
    } else {
        Py_INCREF(k);
    }
    if (PyLong_CheckExact(k)) {
        long n = PyLong_AsLong(k);
        Py_DECREF(k);
        if (n != K_SHARED && n != K_STRUCT && n != K_LIST) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "describe() returned an unknown kind");
            return -1;
        }
        return (int)n;
    }
    *fn = k;
    return -2;
}

/* A value of one of the built-in types that are always shared (the start of _SHARED). */
static inline int always_shared(PyObject *v)
{
    PyTypeObject *t = Py_TYPE(v);
    return v == Py_None || t == &PyLong_Type || t == &PyUnicode_Type || t == &PyBytes_Type ||
           t == &PyBool_Type || t == &PyFloat_Type;
}

/* key == name, as Python's `k == field` answers it (an exact str key needs no Python code). */
static int same_key(PyObject *key, PyObject *name)
{
    if (key == name)
        return 1;
    if (PyUnicode_CheckExact(key))
        return PyUnicode_Compare(key, name) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
    return PyObject_RichCompareBool(key, name, Py_EQ);
}

/* The copy of a structure whose type is K_STRUCT, with f1/f2 (NULL: none) set to v1/v2 where
 * its dict has them. NULL with *back = 1 and no exception: the instance dict is not a plain
 * dict, Python must copy it. */
static PyObject *copy_struct(Copier *self, PyObject *obj, int depth, PyObject *f1, PyObject *v1,
                             PyObject *f2, PyObject *v2, int *back)
{
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL)
        return NULL;
    if (!PyDict_CheckExact(d)) {
        Py_DECREF(d);
        *back = 1;
        return NULL;
    }
    PyObject *state = PyDict_Copy(d);
    Py_DECREF(d);
    if (state == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    PyObject *key, *val;
    while (PyDict_Next(state, &pos, &key, &val)) {
        PyObject *nv = NULL;
        Py_INCREF(key);
        if (f1 != NULL) {
            int r = same_key(key, f1);
            if (r < 0)
                goto fail_key;
            if (r)
                nv = Py_NewRef(v1);
        }
        if (f2 != NULL) {
            int r = same_key(key, f2);
            if (r < 0) {
                Py_XDECREF(nv);
                goto fail_key;
            }
            if (r)
                Py_XSETREF(nv, Py_NewRef(v2));
        }
        if (nv == NULL) {
            if (always_shared(val)) {
                Py_DECREF(key);
                continue;
            }
            Py_INCREF(val);
            nv = copy_value(self, val, depth + 1);
            if (nv == val) {
                Py_DECREF(nv);
                Py_DECREF(val);
                Py_DECREF(key);
                continue;
            }
            Py_DECREF(val);
            if (nv == NULL)
                goto fail_key;
        }
        /* Replacing the value of a key the dict holds: allowed while iterating with
         * PyDict_Next (the set of keys does not change). */
        int r = PyDict_SetItem(state, key, nv);
        Py_DECREF(nv);
        Py_DECREF(key);
        if (r < 0)
            goto fail;
    }
    /* object.__new__(cls) then new.__dict__ = state: for a class that is not abstract (where
     * object.__new__ raises), object.__new__ is the allocation plus an empty set of inline
     * attribute values, which the assignment of __dict__ would turn into a dict only to drop
     * it; the allocation alone, then the dict, leaves the same instance. */
    PyTypeObject *t = Py_TYPE(obj);
    PyObject *new = (t->tp_flags & Py_TPFLAGS_IS_ABSTRACT)
                        ? PyBaseObject_Type.tp_new(t, empty_tuple, NULL)
                        : t->tp_alloc(t, 0);
    if (new == NULL)
        goto fail;
    if (PyObject_GenericSetDict(new, state, NULL) < 0) {
        Py_DECREF(new);
        goto fail;
    }
    Py_DECREF(state);
    return new;
fail_key:
    Py_DECREF(key);
fail:
    Py_DECREF(state);
    return NULL;
}

/* The copy of an exact list: a new list of copies of its items, read one at a time by index as
 * Python's `for item in value` does (a copier run meanwhile may change the list). */
static PyObject *copy_list(Copier *self, PyObject *v, int depth)
{
    Py_ssize_t n = PyList_GET_SIZE(v);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    for (; i < PyList_GET_SIZE(v); i++) {
        PyObject *item = PyList_GET_ITEM(v, i);
        Py_INCREF(item);
        PyObject *c = always_shared(item) ? Py_NewRef(item) : copy_value(self, item, depth + 1);
        Py_DECREF(item);
        if (c == NULL) {
            Py_DECREF(out); /* unfilled slots are NULL: list_dealloc skips them */
            return NULL;
        }
        if (i < n) {
            PyList_SET_ITEM(out, i, c);
        } else {
            int r = PyList_Append(out, c);
            Py_DECREF(c);
            if (r < 0) {
                Py_DECREF(out);
                return NULL;
            }
        }
    }
    if (i < n)
        Py_SET_SIZE(out, i); /* the list shrank meanwhile: slots from i on were never filled */
    return out;
}

static PyObject *copy_value(Copier *self, PyObject *v, int depth)
{
    if (always_shared(v))
        return Py_NewRef(v);
    PyObject *fn = NULL;
    int kind = kind_of(self, Py_TYPE(v), &fn);
    if (kind == K_SHARED)
        return Py_NewRef(v);
    if (kind == -1)
        return NULL;
    if (kind == -2) {
        PyObject *r = PyObject_CallOneArg(fn, v);
        Py_DECREF(fn);
        return r;
    }
    if (depth >= MAX_DEPTH)
        return PyObject_CallOneArg(self->clone_py, v);
    if (Py_EnterRecursiveCall(" while copying a WFP structure"))
        return NULL;
    PyObject *r;
    if (kind == K_LIST) {
        r = copy_list(self, v, depth);
    } else {
        int back = 0;
        r = copy_struct(self, v, depth, NULL, NULL, NULL, NULL, &back);
        if (back)
            r = PyObject_CallOneArg(self->clone_py, v);
    }
    Py_LeaveRecursiveCall();
    return r;
}

/* ------------------------------------------------------------------ the Copier type */
static int ready(Copier *self)
{
    if (self->kinds == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Copier was not initialised");
        return 0;
    }
    return 1;
}

static PyObject *Copier_clone(Copier *self, PyObject *value)
{
    if (!ready(self))
        return NULL;
    Py_INCREF(self); /* describe() could drop the last other reference */
    PyObject *r = copy_value(self, value, 0);
    Py_DECREF(self);
    return r;
}

static PyObject *Copier_clone_but(Copier *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    if (!ready(self))
        return NULL;
    if (kwnames != NULL || nargs < 3 || nargs > 5)
        return PyObject_Vectorcall(self->clone_but_py, args, (size_t)nargs, kwnames);
    PyObject *obj = args[0], *f1 = args[1], *v1 = args[2];
    PyObject *f2 = nargs > 3 ? args[3] : Py_None, *v2 = nargs > 4 ? args[4] : Py_None;
    if (!PyUnicode_CheckExact(f1) || (f2 != Py_None && !PyUnicode_CheckExact(f2)))
        return PyObject_Vectorcall(self->clone_but_py, args, (size_t)nargs, NULL);
    Py_INCREF(self);
    PyObject *fn = NULL, *r = NULL;
    int kind = kind_of(self, Py_TYPE(obj), &fn);
    Py_XDECREF(fn);
    if (kind == K_STRUCT) {
        int back = 0;
        if (Py_EnterRecursiveCall(" while copying a WFP structure") == 0) {
            r = copy_struct(self, obj, 0, f1, v1, f2 == Py_None ? NULL : f2, v2, &back);
            Py_LeaveRecursiveCall();
        }
        if (back)
            r = PyObject_Vectorcall(self->clone_but_py, args, (size_t)nargs, NULL);
    } else if (kind != -1) {
        /* Not a mutable structure with plain instances: Python's clone_but decides. */
        r = PyObject_Vectorcall(self->clone_but_py, args, (size_t)nargs, NULL);
    }
    Py_DECREF(self);
    return r;
}

static int Copier_init(Copier *self, PyObject *args, PyObject *kwds)
{
    static char *names[] = {"describe", "clone_py", "clone_but_py", NULL};
    PyObject *describe, *clone_py, *clone_but_py;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOO:Copier", names, &describe, &clone_py,
                                     &clone_but_py))
        return -1;
    if (!PyCallable_Check(describe) || !PyCallable_Check(clone_py) ||
        !PyCallable_Check(clone_but_py)) {
        PyErr_SetString(PyExc_TypeError, "describe, clone_py and clone_but_py must be callable");
        return -1;
    }
    PyObject *kinds = PyDict_New();
    if (kinds == NULL)
        return -1;
    Py_XSETREF(self->describe, Py_NewRef(describe));
    Py_XSETREF(self->clone_py, Py_NewRef(clone_py));
    Py_XSETREF(self->clone_but_py, Py_NewRef(clone_but_py));
    Py_XSETREF(self->kinds, kinds);
    return 0;
}

static int Copier_traverse(Copier *self, visitproc visit, void *arg)
{
    Py_VISIT(self->describe);
    Py_VISIT(self->clone_py);
    Py_VISIT(self->clone_but_py);
    Py_VISIT(self->kinds);
    return 0;
}

static int Copier_tp_clear(Copier *self)
{
    Py_CLEAR(self->describe);
    Py_CLEAR(self->clone_py);
    Py_CLEAR(self->clone_but_py);
    Py_CLEAR(self->kinds);
    return 0;
}

static void Copier_dealloc(Copier *self)
{
    PyObject_GC_UnTrack(self);
    Copier_tp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Copier_methods[] = {
    {"clone", (PyCFunction)Copier_clone, METH_O,
     "clone(value): the copy _structbase._clone_value makes"},
    {"clone_but", (PyCFunction)(void (*)(void))Copier_clone_but, METH_FASTCALL | METH_KEYWORDS,
     "clone_but(obj, field, value, field2=None, value2=None): the copy _structbase.clone_but "
     "makes"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CopierType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ipsecsa._structcopy.Copier",
    .tp_basicsize = sizeof(Copier),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Copier(describe, clone_py, clone_but_py): the WFP structures' copier "
              "(see ipsecsa.wfp._structbase)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Copier_init,
    .tp_dealloc = (destructor)Copier_dealloc,
    .tp_traverse = (traverseproc)Copier_traverse,
    .tp_clear = (inquiry)Copier_tp_clear,
    .tp_methods = Copier_methods,
};

static struct PyModuleDef moddef = {
    PyModuleDef_HEAD_INIT, "ipsecsa._structcopy",
    "The WFP structures' copier (see ipsecsa.wfp._structbase).", -1, NULL,
};

PyMODINIT_FUNC PyInit__structcopy(void)
{
    empty_tuple = PyTuple_New(0);
    if (empty_tuple == NULL)
        return NULL;
    if (PyType_Ready(&CopierType) < 0)
        return NULL;
    PyObject *mod = PyModule_Create(&moddef);
    if (mod == NULL)
        return NULL;
    static const struct { const char *name; int value; } consts[] = {
        {"SHARED", K_SHARED}, {"STRUCT", K_STRUCT}, {"LIST", K_LIST}, {"MAX_DEPTH", MAX_DEPTH},
    };
    for (size_t i = 0; i < sizeof(consts) / sizeof(consts[0]); i++) {
        if (PyModule_AddIntConstant(mod, consts[i].name, consts[i].value) < 0) {
            Py_DECREF(mod);
            return NULL;
        }
    }
    Py_INCREF(&CopierType);
    if (PyModule_AddObject(mod, "Copier", (PyObject *)&CopierType) < 0) {
        Py_DECREF(&CopierType);
        Py_DECREF(mod);
        return NULL;
    }
    return mod;
}
