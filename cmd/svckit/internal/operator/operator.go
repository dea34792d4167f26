// Package operator is the svckit operator CLI's commands (replay,
// deadletter, stream, infra, probe, bench, nsqauth, acl, secrets);
// cmd/svckit's main calls Main. It is internal to cmd/svckit: not part of
// the library, and importers cannot import it.
package operator

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/urfave/cli/v2"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// consulConfig is consul/api's configuration from the global flags and
// the ecosystem's environment (CONSUL_HTTP_TOKEN_FILE, CONSUL_CACERT, …).
func consulConfig(c *cli.Context) *api.Config {
	cfg := config.Config{Consul: config.ConsulConfig{
		Addr: c.String("consul-addr"), Token: c.String("consul-token"), CACert: c.String("consul-cacert"),
	}}
	return cfg.ConsulAPI()
}

// Main runs the CLI and returns its exit code.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer, version string) int {
	app := &cli.App{
		Name:      "svckit",
		Usage:     "operate svckit pipelines on NSQ and Consul",
		Version:   version,
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "consul-addr", Value: "127.0.0.1:8500", Usage: "Consul agent HTTP address", EnvVars: []string{"CONSUL_HTTP_ADDR"}},
			&cli.StringFlag{Name: "consul-token", Usage: "Consul ACL token", EnvVars: []string{"CONSUL_HTTP_TOKEN"}},
			&cli.StringFlag{Name: "consul-cacert", Usage: "CA certificate for HTTPS to Consul", EnvVars: []string{"CONSUL_CACERT"}},
		}, nsqFlags()...),
		OnUsageError:   func(_ *cli.Context, err error, _ bool) error { return usageError{err} },
		ExitErrHandler: func(*cli.Context, error) {},
		Commands:       []*cli.Command{replayCommand(), deadletterCommand(), benchCommand(), infraCommand(), probeCommand(), streamCommand(), nsqauthCommand(), aclCommand(), secretsCommand(), consoleCommand(), nsqdStatsCommand()},
	}
	for _, c := range app.Commands {
		c.OnUsageError = app.OnUsageError
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := app.RunContext(ctx, args)
	if err == nil {
		return ExitOK
	}
	var code exitCode
	if errors.As(err, &code) {
		return int(code) // the subcommand said why
	}
	fmt.Fprintf(stderr, "svckit: %v\n", err)
	var ue usageError
	if errors.As(err, &ue) {
		return ExitUsage
	}
	return ExitFailure
}

// consulClient builds a client from the global flags over consul/api's env.
func consulClient(c *cli.Context) (*api.Client, error) {
	cl, err := api.NewClient(consulConfig(c))
	if err != nil {
		return nil, fmt.Errorf("creating Consul client: %w", err)
	}
	return cl, nil
}
