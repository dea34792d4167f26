package testenv

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StopTimeout is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopTimeout = 15 * time.Second

// logTailBytes is how much of a program's log is printed when a test failed.
const logTailBytes = 12 << 10

// Process is a started child process. Its stdout and stderr go to LogPath
// (appended to across restarts, with a marker line per start and exit). It is
// killed in the cleanup of the test that started it. Its methods are safe for
// concurrent use.
type Process struct {
	name, bin string
	args, env []string
	logPath   string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited and been reaped
	waitErr  error
	logStart int64 // size of the log when the current run started
}

// StartProcess starts bin with args, the environment of the test process plus
// env, and its output in <t.TempDir()>/<name>.log. The process is killed (and
// its log tail printed if the test failed) in t.Cleanup.
func StartProcess(t testing.TB, name string, bin string, args []string, env []string) *Process {
	t.Helper()
	p := &Process{
		name:    name,
		bin:     bin,
		args:    append([]string(nil), args...),
		env:     append([]string(nil), env...),
		logPath: filepath.Join(t.TempDir(), name+".log"),
	}
	// Registered after t.TempDir's own cleanup, so it runs before the
	// directory is removed.
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			p.LogTail(t)
		}
	})
	if err := p.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

func (p *Process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s: already running (pid %d)", p.name, p.cmd.Process.Pid)
		}
	}
	if _, err := os.Stat(p.bin); err != nil {
		return fmt.Errorf("%s: %v: run ./build.sh first", p.name, err)
	}
	f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: log: %w", p.name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("%s: log: %w", p.name, err)
	}
	fmt.Fprintf(f, "=== testenv %s: start %s %s\n", time.Now().Format("15:04:05.000"), p.bin, strings.Join(p.args, " "))

	cmd := exec.Command(p.bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout = f // an *os.File: the child writes to it directly, no copying goroutine
	cmd.Stderr = f
	cmd.SysProcAttr = sysProcAttr()
	if err := startCmd(cmd); err != nil {
		fmt.Fprintf(f, "=== testenv: start failed: %v\n", err)
		f.Close()
		return fmt.Errorf("%s: start %s: %w", p.name, p.bin, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.waitErr, p.logStart = cmd, done, nil, st.Size()
	go func() {
		err := cmd.Wait()
		fmt.Fprintf(f, "=== testenv %s: exited: %v\n", time.Now().Format("15:04:05.000"), exitString(err))
		f.Close()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

func exitString(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// current returns the running (or last) command and its done channel.
func (p *Process) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// Stop sends SIGTERM, waits up to StopTimeout for the process to exit, then
// kills it (and its process group) with SIGKILL. It returns the exit error:
// nil for exit status 0, an *exec.ExitError otherwise (also when the process
// died of the signal). Stopping a process that has already exited returns how
// it exited.
func (p *Process) Stop() error {
	cmd, done := p.current()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return p.exitErr()
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(StopTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		killGroup(cmd)
		<-done
	}
	return p.exitErr()
}

// Kill sends SIGKILL to the process and its process group and waits until it
// has been reaped. It does nothing if the process is not running.
func (p *Process) Kill() {
	cmd, done := p.current()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	killGroup(cmd)
	<-done
}

// Restart starts the process again with the same program, arguments,
// environment and log file. A process still running is stopped first.
func (p *Process) Restart(t testing.TB) {
	t.Helper()
	if p.Running() {
		_ = p.Stop()
	}
	if err := p.start(); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Running reports whether the process is running.
func (p *Process) Running() bool {
	_, done := p.current()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Exited returns a channel closed when the current run of the process has
// exited.
func (p *Process) Exited() <-chan struct{} {
	_, done := p.current()
	return done
}

// Pid returns the process id of the current (or last) run.
func (p *Process) Pid() int {
	cmd, _ := p.current()
	if cmd == nil || cmd.Process == nil {
		return 0
	}
	return cmd.Process.Pid
}

// Name returns the name given to StartProcess.
func (p *Process) Name() string { return p.name }

// Args returns the program's arguments (without the program itself).
func (p *Process) Args() []string { return append([]string(nil), p.args...) }

// LogPath returns the file holding the process's stdout and stderr.
func (p *Process) LogPath() string { return p.logPath }

// ExitCode returns the exit code of the last run once it has exited; -1 while
// it runs or if it was ended by a signal.
func (p *Process) ExitCode() int {
	cmd, done := p.current()
	if cmd == nil {
		return -1
	}
	select {
	case <-done:
		return cmd.ProcessState.ExitCode()
	default:
		return -1
	}
}

func (p *Process) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// Log returns the whole log file.
func (p *Process) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// logSinceStart returns what the current run wrote to the log so far.
func (p *Process) logSinceStart() string {
	p.mu.Lock()
	off := p.logStart
	p.mu.Unlock()
	f, err := os.Open(p.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, off, 64<<20))
	return string(b)
}

// LogTail prints the end of the log with t.Logf.
func (p *Process) LogTail(t testing.TB) {
	t.Helper()
	b, err := readTail(p.logPath, logTailBytes)
	if err != nil {
		t.Logf("testenv: %s log %s: %v", p.name, p.logPath, err)
		return
	}
	t.Logf("testenv: %s (pid %d) log %s, last %d bytes:\n%s", p.name, p.Pid(), p.logPath, len(b), b)
}

func readTail(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := max(st.Size()-n, 0)
	return io.ReadAll(io.NewSectionReader(f, off, n))
}

// errExited is returned by awaitReady when the process exited while waited for.
var errExited = errors.New("exited before it was ready")

// awaitReady polls ready until it is true, the process exits or timeout
// elapses.
func (p *Process) awaitReady(timeout time.Duration, ready func() bool) error {
	exited := false
	ok := Eventually(timeout, func() bool {
		if !p.Running() {
			exited = true
			return true
		}
		return ready()
	})
	switch {
	case exited:
		return fmt.Errorf("%s %w (%s)", p.name, errExited, exitString(p.exitErr()))
	case !ok:
		return fmt.Errorf("%s not ready after %s", p.name, timeout)
	}
	// The condition may have been met by something else listening on the
	// port (another test's program) while ours was failing to bind.
	if !p.Running() {
		return fmt.Errorf("%s %w (%s)", p.name, errExited, exitString(p.exitErr()))
	}
	return nil
}

// portInUse reports whether the current run failed because a port was taken.
func (p *Process) portInUse() bool {
	return strings.Contains(p.logSinceStart(), "address already in use")
}

// startWithRetry runs launch (which starts a process) and waits for it to be
// ready; when the process exits because a port was in use, it tries again up
// to attempts times in all. launch is told the attempt number (from 0).
func startWithRetry(t testing.TB, attempts int, launch func(attempt int) (*Process, error), ready func(p *Process) error) *Process {
	t.Helper()
	var last error
	for i := range attempts {
		p, err := launch(i)
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		err = ready(p)
		if err == nil {
			return p
		}
		last = err
		if !errors.Is(err, errExited) || !p.portInUse() {
			break
		}
		t.Logf("testenv: %s: a port was taken, retrying (attempt %d of %d)", p.name, i+2, attempts)
	}
	t.Fatalf("testenv: %v", last)
	return nil
}
