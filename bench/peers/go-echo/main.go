// go-echo: the echo server as most Go programmers would write it, a peer in
// the comparison for "goroutine per connection on Go's netpoller": the
// thread-per-connection programming model, but the goroutines park on epoll
// and GOMAXPROCS threads run them.
//
// An accept loop, and per connection a goroutine that reads into a 32 KiB
// buffer (the size io.Copy allocates; --buf BYTES changes it) and writes
// each piece back. After the client's EOF everything has been written, so
// CloseWrite() sends our FIN and the client sees the echo end.
//
// --splice echoes with io.Copy(conn, conn) instead: *net.TCPConn implements
// io.ReaderFrom, so for a TCP source Go moves the bytes with splice(2)
// through a pipe, without a user-space buffer. Not the default: the pipe
// costs two more descriptors per connection for as long as it is open.
//
// Go's defaults are kept (TCP_NODELAY on, keepalive on, GOMAXPROCS = CPUs):
// they are what an idiomatic server runs with.
//
// Usage: go-echo [--buf BYTES | --splice] PORT   (listens on 127.0.0.1:PORT only)
package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go-echo [--buf BYTES | --splice] PORT")
	os.Exit(2)
}

// parseArgs reads [--buf BYTES | --splice] PORT; bufSize 0 means --splice.
func parseArgs(args []string) (port int, bufSize int) {
	if len(args) == 0 {
		usage()
	}
	bufSize = 32 * 1024
	flags, last := args[:len(args)-1], args[len(args)-1]
	for i := 0; i < len(flags); i++ {
		switch flags[i] {
		case "--splice":
			bufSize = 0
		case "--buf":
			if i+1 >= len(flags) {
				usage()
			}
			n, err := strconv.Atoi(flags[i+1])
			if err != nil || n <= 0 {
				usage()
			}
			bufSize, i = n, i+1
		default:
			usage()
		}
	}
	port, err := strconv.Atoi(last)
	if err != nil || port <= 0 || port > 65535 {
		usage()
	}
	return port, bufSize
}

func main() {
	port, bufSize := parseArgs(os.Args[1:])
	ln, err := net.Listen("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "go-echo:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "go-echo: listening on tcp 127.0.0.1:%d\n", port)

	// SIGINT/SIGTERM close the listener, which ends the accept loop below;
	// returning from main then ends the connection goroutines too.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-stop
		ln.Close()
	}()

	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			fmt.Fprintln(os.Stderr, "go-echo: stopped")
			return
		}
		if err != nil {
			// Out of descriptors (EMFILE) repeats at once: back off a little
			// instead of spinning, as net/http's server does.
			fmt.Fprintln(os.Stderr, "go-echo: accept:", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		go serve(c.(*net.TCPConn), bufSize)
	}
}

func serve(c *net.TCPConn, bufSize int) {
	defer c.Close()
	if bufSize == 0 {
		// io.Copy returns nil at the client's EOF, after the last byte.
		if _, err := io.Copy(c, c); err == nil {
			c.CloseWrite()
		}
		return
	}
	buf := make([]byte, bufSize)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			// Write returns only when all n bytes are written, or fails.
			if _, werr := c.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF {
			c.CloseWrite()
			return
		}
		if err != nil {
			return
		}
	}
}
