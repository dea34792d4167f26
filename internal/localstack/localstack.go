// Package localstack starts the real infrastructure programs svckit runs on —
// consul, nsqd, nsqlookupd, built into bin/ by ./build.sh — on free loopback
// ports, for programs that need a whole stack on one machine: `svckit bench`,
// and through the thin testing.TB wrapper svckit/testenv, the integration
// tests. Nothing is mocked.
//
// A Group starts processes and ends them: every program writes its stdout
// and stderr to <dir>/<name>.log, where each new program gets a new directory
// (Group.TempDir), and Group.Close kills every process the group started and
// removes the directories it made. Children also die with this process
// (PR_SET_PDEATHSIG on Linux), so a program killed from outside leaves no
// orphans behind.
//
// Readiness is always a polled condition with a deadline (Eventually), never a
// sleep. Failures are errors; nothing here panics or exits, and the package
// does not import testing, so it can be linked into a production binary.
// Timeouts are generous because several programs may start stacks in
// parallel on small machines. It works on Unix systems only.
package localstack

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
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
func BinDir() (string, error) {
	if d := os.Getenv("SVCKIT_BIN"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("working directory: %w", err)
	}
	for dir := wd; ; {
		if modulePath(filepath.Join(dir, "go.mod")) == Module {
			return filepath.Join(dir, "bin"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod for module %s above %s (set SVCKIT_BIN to the directory holding consul, nsqd, nsqlookupd)", Module, wd)
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

// Bin returns the path of the named program in dir, or in BinDir() if dir is
// "", with an error if it is not there.
func Bin(dir, name string) (string, error) {
	if dir == "" {
		d, err := BinDir()
		if err != nil {
			return "", err
		}
		dir = d
	}
	p := filepath.Join(dir, name)
	st, err := os.Stat(p)
	if err == nil && st.IsDir() {
		err = errors.New("is a directory")
	}
	if err != nil {
		return "", fmt.Errorf("%s not found (%v): run ./build.sh first", p, err)
	}
	return p, nil
}

// handedOut remembers the ports FreePort returned in this process: the kernel
// may give the same ephemeral port twice in a row once it is closed again,
// and two programs must not be told the same port.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago (listen
// on port 0, close). No port is returned twice in one process. Another
// process may still take it before it is used: the Start functions retry with
// new ports when a program fails because its port is in use.
func FreePort() (int, error) {
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("free port: %w", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		_ = l.Close()
		handedOut.Lock()
		dup := handedOut.ports[port]
		handedOut.ports[port] = true
		handedOut.Unlock()
		if !dup {
			return port, nil
		}
	}
	return 0, errors.New("no unused free port after 100 attempts")
}

// freePorts returns n ports from FreePort.
func freePorts(n int) ([]int, error) {
	ps := make([]int, n)
	for i := range ps {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ps[i] = p
	}
	return ps, nil
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

// WaitFor is Eventually that returns an error ("timed out after 5s waiting
// for what") when cond does not become true in time.
func WaitFor(timeout time.Duration, what string, cond func() bool) error {
	if !Eventually(timeout, cond) {
		return fmt.Errorf("timed out after %s waiting for %s", timeout, what)
	}
	return nil
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

// Group starts programs and ends them. The zero Group is ready to use: it
// finds binaries with BinDir, gives each program a new directory under
// os.TempDir() and removes those directories in Close. Its methods are safe
// for concurrent use.
type Group struct {
	// BinDir holds consul, nsqd and nsqlookupd; "" means BinDir().
	BinDir string
	// TempDir, if set, returns a new directory for a program's log (and
	// nsqd's data) instead of one the group makes; the group does not
	// remove what it returns.
	TempDir func() (string, error)
	// Started, if set, is called with every process the group starts,
	// before it is started (a restart is the same process).
	Started func(*Process)
	// Logf, if set, is told about retries (a port taken meanwhile).
	Logf func(format string, args ...any)

	mu    sync.Mutex
	procs []*Process
	dirs  []string
}

// NewDir returns a new directory: from g.TempDir if set, else a directory
// under os.TempDir() that Close removes.
func (g *Group) NewDir() (string, error) {
	if g.TempDir != nil {
		return g.TempDir()
	}
	d, err := os.MkdirTemp("", "svckit-localstack-")
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	g.mu.Lock()
	g.dirs = append(g.dirs, d)
	g.mu.Unlock()
	return d, nil
}

// Bin returns the path of the named program in g.BinDir (or BinDir()).
func (g *Group) Bin(name string) (string, error) { return Bin(g.BinDir, name) }

// Close kills every process the group started, newest first, waits until
// they have been reaped, and removes the directories the group made. The
// group can be used again afterwards.
func (g *Group) Close() {
	g.mu.Lock()
	ps, ds := g.procs, g.dirs
	g.procs, g.dirs = nil, nil
	g.mu.Unlock()
	for _, p := range slices.Backward(ps) {
		p.Kill()
	}
	for _, d := range ds {
		_ = os.RemoveAll(d)
	}
}

func (g *Group) logf(format string, args ...any) {
	if g.Logf != nil {
		g.Logf(format, args...)
	}
}
