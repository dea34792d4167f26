package bench

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/svckit/svckit/internal/localstack"
)

// runEnv is where a bench run starts the real programs: a localstack.Group
// (free loopback ports, a temporary directory per program, every process
// killed and every directory removed by close), the same code the
// integration tests use through svckit/testenv, without testing. A failure
// anywhere in the run goes through Fatalf, which run turns into the run's
// error.
type runEnv struct {
	*localstack.Group
	mu       sync.Mutex
	cleanups []func()
	dirs     []string // made under a data directory: removed by close
}

// newRunEnv makes the run's environment; its directories are made under
// dataDir ("" = os.TempDir(), the group's own), so that the disk a run
// measures is the one its logs are on.
func newRunEnv(binDir, dataDir string) *runEnv {
	e := &runEnv{Group: &localstack.Group{BinDir: binDir}}
	if dataDir != "" {
		e.Group.TempDir = func() (string, error) {
			d, err := os.MkdirTemp(dataDir, "svckit-bench-")
			if err != nil {
				return "", fmt.Errorf("making a directory in %s: %w", dataDir, err)
			}
			e.mu.Lock()
			e.dirs = append(e.dirs, d)
			e.mu.Unlock()
			return d, nil
		}
	}
	return e
}

// fatal is raised by Fatalf and recovered by run.
type fatal struct{ msg string }

// Fatalf ends the run with an error.
func (e *runEnv) Fatalf(f string, a ...any) { panic(fatal{fmt.Sprintf(f, a...)}) }

// Cleanup registers f to run in close, before the programs are killed
// (last registered, first run).
func (e *runEnv) Cleanup(f func()) { e.mu.Lock(); e.cleanups = append(e.cleanups, f); e.mu.Unlock() }

// TempDir returns a new directory, removed by close.
func (e *runEnv) TempDir() string {
	d, err := e.NewDir()
	if err != nil {
		e.Fatalf("creating a temporary directory: %v", err)
	}
	return d
}

// WaitFor polls cond until it is true, ending the run if timeout elapses
// first.
func (e *runEnv) WaitFor(timeout time.Duration, what string, cond func() bool) {
	if err := localstack.WaitFor(timeout, what, cond); err != nil {
		e.Fatalf("%v", err)
	}
}

// StartProcess starts a program of the run, ending the run if it fails.
func (e *runEnv) StartProcess(name, bin string, args []string) *localstack.Process {
	p, err := e.Group.StartProcess(name, bin, args, nil)
	if err != nil {
		e.Fatalf("%v", err)
	}
	return p
}

// check ends the run if err is not nil.
func (e *runEnv) check(err error) {
	if err != nil {
		e.Fatalf("%v", err)
	}
}

// close runs cleanups in reverse order, then kills every program and removes
// the temporary directories.
func (e *runEnv) close() {
	e.mu.Lock()
	cs := e.cleanups
	e.cleanups = nil
	e.mu.Unlock()
	for _, f := range slices.Backward(cs) {
		f()
	}
	e.Group.Close()
	// After the programs are gone: the group removes only what it made.
	e.mu.Lock()
	ds := e.dirs
	e.dirs = nil
	e.mu.Unlock()
	for _, d := range ds {
		_ = os.RemoveAll(d)
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
