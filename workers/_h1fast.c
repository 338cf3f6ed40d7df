/* workers._h1fast: the worker's HTTP/1.1 hot path in C, for the common case only.
 *
 * Two functions, each the fast half of a Python function that stays the reference:
 *
 *   parse(data, base_env, max_head, max_url, max_body)
 *       The common request, read whole in one recv(): returns
 *       (env, url, clen, body, keep_alive, http11, host) or None. base_env None: no
 *       environ is built (env is None), for the front end, which only routes.
 *       None means "not the common case": the caller feeds the same bytes to the full
 *       reader (workers/h1read.py: httptools + hostd/limits.py), which answers them as
 *       it always did. parse never refuses anything; it only accepts requests that the
 *       full reader accepts with the same environ (tests/unit/test_h1fast.py checks it
 *       against the full reader on a corpus and on generated heads).
 *
 *   head(status, headers, known_len, http11, close_after, nobody)
 *       The response head for a WSGI status and header list when every piece is plain
 *       ASCII: returns (head, clen, close_after, chunked, nobody) or None. None: the
 *       caller builds the head in Python (workers/h1write.py: _head_py), which also
 *       raises the HeaderError for a bad status or header. The Date line is this
 *       module's own, made once a second (date()).
 *
 * The common request (anything else is None):
 *   - method GET, HEAD, POST, PUT, DELETE, OPTIONS or PATCH, one SP, an origin-form
 *     target of visible ASCII without '#' (at most max_url bytes), one SP, HTTP/1.1 or
 *     HTTP/1.0, CRLF; no empty lines before it;
 *   - fields `token ":" OWS value OWS CRLF`, values of HTAB and 0x20-0x7E only;
 *     trailing OWS dropped (RFC 9110 5.5);
 *   - Host at most once, of reg-name characters with an optional ":" port (required
 *     in HTTP/1.1); Content-Length at most once, 1-15 digits, at most max_body;
 *     Connection exactly "close" or "keep-alive" (any case) when present; no
 *     Transfer-Encoding, Upgrade, Proxy-Connection or Expect;
 *   - the head (final CRLFCRLF included) at most max_head bytes, and the data exactly
 *     one message: head + Content-Length bytes, nothing pipelined behind it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>
#include <time.h>

static unsigned char TCHAR[256];   /* token characters (RFC 9110 5.6.2) */
static unsigned char VCHAR[256];   /* field value characters we take: HTAB, 0x20-0x7E */
static unsigned char UCHAR[256];   /* target characters we take: 0x21-0x7E but '#' */
static unsigned char RCHAR[256];   /* reg-name characters (RFC 3986) */

static PyObject *key_cache;        /* header name bytes -> environ key str, or None */
static PyObject *s_method[7];
static PyObject *s_REQUEST_METHOD, *s_SERVER_PROTOCOL, *s_HTTP11, *s_HTTP10;

static const char *METHODS[7] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"};

static void
init_tables(void)
{
    const char *tc = "!#$%&'*+-.^_`|~";
    const char *rc = "-._~!$&'()*+,;=";
    int c;
    for (c = 0; c < 256; c++) {
        int alnum = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
        TCHAR[c] = alnum || (c && strchr(tc, c) != NULL);
        RCHAR[c] = alnum || (c && strchr(rc, c) != NULL);
        VCHAR[c] = c == '\t' || (c >= 0x20 && c <= 0x7e);
        UCHAR[c] = c >= 0x21 && c <= 0x7e && c != '#';
    }
}

static inline int
lower_eq(const char *p, Py_ssize_t n, const char *word)
{
    /* p[0:n] equals the lower-case `word`, ignoring ASCII case */
    Py_ssize_t i;
    for (i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 'A' && c <= 'Z')
            c += 32;
        if (c != (unsigned char)word[i] || !word[i])
            return 0;
    }
    return word[n] == 0;
}

/* the environ key for a header name (new reference), Py_None (borrowed: drop the
 * field, its name holds "_"), or NULL with an exception */
static PyObject *
environ_key(const char *name, Py_ssize_t n)
{
    PyObject *nb, *key;
    char buf[256];
    Py_ssize_t i;

    nb = PyBytes_FromStringAndSize(name, n);
    if (nb == NULL)
        return NULL;
    key = PyDict_GetItemWithError(key_cache, nb);
    if (key != NULL) {
        Py_DECREF(nb);
        Py_INCREF(key);
        return key;
    }
    if (PyErr_Occurred()) {
        Py_DECREF(nb);
        return NULL;
    }
    if (memchr(name, '_', n) != NULL) {
        key = Py_None;
        Py_INCREF(key);
    } else if (lower_eq(name, n, "content-type")) {
        key = PyUnicode_FromString("CONTENT_TYPE");
    } else if (lower_eq(name, n, "content-length")) {
        key = PyUnicode_FromString("CONTENT_LENGTH");
    } else if (n + 5 <= (Py_ssize_t)sizeof(buf)) {
        memcpy(buf, "HTTP_", 5);
        for (i = 0; i < n; i++) {
            unsigned char c = (unsigned char)name[i];
            if (c >= 'a' && c <= 'z')
                c -= 32;
            else if (c == '-')
                c = '_';
            buf[5 + i] = (char)c;
        }
        key = PyUnicode_FromStringAndSize(buf, n + 5);
    } else {
        PyObject *low = PyUnicode_DecodeLatin1(name, n, NULL);
        PyObject *up = low ? PyObject_CallMethod(low, "upper", NULL) : NULL;
        PyObject *rep = up ? PyObject_CallMethod(up, "replace", "ss", "-", "_") : NULL;
        key = rep ? PyUnicode_FromFormat("HTTP_%U", rep) : NULL;
        Py_XDECREF(low);
        Py_XDECREF(up);
        Py_XDECREF(rep);
    }
    if (key == NULL) {
        Py_DECREF(nb);
        return NULL;
    }
    if (PyDict_GET_SIZE(key_cache) < 2048 && PyDict_SetItem(key_cache, nb, key) < 0) {
        Py_DECREF(nb);
        Py_DECREF(key);
        return NULL;
    }
    Py_DECREF(nb);
    return key;
}

static int
host_ok(const char *p, Py_ssize_t n)
{
    /* reg-name characters, then optionally ":" and digits: limits.host_ok's fast path */
    Py_ssize_t i = 0;
    while (i < n && RCHAR[(unsigned char)p[i]])
        i++;
    if (i == n)
        return 1;
    if (p[i] != ':')
        return 0;
    for (i++; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return 1;
}

#define DECLINE do { Py_XDECREF(env); Py_RETURN_NONE; } while (0)

static PyObject *
fast_parse(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const char *buf, *p, *end, *q, *url, *host = NULL;
    Py_ssize_t len, max_head, max_url, max_body, ulen, hostlen = 0, head_len;
    long long clen = -1;
    int mi, http11, conn_close = 0, conn_keep = 0, with_env;
    PyObject *env = NULL, *urlb, *body, *hostb, *res;

    if (nargs != 5 || !PyBytes_Check(args[0]) ||
            (args[1] != Py_None && !PyDict_Check(args[1]))) {
        PyErr_SetString(PyExc_TypeError,
                        "parse(data: bytes, base_env: dict | None, max_head, max_url, max_body)");
        return NULL;
    }
    with_env = args[1] != Py_None;
    max_head = PyLong_AsSsize_t(args[2]);
    max_url = PyLong_AsSsize_t(args[3]);
    max_body = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    buf = PyBytes_AS_STRING(args[0]);
    len = PyBytes_GET_SIZE(args[0]);
    end = buf + len;
    p = buf;

    /* request line */
    for (mi = 0; mi < 7; mi++) {
        size_t ml = strlen(METHODS[mi]);
        if ((Py_ssize_t)ml < len && memcmp(p, METHODS[mi], ml) == 0 && p[ml] == ' ') {
            p += ml + 1;
            break;
        }
    }
    if (mi == 7 || p >= end || *p != '/')
        Py_RETURN_NONE;
    url = p;
    while (p < end && UCHAR[(unsigned char)*p])
        p++;
    ulen = p - url;
    if (ulen > max_url || end - p < 11 || *p != ' ' || memcmp(p + 1, "HTTP/1.", 7) != 0
            || p[9] != '\r' || p[10] != '\n')
        Py_RETURN_NONE;
    if (p[8] == '1')
        http11 = 1;
    else if (p[8] == '0')
        http11 = 0;
    else
        Py_RETURN_NONE;
    p += 11;

    if (with_env) {
        env = PyDict_Copy(args[1]);
        if (env == NULL)
            return NULL;
    } else {
        env = Py_None;      /* the front end: the rules' verdict, no environ */
        Py_INCREF(env);
    }

    /* fields */
    for (;;) {
        const char *name, *val, *vend;
        Py_ssize_t nlen;
        PyObject *key, *v;

        if (p - buf > max_head || end - p < 2)
            DECLINE;
        if (p[0] == '\r') {
            if (p[1] != '\n')
                DECLINE;
            p += 2;
            break;
        }
        name = p;
        while (p < end && TCHAR[(unsigned char)*p])
            p++;
        nlen = p - name;
        if (nlen == 0 || p >= end || *p != ':')
            DECLINE;
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        val = p;
        q = p;
        while (q < end && VCHAR[(unsigned char)*q])
            q++;
        if (end - q < 2 || q[0] != '\r' || q[1] != '\n')
            DECLINE;
        vend = q;
        while (vend > val && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        p = q + 2;

        switch (nlen) {
        case 4:
            if (lower_eq(name, 4, "host")) {
                if (host != NULL || !host_ok(val, vend - val))
                    DECLINE;
                host = val;
                hostlen = vend - val;
            }
            break;
        case 6:
            if (lower_eq(name, 6, "expect"))
                DECLINE;
            break;
        case 7:
            if (lower_eq(name, 7, "upgrade"))
                DECLINE;
            break;
        case 10:
            if (lower_eq(name, 10, "connection")) {
                if (lower_eq(val, vend - val, "close"))
                    conn_close = 1;
                else if (lower_eq(val, vend - val, "keep-alive"))
                    conn_keep = 1;
                else
                    DECLINE;
            }
            break;
        case 14:
            if (lower_eq(name, 14, "content-length")) {
                const char *d;
                if (clen >= 0 || vend - val < 1 || vend - val > 15)
                    DECLINE;
                clen = 0;
                for (d = val; d < vend; d++) {
                    if (*d < '0' || *d > '9')
                        DECLINE;
                    clen = clen * 10 + (*d - '0');
                }
            }
            break;
        case 16:
            if (lower_eq(name, 16, "proxy-connection"))
                DECLINE;
            break;
        case 17:
            if (lower_eq(name, 17, "transfer-encoding"))
                DECLINE;
            break;
        }

        if (!with_env)
            continue;
        key = environ_key(name, nlen);
        if (key == NULL) {
            Py_DECREF(env);
            return NULL;
        }
        if (key == Py_None) {
            Py_DECREF(key);
            continue;
        }
        v = PyUnicode_DecodeLatin1(val, vend - val, NULL);
        if (v == NULL) {
            Py_DECREF(key);
            Py_DECREF(env);
            return NULL;
        }
        {
            PyObject *old = PyDict_GetItemWithError(env, key);
            if (old != NULL && PyUnicode_Check(old)) {
                PyObject *joined = PyUnicode_FromFormat("%U,%U", old, v);
                Py_DECREF(v);
                v = joined;
            } else if (old == NULL && PyErr_Occurred()) {
                Py_DECREF(v);
                v = NULL;
            }
        }
        if (v == NULL || PyDict_SetItem(env, key, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(key);
            Py_DECREF(env);
            return NULL;
        }
        Py_DECREF(v);
        Py_DECREF(key);
    }
    head_len = p - buf;
    if (head_len > max_head || (http11 && host == NULL))
        DECLINE;
    if (clen < 0 ? head_len != len : (clen > max_body || head_len + clen != len))
        DECLINE;

    if (with_env && (PyDict_SetItem(env, s_REQUEST_METHOD, s_method[mi]) < 0 ||
            PyDict_SetItem(env, s_SERVER_PROTOCOL, http11 ? s_HTTP11 : s_HTTP10) < 0)) {
        Py_DECREF(env);
        return NULL;
    }
    urlb = PyBytes_FromStringAndSize(url, ulen);
    if (clen > 0)
        body = PyBytes_FromStringAndSize(p, (Py_ssize_t)clen);
    else {
        body = Py_None;
        Py_INCREF(body);
    }
    if (host != NULL)
        hostb = PyBytes_FromStringAndSize(host, hostlen);
    else {
        hostb = Py_None;
        Py_INCREF(hostb);
    }
    if (urlb == NULL || body == NULL || hostb == NULL) {
        Py_XDECREF(urlb);
        Py_XDECREF(body);
        Py_XDECREF(hostb);
        Py_DECREF(env);
        return NULL;
    }
    res = PyTuple_New(7);
    if (res == NULL) {
        Py_DECREF(urlb);
        Py_DECREF(body);
        Py_DECREF(hostb);
        Py_DECREF(env);
        return NULL;
    }
    PyTuple_SET_ITEM(res, 0, env);
    PyTuple_SET_ITEM(res, 1, urlb);
    PyTuple_SET_ITEM(res, 2, PyLong_FromLongLong(clen));
    PyTuple_SET_ITEM(res, 3, body);
    PyTuple_SET_ITEM(res, 4, PyBool_FromLong(http11 ? !conn_close : conn_keep));
    PyTuple_SET_ITEM(res, 5, PyBool_FromLong(http11));
    PyTuple_SET_ITEM(res, 6, hostb);
    if (PyTuple_GET_ITEM(res, 2) == NULL) {
        Py_DECREF(res);
        return NULL;
    }
    return res;
}

/* --- the Date header, made once a second --------------------------------------------- */

static const char *DAYS[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *MONTHS[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static char date_line[64];
static Py_ssize_t date_len;
static time_t date_sec = -1;

/* "Date: <IMF-fixdate>\r\n" for now (RFC 9110 5.6.7; names not from the locale) */
static void
refresh_date(void)
{
    time_t now = time(NULL);
    struct tm tm;
    if (now == date_sec)
        return;
    gmtime_r(&now, &tm);
    date_len = snprintf(date_line, sizeof(date_line),
                        "Date: %s, %02d %s %04d %02d:%02d:%02d GMT\r\n",
                        DAYS[tm.tm_wday], tm.tm_mday, MONTHS[tm.tm_mon], tm.tm_year + 1900,
                        tm.tm_hour, tm.tm_min, tm.tm_sec);
    date_sec = now;
}

static PyObject *
fast_date(PyObject *self, PyObject *unused)
{
    refresh_date();
    return PyUnicode_FromStringAndSize(date_line, date_len);
}

/* --- the response head ------------------------------------------------------------ */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    char small[1024];
} out_t;

static int
out_put(out_t *o, const char *s, Py_ssize_t n)
{
    if (o->len + n > o->cap) {
        Py_ssize_t cap = (o->len + n) * 2;
        char *nb = PyMem_Malloc(cap);
        if (nb == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(nb, o->buf, o->len);
        if (o->buf != o->small)
            PyMem_Free(o->buf);
        o->buf = nb;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 0;
}

static void
out_free(out_t *o)
{
    if (o->buf != o->small)
        PyMem_Free(o->buf);
}

/* an ASCII str's bytes, or NULL (not a str, or not ASCII: the Python path decides) */
static inline const char *
ascii_of(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s) || !PyUnicode_IS_ASCII(s))
        return NULL;
    *n = PyUnicode_GET_LENGTH(s);
    return (const char *)PyUnicode_DATA(s);
}

#define HEAD_DECLINE do { out_free(&o); Py_RETURN_NONE; } while (0)
#define PUT(s, n) do { if (out_put(&o, (s), (n)) < 0) { out_free(&o); return NULL; } } while (0)
#define PUTS(s) PUT((s), (Py_ssize_t)strlen(s))

static PyObject *
fast_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    out_t o;
    const char *st, *ds;
    Py_ssize_t stn, dn, i, n;
    long long known_len, clen = -1;
    int http11, close_after, nobody, chunked = 0, date = 1, server = 1, code;
    PyObject *headers, *res;
    char num[32];

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "head(status, headers, known_len, http11, close_after, nobody)");
        return NULL;
    }
    o.buf = o.small;
    o.len = 0;
    o.cap = sizeof(o.small);
    headers = args[1];
    known_len = PyLong_AsLongLong(args[2]);
    if (known_len == -1 && PyErr_Occurred())
        return NULL;
    http11 = PyObject_IsTrue(args[3]);
    close_after = PyObject_IsTrue(args[4]);
    nobody = PyObject_IsTrue(args[5]);
    refresh_date();
    ds = date_line;
    dn = date_len;
    st = ascii_of(args[0], &stn);
    if (st == NULL || !PyList_CheckExact(headers))
        Py_RETURN_NONE;
    /* "DDD" or "DDD reason", first digit 1-9, no CR, LF or NUL */
    if (stn < 3 || st[0] < '1' || st[0] > '9' || st[1] < '0' || st[1] > '9' ||
            st[2] < '0' || st[2] > '9' || (stn > 3 && st[3] != ' '))
        Py_RETURN_NONE;
    for (i = 3; i < stn; i++)
        if (st[i] == '\r' || st[i] == '\n' || st[i] == 0)
            Py_RETURN_NONE;
    code = (st[0] - '0') * 100 + (st[1] - '0') * 10 + (st[2] - '0');
    PUT("HTTP/1.1 ", 9);
    PUT(st, stn);
    PUT("\r\n", 2);

    n = PyList_GET_SIZE(headers);
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(headers, i);
        const char *name, *value;
        Py_ssize_t nl, vl, j;
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2)
            HEAD_DECLINE;
        name = ascii_of(PyTuple_GET_ITEM(item, 0), &nl);
        value = ascii_of(PyTuple_GET_ITEM(item, 1), &vl);
        if (name == NULL || value == NULL || nl == 0)
            HEAD_DECLINE;
        for (j = 0; j < nl; j++)
            if (!TCHAR[(unsigned char)name[j]])
                HEAD_DECLINE;
        for (j = 0; j < vl; j++)
            if (value[j] == '\r' || value[j] == '\n' || value[j] == 0)
                HEAD_DECLINE;
        switch (nl) {
        case 4:
            if (lower_eq(name, 4, "date"))
                date = 0;
            break;
        case 6:
            if (lower_eq(name, 6, "server"))
                server = 0;
            break;
        case 7:
            if (lower_eq(name, 7, "upgrade"))
                continue;
            break;
        case 10:
            if (lower_eq(name, 10, "connection")) {
                for (j = 0; j + 5 <= vl; j++)
                    if (lower_eq(value + j, 5, "close")) {
                        close_after = 1;
                        break;
                    }
                continue;
            }
            if (lower_eq(name, 10, "keep-alive"))
                continue;
            break;
        case 14:
            if (lower_eq(name, 14, "content-length")) {
                /* plain digits only; int()'s other spellings take the Python path */
                if (vl < 1 || vl > 18)
                    HEAD_DECLINE;
                clen = 0;
                for (j = 0; j < vl; j++) {
                    if (value[j] < '0' || value[j] > '9')
                        HEAD_DECLINE;
                    clen = clen * 10 + (value[j] - '0');
                }
            }
            break;
        case 16:
            if (lower_eq(name, 16, "proxy-connection"))
                continue;
            break;
        case 17:
            if (lower_eq(name, 17, "transfer-encoding"))
                continue;
            break;
        }
        PUT(name, nl);
        PUT(": ", 2);
        PUT(value, vl);
        PUT("\r\n", 2);
    }
    if (code < 200 || code == 204 || code == 304) {
        nobody = 1;
        clen = -1;
    } else if (clen < 0) {
        if (known_len >= 0) {
            int k = snprintf(num, sizeof(num), "%lld", known_len);
            PUT("Content-Length: ", 16);
            PUT(num, k);
            PUT("\r\n", 2);
            clen = known_len;
        } else if (!nobody) {
            if (http11) {
                PUTS("Transfer-Encoding: chunked\r\n");
                chunked = 1;
            } else
                close_after = 1;
        }
    }
    if (date)
        PUT(ds, dn);
    if (server)
        PUTS("Server: hostd\r\n");
    if (close_after)
        PUTS("Connection: close\r\n");
    else if (!http11)
        PUTS("Connection: keep-alive\r\n");
    PUT("\r\n", 2);
    res = Py_BuildValue("(y#LNNN)", o.buf, o.len, clen, PyBool_FromLong(close_after),
                        PyBool_FromLong(chunked), PyBool_FromLong(nobody));
    out_free(&o);
    return res;
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))fast_parse, METH_FASTCALL,
     "parse(data, base_env, max_head, max_url, max_body) -> "
     "(env, url, clen, body, keep_alive, http11, host) | None"},
    {"head", (PyCFunction)(void (*)(void))fast_head, METH_FASTCALL,
     "head(status, headers, known_len, http11, close_after, nobody) -> "
     "(head, clen, close_after, chunked, nobody) | None"},
    {"date", fast_date, METH_NOARGS, "date() -> the Date header line for now (str)"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "workers._h1fast",
    "The worker's HTTP/1.1 hot path for the common case (see workers/h1fast.py).",
    -1, methods
};

PyMODINIT_FUNC
PyInit__h1fast(void)
{
    int i;
    PyObject *m;
    init_tables();
    key_cache = PyDict_New();
    if (key_cache == NULL)
        return NULL;
    for (i = 0; i < 7; i++) {
        s_method[i] = PyUnicode_InternFromString(METHODS[i]);
        if (s_method[i] == NULL)
            return NULL;
    }
    s_REQUEST_METHOD = PyUnicode_InternFromString("REQUEST_METHOD");
    s_SERVER_PROTOCOL = PyUnicode_InternFromString("SERVER_PROTOCOL");
    s_HTTP11 = PyUnicode_InternFromString("HTTP/1.1");
    s_HTTP10 = PyUnicode_InternFromString("HTTP/1.0");
    if (!s_REQUEST_METHOD || !s_SERVER_PROTOCOL || !s_HTTP11 || !s_HTTP10)
        return NULL;
    m = PyModule_Create(&module);
    return m;
}
