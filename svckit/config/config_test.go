package config_test

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

// clearEnv unsets every environment variable the common flags read, so that
// the environment of the machine running the tests cannot leak into them.
// t.Setenv restores the original values when the test ends.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, f := range config.Flags() {
		ef, ok := f.(interface{ GetEnvVars() []string })
		if !ok {
			t.Fatalf("flag %v has no GetEnvVars", f.Names())
		}
		for _, e := range ef.GetEnvVars() {
			t.Setenv(e, "")
			if err := os.Unsetenv(e); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// parse runs a cli.App with config.Flags() on args (without the program
// name) and returns FromCLI's result. A flag parse error (urfave/cli's own,
// e.g. a non-integer for an int flag) is returned as the error.
func parse(t *testing.T, args ...string) (config.Config, error) {
	t.Helper()
	var (
		cfg    config.Config
		cfgErr error
		ran    bool
	)
	app := &cli.App{
		Name:           "svctest",
		Flags:          config.Flags(),
		Writer:         io.Discard,
		ErrWriter:      io.Discard,
		OnUsageError:   func(_ *cli.Context, err error, _ bool) error { return err },
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			ran = true
			cfg, cfgErr = config.FromCLI(c, "svctest", "1.2.3")
			return nil
		},
	}
	if err := app.Run(append([]string{"svctest"}, args...)); err != nil {
		if ran {
			t.Fatalf("app.Run failed after the action ran: %v", err)
		}
		return config.Config{}, err
	}
	if !ran {
		t.Fatalf("action did not run for %q", args)
	}
	return cfg, cfgErr
}

func TestDefaults(t *testing.T) {
	clearEnv(t)
	cfg, err := parse(t)
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate on defaults: %v", err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"Name", cfg.Name, "svctest"},
		{"Version", cfg.Version, "1.2.3"},
		{"InstanceID", cfg.InstanceID, ""},
		{"Tags", len(cfg.Tags), 0},
		{"HTTPAddr", cfg.HTTPAddr, "127.0.0.1:0"},
		{"AdvertiseAddr", cfg.AdvertiseAddr, ""},
		{"DataDir", cfg.DataDir, "data"},
		{"Consul.Addr", cfg.Consul.Addr, "127.0.0.1:8500"},
		{"Consul.Token", cfg.Consul.Token, ""},
		{"Consul.StartTimeout", cfg.Consul.StartTimeout, time.Duration(0)},
		{"LogFormat", cfg.LogFormat, "text"},
		{"LogLevel", cfg.LogLevel, "info"},
		{"CheckInterval", cfg.CheckInterval, 2 * time.Second},
		{"DeregisterAfter", cfg.DeregisterAfter, time.Minute},
		{"ShutdownTimeout", cfg.ShutdownTimeout, 15 * time.Second},
		{"NSQ.LookupdPollInterval", cfg.NSQ.LookupdPollInterval, 15 * time.Second},
		{"NSQ.MaxInFlight", cfg.NSQ.MaxInFlight, 1000},
		{"NSQ.Concurrency", cfg.NSQ.Concurrency, 4},
		{"NSQ.MaxAttempts", cfg.NSQ.MaxAttempts, 5},
		{"NSQ.RequeueDelay", cfg.NSQ.RequeueDelay, time.Second},
		{"NSQ.MaxRequeueDelay", cfg.NSQ.MaxRequeueDelay, time.Minute},
		{"NSQ.MsgTimeout", cfg.NSQ.MsgTimeout, time.Minute},
		{"NSQ.BatchSize", cfg.NSQ.BatchSize, 200},
		{"NSQ.BatchBytes", cfg.NSQ.BatchBytes, 5 << 20},
		{"NSQ.BatchDelay", cfg.NSQ.BatchDelay, time.Millisecond},
		{"NSQ.OutputBufferSize", cfg.NSQ.OutputBufferSize, int64(16384)},
		{"NSQ.OutputBufferTimeout", cfg.NSQ.OutputBufferTimeout, 100 * time.Microsecond},
		{"NSQ.TLS", cfg.NSQ.TLS, false},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("default %s = %v, want %v", c.name, c.got, c.want)
		}
	}
}

func TestEveryFlagHasAnEnvVar(t *testing.T) {
	for _, f := range config.Flags() {
		ef := f.(interface{ GetEnvVars() []string })
		if len(ef.GetEnvVars()) == 0 {
			t.Errorf("flag --%s has no environment variable", f.Names()[0])
		}
	}
}

func TestFlagsOverrideDefaults(t *testing.T) {
	clearEnv(t)
	cfg, err := parse(t,
		"--instance-id=svctest-1", "--tag=a", "--tag=b",
		"--http-addr=127.0.0.1:8080", "--advertise-addr=10.1.2.3", "--data-dir=/tmp/x",
		"--consul-addr=127.0.0.1:18500", "--consul-token=tok", "--consul-start-timeout=3s",
		"--check-interval=1s", "--deregister-after=2m", "--shutdown-timeout=5s",
		"--nsq-lookupd-poll-interval=1s", "--nsq-max-in-flight=7", "--nsq-concurrency=2",
		"--nsq-max-attempts=9", "--nsq-batch-size=10", "--nsq-batch-delay=5ms", "--nsq-batch-bytes=65536",
	)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.InstanceID != "svctest-1" || strings.Join(cfg.Tags, ",") != "a,b" ||
		cfg.HTTPAddr != "127.0.0.1:8080" || cfg.AdvertiseAddr != "10.1.2.3" || cfg.DataDir != "/tmp/x" ||
		cfg.Consul.Addr != "127.0.0.1:18500" || cfg.Consul.Token != "tok" || cfg.Consul.StartTimeout != 3*time.Second ||
		cfg.CheckInterval != time.Second || cfg.DeregisterAfter != 2*time.Minute || cfg.ShutdownTimeout != 5*time.Second ||
		cfg.NSQ.LookupdPollInterval != time.Second || cfg.NSQ.MaxInFlight != 7 || cfg.NSQ.Concurrency != 2 ||
		cfg.NSQ.MaxAttempts != 9 || cfg.NSQ.BatchSize != 10 || cfg.NSQ.BatchBytes != 65536 || cfg.NSQ.BatchDelay != 5*time.Millisecond {
		t.Fatalf("flags not applied: %+v", cfg)
	}
}

func TestInvalidValuesNameTheirFlag(t *testing.T) {
	clearEnv(t)
	cases := []struct {
		flag string // also what the error must name
		arg  string
	}{
		// Validate: addresses.
		{"http-addr", "--http-addr=nohost"},
		{"http-addr", "--http-addr="},
		{"advertise-addr", "--advertise-addr=not-an-ip"},
		{"consul-addr", "--consul-addr=no-port"},
		{"consul-addr", "--consul-addr=http://no-port"},
		{"data-dir", "--data-dir="},
		// Validate: durations that must be positive.
		{"check-interval", "--check-interval=0s"},
		{"deregister-after", "--deregister-after=0s"},
		{"shutdown-timeout", "--shutdown-timeout=-1s"},
		{"nsq-lookupd-poll-interval", "--nsq-lookupd-poll-interval=0s"},
		{"nsq-requeue-delay", "--nsq-requeue-delay=0s"},
		{"nsq-max-requeue-delay", "--nsq-max-requeue-delay=-5s"},
		{"nsq-msg-timeout", "--nsq-msg-timeout=0s"},
		{"nsq-batch-delay", "--nsq-batch-delay=0s"},
		{"consul-start-timeout", "--consul-start-timeout=-1s"},
		// IDENTIFY carries whole milliseconds; below one, nsqd's own flush.
		{"nsq-output-buffer-timeout", "--nsq-output-buffer-timeout=0s"},
		{"nsq-output-buffer-timeout", "--nsq-output-buffer-timeout=1500us"},
		{"nsq-output-buffer-size", "--nsq-output-buffer-size=63"},
		// Consul clamps DeregisterCriticalServiceAfter to 1m.
		{"deregister-after", "--deregister-after=30s"},
		// Validate: integers with bounds.
		{"nsq-max-in-flight", "--nsq-max-in-flight=0"},
		{"nsq-concurrency", "--nsq-concurrency=-1"},
		{"nsq-max-attempts", "--nsq-max-attempts=0"},
		{"nsq-max-attempts", "--nsq-max-attempts=65536"},
		{"nsq-batch-size", "--nsq-batch-size=0"},
		{"nsq-batch-size", "--nsq-batch-size=10001"},
		{"nsq-batch-bytes", "--nsq-batch-bytes=1023"},
		{"http-tls-key", "--http-tls-cert=/secrets/c.pem"},
		// Parse errors of urfave/cli itself.
		{"nsq-max-in-flight", "--nsq-max-in-flight=abc"},
		{"check-interval", "--check-interval=abc"},
		{"nsq-tls", "--nsq-tls=maybe"},
		{"bogus", "--bogus"},
	}
	for _, c := range cases {
		t.Run(c.arg, func(t *testing.T) {
			_, err := parse(t, c.arg)
			if err == nil {
				t.Fatalf("%s accepted", c.arg)
			}
			if !strings.Contains(err.Error(), c.flag) {
				t.Fatalf("error for %s does not name the flag %q: %v", c.arg, c.flag, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error for %s is more than one line: %q", c.arg, err)
			}
		})
	}
}

func TestValidateBoundaries(t *testing.T) {
	clearEnv(t)
	cfg, err := parse(t, "--nsq-max-attempts=65535", "--nsq-batch-size=10000", "--deregister-after=1m",
		"--consul-addr=https://consul.example:8501", "--advertise-addr=::1", "--nsq-output-buffer-timeout=1us")
	if err != nil {
		t.Fatalf("values at the limits rejected: %v", err)
	}
	cfg.Name = ""
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
}

func TestEnvironment(t *testing.T) {
	clearEnv(t)
	t.Setenv("SVCKIT_HTTP_ADDR", "127.0.0.1:9911")
	t.Setenv("CONSUL_HTTP_ADDR", "127.0.0.1:18501")
	t.Setenv("CONSUL_HTTP_TOKEN", "secret-token")
	t.Setenv("SVCKIT_NSQ_MAX_IN_FLIGHT", "33")
	t.Setenv("SVCKIT_NSQ_LOOKUPD_POLL_INTERVAL", "2s")
	t.Setenv("SVCKIT_TAGS", "x,y")
	t.Setenv("SVCKIT_NSQ_TLS", "true")
	cfg, err := parse(t)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != "127.0.0.1:9911" {
		t.Errorf("SVCKIT_HTTP_ADDR: HTTPAddr = %q", cfg.HTTPAddr)
	}
	if cfg.Consul.Addr != "127.0.0.1:18501" {
		t.Errorf("CONSUL_HTTP_ADDR: Consul.Addr = %q", cfg.Consul.Addr)
	}
	if cfg.Consul.Token != "secret-token" {
		t.Errorf("CONSUL_HTTP_TOKEN: Consul.Token = %q", cfg.Consul.Token)
	}
	if cfg.NSQ.MaxInFlight != 33 || cfg.NSQ.LookupdPollInterval != 2*time.Second || !cfg.NSQ.TLS {
		t.Errorf("SVCKIT_NSQ_*: %+v", cfg.NSQ)
	}
	if strings.Join(cfg.Tags, ",") != "x,y" {
		t.Errorf("SVCKIT_TAGS: Tags = %q", cfg.Tags)
	}
	api := cfg.ConsulAPI()
	if api.Address != "127.0.0.1:18501" || api.Token != "secret-token" {
		t.Errorf("ConsulAPI() = address %q token %q", api.Address, api.Token)
	}

	// A flag beats its environment variable.
	cfg, err = parse(t, "--http-addr=127.0.0.1:9922", "--consul-addr=127.0.0.1:18502")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != "127.0.0.1:9922" || cfg.Consul.Addr != "127.0.0.1:18502" {
		t.Errorf("flags did not override the environment: http %q consul %q", cfg.HTTPAddr, cfg.Consul.Addr)
	}
}

func TestInvalidEnvironmentNamesTheFlag(t *testing.T) {
	cases := []struct{ env, val, flag string }{
		{"SVCKIT_NSQ_MAX_IN_FLIGHT", "abc", "nsq-max-in-flight"},
		{"SVCKIT_CHECK_INTERVAL", "soon", "check-interval"},
		{"SVCKIT_HTTP_ADDR", "nohost", "http-addr"},
		{"CONSUL_HTTP_ADDR", "no-port", "consul-addr"},
		{"SVCKIT_NSQ_MAX_ATTEMPTS", "0", "nsq-max-attempts"},
	}
	for _, c := range cases {
		t.Run(c.env, func(t *testing.T) {
			clearEnv(t)
			t.Setenv(c.env, c.val)
			_, err := parse(t)
			if err == nil {
				t.Fatalf("%s=%s accepted", c.env, c.val)
			}
			if !strings.Contains(err.Error(), c.flag) {
				t.Fatalf("error for %s=%s does not name %q: %v", c.env, c.val, c.flag, err)
			}
		})
	}
}

func TestConsulAPI(t *testing.T) {
	clearEnv(t)
	cases := []struct {
		addr, wantAddr, wantScheme string
	}{
		{"127.0.0.1:8500", "127.0.0.1:8500", "http"},
		{"http://127.0.0.1:8500", "127.0.0.1:8500", "http"},
		{"https://consul.example:8501", "consul.example:8501", "https"},
	}
	for _, c := range cases {
		cfg := config.Config{Consul: config.ConsulConfig{Addr: c.addr}}
		got := cfg.ConsulAPI()
		if got.Address != c.wantAddr || got.Scheme != c.wantScheme {
			t.Errorf("ConsulAPI(%q) = %s://%s, want %s://%s", c.addr, got.Scheme, got.Address, c.wantScheme, c.wantAddr)
		}
	}
	cfg := config.Config{Consul: config.ConsulConfig{Addr: "consul.example:8501", CACert: "/etc/ca.pem", TLSServer: "consul.internal"}}
	got := cfg.ConsulAPI()
	if got.Scheme != "https" || got.TLSConfig.CAFile != "/etc/ca.pem" || got.TLSConfig.Address != "consul.internal" {
		t.Errorf("CA cert / TLS server name not applied: scheme %s tls %+v", got.Scheme, got.TLSConfig)
	}
}

func TestDefaultInstanceID(t *testing.T) {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "10.0.0.7"
	}
	if got, want := config.DefaultInstanceID("worker", "10.0.0.7", 8080), "worker-"+host+"-8080"; got != want {
		t.Fatalf("DefaultInstanceID = %q, want %q", got, want)
	}
}

func TestEnv(t *testing.T) {
	if got := config.Env("nsq-max-in-flight"); len(got) != 1 || got[0] != "SVCKIT_NSQ_MAX_IN_FLIGHT" {
		t.Fatalf("Env = %q", got)
	}
}
