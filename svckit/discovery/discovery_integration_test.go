package discovery_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/testenv"
)

// Generous: consul and other test packages share a small, busy machine.
const waitLong = 60 * time.Second

func ids(set []discovery.Instance) []string {
	out := make([]string, 0, len(set))
	for _, in := range set {
		out = append(out, in.ID)
	}
	return out
}

func hasID(set []discovery.Instance, id string) bool { return slices.Contains(ids(set), id) }

// nextSet waits for the next set on ch that satisfies cond.
func nextSet(t *testing.T, ch <-chan []discovery.Instance, what string, cond func([]discovery.Instance) bool) []discovery.Instance {
	t.Helper()
	timer := time.NewTimer(waitLong)
	defer timer.Stop()
	var last []discovery.Instance
	for {
		select {
		case set := <-ch:
			last = set
			if cond(set) {
				return set
			}
		case <-timer.C:
			t.Fatalf("timed out after %s waiting for a subscribed set with %s (last set %q)", waitLong, what, ids(last))
			return nil
		}
	}
}

func discoveryErrors(t *testing.T, reg *prometheus.Registry, service string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "svckit_discovery_errors_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "service" && l.GetValue() == service {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func ttlService(id, name string, port int, status string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{
		ID: id, Name: name, Address: "127.0.0.1", Port: port,
		Tags: []string{"stream=" + id},
		Meta: map[string]string{"http_port": fmt.Sprint(port + 1)},
		Check: &api.AgentServiceCheck{
			CheckID: id + ":ttl",
			TTL:     "10m",
			Status:  status,
		},
	}
}

func TestWatcherFollowsConsul(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	m := metrics.New("disctest", "")
	d := discovery.New(consul.Client, discovery.Options{Metrics: m})
	t.Cleanup(d.Stop)
	const name = "disc-follow"
	w := d.Watch(name)
	if w.Service() != name {
		t.Fatalf("Service() = %q", w.Service())
	}
	if d.Watch(name) != w {
		t.Fatal("Watch twice returned two watchers")
	}

	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := w.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if err := w.Healthy(); err != nil {
		t.Fatalf("Healthy after the first answer: %v", err)
	}
	if err := d.Healthy(); err != nil {
		t.Fatalf("Discovery.Healthy after the first answer: %v", err)
	}
	if got := w.Instances(); len(got) != 0 {
		t.Fatalf("instances of an unknown service: %q", ids(got))
	}
	ch, unsubscribe := w.Subscribe()
	defer unsubscribe()
	// The current set arrives at once.
	nextSet(t, ch, "the current (empty) set", func(s []discovery.Instance) bool { return len(s) == 0 })

	// Registered with a critical TTL check: not passing, not in the cache.
	testenv.Register(t, consul, ttlService("disc-a", name, 7001, api.HealthCritical))
	// Passing: in the cache quickly, and subscribers get the new set.
	start := time.Now()
	if err := consul.Client.Agent().UpdateTTL("disc-a:ttl", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	set := nextSet(t, ch, "disc-a", func(s []discovery.Instance) bool { return hasID(s, "disc-a") })
	t.Logf("passing instance seen by the subscriber after %s", time.Since(start).Round(time.Millisecond))
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("the watcher took %s to see a passing instance (blocking query should answer at once)", d)
	}
	if len(set) != 1 {
		t.Fatalf("set = %q, want [disc-a]", ids(set))
	}
	in := set[0]
	if in.Service != name || in.Address != "127.0.0.1" || in.Port != 7001 || in.Addr() != "127.0.0.1:7001" ||
		!in.HasTag("stream=disc-a") || in.Node != consul.NodeName {
		t.Errorf("instance = %+v", in)
	}
	if a, ok := in.MetaAddr("http_port"); !ok || a != "127.0.0.1:7002" {
		t.Errorf("MetaAddr(http_port) = %q %v", a, ok)
	}
	if _, ok := in.MetaAddr("nope"); ok {
		t.Error("MetaAddr of a missing key reported ok")
	}
	if !hasID(w.Instances(), "disc-a") {
		t.Fatalf("Instances() = %q after the subscriber saw disc-a", ids(w.Instances()))
	}

	// A second instance with a real HTTP check.
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("OK")) }))
	t.Cleanup(hs.Close)
	testenv.Register(t, consul, &api.AgentServiceRegistration{
		ID: "disc-b", Name: name, Address: "127.0.0.1", Port: 7003,
		Check: &api.AgentServiceCheck{HTTP: hs.URL + "/health", Interval: "500ms", Timeout: "1s"},
	})
	set = nextSet(t, ch, "disc-a and disc-b", func(s []discovery.Instance) bool {
		return hasID(s, "disc-a") && hasID(s, "disc-b")
	})
	if !slices.Equal(ids(set), []string{"disc-a", "disc-b"}) {
		t.Fatalf("set = %q, want sorted [disc-a disc-b]", ids(set))
	}

	// The HTTP check fails when its server is gone: disc-b leaves the passing set.
	hs.Close()
	set = nextSet(t, ch, "disc-b gone after its HTTP server closed", func(s []discovery.Instance) bool { return !hasID(s, "disc-b") })
	if !slices.Equal(ids(set), []string{"disc-a"}) {
		t.Fatalf("set = %q, want [disc-a]", ids(set))
	}

	// Critical TTL: disc-a leaves the passing set.
	if err := consul.Client.Agent().UpdateTTL("disc-a:ttl", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	nextSet(t, ch, "disc-a gone after its check went critical", func(s []discovery.Instance) bool { return !hasID(s, "disc-a") })
	if got := w.Instances(); len(got) != 0 {
		t.Fatalf("Instances() = %q, want none passing", ids(got))
	}

	// Passing again, then deregistered: gone.
	if err := consul.Client.Agent().UpdateTTL("disc-a:ttl", "ok", api.HealthPassing); err != nil {
		t.Fatal(err)
	}
	nextSet(t, ch, "disc-a back", func(s []discovery.Instance) bool { return hasID(s, "disc-a") })
	if err := consul.Client.Agent().ServiceDeregister("disc-a"); err != nil {
		t.Fatal(err)
	}
	nextSet(t, ch, "disc-a deregistered", func(s []discovery.Instance) bool { return !hasID(s, "disc-a") })

	// WaitFor sees the next change too.
	go func() {
		_ = consul.Client.Agent().ServiceRegister(ttlService("disc-c", name, 7005, api.HealthPassing))
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), waitLong)
	defer wcancel()
	got, err := w.WaitFor(wctx, func(s []discovery.Instance) bool { return hasID(s, "disc-c") })
	if err != nil || !hasID(got, "disc-c") {
		t.Fatalf("WaitFor(disc-c) = %q, %v", ids(got), err)
	}
	if n := discoveryErrors(t, m.Registry, name); n != 0 {
		t.Errorf("discovery errors = %v with a healthy agent", n)
	}
	if err := w.Healthy(); err != nil {
		t.Fatalf("Healthy: %v", err)
	}
}

func TestWatcherKeepsLastKnownSetWhileConsulDown(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	m := metrics.New("disctest", "")
	// WaitTime bounds how long the first query after the restart can block
	// on the dead agent's (possibly higher) index: see
	// TestWatcherRecoversWhenIndexGoesBackwards for that case.
	d := discovery.New(consul.Client, discovery.Options{Metrics: m, MaxBackoff: time.Second, WaitTime: 5 * time.Second})
	t.Cleanup(d.Stop)
	const name = "disc-outage"
	w := d.Watch(name)
	testenv.Register(t, consul, ttlService("disc-x", name, 7101, api.HealthPassing))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := w.WaitFor(ctx, func(s []discovery.Instance) bool { return hasID(s, "disc-x") }); err != nil {
		t.Fatal(err)
	}
	if err := d.Healthy(); err != nil {
		t.Fatal(err)
	}

	if err := consul.Stop(); err != nil {
		t.Fatalf("stopping consul: %v", err)
	}
	testenv.WaitFor(t, waitLong, "Healthy() to report an error while consul is down", func() bool {
		return w.Healthy() != nil && d.Healthy() != nil
	})
	t.Logf("Healthy() while down: %v", w.Healthy())
	if !strings.Contains(w.Healthy().Error(), name) {
		t.Errorf("Healthy() does not name the service: %v", w.Healthy())
	}
	// The last known good set keeps being served, across several failed queries.
	errsAtStop := discoveryErrors(t, m.Registry, name)
	testenv.WaitFor(t, waitLong, "more failed queries while consul is down", func() bool {
		if !slices.Equal(ids(w.Instances()), []string{"disc-x"}) {
			t.Fatalf("Instances() = %q while consul is down, want the last known [disc-x]", ids(w.Instances()))
		}
		return discoveryErrors(t, m.Registry, name) >= errsAtStop+2
	})
	if !slices.Equal(ids(w.Instances()), []string{"disc-x"}) {
		t.Fatalf("Instances() = %q while consul is down", ids(w.Instances()))
	}

	// The restarted dev agent knows nothing: register again; discovery recovers.
	consul.Start(t)
	up := time.Now()
	testenv.Register(t, consul, ttlService("disc-x", name, 7101, api.HealthPassing))
	testenv.Register(t, consul, ttlService("disc-y", name, 7103, api.HealthPassing))
	testenv.WaitFor(t, waitLong, "discovery to recover and see both instances", func() bool {
		return w.Healthy() == nil && d.Healthy() == nil &&
			slices.Equal(ids(w.Instances()), []string{"disc-x", "disc-y"})
	})
	t.Logf("discovery recovered %s after the agent came back", time.Since(up).Round(time.Millisecond))
}

// After a dev agent restarts, its raft indexes start again from the bottom:
// the index the watcher remembers from the old agent can be far above
// anything the new agent has. The first query after the outage must not block
// on that stale index for WaitTime (30s by default) while Healthy() keeps
// reporting the outage and Instances() the old set.
func TestWatcherRecoversWhenIndexGoesBackwards(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	d := discovery.New(consul.Client, discovery.Options{MaxBackoff: time.Second}) // default WaitTime 30s
	t.Cleanup(d.Stop)
	const name = "disc-index"
	w := d.Watch(name)
	// Push the service's index up: 30 registrations and deregistrations.
	for i := range 30 {
		testenv.Register(t, consul, ttlService(fmt.Sprint("filler-", i), name, 7200+2*i, api.HealthPassing))
	}
	for i := range 30 {
		if err := consul.Client.Agent().ServiceDeregister(fmt.Sprint("filler-", i)); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Register(t, consul, ttlService("disc-x", name, 7101, api.HealthPassing))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if _, err := w.WaitFor(ctx, func(s []discovery.Instance) bool {
		return slices.Equal(ids(s), []string{"disc-x"})
	}); err != nil {
		t.Fatal(err)
	}
	_, before, err := consul.Client.Health().Service(name, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}

	if err := consul.Stop(); err != nil {
		t.Fatalf("stopping consul: %v", err)
	}
	testenv.WaitFor(t, waitLong, "Healthy() to report the outage", func() bool { return w.Healthy() != nil })
	consul.Start(t)
	up := time.Now()
	testenv.Register(t, consul, ttlService("disc-y", name, 7103, api.HealthPassing))
	_, after, err := consul.Client.Health().Service(name, "", true, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("index of %q: %d before the restart, %d after", name, before.LastIndex, after.LastIndex)
	if after.LastIndex >= before.LastIndex {
		t.Skipf("the new agent's index %d already passed the old %d: scenario not reproduced", after.LastIndex, before.LastIndex)
	}
	const bound = 10 * time.Second // well below WaitTime (30s)
	if !testenv.Eventually(bound, func() bool {
		return w.Healthy() == nil && slices.Equal(ids(w.Instances()), []string{"disc-y"})
	}) {
		t.Fatalf("%s after the agent came back: Healthy() = %v, Instances() = %q; want nil and [disc-y]",
			bound, w.Healthy(), ids(w.Instances()))
	}
	t.Logf("recovered %s after the agent came back", time.Since(up).Round(time.Millisecond))
}

// A watcher against a dead agent backs off instead of hot-looping.
func TestWatcherBacksOffAgainstDeadAgent(t *testing.T) {
	t.Parallel()
	port := testenv.FreePort(t) // free a moment ago: nothing listens there
	cfg := api.DefaultConfig()
	cfg.Address = testenv.Addr(port)
	cfg.Scheme = "http"
	cfg.Token, cfg.TokenFile = "", ""
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := metrics.New("disctest", "")
	d := discovery.New(client, discovery.Options{Metrics: m}) // default backoff 100ms..5s
	const name = "disc-dead"
	w := d.Watch(name)

	const window = 2 * time.Second
	deadline := time.Now().Add(window)
	ticker := time.NewTicker(50 * time.Millisecond)
	var n float64
	for time.Now().Before(deadline) {
		<-ticker.C
		n = discoveryErrors(t, m.Registry, name)
		if n >= 30 {
			ticker.Stop()
			t.Fatalf("%v failed queries in less than %s against a dead agent: no backoff", n, window)
		}
	}
	ticker.Stop()
	d.Stop()
	n = discoveryErrors(t, m.Registry, name)
	t.Logf("%v failed queries in %s", n, window)
	if n < 2 {
		t.Fatalf("%v failed queries in %s: the watcher does not retry", n, window)
	}
	if n >= 30 {
		t.Fatalf("%v failed queries in %s: no backoff", n, window)
	}
	if err := w.Healthy(); err == nil {
		t.Fatal("Healthy() is nil against a dead agent")
	}
	if err := d.Healthy(); err == nil {
		t.Fatal("Discovery.Healthy() is nil against a dead agent")
	}
	if len(w.Instances()) != 0 {
		t.Fatalf("instances from a dead agent: %q", ids(w.Instances()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.WaitReady(ctx); err == nil {
		t.Fatal("WaitReady succeeded without any answer")
	}
}
