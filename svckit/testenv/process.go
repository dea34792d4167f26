package testenv

import (
	"testing"

	"github.com/svckit/svckit/internal/localstack"
)

// StopTimeout (15s) is how long Stop waits after SIGTERM before it sends
// SIGKILL.
const StopTimeout = localstack.StopTimeout

// logTailBytes is how much of a program's log is printed when a test failed.
const logTailBytes = 12 << 10

// Process is a started child process. Its stdout and stderr go to LogPath
// (appended to across restarts, with a marker line per start and exit). It is
// killed in the cleanup of the test that started it. Its methods are safe for
// concurrent use.
type Process struct {
	p *localstack.Process
}

// wrap returns the Process for p (nil for nil).
func wrap(p *localstack.Process) *Process {
	if p == nil {
		return nil
	}
	return &Process{p: p}
}

// core returns the localstack process behind p (nil for nil).
func (p *Process) core() *localstack.Process {
	if p == nil {
		return nil
	}
	return p.p
}

// StartProcess starts bin with args, the environment of the test process plus
// env, and its output in <t.TempDir()>/<name>.log. The process is killed (and
// its log tail printed if the test failed) in t.Cleanup.
func StartProcess(t testing.TB, name string, bin string, args []string, env []string) *Process {
	t.Helper()
	p, err := group(t).StartProcess(name, bin, args, env)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return wrap(p)
}

// Stop sends SIGTERM, waits up to StopTimeout for the process to exit, then
// kills it (and its process group) with SIGKILL. It returns the exit error:
// nil for exit status 0, an *exec.ExitError otherwise (also when the process
// died of the signal). Stopping a process that has already exited returns how
// it exited.
func (p *Process) Stop() error { return p.p.Stop() }

// Kill sends SIGKILL to the process and its process group and waits until it
// has been reaped. It does nothing if the process is not running.
func (p *Process) Kill() { p.p.Kill() }

// Restart starts the process again with the same program, arguments,
// environment and log file. A process still running is stopped first.
func (p *Process) Restart(t testing.TB) {
	t.Helper()
	if err := p.p.Restart(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Running reports whether the process is running.
func (p *Process) Running() bool { return p.p.Running() }

// Exited returns a channel closed when the current run of the process has
// exited.
func (p *Process) Exited() <-chan struct{} { return p.p.Exited() }

// Pid returns the process id of the current (or last) run.
func (p *Process) Pid() int { return p.p.Pid() }

// Name returns the name given to StartProcess.
func (p *Process) Name() string { return p.p.Name() }

// Args returns the program's arguments (without the program itself).
func (p *Process) Args() []string { return p.p.Args() }

// LogPath returns the file holding the process's stdout and stderr.
func (p *Process) LogPath() string { return p.p.LogPath() }

// ExitCode returns the exit code of the last run once it has exited; -1 while
// it runs or if it was ended by a signal.
func (p *Process) ExitCode() int { return p.p.ExitCode() }

// Log returns the whole log file.
func (p *Process) Log() string { return p.p.Log() }

// LogTail prints the end of the log with t.Logf.
func (p *Process) LogTail(t testing.TB) {
	t.Helper()
	logTail(t, p.p)
}

func logTail(t testing.TB, p *localstack.Process) {
	t.Helper()
	b, err := p.LogTail(logTailBytes)
	if err != nil {
		t.Logf("testenv: %s log %s: %v", p.Name(), p.LogPath(), err)
		return
	}
	t.Logf("testenv: %s (pid %d) log %s, last %d bytes:\n%s", p.Name(), p.Pid(), p.LogPath(), len(b), b)
}
