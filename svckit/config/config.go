// Package config defines the settings every svckit service shares, as
// urfave/cli/v2 flags that each have an environment variable, and turns a
// parsed command line into a validated Config.
//
// Environment variables are SVCKIT_<FLAG> (dashes become underscores), except
// the Consul ones, which follow Consul's own convention (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_CACERT, …) so one environment configures both the
// consul CLI and every service.
package config

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/urfave/cli/v2"
)

// EnvPrefix prefixes the environment variable of every svckit flag.
const EnvPrefix = "SVCKIT_"

// Env returns the environment variable names for a flag name.
func Env(flag string) []string {
	return []string{EnvPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))}
}

// Config is what every service needs before it can register and talk to NSQ.
type Config struct {
	Name       string // service name in Consul
	InstanceID string // unique and stable across restarts; default <name>-<host>-<port>
	Version    string
	Tags       []string

	HTTPAddr string // listen address of /health, /ready, /metrics and service routes
	// HTTPTLSCert and HTTPTLSKey, when set, serve that address over TLS
	// (for services whose clients speak HTTPS, such as nsqd asking
	// nsqauth; svckit's replay clients speak HTTP).
	HTTPTLSCert, HTTPTLSKey string
	AdvertiseAddr           string // address registered in Consul; default: the local address that reaches the Consul agent
	DataDir                 string // where state lives (retained log, checkpoints)
	// ReplaySecret is the shared secret of the replay endpoints: required
	// by the ones this service serves, sent to the ones it asks.
	ReplaySecret string

	Consul ConsulConfig

	LogFormat string
	LogLevel  string
	Pprof     bool

	CheckInterval   time.Duration
	DeregisterAfter time.Duration
	ShutdownTimeout time.Duration

	NSQ NSQConfig
}

// ConsulConfig overrides what consul/api's DefaultConfig read from the environment.
type ConsulConfig struct {
	Addr      string
	Token     string
	CACert    string
	TLSServer string
	// StartTimeout bounds how long a service waits for the Consul agent at start
	// before giving up (0 = forever).
	StartTimeout time.Duration
}

// NSQConfig holds the go-nsq settings svckit exposes.
type NSQConfig struct {
	LookupdPollInterval time.Duration
	MaxInFlight         int
	Concurrency         int
	MaxAttempts         int
	RequeueDelay        time.Duration
	MaxRequeueDelay     time.Duration
	MsgTimeout          time.Duration
	BatchSize           int
	BatchBytes          int
	BatchDelay          time.Duration
	MaxMsgSize          int
	OutputBufferSize    int64
	OutputBufferTimeout time.Duration
	AuthSecret          string
	TLS                 bool
	TLSCACert           string
	TLSInsecure         bool
}

// Flags returns the common flags. Services append their own.
func Flags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "instance-id", Usage: "unique, stable instance id registered in Consul (default <name>-<host>-<port>)", EnvVars: Env("instance-id")},
		&cli.StringSliceFlag{Name: "tag", Usage: "extra Consul tag (repeatable)", EnvVars: Env("tags")},
		&cli.StringFlag{Name: "http-addr", Value: "127.0.0.1:0", Usage: "listen address for /health, /ready, /metrics and service routes (port 0 = any free port)", EnvVars: Env("http-addr")},
		&cli.StringFlag{Name: "http-tls-cert", Usage: "certificate file: serve --http-addr over TLS (with --http-tls-key; for clients that speak HTTPS, e.g. nsqd asking nsqauth)", EnvVars: Env("http-tls-cert")},
		&cli.StringFlag{Name: "http-tls-key", Usage: "private key file of --http-tls-cert", EnvVars: Env("http-tls-key")},
		&cli.StringFlag{Name: "advertise-addr", Usage: "address registered in Consul (default: the local address used to reach the Consul agent)", EnvVars: Env("advertise-addr")},
		&cli.StringFlag{Name: "data-dir", Value: "data", Usage: "directory for durable state (locked: one process per directory)", EnvVars: Env("data-dir")},
		&cli.StringFlag{Name: "replay-secret", Usage: "shared secret of the replay endpoints (/streams, /replay, /snapshot, /deadletters): required by those this service serves, sent to those it asks", EnvVars: Env("replay-secret")},
		&cli.StringFlag{Name: "replay-secret-file", Usage: "file holding the replay endpoints' shared secret (instead of --replay-secret)", EnvVars: Env("replay-secret-file")},
		&cli.StringFlag{Name: "consul-addr", Value: "127.0.0.1:8500", Usage: "local Consul agent HTTP address", EnvVars: []string{"CONSUL_HTTP_ADDR"}},
		&cli.StringFlag{Name: "consul-token", Usage: "Consul ACL token", EnvVars: []string{"CONSUL_HTTP_TOKEN"}},
		&cli.StringFlag{Name: "consul-cacert", Usage: "CA certificate file for HTTPS to Consul", EnvVars: []string{"CONSUL_CACERT"}},
		&cli.StringFlag{Name: "consul-tls-server-name", Usage: "server name to verify in Consul's TLS certificate", EnvVars: []string{"CONSUL_TLS_SERVER_NAME"}},
		&cli.DurationFlag{Name: "consul-start-timeout", Value: 0, Usage: "give up starting if the Consul agent has not answered within this time (0 = keep trying)", EnvVars: Env("consul-start-timeout")},
		&cli.StringFlag{Name: "log-format", Value: "text", Usage: "log format: text or json", EnvVars: Env("log-format")},
		&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn, error", EnvVars: Env("log-level")},
		&cli.BoolFlag{Name: "pprof", Usage: "serve runtime profiles under /debug/pprof/ on the HTTP port", EnvVars: Env("pprof")},
		&cli.DurationFlag{Name: "check-interval", Value: 2 * time.Second, Usage: "interval of the Consul HTTP check on /health", EnvVars: Env("check-interval")},
		&cli.DurationFlag{Name: "deregister-after", Value: time.Minute, Usage: "Consul removes the instance after its check was critical this long", EnvVars: Env("deregister-after")},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 15 * time.Second, Usage: "on SIGTERM, how long in-flight messages may take to finish", EnvVars: Env("shutdown-timeout")},
		&cli.DurationFlag{Name: "nsq-lookupd-poll-interval", Value: 15 * time.Second, Usage: "how often consumers poll nsqlookupd for nsqd producers", EnvVars: Env("nsq-lookupd-poll-interval")},
		&cli.IntFlag{Name: "nsq-max-in-flight", Value: 1000, Usage: "messages a consumer may hold un-finished", EnvVars: Env("nsq-max-in-flight")},
		&cli.IntFlag{Name: "nsq-concurrency", Value: 4, Usage: "handler goroutines per consumer", EnvVars: Env("nsq-concurrency")},
		&cli.IntFlag{Name: "nsq-max-attempts", Value: 5, Usage: "deliveries before a failing message goes to the dead-letter topic", EnvVars: Env("nsq-max-attempts")},
		&cli.DurationFlag{Name: "nsq-requeue-delay", Value: time.Second, Usage: "base delay of a requeue; grows with the attempt number", EnvVars: Env("nsq-requeue-delay")},
		&cli.DurationFlag{Name: "nsq-max-requeue-delay", Value: time.Minute, Usage: "cap of the requeue delay", EnvVars: Env("nsq-max-requeue-delay")},
		&cli.DurationFlag{Name: "nsq-msg-timeout", Value: time.Minute, Usage: "nsqd's per-message timeout requested by consumers; long handlers are touched", EnvVars: Env("nsq-msg-timeout")},
		&cli.IntFlag{Name: "nsq-batch-size", Value: 200, Usage: "largest MPUB batch of the batching publisher", EnvVars: Env("nsq-batch-size")},
		&cli.IntFlag{Name: "nsq-batch-bytes", Value: 5 << 20, Usage: "largest MPUB body of the batching publisher (a larger batch goes as several MPUBs); at most nsqd's --max-body-size", EnvVars: Env("nsq-batch-bytes")},
		&cli.DurationFlag{Name: "nsq-batch-delay", Value: time.Millisecond, Usage: "how long the batching publisher waits to fill a batch", EnvVars: Env("nsq-batch-delay")},
		&cli.IntFlag{Name: "nsq-max-msg-size", Value: 1 << 20, Usage: "nsqd's --max-msg-size: a larger message fails alone, before it is sent (nsqd would close the connection), and a dead letter above it is kept in the data directory", EnvVars: Env("nsq-max-msg-size")},
		&cli.Int64Flag{Name: "nsq-output-buffer-size", Value: 16384, Usage: "bytes nsqd buffers before writing to this consumer (one write for many messages under load); -1 = a write per message", EnvVars: Env("nsq-output-buffer-size")},
		&cli.DurationFlag{Name: "nsq-output-buffer-timeout", Value: time.Millisecond, Usage: "longest time nsqd holds buffered messages for this consumer, in whole ms; below 25ms nsqd must run with --min-output-buffer-timeout at most this", EnvVars: Env("nsq-output-buffer-timeout")},
		&cli.StringFlag{Name: "nsq-auth-secret", Usage: "secret sent to nsqd's auth server (AUTH): this service's identity", EnvVars: Env("nsq-auth-secret")},
		&cli.StringFlag{Name: "nsq-auth-secret-file", Usage: "file holding the secret sent to nsqd's auth server (instead of --nsq-auth-secret; e.g. issued by svckit nsqauth serve --issue)", EnvVars: Env("nsq-auth-secret-file")},
		&cli.BoolFlag{Name: "nsq-tls", Usage: "use TLS to nsqd", EnvVars: Env("nsq-tls")},
		&cli.StringFlag{Name: "nsq-tls-cacert", Usage: "CA certificate file for TLS to nsqd", EnvVars: Env("nsq-tls-cacert")},
		&cli.BoolFlag{Name: "nsq-tls-insecure-skip-verify", Usage: "do not verify nsqd's certificate (testing only)", EnvVars: Env("nsq-tls-insecure-skip-verify")},
	}
}

// FromCLI builds and validates a Config from parsed flags.
func FromCLI(c *cli.Context, name, version string) (Config, error) {
	authSecret, err := AuthSecret(c.String("nsq-auth-secret"), c.String("nsq-auth-secret-file"))
	if err != nil {
		return Config{}, err
	}
	replaySecret, err := ReplaySecret(c.String("replay-secret"), c.String("replay-secret-file"))
	if err != nil {
		return Config{}, err
	}
	cfg := Config{
		Name:          name,
		Version:       version,
		InstanceID:    c.String("instance-id"),
		Tags:          c.StringSlice("tag"),
		HTTPAddr:      c.String("http-addr"),
		HTTPTLSCert:   c.String("http-tls-cert"),
		HTTPTLSKey:    c.String("http-tls-key"),
		AdvertiseAddr: c.String("advertise-addr"),
		DataDir:       c.String("data-dir"),
		ReplaySecret:  replaySecret,
		Consul: ConsulConfig{
			Addr:         c.String("consul-addr"),
			Token:        c.String("consul-token"),
			CACert:       c.String("consul-cacert"),
			TLSServer:    c.String("consul-tls-server-name"),
			StartTimeout: c.Duration("consul-start-timeout"),
		},
		LogFormat:       c.String("log-format"),
		LogLevel:        c.String("log-level"),
		Pprof:           c.Bool("pprof"),
		CheckInterval:   c.Duration("check-interval"),
		DeregisterAfter: c.Duration("deregister-after"),
		ShutdownTimeout: c.Duration("shutdown-timeout"),
		NSQ: NSQConfig{
			LookupdPollInterval: c.Duration("nsq-lookupd-poll-interval"),
			MaxInFlight:         c.Int("nsq-max-in-flight"),
			Concurrency:         c.Int("nsq-concurrency"),
			MaxAttempts:         c.Int("nsq-max-attempts"),
			RequeueDelay:        c.Duration("nsq-requeue-delay"),
			MaxRequeueDelay:     c.Duration("nsq-max-requeue-delay"),
			MsgTimeout:          c.Duration("nsq-msg-timeout"),
			BatchSize:           c.Int("nsq-batch-size"),
			BatchBytes:          c.Int("nsq-batch-bytes"),
			BatchDelay:          c.Duration("nsq-batch-delay"),
			MaxMsgSize:          c.Int("nsq-max-msg-size"),
			OutputBufferSize:    c.Int64("nsq-output-buffer-size"),
			OutputBufferTimeout: c.Duration("nsq-output-buffer-timeout"),
			AuthSecret:          authSecret,
			TLS:                 c.Bool("nsq-tls"),
			TLSCACert:           c.String("nsq-tls-cacert"),
			TLSInsecure:         c.Bool("nsq-tls-insecure-skip-verify"),
		},
	}
	return cfg, cfg.Validate()
}

// AuthSecret is the NSQ auth secret given as --nsq-auth-secret or read
// from --nsq-auth-secret-file (surrounding white space trimmed); at most
// one of them may be set.
func AuthSecret(secret, file string) (string, error) {
	return secretOrFile("nsq-auth-secret", secret, file)
}

// ReplaySecret is the replay endpoints' shared secret given as
// --replay-secret or read from --replay-secret-file, like AuthSecret: a
// secret in a file (a mounted secret) stays out of the process list and the
// environment.
func ReplaySecret(secret, file string) (string, error) {
	return secretOrFile("replay-secret", secret, file)
}

// secretOrFile is --<flag> or the trimmed content of --<flag>-file.
func secretOrFile(flag, secret, file string) (string, error) {
	if file == "" {
		return secret, nil
	}
	if secret != "" {
		return "", fmt.Errorf("--%s and --%s-file: give one", flag, flag)
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("--%s-file: %w", flag, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("--%s-file %s: empty", flag, file)
	}
	return s, nil
}

// Validate reports the first invalid setting, naming its flag.
func (c Config) Validate() error {
	if (c.HTTPTLSCert == "") != (c.HTTPTLSKey == "") {
		return errors.New("--http-tls-cert and --http-tls-key: give both or neither")
	}
	if _, _, err := net.SplitHostPort(c.HTTPAddr); err != nil {
		return fmt.Errorf("--http-addr %q: want host:port", c.HTTPAddr)
	}
	if c.AdvertiseAddr != "" && net.ParseIP(c.AdvertiseAddr) == nil {
		return fmt.Errorf("--advertise-addr %q: want an IP address", c.AdvertiseAddr)
	}
	addr := strings.TrimPrefix(strings.TrimPrefix(c.Consul.Addr, "http://"), "https://")
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("--consul-addr (CONSUL_HTTP_ADDR) %q: want host:port", c.Consul.Addr)
	}
	switch strings.ToLower(c.LogFormat) {
	case "text", "json":
	default:
		return fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	if c.DataDir == "" {
		return fmt.Errorf("--data-dir: must not be empty")
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"check-interval", c.CheckInterval}, {"deregister-after", c.DeregisterAfter},
		{"shutdown-timeout", c.ShutdownTimeout}, {"nsq-lookupd-poll-interval", c.NSQ.LookupdPollInterval},
		{"nsq-requeue-delay", c.NSQ.RequeueDelay}, {"nsq-max-requeue-delay", c.NSQ.MaxRequeueDelay},
		{"nsq-msg-timeout", c.NSQ.MsgTimeout}, {"nsq-batch-delay", c.NSQ.BatchDelay},
	} {
		if d.v <= 0 {
			return fmt.Errorf("--%s %s: must be positive", d.flag, d.v)
		}
	}
	if c.Consul.StartTimeout < 0 {
		return fmt.Errorf("--consul-start-timeout %s: must not be negative", c.Consul.StartTimeout)
	}
	if c.DeregisterAfter < time.Minute {
		// Consul silently clamps DeregisterCriticalServiceAfter to one minute.
		return fmt.Errorf("--deregister-after %s: Consul's minimum is 1m", c.DeregisterAfter)
	}
	for _, n := range []struct {
		flag   string
		v, min int
	}{
		{"nsq-max-in-flight", c.NSQ.MaxInFlight, 1}, {"nsq-concurrency", c.NSQ.Concurrency, 1},
		{"nsq-max-attempts", c.NSQ.MaxAttempts, 1}, {"nsq-batch-size", c.NSQ.BatchSize, 1},
		// nsqd's --max-msg-size may not exceed its --max-body-size, and the
		// smallest nsqd accepts for messages is far above this.
		{"nsq-batch-bytes", c.NSQ.BatchBytes, 1024},
		{"nsq-max-msg-size", c.NSQ.MaxMsgSize, 1024},
	} {
		if n.v < n.min {
			return fmt.Errorf("--%s %d: must be at least %d", n.flag, n.v, n.min)
		}
	}
	if c.NSQ.MaxAttempts > 65535 {
		return fmt.Errorf("--nsq-max-attempts %d: at most 65535", c.NSQ.MaxAttempts)
	}
	if b := c.NSQ.OutputBufferSize; b != -1 && b < 64 {
		return fmt.Errorf("--nsq-output-buffer-size %d: want -1 (unbuffered) or at least 64", b)
	}
	// go-nsq sends the timeout to nsqd in whole milliseconds, and 0 would
	// mean nsqd's default (250ms).
	if t := c.NSQ.OutputBufferTimeout; t < time.Millisecond || t%time.Millisecond != 0 {
		return fmt.Errorf("--nsq-output-buffer-timeout %s: want a whole number of milliseconds, at least 1ms", t)
	}
	if c.NSQ.BatchSize > 10000 {
		return fmt.Errorf("--nsq-batch-size %d: at most 10000", c.NSQ.BatchSize)
	}
	return nil
}

// ConsulAPI returns consul/api's configuration: DefaultConfig() (which reads
// every CONSUL_* variable) with the flags laid over it.
func (c Config) ConsulAPI() *api.Config {
	cc := api.DefaultConfig()
	addr := c.Consul.Addr
	switch {
	case strings.HasPrefix(addr, "https://"):
		cc.Scheme, addr = "https", strings.TrimPrefix(addr, "https://")
	case strings.HasPrefix(addr, "http://"):
		addr = strings.TrimPrefix(addr, "http://")
	}
	cc.Address = addr
	if c.Consul.Token != "" {
		cc.Token = c.Consul.Token
	}
	if c.Consul.CACert != "" {
		cc.TLSConfig.CAFile = c.Consul.CACert
		cc.Scheme = "https"
	}
	if c.Consul.TLSServer != "" {
		cc.TLSConfig.Address = c.Consul.TLSServer
	}
	return cc
}

// DefaultInstanceID is <name>-<host>-<port>: stable across restarts of the same
// instance, so a restarted instance replaces its own Consul entry instead of
// leaving a critical duplicate behind for DeregisterAfter.
func DefaultInstanceID(name, advertise string, port int) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = advertise
	}
	return fmt.Sprintf("%s-%s-%d", name, host, port)
}
