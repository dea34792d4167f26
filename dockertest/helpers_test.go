// Package dockertest runs the committed infrastructure (images/ and
// datacenters/) on the real Docker engine: dev/host1 comes up and works,
// and the multi-host datacenter aws survives the loss of a host with
// nothing lost. Every test uses its own compose projects, network and image
// tag, and removes all of them (containers, networks, volumes, tags) when
// it ends. Without a Docker engine the tests skip, saying so; in CI
// (CI=true) they fail instead.
package dockertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/skip"
)

// repoRoot is the repository (this package lives in dockertest/).
var repoRoot, _ = filepath.Abs("..")

// imageNames are the images ./build.sh images builds.
var imageNames = []string{"sensor", "worker", "app", "svckit", "consul", "nsq"}

// runID makes this run's names unique (parallel runs do not collide).
var runID = func() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}()

var (
	dockerOnce sync.Once
	dockerErr  string // why Docker tests cannot run here ("" = they can)

	imagesOnce sync.Once
	imagesErr  error
	imagesTag  string // this run's tag of every svckit/<name> image
	imagesTook time.Duration
)

func TestMain(m *testing.M) {
	code := m.Run()
	if imagesTag != "" {
		// Only this run's tag goes: the images stay as svckit/<name>:latest.
		args := []string{"rmi"}
		for _, n := range imageNames {
			args = append(args, "svckit/"+n+":"+imagesTag)
		}
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "dockertest: removing the tag %s: %v\n%s", imagesTag, err, out)
		}
	}
	os.Exit(code)
}

// needDocker skips the test when no Docker engine (or no docker-compose)
// answers here; in CI (CI=true) it fails instead (skip.CannotRun). -short
// skips it too, on purpose even in CI; CI does not pass -short (.ci/run runs
// ./build.sh test, which adds only the arguments it is given), so it runs
// there.
func needDocker(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("dockertest: skipped in -short mode (builds images, runs containers)")
	}
	dockerOnce.Do(func() {
		if _, err := exec.LookPath("docker"); err != nil {
			dockerErr = "docker is not on PATH"
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, "docker", "info")
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			dockerErr = fmt.Sprintf("no Docker engine answers (docker info: %v: %s)", err, firstLine(stderr.Bytes()))
			return
		}
		if _, err := exec.LookPath("docker-compose"); err != nil {
			dockerErr = "docker-compose is not on PATH"
		}
	})
	if dockerErr != "" {
		skip.CannotRun(t, "dockertest: skipped: %s", dockerErr)
	}
}

// images builds every image once per run with ./build.sh images and tags
// it for this run, so that a concurrent build cannot change what the
// test's containers run.
func images(t *testing.T) string {
	t.Helper()
	imagesOnce.Do(func() {
		start := time.Now()
		cmd := exec.Command("./build.sh", "images")
		cmd.Dir = repoRoot
		out, err := cmd.CombinedOutput()
		if err != nil {
			imagesErr = fmt.Errorf("./build.sh images: %v\n%s", err, out)
			return
		}
		tag := "test-" + runID
		for _, n := range imageNames {
			if out, err := exec.Command("docker", "tag", "svckit/"+n+":latest", "svckit/"+n+":"+tag).CombinedOutput(); err != nil {
				imagesErr = fmt.Errorf("docker tag svckit/%s: %v: %s", n, err, out)
				return
			}
			imagesTag = tag
		}
		imagesTook = time.Since(start)
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	t.Logf("images: ./build.sh images took %s; this run uses tag %s", imagesTook.Round(time.Second), imagesTag)
	return imagesTag
}

// dcSecrets is a datacenter's secrets, made for one test by ./build.sh
// secrets DC into a directory of its own (SVCKIT_SECRETS), as an operator
// makes them once per datacenter.
type dcSecrets struct {
	root string // SVCKIT_SECRETS
	dc   string
	ca   *x509.CertPool
	// management is the operator's Consul token: what the test reads
	// Consul with (ACLs deny by default).
	management string
}

func makeSecrets(t *testing.T, dc string) *dcSecrets {
	t.Helper()
	root := t.TempDir()
	cmd := exec.Command("./build.sh", "secrets", dc)
	cmd.Dir = repoRoot
	cmd.Env = append(os.Environ(), "SVCKIT_SECRETS="+root)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("./build.sh secrets %s: %v\n%s", dc, err, out)
	}
	s := &dcSecrets{root: root, dc: dc, ca: x509.NewCertPool()}
	if !s.ca.AppendCertsFromPEM([]byte(s.read(t, "ca.pem"))) {
		t.Fatalf("./build.sh secrets %s: ca.pem holds no certificate", dc)
	}
	s.management = strings.TrimSpace(s.read(t, "management.token"))
	return s
}

// read is a file of the datacenter's secrets directory.
func (s *dcSecrets) read(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.root, s.dc, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func (s *dcSecrets) tlsConfig() *tls.Config {
	return &tls.Config{RootCAs: s.ca, MinVersion: tls.VersionTLS12}
}

// consulAPI is a datacenter's Consul as its operator reads it from this
// machine: HTTPS verified with the datacenter's CA, the management token.
type consulAPI struct {
	url    string
	token  string
	client *http.Client
}

func (c consulAPI) String() string { return c.url }

func (c consulAPI) getJSON(path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, c.url+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("X-Consul-Token", c.token)
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s%s: HTTP %d: %s", c.url, path, resp.StatusCode, firstLine(b))
	}
	return json.Unmarshal(b, v)
}

// compose is one host of a datacenter, brought up as its own project with
// ./build.sh up (DC_PROJECT) from the test's secrets.
type compose struct {
	t       *testing.T
	host    string // dc/host
	project string
	file    string
	env     []string
	secrets *dcSecrets
}

func newCompose(t *testing.T, host, project string, secrets *dcSecrets, env ...string) *compose {
	return &compose{
		t: t, host: host, project: project, secrets: secrets,
		file: filepath.Join(repoRoot, "datacenters", filepath.FromSlash(host), "docker-compose.yml"),
		env: append(os.Environ(), append([]string{
			"DC_PROJECT=" + project, "DC_SECRETS=" + project, "SVCKIT_SECRETS=" + secrets.root,
		}, env...)...),
	}
}

// run runs docker-compose with the project's file and environment.
func (c *compose) run(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-compose", append([]string{"--ansi", "never", "-p", c.project, "-f", c.file}, args...)...)
	cmd.Env = c.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String() + stderr.String(), fmt.Errorf("docker-compose -p %s %s: %w", c.project, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

func (c *compose) must(timeout time.Duration, args ...string) string {
	c.t.Helper()
	out, err := c.run(timeout, args...)
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", c.host, err, out)
	}
	return out
}

// buildSh runs ./build.sh with the host's environment.
func (c *compose) buildSh(timeout time.Duration, args ...string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "./build.sh", args...)
	cmd.Dir = repoRoot
	cmd.Env = c.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s: ./build.sh %s: %v\n%s", c.host, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// up brings the hosts up with ./build.sh up (the secrets installed into
// their volumes, the ACLs applied once Consul has a leader), and registers
// their removal (containers, volumes, the secrets' volumes, their own
// networks) for the end of the test, all at once, with their logs if the
// test failed.
func up(t *testing.T, hosts ...*compose) {
	t.Helper()
	t.Cleanup(func() {
		var wg sync.WaitGroup
		for _, c := range hosts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if t.Failed() {
					out, _ := c.run(time.Minute, "logs", "--no-color", "--tail", "40")
					t.Logf("%s logs (last 40 lines per container):\n%s", c.host, out)
				}
				// Nothing of it is kept: no need to wait for graceful stops
				// (a Consul server that lost its quorum takes 10-20 s).
				if out, err := c.run(3*time.Minute, "down", "--volumes", "--remove-orphans", "--timeout", "3"); err != nil {
					t.Errorf("%s: tearing down: %v\n%s", c.host, err, out)
				}
				// The secrets' volumes are external: compose keeps them.
				vols, _ := execDocker("volume", "ls", "-q", "--filter", "name="+c.project+"-secrets-")
				for _, v := range strings.Fields(vols) {
					if out, err := execDocker("volume", "rm", v); err != nil {
						t.Errorf("%s: removing volume %s: %v: %s", c.host, v, err, out)
					}
				}
			}()
		}
		wg.Wait()
	})
	for _, c := range hosts {
		c.buildSh(5*time.Minute, "up", c.host, "--no-build")
	}
}

// consul is the host's Consul HTTPS API as published on this machine.
func (c *compose) consul() consulAPI {
	c.t.Helper()
	return consulAPI{
		url:    "https://" + c.published("consul", "8501"),
		token:  c.secrets.management,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c.secrets.tlsConfig()}},
	}
}

// published is the host address of a container port (docker-compose port).
func (c *compose) published(service, port string) string {
	c.t.Helper()
	out := strings.TrimSpace(c.must(time.Minute, "port", service, port))
	if out == "" || strings.HasSuffix(out, ":0") {
		c.t.Fatalf("%s: %s:%s is not published (%q)", c.host, service, port, out)
	}
	return strings.Replace(out, "0.0.0.0:", "127.0.0.1:", 1)
}

// get GETs url from inside the service's container with `svckit probe
// --print`: our services' addresses are on the Docker network.
func (c *compose) get(service, url string) ([]byte, error) {
	out, err := c.run(time.Minute, "exec", "-T", service, "/bin/svckit", "probe", "--timeout", "5s", "--print", url)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, out)
	}
	return []byte(out), nil
}

func (c *compose) getJSON(service, url string, v any) error {
	b, err := c.get(service, url)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s in %s: %v: %s", url, service, err, b)
	}
	return nil
}

// appStream is one entry of the app's GET /streams.
type appStream struct {
	Stream         string          `json:"stream"`
	LastContiguous uint64          `json:"last_contiguous"`
	Applied        uint64          `json:"applied"`
	Duplicates     uint64          `json:"duplicates"`
	Gaps           json.RawMessage `json:"gaps"`
}

func (s appStream) String() string {
	return fmt.Sprintf("{%s last_contiguous %d applied %d duplicates %d gaps %s}", s.Stream, s.LastContiguous, s.Applied, s.Duplicates, s.Gaps)
}

func (s appStream) noGaps() bool {
	g := strings.TrimSpace(string(s.Gaps))
	return g == "" || g == "null" || g == "[]"
}

// sensorStream is one entry of the sensor's GET /streams.
type sensorStream struct {
	Stream        string `json:"stream"`
	LastSeq       uint64 `json:"last_seq"`
	RetainedFirst uint64 `json:"retained_first"`
	RetainedLast  uint64 `json:"retained_last"`
}

// aggregate is one stream of the app's GET /state.
type aggregate struct {
	Seq   uint64 `json:"seq"`
	Count uint64 `json:"count"`
}

const local = "http://127.0.0.1:8080"

func appStreams(c *compose, service string) (map[string]appStream, error) {
	var list []appStream
	if err := c.getJSON(service, local+"/streams", &list); err != nil {
		return nil, err
	}
	m := map[string]appStream{}
	for _, s := range list {
		m[s.Stream] = s
	}
	return m, nil
}

func sensorLastSeq(c *compose, service, stream string) (uint64, error) {
	var list []sensorStream
	if err := c.getJSON(service, local+"/streams", &list); err != nil {
		return 0, err
	}
	for _, s := range list {
		if s.Stream == stream {
			return s.LastSeq, nil
		}
	}
	return 0, fmt.Errorf("sensor %s does not own stream %s: %+v", service, stream, list)
}

// catalogEntry is what the health API says of one instance.
type catalogEntry struct {
	Node    struct{ Node string }
	Service struct {
		ID      string
		Service string
		Address string
		Port    int
		Tags    []string
	}
}

// passing asks a Consul agent for the passing instances of a service.
func passing(consul consulAPI, service string) ([]catalogEntry, error) {
	var out []catalogEntry
	err := consul.getJSON("/v1/health/service/"+service+"?passing=1", &out)
	return out, err
}

// waitPassing waits until consul has at least the wanted number of passing
// instances of each service.
func waitPassing(t *testing.T, consul consulAPI, timeout time.Duration, want map[string]int) time.Duration {
	t.Helper()
	start := time.Now()
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	var last string
	waitFor(t, timeout, func() (bool, string) {
		var have []string
		ok := true
		for _, n := range names {
			got, err := passing(consul, n)
			if err != nil {
				return false, err.Error()
			}
			have = append(have, fmt.Sprintf("%s %d/%d", n, len(got), want[n]))
			if len(got) < want[n] {
				ok = false
			}
		}
		last = strings.Join(have, ", ")
		return ok, "passing in Consul: " + last
	})
	return time.Since(start)
}

// waitFor polls cond every second until it holds or timeout passes; the
// last status cond gave is in the failure.
func waitFor(t *testing.T, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	status := ""
	for {
		ok, s := cond()
		if ok {
			return
		}
		status = s
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, status)
		}
		time.Sleep(time.Second)
	}
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}

// execDocker runs a docker command and returns its combined output.
func execDocker(args ...string) (string, error) {
	out, err := exec.Command("docker", args...).CombinedOutput()
	return string(out), err
}

// dockerMust runs a docker command, failing the test on error.
func dockerMust(t *testing.T, args ...string) string {
	t.Helper()
	out, err := execDocker(args...)
	if err != nil {
		t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// leftovers lists containers, networks and volumes whose name starts with
// prefix.
func leftovers(t *testing.T, prefix string) []string {
	t.Helper()
	var left []string
	for _, q := range [][]string{
		{"ps", "-a", "--format", "{{.Names}}"},
		{"network", "ls", "--format", "{{.Name}}"},
		{"volume", "ls", "--format", "{{.Name}}"},
	} {
		for _, name := range strings.Fields(dockerMust(t, q...)) {
			if strings.HasPrefix(name, prefix) {
				left = append(left, q[0]+" "+name)
			}
		}
	}
	return left
}
