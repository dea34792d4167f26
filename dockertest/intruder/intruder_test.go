package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// quiet is a server's log of the TLS handshakes the tests fail on purpose.
var quiet = log.New(io.Discard, "", 0)

// runLines runs cfg and returns its lines by attempt, checking that every
// line is one well-formed result.
func runLines(t *testing.T, cfg config) map[string][]result {
	t.Helper()
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Stream == "" {
		cfg.Stream = "sensor-dev-host1"
	}
	var out bytes.Buffer
	if err := run(context.Background(), cfg, &out); err != nil {
		t.Fatal(err)
	}
	got := map[string][]result{}
	for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		if line == "" {
			continue
		}
		var r result
		dec := json.NewDecoder(strings.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&r); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		if r.Attempt == "" || r.Target == "" || r.Detail == "" {
			t.Errorf("incomplete line %q", line)
		}
		switch r.Outcome {
		case refused, allowed, unreachable:
		default:
			t.Errorf("line %q: outcome %q", line, r.Outcome)
		}
		got[r.Attempt] = append(got[r.Attempt], r)
		t.Log(line)
	}
	return got
}

// want checks that exactly the attempts in outcomes were made, each with
// its outcome.
func want(t *testing.T, got map[string][]result, outcomes map[string]string) {
	t.Helper()
	for name, rs := range got {
		w, ok := outcomes[name]
		if !ok {
			t.Errorf("unexpected attempt %s: %+v", name, rs)
			continue
		}
		for _, r := range rs {
			if r.Outcome != w {
				t.Errorf("%s %s: outcome %s, want %s (%s)", name, r.Target, r.Outcome, w, r.Detail)
			}
		}
	}
	for name := range outcomes {
		if _, ok := got[name]; !ok {
			t.Errorf("attempt %s missing", name)
		}
	}
}

func all(outcome string, names ...string) map[string]string {
	m := map[string]string{}
	for _, n := range names {
		m[n] = outcome
	}
	return m
}

var (
	consulWrites = []string{"consul-kv-put-policy", "consul-kv-put-issued", "consul-service-register", "consul-service-deregister", "consul-claim", "consul-kv-put-claim", "consul-acl-bootstrap"}
	consulReads  = []string{"consul-kv-read", "consul-catalog-read"}
	svcReads     = []string{"svc-streams", "svc-replay", "svc-snapshot", "svc-deadletters-list", "svc-state", "svc-identities", "svc-metrics", "svc-stats"}
	svcWrites    = []string{"svc-deadletters-delete", "svc-wrong-secret"}
	nsqAll       = []string{"nsq-pub-clear", "nsq-sub-clear", "nsq-pub-tls", "nsq-sub-tls", "nsq-pub-wrong-secret"}
)

func cat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// closedAddr is an address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// --- fake Consul and services -------------------------------------------

// fake answers like a Consul agent and a svckit service that let
// everyone do everything, and records what it was asked.
type fake struct {
	mu       sync.Mutex
	requests []string // "METHOD /path?query token=... auth=..."
}

func (f *fake) seen() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, fmt.Sprintf("%s %s token=%s auth=%s", r.Method, r.URL.RequestURI(),
		r.Header.Get("X-Consul-Token"), r.Header.Get("Authorization")))
	f.mu.Unlock()
	p := r.URL.Path
	switch {
	case r.Method == "PUT" && strings.HasPrefix(p, "/v1/kv/"):
		io.WriteString(w, "true")
	case r.Method == "GET" && p == "/v1/kv/svckit/":
		io.WriteString(w, `[{"Key":"svckit/nsqauth/policy","Value":"c2VjcmV0"},{"Key":"svckit/streams/x/owner"}]`)
	case p == "/v1/agent/service/register", strings.HasPrefix(p, "/v1/agent/service/deregister/"):
	case p == "/v1/catalog/service/sensor":
		io.WriteString(w, `[{"ServiceID":"sensor-10.0.0.5-8080"}]`)
	case p == "/v1/session/create":
		io.WriteString(w, `{"ID":"0b7e1e5c-session"}`)
	case strings.HasPrefix(p, "/v1/session/destroy/"):
		io.WriteString(w, "true")
	case p == "/v1/catalog/services":
		io.WriteString(w, `{"consul":[],"sensor":["svckit"]}`)
	case p == "/v1/status/leader":
		io.WriteString(w, `"10.0.0.2:8300"`)
	case r.Method == "DELETE" && strings.HasPrefix(p, "/deadletters/"):
		http.Error(w, "dead letter not found", http.StatusNotFound)
	case p == "/streams", p == "/replay", p == "/snapshot", p == "/deadletters":
		io.WriteString(w, "[]")
	default:
		http.NotFound(w, r)
	}
}

func denyAll(code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "Permission denied: anonymous token lacks permission", code)
	})
}

func TestDenied(t *testing.T) {
	for _, code := range []int{http.StatusForbidden, http.StatusUnauthorized} {
		srv := httptest.NewTLSServer(denyAll(code))
		defer srv.Close()
		got := runLines(t, config{Consul: srv.URL, ConsulHTTP: srv.URL, Services: []string{srv.URL}})
		want(t, got, all(refused, cat(consulWrites, consulReads, svcReads, svcWrites, []string{"consul-http-port"})...))
		if d := got["consul-service-deregister"][0].Detail; !strings.Contains(d, `sensor id "sensor"`) {
			t.Errorf("deregister detail %q: want the default sensor id", d)
		}
	}
}

func TestAllowed(t *testing.T) {
	f := &fake{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	got := runLines(t, config{Consul: srv.URL, ConsulHTTP: srv.URL, Services: []string{srv.URL, srv.URL + "/"}})
	want(t, got, all(allowed, cat(consulWrites, consulReads, svcReads, svcWrites, []string{"consul-http-port"})...))
	if n := len(got["svc-streams"]); n != 2 {
		t.Errorf("svc-streams: %d lines, want one per service", n)
	}
	if d := got["consul-claim"][0].Detail; !strings.Contains(d, "destroy: PUT /v1/session/destroy/0b7e1e5c-session: HTTP 200") {
		t.Errorf("claim detail %q: want the session destroyed", d)
	}
	if d := got["consul-kv-read"][0].Detail; strings.Contains(d, "c2VjcmV0") {
		t.Errorf("kv-read detail %q prints a value", d)
	}
	if d := got["svc-deadletters-delete"][0].Detail; !strings.Contains(d, "reached the handler") {
		t.Errorf("delete detail %q", d)
	}
	seen := strings.Join(f.seen(), "\n")
	for _, w := range []string{
		"PUT /v1/kv/svckit/nsqauth/policy?cas=0 ",
		"PUT /v1/agent/service/deregister/sensor-10.0.0.5-8080 ",
		"PUT /v1/agent/service/deregister/intruder-worker ", // the registration's cleanup
		"PUT /v1/kv/svckit/streams/sensor-dev-host1/owner?acquire=0b7e1e5c-session ",
		"GET /streams token= auth=Svckit-HMAC ts=",
	} {
		if !strings.Contains(seen, w) {
			t.Errorf("no request %q in\n%s", w, seen)
		}
	}
	const intruderSum = "aedad4dfac4747d17e5d2323b7e25954e2c46a2be524653fe4a13861206c45f3" // sha256("intruder")
	const issued = "PUT /v1/kv/svckit/nsqauth/issued/intruder/" + intruderSum + "?cas=0 "
	if !strings.Contains(seen, issued) {
		t.Errorf("no issued-key write in\n%s", seen)
	}
}

// With credentials, only reads are made, each with its credential.
func TestControlReadsOnly(t *testing.T) {
	f := &fake{}
	srv := httptest.NewServer(f)
	defer srv.Close()
	dir := t.TempDir()
	cfg, err := parseFlags([]string{
		"--consul", srv.URL, "--consul-http", srv.URL,
		"--consul-token", writeFile(t, dir, "token", "tok-123\n"),
		"--replay-secret", writeFile(t, dir, "replay", "  s3cret \n"),
		"--service", srv.URL,
	})
	if err != nil {
		t.Fatal(err)
	}
	got := runLines(t, cfg)
	want(t, got, all(allowed, cat(consulReads, svcReads, []string{"consul-http-port"})...))
	for _, req := range f.seen() {
		if !strings.HasPrefix(req, "GET ") {
			t.Errorf("control made a write: %s", req)
		}
		switch {
		case strings.HasPrefix(req, "GET /v1/status/leader"):
			if !strings.Contains(req, "token= ") {
				t.Errorf("token sent to the plain-HTTP port: %s", req)
			}
		case strings.HasPrefix(req, "GET /v1/"):
			if !strings.Contains(req, "token=tok-123 ") {
				t.Errorf("no token: %s", req)
			}
		default:
			// Signed, and the secret itself not sent.
			if !strings.Contains(req, "auth=Svckit-HMAC ts=") || strings.Contains(req, "s3cret") {
				t.Errorf("not signed with the replay secret: %s", req)
			}
		}
	}
}

// Consul filters what an ACL hides: 404 for the KV tree, only "consul" in
// the catalog.
func TestFilteredReadsAreRefused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/catalog/services":
			io.WriteString(w, `{"consul":[]}`)
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	got := runLines(t, config{Consul: srv.URL, ConsulToken: "t"})
	want(t, got, all(refused, consulReads...))
}

func TestClosedPortsAreUnreachable(t *testing.T) {
	addr := closedAddr(t)
	got := runLines(t, config{
		Consul:     "https://" + addr,
		ConsulHTTP: "http://" + addr,
		Services:   []string{"http://" + addr},
		NSQDs:      []string{addr},
	})
	want(t, got, all(unreachable, cat(consulWrites, consulReads, svcReads, svcWrites, nsqAll, []string{"consul-http-port"})...))
}

func TestNoDNSIsUnreachable(t *testing.T) {
	got := runLines(t, config{ConsulHTTP: "http://intruder-no-such-host.invalid:8500", NSQDs: []string{"intruder-no-such-host.invalid:4150"}})
	want(t, got, all(unreachable, append([]string{"consul-http-port"}, nsqAll...)...))
}

// A server that does not take clients without a certificate refuses them.
func TestClientCertRequiredIsRefused(t *testing.T) {
	srv := httptest.NewUnstartedServer(&fake{})
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAnyClientCert}
	srv.Config.ErrorLog = quiet
	srv.StartTLS()
	defer srv.Close()
	got := runLines(t, config{Consul: srv.URL, ConsulToken: "t"})
	want(t, got, all(refused, consulReads...))
}

// With --ca the server is verified: its own CA passes, another fails.
func TestCA(t *testing.T) {
	srv := httptest.NewUnstartedServer(&fake{})
	srv.Config.ErrorLog = quiet
	srv.StartTLS()
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	got := runLines(t, config{Consul: srv.URL, ConsulToken: "t", RootCAs: pool})
	want(t, got, all(allowed, consulReads...))

	got = runLines(t, config{Consul: srv.URL, ConsulToken: "t", RootCAs: x509.NewCertPool()})
	want(t, got, all(unreachable, consulReads...))
}

// --- fake nsqd -----------------------------------------------------------

type fakeNSQD struct {
	tls         *tls.Config // nil: no TLS
	tlsRequired bool
	auth        bool   // auth required
	secret      string // the one that AUTHs
	silent      bool   // never answers
	heartbeat   bool   // a heartbeat before every OK

	mu   sync.Mutex
	cmds []string
}

func (n *fakeNSQD) start(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go n.serve(c)
		}
	}()
	return l.Addr().String()
}

func (n *fakeNSQD) seen() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.cmds...)
}

func writeFrame(w io.Writer, typ uint32, data string) error {
	b := binary.BigEndian.AppendUint32(nil, uint32(4+len(data)))
	b = binary.BigEndian.AppendUint32(b, typ)
	_, err := w.Write(append(b, data...))
	return err
}

func (n *fakeNSQD) serve(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if n.silent {
		io.Copy(io.Discard, c)
		return
	}
	var conn io.ReadWriter = c
	r := bufio.NewReader(conn)
	magic := make([]byte, 4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != "  V2" {
		return
	}
	body := func() []byte {
		var size uint32
		if err := binary.Read(r, binary.BigEndian, &size); err != nil {
			return nil
		}
		b := make([]byte, size)
		io.ReadFull(r, b)
		return b
	}
	fail := func(msg string) { writeFrame(conn, frameError, msg) }
	ok := func() {
		if n.heartbeat {
			writeFrame(conn, frameResponse, "_heartbeat_")
		}
		writeFrame(conn, frameResponse, "OK")
	}
	isTLS, authed := false, false
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.Fields(line)
		if len(cmd) == 0 {
			continue
		}
		n.mu.Lock()
		n.cmds = append(n.cmds, strings.TrimSpace(line))
		n.mu.Unlock()
		if cmd[0] != "IDENTIFY" && n.tlsRequired && !isTLS {
			fail("E_INVALID cannot " + cmd[0] + " in current state (TLS required)")
			return
		}
		switch cmd[0] {
		case "IDENTIFY":
			var id struct {
				TLSv1 bool `json:"tls_v1"`
			}
			if json.Unmarshal(body(), &id) != nil {
				fail("E_BAD_BODY IDENTIFY failed to decode JSON body")
				return
			}
			up := id.TLSv1 && n.tls != nil
			resp, _ := json.Marshal(map[string]any{"tls_v1": up, "auth_required": n.auth, "version": "fake"})
			writeFrame(conn, frameResponse, string(resp))
			if up {
				tc := tls.Server(c, n.tls)
				if tc.Handshake() != nil {
					return
				}
				conn, isTLS = tc, true
				r = bufio.NewReader(conn)
				writeFrame(conn, frameResponse, "OK")
			}
		case "AUTH":
			secret := string(body())
			switch {
			case !n.auth:
				fail("E_AUTH_DISABLED AUTH disabled")
				return
			case secret != n.secret:
				fail("E_AUTH_FAILED AUTH failed")
				return
			}
			authed = true
			writeFrame(conn, frameResponse, `{"identity":"app","identity_url":"","permission_count":2}`)
		case "PUB", "SUB":
			if cmd[0] == "PUB" {
				body()
			}
			if n.auth && !authed {
				fail("E_AUTH_FIRST AUTH required before " + cmd[0])
				return
			}
			ok()
		case "RDY", "NOP":
		default:
			fail("E_INVALID invalid command " + cmd[0])
			return
		}
	}
}

// nsqTLS is a server TLS config and the pool that verifies it.
func nsqTLS(t *testing.T) (*tls.Config, *x509.CertPool) {
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{Certificates: srv.TLS.Certificates}, pool
}

func TestNSQ(t *testing.T) {
	serverTLS, pool := nsqTLS(t)
	for _, tc := range []struct {
		name   string
		nsqd   *fakeNSQD
		cfg    config
		want   map[string]string
		detail map[string]string // attempt -> substring of its detail
	}{{
		name: "auth required",
		nsqd: &fakeNSQD{tls: serverTLS, auth: true, secret: "good"},
		want: all(refused, nsqAll...),
		detail: map[string]string{
			"nsq-pub-clear":        "PUB: E_AUTH_FIRST",
			"nsq-sub-tls":          "TLS ok",
			"nsq-pub-wrong-secret": "AUTH: E_AUTH_FAILED",
		},
	}, {
		name: "TLS required",
		nsqd: &fakeNSQD{tls: serverTLS, tlsRequired: true, auth: true, secret: "good"},
		want: all(refused, nsqAll...),
		detail: map[string]string{
			"nsq-pub-clear": "E_INVALID cannot PUB in current state (TLS required)",
			"nsq-pub-tls":   "PUB: E_AUTH_FIRST",
		},
	}, {
		name: "no auth",
		nsqd: &fakeNSQD{tls: serverTLS, heartbeat: true},
		want: map[string]string{
			"nsq-pub-clear": allowed, "nsq-sub-clear": allowed, "nsq-pub-tls": allowed, "nsq-sub-tls": allowed,
			"nsq-pub-wrong-secret": refused, // E_AUTH_DISABLED closes the connection
		},
		detail: map[string]string{"nsq-pub-tls": "TLS ok", "nsq-pub-wrong-secret": "E_AUTH_DISABLED"},
	}, {
		name: "no TLS on the server",
		nsqd: &fakeNSQD{},
		want: map[string]string{
			"nsq-pub-clear": allowed, "nsq-sub-clear": allowed, "nsq-pub-tls": allowed, "nsq-sub-tls": allowed,
			"nsq-pub-wrong-secret": refused,
		},
		detail: map[string]string{"nsq-sub-tls": "nsqd declined TLS"},
	}, {
		name: "control",
		nsqd: &fakeNSQD{tls: serverTLS, tlsRequired: true, auth: true, secret: "good"},
		cfg:  config{NSQSecret: "good", RootCAs: pool},
		want: map[string]string{"nsq-sub-tls": allowed},
		detail: map[string]string{
			"nsq-sub-tls": `AUTH ok (identity "app", 2 permissions); SUB OK`,
		},
	}, {
		name: "control, wrong secret",
		nsqd: &fakeNSQD{tls: serverTLS, auth: true, secret: "good"},
		cfg:  config{NSQSecret: "bad", RootCAs: pool},
		want: map[string]string{"nsq-sub-tls": refused},
	}, {
		name: "silent",
		nsqd: &fakeNSQD{silent: true},
		cfg:  config{Timeout: 200 * time.Millisecond},
		want: all(unreachable, nsqAll...),
	}} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.nsqd.start(t)
			cfg := tc.cfg
			cfg.NSQDs = []string{addr}
			got := runLines(t, cfg)
			want(t, got, tc.want)
			for name, sub := range tc.detail {
				if rs := got[name]; len(rs) == 1 && !strings.Contains(rs[0].Detail, sub) {
					t.Errorf("%s detail %q: want %q", name, rs[0].Detail, sub)
				}
			}
			if cfg.NSQSecret != "" {
				for _, cmd := range tc.nsqd.seen() {
					if strings.HasPrefix(cmd, "PUB") {
						t.Errorf("control published: %s", cmd)
					}
				}
			}
		})
	}
}

// --- flags ---------------------------------------------------------------

func writeFile(t *testing.T, dir, name, content string) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFlags(t *testing.T) {
	dir := t.TempDir()
	cfg, err := parseFlags([]string{
		"--nsqd", "a:4150", "--nsqd", "b:4150",
		"--service", "http://sensor:8080", "-service", "http://app:8080",
		"--nsq-secret", writeFile(t, dir, "nsq", "abc\n"),
		"--stream", "sensor-dev-host1", "--timeout", "3s",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.NSQDs) != 2 || len(cfg.Services) != 2 || cfg.NSQSecret != "abc" || cfg.Timeout != 3*time.Second ||
		cfg.Stream != "sensor-dev-host1" || cfg.ConsulToken != "" || cfg.RootCAs != nil {
		t.Errorf("%+v", cfg)
	}
	if cfg, _ := parseFlags(nil); cfg.Timeout != 5*time.Second {
		t.Errorf("default timeout %v", cfg.Timeout)
	}
	for _, args := range [][]string{
		{"--consul-token", filepath.Join(dir, "missing")},
		{"--ca", writeFile(t, dir, "ca", "not a certificate")},
		{"--replay-secret", writeFile(t, dir, "empty", "\n")},
		{"extra"},
	} {
		if _, err := parseFlags(args); err == nil {
			t.Errorf("%q: no error", args)
		}
	}
}

func TestOneLine(t *testing.T) {
	if got := oneLine("a\nb\r\tc\x00"+strings.Repeat("x", 10), 8); got != "a b  c?x..." {
		t.Errorf("%q", got)
	}
}
