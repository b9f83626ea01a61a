/* relay._hot: the compiled hot loop of a relay worker (optional; relay/hot.py is its
 * Python side and says how it is chosen).
 *
 * One call of Hot.on_readable() reads the worker's UDP socket with recvmmsg (up to 64
 * datagrams a syscall, up to max_batch in all) and, for every datagram that is an ordinary
 * chat message of a settled member, does in C what RelayCore.handle_datagram and the
 * worker's fan-out do in Python: parse, authenticate (token, source address, room, and
 * for a member with a datagram key its MAC trailer, by OpenSSL's BLAKE2SMAC, with a Seq
 * above its replay window: wire/dgmac.py), validate (UTF-8, not /exit), charge the
 * member's token bucket, refresh it, and send the delivery to the rest of the room with
 * one sendmmsg per delivery format, the delivery being the member's prefix and the
 * message as two iovecs (no copy). In a numbered room (one with ocm1r members, relay/
 * history.py) it numbers the chat as History.number() does, sends the numbered datagram to
 * the ocm1r members in the same sendmmsg (each one's held ACK, if any, in front of it, as
 * RelayCore.carry does), and for an ocm1r member's SEND with the next id the ACK to the
 * sender (for a 06 SEND: the ACK held on its Reliable and listed in core.held), recording
 * the id on its Reliable; the entry is kept (History.keep) once the batch's sends went
 * out. Everything else (a first datagram, a
 * keepalive, a possible /exit, a trial address, a failing address, a rate-limited or
 * over-long message, an encrypted room's addressed datagrams, an ocm1r member's copies,
 * gaps and NACKs, anything malformed) is handed, in order, to
 * the Python callback ``slow(data, addr, now)``, which is the pure-Python path itself.
 * So the Python core stays the one definition of the protocol: this file only takes the
 * cases whose outcome it can prove equal, reading and writing the same objects
 * (Member/Room/History/Reliable __slots__, resolved to offsets once) that Python does.
 * What it may touch is declared in relay/core.py (the HOT_* lists;
 * tests/unit/test_hot_contract.py holds this file to them).
 * tests/unit/test_relay_hot.py and the differential fuzz target (tests/fuzz/fuzz_hot.py)
 * feed both paths the same traffic.
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

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>

#define RECV_SLOTS 64
#define OUT_SLOTS 1024 /* UIO_MAXIOV: the most messages one sendmmsg takes */
/* The MAC trailer of a member with a datagram key (wire/dgmac.py, docs/protocol.md §8). */
#define MAC_KEY_BYTES 32
#define MAC_SEQ_BYTES 8
#define MAC_TAG_BYTES 16
#define MAC_TRAILER_BYTES (MAC_SEQ_BYTES + MAC_TAG_BYTES)
/* ocm1r (docs/protocol.md §9.3): a held ACK carried in front of a DATA, 06 MsgId Seq, and
 * the first byte of a SEND whose ACK may be held. */
#define CARRIED_BYTES 9
#define ACK_BYTES 13 /* 02 Epoch MsgId Seq */
#define SEND_HELD 6

/* ---- helpers ------------------------------------------------------------------------ */

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

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

/* Keyed BLAKE2s by OpenSSL's EVP_MAC "BLAKE2SMAC" on a context made by new_mac_ctx(size),
 * reused: EVP_MAC_init with the key resets it (keeping its digest length), and nothing
 * here allocates. 0 on success. */
static int blake2s_mac(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen,
                       const unsigned char *data, size_t len, unsigned char *out, size_t size) {
    size_t outl = 0;
    if (!EVP_MAC_init(ctx, key, keylen, NULL) || !EVP_MAC_update(ctx, data, len) ||
        !EVP_MAC_final(ctx, out, &outl, size) || outl != size)
        return -1;
    return 0;
}

/* Whether the last MAC_TAG_BYTES of d[0:len] are the tag of the bytes before them. */
static int mac_verify(EVP_MAC_CTX *ctx, const unsigned char *key, const unsigned char *d,
                      Py_ssize_t len) {
    unsigned char tag[MAC_TAG_BYTES];
    size_t body = (size_t)len - MAC_TAG_BYTES;
    if (blake2s_mac(ctx, key, MAC_KEY_BYTES, d, body, tag, MAC_TAG_BYTES) < 0) return 0;
    return CRYPTO_memcmp(tag, d + body, MAC_TAG_BYTES) == 0;
}

/* A BLAKE2SMAC context whose digest length (1..32, in BLAKE2's parameter block: not a
 * truncation) is size; NULL with an exception set if OpenSSL cannot make one. */
static EVP_MAC_CTX *new_mac_ctx(size_t size) {
    EVP_MAC *alg = EVP_MAC_fetch(NULL, "BLAKE2SMAC", NULL);
    EVP_MAC_CTX *ctx = alg ? EVP_MAC_CTX_new(alg) : NULL;
    EVP_MAC_free(alg); /* the context holds its own reference */
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
                            OSSL_PARAM_construct_end()};
    if (ctx && !EVP_MAC_CTX_set_params(ctx, params)) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    if (!ctx) PyErr_SetString(PyExc_RuntimeError, "OpenSSL has no BLAKE2SMAC (EVP_MAC)");
    return ctx;
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
    PyObject *members;         /* side 2 of a room's route: Room.reliable (the members of
                                * addrs, in order), else NULL */
    struct sockaddr_in *names; /* n */
} Side;

typedef struct {
    PyObject_HEAD
    long long generation;
    Side side[3]; /* 0 plain, 1 framed, 2 numbered (the ocm1r members) */
} Route;

static void side_free(Side *s) {
    Py_CLEAR(s->addrs);
    Py_CLEAR(s->members);
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
    static char *kwlist[] = {"generation", "plain", "framed", "numbered", NULL};
    long long generation;
    PyObject *plain, *framed, *numbered = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LOO|O", kwlist, &generation, &plain, &framed,
                                     &numbered))
        return -1;
    for (int i = 0; i < 3; i++) side_free(&self->side[i]);
    self->generation = generation;
    if (side_init(&self->side[0], plain) < 0 || side_init(&self->side[1], framed) < 0)
        return -1;
    if (numbered && side_init(&self->side[2], numbered) < 0) return -1;
    return 0;
}

static PyTypeObject RouteType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relay._hot.Route",
    .tp_basicsize = sizeof(Route),
    .tp_dealloc = (destructor)Route_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Route(generation, plain_addrs, framed_addrs, numbered_addrs=None): a room's "
              "recipients as sockaddr_in, for each delivery format.",
    .tp_init = (initproc)Route_init,
    .tp_new = PyType_GenericNew,
};

/* ---- Hot: the loop ------------------------------------------------------------------ */

enum { M_ADDR, M_TRIAL, M_ROOM, M_PLAIN_PREFIX, M_FRAMED_PREFIX, M_FRAMED, M_ALLOWANCE,
       M_STAMP, M_LAST_SEEN, M_MAC_KEY, M_MAC_TOP, M_MAC_SEEN, M_REL, M_COUNT };
static const char *member_slots[M_COUNT] = {"addr", "trial", "room", "plain_prefix",
                                            "framed_prefix", "framed", "allowance", "stamp",
                                            "last_seen", "mac_key", "mac_top", "mac_seen",
                                            "rel"};
enum { R_NAME, R_NAME_RAW, R_E2E, R_TRIAL, R_GENERATION, R_PLAIN_ADDRS, R_FRAMED_ADDRS,
       R_RELIABLE_ADDRS, R_RELIABLE, R_HISTORY, R_COUNT };
static const char *room_slots[R_COUNT] = {"name", "name_raw", "e2e", "trial", "generation",
                                          "plain_addrs", "framed_addrs", "reliable_addrs",
                                          "reliable", "history"};
/* A numbered room's History (relay/history.py) and an ocm1r sender's Reliable (relay/core.py):
 * the slots read and written here. The entry is kept at the flush as History.keep() keeps
 * it (keep_entry below: the entries deque and the byte counts of the history and of its
 * worker's HistoryBudget), or by History.keep() itself where its limits call for more. */
enum { H_EPOCH, H_NEXT_SEQ, H_NOW, H_ENTRIES, H_BYTES, H_BUDGET, H_COUNT };
static const char *history_slots[H_COUNT] = {"epoch", "next_seq", "now", "entries", "bytes",
                                             "budget"};
enum { B_MAX_MESSAGES, B_MAX_BYTES, B_WORKER_BYTES, B_USED, B_COUNT };
static const char *budget_slots[B_COUNT] = {"max_messages", "max_bytes", "worker_bytes",
                                            "used"};
enum { L_TOP, L_TOP_SEQ, L_HELD, L_HELD_AT, L_COUNT };
static const char *reliable_slots[L_COUNT] = {"top", "top_seq", "held", "held_at"};

/* One datagram relayed here whose deliveries are queued: what undoing it takes. */
typedef struct {
    PyObject *member, *last_seen; /* the sender and its last_seen before (strong refs) */
    PyObject *mac_top, *mac_seen; /* its replay window before, if sealed (else NULL) */
    double allowance, stamp;      /* its chat bucket before */
    int end;                      /* the queue length once its deliveries were queued */
    int index;                    /* its slot in the receive batch */
    /* A numbered chat (else all NULL): the room's history, the datagram to keep at the
     * flush under number seq, the history's next_seq and now before; for an ocm1r sender
     * (else NULL) its Reliable and top, top_seq, held, held_at before. */
    PyObject *history, *datagram, *seq, *next_seq, *hnow;
    PyObject *rel, *top, *top_seq, *held, *held_at;
} Group;

/* A held ACK a queued numbered delivery carries: the recipient's Reliable and the held
 * bytes taken from it (restored if the datagram of group ``group`` is undone). */
typedef struct {
    PyObject *rel, *held;
    int group;
} Carry;

static void group_clear(Group *g) {
    Py_CLEAR(g->member);
    Py_CLEAR(g->last_seen);
    Py_CLEAR(g->mac_top);
    Py_CLEAR(g->mac_seen);
    Py_CLEAR(g->history);
    Py_CLEAR(g->datagram);
    Py_CLEAR(g->seq);
    Py_CLEAR(g->next_seq);
    Py_CLEAR(g->hnow);
    Py_CLEAR(g->rel);
    Py_CLEAR(g->top);
    Py_CLEAR(g->top_seq);
    Py_CLEAR(g->held);
    Py_CLEAR(g->held_at);
}

typedef struct {
    PyObject_HEAD
    int fd;
    PyObject *core, *tokens, *failing, *routes, *slow, *send_failed, *send_ok, *warn;
    PyObject *held, *held_times; /* core.held, core.held_times: the member and the time of
                                  * each ACK held here, in two lists */
    PyObject *clock, *after; /* on_readable: time source (None: CLOCK_MONOTONIC), flush */
    PyTypeObject *member_type, *room_type, *history_type, *reliable_type, *budget_type;
    Py_ssize_t m[M_COUNT], r[R_COUNT], h[H_COUNT], l[L_COUNT], b[B_COUNT];
    Py_ssize_t entry_overhead; /* HISTORY_ENTRY_OVERHEAD_BYTES */
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
    unsigned char oack[OUT_SLOTS]; /* an ocm1r ACK: a notice to Python, not a delivery */
    int nout, npairs;
    PyObject *keep; /* what the queued iovecs point into (routes, prefixes) until the flush */
    Group groups[RECV_SLOTS]; /* the datagrams of the queue, in order (each one at most) */
    int ngroups;
    Carry carries[OUT_SLOTS]; /* the held ACKs the queue carries, in order */
    int ncarries;
    int dirty; /* notices may be waiting in the core's outbox (a flush reported failures,
                * or they were there when the read began): the next datagram goes to
                * Python, which sends them first (as Worker._on_udp does) */
    EVP_MAC_CTX *mac; /* the one MAC context of the worker, re-keyed per datagram */
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
    Py_XDECREF(self->routes);
    Py_XDECREF(self->slow);
    Py_XDECREF(self->send_failed);
    Py_XDECREF(self->send_ok);
    Py_XDECREF(self->held);
    Py_XDECREF(self->held_times);
    for (int g = 0; g < self->ngroups; g++) group_clear(&self->groups[g]);
    for (int c = 0; c < self->ncarries; c++) {
        Py_XDECREF(self->carries[c].rel);
        Py_XDECREF(self->carries[c].held);
    }
    EVP_MAC_CTX_free(self->mac);
    Py_XDECREF(self->warn);
    Py_XDECREF(self->clock);
    Py_XDECREF(self->after);
    Py_XDECREF(self->member_type);
    Py_XDECREF(self->room_type);
    Py_XDECREF(self->history_type);
    Py_XDECREF(self->reliable_type);
    Py_XDECREF(self->budget_type);
    Py_XDECREF(self->keep);
    PyMem_Free(self->buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Hot_init(Hot *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "core", "routes", "slow", "warn",
                             "clock", "after", "member_type", "room_type", "history_type",
                             "reliable_type", "budget_type", "chat_kind", "max_datagram",
                             "max_delivery", "exit_max", "max_batch", "entry_overhead", NULL};
    int fd, chat_kind;
    PyObject *core, *routes, *slow, *warn, *clock, *after, *mt, *rt, *ht, *lt, *bt;
    Py_ssize_t max_datagram, max_delivery, exit_max, max_batch, entry_overhead;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOO!OOOOO!O!O!O!O!innnnn", kwlist, &fd,
                                     &core, &PyDict_Type, &routes, &slow,
                                     &warn, &clock, &after, &PyType_Type, &mt, &PyType_Type,
                                     &rt, &PyType_Type, &ht, &PyType_Type, &lt, &PyType_Type,
                                     &bt, &chat_kind, &max_datagram, &max_delivery, &exit_max,
                                     &max_batch, &entry_overhead))
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
    self->history_type = (PyTypeObject *)ht;
    self->reliable_type = (PyTypeObject *)lt;
    self->budget_type = (PyTypeObject *)bt;
    self->entry_overhead = entry_overhead;
    Py_INCREF(mt);
    Py_INCREF(rt);
    Py_INCREF(ht);
    Py_INCREF(lt);
    Py_INCREF(bt);
    if (resolve_slots(self->member_type, member_slots, M_COUNT, self->m) < 0 ||
        resolve_slots(self->room_type, room_slots, R_COUNT, self->r) < 0 ||
        resolve_slots(self->history_type, history_slots, H_COUNT, self->h) < 0 ||
        resolve_slots(self->reliable_type, reliable_slots, L_COUNT, self->l) < 0 ||
        resolve_slots(self->budget_type, budget_slots, B_COUNT, self->b) < 0)
        return -1;
    self->tokens = PyObject_GetAttrString(core, "tokens");
    self->failing = PyObject_GetAttrString(core, "failing");
    self->send_failed = PyObject_GetAttrString(core, "handle_send_failure");
    self->send_ok = PyObject_GetAttrString(core, "handle_send_success");
    self->held = PyObject_GetAttrString(core, "held");
    self->held_times = PyObject_GetAttrString(core, "held_times");
    if (!self->tokens || !self->failing || !self->send_failed || !self->send_ok || !self->held
        || !self->held_times)
        return -1;
    if (!PyDict_CheckExact(self->tokens) || !PyDict_CheckExact(self->failing)) {
        PyErr_SetString(PyExc_TypeError, "core.tokens and failing must be dicts");
        return -1;
    }
    if (!PyList_CheckExact(self->held) || !PyList_CheckExact(self->held_times)) {
        PyErr_SetString(PyExc_TypeError, "core.held and held_times must be lists");
        return -1;
    }
    self->fd = fd;
    self->core = Py_NewRef(core);
    self->routes = Py_NewRef(routes);
    self->slow = Py_NewRef(slow);
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
    if (!self->mac && !(self->mac = new_mac_ctx(MAC_TAG_BYTES))) return -1;
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

static PyObject *address_of(const struct sockaddr_in *sa, socklen_t len) {
    if (len < sizeof *sa || sa->sin_family != AF_INET) {
        /* not expected on an AF_INET socket: give Python something it cannot match */
        return Py_BuildValue("(si)", "", 0);
    }
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof ip);
    return Py_BuildValue("(si)", ip, (int)ntohs(sa->sin_port));
}

static int call_addr(PyObject *fn, PyObject *addr, PyObject *now) {
    PyObject *r = now ? PyObject_CallFunctionObjArgs(fn, addr, now, NULL)
                      : PyObject_CallOneArg(fn, addr);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static void release_groups(Hot *self) {
    for (int g = 0; g < self->ngroups; g++) group_clear(&self->groups[g]);
    self->ngroups = 0;
    for (int c = 0; c < self->ncarries; c++) {
        Py_CLEAR(self->carries[c].rel);
        Py_CLEAR(self->carries[c].held);
    }
    self->ncarries = 0;
}

static PyObject *str_outbox;
static int core_list_nonempty(Hot *self, PyObject *name);

/* Hand datagram i of the receive batch to the Python path: slow(data, addr, now). Notices
 * it leaves in the core's outbox (of an eviction its sends caused) make the next datagram
 * Python's too, which sends them before relaying, as Worker._on_udp does. */
static int hand_over(Hot *self, int i, PyObject *now) {
    size_t slot = (size_t)self->max_datagram + 1;
    const char *d = self->buf + slot * (size_t)i;
    PyObject *data = PyBytes_FromStringAndSize(d, (Py_ssize_t)self->rhdr[i].msg_len);
    PyObject *addr = data ? address_of(&self->rname[i], self->rhdr[i].msg_hdr.msg_namelen) : NULL;
    if (!data || !addr) {
        Py_XDECREF(data);
        Py_XDECREF(addr);
        return -1;
    }
    self->slow_count++;
    PyObject *res = PyObject_CallFunctionObjArgs(self->slow, data, addr, now, NULL);
    Py_DECREF(data);
    Py_DECREF(addr);
    if (!res) return -1;
    Py_DECREF(res);
    int pending = core_list_nonempty(self, str_outbox);
    if (pending < 0) return -1;
    self->dirty = pending;
    return 0;
}

/* Undo the datagrams of groups[first:], latest first, whose deliveries were not sent:
 * their senders' buckets, last_seen and replay windows as before, and for a numbered chat
 * the room's next number, the sender's last id taken and held ACK (its entry was never
 * kept), and the held ACKs its deliveries were to carry. */
static int undo_groups(Hot *self, int first) {
    const Py_ssize_t *m = self->m;
    int c = self->ncarries - 1;
    for (int g = self->ngroups - 1; g >= first; g--) {
        Group *gr = &self->groups[g];
        for (; c >= 0 && self->carries[c].group == g; c--) /* its deliveries' carries */
            set_slot(self->carries[c].rel, self->l[L_HELD], self->carries[c].held);
        PyObject *a = PyFloat_FromDouble(gr->allowance), *st = PyFloat_FromDouble(gr->stamp);
        if (!a || !st) {
            Py_XDECREF(a);
            Py_XDECREF(st);
            return -1;
        }
        set_slot(gr->member, m[M_ALLOWANCE], a);
        set_slot(gr->member, m[M_STAMP], st);
        set_slot(gr->member, m[M_LAST_SEEN], gr->last_seen);
        if (gr->mac_top && gr->mac_seen) { /* Python must see this Seq as fresh again */
            set_slot(gr->member, m[M_MAC_TOP], gr->mac_top);
            set_slot(gr->member, m[M_MAC_SEEN], gr->mac_seen);
        }
        if (gr->history) {
            set_slot(gr->history, self->h[H_NEXT_SEQ], gr->next_seq);
            set_slot(gr->history, self->h[H_NOW], gr->hnow);
        }
        if (gr->rel) {
            set_slot(gr->rel, self->l[L_TOP], gr->top);
            set_slot(gr->rel, self->l[L_TOP_SEQ], gr->top_seq);
            set_slot(gr->rel, self->l[L_HELD], gr->held);
            set_slot(gr->rel, self->l[L_HELD_AT], gr->held_at);
        }
        Py_DECREF(a);
        Py_DECREF(st);
        self->fast--;
    }
    return 0;
}

static PyObject *str_keep, *str_append, *str_popleft;

/* An exact int slot of obj that fits a long long, into *out; 0 if it is not one. */
static int ll_slot(PyObject *obj, Py_ssize_t off, long long *out) {
    PyObject *v = SLOT(obj, off);
    if (!v || !PyLong_CheckExact(v)) return 0;
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* history.keep(seq, datagram, now) as History.keep does it while no limit calls for
 * clearing: drop the oldest entries while the count or the room's bytes would be over,
 * then append (seq, now, datagram) and charge its cost to the history and the worker's
 * budget. Where the worker's budget would be over (or the history's limits keep nothing,
 * or a slot is not what History makes) the rest is History.keep's own: called on the state
 * this leaves, it drops no entry for the count or room's bytes again. An empty history
 * holds no deque (``entries`` is ``()``): its first entry is History.keep's too. */
static int keep_entry(Hot *self, PyObject *history, PyObject *seq, PyObject *datagram,
                      PyObject *now) {
    const Py_ssize_t *h = self->h, *b = self->b;
    PyObject *entries = SLOT(history, h[H_ENTRIES]);
    PyObject *budget = SLOT(history, h[H_BUDGET]);
    long long max_messages, max_bytes, worker_bytes, used, bytes;
    long long cost = (long long)PyBytes_GET_SIZE(datagram) + self->entry_overhead;
    if (!entries || PyTuple_Check(entries) /* no deque yet: History.keep makes it */ ||
        !budget || !Py_IS_TYPE(budget, self->budget_type) ||
        !ll_slot(budget, b[B_MAX_MESSAGES], &max_messages) ||
        !ll_slot(budget, b[B_MAX_BYTES], &max_bytes) ||
        !ll_slot(budget, b[B_WORKER_BYTES], &worker_bytes) ||
        !ll_slot(budget, b[B_USED], &used) || !ll_slot(history, h[H_BYTES], &bytes) ||
        max_messages <= 0 || cost > max_bytes)
        goto python;
    Py_ssize_t n = PyObject_Size(entries);
    if (n < 0) return -1;
    int popped = 0;
    while (n && (n >= max_messages || bytes + cost > max_bytes)) {
        PyObject *old = PyObject_CallMethodNoArgs(entries, str_popleft);
        if (!old) return -1;
        PyObject *d = PyTuple_Check(old) && PyTuple_GET_SIZE(old) == 3
                          ? PyTuple_GET_ITEM(old, 2) : NULL;
        if (!d || !PyBytes_Check(d)) {
            Py_DECREF(old);
            PyErr_SetString(PyExc_TypeError, "a history entry must be (seq, when, bytes)");
            return -1;
        }
        long long c = (long long)PyBytes_GET_SIZE(d) + self->entry_overhead;
        Py_DECREF(old);
        bytes -= c;
        used -= c;
        n--;
        popped = 1;
    }
    if (used + cost > worker_bytes) { /* the worker's budget: History.keep's */
        if (popped) {
            PyObject *bo = PyLong_FromLongLong(bytes), *uo = PyLong_FromLongLong(used);
            if (!bo || !uo) {
                Py_XDECREF(bo);
                Py_XDECREF(uo);
                return -1;
            }
            set_slot(history, self->h[H_BYTES], bo);
            set_slot(budget, self->b[B_USED], uo);
            Py_DECREF(bo);
            Py_DECREF(uo);
        }
        goto python;
    }
    PyObject *entry = PyTuple_Pack(3, seq, now, datagram);
    PyObject *bo = PyLong_FromLongLong(bytes + cost), *uo = PyLong_FromLongLong(used + cost);
    PyObject *r = entry && bo && uo ? PyObject_CallMethodOneArg(entries, str_append, entry)
                                    : NULL;
    Py_XDECREF(entry);
    if (r) {
        Py_DECREF(r);
        set_slot(history, self->h[H_BYTES], bo);
        set_slot(budget, self->b[B_USED], uo);
    }
    Py_XDECREF(bo);
    Py_XDECREF(uo);
    return r ? 0 : -1;
python: {
    PyObject *res = PyObject_CallMethodObjArgs(history, str_keep, seq, datagram, now, NULL);
    if (!res) return -1;
    Py_DECREF(res);
    return 0;
}
}

/* Keep the numbered chats of groups[:count] in their rooms' histories, in order, as
 * History.number() does once it has numbered. */
static int keep_groups(Hot *self, int count, PyObject *now) {
    for (int g = 0; g < count; g++) {
        Group *gr = &self->groups[g];
        if (gr->history && keep_entry(self, gr->history, gr->seq, gr->datagram, now) < 0)
            return -1;
    }
    return 0;
}

/* Send the queued messages. Up to the first failed one this is the Python path's outcome
 * exactly, since each datagram was relayed here only while no address was failing. The
 * first failure ends the flush at the end of its datagram's deliveries (which Python
 * sends in full too); their failures are then reported in queue order with
 * core.handle_send_failure(addr, now), and each delivery that went through to a failing
 * address ends its streak (core.handle_send_success(addr)), as Worker._relay_batched does
 * (an ACK, a notice in Python, ends none). Before that report, the numbered chats of the
 * datagrams sent are kept, in order, and the datagrams queued after the failed one are
 * undone; after it, those are handed to Python in order, so that
 * an eviction (even of a host, which closes the room) acts on them as datagram by
 * datagram in Python; the next datagram goes to Python too (``dirty``), which sends the
 * eviction's notices first. Same errno rules as the Python fan-out. */
static int flush_out(Hot *self, PyObject *now) {
    int nout = self->nout, pos = 0, retried = -1, rc = 0, first_failed = -1, stop = nout;
    int rec = -1;
    if (!nout) { /* datagrams with no recipient: a numbered one is kept all the same */
        int rc = keep_groups(self, self->ngroups, now);
        release_groups(self);
        return rc;
    }
    memset(self->ofailed, 0, (size_t)nout);
    while (pos < stop) {
        int sent = sendmmsg(self->fd, self->out + pos, (unsigned)(stop - pos), MSG_DONTWAIT);
        if (sent > 0) {
            pos += sent;
            continue;
        }
        int e = errno;
        if (e == EINTR) continue;
        int whole = fatal_errno(e) || full_errno(e);
        if (!whole && retried != pos && e != EINVAL) {
            retried = pos;
            continue;
        }
        if (first_failed < 0) { /* the datagram of this delivery is the flush's last */
            first_failed = pos;
            for (rec = 0; rec < self->ngroups && self->groups[rec].end <= pos; rec++)
                ;
            if (rec < self->ngroups) stop = self->groups[rec].end;
        }
        if (whole) {
            if (fatal_errno(e) && warn(self, "sendmmsg", e) < 0) rc = -1;
            memset(self->ofailed + pos, 1, (size_t)(stop - pos));
            break;
        }
        self->ofailed[pos++] = 1;
    }
    self->nout = self->npairs = 0;
    /* The datagrams up to the failed one are done, as in Python before it reports that
     * send: their numbered chats are kept; the later ones are undone before the report
     * (which may number notices of an eviction), then handed to Python after it. */
    int done = first_failed >= 0 && rec < self->ngroups ? rec + 1 : self->ngroups;
    if (keep_groups(self, done, now) < 0 || undo_groups(self, done) < 0) rc = -1;
    if (rc == 0 && (first_failed >= 0 || PyDict_GET_SIZE(self->failing))) {
        for (int i = 0; i < stop && rc == 0; i++) {
            PyObject *addr = PyList_GET_ITEM(self->oside[i]->addrs, self->oidx[i]);
            if (self->ofailed[i]) {
                rc = call_addr(self->send_failed, addr, now);
            } else if (self->oack[i]) { /* Python's notices end no failure streak */
            } else if (PyDict_GET_SIZE(self->failing)) {
                int has = PyDict_Contains(self->failing, addr);
                if (has < 0) rc = -1;
                else if (has) rc = call_addr(self->send_ok, addr, NULL);
            }
        }
    }
    if (first_failed >= 0) self->dirty = 1;
    if (PyList_SetSlice(self->keep, 0, PyList_GET_SIZE(self->keep), NULL) < 0) rc = -1;
    for (int g = done; g < self->ngroups && rc == 0; g++)
        rc = hand_over(self, self->groups[g].index, now);
    release_groups(self);
    return rc < 0 ? -1 : first_failed >= 0;
}

/* A new iovec pair prefix + msg; it, the route and the prefix live until the next flush. */
static struct iovec *new_pair(Hot *self, Route *route, PyObject *prefix, const char *msg,
                              Py_ssize_t mlen) {
    if (PyList_Append(self->keep, (PyObject *)route) < 0 ||
        PyList_Append(self->keep, prefix) < 0)
        return NULL;
    struct iovec *iov = &self->oiov[2 * self->npairs++];
    iov[0].iov_base = PyBytes_AS_STRING(prefix);
    iov[0].iov_len = (size_t)PyBytes_GET_SIZE(prefix);
    iov[1].iov_base = (void *)msg;
    iov[1].iov_len = (size_t)mlen;
    return iov;
}

/* Queue the pair iov to entry j of side s (ack: an ocm1r ACK, see oack). */
static void push_out(Hot *self, Side *s, Py_ssize_t j, struct iovec *iov, int ack) {
    int o = self->nout++;
    self->out[o].msg_hdr.msg_name = &s->names[j];
    self->out[o].msg_hdr.msg_iov = iov;
    self->oside[o] = s;
    self->oidx[o] = j;
    self->oack[o] = (unsigned char)ack;
}

/* Is entry j of side s the sender's: index k, or (k = -1, the other side) the first entry
 * at the sender's address *src (then *src is cleared: only the first is skipped)? */
static inline int skipped(const Side *s, Py_ssize_t j, Py_ssize_t k,
                          const struct sockaddr_in **src) {
    if (j == k) return 1;
    if (*src && s->names[j].sin_port == (*src)->sin_port &&
        s->names[j].sin_addr.s_addr == (*src)->sin_addr.s_addr) {
        *src = NULL;
        return 1;
    }
    return 0;
}

/* Queue prefix + message to every recipient of one side but index k (the sender's own
 * side) or, on the other side (k = -1), the first entry at the sender's address ``src``:
 * Python skips the sender's address on both sides. A side larger than the queue is sent
 * in several flushes (try_fast flushes before a datagram that does not fit). */
static int queue_side(Hot *self, Route *route, Side *s, Py_ssize_t k,
                      const struct sockaddr_in *src, PyObject *prefix, const char *msg,
                      Py_ssize_t mlen, PyObject *now) {
    struct iovec *iov = NULL;
    for (Py_ssize_t j = 0; j < s->n; j++) {
        if (skipped(s, j, k, &src)) continue;
        if (self->nout == OUT_SLOTS) {
            if (flush_out(self, now) < 0) return -1;
            iov = NULL;
        }
        if (!iov && !(iov = new_pair(self, route, prefix, msg, mlen))) return -1;
        push_out(self, s, j, iov, 0);
    }
    return 0;
}

/* Queue ``payload`` alone to entry k of side s: an ocm1r sender's ACK, which Python sends
 * as a notice (its send ends no failure streak). The caller made room in the queue. */
static int queue_ack(Hot *self, Route *route, Side *s, Py_ssize_t k, PyObject *payload) {
    struct iovec *iov = new_pair(self, route, payload, NULL, 0);
    if (!iov) return -1;
    push_out(self, s, k, iov, 1);
    return 0;
}

/* Queue a numbered ``datagram`` to every entry of side s (the room's ocm1r members) but
 * index k (the sender's own) or, for a sender that is not ocm1r (k = -1), the first entry
 * at its address ``src``, as queue_side does; an entry whose Reliable holds an ACK gets it
 * in front of the datagram (taken off the Reliable, recorded in carries for an undo), or
 * alone before it where both would be too long: RelayCore.carry. The caller made room in
 * the queue: two entries for each member if the datagram is that long. */
static int queue_numbered(Hot *self, Route *route, Side *s, Py_ssize_t k,
                          const struct sockaddr_in *src, PyObject *datagram) {
    struct iovec *iov = NULL;
    const char *d = PyBytes_AS_STRING(datagram);
    Py_ssize_t dlen = PyBytes_GET_SIZE(datagram);
    for (Py_ssize_t j = 0; j < s->n; j++) {
        if (skipped(s, j, k, &src)) continue;
        PyObject *member = PyList_GET_ITEM(s->members, j);
        PyObject *rel = Py_IS_TYPE(member, self->member_type) ? SLOT(member, self->m[M_REL])
                                                               : NULL;
        PyObject *held = rel && Py_IS_TYPE(rel, self->reliable_type)
                             ? SLOT(rel, self->l[L_HELD]) : NULL;
        if (!held || !PyBytes_CheckExact(held) || PyBytes_GET_SIZE(held) != CARRIED_BYTES) {
            if (!iov && !(iov = new_pair(self, route, datagram, "", 0))) return -1;
            push_out(self, s, j, iov, 0);
            continue;
        }
        Carry *c = &self->carries[self->ncarries++];
        c->rel = Py_NewRef(rel);
        c->held = Py_NewRef(held);
        c->group = self->ngroups;
        set_slot(rel, self->l[L_HELD], Py_None);
        if (CARRIED_BYTES + dlen <= self->max_delivery) {
            struct iovec *own = new_pair(self, route, held, d, dlen);
            if (!own || PyList_Append(self->keep, datagram) < 0) return -1;
            push_out(self, s, j, own, 0);
            continue;
        }
        /* 02 Epoch MsgId Seq: the datagram's epoch, the held MsgId and Seq */
        unsigned char a[ACK_BYTES] = {2};
        memcpy(a + 1, d + 1, 4);
        memcpy(a + 5, PyBytes_AS_STRING(held) + 1, 8);
        PyObject *ack = PyBytes_FromStringAndSize((const char *)a, ACK_BYTES);
        if (!ack) return -1;
        int rc = queue_ack(self, route, s, j, ack);
        Py_DECREF(ack);
        if (rc < 0 || (!iov && !(iov = new_pair(self, route, datagram, "", 0)))) return -1;
        push_out(self, s, j, iov, 0);
    }
    return 0;
}

/* The route of a room, current for its generation: from the cache (``routes``, by room
 * name, which the worker empties of closed rooms), else built from the room's address
 * lists and cached. */
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
    PyObject *plain = SLOT(room, self->r[R_PLAIN_ADDRS]);
    PyObject *framed = SLOT(room, self->r[R_FRAMED_ADDRS]);
    PyObject *numbered = SLOT(room, self->r[R_RELIABLE_ADDRS]);
    PyObject *members = SLOT(room, self->r[R_RELIABLE]);
    if (!plain || !framed || !numbered || !members) return NULL;
    if (!PyList_CheckExact(members) || !PyList_CheckExact(numbered) ||
        PyList_GET_SIZE(members) != PyList_GET_SIZE(numbered)) {
        PyErr_SetString(PyExc_TypeError, "room.reliable must list reliable_addrs' members");
        return NULL;
    }
    Route *built = (Route *)PyType_GenericNew(&RouteType, NULL, NULL);
    if (!built) return NULL;
    built->generation = g;
    if (side_init(&built->side[0], plain) < 0 || side_init(&built->side[1], framed) < 0 ||
        side_init(&built->side[2], numbered) < 0 ||
        !(built->side[2].members = Py_NewRef(members)) ||
        PyDict_SetItem(self->routes, name, (PyObject *)built) < 0) {
        Py_DECREF(built);
        return NULL;
    }
    return built;
}

/* ocm1r (relay/history.py, wire/reliable.py): the numbered datagram 01 Epoch Seq Body, the
 * SEND 01 MsgId Text of an ocm1r member, the ACK 02 Epoch MsgId Seq it gets. */
#define DATA_HEADER_BYTES 9
#define SEND_HEADER_BYTES 5
#define MAX_SEQ 0xFFFFFFFFULL

static void put_u32(unsigned char *p, unsigned long long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* An exact int slot of obj, 0..MAX_SEQ, into *out; 0 if it is not one. */
static int u32_slot(PyObject *obj, Py_ssize_t off, unsigned long long *out) {
    PyObject *v = SLOT(obj, off);
    if (!v || !PyLong_CheckExact(v)) return 0;
    *out = PyLong_AsUnsignedLongLong(v);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return *out <= MAX_SEQ;
}

/* 1: relayed here; 0: the Python path must take it; -1: error set. */
static int try_fast(Hot *self, int index, const unsigned char *d, Py_ssize_t len,
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
    /* A numbered room (one with an ocm1r member, docs/protocol.md §9) numbers every chat
     * (RelayCore._number): taken here, plain or encrypted, from a member that is not ocm1r or
     * from an ocm1r member's SEND with the next MsgId (copies, gaps, NACKs, keepalives and
     * an ocm1r member's other datagrams are Python's). */
    PyObject *history = SLOT(room, r[R_HISTORY]);
    PyObject *rel = SLOT(member, m[M_REL]);
    if (!history || !rel) return 0;
    if (history == Py_None) history = NULL;
    else if (!Py_IS_TYPE(history, self->history_type)) return 0;
    if (rel == Py_None) rel = NULL;
    else if (!history || !Py_IS_TYPE(rel, self->reliable_type)) return 0;
    /* A member with a datagram key (wire/dgmac.py): here only a Seq above its window, with
     * the tag verified before anything is written; a late Seq, a replay, a bad tag, a
     * keepalive are Python's. From here on len excludes the trailer. */
    PyObject *mac_key = SLOT(member, m[M_MAC_KEY]);
    PyObject *mac_top = NULL, *mac_seen = NULL;
    unsigned long long seq = 0, top = 0, window = 0;
    const Py_ssize_t sealed_len = len;
    if (mac_key != Py_None) {
        mac_top = SLOT(member, m[M_MAC_TOP]);
        mac_seen = SLOT(member, m[M_MAC_SEEN]);
        if (!mac_key || !PyBytes_CheckExact(mac_key) ||
            PyBytes_GET_SIZE(mac_key) != MAC_KEY_BYTES || !mac_top ||
            !PyLong_CheckExact(mac_top) || !mac_seen || !PyLong_CheckExact(mac_seen))
            return 0;
        if (len - MAC_TRAILER_BYTES <= start) return 0;
        top = PyLong_AsUnsignedLongLong(mac_top);
        window = PyLong_AsUnsignedLongLong(mac_seen);
        if (PyErr_Occurred()) { /* beyond 64 bits (the core never makes them so): Python's */
            PyErr_Clear();
            return 0;
        }
        const unsigned char *s = d + len - MAC_TRAILER_BYTES;
        for (int i = 0; i < MAC_SEQ_BYTES; i++) seq = seq << 8 | s[i];
        if (seq <= top) return 0;
        len -= MAC_TRAILER_BYTES;
    }
    if (SLOT(member, m[M_TRIAL]) != Py_False) return 0;
    PyObject *trial = SLOT(room, r[R_TRIAL]);
    if (!trial || !PyList_CheckExact(trial) || PyList_GET_SIZE(trial) != 0) return 0;
    if (PyDict_GET_SIZE(self->failing) != 0 || self->dirty) return 0;
    const unsigned char *msg = d + start;
    Py_ssize_t mlen = len - start;
    PyObject *e2e = SLOT(room, r[R_E2E]);
    unsigned long long msg_id = 0, rel_top = 0, rel_top_seq = 0;
    int hold = 0; /* a 06 SEND: its ACK is held for a DATA to carry */
    if (rel) { /* RelayCore._handle_reliable: UTF-8 text, no /exit test; in an encrypted
                * room a Message of the chat kind, opaque past that byte */
        if (mlen <= SEND_HEADER_BYTES || (msg[0] != 1 && msg[0] != SEND_HELD)) return 0;
        hold = msg[0] == SEND_HELD;
        if (!u32_slot(rel, self->l[L_TOP], &rel_top) ||
            !u32_slot(rel, self->l[L_TOP_SEQ], &rel_top_seq))
            return 0;
        for (int i = 1; i < SEND_HEADER_BYTES; i++) msg_id = msg_id << 8 | msg[i];
        if (msg_id != rel_top + 1) return 0;
        msg += SEND_HEADER_BYTES;
        mlen -= SEND_HEADER_BYTES;
        if (e2e == Py_True) {
            if (msg[0] != self->chat_kind) return 0; /* Python counts bad_kind */
        } else if (e2e != Py_False || !utf8_valid(msg, mlen)) {
            return 0;
        }
    } else if (e2e == Py_True) {
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
    if (rel && !framed) return 0;
    PyObject *allowance_obj = SLOT(member, m[M_ALLOWANCE]);
    PyObject *stamp_obj = SLOT(member, m[M_STAMP]);
    PyObject *pp = SLOT(member, m[M_PLAIN_PREFIX]);
    PyObject *fp = SLOT(member, m[M_FRAMED_PREFIX]);
    PyObject *addr = SLOT(member, m[M_ADDR]);
    PyObject *seen = SLOT(member, m[M_LAST_SEEN]);
    if (!allowance_obj || !stamp_obj || !PyFloat_CheckExact(allowance_obj) ||
        !PyFloat_CheckExact(stamp_obj) || !pp || !fp || !PyBytes_CheckExact(pp) ||
        !PyBytes_CheckExact(fp) || !addr || !seen)
        return 0;
    unsigned long long epoch = 0, next_seq = 0;
    PyObject *hnow = NULL;
    if (history) {
        hnow = SLOT(history, self->h[H_NOW]);
        if (!u32_slot(history, self->h[H_EPOCH], &epoch) ||
            !u32_slot(history, self->h[H_NEXT_SEQ], &next_seq) || next_seq >= MAX_SEQ ||
            !next_seq || !hnow)
            return 0;
    }
    /* The same arithmetic, in the same order, as RelayCore._chat (built without FP
     * contraction), so that both paths charge identically. */
    double allowance = PyFloat_AS_DOUBLE(allowance_obj) + (now - PyFloat_AS_DOUBLE(stamp_obj)) * rate;
    if (allowance > burst) allowance = burst;
    if (allowance < 1.0) return 0; /* rate-limited: Python counts it */
    Route *route = route_of(self, room);
    if (!route) return PyErr_Occurred() ? -1 : 0;
    Side *own = &route->side[rel ? 2 : framed];
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
    /* An ocm1r sender is in neither of the other lists (Room.rebuild). */
    Py_ssize_t n_plain = route->side[0].n - !framed;
    Py_ssize_t n_framed = route->side[1].n - (framed && !rel);
    Py_ssize_t longest = n_plain ? PyBytes_GET_SIZE(pp) + mlen
                                 : n_framed ? PyBytes_GET_SIZE(fp) + mlen : 0;
    Py_ssize_t body = PyBytes_GET_SIZE(fp) + mlen;
    Py_ssize_t queued = route->side[0].n + route->side[1].n;
    if (history) /* its ack and numbered deliveries (an ACK alone before each one, if a
                  * held one would make it too long); it must fit the queue (no flush) */
        queued += 1 + route->side[2].n *
                          (CARRIED_BYTES + DATA_HEADER_BYTES + body > self->max_delivery ? 2 : 1);
    if (longest > self->max_delivery || /* Python notifies the sender */
        (history && (DATA_HEADER_BYTES + body > self->max_delivery || /* Python skips a Seq */
                     queued > OUT_SLOTS))) {
        Py_DECREF(route);
        return 0;
    }
    if (mac_top && !mac_verify(self->mac, (const unsigned char *)PyBytes_AS_STRING(mac_key), d,
                               sealed_len)) { /* Python counts bad_mac */
        Py_DECREF(route);
        return 0;
    }
    /* A datagram whose deliveries do not fit in the queue starts a new one; if that
     * flush failed a send, Python takes this datagram (the state may have changed). */
    if (self->nout && self->nout + queued > OUT_SLOTS) {
        int f = flush_out(self, now_obj);
        if (f != 0) {
            Py_DECREF(route);
            return f < 0 ? -1 : 0;
        }
    }
    /* Everything that can fail is made before the first write. A numbered chat: the
     * datagram History.number() would return (kept at the flush), the new next_seq, and
     * for an ocm1r sender the ACK and its id. */
    PyObject *left = PyFloat_FromDouble(allowance - 1.0);
    PyObject *new_top = NULL, *new_seen = NULL, *datagram = NULL, *seq_obj = NULL;
    PyObject *next_obj = NULL, *ack = NULL, *id_obj = NULL;
    int failed = !left;
    if (mac_top && !failed) { /* wire.dgmac.advance for a Seq above the window */
        unsigned long long shift = seq - top; /* (a 64-bit shift = mask) */
        new_top = PyLong_FromUnsignedLongLong(seq);
        new_seen = PyLong_FromUnsignedLongLong(shift < 64 ? window << shift | 1ULL : 1ULL);
        failed = !new_top || !new_seen;
    }
    if (history && !failed) {
        datagram = PyBytes_FromStringAndSize(NULL, DATA_HEADER_BYTES + body);
        seq_obj = PyLong_FromUnsignedLongLong(next_seq);
        next_obj = PyLong_FromUnsignedLongLong(next_seq + 1);
        failed = !datagram || !seq_obj || !next_obj;
        if (!failed) {
            unsigned char *p = (unsigned char *)PyBytes_AS_STRING(datagram);
            p[0] = 1;
            put_u32(p + 1, epoch);
            put_u32(p + 5, next_seq);
            memcpy(p + DATA_HEADER_BYTES, PyBytes_AS_STRING(fp), (size_t)PyBytes_GET_SIZE(fp));
            memcpy(p + DATA_HEADER_BYTES + PyBytes_GET_SIZE(fp), msg, (size_t)mlen);
        }
    }
    if (rel && !failed) { /* the ACK, or for a 06 SEND the held one (06 MsgId Seq) and the
                           * entry of core.held that lists it */
        unsigned char a[ACK_BYTES] = {2};
        put_u32(a + 1, epoch);
        put_u32(a + 5, msg_id);
        put_u32(a + 9, next_seq);
        if (hold) {
            a[4] = SEND_HELD;
            ack = PyBytes_FromStringAndSize((const char *)a + 4, CARRIED_BYTES);
        } else {
            ack = PyBytes_FromStringAndSize((const char *)a, ACK_BYTES);
        }
        id_obj = PyLong_FromUnsignedLongLong(msg_id);
        failed = !ack || !id_obj;
    }
    if (failed) {
        Py_XDECREF(left);
        Py_XDECREF(new_top);
        Py_XDECREF(new_seen);
        Py_XDECREF(datagram);
        Py_XDECREF(seq_obj);
        Py_XDECREF(next_obj);
        Py_XDECREF(ack);
        Py_XDECREF(id_obj);
        Py_DECREF(route);
        return -1;
    }
    Group g; /* what undoing it takes, recorded once it is queued */
    memset(&g, 0, sizeof g);
    Group *group = &g;
    if (mac_top) { /* the old window, for an undo (undo_groups) */
        group->mac_top = Py_NewRef(mac_top);
        group->mac_seen = Py_NewRef(mac_seen);
        set_slot(member, m[M_MAC_TOP], new_top);
        set_slot(member, m[M_MAC_SEEN], new_seen);
        Py_DECREF(new_top);
        Py_DECREF(new_seen);
    }
    if (history) { /* History.number(): the next Seq, and the time it was given */
        group->history = Py_NewRef(history);
        group->datagram = datagram; /* the references made above */
        group->seq = seq_obj;
        group->next_seq = Py_NewRef(SLOT(history, self->h[H_NEXT_SEQ]));
        group->hnow = Py_NewRef(hnow);
        set_slot(history, self->h[H_NEXT_SEQ], next_obj);
        set_slot(history, self->h[H_NOW], now_obj);
        Py_DECREF(next_obj);
    }
    if (rel) { /* rel.top, rel.top_seq = msg_id, seq; the ACK held, or sent (which
                * covers one held before) */
        group->rel = Py_NewRef(rel);
        group->top = Py_NewRef(SLOT(rel, self->l[L_TOP]));
        group->top_seq = Py_NewRef(SLOT(rel, self->l[L_TOP_SEQ]));
        group->held = Py_NewRef(SLOT(rel, self->l[L_HELD]));
        group->held_at = Py_NewRef(SLOT(rel, self->l[L_HELD_AT]));
        set_slot(rel, self->l[L_TOP], id_obj);
        set_slot(rel, self->l[L_TOP_SEQ], seq_obj);
        Py_DECREF(id_obj);
        if (hold) {
            set_slot(rel, self->l[L_HELD], ack);
            set_slot(rel, self->l[L_HELD_AT], now_obj);
            Py_CLEAR(ack);
        } else {
            set_slot(rel, self->l[L_HELD], Py_None);
        }
    }
    double old_allowance = PyFloat_AS_DOUBLE(allowance_obj);
    double old_stamp = PyFloat_AS_DOUBLE(stamp_obj);
    set_slot(member, m[M_ALLOWANCE], left);
    Py_DECREF(left);
    set_slot(member, m[M_STAMP], now_obj);
    group->last_seen = Py_NewRef(seen);
    set_slot(member, m[M_LAST_SEEN], now_obj);
    self->fast++;
    /* Queued: the batch keeps the route and the prefixes until the flush, and msg stays in
     * the receive buffer until then (the flush comes before the next recvmmsg). A flush
     * while queueing (the queue is full: never for a numbered chat, which fits) may report
     * failures that evict members, even the sender: hold the prefixes until all sides are
     * queued. Python's order: the ACK (a notice, sent first), plain, framed, numbered. */
    Py_INCREF(pp);
    Py_INCREF(fp);
    group->member = Py_NewRef(member);
    group->allowance = old_allowance;
    group->stamp = old_stamp;
    group->index = index;
    int rc = 0;
    if (ack) {
        rc = queue_ack(self, route, own, k, ack);
        Py_DECREF(ack);
    }
    if (rc >= 0 && n_plain)
        rc = queue_side(self, route, &route->side[0], framed ? -1 : k, framed ? src : NULL,
                        pp, (const char *)msg, mlen, now_obj);
    if (rc >= 0 && n_framed)
        rc = queue_side(self, route, &route->side[1], framed && !rel ? k : -1,
                        framed && !rel ? NULL : src, fp, (const char *)msg, mlen, now_obj);
    if (rc >= 0 && history)
        rc = queue_numbered(self, route, &route->side[2], rel ? k : -1, rel ? NULL : src,
                            datagram);
    /* Listed once queued (an entry left by an undo is skipped by release_held): the member
     * and the time in two lists, no pair object for the garbage collector to track. */
    if (rc >= 0 && hold) {
        rc = PyList_Append(self->held, member);
        if (rc >= 0 && (rc = PyList_Append(self->held_times, now_obj)) < 0) {
            Py_ssize_t n = PyList_GET_SIZE(self->held); /* the lists stay in step */
            PyList_SetSlice(self->held, n - 1, n, NULL);
        }
    }
    /* Recorded once queued (a flush while queueing, of a datagram larger than the queue,
     * never undoes the datagram being queued: Python sends all of it too). */
    g.end = self->nout;
    self->groups[self->ngroups++] = g; /* one per datagram of the batch */
    Py_DECREF(pp);
    Py_DECREF(fp);
    Py_DECREF(route);
    return rc < 0 ? -1 : 1;
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

/* The loop of on_readable(): datagrams read into *nread and relayed here into
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
    /* Notices left by a flush outside this loop (a timer's, or after() whose sends failed
     * and evicted) go out before the next datagram's deliveries: Python's, as in
     * Worker._on_udp. */
    int pending = core_list_nonempty(self, str_outbox);
    if (pending < 0) return -1;
    self->dirty = pending;
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
            int rc = try_fast(self, i, d, len, &self->rname[i],
                              self->rhdr[i].msg_hdr.msg_namelen, now, now_obj, rate, burst);
            if (rc < 0) goto error;
            if (rc) continue;
            if (flush_out(self, now_obj) < 0) goto error; /* keep the order of sends */
            if (hand_over(self, i, now_obj) < 0) goto error;
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

static PyObject *mod_blake2s_mac(PyObject *mod, PyObject *args) {
    (void)mod;
    Py_buffer key, data;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y*y*n", &key, &data, &size)) return NULL;
    PyObject *res = NULL;
    EVP_MAC_CTX *ctx = NULL;
    unsigned char out[32];
    if (size < 1 || size > 32 || key.len < 1 || key.len > 32) {
        PyErr_SetString(PyExc_ValueError, "size and key length must be 1..32");
    } else if ((ctx = new_mac_ctx((size_t)size)) != NULL) {
        if (blake2s_mac(ctx, key.buf, (size_t)key.len, data.buf, (size_t)data.len, out,
                        (size_t)size) < 0)
            PyErr_SetString(PyExc_RuntimeError, "EVP_MAC BLAKE2SMAC failed");
        else
            res = PyBytes_FromStringAndSize((const char *)out, size);
        EVP_MAC_CTX_free(ctx);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&data);
    return res;
}

static PyMethodDef module_methods[] = {
    {"utf8_valid", mod_utf8_valid, METH_O,
     "utf8_valid(data) -> bool: the hot loop's UTF-8 check (for the tests)."},
    {"blake2s_mac", mod_blake2s_mac, METH_VARARGS,
     "blake2s_mac(key, data, size) -> bytes: the hot loop's keyed BLAKE2s (for the tests)."},
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
        !(str_keep = PyUnicode_InternFromString("keep")) ||
        !(str_append = PyUnicode_InternFromString("append")) ||
        !(str_popleft = PyUnicode_InternFromString("popleft")))
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&RouteType);
    Py_INCREF(&HotType);
    if (PyModule_AddObject(m, "Route", (PyObject *)&RouteType) < 0 ||
        PyModule_AddObject(m, "Hot", (PyObject *)&HotType) < 0 ||
        PyModule_AddIntConstant(m, "MAC_TRAILER_BYTES", MAC_TRAILER_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "MAC_TAG_BYTES", MAC_TAG_BYTES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
