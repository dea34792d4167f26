package dockertest

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/operator"
)

// These need no Docker: the two svckit subcommands the containers and the
// tree rely on.

func svckit(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = operator.Main(append([]string{"svckit"}, args...), strings.NewReader(""), &out, &errb, "test")
	return code, out.String(), errb.String()
}

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
		code, out, errs := svckit(c.args...)
		if code != c.code || out != c.stdout || !strings.Contains(errs, c.stderr) {
			t.Errorf("svckit %v: exit %d, stdout %q, stderr %q; want %d, %q, stderr with %q", c.args, code, out, errs, c.code, c.stdout, c.stderr)
		}
	}
}

func TestInfraCLI(t *testing.T) {
	code, out, errs := svckit("infra", "check", "--root", repoRoot)
	if code != 0 || !strings.HasPrefix(out, "ok: ") {
		t.Errorf("infra check of the committed tree: exit %d\n%s%s", code, out, errs)
	}
	code, out, _ = svckit("infra", "ls", "--root", repoRoot)
	for _, want := range []string{"dev\n", "  host1", "aws\n", "  node3", "svckit/consul:", "consul-data:/consul/data", "->8501/tcp", "secrets-consul:/secrets:ro"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("infra ls: exit %d, output lacks %q:\n%s", code, want, out)
		}
	}
	code, out, errs = svckit("infra", "check", "--root", repoRoot+"/svckit/infra/testdata/broken")
	if code != 1 || !strings.Contains(errs, "problem(s)") ||
		!strings.Contains(out, "datacenters/bad/noconsul/docker-compose.yml:12: service worker: no CONSUL_HTTP_ADDR") {
		t.Errorf("infra check of the broken fixtures: exit %d\n%s%s", code, out, errs)
	}
	if code, _, errs := svckit("infra", "ls", "extra"); code != 2 {
		t.Errorf("infra ls extra: exit %d (%s), want 2", code, errs)
	}
}
