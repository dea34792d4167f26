// Command producer is a minimal replayable producer: it publishes a
// counter (1, 2, 3, …) to an NSQ topic as one stream, so that every
// message has a stream id and a contiguous sequence number, sits in a
// retained log consumers can replay from, and is folded into a snapshot
// for consumers that fall further behind than the log reaches.
//
//	go run ./examples/producer --help
//	go run ./examples/producer --stream-id counter-1 --consul-addr 127.0.0.1:8500 --data-dir var/producer
//
// main.go is wiring only; the service is in producer.go.
package main

import (
	"os"

	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	// service.Main parses the common flags (Consul, HTTP, data dir, NSQ
	// settings) and ours, runs the service until SIGINT/SIGTERM and
	// returns the exit code: 0 clean, 1 failure, 2 bad flags, 3 no Consul.
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, Spec(version)))
}
