package replaytest_test

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// rec is a replaytest.TB that records what the suite reports instead of
// failing the test, so that a test can require a check to fail.
type rec struct {
	name   string
	parent *rec
	log    *recLog
	failed bool
}

type recLog struct {
	mu      sync.Mutex
	failed  []string // "name: message"
	skipped []string
}

func newRec() *rec { return &rec{name: "suite", log: &recLog{}} }

func (r *rec) Helper()                   {}
func (r *rec) Logf(string, ...any)       {}
func (r *rec) Errorf(f string, a ...any) { r.fail(fmt.Sprintf(f, a...)) }

func (r *rec) Fatalf(f string, a ...any) {
	r.fail(fmt.Sprintf(f, a...))
	runtime.Goexit()
}

func (r *rec) Skipf(f string, a ...any) {
	r.log.mu.Lock()
	r.log.skipped = append(r.log.skipped, r.name+": "+fmt.Sprintf(f, a...))
	r.log.mu.Unlock()
	runtime.Goexit()
}

func (r *rec) fail(msg string) {
	r.log.mu.Lock()
	defer r.log.mu.Unlock()
	r.log.failed = append(r.log.failed, r.name+": "+msg)
	for x := r; x != nil; x = x.parent {
		x.failed = true
	}
}

// Run runs f on a goroutine of its own, as testing does, so that Fatalf
// and Skipf end only f.
func (r *rec) Run(name string, f func(*rec)) bool {
	c := &rec{name: r.name + "/" + name, parent: r, log: r.log}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(c)
	}()
	<-done
	return !c.failed
}

// record runs suite on a new recorder.
func record(suite func(*rec)) *recLog {
	r := newRec()
	r.Run("", suite)
	return r.log
}

// failures are the recorded failures of subtests whose name ends with
// check (every failure for "").
func (l *recLog) failures(check string) []string {
	var out []string
	for _, f := range l.failed {
		name, _, _ := strings.Cut(f, ": ")
		if check == "" || strings.HasSuffix(name, "/"+check) {
			out = append(out, f)
		}
	}
	return out
}

func (l *recLog) wasSkipped(check string) bool {
	for _, s := range l.skipped {
		name, _, _ := strings.Cut(s, ": ")
		if strings.HasSuffix(name, "/"+check) {
			return true
		}
	}
	return false
}

// passes requires no failure at all.
func (l *recLog) passes(t *testing.T) {
	t.Helper()
	for _, f := range l.failed {
		t.Errorf("unexpected failure: %s", f)
	}
}

// fails requires check to have failed with a message containing every
// one of want, and reports the message (so that `go test -v` shows what a
// user would read).
func (l *recLog) fails(t *testing.T, check string, want ...string) {
	t.Helper()
	fs := l.failures(check)
	if len(fs) == 0 {
		t.Errorf("check %s did not fail; failures: %q", check, l.failed)
		return
	}
	for _, w := range want {
		found := false
		for _, f := range fs {
			found = found || strings.Contains(f, w)
		}
		if !found {
			t.Errorf("check %s failed without saying %q: %q", check, w, fs)
		}
	}
	t.Logf("%s", fs[0])
}

// only requires every failure to be in one of checks.
func (l *recLog) only(t *testing.T, checks ...string) {
	t.Helper()
	for _, f := range l.failed {
		name, _, _ := strings.Cut(f, ": ")
		ok := false
		for _, c := range checks {
			ok = ok || strings.HasSuffix(name, "/"+c) || strings.Contains(name, "/"+c+"/")
		}
		if !ok {
			t.Errorf("unexpected failure outside %v: %s", checks, f)
		}
	}
}
