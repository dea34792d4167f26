package localstack

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
	"time"
)

// StopTimeout is how long Stop waits after SIGTERM before it sends SIGKILL.
const StopTimeout = 15 * time.Second

// ProcessOptions describes a program to start.
type ProcessOptions struct {
	// Name names the process and its log file, <Name>.log.
	Name string
	// Bin is the program; Args its arguments (without the program).
	Bin  string
	Args []string
	// Env is added to this process's environment.
	Env []string
	// Dir is the working directory; "" means this process's.
	Dir string
	// ParentDeathSignal is what the kernel sends the program when this
	// process dies (Linux only); 0 means SIGKILL. A supervisor that must
	// stop its own children on the way out (goreman) wants SIGTERM.
	ParentDeathSignal syscall.Signal
}

// Process is a started child process. Its stdout and stderr go to LogPath
// (appended to across restarts, with a marker line per start and exit). It
// runs in its own process group, and Kill reaches the whole group. Its
// methods are safe for concurrent use.
type Process struct {
	o       ProcessOptions
	logPath string

	mu       sync.Mutex
	cmd      *exec.Cmd
	done     chan struct{} // closed when cmd has exited and been reaped
	waitErr  error
	logStart int64 // size of the log when the current run started
}

// StartProcess starts bin with args and this process's environment plus env,
// its output in <g.NewDir()>/<name>.log. When the start fails, the process
// (with its log) is returned along with the error.
func (g *Group) StartProcess(name, bin string, args, env []string) (*Process, error) {
	return g.StartProcessWith(ProcessOptions{Name: name, Bin: bin, Args: args, Env: env})
}

// StartProcessWith starts the program o describes.
func (g *Group) StartProcessWith(o ProcessOptions) (*Process, error) {
	dir, err := g.NewDir()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.Name, err)
	}
	o.Args = append([]string(nil), o.Args...)
	o.Env = append([]string(nil), o.Env...)
	p := &Process{o: o, logPath: filepath.Join(dir, o.Name+".log")}
	g.mu.Lock()
	g.procs = append(g.procs, p)
	g.mu.Unlock()
	if g.Started != nil {
		g.Started(p)
	}
	return p, p.start()
}

func (p *Process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("%s: already running (pid %d)", p.o.Name, p.cmd.Process.Pid)
		}
	}
	if _, err := os.Stat(p.o.Bin); err != nil {
		return fmt.Errorf("%s: %v: run ./build.sh first", p.o.Name, err)
	}
	f, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s: log: %w", p.o.Name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("%s: log: %w", p.o.Name, err)
	}
	// The marker lines say "testenv": tests look for them (svckit/testenv
	// wraps this package).
	fmt.Fprintf(f, "=== testenv %s: start %s %s\n", time.Now().Format("15:04:05.000"), p.o.Bin, strings.Join(p.o.Args, " "))

	cmd := exec.Command(p.o.Bin, p.o.Args...)
	cmd.Env = append(os.Environ(), p.o.Env...)
	cmd.Dir = p.o.Dir
	cmd.Stdout = f // an *os.File: the child writes to it directly, no copying goroutine
	cmd.Stderr = f
	cmd.SysProcAttr = sysProcAttr(p.o.ParentDeathSignal)
	if err := startCmd(cmd); err != nil {
		fmt.Fprintf(f, "=== testenv: start failed: %v\n", err)
		f.Close()
		return fmt.Errorf("%s: start %s: %w", p.o.Name, p.o.Bin, err)
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
	return p.StopWith(syscall.SIGTERM, StopTimeout)
}

// StopWith is Stop with another signal and timeout.
func (p *Process) StopWith(sig syscall.Signal, timeout time.Duration) error {
	cmd, done := p.current()
	if cmd == nil {
		return nil
	}
	select {
	case <-done:
		return p.exitErr()
	default:
	}
	_ = cmd.Process.Signal(sig)
	t := time.NewTimer(timeout)
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
func (p *Process) Restart() error {
	if p.Running() {
		_ = p.Stop()
	}
	return p.start()
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

// Name returns the name the process was started with.
func (p *Process) Name() string { return p.o.Name }

// Args returns the program's arguments (without the program itself).
func (p *Process) Args() []string { return append([]string(nil), p.o.Args...) }

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

// LogTail returns the last n bytes of the log.
func (p *Process) LogTail(n int64) ([]byte, error) {
	f, err := os.Open(p.logPath)
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

// ErrExited is returned (wrapped) by AwaitReady when the process exited while
// it was waited for.
var ErrExited = errors.New("exited before it was ready")

// AwaitReady polls ready until it is true, the process exits or timeout
// elapses. The error wraps ErrExited when the process exited.
func (p *Process) AwaitReady(timeout time.Duration, ready func() bool) error {
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
		return fmt.Errorf("%s %w (%s)", p.o.Name, ErrExited, exitString(p.exitErr()))
	case !ok:
		return fmt.Errorf("%s not ready after %s", p.o.Name, timeout)
	}
	// The condition may have been met by something else listening on the
	// port (another program) while ours was failing to bind.
	if !p.Running() {
		return fmt.Errorf("%s %w (%s)", p.o.Name, ErrExited, exitString(p.exitErr()))
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
func (g *Group) startWithRetry(attempts int, launch func(attempt int) (*Process, error), ready func(p *Process) error) error {
	var last error
	for i := range attempts {
		p, err := launch(i)
		if err != nil {
			return err
		}
		err = ready(p)
		if err == nil {
			return nil
		}
		last = err
		if !errors.Is(err, ErrExited) || !p.portInUse() {
			break
		}
		g.logf("%s: a port was taken, retrying (attempt %d of %d)", p.o.Name, i+2, attempts)
	}
	return last
}

// restartSamePorts starts p again and waits for ready. A port of a program
// that just exited can be taken by someone else for a moment (an outgoing
// connection's ephemeral port), so a start that fails on a port in use is
// tried again, for up to timeout in all.
func restartSamePorts(p *Process, timeout time.Duration, ready func() bool) error {
	deadline := time.Now().Add(timeout)
	for attempt := 1; ; attempt++ {
		if err := p.start(); err != nil {
			return err
		}
		err := p.AwaitReady(time.Until(deadline), ready)
		if err == nil {
			return nil
		}
		if !p.portInUse() || time.Until(deadline) <= 0 || attempt >= 20 {
			return fmt.Errorf("restart: %w", err)
		}
		// Back off before trying again rather than spinning.
		timer := time.NewTimer(min(500*time.Millisecond, time.Until(deadline)))
		<-timer.C
	}
}
