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
 * Every key=value argument but handoff_after is a node setting (ds_config_set). */
#define _GNU_SOURCE
#include <dserver.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What travels with a connection. */
struct progress {
    uint64_t sent;
    uint64_t size;
};

static void die(const char *what) {
    fprintf(stderr, "http: %s: %s\n", what, ds_last_error());
    exit(1);
}

/* Write all of buf, running the node while the send buffer is full. */
static int write_all(ds_node *n, uint64_t c, const uint8_t *buf, size_t len) {
    while (len > 0) {
        ptrdiff_t k = ds_write(n, c, buf, len);
        if (k == DS_AGAIN) {
            if (ds_node_poll(n, 10) != DS_OK) return -1;
            continue;
        }
        if (k < 0) return -1;
        buf += k;
        len -= (size_t)k;
    }
    return 0;
}

/* Read the request head; 0 and p->size set, or -1. */
static int read_request(ds_node *n, uint64_t c, struct progress *p) {
    char req[4096];
    size_t have = 0;
    while (!memmem(req, have, "\r\n\r\n", 4)) {
        if (have == sizeof req - 1) return -1; /* too long */
        ptrdiff_t k = ds_read(n, c, (uint8_t *)req + have, sizeof req - 1 - have);
        if (k == DS_AGAIN) {
            if (ds_node_poll(n, 10) != DS_OK) return -1;
            continue;
        }
        if (k <= 0) return -1; /* end of data or error */
        have += (size_t)k;
    }
    req[have] = 0;
    p->sent = 0;
    if (sscanf(req, "GET /%" SCNu64, &p->size) != 1) p->size = 1 << 20;
    char head[128];
    int len = snprintf(head, sizeof head,
                       "HTTP/1.0 200 OK\r\nContent-Length: %" PRIu64 "\r\n\r\n", p->size);
    return write_all(n, c, (const uint8_t *)head, (size_t)len);
}

static void serve(ds_node *n, const ds_accepted *a, const char *peer, uint64_t after) {
    struct progress p;
    uint64_t stop = after;
    if (a->handed_over) {
        /* Handed over by the peer: continue where it stopped, and finish here. */
        if (ds_conn_state(n, a->conn, (uint8_t *)&p, sizeof p) != (ptrdiff_t)sizeof p) {
            ds_close(n, a->conn);
            return;
        }
        stop = UINT64_MAX;
    } else if (read_request(n, a->conn, &p) != 0) {
        ds_close(n, a->conn);
        return;
    }
    uint8_t chunk[16384];
    while (p.sent < p.size) {
        if (p.sent >= stop) {
            ds_report r;
            if (ds_handoff(n, a->conn, peer, (const uint8_t *)&p, sizeof p, &r) == DS_OK) {
                printf("handed off at=%" PRIu64 " total_us=%.1f state_bytes=%" PRIu64 "\n",
                       p.sent, r.total_us, r.state_bytes);
                fflush(stdout);
                return;
            }
            fprintf(stderr, "http: kept here, serving the rest: %s\n", ds_last_error());
            stop = UINT64_MAX;
        }
        uint64_t end = p.size < stop ? p.size : stop;
        size_t len = end - p.sent < sizeof chunk ? (size_t)(end - p.sent) : sizeof chunk;
        for (size_t i = 0; i < len; i++) chunk[i] = (uint8_t)((p.sent + i) % 251);
        if (write_all(n, a->conn, chunk, len) != 0) {
            ds_close(n, a->conn);
            return;
        }
        p.sent += len;
    }
    ds_close(n, a->conn);
}

int main(int argc, char **argv) {
    ds_log_init(NULL);
    ds_config *cfg = ds_config_new();
    const char *peer = NULL;
    uint64_t after = UINT64_MAX;
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
        if (strcmp(argv[i], "peer") == 0) peer = eq + 1;
        if (ds_config_set(cfg, argv[i], eq + 1) != DS_OK) die("setting");
    }
    if (!peer) after = UINT64_MAX;
    ds_node *n = ds_node_new(cfg);
    ds_config_free(cfg);
    if (!n) die("starting the node");
    fprintf(stderr, "http: serving\n");
    for (;;) {
        ds_accepted a;
        int rc = ds_accept(n, -1, &a);
        if (rc < 0) die("accept");
        if (rc == 1) serve(n, &a, peer, after);
    }
}
