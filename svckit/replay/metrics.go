// Package replay makes NSQ streams recoverable: per-stream contiguous
// sequence numbers and a retained log on the publisher (Owner, Server), and
// exactly-once application with gap detection, replay requests and snapshot
// recovery on the consumer (Tracker). docs/architecture.md describes the
// protocol message by message.
package replay

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/svckit/svckit/svckit/metrics"
)

// Metrics are the replay collectors.
type Metrics struct {
	GapsDetected        *prometheus.CounterVec // stream
	Missing             *prometheus.GaugeVec   // stream
	Requests            *prometheus.CounterVec // result
	ReplayedMessages    prometheus.Counter
	ReplayedBytes       prometheus.Counter
	ReplaySeconds       prometheus.Histogram
	Duplicates          *prometheus.CounterVec // stream
	SnapshotRecoveries  *prometheus.CounterVec // stream
	ServedMessages      prometheus.Counter
	ServedBytes         prometheus.Counter
	LogTruncations      prometheus.Counter
	NeverPublished      *prometheus.CounterVec // stream: live sequences the owner never published (refused)
	SnapshotUnavailable *prometheus.GaugeVec   // stream: 1 while it needs a snapshot its upstream does not offer
	DeadLettered        *prometheus.CounterVec // stream: replayed messages that could not be applied
	Unpublished         *prometheus.GaugeVec   // stream: in the owner's log, not yet acknowledged by nsqd
	Unpublishable       *prometheus.CounterVec // stream: refused by nsqd for good (replay only)
	DamagedRecords      *prometheus.GaugeVec   // stream: records of the owner's log found damaged (kept in quarantine)
	WriteFailures       *prometheus.CounterVec // stream: appends to the owner's log that failed (a full disk)
	LagMessages         *prometheus.GaugeVec   // stream: sequences the consumer's contiguous position is behind
	LagSeconds          *prometheus.GaugeVec   // stream: age of the message at that position, while behind
	ReplayRequested     *prometheus.GaugeVec   // stream: sequences the running recovery asked for (0: none runs)
	ReplayReceived      *prometheus.GaugeVec   // stream: of those, received so far
}

// NewMetrics registers the replay collectors in r.
func NewMetrics(r prometheus.Registerer) *Metrics {
	ns := metrics.Namespace
	m := &Metrics{
		GapsDetected:        prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_gaps_detected_total", Help: "Missing sequence ranges detected."}, []string{"stream"}),
		Missing:             prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_missing_messages", Help: "Sequences currently missing below the highest known."}, []string{"stream"}),
		Requests:            prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_requests_total", Help: "Replay requests sent to stream owners, by result."}, []string{"result"}),
		ReplayedMessages:    prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_received_messages_total", Help: "Messages received through replay."}),
		ReplayedBytes:       prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_received_bytes_total", Help: "Bytes received through replay."}),
		ReplaySeconds:       prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Name: "replay_request_duration_seconds", Help: "Duration of replay requests.", Buckets: prometheus.ExponentialBuckets(0.001, 3, 10)}),
		Duplicates:          prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "duplicates_skipped_total", Help: "Messages skipped because their (stream, seq) was already applied."}, []string{"stream"}),
		SnapshotRecoveries:  prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "snapshot_recoveries_total", Help: "Streams recovered from the owner's snapshot."}, []string{"stream"}),
		ServedMessages:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_served_messages_total", Help: "Messages served from the retained log."}),
		ServedBytes:         prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replay_served_bytes_total", Help: "Bytes served from the retained log."}),
		LogTruncations:      prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "retainlog_truncations_total", Help: "Torn log tails cut on open (a copy is kept in the log's quarantine directory)."}),
		SnapshotUnavailable: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "replay_snapshot_unavailable", Help: "1 while the stream needs a snapshot its upstream does not offer (it stays incomplete)."}, []string{"stream"}),
		NeverPublished:      prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_never_published_total", Help: "Live messages refused because their stream's owner never published their sequence."}, []string{"stream"}),
		DeadLettered:        prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_dead_lettered_total", Help: "Replayed messages that could not be applied and were dead-lettered."}, []string{"stream"}),
		Unpublished:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "owner_unpublished_messages", Help: "Messages in the owner's retained log that nsqd has not acknowledged yet."}, []string{"stream"}),
		Unpublishable:       prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "owner_unpublishable_total", Help: "Messages nsqd refused for good; consumers get them by replay only."}, []string{"stream"}),
		DamagedRecords:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "retainlog_damaged_records", Help: "Records of the owner's retained log found damaged (CRC, length or sequence), kept in quarantine and not served."}, []string{"stream"}),
		LagMessages:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "stream_lag_messages", Help: "Sequences a tracking consumer's contiguous position is behind the highest known to exist (the owner's last, or one applied out of order)."}, []string{"stream"}),
		LagSeconds:          prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "stream_lag_seconds", Help: "While a tracking consumer is behind: how long ago the message at its contiguous position was created; 0 when it is not behind."}, []string{"stream"}),
		ReplayRequested:     prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "stream_replay_requested_messages", Help: "Missing sequences the running recovery asked the upstream for; 0 while none runs."}, []string{"stream"}),
		ReplayReceived:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Name: "stream_replay_received_messages", Help: "Of the running recovery's requested sequences, how many came so far."}, []string{"stream"}),
		WriteFailures:       prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "owner_write_failures_total", Help: "Appends to the owner's retained log that failed (a full disk): the owner does not accept messages until one succeeds."}, []string{"stream"}),
	}
	for _, c := range []prometheus.Collector{m.GapsDetected, m.Missing, m.Requests, m.ReplayedMessages, m.ReplayedBytes, m.ReplaySeconds, m.Duplicates, m.SnapshotRecoveries, m.ServedMessages, m.ServedBytes, m.LogTruncations, m.SnapshotUnavailable, m.NeverPublished, m.DeadLettered, m.Unpublished, m.Unpublishable, m.DamagedRecords, m.WriteFailures, m.LagMessages, m.LagSeconds, m.ReplayRequested, m.ReplayReceived} {
		r.MustRegister(c)
	}
	return m
}
