// Package bench measures what svckit costs against raw go-nsq and the nsqd
// ceiling, on real consul, nsqd and nsqlookupd started on free loopback
// ports, and what the reference pipeline, replay and discovery achieve.
// `svckit bench` runs it; docs/benchmarks.md records results.
package bench

import (
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
)

// runEnv lets a bench run start the real programs with svckit/testenv, the
// same code the integration tests use. testenv needs only Helper, Logf,
// Fatalf, Cleanup, TempDir and Failed; the embedded nil testing.TB supplies
// the unexported method and would panic on anything else.
type runEnv struct {
	testing.TB
	log      io.Writer
	mu       sync.Mutex
	cleanups []func()
	dirs     []string
	failed   bool
}

// fatal is raised by Fatalf and recovered by run.
type fatal struct{ msg string }

func (e *runEnv) Helper()                   {}
func (e *runEnv) Failed() bool              { return e.failed }
func (e *runEnv) Logf(f string, a ...any)   { fmt.Fprintf(e.log, f+"\n", a...) }
func (e *runEnv) Cleanup(f func())          { e.mu.Lock(); e.cleanups = append(e.cleanups, f); e.mu.Unlock() }
func (e *runEnv) Fatalf(f string, a ...any) { e.failed = true; panic(fatal{fmt.Sprintf(f, a...)}) }
func (e *runEnv) Errorf(f string, a ...any) { e.Fatalf(f, a...) }
func (e *runEnv) Fatal(a ...any)            { e.Fatalf("%s", fmt.Sprint(a...)) }
func (e *runEnv) Name() string              { return "svckit-bench" }
func (e *runEnv) Setenv(k, v string)        { os.Setenv(k, v) }
func (e *runEnv) Skipf(f string, a ...any)  { e.Fatalf("skipped: "+f, a...) }
func (e *runEnv) Log(a ...any)              { fmt.Fprintln(e.log, a...) }
func (e *runEnv) Error(a ...any)            { e.Fatal(a...) }
func (e *runEnv) FailNow()                  { e.Fatalf("failed") }
func (e *runEnv) Fail()                     { e.failed = true }
func (e *runEnv) SkipNow()                  { e.Fatalf("skipped") }
func (e *runEnv) Skip(a ...any)             { e.Fatal(a...) }
func (e *runEnv) Skipped() bool             { return false }

func (e *runEnv) TempDir() string {
	d, err := os.MkdirTemp("", "svckit-bench-")
	if err != nil {
		e.Fatalf("creating a temporary directory: %v", err)
	}
	e.mu.Lock()
	e.dirs = append(e.dirs, d)
	e.mu.Unlock()
	return d
}

// close runs cleanups in reverse order and removes temporary directories.
func (e *runEnv) close() {
	e.mu.Lock()
	cs, ds := e.cleanups, e.dirs
	e.cleanups, e.dirs = nil, nil
	e.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
	for _, d := range ds {
		os.RemoveAll(d)
	}
}

// run calls f, turning a Fatalf inside it into an error.
func (e *runEnv) run(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if ft, ok := r.(fatal); ok {
				err = fmt.Errorf("%s", ft.msg)
				return
			}
			panic(r)
		}
	}()
	f()
	return nil
}
