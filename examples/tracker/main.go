// Command tracker is a minimal tracking consumer: it applies every
// (stream, seq) of a topic exactly once to a small state (messages and
// payload bytes per stream), recovers what it missed from the topic's
// upstream (replay), keeps a checkpoint in its data directory, and serves
// its state over HTTP (GET /state, GET /streams).
//
//	go run ./examples/tracker --help
//	go run ./examples/tracker --consul-addr 127.0.0.1:8500 --data-dir var/tracker
//	go run ./examples/tracker --topic ticks --upstream producer ...
//
// main.go is wiring only; the consumer is in tracker.go.
package main

import (
	"os"

	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, Spec(version)))
}
