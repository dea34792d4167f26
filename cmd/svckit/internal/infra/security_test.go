package infra

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// securityRoot holds a tree of one datacenter per rule of checkSecurity,
// each a copy of the secure host datacenters/good/h1 with what it tests,
// and secrets/, the secrets directory of some of them (--secrets).
const securityRoot = "testdata/security"

// wantProblem is a problem a test expects: in file (below datacenters/),
// of service ("" for the file's), at line (0: any), its message containing
// msg.
type wantProblem struct {
	file    string
	service string
	line    int
	msg     string
}

// expectProblems fails unless every want is among got and got holds
// nothing else; every problem of a host's file has a line.
func expectProblems(t *testing.T, got []Problem, want []wantProblem) {
	t.Helper()
	found := make([]bool, len(got))
	for _, w := range want {
		ok := false
		for i, p := range got {
			if p.File == DatacentersDir+"/"+w.file && p.Service == w.service && (w.line == 0 || p.Line == w.line) && strings.Contains(p.Msg, w.msg) {
				ok, found[i] = true, true
			}
		}
		if !ok {
			t.Errorf("no problem in %s, service %q, line %d, containing %q", w.file, w.service, w.line, w.msg)
		}
	}
	for i, p := range got {
		if !found[i] {
			t.Errorf("unexpected problem: %s", p)
		}
		if strings.HasSuffix(p.File, ComposeFile) && p.Line == 0 {
			t.Errorf("problem without a line: %s", p)
		}
	}
}

// Every rule of checkSecurity finds what its datacenter breaks, on the
// line to fix, and nothing else: datacenter good has no problem.
func TestSecurityFixtures(t *testing.T) {
	tr, err := Load(securityRoot, Options{})
	if err != nil {
		t.Fatal(err)
	}
	expectProblems(t, Check(tr, CheckOptions{}), securityProblems)
}

// securityProblems are the problems of the tree under securityRoot without
// --secrets.
var securityProblems = []wantProblem{
	// 1. Consul: its security from the secrets, nothing inline weakening it,
	// HTTPS only.
	{"consul/inline/docker-compose.yml", "consul", 13, "-hcl ports.http = 8500 serves Consul's API over plain HTTP"},
	{"consul/inline/docker-compose.yml", "consul", 14, "-hcl acl.enabled = false turns Consul's ACLs off"},
	{"consul/inline/docker-compose.yml", "consul", 15, `-hcl acl_default_policy = "allow": a request without a token may do whatever no rule denies`},
	{"consul/inline/docker-compose.yml", "consul", 18, "-hcl tls.defaults.verify_incoming = false: the agent would accept connections without a certificate"},
	{"consul/inline/docker-compose.yml", "consul", 19, "-hcl tls.internal_rpc.verify_server_hostname = false"},
	{"consul/inline/docker-compose.yml", "consul", 21, "-hcl tls.grpc.verify_incoming = false: the agent's gRPC port"},
	{"consul/inline/docker-compose.yml", "consul", 23, "-hcl encrypt_verify_incoming = false"},
	{"consul/inline/docker-compose.yml", "consul", 24, "-hcl acl.tokens.agent = …: a secret in the compose file"},
	{"consul/inline/docker-compose.yml", "consul", 25, "-encrypt=…: a secret in the compose file (the gossip key)"},
	{"consul/inline/docker-compose.yml", "consul", 26, "-dev runs a development agent"},
	{"consul/inline/docker-compose.yml", "consul", 27, "-hcl does not parse (unclosed {)"},
	{"consul/noconfig/docker-compose.yml", "consul", 0, "no -config-file: ACLs denying by default, gossip encryption and TLS come from"},
	{"consul/noconfig/docker-compose.yml", "consul", 0, "its plain HTTP API is on (Consul's default, port 8500)"},
	{"consul/noconfig/docker-compose.yml", "consul", 0, "no HTTPS API"},
	{"consul/mounts/docker-compose.yml", "consul", 14, "-config-dir=/etc/consul.d is on consul-conf:/etc/consul.d:ro, not on a secrets volume"},
	{"consul/mounts/docker-compose.yml", "consul", 15, "-config-file=/tmp/extra.hcl is on no volume"},
	{"consul/mounts/docker-compose.yml", "consul", 19, "the secrets volume secrets-consul is mounted read-write at /secrets"},
	{"consul/imagedefault/docker-compose.yml", "consul", 0, "its image's default command: -dev runs a development agent"},
	{"consul/imagedefault/docker-compose.yml", "consul", 0, "its image's default command: no -config-file"},
	{"consul/imagedefault/docker-compose.yml", "consul", 0, "its image's default command: its plain HTTP API is on"},
	{"consul/imagedefault/docker-compose.yml", "consul", 0, "its image's default command: no HTTPS API"},

	// 3. nsqd: TLS required, 1.2 or later, its certificate from a volume.
	{"nsqd/bad/docker-compose.yml", "notls", 0, "no --tls-cert or --tls-key: nsqd speaks TCP in clear"},
	{"nsqd/bad/docker-compose.yml", "notls", 0, "no --tls-required (nsqd's default: false)"},
	{"nsqd/bad/docker-compose.yml", "notls", 0, "no --tls-min-version (nsqd's default: tls1.0, which is broken)"},
	{"nsqd/bad/docker-compose.yml", "weak", 36, "--tls-cert=/etc/nsqd.pem is on no volume"},
	{"nsqd/bad/docker-compose.yml", "weak", 38, "--tls-required=false: clients may speak to nsqd in clear"},
	{"nsqd/bad/docker-compose.yml", "weak", 39, "--tls-min-version=tls1.0: want tls1.2 or tls1.3"},
	{"nsqd/bad/docker-compose.yml", "notls", 24, "--auth-http-address over HTTPS without --tls-root-ca-file"},
	{"nsqd/bad/docker-compose.yml", "weak", 28, "no --https-address: with a certificate nsqd serves its HTTP API over TLS on 0.0.0.0:4152"},
	{"nsqd/bad/docker-compose.yml", "weak", 33, "--auth-http-address=nsqauth:8080: nsqd would send the clients' AUTH secrets in clear"},
	{"nsqd/bad/docker-compose.yml", "bare", 43, "no --https-address"},
	{"nsqd/bad/docker-compose.yml", "bare", 44, "--auth-http-address over HTTPS without --tls-root-ca-file"},

	// 4. Services of ours: HTTPS to Consul with a CA and a token file, TLS
	// to nsqd, a replay secret, no secret in the environment.
	{"ours/bad/docker-compose.yml", "worker-plain", 27, "CONSUL_HTTP_ADDR=http://consul:8500 is plain HTTP"},
	{"ours/bad/docker-compose.yml", "worker-plain", 0, "no CONSUL_CACERT"},
	{"ours/bad/docker-compose.yml", "worker-plain", 0, "no CONSUL_HTTP_TOKEN_FILE"},
	{"ours/bad/docker-compose.yml", "worker-plain", 0, "SVCKIT_NSQ_TLS is not true"},
	{"ours/bad/docker-compose.yml", "worker-plain", 0, "no SVCKIT_REPLAY_SECRET_FILE: its data endpoints"},
	{"ours/bad/docker-compose.yml", "worker-literal", 35, "CONSUL_HTTP_SSL_VERIFY=false"},
	{"ours/bad/docker-compose.yml", "worker-literal", 36, "CONSUL_HTTP_TOKEN=…: a secret in the compose file"},
	{"ours/bad/docker-compose.yml", "worker-literal", 37, "SVCKIT_REPLAY_SECRET=…: a secret in the compose file"},
	{"ours/bad/docker-compose.yml", "worker-literal", 38, "SVCKIT_NSQ_AUTH_SECRET=…: a secret in the compose file"},
	{"ours/bad/docker-compose.yml", "worker-literal", 39, "no SVCKIT_NSQ_TLS_CACERT"},
	{"ours/bad/docker-compose.yml", "worker-literal", 40, "SVCKIT_NSQ_TLS_INSECURE_SKIP_VERIFY is true"},
	{"ours/bad/docker-compose.yml", "app-ssl", 51, "CONSUL_HTTP_TOKEN_FILE=/etc/consul.token is on no volume of the service"},
	{"ours/bad/docker-compose.yml", "app-ssl", 52, "SVCKIT_PPROF is true"},

	// 5. nsqadmin.
	{"nsqadmin/bad/docker-compose.yml", "nsqadmin", 0, "nsqadmin has no authentication: whoever reaches it can delete topics and channels; do not run it in a datacenter"},

	// 6. The nsqauth policy: there (or seeded), parses, requires TLS.
	{"nopolicy/nsqauth-policy.json", "", 0, "missing: datacenter nopolicy runs nsqauth"},
	{"badpolicy/nsqauth-policy.json", "", 4, "does not parse"},
	{"cleartext/nsqauth-policy.json", "", 0, "require_tls is not true: nsqauth would accept a secret that crossed the network in clear"},
	{"cleartext/nsqauth-policy.json", "", 5, "identity sensor has require_tls false"},
	{"seed/h2/docker-compose.yml", "nsqauth", 24, "its seed policy: require_tls is not true"},
	{"seed/h2/docker-compose.yml", "nsqauth", 22, "no SVCKIT_HTTP_TLS_CERT: nsqd would send it the clients' AUTH secrets in clear"},

	// 7. acl.flags: there, well formed, and giving every agent and service
	// its token.
	{"noacl/acl.flags", "", 0, "missing: Consul denies by default, and this file names what gets a token"},
	{"acl/acl.flags", "", 2, "--node=ghost names no Consul agent of datacenter acl (its agents' -node: h1, other)"},
	{"acl/acl.flags", "", 6, `"-service=app": want --service=`},
	{"acl/acl.flags", "", 7, `"--service": want --service=`},
	{"acl/acl.flags", "", 8, "--owner=sensor: want --owner=NAME=STREAM"},
	{"acl/h1/docker-compose.yml", "consul", 25, "datacenters/acl/acl.flags has no --node=h1"},
	{"acl/h1/docker-compose.yml", "sensor", 56, "SVCKIT_STREAM_ID=s-h1 has no --owner=sensor=s-h1 in datacenters/acl/acl.flags"},
	{"acl/h2/docker-compose.yml", "consul", 27, "-node=other is not its host's name h2"},
	{"acl/h2/docker-compose.yml", "consul", 27, "datacenters/acl/acl.flags has no --agent=other"},
	{"acl/h2/docker-compose.yml", "consul", 27, "datacenters/acl/acl.flags has no --node=other"},
	{"acl/h2/docker-compose.yml", "worker", 38, "mounts the secrets of worker (volume secrets-worker), which datacenters/acl/acl.flags gives no token (--service=worker"},
	{"acl/h2/docker-compose.yml", "sensor", 0, "no SVCKIT_STREAM_ID: the sensor would make a random stream id"},
}

// With --secrets, the agents' configuration in the secrets is checked too:
// the problems are those without it, and those of the files under
// secrets/ (a missing one, a weak one, a weak JSON one of a -config-dir),
// and one for every datacenter that has no secrets there.
func TestSecurityFixturesWithSecrets(t *testing.T) {
	tr, err := Load(securityRoot, Options{})
	if err != nil {
		t.Fatal(err)
	}
	secrets := filepath.Join(securityRoot, "secrets")
	weak := filepath.Join(secrets, "weakfile", "hosts", "h1", "consul.hcl") + ": "
	want := append(slices.Clone(securityProblems),
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + `acl default_policy is "allow": want "deny"`},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "no gossip encryption key (encrypt)"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "encrypt_verify_incoming = false"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "tls { defaults { … } } has no cert_file, key_file"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "tls.defaults.verify_incoming is not true"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "tls.defaults.verify_outgoing is not true"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "tls.internal_rpc.verify_server_hostname is not true"},
		wantProblem{"weakfile/h1/docker-compose.yml", "consul", 27, weak + "no initial management token"},
		wantProblem{"nofile/h1/docker-compose.yml", "consul", 27, filepath.Join(secrets, "nofile", "hosts", "h1", "consul.hcl") + " (its -config-file=/secrets/hosts/h1/consul.hcl) is missing: run ./build.sh secrets nofile"},
		wantProblem{"jsondir/h1/docker-compose.yml", "consul", 27, filepath.Join(secrets, "jsondir", "hosts", "h1", "consul.json") + `: acl default_policy is "allow"`},
		wantProblem{"jsondir/h1/docker-compose.yml", "consul", 27, filepath.Join(secrets, "jsondir", "hosts", "h1", "consul.json") + ": no initial management token"},
	)
	for _, dc := range tr.Datacenters {
		if _, err := os.Stat(filepath.Join(secrets, dc.Name)); err != nil {
			want = append(want, wantProblem{dc.Name, "", 0, "no secrets of datacenter " + dc.Name + " in " + filepath.Join(secrets, dc.Name) + " (--secrets): run ./build.sh secrets " + dc.Name})
		}
	}
	expectProblems(t, Check(tr, CheckOptions{Secrets: secrets}), want)
}

// The committed datacenters are secure by default, with their secrets too:
// given a secrets directory whose consul.hcl are what svckit secrets init
// writes (secrets/good's, made for each host), --secrets finds nothing; and
// the checks see what the files hold: a weak file is found.
func TestCommittedTreeWithSecrets(t *testing.T) {
	tr := loadCommitted(t)
	good, err := os.ReadFile(filepath.Join(securityRoot, "secrets", "good", "hosts", "h1", "consul.hcl"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(dc, host, hcl string) {
		t.Helper()
		d := filepath.Join(dir, dc, "hosts", host)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		hcl = strings.ReplaceAll(hcl, "/hosts/h1/", "/hosts/"+host+"/")
		if err := os.WriteFile(filepath.Join(d, "consul.hcl"), []byte(hcl), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	hosts := 0
	for _, dc := range tr.Datacenters {
		for _, h := range dc.Hosts {
			write(dc.Name, h.Name, string(good))
			hosts++
		}
	}
	if hosts < 4 {
		t.Fatalf("%d hosts in the committed tree", hosts)
	}
	for _, p := range Check(tr, CheckOptions{Secrets: dir}) {
		t.Errorf("%s", p)
	}
	write("dev", "host1", strings.Replace(string(good), `default_policy           = "deny"`, `default_policy           = "allow"`, 1))
	probs := Check(tr, CheckOptions{Secrets: dir})
	if len(probs) != 1 || probs[0].File != "datacenters/dev/host1/docker-compose.yml" || probs[0].Service != "consul" || !strings.Contains(probs[0].Msg, `acl default_policy is "allow"`) {
		t.Errorf("dev/host1 with default_policy allow: %v", probs)
	}
}

// The HCL reader flattens what Consul's configurations hold, and says
// where it cannot read.
func TestParseHCL(t *testing.T) {
	src := `# a comment
encrypt = "a\"b"   // another
/* a
   block */ ports { http = -1, https = 8501 }
tls {
  defaults { verify_incoming = true }
  internal_rpc { verify_server_hostname = true }
}
acl = { enabled = true, tokens { agent = "t" } }
service "web" { port = 80 }
services = [
  { name = "a", tags = ["x", "y"] },
  { name = "b" }
]
text = <<EOF
two
lines
EOF
after = 1.5
`
	got, err := parseHCL(src)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, a := range got {
		s = append(s, fmt.Sprintf("%s @%d", a, a.Line))
	}
	want := []string{
		`encrypt = "a\"b" @2`,
		`ports.http = -1 @4`,
		`ports.https = 8501 @4`,
		`tls.defaults.verify_incoming = true @6`,
		`tls.internal_rpc.verify_server_hostname = true @7`,
		`acl.enabled = true @9`,
		`acl.tokens.agent = "t" @9`,
		`service.web.port = 80 @10`,
		`services.name = "a" @12`,
		`services.tags = "x" @12`,
		`services.tags = "y" @12`,
		`services.name = "b" @13`,
		`text = "two\nlines\n" @15`,
		`after = 1.5 @19`,
	}
	if !slices.Equal(s, want) {
		t.Errorf("parseHCL:\n%s\nwant:\n%s", strings.Join(s, "\n"), strings.Join(want, "\n"))
	}
	for src, want := range map[string]string{
		"a = {\n b = 1\n":     "line 1: unclosed {",
		"a = \"x":             "line 1: unterminated string",
		"a = 1\nb\n":          "line 2: after \"b\" want = or {, got end of input",
		"a = [1 2]":           "line 1: in a list want , or ], got \"2\"",
		"a = 1\n/* x":         "line 2: unterminated /* comment",
		"x = <<EOF\nabc\n":    "line 1: heredoc EOF is not closed",
		"a = 1\n\nb = $x\n":   "line 3: unexpected '$'",
		"= 1":                 "line 1: want a key, got \"=\"",
		"a = }":               "line 1: want a value, got \"}\"",
		"ports { http = -1 }": "",
	} {
		_, err := parseHCL(src)
		if (err == nil) != (want == "") || (err != nil && err.Error() != want) {
			t.Errorf("parseHCL(%q): %v, want %q", src, err, want)
		}
	}
	js, err := parseConfJSON([]byte(`{"acl": {"enabled": true, "tokens": {"agent": "t"}}, "ports": {"http": -1}, "retry_join": ["a", "b"]}`))
	if err != nil {
		t.Fatal(err)
	}
	s = nil
	for _, a := range js {
		s = append(s, a.String())
	}
	if want := []string{`acl.enabled = true`, `acl.tokens.agent = "t"`, `ports.http = -1`, `retry_join = "a"`, `retry_join = "b"`}; !slices.Equal(s, want) {
		t.Errorf("parseConfJSON: %v, want %v", s, want)
	}
	for in, want := range map[string]string{
		"verify_incoming":        "tls.defaults.verify_incoming",
		"verify_server_hostname": "tls.internal_rpc.verify_server_hostname",
		"acl_master_token":       "acl.tokens.initial_management",
		"acl.tokens.master":      "acl.tokens.initial_management",
		"acl.enabled":            "acl.enabled",
	} {
		if got := canonical(in); got != want {
			t.Errorf("canonical(%s) = %s, want %s", in, got, want)
		}
	}
}

// Flags as Go's flag package reads them: -name=value, -name value, a bare
// boolean, a valued flag whose value starts with "-".
func TestParseFlags(t *testing.T) {
	args := []arg{{"agent", 1}, {"-dev", 2}, {"-node", 3}, {"n1", 4}, {"--hcl=a = 1", 5}, {"-http-port", 6}, {"-1", 7}, {"-server", 8}}
	got := parseFlags(args[1:], flagKinds{valued: consulValued, boolean: consulBoolean})
	want := []flagUse{
		{name: "dev", bare: true, line: 2},
		{name: "node", value: "n1", line: 3},
		{name: "hcl", value: "a = 1", line: 5},
		{name: "http-port", value: "-1", line: 6},
		{name: "server", bare: true, line: 8},
	}
	if !slices.Equal(got, want) {
		t.Errorf("parseFlags: %+v\nwant %+v", got, want)
	}
	if f, ok := lastFlag(got, "node"); !ok || f.value != "n1" {
		t.Errorf("lastFlag(node) = %+v, %v", f, ok)
	}
}
