/* The write() hot path of BufferEmit in C: the same logic as ocycle_dist/hotpath.py (the reference, used when
 * this module is not built). Two types:
 *
 * Appender: a frame of the stream's exact type whose t0 is None, or an exact float/int that is finite and not
 * before `last_end`, is appended to `segs`, its end position to `ends`; `due(n, t0)` is called when the end
 * reaches `threshold`; any other frame or t0 goes to `other(data, t0)`, which checks and converts it in Python
 * (and rejects a bad t0 before keeping anything).
 *
 * Filler: windows back to back; each frame (bytes, or a C-contiguous numpy array of the stream's dtype and
 * element shape) is copied straight into the chunk it belongs to, and `emit(chunk, start, t0)` is called for
 * each complete chunk. A bytes chunk is a bytes object filled in place before anyone else sees it (or cut from
 * one frame directly); an array chunk is one `new_buffer(rows)` made, filled through the buffer protocol. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <float.h>

/* The t0 checks both types share (hotpath.Clock): a frame takes the fast path only with a plainly good t0. */
typedef struct {
    double last_t0;
    double last_end;
    double inv_rate;
    double max_gap;
    double max_t0;
} Clock;

/* write()'s arguments: data and an optional t0, by position or keyword. 0, or -1 with an exception. */
static int
parse_write(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **data, PyObject **t0)
{
    *data = nargs > 0 ? args[0] : NULL;
    *t0 = nargs > 1 ? args[1] : Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "t0") == 0 && nargs < 2)
            *t0 = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "data") == 0 && nargs < 1)
            *data = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "write() got an unexpected or repeated keyword argument '%U'", name);
            return -1;
        }
    }
    if (*data == NULL || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "write() takes data and an optional t0");
        return -1;
    }
    return 0;
}

/* Whether t0 lets a frame take the fast path (Clock.plain): None, or an exact float/int that is finite and in
 * [last_end, max_t0]; its value in *t. */
static int
clock_plain(Clock *clock, PyObject *t0, double *t)
{
    *t = 0.0;
    if (t0 == Py_None)
        return 1;
    if (PyFloat_CheckExact(t0)) {
        *t = PyFloat_AS_DOUBLE(t0);
    } else if (PyLong_CheckExact(t0)) {
        *t = PyLong_AsDouble(t0);
        if (*t == -1.0 && PyErr_Occurred()) {
            PyErr_Clear(); /* too large for a double: `other` says so */
            return 0;
        }
    } else {
        return 0;
    }
    return *t >= clock->last_end && *t <= clock->max_t0; /* NaN fails both; past max_t0: a gap */
}

/* A fast write of n elements at t0 (value t) went in (Clock.wrote). */
static void
clock_wrote(Clock *clock, PyObject *t0, double t, Py_ssize_t n)
{
    if (t0 != Py_None) {
        clock->last_t0 = t;
        clock->last_end = t + (double)n * clock->inv_rate;
        clock->max_t0 = clock->max_gap > 0.0 ? clock->last_end + clock->max_gap : DBL_MAX;
    }
}

typedef struct {
    PyObject_HEAD
    PyObject *segs;
    PyObject *ends;
    PyObject *fast_type;
    Py_ssize_t threshold;
    PyObject *due;
    PyObject *other;
    Clock clock;
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
    self->clock.max_gap = 0.0;
    self->clock.max_t0 = DBL_MAX;
    return 0;
}

static PyObject *
Appender_write(Appender *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data, *t0;
    if (parse_write(args, nargs, kwnames, &data, &t0) < 0)
        return NULL;
    double t;
    if ((PyObject *)Py_TYPE(data) == self->fast_type && clock_plain(&self->clock, t0, &t)) {
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
        clock_wrote(&self->clock, t0, t, n);
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
    {"last_t0", T_DOUBLE, offsetof(Appender, clock.last_t0), 0, "the t0 of the last write that gave one"},
    {"last_end", T_DOUBLE, offsetof(Appender, clock.last_end), 0, "when that write ended: a fast t0 is at least this"},
    {"inv_rate", T_DOUBLE, offsetof(Appender, clock.inv_rate), 0, "1 / rate, or 0.0 without a rate"},
    {"max_gap", T_DOUBLE, offsetof(Appender, clock.max_gap), 0, "seconds after last_end a fast t0 may be (0.0: any)"},
    {"max_t0", T_DOUBLE, offsetof(Appender, clock.max_t0), 0, "a fast t0 is at most this: later is a gap"},
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


/* ---- Filler ------------------------------------------------------------------------------------------- */

#define MAX_ROW_DIMS 32

typedef struct {
    PyObject_HEAD
    Py_ssize_t size;
    int clip;
    double rate;
    PyObject *fast_type;
    PyObject *emit;
    PyObject *other;
    PyObject *new_buffer;   /* None: bytes; else new_buffer(rows) -> a C-contiguous array */
    PyObject *dtype;        /* arrays: a fast frame's dtype is this object */
    PyObject *row_shape;    /* arrays: a tuple, the element shape of a fast frame (None: no fast frame yet) */
    Py_ssize_t row_dims;    /* len(row_shape), or -1 */
    Py_ssize_t rows[MAX_ROW_DIMS];
    Py_ssize_t row_bytes;
    Clock clock;
    Py_ssize_t end;
    Py_ssize_t start;       /* -1: no chunk open */
    Py_ssize_t filled;
    PyObject *chunk_t0;
    PyObject *buf;          /* the chunk being filled: a private bytes object, or an array */
    char *ptr;              /* its data, or NULL (an array without a buffer: filled item by item) */
    Py_ssize_t capacity;    /* elements buf holds */
    Py_buffer view;         /* arrays: buf's buffer, held while it is filled */
    int has_view;
} Filler;

static PyObject *time_time = NULL;  /* time.time */
static PyObject *str_dtype = NULL;  /* "dtype" */

static void
Filler_release(Filler *self)
{
    if (self->has_view) {
        PyBuffer_Release(&self->view);
        self->has_view = 0;
    }
    self->ptr = NULL;
    self->capacity = 0;
}

static int
Filler_traverse(Filler *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fast_type);
    Py_VISIT(self->emit);
    Py_VISIT(self->other);
    Py_VISIT(self->new_buffer);
    Py_VISIT(self->dtype);
    Py_VISIT(self->row_shape);
    Py_VISIT(self->chunk_t0);
    Py_VISIT(self->buf);
    return 0;
}

static int
Filler_clear(Filler *self)
{
    Filler_release(self);
    Py_CLEAR(self->fast_type);
    Py_CLEAR(self->emit);
    Py_CLEAR(self->other);
    Py_CLEAR(self->new_buffer);
    Py_CLEAR(self->dtype);
    Py_CLEAR(self->row_shape);
    Py_CLEAR(self->chunk_t0);
    Py_CLEAR(self->buf);
    return 0;
}

static void
Filler_dealloc(Filler *self)
{
    PyObject_GC_UnTrack(self);
    Filler_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
Filler_init(Filler *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "clip", "rate", "fast_type", "emit", "other", "new_buffer", NULL};
    Py_ssize_t size;
    int clip;
    double rate;
    PyObject *fast_type, *emit, *other, *new_buffer = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "npdOOO|O", kwlist, &size, &clip, &rate, &fast_type, &emit, &other,
                                     &new_buffer))
        return -1;
    if (size < 1) {
        PyErr_SetString(PyExc_ValueError, "size must be at least 1");
        return -1;
    }
    if (new_buffer != Py_None && !clip) {
        PyErr_SetString(PyExc_ValueError, "a Filler of arrays cuts clipped chunks only");
        return -1;
    }
    Filler_clear(self);
    self->size = size;
    self->clip = clip;
    self->rate = rate;
    self->clock.inv_rate = rate > 0.0 ? 1.0 / rate : 0.0;
    Py_INCREF(fast_type); self->fast_type = fast_type;
    Py_INCREF(emit); self->emit = emit;
    Py_INCREF(other); self->other = other;
    Py_INCREF(new_buffer); self->new_buffer = new_buffer;
    Py_INCREF(Py_None); self->dtype = Py_None;
    Py_INCREF(Py_None); self->row_shape = Py_None;
    Py_INCREF(Py_None); self->chunk_t0 = Py_None;
    self->row_dims = -1;
    self->row_bytes = 1;
    self->clock.last_t0 = self->clock.last_end = self->clock.max_gap = 0.0;
    self->clock.max_t0 = DBL_MAX;
    self->end = 0;
    self->start = -1;
    self->filled = 0;
    return 0;
}

/* Open a chunk at this element: its t0 (`now` is the write's t0, or time.time() once per write), its buffer. */
static int
Filler_open(Filler *self, PyObject **now, Py_ssize_t pos, Py_ssize_t capacity)
{
    if (*now == Py_None) {
        PyObject *t = PyObject_CallNoArgs(time_time);
        if (t == NULL)
            return -1;
        Py_DECREF(*now);
        *now = t;
    }
    PyObject *t0;
    if (self->rate > 0.0) {
        double base = PyFloat_AsDouble(*now);
        if (base == -1.0 && PyErr_Occurred())
            return -1;
        t0 = PyFloat_FromDouble(base + (double)pos / self->rate);
        if (t0 == NULL)
            return -1;
    } else {
        Py_INCREF(*now);
        t0 = *now;
    }
    PyObject *buf;
    if (self->new_buffer == Py_None) {
        buf = PyBytes_FromStringAndSize(NULL, capacity);
    } else {
        PyObject *rows = PyLong_FromSsize_t(capacity);
        buf = rows == NULL ? NULL : PyObject_CallOneArg(self->new_buffer, rows);
        Py_XDECREF(rows);
    }
    if (buf == NULL) {
        Py_DECREF(t0);
        return -1;
    }
    Filler_release(self);
    Py_XSETREF(self->buf, buf);
    Py_XSETREF(self->chunk_t0, t0);
    if (self->new_buffer == Py_None) {
        self->ptr = PyBytes_AS_STRING(buf);
    } else if (PyObject_GetBuffer(buf, &self->view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0) {
        self->has_view = 1;
        if (self->view.len != capacity * self->row_bytes) {
            PyBuffer_Release(&self->view);
            self->has_view = 0;
            PyErr_SetString(PyExc_ValueError, "new_buffer(rows) made a buffer of another size than rows * row_bytes");
            return -1;
        }
        self->ptr = (char *)self->view.buf;
    } else {
        PyErr_Clear(); /* a dtype without a buffer format: filled item by item */
        self->ptr = NULL;
    }
    self->capacity = capacity;
    self->start = self->end;
    self->filled = 0;
    return 0;
}

/* buf[filled:filled + k] = data[pos:pos + k], without the buffer protocol (arrays whose dtype has none). */
static int
Filler_set_items(Filler *self, PyObject *data, Py_ssize_t pos, Py_ssize_t k)
{
    PyObject *from = PyLong_FromSsize_t(pos), *to = PyLong_FromSsize_t(pos + k);
    PyObject *a = PyLong_FromSsize_t(self->filled), *b = PyLong_FromSsize_t(self->filled + k);
    PyObject *src = (from && to) ? PySlice_New(from, to, NULL) : NULL;
    PyObject *dst = (a && b) ? PySlice_New(a, b, NULL) : NULL;
    PyObject *part = src ? PyObject_GetItem(data, src) : NULL;
    int rc = (part && dst) ? PyObject_SetItem(self->buf, dst, part) : -1;
    Py_XDECREF(from); Py_XDECREF(to); Py_XDECREF(a); Py_XDECREF(b);
    Py_XDECREF(src); Py_XDECREF(dst); Py_XDECREF(part);
    return rc;
}

/* The chunk is complete: hand it to emit(chunk, start, t0). */
static int
Filler_emit(Filler *self)
{
    PyObject *chunk = self->buf, *t0 = self->chunk_t0;
    Py_ssize_t start = self->start;
    Filler_release(self);
    self->buf = NULL;
    self->chunk_t0 = Py_None;
    Py_INCREF(Py_None);
    self->start = -1;
    self->filled = 0;
    PyObject *start_obj = PyLong_FromSsize_t(start);
    PyObject *result = NULL;
    if (start_obj != NULL) {
        PyObject *call[3] = {chunk, start_obj, t0};
        result = PyObject_Vectorcall(self->emit, call, 3, NULL);
        Py_DECREF(start_obj);
    }
    Py_DECREF(chunk);
    Py_DECREF(t0);
    if (result == NULL)
        return -1;
    Py_DECREF(result);
    return 0;
}

/* Copy the n elements of `data` (checked), whose bytes are `src` (NULL: none; arrays then go item by item),
 * into their chunks; emit each chunk completed. `t0` is the write's (None: now). */
static int
Filler_fill(Filler *self, PyObject *data, const char *src, Py_ssize_t n, PyObject *t0)
{
    Py_ssize_t pos = 0, row = self->row_bytes;
    int bytes = self->new_buffer == Py_None;
    PyObject *now = t0;
    Py_INCREF(now);
    while (pos < n) {
        if (self->start < 0) {
            if (bytes && src != NULL && n - pos >= self->size) {
                /* a whole chunk within this frame: cut from it (the frame itself when it is all of it) */
                Py_ssize_t k = self->clip ? self->size : n - pos;
                if (Filler_open(self, &now, pos, 0) < 0)
                    goto error;
                PyObject *chunk;
                if (pos == 0 && k == n && PyBytes_CheckExact(data)) {
                    Py_INCREF(data);
                    chunk = data;
                } else {
                    chunk = PyBytes_FromStringAndSize(src + pos, k);
                    if (chunk == NULL)
                        goto error;
                }
                Py_SETREF(self->buf, chunk);
                self->ptr = NULL;
                self->filled = k;
                self->end += k;
                pos += k;
                if (Filler_emit(self) < 0)
                    goto error;
                continue;
            }
            if (Filler_open(self, &now, pos, self->size) < 0)
                goto error;
        }
        Py_ssize_t k = self->clip ? Py_MIN(self->size - self->filled, n - pos) : n - pos;
        if (bytes && self->filled + k > self->capacity) { /* unclipped: the write that completes the chunk */
            if (_PyBytes_Resize(&self->buf, self->filled + k) < 0) {
                self->buf = NULL;
                self->start = -1;
                goto error;
            }
            self->ptr = PyBytes_AS_STRING(self->buf);
            self->capacity = self->filled + k;
        }
        if (self->ptr != NULL && src != NULL) {
            memcpy(self->ptr + self->filled * row, src + pos * row, (size_t)(k * row));
        } else if (Filler_set_items(self, data, pos, k) < 0) {
            goto error;
        }
        pos += k;
        self->filled += k;
        self->end += k;
        if (self->filled >= self->size) {
            if (bytes && self->filled < self->capacity && _PyBytes_Resize(&self->buf, self->filled) < 0) {
                self->buf = NULL;
                self->start = -1;
                goto error;
            }
            if (Filler_emit(self) < 0)
                goto error;
        }
    }
    Py_DECREF(now);
    return 0;
error:
    Py_DECREF(now);
    return -1;
}

/* Fill from `data`, a checked frame (bytes, or an array: through its buffer when it has one). */
static int
Filler_put_object(Filler *self, PyObject *data, PyObject *t0)
{
    if (self->new_buffer == Py_None) {
        if (!PyBytes_Check(data)) {
            PyErr_Format(PyExc_TypeError, "a bytes Filler takes bytes, not %.80s", Py_TYPE(data)->tp_name);
            return -1;
        }
        return Filler_fill(self, data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), t0);
    }
    Py_ssize_t n = PyObject_Length(data);
    if (n < 0)
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
        PyErr_Clear();
        return Filler_fill(self, data, NULL, n, t0);
    }
    int rc = view.len == n * self->row_bytes ? Filler_fill(self, data, (const char *)view.buf, n, t0)
                                             : Filler_fill(self, data, NULL, n, t0);
    PyBuffer_Release(&view);
    return rc;
}

static PyObject *
Filler_put(Filler *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "put() takes data and t0");
        return NULL;
    }
    if (Filler_put_object(self, args[0], args[1]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Whether `view` is a fast frame of this array stream: its element shape, C-contiguous (asked of GetBuffer). */
static int
Filler_fits(Filler *self, Py_buffer *view)
{
    if (self->row_dims < 0 || view->ndim != self->row_dims + 1 || view->shape == NULL)
        return 0;
    for (Py_ssize_t i = 0; i < self->row_dims; i++)
        if (view->shape[i + 1] != self->rows[i])
            return 0;
    return view->len == view->shape[0] * self->row_bytes;
}

static PyObject *
Filler_write(Filler *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *data, *t0;
    if (parse_write(args, nargs, kwnames, &data, &t0) < 0)
        return NULL;
    double t;
    if ((PyObject *)Py_TYPE(data) == self->fast_type && clock_plain(&self->clock, t0, &t)) {
        Py_ssize_t n;
        int rc;
        if (self->new_buffer == Py_None) {
            n = PyBytes_GET_SIZE(data);
            rc = Filler_fill(self, data, PyBytes_AS_STRING(data), n, t0);
        } else {
            PyObject *dtype = PyObject_GetAttr(data, str_dtype);
            if (dtype == NULL)
                return NULL;
            int same = dtype == self->dtype;
            Py_DECREF(dtype);
            Py_buffer view;
            if (!same)
                goto slow;
            if (PyObject_GetBuffer(data, &view, PyBUF_C_CONTIGUOUS) < 0) {
                PyErr_Clear(); /* not C-contiguous, or no buffer format: `other` copies it */
                goto slow;
            }
            if (!Filler_fits(self, &view)) {
                PyBuffer_Release(&view);
                goto slow;
            }
            n = view.shape[0];
            rc = Filler_fill(self, data, (const char *)view.buf, n, t0);
            PyBuffer_Release(&view);
        }
        if (rc < 0)
            return NULL; /* last_t0, last_end as they were */
        clock_wrote(&self->clock, t0, t, n);
        Py_RETURN_NONE;
    }
slow:;
    PyObject *call[2] = {data, t0};
    return PyObject_Vectorcall(self->other, call, 2, NULL);
}

static PyObject *
Filler_peek(Filler *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "peek() takes two positions");
        return NULL;
    }
    Py_ssize_t s = PyLong_AsSsize_t(args[0]);
    if (s == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t e = PyLong_AsSsize_t(args[1]);
    if (e == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t a = s - self->start, b = e - self->start;
    if (self->start < 0 || self->buf == NULL || a < 0 || a > b || b > self->filled) {
        PyErr_Format(PyExc_IndexError, "elements %zd:%zd are not in the chunk being filled", s, e);
        return NULL;
    }
    if (self->new_buffer == Py_None)
        return PyBytes_FromStringAndSize(PyBytes_AS_STRING(self->buf) + a, b - a);
    PyObject *from = PyLong_FromSsize_t(a), *to = PyLong_FromSsize_t(b);
    PyObject *slice = (from && to) ? PySlice_New(from, to, NULL) : NULL;
    PyObject *part = slice ? PyObject_GetItem(self->buf, slice) : NULL;
    PyObject *copy = part ? PyObject_CallMethod(part, "copy", NULL) : NULL;
    Py_XDECREF(from); Py_XDECREF(to); Py_XDECREF(slice); Py_XDECREF(part);
    return copy;
}

static PyObject *
Filler_drop(Filler *self, PyObject *arg)
{
    Py_ssize_t end = PyLong_AsSsize_t(arg);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    Filler_release(self);
    Py_CLEAR(self->buf);
    self->start = -1;
    self->filled = 0;
    self->end = end;
    Py_RETURN_NONE;
}

static PyObject *
Filler_get_row_shape(Filler *self, void *closure)
{
    Py_INCREF(self->row_shape);
    return self->row_shape;
}

static int
Filler_set_row_shape(Filler *self, PyObject *value, void *closure)
{
    if (value == NULL || value == Py_None) {
        Py_XSETREF(self->row_shape, Py_NewRef(Py_None));
        self->row_dims = -1;
        return 0;
    }
    if (!PyTuple_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "row_shape must be a tuple or None");
        return -1;
    }
    Py_ssize_t dims = PyTuple_GET_SIZE(value);
    Py_ssize_t rows[MAX_ROW_DIMS];
    for (Py_ssize_t i = 0; i < dims && i < MAX_ROW_DIMS; i++) {
        rows[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(value, i));
        if (rows[i] == -1 && PyErr_Occurred())
            return -1;
    }
    memcpy(self->rows, rows, sizeof(Py_ssize_t) * (size_t)Py_MIN(dims, MAX_ROW_DIMS));
    self->row_dims = dims <= MAX_ROW_DIMS ? dims : -1; /* more dimensions: never fast */
    Py_INCREF(value);
    Py_XSETREF(self->row_shape, value);
    return 0;
}

static PyObject *
Filler_get_chunk_t0(Filler *self, void *closure)
{
    Py_INCREF(self->chunk_t0);
    return self->chunk_t0;
}

static PyMethodDef Filler_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Filler_write, METH_FASTCALL | METH_KEYWORDS,
     "write(data, t0=None): copy a frame into its chunks (see ocycle_dist.hotpath.Filler.write)."},
    {"put", (PyCFunction)(void (*)(void))Filler_put, METH_FASTCALL,
     "put(data, t0): copy a checked frame into its chunks, emitting every chunk it completes."},
    {"peek", (PyCFunction)(void (*)(void))Filler_peek, METH_FASTCALL,
     "peek(s, e): a copy of the elements s:e (stream positions) of the chunk being filled."},
    {"drop", (PyCFunction)Filler_drop, METH_O, "drop(end): forget the chunk being filled; go on from end."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Filler_members[] = {
    {"size", T_PYSSIZET, offsetof(Filler, size), READONLY, "elements per chunk"},
    {"clip", T_BOOL, offsetof(Filler, clip), READONLY, "chunks of exactly size elements"},
    {"rate", T_DOUBLE, offsetof(Filler, rate), READONLY, "elements per second, or 0.0"},
    {"fast_type", T_OBJECT_EX, offsetof(Filler, fast_type), 0, "the exact type copied without a check"},
    {"emit", T_OBJECT_EX, offsetof(Filler, emit), 0, "called as emit(chunk, start, t0)"},
    {"other", T_OBJECT_EX, offsetof(Filler, other), 0, "called as other(data, t0) for other frames"},
    {"new_buffer", T_OBJECT_EX, offsetof(Filler, new_buffer), READONLY, "arrays: new_buffer(rows); None: bytes"},
    {"dtype", T_OBJECT_EX, offsetof(Filler, dtype), 0, "arrays: a fast frame's dtype is this object"},
    {"row_bytes", T_PYSSIZET, offsetof(Filler, row_bytes), 0, "bytes per element"},
    {"last_t0", T_DOUBLE, offsetof(Filler, clock.last_t0), 0, "the t0 of the last write that gave one"},
    {"last_end", T_DOUBLE, offsetof(Filler, clock.last_end), 0, "when that write ended: a fast t0 is at least this"},
    {"inv_rate", T_DOUBLE, offsetof(Filler, clock.inv_rate), 0, "1 / rate, or 0.0 without a rate"},
    {"max_gap", T_DOUBLE, offsetof(Filler, clock.max_gap), 0, "seconds after last_end a fast t0 may be (0.0: any)"},
    {"max_t0", T_DOUBLE, offsetof(Filler, clock.max_t0), 0, "a fast t0 is at most this: later is a gap"},
    {"end", T_PYSSIZET, offsetof(Filler, end), READONLY, "the stream's length so far, in elements"},
    {"start", T_PYSSIZET, offsetof(Filler, start), READONLY, "where the chunk being filled starts (-1: none)"},
    {"filled", T_PYSSIZET, offsetof(Filler, filled), READONLY, "elements in the chunk being filled"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef Filler_getset[] = {
    {"row_shape", (getter)Filler_get_row_shape, (setter)Filler_set_row_shape, "arrays: a fast frame's element shape",
     NULL},
    {"chunk_t0", (getter)Filler_get_chunk_t0, NULL, "the t0 of the chunk being filled", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FillerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ocycle_dist._speedups.Filler",
    .tp_basicsize = sizeof(Filler),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Windows back to back, each frame copied into its chunk (C version of ocycle_dist.hotpath.Filler).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Filler_init,
    .tp_dealloc = (destructor)Filler_dealloc,
    .tp_traverse = (traverseproc)Filler_traverse,
    .tp_clear = (inquiry)Filler_clear,
    .tp_methods = Filler_methods,
    .tp_members = Filler_members,
    .tp_getset = Filler_getset,
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "ocycle_dist._speedups", "C version of ocycle_dist.hotpath.", -1, NULL,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&AppenderType) < 0 || PyType_Ready(&FillerType) < 0)
        return NULL;
    if (time_time == NULL) {
        PyObject *time = PyImport_ImportModule("time");
        if (time == NULL)
            return NULL;
        time_time = PyObject_GetAttrString(time, "time");
        Py_DECREF(time);
        if (time_time == NULL)
            return NULL;
    }
    if (str_dtype == NULL && (str_dtype = PyUnicode_InternFromString("dtype")) == NULL)
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
    Py_INCREF(&FillerType);
    if (PyModule_AddObject(m, "Filler", (PyObject *)&FillerType) < 0) {
        Py_DECREF(&FillerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
