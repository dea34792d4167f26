package dockertest

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// dev/host1 as a new user runs it, secure by default: ./build.sh secrets
// dev, then ./build.sh up dev/host1 (secrets installed into their volumes,
// Consul's ACLs bootstrapped and applied); every container healthy, sensor,
// two workers and app passing in its Consul, the Consul UI reachable from
// the host over HTTPS, the pipeline's NSQ clients on TLS and authenticated,
// the app's state growing. An intruder on the datacenter's network with
// no credentials is refused everything it tries, while the same attempts
// with credentials are allowed.
func TestDevHost1(t *testing.T) {
	needDocker(t)
	t.Parallel()
	tag := images(t)
	project := "svckit-t-" + runID + "-dev-host1"
	t.Cleanup(func() {
		if left := leftovers(t, project); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	secrets := makeSecrets(t, "dev")
	h := newCompose(t, "dev/host1", project, secrets,
		"DC_IMAGE_TAG="+tag,
		// Any free host port: 8501 and 4185 may be taken on this machine.
		"DC_CONSUL_PUBLISH=127.0.0.1:0",
		"DC_CONSOLE_PUBLISH=127.0.0.1:0",
	)
	start := time.Now()
	up(t, h)
	consul := h.consul()
	took := waitPassing(t, consul, 3*time.Minute, map[string]int{
		"sensor": 1, "worker": 2, "app": 1, "nsqd": 1, "nsqlookupd": 1, "nsqauth": 1, "console": 1,
	})
	t.Logf("dev/host1: sensor, worker ×2, app, nsqd, nsqlookupd, nsqauth and console (their checks over HTTPS) passing in Consul %s after up", took.Round(time.Second))

	// The UI, from the host, over HTTPS with the datacenter's CA.
	resp, err := consul.client.Get(consul.url + "/ui/")
	if err != nil {
		t.Fatalf("Consul UI at %s/ui/: %v", consul.url, err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("Consul UI at %s/ui/: HTTP %d", consul.url, resp.StatusCode)
	}
	nsqOverTLS(t, h, "nsqd")

	// The app's state grows, read at the address it registered in Consul
	// (the container's own on the compose network: the default advertise
	// address works) from another container.
	apps, err := passing(consul, "app")
	if err != nil || len(apps) != 1 {
		t.Fatalf("app in Consul: %v %v", apps, err)
	}
	a := apps[0].Service
	if ip := net.ParseIP(a.Address); ip == nil || ip.IsLoopback() || a.Port != 8080 {
		t.Fatalf("app registered %s:%d: want the container's address and port 8080", a.Address, a.Port)
	}
	stateURL := "http://" + net.JoinHostPort(a.Address, strconv.Itoa(a.Port)) + "/state"
	count := func() uint64 {
		var st map[string]aggregate
		if err := h.getJSON("worker1", stateURL, &st); err != nil {
			t.Fatal(err)
		}
		return st["sensor-dev-host1"].Count
	}
	first := count()
	waitFor(t, time.Minute, func() (bool, string) {
		n := count()
		return n > first && n > 0, fmt.Sprintf("app state count %d (was %d)", n, first)
	})
	var streams map[string]appStream
	waitFor(t, time.Minute, func() (bool, string) {
		s, err := appStreams(h, "app")
		if err != nil {
			return false, err.Error()
		}
		streams = s
		x := s["sensor-dev-host1"]
		return x.Applied > 0 && x.Applied == x.LastContiguous && x.noGaps(), fmt.Sprintf("app streams %v", s)
	})
	t.Logf("dev/host1: app state grows (count %d → %d), streams %v; %s from up to here",
		first, count(), streams["sensor-dev-host1"], time.Since(start).Round(time.Second))

	// The console, from the host, as its operator reads it.
	checkConsole(t, h, "dev/host1", secrets, "sensor-dev-host1", "app")

	// The intruder, on the datacenter's network.
	intrusion{
		network: project + "_default", tag: tag, consul: "consul", nsqds: []string{"nsqd:4150"},
		services: []string{"http://sensor:8080", "http://worker1:8080", "http://app:8080", "https://nsqauth:8080", "http://nsqd:4171"},
		console:  "https://console:8080",
		stream:   "sensor-dev-host1", sensorID: "sensor-host1",
	}.check(t, secrets, project+"_nsq-secret-app", consul)

	// Meanwhile the pipeline ran on: the app is exact up to the sensor.
	waitExact(t, h, "sensor", "app", "sensor-dev-host1")

	// Rotation of a service's Consul token, as the README says: a new
	// secret in tokens/worker.token, ./build.sh up again. The old token
	// is no token any more, the workers restart with the new one and pass.
	startedAt := func(service string) string {
		return strings.TrimSpace(dockerMust(t, "inspect", "-f", "{{.State.StartedAt}}", strings.TrimSpace(h.must(time.Minute, "ps", "-q", service))))
	}
	before := startedAt("worker1")
	file := filepath.Join(secrets.root, "dev", "tokens", "worker.token")
	oldToken := strings.TrimSpace(secrets.read(t, "tokens/worker.token"))
	newToken := newUUID(t)
	if err := os.WriteFile(file, []byte(newToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rotated := time.Now()
	h.buildSh(5*time.Minute, "up", "dev/host1", "--no-build")
	tokenWorks := func(secret string) bool {
		c := consul
		c.token = secret
		var self map[string]any
		return c.getJSON("/v1/acl/token/self", &self) == nil
	}
	if tokenWorks(oldToken) || !tokenWorks(newToken) {
		t.Fatalf("after rotating the worker's token: the old one works %v, the new one %v; want only the new", tokenWorks(oldToken), tokenWorks(newToken))
	}
	if after := startedAt("worker1"); after == before {
		t.Fatalf("worker1 was not restarted with its new token (started %s)", after)
	}
	waitPassing(t, consul, 3*time.Minute, map[string]int{"worker": 2})
	waitExact(t, h, "sensor", "app", "sensor-dev-host1")
	t.Logf("dev/host1: the worker's Consul token rotated, workers passing and the app exact again %s later", time.Since(rotated).Round(time.Second))

	// Rotation of the gossip key, as the README says: consul keyring
	// -install, -use, -remove, with the management token.
	keyring := func(args ...string) string {
		return h.must(time.Minute, append([]string{"exec", "-T", "-e", "CONSUL_HTTP_TOKEN=" + secrets.management,
			"-e", "CONSUL_HTTP_ADDR=https://127.0.0.1:8501", "-e", "CONSUL_CACERT=/secrets/ca.pem", "consul", "consul", "keyring"}, args...)...)
	}
	oldKey := strings.TrimSpace(secrets.read(t, "gossip.key"))
	var k [32]byte
	rand.Read(k[:])
	newKey := base64.StdEncoding.EncodeToString(k[:])
	keyring("-install", newKey)
	keyring("-use", newKey)
	keyring("-remove", oldKey)
	if list := keyring("-list"); !strings.Contains(list, newKey) || strings.Contains(list, oldKey) {
		t.Fatalf("consul keyring -list after the rotation:\n%s", list)
	}
	var self map[string]map[string]any
	if err := consul.getJSON("/v1/agent/self", &self); err != nil {
		t.Fatal(err)
	} else if lan, _ := self["Stats"]["serf_lan"].(map[string]any); lan["encrypted"] != "true" {
		t.Fatalf("gossip after the key's rotation: %v", self["Stats"]["serf_lan"])
	}
	waitPassing(t, consul, time.Minute, map[string]int{"sensor": 1, "worker": 2, "app": 1})

	// nsqd restarts alone (docker-compose restart nsqd, as a crash would):
	// nsqd-stats, left in nsqd's old network namespace, exits once nsqd
	// has not answered for 10 s and is started again beside it, and the
	// console reads nsqd's statistics again.
	restarted := time.Now()
	nsqdDown := watchConsoleNSQDDown(t, h, secrets)
	h.must(2*time.Minute, "restart", "nsqd")
	nsqdDown()
	checkConsole(t, h, "dev/host1, nsqd restarted alone,", secrets, "sensor-dev-host1", "app")
	t.Logf("dev/host1: the console read nsqd again %s after nsqd restarted alone", time.Since(restarted).Round(time.Second))
	t.Logf("dev/host1: %s from up to the end", time.Since(start).Round(time.Second))
}

func newUUID(t *testing.T) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// waitExact waits until the app on c has every sequence of stream up to
// what the sensor had when asked, each applied once.
func waitExact(t *testing.T, c *compose, sensor, app, stream string) {
	t.Helper()
	owner, err := sensorLastSeq(c, sensor, stream)
	if err != nil {
		t.Fatal(err)
	}
	var got appStream
	waitFor(t, 3*time.Minute, func() (bool, string) {
		s, err := appStreams(c, app)
		if err != nil {
			return false, err.Error()
		}
		got = s[stream]
		return got.LastContiguous >= owner && got.Applied == got.LastContiguous && got.noGaps(),
			fmt.Sprintf("app on %s, %s: %v; the sensor had last_seq %d", c.host, stream, got, owner)
	})
	var state map[string]aggregate
	if err := c.getJSON(app, local+"/state", &state); err != nil {
		t.Fatal(err)
	}
	s, err := appStreams(c, app)
	if err != nil {
		t.Fatal(err)
	}
	if n, a2 := state[stream].Count, s[stream].Applied; n < got.Applied || n > a2 {
		t.Errorf("app on %s, %s: state count %d outside applied %d..%d", c.host, stream, n, got.Applied, a2)
	}
	t.Logf("app on %s, %s: applied %d = last_contiguous %d, duplicates %d, no gaps; the sensor had %d", c.host, stream, got.Applied, got.LastContiguous, got.Duplicates, owner)
}

// The multi-host datacenter aws, all three hosts on one engine: node1 (a
// Consul server, an nsqlookupd, an nsqd, a sensor and a worker) is lost and
// comes back; the pipeline recovers with nothing lost: every app has every
// sequence of every stream exactly once, up to what the sensors published.
func TestAWSNodeLoss(t *testing.T) {
	needDocker(t)
	t.Parallel()
	tag := images(t)
	prefix := "svckit-t-" + runID + "-aws"
	network := prefix + "-net"
	t.Cleanup(func() {
		if out, err := execDocker("network", "rm", network); err != nil && !strings.Contains(out, "No such network") {
			t.Errorf("removing network %s: %v: %s", network, err, out)
		}
		if left := leftovers(t, prefix); len(left) > 0 {
			t.Errorf("left behind: %v", left)
		}
	})
	dockerMust(t, "network", "create", "--driver", "bridge", "--label", "svckit.dockertest="+runID, network)
	secrets := makeSecrets(t, "aws")
	env := []string{
		"DC_IMAGE_TAG=" + tag, "DC_NETWORK=" + network, "DC_CONSUL_PUBLISH=127.0.0.1:0", "DC_CONSOLE_PUBLISH=127.0.0.1:0",
	}
	nodes := map[string]*compose{}
	var hosts []*compose
	for _, n := range []string{"node1", "node2", "node3"} {
		nodes[n] = newCompose(t, "aws/"+n, prefix+"-"+n, secrets, env...)
		hosts = append(hosts, nodes[n])
	}
	start := time.Now()
	up(t, hosts...)
	// node1's up found no leader (one server of three); a later one
	// applied the ACLs, or this does (idempotent: the README's step).
	nodes["node3"].buildSh(4*time.Minute, "acl", "aws/node3")
	consul2 := nodes["node2"].consul()
	all := map[string]int{"sensor": 2, "worker": 3, "app": 2, "nsqd": 3, "nsqlookupd": 2, "nsqauth": 3, "console": 1}
	took := waitPassing(t, consul2, 3*time.Minute, all)
	t.Logf("aws: all three hosts up, everything passing in Consul %s after up", took.Round(time.Second))
	var peers []string
	if err := consul2.getJSON("/v1/status/peers", &peers); err != nil || len(peers) != 3 {
		t.Fatalf("raft peers %v (%v): want the three servers", peers, err)
	}

	nsqOverTLS(t, nodes["node2"], "nsqd")
	intrusion{
		// node1's agent: the sensor it tries to deregister is registered there.
		network: network, tag: tag, consul: "node1-consul",
		nsqds:    []string{"node1-nsqd:4150", "node2-nsqd:4150", "node3-nsqd:4150"},
		services: []string{"http://node1-sensor:8080", "http://node2-worker:8080", "http://node3-app:8080", "https://node2-nsqauth:8080", "http://node3-nsqd:4171"},
		console:  "https://node2-console:8080",
		stream:   "sensor-aws-node1", sensorID: "sensor-node1",
	}.check(t, secrets, prefix+"-node2_nsq-secret-app", consul2)
	checkConsole(t, nodes["node2"], "aws/node2", secrets, "sensor-aws-node1", "app")

	streams := []struct{ node, stream string }{{"node1", "sensor-aws-node1"}, {"node3", "sensor-aws-node3"}}
	apps := []string{"node2", "node3"}
	// Both apps see both streams grow.
	waitFor(t, 2*time.Minute, func() (bool, string) {
		for _, a := range apps {
			s, err := appStreams(nodes[a], "app")
			if err != nil {
				return false, err.Error()
			}
			for _, st := range streams {
				if s[st.stream].Applied == 0 {
					return false, fmt.Sprintf("app on %s: %v", a, s)
				}
			}
		}
		return true, ""
	})
	before, err := sensorLastSeq(nodes["node1"], "sensor", "sensor-aws-node1")
	if err != nil {
		t.Fatal(err)
	}

	// Node loss: every container of node1 stops.
	lost := time.Now()
	nodes["node1"].must(2*time.Minute, "stop")
	t.Logf("aws: node1 stopped in %s (sensor-aws-node1 at seq %d)", time.Since(lost).Round(time.Second), before)
	// The datacenter keeps a leader and the rest of the pipeline flows, for
	// at least 15 s without node1.
	s3, err := appStreams(nodes["node2"], "app")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, func() (bool, string) {
		var leader string
		if err := consul2.getJSON("/v1/status/leader", &leader); err != nil || leader == "" {
			return false, fmt.Sprintf("no Consul leader without node1 (%q, %v)", leader, err)
		}
		s, err := appStreams(nodes["node2"], "app")
		if err != nil {
			return false, err.Error()
		}
		x, was := s["sensor-aws-node3"], s3["sensor-aws-node3"]
		return x.LastContiguous > was.LastContiguous+20 && time.Since(lost) > 15*time.Second,
			fmt.Sprintf("sensor-aws-node3 on node2's app: %d, was %d", x.LastContiguous, was.LastContiguous)
	})
	down := time.Since(lost)

	// node1 comes back.
	back := time.Now()
	nodes["node1"].must(2*time.Minute, "start")
	consul1 := nodes["node1"].consul() // its published port may have changed
	took = waitPassing(t, consul2, 3*time.Minute, all)
	t.Logf("aws: node1 was away %s; everything passing again %s after it started", down.Round(time.Second), took.Round(time.Second))
	var peers1 []string
	if err := consul1.getJSON("/v1/status/peers", &peers1); err != nil || len(peers1) != 3 {
		t.Errorf("node1's Consul: raft peers %v (%v), want three", peers1, err)
	}

	// Nothing lost: for every stream, read the owner's last_seq, then every
	// app must reach at least it with no gap and each sequence applied once
	// (state count = applied), and never beyond what the owner has.
	for _, st := range streams {
		owner, err := sensorLastSeq(nodes[st.node], "sensor", st.stream)
		if err != nil {
			t.Fatal(err)
		}
		if st.stream == "sensor-aws-node1" && owner < before {
			t.Fatalf("%s: the sensor's last_seq went back from %d to %d across the node loss", st.stream, before, owner)
		}
		for _, a := range apps {
			var got appStream
			waitFor(t, 3*time.Minute, func() (bool, string) {
				s, err := appStreams(nodes[a], "app")
				if err != nil {
					return false, err.Error()
				}
				got = s[st.stream]
				return got.LastContiguous >= owner && got.Applied == got.LastContiguous && got.noGaps(),
					fmt.Sprintf("app on %s, %s: %v; the sensor had last_seq %d", a, st.stream, got, owner)
			})
			after, err := sensorLastSeq(nodes[st.node], "sensor", st.stream)
			if err != nil {
				t.Fatal(err)
			}
			if got.LastContiguous > after {
				t.Errorf("app on %s, %s: last_contiguous %d beyond the sensor's last_seq %d", a, st.stream, got.LastContiguous, after)
			}
			// Exactly once: the state's count, read between two reads of
			// applied, lies between them (a sequence applied twice would
			// count twice).
			var state map[string]aggregate
			if err := nodes[a].getJSON("app", local+"/state", &state); err != nil {
				t.Fatal(err)
			}
			s, err := appStreams(nodes[a], "app")
			if err != nil {
				t.Fatal(err)
			}
			if c, a2 := state[st.stream].Count, s[st.stream].Applied; c < got.Applied || c > a2 {
				t.Errorf("app on %s, %s: state count %d outside applied %d..%d", a, st.stream, c, got.Applied, a2)
			}
			t.Logf("aws: app on %s, %s: applied %d = last_contiguous %d, duplicates %d, gaps none; sensor last_seq %d..%d",
				a, st.stream, got.Applied, got.LastContiguous, got.Duplicates, owner, after)
		}
	}
	t.Logf("aws: recovered %s after node1 started; %s from up to here", time.Since(back).Round(time.Second), time.Since(start).Round(time.Second))
}
