/* relay._hot: the compiled hot loop of a relay worker (optional; relay/hot.py is its
 * Python side and says how it is chosen).
 *
 * One call of Hot.serve(now) reads the worker's UDP socket with recvmmsg (up to 64
 * datagrams a syscall, up to max_batch in all) and, for every datagram that is an ordinary
 * chat message of a settled member, does in C what RelayCore.handle_datagram and the
 * worker's fan-out do in Python: parse, authenticate (token, source address, room),
 * validate (UTF-8, not /exit), charge the member's token bucket, refresh it, and send the
 * delivery to the rest of the room with one sendmmsg per delivery format, the delivery
 * being the member's prefix and the message as two iovecs (no copy). Everything else (a
 * first datagram, a keepalive, a possible /exit, a trial address, a failing address, a
 * rate-limited or over-long message, an encrypted room's addressed datagrams, anything
 * malformed) is handed, in order, to the Python callback ``slow(data, addr, now)``, which
 * is the pure-Python path itself. So the Python core stays the one definition of the
 * protocol: this file only takes the cases whose outcome it can prove equal, reading and
 * writing the same objects (Member/Room __slots__, resolved to offsets once) that Python
 * does. tests/unit/test_relay_hot.py feeds both paths the same traffic.
 *
 * IPv4 only; Linux only (recvmmsg/sendmmsg). The socket must be non-blocking.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define RECV_SLOTS 64
#define OUT_SLOTS 1024 /* UIO_MAXIOV: the most messages one sendmmsg takes */

/* ---- helpers ------------------------------------------------------------------------ */

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))
#define DATA_HEADER_BYTES 9 /* ocm1r DATA: 01 Epoch Seq (wire/reliable.py) */
#define ACK_BYTES 13        /* ocm1r ACK: 02 Epoch MsgId Seq */

static PyObject *str_top, *str_top_seq, *str_number; /* ocm1r: Reliable.top, .top_seq, History.number */

static inline void set_slot(PyObject *obj, Py_ssize_t off, PyObject *value) {
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    Py_INCREF(value);
    *p = value;
    Py_XDECREF(old);
}

/* Strict UTF-8 as CPython's decoder has it: no overlongs, no surrogates, <= U+10FFFF. */
static int utf8_valid(const unsigned char *s, Py_ssize_t n) {
    Py_ssize_t i = 0;
    while (i < n) {
        while (i + 8 <= n) {
            uint64_t v;
            memcpy(&v, s + i, 8);
            if (v & 0x8080808080808080ULL) break;
            i += 8;
        }
        if (i >= n) break;
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        if (c < 0xC2) return 0;
        if (c < 0xE0) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80) return 0;
            i += 2;
            continue;
        }
        if (c < 0xF0) {
            if (i + 2 >= n) return 0;
            unsigned c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80) return 0;
            if (c == 0xE0 && c1 < 0xA0) return 0;  /* overlong */
            if (c == 0xED && c1 >= 0xA0) return 0; /* surrogate */
            i += 3;
            continue;
        }
        if (c < 0xF5) {
            if (i + 3 >= n) return 0;
            unsigned c1 = s[i + 1];
            if ((c1 & 0xC0) != 0x80 || (s[i + 2] & 0xC0) != 0x80 || (s[i + 3] & 0xC0) != 0x80)
                return 0;
            if (c == 0xF0 && c1 < 0x90) return 0;  /* overlong */
            if (c == 0xF4 && c1 >= 0x90) return 0; /* over U+10FFFF */
            i += 4;
            continue;
        }
        return 0;
    }
    return 1;
}

static int fatal_errno(int e) {
    return e == EBADF || e == ENOTSOCK || e == EFAULT || e == ENOSYS || e == EDESTADDRREQ ||
           e == ENOTCONN;
}

static int full_errno(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS; }

/* ---- Route: one room's recipients, per delivery format ------------------------------ */

typedef struct {
    Py_ssize_t n;
    PyObject *addrs;           /* the room's list of (ip, port) at build time */
    struct sockaddr_in *names; /* n */
} Side;

typedef struct {
    PyObject_HEAD
    long long generation;
    Side side[3]; /* 0 plain, 1 framed, 2 reliable (ocm1r: numbered deliveries) */
} Route;

static void side_free(Side *s) {
    Py_CLEAR(s->addrs);
    PyMem_Free(s->names);
    s->names = NULL;
}

static int side_init(Side *s, PyObject *addrs) {
    if (!PyList_CheckExact(addrs)) {
        PyErr_SetString(PyExc_TypeError, "addresses must be a list of (ip, port)");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(addrs);
    s->n = n;
    Py_INCREF(addrs);
    s->addrs = addrs;
    s->names = PyMem_Calloc(n ? (size_t)n : 1, sizeof *s->names);
    if (!s->names) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *a = PyList_GET_ITEM(addrs, i);
        const char *ip;
        int port;
        if (!PyTuple_Check(a) || !PyArg_ParseTuple(a, "si", &ip, &port)) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "address must be (ip, port)");
            return -1;
        }
        if (port < 0 || port > 65535) {
            PyErr_Format(PyExc_ValueError, "port %d out of range", port);
            return -1;
        }
        s->names[i].sin_family = AF_INET;
        s->names[i].sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, ip, &s->names[i].sin_addr) != 1) {
            PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", ip);
            return -1;
        }
    }
return 0;
}

static void Route_dealloc(Route *self) {
    side_free(&self->side[0]);
    side_free(&self->side[1]);
    side_free(&self->side[2]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Route_init(Route *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"generation", "plain", "framed", "reliable", NULL};
    long long generation;
    PyObject *plain, *framed, *reliable = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LOO|O", kwlist, &generation, &plain, &framed,
                                     &reliable))
        return -1;
    side_free(&self->side[0]);
    side_free(&self->side[1]);
    side_free(&self->side[2]);
    self->generation = generation;
    if (side_init(&self->side[0], plain) < 0 || side_init(&self->side[1], framed) < 0)
        return -1;
    if (reliable ? side_init(&self->side[2], reliable) < 0 : 0)
        return -1;
    return 0;
}

static PyObject *Route_get_generation(Route *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->generation);
}

static PyGetSetDef Route_getset[] = {
    {"generation", (getter)Route_get_generation, NULL, "the room generation it was built from", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._hot.Route",
    .tp_basicsize = sizeof(Route),
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Route(generation, plain_addrs, framed_addrs, reliable_addrs=None): a room's "
              "recipients as sockaddr_in, for each delivery format.",
    .tp_init = (initproc)Route_init,
    .tp_new = PyType_GenericNew,
    .tp_getset = Route_getset,
};

/* ---- Hot: the loop ------------------------------------------------------------------ */

enum { M_IP, M_ADDR, M_TRIAL, M_ROOM, M_PLAIN_PREFIX, M_FRAMED_PREFIX, M_FRAMED, M_ALLOWANCE,
       M_STAMP, M_LAST_SEEN, M_REL, M_COUNT };
static const char *member_slots[M_COUNT] = {"ip", "addr", "trial", "room", "plain_prefix",
                                            "framed_prefix", "framed", "allowance", "stamp",
                                            "last_seen", "rel"};
enum { R_NAME, R_NAME_RAW, R_E2E, R_TRIAL, R_GENERATION, R_HISTORY, R_COUNT };
static const char *room_slots[R_COUNT] = {"name", "name_raw", "e2e", "trial", "generation",
                                          "history"};

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *core, *tokens, *failing, *by_addr, *routes, *route_for, *slow, *send_failed, *warn;
    PyObject *clock, *after; /* on_readable: time source (None: CLOCK_MONOTONIC), flush */
    PyTypeObject *member_type, *room_type;
    Py_ssize_t m[M_COUNT], r[R_COUNT];
    int chat_kind;
    Py_ssize_t max_datagram, max_delivery, exit_max, max_batch;
    char *buf;
    struct mmsghdr rhdr[RECV_SLOTS];
    struct iovec riov[RECV_SLOTS];
    struct sockaddr_in rname[RECV_SLOTS];
    /* The sends of a read batch, flushed with one sendmmsg (or a few) before anything is
     * handed to Python, when full, and at the end of serve(): entry i goes to
     * oside[i]->names[oidx[i]] with the iovec pair at out[i].msg_hdr.msg_iov. */
    struct mmsghdr out[OUT_SLOTS];
    struct iovec oiov[2 * OUT_SLOTS];
    Side *oside[OUT_SLOTS];
    Py_ssize_t oidx[OUT_SLOTS];
    unsigned char ofailed[OUT_SLOTS];
    int nout, npairs;
    PyObject *keep; /* what the queued iovecs point into (routes, prefixes) until the flush */
    unsigned long long fast, slow_count, calls;
} Hot;

static int resolve_slots(PyTypeObject *type, const char **names, int count, Py_ssize_t *out) {
    for (int i = 0; i < count; i++) {
        PyObject *d = PyDict_GetItemString(type->tp_dict, names[i]);
        if (!d || !Py_IS_TYPE(d, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a __slots__ attribute", type->tp_name,
                         names[i]);
            return -1;
        }
        out[i] = ((PyMemberDescrObject *)d)->d_member->offset;
    }
    return 0;
}

static void Hot_dealloc(Hot *self) {
    Py_XDECREF(self->core);
    Py_XDECREF(self->tokens);
    Py_XDECREF(self->failing);
    Py_XDECREF(self->by_addr);
    Py_XDECREF(self->routes);
    Py_XDECREF(self->route_for);
    Py_XDECREF(self->slow);
    Py_XDECREF(self->send_failed);
    Py_XDECREF(self->warn);
    Py_XDECREF(self->clock);
    Py_XDECREF(self->after);
    Py_XDECREF(self->member_type);
    Py_XDECREF(self->room_type);
    Py_XDECREF(self->keep);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Hot_init(Hot *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "core", "routes", "route_for", "slow", "send_failed", "warn",
                             "clock", "after", "member_type", "room_type", "chat_kind",
                             "max_datagram", "max_delivery", "exit_max", "max_batch", NULL};
    int fd, chat_kind;
    PyObject *core, *routes, *route_for, *slow, *send_failed, *warn, *clock, *after, *mt, *rt;
    Py_ssize_t max_datagram, max_delivery, exit_max, max_batch;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO!OOOOOOO!O!innnn", kwlist, &fd, &core,
                                     &PyDict_Type, &routes, &route_for, &slow, &send_failed,
                                     &warn, &clock, &after, &PyType_Type, &mt, &PyType_Type,
                                     &rt, &chat_kind, &max_datagram, &max_delivery, &exit_max,
                                     &max_batch))
        return -1;
    if (self->buf) {
        PyErr_SetString(PyExc_RuntimeError, "Hot is initialised once");
        return -1;
    }
    if (max_datagram < 2 || max_datagram > 65535 || max_batch < 1) {
        PyErr_SetString(PyExc_ValueError, "max_datagram or max_batch out of range");
        return -1;
    }
    self->member_type = (PyTypeObject *)mt;
    self->room_type = (PyTypeObject *)rt;
    Py_INCREF(mt);
    Py_INCREF(rt);
    if (resolve_slots(self->member_type, member_slots, M_COUNT, self->m) < 0 ||
        resolve_slots(self->room_type, room_slots, R_COUNT, self->r) < 0)
        return -1;
    self->tokens = PyObject_GetAttrString(core, "tokens");
    self->failing = PyObject_GetAttrString(core, "failing");
    self->by_addr = PyObject_GetAttrString(core, "by_addr");
    if (!self->tokens || !self->failing || !self->by_addr) return -1;
    if (!PyDict_CheckExact(self->tokens) || !PyDict_CheckExact(self->failing) ||
        !PyDict_CheckExact(self->by_addr)) {
        PyErr_SetString(PyExc_TypeError, "core.tokens, failing and by_addr must be dicts");
        return -1;
    }
    self->fd = fd;
    self->core = Py_NewRef(core);
    self->routes = Py_NewRef(routes);
    self->route_for = Py_NewRef(route_for);
    self->slow = Py_NewRef(slow);
    self->send_failed = Py_NewRef(send_failed);
    self->warn = Py_NewRef(warn);
    self->clock = Py_NewRef(clock);
    self->after = Py_NewRef(after);
    self->chat_kind = chat_kind;
    self->max_datagram = max_datagram;
    self->max_delivery = max_delivery;
    self->exit_max = exit_max;
    self->max_batch = max_batch;
    /* One byte over the limit: a longer datagram arrives truncated to max+1 and the Python
     * path drops it as too large, as with recvfrom(max + 1). */
    size_t slot = (size_t)max_datagram + 1;
    self->keep = PyList_New(0);
    if (!self->keep) return -1;
    self->buf = PyMem_Malloc(slot * RECV_SLOTS);
    if (!self->buf) {
        PyErr_NoMemory();
        return -1;
    }
    memset(self->out, 0, sizeof self->out);
    for (int i = 0; i < OUT_SLOTS; i++) {
        self->out[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        self->out[i].msg_hdr.msg_iovlen = 2;
    }
    memset(self->rhdr, 0, sizeof self->rhdr);
    for (int i = 0; i < RECV_SLOTS; i++) {
        self->riov[i].iov_base = self->buf + slot * (size_t)i;
        self->riov[i].iov_len = slot;
        self->rhdr[i].msg_hdr.msg_iov = &self->riov[i];
        self->rhdr[i].msg_hdr.msg_iovlen = 1;
        self->rhdr[i].msg_hdr.msg_name = &self->rname[i];
    }
    return 0;
}

static int warn(Hot *self, const char *what, int err) {
    PyObject *r = PyObject_CallFunction(self->warn, "si", what, err);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int report_failed(Hot *self, Side *s, Py_ssize_t index, PyObject *now) {
    PyObject *r = PyObject_CallFunctionObjArgs(
        self->send_failed, PyList_GET_ITEM(s->addrs, index % s->n), now, NULL);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

/* Send the queued messages of the batch. Failures are then reported in queue order, each
 * failed message with send_failed(addr, now) and, once one has failed, each message that
 * went through ends its address's failure streak: what the Python path does, datagram by
 * datagram (Worker._relay_batched). An address left without members by an eviction that a
 * report caused is skipped from then on: the Python path would not have sent to it. The
 * eviction's notices come after the batch's chat (docs/architecture.md). Same errno rules
 * as fan_out. */
static int flush_out(Hot *self, PyObject *now) {
    int nout = self->nout, pos = 0, retried = -1, any_failed = 0, rc = 0;
    if (!nout) return 0;
    memset(self->ofailed, 0, (size_t)nout);
    while (pos < nout) {
        int sent = sendmmsg(self->fd, self->out + pos, (unsigned)(nout - pos), MSG_DONTWAIT);
        if (sent > 0) {
            pos += sent;
            continue;
        }
        int e = errno;
        if (e == EINTR) continue;
        if (fatal_errno(e) || full_errno(e)) {
            if (fatal_errno(e) && warn(self, "sendmmsg", e) < 0) rc = -1;
            memset(self->ofailed + pos, 1, (size_t)(nout - pos));
            any_failed = 1;
            break;
        }
        if (retried != pos && e != EINVAL) {
            retried = pos;
            continue;
        }
        self->ofailed[pos++] = 1;
        any_failed = 1;
    }
    self->nout = self->npairs = 0;
    for (int i = 0; any_failed && i < nout && rc == 0; i++) {
        PyObject *addr = PyList_GET_ITEM(self->oside[i]->addrs, self->oidx[i]);
        PyObject *members = PyDict_GetItemWithError(self->by_addr, addr); /* Member or list */
        if (!members || (PyList_Check(members) && PyList_GET_SIZE(members) == 0)) {
            if (PyErr_Occurred()) rc = -1;
            continue; /* evicted by an earlier report of this flush */
        }
        if (self->ofailed[i]) {
            if (report_failed(self, self->oside[i], self->oidx[i], now) < 0) rc = -1;
        } else if (PyDict_GET_SIZE(self->failing)) {
            int has = PyDict_Contains(self->failing, addr);
            if (has < 0 || (has && PyDict_DelItem(self->failing, addr) < 0)) rc = -1;
        }
    }
    if (PyList_SetSlice(self->keep, 0, PyList_GET_SIZE(self->keep), NULL) < 0) rc = -1;
    return rc;
}

/* Queue prefix + message to every recipient of one side but index k (-1: all). A side
 * that does not fit is flushed first; one larger than the queue is sent in several. */
static int queue_side(Hot *self, Route *route, Side *s, Py_ssize_t k, PyObject *prefix,
                      const char *msg, Py_ssize_t mlen, PyObject *now) {
    Py_ssize_t count = k < 0 ? s->n : s->n - 1;
    if (count <= 0) return 0;
    if (self->nout + count > OUT_SLOTS && flush_out(self, now) < 0) return -1;
    struct iovec *iov = NULL;
    for (Py_ssize_t j = 0; j < s->n; j++) {
        if (j == k) continue;
        if (self->nout == OUT_SLOTS) {
            if (flush_out(self, now) < 0) return -1;
            iov = NULL;
        }
        if (!iov) { /* the pair, and what it points into, live until the next flush */
            if (PyList_Append(self->keep, (PyObject *)route) < 0 ||
                PyList_Append(self->keep, prefix) < 0)
                return -1;
            iov = &self->oiov[2 * self->npairs++];
            iov[0].iov_base = PyBytes_AS_STRING(prefix);
            iov[0].iov_len = (size_t)PyBytes_GET_SIZE(prefix);
            iov[1].iov_base = (void *)msg;
            iov[1].iov_len = (size_t)mlen;
        }
        int o = self->nout++;
        self->out[o].msg_hdr.msg_name = &s->names[j];
        self->out[o].msg_hdr.msg_iov = iov;
        self->oside[o] = s;
        self->oidx[o] = j;
    }
    return 0;
}

/* Queue ``payload`` to entry k of side s alone (an ocm1r sender's ACK). */
static int queue_one(Hot *self, Route *route, Side *s, Py_ssize_t k, PyObject *payload,
                     PyObject *now) {
    if (self->nout == OUT_SLOTS && flush_out(self, now) < 0) return -1;
    if (PyList_Append(self->keep, (PyObject *)route) < 0 ||
        PyList_Append(self->keep, payload) < 0)
        return -1;
    struct iovec *iov = &self->oiov[2 * self->npairs++];
    iov[0].iov_base = PyBytes_AS_STRING(payload);
    iov[0].iov_len = (size_t)PyBytes_GET_SIZE(payload);
    iov[1].iov_base = NULL;
    iov[1].iov_len = 0;
    int o = self->nout++;
    self->out[o].msg_hdr.msg_name = &s->names[k];
    self->out[o].msg_hdr.msg_iov = iov;
    self->oside[o] = s;
    self->oidx[o] = k;
    return 0;
}

/* The route of a room, current for its generation: from the cache, else built by Python. */
static Route *route_of(Hot *self, PyObject *room) {
    PyObject *name = SLOT(room, self->r[R_NAME]);
    PyObject *gen = SLOT(room, self->r[R_GENERATION]);
    if (!name || !gen || !PyLong_CheckExact(gen)) return NULL;
    long long g = PyLong_AsLongLong(gen);
    if (g == -1 && PyErr_Occurred()) return NULL;
    PyObject *route = PyDict_GetItemWithError(self->routes, name);
    if (route && Py_IS_TYPE(route, &RouteType) && ((Route *)route)->generation == g) {
        Py_INCREF(route);
        return (Route *)route;
    }
    if (PyErr_Occurred()) return NULL;
    route = PyObject_CallOneArg(self->route_for, room);
    if (!route) return NULL;
    if (!Py_IS_TYPE(route, &RouteType) || ((Route *)route)->generation != g) {
        Py_DECREF(route);
        PyErr_SetString(PyExc_TypeError, "route_for(room) must return the room's current Route");
        return NULL;
    }
    return (Route *)route;
}

/* 1: relayed here; 0: the Python path must take it; -1: error set. */
static int try_fast(Hot *self, const unsigned char *d, Py_ssize_t len,
                    const struct sockaddr_in *src, socklen_t srclen, double now,
                    PyObject *now_obj, double rate, double burst) {
    if (len < 3 || len > self->max_datagram || srclen != sizeof *src ||
        src->sin_family != AF_INET)
        return 0;
    Py_ssize_t rl = d[0], tl = d[1], start = 2 + rl + tl;
    if (!rl || !tl || start >= len) return 0; /* malformed, or a keepalive */
    PyObject *tok = PyBytes_FromStringAndSize((const char *)d + 2 + rl, tl);
    if (!tok) return -1;
    PyObject *member = PyDict_GetItemWithError(self->tokens, tok);
    Py_DECREF(tok);
    if (!member) return PyErr_Occurred() ? -1 : 0;
    if (!Py_IS_TYPE(member, self->member_type)) return 0;
    const Py_ssize_t *m = self->m, *r = self->r;
    PyObject *room = SLOT(member, m[M_ROOM]);
    if (!room || !Py_IS_TYPE(room, self->room_type)) return 0;
    PyObject *name_raw = SLOT(room, r[R_NAME_RAW]);
    if (!name_raw || !PyBytes_CheckExact(name_raw) || PyBytes_GET_SIZE(name_raw) != rl ||
        memcmp(PyBytes_AS_STRING(name_raw), d + 2, (size_t)rl) != 0)
        return 0;
    if (SLOT(member, m[M_TRIAL]) != Py_False) return 0;
    PyObject *trial = SLOT(room, r[R_TRIAL]);
    if (!trial || !PyList_CheckExact(trial) || PyList_GET_SIZE(trial) != 0) return 0;
    if (PyDict_GET_SIZE(self->failing) != 0) return 0;
    const unsigned char *msg = d + start;
    Py_ssize_t mlen = len - start;
    /* A numbered room (it has ocm1r members, relay/history.py): its chat is numbered and
     * kept by history.number(); an ocm1r sender's SEND (01 MsgId Text) is taken here only
     * when MsgId is the next one (copies, gaps and NACKs go to Python). */
    PyObject *history = SLOT(room, r[R_HISTORY]);
    PyObject *rel = SLOT(member, m[M_REL]);
    long long msg_id = 0, top = 0;
    if (!history || !rel) return 0;
    if (history != Py_None) {
        if (rel != Py_None) {
            if (mlen < 6 || msg[0] != 1) return 0;
            msg_id = ((long long)msg[1] << 24) | (msg[2] << 16) | (msg[3] << 8) | msg[4];
            PyObject *top_obj = PyObject_GetAttr(rel, str_top);
            if (!top_obj) return -1;
            top = PyLong_AsLongLong(top_obj);
            Py_DECREF(top_obj);
            if (top == -1 && PyErr_Occurred()) return -1;
            if (msg_id != top + 1) return 0;
            msg += 5;
            mlen -= 5;
        }
    } else if (rel != Py_None) {
        return 0;
    }
    PyObject *e2e = SLOT(room, r[R_E2E]);
    if (e2e == Py_True) {
        if (msg[0] != self->chat_kind) return 0;
    } else if (e2e == Py_False) {
        if (mlen <= self->exit_max && memchr(msg, '/', (size_t)mlen)) return 0;
        if (!utf8_valid(msg, mlen)) return 0;
    } else {
        return 0;
    }
    PyObject *framed_obj = SLOT(member, m[M_FRAMED]);
    int framed;
    if (framed_obj == Py_True) framed = 1;
    else if (framed_obj == Py_False) framed = 0;
    else return 0;
    PyObject *allowance_obj = SLOT(member, m[M_ALLOWANCE]);
    PyObject *stamp_obj = SLOT(member, m[M_STAMP]);
    PyObject *pp = SLOT(member, m[M_PLAIN_PREFIX]);
    PyObject *fp = SLOT(member, m[M_FRAMED_PREFIX]);
    PyObject *addr = SLOT(member, m[M_ADDR]);
    if (!allowance_obj || !stamp_obj || !PyFloat_CheckExact(allowance_obj) ||
        !PyFloat_CheckExact(stamp_obj) || !pp || !fp || !PyBytes_CheckExact(pp) ||
        !PyBytes_CheckExact(fp) || !addr)
        return 0;
    /* The same arithmetic, in the same order, as RelayCore._chat (built without FP
     * contraction), so that both paths charge identically. */
    double allowance = PyFloat_AS_DOUBLE(allowance_obj) + (now - PyFloat_AS_DOUBLE(stamp_obj)) * rate;
    if (allowance > burst) allowance = burst;
    if (allowance < 1.0) return 0; /* rate-limited: Python counts it */
    Route *route = route_of(self, room);
    if (!route) return PyErr_Occurred() ? -1 : 0;
    int reliable = rel != Py_None;
    Side *own = &route->side[reliable ? 2 : framed];
    Py_ssize_t k = -1;
    for (Py_ssize_t j = 0; j < own->n; j++) {
        if (own->names[j].sin_addr.s_addr == src->sin_addr.s_addr &&
            own->names[j].sin_port == src->sin_port) {
            k = j;
            break;
        }
    }
    /* The sender must be bound at exactly this address: the room list holds member.addr
     * itself, so identity proves it (and so the IP check: a bound address has the IP). */
    if (k < 0 || PyList_GET_ITEM(own->addrs, k) != addr) {
        Py_DECREF(route);
        return 0;
    }
    Py_ssize_t n_plain = route->side[0].n - (!framed && !reliable);
    Py_ssize_t n_framed = route->side[1].n - (framed && !reliable);
    Py_ssize_t longest = n_plain ? PyBytes_GET_SIZE(pp) + mlen
                                 : n_framed ? PyBytes_GET_SIZE(fp) + mlen : 0;
    if (longest > self->max_delivery || (history != Py_None &&
            DATA_HEADER_BYTES + PyBytes_GET_SIZE(fp) + mlen > self->max_delivery)) {
        Py_DECREF(route); /* Python notifies the sender, or skips the number */
        return 0;
    }
    PyObject *numbered = NULL;
    long long seq = 0;
    if (history != Py_None) { /* number and keep it: history.number(fp + msg, now) */
        PyObject *body = PyBytes_FromStringAndSize(NULL, PyBytes_GET_SIZE(fp) + mlen);
        if (!body) {
            Py_DECREF(route);
            return -1;
        }
        memcpy(PyBytes_AS_STRING(body), PyBytes_AS_STRING(fp), (size_t)PyBytes_GET_SIZE(fp));
        memcpy(PyBytes_AS_STRING(body) + PyBytes_GET_SIZE(fp), msg, (size_t)mlen);
        numbered = PyObject_CallMethodObjArgs(history, str_number, body, now_obj, NULL);
        Py_DECREF(body);
        if (!numbered || !PyBytes_CheckExact(numbered) ||
                PyBytes_GET_SIZE(numbered) < DATA_HEADER_BYTES) {
            if (numbered) PyErr_SetString(PyExc_TypeError, "history.number() must return bytes");
            Py_XDECREF(numbered);
            Py_DECREF(route);
            return -1;
        }
        const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(numbered);
        seq = ((long long)h[5] << 24) | (h[6] << 16) | (h[7] << 8) | h[8];
    }
    PyObject *left = PyFloat_FromDouble(allowance - 1.0);
    if (!left) {
        Py_DECREF(route);
        return -1;
    }
    set_slot(member, m[M_ALLOWANCE], left);
    Py_DECREF(left);
    set_slot(member, m[M_STAMP], now_obj);
    set_slot(member, m[M_LAST_SEEN], now_obj);
    self->fast++;
    /* Queued: the batch keeps the route and the prefixes until the flush, and msg stays in
     * the receive buffer until then (the flush comes before the next recvmmsg). A flush
     * while queueing (the queue is full) may report failures that evict members, even the
     * sender: hold the prefixes until both sides are queued. */
    Py_INCREF(pp);
    Py_INCREF(fp);
    int rc = 0;
    if (n_plain)
        rc = queue_side(self, route, &route->side[0], framed ? -1 : k, pp, (const char *)msg,
                        mlen, now_obj);
    if (rc == 0 && n_framed)
        rc = queue_side(self, route, &route->side[1], framed && !reliable ? k : -1, fp,
                        (const char *)msg, mlen, now_obj);
    if (rc == 0 && numbered)
        rc = queue_side(self, route, &route->side[2], reliable ? k : -1, numbered, "", 0,
                        now_obj);
    if (rc == 0 && reliable) { /* the sender's ACK: 02 Epoch MsgId Seq, and its record */
        unsigned char ack[ACK_BYTES];
        ack[0] = 2;
        memcpy(ack + 1, PyBytes_AS_STRING(numbered) + 1, 4);
        for (int b = 0; b < 4; b++) {
            ack[5 + b] = (unsigned char)(msg_id >> (24 - 8 * b));
            ack[9 + b] = (unsigned char)(seq >> (24 - 8 * b));
        }
        PyObject *ack_obj = PyBytes_FromStringAndSize((const char *)ack, ACK_BYTES);
        PyObject *id_obj = PyLong_FromLongLong(msg_id), *seq_obj = PyLong_FromLongLong(seq);
        if (!ack_obj || !id_obj || !seq_obj || PyObject_SetAttr(rel, str_top, id_obj) < 0 ||
                PyObject_SetAttr(rel, str_top_seq, seq_obj) < 0)
            rc = -1;
        else
            rc = queue_one(self, route, own, k, ack_obj, now_obj);
        Py_XDECREF(ack_obj);
        Py_XDECREF(id_obj);
        Py_XDECREF(seq_obj);
    }
    Py_XDECREF(numbered);
    Py_DECREF(pp);
    Py_DECREF(fp);
    Py_DECREF(route);
    return rc < 0 ? -1 : 1;
}

static PyObject *address_of(const struct sockaddr_in *sa, socklen_t len) {
    if (len < sizeof *sa || sa->sin_family != AF_INET) {
        /* not expected on an AF_INET socket: give Python something it cannot match */
        return Py_BuildValue("(si)", "", 0);
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    return Py_BuildValue("(si)", ip, (int)ntohs(sa->sin_port));
}

static PyObject *str_chat_rate, *str_chat_burst, *str_received, *str_relayed, *str_events,
    *str_outbox;

static double core_number(Hot *self, PyObject *name) {
    PyObject *o = PyObject_GetAttr(self->core, name);
    if (!o) return -1.0;
    double v = PyFloat_AsDouble(o);
    Py_DECREF(o);
    return v;
}

/* The loop of serve() and on_readable(): datagrams read into *nread and relayed here into
 * *fast; -1 with an exception set on error. */
static int serve(Hot *self, PyObject *now_obj, Py_ssize_t *nread, Py_ssize_t *fast) {
    if (!self->buf) {
        PyErr_SetString(PyExc_RuntimeError, "Hot is not initialised");
        return -1;
    }
    if (!PyFloat_CheckExact(now_obj)) {
        PyErr_SetString(PyExc_TypeError, "now must be a float");
        return -1;
    }
    double now = PyFloat_AS_DOUBLE(now_obj);
    double rate = core_number(self, str_chat_rate);
    double burst = core_number(self, str_chat_burst);
    if (PyErr_Occurred()) return -1;
    self->calls++;
    Py_ssize_t total = 0, fast_before = (Py_ssize_t)self->fast;
    size_t slot = (size_t)self->max_datagram + 1;
    while (total < self->max_batch) {
        unsigned want = (unsigned)(self->max_batch - total < RECV_SLOTS ? self->max_batch - total
                                                                       : RECV_SLOTS);
        for (unsigned i = 0; i < want; i++)
            self->rhdr[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
        int n = recvmmsg(self->fd, self->rhdr, want, MSG_DONTWAIT, NULL);
        if (n < 0) {
            int e = errno;
            if (e == EINTR) continue;
            if (e == EAGAIN || e == EWOULDBLOCK) break;
            if (warn(self, "recvmmsg", e) < 0) return -1; /* logged; the batch ends */
            break;
        }
        for (int i = 0; i < n; i++) {
            const unsigned char *d = (const unsigned char *)self->buf + slot * (size_t)i;
            Py_ssize_t len = (Py_ssize_t)self->rhdr[i].msg_len;
            int rc = try_fast(self, d, len, &self->rname[i], self->rhdr[i].msg_hdr.msg_namelen,
                              now, now_obj, rate, burst);
            if (rc < 0) goto error;
            if (rc) continue;
            if (flush_out(self, now_obj) < 0) goto error; /* keep the order of sends */
            self->slow_count++;
            PyObject *data = PyBytes_FromStringAndSize((const char *)d, len);
            PyObject *addr = address_of(&self->rname[i], self->rhdr[i].msg_hdr.msg_namelen);
            if (!data || !addr) {
                Py_XDECREF(data);
                Py_XDECREF(addr);
                goto error;
            }
            PyObject *res = PyObject_CallFunctionObjArgs(self->slow, data, addr, now_obj, NULL);
            Py_DECREF(data);
            Py_DECREF(addr);
            if (!res) goto error;
            Py_DECREF(res);
        }
        /* The queued messages point into the receive buffers: send before reusing them. */
        if (flush_out(self, now_obj) < 0) goto error;
        total += n;
        /* A short batch drained the socket (as far as it knew): let the loop call again
         * when it is readable, rather than pay a recvmmsg that says EAGAIN. */
        if ((unsigned)n < want) break;
    }
    *nread = total;
    *fast = (Py_ssize_t)self->fast - fast_before;
    return 0;
error: { /* send what was queued (its buffers are still intact), keep the first error */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        if (flush_out(self, now_obj) < 0) PyErr_Clear();
        PyErr_Restore(type, value, tb);
        return -1;
    }
}

static PyObject *Hot_serve(Hot *self, PyObject *now_obj) {
    Py_ssize_t nread, fast;
    if (serve(self, now_obj, &nread, &fast) < 0) return NULL;
    return Py_BuildValue("nn", nread, fast);
}

/* core.<name> += n */
static int core_add(Hot *self, PyObject *name, Py_ssize_t n) {
    PyObject *v = PyObject_GetAttr(self->core, name);
    if (!v) return -1;
    PyObject *d = PyLong_FromSsize_t(n);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (!sum) return -1;
    int rc = PyObject_SetAttr(self->core, name, sum);
    Py_DECREF(sum);
    return rc;
}

static int core_list_nonempty(Hot *self, PyObject *name) {
    PyObject *v = PyObject_GetAttr(self->core, name);
    if (!v) return -1;
    int r = PyObject_IsTrue(v);
    Py_DECREF(v);
    return r;
}

/* The loop's reader callback, called by the event loop directly (no Python frame): read
 * with the time of ``clock()`` (None: CLOCK_MONOTONIC, the clock of time.monotonic),
 * count what C relayed in core.received and core.relayed as the Python path would have,
 * and call ``after()`` (the worker's flush) when the core has events or notices. */
static PyObject *Hot_on_readable(Hot *self, PyObject *unused) {
    (void)unused;
    PyObject *now_obj;
    if (self->clock == Py_None) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        now_obj = PyFloat_FromDouble((double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) * 1e-9);
    } else {
        now_obj = PyObject_CallNoArgs(self->clock);
    }
    if (!now_obj) return NULL;
    Py_ssize_t nread, fast;
    int rc = serve(self, now_obj, &nread, &fast);
    Py_DECREF(now_obj);
    if (rc < 0) return NULL;
    if (fast > 0 && (core_add(self, str_received, fast) < 0 || core_add(self, str_relayed, fast) < 0))
        return NULL;
    int events = core_list_nonempty(self, str_events);
    int outbox = events == 0 ? core_list_nonempty(self, str_outbox) : 0;
    if (events < 0 || outbox < 0) return NULL;
    if (events || outbox) {
        PyObject *r = PyObject_CallNoArgs(self->after);
        if (!r) return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *Hot_counters(Hot *self, PyObject *unused) {
    (void)unused;
    return Py_BuildValue("{sKsKsK}", "fast", self->fast, "slow", self->slow_count, "calls",
                         self->calls);
}

static PyMethodDef Hot_methods[] = {
    {"serve", (PyCFunction)Hot_serve, METH_O,
     "serve(now) -> (read, fast): read up to max_batch datagrams; relay the ordinary chat "
     "here and hand the rest to slow(data, addr, now) in order."},
    {"on_readable", (PyCFunction)Hot_on_readable, METH_NOARGS,
     "on_readable(): the reader callback: serve(clock()), count, then after() if the core "
     "has events or notices."},
    {"counters", (PyCFunction)Hot_counters, METH_NOARGS,
     "counters() -> {'fast', 'slow', 'calls'} since creation."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HotType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._hot.Hot",
    .tp_basicsize = sizeof(Hot),
    .tp_dealloc = (destructor)Hot_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled hot loop of one relay worker (relay/hot.py).",
    .tp_init = (initproc)Hot_init,
    .tp_new = PyType_GenericNew,
    .tp_methods = Hot_methods,
};

static PyObject *mod_utf8_valid(PyObject *mod, PyObject *arg) {
    (void)mod;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int ok = utf8_valid(view.buf, view.len);
    PyBuffer_Release(&view);
    return PyBool_FromLong(ok);
}

static PyMethodDef module_methods[] = {
    {"utf8_valid", mod_utf8_valid, METH_O,
     "utf8_valid(data) -> bool: the hot loop's UTF-8 check (for the tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "relay._hot", "The compiled relay hot loop (relay/hot.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hot(void) {
    if (PyType_Ready(&RouteType) < 0 || PyType_Ready(&HotType) < 0) return NULL;
    if (!(str_chat_rate = PyUnicode_InternFromString("chat_rate")) ||
        !(str_chat_burst = PyUnicode_InternFromString("chat_burst")) ||
        !(str_received = PyUnicode_InternFromString("received")) ||
        !(str_relayed = PyUnicode_InternFromString("relayed")) ||
        !(str_events = PyUnicode_InternFromString("events")) ||
        !(str_outbox = PyUnicode_InternFromString("outbox")) ||
        !(str_top = PyUnicode_InternFromString("top")) ||
        !(str_top_seq = PyUnicode_InternFromString("top_seq")) ||
        !(str_number = PyUnicode_InternFromString("number")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RouteType);
    Py_INCREF(&HotType);
    if (PyModule_AddObject(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObject(m, "Hot", (PyObject *)&HotType) < 0 ||
        PyModule_AddIntConstant(m, "RECV_SLOTS", RECV_SLOTS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
