/* The loadgen's receive accounting in C: the common case of Meter.receive_batch
 * (loadgen/meter.py) for one recvmmsg batch of a shared socket (loadgen/transport.py).
 *
 * An optional extension module (loadgen._account), compiled at install time (setup.py);
 * loadgen/fastpath.py fills the batch descriptor below (a ctypes Structure of the same
 * layout) and calls account(descriptor). A datagram is accounted here only when
 * every check of the Python path passes and the delivery is the next one expected from
 * its sender: then its sequence number, end-to-end latency and relay latency are
 * recorded exactly as Meter.receive_batch would. Every other datagram (a notice, a gap,
 * a duplicate, a warm-up (before the measured window) or misrouted delivery, an address that is no member's, a latency
 * beyond the direct-count array, control data that is not what was asked for) is left
 * untouched and listed in `slow`, for the Python path to account in order. Once a
 * (receiver, sender) pair has had a datagram listed, its later datagrams are listed too
 * (`dirty`, cleared by Python after it has caught up), so their order is kept.
 *
 * Buffer layouts are those of runtime/mmsg.py's RecvBatch on LP64 Linux: mmsghdr 64 bytes
 * (msg_controllen u64 @40, msg_flags i32 @48, msg_len u32 @56); a control slot of 64
 * bytes per datagram holding [SCM_TIMESTAMPNS cmsg: level i32 @8, type i32 @12, tv_sec
 * i64 @16, tv_nsec i64 @24][IP_PKTINFO cmsg: level i32 @40, type i32 @44, ipi_addr @56].
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SOL_SOCKET_ 1
#define SO_TIMESTAMPNS_ 35
#define IPPROTO_IP_ 0
#define IP_PKTINFO_ 8
#define MSG_TRUNC_ 0x20
#define SLOT 64
#define HEADER 44

typedef struct {
    /* the receive batch */
    const uint8_t *data;    /* datagram i at data + i * stride */
    int64_t stride;
    const uint8_t *hdrs;    /* mmsghdr array */
    const uint8_t *ctrl;    /* control slots, SLOT bytes each */
    int64_t n;              /* datagrams in the batch */
    /* member addresses: 127.(100 + proc).block.(host + 1), member = block * hosts + host */
    uint32_t ip_base;       /* 127.(100 + proc).0.0, host byte order */
    int64_t members;
    int64_t hosts_per_block;
    /* the chat payload */
    int64_t chk_at;         /* the bytes before the header must be chk (": " or the length) */
    int64_t chk_len;
    const uint8_t *chk;
    int64_t off;            /* where the header starts */
    int64_t users;
    int64_t base_g;
    int64_t mstart;
    /* the meter's state */
    const uint8_t *counted; /* per member */
    int64_t *nexp;          /* per (member, sender): next sequence number expected */
    uint8_t *dirty;         /* per (member, sender): a datagram of the pair is left to Python */
    int64_t *lat;           /* per-µs counts, end to end */
    int64_t *rlat;          /* per-µs counts, relay */
    int64_t direct;         /* length of lat and rlat */
    /* this batch */
    int64_t now_ns;         /* CLOCK_MONOTONIC when it was read */
    int64_t rt_offset_ns;   /* CLOCK_REALTIME - CLOCK_MONOTONIC */
    /* results */
    int32_t *slow;          /* indexes left to Python, in order */
    int64_t n_slow;
    int64_t delivered;
} ocm_batch;

static inline int number(const uint8_t *p, int digits, int64_t *out)
{
    int64_t v = 0;
    for (int i = 0; i < digits; i++) {
        unsigned d = (unsigned)p[i] - '0';
        if (d > 9)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

static inline int32_t i32_at(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static inline uint32_t u32_at(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int64_t i64_at(const uint8_t *p) { int64_t v; memcpy(&v, p, 8); return v; }

/* 1 if datagram i was accounted; 0 if it must go to Python (*pair: its pair, or -1). */
static int account_one(ocm_batch *b, int64_t i, int64_t *pair)
{
    const uint8_t *h = b->hdrs + i * 64;
    const uint8_t *c = b->ctrl + i * SLOT;
    int64_t len = u32_at(h + 56);
    *pair = -1;
    if (i64_at(h + 40) != SLOT || (i32_at(h + 48) & MSG_TRUNC_)
        || i32_at(c + 8) != SOL_SOCKET_ || i32_at(c + 12) != SO_TIMESTAMPNS_
        || i32_at(c + 40) != IPPROTO_IP_ || i32_at(c + 44) != IP_PKTINFO_)
        return 0;
    const uint8_t *a = c + 56; /* ipi_addr, network byte order */
    uint32_t dest = ((uint32_t)a[0] << 24) | ((uint32_t)a[1] << 16) | ((uint32_t)a[2] << 8) | a[3];
    int64_t host = dest & 0xff;
    if ((dest & 0xffff0000u) != b->ip_base || host < 1 || host > b->hosts_per_block)
        return 0;
    int64_t rlm = ((dest >> 8) & 0xff) * b->hosts_per_block + host - 1;
    if (rlm >= b->members)
        return 0;
    const uint8_t *d = b->data + i * b->stride;
    if (len < b->off + HEADER || memcmp(d + b->chk_at, b->chk, (size_t)b->chk_len) != 0)
        return 0;
    const uint8_t *p = d + b->off;
    int64_t g, seq, ns, lag_us;
    /* the 20-digit time: two leading zeros keep it below 10^18 (int64 safe) */
    if (!number(p, 8, &g) || !number(p + 8, 10, &seq) || p[18] != '0' || p[19] != '0'
        || !number(p + 20, 18, &ns) || !number(p + 38, 6, &lag_us))
        return 0;
    int64_t s = g - b->base_g - rlm + rlm % b->users;
    if (s < 0 || s >= b->users || rlm % b->users == s || ns < b->mstart || !b->counted[rlm])
        return 0;
    int64_t k = rlm * b->users + s;
    *pair = k;
    if (b->dirty[k] || seq != b->nexp[k])
        return 0;
    int64_t rx = i64_at(c + 16) * 1000000000 + i64_at(c + 24) - b->rt_offset_ns;
    int64_t e2e = b->now_ns - ns, relay = rx - ns;
    if (e2e < 0 || relay < 0 || (i64_at(c + 16) == 0 && i64_at(c + 24) == 0))
        return 0;
    e2e /= 1000;
    relay = relay / 1000 - lag_us;
    if (e2e >= b->direct || relay < 0 || relay >= b->direct)
        return 0;
    b->nexp[k] = seq + 1;
    b->lat[e2e] += 1;
    b->rlat[relay] += 1;
    return 1;
}

static void ocm_account(ocm_batch *b)
{
    b->n_slow = 0;
    b->delivered = 0;
    for (int64_t i = 0; i < b->n; i++) {
        int64_t pair;
        if (account_one(b, i, &pair)) {
            b->delivered += 1;
        } else {
            b->slow[b->n_slow++] = (int32_t)i;
            if (pair >= 0)
                b->dirty[pair] = 1;
        }
    }
}

/* account(descriptor): descriptor is a writable buffer of exactly sizeof(ocm_batch) bytes
 * (fastpath._Batch); its results (n_slow, delivered) are written into it. Returns the
 * number of deliveries accounted. */
static PyObject *account(PyObject *module, PyObject *descriptor)
{
    Py_buffer view;
    (void)module;
    if (PyObject_GetBuffer(descriptor, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    if (view.len != (Py_ssize_t)sizeof(ocm_batch)) {
        PyErr_Format(PyExc_ValueError, "batch descriptor of %zd bytes, expected %zu",
                     view.len, sizeof(ocm_batch));
        PyBuffer_Release(&view);
        return NULL;
    }
    ocm_batch *b = (ocm_batch *)view.buf;
    ocm_account(b);
    int64_t delivered = b->delivered;
    PyBuffer_Release(&view);
    return PyLong_FromLongLong(delivered);
}

static PyMethodDef methods[] = {
    {"account", account, METH_O,
     "account(descriptor) -> int: account one receive batch (see loadgen/fastpath.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "loadgen._account",
    "The loadgen's receive accounting in C (optional; loadgen/fastpath.py).", 0, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__account(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "BATCH_BYTES", (long)sizeof(ocm_batch)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
