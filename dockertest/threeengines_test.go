package dockertest

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/svckit/svckit/internal/pipetest"
	"github.com/svckit/svckit/pipeline"
)

// workerFactor is the workers' --factor in datacenters/aws (not set: the
// default, 1): the app's state is what factor × value² adds up to.
const workerFactor = 1

// holdFault is how long each fault of TestThreeEngines lasts.
const holdFault = 30 * time.Second

// awsStream is a stream of the aws datacenter and the machine of its owner.
type awsStream struct {
	stream string
	owner  *machine
}

// awsDC is the aws datacenter on three engines, as TestThreeEngines runs it.
type awsDC struct {
	t       *testing.T
	secrets *dcSecrets
	m       *machines
	node    map[string]*machine
	streams []awsStream
	apps    []*machine
}

// The aws datacenter on three machines, as the README's "On three
// machines" says: three Docker engines (each in a network namespace of its
// own, joined by a test network that reaches nothing outside them), one
// swarm of three managers only for the overlay network, the images built
// with ./build.sh images on node1's engine and copied to the others with
// docker save | docker load (there is no registry), and each host brought
// up with DOCKER_HOST=… ./build.sh up aws/nodeN. Then, under the
// pipeline's steady load: Consul has three servers and a leader and every
// service passes, and both apps apply both sensors' streams exactly. It
// survives node3 cut off from the other two for 30 s, and node1's engine
// stopped and started again, each case ending with every stream exact
// (applied == last_contiguous == the sensor's last_seq, no gaps, the app's
// state what the sensor's readings make) and nothing lost.
func TestThreeEngines(t *testing.T) {
	needEngines(t)
	began := time.Now()
	m := newMachines(t, 3)
	d := &awsDC{t: t, m: m, node: map[string]*machine{}}
	for _, x := range m.nodes {
		d.node[x.name] = x
	}
	n1, n2, n3 := d.node["node1"], d.node["node2"], d.node["node3"]
	d.streams = []awsStream{{"sensor-aws-node1", n1}, {"sensor-aws-node3", n3}}
	d.apps = []*machine{n2, n3}
	t.Logf("three engines: up and sealed in %s (test network %s0/%d, no route out)", time.Since(began).Round(time.Second), testNetPrefix, testNetBits)

	// The swarm, as the README says: init on node1, the manager join
	// token, node2 and node3 join as managers.
	step := time.Now()
	t.Cleanup(func() {
		for _, x := range m.nodes {
			if x.running() {
				if out, err := x.docker(time.Minute, "swarm", "leave", "--force"); err != nil && !strings.Contains(out, "not part of a swarm") {
					t.Logf("cleanup: %v: %s", err, out)
				}
			}
		}
	})
	n1.dockerMust(t, time.Minute, "swarm", "init", "--advertise-addr", n1.addr)
	token, at := joinCommand(t, n1.dockerMust(t, time.Minute, "swarm", "join-token", "manager"))
	for _, x := range []*machine{n2, n3} {
		x.dockerMust(t, 2*time.Minute, "swarm", "join", "--token", token, at)
	}
	waitFor(t, time.Minute, func() (bool, string) {
		out, err := n1.docker(time.Minute, "node", "ls", "--format", "{{.ManagerStatus}}")
		st := strings.Fields(out)
		return err == nil && len(st) == 3 && slices.Contains(st, "Leader"), fmt.Sprintf("swarm managers: %q %v", st, err)
	})
	t.Logf("three engines: swarm of three managers in %s (init on node1 at %s)", time.Since(step).Round(time.Second), at)

	// The images: ./build.sh images on node1's engine, then docker save |
	// docker load onto the others (the README's alternative to building on
	// each engine).
	step = time.Now()
	n1.buildSh(t, 15*time.Minute, "images")
	built := time.Since(step)
	step = time.Now()
	copyImages(t, n1, m.base, n2, n3)
	t.Logf("three engines: ./build.sh images on node1 took %s; docker save | docker load onto node2 and node3 %s", built.Round(time.Second), time.Since(step).Round(time.Second))

	// The hosts, with the README's command and nothing else. On failure,
	// the containers' logs; their removal is the engines'.
	step = time.Now()
	t.Cleanup(func() {
		if t.Failed() {
			for _, x := range m.nodes {
				if x.running() {
					t.Logf("%s: containers:\n%s", x.name, mustOut(x.docker(time.Minute, "ps", "-a", "--format", "{{.Names}}\t{{.Status}}")))
					for _, c := range strings.Fields(mustOut(x.docker(time.Minute, "ps", "-a", "--format", "{{.Names}}"))) {
						t.Logf("%s: %s (last 15 lines):\n%s", x.name, c, mustOut(x.docker(time.Minute, "logs", "--tail", "15", c)))
						if dir := os.Getenv("DOCKERTEST_LOG_DIR"); dir != "" {
							log, _ := x.docker(time.Minute, "logs", "-t", c)
							_ = os.MkdirAll(filepath.Join(dir, t.Name()), 0o755)
							_ = os.WriteFile(filepath.Join(dir, t.Name(), c+".log"), []byte(log), 0o644)
						}
					}
				}
			}
		}
	})
	// The datacenter's secrets, made once on the operator's machine (this
	// one), as the README says; each up installs its host's share into
	// that host's engine.
	d.secrets = makeSecrets(t, "aws")
	// The overlay is encrypted (IPsec ESP) where the kernel can: one
	// without ESP drops its traffic, so the datacenter would never meet.
	esp, why := kernelHasESP(t)
	if !esp {
		m.env = append(m.env, "DC_OVERLAY_ENCRYPTED=false")
		t.Logf("three engines: this kernel has no IPsec ESP (%s): the overlay runs unencrypted (DC_OVERLAY_ENCRYPTED=false); its encryption is not tested on this machine", why)
	}
	for _, x := range m.nodes {
		x.useSecrets(d.secrets)
	}
	for _, x := range m.nodes {
		x.buildSh(t, 5*time.Minute, "up", "aws/"+x.name)
	}
	// node1's up found no leader; a later one applied the ACLs, or this
	// does (the README's step when none did).
	n3.buildSh(t, 5*time.Minute, "acl", "aws/node3")
	t.Logf("three engines: DOCKER_HOST=… ./build.sh up aws/nodeN for the three, then ./build.sh acl aws/node3, took %s", time.Since(step).Round(time.Second))
	// The overlay network spans the engines: every engine sees it.
	for _, x := range m.nodes {
		if drv := strings.TrimSpace(x.dockerMust(t, time.Minute, "network", "inspect", "-f", "{{.Driver}} {{.Scope}} {{.Attachable}} {{json .Options}}", "svckit-aws")); !strings.HasPrefix(drv, "overlay swarm true ") || strings.Contains(drv, `"encrypted"`) != esp {
			t.Fatalf("%s: network svckit-aws is %q, want an attachable swarm overlay, encrypted: %v", x.name, drv, esp)
		}
	}
	took := d.waitHealthy(m.nodes, 5*time.Minute)
	// The overlay's traffic between the machines is IPsec: each engine's
	// namespace holds ESP states for its peers.
	for _, x := range m.nodes {
		if !esp {
			break
		}
		waitFor(t, time.Minute, func() (bool, string) {
			out, err := ipRun("-n", x.ns, "xfrm", "state")
			return err == nil && strings.Count(out, "proto esp") >= 2, fmt.Sprintf("%s: ip xfrm state: %v\n%s", x.name, err, out)
		})
	}
	t.Logf("three engines: Consul has three servers and a leader, everything passing, %s after up", took.Round(time.Second))
	d.checkContainersSealed()
	d.waitFlowing(3 * time.Minute)
	d.quiesceAndCheck("steady load")
	d.resume()
	setup := time.Since(began)

	// Case 1: node3 cut off from node1 and node2 for holdFault.
	partition := d.partition(n3, n2)
	d.quiesceAndCheck("after the partition")
	d.resume()

	// Case 2: node1's engine stopped (the machine lost) and started again.
	loss := d.nodeLoss(n1, n2)
	d.quiesceAndCheck("after the node loss")

	t.Logf("SUMMARY ThreeEngines: time to exact after the partition (node3, %s) %s, after the node loss (node1's engine stopped %s) %s; setup to first exact check %s; test %s",
		holdFault, partition.Round(100*time.Millisecond), holdFault, loss.Round(100*time.Millisecond), setup.Round(time.Second), time.Since(began).Round(time.Second))
}

// joinCommand finds the token and address in `docker swarm join-token
// manager`'s "docker swarm join --token T ADDR:2377".
func joinCommand(t *testing.T, out string) (token, addr string) {
	t.Helper()
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "--token")
		if len(f) >= 5 && f[0] == "docker" && f[2] == "join" && i >= 0 && i+2 < len(f) {
			return f[i+1], f[len(f)-1]
		}
	}
	t.Fatalf("no join command in docker swarm join-token manager:\n%s", out)
	return "", ""
}

// copyImages saves every svckit/* image of from and loads it into each of
// to (at once).
func copyImages(t *testing.T, from *machine, dir string, to ...*machine) {
	t.Helper()
	refs := strings.Fields(from.dockerMust(t, time.Minute, "images", "--format", "{{.Repository}}:{{.Tag}}", "svckit/*"))
	if len(refs) < len(imageNames) {
		t.Fatalf("%s: ./build.sh images left %v, want every one of %v", from.name, refs, imageNames)
	}
	tar := filepath.Join(dir, "images.tar")
	defer os.Remove(tar)
	from.dockerMust(t, 10*time.Minute, append([]string{"save", "-o", tar}, refs...)...)
	var wg sync.WaitGroup
	errs := make([]error, len(to))
	for i, x := range to {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := x.docker(10*time.Minute, "load", "-q", "-i", tar); err != nil {
				errs[i] = fmt.Errorf("%w: %s", err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// container is the id of the running container of service on x (the one
// docker-compose run started, too).
func (d *awsDC) container(x *machine, service string) (string, error) {
	out, err := x.docker(time.Minute, "ps", "-q", "--filter", "label=com.docker.compose.project=aws-"+x.name,
		"--filter", "label=com.docker.compose.service="+service)
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, out)
	}
	ids := strings.Fields(out)
	if len(ids) != 1 {
		return "", fmt.Errorf("%s: %d running containers of %s (%v)", x.name, len(ids), service, ids)
	}
	return ids[0], nil
}

// probe GETs url from inside the service's container on x with `svckit
// probe --print`: our services' addresses are on the overlay network.
func (d *awsDC) probe(x *machine, service, url string, v any) error {
	id, err := d.container(x, service)
	if err != nil {
		return err
	}
	out, err := x.docker(time.Minute, "exec", id, "/bin/svckit", "probe", "--timeout", "5s", "--print", url)
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", x.name, service, err, firstLine([]byte(out)))
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("%s %s: GET %s: %v: %s", x.name, service, url, err, firstLine([]byte(out)))
	}
	return nil
}

// consulURL is x's Consul as a program on machine x reaches it: the HTTPS
// port the compose file publishes by default (127.0.0.1:850N, in x's
// namespace).
func consulURL(x *machine) string {
	return "https://127.0.0.1:850" + strings.TrimPrefix(x.name, "node")
}

// allServices are the services of the aws datacenter and how many instances
// of each pass when every host is up.
var allServices = map[string]int{"sensor": 2, "worker": 3, "app": 2, "nsqd": 3, "nsqlookupd": 2, "nsqauth": 3}

// healthy says whether x's Consul agent has three raft peers and a leader,
// every check of every node passing, and every service's instances.
func (d *awsDC) healthy(x *machine) (bool, string) {
	var peers []string
	var leader string
	if err := x.getJSON(consulURL(x)+"/v1/status/peers", &peers); err != nil {
		return false, err.Error()
	}
	if err := x.getJSON(consulURL(x)+"/v1/status/leader", &leader); err != nil {
		return false, err.Error()
	}
	if len(peers) != 3 || leader == "" {
		return false, fmt.Sprintf("%s: raft peers %v, leader %q", x.name, peers, leader)
	}
	var checks []struct{ Node, ServiceName, CheckID, Status string }
	if err := x.getJSON(consulURL(x)+"/v1/health/state/any", &checks); err != nil {
		return false, err.Error()
	}
	var bad []string
	for _, c := range checks {
		if c.Status != "passing" {
			bad = append(bad, fmt.Sprintf("%s/%s %s %s", c.Node, c.ServiceName, c.CheckID, c.Status))
		}
	}
	if len(bad) > 0 {
		return false, fmt.Sprintf("%s: not passing: %v", x.name, bad)
	}
	var have []string
	ok := true
	for _, s := range slices.Sorted(maps.Keys(allServices)) {
		var entries []catalogEntry
		if err := x.getJSON(consulURL(x)+"/v1/health/service/"+s+"?passing=1", &entries); err != nil {
			return false, err.Error()
		}
		have = append(have, fmt.Sprintf("%s %d/%d", s, len(entries), allServices[s]))
		ok = ok && len(entries) == allServices[s]
	}
	return ok, fmt.Sprintf("%s: passing %s", x.name, strings.Join(have, ", "))
}

// waitHealthy waits until every agent of nodes is healthy.
func (d *awsDC) waitHealthy(nodes []*machine, timeout time.Duration) time.Duration {
	d.t.Helper()
	start := time.Now()
	waitFor(d.t, timeout, func() (bool, string) {
		for _, x := range nodes {
			if ok, s := d.healthy(x); !ok {
				return false, s
			}
		}
		return true, ""
	})
	return time.Since(start)
}

// leader is x's Consul agent's raft leader ("" if none or no answer).
func leader(x *machine) string {
	var l string
	if err := x.getJSON(consulURL(x)+"/v1/status/leader", &l); err != nil {
		return ""
	}
	return l
}

// checkContainersSealed: a container cannot reach outside either (its
// machine routes nothing out).
func (d *awsDC) checkContainersSealed() {
	d.t.Helper()
	for _, x := range d.m.nodes {
		id, err := d.container(x, "worker")
		if err != nil {
			d.t.Fatal(err)
		}
		for _, a := range outsideAddrs {
			out, err := x.docker(time.Minute, "exec", id, "/bin/svckit", "probe", "--timeout", "3s", "http://"+a+"/")
			if err == nil {
				d.t.Fatalf("%s: the worker's container reached %s: traffic leaves the test network: %s", x.name, a, out)
			}
		}
	}
}

func (d *awsDC) appStreams(x *machine) (map[string]pipetest.AppStream, error) {
	var list []pipetest.AppStream
	if err := d.probe(x, "app", local+"/streams", &list); err != nil {
		return nil, err
	}
	m := map[string]pipetest.AppStream{}
	for _, s := range list {
		m[s.Stream] = s
	}
	return m, nil
}

func (d *awsDC) sensorLastSeq(s awsStream) (uint64, error) {
	var list []pipetest.SensorStream
	if err := d.probe(s.owner, "sensor", local+"/streams", &list); err != nil {
		return 0, err
	}
	for _, e := range list {
		if e.Stream == s.stream {
			return e.LastSeq, nil
		}
	}
	return 0, fmt.Errorf("the sensor on %s does not own %s: %+v", s.owner.name, s.stream, list)
}

// waitFlowing waits until both apps have applied readings of both streams
// beyond what they had.
func (d *awsDC) waitFlowing(timeout time.Duration) {
	d.t.Helper()
	was := map[string]uint64{}
	waitFor(d.t, timeout, func() (bool, string) {
		for _, a := range d.apps {
			s, err := d.appStreams(a)
			if err != nil {
				return false, err.Error()
			}
			for _, st := range d.streams {
				k := a.name + " " + st.stream
				got := s[st.stream].LastContiguous
				if w, ok := was[k]; !ok {
					was[k] = got
					return false, "first look"
				} else if got <= w+10 {
					return false, fmt.Sprintf("app on %s, %s: last_contiguous %d, was %d", a.name, st.stream, got, w)
				}
			}
		}
		return true, ""
	})
}

// lastSeqs reads every sensor's last_seq.
func (d *awsDC) lastSeqs() map[string]uint64 {
	d.t.Helper()
	seqs := map[string]uint64{}
	for _, s := range d.streams {
		waitFor(d.t, 2*time.Minute, func() (bool, string) {
			n, err := d.sensorLastSeq(s)
			seqs[s.stream] = n
			return err == nil, fmt.Sprint(err)
		})
	}
	return seqs
}

// waitExactUnderLoad waits until every app holds, with no gap and each
// applied once, at least target[stream] of every stream, and returns the
// time since since: the time to exact after a fault.
func (d *awsDC) waitExactUnderLoad(since time.Time, target map[string]uint64, timeout time.Duration) time.Duration {
	d.t.Helper()
	waitFor(d.t, timeout, func() (bool, string) {
		for _, a := range d.apps {
			s, err := d.appStreams(a)
			if err != nil {
				return false, err.Error()
			}
			for _, st := range d.streams {
				x := s[st.stream]
				if x.LastContiguous < target[st.stream] || x.Applied != x.LastContiguous || len(x.Gaps) > 0 {
					return false, fmt.Sprintf("app on %s, %s: %v; want at least %d", a.name, st.stream, x, target[st.stream])
				}
			}
		}
		return true, ""
	})
	return time.Since(since)
}

// quiet is the name of a host's quiet sensor (docker-compose run).
func quiet(x *machine) string { return "aws-" + x.name + "_sensor_quiet" }

// quiesceAndCheck stops every sensor (gracefully: it saves its stream's
// snapshot with the last sequence), runs it again with --rate 0 --count 1
// (it publishes one reading, then only serves /streams, /replay and
// /snapshot), and checks that both apps apply every stream exactly up to
// that reading: applied == last_contiguous == the sensor's last_seq, no
// gaps, and the app's state is what the workers make of the sensor's
// readings (pipetest.CheckState's comparison, through svckit probe).
func (d *awsDC) quiesceAndCheck(when string) {
	t := d.t
	t.Helper()
	start := time.Now()
	final := map[string]uint64{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(d.streams))
	for i, s := range d.streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := d.quietSensor(s)
			mu.Lock()
			final[s.stream], errs[i] = n, err
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%s: %v", when, err)
		}
	}
	var lines []string
	for _, st := range d.streams {
		for _, a := range d.apps {
			var got pipetest.AppStream
			waitFor(t, 3*time.Minute, func() (bool, string) {
				s, err := d.appStreams(a)
				if err != nil {
					return false, err.Error()
				}
				got = s[st.stream]
				return got.Exact(final[st.stream]), fmt.Sprintf("%s: app on %s, %s: %v; the sensor's last_seq is %d", when, a.name, st.stream, got, final[st.stream])
			})
			d.checkState(a, st, final[st.stream])
			lines = append(lines, fmt.Sprintf("app on %s, %s: applied %d = last_contiguous = last_seq, no gaps, duplicates skipped %d, state = the sensor's fold", a.name, st.stream, got.Applied, got.Duplicates))
		}
	}
	t.Logf("three engines: exact %s (sensors quiet, checked in %s):\n  %s", when, time.Since(start).Round(time.Second), strings.Join(lines, "\n  "))
}

// quietSensor replaces the owner's sensor by its quiet run and returns the
// stream's final last_seq.
func (d *awsDC) quietSensor(s awsStream) (uint64, error) {
	x := s.owner
	id, err := d.container(x, "sensor")
	if err != nil {
		return 0, err
	}
	// Its stop_grace_period.
	if out, err := x.docker(2*time.Minute, "stop", "-t", "20", id); err != nil {
		return 0, fmt.Errorf("%w: %s", err, out)
	}
	vol := "aws-" + x.name + "_sensor-data"
	dir, err := x.docker(time.Minute, "volume", "inspect", "-f", "{{.Mountpoint}}", vol)
	if err != nil {
		return 0, fmt.Errorf("%w: %s", err, dir)
	}
	stopped, err := pipetest.SavedSnapshotSeq(strings.TrimSpace(dir), s.stream)
	if err != nil || stopped == 0 {
		return 0, fmt.Errorf("%s: the stopped sensor's snapshot of %s: seq %d, %v", x.name, s.stream, stopped, err)
	}
	c := newCompose(d.t, "aws/"+x.name, "aws-"+x.name, d.secrets)
	c.env = x.env()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		out, err := c.run(3*time.Minute, "run", "-d", "--no-deps", "--use-aliases", "--name", quiet(x),
			"-e", "SVCKIT_RATE=0", "-e", "SVCKIT_COUNT=1", "sensor")
		if err == nil {
			break
		}
		// A container's start needs the swarm (a manager with a leader) to
		// attach it to the overlay network: after a fault it may still
		// be electing one.
		if !strings.Contains(out, "Could not attach to network") || time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: %s", err, out)
		}
		d.t.Logf("%s: %s; trying again", x.name, lastLine(out))
		_, _ = x.docker(time.Minute, "rm", "-f", quiet(x))
	}
	want := stopped + 1
	for {
		n, err := d.sensorLastSeq(s)
		if err == nil && n == want {
			return want, nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%s: the quiet sensor's last_seq of %s: %d (%v), want %d (its one reading after %d)", x.name, s.stream, n, err, want, stopped)
		}
		time.Sleep(time.Second)
	}
}

// checkState compares the app's state of the stream with the sensor's
// snapshot: count and Σ value as in the sensor's fold, Σ result = factor ×
// Σ value² (what pipetest.CheckState checks, read through svckit probe).
func (d *awsDC) checkState(app *machine, s awsStream, n uint64) {
	t := d.t
	t.Helper()
	var snap pipetest.SensorSnapshot
	if err := d.probe(s.owner, "sensor", local+"/snapshot?stream="+s.stream, &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Seq != n || snap.State.Count != n || snap.State.Seq != n {
		t.Fatalf("the sensor's snapshot of %s covers seq %d (state %+v), want %d readings", s.stream, snap.Seq, snap.State, n)
	}
	var state map[string]pipeline.Totals
	if err := d.probe(app, "app", local+"/state", &state); err != nil {
		t.Fatal(err)
	}
	if got, want := state[s.stream], pipeline.TotalsOf(snap.State, workerFactor); got != want {
		t.Fatalf("app on %s: state of %s differs from what the pipeline makes of the sensor's readings:\n app  %+v\n want %+v", app.name, s.stream, got, want)
	}
}

// resume replaces every quiet sensor by the host's own sensor again and
// waits until both streams flow to both apps.
func (d *awsDC) resume() {
	t := d.t
	t.Helper()
	for _, s := range d.streams {
		x := s.owner
		x.dockerMust(t, 2*time.Minute, "stop", "-t", "20", quiet(x))
		x.dockerMust(t, time.Minute, "rm", "-v", quiet(x))
		ids := strings.Fields(x.dockerMust(t, time.Minute, "ps", "-aq", "--filter", "label=com.docker.compose.project=aws-"+x.name,
			"--filter", "label=com.docker.compose.service=sensor", "--filter", "label=com.docker.compose.oneoff=False"))
		if len(ids) != 1 {
			t.Fatalf("%s: sensor containers %v, want one", x.name, ids)
		}
		waitFor(t, 3*time.Minute, func() (bool, string) {
			out, err := x.docker(2*time.Minute, "start", ids[0])
			if err != nil && !strings.Contains(out, "Could not attach to network") {
				t.Fatalf("%v: %s", err, out)
			}
			return err == nil, fmt.Sprintf("%s: docker start %s: %s", x.name, ids[0], lastLine(out))
		})
	}
	d.waitFlowing(3 * time.Minute)
}

// partition cuts x off from the other machines for holdFault, under load,
// and heals it; it returns the time to exact after the heal. watch is a
// machine of the majority.
func (d *awsDC) partition(x, watch *machine) time.Duration {
	t := d.t
	t.Helper()
	others := slices.DeleteFunc(slices.Clone(d.m.nodes), func(y *machine) bool { return y == x })
	var ownStream, otherStream awsStream
	for _, s := range d.streams {
		if s.owner == x {
			ownStream = s
		} else {
			otherStream = s
		}
	}
	a0, err := d.appStreams(watch)
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	x.cut(t)
	t.Logf("three engines: %s cut off from %s and %s", x.name, others[0].name, others[1].name)
	// The majority elects a leader if it had none (node3's was) and keeps
	// it; its pipeline flows. The cut-off sensor stops assigning sequence
	// numbers once it cannot renew its claim (within 10 s): two reads, 15 s
	// and holdFault-3s into the cut, agree.
	var paused []uint64
	var seen []string // the watching app's view of the majority's stream, every poll
	noLeader := d.hold(cut, others, func(into time.Duration) {
		if s, err := d.appStreams(watch); err == nil {
			x := s[otherStream.stream]
			seen = append(seen, fmt.Sprintf("%s: %d/%d gaps %v", into.Round(time.Second), x.LastContiguous, x.Applied, x.Gaps))
		}
		if len(paused) < 2 && into >= []time.Duration{15 * time.Second, holdFault - 3*time.Second}[len(paused)] {
			n, err := d.sensorLastSeq(ownStream)
			if err != nil {
				t.Fatal(err)
			}
			paused = append(paused, n)
		}
	})
	for len(paused) < 2 { // a slow poll skipped a read
		n, err := d.sensorLastSeq(ownStream)
		if err != nil {
			t.Fatal(err)
		}
		paused = append(paused, n)
	}
	a1, err := d.appStreams(watch)
	if err != nil {
		t.Fatal(err)
	}
	x.heal(t)
	healed := time.Now()
	grew := a1[otherStream.stream].Applied - a0[otherStream.stream].Applied
	contiguous := a1[otherStream.stream].LastContiguous - a0[otherStream.stream].LastContiguous
	if len(paused) != 2 || paused[1] != paused[0] {
		t.Errorf("the sensor on %s cut off from Consul went on assigning sequence numbers of %s: last_seq %v 15 s and %s into the cut",
			x.name, ownStream.stream, paused, holdFault-3*time.Second)
	}
	if grew < 100 {
		t.Errorf("during the partition the app on %s applied only %d readings of %s (the majority's pipeline should flow); last_contiguous/applied as it went: %s",
			watch.name, grew, otherStream.stream, strings.Join(seen, "; "))
	}
	t.Logf("three engines: during the partition the app on %s applied %d readings of %s; its last_contiguous advanced %d (readings in flight to the cut-off worker wait for the heal or nsqd's message timeout)",
		watch.name, grew, otherStream.stream, contiguous)
	took := d.waitExactUnderLoad(healed, d.lastSeqs(), 5*time.Minute)
	healthy := d.waitHealthy(d.m.nodes, 5*time.Minute)
	d.waitSwarm(healed, 5*time.Minute)
	t.Logf("three engines: partition: %s cut off %s; the majority %s; its app on %s applied %d readings of %s meanwhile; the cut-off sensor paused (last_seq %v); exact again %s after the heal; everything passing %s after that",
		x.name, healed.Sub(cut).Round(100*time.Millisecond), noLeader, watch.name, grew, otherStream.stream, paused, took.Round(100*time.Millisecond), healthy.Round(time.Second))
	return took
}

// nodeLoss stops x's engine (dockerd stops its containers, as a machine
// shutting down), keeps it down for holdFault, starts it again and returns
// the time from the engine's start to exact. watch is a surviving machine.
func (d *awsDC) nodeLoss(x, watch *machine) time.Duration {
	t := d.t
	t.Helper()
	var otherStream awsStream
	for _, s := range d.streams {
		if s.owner != x {
			otherStream = s
		}
	}
	a0, err := d.appStreams(watch)
	if err != nil {
		t.Fatal(err)
	}
	lost := time.Now()
	x.stop(t, 2*time.Minute)
	stopped := time.Since(lost)
	survivors := slices.DeleteFunc(slices.Clone(d.m.nodes), func(y *machine) bool { return y == x })
	noLeader := d.hold(lost, survivors, nil)
	a1, err := d.appStreams(watch)
	if err != nil {
		t.Fatal(err)
	}
	grew := a1[otherStream.stream].Applied - a0[otherStream.stream].Applied
	if grew < 100 {
		t.Errorf("without %s the app on %s applied only %d readings of %s", x.name, watch.name, grew, otherStream.stream)
	}
	started := time.Now()
	x.start(t)
	// A restarted engine of the swarm answers only once it has restarted
	// its containers, each attached to the overlay by the swarm's leader:
	// minutes on a loaded machine.
	x.waitReady(t, 6*time.Minute)
	ready := time.Since(started)
	// dockerd restarts its containers as it starts (restart:
	// unless-stopped). Once in four full runs it left all of them exited
	// instead (restored, presumably, before the swarm could attach them to
	// the overlay); then the test does what a machine's boot should do
	// anyway, and says so.
	if states, ok := d.projectRunning(x, 2*time.Minute); !ok {
		t.Logf("three engines: %s's engine left its containers exited after its start (%s); engine log:\n%s\n./build.sh up aws/%s again, as a machine's boot would",
			x.name, states, x.logTail(40), x.name)
		x.buildSh(t, 5*time.Minute, "up", "aws/"+x.name)
	}
	took := d.waitExactUnderLoad(started, d.lastSeqs(), 5*time.Minute)
	healthy := d.waitHealthy(d.m.nodes, 5*time.Minute)
	d.waitSwarm(started, 5*time.Minute)
	t.Logf("three engines: node loss: %s's engine stopped in %s (its containers with it), down %s; the others %s; the app on %s applied %d readings of %s meanwhile; the engine answered %s after its start; exact %s after its start; everything passing %s after that",
		x.name, stopped.Round(100*time.Millisecond), started.Sub(lost).Round(time.Second), noLeader, watch.name, grew, otherStream.stream, ready.Round(100*time.Millisecond), took.Round(100*time.Millisecond), healthy.Round(time.Second))
	return took
}

// projectRunning waits up to timeout until every container of x's compose
// project runs, and returns their states.
func (d *awsDC) projectRunning(x *machine, timeout time.Duration) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		out, err := x.docker(time.Minute, "ps", "-a", "--filter", "label=com.docker.compose.project=aws-"+x.name, "--format", "{{.Names}}={{.State}}")
		states := strings.Fields(out)
		running := err == nil && len(states) > 0
		for _, st := range states {
			running = running && strings.HasSuffix(st, "=running")
		}
		if running || time.Now().After(deadline) {
			return strings.Join(states, " "), running
		}
		time.Sleep(2 * time.Second) // polling the engine with a deadline
	}
}

// leaderGrace bounds how long the machines that stay together may be
// without a Consul leader after a fault begins: an election (if the lost
// machine held the leadership) takes seconds, and took more than 15 once
// (2026-12-07) with the whole test suite loading two cores.
const leaderGrace = 30 * time.Second

// hold polls, about every second until holdFault has passed since from,
// that the Consul agents of nodes agree on a leader, calling each (if not
// nil) with the time since from; it fails the test if they have none
// leaderGrace after from, and says how long they had none.
func (d *awsDC) hold(from time.Time, nodes []*machine, each func(into time.Duration)) string {
	t := d.t
	t.Helper()
	var last time.Duration = -1 // the last poll without an agreed leader
	var seen string
	for {
		into := time.Since(from)
		if into >= holdFault {
			break
		}
		var ls []string
		for _, y := range nodes {
			ls = append(ls, leader(y))
		}
		if ls[0] == "" || slices.ContainsFunc(ls, func(l string) bool { return l != ls[0] }) {
			last = into
			if into > leaderGrace {
				t.Fatalf("no Consul leader agreed on by %s %s into the fault: %q", names(nodes), into.Round(time.Second), ls)
			}
		} else {
			seen = ls[0]
		}
		if each != nil {
			each(into)
		}
		next := time.Second - time.Since(from.Add(into))
		time.Sleep(min(max(next, 0), holdFault-time.Since(from)))
	}
	if seen == "" {
		t.Fatalf("%s never agreed on a Consul leader during the fault", names(nodes))
	}
	if last < 0 {
		return fmt.Sprintf("(%s) kept their Consul leader %s throughout", names(nodes), seen)
	}
	return fmt.Sprintf("(%s) were without an agreed Consul leader until %s into the fault, then had %s", names(nodes), last.Round(100*time.Millisecond), seen)
}

func names(nodes []*machine) string {
	var n []string
	for _, y := range nodes {
		n = append(n, y.name)
	}
	return strings.Join(n, ", ")
}

// waitSwarm waits until every engine's swarm has three managers, all
// ready, one of them the leader (a container's start needs it: the overlay
// attachment comes from the swarm's leader), and logs the time since from.
func (d *awsDC) waitSwarm(from time.Time, timeout time.Duration) {
	d.t.Helper()
	waitFor(d.t, timeout, func() (bool, string) {
		for _, x := range d.m.nodes {
			out, err := x.docker(time.Minute, "node", "ls", "--format", "{{.Status}} {{.ManagerStatus}}")
			if err != nil {
				return false, fmt.Sprintf("%s: swarm: %s", x.name, lastLine(out))
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != 3 || strings.Count(out, "Ready") != 3 || strings.Count(out, "Leader") != 1 || strings.Count(out, "Reachable") != 2 {
				return false, fmt.Sprintf("%s: swarm managers %q", x.name, lines)
			}
		}
		return true, ""
	})
	d.t.Logf("three engines: the swarm has its three managers and a leader again, %s after the fault ended", time.Since(from).Round(time.Second))
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
