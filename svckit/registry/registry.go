// Package registry registers a service instance with its local Consul agent and
// keeps it registered.
//
// A Consul agent that restarts (always so with -dev, and after its data dir is
// lost otherwise) forgets services registered through its API. The Registrar
// therefore checks periodically that the agent still knows the instance and
// registers it again; until then readiness reports the registration as lost.
package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/metrics"
)

// Registration describes the instance.
type Registration struct {
	ID      string
	Name    string
	Address string
	Port    int
	Tags    []string
	Meta    map[string]string

	CheckHTTP string // URL of the HTTP check (the service's /health)
	// CheckTLSSkipVerify: an https CheckHTTP is checked without verifying
	// the certificate (it names the service, not the address the agent
	// dials; the check reads health, never data).
	CheckTLSSkipVerify bool
	CheckInterval      time.Duration // default 2s
	CheckTimeout       time.Duration // default 1s
	DeregisterAfter    time.Duration // DeregisterCriticalServiceAfter; default 1m
}

// Options tunes the Registrar. Zero values take the defaults named on each
// field.
type Options struct {
	VerifyInterval time.Duration    // how often to check the agent still has us; default 2s
	MinBackoff     time.Duration    // default 200ms
	MaxBackoff     time.Duration    // default 5s
	Logger         *slog.Logger     // nil = discard
	Metrics        *metrics.Metrics // nil = metrics.Nop()
}

// Registrar keeps one registration alive.
type Registrar struct {
	client *api.Client
	reg    Registration
	opts   Options

	mu         sync.RWMutex
	registered bool
	lastErr    error
	done       chan struct{}
}

// New returns a Registrar; Run does the work.
func New(client *api.Client, reg Registration, o Options) *Registrar {
	if reg.CheckInterval <= 0 {
		reg.CheckInterval = 2 * time.Second
	}
	if reg.CheckTimeout <= 0 {
		reg.CheckTimeout = time.Second
	}
	if reg.DeregisterAfter <= 0 {
		reg.DeregisterAfter = time.Minute
	}
	if o.VerifyInterval <= 0 {
		o.VerifyInterval = 2 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 200 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = metrics.Nop()
	}
	return &Registrar{client: client, reg: reg, opts: o, lastErr: errors.New("not registered yet"), done: make(chan struct{})}
}

// ID is the registered service id.
func (r *Registrar) ID() string { return r.reg.ID }

// Registered is nil while the agent knows the instance; readiness uses it.
func (r *Registrar) Registered() error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.registered {
		return nil
	}
	return fmt.Errorf("consul registration of %s: %w", r.reg.ID, r.lastErr)
}

// Register performs one registration attempt.
func (r *Registrar) Register(ctx context.Context) error {
	g := r.reg
	asr := &api.AgentServiceRegistration{
		ID: g.ID, Name: g.Name, Address: g.Address, Port: g.Port, Tags: g.Tags, Meta: g.Meta,
		Check: &api.AgentServiceCheck{
			CheckID:                        g.ID + ":health",
			Name:                           g.Name + " /health",
			HTTP:                           g.CheckHTTP,
			TLSSkipVerify:                  g.CheckTLSSkipVerify,
			Interval:                       g.CheckInterval.String(),
			Timeout:                        g.CheckTimeout.String(),
			DeregisterCriticalServiceAfter: g.DeregisterAfter.String(),
		},
	}
	err := r.client.Agent().ServiceRegisterOpts(asr, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx))
	if err != nil {
		r.opts.Metrics.RegistrationErrors.Inc()
		r.set(false, err)
		return fmt.Errorf("registering %s with the Consul agent: %w", g.ID, err)
	}
	r.opts.Metrics.Registrations.Inc()
	r.set(true, nil)
	return nil
}

// Run registers (retrying with backoff) and then verifies the registration
// every VerifyInterval, registering again when the agent lost it. It returns
// when ctx ends, without deregistering: call Deregister for that, after the
// service stopped taking work.
func (r *Registrar) Run(ctx context.Context) {
	defer close(r.done)
	backoff := r.opts.MinBackoff
	lastLogged := ""
	for ctx.Err() == nil {
		err := r.ensure(ctx)
		if ctx.Err() != nil {
			return
		}
		wait := r.opts.VerifyInterval
		if err != nil {
			// One log line per kind of failure, not one per attempt.
			if msg := err.Error(); msg != lastLogged {
				r.opts.Logger.Warn("consul registration failing; retrying with backoff", "id", r.reg.ID, "err", err)
				lastLogged = msg
			}
			wait = backoff/2 + rand.N(backoff/2+1)
			backoff = min(backoff*2, r.opts.MaxBackoff)
		} else {
			if lastLogged != "" {
				r.opts.Logger.Info("consul registration restored", "id", r.reg.ID)
				lastLogged = ""
			}
			backoff = r.opts.MinBackoff
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// callTimeout bounds each call to the agent: a hung agent or a silently
// dropping network must turn into an error (and not-ready), not a call that
// blocks forever while readiness still says "registered".
const callTimeout = 5 * time.Second

// ensure checks the agent knows the instance and registers it if not.
func (r *Registrar) ensure(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	r.mu.RLock()
	was := r.registered
	r.mu.RUnlock()
	if was {
		_, _, err := r.client.Agent().Service(r.reg.ID, (&api.QueryOptions{}).WithContext(ctx))
		if err == nil {
			return nil
		}
		var se api.StatusError
		if !errors.As(err, &se) || se.Code != http.StatusNotFound {
			// Agent unreachable: we do not know whether it still has us.
			r.opts.Metrics.RegistrationErrors.Inc()
			r.set(false, err)
			return err
		}
		r.opts.Logger.Warn("consul agent lost our registration (agent restarted?); registering again", "id", r.reg.ID)
	}
	err := r.Register(ctx)
	if err == nil && !was {
		r.opts.Logger.Info("registered with consul", "id", r.reg.ID, "name", r.reg.Name, "addr", r.reg.Address, "port", r.reg.Port)
	}
	return err
}

// Deregister removes the instance from the agent. Call it after Run
// returned: a running Run would register the instance again.
func (r *Registrar) Deregister(ctx context.Context) error {
	err := r.client.Agent().ServiceDeregisterOpts(r.reg.ID, (&api.QueryOptions{}).WithContext(ctx))
	r.set(false, errors.New("deregistered"))
	if err != nil {
		return fmt.Errorf("deregistering %s from the Consul agent: %w", r.reg.ID, err)
	}
	return nil
}

func (r *Registrar) set(ok bool, err error) {
	r.mu.Lock()
	r.registered, r.lastErr = ok, err
	r.mu.Unlock()
}
