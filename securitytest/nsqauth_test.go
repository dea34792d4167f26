package securitytest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/nsqauth"
	"github.com/svckit/svckit/svckit/testenv"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// laptopPolicy is the repository's policy for the laptop (the Procfile's):
// the tests check what the repository ships.
const laptopPolicy = "../etc/nsqauth/policy.json"

// identities are the laptop policy's: identity → its secret's variable.
var identities = map[string]string{
	"sensor": "NSQAUTH_SECRET_SENSOR", "worker": "NSQAUTH_SECRET_WORKER",
	"app": "NSQAUTH_SECRET_APP", "operator": "NSQAUTH_SECRET_OPERATOR",
}

// secrets makes a fresh secret for every identity of the laptop policy and
// returns them with the authorization server's environment.
func secrets() (byIdentity map[string]string, serverEnv []string) {
	byIdentity = map[string]string{}
	for id, v := range identities {
		s := nsqauth.NewSecret()
		byIdentity[id] = s
		serverEnv = append(serverEnv, v+"="+s)
	}
	return byIdentity, serverEnv
}

// startAuth starts `svckit nsqauth serve` as the instance name, waits until
// it is passing in Consul (registered with its health check, like every
// svckit service), and returns the process and its address.
func startAuth(t *testing.T, c *testenv.Consul, name string, env []string, args ...string) (*testenv.Process, string) {
	t.Helper()
	argv := append(append([]string{"nsqauth", "serve"}, pipetest.CommonArgs(c, name, t.TempDir())...), args...)
	p := testenv.StartProcess(t, name, testenv.Bin(t, "svckit"), argv, env)
	addr := pipetest.AddrOfProcess(t, c, p, nsqauth.ServiceName, name)
	testenv.WaitFor(t, 30*time.Second, name+" ready (policy loaded)", func() bool {
		r, err := pipetest.Ready(addr)
		return err == nil && r.Ready
	})
	return p, addr
}

// registerNSQDAsInTheDatacenters registers nsqd in Consul the way the
// datacenters do: no http_port meta (nsqd's HTTP API is on its container's
// loopback there) and a TCP check on its TCP port. Consumers then have no
// address for nsqd's HTTP API and find nsqd through nsqlookupd only.
func registerNSQDAsInTheDatacenters(t *testing.T, c *testenv.Consul, n *testenv.NSQD) {
	t.Helper()
	testenv.Register(t, c, &api.AgentServiceRegistration{
		ID: testenv.ServiceID("nsqd", n.TCPPort), Name: "nsqd", Address: "127.0.0.1", Port: n.TCPPort,
		Check: &api.AgentServiceCheck{TCP: n.TCPAddr, Interval: "1s", Timeout: "1s"},
	})
	testenv.WaitPassing(t, c, "nsqd", 1)
}

// client is one raw NSQ connection: what any program that reaches nsqd's
// TCP port can send.
type client struct {
	conn *nsq.Conn
	resp chan string // "OK" or the error frame (E_UNAUTHORIZED …), or "closed"
}

type clientDelegate struct{ c *client }

func (d clientDelegate) OnResponse(_ *nsq.Conn, b []byte) {
	if s := string(b); s != "_heartbeat_" {
		d.c.resp <- s
	}
}
func (d clientDelegate) OnError(_ *nsq.Conn, b []byte)             { d.c.resp <- string(b) }
func (d clientDelegate) OnMessage(*nsq.Conn, *nsq.Message)         {}
func (d clientDelegate) OnMessageFinished(*nsq.Conn, *nsq.Message) {}
func (d clientDelegate) OnMessageRequeued(*nsq.Conn, *nsq.Message) {}
func (d clientDelegate) OnBackoff(*nsq.Conn)                       {}
func (d clientDelegate) OnContinue(*nsq.Conn)                      {}
func (d clientDelegate) OnResume(*nsq.Conn)                        {}
func (d clientDelegate) OnIOError(*nsq.Conn, error)                {}
func (d clientDelegate) OnHeartbeat(*nsq.Conn)                     {}
func (d clientDelegate) OnClose(*nsq.Conn) {
	select {
	case d.c.resp <- "closed":
	default:
	}
}

// dial connects to nsqd with secret ("" = none) and, when caCert is set,
// TLS. The error is the connection's: "Auth Required", or nsqd's answer
// to AUTH.
func dial(t *testing.T, addr, secret, caCert string) (*client, error) {
	t.Helper()
	cfg := nsq.NewConfig()
	cfg.AuthSecret = secret
	if caCert != "" {
		if err := cfg.Set("tls_v1", true); err != nil {
			t.Fatal(err)
		}
		if err := cfg.Set("tls_root_ca_file", caCert); err != nil {
			t.Fatal(err)
		}
	}
	c := &client{resp: make(chan string, 16)}
	c.conn = nsq.NewConn(addr, cfg, clientDelegate{c})
	c.conn.SetLogger(nil, nsq.LogLevelError, "")
	if _, err := c.conn.Connect(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.conn.Close() })
	return c, nil
}

// do sends cmd and returns nsqd's answer: nil for OK, else the error frame.
func (c *client) do(t *testing.T, cmd *nsq.Command) error {
	t.Helper()
	if err := c.conn.WriteCommand(cmd); err != nil {
		return err
	}
	select {
	case r := <-c.resp:
		if r == "OK" {
			return nil
		}
		return errors.New(r)
	case <-time.After(10 * time.Second):
		t.Fatalf("no answer from nsqd to %s within 10s", cmd.Name)
		return nil
	}
}

// publish opens a connection with secret and publishes body to topic.
func publish(t *testing.T, nsqdAddr, secret, caCert, topic string, body []byte) error {
	t.Helper()
	c, err := dial(t, nsqdAddr, secret, caCert)
	if err != nil {
		return err
	}
	return c.do(t, nsq.Publish(topic, body))
}

// subscribe opens a connection with secret and subscribes to topic/channel.
func subscribe(t *testing.T, nsqdAddr, secret, caCert, topic, channel string) error {
	t.Helper()
	c, err := dial(t, nsqdAddr, secret, caCert)
	if err != nil {
		return err
	}
	return c.do(t, nsq.Subscribe(topic, channel))
}

func wantRefused(t *testing.T, what string, err error, want string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: allowed, want refused (%s)", what, want)
	}
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("%s: %v, want %q", what, err, want)
	}
	t.Logf("%s: refused: %v", what, err)
}

func wantAllowed(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v, want allowed", what, err)
	}
}

// topicMessages is how many messages nsqd holds or delivered for topic.
func topicMessages(t *testing.T, n *testenv.NSQD, topic string) uint64 {
	t.Helper()
	st, err := n.Stats()
	if err != nil {
		t.Fatal(err)
	}
	_, count, _ := st.TopicDepth(topic)
	return count
}

// TestNSQAuthWhoMayPublishWhere: nsqd with --auth-http-address pointing at
// `svckit nsqauth serve` with the repository's laptop policy. Against the
// real nsqd, over its TCP protocol: a client without a secret cannot
// publish, an unknown secret is refused, the worker's secret cannot publish
// to readings (only to results and readings.dead), the sensor's only to
// readings, each identity subscribes only to what it consumes, and the
// operator CLI works with the operator's secret only. nsqd's HTTP /pub is
// not covered by any of it, which is why it is bound to loopback.
func TestNSQAuthWhoMayPublishWhere(t *testing.T) {
	c := testenv.StartConsul(t)
	l := testenv.StartNSQLookupd(t)
	secret, env := secrets()
	_, authAddr := startAuth(t, c, "nsqauth-1", env, "--policy="+laptopPolicy)
	var err error
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr},
		ExtraArgs: []string{"--auth-http-address=" + authAddr}})
	testenv.RegisterNSQLookupd(t, c, l)
	testenv.RegisterNSQD(t, c, n)
	testenv.WaitPassing(t, c, "nsqd", 1)
	body := []byte("x")

	// Publishing.
	_, err = dial(t, n.TCPAddr, "", "")
	wantRefused(t, "no secret", err, "Auth Required")
	wantRefused(t, "an unknown secret", publish(t, n.TCPAddr, nsqauth.NewSecret(), "", "readings", body), "E_UNAUTHORIZED")
	wantRefused(t, "the worker's secret, PUB readings", publish(t, n.TCPAddr, secret["worker"], "", "readings", body), "E_UNAUTHORIZED")
	wantRefused(t, "the worker's secret, MPUB readings", func() error {
		cl, err := dial(t, n.TCPAddr, secret["worker"], "")
		if err != nil {
			return err
		}
		cmd, err := nsq.MultiPublish("readings", [][]byte{body, body})
		if err != nil {
			t.Fatal(err)
		}
		return cl.do(t, cmd)
	}(), "E_UNAUTHORIZED")
	wantRefused(t, "the worker's secret, DPUB readings", func() error {
		cl, err := dial(t, n.TCPAddr, secret["worker"], "")
		if err != nil {
			return err
		}
		return cl.do(t, nsq.DeferredPublish("readings", time.Second, body))
	}(), "E_UNAUTHORIZED")
	wantRefused(t, "the sensor's secret, PUB results", publish(t, n.TCPAddr, secret["sensor"], "", "results", body), "E_UNAUTHORIZED")
	wantRefused(t, "the sensor's secret, PUB readings.dead", publish(t, n.TCPAddr, secret["sensor"], "", "readings.dead", body), "E_UNAUTHORIZED")
	wantRefused(t, "the app's secret, PUB results", publish(t, n.TCPAddr, secret["app"], "", "results", body), "E_UNAUTHORIZED")
	if got := topicMessages(t, n, "readings"); got != 0 {
		t.Fatalf("readings holds %d message(s) after refused publishes", got)
	}
	wantAllowed(t, "the sensor's secret, PUB readings", publish(t, n.TCPAddr, secret["sensor"], "", "readings", body))
	wantAllowed(t, "the worker's secret, PUB results", publish(t, n.TCPAddr, secret["worker"], "", "results", body))
	letter, err := deadletter.Letter{Meta: deadletter.Meta{Topic: "readings", Channel: "workers", Reason: "test", Attempts: 5, Time: time.Now()}, Original: body}.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	wantAllowed(t, "the worker's secret, PUB readings.dead", publish(t, n.TCPAddr, secret["worker"], "", "readings.dead", letter))
	wantAllowed(t, "the app's secret, PUB results.dead", publish(t, n.TCPAddr, secret["app"], "", "results.dead", body))
	if r, w := topicMessages(t, n, "readings"), topicMessages(t, n, "results"); r != 1 || w != 1 {
		t.Fatalf("readings %d, results %d message(s): want exactly the one each that was allowed", r, w)
	}

	// Subscribing.
	wantAllowed(t, "the worker's secret, SUB readings/workers", subscribe(t, n.TCPAddr, secret["worker"], "", "readings", "workers"))
	wantRefused(t, "the worker's secret, SUB readings/spy", subscribe(t, n.TCPAddr, secret["worker"], "", "readings", "spy"), "E_UNAUTHORIZED")
	wantRefused(t, "the worker's secret, SUB results/workers", subscribe(t, n.TCPAddr, secret["worker"], "", "results", "workers"), "E_UNAUTHORIZED")
	wantAllowed(t, "the app's secret, SUB results/app-…#ephemeral", subscribe(t, n.TCPAddr, secret["app"], "", "results", "app-app-1#ephemeral"))
	wantRefused(t, "the app's secret, SUB results/app-1 (durable)", subscribe(t, n.TCPAddr, secret["app"], "", "results", "app-1"), "E_UNAUTHORIZED")
	wantRefused(t, "the app's secret, SUB readings/workers", subscribe(t, n.TCPAddr, secret["app"], "", "readings", "workers"), "E_UNAUTHORIZED")
	wantRefused(t, "the sensor's secret, SUB readings/workers", subscribe(t, n.TCPAddr, secret["sensor"], "", "readings", "workers"), "E_UNAUTHORIZED")
	wantRefused(t, "an unknown secret, SUB readings/workers", subscribe(t, n.TCPAddr, nsqauth.NewSecret(), "", "readings", "workers"), "E_UNAUTHORIZED")
	wantAllowed(t, "the operator's secret, SUB readings.dead/svckit-deadletter", subscribe(t, n.TCPAddr, secret["operator"], "", "readings.dead", "svckit-deadletter"))

	// The operator CLI: its own identity, from SVCKIT_NSQ_AUTH_SECRET.
	cli := func(secret string, args ...string) (string, error) {
		cmd := exec.Command(testenv.Bin(t, "svckit"), append([]string{"--consul-addr=" + c.HTTPAddr}, args...)...)
		cmd.Env = append(os.Environ(), "SVCKIT_NSQ_AUTH_SECRET="+secret)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	if out, err := cli("", "deadletter", "ls", "--topic=readings", "--wait=1s"); err == nil || !strings.Contains(out, "Auth Required") {
		t.Fatalf("svckit deadletter ls without a secret: %v\n%s", err, out)
	}
	if out, err := cli(secret["worker"], "deadletter", "ls", "--topic=readings", "--wait=1s"); err == nil || !strings.Contains(out, "E_UNAUTHORIZED") {
		t.Fatalf("svckit deadletter ls with the worker's secret: %v\n%s", err, out)
	}
	out, err := cli(secret["operator"], "deadletter", "ls", "--topic=readings", "--json", "--wait=2s")
	if err != nil || strings.Count(out, "\n") != 1 {
		t.Fatalf("svckit deadletter ls with the operator's secret: %v\n%s", err, out)
	}
	t.Logf("svckit deadletter ls with the operator's secret: %s", strings.TrimSpace(out))
	if out, err := cli(secret["operator"], "deadletter", "requeue", "--topic=readings", "--wait=2s"); err != nil {
		t.Fatalf("svckit deadletter requeue with the operator's secret: %v\n%s", err, out)
	}
	if got := topicMessages(t, n, "readings"); got != 2 {
		t.Fatalf("readings holds %d message(s) after the operator requeued the dead letter, want 2", got)
	}

	// What the auth protocol does not cover: nsqd's HTTP API.
	code, resp, err := testenv.HTTPPost("http://"+n.HTTPAddr+"/pub?topic=results", "application/octet-stream", body)
	if err != nil || code != http.StatusOK {
		t.Fatalf("HTTP /pub: %d %q %v", code, resp, err)
	}
	t.Logf("nsqd's HTTP /pub took a message for results without any secret: its HTTP port must be reachable only from its own host (the Procfile and the datacenters bind it to loopback)")

	// The server counted every refusal.
	if v := pipetest.ReadMetric(t, authAddr, "svckit_nsqauth_answers_total"); v < 10 {
		t.Errorf("svckit_nsqauth_answers_total %v: want every AUTH counted", v)
	}
}

// TestNSQAuthPipeline: the whole pipeline (sensor, two workers, app) with
// authorization on, set up as in the datacenters: the policy in Consul KV
// (seeded from the repository's policy, with a 2s ttl so that nsqd asks
// again and again on every connection), two authorization servers that
// nsqd is given both of, the workers' and the app's secrets issued by a
// server into files (--issue, --nsq-auth-secret-file), the sensor's from
// the environment, and nsqd registered without its HTTP port, so that
// consumers cannot pre-create topics and channels through nsqd's HTTP API
// and find nsqd through nsqlookupd only. Server b is down when the
// services start; under way b comes back and a is killed; then b is killed
// too (no server at all: publishes fail) and a comes back. The app ends
// exact, and no server refused a service.
func TestNSQAuthPipeline(t *testing.T) {
	c := testenv.StartConsul(t)
	l := testenv.StartNSQLookupd(t)
	testenv.RegisterNSQLookupd(t, c, l)
	secret, env := secrets()
	pol, err := os.ReadFile(laptopPolicy)
	if err != nil {
		t.Fatal(err)
	}
	seed := strings.Replace(string(pol), `"ttl": 60`, `"ttl": 2`, 1)
	if seed == string(pol) {
		t.Fatal("the laptop policy has no \"ttl\": 60 to shorten")
	}
	dir := t.TempDir()
	workerFile, appFile := filepath.Join(dir, "worker.secret"), filepath.Join(dir, "app.secret")
	// Fixed ports (free ones), so that a restarted server is where nsqd
	// looks for it.
	addrA, addrB := testenv.Addr(testenv.FreePort(t)), testenv.Addr(testenv.FreePort(t))
	kvArgs := []string{"--kv=svckit/nsqauth", "--seed=" + seed}
	// Server a issues the workers' and the app's secrets; both know the
	// sensor's and the operator's from their environment.
	authA, _ := startAuth(t, c, "nsqauth-a", env, append(kvArgs, "--http-addr="+addrA, "--issue=worker="+workerFile, "--issue=app="+appFile)...)
	authB, _ := startAuth(t, c, "nsqauth-b", env, append(kvArgs, "--http-addr="+addrB)...)
	testenv.WaitFor(t, 30*time.Second, "both servers know the issued secrets", func() bool {
		for _, a := range []string{addrA, addrB} {
			var ids []nsqauth.IdentityInfo
			if err := pipetest.GetJSON(a, "/identities", &ids); err != nil {
				return false
			}
			for _, id := range ids {
				// every identity's from the environment; the workers' and
				// the app's issued ones too
				want := map[string]int{"worker": 2, "app": 2}[id.Identity]
				if id.Secrets != max(want, 1) {
					return false
				}
			}
		}
		return true
	})
	n := testenv.StartNSQD(t, testenv.NSQDOptions{LookupdTCPAddrs: []string{l.TCPAddr},
		ExtraArgs: []string{"--auth-http-address=" + addrA, "--auth-http-address=" + addrB,
			"--http-client-connect-timeout=1s", "--http-client-request-timeout=2s"}})
	registerNSQDAsInTheDatacenters(t, c, n)

	authB.Kill()
	t.Logf("nsqauth-b killed: nsqd gets its answers from nsqauth-a")

	const total = 8000
	pipetest.StartService(t, c, "app-auth", "app", nil, "--nsq-auth-secret-file="+appFile,
		"--replay-gap-grace=1s", "--replay-tail-interval=1s", "--summary-interval=0")
	for i := 1; i <= 2; i++ {
		pipetest.StartService(t, c, "worker-auth-"+strconv.Itoa(i), "worker", nil, "--nsq-auth-secret-file="+workerFile)
	}
	appAddr := pipetest.AddrOf(t, c, "app", "app-auth")
	pipetest.AddrOf(t, c, "worker", "worker-auth-1")
	pipetest.AddrOf(t, c, "worker", "worker-auth-2")
	pipetest.StartService(t, c, "sensor-auth", "sensor", []string{"SVCKIT_NSQ_AUTH_SECRET=" + secret["sensor"]},
		"--stream-id=auth", "--rate=250", "--count="+strconv.Itoa(total))
	sensorAddr := pipetest.AddrOf(t, c, "sensor", "sensor-auth")

	testenv.WaitFor(t, 60*time.Second, "the app to apply 500 readings", func() bool {
		st, err := pipetest.AppStreamOf(appAddr, "auth")
		return err == nil && st.Applied >= 500
	})
	authB.Restart(t)
	testenv.WaitFor(t, 30*time.Second, "nsqauth-b ready again", func() bool {
		r, err := pipetest.Ready(addrB)
		return err == nil && r.Ready
	})
	if v, err := refusals(addrA); err != nil || v != 0 {
		t.Fatalf("nsqauth-a refused %v AUTH(s) of the pipeline's services (%v)", v, err)
	}
	grantedA := pipetest.ReadMetric(t, addrA, "svckit_nsqauth_answers_total")
	authA.Kill()
	st0, _ := pipetest.AppStreamOf(appAddr, "auth")
	t.Logf("under way (app applied %d): nsqauth-a answered %v times and is killed; nsqauth-b is back", st0.Applied, grantedA)

	// Every server down: nsqd cannot check again when a connection's
	// answer expires (2s), refuses the next publish and closes the
	// connection; producers fail over and retry. Then nsqauth-a is back.
	var grantedB float64
	testenv.WaitFor(t, 60*time.Second, "nsqauth-b to answer nsqd's checks (every 2s per connection)", func() bool {
		v, err := pipetest.Metric(addrB, "svckit_nsqauth_answers_total")
		grantedB = v
		return err == nil && v >= 4
	})
	if v, err := refusals(addrB); err != nil || v != 0 {
		t.Fatalf("nsqauth-b refused %v AUTH(s) of the pipeline's services (%v)", v, err)
	}
	errsBefore := pipetest.ReadMetric(t, sensorAddr, "svckit_publish_errors_total")
	authB.Kill()
	down := time.Now()
	testenv.WaitFor(t, 30*time.Second, "the sensor's publishes to fail while no authorization server answers", func() bool {
		v, err := pipetest.Metric(sensorAddr, "svckit_publish_errors_total")
		return err == nil && v > errsBefore
	})
	sensorLast := pipetest.SensorLastSeq(t, sensorAddr, "auth")
	authA.Restart(t)
	testenv.WaitFor(t, 30*time.Second, "nsqauth-a ready again", func() bool {
		r, err := pipetest.Ready(addrA)
		return err == nil && r.Ready
	})
	t.Logf("no authorization server for %s: the sensor's publishes failed (it was at %d of %d); nsqauth-a is back", time.Since(down).Round(time.Millisecond), sensorLast, total)
	if sensorLast >= total {
		t.Fatalf("the sensor had published everything before the outage: it tested nothing")
	}

	st := pipetest.WaitAppExactAt(t, appAddr, "auth", total)
	pipetest.CheckState(t, appAddr, sensorAddr, "auth", total, 1)
	t.Logf("app exact: %v", st)

	if v, err := refusals(addrA); err != nil || v != 0 {
		t.Errorf("nsqauth-a (restarted) refused %v AUTH(s) of the pipeline's services (%v)", v, err)
	}
	grantedA2 := pipetest.ReadMetric(t, addrA, "svckit_nsqauth_answers_total")
	if grantedA < 4 || grantedB < 4 || grantedA2 < 1 {
		t.Errorf("answers: nsqauth-a %v (then %v after its restart), nsqauth-b %v: want each to have answered the services' connections (and their repeats every ttl)", grantedA, grantedA2, grantedB)
	}
	t.Logf("answers, none refused: nsqauth-a %v, nsqauth-b %v after a was killed, nsqauth-a %v after the outage", grantedA, grantedB, grantedA2)

	// The operator's `svckit replay --publish results`: with the sensor's
	// secret (which may not publish to results) nothing is published; with
	// the operator's, 1..100 go to results again and the app skips them.
	replay := func(secret string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, testenv.Bin(t, "svckit"), "--consul-addr="+c.HTTPAddr, "replay", "--stream=auth", "--from=1", "--to=100", "--publish=results", "--quiet")
		cmd.Env = append(os.Environ(), "SVCKIT_NSQ_AUTH_SECRET="+secret)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ctx.Err() != nil {
			t.Fatalf("svckit replay --publish did not end within 60s:\n%s", out.String())
		}
		return out.String(), err
	}
	dupBefore := st.Duplicates
	if out, err := replay(secret["sensor"]); err == nil || !strings.Contains(out, "E_UNAUTHORIZED") {
		t.Fatalf("svckit replay --publish results with the sensor's secret: %v\n%s", err, out)
	} else {
		t.Logf("svckit replay --publish results with the sensor's secret: refused: %s", firstLine(out, "E_UNAUTHORIZED"))
	}
	if out, err := replay(secret["operator"]); err != nil {
		t.Fatalf("svckit replay --publish results with the operator's secret: %v\n%s", err, out)
	}
	testenv.WaitFor(t, 30*time.Second, "the app to skip the 100 republished results", func() bool {
		s, err := pipetest.AppStreamOf(appAddr, "auth")
		return err == nil && s.Duplicates >= dupBefore+100 && s.Exact(total)
	})
}

// refusals is the sum of svckit_nsqauth_answers_total with a result other
// than granted.
func refusals(addr string) (float64, error) {
	code, body, err := testenv.HTTPGet("http://" + addr + "/metrics")
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("metrics of %s: %d %v", addr, code, err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, "svckit_nsqauth_answers_total{") || strings.Contains(line, `result="granted"`) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			return 0, err
		}
		sum += v
	}
	return sum, nil
}

// TestNSQAuthRequireTLS: nsqd 1.3 accepts AUTH over a plain connection
// (it does not require TLS for it), so the secret may cross the network in
// clear. A policy with require_tls refuses a secret that came without
// TLS; over TLS the same secret is granted.
func TestNSQAuthRequireTLS(t *testing.T) {
	ca, cert, key := certs(t, t.TempDir())
	c := testenv.StartConsul(t)
	secret, env := secrets()
	pol, err := os.ReadFile(laptopPolicy)
	if err != nil {
		t.Fatal(err)
	}
	tlsPolicy := filepath.Join(t.TempDir(), "policy.json")
	if err := os.WriteFile(tlsPolicy, bytes.Replace(pol, []byte(`"ttl": 60,`), []byte(`"ttl": 60, "require_tls": true,`), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	_, authAddr := startAuth(t, c, "nsqauth-tls", env, "--policy="+tlsPolicy)
	// TLS offered, not required by nsqd: each client chooses.
	n := testenv.StartNSQD(t, testenv.NSQDOptions{ExtraArgs: []string{
		"--auth-http-address=" + authAddr, "--tls-cert=" + cert, "--tls-key=" + key}})

	wantRefused(t, "the sensor's secret without TLS", publish(t, n.TCPAddr, secret["sensor"], "", "readings", []byte("x")), "E_UNAUTHORIZED")
	wantAllowed(t, "the sensor's secret over TLS", publish(t, n.TCPAddr, secret["sensor"], ca, "readings", []byte("x")))
	wantRefused(t, "the worker's secret over TLS, PUB readings", publish(t, n.TCPAddr, secret["worker"], ca, "readings", []byte("x")), "E_UNAUTHORIZED")
	if v, err := refusalsOf(authAddr, "tls_required"); err != nil || v != 1 {
		t.Errorf("tls_required refusals %v (%v), want 1", v, err)
	}
}

// refusalsOf is svckit_nsqauth_answers_total with result.
func refusalsOf(addr, result string) (float64, error) {
	code, body, err := testenv.HTTPGet("http://" + addr + "/metrics")
	if err != nil || code != http.StatusOK {
		return 0, fmt.Errorf("metrics of %s: %d %v", addr, code, err)
	}
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, "svckit_nsqauth_answers_total{") && strings.Contains(line, `result="`+result+`"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum, nil
}
