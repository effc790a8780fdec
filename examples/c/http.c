/* A small HTTP server on the dserver C ABI.
 *
 * "GET /N" is answered with N bytes of a pattern (byte i is i mod 251). After
 * handoff_after bytes the connection is handed to the peer node together with how far its
 * response got (16 bytes of state); the peer's copy of this server sends the rest.
 *
 *   http ds_addr=fd00:80::80 care_of=fd00:1::1 iface=eth0 secret_file=/etc/ds/secret \
 *        control_listen=[fd00:1::11]:7000 peer=[fd00:1::12]:7000 \
 *        home_agent=[fd00:1::a]:7001 handoff_after=1048576
 *
 * With policy=round-robin (and no handoff_after) each client is placed on this node or the
 * peer in turn, from its request (ds_place), and served whole where it is placed.
 *
 * With device=kernel the server accepts clients on its own kernel socket and moves one
 * with ds_handoff_fd (the kernel must own the addresses: care-of on iface, DS on lo).
 *
 * Every key=value argument but handoff_after is a node setting (ds_config_set). */
#define _GNU_SOURCE
#include <dserver.h>
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* What travels with a connection. */
struct progress {
    uint64_t sent;
    uint64_t size;
    uint64_t head_sent; /* the response head is out */
};

static void die(const char *what) {
    fprintf(stderr, "http: %s: %s\n", what, ds_last_error());
    exit(1);
}

/* A client connection: on the userspace stack (node, id) or a kernel socket (kernel, fd). */
struct conn {
    ds_node *n;
    uint64_t id;
    ds_kernel *k;
    int fd;
};

/* Read some bytes: the count, 0 at the end, negative on error. */
static ptrdiff_t conn_read(struct conn *c, uint8_t *buf, size_t len) {
    if (c->k) return read(c->fd, buf, len);
    for (;;) {
        ptrdiff_t k = ds_read(c->n, c->id, buf, len);
        if (k != DS_AGAIN) return k;
        if (ds_node_poll(c->n, 10) != DS_OK) return -1;
    }
}

/* Write all of buf (running the node while its send buffer is full). */
static int conn_write_all(struct conn *c, const uint8_t *buf, size_t len) {
    while (len > 0) {
        ptrdiff_t k = c->k ? write(c->fd, buf, len) : ds_write(c->n, c->id, buf, len);
        if (k == DS_AGAIN && !c->k) {
            if (ds_node_poll(c->n, 10) != DS_OK) return -1;
            continue;
        }
        if (k < 0) return -1;
        buf += k;
        len -= (size_t)k;
    }
    return 0;
}

static void conn_close(struct conn *c) {
    if (c->k)
        close(c->fd);
    else
        ds_close(c->n, c->id);
}

/* Hand the connection to the peer with its progress: 0 when it moved. */
static int conn_handoff(struct conn *c, const char *peer, const struct progress *p,
                        ds_report *r) {
    const uint8_t *st = (const uint8_t *)p;
    if (c->k) return ds_handoff_fd(c->k, c->fd, peer, st, sizeof *p, r);
    return ds_handoff(c->n, c->id, peer, st, sizeof *p, r);
}

/* Send the response head, unless it went already. */
static int send_head(struct conn *c, struct progress *p) {
    if (p->head_sent) return 0;
    char head[128];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.0 200 OK\r\nContent-Length: %" PRIu64 "\r\n\r\n", p->size);
    p->head_sent = 1;
    return conn_write_all(c, (const uint8_t *)head, (size_t)len);
}

/* Read the request head; 0 and p set, or -1. On the userspace stack the node's policy
 * (policy=round-robin) may place the client on the peer: then `to` names it. */
static int read_request(struct conn *c, struct progress *p, char *to, size_t cap) {
    char req[4096];
    size_t have = 0;
    while (!memmem(req, have, "\r\n\r\n", 4)) {
        if (have == sizeof req - 1) return -1; /* too long */
        ptrdiff_t k = conn_read(c, (uint8_t *)req + have, sizeof req - 1 - have);
        if (k <= 0) return -1; /* end of data or error */
        have += (size_t)k;
    }
    req[have] = 0;
    p->sent = 0;
    p->head_sent = 0;
    if (sscanf(req, "GET /%" SCNu64, &p->size) != 1) p->size = 1 << 20;
    to[0] = 0;
    if (!c->k && ds_place(c->n, (const uint8_t *)req, have, to, cap) < 0) to[0] = 0;
    return 0;
}

/* Serve one connection; `arrived` is the state it came with from the peer, if it did. */
static void serve(struct conn *c, const struct progress *arrived, const char *peer,
                  uint64_t after) {
    struct progress p;
    uint64_t stop = after;
    char to[64];
    if (arrived) {
        /* Handed over by the peer: continue where it stopped, and finish here. */
        p = *arrived;
        stop = UINT64_MAX;
    } else if (read_request(c, &p, to, sizeof to) != 0) {
        conn_close(c);
        return;
    } else if (to[0]) {
        /* The policy places this client on another node: it goes there with its request. */
        ds_report r;
        if (conn_handoff(c, to, &p, &r) == DS_OK) {
            printf("placed on %s total_us=%.1f\n", to, r.total_us);
            fflush(stdout);
            return;
        }
        fprintf(stderr, "http: placed on %s, served here: %s\n", to, ds_last_error());
    }
    if (send_head(c, &p) != 0) {
        conn_close(c);
        return;
    }
    uint8_t chunk[16384];
    while (p.sent < p.size) {
        if (p.sent >= stop) {
            ds_report r;
            int rc = conn_handoff(c, peer, &p, &r);
            if (rc == DS_OK) {
                printf("handed off at=%" PRIu64 " total_us=%.1f state_bytes=%" PRIu64 "\n",
                       p.sent, r.total_us, r.state_bytes);
                fflush(stdout);
                return;
            }
            fprintf(stderr, "http: kept here, serving the rest: %s\n", ds_last_error());
            if (rc != DS_EHANDOFF) return; /* the connection is gone */
            stop = UINT64_MAX;
        }
        uint64_t end = p.size < stop ? p.size : stop;
        size_t len = end - p.sent < sizeof chunk ? (size_t)(end - p.sent) : sizeof chunk;
        for (size_t i = 0; i < len; i++) chunk[i] = (uint8_t)((p.sent + i) % 251);
        if (conn_write_all(c, chunk, len) != 0) {
            conn_close(c);
            return;
        }
        p.sent += len;
    }
    conn_close(c);
}

/* Userspace stack: the node accepts clients and connections from the peer alike. */
static void run_user(ds_config *cfg, const char *peer, uint64_t after) {
    ds_node *n = ds_node_new(cfg);
    if (!n) die("starting the node");
    fprintf(stderr, "http: serving\n");
    for (;;) {
        ds_accepted a;
        int rc = ds_accept(n, -1, &a);
        if (rc < 0) die("accept");
        if (rc == 0) continue;
        struct conn c = {.n = n, .id = a.conn, .fd = -1};
        struct progress p;
        if (!a.handed_over)
            serve(&c, NULL, peer, after);
        else if (ds_conn_state(n, a.conn, (uint8_t *)&p, sizeof p) == (ptrdiff_t)sizeof p)
            serve(&c, &p, peer, after);
        else
            ds_close(n, a.conn);
    }
}

/* Kernel sockets: the server's own listening socket, and ds_handoff_fd to move one. */
static void run_kernel(ds_config *cfg, const char *peer, uint64_t after, int port) {
    ds_kernel *k = ds_kernel_new(cfg);
    if (!k) die("starting the kernel node");
    int l = socket(AF_INET6, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in6 any = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&any, sizeof any) != 0 || listen(l, 128) != 0) {
        perror("http: listen");
        exit(1);
    }
    fprintf(stderr, "http: serving (kernel sockets)\n");
    for (;;) {
        struct pollfd fds[2] = {{.fd = l, .events = POLLIN},
                                {.fd = ds_kernel_fd(k), .events = POLLIN}};
        poll(fds, 2, ds_kernel_timeout_ms(k));
        if (ds_kernel_poll(k, 0) != DS_OK) die("kernel node");
        if (fds[0].revents & POLLIN) {
            struct conn c = {.k = k, .fd = accept(l, NULL, NULL)};
            if (c.fd >= 0) serve(&c, NULL, peer, after);
        }
        struct progress p;
        size_t len;
        struct conn c = {.k = k};
        while (ds_kernel_accept(k, 0, &c.fd, (uint8_t *)&p, sizeof p, &len) == 1) {
            if (len == sizeof p)
                serve(&c, &p, peer, after);
            else
                close(c.fd);
        }
    }
}

int main(int argc, char **argv) {
    ds_log_init(NULL);
    ds_config *cfg = ds_config_new();
    const char *peer = NULL;
    uint64_t after = UINT64_MAX;
    int kernel = 0, port = 80;
    for (int i = 1; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq) {
            fprintf(stderr, "usage: http key=value...\n");
            return 2;
        }
        *eq = 0;
        if (strcmp(argv[i], "handoff_after") == 0) {
            after = strtoull(eq + 1, NULL, 10);
            continue;
        }
        if (strcmp(argv[i], "device") == 0) kernel = strcmp(eq + 1, "kernel") == 0;
        if (strcmp(argv[i], "port") == 0) port = atoi(eq + 1);
        if (strcmp(argv[i], "peer") == 0) peer = eq + 1;
        if (ds_config_set(cfg, argv[i], eq + 1) != DS_OK) die("setting");
    }
    if (!peer) after = UINT64_MAX;
    if (kernel)
        run_kernel(cfg, peer, after, port);
    else
        run_user(cfg, peer, after);
    ds_config_free(cfg);
    return 0;
}
