package operator

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/cmd/svckit/internal/infra"
	"github.com/svckit/svckit/internal/sharedsecret"
)

// These need no programs: the two svckit subcommands the containers (their
// health checks: probe) and the datacenters' tree (infra) rely on.

// repoRoot is the repository, four levels up from this package.
var repoRoot, _ = filepath.Abs(filepath.Join("..", "..", "..", ".."))

func TestProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/health":
			w.Write([]byte("OK\n"))
		case "/slow":
			time.Sleep(time.Second)
		default:
			http.Error(w, "not ready", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	for _, c := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"probe", srv.URL + "/health"}, 0, "", ""},
		{[]string{"probe", "--print", srv.URL + "/health"}, 0, "OK\n", ""},
		{[]string{"probe", srv.URL + "/ready"}, 1, "", "HTTP 503"},
		{[]string{"probe", "--print", srv.URL + "/ready"}, 1, "not ready\n", "HTTP 503"},
		{[]string{"probe", "--timeout", "100ms", srv.URL + "/slow"}, 1, "", "deadline exceeded"},
		{[]string{"probe", "http://127.0.0.1:1/health"}, 1, "", "connection refused"},
		{[]string{"probe"}, 2, "", "exactly one URL"},
		{[]string{"probe", "127.0.0.1:8080/health"}, 2, "", "want an http:// or https:// URL"},
	} {
		code, out, errs := runCLI(t, c.args...)
		if code != c.code || out != c.stdout || !strings.Contains(errs, c.stderr) {
			t.Errorf("svckit %v: exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", c.args, code, out, errs, c.code, c.stdout, c.stderr)
		}
	}
}

func TestInfraCLI(t *testing.T) {
	code, out, errs := runCLI(t, "infra", "check", "--root", repoRoot)
	if code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Errorf("infra check of the committed tree: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = runCLI(t, "infra", "ls", "--root", repoRoot)
	for _, want := range []string{"dev\n", "  host1", "aws\n", "  node3", "svckit/consul:", "consul-data:/consul/data", "->8501/tcp", "secrets-consul:/secrets:ro"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("infra ls: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	code, out, errs = runCLI(t, "infra", "check", "--root", filepath.Join("..", "infra", "testdata", "broken"))
	if code != 1 || !strings.Contains(errs, "problem(s)") ||
		!strings.Contains(out, "datacenters/bad/noconsul/docker-compose.yml:12: service worker: no CONSUL_HTTP_ADDR") {
		t.Errorf("infra check of the broken fixtures: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := runCLI(t, "infra", "ls", "extra"); code != 2 {
		t.Errorf("infra ls extra: exit %d (%s), want 2", code, errs)
	}
}

// probe --secret signs its request as svckit's clients do: a Verifier
// with the same secret takes it, one with another refuses it (401, exit 1).
func TestProbeSigns(t *testing.T) {
	for _, v := range []string{"SVCKIT_REPLAY_SECRET", "SVCKIT_REPLAY_SECRET_FILE"} {
		t.Setenv(v, "") // restored after the test
		os.Unsetenv(v)
	}
	const secret = "probe-test-secret"
	srv := httptest.NewServer(sharedsecret.NewVerifier(secret).Protect("streams", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("[]\n"))
	})))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "replay.secret")
	if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"probe", "--print", "--secret", secret, srv.URL + "/streams"}, 0, "[]\n", ""},
		{[]string{"probe", "--print", "--secret-file", file, srv.URL + "/streams"}, 0, "[]\n", ""},
		{[]string{"probe", "--secret", "another-secret", srv.URL + "/streams"}, 1, "", "HTTP 401"},
		{[]string{"probe", srv.URL + "/streams"}, 1, "", "HTTP 401"},
	} {
		code, out, errs := runCLI(t, c.args...)
		if code != c.code || out != c.stdout || !strings.Contains(errs, c.stderr) {
			t.Errorf("svckit %v: exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", c.args, code, out, errs, c.code, c.stdout, c.stderr)
		}
	}
}

// infra ls --json prints the tree as read: what a script (e2e/guide's
// test) reads of a host, its containers' environment and volumes.
func TestInfraLsJSON(t *testing.T) {
	code, out, errs := runCLI(t, "infra", "ls", "--json", "--root", repoRoot)
	if code != 0 {
		t.Fatalf("infra ls --json: exit %d\n%s", code, errs)
	}
	var tree infra.Tree
	if err := json.Unmarshal([]byte(out), &tree); err != nil {
		t.Fatalf("infra ls --json: %v\n%s", err, out)
	}
	h := tree.Host("dev", "host1")
	if h == nil || !h.Parsed {
		t.Fatalf("infra ls --json: no parsed dev/host1 in\n%s", out)
	}
	c := h.Container("app")
	if c == nil {
		t.Fatalf("infra ls --json: dev/host1 has no container app:\n%s", out)
	}
	if a := c.Env["CONSUL_HTTP_ADDR"]; !strings.HasPrefix(a, "https://") {
		t.Errorf("infra ls --json: app's CONSUL_HTTP_ADDR is %q, want https://…", a)
	}
	secrets := false
	for _, v := range c.Volumes {
		secrets = secrets || (strings.Contains(h.VolumeNames[v.Source], "-secrets-app") && v.ReadOnly)
	}
	if !secrets {
		t.Errorf("infra ls --json: app mounts no read-only secrets volume: volumes %+v, names %v", c.Volumes, h.VolumeNames)
	}
}
