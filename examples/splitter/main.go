// Command splitter is a minimal stage: it consumes the reference
// pipeline's results (topic results, from the workers), splits each into
// two parts, filters out results of a reading of 0, and publishes the
// parts to topic split-results. An app started with
// --topic split-results --upstream splitter applies them.
//
//	go run ./examples/splitter --help
//	go run ./examples/splitter --consul-addr 127.0.0.1:8500 --data-dir var/splitter
//
// main.go is wiring only; the stage is in splitter.go.
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
