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

// Config is what every service needs before it can register and talk to
// NSQ. Each setting is declared here once: its flag, environment variable
// and help text in its tags (see FlagsOf), its default in DefaultConfig,
// its bounds in a min tag or in Validate.
type Config struct {
	Name    string // service name in Consul
	Version string

	InstanceID string   `flag:"instance-id" usage:"unique, stable instance id registered in Consul (default <name>-<host>-<port>)"`
	Tags       []string `flag:"tag" env:"SVCKIT_TAGS" usage:"extra Consul tag (repeatable)"`

	HTTPAddr string `flag:"http-addr" usage:"listen address for /health, /ready, /metrics and service routes (port 0 = any free port)"`
	// HTTPTLSCert and HTTPTLSKey, when set, serve that address over TLS
	// (for services whose clients speak HTTPS, such as nsqd asking
	// nsqauth; svckit's replay clients speak HTTP).
	HTTPTLSCert   string `flag:"http-tls-cert" usage:"certificate file: serve --http-addr over TLS (with --http-tls-key; for clients that speak HTTPS, e.g. nsqd asking nsqauth)"`
	HTTPTLSKey    string `flag:"http-tls-key" usage:"private key file of --http-tls-cert"`
	AdvertiseAddr string `flag:"advertise-addr" usage:"address registered in Consul (default: the local address used to reach the Consul agent)"`
	DataDir       string `flag:"data-dir" usage:"directory for durable state (locked: one process per directory)"`
	// ReplaySecret is the shared secret of the replay endpoints: required
	// by the ones this service serves, sent to the ones it asks.
	ReplaySecret string `flag:"replay-secret" file:"file holding the replay endpoints' shared secret (instead of --replay-secret)" usage:"shared secret of the replay endpoints (/streams, /replay, /snapshot, /deadletters): required by those this service serves, sent to those it asks"`

	Consul ConsulConfig

	LogFormat string `flag:"log-format" usage:"log format: text or json"`
	LogLevel  string `flag:"log-level" usage:"log level: debug, info, warn, error"`
	Pprof     bool   `flag:"pprof" usage:"serve runtime profiles under /debug/pprof/ on the HTTP port"`
	// MetricsToken, when set, is what GET /metrics asks for: the metrics
	// name the streams and count their messages, which is the pipeline's
	// data to whoever reaches the port.
	MetricsToken string `flag:"metrics-token" file:"file holding the token GET /metrics asks for (instead of --metrics-token)" usage:"GET /metrics answers only Authorization: Bearer <token> (Prometheus: authorization.credentials_file); none: /metrics is open to whoever reaches --http-addr"`

	CheckInterval time.Duration `flag:"check-interval" min:"1ns" usage:"interval of the Consul HTTP check on /health"`
	// Consul silently clamps DeregisterCriticalServiceAfter to one minute.
	DeregisterAfter time.Duration `flag:"deregister-after" min:"1m" usage:"Consul removes the instance after its check was critical this long"`
	ShutdownTimeout time.Duration `flag:"shutdown-timeout" min:"1ns" usage:"on SIGTERM, how long in-flight messages may take to finish"`

	NSQ NSQConfig
}

// ConsulConfig overrides what consul/api's DefaultConfig read from the
// environment; the flags' variables are Consul's own.
type ConsulConfig struct {
	Addr      string `flag:"consul-addr" env:"CONSUL_HTTP_ADDR" usage:"local Consul agent HTTP address"`
	Token     string `flag:"consul-token" env:"CONSUL_HTTP_TOKEN" usage:"Consul ACL token"`
	CACert    string `flag:"consul-cacert" env:"CONSUL_CACERT" usage:"CA certificate file for HTTPS to Consul"`
	TLSServer string `flag:"consul-tls-server-name" env:"CONSUL_TLS_SERVER_NAME" usage:"server name to verify in Consul's TLS certificate"`
	// StartTimeout bounds how long a service waits for the Consul agent at
	// start before giving up (0 = forever).
	StartTimeout time.Duration `flag:"consul-start-timeout" min:"0s" usage:"give up starting if the Consul agent has not answered within this time (0 = keep trying)"`
}

// NSQConfig holds the go-nsq settings svckit exposes.
type NSQConfig struct {
	LookupdPollInterval time.Duration `flag:"nsq-lookupd-poll-interval" min:"1ns" usage:"how often consumers poll nsqlookupd for nsqd producers"`
	MaxInFlight         int           `flag:"nsq-max-in-flight" min:"1" usage:"messages a consumer may hold un-finished"`
	Concurrency         int           `flag:"nsq-concurrency" min:"1" usage:"handler goroutines per consumer"`
	MaxAttempts         int           `flag:"nsq-max-attempts" min:"1" usage:"deliveries before a failing message goes to the dead-letter topic"`
	RequeueDelay        time.Duration `flag:"nsq-requeue-delay" min:"1ns" usage:"base delay of a requeue; grows with the attempt number"`
	MaxRequeueDelay     time.Duration `flag:"nsq-max-requeue-delay" min:"1ns" usage:"cap of the requeue delay"`
	MsgTimeout          time.Duration `flag:"nsq-msg-timeout" min:"1ns" usage:"nsqd's per-message timeout requested by consumers; long handlers are touched"`
	BatchSize           int           `flag:"nsq-batch-size" min:"1" usage:"largest MPUB batch of the batching publisher"`
	// nsqd's --max-msg-size may not exceed its --max-body-size, and the
	// smallest nsqd accepts for messages is far above 1024.
	BatchBytes          int           `flag:"nsq-batch-bytes" min:"1024" usage:"largest MPUB body of the batching publisher (a larger batch goes as several MPUBs); at most nsqd's --max-body-size"`
	BatchDelay          time.Duration `flag:"nsq-batch-delay" min:"1ns" usage:"how long the batching publisher waits to fill a batch"`
	MaxMsgSize          int           `flag:"nsq-max-msg-size" min:"1024" usage:"nsqd's --max-msg-size: a larger message fails alone, before it is sent (nsqd would close the connection), and a dead letter above it is kept in the data directory"`
	OutputBufferSize    int64         `flag:"nsq-output-buffer-size" usage:"bytes nsqd buffers before writing to this consumer (one write for many messages under load); -1 = a write per message"`
	OutputBufferTimeout time.Duration `flag:"nsq-output-buffer-timeout" usage:"longest time nsqd holds buffered messages for this consumer: below 1ms nsqd's own --output-buffer-timeout, which must be at most this; else whole ms, and below 25ms nsqd must run with --min-output-buffer-timeout at most this"`
	AuthSecret          string        `flag:"nsq-auth-secret" file:"file holding the secret sent to nsqd's auth server (instead of --nsq-auth-secret; e.g. issued by svckit nsqauth serve --issue)" usage:"secret sent to nsqd's auth server (AUTH): this service's identity"`
	TLS                 bool          `flag:"nsq-tls" usage:"use TLS to nsqd"`
	TLSCACert           string        `flag:"nsq-tls-cacert" usage:"CA certificate file for TLS to nsqd"`
	TLSInsecure         bool          `flag:"nsq-tls-insecure-skip-verify" usage:"do not verify nsqd's certificate (testing only)"`
}

// DefaultConfig is every setting's default: the value of its flag when
// neither the command line nor the environment gives one.
func DefaultConfig() Config {
	return Config{
		HTTPAddr:        "127.0.0.1:0",
		DataDir:         "data",
		Consul:          ConsulConfig{Addr: "127.0.0.1:8500"},
		LogFormat:       "text",
		LogLevel:        "info",
		CheckInterval:   2 * time.Second,
		DeregisterAfter: time.Minute,
		ShutdownTimeout: 15 * time.Second,
		NSQ: NSQConfig{
			LookupdPollInterval: 15 * time.Second,
			MaxInFlight:         1000,
			Concurrency:         4,
			MaxAttempts:         5,
			RequeueDelay:        time.Second,
			MaxRequeueDelay:     time.Minute,
			MsgTimeout:          time.Minute,
			BatchSize:           200,
			BatchBytes:          5 << 20,
			BatchDelay:          time.Millisecond,
			MaxMsgSize:          1 << 20,
			OutputBufferSize:    16384,
			OutputBufferTimeout: 100 * time.Microsecond,
		},
	}
}

// Flags returns the common flags, made from Config's settings with
// DefaultConfig's values. Services append their own.
func Flags() []cli.Flag { return FlagsOf(DefaultConfig()) }

// FromCLI builds and validates a Config from parsed flags.
func FromCLI(c *cli.Context, name, version string) (Config, error) {
	cfg := DefaultConfig()
	if err := Load(c, &cfg); err != nil {
		return Config{}, err
	}
	cfg.Name, cfg.Version = name, version
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
	if c.DeregisterAfter < time.Minute {
		// Consul silently clamps DeregisterCriticalServiceAfter to one minute.
		return fmt.Errorf("--deregister-after %s: Consul's minimum is 1m", c.DeregisterAfter)
	}
	if err := CheckMin(c); err != nil {
		return err
	}
	if c.NSQ.MaxAttempts > 65535 {
		return fmt.Errorf("--nsq-max-attempts %d: at most 65535", c.NSQ.MaxAttempts)
	}
	if b := c.NSQ.OutputBufferSize; b != -1 && b < 64 {
		return fmt.Errorf("--nsq-output-buffer-size %d: want -1 (unbuffered) or at least 64", b)
	}
	// go-nsq sends the timeout to nsqd in whole milliseconds; one below a
	// millisecond goes as 0, which asks for nsqd's --output-buffer-timeout.
	if t := c.NSQ.OutputBufferTimeout; t <= 0 || (t > time.Millisecond && t%time.Millisecond != 0) {
		return fmt.Errorf("--nsq-output-buffer-timeout %s: want more than 0 and below 1ms (nsqd's --output-buffer-timeout), or whole milliseconds", t)
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
