package testenv_test

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

	"github.com/svckit/svckit/svckit/testenv"
)

func TestBinDir(t *testing.T) {
	dir := testenv.BinDir(t)
	for _, name := range []string{"consul", "nsqd", "nsqlookupd"} {
		if p := testenv.Bin(t, name); filepath.Dir(p) != dir {
			t.Fatalf("Bin(%s) = %s, not in %s", name, p, dir)
		}
	}
	gomod, err := os.ReadFile(filepath.Join(filepath.Dir(dir), "go.mod"))
	if err != nil || !strings.Contains(string(gomod), "module "+testenv.Module+"\n") {
		t.Fatalf("%s is not in the svckit module root (%v)", dir, err)
	}
	t.Setenv("SVCKIT_BIN", "/some/where")
	if got := testenv.BinDir(t); got != "/some/where" {
		t.Fatalf("BinDir with SVCKIT_BIN = %s", got)
	}
}

func TestFreePortDistinct(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := testenv.FreePort(t)
		if p <= 0 || p > 65535 || seen[p] {
			t.Fatalf("FreePort returned %d (seen before: %v)", p, seen[p])
		}
		seen[p] = true
	}
}

func TestEventually(t *testing.T) {
	n := 0
	if !testenv.Eventually(5*time.Second, func() bool { n++; return n == 3 }) {
		t.Fatal("Eventually gave up on a condition that became true")
	}
	start := time.Now()
	calls := 0
	if testenv.Eventually(300*time.Millisecond, func() bool { calls++; return false }) {
		t.Fatal("Eventually returned true for a false condition")
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("Eventually(300ms) took %s", d)
	}
	if calls < 4 {
		t.Fatalf("condition polled %d times in 300ms", calls)
	}
}

func TestProcessLifecycle(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	// Exits 0 on SIGTERM, prints a line per start.
	script := `echo started $$; trap 'echo got TERM; exit 0' TERM; while :; do sleep 0.05; done`
	p := testenv.StartProcess(t, "loop", sh, []string{"-c", script}, []string{"TESTENV_X=1"})
	if !p.Running() || p.Pid() <= 0 {
		t.Fatalf("not running after start (pid %d)", p.Pid())
	}
	if p.ExitCode() != -1 {
		t.Fatalf("ExitCode while running = %d", p.ExitCode())
	}
	testenv.WaitFor(t, 10*time.Second, "first start line in the log", func() bool {
		return strings.Contains(p.Log(), fmt.Sprintf("started %d", p.Pid()))
	})
	first := p.Pid()
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop of a process exiting 0 on SIGTERM: %v", err)
	}
	if p.Running() || p.ExitCode() != 0 {
		t.Fatalf("after Stop: running %v, exit code %d", p.Running(), p.ExitCode())
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}

	p.Restart(t)
	if p.Pid() == first || !p.Running() {
		t.Fatalf("Restart: pid %d (was %d), running %v", p.Pid(), first, p.Running())
	}
	testenv.WaitFor(t, 10*time.Second, "second start line in the log", func() bool {
		return strings.Contains(p.Log(), fmt.Sprintf("started %d", p.Pid()))
	})
	p.Kill()
	if p.Running() || p.ExitCode() != -1 {
		t.Fatalf("after Kill: running %v, exit code %d", p.Running(), p.ExitCode())
	}
	p.Kill() // no-op on a dead process
	log := p.Log()
	if strings.Count(log, "=== testenv") != 4 || !strings.Contains(log, "got TERM") || !strings.Contains(log, "signal: killed") {
		t.Fatalf("log does not record both runs:\n%s", log)
	}
	if filepath.Base(p.LogPath()) != "loop.log" {
		t.Fatalf("log path %s", p.LogPath())
	}
}

func TestProcessExitCodeAndEnv(t *testing.T) {
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p := testenv.StartProcess(t, "exit3", sh, []string{"-c", `echo "x=$TESTENV_X"; exit 3`}, []string{"TESTENV_X=42"})
	<-p.Exited()
	if p.ExitCode() != 3 {
		t.Fatalf("ExitCode = %d, want 3", p.ExitCode())
	}
	var ee *exec.ExitError
	if err := p.Stop(); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Stop on an exited process = %v, want exit status 3", err)
	}
	if !strings.Contains(p.Log(), "x=42") {
		t.Fatalf("env not passed:\n%s", p.Log())
	}
}

func TestProcessStopEscalatesToKill(t *testing.T) {
	if testing.Short() {
		t.Skip("takes StopTimeout")
	}
	t.Parallel()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	p := testenv.StartProcess(t, "stubborn", sh, []string{"-c", `trap '' TERM; echo "pid=$$"; while :; do sleep 0.05; done`}, nil)
	// (The log's header line holds the command itself: wait for the output.)
	testenv.WaitFor(t, 10*time.Second, "the trap to be set", func() bool {
		return strings.Contains(p.Log(), fmt.Sprintf("pid=%d", p.Pid()))
	})
	start := time.Now()
	err = p.Stop()
	if d := time.Since(start); d < testenv.StopTimeout {
		t.Fatalf("Stop returned after %s, before StopTimeout", d)
	}
	if err == nil || p.Running() {
		t.Fatalf("Stop of a process ignoring SIGTERM: err %v, running %v", err, p.Running())
	}
}

// TestChildrenDieWithTestBinary runs this test binary as a child that starts a
// program with StartProcess, SIGKILLs the child (no cleanup runs) and checks
// that the program died too (PR_SET_PDEATHSIG).
func TestChildrenDieWithTestBinary(t *testing.T) {
	if os.Getenv("TESTENV_ORPHAN_CHILD") == "1" {
		p := testenv.StartProcess(t, "orphan", "/bin/sh", []string{"-c", "while :; do sleep 0.05; done"}, nil)
		fmt.Printf("PID %d\n", p.Pid())
		select {} // killed by the parent
	}
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestChildrenDieWithTestBinary$", "-test.count=1", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), "TESTENV_ORPHAN_CHILD=1")
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
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "PID "); ok {
				pid, _ := strconv.Atoi(rest)
				pidc <- pid
				return
			}
		}
		close(pidc)
	}()
	var pid int
	select {
	case pid = <-pidc:
	case <-time.After(60 * time.Second):
		t.Fatal("child test binary did not report its program's pid")
	}
	if pid <= 0 || !alive(pid) {
		t.Fatalf("grandchild pid %d not running", pid)
	}
	t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("orphaned program %d to die", pid), func() bool { return !alive(pid) })
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

func TestStack(t *testing.T) {
	t.Parallel()
	s := testenv.StartStack(t)

	// Consul sees nsqd and nsqlookupd passing, registered as svckit expects.
	for _, c := range []struct {
		name              string
		tcpPort, httpPort int
	}{
		{"nsqd", s.NSQD.TCPPort, s.NSQD.HTTPPort},
		{"nsqlookupd", s.Lookupd.TCPPort, s.Lookupd.HTTPPort},
	} {
		es := testenv.WaitPassing(t, s.Consul, c.name, 1)
		svc := es[0].Service
		if svc.ID != fmt.Sprintf("%s-127.0.0.1-%d", c.name, c.tcpPort) || svc.Address != "127.0.0.1" ||
			svc.Port != c.tcpPort || svc.Meta["http_port"] != strconv.Itoa(c.httpPort) {
			t.Fatalf("%s registered as %+v", c.name, svc)
		}
	}

	// A message published over HTTP shows in /stats.
	s.NSQD.Publish(t, "testenv", []byte("hello"))
	st, err := s.NSQD.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if depth, count, ok := st.TopicDepth("testenv"); !ok || depth != 1 || count != 1 {
		t.Fatalf("topic testenv: depth %d, messages %d, present %v", depth, count, ok)
	}
	if st.Health != "OK" {
		t.Fatalf("nsqd health %q", st.Health)
	}

	// A killed nsqd goes critical in consul.
	s.NSQD.Kill()
	testenv.WaitPassing(t, s.Consul, "nsqd", 0)
	s.NSQD.Start(t)
	testenv.WaitPassing(t, s.Consul, "nsqd", 1)
}

func TestConsulRestartForgetsRegistrations(t *testing.T) {
	t.Parallel()
	c := testenv.StartConsul(t)
	l := testenv.StartNSQLookupd(t)
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.WaitPassing(t, c, "nsqlookupd", 1)
	oldPid := c.Proc.Pid()

	if err := c.Stop(); err != nil {
		t.Fatalf("consul Stop: %v (exit code %d)", err, c.Proc.ExitCode())
	}
	c.Start(t)
	if c.Proc.Pid() == oldPid || c.HTTPAddr != testenv.Addr(c.HTTPPort) {
		t.Fatalf("restart: pid %d (was %d), addr %s", c.Proc.Pid(), oldPid, c.HTTPAddr)
	}
	svcs, err := c.Client.Agent().Services()
	if err != nil {
		t.Fatalf("agent services after restart: %v", err)
	}
	if len(svcs) != 0 {
		t.Fatalf("dev agent kept %d services across a restart", len(svcs))
	}
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.WaitPassing(t, c, "nsqlookupd", 1)
	c.Restart(t)
	testenv.WaitPassing(t, c, "nsqlookupd", 0)

	// Kill, then Start on the same ports.
	c.Kill()
	if _, err := c.Client.Agent().Self(); err == nil {
		t.Fatal("killed agent still answers")
	}
	c.Start(t)
	testenv.WaitPassing(t, c, "nsqlookupd", 0)
}

func TestNSQDRestartKeepsDataDir(t *testing.T) {
	t.Parallel()
	l := testenv.StartNSQLookupd(t)
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr}, MemQueueSize: 100})
	l.WaitProducer(t, n.TCPAddr)
	for i := range 5 {
		n.Publish(t, "persist", []byte(fmt.Sprint("m", i)))
	}
	tcp, httpAddr, dir := n.TCPAddr, n.HTTPAddr, n.DataDir

	// SIGTERM: nsqd writes its memory queue to the data dir.
	if err := n.Stop(); err != nil {
		t.Fatalf("nsqd exit on SIGTERM: %v", err)
	}
	n.Start(t)
	if n.TCPAddr != tcp || n.HTTPAddr != httpAddr || n.DataDir != dir {
		t.Fatalf("restart moved nsqd: %s %s %s", n.TCPAddr, n.HTTPAddr, n.DataDir)
	}
	testenv.WaitFor(t, 10*time.Second, "5 messages back in topic persist", func() bool {
		st, err := n.Stats()
		if err != nil {
			return false
		}
		depth, _, _ := st.TopicDepth("persist")
		return depth == 5
	})
	l.WaitProducer(t, n.TCPAddr)

	// SIGKILL: the memory queue is lost (what svckit's replay exists for).
	n.Publish(t, "volatile", []byte("gone"))
	n.Kill()
	n.Restart(t)
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if depth, _, _ := st.TopicDepth("volatile"); depth != 0 {
		t.Fatalf("message in memory survived SIGKILL: depth %d", depth)
	}
	if depth, _, _ := st.TopicDepth("persist"); depth != 5 {
		t.Fatalf("disk queue after kill: depth %d, want 5", depth)
	}
}

func TestNSQDDiskOnlyAndExtraArgs(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nested", "data")
	n := testenv.StartNSQD(t, testenv.NSQDOptions{MemQueueSize: -1, DataDir: dir, ExtraArgs: []string{"--max-msg-size=2048"}})
	if n.DataDir != dir {
		t.Fatalf("DataDir = %s", n.DataDir)
	}
	n.Publish(t, "disk", []byte("x"))
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range st.Topics {
		if tp.TopicName == "disk" && tp.BackendDepth != 1 {
			t.Fatalf("with --mem-queue-size=0 the message is not on disk: %+v", tp)
		}
	}
	code, body, err := testenv.HTTPPost("http://"+n.HTTPAddr+"/pub?topic=disk", "application/octet-stream", make([]byte, 4096))
	if err != nil || code == 200 {
		t.Fatalf("4 KiB message accepted despite --max-msg-size=2048: %d %s %v", code, body, err)
	}
}
