/* The `ocm-loadgen --loss` receive path in C: the common case of an `ocm1r` delivery read
 * from the loss engine's shared socket (loadgen/lossy.py, loadgen/lossyfast.py).
 *
 * An optional extension module (loadgen._reliable), compiled at install time (setup.py);
 * loadgen/lossyfast.py fills the batch descriptor below (a ctypes Structure of the same
 * layout) and calls receive(descriptor) after each recvmmsg.
 *
 * For each datagram, in order:
 *   - its destination IP (IP_PKTINFO) names the member, 127.(100+proc).block.(host+1);
 *     an address that is no member's (or control data that is not a pktinfo message) is
 *     counted in `stray`;
 *   - a member in its outage (state OUT) drops it (`outage_dropped`);
 *   - the loss: one draw of the xorshift64* generator `rng`, dropped if its top 53 bits
 *     are below `loss_thresh` (`dropped_in`); a datagram kept sets the member's `heard`
 *     to `now_us`;
 *   - a member whose receiver is clean (state C: known epoch and next Seq, nothing held,
 *     nothing missing) gets a DATA `01 Epoch Seq` + ocm1 chat `ULen User "S N T.TTTTTT"`
 *     with that epoch and Seq == next, from another member S of its room whose message
 *     number N is the next one expected from S (nexp) and whose pair is not left to Python
 *     (pdirty): the delivery is counted, its latency now - T (µs, at least 1) recorded,
 *     next and nexp advanced. That is what client.reliable.ReliableChat and the engine's
 *     show() do for it;
 *   - anything else (ACK, SYNC, LOST, notices, a gap, a duplicate, another epoch, a text of
 *     another shape, a member whose receiver Python holds, or a batch outside the counted
 *     window) is listed in `slow` (with its member in `slow_lm`) and its member's state set
 *     to PY, so that its later datagrams follow it to Python, in order. Python takes the
 *     receiver over (epoch, next) and hands it back (state C) once it is clean again.
 *
 * send_batch(fd, items) sends the engine's outgoing datagrams of one loop iteration with
 * sendmmsg: each item (payload, source IP, destination IP, destination port) leaves from
 * its member's address (an IP_PKTINFO control message), as transport.SharedSocket's
 * senders do one at a time.
 *
 * Buffer layouts are those of runtime/mmsg.py's RecvBatch(pktinfo=True) on LP64 Linux:
 * mmsghdr 64 bytes (msg_controllen u64 @40, msg_flags i32 @48, msg_len u32 @56); a control
 * slot of 32 bytes per datagram holding an IP_PKTINFO cmsg (level i32 @8, type i32 @12,
 * ipi_addr @24).
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define IPPROTO_IP_ 0
#define IP_PKTINFO_ 8
#define MSG_TRUNC_ 0x20
#define SLOT 32
#define DATA_HEADER 9
#define MAX_DELIVERY 4094

#define ST_C 0
#define ST_PY 1
#define ST_OUT 2

typedef struct {
    /* the receive batch */
    const uint8_t *data;    /* datagram i at data + i * stride */
    int64_t stride;
    const uint8_t *hdrs;    /* mmsghdr array */
    const uint8_t *ctrl;    /* control slots, SLOT bytes each */
    int64_t n;
    /* member addresses: 127.(100 + proc).block.(host + 1), member = block * hosts + host */
    uint32_t ip_base;
    int64_t members;
    int64_t hosts_per_block;
    int64_t users;          /* per room; member lm is user lm % users of its room */
    int64_t base_g;         /* the global index of local member 0 (sender numbers are global) */
    /* per member */
    uint8_t *state;         /* ST_C, ST_PY, ST_OUT */
    uint32_t *epoch;
    int64_t *next;          /* the next Seq to emit (state ST_C only) */
    /* per (member, sender of its room) */
    int64_t *nexp;          /* the next message number expected */
    uint8_t *pdirty;        /* set by Python: this pair has numbers ahead of nexp */
    /* latencies: per-µs counts below `direct`, the others listed in `over` */
    int64_t *lat;
    int64_t direct;
    int64_t *over;
    int64_t over_cap;
    /* the loss */
    uint64_t rng;           /* xorshift64* state, never 0 */
    uint64_t loss_thresh;   /* drop if (draw >> 11) < loss_thresh */
    /* this batch */
    int64_t now_us;         /* CLOCK_MONOTONIC when it was read */
    int64_t counting;       /* within the counted window (deliveries are counted) */
    /* results of this batch */
    int32_t *slow;          /* indexes left to Python, in order */
    int32_t *slow_lm;       /* and their members */
    int64_t n_slow;
    int64_t n_over;
    int64_t delivered;
    int64_t dropped_in;
    int64_t outage_dropped;
    int64_t stray;
    /* per member: now_us of the last datagram kept by the loss (the keepalive rule) */
    int64_t *heard;
} loss_batch;

static inline uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int32_t i32_at(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline int64_t i64_at(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t draw(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Decimal digits from *p up to `stop` (at least 1, at most 15): the value, or -1. */
static inline int64_t digits(const uint8_t **p, const uint8_t *end, uint8_t stop)
{
    const uint8_t *q = *p;
    int64_t v = 0;
    int count = 0;
    while (q < end && *q != stop) {
        unsigned d = (unsigned)*q - '0';
        if (d > 9 || ++count > 15)
            return -1;
        v = v * 10 + d;
        q++;
    }
    if (count == 0)
        return -1;
    *p = q;
    return v;
}

/* 1 if the kept datagram d (len bytes) for member lm was handled here, 0 if not. */
static int fast_one(loss_batch *b, int64_t lm, const uint8_t *d, int64_t len)
{
    if (len <= DATA_HEADER || len > MAX_DELIVERY || d[0] != 1)
        return 0;
    if (be32(d + 1) != b->epoch[lm] || (int64_t)be32(d + 5) != b->next[lm])
        return 0;
    const uint8_t *body = d + DATA_HEADER, *end = d + len;
    int64_t ulen = body[0];
    if (ulen == 0 || 1 + ulen > end - body)
        return 0;
    for (int64_t i = 1; i <= ulen; i++)
        if (body[i] >= 0x80)  /* ASCII names only: Python checks the rest */
            return 0;
    const uint8_t *p = body + 1 + ulen;
    int64_t sender = digits(&p, end, ' ');
    if (sender < 0 || p >= end)
        return 0;
    p++;
    int64_t number = digits(&p, end, ' ');
    if (number < 0 || p >= end)
        return 0;
    p++;
    int64_t sec = digits(&p, end, '.');
    if (sec < 0 || end - p != 7)
        return 0;
    p++;
    const uint8_t *frac_at = p;
    int64_t frac = digits(&p, end, 0);
    if (frac < 0 || p - frac_at != 6)
        return 0;
    int64_t users = b->users;
    int64_t s = sender - b->base_g - (lm - lm % users);
    if (s < 0 || s >= users || s == lm % users)
        return 0;
    int64_t k = lm * users + s;
    if (b->pdirty[k] || number != b->nexp[k])
        return 0;
    int64_t lat = b->now_us - (sec * 1000000 + frac);
    if (lat < 1)
        lat = 1;
    if (lat < b->direct) {
        b->lat[lat] += 1;
    } else {
        if (b->n_over >= b->over_cap)
            return 0;
        b->over[b->n_over++] = lat;
    }
    b->nexp[k] = number + 1;
    b->next[lm] += 1;
    b->delivered += 1;
    return 1;
}

static void receive_batch(loss_batch *b)
{
    b->n_slow = b->n_over = b->delivered = 0;
    b->dropped_in = b->outage_dropped = b->stray = 0;
    for (int64_t i = 0; i < b->n; i++) {
        const uint8_t *h = b->hdrs + i * 64;
        const uint8_t *c = b->ctrl + i * SLOT;
        if (i64_at(h + 40) != SLOT || (i32_at(h + 48) & MSG_TRUNC_)
            || i32_at(c + 8) != IPPROTO_IP_ || i32_at(c + 12) != IP_PKTINFO_) {
            b->stray += 1;
            continue;
        }
        uint32_t dest = be32(c + 24);
        int64_t host = dest & 0xff;
        int64_t lm = ((dest >> 8) & 0xff) * b->hosts_per_block + host - 1;
        if ((dest & 0xffff0000u) != b->ip_base || host < 1 || host > b->hosts_per_block
            || lm >= b->members) {
            b->stray += 1;
            continue;
        }
        if (b->state[lm] == ST_OUT) {
            b->outage_dropped += 1;
            continue;
        }
        if ((draw(&b->rng) >> 11) < b->loss_thresh) {
            b->dropped_in += 1;
            continue;
        }
        b->heard[lm] = b->now_us;
        if (b->state[lm] == ST_C && b->counting
            && fast_one(b, lm, b->data + i * b->stride, (int64_t)u32_at(h + 56)))
            continue;
        b->state[lm] = ST_PY;
        b->slow[b->n_slow] = (int32_t)i;
        b->slow_lm[b->n_slow++] = (int32_t)lm;
    }
}

/* receive(descriptor): descriptor is a writable buffer of exactly sizeof(loss_batch)
 * bytes (lossyfast._Batch); the results are written into it. Returns n_slow. */
static PyObject *receive(PyObject *module, PyObject *descriptor)
{
    Py_buffer view;
    (void)module;
    if (PyObject_GetBuffer(descriptor, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len != (Py_ssize_t)sizeof(loss_batch)) {
        PyErr_Format(PyExc_ValueError, "batch descriptor of %zd bytes, expected %zu",
                     view.len, sizeof(loss_batch));
        PyBuffer_Release(&view);
        return NULL;
    }
    loss_batch *b = (loss_batch *)view.buf;
    receive_batch(b);
    int64_t n_slow = b->n_slow;
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(n_slow);
}

#define SEND_MAX 128

/* send_batch(fd, items): items is a list of (payload: bytes, src: 4 bytes, dst: 4 bytes,
 * port: int). Returns how many could not be sent (each failing one is skipped). */
static PyObject *send_batch(PyObject *module, PyObject *args)
{
    int fd;
    PyObject *items;
    (void)module;
    if (!PyArg_ParseTuple(args, "iO!", &fd, &PyList_Type, &items))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items), done = 0, failed = 0;
    struct mmsghdr hdrs[SEND_MAX];
    struct iovec iovs[SEND_MAX];
    struct sockaddr_in names[SEND_MAX];
    union {
        char buf[CMSG_SPACE(sizeof(struct in_pktinfo))];
        struct cmsghdr align;
    } ctrl[SEND_MAX];
    while (done < n) {
        int k = 0;
        for (; k < SEND_MAX && done + k < n; k++) {
            PyObject *item = PyList_GET_ITEM(items, done + k);
            const char *payload, *src, *dst;
            Py_ssize_t plen, slen, dlen;
            int port;
            if (!PyTuple_Check(item) || !PyArg_ParseTuple(item, "y#y#y#i", &payload, &plen,
                                                          &src, &slen, &dst, &dlen, &port))
                return NULL;
            if (slen != 4 || dlen != 4 || port < 0 || port > 65535) {
                PyErr_SetString(PyExc_ValueError, "addresses are 4 bytes, ports 0..65535");
                return NULL;
            }
            memset(&names[k], 0, sizeof names[k]);
            names[k].sin_family = AF_INET;
            names[k].sin_port = htons((uint16_t)port);
            memcpy(&names[k].sin_addr, dst, 4);
            iovs[k].iov_base = (void *)payload;
            iovs[k].iov_len = (size_t)plen;
            memset(&ctrl[k], 0, sizeof ctrl[k]);
            struct msghdr *h = &hdrs[k].msg_hdr;
            memset(&hdrs[k], 0, sizeof hdrs[k]);
            h->msg_name = &names[k];
            h->msg_namelen = sizeof names[k];
            h->msg_iov = &iovs[k];
            h->msg_iovlen = 1;
            h->msg_control = ctrl[k].buf;
            h->msg_controllen = sizeof ctrl[k].buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(h);
            c->cmsg_level = IPPROTO_IP;
            c->cmsg_type = IP_PKTINFO;
            c->cmsg_len = CMSG_LEN(sizeof(struct in_pktinfo));
            struct in_pktinfo info;
            memset(&info, 0, sizeof info);
            memcpy(&info.ipi_spec_dst, src, 4);
            memcpy(CMSG_DATA(c), &info, sizeof info);
        }
        int sent = sendmmsg(fd, hdrs, (unsigned)k, MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR)
                continue;
            failed += 1; /* the first of these could not go: skip it */
            done += 1;
        } else {
            done += sent;
        }
    }
    return PyLong_FromSsize_t(failed);
}

static PyMethodDef methods[] = {
    {"receive", receive, METH_O,
     "receive(descriptor) -> int: one receive batch of the loss engine (loadgen/lossyfast.py)."},
    {"send_batch", send_batch, METH_VARARGS,
     "send_batch(fd, [(payload, src4, dst4, port), ...]) -> int: sendmmsg with each "
     "source IP; returns how many could not be sent."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "loadgen._reliable",
    "The loss engine's receive path in C (optional; loadgen/lossyfast.py).", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__reliable(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH_BYTES", (long)sizeof(loss_batch)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
