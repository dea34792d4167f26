package registry_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/registry"
	"github.com/svckit/svckit/svckit/testenv"
)

// Generous: consul and other test packages share a small, busy machine.
const waitLong = 60 * time.Second

// healthServer serves GET /health with 200 on a free loopback port and
// counts the requests (Consul's HTTP check calls it).
type healthServer struct {
	*httptest.Server
	hits atomic.Int64
	port int
}

func newHealthServer(t *testing.T) *healthServer {
	t.Helper()
	h := &healthServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, _ *http.Request) {
		h.hits.Add(1)
		_, _ = w.Write([]byte("OK\n"))
	})
	h.Server = httptest.NewServer(mux) // binds 127.0.0.1:0
	t.Cleanup(h.Close)
	_, p, err := net.SplitHostPort(h.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	h.port, _ = strconv.Atoi(p)
	return h
}

// runRegistrar starts r.Run and returns a func that stops it and waits until
// Run returned (also registered as cleanup).
func runRegistrar(t *testing.T, r *registry.Registrar) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(waitLong):
			t.Errorf("Registrar.Run did not return within %s of its context ending", waitLong)
		}
	}
	t.Cleanup(stop)
	return stop
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var sum float64
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			return sum
		}
	}
	return 0
}

func newRegistration(name string, h *healthServer) registry.Registration {
	return registry.Registration{
		ID:            name + "-127.0.0.1-" + strconv.Itoa(h.port),
		Name:          name,
		Address:       "127.0.0.1",
		Port:          h.port,
		Tags:          []string{"blue", "stream=s1"},
		Meta:          map[string]string{"version": "1.2.3", "zone": "test"},
		CheckHTTP:     h.URL + "/health",
		CheckInterval: 500 * time.Millisecond,
	}
}

// waitCatalog waits until the catalog has exactly one instance of name with
// the registration's fields, and returns it.
func waitCatalog(t *testing.T, c *testenv.Consul, reg registry.Registration) *api.CatalogService {
	t.Helper()
	var got *api.CatalogService
	testenv.WaitFor(t, waitLong, "catalog entry of "+reg.ID, func() bool {
		svcs, _, err := c.Client.Catalog().Service(reg.Name, "", nil)
		if err != nil || len(svcs) != 1 {
			return false
		}
		got = svcs[0]
		return true
	})
	return got
}

func TestRegistrarRegistersAndDeregisters(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	h := newHealthServer(t)
	reg := newRegistration("regtest", h)
	m := metrics.New("regtest", "1.2.3")
	r := registry.New(consul.Client, reg, registry.Options{VerifyInterval: 200 * time.Millisecond, Metrics: m})
	if r.ID() != reg.ID {
		t.Fatalf("ID() = %q, want %q", r.ID(), reg.ID)
	}
	if err := r.Registered(); err == nil {
		t.Fatal("Registered() is nil before Run")
	}
	stop := runRegistrar(t, r)

	testenv.WaitFor(t, waitLong, "Registered() == nil", func() bool { return r.Registered() == nil })

	cs := waitCatalog(t, consul, reg)
	if cs.ServiceID != reg.ID || cs.ServiceName != reg.Name || cs.ServiceAddress != reg.Address || cs.ServicePort != reg.Port {
		t.Errorf("catalog entry: id %q name %q addr %q port %d; want %q %q %q %d",
			cs.ServiceID, cs.ServiceName, cs.ServiceAddress, cs.ServicePort, reg.ID, reg.Name, reg.Address, reg.Port)
	}
	if !slices.Equal(cs.ServiceTags, reg.Tags) {
		t.Errorf("catalog tags = %q, want %q", cs.ServiceTags, reg.Tags)
	}
	for k, v := range reg.Meta {
		if cs.ServiceMeta[k] != v {
			t.Errorf("catalog meta %s = %q, want %q (meta %v)", k, cs.ServiceMeta[k], v, cs.ServiceMeta)
		}
	}

	// The HTTP check really calls our /health and passes.
	entries := testenv.WaitPassing(t, consul, reg.Name, 1)
	if entries[0].Service.ID != reg.ID {
		t.Fatalf("passing instance %q, want %q", entries[0].Service.ID, reg.ID)
	}
	var check *api.HealthCheck
	for _, c := range entries[0].Checks {
		if c.ServiceID == reg.ID {
			check = c
		}
	}
	if check == nil || check.Status != api.HealthPassing || check.Type != "http" {
		t.Fatalf("service check = %+v, want a passing http check", check)
	}
	if h.hits.Load() == 0 {
		t.Fatal("consul reports the check passing but never called /health")
	}
	if err := r.Registered(); err != nil {
		t.Fatalf("Registered() after registration: %v", err)
	}
	if got := counterValue(t, m.Registry, "svckit_consul_registrations_total"); got < 1 {
		t.Errorf("svckit_consul_registrations_total = %v, want >= 1", got)
	}

	// Documented order: stop Run (it would register again), then Deregister.
	stop()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := r.Deregister(ctx); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	if err := r.Registered(); err == nil {
		t.Fatal("Registered() is nil after Deregister")
	}
	if _, _, err := consul.Client.Agent().Service(reg.ID, nil); err == nil {
		t.Fatal("agent still knows the service after Deregister")
	}
	testenv.WaitFor(t, waitLong, "catalog to drop "+reg.ID, func() bool {
		svcs, _, err := consul.Client.Catalog().Service(reg.Name, "", nil)
		return err == nil && len(svcs) == 0
	})
}

// An agent that lost the registration (here: removed behind the Registrar's
// back, as an agent restart with -dev does) gets it back within seconds.
func TestRegistrarReregistersWhenAgentForgets(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	h := newHealthServer(t)
	reg := newRegistration("regforget", h)
	m := metrics.New("regforget", "1.2.3")
	r := registry.New(consul.Client, reg, registry.Options{VerifyInterval: 200 * time.Millisecond, Metrics: m})
	runRegistrar(t, r)
	testenv.WaitPassing(t, consul, reg.Name, 1)
	before := counterValue(t, m.Registry, "svckit_consul_registrations_total")

	if err := consul.Client.Agent().ServiceDeregister(reg.ID); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	testenv.WaitFor(t, waitLong, "the Registrar to register again", func() bool {
		_, _, err := consul.Client.Agent().Service(reg.ID, nil)
		return err == nil
	})
	t.Logf("registered again %s after the agent lost it", time.Since(start).Round(time.Millisecond))
	testenv.WaitPassing(t, consul, reg.Name, 1)
	if err := r.Registered(); err != nil {
		t.Fatalf("Registered() = %v after re-registration", err)
	}
	if after := counterValue(t, m.Registry, "svckit_consul_registrations_total"); after <= before {
		t.Errorf("registrations counter %v -> %v: no re-registration counted", before, after)
	}
}

func TestRegistrarSurvivesConsulRestart(t *testing.T) {
	t.Parallel()
	consul := testenv.StartConsul(t)
	h := newHealthServer(t)
	reg := newRegistration("regrestart", h)
	m := metrics.New("regrestart", "1.2.3")
	r := registry.New(consul.Client, reg, registry.Options{
		VerifyInterval: 200 * time.Millisecond,
		MaxBackoff:     time.Second,
		Metrics:        m,
	})
	runRegistrar(t, r)
	testenv.WaitPassing(t, consul, reg.Name, 1)
	if err := r.Registered(); err != nil {
		t.Fatalf("Registered() = %v", err)
	}

	// While the agent is down, readiness reports the registration as unknown.
	if err := consul.Stop(); err != nil {
		t.Fatalf("stopping consul: %v", err)
	}
	testenv.WaitFor(t, waitLong, "Registered() to report an error while consul is down", func() bool {
		return r.Registered() != nil
	})
	if err := r.Registered(); err == nil || errors.Is(err, context.Canceled) {
		t.Fatalf("Registered() while consul is down = %v", err)
	} else {
		t.Logf("Registered() while consul is down: %v", err)
	}
	if got := counterValue(t, m.Registry, "svckit_consul_registration_errors_total"); got < 1 {
		t.Errorf("svckit_consul_registration_errors_total = %v while consul is down", got)
	}

	// A restarted dev agent knows no services: the Registrar registers again.
	consul.Start(t)
	up := time.Now()
	testenv.WaitFor(t, waitLong, "the Registrar to register with the restarted agent", func() bool {
		_, _, err := consul.Client.Agent().Service(reg.ID, nil)
		return err == nil && r.Registered() == nil
	})
	t.Logf("registered again %s after the agent came back", time.Since(up).Round(time.Millisecond))
	if d := time.Since(up); d > 20*time.Second {
		t.Errorf("re-registration took %s: MaxBackoff is 1s and VerifyInterval 200ms", d)
	}
	cs := waitCatalog(t, consul, reg)
	if cs.ServiceID != reg.ID || cs.ServicePort != reg.Port || cs.ServiceMeta["version"] != "1.2.3" {
		t.Errorf("catalog after restart: %+v", cs)
	}
	testenv.WaitPassing(t, consul, reg.Name, 1)
}
