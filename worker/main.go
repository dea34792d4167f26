// Command worker is the reference pipeline's worker: wiring only (see pipeline/worker).
package main

import (
	"os"

	"github.com/svckit/svckit/pipeline/worker"
	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, worker.Spec(version)))
}
