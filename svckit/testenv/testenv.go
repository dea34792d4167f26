// Package testenv starts the real infrastructure programs svckit runs on —
// consul, nsqd, nsqlookupd, built into bin/ by ./build.sh — for integration
// tests. Nothing is mocked.
//
// Every program listens on free loopback ports chosen at start, keeps its data
// in t.TempDir(), writes its stdout and stderr to <tmp>/<name>.log, and is
// killed in t.Cleanup; when the test failed, the tail of each log is printed
// with t.Logf. Children also die with the test binary (PR_SET_PDEATHSIG on
// Linux), so a test killed by `go test -timeout` leaves no orphans behind.
//
// Readiness is always a polled condition with a deadline (WaitFor,
// Eventually), never a sleep. Timeouts are generous because several test
// packages run these programs in parallel on small machines.
//
// The package is for tests only, but it is a normal package (it takes
// testing.TB) so that the _test.go files of every package can import it. It
// works on Unix systems only.
package testenv

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Module is the module path whose root holds bin/.
const Module = "github.com/svckit/svckit"

// Default readiness timeouts.
const (
	ConsulReadyTimeout = 60 * time.Second
	NSQReadyTimeout    = 30 * time.Second
	PassingTimeout     = 60 * time.Second
)

// BinDir returns the directory holding the infrastructure binaries: $SVCKIT_BIN
// if set, else bin/ in the root of the svckit module (found by walking up from
// the working directory to the go.mod declaring module github.com/svckit/svckit).
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("SVCKIT_BIN"); d != "" {
		return d
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatalf("testenv: working directory: %v", err)
	}
	for dir := wd; ; {
		if modulePath(filepath.Join(dir, "go.mod")) == Module {
			return filepath.Join(dir, "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("testenv: no go.mod for module %s above %s (set SVCKIT_BIN to the directory holding consul, nsqd, nsqlookupd)", Module, wd)
		}
		dir = parent
	}
}

// modulePath returns the module path declared in the go.mod file at path, or
// "" if there is none.
func modulePath(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "module"); ok && (rest == "" || rest[0] == ' ' || rest[0] == '\t') {
			if i := strings.Index(rest, "//"); i >= 0 {
				rest = rest[:i]
			}
			return strings.Trim(strings.TrimSpace(rest), "\"`")
		}
	}
	return ""
}

// Bin returns the path of the named program in BinDir, failing the test if it
// is not there.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(BinDir(t), name)
	st, err := os.Stat(p)
	if err != nil || st.IsDir() {
		t.Fatalf("testenv: %s not found (%v): run ./build.sh first", p, err)
	}
	return p
}

// handedOut remembers the ports FreePort returned in this test binary: the
// kernel may give the same ephemeral port twice in a row once it is closed
// again, and two programs of one test must not be told the same port.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (listen
// on port 0, close). No port is returned twice by one test binary. Another
// process may still take it before it is used: the Start functions retry with
// new ports when a program fails because its port is in use.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: free port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		handedOut.Lock()
		dup := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if !dup {
			return port
		}
	}
	t.Fatalf("testenv: no unused free port after 100 attempts")
	return 0
}

// Addr returns "127.0.0.1:<port>".
func Addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// Eventually polls cond until it returns true or timeout elapses, every 20ms at
// first, backing off to 200ms. It reports whether cond became true. cond is
// called at least once, and once more at the deadline.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	delay := 20 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		timer.Reset(min(delay, left))
		<-timer.C
		delay = min(delay*3/2, 200*time.Millisecond)
	}
}

// WaitFor is Eventually that fails the test ("timed out after 5s waiting for
// what") when cond does not become true in time.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if !Eventually(timeout, cond) {
		t.Fatalf("testenv: timed out after %s waiting for %s", timeout, what)
	}
}

// httpClient talks to the programs' HTTP APIs. No keep-alive: programs are
// killed and restarted on the same ports all the time.
var httpClient = &http.Client{
	Timeout:   3 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

// HTTPGet performs a GET on url and returns the status code and body.
func HTTPGet(url string) (int, string, error) {
	resp, err := httpClient.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(b), err
}

// HTTPPost performs a POST of body to url and returns the status code and the
// response body.
func HTTPPost(url, contentType string, body []byte) (int, string, error) {
	resp, err := httpClient.Post(url, contentType, strings.NewReader(string(body)))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	return resp.StatusCode, string(b), err
}

// pingOK reports whether GET http://<httpAddr>/ping answers 200 "OK" (nsqd,
// nsqlookupd).
func pingOK(httpAddr string) bool {
	code, body, err := HTTPGet("http://" + httpAddr + "/ping")
	return err == nil && code == http.StatusOK && strings.TrimSpace(body) == "OK"
}
