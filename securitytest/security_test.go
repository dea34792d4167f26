package securitytest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/svckit/testenv"
)

const managementToken = "3f1d8a2e-0000-4000-8000-5ec0e7000001"

// aclDenyHCL turns on ACLs denying by default, with managementToken as the
// management and the agent token.
var aclDenyHCL = fmt.Sprintf(`acl { enabled = true
default_policy = "deny"
enable_token_persistence = false
tokens { initial_management = %q
agent = %q } }`, managementToken, managementToken)

// TestConsulACL: with default-deny ACLs, a service with a token that may
// register runs and is found; one without a token refuses to start with one
// line naming the token, and exit code 2.
func TestConsulACL(t *testing.T) {
	c := testenv.StartConsulWith(t, testenv.ConsulOptions{
		HCL:   []string{aclDenyHCL},
		Token: managementToken,
	})
	pol, _, err := c.Client.ACL().PolicyCreate(&api.ACLPolicy{Name: "svckit-service", Rules: `
service_prefix "" { policy = "write" }
node_prefix "" { policy = "read" }
agent_prefix "" { policy = "read" }`}, nil)
	if err != nil {
		t.Fatalf("creating ACL policy: %v", err)
	}
	tok, _, err := c.Client.ACL().TokenCreate(&api.ACLToken{Description: "svckit services", Policies: []*api.ACLTokenPolicyLink{{ID: pol.ID}}}, nil)
	if err != nil {
		t.Fatalf("creating ACL token: %v", err)
	}
	l := testenv.StartNSQLookupd(t)
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr}})
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.RegisterNSQD(t, c, n)

	pipetest.StartService(t, c, "worker-acl", "worker", []string{"CONSUL_HTTP_TOKEN=" + tok.SecretID})
	pipetest.AddrOf(t, c, "worker", "") // registered and passing, seen with the management token

	// The catalog is invisible without a token.
	anon, _ := api.NewClient(&api.Config{Address: c.HTTPAddr})
	if e, _, err := anon.Health().Service("worker", "", true, nil); err == nil && len(e) > 0 {
		t.Fatalf("anonymous read of the catalog saw %d workers", len(e))
	}

	p := pipetest.StartService(t, c, "worker-notoken", "worker", []string{"CONSUL_HTTP_TOKEN="})
	select {
	case <-p.Exited():
	case <-time.After(60 * time.Second):
		t.Fatal("a service without a token kept running instead of failing on the ACL error")
	}
	if p.ExitCode() != 2 {
		t.Fatalf("exit code %d, want 2", p.ExitCode())
	}
	if log := p.Log(); !strings.Contains(log, "refused the ACL token") {
		t.Fatalf("log does not name the token problem:\n%s", log)
	}
}

// TestNSQTLS: nsqd requires TLS on TCP; the pipeline runs over TLS end to
// end, and a consumer without TLS gets nothing.
func TestNSQTLS(t *testing.T) {
	ca, cert, key := certs(t, t.TempDir())
	c := testenv.StartConsul(t)
	l := testenv.StartNSQLookupd(t)
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr},
		ExtraArgs: []string{"--tls-cert=" + cert, "--tls-key=" + key, "--tls-required=tcp-https"}})
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.RegisterNSQD(t, c, n)
	tls := []string{"--nsq-tls", "--nsq-tls-cacert=" + ca}

	pipetest.StartService(t, c, "app-tls", "app", nil, append(tls, "--replay-gap-grace=30s")...)
	pipetest.StartService(t, c, "worker-tls", "worker", nil, tls...)
	pipetest.AddrOf(t, c, "app", "")
	pipetest.AddrOf(t, c, "worker", "")
	pipetest.StartService(t, c, "sensor-tls", "sensor", nil, append(tls, "--stream-id=tls", "--rate=0", "--count=500")...)
	// A generous gap grace keeps replay (which does not go through nsqd) out
	// of it: every reading must have crossed nsqd over TLS twice.
	pipetest.WaitAppExact(t, c, "tls", 500)

	plain := pipetest.StartService(t, c, "worker-plain", "worker", nil)
	testenv.WaitFor(t, 30*time.Second, "the plain worker to report no nsqd connection", func() bool {
		return strings.Contains(plain.Log(), "E_INVALID")
	})
	t.Logf("plain worker rejected: %s", firstLine(plain.Log(), "E_INVALID"))
}

// TestReplaySecret: owners refuse replay without the shared secret; an app
// with the secret recovers the whole stream. No worker runs, so replay is the
// only way readings can reach the app.
func TestReplaySecret(t *testing.T) {
	st := testenv.StartStack(t)
	c := st.Consul
	pipetest.StartService(t, c, "sensor-secret", "sensor", nil, "--stream-id=secret", "--rate=0", "--count=300", "--replay-secret=sesame")
	sensorAddr := pipetest.AddrOf(t, c, "sensor", "")
	for _, path := range []string{"/replay?stream=secret&from=1&to=10", "/streams", "/snapshot?stream=secret"} {
		resp, err := http.Get("http://" + sensorAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s without the secret: HTTP %d, want 401", path, resp.StatusCode)
		}
	}
	cli := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := exec.Command(testenv.Bin(t, "svckit"), append([]string{"--consul-addr=" + c.HTTPAddr, "replay", "--stream=secret", "--from=1", "--to=300", "--quiet"}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := cli(); err == nil || !strings.Contains(out, "401") {
		t.Fatalf("svckit replay without the secret: err %v, output %q", err, out)
	}
	testenv.WaitFor(t, 30*time.Second, "the sensor to publish 300", func() bool {
		out, err := cli("--secret=sesame")
		return err == nil && strings.Count(out, "\n") == 300
	})
	// The app recovers through a worker, which relays to the sensor: both
	// need the secret, the worker to serve and to ask.
	pipetest.StartService(t, c, "worker-secret", "worker", nil, "--replay-secret=sesame")
	pipetest.StartService(t, c, "app-secret", "app", nil, "--replay-secret=sesame", "--replay-gap-grace=200ms", "--replay-tail-interval=500ms")
	// The app's /streams is its data too: asked with a signed request.
	pipetest.WaitAppExactSigned(t, c, "secret", 300, "sesame")
}

func firstLine(log, substr string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, substr) {
			return l
		}
	}
	return ""
}

// TestConsulLeastPrivilege: `svckit acl apply` gives every service of the
// pipeline its own token; with them (Consul denying by default, gossip
// encrypted, the services on its HTTPS API verifying its certificate) the
// pipeline runs and the app ends exact. A client that does not verify
// against the CA, or speaks plain HTTP to the HTTPS port, gets nothing. Each token does only its job: the
// worker's cannot rewrite nsqd's authorization policy, register as the
// sensor, deregister it or take the sensor's stream; the sensor's cannot
// take another stream; without a token nothing at all. Applying again
// changes nothing (the same secrets).
func TestConsulLeastPrivilege(t *testing.T) {
	ca, cert, key := certs(t, t.TempDir())
	gossip := make([]byte, 32)
	rand.Read(gossip)
	c := testenv.StartConsulWith(t, testenv.ConsulOptions{
		HCL:   []string{aclDenyHCL, fmt.Sprintf("encrypt = %q", base64.StdEncoding.EncodeToString(gossip))},
		Token: managementToken,
		TLS:   testenv.ConsulTLS{CAFile: ca, CertFile: cert, KeyFile: key},
	})
	https := []string{"--consul-addr=https://" + c.HTTPSAddr, "--consul-cacert=" + ca}
	if info, err := c.Client.Agent().Self(); err != nil {
		t.Fatal(err)
	} else if lan, _ := info["Stats"]["serf_lan"].(map[string]any); lan["encrypted"] != "true" {
		t.Fatalf("gossip is not encrypted: %v", info["Stats"]["serf_lan"])
	}
	if resp, err := http.Get("http://" + c.HTTPSAddr + "/v1/status/leader"); err == nil && resp.StatusCode == 200 {
		t.Fatal("the HTTPS port answered plain HTTP")
	}
	if _, err := http.Get("https://" + c.HTTPSAddr + "/v1/status/leader"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("a client without the CA: %v, want a certificate error", err)
	}
	tokens := t.TempDir()
	apply := func() string {
		cmd := exec.Command(testenv.Bin(t, "svckit"), "acl", "apply", "--tokens", tokens,
			"--service", "sensor", "--service", "worker", "--service", "app", "--owner", "sensor=lp", "--nsqauth", "nsqauth", "--agent", c.NodeName, "--node", c.NodeName)
		cmd.Env = append(cmd.Environ(), "CONSUL_HTTP_ADDR=https://"+c.HTTPSAddr, "CONSUL_CACERT="+ca, "CONSUL_HTTP_TOKEN="+managementToken)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("svckit acl apply: %v\n%s", err, out)
		}
		return string(out)
	}
	apply()
	secret := func(name string) string {
		b, err := os.ReadFile(filepath.Join(tokens, name+".token"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	before := secret("worker")

	l := testenv.StartNSQLookupd(t)
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr}})
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.RegisterNSQD(t, c, n)
	tokenEnv := func(name string) []string {
		return []string{"CONSUL_HTTP_TOKEN=", "CONSUL_HTTP_TOKEN_FILE=" + filepath.Join(tokens, name+".token")}
	}
	pipetest.StartService(t, c, "app-lp", "app", tokenEnv("app"), append(https, "--replay-gap-grace=1s")...)
	pipetest.StartService(t, c, "worker-lp", "worker", tokenEnv("worker"), https...)
	pipetest.AddrOf(t, c, "app", "")
	pipetest.AddrOf(t, c, "worker", "")
	pipetest.StartService(t, c, "sensor-lp", "sensor", tokenEnv("sensor"), append(https, "--stream-id=lp", "--rate=0", "--count=500")...)
	pipetest.WaitAppExact(t, c, "lp", 500)

	client := func(token string) *api.Client {
		cl, err := api.NewClient(&api.Config{Address: c.HTTPSAddr, Scheme: "https", Token: token, TLSConfig: api.TLSConfig{CAFile: ca}})
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	denied := func(what string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(err.Error(), "Permission denied") && !strings.Contains(err.Error(), "ACL not found") && !strings.Contains(err.Error(), "403") {
			t.Errorf("%s: %v, want permission denied", what, err)
		}
	}
	for _, who := range []struct{ name, token string }{{"the worker's token", secret("worker")}, {"no token", ""}} {
		cl := client(who.token)
		_, err := cl.KV().Put(&api.KVPair{Key: "svckit/nsqauth/policy", Value: []byte(`{"identities":{}}`)}, nil)
		denied(who.name+": writing nsqd's authorization policy", err)
		_, err = cl.KV().Put(&api.KVPair{Key: "svckit/nsqauth/issued/intruder", Value: []byte("x")}, nil)
		denied(who.name+": registering a secret", err)
		denied(who.name+": registering as the sensor", cl.Agent().ServiceRegister(&api.AgentServiceRegistration{ID: "fake-sensor", Name: "sensor", Port: 1, Tags: []string{"stream=lp"}}))
		denied(who.name+": deregistering the sensor", cl.Agent().ServiceDeregister("sensor-lp"))
		_, _, err = cl.Session().CreateNoChecks(&api.SessionEntry{TTL: "15s"}, nil)
		denied(who.name+": creating a session", err)
		_, err = cl.KV().Put(&api.KVPair{Key: "svckit/streams/lp/owner", Value: []byte("{}")}, nil)
		denied(who.name+": writing the stream's claim", err)
		if kvs, _, err := cl.KV().List("svckit/", nil); err == nil && len(kvs) > 0 {
			t.Errorf("%s: read %d KV entries under svckit/", who.name, len(kvs))
		}
	}
	_, err := client(secret("sensor")).KV().Put(&api.KVPair{Key: "svckit/streams/other/owner", Value: []byte("{}")}, nil)
	denied("the sensor's token: writing another stream's claim", err)
	_, err = client(secret("sensor")).KV().Put(&api.KVPair{Key: "svckit/nsqauth/policy", Value: []byte("{}")}, nil)
	denied("the sensor's token: writing nsqd's authorization policy", err)
	if _, _, err := client(secret("nsqauth")).KV().Get("svckit/nsqauth/policy", nil); err != nil {
		t.Errorf("nsqauth's token reading the policy: %v", err)
	}
	_, err = client(secret("nsqauth")).KV().Put(&api.KVPair{Key: "svckit/nsqauth/policy", Value: []byte("{}")}, nil)
	denied("nsqauth's token: writing the policy", err)

	apply()
	if after := secret("worker"); after != before {
		t.Fatalf("applying again changed the worker's token")
	}
}

// TestSecretsInit: `svckit secrets init` makes a datacenter's secrets
// (files 0600 in directories 0700, nothing replaced when run again), and
// the agent configuration it writes gives a working secure Consul: gossip
// encrypted, TLS on its API with the datacenter's CA, ACLs denying by
// default with the management and agent tokens it made; `svckit acl apply`
// makes the tokens real with the secrets it made, and the pipeline runs on
// them and ends exact.
func TestSecretsInit(t *testing.T) {
	dir := t.TempDir()
	const host = "sec-host1"
	initSecrets := func() string {
		cmd := exec.Command(testenv.Bin(t, "svckit"), "secrets", "init", "--dc", "dc1", "--host", host,
			"--service", "sensor", "--service", "worker", "--service", "app", "--service", "nsqauth", "--out", dir, "--mount", dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("svckit secrets init: %v\n%s", err, out)
		}
		return string(out)
	}
	initSecrets()
	before := map[string]string{}
	filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		switch {
		case d.IsDir() && fi.Mode().Perm() != 0o700:
			t.Errorf("%s: mode %v, want 0700", path, fi.Mode().Perm())
		case !d.IsDir() && fi.Mode().Perm() != 0o600:
			t.Errorf("%s: mode %v, want 0600", path, fi.Mode().Perm())
		case !d.IsDir():
			b, _ := os.ReadFile(path)
			before[path] = string(b)
		}
		return nil
	})
	if out := initSecrets(); !strings.HasSuffix(strings.TrimSpace(out), "made now:") {
		t.Errorf("running init again made something: %s", out)
	}
	for path, b := range before {
		if after, _ := os.ReadFile(path); string(after) != b {
			t.Errorf("running init again changed %s", path)
		}
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	hostDir := filepath.Join(dir, "hosts", host)
	mgmt := read("management.token")
	c := testenv.StartConsulWith(t, testenv.ConsulOptions{
		Node:  host,
		HCL:   []string{read(filepath.Join("hosts", host, "consul.hcl"))},
		Token: mgmt,
		TLS:   testenv.ConsulTLS{CAFile: filepath.Join(dir, "ca.pem"), CertFile: filepath.Join(hostDir, "consul.pem"), KeyFile: filepath.Join(hostDir, "consul-key.pem")},
	})
	if info, err := c.Client.Agent().Self(); err != nil {
		t.Fatal(err)
	} else if lan, _ := info["Stats"]["serf_lan"].(map[string]any); lan["encrypted"] != "true" {
		t.Fatalf("gossip is not encrypted: %v", info["Stats"]["serf_lan"])
	}
	ca := filepath.Join(dir, "ca.pem")
	apply := exec.Command(testenv.Bin(t, "svckit"), "acl", "apply", "--bootstrap", "--wait", "30s", "--tokens", filepath.Join(dir, "tokens"),
		"--service", "sensor", "--service", "worker", "--service", "app", "--owner", "sensor=sec", "--nsqauth", "nsqauth", "--agent", host, "--node", host)
	apply.Env = append(apply.Environ(), "CONSUL_HTTP_ADDR=https://"+c.HTTPSAddr, "CONSUL_CACERT="+ca, "CONSUL_HTTP_TOKEN_FILE="+filepath.Join(dir, "management.token"), "CONSUL_HTTP_TOKEN=")
	if out, err := apply.CombinedOutput(); err != nil {
		t.Fatalf("svckit acl apply: %v\n%s", err, out)
	}
	agent, err := api.NewClient(&api.Config{Address: c.HTTPSAddr, Scheme: "https", Token: read("tokens/agent-" + host + ".token"), TLSConfig: api.TLSConfig{CAFile: ca}})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := agent.ACL().TokenReadSelf(nil); err != nil {
		t.Fatalf("the agent token init made is not a token after acl apply: %v", err)
	}

	l := testenv.StartNSQLookupd(t)
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr}})
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.RegisterNSQD(t, c, n)
	https := []string{"--consul-addr=https://" + c.HTTPSAddr, "--consul-cacert=" + ca}
	tokenEnv := func(name string) []string {
		return []string{"CONSUL_HTTP_TOKEN=", "CONSUL_HTTP_TOKEN_FILE=" + filepath.Join(dir, "tokens", name+".token")}
	}
	pipetest.StartService(t, c, "app-sec", "app", tokenEnv("app"), append(https, "--replay-gap-grace=1s")...)
	pipetest.StartService(t, c, "worker-sec", "worker", tokenEnv("worker"), https...)
	pipetest.AddrOf(t, c, "app", "")
	pipetest.AddrOf(t, c, "worker", "")
	pipetest.StartService(t, c, "sensor-sec", "sensor", tokenEnv("sensor"), append(https, "--stream-id=sec", "--rate=0", "--count=300")...)
	pipetest.WaitAppExact(t, c, "sec", 300)
}

// TestACLApplyTokenFiles: `svckit acl apply`'s token files are the truth
// and kept safe. A lost file gets Consul's secret back (it used to get a
// new one Consul refused to take, for ever); a file whose secret Consul's
// token does not have makes the token anew with it; a symbolic link or a
// file others may read is refused, never written through; a service named
// like an agent's file is refused. (Found by a hostile review.)
func TestACLApplyTokenFiles(t *testing.T) {
	c := testenv.StartConsulWith(t, testenv.ConsulOptions{
		HCL:   []string{aclDenyHCL},
		Token: managementToken,
	})
	tokens := t.TempDir()
	apply := func(args ...string) (string, error) {
		cmd := exec.Command(testenv.Bin(t, "svckit"), append([]string{"acl", "apply", "--tokens", tokens, "--node", c.NodeName}, args...)...)
		cmd.Env = append(cmd.Environ(), "CONSUL_HTTP_ADDR="+c.HTTPAddr, "CONSUL_HTTP_TOKEN="+managementToken)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	file := filepath.Join(tokens, "worker.token")
	secret := func() string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	works := func(what string) {
		t.Helper()
		cl, err := api.NewClient(&api.Config{Address: c.HTTPAddr, Token: secret()})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := cl.ACL().TokenReadSelf(nil); err != nil {
			t.Fatalf("%s: the secret in worker.token is no token of Consul's: %v", what, err)
		}
	}
	if out, err := apply("--service", "worker"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	first := secret()
	works("first apply")

	os.Remove(file)
	if out, err := apply("--service", "worker"); err != nil {
		t.Fatalf("after the file was lost: %v\n%s", err, out)
	}
	if secret() != first {
		t.Fatalf("a lost file got a new secret, not Consul's")
	}
	works("lost file")

	other := "0f0e0d0c-0b0a-4908-8706-050403020100"
	os.WriteFile(file, []byte(other+"\n"), 0o600)
	if out, err := apply("--service", "worker"); err != nil {
		t.Fatalf("with another secret in the file: %v\n%s", err, out)
	}
	works("another secret in the file")

	os.Chmod(file, 0o644)
	if out, err := apply("--service", "worker"); err == nil || !strings.Contains(out, "only its owner") {
		t.Fatalf("a token file others may read: %v\n%s", err, out)
	}
	os.Remove(file)
	elsewhere := filepath.Join(t.TempDir(), "stolen")
	os.Symlink(elsewhere, file)
	if out, err := apply("--service", "worker"); err == nil {
		t.Fatalf("a symbolic link at the token's path was accepted:\n%s", out)
	}
	if _, err := os.Stat(elsewhere); err == nil {
		t.Fatal("the secret was written through the symbolic link")
	}
	if out, err := apply("--service", "agent-n1", "--agent", "n1"); err == nil {
		t.Fatalf("a service named like an agent's token file was accepted:\n%s", out)
	}

	// --nsqauth-policy writes the policy when there is none, and never
	// overwrites one (the operator changes it with consul kv put).
	policy := func(ttl int) string {
		f := filepath.Join(t.TempDir(), "policy.json")
		os.WriteFile(f, []byte(fmt.Sprintf(`{"ttl": %d, "require_tls": true, "identities": {"sensor": {"publish": ["readings"]}}}`, ttl)), 0o600)
		return f
	}
	if out, err := apply("--nsqauth", "nsqauth", "--nsqauth-policy", policy(60)); err != nil || !strings.Contains(out, "policy written") {
		t.Fatalf("--nsqauth-policy: %v\n%s", err, out)
	}
	if out, err := apply("--nsqauth", "nsqauth", "--nsqauth-policy", policy(5)); err != nil || !strings.Contains(out, "policy kept") {
		t.Fatalf("--nsqauth-policy over an existing policy: %v\n%s", err, out)
	}
	if kv, _, err := c.Client.KV().Get("svckit/nsqauth/policy", nil); err != nil || kv == nil || !strings.Contains(string(kv.Value), `"ttl": 60`) {
		t.Fatalf("the policy in KV: %v %v, want the first one", kv, err)
	}
	if out, err := apply("--nsqauth", "nsqauth", "--nsqauth-policy", filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatalf("a missing --nsqauth-policy file was accepted:\n%s", out)
	}

	// No leader in time: exit status 75, "try again later" (./build.sh up
	// of a multi-host datacenter's first host), after --wait.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	cmd := exec.Command(testenv.Bin(t, "svckit"), "acl", "apply", "--tokens", tokens, "--node", c.NodeName, "--service", "worker", "--wait", "2s")
	cmd.Env = append(cmd.Environ(), "CONSUL_HTTP_ADDR="+closed, "CONSUL_HTTP_TOKEN="+managementToken)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 75 || !strings.Contains(string(out), "no leader") {
		t.Fatalf("acl apply --wait with no Consul: %v, want exit status 75 naming the missing leader\n%s", err, out)
	}
}
