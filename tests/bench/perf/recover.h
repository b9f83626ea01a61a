/* cload --loss: every member recovers as OCM's client does (client/reliable.py), in C.
 *
 * The Python loss engine (`ocm-loadgen --loss`) runs client/reliable.py itself for every
 * member; past 400 rooms x 10 on two cores it needs more CPU than the server leaves it, and
 * what it then measures is its own lag. This is the same recovery, with the same timers,
 * at a C load generator's cost, so that the relay's recovery can be measured at the full
 * 500 x 10 x 2 msg/s:
 *
 * receiver (Receiver): nothing is shown before the relay's SYNC says where the member
 *   starts (a keepalive every SYNC_RETRY after a DATA came first); a DATA is held until
 *   every number before it is shown, our own (an ACK's Seq) or lost; a number not there
 *   is awaited: NACKed after REORDER, again after 0.1, 0.2, 0.4, 0.8, 1.0, 1.0 ... s, at
 *   most one NACK per NACK_MIN_INTERVAL (the numbers due meanwhile go together, up to
 *   16 ranges), given up after NACK_MAX_TRIES; a LOST answer gives numbers up. A message
 *   is shown (metered: latency from its first send) when everything before it was.
 * sender (Sender): go-back-N over at most SEND_WINDOW messages in flight; the window
 *   goes again after a retransmission timeout (4 smoothed round trips within 50 ms .. 2 s,
 *   0.2 s before one was measured, doubled per go-back; + ACK_WAIT while a 06 copy is in
 *   flight), or at once (at most every GO_BACK_MIN) when an ACK repeats an old id. A
 *   copy is a 06 SEND when a round trip was measured, no loss was seen for HOLD_CALM
 *   (our go-back, the relay's hint, our NACK) and the room is busy (CARRIER_RATE numbers
 *   a second), else 01.
 *
 * keepalives: ocm-chat's rule (client/link.py keepalive_due): every SYNC_S while a hole is
 *   open or a message has waited SYNC_S, else SYNC_S after the relay was last heard; and
 *   every DRAIN_KEEPALIVE_NS while draining, as `ocm-loadgen --loss` does, so that a lost
 *   last message is found from the SYNC.
 * loss (--loss PCT): that share of every datagram a member sends (SENDs, copies, NACKs,
 *   keepalives) and receives is dropped, once the chat begins (joins are not lost).
 * outage (--outage-seconds S): the last member of every room is silent both ways for S
 *   seconds from a third of the measured time on, then goes on as ocm-chat does after a
 *   short outage (ReliableChat.resumed: every hole NACKed at once, the window resent, a
 *   keepalive), as `ocm-loadgen --outage-seconds` does; the report says how many of the
 *   messages sent to it meanwhile came back, and how long after the outage ended (its
 *   address does not change: no TCRP resume).
 *
 * Differences from client/reliable.py, none on the wire: at most RX_W numbers are held
 * or awaited past the next one (the client: 2,048; a DATA beyond is dropped and NACKed
 * later, counted as "rx_overflow"); at most RING messages wait for an ACK (a message
 * past it is not sent, counted as "tx_overflow"); a message is never given up as failed
 * (the report counts the ones still pending at the end); after an ACK the window's new
 * first copies go at once (the client arms its timer for them); timers are checked
 * every TICK_NS.
 */
#ifndef OCM_PERF_RECOVER_H
#define OCM_PERF_RECOVER_H

#define RX_W 512
#define REORDER_NS 30000000ull
#define SYNC_RETRY_NS 300000000ull
#define NACK_MIN_INTERVAL_NS 100000000ull
#define NACK_MAX_TRIES 12
#define NACK_MAX_RANGES 16
#define NACK_MAX_RANGE_COUNT 256
static const uint64_t nack_backoff_ns[] = {100000000ull, 200000000ull, 400000000ull, 800000000ull, 1000000000ull};
#define SEND_WINDOW 16
#define RTO_INITIAL 0.2
#define RTO_MIN 0.05
#define RTO_MAX 2.0
#define GO_BACK_MIN_NS 30000000ull
#define HOLD_CALM_NS 10000000000ull
#define CARRIER_RATE 10.0
#define ACK_WAIT_NS 200000000ull /* ACK_HOLD_S + ACK_HOLD_TICK_S + 0.05 */
#define TICK_NS 2000000ull
#define SYNC_NS 2000000000ull           /* client/link.py SYNC_S */
#define KEEPALIVE_BASE_NS 75000000000ull /* the inactivity timeout / 4 */
#define KEEPALIVE_CHECK_NS 250000000ull  /* loadgen/lossy.py KEEPALIVE_CHECK_S */
#define DRAIN_KEEPALIVE_NS 500000000ull  /* loadgen/lossy.py DRAIN_KEEPALIVE_S */

enum { R_NONE, R_HELD, R_OWN, R_LOST, R_MISSING };

struct rslot {
    uint32_t seq; uint8_t state, tries, chat;
    struct mtext text;   /* R_HELD chat: its meter fields */
    uint64_t due_ns;     /* R_MISSING: when to NACK it next */
};

struct pend { uint64_t first_ns; uint8_t sent, resent, held; };

struct rec {
    /* receiver */
    struct rslot *w;     /* RX_W slots, by seq % RX_W */
    uint32_t epoch, next, awaited_to, pre_top; int has_epoch;
    int missing; uint64_t due_floor, last_nack, sync_due;
    /* sender */
    struct pend *pend;   /* RING, by id % RING */
    uint64_t due, last_go_back, last_loss; int tries; double srtt; int carriers;
    uint64_t rate_from; uint32_t rate_next;
    uint64_t ka_last, heard; /* the last keepalive sent; the last datagram from the relay */
};

static uint64_t loss_ppm, loss_from_ns = UINT64_MAX, loss_rng = 0x9E3779B97F4A7C15ull;
static unsigned long long x_tx_dropped, x_rx_dropped, x_nacks, x_nacked, x_recovered, x_unrecovered,
    x_gaps, x_dup_data, x_rx_overflow, x_tx_overflow, x_keepalives, x_hints, x_copies,
    x_sends_06, x_lost_msgs;

/* --outage-seconds: who is out (1 per member), the window (0: not yet begun / ended) */
static uint8_t *out_member;
static uint64_t out_from_ns, out_until_ns, out_len_ns, out_begin_ns;
static int out_on;
static unsigned long long o_expected, o_back, o_dropped;
static uint32_t *o_hist_ms; /* from the outage's end to a delivery of what was sent in it */
#define O_HIST_MS 120000

static struct user *users_base; /* the members, for xmit's index */

static inline int is_out(int who) { return out_on && out_member && out_member[who]; }

static inline int lose(uint64_t now) {
    if (!loss_ppm || now < loss_from_ns) return 0;
    loss_rng ^= loss_rng << 13; loss_rng ^= loss_rng >> 7; loss_rng ^= loss_rng << 17;
    return loss_rng % 1000000u < loss_ppm;
}

static inline void put32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24); p[1] = (char)(v >> 16); p[2] = (char)(v >> 8); p[3] = (char)v;
}

/* Send the Message msg (len bytes) of member u: its Stage 2 header in front, sealed when
 * keyed; lost with --loss's odds (none before the chat begins, or without --loss), or to
 * its outage. */
static void xmit(struct user *u, const char *msg, int len, uint64_t now) {
    if (out_on && out_member && out_member[u - users_base]) { o_dropped++; return; }
    char pkt[4200 + 24];
    memcpy(pkt, u->hdr, (size_t)u->hdrlen);
    memcpy(pkt + u->hdrlen, msg, (size_t)len);
    len += u->hdrlen;
    if (u->keyed) len = seal(u, pkt, len);
    if (lose(now)) { x_tx_dropped++; return; }
    if (sendto(u->fd, pkt, len, 0, (struct sockaddr *)&u->dst, sizeof u->dst) < 0 && errno != EAGAIN)
        perror("sendto");
}

static void rec_init(struct rec *r) {
    memset(r, 0, sizeof *r);
    r->w = calloc(RX_W, sizeof *r->w);
    r->pend = calloc(RING, sizeof *r->pend);
    if (!r->w || !r->pend) die("recover alloc");
    r->srtt = -1;
    r->due_floor = UINT64_MAX;
}

/* ---- receiver ---- */
static inline struct rslot *slot_of(struct rec *r, uint32_t seq) {
    struct rslot *s = &r->w[seq % RX_W];
    return s->seq == seq && s->state != R_NONE ? s : NULL;
}

static inline int epoch_ok(struct rec *r, uint32_t epoch) {
    if (!r->has_epoch) { r->has_epoch = 1; r->epoch = epoch; }
    return epoch == r->epoch;
}

static inline void want_sync(struct rec *r, uint64_t now) {
    if (!r->sync_due) r->sync_due = now + REORDER_NS;
}

/* A free slot for seq (within RX_W of next); NULL if another number holds it. */
static inline struct rslot *claim(struct rec *r, uint32_t seq) {
    struct rslot *s = &r->w[seq % RX_W];
    if (s->state != R_NONE && s->seq != seq) return NULL;
    if (s->state == R_NONE) { memset(s, 0, sizeof *s); s->seq = seq; }
    return s;
}

static void await_before(struct rec *r, uint32_t seq, uint64_t now) {
    uint32_t from = r->awaited_to > r->next ? r->awaited_to : r->next;
    uint64_t due = now + REORDER_NS;
    for (uint32_t s = from; s < seq; s++) {
        struct rslot *sl = claim(r, s);
        if (!sl || sl->state != R_NONE) continue;
        sl->state = R_MISSING; sl->due_ns = due; sl->tries = 0;
        r->missing++;
        if (due < r->due_floor) r->due_floor = due;
    }
    if (seq > r->awaited_to) r->awaited_to = seq;
}

static void rx_drain(struct meter *m, struct rec *r, int who, uint64_t now) {
    for (;;) {
        struct rslot *s = slot_of(r, r->next);
        if (!s || s->state == R_MISSING) return;
        if (s->state == R_HELD) {
            if (s->chat && (int)s->text.sender != who) {
                meter_show(m, who, &s->text, now);
                if (out_member && out_member[who] && out_until_ns && s->text.phase == 'M' &&
                    s->text.ts_us * 1000 >= out_from_ns && s->text.ts_us * 1000 < out_until_ns) {
                    uint64_t ms = (now - out_until_ns) / 1000000;
                    o_back++;
                    o_hist_ms[ms < O_HIST_MS ? ms : O_HIST_MS - 1]++;
                }
            }
        } else if (s->state == R_LOST) {
            uint32_t first = r->next;
            while ((s = slot_of(r, r->next)) && s->state == R_LOST) { s->state = R_NONE; r->next++; }
            x_gaps++;
            x_unrecovered += r->next - first;
            continue;
        }
        s->state = R_NONE;
        r->next++;
    }
}

/* seq is now held or our own: before the start is known, remember how far the room got
 * and ask for the start; after, await every number before it and show what can be. */
static void placed(struct meter *m, struct rec *r, int who, uint32_t seq, uint64_t now) {
    if (!r->next) {
        if (seq > r->pre_top) r->pre_top = seq;
        want_sync(r, now);
        return;
    }
    await_before(r, seq, now);
    rx_drain(m, r, who, now);
}

static void rx_data(struct meter *m, struct rec *r, int who, uint32_t epoch, uint32_t seq,
                    const char *body, int len, uint64_t now) {
    if (!epoch_ok(r, epoch) || seq == 0) return;
    if (r->next && (seq < r->next || seq >= r->next + RX_W)) {
        if (seq < r->next) x_dup_data++; else x_rx_overflow++;
        return;
    }
    struct rslot *s = claim(r, seq);
    if (!s) { x_rx_overflow++; return; }
    if (s->state == R_HELD || s->state == R_OWN) { x_dup_data++; return; }
    if (s->state == R_MISSING) { x_recovered++; r->missing--; }
    s->state = R_HELD;
    s->chat = len > 0 && body[0] != 0 && meter_parse(m, body + 1 + (unsigned char)body[0],
                                                      len - 1 - (unsigned char)body[0], &s->text);
    if (len > 0 && body[0] == 0) m->notices++;
    placed(m, r, who, seq, now);
}

static void rx_own(struct meter *m, struct rec *r, int who, uint32_t epoch, uint32_t seq, uint64_t now) {
    if (!epoch_ok(r, epoch) || seq == 0) return;
    if (r->next && (seq < r->next || seq >= r->next + RX_W)) return;
    struct rslot *s = claim(r, seq);
    if (!s) return;
    if (s->state == R_MISSING) r->missing--;
    if (s->state != R_HELD) s->state = R_OWN;  /* held: our own copy, resent to us first */
    placed(m, r, who, seq, now);
}

static void rx_sync(struct meter *m, struct rec *r, int who, uint32_t epoch, uint32_t start,
                    uint32_t latest, uint64_t now) {
    if (!epoch_ok(r, epoch)) return;
    if (!r->next) {
        r->next = r->awaited_to = start ? start : 1;
        r->sync_due = 0;
        for (int i = 0; i < RX_W; i++)  /* held before the start: not ours to show */
            if (r->w[i].state != R_NONE && (r->w[i].seq < r->next || r->w[i].seq >= r->next + RX_W))
                r->w[i].state = R_NONE;
        uint32_t top = latest > r->pre_top ? latest : r->pre_top;
        if (top >= r->next + RX_W) top = r->next + RX_W - 1;
        await_before(r, top + 1, now);
    } else if (latest >= r->next) {
        await_before(r, (latest < r->next + RX_W ? latest : r->next + RX_W - 1) + 1, now);
    }
    rx_drain(m, r, who, now);
}

static void rx_lost(struct meter *m, struct rec *r, int who, uint32_t epoch, uint32_t first,
                    uint32_t count, uint64_t now) {
    if (!epoch_ok(r, epoch) || !r->next) return;
    x_lost_msgs += count;
    for (uint32_t seq = first > r->next ? first : r->next; seq < first + count && seq < r->next + RX_W; seq++) {
        struct rslot *s = claim(r, seq);
        if (!s || s->state == R_HELD || s->state == R_OWN) continue;
        if (s->state == R_MISSING) r->missing--;
        s->state = R_LOST;
    }
    rx_drain(m, r, who, now);
}

/* The receiver's timer: a keepalive while the start is unknown, NACKs of the holes due. */
static void rx_timer(struct meter *m, struct rec *r, struct user *u, int who, uint64_t now) {
    if (r->sync_due && r->sync_due <= now) {
        r->sync_due = now + SYNC_RETRY_NS;
        r->ka_last = now;
        x_keepalives++;
        xmit(u, "", 0, now);
    }
    if (!r->missing || r->due_floor > now || !r->next) return;
    uint64_t later = r->last_nack + NACK_MIN_INTERVAL_NS, floor = UINT64_MAX;
    int wait = r->last_nack && now < later, gave_up = 0;
    char msg[5 + 6 * NACK_MAX_RANGES];
    int ranges = 0, at = 5;
    uint32_t run_first = 0, run_count = 0;
    for (uint32_t seq = r->next; seq < r->awaited_to; seq++) {
        struct rslot *s = slot_of(r, seq);
        if (!s || s->state != R_MISSING) continue;
        if (s->due_ns > now) { if (s->due_ns < floor) floor = s->due_ns; continue; }
        if (wait) { s->due_ns = later; if (later < floor) floor = later; continue; }
        if (s->tries >= NACK_MAX_TRIES) { s->state = R_LOST; r->missing--; gave_up = 1; continue; }
        s->due_ns = now + nack_backoff_ns[s->tries < 4 ? s->tries : 4];
        s->tries++;
        if (s->due_ns < floor) floor = s->due_ns;
        if (run_count && run_first + run_count == seq && run_count < NACK_MAX_RANGE_COUNT) { run_count++; continue; }
        if (run_count) {
            if (ranges == NACK_MAX_RANGES) continue;  /* the rest wait for the next NACK */
            put32(msg + at, run_first); msg[at + 4] = (char)(run_count >> 8); msg[at + 5] = (char)run_count;
            at += 6; ranges++;
        }
        run_first = seq; run_count = 1;
    }
    if (run_count && ranges < NACK_MAX_RANGES) {
        put32(msg + at, run_first); msg[at + 4] = (char)(run_count >> 8); msg[at + 5] = (char)run_count;
        at += 6; ranges++;
    }
    r->due_floor = floor;
    if (ranges) {
        msg[0] = 2;
        put32(msg + 1, r->epoch);
        r->last_nack = now;
        r->last_loss = now;  /* the sender's "saw loss" */
        x_nacks++;
        x_nacked += (unsigned long long)ranges;
        xmit(u, msg, at, now);
    }
    if (gave_up) rx_drain(m, r, who, now);
}

/* ---- sender ---- */
static inline double rto_s(struct rec *r) {
    double base = r->srtt < 0 ? RTO_INITIAL : (4 * r->srtt < RTO_MIN ? RTO_MIN : 4 * r->srtt > RTO_MAX ? RTO_MAX : 4 * r->srtt);
    double v = base * (double)(1u << (r->tries < 6 ? r->tries : 6));
    return v < RTO_MAX ? v : RTO_MAX;
}

/* One copy of id: 01, or 06 when its ACK may wait for a DATA to ride on. */
static void tx_copy(struct user *u, struct rec *r, uint32_t id, uint64_t now) {
    struct pend *p = &r->pend[id % RING];
    if (!p->sent) { p->sent = 1; p->first_ns = now; }
    else { p->resent = 1; r_resent++; }
    p->held = r->carriers && r->srtt >= 0 && now - r->last_loss >= HOLD_CALM_NS;
    char *msg = ring_at(u, id);
    msg[0] = p->held ? 6 : 1;
    x_copies++;
    if (p->held) x_sends_06++;
    xmit(u, msg, u->ring_len[id % RING], now);
}

static inline uint32_t window_end(struct user *u) {
    uint32_t end = u->acked + SEND_WINDOW;
    return end < u->msg_id ? end : u->msg_id;
}

static void arm(struct user *u, struct rec *r, uint64_t now) {
    uint32_t end = window_end(u);
    if (end <= u->acked) { r->due = 0; return; }
    int held = 0;
    for (uint32_t id = u->acked + 1; id <= end; id++) held |= r->pend[id % RING].held;
    r->due = now + (uint64_t)(rto_s(r) * 1e9) + (held ? ACK_WAIT_NS : 0);
}

/* A new message: text (its meter text, tlen bytes) as the next id. */
static void tx_new(struct user *u, struct rec *r, const char *text, int tlen, uint32_t rx_next, uint64_t now) {
    if (now - r->rate_from >= 1000000000ull) {  /* how busy the room was meanwhile */
        double elapsed = (double)(now - r->rate_from) / 1e9;
        r->carriers = rx_next && r->rate_next && (double)(rx_next - r->rate_next) >= CARRIER_RATE * elapsed;
        r->rate_from = now; r->rate_next = rx_next;
    }
    if (u->msg_id - u->acked >= RING) { x_tx_overflow++; return; }
    uint32_t id = ++u->msg_id;
    char *msg = ring_at(u, id);
    put32(msg + 1, id);
    memcpy(msg + 5, text, (size_t)tlen);
    u->ring_len[id % RING] = 5 + tlen;
    memset(&r->pend[id % RING], 0, sizeof r->pend[0]);
    if (id > window_end(u)) return;  /* the window is full: it goes on an ACK */
    tx_copy(u, r, id, now);
    if (!r->due) arm(u, r, now);
}

static void tx_ack(struct meter *m, struct user *u, struct rec *r, int who, uint32_t epoch,
                   uint32_t id, uint32_t seq, uint64_t now) {
    if (id <= u->acked || id > u->msg_id) {  /* an old id again: the relay dropped a later one */
        if (u->msg_id > u->acked && now - r->last_go_back >= GO_BACK_MIN_NS) {
            r->due = now; r->last_loss = now; x_hints++;
        }
        return;
    }
    struct pend *p = &r->pend[id % RING];
    if (p->sent && !p->resent && !p->held) {
        double sample = (double)(now - p->first_ns) / 1e9;
        r->srtt = r->srtt < 0 ? sample : 0.875 * r->srtt + 0.125 * sample;
    }
    if (!seq) r_refused++;
    uint32_t old_end = window_end(u);
    u->acked = id;
    r->tries = 0;
    for (uint32_t i = old_end + 1; i <= window_end(u); i++) tx_copy(u, r, i, now);
    arm(u, r, now);
    rx_own(m, r, who, epoch, seq, now);
}

static void tx_timer(struct user *u, struct rec *r, uint64_t now) {
    if (!r->due || r->due > now) return;
    uint32_t end = window_end(u);
    if (end <= u->acked) { r->due = 0; return; }
    r->tries++;
    r->last_go_back = r->last_loss = now;
    r_go_backs++;
    for (uint32_t id = u->acked + 1; id <= end; id++) tx_copy(u, r, id, now);
    arm(u, r, now);
}

/* One datagram from the relay to a member (docs/protocol.md §9.3). */
static void rec_recv(struct meter *m, struct user *u, struct rec *r, int who, const char *d, int len, uint64_t now) {
    if (is_out(who)) { o_dropped++; return; }
    if (lose(now)) { x_rx_dropped++; return; }
    r->heard = now;
    if (len >= 18 && d[0] == 6 && d[9] == 1) {  /* a held ACK, then the DATA it rides on */
        uint32_t epoch = be32_at(d + 10);
        r_carried++;
        tx_ack(m, u, r, who, epoch, be32_at(d + 1), be32_at(d + 5), now);
        d += 9; len -= 9;
    }
    if (len < 1) { m->stray++; return; }
    switch (d[0]) {
    case 1:
        if (len < 10) { m->stray++; return; }
        rx_data(m, r, who, be32_at(d + 1), be32_at(d + 5), d + 9, len - 9, now);
        return;
    case 2:
        if (len < 13) { m->stray++; return; }
        r_acks++;
        tx_ack(m, u, r, who, be32_at(d + 1), be32_at(d + 5), be32_at(d + 9), now);
        return;
    case 3:
        if (len < 11) { m->stray++; return; }
        r_lost++;
        rx_lost(m, r, who, be32_at(d + 1), be32_at(d + 5),
                ((uint32_t)(unsigned char)d[9] << 8) | (unsigned char)d[10], now);
        return;
    case 4:
        if (len < 13) { m->stray++; return; }
        r_syncs++;
        rx_sync(m, r, who, be32_at(d + 1), be32_at(d + 5), be32_at(d + 9), now);
        return;
    default: m->notices++; return;
    }
}

/* ocm-chat's keepalive rule (client/link.py keepalive_due), or every DRAIN_KEEPALIVE_NS
 * while draining. */
static void keepalive_check(struct user *u, struct rec *r, int draining, uint64_t now) {
    uint64_t due;
    if (draining) due = r->ka_last + DRAIN_KEEPALIVE_NS;
    else {
        int urgent = r->missing > 0;
        if (!urgent && u->msg_id > u->acked) {
            struct pend *p = &r->pend[(u->acked + 1) % RING];
            urgent = p->sent && now - p->first_ns >= SYNC_NS;
        }
        if (urgent) due = r->ka_last + SYNC_NS;
        else {
            uint64_t heard = r->heard + SYNC_NS, sent = r->ka_last + KEEPALIVE_BASE_NS;
            due = heard < sent ? heard : sent;
            if (due < r->ka_last + SYNC_NS) due = r->ka_last + SYNC_NS;
        }
    }
    if (due > now) return;
    r->ka_last = now;
    x_keepalives++;
    xmit(u, "", 0, now);
}

/* Begin the outage once its time has come; end it out_len_ns after it really began, each
 * member going on as ReliableChat.resumed has it. */
static void outage_tick(struct user *u, struct rec *rs, int n, uint64_t now) {
    if (!out_member || out_until_ns) return;
    if (!out_on) {
        if (now >= out_begin_ns) { out_on = 1; out_from_ns = now; }
        return;
    }
    if (now < out_from_ns + out_len_ns) return;
    out_on = 0;
    out_until_ns = now;
    for (int i = 0; i < n; i++) {
        if (!out_member[i] || !u[i].present) continue;
        struct rec *r = &rs[i];
        for (uint32_t seq = r->next; r->next && seq < r->awaited_to; seq++) {  /* renack */
            struct rslot *sl = slot_of(r, seq);
            if (sl && sl->state == R_MISSING) {
                sl->due_ns = now;
                if (sl->tries > NACK_MAX_TRIES - 3) sl->tries = NACK_MAX_TRIES - 3;
            }
        }
        r->due_floor = now;
        if (!r->next) r->sync_due = now;
        r->last_loss = now;
        if (window_end(&u[i]) > u[i].acked) { r->tries = 0; r->due = now; }
        r->ka_last = now;
        x_keepalives++;
        xmit(&u[i], "", 0, now);
    }
}

/* A message from sender: one more expected back by its room's outage member if
 * it is sent during the outage. */
static inline void outage_sent(int sender, int nusers) {
    if (!out_on || !out_member) return;
    int last = (sender / nusers) * nusers + nusers - 1;
    if (last != sender && out_member[last]) o_expected++;
}

static inline int rec_due(const struct rec *r, uint64_t now) {
    return (r->sync_due && r->sync_due <= now) || (r->missing && r->due_floor <= now) ||
           (r->due && r->due <= now);
}

/* The outage's "end to delivery" percentile q in ms (-1: nothing came back). */
static long long outage_pct(double q) {
    if (!o_hist_ms || !o_back) return -1;
    unsigned long long target = (unsigned long long)(q * (double)o_back), acc = 0;
    if (target >= o_back) target = o_back - 1;
    for (int i = 0; i < O_HIST_MS; i++) {
        acc += o_hist_ms[i];
        if (acc > target) return i;
    }
    return O_HIST_MS;
}

/* The report's fields for --loss: what the recovery did, and what it left undone. */
static void rec_report(char *out, size_t n, struct user *u, struct rec *rs, int count) {
    unsigned long long holes = 0, pending = 0, unsynced = 0;
    for (int i = 0; i < count; i++) {
        if (!u[i].present) continue;
        holes += (unsigned long long)rs[i].missing;
        pending += u[i].msg_id - u[i].acked;
        unsynced += !rs[i].next;
    }
    snprintf(out, n, "\"loss_ppm\": %llu, \"tx_dropped\": %llu, \"rx_dropped\": %llu, \"nacks\": %llu, "
             "\"nack_ranges\": %llu, \"recovered\": %llu, \"lost_answered\": %llu, \"unrecovered\": %llu, "
             "\"gaps\": %llu, \"dup_data\": %llu, \"rx_overflow\": %llu, \"tx_overflow\": %llu, "
             "\"keepalives\": %llu, \"copies\": %llu, \"sends_06\": %llu, \"hints\": %llu, "
             "\"holes_open_at_end\": %llu, \"pending_at_end\": %llu, \"unsynced_at_end\": %llu, "
             "\"outage_s\": %.3f, \"outage_expected\": %llu, \"outage_back\": %llu, \"outage_dropped\": %llu, "
             "\"outage_after_p99_ms\": %lld, \"outage_after_max_ms\": %lld",
             (unsigned long long)loss_ppm, x_tx_dropped, x_rx_dropped, x_nacks, x_nacked, x_recovered,
             x_lost_msgs, x_unrecovered, x_gaps, x_dup_data, x_rx_overflow, x_tx_overflow, x_keepalives,
             x_copies, x_sends_06, x_hints, holes, pending, unsynced,
             out_until_ns ? (double)(out_until_ns - out_from_ns) / 1e9 : 0.0, o_expected, o_back, o_dropped,
             outage_pct(0.99), outage_pct(1.0));
}
#endif
