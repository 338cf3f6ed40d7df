/* wsecho: the WebSocket echo load client of bench/asgi.py (built by it with gcc).
 *
 *   wsecho -p PORT [-a 127.0.0.1] [-u /ws] [-H host] [-c 50] [-t 2] [-d 8] [-s 32]
 *
 * Opens -c connections to ws://ADDR:PORT/URI (RFC 6455 handshake with the fixed key
 * dGhlIHNhbXBsZSBub25jZQ==; the 101 answer must carry Sec-WebSocket-Accept
 * s3pPLMBiTxaQ9kYGzzhZRbK+xOo=), prints one line "ready {json}" on stdout and waits for
 * a line on stdin. Then -t threads (one epoll each, connections split between them)
 * run for -d seconds: each connection sends one masked text frame of -s bytes (its
 * number and a sequence number, padded with 'x'), waits for the echo, checks it byte
 * for byte against what it sent, and sends the next one. Only correct echoes that
 * complete within the -d seconds count. An echo that differs counts as bad_payload
 * and ends that connection (so do a close frame, a masked or malformed server frame,
 * EOF and socket errors: each is counted). Server pings get a pong; fragmented
 * messages are reassembled. At the end it prints one line "result {json}" (before
 * closing anything, so that the caller can sample the server's CPU first), waits for
 * a line (or EOF) on stdin, sends each connection a close frame (1000) and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
#define RBUF (256 * 1024)
#define HIST_FINE 100000          /* 1 us buckets below 100 ms */
#define HIST_N (HIST_FINE + 10000) /* then 1 ms buckets up to 10 s */

struct conn {
    int fd, id, alive, want_out;
    uint64_t seq;
    unsigned char *rbuf;          /* what the server sent, not parsed yet */
    size_t rlen;
    unsigned char *msg;           /* a fragmented message being reassembled */
    size_t mlen, mcap;
    int mop;                      /* its opcode, 0 = none */
    unsigned char *expect;        /* the payload of the message in flight */
    unsigned char out[16 + 65536 + 256];
    size_t olen, ooff;
    struct timespec sent;
    uint32_t rnd;
};

struct worker {
    pthread_t th;
    struct conn **conns;
    int n;
    uint64_t messages, bad_payload, closed, eof, errors, proto, pings;
    uint32_t *hist;
    char first_error[160];
};

static int msg_size = 32;
static struct timespec t_end;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int past_end(const struct timespec *t) {
    return t->tv_sec > t_end.tv_sec || (t->tv_sec == t_end.tv_sec && t->tv_nsec >= t_end.tv_nsec);
}

static void note(struct worker *w, const char *fmt, int id, const char *what) {
    if (!w->first_error[0])
        snprintf(w->first_error, sizeof w->first_error, fmt, id, what);
}

static uint32_t xorshift(uint32_t *s) {
    uint32_t x = *s;
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return *s = x;
}

/* queue one masked client frame (opcode op, payload p of n bytes) in c->out */
static void frame(struct conn *c, int op, const unsigned char *p, size_t n) {
    if (c->olen + n + 14 > sizeof c->out)
        return;                   /* no room (only a pong can be dropped so) */
    unsigned char *o = c->out + c->olen;
    size_t h = 0;
    o[h++] = 0x80 | op;
    if (n < 126) {
        o[h++] = 0x80 | n;
    } else {
        o[h++] = 0x80 | 126;
        o[h++] = n >> 8;
        o[h++] = n & 0xff;
    }
    uint32_t m = xorshift(&c->rnd);
    unsigned char mk[4] = {m >> 24, m >> 16, m >> 8, m};
    memcpy(o + h, mk, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        o[h + i] = p[i] ^ mk[i & 3];
    c->olen += h + n;
}

static int flush_out(struct worker *w, struct conn *c, int ep) {
    while (c->ooff < c->olen) {
        ssize_t k = send(c->fd, c->out + c->ooff, c->olen - c->ooff, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                if (!c->want_out) {
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    c->want_out = 1;
                }
                return 0;
            }
            note(w, "conn %d: send: %s", c->id, strerror(errno));
            return -1;
        }
        c->ooff += k;
    }
    c->olen = c->ooff = 0;
    if (c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = 0;
    }
    return 0;
}

static void next_message(struct conn *c) {
    c->seq++;
    int k = snprintf((char *)c->expect, msg_size + 1, "%06d:%012llu:", c->id,
                     (unsigned long long)c->seq);
    if (k > msg_size)
        k = msg_size;
    memset(c->expect + k, 'x', msg_size - k);
    clock_gettime(CLOCK_MONOTONIC, &c->sent);
    frame(c, 1, c->expect, msg_size);
}

static void kill_conn(struct conn *c, int ep) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    c->alive = 0;
}

/* a whole message arrived: check it; returns -1 to drop the connection */
static int on_message(struct worker *w, struct conn *c, int op, const unsigned char *p, size_t n) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (op != 1 || n != (size_t)msg_size || memcmp(p, c->expect, n) != 0) {
        w->bad_payload++;
        note(w, "conn %d: %s", c->id, op != 1 ? "echo was not a text message" :
             "echo differs from the message sent");
        return -1;
    }
    if (past_end(&t))
        return 1;                 /* after the window: not counted, no next message */
    w->messages++;
    long us = (t.tv_sec - c->sent.tv_sec) * 1000000L + (t.tv_nsec - c->sent.tv_nsec) / 1000;
    if (us < 0)
        us = 0;
    size_t b = us < HIST_FINE ? (size_t)us : HIST_FINE + (size_t)(us / 1000);
    if (b >= HIST_N)
        b = HIST_N - 1;
    w->hist[b]++;
    next_message(c);
    return 0;
}

/* parse what is in c->rbuf; returns -1 to drop the connection */
static int parse(struct worker *w, struct conn *c) {
    size_t off = 0;
    int rc = 0;
    while (rc == 0) {
        unsigned char *b = c->rbuf + off;
        size_t have = c->rlen - off;
        if (have < 2)
            break;
        int fin = b[0] & 0x80, op = b[0] & 0x0f;
        if (b[0] & 0x70) {
            w->proto++;
            note(w, "conn %d: %s", c->id, "server frame with RSV bits set");
            return -1;
        }
        if (b[1] & 0x80) {
            w->proto++;
            note(w, "conn %d: %s", c->id, "masked server frame");
            return -1;
        }
        uint64_t n = b[1] & 0x7f;
        size_t h = 2;
        if (n == 126) {
            if (have < 4)
                break;
            n = ((uint64_t)b[2] << 8) | b[3];
            h = 4;
        } else if (n == 127) {
            if (have < 10)
                break;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = (n << 8) | b[2 + i];
            h = 10;
        }
        if (n > RBUF - 16) {
            w->proto++;
            note(w, "conn %d: %s", c->id, "server frame too big");
            return -1;
        }
        if (have < h + n)
            break;
        const unsigned char *p = b + h;
        off += h + n;
        if (op == 8) {            /* close */
            w->closed++;
            char why[64];
            snprintf(why, sizeof why, "server closed (code %d)",
                     n >= 2 ? (p[0] << 8) | p[1] : 1005);
            note(w, "conn %d: %s", c->id, why);
            return -1;
        } else if (op == 9) {     /* ping */
            w->pings++;
            if (n <= 125)
                frame(c, 10, p, n);
        } else if (op == 10) {    /* pong */
        } else if (op == 0 || op == 1 || op == 2) {
            if (op != 0 && c->mop) {
                w->proto++;
                note(w, "conn %d: %s", c->id, "new message inside a fragmented one");
                return -1;
            }
            if (op == 0 && !c->mop) {
                w->proto++;
                note(w, "conn %d: %s", c->id, "continuation frame without a message");
                return -1;
            }
            if (fin && !c->mop) {
                rc = on_message(w, c, op, p, n);
            } else {
                if (!c->mop)
                    c->mop = op, c->mlen = 0;
                if (c->mlen + n > c->mcap) {
                    c->mcap = (c->mlen + n) * 2;
                    c->msg = realloc(c->msg, c->mcap);
                }
                memcpy(c->msg + c->mlen, p, n);
                c->mlen += n;
                if (fin) {
                    int mop = c->mop;
                    c->mop = 0;
                    rc = on_message(w, c, mop, c->msg, c->mlen);
                }
            }
        } else {
            w->proto++;
            note(w, "conn %d: %s", c->id, "unknown opcode");
            return -1;
        }
    }
    if (off) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    return rc < 0 ? -1 : 0;
}

static void *run(void *arg) {
    struct worker *w = arg;
    int ep = epoll_create1(0);
    for (int i = 0; i < w->n; i++) {
        struct conn *c = w->conns[i];
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
        next_message(c);
        if (flush_out(w, c, ep) < 0) {
            w->errors++;
            kill_conn(c, ep);
        }
    }
    struct epoll_event evs[256];
    for (;;) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        if (past_end(&t))
            break;
        long ms = (t_end.tv_sec - t.tv_sec) * 1000 + (t_end.tv_nsec - t.tv_nsec) / 1000000 + 1;
        int k = epoll_wait(ep, evs, 256, ms > 100 ? 100 : (int)ms);
        for (int i = 0; i < k; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c->alive)
                continue;
            if (evs[i].events & EPOLLOUT) {
                if (flush_out(w, c, ep) < 0) {
                    w->errors++;
                    kill_conn(c, ep);
                    continue;
                }
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                continue;
            ssize_t r = recv(c->fd, c->rbuf + c->rlen, RBUF - c->rlen, 0);
            if (r == 0) {
                w->eof++;
                note(w, "conn %d: %s", c->id, "server closed the TCP connection");
                kill_conn(c, ep);
                continue;
            }
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                    continue;
                w->errors++;
                note(w, "conn %d: recv: %s", c->id, strerror(errno));
                kill_conn(c, ep);
                continue;
            }
            c->rlen += r;
            if (parse(w, c) < 0 || flush_out(w, c, ep) < 0) {
                kill_conn(c, ep);
                continue;
            }
        }
    }
    close(ep);
    return NULL;
}

/* connect and do the opening handshake (blocking, 10 s timeouts); NULL on failure */
static struct conn *open_conn(int id, const char *addr, int port, const char *uri,
                              const char *host, char *err, size_t errlen) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, addr, &sa.sin_addr);
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        snprintf(err, errlen, "conn %d: connect: %s", id, strerror(errno));
        close(fd);
        return NULL;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n", uri, host);
    if (send(fd, req, n, MSG_NOSIGNAL) != n) {
        snprintf(err, errlen, "conn %d: sending the handshake: %s", id, strerror(errno));
        close(fd);
        return NULL;
    }
    struct conn *c = calloc(1, sizeof *c);
    c->rbuf = malloc(RBUF);
    size_t got = 0;
    char *end = NULL;
    while (!end) {
        ssize_t r = recv(fd, c->rbuf + got, RBUF - 1 - got, 0);
        if (r <= 0) {
            snprintf(err, errlen, "conn %d: %s during the handshake", id,
                     r == 0 ? "EOF" : strerror(errno));
            goto fail;
        }
        got += r;
        c->rbuf[got] = 0;
        end = strstr((char *)c->rbuf, "\r\n\r\n");
        if (!end && got >= RBUF - 1) {
            snprintf(err, errlen, "conn %d: handshake answer too long", id);
            goto fail;
        }
    }
    char *head = (char *)c->rbuf;
    size_t headlen = end + 4 - head;
    if (strncmp(head, "HTTP/1.1 101", 12) != 0) {
        char *eol = strstr(head, "\r\n");
        snprintf(err, errlen, "conn %d: handshake answered '%.*s'", id,
                 (int)(eol ? eol - head : 40), head);
        goto fail;
    }
    /* Sec-WebSocket-Accept, name case-insensitive */
    int ok = 0;
    for (char *line = strstr(head, "\r\n"); line && line < end; line = strstr(line + 2, "\r\n")) {
        char *l = line + 2;
        if (strncasecmp(l, "sec-websocket-accept:", 21) == 0) {
            l += 21;
            while (*l == ' ' || *l == '\t')
                l++;
            ok = strncmp(l, ACCEPT "\r\n", strlen(ACCEPT) + 2) == 0;
            break;
        }
    }
    if (!ok) {
        snprintf(err, errlen, "conn %d: no or wrong Sec-WebSocket-Accept in the 101", id);
        goto fail;
    }
    c->rlen = got - headlen;
    memmove(c->rbuf, c->rbuf + headlen, c->rlen);
    tv.tv_sec = 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->fd = fd;
    c->id = id;
    c->alive = 1;
    c->expect = malloc(msg_size + 32);
    c->rnd = 0x9e3779b9u ^ (uint32_t)(id * 2654435761u);
    if (!c->rnd)
        c->rnd = 1;
    return c;
fail:
    free(c->rbuf);
    free(c);
    close(fd);
    return NULL;
}

static double pct(const uint32_t *h, uint64_t total, double q) {
    if (!total)
        return -1;
    uint64_t want = (uint64_t)(q * total), acc = 0;
    if (want >= total)
        want = total - 1;
    for (size_t b = 0; b < HIST_N; b++) {
        acc += h[b];
        if (acc > want)
            return b < HIST_FINE ? (double)b : (double)(b - HIST_FINE) * 1000.0;
    }
    return -1;
}

static void json_str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            putchar('\\');
        if ((unsigned char)*s >= 0x20)
            putchar(*s);
    }
    putchar('"');
}

static void wait_line(void) {
    char line[64];
    if (!fgets(line, sizeof line, stdin)) {}
}

int main(int argc, char **argv) {
    const char *addr = "127.0.0.1", *uri = "/ws", *host = NULL;
    int port = 0, nconn = 50, nthr = 2;
    double dur = 8;
    int o;
    while ((o = getopt(argc, argv, "a:p:u:H:c:t:d:s:")) != -1) {
        switch (o) {
        case 'a': addr = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'u': uri = optarg; break;
        case 'H': host = optarg; break;
        case 'c': nconn = atoi(optarg); break;
        case 't': nthr = atoi(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 's': msg_size = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s -p PORT [-a ADDR] [-u URI] [-H HOST] [-c CONNS] "
                    "[-t THREADS] [-d SECONDS] [-s BYTES]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || nconn < 1 || nthr < 1 || dur <= 0 || msg_size < 20 || msg_size > 65535) {
        fprintf(stderr, "wsecho: bad arguments (-p required; -s 20..65535)\n");
        return 2;
    }
    char hostbuf[300];
    if (!host) {
        snprintf(hostbuf, sizeof hostbuf, "%s:%d", addr, port);
        host = hostbuf;
    }
    if (nthr > nconn)
        nthr = nconn;
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct conn **conns = calloc(nconn, sizeof *conns);
    int connected = 0, failed = 0;
    char err[200] = "";
    double t0 = now_s();
    for (int i = 0; i < nconn; i++) {
        char e[200];
        conns[i] = open_conn(i, addr, port, uri, host, e, sizeof e);
        if (conns[i])
            connected++;
        else {
            failed++;
            if (!err[0])
                snprintf(err, sizeof err, "%s", e);
        }
    }
    double hs = now_s() - t0;
    printf("ready {\"connected\": %d, \"handshake_failed\": %d, \"handshake_s\": %.3f, "
           "\"first_error\": ", connected, failed, hs);
    json_str(err);
    printf("}\n");
    fflush(stdout);
    if (!connected)
        return 1;
    wait_line();

    struct worker *ws = calloc(nthr, sizeof *ws);
    for (int t = 0; t < nthr; t++) {
        ws[t].conns = calloc(nconn, sizeof(struct conn *));
        ws[t].hist = calloc(HIST_N, sizeof(uint32_t));
    }
    int k = 0;
    for (int i = 0; i < nconn; i++)
        if (conns[i]) {
            struct worker *w = &ws[k++ % nthr];
            w->conns[w->n++] = conns[i];
        }
    clock_gettime(CLOCK_MONOTONIC, &t_end);
    double start = t_end.tv_sec + t_end.tv_nsec / 1e9;
    long long ns = (long long)(dur * 1e9);
    t_end.tv_sec += ns / 1000000000LL;
    t_end.tv_nsec += ns % 1000000000LL;
    if (t_end.tv_nsec >= 1000000000L)
        t_end.tv_sec++, t_end.tv_nsec -= 1000000000L;
    for (int t = 0; t < nthr; t++)
        pthread_create(&ws[t].th, NULL, run, &ws[t]);
    for (int t = 0; t < nthr; t++)
        pthread_join(ws[t].th, NULL);
    double elapsed = now_s() - start;

    uint64_t msgs = 0, bad = 0, closed = 0, eof = 0, errors = 0, proto = 0, pings = 0;
    uint32_t *h = calloc(HIST_N, sizeof(uint32_t));
    const char *first = "";
    for (int t = 0; t < nthr; t++) {
        msgs += ws[t].messages; bad += ws[t].bad_payload; closed += ws[t].closed;
        eof += ws[t].eof; errors += ws[t].errors; proto += ws[t].proto; pings += ws[t].pings;
        for (size_t b = 0; b < HIST_N; b++)
            h[b] += ws[t].hist[b];
        if (!first[0] && ws[t].first_error[0])
            first = ws[t].first_error;
    }
    int alive = 0;
    for (int i = 0; i < nconn; i++)
        if (conns[i] && conns[i]->alive)
            alive++;
    printf("result {\"connections\": %d, \"threads\": %d, \"size\": %d, \"messages\": %llu, "
           "\"elapsed_s\": %.4f, \"rate\": %.1f, \"p50_us\": %.0f, \"p90_us\": %.0f, "
           "\"p99_us\": %.0f, \"max_us\": %.0f, \"bad_payload\": %llu, \"closed_by_server\": %llu, "
           "\"eof\": %llu, \"socket_errors\": %llu, \"protocol_errors\": %llu, \"pings\": %llu, "
           "\"alive_at_end\": %d, \"first_error\": ",
           connected, nthr, msg_size, (unsigned long long)msgs, elapsed, msgs / elapsed,
           pct(h, msgs, 0.5), pct(h, msgs, 0.9), pct(h, msgs, 0.99), pct(h, msgs, 1.0),
           (unsigned long long)bad, (unsigned long long)closed, (unsigned long long)eof,
           (unsigned long long)errors, (unsigned long long)proto, (unsigned long long)pings,
           alive);
    json_str(first);
    printf("}\n");
    fflush(stdout);
    wait_line();
    /* a close frame (1000) on each live connection, then close */
    for (int i = 0; i < nconn; i++) {
        struct conn *c = conns[i];
        if (!c)
            continue;
        if (c->alive) {
            unsigned char code[2] = {0x03, 0xe8};
            c->olen = c->ooff = 0;
            frame(c, 8, code, 2);
            ssize_t r = send(c->fd, c->out, c->olen, MSG_NOSIGNAL);
            (void)r;
        }
    }
    usleep(50000);
    for (int i = 0; i < nconn; i++)
        if (conns[i])
            close(conns[i]->fd);
    return 0;
}
