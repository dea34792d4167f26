// Command sensor is the reference pipeline's sensor: wiring only (see pipeline/sensor).
package main

import (
	"os"

	"github.com/svckit/svckit/pipeline/sensor"
	"github.com/svckit/svckit/svckit/service"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

func main() {
	os.Exit(service.Main(os.Args, os.Stdout, os.Stderr, sensor.Spec(version)))
}
