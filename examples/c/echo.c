/* An echo server on the dserver C ABI, non-blocking: the node's readiness descriptor sits
 * in the server's own epoll set, and only the connections that saw input are visited (no
 * thread per connection). What cannot be sent at once waits in a per-connection buffer.
 *
 *   echo ds_addr=fd00:80::80 care_of=fd00:1::1 iface=eth0 port=7
 *
 * Every key=value argument is a node setting (ds_config_set). */
#include <dserver.h>
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

static struct conn conns[MAX_CONNS];

static struct conn *find(uint64_t id) {
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].id == id) return &conns[i];
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

int main(int argc, char **argv) {
    ds_log_init(NULL);
    ds_config *cfg = ds_config_new();
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "usage: echo key=value...\n");
            return 2;
        }
        *eq = 0;
        if (ds_config_set(cfg, argv[i], eq + 1) != DS_OK) {
            fprintf(stderr, "echo: %s\n", ds_last_error());
            return 2;
        }
    }
    ds_node *n = ds_node_new(cfg);
    ds_config_free(cfg);
    if (!n) {
        fprintf(stderr, "echo: %s\n", ds_last_error());
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, ds_node_fd(n), &ev) != 0) {
        perror("echo: epoll");
        return 1;
    }
    fprintf(stderr, "echo: serving\n");
    for (;;) {
        struct epoll_event got;
        if (epoll_wait(ep, &got, 1, ds_node_timeout_ms(n)) < 0) continue;
        if (ds_node_poll(n, 0) != DS_OK) {
            fprintf(stderr, "echo: %s\n", ds_last_error());
            return 1;
        }
        ds_accepted a;
        while (ds_accept(n, 0, &a) == 1) {
            struct conn *c = find(0);
            if (!c) {
                ds_close(n, a.conn); /* full */
                continue;
            }
            c->id = a.conn;
            service(n, c); /* data may have come with the handshake */
        }
        uint64_t ready[64];
        ptrdiff_t k;
        while ((k = ds_ready(n, ready, 64)) > 0)
            for (ptrdiff_t i = 0; i < k; i++) {
                struct conn *c = find(ready[i]);
                if (c) service(n, c);
            }
    }
}
