package console

import (
	"time"

	"github.com/svckit/svckit/svckit/replay"
)

// StateVersion is the version of State's JSON shape; a page (or a test)
// that reads another version knows it is looking at something else.
const StateVersion = 2

// State is everything the console knows at one moment: GET /api/state
// serves it, every server-sent "state" event carries it, and the page
// draws exactly this. It is built once per collection and encoded once,
// whoever reads it: the console's cost does not grow with its viewers.
//
// Everything in it is derived from Consul and nsqd (and what the
// services already serve), nothing is configured: a service that
// registers with the right tags appears on its own.
type State struct {
	Version     int       `json:"version"`
	GeneratedAt time.Time `json:"generated_at"`
	// IntervalMS is how often the state is collected.
	IntervalMS int64 `json:"interval_ms"`
	// Console is the console's own instance.
	Console ConsoleInfo `json:"console"`
	// Consul is whether the catalog could be read; while it cannot, the
	// services are the last ones read, and Consul.Error says why.
	Consul Source `json:"consul"`
	// NSQDs are the nsqd instances registered in Consul and what their
	// /stats said. NSQDDown is set when one of them did not answer (or
	// none is registered): the topics' numbers are then incomplete, and
	// the topics say so (Topic.Stale) rather than show old numbers.
	NSQDs    []NSQD `json:"nsqds"`
	NSQDDown bool   `json:"nsqd_down"`
	// Services are every service in Consul's catalog, with their
	// instances' health.
	Services []Service `json:"services"`
	// Topics are the topics in nsqd and those named by Consul tags
	// (publishes=, consumes=), without the dead-letter topics, which are
	// in DeadLetters.
	Topics []Topic `json:"topics"`
	// Streams are the replayable streams: their owner and its positions,
	// and every tracking consumer's and every stage's position in them.
	Streams []Stream `json:"streams"`
	// DeadLetters are the dead letters of each topic, in nsqd and in the
	// services' local stores.
	DeadLetters []DeadLetterTopic `json:"deadletters"`
	// Requeue says whether POST /api/deadletters/requeue is possible
	// (an operator token was configured).
	Requeue RequeueInfo `json:"requeue"`
	// TraceURL, if set, finds a reading's trace: {id} stands for its
	// messaging.message.id, <stream>/<seq> (--trace-url).
	TraceURL string `json:"trace_url,omitempty"`
	// Problems are what the console could not find out, one line each.
	Problems []string `json:"problems"`
}

// ConsoleInfo is the console's own instance.
type ConsoleInfo struct {
	Instance string `json:"instance"`
	Version  string `json:"version"`
}

// Source is one source of the state (Consul): whether its last read
// worked, and since when it has not.
type Source struct {
	OK        bool       `json:"ok"`
	Error     string     `json:"error,omitempty"`
	DownSince *time.Time `json:"down_since,omitempty"`
	LastOK    *time.Time `json:"last_ok,omitempty"`
}

// NSQD is one nsqd registered in Consul.
type NSQD struct {
	ID          string `json:"id"`
	Node        string `json:"node"`
	Address     string `json:"address"`      // TCP, as registered
	HTTPAddress string `json:"http_address"` // from the meta http_port; "" when not registered
	// StatsAddress is where svckit nsqd-stats serves its /stats (the
	// meta stats_port, in the datacenters); "" when not registered.
	StatsAddress string `json:"stats_address"`
	Health       string `json:"health"` // Consul's: passing, warning, critical
	// Up: its GET /stats answered in the last collection.
	Up        bool       `json:"up"`
	Error     string     `json:"error,omitempty"`
	DownSince *time.Time `json:"down_since,omitempty"`
	LastOK    *time.Time `json:"last_ok,omitempty"`
	Version   string     `json:"version,omitempty"`
	// NSQDHealth is nsqd's own account of itself ("OK", or its disk
	// queue's error).
	NSQDHealth string `json:"nsqd_health,omitempty"`
}

// Service is a service name in Consul and its instances.
type Service struct {
	Name string `json:"name"`
	// Health is the worst of its instances' (passing, warning, critical).
	Health    string     `json:"health"`
	Instances []Instance `json:"instances"`
	// Publishes and Consumes are its instances' tags publishes=<topic>
	// and consumes=<topic>, together.
	Publishes []string `json:"publishes"`
	Consumes  []string `json:"consumes"`
	// Roles: "owner" (tagged stream=), "stage" (replay-relay), "tracker"
	// (replay-tracker), "nsqd", "nsqlookupd".
	Roles []string `json:"roles"`
}

// Instance is one registered instance of a service.
type Instance struct {
	ID      string   `json:"id"`
	Node    string   `json:"node"`
	Address string   `json:"address"`
	Port    int      `json:"port"`
	Health  string   `json:"health"` // passing, warning, critical, maintenance
	Checks  []Check  `json:"checks"`
	Tags    []string `json:"tags"`
	Version string   `json:"version,omitempty"`
	// Streams are the streams it owns (tags stream=<id>).
	Streams   []string `json:"streams"`
	Publishes []string `json:"publishes"`
	Consumes  []string `json:"consumes"`
	Relay     bool     `json:"relay"`   // a stage
	Tracker   bool     `json:"tracker"` // a tracking consumer
	// DeadLetters: it serves a local dead-letter store.
	DeadLetters bool `json:"deadletters"`
}

// Check is one of Consul's health checks of an instance (its node's
// included).
type Check struct {
	Name   string `json:"name"`
	Status string `json:"status"`
	Output string `json:"output,omitempty"`
}

// Topic is one NSQ topic, its numbers summed over the nsqds that have it.
type Topic struct {
	Name string `json:"name"`
	// Depth is what the topic holds before it is copied to its channels
	// (nsqd keeps a topic's messages until its first channel exists).
	Depth        int64  `json:"depth"`
	MessageCount uint64 `json:"message_count"`
	// Rate is messages per second published to the topic, from
	// MessageCount's growth over the last RateWindow.
	Rate   float64 `json:"rate"`
	Paused bool    `json:"paused"`
	// InNSQD is how many answering nsqds have the topic (0: only Consul
	// tags name it, or the nsqds that have it do not answer).
	InNSQD int `json:"in_nsqd"`
	// Stale: an nsqd did not answer, so the numbers lack its part (with
	// InNSQD 0 they are unknown, not zero).
	Stale bool `json:"stale"`
	// Publishers and Consumers are the services tagged publishes=<it> and
	// consumes=<it>.
	Publishers []string  `json:"publishers"`
	Consumers  []string  `json:"consumers"`
	Channels   []Channel `json:"channels"`
}

// Channel is one channel of a topic.
type Channel struct {
	Name      string `json:"name"`
	Ephemeral bool   `json:"ephemeral"`
	Depth     int64  `json:"depth"`
	InFlight  int    `json:"in_flight"`
	Deferred  int    `json:"deferred"`
	// MessageCount is what the channel received; Rate its growth per
	// second over the last RateWindow.
	MessageCount uint64  `json:"message_count"`
	Rate         float64 `json:"rate"`
	Requeued     uint64  `json:"requeued"`
	TimedOut     uint64  `json:"timed_out"`
	Clients      int     `json:"clients"`
	Paused       bool    `json:"paused"`
	// Consumers are the services connected to it, by the user agent
	// svckit's consumers send nsqd (svckit-<service>/<version>).
	Consumers []string `json:"consumers"`
}

// Stream is one replayable stream.
type Stream struct {
	Stream string `json:"stream"`
	// Owner is the instance tagged stream=<id>; nil if none was ever seen.
	Owner *Owner `json:"owner"`
	// Topic is the topic the owner publishes to (its publishes= tag).
	Topic string `json:"topic,omitempty"`
	// The owner's GET /streams (its last answer while it does not answer).
	LastSeq       uint64      `json:"last_seq"`
	RetainedFirst uint64      `json:"retained_first"`
	RetainedLast  uint64      `json:"retained_last"`
	Damaged       [][2]uint64 `json:"damaged,omitempty"`
	NotAccepting  string      `json:"not_accepting,omitempty"`
	// PublishRate is sequences per second, from LastSeq's growth over the
	// last RateWindow.
	PublishRate float64 `json:"publish_rate"`
	// Consumers are the tracking consumers (Kind "tracker", one per
	// instance) and the stages (Kind "stage", one per service) that
	// reported the stream.
	Consumers []StreamConsumer `json:"consumers"`
}

// Owner is a stream's owner instance.
type Owner struct {
	Instance  string     `json:"instance"`
	Service   string     `json:"service"`
	Address   string     `json:"address"`
	Up        bool       `json:"up"`
	Error     string     `json:"error,omitempty"`
	DownSince *time.Time `json:"down_since,omitempty"`
	LastSeen  *time.Time `json:"last_seen,omitempty"`
}

// StreamConsumer is one tracking consumer's or one stage's position in a
// stream: its last answer (a tracker's GET /streams entry, a stage's GET
// /stage entry), or, while it does not answer (stopped, gone from Consul,
// unreachable), the last one it gave, with the lag computed against the
// owner's current last sequence: a stopped consumer's lag rises as the
// owner publishes.
//
// A stage is one row per service, not per instance: its instances share
// one channel, so each sees only part of a stream's inputs. The stage is
// at the lowest position among its instances holding an input of the
// stream unfinished, else at the highest position (an idle instance keeps
// the position it had when it last got an input). It is up while one of
// its instances answers GET /stage, even one that reports nothing of the
// stream yet (restarted on a quiet stream).
type StreamConsumer struct {
	// Kind is "tracker" (a tracking consumer instance: replay-tracker) or
	// "stage" (a stage's service: replay-relay).
	Kind string `json:"kind"`
	// Consumer is the tracker's instance id, or the stage's service name;
	// Service the service name.
	Consumer string `json:"consumer"`
	Service  string `json:"service"`
	// Address is the instance's (a stage's: that of the instance whose
	// position the row shows).
	Address string `json:"address"`
	// Instances are a stage's instances whose answer reported the stream
	// (the last ones, while none does).
	Instances []string `json:"instances,omitempty"`
	Up        bool     `json:"up"`
	// Error is why it does not answer; for a stage that is up, why some
	// of its instances do not.
	Error     string     `json:"error,omitempty"`
	DownSince *time.Time `json:"down_since,omitempty"`
	LastSeen  *time.Time `json:"last_seen,omitempty"`

	// Position is how far it is in the stream: a tracker's contiguous
	// position (LastContiguous); a stage's, the point up to which every
	// input is finished (just before the lowest it holds unfinished).
	Position uint64 `json:"position"`
	// LastContiguous is a tracker's contiguous position; for a stage, its
	// Position (so that a reader of trackers only shows it sensibly).
	LastContiguous uint64      `json:"last_contiguous"`
	Applied        uint64      `json:"applied"`
	Duplicates     uint64      `json:"duplicates"`
	Gaps           [][2]uint64 `json:"gaps"` // a stage's: always empty
	// OwnerLast is the last sequence its upstream reported to it (a
	// stage's: upstream_last).
	OwnerLast   uint64                 `json:"owner_last"`
	LagMessages uint64                 `json:"lag_messages"`
	LagSeconds  float64                `json:"lag_seconds"`
	Replay      *replay.ReplayProgress `json:"replay,omitempty"`
	Snapshots   uint64                 `json:"snapshots"`
	LastError   string                 `json:"last_error,omitempty"`
	// LagEstimated: the consumer does not answer, so the console computed
	// the lag (seconds: an upper bound, from when it was last seen).
	LagEstimated bool `json:"lag_estimated"`
}

// DeadLetterTopic is one topic's dead letters.
type DeadLetterTopic struct {
	Topic string `json:"topic"`
	// Count is NSQD + Local.
	Count int64 `json:"count"`
	// NSQD is what <topic>.dead holds in nsqd (not yet in a channel, in
	// its channels' queues, in flight or deferred there).
	NSQD int64 `json:"nsqd"`
	// NSQDUnknown: an nsqd did not answer, so NSQD (and Count) lack what
	// it holds.
	NSQDUnknown bool `json:"nsqd_unknown"`
	// Local is what the services' local stores hold.
	Local int64 `json:"local"`
	// Reasons count the listed letters by reason, most frequent first.
	Reasons []ReasonCount `json:"reasons"`
	// Letters are the newest listed letters (at most MaxLetters): the
	// local ones every collection, nsqd's from the last time the console
	// read <topic>.dead (NSQDListedAt).
	Letters      []DeadLetter `json:"letters"`
	NSQDListedAt *time.Time   `json:"nsqd_listed_at,omitempty"`
	Problems     []string     `json:"problems"`
}

// ReasonCount is how many listed letters have a reason.
type ReasonCount struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// DeadLetter is one dead letter, as `svckit deadletter ls --json` shows it.
type DeadLetter struct {
	ID       string    `json:"id"`
	Topic    string    `json:"topic"`
	Stored   string    `json:"stored"` // nsqd or local
	Instance string    `json:"instance,omitempty"`
	Channel  string    `json:"channel"`
	Reason   string    `json:"reason"`
	Attempts uint16    `json:"attempts"`
	Time     time.Time `json:"time"`
	Size     int       `json:"size"`
	Stream   string    `json:"stream,omitempty"`
	Seq      uint64    `json:"seq,omitempty"`
	// Preview shows the original's bytes: an envelope's identity, or its
	// first printable bytes, quoted.
	Preview string `json:"preview"`
}

// RequeueInfo says whether the page may offer requeueing.
type RequeueInfo struct {
	Enabled bool   `json:"enabled"`
	Why     string `json:"why,omitempty"`
}
