package dockertest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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

	"github.com/svckit/svckit/internal/skip"
	"golang.org/x/sys/unix"
)

// Machines on one machine: each "machine" of TestThreeEngines is a network
// namespace of its own with its own Docker engine (dockerd with its own data
// root, exec root, socket, pidfile, cgroup parent and an empty config file),
// and the namespaces are joined by a test network: one veth pair per
// machine, whose other end is a port of a bridge in a namespace of its own.
//
// Nothing in these namespaces can reach anything outside them: the test
// network has no uplink, no namespace has a default route, and the engines
// run with --iptables=false --ip-masq=false --ip-forward=false (no NAT, no
// forwarding) and --bridge=none. checkSealed proves it before any container
// starts.
//
// Every name carries the test process's pid (svk3e-<pid>…): a run killed
// before its cleanups leaves things whose pid no longer runs, and the next
// run removes them (removeStaleEngines).

// stalePrefix starts every namespace, link, directory and cgroup this file
// makes.
const stalePrefix = "svk3e"

// testNetPrefix and testNetBits make the test network: a block reserved for network testing
// (RFC 2544), inside namespaces that reach nothing else.
const testNetPrefix, testNetBits = "198.18.0.", 24

// outsideAddrs are addresses a machine of the test must not reach: a public
// resolver and an address on a public network; a connect to either must
// fail at once (no route), not time out.
var outsideAddrs = []string{"8.8.8.8:53", "1.1.1.1:443"}

// machines is the test network and its machines.
type machines struct {
	t      *testing.T
	id     string // svk3e<pid>: names of links
	base   string // directory of every engine's files
	empty  string // the empty dockerd config file
	bridge string // namespace of the test network's bridge
	nodes  []*machine
	// env is more of the environment of the commands run on the
	// machines (DC_OVERLAY_ENCRYPTED=false on a kernel without ESP).
	env []string
}

// machine is one host of the test: a namespace and its Docker engine.
type machine struct {
	m      *machines
	name   string // node1, …
	ns     string // its network namespace
	nsPath string
	link   string // its end of the test network, on the bridge: down = the cable pulled
	addr   string // its address on the test network
	dir    string
	host   string // DOCKER_HOST
	cgroup string // --cgroup-parent
	args   []string
	client *http.Client // HTTP from inside the namespace
	// secrets are the datacenter's, once made: ./build.sh reads them
	// (SVCKIT_SECRETS) and HTTPS to Consul is verified and authorised
	// with them.
	secrets *dcSecrets

	proc *exec.Cmd
	done chan struct{} // closed when proc has exited
	log  *os.File
}

// ipRun runs ip with args and returns its combined output, or an error
// that quotes it.
func ipRun(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// needEngines skips the test (fails it in CI) when this machine cannot run
// Docker engines in network namespaces of their own.
func needEngines(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("dockertest: skipped in -short mode (three Docker engines)")
	}
	if os.Geteuid() != 0 {
		skip.CannotRun(t, "three engines: needs root (network namespaces, dockerd)")
	}
	for _, p := range []string{"dockerd", "docker", "docker-compose", "ip", "nsenter", "fuse-overlayfs"} {
		if _, err := exec.LookPath(p); err != nil {
			skip.CannotRun(t, "three engines: %s is not on PATH", p)
		}
	}
}

// newMachines builds the test network with n machines and starts an engine
// on each. Everything is removed when the test ends, pass or fail.
func newMachines(t *testing.T, n int) *machines {
	t.Helper()
	removeStaleEngines(t)
	pid := os.Getpid()
	m := &machines{
		t:      t,
		id:     fmt.Sprintf("%s%d", stalePrefix, pid),
		base:   filepath.Join(os.TempDir(), fmt.Sprintf("%s-%d", stalePrefix, pid)),
		bridge: fmt.Sprintf("%s-%d-net", stalePrefix, pid),
	}
	// The last cleanup to run: nothing of this run may remain.
	t.Cleanup(func() {
		if left := m.leftovers(); len(left) > 0 {
			t.Errorf("three engines: left behind: %v", left)
		}
	})
	t.Cleanup(func() { removeTree(t, m.base) })
	if err := os.MkdirAll(m.base, 0o700); err != nil {
		t.Fatal(err)
	}
	m.empty = filepath.Join(m.base, "daemon.json")
	if err := os.WriteFile(m.empty, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { delNetns(t, m.bridge) })
	if _, err := ipRun("netns", "add", m.bridge); err != nil {
		skip.CannotRun(t, "three engines: network namespaces are not permitted here: %v", err)
	}
	for _, c := range [][]string{
		{"-n", m.bridge, "link", "set", "lo", "up"},
		{"-n", m.bridge, "link", "add", "br0", "type", "bridge"},
		{"-n", m.bridge, "link", "set", "br0", "up"},
	} {
		if _, err := ipRun(c...); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= n; i++ {
		x := &machine{
			m:    m,
			name: fmt.Sprintf("node%d", i),
			ns:   fmt.Sprintf("%s-%d-node%d", stalePrefix, pid, i),
			link: fmt.Sprintf("%sn%d", m.id, i),
			addr: fmt.Sprintf("%s%d", testNetPrefix, i),
		}
		x.nsPath = "/var/run/netns/" + x.ns
		x.dir = filepath.Join(m.base, x.name)
		x.host = "unix://" + filepath.Join(x.dir, "docker.sock")
		x.cgroup = "/" + x.ns
		x.client = nsHTTPClient(x.nsPath)
		m.nodes = append(m.nodes, x)

		t.Cleanup(func() { delNetns(t, x.ns) })
		if _, err := ipRun("netns", "add", x.ns); err != nil {
			t.Fatal(err)
		}
		// The veth pair is made with its ends in place: eth0 in the
		// machine, x.link on the bridge (deleting either namespace deletes
		// the pair).
		t.Cleanup(func() { _, _ = ipRun("-n", m.bridge, "link", "del", x.link) })
		for _, c := range [][]string{
			{"link", "add", x.link, "netns", m.bridge, "type", "veth", "peer", "name", "eth0", "netns", x.ns},
			{"-n", m.bridge, "link", "set", x.link, "master", "br0", "up"},
			{"-n", x.ns, "link", "set", "lo", "up"},
			{"-n", x.ns, "addr", "add", fmt.Sprintf("%s/%d", x.addr, testNetBits), "dev", "eth0"},
			{"-n", x.ns, "link", "set", "eth0", "up"},
		} {
			if _, err := ipRun(c...); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Sealed before any engine runs, and again with the engines running.
	for _, x := range m.nodes {
		x.checkSealed(t)
	}
	checkNamespaceSealed(t, m.bridge, "/var/run/netns/"+m.bridge)

	for _, x := range m.nodes {
		if err := os.MkdirAll(x.dir, 0o700); err != nil {
			t.Fatal(err)
		}
		x.args = []string{
			"--net=" + x.nsPath, "dockerd",
			// The machine's /etc/docker/daemon.json sets data-root and
			// storage-driver: dockerd refuses a setting given twice.
			"--config-file", m.empty,
			"--data-root", filepath.Join(x.dir, "data"),
			"--exec-root", filepath.Join(x.dir, "exec"),
			"-H", x.host,
			"--pidfile", filepath.Join(x.dir, "docker.pid"),
			"--storage-driver=fuse-overlayfs",
			"--cgroup-parent=" + x.cgroup,
			// Keep every packet in: no NAT, no forwarding, no default bridge.
			"--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
		}
		t.Cleanup(func() { x.destroy(t) })
		x.start(t)
	}
	for _, x := range m.nodes {
		x.waitReady(t, 2*time.Minute)
		x.checkSealed(t)
	}
	return m
}

// start starts the machine's engine (its log appends to dockerd.log).
func (x *machine) start(t *testing.T) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(x.dir, "dockerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// nsenter enters the namespace and execs dockerd (no fork): the pid is
	// dockerd's. Not `ip netns exec`, which remounts /sys: dockerd then
	// fails with "Devices cgroup isn't mounted".
	cmd := exec.Command("nsenter", x.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("%s: starting dockerd: %v", x.name, err)
	}
	x.proc, x.log, x.done = cmd, f, make(chan struct{})
	done := x.done
	go func() { _ = cmd.Wait(); f.Close(); close(done) }()
}

// running reports whether the engine's process runs.
func (x *machine) running() bool {
	if x.proc == nil {
		return false
	}
	select {
	case <-x.done:
		return false
	default:
		return true
	}
}

// waitReady waits until the engine answers, failing at once if it exited.
func (x *machine) waitReady(t *testing.T, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, func() (bool, string) {
		if !x.running() {
			t.Fatalf("%s: dockerd exited:\n%s", x.name, x.logTail(30))
		}
		out, err := x.docker(20*time.Second, "version", "--format", "{{.Server.Version}}")
		return err == nil, fmt.Sprintf("%s: engine not answering: %v %s", x.name, err, firstLine([]byte(out)))
	})
}

// stop stops the engine as a machine shuts down: SIGTERM, and dockerd stops
// its containers; SIGKILL if it has not exited after timeout.
func (x *machine) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	if !x.running() {
		return
	}
	_ = x.proc.Process.Signal(syscall.SIGTERM)
	select {
	case <-x.done:
	case <-time.After(timeout):
		t.Logf("%s: dockerd still running %s after SIGTERM: killing it", x.name, timeout)
		_ = x.proc.Process.Kill()
		<-x.done
	}
}

// destroy removes everything of the engine: its containers and volumes, its
// place in the swarm, the engine itself (and its containerd), and any
// process left in its cgroups. The directory goes with the machines'.
func (x *machine) destroy(t *testing.T) {
	if t.Failed() {
		t.Logf("%s: engine log (last 20 lines):\n%s", x.name, x.logTail(20))
		keepLogs(t, x.name+"-dockerd.log", filepath.Join(x.dir, "dockerd.log"))
	}
	if x.running() {
		if ids := strings.Fields(mustOut(x.docker(time.Minute, "ps", "-aq"))); len(ids) > 0 {
			if out, err := x.docker(2*time.Minute, append([]string{"rm", "-f", "-v"}, ids...)...); err != nil {
				t.Logf("%s: removing containers: %v: %s", x.name, err, out)
			}
		}
		if vols := strings.Fields(mustOut(x.docker(time.Minute, "volume", "ls", "-q"))); len(vols) > 0 {
			if out, err := x.docker(time.Minute, append([]string{"volume", "rm", "-f"}, vols...)...); err != nil {
				t.Logf("%s: removing volumes: %v: %s", x.name, err, out)
			}
		}
		x.stop(t, time.Minute)
	}
	killEngineRest(x.dir, x.cgroup)
}

// docker runs the docker CLI against the machine's engine.
func (x *machine) docker(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", append([]string{"-H", x.host}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: docker %s: %w", x.name, strings.Join(args, " "), err)
	}
	return out.String(), nil
}

func (x *machine) dockerMust(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := x.docker(timeout, args...)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return out
}

func mustOut(s string, err error) string {
	if err != nil {
		return ""
	}
	return s
}

// env is the environment of a command run "on" the machine: the test's,
// with DOCKER_HOST naming the machine's engine and none of the
// datacenter's DC_* overrides (the README's commands use the defaults).
func (x *machine) env() []string {
	var env []string
	for _, e := range os.Environ() {
		if strings.HasPrefix(e, "DC_") || strings.HasPrefix(e, "DOCKER_") || strings.HasPrefix(e, "COMPOSE_") {
			continue
		}
		env = append(env, e)
	}
	env = append(env, "DOCKER_HOST="+x.host)
	env = append(env, x.m.env...)
	if x.secrets != nil {
		env = append(env, "SVCKIT_SECRETS="+x.secrets.root)
	}
	return env
}

// useSecrets makes the datacenter's secrets the machine's: its build.sh
// runs find them, and its HTTPS to Consul trusts their CA.
func (x *machine) useSecrets(s *dcSecrets) {
	x.secrets = s
	x.client.Transport.(*http.Transport).TLSClientConfig = s.tlsConfig()
}

// buildSh runs ./build.sh with args on the machine (DOCKER_HOST).
func (x *machine) buildSh(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./build.sh", args...)
	cmd.Dir = repoRoot
	cmd.Env = x.env()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: DOCKER_HOST=%s ./build.sh %s: %v\n%s", x.name, x.host, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (x *machine) logTail(n int) string {
	b, _ := os.ReadFile(filepath.Join(x.dir, "dockerd.log"))
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// cut pulls the machine's cable: its port on the bridge goes down, so what
// it sends and what is sent to it vanishes (connections time out, as on a
// real partition); everything on the machine keeps running.
func (x *machine) cut(t *testing.T) {
	t.Helper()
	if _, err := ipRun("-n", x.m.bridge, "link", "set", x.link, "down"); err != nil {
		t.Fatal(err)
	}
}

// heal plugs the cable back in.
func (x *machine) heal(t *testing.T) {
	t.Helper()
	if _, err := ipRun("-n", x.m.bridge, "link", "set", x.link, "up"); err != nil {
		t.Fatal(err)
	}
}

// checkSealed fails the test unless the machine's namespace can reach
// nothing outside the test: no default route (nor any route outside the
// test network), no NAT, and a connect to an outside address fails at once.
func (x *machine) checkSealed(t *testing.T) {
	t.Helper()
	checkNamespaceSealed(t, x.ns, x.nsPath)
}

func checkNamespaceSealed(t *testing.T, ns, nsPath string) {
	t.Helper()
	for _, fam := range []string{"-4", "-6"} {
		out, err := ipRun("-n", ns, fam, "route", "show", "default")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Fatalf("namespace %s has a default route (%s): it could reach outside this machine", ns, strings.TrimSpace(out))
		}
		out, err = ipRun("-n", ns, fam, "route", "show", "table", "main")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			dst := f[0]
			if slices.Contains(f, "via") {
				t.Fatalf("namespace %s routes %s through a gateway (%s)", ns, dst, line)
			}
		}
	}
	// NAT: nothing is masqueraded (the engines run with --iptables=false).
	if _, err := exec.LookPath("iptables"); err == nil {
		out, err := exec.Command("nsenter", "--net="+nsPath, "iptables", "-t", "nat", "-S").CombinedOutput()
		if err == nil && (strings.Contains(string(out), "MASQUERADE") || strings.Contains(string(out), "SNAT")) {
			t.Fatalf("namespace %s masquerades:\n%s", ns, out)
		}
	}
	for _, a := range outsideAddrs {
		start := time.Now()
		c, err := nsDial(context.Background(), nsPath, "tcp", a, 3*time.Second)
		took := time.Since(start)
		if err == nil {
			c.Close()
			t.Fatalf("namespace %s reached %s: traffic leaves the test network", ns, a)
		}
		if !errors.Is(err, syscall.ENETUNREACH) && !errors.Is(err, syscall.EHOSTUNREACH) {
			t.Fatalf("namespace %s: connect to %s failed with %v after %s; want 'network is unreachable' at once (no route)", ns, a, err, took)
		}
		if took > time.Second {
			t.Fatalf("namespace %s: connect to %s took %s to fail: a packet went somewhere", ns, a, took)
		}
	}
}

// nsDial dials addr from inside the network namespace at nsPath: the socket
// is made on a thread that entered the namespace, and belongs to it for
// good. The thread is never given back to the scheduler (the goroutine
// exits locked, so the thread ends with it).
func nsDial(ctx context.Context, nsPath, network, addr string, timeout time.Duration) (net.Conn, error) {
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: this thread must not run anything else
		f, err := os.Open(nsPath)
		if err != nil {
			ch <- res{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- res{nil, fmt.Errorf("setns %s: %w", nsPath, err)}
			return
		}
		d := net.Dialer{Timeout: timeout}
		c, err := d.DialContext(ctx, network, addr)
		ch <- res{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// nsHTTPClient is an HTTP client whose connections start inside the
// namespace at nsPath (what a program on that machine would reach).
func nsHTTPClient(nsPath string) *http.Client {
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return nsDial(ctx, nsPath, network, addr, 5*time.Second)
			},
		},
	}
}

// getJSON GETs a URL from inside the machine (with the operator's Consul
// token once the machine has the datacenter's secrets).
func (x *machine) getJSON(url string, v any) error {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if x.secrets != nil {
		req.Header.Set("X-Consul-Token", x.secrets.management)
	}
	resp, err := x.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: GET %s: HTTP %d: %s", x.name, url, resp.StatusCode, firstLine(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: GET %s: %v: %s", x.name, url, err, firstLine(b))
	}
	return nil
}

// delNetns deletes a namespace (and the veth ends in it) if it exists.
func delNetns(t *testing.T, ns string) {
	if _, err := os.Stat("/var/run/netns/" + ns); err != nil {
		return
	}
	if _, err := ipRun("netns", "del", ns); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// killEngineRest kills what an engine whose files are in dir may have left
// running: its containerd (pidfile), any process whose command line names
// dir (containerd-shims), and every process in its containers' cgroups;
// then removes the cgroups.
func killEngineRest(dir, cgroup string) {
	var pids []int
	if b, err := os.ReadFile(filepath.Join(dir, "docker.pid")); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			pids = append(pids, pid)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	ctrls, _ := filepath.Glob("/sys/fs/cgroup/*" + cgroup)
	for _, c := range ctrls {
		_ = filepath.WalkDir(c, func(path string, d os.DirEntry, err error) error {
			if err != nil || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(path)
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// Give the kernel a moment to reap them, then remove the cgroups,
	// deepest first (a cgroup with processes cannot be removed).
	deadline := time.Now().Add(10 * time.Second)
	for _, c := range ctrls {
		var dirs []string
		_ = filepath.WalkDir(c, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		slices.Reverse(dirs)
		for _, d := range dirs {
			for os.Remove(d) != nil && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond) // polling the kernel's reaping, bounded
			}
		}
	}
}

// removeTree unmounts whatever is still mounted under dir (an engine killed
// with its mounts), deepest first, and removes dir.
func removeTree(t *testing.T, dir string) {
	if _, err := os.Stat(dir); err != nil {
		return
	}
	for _, mp := range mountsUnder(dir) {
		if err := syscall.Unmount(mp, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			t.Logf("cleanup: unmounting %s: %v", mp, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Errorf("cleanup: %v", err)
	}
}

// mountsUnder lists mount points at or under dir, deepest first.
func mountsUnder(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var mps []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mps = append(mps, mp)
		}
	}
	slices.SortFunc(mps, func(a, b string) int { return len(b) - len(a) })
	return mps
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// stalePID returns the pid in a name made by this file (svk3e<pid>…,
// svk3e-<pid>…) and whether that process is gone.
func stalePID(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, stalePrefix)
	if !ok {
		return 0, false
	}
	rest = strings.TrimPrefix(rest, "-")
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	pid, err := strconv.Atoi(rest[:i])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return 0, false
	}
	if syscall.Kill(pid, 0) == syscall.ESRCH {
		return pid, true
	}
	// The pid may have been given to another program since: only a test
	// binary (go test's <package>.test) still owns the names.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return pid, err == nil && !bytes.Contains(b, []byte(".test"))
}

// removeStaleEngines removes what runs killed before their cleanups left:
// engines (stopped as a machine shuts down, then whatever they left
// running), their directories, namespaces and cgroups. Only names whose
// pid no longer runs are touched.
func removeStaleEngines(t *testing.T) {
	t.Helper()
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), stalePrefix+"-*"))
	for _, base := range dirs {
		pid, stale := stalePID(filepath.Base(base))
		if !stale {
			continue
		}
		nodes, _ := filepath.Glob(filepath.Join(base, "node*"))
		for _, d := range nodes {
			cgroup := fmt.Sprintf("/%s-%d-%s", stalePrefix, pid, filepath.Base(d))
			if b, err := os.ReadFile(filepath.Join(d, "docker.pid")); err == nil {
				if dpid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && isDockerdOf(dpid, d) {
					_ = syscall.Kill(dpid, syscall.SIGTERM)
					deadline := time.Now().Add(time.Minute)
					for syscall.Kill(dpid, 0) == nil && time.Now().Before(deadline) {
						time.Sleep(200 * time.Millisecond) // polling its exit, bounded
					}
				}
			}
			killEngineRest(d, cgroup)
		}
		t.Logf("three engines: removing the leftovers of an earlier run (pid %d): %s", pid, base)
		removeTree(t, base)
	}
	// Cgroups of engines whose directory is gone already.
	cgs, _ := filepath.Glob("/sys/fs/cgroup/*/" + stalePrefix + "-*")
	for _, c := range cgs {
		if _, stale := stalePID(filepath.Base(c)); stale {
			killEngineRest(filepath.Join(os.TempDir(), "nonexistent-"+filepath.Base(c)), "/"+filepath.Base(c))
		}
	}
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if _, stale := stalePID(f[0]); stale {
			t.Logf("three engines: removing namespace %s of an earlier run", f[0])
			delNetns(t, f[0])
		}
	}
}

// isDockerdOf reports whether pid is a dockerd whose files are in dir.
func isDockerdOf(pid int, dir string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return err == nil && bytes.HasPrefix(b, []byte("dockerd")) && bytes.Contains(b, []byte(dir+"/"))
}

// leftovers lists what of this run still exists: namespaces, the directory,
// cgroups, processes naming the directory.
func (m *machines) leftovers() []string {
	var left []string
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], fmt.Sprintf("%s-%d-", stalePrefix, os.Getpid())) {
				left = append(left, "namespace "+f[0])
			}
		}
	}
	if _, err := os.Stat(m.base); err == nil {
		left = append(left, "directory "+m.base)
	}
	cgs, _ := filepath.Glob(fmt.Sprintf("/sys/fs/cgroup/*/%s-%d-*", stalePrefix, os.Getpid()))
	for _, c := range cgs {
		left = append(left, "cgroup "+c)
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(m.base+"/")) {
			left = append(left, "process "+filepath.Base(filepath.Dir(p))+" "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}

// keepLogs copies file, when the test failed, to
// $DOCKERTEST_LOG_DIR/<test name>/name if that variable names a directory:
// the engines' files are removed with the test.
func keepLogs(t *testing.T, name, file string) {
	dir := os.Getenv("DOCKERTEST_LOG_DIR")
	if dir == "" || !t.Failed() {
		return
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return
	}
	d := filepath.Join(dir, t.Name())
	if err := os.MkdirAll(d, 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(d, name), b, 0o644)
	}
}

// kernelHasESP reports whether this kernel can do IPsec ESP (Docker's
// encrypted overlay needs it: without it the overlay's traffic between the
// machines is dropped), by adding an ESP state in a namespace of its own.
func kernelHasESP(t *testing.T) (bool, string) {
	ns := fmt.Sprintf("svkesp%d", os.Getpid())
	if out, err := ipRun("netns", "add", ns); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	defer delNetns(t, ns)
	out, err := ipRun("-n", ns, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2", "proto", "esp", "spi", "0x100",
		"mode", "transport", "aead", "rfc4106(gcm(aes))", "0x0102030405060708090a0b0c0d0e0f1011121314", "128")
	return err == nil, strings.TrimSpace(out)
}
