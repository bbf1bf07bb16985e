/*
 * epoll-c: the classic readiness event loop in C, the reference point for an
 * event-driven echo server written by hand with nothing in the way.
 *
 *   - edge-triggered epoll: a connection is registered once, for input and
 *     output, and each wake-up is served until the kernel says EAGAIN, so no
 *     epoll_ctl() is needed per message;
 *   - non-blocking sockets, one 64 KiB read buffer per loop (not per
 *     connection: an idle connection costs a small struct only);
 *   - pending writes: when send() takes less than was read, the rest is kept
 *     in a buffer of the connection and the connection is NOT read again
 *     until that rest is out. The unread bytes then stay in the kernel's
 *     receive buffer and its window pushes back on a client that sends
 *     faster than it reads, instead of this server buffering without bound.
 *     The EPOLLOUT edge (the socket has room again) resumes the connection:
 *     first the rest, then reading;
 *   - --threads N: N independent loops, each with its OWN listening socket
 *     bound to the same port with SO_REUSEPORT; the kernel spreads incoming
 *     connections over the listeners. No state is shared between loops, so
 *     there are no locks and no thundering herd on one listener.
 *
 * SIGINT/SIGTERM stop it: the main thread waits for them with sigwait()
 * (blocked everywhere else), then makes an eventfd readable that every loop
 * watches; each loop closes its connections and returns, and main exits 0.
 *
 * Usage: epoll-c [--threads N] PORT      (listens on 127.0.0.1:PORT only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define MAX_EVENTS 256
#define MAX_THREADS 256
#define BACKLOG 4096 /* a burst of connects must not meet a full queue */

struct conn {
  int fd;
  char *pending;           /* unsent rest of an echo, NULL if none */
  size_t pend_off, pend_len;
  struct conn *prev, *next; /* the loop's list, to close all at shutdown */
};

struct loop {
  int lfd;     /* this loop's listener */
  int stop_fd; /* eventfd shared by all loops: readable = stop */
  int spare_fd; /* a reserved descriptor, released to shed a client on EMFILE */
  struct conn *conns;
  pthread_t thread;
};

/* Markers in epoll_event.data.ptr for the two descriptors that are not
 * connections. */
static char listener_mark, stop_mark;

/* close() can fail (EIO, EINTR); there is nothing to retry (the descriptor
 * is gone either way on Linux), but a failure is reported, not ignored. */
static void close_fd(int fd) {
  if (close(fd) < 0) perror("epoll-c: close");
}

static void conn_close(struct loop *L, struct conn *c) {
  /* close() also removes it from the epoll set (it is the only reference). */
  close_fd(c->fd);
  if (c->prev) c->prev->next = c->next; else L->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c->pending);
  free(c);
}

/* Sends from p until done or the socket is full. Returns the bytes sent, or
 * -1 if the connection failed. */
static ssize_t send_some(int fd, const char *p, size_t n) {
  size_t off = 0;
  while (off < n) {
    ssize_t w = send(fd, p + off, n - off, MSG_NOSIGNAL);
    if (w >= 0) {
      off += (size_t)w;
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else {
      return -1;
    }
  }
  return (ssize_t)off;
}

/* Serves one connection after a wake-up: flush what is pending, then read
 * and echo until EAGAIN (edge-triggered: the next edge only comes after
 * that) or until an echo cannot be written whole. Returns -1 to close. */
static int serve(struct conn *c, char *buf) {
  if (c->pending) {
    ssize_t w = send_some(c->fd, c->pending + c->pend_off,
                          c->pend_len - c->pend_off);
    if (w < 0) return -1;
    c->pend_off += (size_t)w;
    if (c->pend_off < c->pend_len) return 0; /* still full: wait for EPOLLOUT */
    free(c->pending);
    c->pending = NULL;
  }
  for (;;) {
    ssize_t n = recv(c->fd, buf, BUF_SIZE, 0);
    if (n == 0) return -1; /* EOF, and everything read was echoed */
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      return -1; /* ECONNRESET, ... */
    }
    ssize_t w = send_some(c->fd, buf, (size_t)n);
    if (w < 0) return -1;
    if (w < n) {
      /* Keep the rest and stop reading: see the header. */
      c->pend_len = (size_t)(n - w);
      c->pend_off = 0;
      c->pending = malloc(c->pend_len);
      if (!c->pending) return -1;
      memcpy(c->pending, buf + w, c->pend_len);
      return 0;
    }
  }
}

static void accept_clients(int ep, struct loop *L) {
  for (;;) {
    int fd = accept4(L->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR) continue;
      if ((errno == EMFILE || errno == ENFILE) && L->spare_fd >= 0) {
        /* The level-triggered listener would wake us again at once for the
         * same client: use the spare descriptor to take it and close it,
         * then reserve the spare again. */
        close_fd(L->spare_fd);
        int t = accept(L->lfd, NULL, NULL);
        if (t >= 0) close_fd(t);
        L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
      } else if (errno != EAGAIN && errno != EWOULDBLOCK &&
                 errno != ECONNABORTED) {
        perror("epoll-c: accept4");
      }
      return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
      close_fd(fd);
      continue;
    }
    c->fd = fd;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
      perror("epoll-c: epoll_ctl add");
      close_fd(fd);
      free(c);
      continue;
    }
    c->next = L->conns;
    if (L->conns) L->conns->prev = c;
    L->conns = c;
  }
}

static void *run_loop(void *arg) {
  struct loop *L = arg;
  char *buf = malloc(BUF_SIZE);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (!buf || ep < 0) {
    perror("epoll-c: loop setup");
    exit(1);
  }
  /* Listener and stop eventfd are level-triggered: a wake-up that does not
   * consume them (accept stopped at EMFILE; the stop is never read) repeats,
   * which is what both want. */
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &listener_mark};
  struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &stop_mark};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, L->lfd, &lev) < 0 ||
      epoll_ctl(ep, EPOLL_CTL_ADD, L->stop_fd, &sev) < 0) {
    perror("epoll-c: epoll_ctl");
    exit(1);
  }
  L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* -1: no shedding */
  struct epoll_event events[MAX_EVENTS];
  int running = 1;
  while (running) {
    int n = epoll_wait(ep, events, MAX_EVENTS, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("epoll-c: epoll_wait");
      exit(1);
    }
    for (int i = 0; i < n; i++) {
      void *p = events[i].data.ptr;
      if (p == &stop_mark) {
        running = 0;
      } else if (p == &listener_mark) {
        accept_clients(ep, L);
      } else {
        /* Input, output, hang-up or error: serve() finds out which by
         * trying (EOF reads 0, an error fails the call). */
        struct conn *c = p;
        if (serve(c, buf) < 0) conn_close(L, c);
      }
    }
  }
  while (L->conns) conn_close(L, L->conns);
  if (L->spare_fd >= 0) close_fd(L->spare_fd);
  close_fd(ep);
  free(buf);
  return NULL;
}

static int make_listener(int port, int reuseport) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("epoll-c: socket");
    return -1;
  }
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    perror("epoll-c: SO_REUSEADDR");
  } else if (reuseport &&
             setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    perror("epoll-c: SO_REUSEPORT");
  } else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    perror("epoll-c: bind");
  } else if (listen(fd, BACKLOG) < 0) {
    perror("epoll-c: listen");
  } else {
    return fd;
  }
  close_fd(fd);
  return -1;
}

static long parse_num(const char *s, long lo, long hi) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  return errno || end == s || *end || v < lo || v > hi ? -1 : v;
}

int main(int argc, char **argv) {
  long threads = 1, port = -1;
  int i = 1;
  if (argc == 4 && strcmp(argv[1], "--threads") == 0) {
    threads = parse_num(argv[2], 1, MAX_THREADS);
    i = 3;
  }
  if (i == argc - 1) port = parse_num(argv[i], 1, 65535);
  if (threads < 1 || port < 1) {
    fprintf(stderr, "usage: %s [--threads N] PORT   (N in 1..%d)\n", argv[0],
            MAX_THREADS);
    return 2;
  }

  /* Block the stop signals in every thread (the loops inherit the mask);
   * main collects them with sigwait() below. */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  int err = pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  if (err) {
    fprintf(stderr, "epoll-c: pthread_sigmask: %s\n", strerror(err));
    return 1;
  }
  int stop_fd = eventfd(0, EFD_CLOEXEC);
  struct loop *loops = calloc((size_t)threads, sizeof *loops);
  if (stop_fd < 0 || !loops) {
    perror("epoll-c: setup");
    return 1;
  }
  /* Every listener is bound before any loop runs, so the first client finds
   * the port complete. */
  for (long t = 0; t < threads; t++) {
    loops[t].lfd = make_listener((int)port, threads > 1);
    loops[t].stop_fd = stop_fd;
    if (loops[t].lfd < 0) return 1;
  }
  for (long t = 0; t < threads; t++) {
    err = pthread_create(&loops[t].thread, NULL, run_loop, &loops[t]);
    if (err) {
      fprintf(stderr, "epoll-c: pthread_create: %s\n", strerror(err));
      return 1;
    }
  }
  fprintf(stderr, "epoll-c: listening on tcp 127.0.0.1:%ld (%ld loop%s)\n",
          port, threads, threads > 1 ? "s, SO_REUSEPORT listeners" : "");

  int sig;
  err = sigwait(&stop_set, &sig);
  if (err) fprintf(stderr, "epoll-c: sigwait: %s\n", strerror(err));
  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof one) != sizeof one) {
    perror("epoll-c: write eventfd");
    return 1;
  }
  for (long t = 0; t < threads; t++) {
    err = pthread_join(loops[t].thread, NULL);
    if (err) fprintf(stderr, "epoll-c: pthread_join: %s\n", strerror(err));
    close_fd(loops[t].lfd);
  }
  close_fd(stop_fd);
  free(loops);
  fprintf(stderr, "epoll-c: stopped\n");
  return 0;
}
