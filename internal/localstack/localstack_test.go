package localstack_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/localstack"
)

// The zero Group makes its own directories; Close kills every process it
// started and removes them.
func TestGroupCloseKillsAndRemoves(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	var g localstack.Group
	defer g.Close()
	var started []string
	g.Started = func(p *localstack.Process) { started = append(started, p.Name()) }
	var ps []*localstack.Process
	for _, name := range []string{"a", "b"} {
		p, err := g.StartProcess(name, sh, []string{"-c", "echo up; while :; do sleep 0.05; done"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	dir, err := g.NewDir()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(started, ",") != "a,b" {
		t.Fatalf("Started saw %v", started)
	}
	for _, p := range ps {
		if !p.Running() {
			t.Fatalf("%s not running", p.Name())
		}
	}
	g.Close()
	for _, p := range ps {
		if p.Running() {
			t.Fatalf("%s still running after Close", p.Name())
		}
		if _, err := os.Stat(filepath.Dir(p.LogPath())); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s's directory left behind: %v", p.Name(), err)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("NewDir's directory left behind: %v", err)
	}
}

// Failures are errors: a missing binary, a missing bin directory.
func TestErrorsNotPanics(t *testing.T) {
	t.Parallel()
	g := &localstack.Group{BinDir: t.TempDir(), TempDir: func() (string, error) { return t.TempDir(), nil }}
	defer g.Close()
	if _, err := g.StartConsul(localstack.ConsulOptions{}); err == nil || !strings.Contains(err.Error(), "run ./build.sh first") {
		t.Fatalf("StartConsul without a consul binary: %v", err)
	}
	if _, err := g.StartStack(localstack.NSQDOptions{}); err == nil {
		t.Fatal("StartStack without binaries succeeded")
	}
	if _, err := g.StartProcess("x", filepath.Join(t.TempDir(), "none"), nil, nil); err == nil {
		t.Fatal("StartProcess of a missing program succeeded")
	}
	if err := localstack.WaitFor(50*time.Millisecond, "nothing", func() bool { return false }); err == nil || err.Error() != "timed out after 50ms waiting for nothing" {
		t.Fatalf("WaitFor = %v", err)
	}
}

// A whole stack through the error API, stopped and started again.
func TestStartStack(t *testing.T) {
	t.Parallel()
	g := &localstack.Group{}
	defer g.Close()
	s, err := g.StartStack(localstack.NSQDOptions{MemQueueSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"nsqd", "nsqlookupd"} {
		if es, err := s.Consul.Passing(name); err != nil || len(es) != 1 {
			t.Fatalf("%s passing: %v %v", name, es, err)
		}
	}
	if err := s.NSQD.Publish("t", []byte("x")); err != nil {
		t.Fatal(err)
	}
	st, err := s.NSQD.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if d, _, ok := st.TopicDepth("t"); !ok || d != 1 {
		t.Fatalf("depth %d %v", d, ok)
	}
	if err := s.NSQD.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Consul.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(); err != nil {
		t.Fatal(err)
	}
	if err := s.NSQD.DeleteTopic("t"); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(s.NSQD.Proc.LogPath())
	g.Close()
	if s.NSQD.Proc.Running() || s.Consul.Proc.Running() || s.Lookupd.Proc.Running() {
		t.Fatal("a program survived Close")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("%s left behind: %v", dir, err)
	}
}

// TestParentDeathSignal runs this test binary as a child that starts a
// program with ParentDeathSignal SIGTERM, SIGKILLs the child (nothing of it
// runs any more) and checks that the program got SIGTERM: a supervisor
// started so can stop its own children on the way out.
func TestParentDeathSignal(t *testing.T) {
	if dir := os.Getenv("LOCALSTACK_ORPHAN_DIR"); dir != "" {
		g := &localstack.Group{TempDir: func() (string, error) { return dir, nil }}
		script := `trap 'echo got TERM > "$0.term"; exit 0' TERM; echo up; while :; do sleep 0.05; done`
		p, err := g.StartProcessWith(localstack.ProcessOptions{
			Name: "orphan", Bin: "/bin/sh", Args: []string{"-c", script, filepath.Join(dir, "orphan")},
			Dir: dir, ParentDeathSignal: syscall.SIGTERM,
		})
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		if err := localstack.WaitFor(time.Minute, "up", func() bool { return strings.Contains(p.Log(), "up\n") }); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Printf("PID %d\n", p.Pid())
		select {} // killed by the parent
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc (Linux)")
	}
	t.Parallel()
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestParentDeathSignal$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "LOCALSTACK_ORPHAN_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	pidc := make(chan int, 1)
	go func() {
		defer close(pidc)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "PID "); ok {
				pid, _ := strconv.Atoi(rest)
				pidc <- pid
				return
			}
		}
	}()
	var pid int
	select {
	case pid = <-pidc:
	case <-time.After(60 * time.Second):
		t.Fatal("child test binary did not report its program's pid")
	}
	if pid <= 0 {
		t.Fatal("child test binary failed to start its program")
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	if err := localstack.WaitFor(30*time.Second, "the orphan to get SIGTERM and exit", func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "orphan.term"))
		return string(b) == "got TERM\n" && !alive(pid)
	}); err != nil {
		t.Fatal(err)
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
