package dockertest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	intruderOnce sync.Once
	intruderBin  string
	intruderErr  error
)

// intruderProgram builds dockertest/intruder (static) once per run.
func intruderProgram(t *testing.T) string {
	t.Helper()
	intruderOnce.Do(func() {
		dir, err := os.MkdirTemp("", "svckit-intruder-")
		if err != nil {
			intruderErr = err
			return
		}
		intruderBin = filepath.Join(dir, "intruder")
		cmd := exec.Command("go", "build", "-o", intruderBin, "./dockertest/intruder")
		cmd.Dir = repoRoot
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			intruderErr = fmt.Errorf("building dockertest/intruder: %v\n%s", err, out)
		}
	})
	if intruderErr != nil {
		t.Fatal(intruderErr)
	}
	return intruderBin
}

// attempt is one line of the intruder's output.
type attempt struct {
	Attempt, Target, Outcome, Detail string
}

// intrusion is where the intruder tries to get in: a datacenter's network
// and the addresses on it.
type intrusion struct {
	network  string
	tag      string // the svckit images' tag
	consul   string // host name of a Consul agent on the network
	nsqds    []string
	services []string // base URLs
	stream   string
	sensorID string
	console  string // the console's base URL
}

// run runs the intruder in a container of the svckit image on the
// network: with no credentials unless control names the datacenter's
// secrets and a volume holding the app's NSQ secret (the positive control).
func (in intrusion) run(t *testing.T, control *dcSecrets, nsqSecretVolume string) []attempt {
	t.Helper()
	args := []string{"run", "--rm", "--network", in.network, "-v", intruderProgram(t) + ":/intruder:ro", "--entrypoint", "/intruder"}
	flags := []string{"--consul", "https://" + in.consul + ":8501", "--consul-http", "http://" + in.consul + ":8500",
		"--stream", in.stream, "--sensor-id", in.sensorID}
	for _, n := range in.nsqds {
		flags = append(flags, "--nsqd", n)
		if control == nil {
			// nsqd's HTTP API over TLS must not be reachable (the control
			// would publish through it if it were).
			host, _, _ := net.SplitHostPort(n)
			flags = append(flags, "--nsqd-https", net.JoinHostPort(host, "4152"))
		}
	}
	for _, s := range in.services {
		flags = append(flags, "--service", s)
	}
	if in.console != "" {
		flags = append(flags, "--console", in.console)
	}
	if control != nil {
		// The secrets directory is the operator's (0600, this user's):
		// the control runs as root in its container to read it.
		dir := filepath.Join(control.root, control.dc)
		args = append(args, "-u", "0", "-v", dir+":/secrets:ro", "-v", nsqSecretVolume+":/nsq:ro")
		// The app's NSQ identity may subscribe to results on an ephemeral
		// channel of its own (app-*#ephemeral): the control's SUB takes
		// nothing from anyone.
		flags = append(flags, "--ca", "/secrets/ca.pem", "--consul-token", "/secrets/management.token",
			"--replay-secret", "/secrets/replay.secret", "--nsq-secret", "/nsq/secret", "--sub-channel", "app-intruder#ephemeral",
			"--operator-token", "/secrets/operator.token", "--stats-secret", "/secrets/nsqdstats.secret",
			"--metrics-token", "/secrets/metrics.token")
	}
	args = append(args, "svckit/svckit:"+in.tag)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", append(args, flags...)...).Output()
	if err != nil {
		t.Fatalf("intruder on %s: %v\n%s", in.network, err, out)
	}
	var list []attempt
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		var a attempt
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("intruder output %q: %v", sc.Text(), err)
		}
		list = append(list, a)
	}
	if len(list) == 0 {
		t.Fatalf("intruder on %s printed nothing", in.network)
	}
	return list
}

// check runs the intruder without credentials (every attempt refused; the
// plain HTTP port of Consul closed) and then with them (each read it makes
// allowed: the addresses were right, the refusals are the datacenter's),
// and tries to join Consul's gossip as a new agent without the key.
func (in intrusion) check(t *testing.T, secrets *dcSecrets, nsqSecretVolume string, consul consulAPI) {
	t.Helper()
	// A route a service does not have (the app serves no /replay, the
	// sensor no /state) answers Go's mux's 404 before any handler.
	notServed := func(a attempt) bool {
		return strings.HasPrefix(a.Attempt, "svc-") && strings.Contains(a.Detail, "HTTP 404 Not Found: 404 page not found")
	}
	tried := map[string]bool{}
	for _, a := range in.run(t, nil, "") {
		tried[a.Attempt] = true
		want := "refused"
		if a.Attempt == "consul-http-port" || a.Attempt == "nsqd-https-pub" {
			want = "unreachable" // plain HTTP is off; nsqd's HTTPS API on loopback
		}
		if notServed(a) {
			t.Logf("intruder: %s on %s: not served there", a.Attempt, a.Target)
			continue
		}
		if a.Outcome != want {
			t.Errorf("intruder without credentials: %s on %s: %s (%s), want %s", a.Attempt, a.Target, a.Outcome, a.Detail, want)
		} else {
			t.Logf("intruder: %s on %s: %s (%s)", a.Attempt, a.Target, a.Outcome, a.Detail)
		}
	}
	// Every attempt the issue lists was made (none silently skipped).
	for _, name := range []string{
		"consul-kv-put-policy", "consul-kv-put-issued", "consul-kv-read", "consul-service-register",
		"consul-service-deregister", "consul-claim", "consul-kv-put-claim", "consul-acl-bootstrap",
		"consul-catalog-read", "consul-http-port", "nsqd-https-pub",
		"nsq-pub-clear", "nsq-sub-clear", "nsq-pub-tls", "nsq-sub-tls", "nsq-pub-wrong-secret",
		"svc-streams", "svc-replay", "svc-snapshot", "svc-deadletters-list", "svc-state", "svc-identities",
		"svc-deadletters-delete", "svc-wrong-secret", "svc-stats", "svc-metrics",
		"console-state", "console-lag-history", "console-requeue", "console-events", "console-wrong-token",
	} {
		if !tried[name] {
			t.Errorf("intruder: no %s attempt was made", name)
		}
	}
	allowed := 0
	served := map[string]bool{} // data routes some service has
	for _, a := range in.run(t, secrets, nsqSecretVolume) {
		if strings.HasPrefix(a.Attempt, "svc-") && !notServed(a) {
			served[a.Attempt] = true
		}
		want := "allowed"
		if a.Attempt == "consul-http-port" {
			want = "unreachable"
		}
		if notServed(a) {
			continue
		}
		if a.Outcome != want {
			t.Errorf("the same with credentials (the control): %s on %s: %s (%s), want %s", a.Attempt, a.Target, a.Outcome, a.Detail, want)
		}
		if a.Outcome == "allowed" {
			allowed++
		}
	}
	t.Logf("intruder: the control with credentials was allowed %d reads on the same addresses", allowed)
	for _, route := range []string{"svc-streams", "svc-replay", "svc-snapshot", "svc-deadletters-list", "svc-state", "svc-identities", "svc-stats", "svc-metrics"} {
		if !served[route] {
			t.Errorf("intruder: no service tried serves %s: the refusals of that route prove nothing", route)
		}
	}

	// Gossip: a Consul agent without the key cannot join.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "run", "--rm", "--network", in.network, "svckit/consul:"+in.tag,
		"agent", "-data-dir=/tmp/intruder", "-node=intruder", "-retry-join="+in.consul, "-retry-max=2", "-retry-interval=1s",
		`-bind={{ GetInterfaceIP "eth0" }}`, "-log-level=warn").CombinedOutput()
	if err == nil {
		t.Errorf("an agent without the gossip key ran and exited 0:\n%s", out)
	} else if !strings.Contains(string(out), "encrypt") {
		t.Errorf("an agent without the gossip key failed, but not for the encryption: %v\n%s", err, out)
	}
	var members []struct{ Name string }
	if err := consul.getJSON("/v1/agent/members", &members); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if m.Name == "intruder" {
			t.Errorf("the intruder's agent is a member of the gossip pool: %v", members)
		}
	}
	t.Logf("intruder: an agent without the gossip key was refused (%s); members %v", lastLine(string(out)), members)
}

// nsqOverTLS checks, in nsqd's own stats, that the pipeline's clients are
// connected to it over TLS and authenticated (the pipeline runs on NSQ, not
// on replay alone).
func nsqOverTLS(t *testing.T, c *compose, service string) {
	t.Helper()
	var st struct {
		Topics []struct {
			TopicName string `json:"topic_name"`
			Channels  []struct {
				ChannelName string `json:"channel_name"`
				Clients     []struct {
					TLS    bool `json:"tls"`
					Authed bool `json:"authed"`
				} `json:"clients"`
			} `json:"channels"`
		} `json:"topics"`
		Producers []struct {
			TLS    bool `json:"tls"`
			Authed bool `json:"authed"`
		} `json:"producers"`
	}
	waitFor(t, time.Minute, func() (bool, string) {
		if err := c.getJSON(service, "http://127.0.0.1:4151/stats?format=json", &st); err != nil {
			return false, err.Error()
		}
		subs := 0
		for _, tp := range st.Topics {
			for _, ch := range tp.Channels {
				for _, cl := range ch.Clients {
					if !cl.TLS || !cl.Authed {
						t.Fatalf("nsqd: a client of %s/%s without TLS or AUTH: %+v", tp.TopicName, ch.ChannelName, cl)
					}
					subs++
				}
			}
		}
		for _, p := range st.Producers {
			if !p.TLS || !p.Authed {
				t.Fatalf("nsqd: a producer without TLS or AUTH: %+v", p)
			}
		}
		return subs > 0 && len(st.Producers) > 0, fmt.Sprintf("nsqd: %d subscribers, %d producers", subs, len(st.Producers))
	})
}
