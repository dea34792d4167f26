// Package procfile checks that the Procfile brings up the whole laptop
// system in a fresh checkout: `./build.sh`, then `goreman start`, nothing
// created by hand.
package procfile_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/localstack"
	"github.com/svckit/svckit/internal/skip"
	"github.com/svckit/svckit/svckit/testenv"
)

// upTimeout bounds each wait for the system to come up: generous, because
// other suites run their own stacks on the same small machine meanwhile.
const upTimeout = 3 * time.Minute

// The Procfile's port variables and the fixed port each defaults to.
var portVars = []string{
	"LAPTOP_CONSUL_HTTP_PORT", "LAPTOP_CONSUL_SERVER_PORT", "LAPTOP_CONSUL_SERF_LAN_PORT",
	"LAPTOP_CONSUL_SERF_WAN_PORT", "LAPTOP_CONSUL_DNS_PORT", "LAPTOP_CONSUL_GRPC_PORT",
	"LAPTOP_CONSUL_GRPC_TLS_PORT", "LAPTOP_NSQLOOKUPD_TCP_PORT", "LAPTOP_NSQLOOKUPD_HTTP_PORT",
	"LAPTOP_NSQD_TCP_PORT", "LAPTOP_NSQD_HTTP_PORT", "LAPTOP_NSQADMIN_HTTP_PORT", "LAPTOP_NSQAUTH_HTTP_PORT",
	"LAPTOP_CONSOLE_HTTP_PORT",
}

// TestProcfileInFreshCheckout clones the repository (its tracked files only:
// no var/, no .env, no bin/), links bin/ to the binaries ./build.sh built,
// and runs `bin/goreman start` in the clone on free loopback ports given
// through the Procfile's variables. Consul, nsqlookupd, nsqd, nsqadmin, the
// sensor, both workers and the app must come up, nsqd and nsqlookupd must be
// registered in Consul with the ports they were given, and the app must
// apply the sensor's readings. Then Ctrl-C (SIGINT to goreman) must stop
// every program.
//
// The Procfile's commands name bin/... relative to the repository root, so
// they do not depend on PATH: goreman's children get a PATH without bin/
// here, which shows that; with bin/ on PATH (`goreman start`) nothing
// changes.
func TestProcfileInFreshCheckout(t *testing.T) {
	if runtime.GOOS != "linux" {
		skip.CannotRun(t, "finds goreman's children in /proc (Linux)")
	}
	git, err := exec.LookPath("git")
	if err != nil {
		skip.CannotRun(t, "no git")
	}
	if out, err := exec.Command(git, "rev-parse", "--is-inside-work-tree").Output(); err != nil || strings.TrimSpace(string(out)) != "true" {
		skip.CannotRun(t, "not in a git checkout")
	}
	binDir := testenv.BinDir(t)
	for _, b := range []string{"consul", "nsqd", "nsqlookupd", "nsqadmin", "goreman", "sensor", "worker", "app"} {
		testenv.Bin(t, b)
	}
	repo := cloneWorkingTree(t, git)
	for _, p := range []string{"var", "bin", ".env", ".goreman"} {
		if _, err := os.Lstat(filepath.Join(repo, p)); err == nil {
			t.Fatalf("the fresh checkout already has %s", p)
		}
	}
	if err := os.Symlink(binDir, filepath.Join(repo, "bin")); err != nil {
		t.Fatal(err)
	}

	ports := map[string]int{}
	env := []string{
		// No bin/ on PATH: the Procfile must not need it.
		"PATH=/usr/local/bin:/usr/bin:/bin",
		// goreman's own RPC server (default 0.0.0.0:8555).
		"GOREMAN_RPC_ADDR=127.0.0.1",
		"GOREMAN_RPC_PORT=" + strconv.Itoa(testenv.FreePort(t)),
	}
	for _, v := range portVars {
		ports[v] = testenv.FreePort(t)
		env = append(env, fmt.Sprintf("%s=%d", v, ports[v]))
	}

	began := time.Now()
	logDir := t.TempDir()
	g := &localstack.Group{TempDir: func() (string, error) { return logDir, nil }}
	goreman, err := g.StartProcessWith(localstack.ProcessOptions{
		Name: "goreman",
		Bin:  filepath.Join(repo, "bin", "goreman"),
		Args: []string{"start"},
		Env:  env,
		Dir:  repo,
		// Were this test binary killed, goreman stops its programs itself.
		ParentDeathSignal: syscall.SIGTERM,
	})
	// goreman puts every program in a process group of its own: killing
	// goreman's group would not reach them. The cleanup stops goreman as
	// Ctrl-C does, then kills whatever is left of its children's groups.
	var groups []int
	t.Cleanup(func() {
		if goreman == nil {
			return
		}
		if goreman.Running() {
			groups = append(groups, children(goreman.Pid())...)
			_ = goreman.StopWith(syscall.SIGINT, time.Minute)
		}
		for _, pg := range groups {
			if len(groupMembers(pg)) > 0 {
				t.Errorf("process group %d outlived goreman: killing it", pg)
				_ = syscall.Kill(-pg, syscall.SIGKILL)
			}
		}
		goreman.Kill()
		if t.Failed() {
			b, _ := goreman.LogTail(16 << 10)
			t.Logf("goreman's output (%s), last %d bytes:\n%s", goreman.LogPath(), len(b), b)
		}
	})
	if err != nil {
		t.Fatal(err)
	}

	// Consul, on the port it was given.
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = localstack.Addr(ports["LAPTOP_CONSUL_HTTP_PORT"]), "http", "", ""
	cfg.TLSConfig = api.TLSConfig{}
	consul, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, goreman, "consul to elect itself leader", func() bool {
		l, err := consul.Status().Leader()
		return err == nil && l != ""
	})

	// Everything passing in Consul: nsqd and nsqlookupd registered by the
	// agent with the ports they were given, and our services.
	passing := func(name string, n int) []*api.ServiceEntry {
		var es []*api.ServiceEntry
		waitFor(t, goreman, fmt.Sprintf("%d passing %s in consul", n, name), func() bool {
			got, _, err := consul.Health().Service(name, "", true, nil)
			es = got
			return err == nil && len(got) == n
		})
		return es
	}
	for _, c := range []struct{ name, tcp, http string }{
		{"nsqd", "LAPTOP_NSQD_TCP_PORT", "LAPTOP_NSQD_HTTP_PORT"},
		{"nsqlookupd", "LAPTOP_NSQLOOKUPD_TCP_PORT", "LAPTOP_NSQLOOKUPD_HTTP_PORT"},
	} {
		s := passing(c.name, 1)[0].Service
		if s.Port != ports[c.tcp] || s.Meta["http_port"] != strconv.Itoa(ports[c.http]) || s.Address != "127.0.0.1" {
			t.Fatalf("%s registered as %s:%d, http_port %s; want 127.0.0.1:%d, http_port %d", c.name, s.Address, s.Port, s.Meta["http_port"], ports[c.tcp], ports[c.http])
		}
	}
	sensor := passing("sensor", 1)[0].Service
	if !slices.Contains(sensor.Tags, "stream=sensor-laptop") {
		t.Fatalf("the sensor's tags %v lack stream=sensor-laptop", sensor.Tags)
	}
	passing("worker", 2)
	app := passing("app", 1)[0].Service
	appAddr := fmt.Sprintf("%s:%d", app.Address, app.Port)

	// The console, on its port, shows the sensor's stream and the app
	// applying it.
	if c := passing("console", 1)[0].Service; c.Port != ports["LAPTOP_CONSOLE_HTTP_PORT"] {
		t.Fatalf("the console registered port %d; want %d", c.Port, ports["LAPTOP_CONSOLE_HTTP_PORT"])
	}
	waitFor(t, goreman, "the console to show stream sensor-laptop and the app", func() bool {
		code, body, err := localstack.HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/api/state", ports["LAPTOP_CONSOLE_HTTP_PORT"]))
		return err == nil && code == 200 && strings.Contains(body, `"stream":"sensor-laptop"`) && strings.Contains(body, `"service":"app"`)
	})

	// nsqadmin, on its port, sees topic readings through nsqlookupd.
	waitFor(t, goreman, "nsqadmin to list topic readings", func() bool {
		code, body, err := localstack.HTTPGet(fmt.Sprintf("http://127.0.0.1:%d/api/topics", ports["LAPTOP_NSQADMIN_HTTP_PORT"]))
		return err == nil && code == 200 && strings.Contains(body, `"readings"`)
	})

	// The app applies the sensor's readings: its stream advances.
	var first uint64
	waitFor(t, goreman, "the app to apply readings of stream sensor-laptop", func() bool {
		first = lastContiguous(appAddr)
		return first > 0
	})
	var second uint64
	waitFor(t, goreman, fmt.Sprintf("stream sensor-laptop to advance past %d in the app", first), func() bool {
		second = lastContiguous(appAddr)
		return second > first
	})
	t.Logf("up after %s: the app (%s) applied sensor-laptop up to %d, then %d", time.Since(began).Round(time.Millisecond), appAddr, first, second)

	// One program per Procfile entry, each in its own process group, all
	// still running; nsqd got its data directory without anyone's help.
	groups = children(goreman.Pid())
	if n := len(procfileEntries(t, repo)); len(groups) != n {
		t.Fatalf("goreman runs %d programs, want %d (one per Procfile entry)", len(groups), n)
	}
	if st, err := os.Stat(filepath.Join(repo, "var", "nsqd")); err != nil || !st.IsDir() {
		t.Fatalf("var/nsqd: %v", err)
	}
	if out := goreman.Log(); strings.Contains(out, "failed to lock data-path") || strings.Contains(out, "Terminating ") {
		t.Fatal("a program exited under goreman (its output follows)")
	}

	// Ctrl-C stops everything.
	stopping := time.Now()
	if err := goreman.StopWith(syscall.SIGINT, 2*time.Minute); err != nil {
		t.Errorf("goreman after SIGINT: %v", err)
	}
	if err := localstack.WaitFor(time.Minute, "every program to exit after Ctrl-C", func() bool {
		for _, pg := range groups {
			if len(groupMembers(pg)) > 0 {
				return false
			}
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("goreman and its %d programs stopped %s after SIGINT", len(groups), time.Since(stopping).Round(time.Millisecond))
}

// waitFor is testenv.WaitFor that also gives up, at once, when goreman or
// one of its programs exited (goreman says "Terminating <name>").
func waitFor(t *testing.T, goreman *localstack.Process, what string, cond func() bool) {
	t.Helper()
	var exited string
	err := goreman.AwaitReady(upTimeout, func() bool {
		for _, l := range strings.Split(goreman.Log(), "\n") {
			if strings.Contains(l, "Terminating ") {
				exited = l
				return true
			}
		}
		return cond()
	})
	switch {
	case exited != "":
		t.Fatalf("waiting for %s: a program exited: %s", what, exited)
	case err != nil:
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// cloneWorkingTree returns a fresh clone of the repository this test runs
// in, at its HEAD plus the uncommitted changes to tracked files (so that an
// edit is tested before it is committed); untracked and ignored files are
// not there: a new file the Procfile needs must be added to git (git add,
// or git add -N) to be seen here, as it must be committed to be in a
// checkout.
func cloneWorkingTree(t *testing.T, git string) string {
	t.Helper()
	run := func(stdin []byte, args ...string) string {
		t.Helper()
		cmd := exec.Command(git, args...)
		cmd.Stdin = bytes.NewReader(stdin)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return string(out)
	}
	root := strings.TrimSpace(run(nil, "rev-parse", "--show-toplevel"))
	head := strings.TrimSpace(run(nil, "-C", root, "rev-parse", "HEAD"))
	repo := filepath.Join(t.TempDir(), "svckit")
	run(nil, "clone", "--quiet", "--no-checkout", root, repo)
	run(nil, "-C", repo, "checkout", "--quiet", "--detach", head)
	if diff := run(nil, "-C", root, "diff", "--binary", head); diff != "" {
		run([]byte(diff), "-C", repo, "apply", "--binary", "-")
		t.Logf("cloned %s at %.12s with the working tree's uncommitted changes", root, head)
	}
	return repo
}

// procfileEntries returns the names of the Procfile's entries, parsed as
// goreman does: "name: command" lines, "#" starting a comment.
func procfileEntries(t *testing.T, repo string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repo, "Procfile"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range strings.Split(string(b), "\n") {
		name, _, ok := strings.Cut(l, ":")
		if ok && name != "" && name[0] != '#' {
			names = append(names, strings.TrimSpace(name))
		}
	}
	want := []string{"consul", "nsqlookupd", "nsqd", "nsqadmin", "nsqauth", "sensor", "worker1", "worker2", "app", "console"}
	if !slices.Equal(names, want) {
		t.Fatalf("Procfile entries %v, want %v", names, want)
	}
	return names
}

// lastContiguous returns the app's last_contiguous for stream sensor-laptop
// (GET /streams), 0 if it has none yet.
func lastContiguous(appAddr string) uint64 {
	code, body, err := localstack.HTTPGet("http://" + appAddr + "/streams")
	if err != nil || code != 200 {
		return 0
	}
	var ss []struct {
		Stream         string `json:"stream"`
		LastContiguous uint64 `json:"last_contiguous"`
	}
	if json.Unmarshal([]byte(body), &ss) != nil {
		return 0
	}
	for _, s := range ss {
		if s.Stream == "sensor-laptop" {
			return s.LastContiguous
		}
	}
	return 0
}

// stat is the part of /proc/<pid>/stat looked at here.
type stat struct {
	pid, ppid, pgrp int
	zombie          bool
}

// processes lists every process in /proc.
func processes() []stat {
	ents, _ := os.ReadDir("/proc")
	var out []stat
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and ')'.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 3 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		pgrp, _ := strconv.Atoi(f[2])
		out = append(out, stat{pid: pid, ppid: ppid, pgrp: pgrp, zombie: f[0] == "Z"})
	}
	return out
}

// children returns the pids of pid's children that lead their own process
// group (goreman runs each Procfile line so).
func children(pid int) []int {
	var out []int
	for _, p := range processes() {
		if p.ppid == pid && p.pgrp == p.pid && !p.zombie {
			out = append(out, p.pid)
		}
	}
	return out
}

// groupMembers returns the live processes of process group pgrp.
func groupMembers(pgrp int) []int {
	var out []int
	for _, p := range processes() {
		if p.pgrp == pgrp && !p.zombie {
			out = append(out, p.pid)
		}
	}
	return out
}
