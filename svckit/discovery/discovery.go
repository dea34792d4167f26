// Package discovery keeps a live cache of the passing instances of Consul
// services, fed by blocking queries, and tells subscribers about changes.
//
// While Consul is unreachable the last known good answer stays in use; failed
// queries back off exponentially (go-kit's instancer hot-looped against a down
// agent, go-kit #627/#1214) and show in Healthy(), readiness and metrics. Nothing
// here ever exits the process.
package discovery

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/metrics"
)

// Instance is one passing service instance.
type Instance struct {
	ID      string
	Service string
	Node    string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string
}

// Addr is address:port.
func (i Instance) Addr() string { return net.JoinHostPort(i.Address, strconv.Itoa(i.Port)) }

// MetaAddr is address:Meta[key], for services that publish a second port in
// their meta (nsqd and nsqlookupd publish "http_port").
func (i Instance) MetaAddr(key string) (string, bool) {
	p, ok := i.Meta[key]
	if !ok || p == "" {
		return "", false
	}
	return net.JoinHostPort(i.Address, p), true
}

// HasTag reports whether the instance carries tag.
func (i Instance) HasTag(tag string) bool { return slices.Contains(i.Tags, tag) }

// Options configures discovery. Zero values take the defaults named on
// each field (DefaultOptions).
type Options struct {
	WaitTime   time.Duration    // blocking query wait; default 30s
	MinBackoff time.Duration    // first retry delay after an error; default 100ms
	MaxBackoff time.Duration    // cap; default 5s
	Logger     *slog.Logger     // nil = discard
	Metrics    *metrics.Metrics // nil = metrics.Nop()
}

// DefaultOptions returns the defaults.
func DefaultOptions() Options {
	return Options{WaitTime: 30 * time.Second, MinBackoff: 100 * time.Millisecond, MaxBackoff: 5 * time.Second}
}

// Discovery owns one Watcher per service name.
type Discovery struct {
	client *api.Client
	opts   Options
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	watchers map[string]*Watcher
}

// New returns a Discovery; watchers start on first Watch and stop on Stop.
func New(client *api.Client, o Options) *Discovery {
	d := DefaultOptions()
	if o.WaitTime > 0 {
		d.WaitTime = o.WaitTime
	}
	if o.MinBackoff > 0 {
		d.MinBackoff = o.MinBackoff
	}
	if o.MaxBackoff > 0 {
		d.MaxBackoff = o.MaxBackoff
	}
	d.Logger, d.Metrics = o.Logger, o.Metrics
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Metrics == nil {
		d.Metrics = metrics.Nop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Discovery{client: client, opts: d, ctx: ctx, cancel: cancel, watchers: map[string]*Watcher{}}
}

// Watch returns the watcher of a service, starting it if needed.
func (d *Discovery) Watch(service string) *Watcher {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w, ok := d.watchers[service]; ok {
		return w
	}
	w := &Watcher{service: service, d: d, ready: make(chan struct{}), subs: map[int]chan []Instance{}}
	w.err = errors.New("no answer from Consul yet")
	d.watchers[service] = w
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		w.run(d.ctx)
	}()
	return w
}

// Healthy reports the first unhealthy watcher's error, or nil.
func (d *Discovery) Healthy() error {
	d.mu.Lock()
	ws := slices.Collect(maps.Values(d.watchers))
	d.mu.Unlock()
	for _, w := range ws {
		if err := w.Healthy(); err != nil {
			return err
		}
	}
	return nil
}

// Stop ends every watcher and waits for them.
func (d *Discovery) Stop() {
	d.cancel()
	d.wg.Wait()
}

// Watcher is the live cache of one service's passing instances.
type Watcher struct {
	service string
	d       *Discovery

	mu        sync.RWMutex
	instances []Instance
	err       error // last query's error; nil after a success
	errSince  time.Time
	ready     chan struct{} // closed after the first successful answer
	readyOnce sync.Once
	subs      map[int]chan []Instance
	nextSub   int
}

// Service is the watched service name.
func (w *Watcher) Service() string { return w.service }

// Instances returns the last known good set (sorted by ID). The slice is shared:
// do not modify it.
func (w *Watcher) Instances() []Instance {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.instances
}

// Healthy is nil while the last query succeeded.
func (w *Watcher) Healthy() error {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.err == nil {
		return nil
	}
	return fmt.Errorf("discovery of %q: %w", w.service, w.err)
}

// WaitReady blocks until the first answer from Consul arrived or ctx ends.
func (w *Watcher) WaitReady(ctx context.Context) error {
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the first discovery answer for %q: %w", w.service, context.Cause(ctx))
	}
}

// WaitFor blocks until cond holds for the current set (checked on every change).
func (w *Watcher) WaitFor(ctx context.Context, cond func([]Instance) bool) ([]Instance, error) {
	ch, cancel := w.Subscribe()
	defer cancel()
	for {
		select {
		case set := <-ch:
			if cond(set) {
				return set, nil
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for instances of %q: %w", w.service, context.Cause(ctx))
		}
	}
}

// Subscribe returns a channel that receives the current set at once (if any
// answer arrived yet) and every changed set afterwards. Slow subscribers only
// ever see the newest set: the channel holds one value, replaced on change.
func (w *Watcher) Subscribe() (<-chan []Instance, func()) {
	ch := make(chan []Instance, 1)
	w.mu.Lock()
	id := w.nextSub
	w.nextSub++
	w.subs[id] = ch
	select {
	case <-w.ready:
		ch <- w.instances
	default:
	}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subs, id)
		w.mu.Unlock()
	}
}

func (w *Watcher) run(ctx context.Context) {
	o := w.d.opts
	var index uint64
	backoff := o.MinBackoff
	for ctx.Err() == nil {
		// Consul answers a blocking query within WaitTime plus up to
		// WaitTime/16 of jitter; past that (and a margin) the agent is hung
		// or the network drops packets: fail and back off instead of blocking.
		qctx, cancel := context.WithTimeout(ctx, o.WaitTime+o.WaitTime/16+5*time.Second)
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: o.WaitTime}).WithContext(qctx)
		entries, meta, err := w.d.client.Health().Service(w.service, "", true, q)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.fail(err)
			// The agent may come back restarted, with lower indexes: a stale
			// index would make Consul hold the next query for WaitTime.
			index = 0
			// Full jitter so that many watchers do not retry in lockstep.
			t := time.NewTimer(backoff/2 + rand.N(backoff/2+1))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(backoff*2, o.MaxBackoff)
			continue
		}
		backoff = o.MinBackoff
		// An index that goes backwards (agent or server restarted) must reset
		// the wait, or the next query would block for WaitTime on stale data.
		switch {
		case meta.LastIndex < index:
			index = 0
		case meta.LastIndex == 0:
			index = 1
		default:
			index = meta.LastIndex
		}
		w.succeed(toInstances(entries))
	}
}

func toInstances(entries []*api.ServiceEntry) []Instance {
	out := make([]Instance, 0, len(entries))
	for _, e := range entries {
		addr := e.Service.Address
		if addr == "" {
			addr = e.Node.Address // Consul's convention: empty service address means the node's
		}
		out = append(out, Instance{
			ID: e.Service.ID, Service: e.Service.Service, Node: e.Node.Node,
			Address: addr, Port: e.Service.Port, Tags: e.Service.Tags, Meta: e.Service.Meta,
		})
	}
	slices.SortFunc(out, func(a, b Instance) int {
		if a.ID < b.ID {
			return -1
		}
		if a.ID > b.ID {
			return 1
		}
		return 0
	})
	return out
}

func (w *Watcher) fail(err error) {
	m := w.d.opts.Metrics
	m.DiscoveryErrors.WithLabelValues(w.service).Inc()
	w.mu.Lock()
	first := w.err == nil
	if first {
		w.errSince = time.Now()
	}
	w.err = err
	w.mu.Unlock()
	if first {
		w.d.opts.Logger.Warn("consul discovery failing; keeping the last known instances", "service", w.service, "err", err)
	}
}

func (w *Watcher) succeed(set []Instance) {
	w.mu.Lock()
	recovered := w.err != nil && !w.errSince.IsZero()
	w.err = nil
	first := false
	select {
	case <-w.ready:
	default:
		first = true
	}
	changed := first || !sameInstances(w.instances, set)
	if first {
		// Closed under the lock so Subscribe never misses the first set.
		w.readyOnce.Do(func() { close(w.ready) })
	}
	if changed {
		w.instances = set
		for _, ch := range w.subs {
			select {
			case <-ch: // drop the stale value: subscribers want the newest set
			default:
			}
			ch <- set
		}
	}
	w.mu.Unlock()
	if recovered {
		w.d.opts.Logger.Info("consul discovery recovered", "service", w.service)
	}
	if changed {
		m := w.d.opts.Metrics
		m.DiscoveryUpdates.WithLabelValues(w.service).Inc()
		m.DiscoveryHealthy.WithLabelValues(w.service).Set(float64(len(set)))
		w.d.opts.Logger.Debug("discovery update", "service", w.service, "instances", len(set))
	}
}

func sameInstances(a, b []Instance) bool {
	return slices.EqualFunc(a, b, func(x, y Instance) bool {
		return x.ID == y.ID && x.Address == y.Address && x.Port == y.Port && x.Node == y.Node &&
			slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
	})
}
