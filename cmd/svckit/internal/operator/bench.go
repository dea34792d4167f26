package operator

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"text/tabwriter"

	"github.com/svckit/svckit/cmd/svckit/internal/bench"
	"github.com/svckit/svckit/svckit/config"
	"github.com/svckit/svckit/svckit/service"
	"github.com/urfave/cli/v2"
)

func benchCommand() *cli.Command {
	return &cli.Command{
		Name:  "bench",
		Usage: "measure svckit against raw go-nsq and the nsqd ceiling on real consul/nsqd/nsqlookupd",
		Description: `Starts its own consul, nsqlookupd and nsqd on free loopback ports, then the
reference pipeline's binaries, and measures: the raw go-nsq ceiling, one hop
through svckit against raw go-nsq (hop_ratio), the same hop built as a
program importing svckit builds it (bin/hop, from the examples module)
against this repository's build of it (importer_hop_ratio), the pipeline's
throughput and end-to-end latency, replay throughput and gap-close time,
discovery latency, and resident memory; the disk's own latency for one
durable append (120 bytes + fsync, and into a preallocated file +
fdatasync), against which the pipeline's p99 is judged; and one durable hop
through svckit (an owner's fsynced log to one tracking consumer) beside the
pipeline and, with --peer jetstream, beside JetStream (bin/nats-server,
file storage, its default sync interval and sync_interval: always).`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quick", Usage: "a short run (about a minute)", EnvVars: config.Env("bench-quick")},
			&cli.StringFlag{Name: "json", Usage: "also write the results as JSON to this file", EnvVars: config.Env("bench-json")},
			&cli.StringFlag{Name: "cpuprofile", Usage: "write a CPU profile of the bench process (svckit's producer and consumer in the hop runs) to this file", EnvVars: config.Env("bench-cpuprofile")},
			&cli.StringFlag{Name: "profile-dir", Usage: "write a CPU profile of every process of the pipeline (sensor, both workers, app, nsqd) taken during its throughput burst to this directory (<name>.pprof; the services run with --pprof)", EnvVars: config.Env("bench-profile-dir")},
			&cli.StringFlag{Name: "memprofile", Usage: "write an allocation profile of the bench process to this file at the end (go tool pprof -sample_index=alloc_space)", EnvVars: config.Env("bench-memprofile")},
			&cli.StringFlag{Name: "only", Usage: "measure one part, for profiling: hop (the ceiling, the hop ratio and the importer's hop ratio), importer (only the importer's hop ratio: bin/hop against this build), pipeline (the throughput burst, with per-process CPU and nsqd queue depths, then the latency rates), replay (the burst, then replay directly from the sensor and through a worker's relay) or durable (svckit's durable hop); the disk is measured in every run", EnvVars: config.Env("bench-only")},
			&cli.StringFlag{Name: "peer", Usage: "also measure one hop through this system beside svckit's durable hop, on the same terms: jetstream (bin/nats-server, file storage, its default sync interval and sync_interval: always)", EnvVars: config.Env("bench-peer")},
			&cli.StringFlag{Name: "data-dir", Usage: "make the run's directories (the owners' logs, nsqd's and nats-server's data) and measure the disk in this directory (default: the system's temporary directory)", EnvVars: config.Env("bench-data-dir")},
			&cli.StringFlag{Name: "bin", Usage: "directory with consul, nsqd, nsqlookupd, sensor, worker, app, svckit and hop, and nats-server for --peer jetstream (default: this executable's directory)", EnvVars: config.Env("bench-bin")},
		},
		Subcommands:     []*cli.Command{benchHopCommand()},
		HideHelpCommand: true,
		Action: func(c *cli.Context) error {
			bin := c.String("bin")
			if bin == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("locating the svckit executable: %w", err)
				}
				bin = filepath.Dir(exe)
			}
			if path := c.String("cpuprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("--cpuprofile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			if path := c.String("memprofile"); path != "" {
				f, err := os.Create(path)
				if err != nil {
					return fmt.Errorf("--memprofile: %w", err)
				}
				defer f.Close()
				// Deferred before the run returns: written after it, with
				// every allocation the run made.
				defer func() {
					if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
						fmt.Fprintf(c.App.ErrWriter, "--memprofile: %v\n", err)
					}
				}()
			}
			res, err := bench.Run(c.Context, bench.Options{Quick: c.Bool("quick"), Only: c.String("only"), BinDir: bin, Log: c.App.ErrWriter,
				Peer: c.String("peer"), DataDir: c.String("data-dir"), ProfileDir: c.String("profile-dir")})
			if err != nil {
				return fmt.Errorf("bench: %w", err)
			}
			printBench(c.App.Writer, res)
			if path := c.String("json"); path != "" {
				b, _ := json.MarshalIndent(res, "", "  ")
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("--json: %w", err)
				}
			}
			return nil
		},
	}
}

// benchHopCommand is `svckit bench hop`: one hop through svckit as a
// service (bench.HopSpec), the repository's build of the code bin/hop
// (examples/hop, whose hop.go is a copy of bench's) is built from as an
// importer's module. The bench runs both as programs and compares them
// (importer_hop_ratio); it is hidden because nobody else needs it.
func benchHopCommand() *cli.Command {
	return &cli.Command{
		Name:            "hop",
		Usage:           "one hop through svckit as a service (the repository's side of importer_hop_ratio)",
		Hidden:          true,
		SkipFlagParsing: true, // the service's own flags: service.Main parses them
		Action: func(c *cli.Context) error {
			args := append([]string{"svckit bench hop"}, c.Args().Slice()...)
			if code := service.Main(args, c.App.Writer, c.App.ErrWriter, bench.HopSpec(c.App.Version)); code != service.ExitOK {
				// service.Main printed why.
				return fmt.Errorf("bench hop: exit %d", code)
			}
			return nil
		},
	}
}

func printBench(w io.Writer, r *bench.Results) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "FIGURE\tVALUE\tTARGET")
	row := func(name string, v float64, unit, target string) {
		fmt.Fprintf(tw, "%s\t%.2f %s\t%s\n", name, v, unit, target)
	}
	row("hop_ratio (svckit / raw go-nsq, both 4 MPUBs in flight)", r.HopRatio, "", ">= 0.9")
	row("importer_hop_ratio (bin/hop, an importer's build / this build)", r.ImporterHopRatio, "", ">= 0.95")
	row("pipeline_msgs_per_sec", r.PipelineMsgsPerSec, "msg/s", ">= 50000")
	if r.PipelineRatio > 0 { // both the pipeline and the raw hop ran
		row("pipeline_ratio (pipeline readings/s / raw hop msg/s)", r.PipelineRatio, "", ">= 0.5")
	}
	row("p99_ms_at_1k", r.P99MsAt1k, "ms", "<= 5")
	row("replay_msgs_per_sec", r.ReplayMsgsPerSec, "msg/s", ">= 100000")
	row("relay_replay_msgs_per_sec (through one relay stage)", r.RelayReplayMsgsPerSec, "msg/s", ">= 1000000")
	row("relay_ratio (relayed / direct)", r.RelayRatio, "", ">= 0.5")
	row("discovery_ms (median)", r.DiscoveryMs, "ms", "<= 200")
	row("idle_rss_mb (largest service)", r.IdleRSSMB, "MB", "<= 20")
	keys := make([]string, 0, len(r.Figures))
	for k := range r.Figures {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "  %s\t%.2f\t\n", k, r.Figures[k])
	}
	tw.Flush()
	printDisk(w, r)
	printComparison(w, r.Comparison)
}

// printDisk prints the disk's own latency and the pipeline's targets
// against it (issue 26), when the run measured them.
func printDisk(w io.Writer, r *bench.Results) {
	d := r.Disk
	if d == nil {
		return
	}
	fmt.Fprintf(w, "\nDISK (%d appends of %d bytes each way, in %s)\n", d.Samples, d.RecordBytes, d.Dir)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ONE DURABLE APPEND\tP50\tP99\tMAX")
	for _, row := range []struct {
		name string
		p    bench.Percentiles
	}{{"append + fsync", d.AppendFsync}, {"preallocated, zero-filled + fdatasync", d.PreallocFdatasync}} {
		fmt.Fprintf(tw, "%s\t%.3f ms\t%.3f ms\t%.3f ms\n", row.name, row.p.P50Ms, row.p.P99Ms, row.p.MaxMs)
	}
	tw.Flush()
	if len(r.LatencyTargets) == 0 {
		return
	}
	fmt.Fprintf(w, "\nPIPELINE P99 AGAINST THE DISK (disk p99 %.3f ms, %s)\n", d.LimitP99Ms, d.Limit)
	tw = tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RATE\tPIPELINE P99\tTARGET\tMET")
	for _, t := range r.LatencyTargets {
		met := "not met"
		if t.Met {
			met = "met"
		}
		fmt.Fprintf(tw, "%d/s\t%.2f ms\t<= %.3f + %.1f = %.2f ms\t%s\n", t.Rate, t.PipelineP99Ms, t.DiskP99Ms, t.AllowanceMs, t.BoundMs, met)
	}
	tw.Flush()
}

// printComparison prints svckit's durable hop, the pipeline and the peer
// side by side.
func printComparison(w io.Writer, rows []bench.ComparisonRow) {
	if len(rows) == 0 {
		return
	}
	fmt.Fprintln(w, "\nONE HOP, SIDE BY SIDE (200-byte messages; the pipeline: two hops, its own readings)")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SYSTEM\tTHROUGHPUT (RANGE)\tP50 / P99 AT 1K/S\tDURABLE AGAINST POWER LOSS")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%.0f msg/s (%.0f-%.0f)\t%.2f / %.2f ms\t%s\n", r.System, r.MsgsPerSec, r.MsgsPerSecMin, r.MsgsPerSecMax, r.P50MsAt1k, r.P99MsAt1k, r.Durability)
	}
	tw.Flush()
}
