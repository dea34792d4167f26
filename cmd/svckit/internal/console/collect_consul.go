package console

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/service"
)

// consulParallel bounds the console's concurrent questions to Consul:
// one per service name, and a datacenter may have many.
const consulParallel = 8

// consulView is what one read of Consul's catalog found: the services as
// the state shows them, and every instance as the requests need it.
type consulView struct {
	services  []Service
	instances []discovery.Instance // every instance, whatever its health
	health    map[string]string    // instance id → its health
}

// consulMemory is the last good view, kept while Consul does not answer.
type consulMemory struct {
	view      consulView
	err       error
	downSince time.Time
	lastOK    time.Time
}

func (m *consulMemory) source() Source {
	s := Source{OK: m.err == nil, DownSince: since(m.downSince), LastOK: since(m.lastOK)}
	if m.err != nil {
		s.Error = m.err.Error()
	}
	return s
}

// readConsul reads the catalog (every service, every instance with its
// checks, passing or not: a failing instance is shown, not hidden) and
// returns it, or the last good view when Consul did not answer.
func (c *collector) readConsul(ctx context.Context, now time.Time) consulView {
	cctx, cancel := context.WithTimeout(ctx, RequestTimeout)
	defer cancel()
	view, err := readCatalog(cctx, c.o.Consul)
	m := &c.consul
	if err != nil {
		if m.err == nil {
			m.downSince = now
		}
		m.err = err
		return m.view
	}
	m.view, m.err, m.downSince, m.lastOK = view, nil, time.Time{}, now
	return view
}

func readCatalog(ctx context.Context, client *api.Client) (consulView, error) {
	q := (&api.QueryOptions{}).WithContext(ctx)
	names, _, err := client.Catalog().Services(q)
	if err != nil {
		return consulView{}, fmt.Errorf("reading Consul's catalog: %w", err)
	}
	list := sortedKeys(names)
	entries := make([][]*api.ServiceEntry, len(list))
	errs := make([]error, len(list))
	sem := make(chan struct{}, consulParallel)
	var wg sync.WaitGroup
	for i, name := range list {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			entries[i], _, errs[i] = client.Health().Service(name, "", false, q)
		}()
	}
	wg.Wait()
	view := consulView{services: make([]Service, 0, len(list)), health: map[string]string{}}
	for i, name := range list {
		if errs[i] != nil {
			return consulView{}, fmt.Errorf("reading the instances of %s from Consul: %w", name, errs[i])
		}
		svc := Service{Name: name, Health: api.HealthPassing, Instances: []Instance{}, Publishes: []string{}, Consumes: []string{}, Roles: []string{}}
		for _, e := range entries[i] {
			in := instanceOf(e)
			svc.Instances = append(svc.Instances, in)
			view.health[in.ID] = in.Health
			svc.Health = worse(svc.Health, in.Health)
			svc.Publishes = union(svc.Publishes, in.Publishes...)
			svc.Consumes = union(svc.Consumes, in.Consumes...)
			if len(in.Streams) > 0 {
				svc.Roles = union(svc.Roles, "owner")
			}
			if in.Relay {
				svc.Roles = union(svc.Roles, "stage")
			}
			if in.Tracker {
				svc.Roles = union(svc.Roles, "tracker")
			}
			addr := e.Service.Address
			if addr == "" {
				addr = e.Node.Address
			}
			view.instances = append(view.instances, discovery.Instance{ID: e.Service.ID, Service: name, Node: e.Node.Node,
				Address: addr, Port: e.Service.Port, Tags: e.Service.Tags, Meta: e.Service.Meta})
		}
		if len(svc.Instances) == 0 {
			svc.Health = api.HealthCritical // registered names without an instance
		}
		switch name {
		case service.NSQDService, service.NSQLookupdService:
			svc.Roles = union(svc.Roles, name)
		}
		sort.Slice(svc.Instances, func(a, b int) bool { return svc.Instances[a].ID < svc.Instances[b].ID })
		view.services = append(view.services, svc)
	}
	return view, nil
}

// instanceOf is an instance as the state shows it, its roles read from
// its tags.
func instanceOf(e *api.ServiceEntry) Instance {
	addr := e.Service.Address
	if addr == "" {
		addr = e.Node.Address
	}
	in := Instance{ID: e.Service.ID, Node: e.Node.Node, Address: addr, Port: e.Service.Port,
		Health: api.HealthChecks(e.Checks).AggregatedStatus(), Checks: []Check{}, Tags: slices.Clone(e.Service.Tags),
		Version: e.Service.Meta["version"], Streams: []string{}, Publishes: []string{}, Consumes: []string{},
		DeadLetters: e.Service.Meta[deadletter.MetaKey] != ""}
	if in.Tags == nil {
		in.Tags = []string{}
	}
	for _, ch := range e.Checks {
		in.Checks = append(in.Checks, Check{Name: ch.Name, Status: ch.Status, Output: strings.TrimSpace(ch.Output)})
	}
	for _, t := range e.Service.Tags {
		if v, ok := strings.CutPrefix(t, replay.OwnerTag("")); ok {
			in.Streams = append(in.Streams, v)
		} else if v, ok := strings.CutPrefix(t, replay.PublishesTag("")); ok {
			in.Publishes = append(in.Publishes, v)
		} else if v, ok := strings.CutPrefix(t, replay.ConsumesTag("")); ok {
			in.Consumes = append(in.Consumes, v)
		}
	}
	in.Relay = slices.Contains(e.Service.Tags, replay.RelayTag)
	in.Tracker = slices.Contains(e.Service.Tags, replay.TrackerTag)
	return in
}

// healthRank orders Consul's health states, best first.
func healthRank(h string) int {
	switch h {
	case api.HealthPassing:
		return 0
	case api.HealthWarning:
		return 1
	case api.HealthMaint:
		return 2
	default:
		return 3
	}
}

// worse is the worse of two health states.
func worse(a, b string) string {
	if healthRank(b) > healthRank(a) {
		return b
	}
	return a
}

// union adds the values of add that s lacks, keeping s sorted.
func union(s []string, add ...string) []string {
	for _, v := range add {
		if !slices.Contains(s, v) {
			s = append(s, v)
		}
	}
	sort.Strings(s)
	return s
}

// tagged is the instances of view that f selects.
func (v consulView) tagged(f func(discovery.Instance) bool) []discovery.Instance {
	var out []discovery.Instance
	for _, in := range v.instances {
		if f(in) {
			out = append(out, in)
		}
	}
	return out
}
