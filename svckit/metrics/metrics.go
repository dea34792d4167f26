// Package metrics holds one Prometheus registry per service (never the global
// default registry, so two services in one test binary do not collide) and the
// collectors every svckit component reports into.
package metrics

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every svckit metric.
const Namespace = "svckit"

// Metrics are the standard svckit collectors, registered in Registry.
type Metrics struct {
	Registry *prometheus.Registry

	Published      *prometheus.CounterVec // topic
	PublishCmds    *prometheus.CounterVec // topic: acknowledged PUB/MPUB commands (Published/PublishCmds = batch size)
	PublishErrors  *prometheus.CounterVec // topic
	Consumed       *prometheus.CounterVec // topic, channel
	Failed         *prometheus.CounterVec // topic, channel
	Requeued       *prometheus.CounterVec // topic, channel
	DeadLettered   *prometheus.CounterVec // topic, channel, reason
	HandlerSeconds *prometheus.HistogramVec

	DiscoveryUpdates *prometheus.CounterVec // service
	DiscoveryErrors  *prometheus.CounterVec // service
	DiscoveryHealthy *prometheus.GaugeVec   // service: instances in the cache

	RegistrationErrors prometheus.Counter
	Registrations      prometheus.Counter
}

// New creates a registry for one service and registers the Go runtime, process
// and build-info collectors plus the svckit collectors.
func New(service, version string) *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{Registry: r}
	f := func(c prometheus.Collector) { r.MustRegister(c) }
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help:        "Build information of the service; the value is always 1.",
		ConstLabels: prometheus.Labels{"service": service, "version": version, "goversion": runtime.Version()},
	})
	bi.Set(1)
	f(bi)

	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: Namespace, Name: name, Help: help}, labels)
		f(c)
		return c
	}
	m.Published = counter("messages_published_total", "Messages acknowledged by nsqd.", "topic")
	m.PublishCmds = counter("publish_commands_total", "PUB and MPUB commands acknowledged by nsqd; messages_published_total divided by this is the mean batch size.", "topic")
	m.PublishErrors = counter("publish_errors_total", "Publish attempts that failed (each retry counts).", "topic")
	m.Consumed = counter("messages_consumed_total", "Messages handled successfully.", "topic", "channel")
	m.Failed = counter("messages_failed_total", "Handler invocations that returned an error.", "topic", "channel")
	m.Requeued = counter("messages_requeued_total", "Messages requeued to nsqd for another attempt.", "topic", "channel")
	m.DeadLettered = counter("messages_dead_lettered_total", "Messages moved to the dead-letter topic.", "topic", "channel", "reason")
	m.HandlerSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "handler_duration_seconds",
		Help:    "Time spent in message handlers.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2.5, 12), // 50µs .. ~3s
	}, []string{"topic", "channel"})
	f(m.HandlerSeconds)
	m.DiscoveryUpdates = counter("discovery_updates_total", "Changed instance sets received from Consul.", "service")
	m.DiscoveryErrors = counter("discovery_errors_total", "Failed Consul discovery queries.", "service")
	m.DiscoveryHealthy = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "discovery_instances",
		Help: "Passing instances in the discovery cache.",
	}, []string{"service"})
	f(m.DiscoveryHealthy)
	m.Registrations = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "consul_registrations_total", Help: "Successful registrations with the local Consul agent (re-registrations included)."})
	m.RegistrationErrors = prometheus.NewCounter(prometheus.CounterOpts{Namespace: Namespace, Name: "consul_registration_errors_total", Help: "Failed registration attempts or checks."})
	f(m.Registrations)
	f(m.RegistrationErrors)
	return m
}

// Nop returns metrics registered in a throwaway registry, for components used
// without a service (tests, the bench command's raw baselines).
func Nop() *Metrics { return New("nop", "") }
