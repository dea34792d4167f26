// Package extest is what the examples' tests share: build an example
// program, run it as a real process against a testenv stack (consul,
// nsqd and nsqlookupd on free loopback ports), find it in Consul and read
// its HTTP endpoints. It uses only svckit's public packages, as a test in
// your own module would. Nothing sleeps: every wait polls with a deadline.
package extest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/testenv"
)

// Timeout bounds each wait: generous, because other suites run their own
// stacks on the same small machine meanwhile.
const Timeout = 2 * time.Minute

// Build builds the program in dir (a package path relative to the test's
// directory, "." for its own) into a temporary directory and returns the
// binary: the test runs the code it sits next to, never a stale bin/.
func Build(t testing.TB, dir string) string {
	t.Helper()
	goBin, err := exec.LookPath("go") // go test puts its own go first on PATH
	if err != nil {
		t.Fatalf("go is not on PATH: %v", err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), filepath.Base(abs))
	cmd := exec.Command(goBin, "build", "-o", out, ".")
	cmd.Dir = abs
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", dir, err, b)
	}
	return out
}

// Start starts bin as the svckit service instance name against consul,
// with a new data directory, an HTTP port chosen by the kernel and quick
// health checks, then args (later flags win). The process is killed at the
// end of the test; its log is printed if the test failed.
func Start(t testing.TB, consul *testenv.Consul, name, bin string, args ...string) *testenv.Process {
	t.Helper()
	return StartIn(t, consul, name, bin, t.TempDir(), args...)
}

// StartIn is Start with the data directory given (a restart keeps it).
func StartIn(t testing.TB, consul *testenv.Consul, name, bin, dataDir string, args ...string) *testenv.Process {
	t.Helper()
	base := []string{
		"--consul-addr=" + consul.HTTPAddr, "--http-addr=127.0.0.1:0", "--data-dir=" + dataDir,
		"--check-interval=1s", "--nsq-lookupd-poll-interval=1s", "--instance-id=" + name,
	}
	return testenv.StartProcess(t, name, bin, append(base, args...), nil)
}

// Addr waits until p's instance (Consul service id instance) of service is
// passing and answers /health, and returns its host:port. It fails the
// test at once if p exits first.
func Addr(t testing.TB, consul *testenv.Consul, p *testenv.Process, service, instance string) string {
	t.Helper()
	var got string
	testenv.WaitFor(t, Timeout, instance+" ("+service+") passing in consul", func() bool {
		if !p.Running() {
			return true
		}
		got = passingAddr(consul, service, instance)
		return got != ""
	})
	if !p.Running() {
		t.Fatalf("%s exited (code %d) before it was passing in consul", instance, p.ExitCode())
	}
	return got
}

func passingAddr(consul *testenv.Consul, service, instance string) string {
	entries, err := testenv.Passing(consul, service)
	if err != nil {
		return ""
	}
	for _, e := range entries {
		if e.Service.ID != instance {
			continue
		}
		a := net.JoinHostPort(e.Service.Address, strconv.Itoa(e.Service.Port))
		if code, _, err := testenv.HTTPGet("http://" + a + "/health"); err == nil && code == http.StatusOK {
			return a
		}
	}
	return ""
}

// GetJSON GETs http://addr<path> and decodes the JSON answer into v; a
// status other than 200 is an error.
func GetJSON(addr, path string, v any) error {
	resp, err := http.Get("http://" + addr + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: %s: %s", addr, path, resp.Status, b)
	}
	return json.Unmarshal(b, v)
}

// WaitExit waits until p exits and returns its exit code.
func WaitExit(t testing.TB, p *testenv.Process) int {
	t.Helper()
	select {
	case <-p.Exited():
	case <-time.After(Timeout):
		t.Fatalf("%s still runs after %s", p.Name(), Timeout)
	}
	return p.ExitCode()
}

// Metric reads a metric from GET /metrics: the sum of its values over
// every label set.
func Metric(t testing.TB, addr, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if !strings.HasPrefix(l, name+" ") && !strings.HasPrefix(l, name+"{") {
			continue
		}
		f := strings.Fields(l)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		sum += v
	}
	return sum
}
