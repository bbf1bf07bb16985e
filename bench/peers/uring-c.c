/*
 * uring-c: an io_uring echo server in C (liburing), the completion-based
 * reference point: every socket operation goes through the ring, in the
 * style of the fast public io_uring servers, so the comparison has the
 * strongest event-loop design Linux offers, not only epoll.
 *
 *   - multishot accept: one request on the listener yields a completion per
 *     client, with no re-submission per connection;
 *   - multishot recv into a provided buffer ring (NBUFS = 256 buffers of
 *     64 KiB per ring): the kernel picks a free buffer only when data
 *     arrives, so an idle connection holds no buffer, just a small struct;
 *   - send from that same buffer (no copy), at most one send in flight per
 *     connection so echoes keep their order; buffers waiting to be sent form
 *     a FIFO per connection; a short send is resent from the first unsent
 *     byte;
 *   - recycle on send completion: a buffer goes back to the ring when all
 *     of its bytes are sent, never earlier;
 *   - flow control: a connection with more than QUEUE_HIGH bytes waiting has
 *     its recv cancelled (the kernel's receive window then pushes back on
 *     the client) and re-armed at or below QUEUE_LOW. When the ring has no
 *     free buffer the kernel ends a recv with -ENOBUFS; that connection
 *     waits in a FIFO ("starved") and is re-armed as buffers come back;
 *   - --threads N: N rings, one thread each, each with its OWN listener
 *     bound with SO_REUSEPORT; nothing is shared between rings.
 *
 * SIGINT/SIGTERM stop it: main waits for them with sigwait() (they are
 * blocked in every thread) and makes an eventfd readable; every ring has a
 * poll request on it, so each loop sees the stop as a completion, tears its
 * ring down and returns, and main exits 0.
 *
 * Needs Linux 6.0 (multishot recv) and liburing >= 2.3. liburing 2.3
 * (Debian 12) lacks io_uring_setup_buf_ring(), so the buffer ring is
 * mmap()ed and registered here by hand.
 *
 * Usage: uring-c [--threads N] PORT      (listens on 127.0.0.1:PORT only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

/* -DNBUFS=4 (say) makes the ring run dry at once: a test of the -ENOBUFS
 * path that the defaults rarely take. */
#ifndef BUF_SIZE
#define BUF_SIZE (64 * 1024)
#endif
#ifndef NBUFS
#define NBUFS 256                  /* a power of two, as the ring needs */
#endif
#define QUEUE_HIGH (1024 * 1024)   /* pause a connection's recv above this */
#define QUEUE_LOW (256 * 1024)     /* ... and resume at or below this */
#define SQ_ENTRIES 1024
#define CQ_ENTRIES 8192            /* multishot requests complete in bursts */
#define BGID 1                     /* the ring's buffer group */
#define MAX_THREADS 256
#define BACKLOG 4096

/* A completion's user_data: the connection pointer (calloc aligns to 16)
 * with the operation in the low bits. */
enum { OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CANCEL, OP_STOP };
#define OP_MASK 7u

struct conn {
  int fd;
  int qhead, qtail;   /* FIFO of buffer ids to send, -1 if empty */
  uint32_t qoff;      /* bytes of the head buffer already sent */
  uint32_t qbytes;    /* bytes queued and not yet sent */
  unsigned recv_armed : 1, send_busy : 1, cancel_busy : 1, starved : 1,
      eof : 1, dead : 1;
  struct conn *starved_next;
  struct conn *prev, *next; /* all connections of the ring, for shutdown */
};

struct ring_loop {
  struct io_uring ring;
  int lfd, stop_fd, spare_fd;
  struct io_uring_buf_ring *br;
  char *bufs;               /* NBUFS * BUF_SIZE */
  uint32_t blen[NBUFS];     /* bytes received into each buffer */
  int bnext[NBUFS];         /* next buffer in its connection's FIFO */
  unsigned free_bufs;       /* buffers in the ring, as far as we know */
  struct conn *starved_head, *starved_tail;
  struct conn *conns;
  int stopping;
  pthread_t thread;
};

/* close() can fail (EIO, EINTR); there is nothing to retry (the descriptor
 * is gone either way on Linux), but a failure is reported, not ignored. */
static void close_fd(int fd) {
  if (close(fd) < 0) perror("uring-c: close");
}

static void die(const char *what, int err) {
  fprintf(stderr, "uring-c: %s: %s\n", what, strerror(err));
  exit(1);
}

static uint64_t tag(struct conn *c, unsigned op) {
  return (uint64_t)(uintptr_t)c | op;
}

static char *buf_at(struct ring_loop *L, int bid) {
  return L->bufs + (size_t)bid * BUF_SIZE;
}

/* A free submission entry; when the queue is full, submitting what is in it
 * makes room. */
static struct io_uring_sqe *sqe_get(struct ring_loop *L) {
  struct io_uring_sqe *sqe;
  while (!(sqe = io_uring_get_sqe(&L->ring))) {
    int r = io_uring_submit(&L->ring);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
      die("io_uring_submit", -r);
  }
  return sqe;
}

static void buf_recycle(struct ring_loop *L, int bid) {
  io_uring_buf_ring_add(L->br, buf_at(L, bid), BUF_SIZE, (unsigned short)bid,
                        io_uring_buf_ring_mask(NBUFS), 0);
  io_uring_buf_ring_advance(L->br, 1);
  L->free_bufs++;
}

static void arm_accept(struct ring_loop *L) {
  struct io_uring_sqe *sqe = sqe_get(L);
  io_uring_prep_multishot_accept(sqe, L->lfd, NULL, NULL, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, OP_ACCEPT);
}

static void arm_recv(struct ring_loop *L, struct conn *c) {
  struct io_uring_sqe *sqe = sqe_get(L);
  io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT; /* the kernel picks a buffer ... */
  sqe->buf_group = BGID;             /* ... from this ring's group */
  io_uring_sqe_set_data64(sqe, tag(c, OP_RECV));
  c->recv_armed = 1;
}

static void cancel_recv(struct ring_loop *L, struct conn *c) {
  struct io_uring_sqe *sqe = sqe_get(L);
  io_uring_prep_cancel64(sqe, tag(c, OP_RECV), 0);
  io_uring_sqe_set_data64(sqe, tag(c, OP_CANCEL));
  c->cancel_busy = 1;
}

/* Sends the unsent part of the head buffer, unless a send is in flight. */
static void send_next(struct ring_loop *L, struct conn *c) {
  if (c->send_busy || c->dead || c->qhead < 0) return;
  int bid = c->qhead;
  struct io_uring_sqe *sqe = sqe_get(L);
  io_uring_prep_send(sqe, c->fd, buf_at(L, bid) + c->qoff,
                     L->blen[bid] - c->qoff, MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, tag(c, OP_SEND));
  c->send_busy = 1;
}

/* Gives every queued buffer back (only when no send reads from them). */
static void drop_queue(struct ring_loop *L, struct conn *c) {
  while (c->qhead >= 0) {
    int bid = c->qhead;
    c->qhead = L->bnext[bid];
    buf_recycle(L, bid);
  }
  c->qtail = -1;
  c->qoff = c->qbytes = 0;
}

static void mark_dead(struct ring_loop *L, struct conn *c) {
  c->dead = 1;
  if (!c->send_busy) drop_queue(L, c);
  if (c->recv_armed && !c->cancel_busy) cancel_recv(L, c);
}

/* Re-arms the recv of a connection that has none, if it may receive now;
 * nobufs: its last recv ended because the ring ran dry. */
static void maybe_rearm(struct ring_loop *L, struct conn *c, int nobufs) {
  if (c->recv_armed || c->cancel_busy || c->starved || c->eof || c->dead)
    return;
  if (c->qbytes > QUEUE_LOW) return; /* a send completion comes back here */
  if (nobufs || L->free_bufs == 0 || L->starved_head) {
    /* Wait in line for buffers: first starved, first re-armed. */
    c->starved = 1;
    c->starved_next = NULL;
    if (L->starved_tail) L->starved_tail->starved_next = c;
    else L->starved_head = c;
    L->starved_tail = c;
    return;
  }
  arm_recv(L, c);
}

/* Closes and frees a connection once nothing of it is in flight. */
static void maybe_finish(struct ring_loop *L, struct conn *c) {
  if (c->recv_armed || c->send_busy || c->cancel_busy || c->starved) return;
  if (!c->dead && !(c->eof && c->qhead < 0)) return;
  /* At EOF everything was echoed: close() sends our FIN after it. */
  close_fd(c->fd);
  if (c->prev) c->prev->next = c->next; else L->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
}

/* After a batch of completions: re-arm starved connections, one per buffer
 * the ring has back. */
static void feed_starved(struct ring_loop *L) {
  unsigned budget = L->free_bufs;
  while (L->starved_head && budget > 0) {
    struct conn *c = L->starved_head;
    L->starved_head = c->starved_next;
    if (!L->starved_head) L->starved_tail = NULL;
    c->starved = 0;
    if (!c->dead && !c->eof && !c->recv_armed && c->qbytes <= QUEUE_LOW) {
      arm_recv(L, c);
      budget--;
    }
    maybe_finish(L, c);
  }
}

static void on_accept(struct ring_loop *L, int res, unsigned flags) {
  if (res >= 0) {
    struct conn *c = calloc(1, sizeof *c);
    if (!c) {
      close_fd(res);
    } else {
      c->fd = res;
      c->qhead = c->qtail = -1;
      c->next = L->conns;
      if (L->conns) L->conns->prev = c;
      L->conns = c;
      arm_recv(L, c);
    }
  } else if ((res == -EMFILE || res == -ENFILE) && L->spare_fd >= 0) {
    /* Out of descriptors: take the waiting client with the spare one and
     * close it, rather than fail on it again at once. */
    close_fd(L->spare_fd);
    int t = accept(L->lfd, NULL, NULL);
    if (t >= 0) close_fd(t);
    L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  } else if (res == -EINVAL || res == -EBADF || res == -ENOTSOCK) {
    die("multishot accept (needs Linux 5.19)", -res);
  } /* else transient (ECONNABORTED, ...) */
  if (!(flags & IORING_CQE_F_MORE) && !L->stopping) arm_accept(L);
}

static void on_recv(struct ring_loop *L, struct conn *c, int res,
                    unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) c->recv_armed = 0; /* the recv ended */
  if (res > 0) {
    int bid = (int)(flags >> IORING_CQE_BUFFER_SHIFT);
    L->free_bufs--;
    if (c->dead) {
      buf_recycle(L, bid);
    } else {
      L->blen[bid] = (uint32_t)res;
      L->bnext[bid] = -1;
      if (c->qtail >= 0) L->bnext[c->qtail] = bid;
      else c->qhead = bid;
      c->qtail = bid;
      c->qbytes += (uint32_t)res;
      send_next(L, c);
      if (c->recv_armed && !c->cancel_busy && c->qbytes > QUEUE_HIGH)
        cancel_recv(L, c); /* flow control: see the header */
    }
  } else {
    if (flags & IORING_CQE_F_BUFFER) { /* a buffer with no data: give back */
      L->free_bufs--;
      buf_recycle(L, (int)(flags >> IORING_CQE_BUFFER_SHIFT));
    }
    if (res == 0) {
      c->eof = 1;
    } else if (res == -EINVAL) {
      die("multishot recv with provided buffers (needs Linux 6.0)", -res);
    } else if (res != -ENOBUFS && res != -ECANCELED) {
      mark_dead(L, c); /* ECONNRESET, ... */
    } /* ENOBUFS: the ring ran dry; ECANCELED: our flow control */
  }
  if (!c->recv_armed) maybe_rearm(L, c, res == -ENOBUFS);
  maybe_finish(L, c);
}

static void on_send(struct ring_loop *L, struct conn *c, int res) {
  c->send_busy = 0;
  if (res <= 0) {
    mark_dead(L, c); /* EPIPE, ECONNRESET; 0 would mean no progress */
  } else if (c->dead) {
    drop_queue(L, c);
  } else {
    int bid = c->qhead;
    c->qoff += (uint32_t)res;
    c->qbytes -= (uint32_t)res;
    if (c->qoff == L->blen[bid]) { /* all of it sent: recycle it */
      c->qoff = 0;
      c->qhead = L->bnext[bid];
      if (c->qhead < 0) c->qtail = -1;
      buf_recycle(L, bid);
    } /* else a short send: the next one starts at qoff */
    send_next(L, c);
    maybe_rearm(L, c, 0);
  }
  maybe_finish(L, c);
}

static void handle(struct ring_loop *L, struct io_uring_cqe *cqe) {
  uint64_t ud = io_uring_cqe_get_data64(cqe);
  struct conn *c = (struct conn *)(uintptr_t)(ud & ~(uint64_t)OP_MASK);
  switch (ud & OP_MASK) {
  case OP_ACCEPT:
    on_accept(L, cqe->res, cqe->flags);
    break;
  case OP_RECV:
    on_recv(L, c, cqe->res, cqe->flags);
    break;
  case OP_SEND:
    on_send(L, c, cqe->res);
    break;
  case OP_CANCEL:
    c->cancel_busy = 0;
    maybe_rearm(L, c, 0);
    maybe_finish(L, c);
    break;
  case OP_STOP:
    L->stopping = 1;
    break;
  }
}

static void ring_setup(struct ring_loop *L) {
  /* The cheapest mode the kernel has: one issuing thread with task work
   * run only when we wait (6.1), else cooperative task work (5.19). */
  static const unsigned modes[] = {
      IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
      IORING_SETUP_COOP_TASKRUN, 0};
  int r = -EINVAL;
  for (size_t i = 0; i < sizeof modes / sizeof modes[0] && r == -EINVAL; i++) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = modes[i] | IORING_SETUP_CQSIZE;
    p.cq_entries = CQ_ENTRIES;
    r = io_uring_queue_init_params(SQ_ENTRIES, &L->ring, &p);
  }
  if (r < 0) die("io_uring_queue_init_params", -r);

  size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
  L->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  L->bufs = mmap(NULL, (size_t)NBUFS * BUF_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (L->br == MAP_FAILED || L->bufs == MAP_FAILED) die("mmap", errno);
  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (uint64_t)(uintptr_t)L->br;
  reg.ring_entries = NBUFS;
  reg.bgid = BGID;
  r = io_uring_register_buf_ring(&L->ring, &reg, 0);
  if (r < 0) die("io_uring_register_buf_ring (needs Linux 5.19)", -r);
  io_uring_buf_ring_init(L->br);
  for (int i = 0; i < NBUFS; i++)
    io_uring_buf_ring_add(L->br, buf_at(L, i), BUF_SIZE, (unsigned short)i,
                          io_uring_buf_ring_mask(NBUFS), i);
  io_uring_buf_ring_advance(L->br, NBUFS);
  L->free_bufs = NBUFS;
}

static void *run_loop(void *arg) {
  struct ring_loop *L = arg;
  /* Set up in this thread: with SINGLE_ISSUER it is the ring's only user. */
  ring_setup(L);
  L->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* -1: no shedding */
  struct io_uring_sqe *sqe = sqe_get(L);
  io_uring_prep_poll_add(sqe, L->stop_fd, POLLIN);
  io_uring_sqe_set_data64(sqe, OP_STOP);
  arm_accept(L);
  while (!L->stopping) {
    int r = io_uring_submit_and_wait(&L->ring, 1);
    if (r < 0 && r != -EINTR && r != -EAGAIN && r != -EBUSY)
      die("io_uring_submit_and_wait", -r);
    struct io_uring_cqe *cqe;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&L->ring, head, cqe) {
      handle(L, cqe);
      n++;
    }
    io_uring_cq_advance(&L->ring, n);
    feed_starved(L);
  }
  /* Tearing the ring down cancels whatever is in flight; then the sockets
   * can be closed. The buffer memory is left to the process's exit, which
   * follows: the kernel may finish cancelling after queue_exit returns. */
  io_uring_queue_exit(&L->ring);
  while (L->conns) {
    struct conn *c = L->conns;
    L->conns = c->next;
    close_fd(c->fd);
    free(c);
  }
  if (L->spare_fd >= 0) close_fd(L->spare_fd);
  return NULL;
}

static int make_listener(int port, int reuseport) {
  /* Non-blocking: the accept() that sheds a client on EMFILE must not wait
   * when the client has gone meanwhile. io_uring's accept copes either way. */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("uring-c: socket");
    return -1;
  }
  int one = 1;
  struct sockaddr_in sa = {.sin_family = AF_INET,
                           .sin_port = htons((uint16_t)port),
                           .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    perror("uring-c: SO_REUSEADDR");
  } else if (reuseport &&
             setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
    perror("uring-c: SO_REUSEPORT");
  } else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    perror("uring-c: bind");
  } else if (listen(fd, BACKLOG) < 0) {
    perror("uring-c: listen");
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

  /* Many connections need many descriptors: take the hard limit. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) perror("uring-c: setrlimit");
  }

  /* The stop signals are blocked in every thread; main takes them with
   * sigwait() below. */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  int err = pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
  if (err) die("pthread_sigmask", err);
  int stop_fd = eventfd(0, EFD_CLOEXEC);
  if (stop_fd < 0) die("eventfd", errno);
  struct ring_loop *loops = calloc((size_t)threads, sizeof *loops);
  if (!loops) die("calloc", errno);
  for (long t = 0; t < threads; t++) {
    loops[t].lfd = make_listener((int)port, threads > 1);
    loops[t].stop_fd = stop_fd;
    if (loops[t].lfd < 0) return 1;
  }
  for (long t = 0; t < threads; t++) {
    err = pthread_create(&loops[t].thread, NULL, run_loop, &loops[t]);
    if (err) die("pthread_create", err);
  }
  fprintf(stderr, "uring-c: listening on tcp 127.0.0.1:%ld (%ld ring%s)\n",
          port, threads, threads > 1 ? "s, SO_REUSEPORT listeners" : "");

  int sig;
  err = sigwait(&stop_set, &sig);
  if (err) fprintf(stderr, "uring-c: sigwait: %s\n", strerror(err));
  uint64_t one = 1;
  if (write(stop_fd, &one, sizeof one) != sizeof one) die("write eventfd", errno);
  for (long t = 0; t < threads; t++) {
    err = pthread_join(loops[t].thread, NULL);
    if (err) fprintf(stderr, "uring-c: pthread_join: %s\n", strerror(err));
    close_fd(loops[t].lfd);
  }
  close_fd(stop_fd);
  free(loops);
  fprintf(stderr, "uring-c: stopped\n");
  return 0;
}
