package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/logging"
	"github.com/urfave/cli/v2"
)

// Exit codes of every svckit service (documented in the README).
const (
	ExitOK                = 0
	ExitFailure           = 1 // a runtime failure
	ExitUsage             = 2 // a bad flag, value or environment variable
	ExitConsulUnreachable = 3 // the Consul agent did not answer within --consul-start-timeout
)

// UsageError marks an error in the service's own flags: exit code 2.
type UsageError struct{ Err error }

func (e UsageError) Error() string { return e.Err.Error() }
func (e UsageError) Unwrap() error { return e.Err }

// Spec describes a service for Main.
type Spec struct {
	Name    string
	Usage   string
	Version string
	Flags   []cli.Flag // the service's own flags (each with EnvVars)
	// Setup reads the service's flags and builds its parts on s; it returns the
	// service's own loop (nil if it only reacts to messages). Return a
	// UsageError for bad flag values.
	Setup func(c *cli.Context, s *Service) (func(context.Context) error, error)
}

// Main runs a service as a command line program and returns its exit code.
// SIGINT and SIGTERM end it gracefully.
func Main(args []string, stdout, stderr io.Writer, spec Spec) int {
	app := &cli.App{
		Name:      spec.Name,
		Usage:     spec.Usage,
		Version:   spec.Version,
		Flags:     append(config.Flags(), spec.Flags...),
		Writer:    stdout,
		ErrWriter: stderr,
		// One line naming the problem, not the whole help text.
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return UsageError{err} },
		// Main decides the exit code; urfave/cli must not call os.Exit.
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return UsageError{fmt.Errorf("unexpected argument %q", c.Args().First())}
			}
			cfg, err := config.FromCLI(c, spec.Name, spec.Version)
			if err != nil {
				return UsageError{err}
			}
			log, err := logging.New(stderr, logging.Options{Format: cfg.LogFormat, Level: cfg.LogLevel})
			if err != nil {
				return UsageError{err}
			}
			ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
			defer stop()
			s, err := New(ctx, cfg, log)
			if err != nil {
				return err
			}
			loop, err := spec.Setup(c, s)
			if err != nil {
				// What New and Setup took goes back (the lock, the port, an
				// owner's claim), within the shutdown budget.
				cctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
				defer cancel()
				if cerr := s.Close(cctx); cerr != nil {
					log.Warn("releasing after a failed setup", "err", cerr)
				}
				return err
			}
			return s.Run(ctx, loop)
		},
	}
	err := app.Run(args)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "%s: %v\n", spec.Name, err)
	var ue UsageError
	switch {
	case errors.As(err, &ue):
		return ExitUsage
	case errors.Is(err, ErrConsulUnreachable):
		return ExitConsulUnreachable
	default:
		return ExitFailure
	}
}
