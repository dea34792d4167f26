package operator

import (
	"errors"
	"fmt"
	"time"

	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/urfave/cli/v2"
)

func streamCommand() *cli.Command {
	stream := &cli.StringFlag{Name: "stream", Usage: "stream id", EnvVars: config.Env("stream")}
	return &cli.Command{
		Name:  "stream",
		Usage: "inspect and release a stream's claim (one owner per stream, in Consul KV)",
		Subcommands: []*cli.Command{
			{
				Name:   "show",
				Usage:  "print who holds the stream's claim",
				Flags:  []cli.Flag{stream},
				Action: func(c *cli.Context) error { return runStream(c, false) },
			},
			{
				Name: "release",
				Usage: "delete the stream's claim so that a process with another data directory may take the stream " +
					"(only when nobody holds it; its sequence then starts after what that directory's log holds)",
				Flags:  []cli.Flag{stream},
				Action: func(c *cli.Context) error { return runStream(c, true) },
			},
		},
	}
}

func runStream(c *cli.Context, release bool) error {
	id := c.String("stream")
	if !replay.ValidStreamID(id) {
		return usagef("--stream %q: want 1-255 of [A-Za-z0-9._-]", id)
	}
	consul, err := consulClient(c)
	if err != nil {
		return err
	}
	if !release {
		claim, alive, err := ownership.ShowClaim(c.Context, consul, "", id)
		if err != nil {
			return err
		}
		state := "released (its holder stopped or its session expired)"
		if alive {
			state = "held"
		}
		fmt.Fprintf(c.App.Writer, "stream %s: %s by instance %s on node %s (pid %d, data directory %s, since %s)\n",
			id, state, claim.Instance, claim.Node, claim.PID, claim.DataID, claim.Since.Format(time.RFC3339))
		return nil
	}
	claim, err := ownership.ReleaseClaim(c.Context, consul, "", id)
	var held *ownership.HeldError
	if errors.As(err, &held) {
		return fmt.Errorf("%w; stop it first", err)
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "released stream %s (last held by instance %s on node %s with data directory %s)\n", id, claim.Instance, claim.Node, claim.DataID)
	return nil
}
