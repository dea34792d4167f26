package nsqauth

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

const testPolicy = `{
  "ttl": 30,
  "identities": {
    "sensor":   {"secret_env": "T_SENSOR", "publish": ["readings"]},
    "worker":   {"secret_env": "T_WORKER", "subscribe": {"readings": ["workers"]}, "publish": ["results", "readings.dead"]},
    "app":      {"secret_sha256": ["%s"], "subscribe": {"results": ["app-*#ephemeral"]}, "publish": ["results.dead"]},
    "operator": {"secret_env": "T_OPERATOR", "require_tls": true, "subscribe": {"*.dead": ["svckit-deadletter"]}, "publish": ["readings", "results"]}
  }
}`

var testSecrets = map[string]string{
	"T_SENSOR":   "sensor-secret-0123456789",
	"T_WORKER":   "worker-secret-0123456789",
	"T_OPERATOR": "operator-secret-0123456789",
}

const appSecret = "app-secret-0123456789abc"

func testTable(t *testing.T) *Table {
	t.Helper()
	p, err := ParsePolicy([]byte(strings.Replace(testPolicy, "%s", HashSecret(appSecret), 1)))
	if err != nil {
		t.Fatal(err)
	}
	tab, err := Compile(p, func(k string) string { return testSecrets[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tab.Warnings) != 0 {
		t.Fatalf("warnings: %v", tab.Warnings)
	}
	return tab
}

// allowed is nsqd's own check (internal/auth: Authorization.IsAllowed and
// State.IsAllowed in nsq 1.3), so that these tests check what nsqd will
// decide: a channel of "" is a publish.
func allowed(as []Authorization, topic, channel string) bool {
	for _, a := range as {
		perm := "publish"
		if channel != "" {
			perm = "subscribe"
		}
		has := false
		for _, p := range a.Permissions {
			has = has || p == perm
		}
		if !has || !regexp.MustCompile(a.Topic).MatchString(topic) {
			continue
		}
		for _, c := range a.Channels {
			if regexp.MustCompile(c).MatchString(channel) {
				return true
			}
		}
	}
	return false
}

func TestPolicyGrantsExactlyWhatItSays(t *testing.T) {
	tab := testTable(t)
	type op struct {
		topic, channel string
		ok             bool
	}
	pub := func(topic string, ok bool) op { return op{topic, "", ok} }
	sub := func(topic, ch string, ok bool) op { return op{topic, ch, ok} }
	for _, c := range []struct {
		secret string
		tls    bool
		id     string
		ops    []op
	}{
		{testSecrets["T_SENSOR"], false, "sensor", []op{
			pub("readings", true), pub("results", false), pub("readings.dead", false), pub("myreadings", false), pub("readings2", false),
			sub("readings", "workers", false),
		}},
		{testSecrets["T_WORKER"], false, "worker", []op{
			pub("results", true), pub("readings.dead", true), pub("readings", false), pub("results.dead", false),
			sub("readings", "workers", true), sub("readings", "workers2", false), sub("readings", "other", false),
			sub("results", "workers", false), sub("readings.dead", "workers", false),
		}},
		{appSecret, false, "app", []op{
			pub("results.dead", true), pub("results", false), pub("readings", false),
			sub("results", "app-app_host_1234#ephemeral", true), sub("results", "app-x", false),
			sub("results", "workers", false), sub("readings", "app-x#ephemeral", false),
		}},
		{testSecrets["T_OPERATOR"], true, "operator", []op{
			pub("readings", true), pub("results", true), pub("readings.dead", false),
			sub("readings.dead", "svckit-deadletter", true), sub("results.dead", "svckit-deadletter", true),
			sub("readings", "svckit-deadletter", false), sub("readings.dead", "workers", false),
		}},
	} {
		a, refused := tab.Lookup(c.secret, c.tls)
		if refused != "" || a.Identity != c.id || a.TTL != 30 {
			t.Fatalf("secret of %s: %+v refused %q", c.id, a, refused)
		}
		for _, o := range c.ops {
			if got := allowed(a.Authorizations, o.topic, o.channel); got != o.ok {
				t.Errorf("%s: topic %q channel %q: allowed %v, want %v (authorizations %+v)", c.id, o.topic, o.channel, got, o.ok, a.Authorizations)
			}
		}
	}
	for _, s := range []string{"", "nope", "sensor-secret-012345678", testSecrets["T_SENSOR"] + " "} {
		if a, refused := tab.Lookup(s, true); refused != RefusedUnknown || len(a.Authorizations) != 0 {
			t.Errorf("secret %q: %+v %q, want refused as unknown", s, a, refused)
		}
	}
	if _, refused := tab.Lookup(testSecrets["T_OPERATOR"], false); refused != RefusedNoTLS {
		t.Errorf("operator without TLS: refused %q, want %q", refused, RefusedNoTLS)
	}
}

func TestPolicyValidation(t *testing.T) {
	for _, bad := range []struct{ policy, want string }{
		{`{}`, "no identities"},
		{`{"identities": {"a": {"publish": ["x"]}}, "extra": 1}`, "unknown field"},
		{`{"identities": {"a": {"publsh": ["x"]}}}`, "unknown field"},
		{`{"identities": {"a": {}}}`, "neither publish nor subscribe"},
		{`{"identities": {"a b": {"publish": ["x"]}}}`, `identity "a b"`},
		{`{"identities": {"a": {"publish": ["re.*(x)"]}}}`, "publish"},
		{`{"identities": {"a": {"publish": ["^x$"]}}}`, "publish"},
		{`{"identities": {"a": {"subscribe": {"x": []}}}}`, "no channels"},
		{`{"identities": {"a": {"subscribe": {"x": ["a b"]}}}}`, "channel"},
		{`{"identities": {"a": {"publish": ["x"], "secret_env": "1X"}}}`, "secret_env"},
		{`{"identities": {"a": {"publish": ["x"], "secret_sha256": ["abc"]}}}`, "secret_sha256"},
		{`{"ttl": -1, "identities": {"a": {"publish": ["x"]}}}`, "ttl"},
		{`{"identities": {"a": {"publish": ["x"]}}} {}`, "trailing"},
	} {
		if _, err := ParsePolicy([]byte(bad.policy)); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: error %v, want one containing %q", bad.policy, err, bad.want)
		}
	}
	// Two identities with one secret: nsqd could be told either.
	p, err := ParsePolicy([]byte(`{"identities": {"a": {"publish": ["x"], "secret_env": "S"}, "b": {"publish": ["y"], "secret_env": "S"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Compile(p, func(string) string { return "shared-secret-0123456789" }, nil); err == nil || !strings.Contains(err.Error(), "share a secret") {
		t.Errorf("shared secret: %v", err)
	}
	// An unset or short variable is a warning, not a secret.
	tab, err := Compile(p, func(k string) string { return map[string]string{"S": "short"}[k] }, nil)
	if err != nil || len(tab.Warnings) != 2 {
		t.Errorf("short secret: %v, warnings %v", err, tab)
	}
	if _, refused := tab.Lookup("short", false); refused == "" {
		t.Error("a secret shorter than MinSecretLen was accepted")
	}
}

func TestIssuedSecrets(t *testing.T) {
	p, err := ParsePolicy([]byte(`{"identities": {"worker": {"publish": ["results"]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	s1, s2 := NewSecret(), NewSecret()
	if s1 == s2 || len(s1) != 64 {
		t.Fatalf("NewSecret: %q %q", s1, s2)
	}
	tab, err := Compile(p, os.Getenv, Issued{
		"worker": {"node1": HashSecret(s1), "node2": HashSecret(s2) + "\n"},
		"ghost":  {"node1": HashSecret("whatever-whatever")},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{s1, s2} {
		if a, refused := tab.Lookup(s, false); refused != "" || a.Identity != "worker" {
			t.Errorf("issued secret: %+v %q", a, refused)
		}
	}
	if len(tab.Warnings) != 1 || !strings.Contains(tab.Warnings[0], "ghost") {
		t.Errorf("warnings %v, want one about ghost", tab.Warnings)
	}
	if ids := tab.Identities(); len(ids) != 1 || ids[0].Secrets != 2 {
		t.Errorf("identities %+v", ids)
	}
}

func TestGlobRegexp(t *testing.T) {
	for glob, cases := range map[string]map[string]bool{
		"readings":        {"readings": true, "readings.dead": false, "xreadings": false, "readingx": false},
		"readings.dead":   {"readings.dead": true, "readingsXdead": false},
		"*.dead":          {"readings.dead": true, "results.dead": true, ".dead": true, "readings": false, "readings.dead2": false},
		"app-*#ephemeral": {"app-x#ephemeral": true, "app-#ephemeral": true, "app-x": false, "xapp-x#ephemeral": false},
		"*":               {"": true, "anything": true},
	} {
		re := regexp.MustCompile(GlobRegexp(glob))
		for s, want := range cases {
			if got := re.MatchString(s); got != want {
				t.Errorf("glob %q (%s) on %q: %v, want %v", glob, GlobRegexp(glob), s, got, want)
			}
		}
	}
}

// The handler speaks nsqd's protocol: a known secret gets its answer, an
// unknown one an answer without authorizations (nsqd then refuses with
// E_UNAUTHORIZED), no table yet a 503 (nsqd tries its next server).
func TestServeAuth(t *testing.T) {
	srv := NewServer(ServerOptions{})
	mux := http.NewServeMux()
	srv.Register(mux.Handle)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	get := func(q string) (int, Answer) {
		resp, err := http.Get(ts.URL + "/auth?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var a Answer
		if resp.StatusCode == http.StatusOK {
			if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
				t.Fatal(err)
			}
		}
		return resp.StatusCode, a
	}
	if code, _ := get("secret=x"); code != http.StatusServiceUnavailable {
		t.Fatalf("no table: HTTP %d, want 503", code)
	}
	if srv.Ready() == nil {
		t.Fatal("ready without a table")
	}
	srv.SetTable(testTable(t))
	if err := srv.Ready(); err != nil {
		t.Fatal(err)
	}
	code, a := get("remote_ip=127.0.0.1&tls=false&secret=" + testSecrets["T_WORKER"] + "&common_name=")
	if code != 200 || a.Identity != "worker" || a.TTL != 30 || len(a.Authorizations) != 3 {
		t.Fatalf("worker: HTTP %d %+v", code, a)
	}
	code, a = get("remote_ip=127.0.0.1&tls=false&secret=wrong")
	if code != 200 || a.Identity != "" || a.TTL != 30 || a.Authorizations == nil || len(a.Authorizations) != 0 {
		t.Fatalf("unknown: HTTP %d %+v", code, a)
	}
	if _, a = get("tls=false&secret=" + testSecrets["T_OPERATOR"]); len(a.Authorizations) != 0 {
		t.Fatalf("operator without TLS: %+v", a)
	}
	if _, a = get("tls=true&secret=" + testSecrets["T_OPERATOR"]); a.Identity != "operator" {
		t.Fatalf("operator with TLS: %+v", a)
	}
	resp, err := http.Get(ts.URL + "/identities")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ids []IdentityInfo
	if err := json.NewDecoder(resp.Body).Decode(&ids); err != nil || len(ids) != 4 {
		t.Fatalf("/identities: %v %+v", err, ids)
	}
}

func TestIssueSecretFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	s1, created, err := IssueSecret(path)
	if err != nil || !created || len(s1) != 64 {
		t.Fatalf("first: %q %v %v", s1, created, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v, want 0600", st.Mode(), err)
	}
	s2, created, err := IssueSecret(path)
	if err != nil || created || s2 != s1 {
		t.Fatalf("second: %q %v %v, want the first secret kept", s2, created, err)
	}
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := IssueSecret(path); err == nil {
		t.Fatal("a short secret in the file was accepted")
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("left behind: %v", entries)
	}
}

// The laptop's policy in the repository parses, names its secrets by
// environment variable (no secret, no hash in the repository), and gives
// the reference pipeline what it needs.
func TestLaptopPolicy(t *testing.T) {
	b, err := os.ReadFile("../../etc/nsqauth/policy.json")
	if err != nil {
		t.Fatal(err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for name, id := range p.Identities {
		if id.SecretEnv == "" || len(id.SecretSHA256) != 0 {
			t.Errorf("identity %s: want its secret from an environment variable only", name)
		}
		env[id.SecretEnv] = "secret-of-" + name + "-0123456789"
	}
	tab, err := Compile(p, func(k string) string { return env[k] }, nil)
	if err != nil {
		t.Fatal(err)
	}
	can := func(id, topic, channel string) bool {
		a, refused := tab.Lookup("secret-of-"+id+"-0123456789", false)
		if refused != "" {
			t.Fatalf("%s refused: %s", id, refused)
		}
		return allowed(a.Authorizations, topic, channel)
	}
	for _, c := range []struct {
		id, topic, channel string
		want               bool
	}{
		{"sensor", "readings", "", true}, {"sensor", "results", "", false},
		{"worker", "results", "", true}, {"worker", "readings", "", false}, {"worker", "readings.dead", "", true},
		{"worker", "readings", "workers", true}, {"worker", "results", "workers", false},
		{"app", "results", "app-app-laptop#ephemeral", true}, {"app", "results", "", false}, {"app", "results.dead", "", true},
		{"app", "readings", "workers", false},
		{"operator", "readings.dead", "svckit-deadletter", true}, {"operator", "results", "", true},
	} {
		if got := can(c.id, c.topic, c.channel); got != c.want {
			t.Errorf("%s on topic %q channel %q: %v, want %v", c.id, c.topic, c.channel, got, c.want)
		}
	}
}
