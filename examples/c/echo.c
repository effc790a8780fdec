/* An echo server on the dserver C ABI, non-blocking: the node's readiness descriptor sits
 * in the server's own epoll set, and only the connections that saw input are visited (no
 * thread per connection). What cannot be sent at once waits in a per-connection buffer.
 *
 *   echo ds_addr=fd00:80::80 care_of=fd00:1::1 iface=eth0 port=7 [queues=2]
 *
 * Every key=value argument is a node setting (ds_config_set). With `queues`, one node per
 * receive queue of the device, each on its own thread (ds_queues_open, ds_node_new_on_queue):
 * shared-nothing, as the library itself. */
#include <dserver.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#define MAX_CONNS 1024
#define BUF 4096

struct conn {
    uint64_t id; /* 0: free slot */
    size_t pending;
    uint8_t buf[BUF];
};

/* One node and its connections: one per thread. */
struct server {
    ds_node *n;
    /* With queues: made on the thread from this queue of the device. */
    ds_config *cfg;
    ds_queues *q;
    size_t queue, count;
    struct conn conns[MAX_CONNS];
};

/* Queues whose node is up. */
static atomic_size_t up;

static struct conn *find(struct server *s, uint64_t id) {
    for (int i = 0; i < MAX_CONNS; i++)
        if (s->conns[i].id == id) return &s->conns[i];
    return NULL;
}

/* Send what waits, then echo what arrived while there is room; close at the end. */
static void service(ds_node *n, struct conn *c) {
    for (;;) {
        while (c->pending > 0) {
            ptrdiff_t k = ds_write(n, c->id, c->buf, c->pending);
            if (k == DS_AGAIN) return;
            if (k < 0) goto close;
            memmove(c->buf, c->buf + k, c->pending - (size_t)k);
            c->pending -= (size_t)k;
        }
        ptrdiff_t k = ds_read(n, c->id, c->buf, BUF);
        if (k == DS_AGAIN) return;
        if (k <= 0) goto close;
        c->pending = (size_t)k;
    }
close:
    ds_close(n, c->id);
    c->id = 0;
    c->pending = 0;
}

static void *serve(void *arg) {
    struct server *s = arg;
    if (s->q) {
        /* A node stays on the thread that made it. */
        s->n = ds_node_new_on_queue(s->cfg, s->q, s->queue);
        if (!s->n) {
            fprintf(stderr, "echo: queue %zu: %s\n", s->queue, ds_last_error());
            exit(1);
        }
        if (atomic_fetch_add(&up, 1) + 1 == s->count)
            fprintf(stderr, "echo: serving on %zu queues\n", s->count);
    }
    ds_node *n = s->n;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ds_node_fd(n), &ev) != 0) {
        perror("echo: epoll");
        exit(1);
    }
    for (;;) {
        struct epoll_event got;
        if (epoll_wait(ep, &got, 1, ds_node_timeout_ms(n)) < 0) continue;
        if (ds_node_poll(n, 0) != DS_OK) {
            fprintf(stderr, "echo: %s\n", ds_last_error());
            exit(1);
        }
        ds_accepted a;
        while (ds_accept(n, 0, &a) == 1) {
            struct conn *c = find(s, 0);
            if (!c) {
                ds_close(n, a.conn); /* full */
                continue;
            }
            c->id = a.conn;
            fprintf(stderr, "echo: queue %zu accepted\n", s->queue);
            service(n, c); /* data may have come with the handshake */
        }
        uint64_t ready[64];
        ptrdiff_t k;
        while ((k = ds_ready(n, ready, 64)) > 0)
            for (ptrdiff_t i = 0; i < k; i++) {
                struct conn *c = find(s, ready[i]);
                if (c) service(n, c);
            }
    }
    return NULL;
}

int main(int argc, char **argv) {
    ds_log_init(NULL);
    ds_config *cfg = ds_config_new();
    int queues = 0;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "usage: echo key=value...\n");
            return 2;
        }
        *eq = 0;
        if (strcmp(argv[i], "queues") == 0) queues = 1;
        if (ds_config_set(cfg, argv[i], eq + 1) != DS_OK) {
            fprintf(stderr, "echo: %s\n", ds_last_error());
            return 2;
        }
    }
    if (!queues) {
        struct server *s = calloc(1, sizeof *s);
        s->n = ds_node_new(cfg);
        ds_config_free(cfg);
        if (!s->n) {
            fprintf(stderr, "echo: %s\n", ds_last_error());
            return 1;
        }
        fprintf(stderr, "echo: serving\n");
        serve(s);
        return 0;
    }
    ds_queues *q = ds_queues_open(cfg);
    if (!q) {
        fprintf(stderr, "echo: %s\n", ds_last_error());
        return 1;
    }
    size_t count = ds_queues_count(q);
    struct server *servers = calloc(count, sizeof *servers);
    pthread_t *threads = calloc(count, sizeof *threads);
    for (size_t i = 0; i < count; i++) {
        servers[i].cfg = cfg;
        servers[i].q = q;
        servers[i].queue = i;
        servers[i].count = count;
        if (i > 0 && pthread_create(&threads[i], NULL, serve, &servers[i]) != 0) {
            perror("echo: thread");
            return 1;
        }
    }
    serve(&servers[0]);
    return 0;
}
