package operator

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/ownership"
	"github.com/svckit/svckit/svckit/replay"
	"github.com/svckit/svckit/svckit/retainlog"
	"github.com/urfave/cli/v2"
)

func streamCommand() *cli.Command {
	stream := &cli.StringFlag{Name: "stream", Usage: "stream id", EnvVars: config.Env("stream")}
	return &cli.Command{
		Name:  "stream",
		Usage: "inspect and release a stream's claim (one owner per stream, in Consul KV)",
		Subcommands: []*cli.Command{
			{
				Name: "show",
				Usage: "print who holds the stream's claim and, from the owner itself, its positions, " +
					"damaged records and whether it accepts messages",
				Flags:  append([]cli.Flag{stream}, replaySecretFlags("the owners' replay shared secret (their --replay-secret)")...),
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
		secret, err := replaySecret(c)
		if err != nil {
			return err
		}
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
		if alive {
			return showOwnerStatus(c, consul, id, secret)
		}
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

// showOwnerStatus prints the owner's own account of the stream (GET
// /streams on the instance tagged stream=<id>): positions, damaged records,
// whether it accepts messages.
func showOwnerStatus(c *cli.Context, consul *api.Client, id, secret string) error {
	ctx := c.Context
	services, _, err := consul.Catalog().Services((&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("asking Consul for the owner of %s: %w", id, err)
	}
	tag := replay.OwnerTag(id)
	for name, tags := range services {
		if !slices.Contains(tags, tag) {
			continue
		}
		in, err := findOwner(ctx, consul, name, id)
		if err != nil {
			return err
		}
		var st []replay.Status
		if err := getJSON(ctx, replay.Client{Secret: secret, Audience: in.Service, HTTP: serviceHTTP}, in.Addr(), "/streams", &st); err != nil {
			return fmt.Errorf("asking the owner %s (%s) for its streams: %w", in.ID, in.Addr(), err)
		}
		for _, s := range st {
			if s.Stream != id {
				continue
			}
			w := c.App.Writer
			fmt.Fprintf(w, "owner %s at %s: last seq %d, retained %d-%d\n", in.ID, in.Addr(), s.LastSeq, s.RetainedFirst, s.RetainedLast)
			if len(s.Damaged) > 0 {
				var n uint64
				for _, r := range s.Damaged {
					n += r[1] - r[0] + 1
				}
				fmt.Fprintf(w, "damaged: %d records (%s), kept in the log's quarantine directory, served to consumers only through the snapshot\n",
					n, retainlog.FormatRanges(s.Damaged))
			} else {
				fmt.Fprintln(w, "damaged: none found")
			}
			if s.NotAccepting != "" {
				fmt.Fprintf(w, "not accepting messages: %s\n", s.NotAccepting)
			} else {
				fmt.Fprintln(w, "accepting messages")
			}
			return nil
		}
	}
	fmt.Fprintf(c.App.Writer, "no passing service in Consul carries tag %s\n", tag)
	return nil
}
