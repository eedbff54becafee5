/*
 * Process-wide TLS counters: handshakes, resumptions and failures by reason, per listener
 * slot. Updated once per connection with relaxed atomics (many writers, rare events), summed
 * by nobody: each counter is already the process total. Read by /metrics and the doctor.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "tls/internal.h"

typedef struct listener_slot {
    atomic_uint_fast64_t handshakes, resumed;
    atomic_uint_fast64_t failures[SL_TLS_FAIL__COUNT];
} listener_slot_t;

static listener_slot_t slots[SL_TLS_MAX_LISTENERS];
static pthread_mutex_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static char names[SL_TLS_MAX_LISTENERS][64];
static unsigned nslots; /* under names_lock: slots that ever had a name */

void sl__tls_stats_name(unsigned listener, const char *name)
{
    pthread_mutex_lock(&names_lock);
    snprintf(names[listener], sizeof(names[listener]), "%s", name);
    if (listener + 1 > nslots)
        nslots = listener + 1;
    pthread_mutex_unlock(&names_lock);
}

void sl_tls_count_handshake(const sl_tls_conn_t *t)
{
    listener_slot_t *s = &slots[sl__tls_conn_listener(t)];
    atomic_fetch_add_explicit(&s->handshakes, 1, memory_order_relaxed);
    if (sl_tls_conn_resumed(t))
        atomic_fetch_add_explicit(&s->resumed, 1, memory_order_relaxed);
}

void sl_tls_count_failure(const sl_tls_conn_t *t)
{
    listener_slot_t *s = &slots[sl__tls_conn_listener(t)];
    atomic_fetch_add_explicit(&s->failures[sl_tls_conn_failure(t)], 1, memory_order_relaxed);
}

void sl_tls_stats_read(sl_tls_listener_stats_t *ls, size_t maxl, size_t *nl, sl_tls_cert_stats_t *cs, size_t maxc,
                       size_t *nc)
{
    size_t k = 0;
    pthread_mutex_lock(&names_lock);
    for (unsigned i = 0; i < nslots && k < maxl; i++) {
        if (names[i][0] == '\0')
            continue;
        sl_tls_listener_stats_t *o = &ls[k++];
        memcpy(o->name, names[i], sizeof(o->name));
        o->handshakes = atomic_load_explicit(&slots[i].handshakes, memory_order_relaxed);
        o->resumed = atomic_load_explicit(&slots[i].resumed, memory_order_relaxed);
        for (size_t f = 0; f < SL_TLS_FAIL__COUNT; f++)
            o->failures[f] = atomic_load_explicit(&slots[i].failures[f], memory_order_relaxed);
    }
    pthread_mutex_unlock(&names_lock);
    *nl = k;
    sl__tls_certs_read(cs, maxc, nc);
}
