// Package service wires svckit's components for one service and runs it until
// its context ends: the one entry point every svckit main uses.
//
// Shutdown order (SIGINT/SIGTERM): stop taking messages and finish in-flight
// ones (bounded by --shutdown-timeout), let the service's own loop return, run
// stop hooks (state saves), flush batching publishers and close the producer,
// deregister from Consul, stop the HTTP server. Draining before closing the
// publisher matters: Watermill's router closed its publisher first (#446) and
// lost the results of handlers still running.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/deadletter"
	"github.com/svckit/svckit/svckit/discovery"
	"github.com/svckit/svckit/svckit/durable"
	"github.com/svckit/svckit/svckit/health"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/svckit/svckit/svckit/metrics"
	"github.com/svckit/svckit/svckit/pubsub"
	"github.com/svckit/svckit/svckit/registry"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/tracing"
	"github.com/svckit/svckit/svckit/tracing/otlp"
	nsq "github.com/svckit/svckit/third_party/go-nsq"
)

// Service names in Consul under which the NSQ programs are registered.
const (
	NSQDService       = "nsqd"
	NSQLookupdService = "nsqlookupd"
)

// ErrConsulUnreachable is returned by New when the agent did not answer
// within --consul-start-timeout.
var ErrConsulUnreachable = errors.New("consul agent unreachable")

// Service is one running svckit service instance.
type Service struct {
	Config    config.Config
	Log       *slog.Logger
	Metrics   *metrics.Metrics
	Consul    *api.Client
	Discovery *discovery.Discovery
	HTTP      *health.Server
	Registrar *registry.Registrar
	Node      string // the local Consul agent's node name
	Advertise string // address registered in Consul
	Port      int    // HTTP port registered in Consul
	// Tracer makes the spans of this service's publishers and consumers;
	// nil (tracing off) unless OTEL_EXPORTER_OTLP_ENDPOINT is set (see
	// svckit/tracing/otlp).
	Tracer     *tracing.Tracer
	spanExport *otlp.Provider // exports Tracer's spans; nil when off

	tags []string
	meta map[string]string

	mu         sync.Mutex
	producer   *pubsub.Producer
	batchers   []*pubsub.Batcher
	consumers  []*pubsub.Consumer
	stopHooks  []func(context.Context) error
	background []func(context.Context)
	rmetrics   *replay.Metrics
	rserver    *replay.Server
	unlockData func() error
	ran        bool // Run was called: it releases everything itself
	closed     bool
	deadStore  *deadletter.Store // <data-dir>/deadletters, served over HTTP
	deadSink   *deadletter.Sink  // for trackers; consumers make their own over the same producer and store
}

// New builds the service: logger, metrics, Consul client (waiting for the
// agent, with backoff, up to --consul-start-timeout), HTTP listener (so the
// port is known), discovery and the registrar (started by Run).
func New(ctx context.Context, cfg config.Config, log *slog.Logger) (*Service, error) {
	if log == nil {
		log = logging.Discard()
	}
	// --tag's tags first; the roles add theirs (AddTags).
	s := &Service{Config: cfg, Log: log, meta: map[string]string{"version": cfg.Version}, tags: slices.Clone(cfg.Tags)}
	// One process per data directory: a second one started with it by
	// mistake must not write the same files (two owners of one log, two
	// checkpoints of one consumer).
	// The OTEL_* environment is configuration: a mistake there is found
	// before anything waits for Consul.
	tc, err := otlp.DefaultConfig(cfg.Name, os.Getenv)
	if err != nil {
		return nil, UsageError{fmt.Errorf("tracing: %w", err)}
	}
	unlock, err := durable.LockDir(cfg.DataDir)
	if err != nil {
		return nil, UsageError{fmt.Errorf("--data-dir: %w", err)}
	}
	s.unlockData = unlock
	s.Metrics = metrics.New(cfg.Name, cfg.Version)
	client, err := api.NewClient(cfg.ConsulAPI())
	if err != nil {
		unlock()
		return nil, fmt.Errorf("creating Consul client for %s: %w", cfg.Consul.Addr, err)
	}
	s.Consul = client
	if s.Node, err = waitForAgent(ctx, client, cfg.Consul.StartTimeout, log); err != nil {
		unlock()
		return nil, err
	}
	s.HTTP = health.New(health.Options{Addr: cfg.HTTPAddr, Registry: s.Metrics.Registry, Logger: log, Pprof: cfg.Pprof,
		TLSCertFile: cfg.HTTPTLSCert, TLSKeyFile: cfg.HTTPTLSKey, MetricsToken: cfg.MetricsToken})
	if err := s.serveDeadLetters(); err != nil {
		unlock()
		return nil, err
	}
	addr, err := s.HTTP.Listen()
	if err != nil {
		unlock()
		return nil, err
	}
	s.Port = addr.Port
	s.Advertise = cfg.AdvertiseAddr
	if s.Advertise == "" {
		s.Advertise = advertiseFor(addr, cfg.ConsulAPI().Address)
	}
	if s.Config.InstanceID == "" {
		s.Config.InstanceID = config.DefaultInstanceID(cfg.Name, s.Advertise, s.Port)
	}
	s.Log = log.With("service", cfg.Name, "instance", s.Config.InstanceID)
	if err := s.startTracing(ctx, tc); err != nil {
		_ = s.HTTP.Close()
		unlock()
		return nil, err
	}
	s.Discovery = discovery.New(client, discovery.Options{Logger: s.Log, Metrics: s.Metrics})
	s.HTTP.AddCheck("discovery", s.Discovery.Healthy)
	return s, nil
}

// startTracing turns tracing on when the OTEL_* environment asks for it.
func (s *Service) startTracing(ctx context.Context, tc otlp.Config) error {
	p, err := otlp.New(ctx, tc, s.Log)
	if err != nil {
		return fmt.Errorf("tracing: %w", err)
	}
	if p != nil {
		s.spanExport, s.Tracer = p, p.Tracer()
		s.Log.Info("tracing on: exporting spans over OTLP", "protocol", tc.Protocol)
	}
	return nil
}

// TracingFlushTimeout bounds the export of the spans still held at
// shutdown: its own budget, after the rest, so that a hung Consul does
// not leave it none and a collector away does not hold the exit up.
const TracingFlushTimeout = 2 * time.Second

// flushTracing exports the spans still held and stops the exporter. A
// failure is logged, not returned: spans are not what a clean shutdown
// is judged by.
func (s *Service) flushTracing() {
	if s.spanExport == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), TracingFlushTimeout)
	defer cancel()
	if err := s.spanExport.Shutdown(ctx); err != nil {
		s.Log.Warn("flushing spans at shutdown failed; some spans are lost", "err", err)
	}
}

// waitForAgent asks the agent for its node name until it answers, backing off;
// it logs one line per distinct error, not one per attempt.
func waitForAgent(ctx context.Context, c *api.Client, timeout time.Duration, log *slog.Logger) (string, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	delay := 200 * time.Millisecond
	last := ""
	for {
		node, err := c.Agent().NodeName()
		if err == nil {
			return node, nil
		}
		var se api.StatusError
		if errors.As(err, &se) && se.Code == http.StatusForbidden {
			// Not an outage: the token is wrong or lacks agent:read. Waiting
			// would only hide a configuration error.
			return "", UsageError{fmt.Errorf("the Consul agent refused the ACL token (CONSUL_HTTP_TOKEN / --consul-token): %s", strings.TrimSpace(se.Body))}
		}
		if msg := err.Error(); msg != last {
			log.Warn("waiting for the Consul agent", "err", err)
			last = msg
		}
		t := time.NewTimer(delay/2 + rand.N(delay/2+1))
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("%w: %v", ErrConsulUnreachable, err)
		case <-t.C:
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// advertiseFor picks the address to register: the listener's own IP if it is
// bound to one, else the local address the kernel uses to reach the Consul
// agent (the address at which the agent, and so its datacenter, sees us).
func advertiseFor(l *net.TCPAddr, consulAddr string) string {
	if l.IP != nil && !l.IP.IsUnspecified() {
		return l.IP.String()
	}
	conn, err := net.Dial("udp", consulAddr) // no packet is sent: UDP "connect" only routes
	if err == nil {
		defer conn.Close()
		return conn.LocalAddr().(*net.UDPAddr).IP.String()
	}
	return "127.0.0.1"
}

// AddTags adds Consul tags (before Run).
func (s *Service) AddTags(tags ...string) { s.tags = append(s.tags, tags...) }

// SetMeta adds a Consul meta key (before Run).
func (s *Service) SetMeta(k, v string) { s.meta[k] = v }

// Go runs fn in the background from Run on; its context ends after the
// consumers drained and the service's loop returned, and Run waits for it
// before the stop hooks.
func (s *Service) Go(fn func(context.Context)) {
	s.mu.Lock()
	s.background = append(s.background, fn)
	s.mu.Unlock()
}

// OnStop registers a hook run after consumers drained and the service loop
// returned, before publishers flush (e.g. a final state save).
func (s *Service) OnStop(fn func(context.Context) error) {
	s.mu.Lock()
	s.stopHooks = append(s.stopHooks, fn)
	s.mu.Unlock()
}

// NSQConfig is go-nsq's configuration from the service's flags.
func (s *Service) NSQConfig() (*nsq.Config, error) {
	n := s.Config.NSQ
	c := nsq.NewConfig()
	c.MaxInFlight = n.MaxInFlight
	c.LookupdPollInterval = n.LookupdPollInterval
	c.MsgTimeout = n.MsgTimeout
	c.DefaultRequeueDelay = n.RequeueDelay
	c.MaxRequeueDelay = n.MaxRequeueDelay
	c.OutputBufferSize = n.OutputBufferSize
	c.OutputBufferTimeout = n.OutputBufferTimeout
	c.UserAgent = fmt.Sprintf("svckit-%s/%s", s.Config.Name, s.Config.Version)
	if n.AuthSecret != "" {
		c.AuthSecret = n.AuthSecret
	}
	if n.TLS {
		if err := c.Set("tls_v1", true); err != nil {
			return nil, fmt.Errorf("--nsq-tls: %w", err)
		}
		if n.TLSCACert != "" {
			if err := c.Set("tls_root_ca_file", n.TLSCACert); err != nil {
				return nil, fmt.Errorf("--nsq-tls-cacert %q: %w", n.TLSCACert, err)
			}
		}
		if n.TLSInsecure {
			if err := c.Set("tls_insecure_skip_verify", true); err != nil {
				return nil, fmt.Errorf("--nsq-tls-insecure-skip-verify: %w", err)
			}
		}
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("nsq configuration: %w", err)
	}
	return c, nil
}

// Producer returns the service's producer (one per service, created on first use).
func (s *Service) Producer() (*pubsub.Producer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer != nil {
		return s.producer, nil
	}
	cfg, err := s.NSQConfig()
	if err != nil {
		return nil, err
	}
	s.producer = pubsub.NewProducer(s.Discovery.Watch(NSQDService), pubsub.ProducerOptions{
		NSQ: cfg, PreferNode: s.Node, Logger: s.Log, Metrics: s.Metrics,
	})
	s.HTTP.AddCheck("nsqd", s.producer.Ready)
	return s.producer, nil
}

// Batcher returns a new batching publisher for topic, flushed at shutdown.
func (s *Service) Batcher(topic string) (*pubsub.Batcher, error) {
	p, err := s.Producer()
	if err != nil {
		return nil, err
	}
	b := p.NewBatcher(topic, pubsub.BatcherOptions{MaxBatch: s.Config.NSQ.BatchSize, MaxBytes: s.Config.NSQ.BatchBytes, MaxDelay: s.Config.NSQ.BatchDelay,
		Tracer: s.Tracer})
	s.mu.Lock()
	s.batchers = append(s.batchers, b)
	s.mu.Unlock()
	return b, nil
}

// Consumer creates a consumer with the service's NSQ settings and delivery
// policy; o only needs Topic, Channel, Ephemeral (and optionally AutoTouch
// and Middleware). Dead letters go through the service's producer to
// "<topic>.dead", or, when nsqd does not take them (above
// --nsq-max-msg-size, or not acknowledged in time), to the service's
// <data-dir>/deadletters. It starts in Run.
func (s *Service) Consumer(o pubsub.ConsumerOptions, h pubsub.Handler) (*pubsub.Consumer, error) {
	cfg, err := s.NSQConfig()
	if err != nil {
		return nil, err
	}
	sink, err := s.DeadLetters()
	if err != nil {
		return nil, err
	}
	n := s.Config.NSQ
	o.NSQ = cfg
	o.Concurrency = n.Concurrency
	o.Retry = pubsub.RetryOptions{MaxAttempts: uint16(n.MaxAttempts), Delay: n.RequeueDelay, MaxDelay: n.MaxRequeueDelay}
	o.DeadLetters = sink
	o.Logger, o.Metrics = s.Log, s.Metrics
	if o.Tracer == nil {
		o.Tracer = s.Tracer
	}
	c, err := pubsub.NewConsumer(s.Discovery.Watch(NSQLookupdService), s.Discovery.Watch(NSQDService), h, o)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.consumers = append(s.consumers, c)
	s.mu.Unlock()
	s.HTTP.AddCheck("consumer "+o.Topic+"/"+c.Channel(), c.Ready)
	return c, nil
}

// Run registers the service, starts its consumers, runs loop (nil = just
// serve) until ctx ends, and then shuts down in order. It returns nil after a
// clean shutdown.
func (s *Service) Run(ctx context.Context, loop func(context.Context) error) error {
	s.mu.Lock()
	s.ran = true
	s.mu.Unlock()
	httpErr := make(chan error, 1)
	go func() { httpErr <- s.HTTP.Serve() }()

	scheme := "http"
	if s.HTTP.TLS() {
		scheme = "https"
	}
	s.Registrar = registry.New(s.Consul, registry.Registration{
		ID: s.Config.InstanceID, Name: s.Config.Name, Address: s.Advertise, Port: s.Port,
		Tags: s.tags, Meta: s.meta,
		CheckHTTP:          scheme + "://" + net.JoinHostPort(s.Advertise, strconv.Itoa(s.Port)) + "/health",
		CheckTLSSkipVerify: s.HTTP.TLS(),
		CheckInterval:      s.Config.CheckInterval,
		DeregisterAfter:    s.Config.DeregisterAfter,
	}, registry.Options{Logger: s.Log, Metrics: s.Metrics})
	s.HTTP.AddCheck("consul_registration", s.Registrar.Registered)
	regCtx, stopReg := context.WithCancel(context.Background())
	regDone := make(chan struct{})
	go func() { defer close(regDone); s.Registrar.Run(regCtx) }()

	for _, c := range s.consumers {
		if err := c.Start(ctx); err != nil {
			if ctx.Err() == nil {
				// Leave nothing behind: a service that cannot consume must
				// not stay registered, or serve.
				for _, c := range s.consumers {
					_ = c.Stop(context.Background())
				}
				return errors.Join(fmt.Errorf("starting consumer: %w", err), s.teardown(stopReg, regDone, httpErr))
			}
		}
	}
	bgCtx, stopBg := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	for _, fn := range s.background {
		bg.Add(1)
		go func() { defer bg.Done(); fn(bgCtx) }()
	}
	stopBackground := func() { stopBg(); bg.Wait() }
	s.Log.Info("service running", "http", net.JoinHostPort(s.Advertise, strconv.Itoa(s.Port)), "version", s.Config.Version)

	loopErr := make(chan error, 1)
	go func() {
		if loop == nil {
			<-ctx.Done()
			loopErr <- nil
			return
		}
		loopErr <- loop(ctx)
	}()

	var runErr error
	select {
	case <-ctx.Done():
		s.Log.Info("shutting down", "cause", context.Cause(ctx))
	case err := <-httpErr:
		runErr = err
		httpErr <- nil // Serve already returned; keep the shutdown path uniform
	case err := <-loopErr:
		loopErr <- err
	}
	return errors.Join(runErr, s.shutdown(ctx, loopErr, stopBackground, stopReg, regDone, httpErr))
}

func (s *Service) shutdown(runCtx context.Context, loopErr chan error, stopBackground func(), stopReg context.CancelFunc, regDone chan struct{}, httpErr chan error) error {
	sctx, cancel := context.WithTimeout(context.Background(), s.Config.ShutdownTimeout)
	defer cancel()
	var errs []error
	// 1. Stop taking messages; finish those in flight.
	var wg sync.WaitGroup
	var emu sync.Mutex
	for _, c := range s.consumers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.Stop(sctx); err != nil {
				emu.Lock()
				errs = append(errs, err)
				emu.Unlock()
			}
		}()
	}
	wg.Wait()
	// 2. The service's own loop (it saw ctx end, or returned by itself).
	if runCtx.Err() == nil {
		s.Log.Info("service loop ended; shutting down")
	}
	select {
	case err := <-loopErr:
		if err != nil && !errors.Is(err, context.Canceled) {
			errs = append(errs, err)
		}
	case <-sctx.Done():
		errs = append(errs, errors.New("service loop did not return within --shutdown-timeout"))
	}
	// 3. Background work (an owner's pump, a claim's renewal), then the
	// hooks (state saves).
	bgDone := make(chan struct{})
	go func() { stopBackground(); close(bgDone) }()
	select {
	case <-bgDone:
	case <-sctx.Done():
		errs = append(errs, errors.New("background work did not stop within --shutdown-timeout"))
	}
	hctx := sctx
	if sctx.Err() != nil {
		// The timeout went on waiting for something else (a hung nsqd, a
		// loop stuck in a publish): the state saves still get a moment,
		// far more than a healthy disk needs, rather than none.
		var hcancel context.CancelFunc
		hctx, hcancel = context.WithTimeout(context.Background(), StopHookGrace)
		defer hcancel()
	}
	for _, h := range s.stopHooks {
		if err := runStopHook(hctx, h); err != nil {
			errs = append(errs, err)
		}
	}
	// 4. Flush publishers.
	for _, b := range s.batchers {
		if err := b.Close(sctx); err != nil {
			errs = append(errs, fmt.Errorf("flushing publisher: %w", err))
		}
	}
	if s.producer != nil {
		s.producer.Stop()
	}
	return errors.Join(append(errs, s.teardown(stopReg, regDone, httpErr))...)
}

// runStopHook runs h and stops waiting for it at ctx's end: a hook that
// does not honour its context (a checkpoint's fsync on a disk that stopped
// answering) must not hold the process past --shutdown-timeout. The hook
// is abandoned, not interrupted; it finishes if it can before the process
// ends.
func runStopHook(ctx context.Context, h func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- h(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("a stop hook (a state save) did not return within --shutdown-timeout: %w", ctx.Err())
	}
}

// teardown deregisters from Consul and stops the HTTP server and discovery.
// It has its own small budget, after --shutdown-timeout: a hung Consul
// agent must not keep the process alive.
func (s *Service) teardown(stopReg context.CancelFunc, regDone chan struct{}, httpErr chan error) error {
	var errs []error
	stopReg()
	<-regDone
	dctx, dcancel := context.WithTimeout(context.Background(), TeardownTimeout)
	defer dcancel()
	if err := s.Registrar.Deregister(dctx); err != nil {
		errs = append(errs, err)
	} else {
		s.Log.Info("deregistered from consul")
	}
	_ = s.HTTP.Shutdown(dctx)
	if err := <-httpErr; err != nil {
		errs = append(errs, err)
	}
	s.flushTracing()
	s.Discovery.Stop()
	if s.unlockData == nil {
	} else if err := s.unlockData(); err != nil {
		errs = append(errs, fmt.Errorf("unlocking --data-dir: %w", err))
	}
	return errors.Join(errs...)
}

// Close releases what New and a Setup acquired, for a service that will
// not Run (its Setup failed, or a program built it and changed its mind):
// its consumers stop, its stop hooks run (state saves, an owner's claim),
// its publishers flush, and its HTTP listener and the data directory's
// lock are released, so that the same process can build it again. ctx
// bounds the waits. After Run it does nothing: Run released everything
// itself. Calling it twice is harmless.
func (s *Service) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.ran || s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	var errs []error
	for _, c := range s.consumers {
		if err := c.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	for _, h := range s.stopHooks {
		if err := runStopHook(ctx, h); err != nil {
			errs = append(errs, err)
		}
	}
	for _, b := range s.batchers {
		if err := b.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flushing publisher: %w", err))
		}
	}
	if s.producer != nil {
		s.producer.Stop()
	}
	s.Discovery.Stop()
	if err := s.HTTP.Close(); err != nil {
		errs = append(errs, fmt.Errorf("closing the HTTP listener: %w", err))
	}
	s.flushTracing()
	if s.unlockData != nil {
		if err := s.unlockData(); err != nil {
			errs = append(errs, fmt.Errorf("unlocking --data-dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// TeardownTimeout bounds deregistration and the HTTP server's shutdown,
// which come after the --shutdown-timeout drain: a service exits within
// --shutdown-timeout plus this, whatever is down.
const TeardownTimeout = 3 * time.Second

// StopHookGrace is how long the stop hooks (state saves) still get when
// --shutdown-timeout was used up before them; a service then exits within
// --shutdown-timeout plus StopHookGrace plus TeardownTimeout.
const StopHookGrace = time.Second

// Hostname is os.Hostname with a fallback, for default ids.
func Hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return "localhost"
	}
	return h
}
