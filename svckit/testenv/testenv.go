// Package testenv starts the real infrastructure programs svckit runs on —
// consul, nsqd, nsqlookupd — for integration tests: svckit's own, and
// yours. It is part of svckit's API for your _test.go files (the tests of
// examples/, a module of its own, are models): test a service against the
// real programs on free ports, never against mocks of Consul or NSQ.
// Nothing is mocked.
//
// The programs are not downloaded: they come from $SVCKIT_BIN, the
// directory ./build.sh fills (bin/ of a svckit checkout, which also holds
// svckit's own sensor, worker, app and svckit). Without SVCKIT_BIN,
// BinDir looks for bin/ at the root of the svckit module above the
// working directory, which finds it only inside svckit's own repository:
// a test of another module sets SVCKIT_BIN.
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
// testenv is a thin testing.TB wrapper: the programs are started and ended
// by the module's internal/localstack package, which returns errors and does
// not import testing (`svckit bench` uses it in the production binary); here
// an error fails the test. The package is for tests only, but it is a normal
// package (it takes testing.TB) so that the _test.go files of every package,
// in svckit's module or yours, can import it; no production binary links it.
// It works on Unix systems only.
package testenv

import (
	"testing"
	"time"

	"github.com/svckit/svckit/internal/localstack"
)

// Module is the module path whose root holds bin/.
const Module = localstack.Module

// Default readiness timeouts.
const (
	ConsulReadyTimeout = localstack.ConsulReadyTimeout // 60s
	NSQReadyTimeout    = localstack.NSQReadyTimeout    // 30s
	PassingTimeout     = localstack.PassingTimeout     // 60s
)

// group returns a localstack.Group whose programs live as long as t: each
// gets a t.TempDir(), is killed in t.Cleanup (its log tail printed if t
// failed), and retries are logged with t.Logf.
func group(t testing.TB) *localstack.Group {
	return &localstack.Group{
		TempDir: func() (string, error) { return t.TempDir(), nil },
		Started: func(p *localstack.Process) {
			// Registered after t.TempDir's own cleanup, so it runs before
			// the directory is removed.
			t.Cleanup(func() {
				p.Kill()
				if t.Failed() {
					logTail(t, p)
				}
			})
		},
		Logf: func(format string, args ...any) { t.Logf("testenv: "+format, args...) },
	}
}

// BinDir returns the directory holding the infrastructure binaries: $SVCKIT_BIN
// if set, else bin/ in the root of the svckit module (found by walking up from
// the working directory to the go.mod declaring module github.com/svckit/svckit).
func BinDir(t testing.TB) string {
	t.Helper()
	d, err := localstack.BinDir()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return d
}

// Bin returns the path of the named program in BinDir, failing the test if it
// is not there.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p, err := localstack.Bin(BinDir(t), name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (listen
// on port 0, close). No port is returned twice by one test binary. Another
// process may still take it before it is used: the Start functions retry with
// new ports when a program fails because its port is in use.
func FreePort(t testing.TB) int {
	t.Helper()
	p, err := localstack.FreePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// Addr returns "127.0.0.1:<port>".
func Addr(port int) string { return localstack.Addr(port) }

// Eventually polls cond until it returns true or timeout elapses, every 20ms at
// first, backing off to 200ms. It reports whether cond became true. cond is
// called at least once, and once more at the deadline.
func Eventually(timeout time.Duration, cond func() bool) bool {
	return localstack.Eventually(timeout, cond)
}

// WaitFor is Eventually that fails the test ("timed out after 5s waiting for
// what") when cond does not become true in time.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	if err := localstack.WaitFor(timeout, what, cond); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// HTTPGet performs a GET on url and returns the status code and body.
func HTTPGet(url string) (int, string, error) { return localstack.HTTPGet(url) }

// HTTPPost performs a POST of body to url and returns the status code and the
// response body.
func HTTPPost(url, contentType string, body []byte) (int, string, error) {
	return localstack.HTTPPost(url, contentType, body)
}
