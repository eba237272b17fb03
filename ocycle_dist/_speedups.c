/* The write() hot path of BufferEmit in C: the same logic as ocycle_dist/hotpath.py (the reference,
 * used when this module is not built). A frame of the stream's exact type whose t0 is None, or an exact
 * float/int that is finite and not before `last_end`, is appended to `segs`, its end position to `ends`;
 * `due(n, t0)` is called when the end reaches `threshold`; any other frame or t0 goes to
 * `other(data, t0)`, which checks and converts it in Python (and rejects a bad t0 before keeping anything). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <float.h>

typedef struct {
    PyObject_HEAD
    PyObject *segs;
    PyObject *ends;
    PyObject *fast_type;
    Py_ssize_t threshold;
    PyObject *due;
    PyObject *other;
    double last_t0;
    double last_end;
    double inv_rate;
    double max_gap;
    double max_t0;
} Appender;

static int
Appender_traverse(Appender *self, visitproc visit, void *arg)
{
    Py_VISIT(self->segs);
    Py_VISIT(self->ends);
    Py_VISIT(self->fast_type);
    Py_VISIT(self->due);
    Py_VISIT(self->other);
    return 0;
}

static int
Appender_clear(Appender *self)
{
    Py_CLEAR(self->segs);
    Py_CLEAR(self->ends);
    Py_CLEAR(self->fast_type);
    Py_CLEAR(self->due);
    Py_CLEAR(self->other);
    return 0;
}

static void
Appender_dealloc(Appender *self)
{
    PyObject_GC_UnTrack(self);
    Appender_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Appender_init(Appender *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"segs", "ends", "fast_type", "threshold", "due", "other", NULL};
    PyObject *segs, *ends, *fast_type, *due, *other;
    Py_ssize_t threshold;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!OnOO", kwlist, &PyList_Type, &segs, &PyList_Type,
                                     &ends, &fast_type, &threshold, &due, &other))
        return -1;
    Py_INCREF(segs); Py_XSETREF(self->segs, segs);
    Py_INCREF(ends); Py_XSETREF(self->ends, ends);
    Py_INCREF(fast_type); Py_XSETREF(self->fast_type, fast_type);
    Py_INCREF(due); Py_XSETREF(self->due, due);
    Py_INCREF(other); Py_XSETREF(self->other, other);
    self->threshold = threshold;
    self->max_gap = 0.0;
    self->max_t0 = DBL_MAX;
    return 0;
}

static PyObject *
Appender_write(Appender *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data = nargs > 0 ? args[0] : NULL;
    PyObject *t0 = nargs > 1 ? args[1] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "t0") == 0 && nargs < 2)
            t0 = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "data") == 0 && nargs < 1)
            data = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "write() got an unexpected or repeated keyword argument '%U'", name);
            return NULL;
        }
    }
    if (data == NULL || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "write() takes data and an optional t0");
        return NULL;
    }
    double t = 0.0;
    int fast = (PyObject *)Py_TYPE(data) == self->fast_type;
    if (fast && t0 != Py_None) {
        if (PyFloat_CheckExact(t0)) {
            t = PyFloat_AS_DOUBLE(t0);
        } else if (PyLong_CheckExact(t0)) {
            t = PyLong_AsDouble(t0);
            if (t == -1.0 && PyErr_Occurred()) {
                PyErr_Clear(); /* too large for a double: `other` says so */
                fast = 0;
            }
        } else {
            fast = 0;
        }
        if (fast && !(t >= self->last_end && t <= self->max_t0)) /* NaN fails both; past max_t0: a gap */
            fast = 0;
    }
    if (fast) {
        Py_ssize_t n = PyObject_Length(data);
        if (n < 0)
            return NULL;
        Py_ssize_t count = PyList_GET_SIZE(self->ends);
        if (count == 0) {
            PyErr_SetString(PyExc_RuntimeError, "ends is empty");
            return NULL;
        }
        Py_ssize_t end = PyLong_AsSsize_t(PyList_GET_ITEM(self->ends, count - 1));
        if (end == -1 && PyErr_Occurred())
            return NULL;
        end += n;
        PyObject *end_obj = PyLong_FromSsize_t(end);
        if (end_obj == NULL)
            return NULL;
        if (PyList_Append(self->segs, data) < 0) {
            Py_DECREF(end_obj);
            return NULL;
        }
        int failed = PyList_Append(self->ends, end_obj);
        Py_DECREF(end_obj);
        if (failed < 0) {
            PyList_SetSlice(self->segs, PyList_GET_SIZE(self->segs) - 1, PyList_GET_SIZE(self->segs), NULL);
            return NULL;
        }
        if (end >= self->threshold) {
            PyObject *n_obj = PyLong_FromSsize_t(n);
            if (n_obj == NULL)
                return NULL;
            PyObject *call[2] = {n_obj, t0};
            PyObject *result = PyObject_Vectorcall(self->due, call, 2, NULL);
            Py_DECREF(n_obj);
            if (result == NULL)
                return NULL; /* last_t0, last_end as they were */
            Py_DECREF(result);
        }
        if (t0 != Py_None) {
            self->last_t0 = t;
            self->last_end = t + (double)n * self->inv_rate;
            self->max_t0 = self->max_gap > 0.0 ? self->last_end + self->max_gap : DBL_MAX;
        }
        Py_RETURN_NONE;
    }
    PyObject *call[2] = {data, t0};
    return PyObject_Vectorcall(self->other, call, 2, NULL);
}

static PyMethodDef Appender_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Appender_write, METH_FASTCALL | METH_KEYWORDS,
     "write(data, t0=None): append a frame (see ocycle_dist.hotpath.Appender.write)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Appender_members[] = {
    {"segs", T_OBJECT_EX, offsetof(Appender, segs), READONLY, "frames kept, oldest first"},
    {"ends", T_OBJECT_EX, offsetof(Appender, ends), READONLY, "end positions: ends[i + 1] after segs[i]"},
    {"fast_type", T_OBJECT_EX, offsetof(Appender, fast_type), 0, "the exact type appended without a check"},
    {"threshold", T_PYSSIZET, offsetof(Appender, threshold), 0, "due(n, t0) is called when the end reaches it"},
    {"due", T_OBJECT_EX, offsetof(Appender, due), 0, "called as due(n, t0)"},
    {"other", T_OBJECT_EX, offsetof(Appender, other), 0, "called as other(data, t0) for other frames"},
    {"last_t0", T_DOUBLE, offsetof(Appender, last_t0), 0, "the t0 of the last write that gave one"},
    {"last_end", T_DOUBLE, offsetof(Appender, last_end), 0, "when that write ended: a fast t0 is at least this"},
    {"inv_rate", T_DOUBLE, offsetof(Appender, inv_rate), 0, "1 / rate, or 0.0 without a rate"},
    {"max_gap", T_DOUBLE, offsetof(Appender, max_gap), 0, "seconds after last_end a fast t0 may be (0.0: any)"},
    {"max_t0", T_DOUBLE, offsetof(Appender, max_t0), 0, "a fast t0 is at most this: later is a gap"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ocycle_dist._speedups.Appender",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The write() hot path of BufferEmit (C version of ocycle_dist.hotpath.Appender).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Appender_init,
    .tp_dealloc = (destructor)Appender_dealloc,
    .tp_traverse = (traverseproc)Appender_traverse,
    .tp_clear = (inquiry)Appender_clear,
    .tp_methods = Appender_methods,
    .tp_members = Appender_members,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "ocycle_dist._speedups", "C version of ocycle_dist.hotpath.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&AppenderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AppenderType);
    if (PyModule_AddObject(m, "Appender", (PyObject *)&AppenderType) < 0) {
        Py_DECREF(&AppenderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
