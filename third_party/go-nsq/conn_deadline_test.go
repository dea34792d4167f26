package nsq

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// svckit patch (PATCHED.md, the fourth change): Conn.Read sets no read
// deadline when its buffer serves the read, and a fresh one whenever the
// read may wait on the connection. The read that waits must time out
// after ReadTimeout: neither at once (an old deadline left in force) nor
// never (no deadline at all).
func TestReadDeadlineWhenTheReadMayWait(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan net.Conn, 1)
	go func() {
		s, err := ln.Accept()
		if err != nil {
			close(served)
			return
		}
		s.Write([]byte("12345678")) // then nothing more
		served <- s
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if s := <-served; s != nil {
		defer s.Close()
	}
	const timeout = 300 * time.Millisecond
	cfg := NewConfig()
	cfg.ReadTimeout = timeout
	c := &Conn{conn: nc.(*net.TCPConn), config: cfg}
	c.r = bufio.NewReader(c.conn)

	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "1234" {
		t.Fatalf("first read: %q, %v", buf, err)
	}
	// The deadline in force has passed; the buffer still serves the read.
	c.conn.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "5678" {
		t.Fatalf("a read the buffer serves: %q, %v", buf, err)
	}
	// Nothing buffered: this read waits on the connection, under a fresh
	// deadline.
	start := time.Now()
	_, err = c.Read(buf)
	took := time.Since(start)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a read with nothing to read: %v, want a timeout", err)
	}
	if took < timeout/2 {
		t.Fatalf("the read timed out after %v: the old deadline was left in force, want a fresh one of %v", took, timeout)
	}
}
