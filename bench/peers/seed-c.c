/*
 * seed-c: the exercise's thread-per-connection echo server, completed.
 *
 * The design is the textbook one the project started from: a blocking accept
 * loop, and for every client a detached pthread that reads into a 1 KiB
 * buffer and writes each piece back until the client closes. It is in the
 * comparison as the baseline: what the plain design costs before any event
 * loop, so the numbers show what the other designs buy.
 *
 * Completed means the parts the sketch leaves out and a program that runs
 * under load needs, and nothing more:
 *   - writes are full: a blocking send() may still return short (a signal
 *     between two segments), so the rest is sent until all is out;
 *   - MSG_NOSIGNAL: a client that goes away mid-echo must end its thread
 *     with EPIPE, not kill the whole process with SIGPIPE;
 *   - listen backlog 128: a tiny backlog drops SYNs as soon as a few clients
 *     connect at once, which would measure the backlog, not the design;
 *   - SO_REUSEADDR: the comparison starts a fresh server on a fresh port
 *     many times; a run must never fail on a TIME_WAIT of the previous one;
 *   - SIGINT/SIGTERM end the accept loop and the process exits 0. The signals
 *     are blocked in every thread and only let in while the main thread
 *     waits in ppoll(), so they always land there, never in a connection
 *     thread, and never between the check of the flag and the wait.
 *
 * Usage: seed-c PORT        (listens on 127.0.0.1:PORT only)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF_SIZE 1024 /* the exercise's buffer: part of the design measured */
#define BACKLOG 128

static volatile sig_atomic_t stopping;

/* close() can fail (EIO, EINTR); there is nothing to retry (the descriptor
 * is gone either way on Linux), but a failure is reported, not ignored. */
static void close_fd(int fd) {
  if (close(fd) < 0) perror("seed-c: close");
}

static void on_stop(int sig) {
  (void)sig;
  stopping = 1;
}

/* Writes all n bytes. Returns 0, or -1 when the client is gone. */
static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1; /* EPIPE, ECONNRESET, ...: this connection is over */
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* One thread per client: read, echo, repeat until EOF or an error. */
static void *serve_client(void *arg) {
  int fd = (int)(intptr_t)arg;
  char buf[BUF_SIZE];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; /* 0: the client closed; < 0: reset or similar */
    if (send_all(fd, buf, (size_t)n) < 0) break;
  }
  close_fd(fd);
  return NULL;
}

static int parse_port(const char *s) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < 1 || v > 65535) return -1;
  return (int)v;
}

static int make_listener(int port) {
  /* Non-blocking listener: ppoll() is the only place the main thread waits,
   * so a client that vanishes between ppoll() and accept4() (EAGAIN) cannot
   * park it in accept4() with the stop signals blocked. The accepted
   * sockets do not inherit the flag: connection threads block as designed. */
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    perror("seed-c: socket");
    return -1;
  }
  int one = 1;
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* 127.0.0.1 only */
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0) {
    perror("seed-c: SO_REUSEADDR");
  } else if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    perror("seed-c: bind");
  } else if (listen(fd, BACKLOG) < 0) {
    perror("seed-c: listen");
  } else {
    return fd;
  }
  close_fd(fd);
  return -1;
}

int main(int argc, char **argv) {
  int port = argc == 2 ? parse_port(argv[1]) : -1;
  if (port < 0) {
    fprintf(stderr, "usage: %s PORT\n", argv[0]);
    return 2;
  }

  /* Block the stop signals before any thread exists, so every connection
   * thread inherits the mask; keep the old mask for ppoll(). */
  sigset_t stop_set, wait_mask;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  int err = pthread_sigmask(SIG_BLOCK, &stop_set, &wait_mask);
  if (err) {
    fprintf(stderr, "seed-c: pthread_sigmask: %s\n", strerror(err));
    return 1;
  }
  sigdelset(&wait_mask, SIGINT);
  sigdelset(&wait_mask, SIGTERM);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGINT, &sa, NULL) < 0 || sigaction(SIGTERM, &sa, NULL) < 0) {
    perror("seed-c: sigaction");
    return 1;
  }

  /* Threads are created detached: nobody joins them, and their stacks are
   * freed as soon as they return. */
  pthread_attr_t attr;
  if ((err = pthread_attr_init(&attr)) ||
      (err = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED))) {
    fprintf(stderr, "seed-c: pthread_attr: %s\n", strerror(err));
    return 1;
  }

  int lfd = make_listener(port);
  if (lfd < 0) return 1;
  fprintf(stderr, "seed-c: listening on tcp 127.0.0.1:%d\n", port);

  while (!stopping) {
    /* Wait for a client with the stop signals let in; EINTR means one came. */
    struct pollfd p = {.fd = lfd, .events = POLLIN};
    int r = ppoll(&p, 1, NULL, &wait_mask);
    if (r < 0) {
      if (errno == EINTR) continue;
      perror("seed-c: ppoll");
      break;
    }
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
      /* The client may have given up already (ECONNABORTED), or descriptors
       * ran out (EMFILE): report, and wait a moment before the next try so
       * that a full table does not turn into a busy loop. */
      perror("seed-c: accept");
      if (errno == EMFILE || errno == ENFILE || errno == ENOMEM ||
          errno == ENOBUFS)
        usleep(10 * 1000); /* can only fail with EINTR: no signal gets in here */
      continue;
    }
    pthread_t t;
    err = pthread_create(&t, &attr, serve_client, (void *)(intptr_t)cfd);
    if (err) {
      /* Out of threads or memory: this client is refused, the rest served. */
      fprintf(stderr, "seed-c: pthread_create: %s\n", strerror(err));
      close_fd(cfd);
    }
  }

  /* Stopped: no new clients. Returning from main ends the process, and with
   * it the connection threads (their sockets are closed by the kernel). */
  pthread_attr_destroy(&attr);
  close_fd(lfd);
  fprintf(stderr, "seed-c: stopped\n");
  return 0;
}
